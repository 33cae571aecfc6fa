//! Spawning one `redis-server` process on a given port and waiting until it serves.
//!
//! Its log file and its stdout/stderr (where config errors go, before the log file is
//! open) both live in the server's directory; a failure quotes the lines written by this
//! launch only, and "Address already in use" among them means "try another port".

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ringq_resp::ServerErrorKind;

use crate::client::TestClient;
use crate::error::Error;
use crate::process::spawn_tied_to_process;
use crate::url::ConnectionInfo;

/// Interval between readiness probes and exit checks.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Lines of log shown when a server fails.
pub(crate) const LOG_TAIL_LINES: usize = 30;
/// The server's log file, in its directory.
pub(crate) const LOG_FILE: &str = "redis.log";
/// The server's stdout and stderr, in its directory.
const STDIO_FILE: &str = "redis.stdio";

/// Why a launch failed: the port was taken (try another), or anything else.
pub(crate) enum Launch {
    PortInUse(Error),
    Failed(Error),
}

/// Everything needed to (re)start the server process on a given port.
#[derive(Debug)]
pub(crate) struct Launcher {
    pub(crate) binary: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) dir: PathBuf,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) start_timeout: Duration,
    /// The TLS port (`--tls-port`), fixed once the first start succeeded.
    pub(crate) tls_port: Option<u16>,
}

impl Launcher {
    pub(crate) fn launch(&self, port: u16) -> std::result::Result<Child, Launch> {
        let log_path = self.dir.join(LOG_FILE);
        let stdio_path = self.dir.join(STDIO_FILE);
        let offsets = (file_len(&log_path), file_len(&stdio_path));
        let io_err = |what: &str, e| {
            Launch::Failed(Error::io(format!("{what} {}", stdio_path.display()), e))
        };
        let stdout = File::options()
            .create(true)
            .append(true)
            .open(&stdio_path)
            .map_err(|e| io_err("opening", e))?;
        let stderr = stdout.try_clone().map_err(|e| io_err("duplicating", e))?;

        let mut command = Command::new(&self.binary);
        command
            .arg("--port")
            .arg(port.to_string())
            .args(
                self.tls_port
                    .map(|p| ["--tls-port".to_owned(), p.to_string()])
                    .into_iter()
                    .flatten(),
            )
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let mut child = spawn_tied_to_process(command).map_err(|e| {
            Launch::Failed(Error::io(format!("spawning {}", self.binary.display()), e))
        })?;

        let info = ConnectionInfo {
            host_port: format!("127.0.0.1:{port}"),
            user: self.user.clone(),
            password: self.password.clone(),
            db: None,
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + self.start_timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log_tail = self.log_tail_since(offsets);
                let error = Error::StartFailed {
                    reason: format!("it exited with {status} on port {port}"),
                    log_tail,
                };
                return Err(if self.log_says_port_in_use(offsets) {
                    Launch::PortInUse(error)
                } else {
                    Launch::Failed(error)
                });
            }
            if answers_ping(addr, &info) {
                return Ok(child);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Launch::Failed(Error::StartFailed {
                    reason: format!(
                        "it did not answer PING on port {port} within {:?}",
                        self.start_timeout
                    ),
                    log_tail: self.log_tail_since(offsets),
                }));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn new_output_since(&self, (log_off, stdio_off): (u64, u64)) -> String {
        let mut text = read_from(&self.dir.join(STDIO_FILE), stdio_off);
        text.push_str(&read_from(&self.dir.join(LOG_FILE), log_off));
        text
    }

    fn log_says_port_in_use(&self, offsets: (u64, u64)) -> bool {
        self.new_output_since(offsets)
            .contains("Address already in use")
    }

    fn log_tail_since(&self, offsets: (u64, u64)) -> String {
        tail(&self.new_output_since(offsets), LOG_TAIL_LINES)
    }
}

/// Whether the server is up and done loading. Any reply but `LOADING` counts, errors
/// included: the server is serving.
fn answers_ping(addr: SocketAddr, info: &ConnectionInfo) -> bool {
    let Ok(mut client) = TestClient::connect_addr_timeout(addr, Duration::from_millis(250)) else {
        return false;
    };
    if client
        .set_read_timeout(Some(Duration::from_secs(2)))
        .is_err()
    {
        return false;
    }
    let result = client.handshake(info).and_then(|()| client.cmd(["PING"]));
    match result {
        Ok(_) => true,
        Err(Error::Server(e)) => *e.kind() != ServerErrorKind::Loading,
        Err(_) => false,
    }
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

pub(crate) fn read_from(path: &Path, offset: u64) -> String {
    let mut out = Vec::new();
    if let Ok(mut f) = File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.read_to_end(&mut out);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

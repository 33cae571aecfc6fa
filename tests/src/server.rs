//! [`RedisServer`]: a private `redis-server` per test, in its own temp dir on its own port,
//! that tests can kill, freeze and restart, and that dies with the test.
//!
//! The server runs in the foreground (`--daemonize no`) as our child so we own its
//! lifetime: `Drop` SIGKILLs and reaps it, and [`crate::process`] makes the kernel kill it
//! if the test process dies first. Readiness is "answers PING" (after `AUTH` when
//! configured, and not `LOADING`), polled against a deadline — never a fixed sleep.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::builder::RedisServerBuilder;
use crate::client::{info_value, TestClient};
use crate::error::{Error, Result};
use crate::launch::{read_from, tail, Launch, Launcher, LOG_FILE, LOG_TAIL_LINES, POLL_INTERVAL};
use crate::process::signal;
use crate::url::url_encode;
use crate::version::Version;

/// How long a graceful stop (SIGTERM) may take before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`RedisServer::restart`] keeps retrying while its port is taken.
const RESTART_PORT_WAIT: Duration = Duration::from_secs(5);

/// A private `redis-server` on 127.0.0.1, in a temp dir, SIGKILLed on drop.
///
/// `Send + Sync`: a fault-injection thread may kill or restart it while other threads use
/// its URL. All methods take `&self`.
///
/// ```no_run
/// # fn main() -> ringq_tests::Result<()> {
/// use ringq_tests::{RedisServer, TestClient};
///
/// let server = RedisServer::builder().aof_always(true).start()?;
/// let mut c = TestClient::connect(&server.url())?;
/// c.lpush_many("jobs", ["a", "b"])?;
/// server.kill()?; // SIGKILL: a crash
/// server.restart()?; // same port, same data directory
/// assert_eq!(TestClient::connect(&server.url())?.llen("jobs")?, 2);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct RedisServer {
    pub(crate) launcher: Launcher,
    pub(crate) port: u16,
    pub(crate) child: Mutex<Option<Child>>,
    /// Set by `with_version` right after the first start.
    pub(crate) version: Version,
    // Last field: dropped after `Drop::drop` has killed the server.
    pub(crate) dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server with the default configuration (no persistence, no auth).
    ///
    /// # Errors
    /// As [`RedisServerBuilder::start`].
    pub fn start() -> Result<Self> {
        Self::builder().start()
    }

    /// A builder for AOF, auth, ACL users and extra options.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    pub(crate) fn with_version(mut self) -> Result<Self> {
        let mut client = self.client()?;
        let info = client.info("server")?;
        let version = info_value(&info, "redis_version").and_then(Version::parse);
        self.version = version.ok_or_else(|| Error::StartFailed {
            reason: "INFO server has no parsable redis_version".into(),
            log_tail: tail(&info, LOG_TAIL_LINES),
        })?;
        Ok(self)
    }

    /// The TCP port, fixed for the server's life (restarts reuse it).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `redis://127.0.0.1:PORT`, with `user:password@` when the builder set an ACL user
    /// (the first), or `:password@` with only `requirepass`.
    pub fn url(&self) -> String {
        match (&self.launcher.user, &self.launcher.password) {
            (Some(user), Some(pass)) => self.url_as(Some(user), pass),
            (None, Some(pass)) => self.url_as(None, pass),
            _ => self.url_without_auth(),
        }
    }

    /// The TLS port of a server started with [`RedisServerBuilder::tls`].
    ///
    /// # Panics
    /// When the server was started without TLS.
    pub fn tls_port(&self) -> u16 {
        self.launcher
            .tls_port
            .expect("the server was started without TLS (RedisServerBuilder::tls)")
    }

    /// `127.0.0.1:TLS_PORT` of a server started with TLS.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.launcher
            .tls_port
            .map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p)))
    }

    /// `rediss://127.0.0.1:TLS_PORT`, with the same credentials as [`RedisServer::url`].
    pub fn tls_url(&self) -> String {
        self.tls_url_for("127.0.0.1")
    }

    /// The TLS URL with another host name for the same loopback server (`localhost`,
    /// to check a DNS name against the certificate).
    pub fn tls_url_for(&self, host: &str) -> String {
        let plain = self.url();
        let creds = plain
            .strip_prefix("redis://")
            .and_then(|r| r.split_once('@'))
            .map(|(c, _)| format!("{c}@"))
            .unwrap_or_default();
        format!("rediss://{creds}{host}:{}", self.tls_port())
    }

    /// `redis://127.0.0.1:PORT` with no credentials, whatever the configuration.
    pub fn url_without_auth(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A URL authenticating as `user` (or the default user when `None`) with `password`.
    pub fn url_as(&self, user: Option<&str>, password: &str) -> String {
        let user = user.map(url_encode).unwrap_or_default();
        format!(
            "redis://{user}:{}@127.0.0.1:{}",
            url_encode(password),
            self.port
        )
    }

    /// The server's working directory (AOF, RDB and log live here); removed on drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(LOG_FILE)
    }

    /// The last `lines` lines of the server's log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&read_from(&self.log_path(), 0), lines)
    }

    /// The server's version, read from `INFO server` at start.
    pub fn version(&self) -> Version {
        self.version
    }

    /// A new [`TestClient`] connected with [`RedisServer::url`].
    ///
    /// # Errors
    /// As [`TestClient::connect`].
    pub fn client(&self) -> Result<TestClient> {
        TestClient::connect(&self.url())
    }

    fn lock(&self) -> MutexGuard<'_, Option<Child>> {
        // A panic while holding the lock leaves the Child in a valid state: keep using it.
        self.child
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        let mut guard = self.lock();
        let child = guard.as_mut()?;
        matches!(child.try_wait(), Ok(None)).then(|| child.id())
    }

    /// Whether the server process is alive (it may be frozen by [`RedisServer::freeze`]).
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// SIGKILLs the server and waits for it: a crash. Existing connections break and new
    /// ones are refused until [`RedisServer::restart`]. Does nothing if it is not running.
    ///
    /// # Errors
    /// An I/O error from waiting for the process.
    pub fn kill(&self) -> Result<()> {
        let mut guard = self.lock();
        if let Some(mut child) = guard.take() {
            kill_and_reap(&mut child)?;
        }
        Ok(())
    }

    /// Stops the server gracefully (SIGTERM: it closes connections and flushes the AOF),
    /// falling back to SIGKILL after 10 s. Does nothing if it is not running.
    ///
    /// # Errors
    /// An I/O error from signalling or waiting for the process.
    pub fn stop(&self) -> Result<()> {
        let mut guard = self.lock();
        let Some(mut child) = guard.take() else {
            return Ok(());
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return Ok(());
        }
        // A frozen server cannot act on SIGTERM.
        let _ = signal(child.id(), libc::SIGCONT);
        signal(child.id(), libc::SIGTERM)
            .map_err(|e| Error::io("sending SIGTERM to redis-server", e))?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => std::thread::sleep(POLL_INTERVAL),
                Err(e) => return Err(Error::io("waiting for redis-server", e)),
            }
        }
        kill_and_reap(&mut child)
    }

    /// Starts the server again on the same port with the same configuration and data
    /// directory, stopping it gracefully first if it is running. Without AOF nothing
    /// survives; with [`RedisServerBuilder::aof_always`] every acknowledged write does, even
    /// after [`RedisServer::kill`]. Retries for up to 5 s while the port is taken. Waits
    /// until the server answers PING and has loaded its data.
    ///
    /// # Errors
    /// [`Error::StartFailed`] with the log's end if it does not come back.
    pub fn restart(&self) -> Result<()> {
        self.stop()?;
        let mut guard = self.lock();
        let deadline = Instant::now() + RESTART_PORT_WAIT;
        loop {
            match self.launcher.launch(self.port) {
                Ok(child) => {
                    *guard = Some(child);
                    return Ok(());
                }
                Err(Launch::PortInUse(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(Launch::PortInUse(e) | Launch::Failed(e)) => return Err(e),
            }
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing is answered, like
    /// a hung broker. Undo with [`RedisServer::thaw`].
    ///
    /// # Errors
    /// An I/O error if the server is not running or cannot be signalled.
    pub fn freeze(&self) -> Result<()> {
        self.send_signal(libc::SIGSTOP, "SIGSTOP")
    }

    /// Resumes a server frozen by [`RedisServer::freeze`] (SIGCONT).
    ///
    /// # Errors
    /// An I/O error if the server is not running or cannot be signalled.
    pub fn thaw(&self) -> Result<()> {
        self.send_signal(libc::SIGCONT, "SIGCONT")
    }

    fn send_signal(&self, sig: libc::c_int, name: &str) -> Result<()> {
        let context = format!("sending {name} to redis-server");
        let guard = self.lock();
        let child = guard
            .as_ref()
            .ok_or_else(|| Error::io(&context, std::io::Error::other("it is not running")))?;
        signal(child.id(), sig).map_err(|e| Error::io(&context, e))
    }
}

fn kill_and_reap(child: &mut Child) -> Result<()> {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return Ok(());
    }
    // An error here means it exited meanwhile; `wait` below settles it either way.
    let _ = child.kill();
    child
        .wait()
        .map(drop)
        .map_err(|e| Error::io("waiting for redis-server to exit", e))
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let child = self
            .child
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(mut child) = child.take() {
            let _ = kill_and_reap(&mut child);
        }
    }
}

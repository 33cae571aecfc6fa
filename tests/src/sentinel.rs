//! Redis Sentinel for failover tests: a master, its replica(s), and N sentinels
//! (`redis-server sentinel.conf --sentinel`) watching it, all on loopback, each in its own
//! temp dir, killed on drop.
//!
//! ```no_run
//! # fn main() -> ringq_tests::Result<()> {
//! use ringq_tests::SentinelGroup;
//!
//! let g = SentinelGroup::start("mymaster", 1, 3)?;
//! let url = g.url(); // redis+sentinel://127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3/mymaster
//! g.failover()?; // SENTINEL FAILOVER, then wait until the replica is the master
//! # Ok(()) }
//! ```

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use ringq_resp::Frame;

use crate::client::TestClient;
use crate::error::{Error, Result};
use crate::process::{find_redis_server, free_port, signal, spawn_tied_to_process};
use crate::server::RedisServer;
use crate::wait::wait_until;

/// How long the group gets to settle (sentinels finding each other and the replica).
const SETTLE: Duration = Duration::from_secs(30);
/// How long a failover gets to finish.
const FAILOVER: Duration = Duration::from_secs(60);

/// What [`SentinelGroup::start_with`] can add.
#[derive(Debug, Default, Clone, Copy)]
pub struct SentinelOptions<'a> {
    /// The sentinels require this password (`requirepass`, `sentinel sentinel-pass`).
    pub sentinel_password: Option<&'a str>,
    /// The data nodes require this password (`requirepass`, `masterauth`; the sentinels
    /// get `sentinel auth-pass`).
    pub data_password: Option<&'a str>,
    /// Everything speaks TLS with these certificates: the data nodes (a TLS port,
    /// replication over TLS) and the sentinels (a TLS port they announce, TLS to the
    /// nodes and to each other); the plaintext ports stay open for the harness.
    pub tls: Option<&'a crate::TestPki>,
}

/// The certificate files of a TLS group.
#[derive(Debug, Clone)]
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

/// One sentinel process.
#[derive(Debug)]
struct Sentinel {
    port: u16,
    /// Its TLS port (announced to the other sentinels), in a TLS group.
    tls_port: Option<u16>,
    child: Mutex<Option<Child>>,
    dir: tempfile::TempDir,
}

/// A master, its replicas and the sentinels watching them (`down-after-milliseconds`
/// 1000, quorum 2 of 3, or 1 with fewer sentinels).
#[derive(Debug)]
pub struct SentinelGroup {
    name: String,
    /// The sentinels' own password, if they require one.
    password: Option<String>,
    /// The data nodes' password, if they require one.
    data_password: Option<String>,
    /// TLS everywhere.
    tls: Option<TlsFiles>,
    /// Data nodes: the first started as the master.
    nodes: Vec<RedisServer>,
    sentinels: Vec<Sentinel>,
}

fn lock(m: &Mutex<Option<Child>>) -> std::sync::MutexGuard<'_, Option<Child>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn text(f: &Frame) -> Option<String> {
    f.as_bytes()
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

/// A field of a flat field/value array (RESP2 `SENTINEL MASTER`).
fn field(f: &Frame, name: &str) -> Option<String> {
    let v = f.as_elements()?;
    v.chunks(2)
        .find(|kv| text(&kv[0]).as_deref() == Some(name))
        .and_then(|kv| text(kv.get(1)?))
}

impl SentinelGroup {
    /// Starts a master, `replicas` replicas of it (waiting until each is in sync) and
    /// `sentinels` sentinels monitoring it as `name`, then waits until every sentinel
    /// sees the others and the replicas.
    ///
    /// # Errors
    /// A server that does not start, or a group that does not settle in 30 s.
    pub fn start(name: &str, replicas: usize, sentinels: usize) -> Result<Self> {
        Self::start_with(name, replicas, sentinels, &SentinelOptions::default())
    }

    /// As [`SentinelGroup::start`], with passwords and TLS as `opts` says.
    ///
    /// # Errors
    /// As [`SentinelGroup::start`].
    pub fn start_with(
        name: &str,
        replicas: usize,
        sentinels: usize,
        opts: &SentinelOptions<'_>,
    ) -> Result<Self> {
        let node = || {
            let mut b = RedisServer::builder();
            if let Some(p) = opts.data_password {
                b = b.requirepass(p).arg("--masterauth", p);
            }
            if let Some(pki) = opts.tls {
                b = b.tls(pki, false).arg("--tls-replication", "yes");
            }
            b
        };
        let master = node().start()?;
        // Replicas (and sentinels) reach the master on its TLS port when there is one.
        let mport = master
            .tls_addr()
            .map_or(master.port(), |a| a.port())
            .to_string();
        let mut nodes = vec![master];
        for _ in 0..replicas {
            let r = node()
                .args(["--replicaof", "127.0.0.1", mport.as_str()])
                .start()?;
            nodes.push(r);
        }
        let mut g = Self {
            name: name.to_owned(),
            password: opts.sentinel_password.map(str::to_owned),
            data_password: opts.data_password.map(str::to_owned),
            tls: opts.tls.map(|p| TlsFiles {
                cert: p.server_cert(),
                key: p.server_key(),
                ca: p.ca_cert(),
            }),
            nodes,
            sentinels: Vec::new(),
        };
        for r in &g.nodes[1..] {
            let mut c = r.client()?;
            let synced = wait_until(SETTLE, || {
                c.info_field("replication", "master_link_status")
                    .ok()
                    .flatten()
                    .as_deref()
                    == Some("up")
            });
            if !synced {
                return Err(start_failed("a replica did not sync with the master", ""));
            }
        }
        let quorum = if sentinels >= 3 { 2 } else { 1 };
        for _ in 0..sentinels {
            let s = g.spawn_sentinel(quorum)?;
            g.sentinels.push(s);
        }
        let settled = wait_until(SETTLE, || {
            (0..g.sentinels.len()).all(|i| {
                let Ok(mut c) = g.sentinel_client(i) else {
                    return false;
                };
                let Ok(f) = c.cmd(["SENTINEL", "MASTER", name]) else {
                    return false;
                };
                let others = field(&f, "num-other-sentinels").and_then(|v| v.parse().ok());
                let slaves = field(&f, "num-slaves").and_then(|v| v.parse().ok());
                others == Some(sentinels - 1) && slaves == Some(replicas)
            })
        });
        if !settled {
            let log = g
                .sentinels
                .first()
                .map(|s| {
                    std::fs::read_to_string(s.dir.path().join("sentinel.log")).unwrap_or_default()
                })
                .unwrap_or_default();
            return Err(start_failed(
                "the sentinels did not find each other and the replicas in 30 s",
                &log,
            ));
        }
        Ok(g)
    }

    fn spawn_sentinel(&self, quorum: usize) -> Result<Sentinel> {
        let binary = find_redis_server()?;
        let dir = tempfile::Builder::new()
            .prefix("ringq-sentinel-")
            .tempdir()
            .map_err(|e| Error::io("creating a temp dir for a sentinel", e))?;
        let port = free_port()?;
        let tls_port = match self.tls {
            Some(_) => Some(free_port()?),
            None => None,
        };
        let conf = dir.path().join("sentinel.conf");
        let master = self.nodes[0]
            .tls_addr()
            .map_or(self.nodes[0].port(), |a| a.port());
        let name = &self.name;
        let text = format!(
            "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\nlogfile {dir}/sentinel.log\n\
             sentinel monitor {name} 127.0.0.1 {master} {quorum}\n\
             sentinel down-after-milliseconds {name} 1000\n\
             sentinel failover-timeout {name} 10000\n\
             sentinel parallel-syncs {name} 1\n",
            dir = dir.path().display(),
        );
        let mut text = match &self.password {
            Some(p) => format!("{text}requirepass {p}\nsentinel sentinel-pass {p}\n"),
            None => text,
        };
        if let Some(p) = &self.data_password {
            text.push_str(&format!("sentinel auth-pass {name} {p}\n"));
        }
        if let (Some(t), Some(tp)) = (&self.tls, tls_port) {
            text.push_str(&format!(
                "tls-port {tp}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
                 tls-auth-clients no\ntls-replication yes\nsentinel announce-port {tp}\n",
                t.cert.display(),
                t.key.display(),
                t.ca.display()
            ));
        }
        std::fs::write(&conf, text)
            .map_err(|e| Error::io(format!("writing {}", conf.display()), e))?;
        let stdio = File::create(dir.path().join("sentinel.stdio"))
            .map_err(|e| Error::io("creating the sentinel's stdio file", e))?;
        let stderr = stdio
            .try_clone()
            .map_err(|e| Error::io("duplicating a file", e))?;
        let mut cmd = Command::new(&binary);
        cmd.arg(&conf)
            .arg("--sentinel")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdio)
            .stderr(stderr);
        let child = spawn_tied_to_process(cmd)
            .map_err(|e| Error::io(format!("spawning {} --sentinel", binary.display()), e))?;
        let s = Sentinel {
            port,
            tls_port,
            child: Mutex::new(Some(child)),
            dir,
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let up = wait_until(Duration::from_secs(15), || {
            TestClient::connect_addr(addr).is_ok_and(|mut c| {
                // Any answer counts (NOAUTH included): the sentinel is serving.
                c.send(["PING"]).is_ok() && c.read_frame().is_ok()
            })
        });
        if !up {
            let log =
                std::fs::read_to_string(s.dir.path().join("sentinel.stdio")).unwrap_or_default();
            return Err(start_failed("a sentinel did not answer PING", &log));
        }
        Ok(s)
    }

    /// The master's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `redis+sentinel://127.0.0.1:P1,…/<name>` (`rediss+sentinel://` with the
    /// sentinels' TLS ports in a TLS group), without credentials.
    pub fn url(&self) -> String {
        let tls = self.tls.is_some();
        let list: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.tls_port.unwrap_or(s.port)))
            .collect();
        let scheme = if tls {
            "rediss+sentinel"
        } else {
            "redis+sentinel"
        };
        format!("{scheme}://{}/{}", list.join(","), self.name)
    }

    /// The sentinels' ports, in start order.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// A client of sentinel `i`.
    ///
    /// # Errors
    /// As [`TestClient::connect_addr`].
    pub fn sentinel_client(&self, i: usize) -> Result<TestClient> {
        let port = self.sentinels[i].port;
        let mut c = TestClient::connect_addr(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
        if let Some(p) = &self.password {
            let f = c.cmd(["AUTH", p.as_str()])?;
            if f.is_error() {
                return Err(start_failed(&format!("AUTH at a sentinel: {f:?}"), ""));
            }
        }
        Ok(c)
    }

    /// The data nodes (the first started as the master; after a failover another one
    /// is: see [`SentinelGroup::master`]).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Where the sentinels (the first that answers) say the master is.
    ///
    /// # Errors
    /// No sentinel answered with an address.
    pub fn master_addr(&self) -> Result<SocketAddr> {
        for i in 0..self.sentinels.len() {
            let Ok(mut c) = self.sentinel_client(i) else {
                continue;
            };
            if let Ok(Frame::Array(v)) = c.cmd(["SENTINEL", "GET-MASTER-ADDR-BY-NAME", &self.name])
            {
                let port = v.get(1).and_then(text).and_then(|p| p.parse::<u16>().ok());
                if let Some(port) = port {
                    return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
                }
            }
        }
        Err(start_failed(
            "no sentinel answered with the master's address",
            "",
        ))
    }

    /// The data node the sentinels call the master.
    ///
    /// # Errors
    /// As [`SentinelGroup::master_addr`].
    pub fn master(&self) -> Result<&RedisServer> {
        let at = self.master_addr()?;
        self.node_at(at)
            .ok_or_else(|| start_failed("the sentinels name a master that is not ours", ""))
    }

    /// The data node listening at `at` (its plaintext or TLS port).
    fn node_at(&self, at: SocketAddr) -> Option<&RedisServer> {
        self.nodes
            .iter()
            .find(|n| n.addr() == at || n.tls_addr() == Some(at))
    }

    /// `SENTINEL FAILOVER <name>` on the first sentinel, then waits until every sentinel
    /// names another master and that node says it is one (`ROLE`).
    ///
    /// # Errors
    /// The command is refused, or the failover does not finish in 60 s.
    pub fn failover(&self) -> Result<SocketAddr> {
        let before = self.master_addr()?;
        let mut c = self.sentinel_client(0)?;
        let f = c.cmd(["SENTINEL", "FAILOVER", &self.name])?;
        if f.is_error() {
            return Err(start_failed(
                &format!("SENTINEL FAILOVER refused: {f:?}"),
                "",
            ));
        }
        self.wait_switched(before)
    }

    /// Waits until the sentinels name a master other than `before`, and that node's ROLE
    /// says master. Returns the new master's address.
    ///
    /// # Errors
    /// Not within 60 s.
    pub fn wait_switched(&self, before: SocketAddr) -> Result<SocketAddr> {
        let mut now = None;
        let done = wait_until(FAILOVER, || {
            let Ok(at) = self.master_addr() else {
                return false;
            };
            if at == before {
                return false;
            }
            let is_master = self
                .node_at(at)
                .and_then(|n| n.client().ok())
                .and_then(|mut c| c.cmd(["ROLE"]).ok())
                .and_then(|f| f.as_elements().and_then(|v| v.first().and_then(text)))
                .as_deref()
                == Some("master");
            now = Some(at);
            is_master
        });
        match (done, now) {
            (true, Some(at)) => Ok(at),
            _ => Err(start_failed("the failover did not finish in 60 s", "")),
        }
    }

    /// SIGKILLs sentinel `i` (it stays down).
    ///
    /// # Errors
    /// Waiting for the process failed.
    pub fn kill_sentinel(&self, i: usize) -> Result<()> {
        if let Some(mut c) = lock(&self.sentinels[i].child).take() {
            let _ = c.kill();
            c.wait()
                .map_err(|e| Error::io("waiting for a sentinel", e))?;
        }
        Ok(())
    }

    /// Freezes sentinel `i` (SIGSTOP): it accepts connections but answers nothing.
    ///
    /// # Errors
    /// Signalling failed.
    pub fn freeze_sentinel(&self, i: usize) -> Result<()> {
        self.signal_sentinel(i, libc::SIGSTOP)
    }

    /// Undoes [`SentinelGroup::freeze_sentinel`].
    ///
    /// # Errors
    /// Signalling failed.
    pub fn thaw_sentinel(&self, i: usize) -> Result<()> {
        self.signal_sentinel(i, libc::SIGCONT)
    }

    fn signal_sentinel(&self, i: usize, sig: libc::c_int) -> Result<()> {
        if let Some(c) = lock(&self.sentinels[i].child).as_ref() {
            signal(c.id(), sig).map_err(|e| Error::io("signalling a sentinel", e))?;
        }
        Ok(())
    }

    /// The directory of sentinel `i` (config and log).
    pub fn sentinel_dir(&self, i: usize) -> PathBuf {
        self.sentinels[i].dir.path().to_owned()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(mut c) = lock(&self.child).take() {
            let _ = signal(c.id(), libc::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_failed(reason: &str, log: &str) -> Error {
    Error::StartFailed {
        reason: reason.to_owned(),
        log_tail: log
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

//! Redis Sentinel: where the master named in a `redis+sentinel://` URL is now, and word
//! of a failover as soon as the sentinels make one.
//!
//! - **Resolution** (`Sentinels::master_addr`) runs on the engine's resolver thread, the
//!   same seam as a DNS lookup (`resolve.rs`): every (re)connect of every connection asks
//!   the sentinels in turn, each with a short deadline (`SENTINEL
//!   GET-MASTER-ADDR-BY-NAME`); the first that answers moves to the front of the list, and
//!   its `SENTINEL SENTINELS` adds the sentinels it knows. A sentinel that is down, slow
//!   or does not know the master is skipped.
//! - **Checking.** The address is only a claim: the connection's handshake ends with
//!   `ROLE` on the data connection itself, and a node that is not a master is left for
//!   another lookup (`conn/handshake.rs`).
//! - **Following** (`watch.rs`): one thread per engine subscribes to `+switch-master` on
//!   a sentinel; a switch of this master bumps `epoch`, records the new address and wakes
//!   every shard, which closes the connections to any other address
//!   (`Shard::follow_failover`), so they reconnect (and look the master up) at once rather
//!   than when the old master's errors reach them. READONLY, MASTERDOWN, an UNBLOCKED for
//!   a role change and a lost connection reconnect through the same lookup.
//!
//! The sentinels get their own credentials ([`crate::EngineBuilder::sentinel_password`]);
//! the URL's are the data nodes'. TLS (`rediss+sentinel://`) applies to both.

mod watch;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringq_resp::Frame;
use rustls::ClientConfig;

pub(crate) use crate::blocking::Blocking;
pub(crate) use watch::watch;

use crate::error::{Error, ErrorKind};
use crate::url::HostPort;

/// The sentinels of one master, shared by the resolver thread, the watcher and the
/// shards.
pub(crate) struct Sentinels {
    master: String,
    /// Front: the last one that answered.
    list: Mutex<Vec<(String, u16)>>,
    auth: Option<(Option<String>, String)>,
    tls: Option<Arc<ClientConfig>>,
    /// Each sentinel's deadline (connect, then each reply).
    timeout: Duration,
    /// Bumped by the watcher for each `+switch-master` of this master.
    epoch: AtomicU64,
    /// Where the last switch moved the master.
    switched_to: Mutex<Option<SocketAddr>>,
}

impl std::fmt::Debug for Sentinels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sentinels")
            .field("master", &self.master)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sentinels {
    pub(crate) fn new(
        master: String,
        list: Vec<(String, u16)>,
        auth: Option<(Option<String>, String)>,
        tls: Option<Arc<ClientConfig>>,
        timeout: Duration,
    ) -> Self {
        Self {
            master,
            list: Mutex::new(list),
            auth,
            tls,
            timeout,
            epoch: AtomicU64::new(0),
            switched_to: Mutex::new(None),
        }
    }

    /// The master's name.
    pub(crate) fn master(&self) -> &str {
        &self.master
    }

    /// The sentinels, in the order they are asked.
    pub(crate) fn list(&self) -> Vec<(String, u16)> {
        lock(&self.list).clone()
    }

    /// The number of failovers followed so far, and where the last one went.
    pub(crate) fn switched(&self) -> (u64, Option<SocketAddr>) {
        (self.epoch.load(Ordering::Acquire), *lock(&self.switched_to))
    }

    fn note_switch(&self, to: SocketAddr) {
        *lock(&self.switched_to) = Some(to);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn connect(&self, host: &str, port: u16) -> Result<Blocking, Error> {
        let auth = self.auth.as_ref().map(|(u, p)| (u.as_deref(), p.as_str()));
        Blocking::connect(
            host,
            port,
            self.timeout,
            self.tls.as_ref(),
            auth,
            "the sentinel password",
        )
    }

    /// Asks the sentinels in turn where the master is: `(host, port)` as the first that
    /// knows says, that sentinel moved to the front.
    ///
    /// # Errors
    /// [`ErrorKind::ConnectionLost`] naming what each sentinel did, when none answered
    /// (an authentication failure at a sentinel is [`ErrorKind::Auth`]).
    pub(crate) fn master_addr(&self) -> Result<(String, u16), Error> {
        let list = self.list();
        let mut why = Vec::new();
        let mut auth = None;
        for (i, (host, port)) in list.iter().enumerate() {
            match self.ask(host, *port) {
                Ok((addr, known)) => {
                    let mut l = lock(&self.list);
                    if let Some(at) = l.iter().position(|s| s == &list[i]) {
                        let s = l.remove(at);
                        l.insert(0, s);
                    }
                    for k in known {
                        if !l.contains(&k) {
                            l.push(k);
                        }
                    }
                    return Ok(addr);
                }
                Err(e) => {
                    if e.kind() == ErrorKind::Auth {
                        auth = Some(e.to_string());
                    }
                    why.push(e.to_string());
                }
            }
        }
        let text = format!(
            "no sentinel gave the address of master '{}': {}",
            self.master,
            why.join("; ")
        );
        Err(match auth {
            Some(_) => Error::auth(text, None),
            None => Error::new(ErrorKind::ConnectionLost, text),
        })
    }

    /// One sentinel: the master's address, and the other sentinels it knows.
    #[allow(clippy::type_complexity)]
    fn ask(&self, host: &str, port: u16) -> Result<((String, u16), Vec<(String, u16)>), Error> {
        let mut c = self.connect(host, port)?;
        let name = self.master.as_bytes();
        let reply = c.command(&[b"SENTINEL", b"GET-MASTER-ADDR-BY-NAME", name])?;
        let peer = c.peer().to_owned();
        let addr = match &reply {
            Frame::Array(v) if v.len() == 2 => {
                let text = |f: &Frame| {
                    f.as_bytes()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                };
                let h = text(&v[0]);
                let p = text(&v[1]).and_then(|p| p.parse::<u16>().ok());
                match (h, p) {
                    (Some(h), Some(p)) => (h, p),
                    _ => {
                        return Err(Error::new(
                            ErrorKind::Protocol,
                            format!("sentinel {peer}: unexpected answer {reply:?}"),
                        ))
                    }
                }
            }
            f if f.is_error() => {
                let e = f.to_server_error().map_or_else(String::new, |e| {
                    crate::conn::classify::plain(&e).to_string()
                });
                return Err(Error::new(
                    ErrorKind::ConnectionLost,
                    format!("sentinel {peer}: {e}"),
                ));
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::ConnectionLost,
                    format!(
                        "sentinel {peer} does not know a master named '{}'",
                        self.master
                    ),
                ))
            }
        };
        // The other sentinels of this master (best effort: the answer stands without).
        let known = c
            .command(&[b"SENTINEL", b"SENTINELS", name])
            .map(|f| sentinels_of(&f))
            .unwrap_or_default();
        Ok((addr, known))
    }
}

/// `(ip, port)` of each entry of a `SENTINEL SENTINELS` reply (flat field/value arrays in
/// RESP2, maps in RESP3).
fn sentinels_of(f: &Frame) -> Vec<(String, u16)> {
    let Some(entries) = f.as_elements() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries {
        let fields: Vec<&Frame> = match e {
            Frame::Map(m) => m.iter().flat_map(|(k, v)| [k, v]).collect(),
            other => other
                .as_elements()
                .map(|v| v.iter().collect())
                .unwrap_or_default(),
        };
        let get = |name: &[u8]| {
            fields
                .chunks(2)
                .find(|kv| kv[0].as_bytes().is_some_and(|k| k.as_ref() == name))
                .and_then(|kv| kv.get(1)?.as_bytes())
                .map(|b| String::from_utf8_lossy(b).into_owned())
        };
        if let (Some(ip), Some(port)) = (get(b"ip"), get(b"port").and_then(|p| p.parse().ok())) {
            out.push((ip, port));
        }
    }
    out
}

/// Where the sentinels of a `redis+sentinel://` URL say its master is, for tools that
/// open their own connection (the `ringq` CLI's `produce`, `stats`, `dead`): the same
/// lookup the engine makes on every connect, with `tls` for `rediss+sentinel://` and the
/// sentinels' own credentials `sentinel_auth` (user, password).
///
/// # Errors
/// [`ErrorKind::Config`] for a URL that is not a Sentinel one; otherwise as the engine's
/// lookup: every sentinel's failure named.
pub fn sentinel_master(
    info: &crate::ConnectionInfo,
    tls: Option<&crate::Tls>,
    sentinel_auth: Option<(Option<&str>, &str)>,
    timeout: Duration,
) -> Result<(String, u16), Error> {
    let crate::Address::Sentinel { sentinels, master } = &info.address else {
        return Err(Error::config("not a redis+sentinel:// URL"));
    };
    let config = if info.tls {
        Some(tls.cloned().unwrap_or_default().client_config()?)
    } else {
        None
    };
    let auth = sentinel_auth.map(|(u, p)| (u.map(str::to_owned), p.to_owned()));
    Sentinels::new(master.clone(), sentinels.clone(), auth, config, timeout).master_addr()
}

/// `host:port` turned into a socket address.
pub(crate) fn socket_addr(host: &str, port: u16) -> Result<SocketAddr, Error> {
    (host, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::ConnectionLost,
                format!(
                    "the master's address {} does not resolve",
                    HostPort(host, port)
                ),
            )
        })
}

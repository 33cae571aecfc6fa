//! Host-name resolution for reconnects, off the shard threads.
//!
//! A failover of a managed Redis moves a DNS name to the new primary, so a reconnect must
//! look the name up again rather than dial the address found at start. A lookup
//! (`getaddrinfo`) blocks, for seconds when DNS is slow, and a shard thread serves many
//! connections: so shards post lookups to one resolver thread per engine, which answers
//! into a per-shard inbox and wakes the shard through its eventfd. Requests that queue up
//! while a lookup runs (every connection of a failed server reconnects at once) are all
//! answered by the next lookup.
//!
//! Addresses that need no lookup (IP literals, Unix sockets) never come here. A master
//! behind Sentinel always does: its lookup asks the sentinels (`sentinel/`).

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use crate::error::{Error, ErrorKind};
use crate::sentinel::Sentinels;
use crate::url::ResolvedAddr;
use crate::wake::Signals;

/// A host-name resolver: host and port in, addresses out (the first is dialled). The
/// default is the system's (`getaddrinfo`); see
/// [`EngineBuilder::resolver`](crate::EngineBuilder::resolver).
pub(crate) type ResolveFn = dyn Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + Sync;

/// The system resolver.
pub(crate) fn system_resolver() -> Arc<ResolveFn> {
    Arc::new(|host: &str, port: u16| Ok((host, port).to_socket_addrs()?.collect()))
}

/// Resolves `host:port` with `f`, as an engine error that says what failed.
pub(crate) fn resolve_with(f: &ResolveFn, host: &str, port: u16) -> Result<SocketAddr, Error> {
    let addrs = f(host, port).map_err(|e| {
        Error::new(
            ErrorKind::ConnectionLost,
            format!("cannot resolve host '{host}': {e}"),
        )
        .with_source(e)
    })?;
    addrs.into_iter().next().ok_or_else(|| {
        Error::new(
            ErrorKind::ConnectionLost,
            format!("host '{host}' resolved to no address"),
        )
    })
}

/// Whether `host` needs a lookup at all.
pub(crate) fn is_name(host: &str) -> bool {
    host.parse::<IpAddr>().is_err()
}

/// What a lookup finds an address for.
pub(crate) enum Lookup {
    /// A host name, through `f`.
    Host {
        f: Arc<ResolveFn>,
        host: String,
        port: u16,
    },
    /// The master the sentinels know.
    Sentinel(Arc<Sentinels>),
    /// Cluster nodes named by host in the topology: every request names its host
    /// ([`Resolver::request_host`]).
    Nodes(Arc<ResolveFn>),
}

impl Lookup {
    /// Runs the lookup (blocking).
    pub(crate) fn run(&self) -> Result<ResolvedAddr, Error> {
        match self {
            Lookup::Host { f, host, port } => {
                resolve_with(&**f, host, *port).map(|a| ResolvedAddr::Tcp(a, host.as_str().into()))
            }
            Lookup::Sentinel(s) => {
                let (host, port) = s.master_addr()?;
                let addr = crate::sentinel::socket_addr(&host, port)?;
                Ok(ResolvedAddr::Tcp(addr, host.into()))
            }
            Lookup::Nodes(_) => Err(Error::new(
                ErrorKind::ConnectionLost,
                "a cluster node lookup names its host",
            )),
        }
    }

    /// Looks up `host:port` with the lookup's resolver (the system's behind Sentinel).
    fn run_host(&self, host: &str, port: u16) -> Result<ResolvedAddr, Error> {
        let addr = match self {
            Lookup::Host { f, .. } | Lookup::Nodes(f) => resolve_with(&**f, host, port)?,
            Lookup::Sentinel(_) => resolve_with(&*system_resolver(), host, port)?,
        };
        Ok(ResolvedAddr::Tcp(addr, host.into()))
    }

    /// What is looked up, for messages.
    fn what(&self) -> String {
        match self {
            Lookup::Host { host, .. } => format!("host '{host}'"),
            Lookup::Sentinel(s) => format!("master '{}' at the sentinels", s.master()),
            Lookup::Nodes(_) => "a cluster node".into(),
        }
    }
}

/// A host name and port to look up.
type HostPort = (String, u16);

/// One lookup's answer for connection `conn` (generation `gen`) of a shard.
pub(crate) struct Resolved {
    pub conn: u32,
    pub gen: u32,
    pub addr: Result<ResolvedAddr, Error>,
}

#[derive(Default)]
struct Inbox {
    ready: AtomicBool,
    answers: Mutex<Vec<Resolved>>,
}

struct Request {
    shard: usize,
    conn: u32,
    gen: u32,
    /// The host to look up; `None`: the engine's own lookup.
    host: Option<(String, u16)>,
}

/// The engine's resolver thread, and the shards' inboxes.
pub(crate) struct Resolver {
    requests: Mutex<mpsc::Sender<Request>>,
    inboxes: Arc<Vec<Inbox>>,
}

impl Resolver {
    /// Starts the resolver thread for `lookup`, answering `shards` shards. The thread
    /// ends when the resolver is dropped (with the last connection settings holding it).
    pub(crate) fn start(
        lookup: Lookup,
        shards: usize,
        shared: Arc<Signals>,
    ) -> Result<Self, Error> {
        let (tx, rx) = mpsc::channel::<Request>();
        let inboxes: Arc<Vec<Inbox>> = Arc::new((0..shards).map(|_| Inbox::default()).collect());
        let boxes = inboxes.clone();
        std::thread::Builder::new()
            .name("ringq-resolve".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    // One lookup answers every request for the same thing in the batch.
                    let mut answers: Vec<(Option<HostPort>, Result<ResolvedAddr, Error>)> =
                        Vec::new();
                    let mut woken = vec![false; boxes.len()];
                    for r in batch {
                        let Some(inbox) = boxes.get(r.shard) else {
                            continue;
                        };
                        let at = match answers.iter().position(|(h, _)| *h == r.host) {
                            Some(at) => at,
                            None => {
                                answers.push((r.host.clone(), run(&lookup, r.host.as_ref())));
                                answers.len() - 1
                            }
                        };
                        let addr = match &answers[at].1 {
                            Ok(a) => Ok(a.clone()),
                            Err(e) => Err(Error::new(e.kind(), e.to_string())),
                        };
                        if let Ok(mut v) = inbox.answers.lock() {
                            v.push(Resolved {
                                conn: r.conn,
                                gen: r.gen,
                                addr,
                            });
                        }
                        inbox.ready.store(true, Ordering::Release);
                        woken[r.shard] = true;
                    }
                    for (shard, _) in woken.iter().enumerate().filter(|(_, w)| **w) {
                        shared.wake(shard);
                    }
                }
            })
            .map_err(|e| Error::io("spawning the resolver thread", e))?;
        Ok(Self {
            requests: Mutex::new(tx),
            inboxes,
        })
    }

    /// Asks for a fresh lookup for connection `conn` of shard `shard`. False when the
    /// resolver thread is gone (it cannot answer; dial the known address instead).
    pub(crate) fn request(&self, shard: usize, conn: u32, gen: u32) -> bool {
        self.send(Request {
            shard,
            conn,
            gen,
            host: None,
        })
    }

    /// Asks for a lookup of `host:port` for connection `conn` of shard `shard` (a
    /// cluster node named by host). False when the resolver thread is gone.
    pub(crate) fn request_host(
        &self,
        shard: usize,
        conn: u32,
        gen: u32,
        host: String,
        port: u16,
    ) -> bool {
        self.send(Request {
            shard,
            conn,
            gen,
            host: Some((host, port)),
        })
    }

    fn send(&self, r: Request) -> bool {
        self.requests.lock().is_ok_and(|tx| tx.send(r).is_ok())
    }

    /// Takes the answers that arrived for shard `shard` (cheap when there are none: one
    /// atomic load).
    pub(crate) fn take(&self, shard: usize, out: &mut Vec<Resolved>) {
        let Some(inbox) = self.inboxes.get(shard) else {
            return;
        };
        if !inbox.ready.swap(false, Ordering::Acquire) {
            return;
        }
        if let Ok(mut v) = inbox.answers.lock() {
            out.append(&mut v);
        }
    }
}

/// Runs one lookup (of `host`, or the engine's own), blocking. A panicking user resolver
/// must not leave connections waiting for an answer forever: it answers with an error.
fn run(lookup: &Lookup, host: Option<&(String, u16)>) -> Result<ResolvedAddr, Error> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match host {
        Some((h, p)) => lookup.run_host(h, *p),
        None => lookup.run(),
    }))
    .unwrap_or_else(|_| {
        Err(Error::new(
            ErrorKind::ConnectionLost,
            format!("the resolver panicked while looking up {}", lookup.what()),
        ))
    })
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

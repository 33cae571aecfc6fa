//! [`FaultProxy`]: a TCP proxy between a client under test and a real server, whose
//! faults a test switches on and off while traffic flows — for the faults that happen
//! *between* a healthy server and the engine: a slow network, replies cut into 1-byte
//! writes, a connection reset right after a reply is forwarded (before the client can
//! read it: the reply is lost in flight), a black hole (a half-open connection: nothing
//! forwarded either way, nothing closed).
//!
//! Each accepted connection gets its own upstream connection and two forwarding threads.
//! [`FaultProxy::fired`] counts how often the current fault acted, so a test can check
//! that the fault really happened mid-run.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};

/// What the proxy does to the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Forward everything as it comes.
    #[default]
    None,
    /// Hold each server-to-client chunk this long before forwarding it.
    Delay(Duration),
    /// Forward server-to-client bytes one `write` per byte.
    OneByteWrites,
    /// Forward the next server-to-client chunk, then reset both connections at once
    /// (SO_LINGER 0): the client may never read that reply. Fires exactly once, on
    /// whichever connection's reply is read first, and switches itself back to
    /// [`Fault::None`] in the same step.
    ResetAfterReply,
    /// Swallow the next server-to-client chunk of at least this many bytes (a batch's
    /// reply, not an ack's), then reset both connections: a command the server ran whose
    /// reply the client never sees. Fires once, like [`Fault::ResetAfterReply`]; smaller
    /// chunks go through meanwhile.
    SwallowReplyAtLeast(usize),
    /// Forward nothing in either direction and close nothing: a half-open connection.
    BlackHole,
    /// For TLS: forward the next server-to-client bytes up to the middle of a TLS record
    /// (inside its header or body), then reset both connections. Fires once, like
    /// [`Fault::ResetAfterReply`]; a chunk that ends exactly on a record boundary with
    /// nothing after it is forwarded whole and the fault waits for the next one.
    ResetMidRecord,
}

/// Where the server-to-client stream is in its TLS records (5-byte header: type,
/// version, 16-bit length), so a cut can land inside one.
#[derive(Default)]
struct Records {
    header: Vec<u8>,
    body_left: usize,
}

impl Records {
    fn advance(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(chunk.len());
                self.body_left -= n;
                chunk = &chunk[n..];
                continue;
            }
            let n = (5 - self.header.len()).min(chunk.len());
            self.header.extend_from_slice(&chunk[..n]);
            chunk = &chunk[n..];
            if self.header.len() == 5 {
                self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                self.header.clear();
            }
        }
    }

    /// A length of `chunk` to forward that ends inside a record, if there is one.
    fn cut(&self, chunk: &[u8]) -> Option<usize> {
        if self.body_left >= 2 || !self.header.is_empty() {
            // The chunk starts inside a record: stop half-way through what is left of it.
            let rest = if self.header.is_empty() {
                self.body_left
            } else {
                5 - self.header.len() + 1
            };
            return Some((rest / 2).clamp(1, chunk.len()));
        }
        // The next record starts `self.body_left` (0 or 1) bytes in: cut inside its header.
        let at = self.body_left + 3;
        (at <= chunk.len()).then_some(at)
    }
}

#[derive(Default)]
struct Shared {
    fault: Mutex<Fault>,
    fired: AtomicU64,
    connections: AtomicUsize,
    stopping: AtomicBool,
    streams: Mutex<Vec<TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fault-injecting TCP proxy on a free 127.0.0.1 port, in front of `upstream`.
/// Stops, closing every connection, on drop.
///
/// ```no_run
/// # fn main() -> ringq_tests::Result<()> {
/// use ringq_tests::{Fault, FaultProxy, RedisServer, TestClient};
///
/// let server = RedisServer::start()?;
/// let proxy = FaultProxy::start(server.addr())?;
/// let mut c = TestClient::connect(&proxy.url())?;
/// c.ping()?;
/// proxy.set(Fault::OneByteWrites);
/// c.ping()?; // still decodes, one byte at a time
/// # Ok(()) }
/// ```
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("fault", &self.fault())
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// Listens on a free port and forwards every connection to `upstream`.
    ///
    /// # Errors
    /// No port can be bound, or the accept thread cannot start.
    pub fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| Error::io("binding the fault proxy", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the fault proxy's address", e))?;
        let shared = Arc::new(Shared::default());
        let acceptor = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("proxy-{}", addr.port()))
                .spawn(move || accept_loop(&listener, upstream, &shared))
                .map_err(|e| Error::io("starting the fault proxy's thread", e))?
        };
        Ok(Self {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:PORT` of the proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.addr.port())
    }

    /// Switches the fault on (or off, with [`Fault::None`]) for traffic from now on.
    pub fn set(&self, fault: Fault) {
        *lock(&self.shared.fault) = fault;
    }

    /// The current fault.
    pub fn fault(&self) -> Fault {
        *lock(&self.shared.fault)
    }

    /// How many times a fault acted (a delayed or split chunk, a reset, a swallowed
    /// chunk).
    ///
    /// Counted before the fault acts on the chunk, so a client that sees the effect (a
    /// held, split or reset reply) already sees it counted. A swallowed chunk
    /// ([`Fault::BlackHole`]) is counted when the proxy reads it, which nothing the client
    /// sees is ordered after: poll for that count ([`crate::wait_until`]).
    pub fn fired(&self) -> u64 {
        self.shared.fired.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Closes every open connection now (new ones are still accepted).
    pub fn drop_connections(&self) {
        for s in lock(&self.shared.streams).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let woke = TcpStream::connect(self.addr).is_ok();
        if let Some(a) = self.acceptor.take() {
            if woke {
                let _ = a.join();
            }
        }
        self.drop_connections();
        for t in lock(&self.shared.threads).drain(..) {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, upstream: SocketAddr, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = client else { continue };
        let Ok(server) = TcpStream::connect(upstream) else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        {
            let mut streams = lock(&shared.streams);
            for s in [&client, &server] {
                if let Ok(c) = s.try_clone() {
                    streams.push(c);
                }
            }
        }
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let pairs = [
            (client.try_clone(), server.try_clone(), false),
            (server.try_clone(), client.try_clone(), true),
        ];
        for (from, to, replies) in pairs {
            let (Ok(from), Ok(to)) = (from, to) else {
                continue;
            };
            let shared2 = shared.clone();
            if let Ok(t) = std::thread::Builder::new()
                .name("proxy-conn".into())
                .spawn(move || forward(from, to, replies, &shared2))
            {
                lock(&shared.threads).push(t);
            }
        }
    }
}

/// Copies `from` to `to` until either closes, applying the fault (`replies`: this is the
/// server-to-client direction).
fn forward(mut from: TcpStream, to: TcpStream, replies: bool, shared: &Shared) {
    let mut to = to;
    let mut buf = vec![0u8; 64 * 1024];
    let mut records = Records::default();
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        // Read, and for a reset switched off, in one step: two connections whose replies
        // arrive together cannot both fire it.
        let fault = {
            let mut current = lock(&shared.fault);
            let fault = *current;
            let cut = records.cut(&buf[..n]);
            let swallow = matches!(fault, Fault::SwallowReplyAtLeast(m) if n >= m);
            if replies
                && (fault == Fault::ResetAfterReply
                    || swallow
                    || (fault == Fault::ResetMidRecord && cut.is_some()))
            {
                *current = Fault::None;
            }
            match fault {
                Fault::ResetMidRecord if cut.is_none() || !replies => Fault::None,
                Fault::ResetMidRecord => {
                    let cut = cut.unwrap_or(n);
                    shared.fired.fetch_add(1, Ordering::SeqCst);
                    drop(current);
                    let _ = to.write_all(&buf[..cut]);
                    reset(to, shared);
                    let _ = from.shutdown(Shutdown::Both);
                    return;
                }
                f => f,
            }
        };
        let chunk = &buf[..n];
        if replies {
            records.advance(chunk);
        }
        let ok = match (fault, replies) {
            (Fault::BlackHole, _) => {
                shared.fired.fetch_add(1, Ordering::SeqCst);
                true
            }
            (Fault::Delay(d), true) => {
                shared.fired.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(d);
                to.write_all(chunk).is_ok()
            }
            (Fault::OneByteWrites, true) => {
                shared.fired.fetch_add(1, Ordering::SeqCst);
                chunk
                    .iter()
                    .all(|b| to.write_all(std::slice::from_ref(b)).is_ok())
            }
            (Fault::SwallowReplyAtLeast(m), true) if n >= m => {
                shared.fired.fetch_add(1, Ordering::SeqCst);
                reset(to, shared);
                let _ = from.shutdown(Shutdown::Both);
                return;
            }
            (Fault::ResetAfterReply, true) => {
                // Counted (and already switched off) before the reply goes out: a client
                // that reads the reply must already see the fault as fired.
                shared.fired.fetch_add(1, Ordering::SeqCst);
                let _ = to.write_all(chunk);
                reset(to, shared);
                let _ = from.shutdown(Shutdown::Both);
                return;
            }
            _ => to.write_all(chunk).is_ok(),
        };
        if !ok {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Closes the client socket `s` with an RST (SO_LINGER 0, then the last close) instead
/// of a FIN: the other direction's reader is woken (SHUT_RD) and lets go of its handle,
/// and the registry drops its own.
fn reset(s: TcpStream, shared: &Shared) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a live socket with a valid linger struct and its size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = s.shutdown(Shutdown::Read);
    let me = (s.local_addr().ok(), s.peer_addr().ok());
    lock(&shared.streams).retain(|x| (x.local_addr().ok(), x.peer_addr().ok()) != me);
    drop(s);
}

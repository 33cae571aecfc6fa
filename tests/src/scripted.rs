//! [`ScriptedServer`]: a fake RESP server that answers each command with canned bytes, for
//! feeding a client replies no real server sends — malformed, truncated, oversized,
//! out of order — and for servers that hang or hang up.
//!
//! Every accepted connection plays the same [`Script`] from its first step, so a client
//! that reconnects meets the script again. Commands are recognised with
//! [`ringq_resp::Decoder`] (a client's command is a RESP array), which also lets the server
//! record what it was sent.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use bytes::{Bytes, BytesMut};
use ringq_resp::{Decoder, Frame};

use crate::error::{Error, Result};

/// One step of a [`Script`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Waits for the next complete command, then writes these bytes (any bytes at all).
    Reply(Bytes),
    /// Waits for the next complete command and answers nothing.
    Silent,
    /// Writes these bytes as soon as the step is reached, without waiting for a command
    /// (a greeting, a push frame, garbage before any request).
    Send(Bytes),
    /// Closes the connection as soon as the step is reached.
    Close,
    /// Sleeps as soon as the step is reached (a slow server): commands that arrive
    /// meanwhile are answered by the steps after it, once it has passed.
    Pause(std::time::Duration),
}

/// What a [`ScriptedServer`] does on each connection, in order. After the last step the
/// connection stays open: commands are read and recorded but never answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct Script {
    steps: Vec<Step>,
}

impl Script {
    /// An empty script: accept, read, never answer.
    pub fn new() -> Self {
        Self::default()
    }

    /// One [`Step::Reply`] per item: the n-th complete command gets the n-th reply.
    pub fn replying<I, B>(replies: I) -> Self
    where
        I: IntoIterator<Item = B>,
        B: Into<Bytes>,
    {
        Self {
            steps: replies.into_iter().map(|r| Step::Reply(r.into())).collect(),
        }
    }

    /// Adds a [`Step::Reply`].
    pub fn reply(mut self, bytes: impl Into<Bytes>) -> Self {
        self.steps.push(Step::Reply(bytes.into()));
        self
    }

    /// Adds a [`Step::Reply`] with a frame's wire form.
    pub fn reply_frame(self, frame: &Frame) -> Self {
        self.reply(frame.to_bytes())
    }

    /// Adds a [`Step::Silent`].
    pub fn silent(mut self) -> Self {
        self.steps.push(Step::Silent);
        self
    }

    /// Adds a [`Step::Send`].
    pub fn send(mut self, bytes: impl Into<Bytes>) -> Self {
        self.steps.push(Step::Send(bytes.into()));
        self
    }

    /// Adds a [`Step::Pause`].
    pub fn pause(mut self, d: std::time::Duration) -> Self {
        self.steps.push(Step::Pause(d));
        self
    }

    /// Adds a [`Step::Close`]: after the steps before it, hang up.
    pub fn then_close(mut self) -> Self {
        self.steps.push(Step::Close);
        self
    }

    /// The steps, in order.
    pub fn steps(&self) -> &[Step] {
        &self.steps
    }
}

#[derive(Debug, Default)]
struct Shared {
    stopping: AtomicBool,
    connections: AtomicUsize,
    /// Clones of the accepted sockets, to shut them down from outside their thread.
    streams: Mutex<Vec<TcpStream>>,
    handlers: Mutex<Vec<JoinHandle<()>>>,
    received: Mutex<Vec<Vec<Bytes>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A fake server on a free 127.0.0.1 port that plays a [`Script`] on every connection.
/// Stops, closing every connection, on drop.
///
/// ```
/// # fn main() -> ringq_tests::Result<()> {
/// use ringq_tests::{Script, ScriptedServer, TestClient};
///
/// // A bulk string that declares 5 bytes but carries 3, then the server hangs up.
/// let server = ScriptedServer::start(Script::replying(["+OK\r\n", "$5\r\nabc"]).then_close())?;
/// let mut c = TestClient::connect(&server.url())?;
/// assert!(c.ping().is_err()); // "+OK" is not "PONG"
/// let err = c.cmd(["GET", "k"]).unwrap_err();
/// assert!(err.is_connection_lost());
/// assert_eq!(server.received()[1], ["GET", "k"]);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ScriptedServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl ScriptedServer {
    /// Shorthand for [`ScriptedServer::start`] with [`Script::replying`].
    ///
    /// # Errors
    /// As [`ScriptedServer::start`].
    pub fn replying<I, B>(replies: I) -> Result<Self>
    where
        I: IntoIterator<Item = B>,
        B: Into<Bytes>,
    {
        Self::start(Script::replying(replies))
    }

    /// Listens on a free port and plays `script` on every connection.
    ///
    /// # Errors
    /// An I/O error if no port can be bound or the accept thread cannot start.
    pub fn start(script: Script) -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| Error::io("binding a scripted server", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io("reading the scripted server's address", e))?;
        let shared = Arc::new(Shared::default());
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("scripted-{}", addr.port()))
                .spawn(move || accept_loop(&listener, &script, &shared))
                .map_err(|e| Error::io("starting the scripted server's thread", e))?
        };
        Ok(Self {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.addr.port())
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Every complete command received so far, over all connections, in arrival order;
    /// each as its arguments (`[b"HELLO", b"3"]`).
    pub fn received(&self) -> Vec<Vec<Bytes>> {
        lock(&self.shared.received).clone()
    }

    /// Closes every open connection now (the script still plays on new ones).
    pub fn drop_connections(&self) {
        for s in lock(&self.shared.streams).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept; if even that fails, leave the thread detached rather
        // than hang the test in join.
        let woke = TcpStream::connect(self.addr).is_ok();
        if let Some(acceptor) = self.acceptor.take() {
            if woke {
                let _ = acceptor.join();
            }
        }
        self.drop_connections();
        for h in lock(&self.shared.handlers).drain(..) {
            let _ = h.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, script: &Script, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let _ = stream.set_nodelay(true);
        if let Ok(clone) = stream.try_clone() {
            lock(&shared.streams).push(clone);
        }
        // Counted after the clone is stored, so a test that saw the count can drop it.
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let script = script.clone();
        let conn_shared = Arc::clone(shared);
        if let Ok(handle) = std::thread::Builder::new()
            .name("scripted-conn".into())
            .spawn(move || serve(stream, &script, &conn_shared))
        {
            lock(&shared.handlers).push(handle);
        }
    }
}

/// Plays the script on one connection until it closes, the script closes it, or the
/// server stops.
fn serve(mut stream: TcpStream, script: &Script, shared: &Shared) {
    let steps = script.steps();
    let mut next = 0;
    let mut decoder = Decoder::new();
    let mut inbuf = BytesMut::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        // Steps that do not wait for a command run as soon as they are reached.
        while let Some(step) = steps.get(next) {
            match step {
                Step::Send(bytes) => {
                    if stream.write_all(bytes).is_err() {
                        return;
                    }
                }
                Step::Close => {
                    let _ = stream.shutdown(Shutdown::Both);
                    return;
                }
                Step::Pause(d) => std::thread::sleep(*d),
                Step::Reply(_) | Step::Silent => break,
            }
            next += 1;
        }
        let frame = match decoder.decode(&mut inbuf) {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                let n = match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if shared.stopping.load(Ordering::SeqCst) {
                    return;
                }
                inbuf.extend_from_slice(&chunk[..n]);
                continue;
            }
            // Not RESP: nothing sensible to answer.
            Err(_) => {
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
        };
        let args = frame
            .as_elements()
            .map(|e| e.iter().filter_map(|a| a.as_bytes().cloned()).collect());
        lock(&shared.received).push(args.unwrap_or_default());
        match steps.get(next) {
            Some(Step::Reply(bytes)) => {
                if stream.write_all(bytes).is_err() {
                    return;
                }
                next += 1;
            }
            Some(Step::Silent) => next += 1,
            // Past the end: read, record, never answer.
            _ => {}
        }
    }
}

//! A blocking RESP2 connection for the tool's own commands (`produce`, `publish`,
//! `stats`, `dead`): a plain `std` socket (wrapped in rustls's blocking stream for a
//! `rediss://` URL, with the same settings and messages as the engine), `AUTH` and
//! `SELECT` from the URL, replies read with the codec. Not the engine.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use bytes::BytesMut;
use ringq::rustls::{ClientConnection, StreamOwned};
use ringq::{Address, ConnectionInfo, Tls};
use ringq_resp::{encode_command, Decoder, Frame};

use crate::exit::Exit;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A reply slower than this means the server is stuck; fail rather than hang.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

enum Stream {
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
    Unix(UnixStream),
}

impl Stream {
    fn io(&mut self) -> &mut dyn ReadWrite {
        match self {
            Stream::Tcp(s) => s,
            Stream::Tls(s) => s.as_mut(),
            Stream::Unix(s) => s,
        }
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// One blocking RESP2 connection.
pub struct Conn {
    stream: Stream,
    pub peer: String,
    decoder: Decoder,
    inbuf: BytesMut,
}

impl Conn {
    /// Connects to `info`'s server (with TLS when its URL is `rediss://`, `tls` being the
    /// settings of the flags, the system's roots by default); behind Sentinel, to the
    /// master the sentinels name (asked with `sentinel_password`, if any); in a cluster,
    /// to the node that serves `key` now.
    pub fn connect(
        info: &ConnectionInfo,
        tls: Option<Tls>,
        sentinel_password: Option<&str>,
        key: &[u8],
    ) -> Result<Self, Exit> {
        let mut peer = info.to_string();
        let stream = match &info.address {
            Address::Unix(path) => {
                let fail = |e: io::Error| Exit::runtime(format!("cannot connect to {peer}: {e}"));
                let s = UnixStream::connect(path).map_err(fail)?;
                s.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(fail)?;
                Stream::Unix(s)
            }
            Address::Sentinel { .. } | Address::Tcp { .. } | Address::Cluster { .. } => {
                let (host, port) = match &info.address {
                    Address::Tcp { host, port } => (host.clone(), *port),
                    Address::Cluster { .. } => {
                        let (h, p) = ringq::cluster_node(info, tls.as_ref(), key, CONNECT_TIMEOUT)
                            .map_err(Exit::engine)?;
                        peer = if h.contains(':') {
                            format!("cluster node [{h}]:{p}")
                        } else {
                            format!("cluster node {h}:{p}")
                        };
                        (h, p)
                    }
                    _ => {
                        let auth = sentinel_password.map(|p| (None, p));
                        let (h, p) =
                            ringq::sentinel_master(info, tls.as_ref(), auth, CONNECT_TIMEOUT)
                                .map_err(Exit::engine)?;
                        peer = format!("{h}:{p} ({info})");
                        (h, p)
                    }
                };
                let peer = &peer;
                let fail = |e: io::Error| Exit::runtime(format!("cannot connect to {peer}: {e}"));
                let (host, port) = (&host, &port);
                let addrs = (host.as_str(), *port)
                    .to_socket_addrs()
                    .map_err(|e| Exit::runtime(format!("cannot resolve host '{host}': {e}")))?;
                let mut last = None;
                let mut found = None;
                for addr in addrs {
                    match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                        Ok(s) => {
                            found = Some(s);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let s = match (found, last) {
                    (Some(s), _) => s,
                    (None, Some(e)) => return Err(fail(e)),
                    (None, None) => {
                        return Err(Exit::runtime(format!(
                            "host '{host}' resolved to no address"
                        )))
                    }
                };
                s.set_nodelay(true).map_err(fail)?;
                s.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(fail)?;
                if info.tls {
                    let t = tls.unwrap_or_default();
                    if t.is_insecure() {
                        eprintln!(
                            "ringq: warning: TLS certificate verification is OFF \
                             (--tls-insecure): anyone on the path to {peer} can read and change \
                             this traffic; use it for test set-ups only"
                        );
                    }
                    let config = t.client_config().map_err(Exit::engine)?;
                    let name = Tls::server_name(host).map_err(Exit::engine)?;
                    let session = ClientConnection::new(config, name)
                        .map_err(|e| Exit::engine(Tls::explain_error(peer, e)))?;
                    Stream::Tls(Box::new(StreamOwned::new(session, s)))
                } else {
                    Stream::Tcp(s)
                }
            }
        };
        Ok(Self {
            stream,
            peer,
            decoder: Decoder::new(),
            inbuf: BytesMut::with_capacity(64 * 1024),
        })
    }

    /// `AUTH [user] password` and `SELECT db`, as the URL asks (RESP2, no HELLO).
    pub fn handshake(&mut self, info: &ConnectionInfo) -> Result<(), Exit> {
        if let Some(pass) = &info.password {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(user) = &info.username {
                args.push(user.as_bytes());
            }
            args.push(pass.as_bytes());
            let user = info.username.as_deref().unwrap_or("default");
            self.command_ok(&args, &format!("AUTH failed for user '{user}'"))?;
        }
        if info.db != 0 {
            let db = info.db.to_string();
            self.command_ok(
                &[b"SELECT", db.as_bytes()],
                &format!("SELECT {} failed", info.db),
            )?;
        }
        Ok(())
    }

    pub fn command_ok(&mut self, args: &[&[u8]], context: &str) -> Result<(), Exit> {
        let mut out = Vec::new();
        encode_command(&mut out, args.iter().copied());
        self.write(&out)?;
        match self.read_reply()? {
            Frame::SimpleString(_) => Ok(()),
            other => Err(Exit::runtime(match other.to_server_error() {
                Some(e) => format!("{context} on {}: {e}", self.peer),
                None => format!("{context} on {}: unexpected reply {other:?}", self.peer),
            })),
        }
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<(), Exit> {
        let s = self.stream.io();
        s.write_all(bytes)
            .and_then(|()| s.flush())
            .map_err(|e| self.io_failure("writing to", e))
    }

    /// An I/O error, or the TLS failure inside it, explained.
    fn io_failure(&self, what: &str, e: io::Error) -> Exit {
        let tls = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<ringq::rustls::Error>())
            .cloned();
        match tls {
            Some(t) => Exit::engine(Tls::explain_error(&self.peer, t)),
            None => Exit::runtime(format!("{what} {}: {e}", self.peer)),
        }
    }

    /// The next reply, error replies included (as frames).
    pub fn read_reply(&mut self) -> Result<Frame, Exit> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.decoder.decode(&mut self.inbuf) {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {}
                Err(e) => {
                    return Err(Exit::runtime(format!(
                        "malformed reply from {}: {e}; is this a Redis-protocol server?",
                        self.peer
                    )))
                }
            }
            let r = self.stream.io().read(&mut chunk);
            match r {
                Ok(0) => {
                    return Err(Exit::runtime(format!(
                        "{} closed the connection",
                        self.peer
                    )))
                }
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(Exit::runtime(format!(
                        "no reply from {} within {} s",
                        self.peer,
                        REPLY_TIMEOUT.as_secs()
                    )))
                }
                Err(e) => return Err(self.io_failure("reading from", e)),
            }
        }
    }

    /// Connects and runs the URL's handshake; in a cluster, on the node that serves
    /// `key` (a queue, stream or shard channel: its slot's owner now).
    ///
    /// # Errors
    /// A bad URL or password file (status 2), or a connection, AUTH or SELECT failure
    /// (status 1).
    pub fn open(server: &crate::args::ServerArgs, key: &[u8]) -> Result<Self, Exit> {
        let info = server.info()?;
        let tls = server.tls(&info)?;
        let sentinel_password = server.sentinel_password()?;
        let mut c = Self::connect(&info, tls, sentinel_password.as_deref(), key)?;
        c.handshake(&info)?;
        Ok(c)
    }

    /// One command and its reply; an error reply is an error (status 1) saying `what`.
    pub fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A], what: &str) -> Result<Frame, Exit> {
        let mut out = Vec::new();
        encode_command(&mut out, args.iter().map(AsRef::as_ref));
        self.write(&out)?;
        let f = self.read_reply()?;
        match f.to_server_error() {
            Some(e) => Err(Exit::runtime(format!("{what} on {}: {e}", self.peer))),
            None => Ok(f),
        }
    }
}

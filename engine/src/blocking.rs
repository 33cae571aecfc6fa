//! A small blocking RESP connection for the engine's helper threads (never a shard): the
//! sentinel resolver and watcher, and the cluster topology thread. Connect with a
//! deadline, TLS through rustls's blocking stream for `rediss+…://` URLs, `AUTH`, one
//! command at a time, and the push frames of a subscription. Every read has a deadline,
//! so a node that hangs is skipped rather than waited for.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use ringq_resp::{encode_command, Decoder, Frame};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::error::{Error, ErrorKind};
use crate::url::HostPort;

trait ReadWrite: Read + Write + Send {}
impl<T: Read + Write + Send> ReadWrite for T {}

/// One blocking connection.
pub(crate) struct Blocking {
    stream: Box<dyn ReadWrite>,
    /// The socket under `stream`, for its timeouts.
    socket: TcpStream,
    inbuf: BytesMut,
    dec: Decoder,
    peer: String,
}

/// Replies larger than this from a sentinel are refused (bounded memory).
const MAX_REPLY: usize = 4 << 20;

fn lost(peer: &str, what: &str, e: &io::Error) -> Error {
    let why = if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        "no answer in time".to_owned()
    } else {
        e.to_string()
    };
    Error::new(ErrorKind::ConnectionLost, format!("{peer}: {what}: {why}"))
}

impl Blocking {
    /// Connects to `host:port` within `timeout` (each read and write gets it too), with
    /// TLS when `tls` is given, and authenticates with `auth` (user, password; `secret`
    /// names it in the error when it is refused).
    pub(crate) fn connect(
        host: &str,
        port: u16,
        timeout: Duration,
        tls: Option<&Arc<ClientConfig>>,
        auth: Option<(Option<&str>, &str)>,
        secret: &str,
    ) -> Result<Self, Error> {
        let peer = HostPort(host, port).to_string();
        let addrs: Vec<SocketAddr> = (host, port)
            .to_socket_addrs()
            .map_err(|e| lost(&peer, "lookup", &e))?
            .collect();
        let mut last = None;
        let mut socket = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, timeout) {
                Ok(s) => {
                    socket = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let socket = match (socket, last) {
            (Some(s), _) => s,
            (None, Some(e)) => return Err(lost(&peer, "connect", &e)),
            (None, None) => {
                return Err(Error::new(
                    ErrorKind::ConnectionLost,
                    format!("{peer}: resolved to no address"),
                ))
            }
        };
        let io = |e: io::Error| lost(&peer, "socket", &e);
        socket.set_nodelay(true).map_err(io)?;
        socket.set_read_timeout(Some(timeout)).map_err(io)?;
        socket.set_write_timeout(Some(timeout)).map_err(io)?;
        let stream: Box<dyn ReadWrite> = match tls {
            Some(config) => {
                let name = crate::tls::server_name(host)?;
                let session = ClientConnection::new(config.clone(), name)
                    .map_err(|e| crate::tls::explain(&peer, e))?;
                let s = socket.try_clone().map_err(io)?;
                Box::new(StreamOwned::new(session, s))
            }
            None => Box::new(socket.try_clone().map_err(io)?),
        };
        let mut c = Self {
            stream,
            socket,
            inbuf: BytesMut::with_capacity(4096),
            dec: Decoder::new(),
            peer,
        };
        if let Some((user, password)) = auth {
            let mut args: Vec<&[u8]> = vec![b"AUTH"];
            if let Some(u) = user {
                args.push(u.as_bytes());
            }
            args.push(password.as_bytes());
            let reply = c.command(&args)?;
            if let Some(e) = reply.to_server_error() {
                return Err(Error::auth(
                    format!(
                        "{} refused {secret}: {}",
                        c.peer,
                        crate::conn::classify::plain(&e)
                    ),
                    Some(e),
                ));
            }
        }
        Ok(c)
    }

    /// `host:port` of the other end.
    pub(crate) fn peer(&self) -> &str {
        &self.peer
    }

    /// Sets the deadline of every later read (a subscription waits longer).
    pub(crate) fn set_read_timeout(&self, t: Option<Duration>) -> Result<(), Error> {
        self.socket
            .set_read_timeout(t)
            .map_err(|e| lost(&self.peer, "socket", &e))
    }

    /// Sends one command and reads its reply (an error reply is a frame, not an `Err`).
    pub(crate) fn command(&mut self, args: &[&[u8]]) -> Result<Frame, Error> {
        self.send(args)?;
        self.read_frame()
    }

    /// Sends one command without reading.
    pub(crate) fn send(&mut self, args: &[&[u8]]) -> Result<(), Error> {
        let mut out = Vec::new();
        encode_command(&mut out, args.iter().copied());
        let peer = &self.peer;
        self.stream
            .write_all(&out)
            .and_then(|()| self.stream.flush())
            .map_err(|e| lost(peer, "write", &e))
    }

    /// The next frame (a reply or a push); no answer within the read deadline is an
    /// error.
    pub(crate) fn read_frame(&mut self) -> Result<Frame, Error> {
        match self.poll_frame()? {
            Some(f) => Ok(f),
            None => Err(Error::new(
                ErrorKind::ConnectionLost,
                format!("{}: no answer in time", self.peer),
            )),
        }
    }

    /// The next frame, or `None` when the read deadline passed first (a quiet
    /// subscription, not a dead one).
    pub(crate) fn poll_frame(&mut self) -> Result<Option<Frame>, Error> {
        let mut chunk = [0u8; 4096];
        loop {
            match self.dec.decode(&mut self.inbuf) {
                Ok(Some(f)) => return Ok(Some(f)),
                Ok(None) => {}
                Err(e) => return Err(Error::protocol(&self.peer, e)),
            }
            if self.inbuf.len() > MAX_REPLY {
                return Err(Error::new(
                    ErrorKind::Protocol,
                    format!("{}: a reply larger than {MAX_REPLY} bytes", self.peer),
                ));
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(Error::new(
                        ErrorKind::ConnectionLost,
                        format!("{}: closed the connection", self.peer),
                    ))
                }
                Ok(n) => self.inbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) => {
                    if let Some(t) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                        return Err(crate::tls::explain(&self.peer, t.clone()));
                    }
                    return Err(lost(&self.peer, "read", &e));
                }
            }
        }
    }
}

//! A blocking RESP2 connection for the tool's own commands (`produce`, `publish`,
//! `stats`, `dead`): a plain `std` socket, `AUTH` and `SELECT` from the URL, replies read
//! with the codec. Not the engine.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use bytes::BytesMut;
use ringq::{Address, ConnectionInfo};
use ringq_resp::{encode_command, Decoder, Frame};

use crate::exit::Exit;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A reply slower than this means the server is stuck; fail rather than hang.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// One blocking RESP2 connection.
pub struct Conn {
    stream: Stream,
    pub peer: String,
    decoder: Decoder,
    inbuf: BytesMut,
}

impl Conn {
    pub fn connect(info: &ConnectionInfo) -> Result<Self, Exit> {
        let peer = info.to_string();
        let fail = |e: io::Error| Exit::runtime(format!("cannot connect to {peer}: {e}"));
        let stream = match &info.address {
            Address::Unix(path) => {
                let s = UnixStream::connect(path).map_err(fail)?;
                s.set_read_timeout(Some(REPLY_TIMEOUT)).map_err(fail)?;
                Stream::Unix(s)
            }
            Address::Tcp { host, port } => {
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
                Stream::Tcp(s)
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
        let r = match &mut self.stream {
            Stream::Tcp(s) => s.write_all(bytes),
            Stream::Unix(s) => s.write_all(bytes),
        };
        r.map_err(|e| Exit::runtime(format!("writing to {}: {e}", self.peer)))
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
            let r = match &mut self.stream {
                Stream::Tcp(s) => s.read(&mut chunk),
                Stream::Unix(s) => s.read(&mut chunk),
            };
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
                Err(e) => return Err(Exit::runtime(format!("reading from {}: {e}", self.peer))),
            }
        }
    }

    /// Connects and runs the URL's handshake.
    ///
    /// # Errors
    /// A bad URL or password file (status 2), or a connection, AUTH or SELECT failure
    /// (status 1).
    pub fn open(server: &crate::args::ServerArgs) -> Result<Self, Exit> {
        let info = server.info()?;
        let mut c = Self::connect(&info)?;
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

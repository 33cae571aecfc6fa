//! A small blocking RESP2 connection for everything that is not a measured async client:
//! filling queues, producing, the limit probe, PING, `INFO`, `DEL`. Connects over TCP
//! (`TCP_NODELAY`) or a Unix socket, authenticates and selects the database the URL names
//! (parsed by `ringq::ConnectionInfo`, so every client reads a URL the same way). A
//! `rediss://` URL (`--tls`: the PING floor) goes over rustls, with a session that a
//! reading thread and a writing thread share.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use ringq::rustls::ClientConnection;

use bytes::{Bytes, BytesMut};
use ringq::{Address, ConnectionInfo};
use ringq_resp::{encode_command, Decoder, Frame};

use crate::error::{Error, Result};

/// Bytes asked for per `read`.
const READ_CHUNK: usize = 64 * 1024;

/// A TCP or Unix-socket stream.
#[derive(Debug)]
pub enum Stream {
    /// TCP, with `TCP_NODELAY`.
    Tcp(TcpStream),
    /// A Unix domain socket.
    Unix(UnixStream),
    /// TLS over TCP: the session is shared by every handle (one may read while another
    /// writes), the socket is each handle's own `dup`.
    Tls(Arc<Mutex<ClientConnection>>, TcpStream),
}

fn lock(s: &Mutex<ClientConnection>) -> std::sync::MutexGuard<'_, ClientConnection> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Plaintext from a TLS handle: what the session has decrypted, else one more read of
/// ciphertext from the socket (without holding the session, so a writer is not held up).
fn tls_read(
    session: &Mutex<ClientConnection>,
    sock: &mut TcpStream,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let mut cipher = [0u8; 16 * 1024];
    loop {
        {
            let mut s = lock(session);
            match s.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        let n = sock.read(&mut cipher)?;
        if n == 0 {
            return Ok(0);
        }
        let mut s = lock(session);
        s.read_tls(&mut &cipher[..n])?;
        s.process_new_packets()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    }
}

/// Encrypts `buf` and sends the records (and anything else the session has to send).
fn tls_write(
    session: &Mutex<ClientConnection>,
    sock: &mut TcpStream,
    buf: &[u8],
) -> std::io::Result<usize> {
    let mut out = Vec::with_capacity(buf.len() + 64);
    {
        let mut s = lock(session);
        s.writer().write_all(buf)?;
        while s.wants_write() {
            s.write_tls(&mut out)?;
        }
    }
    sock.write_all(&out)?;
    Ok(buf.len())
}

/// Connects TLS over `sock`, trusting the CA in `ca`, and completes the handshake.
fn tls_connect(mut sock: TcpStream, host: &str, ca: &std::path::Path) -> Result<Stream> {
    let config = ringq::Tls::new().ca_cert(ca).client_config()?;
    let name = ringq::Tls::server_name(host)?;
    let mut session = ClientConnection::new(config, name)
        .map_err(|e| Error::from(ringq::Tls::explain_error(host, e)))?;
    while session.is_handshaking() {
        session
            .complete_io(&mut sock)
            .map_err(|e| Error::io(format!("TLS handshake with {host}"), e))?;
    }
    Ok(Stream::Tls(Arc::new(Mutex::new(session)), sock))
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
            Stream::Tls(session, sock) => tls_read(session, sock, buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
            Stream::Tls(session, sock) => tls_write(session, sock, buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Stream {
    /// A second handle to the same socket (one thread writes, another reads).
    pub fn try_clone(&self) -> std::io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tls(session, s) => Stream::Tls(session.clone(), s.try_clone()?),
        })
    }
}

/// A blocking connection with a reply buffer.
#[derive(Debug)]
pub struct RawConn {
    stream: Stream,
    inbuf: BytesMut,
    decoder: Decoder,
}

impl RawConn {
    /// Connects to `url`, authenticating and selecting the database it names.
    ///
    /// # Errors
    /// A bad URL, a refused connection, or a refused `AUTH`/`SELECT`.
    pub fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, None)
    }

    /// Connects to `url`; a `rediss://` one with TLS, trusting the CA in `tls_ca` (the
    /// system's roots without one).
    ///
    /// # Errors
    /// As [`RawConn::connect`], and TLS failures.
    pub fn connect_with(url: &str, tls_ca: Option<&std::path::Path>) -> Result<Self> {
        let info = ConnectionInfo::parse(url)?;
        let stream = match &info.address {
            Address::Tcp { .. } | Address::Sentinel { .. } => {
                let (host, port) = match &info.address {
                    Address::Tcp { host, port } => (host.clone(), *port),
                    // The master the sentinels name now (no sentinel password: the bench
                    // takes none).
                    _ => ringq::sentinel_master(
                        &info,
                        tls_ca.map(|ca| ringq::Tls::new().ca_cert(ca)).as_ref(),
                        None,
                        std::time::Duration::from_secs(1),
                    )?,
                };
                let (host, port) = (&host, &port);
                let s = TcpStream::connect((host.as_str(), *port))
                    .map_err(|e| Error::io(format!("connecting to {info}"), e))?;
                s.set_nodelay(true)
                    .map_err(|e| Error::io("setting TCP_NODELAY", e))?;
                match (info.tls, tls_ca) {
                    (true, Some(ca)) => tls_connect(s, host, ca)?,
                    (true, None) => {
                        return Err(Error::new("a rediss:// URL needs the CA file (--tls)"))
                    }
                    _ => Stream::Tcp(s),
                }
            }
            Address::Unix(path) => Stream::Unix(
                UnixStream::connect(path)
                    .map_err(|e| Error::io(format!("connecting to {info}"), e))?,
            ),
            Address::Cluster { .. } => {
                return Err(Error::new(
                    "a raw connection needs one node: give a redis+cluster:// URL's node as \
                     redis://host:port",
                ))
            }
        };
        let mut conn = Self::from_stream(stream);
        match (&info.username, &info.password) {
            (Some(user), Some(pass)) => {
                conn.command_ok(["AUTH", user.as_str(), pass.as_str()])?;
            }
            (None, Some(pass)) => {
                conn.command_ok(["AUTH", pass.as_str()])?;
            }
            _ => {}
        }
        if info.db != 0 {
            conn.command_ok(["SELECT".to_owned(), info.db.to_string()])?;
        }
        Ok(conn)
    }

    /// A connection over an already connected (and authenticated) stream, such as a
    /// second handle from [`RawConn::try_clone_stream`] that only reads replies.
    pub fn from_stream(stream: Stream) -> Self {
        Self {
            stream,
            inbuf: BytesMut::with_capacity(READ_CHUNK),
            decoder: Decoder::new(),
        }
    }

    /// Sends one command and returns its reply (which may be a server error).
    ///
    /// # Errors
    /// I/O errors and malformed replies.
    pub fn command<I, A>(&mut self, args: I) -> Result<Frame>
    where
        I: IntoIterator<Item = A>,
        I::IntoIter: ExactSizeIterator,
        A: AsRef<[u8]>,
    {
        let mut out = BytesMut::new();
        encode_command(&mut out, args);
        self.write_all(&out)?;
        self.read_frame()
    }

    /// Sends one command; a server error becomes an [`Error`].
    ///
    /// # Errors
    /// As [`RawConn::command`], plus the server's error reply.
    pub fn command_ok<I, A>(&mut self, args: I) -> Result<Frame>
    where
        I: IntoIterator<Item = A>,
        I::IntoIter: ExactSizeIterator,
        A: AsRef<[u8]>,
    {
        match self.command(args)? {
            Frame::SimpleError(m) | Frame::BulkError(m) => Err(Error::new(format!(
                "the server refused a command: {}",
                String::from_utf8_lossy(&m)
            ))),
            f => Ok(f),
        }
    }

    /// Writes bytes (pipelined commands) without reading.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream
            .write_all(bytes)
            .map_err(|e| Error::io("writing to the server", e))
    }

    /// Reads until one whole reply is buffered and returns its bytes.
    ///
    /// # Errors
    /// I/O errors, a closed connection, malformed replies.
    pub fn read_raw_frame(&mut self) -> Result<Bytes> {
        loop {
            if let Some(n) = self.decoder.scan(&self.inbuf)? {
                return Ok(self.inbuf.split_to(n).freeze());
            }
            self.fill()?;
        }
    }

    /// Reads one whole reply and decodes it.
    ///
    /// # Errors
    /// As [`RawConn::read_raw_frame`].
    pub fn read_frame(&mut self) -> Result<Frame> {
        let raw = self.read_raw_frame()?;
        Ok(self.decoder.build(&raw)?)
    }

    /// Reads more bytes into the reply buffer.
    ///
    /// # Errors
    /// I/O errors, or the server closing the connection.
    pub fn fill(&mut self) -> Result<usize> {
        if self.inbuf.capacity() - self.inbuf.len() < READ_CHUNK / 4 {
            self.inbuf.reserve(READ_CHUNK);
        }
        let spare = self.inbuf.spare_capacity_mut();
        let fd = match &mut self.stream {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tls(..) => {
                let mut chunk = vec![0u8; READ_CHUNK];
                let n = self
                    .stream
                    .read(&mut chunk)
                    .map_err(|e| Error::io("reading from the server", e))?;
                if n == 0 {
                    return Err(Error::new("the server closed the connection"));
                }
                self.inbuf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
        };
        let n = loop {
            // SAFETY: `spare` is writable memory owned by `inbuf` for `spare.len()` bytes,
            // and `fd` stays open while `self.stream` is borrowed here. read(2) writes at
            // most that many bytes; nothing reads them before `set_len` below.
            let rc = unsafe { libc::read(fd, spare.as_mut_ptr().cast(), spare.len()) };
            if rc >= 0 {
                break rc as usize;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::io("reading from the server", e));
            }
        };
        // SAFETY: read(2) initialized the first `n` spare bytes.
        unsafe { self.inbuf.set_len(self.inbuf.len() + n) };
        if n == 0 {
            return Err(Error::new("the server closed the connection"));
        }
        Ok(n)
    }

    /// The unread reply bytes and the decoder scanning them, for callers that walk replies
    /// themselves (the limit probe).
    pub fn buffer(&mut self) -> (&mut BytesMut, &mut Decoder) {
        (&mut self.inbuf, &mut self.decoder)
    }

    /// The socket, for handing it to another runtime after the handshake. Fails if reply
    /// bytes are still buffered.
    ///
    /// # Errors
    /// When unread replies would be lost.
    pub fn into_stream(self) -> Result<Stream> {
        if !self.inbuf.is_empty() {
            return Err(Error::new(
                "unread replies on a connection being handed over",
            ));
        }
        Ok(self.stream)
    }

    /// Shuts the socket down both ways, so a thread blocked reading another handle of it
    /// wakes up (with an error).
    pub fn shutdown(&self) {
        let _ = match &self.stream {
            Stream::Tcp(s) | Stream::Tls(_, s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }

    /// A second handle to the socket (for a reply-reading thread).
    ///
    /// # Errors
    /// I/O errors from `dup`.
    pub fn try_clone_stream(&self) -> Result<Stream> {
        self.stream
            .try_clone()
            .map_err(|e| Error::io("duplicating the connection", e))
    }
}

//! A small blocking RESP2 connection for everything that is not a measured async client:
//! filling queues, producing, the limit probe, PING, `INFO`, `DEL`. Connects over TCP
//! (`TCP_NODELAY`) or a Unix socket, authenticates and selects the database the URL names
//! (parsed by `ringq::ConnectionInfo`, so every client reads a URL the same way).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

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
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
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
        let info = ConnectionInfo::parse(url)?;
        let stream = match &info.address {
            Address::Tcp { host, port } => {
                let s = TcpStream::connect((host.as_str(), *port))
                    .map_err(|e| Error::io(format!("connecting to {info}"), e))?;
                s.set_nodelay(true)
                    .map_err(|e| Error::io("setting TCP_NODELAY", e))?;
                Stream::Tcp(s)
            }
            Address::Unix(path) => Stream::Unix(
                UnixStream::connect(path)
                    .map_err(|e| Error::io(format!("connecting to {info}"), e))?,
            ),
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
        let fd = match &self.stream {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
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
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
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

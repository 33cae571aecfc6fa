//! [`TestClient`]: a small blocking RESP2 client for setting tests up and checking their
//! results — never for the code under test.
//!
//! It is deliberately plain (std `TcpStream`, one command at a time, read timeouts so a
//! test fails instead of hanging) with one exception: [`TestClient::lpush_many`] pipelines,
//! because tests pre-fill queues with up to millions of messages.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::BytesMut;
use ringq_resp::{encode_command, CommandWriter, Decoder, Frame};

use crate::error::{Error, Result};
use crate::url::ConnectionInfo;

/// Arguments per `LPUSH`/`RPUSH` sent by [`TestClient::lpush_many`].
const ITEMS_PER_PUSH: usize = 1000;
/// Pushes written before their replies are read; bounds what sits in socket buffers.
const PUSHES_PER_ROUND_TRIP: usize = 16;
/// Default read and write timeout: long enough for a slow CI machine, short enough that a
/// missing reply fails the test rather than hanging it.
const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_CHUNK: usize = 64 * 1024;

/// One line of `CLIENT LIST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// `id=`: the connection id, for `CLIENT KILL ID`.
    pub id: u64,
    /// `addr=`: the client's `ip:port`.
    pub addr: String,
    /// `name=`: set by `CLIENT SETNAME`, empty when unset.
    pub name: String,
    /// `cmd=`: the last command run, lower case (`brpop`, `blmpop`, `client|list`).
    pub cmd: String,
    /// `flags=`: `N` for none, `b` while blocked, `P` subscribed…
    pub flags: String,
    /// Every `key=value` field of the line, in order.
    pub fields: Vec<(String, String)>,
}

impl ClientInfo {
    /// Parses one `CLIENT LIST` line.
    pub fn parse(line: &str) -> Self {
        let fields: Vec<(String, String)> = line
            .split(' ')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let get = |k: &str| {
            fields
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        Self {
            id: get("id").parse().unwrap_or(0),
            addr: get("addr"),
            name: get("name"),
            cmd: get("cmd"),
            flags: get("flags"),
            fields,
        }
    }

    /// The value of any field, such as `"db"`, `"user"` or `"resp"`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the client is blocked in a command (`b` in its flags).
    pub fn is_blocked(&self) -> bool {
        self.flags.contains('b')
    }

    /// Whether the client is a pub/sub subscriber (`P` in its flags).
    pub fn is_subscriber(&self) -> bool {
        self.flags.contains('P')
    }
}

/// A blocking RESP2 client for test set-up and assertions.
///
/// Commands that fail on the server come back as [`Error::Server`] so a test can match the
/// kind (`NOAUTH`, `WRONGPASS`…) with [`Error::server_error_kind`].
///
/// ```no_run
/// # fn main() -> ringq_tests::Result<()> {
/// let server = ringq_tests::RedisServer::start()?;
/// let mut c = ringq_tests::TestClient::connect(&server.url())?;
/// c.lpush_many("jobs", (0..10_000).map(|i| i.to_string()))?;
/// assert_eq!(c.llen("jobs")?, 10_000);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TestClient {
    stream: TcpStream,
    peer: SocketAddr,
    decoder: Decoder,
    inbuf: BytesMut,
    outbuf: Vec<u8>,
}

impl TestClient {
    /// Connects to a `redis://` URL, authenticating (`AUTH [user] pass`) and selecting the
    /// database the URL names.
    ///
    /// # Errors
    /// [`Error::InvalidUrl`], an I/O error if the connection fails (see
    /// [`Error::is_connection_refused`]), or [`Error::Server`] when `AUTH` or `SELECT` is
    /// refused (`WRONGPASS`…).
    pub fn connect(url: &str) -> Result<Self> {
        let info = ConnectionInfo::parse(url)?;
        let addrs = info
            .host_port
            .to_socket_addrs()
            .map_err(|e| Error::io(format!("resolving {}", info.host_port), e))?;
        let mut last = None;
        for addr in addrs {
            match Self::connect_addr(addr) {
                Ok(mut client) => {
                    client.handshake(&info)?;
                    return Ok(client);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::InvalidUrl {
            url: url.to_owned(),
            reason: "the host resolves to nothing".into(),
        }))
    }

    /// Connects to an address without authenticating.
    ///
    /// # Errors
    /// An I/O error if the connection fails.
    pub fn connect_addr(addr: SocketAddr) -> Result<Self> {
        Self::connect_addr_timeout(addr, CONNECT_TIMEOUT)
    }

    pub(crate) fn connect_addr_timeout(addr: SocketAddr, timeout: Duration) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| Error::io(format!("connecting to {addr}"), e))?;
        let ctx = |e| Error::io(format!("configuring the connection to {addr}"), e);
        stream.set_nodelay(true).map_err(ctx)?;
        stream
            .set_read_timeout(Some(DEFAULT_IO_TIMEOUT))
            .map_err(ctx)?;
        stream
            .set_write_timeout(Some(DEFAULT_IO_TIMEOUT))
            .map_err(ctx)?;
        Ok(Self {
            stream,
            peer: addr,
            decoder: Decoder::new(),
            inbuf: BytesMut::new(),
            outbuf: Vec::new(),
        })
    }

    pub(crate) fn handshake(&mut self, info: &ConnectionInfo) -> Result<()> {
        match (&info.user, &info.password) {
            (Some(user), Some(pass)) => {
                self.cmd(["AUTH", user.as_str(), pass.as_str()])?;
            }
            (None, Some(pass)) => {
                self.cmd(["AUTH", pass.as_str()])?;
            }
            // A user without a password: nothing to authenticate with.
            _ => {}
        }
        if let Some(db) = info.db {
            self.cmd(["SELECT".to_owned(), db.to_string()])?;
        }
        Ok(())
    }

    /// The server's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Sets the read timeout (default 30 s). `None` waits forever: only for tests that
    /// are themselves bounded.
    ///
    /// # Errors
    /// An I/O error from the socket.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        self.stream
            .set_read_timeout(timeout)
            .map_err(|e| Error::io("setting the read timeout", e))
    }

    /// Sends one command and reads its reply.
    ///
    /// # Errors
    /// [`Error::Server`] when the reply is an error; I/O and decode errors otherwise.
    pub fn cmd<I, A>(&mut self, args: I) -> Result<Frame>
    where
        I: IntoIterator<Item = A>,
        I::IntoIter: ExactSizeIterator,
        A: AsRef<[u8]>,
    {
        self.send(args)?;
        self.read_reply()
    }

    /// Sends one command without reading its reply (for pipelining, `SUBSCRIBE`, or a
    /// blocking command whose reply the test reads later).
    ///
    /// # Errors
    /// An I/O error from the socket.
    pub fn send<I, A>(&mut self, args: I) -> Result<()>
    where
        I: IntoIterator<Item = A>,
        I::IntoIter: ExactSizeIterator,
        A: AsRef<[u8]>,
    {
        self.outbuf.clear();
        encode_command(&mut self.outbuf, args);
        self.flush_out()
    }

    /// Writes raw bytes, such as a hand-made malformed command.
    ///
    /// # Errors
    /// An I/O error from the socket.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream
            .write_all(bytes)
            .map_err(|e| Error::io(format!("writing to {}", self.peer), e))
    }

    fn flush_out(&mut self) -> Result<()> {
        let result = self.stream.write_all(&self.outbuf);
        self.outbuf.clear();
        result.map_err(|e| Error::io(format!("writing to {}", self.peer), e))
    }

    /// Reads the next frame, error replies included (as [`Frame::SimpleError`]).
    ///
    /// # Errors
    /// [`Error::Closed`] when the server closed the connection, a timeout (see
    /// [`Error::is_timeout`]), other I/O errors, or [`Error::Decode`].
    pub fn read_frame(&mut self) -> Result<Frame> {
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.inbuf)? {
                return Ok(frame);
            }
            let n = match self.stream.read(&mut chunk) {
                Ok(0) => return Err(Error::Closed),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(format!("reading from {}", self.peer), e)),
            };
            self.inbuf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads the next reply, turning an error reply into [`Error::Server`].
    ///
    /// # Errors
    /// As [`TestClient::read_frame`], plus [`Error::Server`].
    pub fn read_reply(&mut self) -> Result<Frame> {
        let frame = self.read_frame()?;
        match frame.to_server_error() {
            Some(e) => Err(Error::Server(e)),
            None => Ok(frame),
        }
    }

    fn cmd_int<I, A>(&mut self, name: &str, args: I) -> Result<i64>
    where
        I: IntoIterator<Item = A>,
        I::IntoIter: ExactSizeIterator,
        A: AsRef<[u8]>,
    {
        let reply = self.cmd(args)?;
        reply
            .as_integer()
            .ok_or_else(|| Error::unexpected(name, reply))
    }

    /// `PING`.
    ///
    /// # Errors
    /// As [`TestClient::cmd`], or [`Error::UnexpectedReply`] for anything but `PONG`.
    pub fn ping(&mut self) -> Result<()> {
        let reply = self.cmd(["PING"])?;
        match reply.as_bytes() {
            Some(b) if &b[..] == b"PONG" => Ok(()),
            _ => Err(Error::unexpected("PING", reply)),
        }
    }

    /// `FLUSHALL SYNC`: empties every database.
    ///
    /// # Errors
    /// As [`TestClient::cmd`].
    pub fn flushall(&mut self) -> Result<()> {
        self.cmd(["FLUSHALL", "SYNC"]).map(drop)
    }

    /// `LLEN key`.
    ///
    /// # Errors
    /// As [`TestClient::cmd`].
    pub fn llen(&mut self, key: impl AsRef<[u8]>) -> Result<i64> {
        self.cmd_int("LLEN", [b"LLEN".as_slice(), key.as_ref()])
    }

    /// `PUBLISH channel message`; returns how many subscribers received it.
    ///
    /// # Errors
    /// As [`TestClient::cmd`].
    pub fn publish(&mut self, channel: impl AsRef<[u8]>, message: impl AsRef<[u8]>) -> Result<i64> {
        self.cmd_int(
            "PUBLISH",
            [b"PUBLISH".as_slice(), channel.as_ref(), message.as_ref()],
        )
    }

    /// Publishes every message to `channel` with `command` (`PUBLISH`, or `SPUBLISH` for
    /// a shard channel), pipelined 1 000 to a round trip. Returns the receivers summed
    /// over the messages (each PUBLISH's reply).
    ///
    /// # Errors
    /// As [`TestClient::cmd`]; every pipelined reply is read before an error is returned.
    pub fn publish_many<I, A>(
        &mut self,
        command: &str,
        channel: impl AsRef<[u8]>,
        messages: I,
    ) -> Result<i64>
    where
        I: IntoIterator<Item = A>,
        A: AsRef<[u8]>,
    {
        let channel = channel.as_ref();
        let mut messages = messages.into_iter().peekable();
        let mut received = 0;
        while messages.peek().is_some() {
            let mut pending = 0;
            for m in messages.by_ref().take(ITEMS_PER_PUSH) {
                CommandWriter::new(&mut self.outbuf, 3)
                    .arg(command.as_bytes())
                    .arg(channel)
                    .arg(m.as_ref())
                    .finish();
                pending += 1;
            }
            self.flush_out()?;
            let mut first_error = None;
            for _ in 0..pending {
                match self.read_reply() {
                    Ok(Frame::Integer(n)) => received += n,
                    Ok(other) => {
                        first_error.get_or_insert(Error::unexpected(command, other));
                    }
                    Err(Error::Server(e)) => {
                        first_error.get_or_insert(Error::Server(e));
                    }
                    Err(e) => return Err(e),
                }
            }
            if let Some(e) = first_error {
                return Err(e);
            }
        }
        Ok(received)
    }

    /// Pushes every item onto the head of `key` (`LPUSH`, so the first item is popped
    /// first by `RPOP`/`BRPOP`), pipelined: 1 000 items per `LPUSH`, 16 `LPUSH`es per round
    /// trip. A million small items take about a second. Returns the list's length after
    /// the last push.
    ///
    /// # Errors
    /// As [`TestClient::cmd`]; every pipelined reply is read before an error is returned,
    /// so the client stays usable after a `WRONGTYPE`.
    pub fn lpush_many<I, A>(&mut self, key: impl AsRef<[u8]>, items: I) -> Result<i64>
    where
        I: IntoIterator<Item = A>,
        A: AsRef<[u8]>,
    {
        self.push_many(b"LPUSH", key.as_ref(), items)
    }

    /// Like [`TestClient::lpush_many`] with `RPUSH` (appends to the tail).
    ///
    /// # Errors
    /// As [`TestClient::lpush_many`].
    pub fn rpush_many<I, A>(&mut self, key: impl AsRef<[u8]>, items: I) -> Result<i64>
    where
        I: IntoIterator<Item = A>,
        A: AsRef<[u8]>,
    {
        self.push_many(b"RPUSH", key.as_ref(), items)
    }

    fn push_many<I, A>(&mut self, command: &[u8], key: &[u8], items: I) -> Result<i64>
    where
        I: IntoIterator<Item = A>,
        A: AsRef<[u8]>,
    {
        let name = String::from_utf8_lossy(command).into_owned();
        let mut items = items.into_iter();
        let mut chunk: Vec<A> = Vec::with_capacity(ITEMS_PER_PUSH);
        let mut pending = 0;
        let mut len = None;
        loop {
            chunk.clear();
            chunk.extend(items.by_ref().take(ITEMS_PER_PUSH));
            let done = chunk.is_empty();
            if !done {
                CommandWriter::new(&mut self.outbuf, 2 + chunk.len())
                    .arg(command)
                    .arg(key)
                    .args(&chunk)
                    .finish();
                pending += 1;
            }
            if pending == PUSHES_PER_ROUND_TRIP || (done && pending > 0) {
                self.flush_out()?;
                let mut first_error = None;
                for _ in 0..pending {
                    match self.read_reply() {
                        Ok(Frame::Integer(n)) => len = Some(n),
                        Ok(other) => {
                            first_error.get_or_insert(Error::unexpected(&name, other));
                        }
                        Err(Error::Server(e)) => {
                            first_error.get_or_insert(Error::Server(e));
                        }
                        // The connection itself failed: later replies will not come.
                        Err(e) => return Err(e),
                    }
                }
                if let Some(e) = first_error {
                    return Err(e);
                }
                pending = 0;
            }
            if done {
                break;
            }
        }
        match len {
            Some(n) => Ok(n),
            None => self.llen(key),
        }
    }

    /// `CLIENT LIST`, parsed.
    ///
    /// # Errors
    /// As [`TestClient::cmd`].
    pub fn client_list(&mut self) -> Result<Vec<ClientInfo>> {
        let reply = self.cmd(["CLIENT", "LIST"])?;
        let Some(text) = reply.as_bytes() else {
            return Err(Error::unexpected("CLIENT LIST", reply));
        };
        Ok(String::from_utf8_lossy(text)
            .lines()
            .filter(|l| !l.is_empty())
            .map(ClientInfo::parse)
            .collect())
    }

    /// `CLIENT KILL` with new-style filters, such as `[("TYPE", "pubsub")]`,
    /// `[("ADDR", "127.0.0.1:53122")]` or `[("USER", "alice")]`; returns how many
    /// connections were closed. This client is never one of them (`SKIPME yes`).
    ///
    /// # Errors
    /// As [`TestClient::cmd`].
    pub fn client_kill(&mut self, filters: &[(&str, &str)]) -> Result<i64> {
        let mut args: Vec<&str> = vec!["CLIENT", "KILL"];
        for (k, v) in filters {
            args.extend([*k, *v]);
        }
        args.extend(["SKIPME", "yes"]);
        self.cmd_int("CLIENT KILL", args)
    }

    /// Closes every connection whose `CLIENT SETNAME` is `name` (Redis has no name filter,
    /// so this lists clients and kills them by id); returns how many were closed.
    ///
    /// # Errors
    /// As [`TestClient::cmd`].
    pub fn client_kill_by_name(&mut self, name: &str) -> Result<i64> {
        let mut killed = 0;
        for client in self.client_list()? {
            if client.name == name {
                // The client may have gone away between LIST and KILL: that is 0, not an error.
                killed += self.client_kill(&[("ID", &client.id.to_string())])?;
            }
        }
        Ok(killed)
    }

    /// `INFO section` as text.
    ///
    /// # Errors
    /// As [`TestClient::cmd`].
    pub fn info(&mut self, section: &str) -> Result<String> {
        let reply = self.cmd(["INFO", section])?;
        match reply.as_bytes() {
            Some(b) => Ok(String::from_utf8_lossy(b).into_owned()),
            None => Err(Error::unexpected("INFO", reply)),
        }
    }

    /// One `field:value` line of `INFO section`, such as `info_field("clients",
    /// "blocked_clients")`.
    ///
    /// # Errors
    /// As [`TestClient::cmd`].
    pub fn info_field(&mut self, section: &str, field: &str) -> Result<Option<String>> {
        let text = self.info(section)?;
        Ok(info_value(&text, field).map(str::to_owned))
    }
}

/// The value of `field` in `INFO` text (`field:value` lines).
pub(crate) fn info_value<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_list_lines_parse_into_fields() {
        let c = ClientInfo::parse(
            "id=7 addr=127.0.0.1:5000 laddr=127.0.0.1:6379 fd=8 name=ringq-0 age=1 idle=0 flags=b db=0 cmd=blmpop user=default resp=3",
        );
        assert_eq!(c.id, 7);
        assert_eq!(c.name, "ringq-0");
        assert_eq!(c.cmd, "blmpop");
        assert!(c.is_blocked());
        assert_eq!(c.get("resp"), Some("3"));
        assert_eq!(c.get("missing"), None);
    }

    #[test]
    fn info_fields_are_found_by_exact_name() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_version_extra:x\r\n";
        assert_eq!(info_value(info, "redis_version"), Some("7.0.15"));
        assert_eq!(info_value(info, "redis"), None);
    }
}

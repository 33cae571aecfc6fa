//! The handshake: `HELLO 3 [AUTH] SETNAME`, the RESP2 fallback (`AUTH`, `CLIENT SETNAME`),
//! `SELECT`, and what each error reply in it means.

use std::time::Instant;

use bytes::Bytes;
use ringq_resp::{CommandWriter, Decoder, Frame, ServerErrorKind};

use super::{classify, Conn, Failure, Pending, Phase, ServerInfo, Tag};
use crate::error::{Error, ErrorKind};

impl<C: Copy + std::fmt::Debug> Conn<C> {
    /// Queues `HELLO 3 [AUTH user pass] SETNAME name` in place of the placeholder that
    /// counted the connect deadline (the connect and the handshake share it).
    pub(super) fn send_hello(&mut self) {
        self.phase = Phase::Hello;
        let deadline = self
            .pending
            .pop_front()
            .map_or_else(Instant::now, |p| p.deadline);
        let info = &self.cfg.info;
        let user = info.username.as_deref().unwrap_or("default");
        let nargs = 2 + if info.password.is_some() { 3 } else { 0 } + 2;
        let mut w = CommandWriter::new(&mut self.wbuf, nargs)
            .arg("HELLO")
            .arg("3");
        if let Some(pw) = &info.password {
            w = w.arg("AUTH").arg(user).arg(pw);
        }
        w.arg("SETNAME").arg(&self.name).finish();
        self.pending.push_back(Pending::new(Tag::Hello, deadline));
    }

    /// Handles a handshake reply. Returns `true` when the connection became ready.
    pub(crate) fn on_handshake_reply(
        &mut self,
        tag: Tag<C>,
        frame: &Bytes,
        now: Instant,
    ) -> Result<bool, Failure> {
        let frame = Decoder::new()
            .build(frame)
            .map_err(|e| Failure::Fatal(Error::protocol(&self.peer(), e)))?;
        let deadline = now + self.cfg.connect_timeout;
        let info = self.cfg.info.clone();
        match (tag, &frame) {
            (Tag::Hello, Frame::Map(_)) | (Tag::Hello, Frame::Array(_)) => {
                self.server = parse_hello(&frame);
                if self.server.cluster && self.cfg.cluster.is_none() {
                    // It would serve the slots it owns and answer MOVED for the rest:
                    // refused at start rather than half working.
                    return Err(Failure::Fatal(Error::config(format!(
                        "{} is a Redis Cluster node: connect with a redis+cluster:// (or \
                         rediss+cluster://) URL, which follows the cluster's slots",
                        self.peer()
                    ))));
                }
            }
            (Tag::Hello, f) if f.is_error() => {
                let e = f
                    .to_server_error()
                    .unwrap_or_else(|| ringq_resp::ServerError::parse(Bytes::new()));
                if matches!(
                    e.kind(),
                    ServerErrorKind::UnknownCommand | ServerErrorKind::NoProto
                ) {
                    // A server without HELLO (Redis < 6) or without RESP3: RESP2 + AUTH.
                    self.server = ServerInfo {
                        resp3: false,
                        version: (5, 0, 0),
                        ..ServerInfo::default()
                    };
                    if let Some(pw) = &info.password {
                        let mut w = CommandWriter::new(
                            &mut self.wbuf,
                            if info.username.is_some() { 3 } else { 2 },
                        )
                        .arg("AUTH");
                        if let Some(u) = &info.username {
                            w = w.arg(u);
                        }
                        w.arg(pw).finish();
                        self.pending.push_back(Pending::new(Tag::Auth, deadline));
                        self.phase = Phase::Auth2;
                    } else {
                        self.send_setname(deadline);
                    }
                    return Ok(false);
                }
                return Err(self.handshake_failure("HELLO", e));
            }
            (Tag::Auth, f) if f.is_error() => {
                let e = f
                    .to_server_error()
                    .unwrap_or_else(|| ringq_resp::ServerError::parse(Bytes::new()));
                return Err(self.handshake_failure("AUTH", e));
            }
            (Tag::Auth, _) => {
                self.send_setname(deadline);
                return Ok(false);
            }
            (Tag::SetName, f) | (Tag::Select, f) if f.is_error() => {
                let e = f
                    .to_server_error()
                    .unwrap_or_else(|| ringq_resp::ServerError::parse(Bytes::new()));
                let what = if matches!(tag, Tag::Select) {
                    format!("SELECT {}", info.db)
                } else {
                    "CLIENT SETNAME".to_owned()
                };
                if matches!(tag, Tag::Select) && self.server.cluster && !self.ever_ready {
                    // Redis Cluster has database 0 only; Valkey 9 has more when
                    // configured with `cluster-databases`.
                    return Err(Failure::Fatal(Error::config(format!(
                        "{what} on {}: {}; this cluster has database 0 only: drop the /{} \
                         from the URL (Valkey 9 serves more with `cluster-databases`)",
                        self.peer(),
                        String::from_utf8_lossy(e.message()),
                        info.db
                    ))));
                }
                return Err(self.handshake_failure(&what, e));
            }
            (Tag::SetName, _) | (Tag::Select, _) => {}
            (Tag::Role, f) if f.is_error() => {
                let e = f
                    .to_server_error()
                    .unwrap_or_else(|| ringq_resp::ServerError::parse(Bytes::new()));
                return Err(self.handshake_failure("ROLE", e));
            }
            (Tag::Role, f) => {
                let role = f
                    .as_elements()
                    .and_then(|v| v.first()?.as_bytes().cloned())
                    .unwrap_or_default();
                if role.as_ref() != b"master" {
                    return Err(Failure::Retry(Error::new(
                        ErrorKind::ConnectionLost,
                        format!(
                            "{} is a {}, not the master (a failover in progress?); asking the \
                             sentinels again",
                            self.peer(),
                            String::from_utf8_lossy(&role)
                        ),
                    )));
                }
            }
            (t, f) => {
                return Err(Failure::Fatal(Error::new(
                    ErrorKind::Protocol,
                    format!("unexpected reply to {t:?} from {}: {f:?}", self.peer()),
                )))
            }
        }
        if !matches!(tag, Tag::Select | Tag::Role) && info.db != 0 {
            CommandWriter::new(&mut self.wbuf, 2)
                .arg("SELECT")
                .arg_int(i64::from(info.db))
                .finish();
            self.pending.push_back(Pending::new(Tag::Select, deadline));
            self.phase = Phase::Select;
            return Ok(false);
        }
        if self.cfg.sentinels.is_some() && !matches!(tag, Tag::Role) {
            // The sentinels' answer is a claim: check it on this connection.
            CommandWriter::new(&mut self.wbuf, 1).arg("ROLE").finish();
            self.pending.push_back(Pending::new(Tag::Role, deadline));
            self.phase = Phase::Role;
            return Ok(false);
        }
        self.phase = Phase::Ready;
        self.ever_ready = true;
        self.last_error = None;
        Ok(true)
    }

    /// What an error reply in the handshake means. Authentication failures stop the engine
    /// (retrying cannot fix a password). A server that is starting, full, or without its
    /// master (LOADING, BUSY, "max number of clients reached", MASTERDOWN…) may accept us
    /// later: reconnect with backoff, up to the start attempts for a connection never
    /// ready. Anything else stops the engine on the first connection (a configuration
    /// problem, such as SELECT of a database the server does not have) but is retried once
    /// the connection has worked before: a server that accepted this handshake earlier is
    /// most likely in a passing state.
    fn handshake_failure(&self, what: &str, e: ringq_resp::ServerError) -> Failure {
        let class = classify::class(&e);
        if class == classify::Class::Auth {
            return Failure::Fatal(self.auth_error(e));
        }
        let passing = matches!(class, classify::Class::Passing | classify::Class::Failover)
            || (self.ever_ready && *e.kind() != ServerErrorKind::NoPerm);
        let err = Error::server(&format!("{what} on {}", self.peer()), e);
        if passing {
            Failure::Retry(err)
        } else {
            Failure::Fatal(err)
        }
    }

    fn send_setname(&mut self, deadline: Instant) {
        let name = self.name.clone();
        CommandWriter::new(&mut self.wbuf, 3)
            .arg("CLIENT")
            .arg("SETNAME")
            .arg(&name)
            .finish();
        self.pending.push_back(Pending::new(Tag::SetName, deadline));
        self.phase = Phase::SetName2;
    }

    /// The error for a failed authentication (called only for errors that are one).
    fn auth_error(&self, e: ringq_resp::ServerError) -> Error {
        let info = &self.cfg.info;
        let user = info.username.as_deref().unwrap_or("default");
        match e.kind() {
            ServerErrorKind::NoAuth => Error::auth(
                format!(
                    "{} requires a password (NOAUTH): put it in the URL, as redis://:PASSWORD@host or \
                     redis://USER:PASSWORD@host",
                    self.peer()
                ),
                Some(e),
            ),
            _ => Error::auth(
                format!("AUTH failed for user '{user}' on {}: {e}", self.peer()),
                Some(e),
            ),
        }
    }
}

fn parse_hello(frame: &Frame) -> ServerInfo {
    let mut info = ServerInfo {
        resp3: matches!(frame, Frame::Map(_)),
        ..ServerInfo::default()
    };
    let pairs: Vec<(&Frame, &Frame)> = match frame {
        Frame::Map(p) => p.iter().map(|(k, v)| (k, v)).collect(),
        Frame::Array(v) => v
            .chunks(2)
            .filter_map(|c| Some((c.first()?, c.get(1)?)))
            .collect(),
        _ => Vec::new(),
    };
    for (k, v) in pairs {
        match k.as_bytes().map(|b| &b[..]) {
            Some(b"version") => {
                if let Some(s) = v.as_bytes().and_then(|b| std::str::from_utf8(b).ok()) {
                    let mut it = s.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
                    info.version = (
                        it.next().unwrap_or(0),
                        it.next().unwrap_or(0),
                        it.next().unwrap_or(0),
                    );
                }
            }
            Some(b"id") => info.client_id = v.as_integer(),
            Some(b"mode") => info.cluster = v.as_bytes().is_some_and(|m| &m[..] == b"cluster"),
            _ => {}
        }
    }
    info
}

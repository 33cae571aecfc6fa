//! [`ServerError`]: a `-` or `!` reply parsed into the kind the engine branches on.
//!
//! Redis error replies start with an upper-case code (`MOVED`, `LOADING`, `WRONGPASS`…).
//! The code decides what a client does: follow a redirect, wait and retry, fail the
//! handshake. Everything else is [`ServerErrorKind::Other`] with the message kept.

use std::fmt;

use bytes::Bytes;

/// What kind of error the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerErrorKind {
    /// `MOVED <slot> <host:port>`: the slot lives on another node for good.
    Moved {
        /// The hash slot.
        slot: u16,
        /// The node that owns it, as `host:port`.
        addr: String,
    },
    /// `ASK <slot> <host:port>`: ask that node once, after `ASKING`.
    Ask {
        /// The hash slot.
        slot: u16,
        /// The node to ask, as `host:port`.
        addr: String,
    },
    /// `LOADING`: the server is loading its dataset; retry later.
    Loading,
    /// `BUSY`: a script is running; retry later.
    Busy,
    /// `NOGROUP`: the consumer group or stream does not exist.
    NoGroup,
    /// `UNBLOCKED`: a blocking command was unblocked (CLIENT UNBLOCK ERROR, or the key
    /// moved to another cluster node).
    Unblocked,
    /// `WRONGPASS`: bad user name or password; also the `ERR` forms of a refused `AUTH`
    /// (`ERR invalid password`, `ERR AUTH <password> called without any password
    /// configured…`, `ERR Client sent AUTH, but no password is set`).
    WrongPass,
    /// `NOAUTH`: authentication required.
    NoAuth,
    /// `NOPERM`: the ACL user may not run this command or touch this key.
    NoPerm,
    /// `READONLY`: writes sent to a replica.
    ReadOnly,
    /// `CLUSTERDOWN`: the cluster cannot serve; retry later.
    ClusterDown,
    /// `TRYAGAIN`: a multi-key command during resharding; retry later.
    TryAgain,
    /// `WRONGTYPE`: the key holds another type.
    WrongType,
    /// `NOSCRIPT`: `EVALSHA` of a script the server does not have (never loaded, `SCRIPT
    /// FLUSH`, a restart, or a new primary after a failover): load it again.
    NoScript,
    /// `BUSYGROUP`: `XGROUP CREATE` of a group that exists already.
    BusyGroup,
    /// `MASTERDOWN`: a replica that lost its link to the master refuses the command.
    MasterDown,
    /// `CROSSSLOT`: a multi-key command whose keys hash to different cluster slots.
    CrossSlot,
    /// `NOPROTO`: `HELLO` asked for a protocol version the server does not speak.
    NoProto,
    /// `ERR unknown command …`: the server does not have this command (an older
    /// version, or a proxy that does not forward it).
    UnknownCommand,
    /// `ERR max number of clients reached`: the server is full; retry later.
    MaxClients,
    /// Any other error; see [`ServerError::code`].
    Other,
}

impl ServerErrorKind {
    /// For `MOVED` and `ASK`: the node to connect to, as `host:port`. `None` for any
    /// other kind, and when the server did not know the node's endpoint (an empty host,
    /// as in `MOVED 3999 :6380`, or `?`): then the client asks the cluster's topology
    /// instead of connecting anywhere.
    pub fn redirect_endpoint(&self) -> Option<&str> {
        let (ServerErrorKind::Moved { addr, .. } | ServerErrorKind::Ask { addr, .. }) = self else {
            return None;
        };
        let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
        (!host.is_empty() && host != "?" && addr != "?").then_some(addr.as_str())
    }
}

/// An error reply, with its kind and the full message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    kind: ServerErrorKind,
    message: Bytes,
}

impl ServerError {
    /// Parses an error reply's text (without the leading `-` or the CRLF).
    pub fn parse(message: Bytes) -> Self {
        let code_len = message
            .iter()
            .position(|&b| b == b' ')
            .unwrap_or(message.len());
        let code = &message[..code_len];
        let kind = match code {
            b"MOVED" | b"ASK" => match parse_redirect(&message[code_len..]) {
                Some((slot, addr)) if code == b"MOVED" => ServerErrorKind::Moved { slot, addr },
                Some((slot, addr)) => ServerErrorKind::Ask { slot, addr },
                None => ServerErrorKind::Other,
            },
            b"LOADING" => ServerErrorKind::Loading,
            b"BUSY" => ServerErrorKind::Busy,
            b"NOGROUP" => ServerErrorKind::NoGroup,
            b"UNBLOCKED" => ServerErrorKind::Unblocked,
            b"WRONGPASS" => ServerErrorKind::WrongPass,
            b"NOAUTH" => ServerErrorKind::NoAuth,
            b"NOPERM" => ServerErrorKind::NoPerm,
            b"READONLY" => ServerErrorKind::ReadOnly,
            b"CLUSTERDOWN" => ServerErrorKind::ClusterDown,
            b"TRYAGAIN" => ServerErrorKind::TryAgain,
            b"WRONGTYPE" => ServerErrorKind::WrongType,
            b"NOSCRIPT" => ServerErrorKind::NoScript,
            b"BUSYGROUP" => ServerErrorKind::BusyGroup,
            b"MASTERDOWN" => ServerErrorKind::MasterDown,
            b"CROSSSLOT" => ServerErrorKind::CrossSlot,
            b"NOPROTO" => ServerErrorKind::NoProto,
            b"ERR" => err_kind(&message[code_len..]),
            _ => ServerErrorKind::Other,
        };
        Self { kind, message }
    }

    /// The parsed kind.
    pub fn kind(&self) -> &ServerErrorKind {
        &self.kind
    }

    /// The error code: the first word of the message, such as `ERR` or `WRONGTYPE`.
    pub fn code(&self) -> &str {
        let end = self
            .message
            .iter()
            .position(|&b| b == b' ')
            .unwrap_or(self.message.len());
        std::str::from_utf8(&self.message[..end]).unwrap_or("")
    }

    /// The whole message as the server sent it.
    pub fn message(&self) -> &Bytes {
        &self.message
    }

    /// Whether the same command may succeed later without any change (LOADING, BUSY,
    /// CLUSTERDOWN, TRYAGAIN, max clients reached).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ServerErrorKind::Loading
                | ServerErrorKind::Busy
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::TryAgain
                | ServerErrorKind::MaxClients
        )
    }

    /// Whether the server is not a writable primary now (READONLY: a replica;
    /// MASTERDOWN: a replica without its master; UNBLOCKED with "instance state changed":
    /// a blocked command ended because its master became a replica): a failover, to
    /// follow by connecting again (re-resolving the name, or asking Sentinel or the
    /// cluster).
    pub fn is_role_change(&self) -> bool {
        match self.kind {
            ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown => true,
            ServerErrorKind::Unblocked => contains(&self.message, b"instance state changed"),
            _ => false,
        }
    }

    /// Whether this is an authentication failure (WRONGPASS, NOAUTH), which retrying
    /// cannot fix.
    pub fn is_auth(&self) -> bool {
        matches!(
            self.kind,
            ServerErrorKind::WrongPass | ServerErrorKind::NoAuth
        )
    }

    /// Whether this is a cluster topology event (MOVED, ASK).
    pub fn is_redirect(&self) -> bool {
        matches!(
            self.kind,
            ServerErrorKind::Moved { .. } | ServerErrorKind::Ask { .. }
        )
    }
}

/// The kind of an `ERR …` reply, from the few texts a client branches on.
fn err_kind(rest: &[u8]) -> ServerErrorKind {
    let text = rest.trim_ascii_start();
    let starts = |p: &[u8]| text.len() >= p.len() && text[..p.len()].eq_ignore_ascii_case(p);
    if starts(b"unknown command") {
        ServerErrorKind::UnknownCommand
    } else if starts(b"invalid password") || starts(b"AUTH ") || starts(b"Client sent AUTH") {
        ServerErrorKind::WrongPass
    } else if starts(b"max number of clients reached") {
        ServerErrorKind::MaxClients
    } else {
        ServerErrorKind::Other
    }
}

fn parse_redirect(rest: &[u8]) -> Option<(u16, String)> {
    let text = std::str::from_utf8(rest).ok()?.trim();
    let mut words = text.split(' ');
    let slot: u16 = words.next()?.parse().ok()?;
    let addr = words.next()?;
    if slot >= 16384 || addr.is_empty() || words.next().is_some() {
        return None;
    }
    Some((slot, addr.to_owned()))
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.message))
    }
}

impl std::error::Error for ServerError {}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(s: &'static str) -> ServerErrorKind {
        ServerError::parse(Bytes::from_static(s.as_bytes()))
            .kind()
            .clone()
    }

    #[test]
    fn codes_map_to_kinds() {
        assert_eq!(
            kind("MOVED 3999 127.0.0.1:6381"),
            ServerErrorKind::Moved {
                slot: 3999,
                addr: "127.0.0.1:6381".into()
            }
        );
        assert_eq!(
            kind("ASK 3999 10.0.0.1:7000"),
            ServerErrorKind::Ask {
                slot: 3999,
                addr: "10.0.0.1:7000".into()
            }
        );
        assert_eq!(kind("MOVED 99999 x:1"), ServerErrorKind::Other);
        assert_eq!(kind("MOVED"), ServerErrorKind::Other);
        assert_eq!(
            kind("LOADING Redis is loading the dataset in memory"),
            ServerErrorKind::Loading
        );
        assert_eq!(
            kind("BUSY Redis is busy running a script"),
            ServerErrorKind::Busy
        );
        assert_eq!(
            kind("NOGROUP No such key 'x' or consumer group 'g'"),
            ServerErrorKind::NoGroup
        );
        assert_eq!(
            kind("UNBLOCKED client unblocked via CLIENT UNBLOCK"),
            ServerErrorKind::Unblocked
        );
        assert_eq!(
            kind("WRONGPASS invalid username-password pair or user is disabled."),
            ServerErrorKind::WrongPass
        );
        assert_eq!(
            kind("NOAUTH Authentication required."),
            ServerErrorKind::NoAuth
        );
        assert_eq!(
            kind("NOPERM this user has no permissions"),
            ServerErrorKind::NoPerm
        );
        assert_eq!(
            kind("READONLY You can't write against a read only replica."),
            ServerErrorKind::ReadOnly
        );
        assert_eq!(
            kind("CLUSTERDOWN The cluster is down"),
            ServerErrorKind::ClusterDown
        );
        assert_eq!(
            kind("TRYAGAIN Multiple keys request during rehashing"),
            ServerErrorKind::TryAgain
        );
        assert_eq!(
            kind("WRONGTYPE Operation against a key holding the wrong kind of value"),
            ServerErrorKind::WrongType
        );
        assert_eq!(
            kind("ERR unknown command 'HELLO', with args beginning with: "),
            ServerErrorKind::UnknownCommand
        );
        assert_eq!(
            kind("ERR max number of clients reached"),
            ServerErrorKind::MaxClients
        );
        assert_eq!(
            kind("NOSCRIPT No matching script. Please use EVAL."),
            ServerErrorKind::NoScript
        );
        assert_eq!(
            kind("BUSYGROUP Consumer Group name already exists"),
            ServerErrorKind::BusyGroup
        );
        assert_eq!(
            kind(
                "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."
            ),
            ServerErrorKind::MasterDown
        );
        assert_eq!(
            kind("CROSSSLOT Keys in request don't hash to the same slot"),
            ServerErrorKind::CrossSlot
        );
        assert_eq!(
            kind("NOPROTO unsupported protocol version"),
            ServerErrorKind::NoProto
        );
        assert_eq!(kind("ERR syntax error"), ServerErrorKind::Other);
        for refused in [
            "ERR invalid password",
            "ERR AUTH <password> called without any password configured for the default user.",
            "ERR Client sent AUTH, but no password is set",
        ] {
            assert_eq!(kind(refused), ServerErrorKind::WrongPass, "{refused}");
        }
        assert_eq!(kind("ERR"), ServerErrorKind::Other);
        assert_eq!(kind(""), ServerErrorKind::Other);
    }

    #[test]
    fn code_and_predicates() {
        let e = ServerError::parse(Bytes::from_static(b"LOADING busy"));
        assert_eq!(e.code(), "LOADING");
        assert!(e.is_retryable());
        assert!(!e.is_auth());
        assert!(ServerError::parse(Bytes::from_static(b"WRONGPASS x")).is_auth());
        assert!(ServerError::parse(Bytes::from_static(b"MOVED 1 h:1")).is_redirect());
        assert!(ServerError::parse(Bytes::from_static(b"READONLY x")).is_role_change());
        assert!(ServerError::parse(Bytes::from_static(b"MASTERDOWN x")).is_role_change());
        assert!(ServerError::parse(Bytes::from_static(
            b"UNBLOCKED force unblock from blocking operation, instance state changed (master -> replica?)"
        ))
        .is_role_change());
        assert!(!ServerError::parse(Bytes::from_static(
            b"UNBLOCKED client unblocked via CLIENT UNBLOCK"
        ))
        .is_role_change());
        assert!(
            ServerError::parse(Bytes::from_static(b"ERR max number of clients reached"))
                .is_retryable()
        );
    }

    #[test]
    fn redirect_endpoints_unknown_to_the_server_are_not_addresses() {
        assert_eq!(
            kind("MOVED 1 10.0.0.1:7000").redirect_endpoint(),
            Some("10.0.0.1:7000")
        );
        assert_eq!(
            kind("ASK 1 node-a:7000").redirect_endpoint(),
            Some("node-a:7000")
        );
        assert_eq!(kind("MOVED 1 :7000").redirect_endpoint(), None);
        assert_eq!(kind("MOVED 1 ?:7000").redirect_endpoint(), None);
        assert_eq!(kind("MOVED 1 ?").redirect_endpoint(), None);
        assert_eq!(kind("LOADING x").redirect_endpoint(), None);
    }
}

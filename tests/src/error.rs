//! [`Error`]: everything the harness can fail with, typed so a test can assert on the kind
//! (a `NOAUTH` reply, a lost connection) rather than on a message.

use std::fmt;
use std::io;

use ringq_resp::{DecodeError, Frame, ServerError, ServerErrorKind};

/// Result alias used throughout the harness.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A harness failure.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// No `redis-server` binary was found; `searched` lists where the harness looked.
    NotInstalled {
        /// The places searched, in order.
        searched: String,
    },
    /// `redis-server` was found but did not come up.
    StartFailed {
        /// What went wrong.
        reason: String,
        /// The last lines of the server's log and stderr.
        log_tail: String,
    },
    /// An I/O error, with what the harness was doing.
    Io {
        /// What was being done, such as "connecting to 127.0.0.1:6379".
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The peer closed the connection.
    Closed,
    /// The peer sent bytes that are not RESP.
    Decode(DecodeError),
    /// The server answered with an error reply.
    Server(ServerError),
    /// A reply of the wrong shape, such as a string where an integer was expected.
    UnexpectedReply {
        /// The command, for the message.
        command: String,
        /// What came back.
        reply: Frame,
    },
    /// A URL the harness cannot use.
    InvalidUrl {
        /// The URL as given (passwords included: these are test credentials).
        url: String,
        /// Why it was rejected.
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn unexpected(command: &str, reply: Frame) -> Self {
        Self::UnexpectedReply {
            command: command.to_owned(),
            reply,
        }
    }

    /// The server error, when the server answered with an error reply.
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            Self::Server(e) => Some(e),
            _ => None,
        }
    }

    /// The kind of the server's error reply, if this is one.
    pub fn server_error_kind(&self) -> Option<&ServerErrorKind> {
        self.server_error().map(ServerError::kind)
    }

    /// Whether an established connection broke: closed by the peer, reset, or a broken pipe.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            Self::Closed => true,
            Self::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }

    /// Whether nothing was listening: the connection was refused.
    pub fn is_connection_refused(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == io::ErrorKind::ConnectionRefused)
    }

    /// Whether a read or write hit the client's timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            Self::Io { source, .. }
                if matches!(source.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotInstalled { searched } => write!(
                f,
                "server binary not found (searched {searched}): run scripts/setup.sh to install \
                 it, or set REDIS_SERVER (or VALKEY_SERVER) to the path of a redis-server or \
                 valkey-server binary"
            ),
            Self::StartFailed { reason, log_tail } => {
                write!(f, "redis-server did not start: {reason}")?;
                if !log_tail.is_empty() {
                    write!(f, "\n--- last lines of the server log ---\n{log_tail}")?;
                }
                Ok(())
            }
            Self::Io { context, source } => write!(f, "{context}: {source}"),
            Self::Closed => f.write_str("the server closed the connection"),
            Self::Decode(e) => write!(f, "malformed reply: {e}"),
            Self::Server(e) => write!(f, "server error: {e}"),
            Self::UnexpectedReply { command, reply } => {
                write!(f, "unexpected reply to {command}: {reply:?}")
            }
            Self::InvalidUrl { url, reason } => write!(f, "invalid URL {url:?}: {reason}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            Self::Decode(e) => Some(e),
            Self::Server(e) => Some(e),
            _ => None,
        }
    }
}

impl From<DecodeError> for Error {
    fn from(e: DecodeError) -> Self {
        Self::Decode(e)
    }
}

//! [`Error`]: the engine's one error type, with a [`ErrorKind`] to branch on and
//! predicates for the questions callers ask (retry? connection lost? auth?).
//!
//! Messages say what happened and what to do about it.

use std::fmt;

use ringq_resp::{DecodeError, ServerError};

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The configuration or URL is invalid.
    Config,
    /// io_uring cannot be used on this host (seccomp, sysctl, old kernel, memlock).
    UringUnavailable,
    /// A system call failed.
    Io,
    /// The server could not be reached or the connection dropped.
    ConnectionLost,
    /// The server rejected our credentials, or requires some.
    Auth,
    /// TLS failed: an untrusted or mismatched certificate, a refused client certificate,
    /// TLS against a plaintext port or the reverse.
    Tls,
    /// The server sent bytes that are not valid RESP, or broke a decoder limit.
    Protocol,
    /// The server answered a command with an error the engine cannot recover from.
    Server,
    /// A reply did not arrive within its deadline.
    Timeout,
    /// User handler code panicked.
    Handler,
}

impl ErrorKind {
    /// Every kind, in the order of [`ErrorKind::index`].
    pub(crate) const ALL: [ErrorKind; 10] = [
        ErrorKind::Config,
        ErrorKind::UringUnavailable,
        ErrorKind::Io,
        ErrorKind::ConnectionLost,
        ErrorKind::Auth,
        ErrorKind::Tls,
        ErrorKind::Protocol,
        ErrorKind::Server,
        ErrorKind::Timeout,
        ErrorKind::Handler,
    ];

    /// Its place in [`ErrorKind::ALL`].
    pub(crate) fn index(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }

    /// A short snake_case name (metrics labels, logs): `connection_lost`, `timeout`, …
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::UringUnavailable => "uring_unavailable",
            ErrorKind::Io => "io",
            ErrorKind::ConnectionLost => "connection_lost",
            ErrorKind::Auth => "auth",
            ErrorKind::Tls => "tls",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Server => "server",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Handler => "handler",
        }
    }
}

/// The engine's error. One pointer wide, so `Result<T, Error>` stays small on hot paths.
#[derive(Debug)]
pub struct Error {
    inner: Box<Inner>,
}

#[derive(Debug)]
struct Inner {
    kind: ErrorKind,
    message: String,
    server: Option<ServerError>,
    decode: Option<DecodeError>,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        let inner = Inner {
            kind,
            message: message.into(),
            server: None,
            decode: None,
            source: None,
        };
        Self {
            inner: Box::new(inner),
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    pub(crate) fn uring_unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::UringUnavailable, message)
    }

    pub(crate) fn io(what: &str, e: std::io::Error) -> Self {
        Self::new(ErrorKind::Io, format!("{what}: {e}")).with_source(e)
    }

    pub(crate) fn protocol(peer: &str, e: DecodeError) -> Self {
        let mut err = Self::new(
            ErrorKind::Protocol,
            format!("malformed reply from {peer}: {e}; is this a Redis-protocol server?"),
        );
        err.inner.decode = Some(e);
        err
    }

    pub(crate) fn server(context: &str, e: ServerError) -> Self {
        let shown = crate::conn::classify::plain(&e);
        let mut err = Self::new(ErrorKind::Server, format!("{context}: {shown}"));
        err.inner.server = Some(e);
        err
    }

    pub(crate) fn auth(message: impl Into<String>, e: Option<ServerError>) -> Self {
        let mut err = Self::new(ErrorKind::Auth, message);
        err.inner.server = e;
        err
    }

    pub(crate) fn with_source(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.inner.source = Some(Box::new(e));
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The server's error reply, for [`ErrorKind::Server`] and [`ErrorKind::Auth`].
    pub fn server_error(&self) -> Option<&ServerError> {
        self.inner.server.as_ref()
    }

    /// The decoder's error, for [`ErrorKind::Protocol`].
    pub fn decode_error(&self) -> Option<&DecodeError> {
        self.inner.decode.as_ref()
    }

    /// Whether trying again later may succeed (connection loss, timeouts, LOADING…).
    pub fn is_retryable(&self) -> bool {
        match self.inner.kind {
            ErrorKind::ConnectionLost | ErrorKind::Timeout => true,
            ErrorKind::Server => self
                .inner
                .server
                .as_ref()
                .is_some_and(ServerError::is_retryable),
            _ => false,
        }
    }

    /// Whether the connection to the server was lost or could not be made.
    pub fn is_connection_lost(&self) -> bool {
        self.inner.kind == ErrorKind::ConnectionLost
    }

    /// Whether the server refused our credentials.
    pub fn is_auth(&self) -> bool {
        self.inner.kind == ErrorKind::Auth
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

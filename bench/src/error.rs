//! The one error type of `ringq-bench`: a message that says what failed and, where it
//! can, what to do about it. A benchmark run either produces figures or stops with one
//! of these (exit code 1).

use std::fmt;

/// What went wrong, as a sentence for the user.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// Broad classes of [`Error`], for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Anything that stopped the run: I/O, a server reply, a client that failed.
    Failed,
}

/// `ringq-bench`'s result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// A failure described by `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Failed,
            message: message.into(),
        }
    }

    /// An I/O error with what was being done.
    pub fn io(doing: impl fmt::Display, e: std::io::Error) -> Self {
        Self::new(format!("{doing}: {e}"))
    }

    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self.kind {
            ErrorKind::Failed => 1,
        }
    }

    /// Prefixes the message with `context`.
    pub fn context(self, context: impl fmt::Display) -> Self {
        Self {
            kind: self.kind,
            message: format!("{context}: {}", self.message),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<ringq::Error> for Error {
    fn from(e: ringq::Error) -> Self {
        Self::new(format!("ringq: {e}"))
    }
}

impl From<ringq_resp::DecodeError> for Error {
    fn from(e: ringq_resp::DecodeError) -> Self {
        Self::new(format!("malformed reply from the server: {e}"))
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Self {
        Self::new(format!("redis-rs: {e}"))
    }
}

impl From<ringq_tests::Error> for Error {
    fn from(e: ringq_tests::Error) -> Self {
        Self::new(format!("embedded server: {e}"))
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Self::new(format!("JSON: {e}"))
    }
}

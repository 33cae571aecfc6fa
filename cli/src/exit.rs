//! [`Exit`]: a failure that ends the process, with the status it ends with.
//!
//! Every failure is reported the same way — `ringq: <message>` on stderr — so scripts can
//! match on the prefix and people see one line that says what to do.

use std::io::Write;

/// Status for a runtime failure (server unreachable, AUTH refused, io_uring unavailable…).
pub const RUNTIME: i32 = 1;
/// Status for a usage error (bad flags or URL, a mode that is not implemented yet), as clap.
pub const USAGE: i32 = 2;

/// A failure with its exit status.
#[derive(Debug)]
pub struct Exit {
    pub code: i32,
    pub message: String,
}

impl Exit {
    /// A runtime failure (status 1).
    pub fn runtime(message: impl Into<String>) -> Self {
        Self {
            code: RUNTIME,
            message: message.into(),
        }
    }

    /// A usage error (status 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            code: USAGE,
            message: message.into(),
        }
    }

    /// An engine error: a bad configuration is a usage error, anything else a runtime one.
    /// The engine's messages already say what to do (`kernel.io_uring_disabled=2: ...`).
    pub fn engine(e: ringq::Error) -> Self {
        match e.kind() {
            ringq::ErrorKind::Config => Self::usage(e.to_string()),
            _ => Self::runtime(e.to_string()),
        }
    }

    /// Prints `ringq: <message>` on stderr and exits with the status.
    pub fn report_and_exit(self) -> ! {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "ringq: {}", self.message);
        let _ = err.flush();
        std::process::exit(self.code)
    }
}

//! The stop switch: one place where "stop consuming" is asked for — by SIGINT/SIGTERM or
//! by a closed stdout — and carried to the engine.
//!
//! A stop can be asked for before the engine has started (a signal during start-up, a
//! handler that hits EPIPE before [`ringq::EngineBuilder::start`] returns), so the request
//! and the engine's [`ShutdownHandle`] meet under one mutex: whichever comes second
//! delivers the stop.

use std::sync::Mutex;

use ringq::ShutdownHandle;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::exit::Exit;

#[derive(Default)]
struct State {
    handle: Option<ShutdownHandle>,
    requested: bool,
}

/// Asks the engine to stop (no new pops, every popped message handled) from any thread.
#[derive(Default)]
pub struct StopSwitch {
    state: Mutex<State>,
}

impl StopSwitch {
    /// Asks for a stop; returns whether one had been asked for already.
    pub fn request(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let again = s.requested;
        s.requested = true;
        if let Some(h) = &s.handle {
            h.shutdown();
        }
        again
    }

    /// Connects the started engine; stops it at once if a stop was asked for already.
    pub fn arm(&self, handle: ShutdownHandle) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.requested {
            handle.shutdown();
        }
        s.handle = Some(handle);
    }
}

/// Turns the first SIGINT/SIGTERM into a graceful stop, and a second one into an
/// immediate exit (128 + signal number), for when the graceful stop takes too long (a
/// server that stopped answering). The watcher thread lives until the process exits.
///
/// # Errors
/// Installing the handlers failed (the message says which syscall).
pub fn watch_signals(switch: std::sync::Arc<StopSwitch>) -> Result<(), Exit> {
    let mut signals = Signals::new([SIGINT, SIGTERM])
        .map_err(|e| Exit::runtime(format!("cannot install SIGINT/SIGTERM handlers: {e}")))?;
    std::thread::Builder::new()
        .name("ringq-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if switch.request() {
                    Exit {
                        code: 128 + sig,
                        message: "interrupted again: exiting without waiting for messages \
                                  in flight (they may be lost)"
                            .into(),
                    }
                    .report_and_exit();
                }
            }
        })
        .map_err(|e| Exit::runtime(format!("cannot start the signal thread: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_reports_whether_it_was_already_requested() {
        let s = StopSwitch::default();
        assert!(!s.request());
        assert!(s.request());
    }
}

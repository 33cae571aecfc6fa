//! What every shard of an engine shares with the others and with its handles: the stop
//! flag, the first fatal error, and each shard's wake-up eventfd. No pipeline knowledge.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::error::Error;
use crate::ring::sys;

/// State shared by every shard of an engine and its handles.
pub(crate) struct Signals {
    pub stop: AtomicBool,
    pub fatal: Mutex<Option<Error>>,
    pub wake_fds: Vec<RawFd>,
}

impl Signals {
    pub(crate) fn stop_all(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    /// Makes every shard run a loop turn (its wake-up read completes).
    pub(crate) fn wake_all(&self) {
        for &fd in &self.wake_fds {
            sys::eventfd_signal(fd);
        }
    }

    /// Makes shard `shard` run a loop turn.
    pub(crate) fn wake(&self, shard: usize) {
        if let Some(&fd) = self.wake_fds.get(shard) {
            sys::eventfd_signal(fd);
        }
    }

    pub(crate) fn fail(&self, e: Error) {
        if let Ok(mut f) = self.fatal.lock() {
            if f.is_none() {
                tracing::error!("stopping: {e}");
                *f = Some(e);
            }
        }
        self.stop_all();
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        for &fd in &self.wake_fds {
            sys::close(fd);
        }
    }
}

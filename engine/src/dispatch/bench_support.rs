//! Drives a worker pool without a ring or a server, for the dispatch benchmark
//! (`engine/benches/dispatch.rs`). Not part of the supported API.

use std::os::fd::RawFd;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use super::{epoch_nanos, start_pool, Dispatch, ShardDispatch, ShardWaker};
use crate::error::Error;
use crate::handler::SourceKind;
use crate::handler::{Handler, Message, Payload, Span};
use crate::intern::intern_source;
use crate::ring::sys;

/// One shard's end of a worker pool, with the shard's sleep/wake protocol.
pub struct LoopbackPool {
    side: Option<ShardDispatch>,
    threads: Vec<JoinHandle<()>>,
    fd: RawFd,
    epoch: Instant,
}

impl LoopbackPool {
    /// Starts `dispatch`'s workers with rings of `capacity` messages.
    ///
    /// # Errors
    /// When the eventfd or the worker threads cannot be created.
    pub fn new<H: Handler + Clone>(
        dispatch: &Dispatch,
        handler: &H,
        capacity: usize,
    ) -> Result<Self, Error> {
        let fd = sys::eventfd().map_err(|e| Error::io("eventfd", e))?;
        let waker = Arc::new(ShardWaker::new(fd));
        let epoch = Instant::now();
        let fatal: Arc<dyn Fn(Error) + Send + Sync> =
            Arc::new(|e| tracing::error!("a benchmark worker failed: {e}"));
        let mut pool = match start_pool(dispatch, handler, &[waker], capacity, epoch, fatal) {
            Ok(p) => p,
            Err(e) => {
                sys::close(fd);
                return Err(e);
            }
        };
        Ok(Self {
            side: pool.shard_sides.pop(),
            threads: pool.threads,
            fd,
            epoch,
        })
    }

    /// A message as the shard would build it.
    pub fn message(&self, payload: bytes::Bytes, queue_index: u32) -> Message<'static> {
        Message {
            payload: Payload::owned(payload),
            source: intern_source(SourceKind::Queue, b"bench", b"bench", 0, queue_index),
            aux: Span::default(),
            deliveries: 1,
            received_ns: epoch_nanos(self.epoch),
            seq: 0,
        }
    }

    /// Hands `msgs` to the workers and wakes the parked ones (one loop turn's worth).
    pub fn send(&mut self, msgs: &mut Vec<Message<'static>>) {
        if let Some(s) = self.side.as_mut() {
            s.submit(msgs);
            s.wake_workers();
        }
    }

    /// Takes returned outcomes; returns how many.
    pub fn collect(&mut self) -> usize {
        self.side.as_mut().map_or(0, |s| s.collect(|_| {}))
    }

    /// Messages out with workers.
    pub fn in_flight(&self) -> u32 {
        self.side.as_ref().map_or(0, ShardDispatch::in_flight)
    }

    /// Sleeps as a shard does in `io_uring_enter`, until a worker signals outcomes.
    pub fn wait(&mut self) {
        let Some(s) = self.side.as_ref() else { return };
        if s.in_flight() == 0 || !s.prepare_sleep() {
            return;
        }
        if sys::wait_readable(self.fd, 1000) {
            sys::eventfd_read(self.fd);
        }
        s.woke();
    }
}

impl Drop for LoopbackPool {
    fn drop(&mut self) {
        drop(self.side.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        sys::close(self.fd);
    }
}

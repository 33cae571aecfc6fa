//! Dispatch: handing popped messages to handler code, on the shard thread (`Inline`) or
//! on worker threads (`Workers`, `Orderly`).
//!
//! # Rings
//! Every shard×worker pair has two bounded SPSC rings (`rtrb`): messages go out, outcomes
//! come back. Both are written and read in chunks — one atomic index update per batch,
//! not per message — and hold `Message` by value, so nothing is allocated per message.
//! Ring capacity is the shard's prefetch share: the credits never let more messages be in
//! flight than that, so a push cannot find its ring full. Backpressure is the credits: a
//! shard whose workers are slow stops popping, and never blocks its loop.
//!
//! # Wake-ups (no syscall per message)
//! A worker with nothing to do raises `parked` and sleeps in `thread::park`; a shard that
//! pushed to it this turn unparks it only if the flag was up. A shard about to sleep in
//! `io_uring_enter` raises `sleeping`; a worker that pushed outcomes writes the shard's
//! eventfd (armed as a read in the shard's ring) only if the flag was up. Both sides use
//! the store → SeqCst fence → load pattern, so at least one of them sees the other: no
//! wake-up is lost (hammered by `tests::park_wake_race_loses_no_message`).
//!
//! # Orderly
//! Messages are routed by queue (or by a user key function), so one queue's messages all
//! go through one ring to one worker, which handles them one at a time, in order. A
//! message whose outcome is `Retry` blocks its worker: it is retried locally after a pause
//! (RocketMQ's SUSPEND_CURRENT_QUEUE_A_MOMENT) up to a bound before the worker moves on.

#[doc(hidden)]
#[cfg(feature = "bench-support")]
#[doc(hidden)]
pub mod bench_support;
#[cfg(test)]
mod tests;
mod worker;

use std::os::fd::RawFd;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use rtrb::{Consumer, Producer};

use crate::handler::{Message, Outcome};
use crate::ring::sys;

pub(crate) use worker::start_pool;

/// A user function giving the ordering key of a message (`Dispatch::orderly_by`).
pub type KeyFn = Arc<dyn Fn(&Message<'_>) -> u64 + Send + Sync>;

#[derive(Clone)]
enum Mode {
    Inline,
    Workers(usize),
    Orderly(usize, Option<KeyFn>),
}

/// Where handlers run: inline on the shard thread, or on worker threads fed by lock-free
/// rings (orderly or not).
#[derive(Clone)]
pub struct Dispatch {
    mode: Mode,
    batch: usize,
    suspend: Duration,
    max_local_retries: u32,
}

impl std::fmt::Debug for Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match &self.mode {
            Mode::Inline => "Inline".to_owned(),
            Mode::Workers(n) => format!("Workers({n})"),
            Mode::Orderly(n, k) => format!(
                "Orderly({n}, by {})",
                if k.is_some() { "key" } else { "queue" }
            ),
        };
        f.debug_struct("Dispatch")
            .field("mode", &mode)
            .field("batch", &self.batch)
            .finish()
    }
}

impl Default for Dispatch {
    fn default() -> Self {
        Self::inline()
    }
}

impl Dispatch {
    /// The handler runs on the shard thread, right after the reply is decoded: the lowest
    /// latency, and a slow handler slows popping.
    pub fn inline() -> Self {
        Self {
            mode: Mode::Inline,
            batch: 256,
            suspend: Duration::from_millis(100),
            max_local_retries: 3,
        }
    }

    /// `n` worker threads run the handler; each popped batch goes to the least busy one.
    pub fn workers(n: usize) -> Self {
        Self {
            mode: Mode::Workers(n.max(1)),
            ..Self::inline()
        }
    }

    /// `n` worker threads; all messages of one queue go to the same worker and are handled
    /// one at a time, in order.
    pub fn orderly(n: usize) -> Self {
        Self {
            mode: Mode::Orderly(n.max(1), None),
            ..Self::inline()
        }
    }

    /// Like [`Dispatch::orderly`], keyed by `key(message)` instead of the queue: messages
    /// with equal keys are handled in order by one worker.
    pub fn orderly_by(n: usize, key: impl Fn(&Message<'_>) -> u64 + Send + Sync + 'static) -> Self {
        Self {
            mode: Mode::Orderly(n.max(1), Some(Arc::new(key))),
            ..Self::inline()
        }
    }

    /// Most messages per `handle_batch` call on a worker (default 256).
    pub fn batch(mut self, n: usize) -> Self {
        self.batch = n.max(1);
        self
    }

    /// Orderly only: after a `Retry`, pause this long and run the message again, at most
    /// `max_local_retries` times, before moving on with its final outcome (default 100 ms,
    /// 3). The queue behind it waits meanwhile.
    pub fn suspend(mut self, pause: Duration, max_local_retries: u32) -> Self {
        self.suspend = pause;
        self.max_local_retries = max_local_retries;
        self
    }

    pub(crate) fn worker_count(&self) -> usize {
        match self.mode {
            Mode::Inline => 0,
            Mode::Workers(n) | Mode::Orderly(n, _) => n,
        }
    }

    fn is_orderly(&self) -> bool {
        matches!(self.mode, Mode::Orderly(..))
    }
}

/// A handled message on its way back to its shard.
pub(crate) struct Done {
    pub msg: Message<'static>,
    pub outcome: Outcome,
}

/// Lets workers wake a shard that sleeps in `io_uring_enter`.
pub(crate) struct ShardWaker {
    sleeping: AtomicBool,
    fd: RawFd,
}

impl ShardWaker {
    pub(crate) fn new(fd: RawFd) -> Self {
        Self {
            sleeping: AtomicBool::new(false),
            fd,
        }
    }

    fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            sys::eventfd_signal(self.fd);
        }
    }
}

/// Lets shards wake a parked worker.
pub(crate) struct WorkerSignal {
    parked: AtomicBool,
    thread: OnceLock<Thread>,
}

impl WorkerSignal {
    fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::Relaxed) && self.parked.swap(false, Ordering::AcqRel) {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }
}

struct ShardLink {
    to_worker: Producer<Message<'static>>,
    from_worker: Consumer<Done>,
    /// Messages pushed to this worker and not yet returned.
    in_flight: u32,
    /// Only if a ring was somehow full (the credits prevent it): kept, never dropped.
    overflow: Vec<Message<'static>>,
    pushed: bool,
}

struct WorkerLink {
    from_shard: Consumer<Message<'static>>,
    to_shard: Producer<Done>,
    waker: Arc<ShardWaker>,
}

/// A shard's end of the worker pool.
pub(crate) struct ShardDispatch {
    links: Vec<ShardLink>,
    workers: Vec<Arc<WorkerSignal>>,
    waker: Arc<ShardWaker>,
    orderly: Option<Option<KeyFn>>,
    /// One run of an orderly batch on its way to one worker (reused: no allocation per
    /// reply in steady state).
    scratch: Vec<Message<'static>>,
}

impl ShardDispatch {
    /// Hands `msgs` (drained) to workers, each with a payload of its own (a reference-
    /// counted slice of its reply): the reply is gone by the time a worker runs.
    pub(crate) fn submit(&mut self, msgs: &mut Vec<Message<'_>>) {
        if msgs.is_empty() {
            return;
        }
        let n = self.links.len();
        match &self.orderly {
            None => {
                // The whole batch to the least busy worker: one chunk, one index update.
                let w = (0..n).min_by_key(|&i| self.links[i].in_flight).unwrap_or(0);
                let count = msgs.len();
                push_all(&mut self.links[w], msgs.drain(..).map(Message::into_static));
                self.links[w].in_flight += count as u32;
            }
            Some(key) => {
                // Consecutive messages with the same route go in one chunk.
                let route = |m: &Message<'_>| match key {
                    Some(f) => (f(m) % n as u64) as usize,
                    None => m.queue_index() % n,
                };
                let mut drain = msgs.drain(..).peekable();
                while let Some(first) = drain.next() {
                    let w = route(&first);
                    let link = &mut self.links[w];
                    let run = &mut self.scratch;
                    run.push(first.into_static());
                    while let Some(m) = drain.next_if(|m| route(m) == w) {
                        run.push(m.into_static());
                    }
                    link.in_flight += run.len() as u32;
                    push_all(link, run.drain(..));
                }
            }
        }
    }

    /// Unparks every worker pushed to since the last call (once per loop turn).
    pub(crate) fn wake_workers(&mut self) {
        for (i, link) in self.links.iter_mut().enumerate() {
            if !link.overflow.is_empty() {
                let spill = std::mem::take(&mut link.overflow);
                push_all(link, spill.into_iter());
            }
            if std::mem::take(&mut link.pushed) {
                self.workers[i].notify();
            }
        }
    }

    /// Takes every returned outcome.
    pub(crate) fn collect(&mut self, mut f: impl FnMut(Done)) -> usize {
        let mut total = 0;
        for link in &mut self.links {
            let n = link.from_worker.slots();
            if n == 0 {
                continue;
            }
            if let Ok(chunk) = link.from_worker.read_chunk(n) {
                for d in chunk {
                    f(d);
                }
            }
            link.in_flight = link.in_flight.saturating_sub(n as u32);
            total += n;
        }
        total
    }

    /// Announces that the shard is about to sleep. Returns false (and stays awake) when an
    /// outcome arrived meanwhile.
    pub(crate) fn prepare_sleep(&self) -> bool {
        self.waker.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.links.iter().any(|l| l.from_worker.slots() > 0) {
            self.waker.sleeping.store(false, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub(crate) fn woke(&self) {
        self.waker.sleeping.store(false, Ordering::Relaxed);
    }

    /// Messages handed to workers and not yet returned.
    pub(crate) fn in_flight(&self) -> u32 {
        self.links.iter().map(|l| l.in_flight).sum()
    }
}

impl Drop for ShardDispatch {
    fn drop(&mut self) {
        // Dropping the producers tells workers this shard is gone; wake them to notice.
        self.links.clear();
        for w in &self.workers {
            w.parked.store(false, Ordering::SeqCst);
            if let Some(t) = w.thread.get() {
                t.unpark();
            }
        }
    }
}

fn push_all(link: &mut ShardLink, msgs: impl ExactSizeIterator<Item = Message<'static>>) {
    let want = msgs.len();
    if want == 0 {
        return;
    }
    link.pushed = true;
    let room = link.to_worker.slots().min(want);
    let mut msgs = msgs;
    if room > 0 {
        if let Ok(chunk) = link.to_worker.write_chunk_uninit(room) {
            chunk.fill_from_iter(msgs.by_ref().take(room));
        }
    }
    link.overflow.extend(msgs);
}

/// Nanoseconds since the engine's epoch, stored in messages to measure pop-to-handler time.
pub(crate) fn epoch_nanos(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

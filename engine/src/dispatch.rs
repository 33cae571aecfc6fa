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

use std::os::fd::RawFd;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rtrb::{Consumer, Producer, RingBuffer};

use crate::error::{Error, ErrorKind};
use crate::handler::{Handler, Message, Outcome, Payload};
use crate::ring::sys;
use crate::stats::new_histogram;

/// A user function giving the ordering key of a message (`Dispatch::orderly_by`).
pub type KeyFn = Arc<dyn Fn(&Message<'_>) -> u64 + Send + Sync>;

#[derive(Clone)]
enum Mode {
    Inline,
    Workers(usize),
    Orderly(usize, Option<KeyFn>),
}

/// Where handlers run. See the [module docs](self) for the mechanics.
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

/// Everything the worker threads share.
pub(crate) struct Pool {
    pub threads: Vec<JoinHandle<()>>,
    pub shard_sides: Vec<ShardDispatch>,
    pub latency: Vec<Arc<Mutex<Histogram<u64>>>>,
}

/// Nanoseconds since the engine's epoch, stored in messages to measure pop-to-handler time.
pub(crate) fn epoch_nanos(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Builds the rings and starts the workers. `wakers[s]` is shard `s`'s eventfd waker;
/// `capacity` is each ring's size (the shard's prefetch share).
pub(crate) fn start_pool<H: Handler + Clone>(
    dispatch: &Dispatch,
    handler: &H,
    wakers: &[Arc<ShardWaker>],
    capacity: usize,
    epoch: Instant,
    on_fatal: Arc<dyn Fn(Error) + Send + Sync>,
) -> Result<Pool, Error> {
    let nworkers = dispatch.worker_count();
    let signals: Vec<Arc<WorkerSignal>> = (0..nworkers)
        .map(|_| {
            Arc::new(WorkerSignal {
                parked: AtomicBool::new(false),
                thread: OnceLock::new(),
            })
        })
        .collect();
    let mut worker_links: Vec<Vec<WorkerLink>> = (0..nworkers).map(|_| Vec::new()).collect();
    let mut shard_sides = Vec::with_capacity(wakers.len());
    for waker in wakers {
        let mut links = Vec::with_capacity(nworkers);
        for wl in worker_links.iter_mut() {
            let (to_worker, from_shard) = RingBuffer::new(capacity.max(1));
            let (to_shard, from_worker) = RingBuffer::new(capacity.max(1));
            links.push(ShardLink {
                to_worker,
                from_worker,
                in_flight: 0,
                overflow: Vec::new(),
                pushed: false,
            });
            wl.push(WorkerLink {
                from_shard,
                to_shard,
                waker: waker.clone(),
            });
        }
        let orderly = match &dispatch.mode {
            Mode::Orderly(_, key) => Some(key.clone()),
            _ => None,
        };
        shard_sides.push(ShardDispatch {
            links,
            workers: signals.clone(),
            waker: waker.clone(),
            orderly,
            scratch: Vec::with_capacity(capacity.min(4096)),
        });
    }
    let alive = Arc::new(AtomicUsize::new(nworkers));
    let mut threads = Vec::with_capacity(nworkers);
    let mut latency = Vec::with_capacity(nworkers);
    for (i, links) in worker_links.into_iter().enumerate() {
        let hist = Arc::new(Mutex::new(new_histogram()));
        latency.push(hist.clone());
        let w = Worker {
            links,
            handler: Box::new(handler.clone()),
            signal: signals[i].clone(),
            batch: dispatch.batch,
            orderly: dispatch.is_orderly(),
            one: Vec::with_capacity(1),
            suspend: dispatch.suspend,
            max_local_retries: dispatch.max_local_retries,
            epoch,
            latency: hist,
            on_fatal: on_fatal.clone(),
            alive: alive.clone(),
        };
        let t = std::thread::Builder::new()
            .name(format!("ringq-worker-{i}"))
            .spawn(move || w.run())
            .map_err(|e| Error::io("spawning a worker thread", e))?;
        let _ = signals[i].thread.set(t.thread().clone());
        threads.push(t);
    }
    Ok(Pool {
        threads,
        shard_sides,
        latency,
    })
}

struct Worker {
    links: Vec<WorkerLink>,
    handler: Box<dyn Handler>,
    signal: Arc<WorkerSignal>,
    batch: usize,
    orderly: bool,
    /// The one-message outcome buffer of orderly handling, reused.
    one: Vec<Outcome>,
    suspend: Duration,
    max_local_retries: u32,
    epoch: Instant,
    latency: Arc<Mutex<Histogram<u64>>>,
    on_fatal: Arc<dyn Fn(Error) + Send + Sync>,
    alive: Arc<AtomicUsize>,
}

impl Worker {
    fn run(mut self) {
        let mut batch: Vec<Message<'static>> = Vec::with_capacity(self.batch);
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(self.batch);
        let mut local = new_histogram();
        let mut last_merge = Instant::now();
        // The thread handle is set right after spawn; wait for it before parking.
        while self.signal.thread.get().is_none() {
            std::thread::yield_now();
        }
        loop {
            let mut worked = false;
            for li in 0..self.links.len() {
                let n = self.links[li].from_shard.slots().min(self.batch);
                if n == 0 {
                    continue;
                }
                worked = true;
                if let Ok(chunk) = self.links[li].from_shard.read_chunk(n) {
                    batch.extend(chunk);
                }
                let now_ns = epoch_nanos(self.epoch);
                for m in &batch {
                    let _ =
                        local.record(now_ns.saturating_sub(m.received_ns).clamp(1, local.high()));
                }
                outcomes.clear();
                if self.orderly {
                    self.handle_in_order(&batch, &mut outcomes);
                } else {
                    self.handle_guarded(&batch, &mut outcomes);
                }
                let link = &mut self.links[li];
                let count = batch.len();
                let mut outs = outcomes
                    .iter()
                    .copied()
                    .chain(std::iter::repeat(Outcome::Retry));
                if let Ok(chunk) = link.to_shard.write_chunk_uninit(count) {
                    chunk.fill_from_iter(batch.drain(..).map(|msg| Done {
                        msg,
                        outcome: outs.next().unwrap_or(Outcome::Retry),
                    }));
                } else {
                    // Cannot happen (capacity ≥ credits); push one by one rather than lose any.
                    for msg in batch.drain(..) {
                        let mut d = Done {
                            msg,
                            outcome: outs.next().unwrap_or(Outcome::Retry),
                        };
                        loop {
                            match link.to_shard.push(d) {
                                Ok(()) => break,
                                Err(rtrb::PushError::Full(back)) => {
                                    d = back;
                                    link.waker.notify();
                                    std::thread::yield_now();
                                }
                            }
                        }
                    }
                }
                link.waker.notify();
            }
            if last_merge.elapsed() > Duration::from_millis(100) {
                self.merge(&mut local);
                last_merge = Instant::now();
            }
            if worked {
                continue;
            }
            // Park protocol: raise the flag, re-check, sleep.
            self.signal.parked.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if self.links.iter().any(|l| l.from_shard.slots() > 0) {
                self.signal.parked.store(false, Ordering::Relaxed);
                continue;
            }
            if self.links.iter().all(|l| l.from_shard.is_abandoned()) {
                break;
            }
            std::thread::park();
            self.signal.parked.store(false, Ordering::Relaxed);
        }
        self.merge(&mut local);
        self.alive.fetch_sub(1, Ordering::AcqRel);
    }

    fn merge(&self, local: &mut Histogram<u64>) {
        if local.is_empty() {
            return;
        }
        if let Ok(mut h) = self.latency.lock() {
            let _ = h.add(&*local);
        }
        local.reset();
    }

    /// Runs the handler; a panic becomes `Retry` outcomes and a fatal engine error.
    fn handle_guarded(&mut self, batch: &[Message<'_>], outcomes: &mut Vec<Outcome>) {
        let h = &mut self.handler;
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| h.handle_batch(batch, outcomes)));
        if r.is_err() {
            outcomes.clear();
            (self.on_fatal)(Error::new(
                ErrorKind::Handler,
                "a handler panicked on a worker thread; stopping",
            ));
        }
    }

    fn handle_in_order(&mut self, batch: &[Message<'_>], outcomes: &mut Vec<Outcome>) {
        let mut one = std::mem::take(&mut self.one);
        for i in 0..batch.len() {
            let mut tries = 0;
            let outcome = loop {
                one.clear();
                self.handle_guarded(&batch[i..=i], &mut one);
                let o = one.first().copied().unwrap_or(Outcome::Retry);
                if o != Outcome::Retry || tries >= self.max_local_retries {
                    break o;
                }
                tries += 1;
                // The queue waits behind this message: RocketMQ's SUSPEND_CURRENT_QUEUE_A_MOMENT.
                std::thread::sleep(self.suspend);
            };
            outcomes.push(outcome);
        }
        self.one = one;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(i: u64, epoch: Instant) -> Message<'static> {
        Message {
            queue: b"q",
            key: b"q",
            payload: Payload::Owned(Bytes::copy_from_slice(&i.to_le_bytes())),
            priority: 0,
            queue_index: (i % 4) as u32,
            deliveries: 1,
            received_ns: epoch_nanos(epoch),
        }
    }

    /// A shard loop stand-in hammering the park/wake handshake on both sides: tiny rings,
    /// bursts of random size, random pauses on both ends. A lost wake-up shows as a hang,
    /// caught by the deadline.
    #[test]
    fn park_wake_race_loses_no_message() {
        for (mode, workers) in [
            (Dispatch::workers(2).batch(3), 2),
            (Dispatch::orderly(3).batch(5), 3),
        ] {
            let fd = sys::eventfd().unwrap();
            let waker = Arc::new(ShardWaker::new(fd));
            let sum = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let s2 = sum.clone();
            let handler = move |m: &Message<'_>| {
                let v = u64::from_le_bytes(m.payload()[..8].try_into().unwrap());
                s2.fetch_add(v, Ordering::Relaxed);
                if v % 7919 == 0 {
                    std::thread::yield_now();
                }
                Outcome::Ack
            };
            let epoch = Instant::now();
            let fatal: Arc<dyn Fn(Error) + Send + Sync> = Arc::new(|e| panic!("{e}"));
            let capacity = 16;
            let mut pool = start_pool(
                &mode,
                &handler,
                std::slice::from_ref(&waker),
                capacity,
                epoch,
                fatal,
            )
            .unwrap();
            assert_eq!(pool.threads.len(), workers);
            let mut side = pool.shard_sides.pop().unwrap();
            let total: u64 = 200_000;
            let (mut sent, mut done, mut rng) = (0u64, 0u64, 0x9E37_79B9u64);
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut msgs = Vec::new();
            while done < total {
                assert!(
                    Instant::now() < deadline,
                    "hang: sent {sent}, done {done} — a wake-up was lost"
                );
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let credit = capacity as u64 - u64::from(side.in_flight());
                let burst = (rng % 6).min(credit).min(total - sent);
                for _ in 0..burst {
                    msgs.push(msg(sent, epoch));
                    sent += 1;
                }
                side.submit(&mut msgs);
                side.wake_workers();
                done += side.collect(|d| assert_eq!(d.outcome, Outcome::Ack)) as u64;
                if rng % 3 == 0 && side.in_flight() > 0 && side.prepare_sleep() {
                    // Sleep as the ring would, until a worker writes the eventfd. Outcomes
                    // are owed, so a 10 s silence can only be a lost wake-up.
                    let mut pfd = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd for the duration of the call.
                    let ready = unsafe { libc::poll(&mut pfd, 1, 10_000) };
                    assert_eq!(
                        ready,
                        1,
                        "lost wake-up: {} messages owed, no eventfd write",
                        side.in_flight()
                    );
                    let mut buf = [0u8; 8];
                    // SAFETY: reads at most 8 bytes into a live buffer from our eventfd.
                    unsafe { libc::read(fd, buf.as_mut_ptr().cast(), 8) };
                    side.woke();
                }
            }
            assert_eq!(sum.load(Ordering::Relaxed), total * (total - 1) / 2);
            drop(side);
            for t in pool.threads.drain(..) {
                t.join().unwrap();
            }
            sys::close(fd);
        }
    }
}

/// Drives a worker pool without a ring or a server, for the dispatch benchmark
/// (`engine/benches/dispatch.rs`). Not part of the supported API.
#[doc(hidden)]
pub mod bench_support {
    use super::*;

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
        /// # Panics
        /// When the eventfd or the threads cannot be created.
        pub fn new<H: Handler + Clone>(dispatch: &Dispatch, handler: &H, capacity: usize) -> Self {
            let fd = sys::eventfd().expect("eventfd");
            let waker = Arc::new(ShardWaker::new(fd));
            let epoch = Instant::now();
            let fatal: Arc<dyn Fn(Error) + Send + Sync> = Arc::new(|e| panic!("{e}"));
            let mut pool =
                start_pool(dispatch, handler, &[waker], capacity, epoch, fatal).expect("pool");
            Self {
                side: pool.shard_sides.pop(),
                threads: pool.threads,
                fd,
                epoch,
            }
        }

        /// A message as the shard would build it.
        pub fn message(&self, payload: bytes::Bytes, queue_index: u32) -> Message<'static> {
            Message {
                queue: b"bench",
                key: b"bench",
                payload: Payload::Owned(payload),
                priority: 0,
                queue_index,
                deliveries: 1,
                received_ns: epoch_nanos(self.epoch),
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
            let mut pfd = libc::pollfd {
                fd: self.fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, 1000) };
            let mut buf = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a live buffer from our non-blocking eventfd.
            unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), 8) };
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
}

//! The worker threads: how they are started with their rings, and the loop each runs —
//! take a chunk, run the handler (guarded against panics; one at a time, in order, for
//! orderly dispatch), send the outcomes back, park when there is nothing to do.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rtrb::RingBuffer;

use super::{
    epoch_nanos, Dispatch, Done, Mode, ShardDispatch, ShardLink, ShardWaker, WorkerLink,
    WorkerSignal,
};
use crate::error::{Error, ErrorKind};
use crate::handler::{Handler, Message, Outcome};
use crate::stats::{new_histogram, WorkerStats};

/// Everything the worker threads share.
pub(crate) struct Pool {
    pub threads: Vec<JoinHandle<()>>,
    pub shard_sides: Vec<ShardDispatch>,
    pub latency: Vec<Arc<WorkerStats>>,
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
        let hist = Arc::new(WorkerStats::new());
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
    latency: Arc<WorkerStats>,
    on_fatal: Arc<dyn Fn(Error) + Send + Sync>,
    alive: Arc<AtomicUsize>,
}

impl Worker {
    fn run(mut self) {
        let mut batch: Vec<Message<'static>> = Vec::with_capacity(self.batch);
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(self.batch);
        let mut local = new_histogram();
        let mut process = new_histogram();
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
                let began = Instant::now();
                if self.orderly {
                    self.handle_in_order(&batch, &mut outcomes);
                } else {
                    self.handle_guarded(&batch, &mut outcomes);
                }
                if !batch.is_empty() {
                    // One clock read per batch, spread over its messages.
                    let per = (began.elapsed().as_nanos() as u64 / batch.len() as u64).max(1);
                    let _ = process.record_n(per.min(process.high()), batch.len() as u64);
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
                self.merge(&mut local, &mut process);
                last_merge = Instant::now();
            }
            if worked {
                continue;
            }
            // Idle: publish what was measured (a scrape reads it), at most every 100 ms
            // (a merge may allocate); with something left to publish, sleep no longer.
            let unpublished = !local.is_empty() || !process.is_empty();
            if unpublished && last_merge.elapsed() > Duration::from_millis(100) {
                self.merge(&mut local, &mut process);
                last_merge = Instant::now();
            }
            let unpublished = !local.is_empty() || !process.is_empty();
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
            if unpublished {
                std::thread::park_timeout(Duration::from_millis(100));
            } else {
                std::thread::park();
            }
            self.signal.parked.store(false, Ordering::Relaxed);
        }
        self.merge(&mut local, &mut process);
        self.alive.fetch_sub(1, Ordering::AcqRel);
    }

    fn merge(&self, local: &mut Histogram<u64>, process: &mut Histogram<u64>) {
        for (from, into) in [
            (local, &self.latency.latency),
            (process, &self.latency.process),
        ] {
            if from.is_empty() {
                continue;
            }
            if let Ok(mut h) = into.lock() {
                let _ = h.add(&*from);
            }
            from.reset();
        }
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

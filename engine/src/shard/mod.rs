//! The per-core loop. One shard = one thread, pinned to one core, owning one io_uring,
//! its connections, timers, credits, handler and its pipeline (the delivery mode; see
//! [`crate::pipeline`]). Nothing here is shared with other shards except the stop flag
//! and wake-up eventfds, the stats counters, the first fatal error and the message
//! budget. Nothing here knows which mode it runs.
//!
//! A loop turn:
//! 1. the pipeline queues commands on ready connections (as credits allow); queued bytes
//!    go to the kernel;
//! 2. **one** `io_uring_enter` that submits every SQE of the turn and waits for a CQE or
//!    the nearest timer;
//! 3. route CQEs to connections; decode replies; replies to the pipeline's commands and
//!    push frames go to the pipeline, which turns them into messages; run the handler;
//!    outcomes go back to the pipeline;
//! 4. fire due timers (deadlines, reconnects, idle PINGs, stats, the pipeline's own, user
//!    callbacks).
//!
//! Shutdown never drops a reply in flight: a stopping shard sends nothing new, ends
//! blocked commands with CLIENT UNBLOCK, waits for every pending reply, hands what they
//! carry to the handler, waits until the pipeline reports it has drained (its last acks
//! answered), then closes its sockets and waits for the kernel to finish with every
//! operation before the ring is dropped.

mod cluster;
mod connect;
mod depth;
mod io;
mod lost;
mod replies;
mod stop;
mod timers;

use std::os::fd::RawFd;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::backend::IoBackend;
use crate::backend::{Backend, Completion, OpKind};
use crate::budget::Budget;
use crate::conn::{Conn, ConnConfig, Failure, Role};
use crate::credit::Credits;
use crate::dispatch::{epoch_nanos, ShardDispatch};
use crate::error::{Error, ErrorKind};
use crate::handler::{Handler, Message, Outcome};
pub(crate) use depth::{DepthSpec, UNSAMPLED};
use io::ControlSlot;
pub(crate) use io::{FetchLane, Io};

use crate::pipeline::{ControlUse, Pipeline};
use crate::resolve::Resolved;
use crate::ring::epoll::Epoll;
use crate::ring::{Driver, RingConfig, RingFeatures};
use crate::stats::{new_histogram, ShardStats};
use crate::timer::{TimerEvent, Timers};
use crate::wake::Signals;

/// Token of the shard's wake-up eventfd read (connection tokens have a nonzero generation
/// in the low half, so this value never collides).
const TOKEN_WAKE: u64 = u64::MAX;
/// How often shard-local stats are merged into the shared snapshot.
const STATS_PERIOD: Duration = Duration::from_millis(100);

/// A user periodic callback: its period and the shard's own instance.
pub(crate) type Periodic = (Duration, Box<dyn FnMut() + Send>);

/// Where this shard's messages are handled.
pub(crate) enum HandlerSide {
    /// On the shard thread.
    Inline(Box<dyn Handler>),
    /// On worker threads, through the shard's end of the rings.
    Workers(ShardDispatch),
}

/// Everything a shard thread needs, built by the engine.
pub(crate) struct ShardSpec<P> {
    pub index: usize,
    pub core: Option<core_affinity::CoreId>,
    pub pipeline: P,
    pub credits: u32,
    pub credit_bytes: u64,
    pub budget: Option<Arc<Budget>>,
    pub conn: Arc<ConnConfig>,
    pub ring: RingConfig,
    /// io_uring or epoll (never `Auto`: the engine chose before starting the shards).
    pub backend: IoBackend,
    pub handler: HandlerSide,
    /// The handler instance that gets events when messages go to workers.
    pub event_handler: Option<Box<dyn Handler>>,
    pub epoch: Instant,
    pub stats: Arc<ShardStats>,
    pub shared: Arc<Signals>,
    pub wake_fd: RawFd,
    pub periodic: Vec<Periodic>,
    /// How often a connection with nothing in flight is PINGed.
    pub idle_ping: Duration,
    /// How long a stalled connection stays open to deliver late replies.
    pub stalled_drain: Duration,
    /// How long a non-blocking command may take.
    pub reply_timeout: Duration,
    /// How long a stop waits for a stalled connection.
    pub reply_grace: Duration,
    /// In a cluster: the hash slot of each fetch lane's sources (see `cluster.rs`).
    pub routes: Vec<u16>,
    /// The queue depths this shard samples, if any (see `depth.rs`).
    pub depth: Option<DepthSpec>,
}

struct Shard<P: Pipeline, B: Backend> {
    index: usize,
    driver: B,
    /// What the pipeline works with: connections, credits, timers, stats.
    io: Io<P::Cmd>,
    pipeline: P,
    handler: HandlerSide,
    event_handler: Option<Box<dyn Handler>>,
    epoch: Instant,
    wake_fd: RawFd,
    wake_armed: bool,
    periodic: Vec<Periodic>,
    idle_ping: Duration,
    stalled_drain: Duration,
    reply_grace: Duration,
    conn_cfg: Arc<ConnConfig>,
    /// Host-name lookups answered for reconnects (reused).
    resolved: Vec<Resolved>,
    /// Behind Sentinel: the failovers followed so far (see `Shard::follow_failover`).
    failovers_seen: u64,
    /// In a cluster: each fetch lane's hash slot, and the topology epoch followed so far
    /// (see `cluster.rs`).
    routes: Vec<u16>,
    topology_seen: u64,
    /// In a cluster: slots being migrated whose keys an ASK said are at another node
    /// now; connections of those slots dial it and send `ASKING` (see `cluster.rs`).
    asks: Vec<(u16, crate::cluster::Node)>,
    /// Reused for every reply's messages (see [`recycle`]).
    msgs: Vec<Message<'static>>,
    /// Reused for the messages a pipeline had staged.
    staged: Vec<Message<'static>>,
    outcomes: Vec<Outcome>,
    /// A lost connection's unanswered commands, on their way back to the pipeline (reused).
    unanswered: Vec<P::Cmd>,
    latency: Histogram<u64>,
    /// Handler time per message (inline dispatch), merged into the shared stats with
    /// `latency`.
    process: Histogram<u64>,
    /// Round trips of non-blocking fetches and of Control's commands, merged with
    /// `latency`.
    rtt_fetch: Histogram<u64>,
    rtt_control: Histogram<u64>,
    completions: Vec<Completion<B::Data>>,
    turn_started: Instant,
    /// `CLIENT UNBLOCK` is not available (an ACL without it, an error): wait instead.
    unblock_off: bool,
    /// When the stop began: the pipeline's drain is waited for `reply_grace` at most.
    stop_began: Option<Instant>,
    /// Queue depth sampling (see `depth.rs`).
    depth: Option<depth::Sampler>,
}

/// Runs a shard to completion on the current thread. Reports ring set-up on `ready`.
pub(crate) fn run<P: Pipeline>(
    spec: ShardSpec<P>,
    ready: mpsc::Sender<Result<Option<RingFeatures>, Error>>,
) -> Result<(), Error> {
    if let Some(core) = spec.core {
        if !core_affinity::set_for_current(core) {
            tracing::warn!(shard = spec.index, "could not pin to core {:?}", core.id);
        }
    }
    if spec.backend == IoBackend::Epoll {
        let epoll = match Epoll::new() {
            Ok(e) => e,
            Err(e) => {
                let msg = e.to_string();
                let _ = ready.send(Err(e));
                return Err(Error::new(ErrorKind::Io, msg));
            }
        };
        let _ = ready.send(Ok(None));
        drop(ready);
        return run_with(spec, epoll);
    }
    let driver = match Driver::new(spec.ring) {
        Ok(d) => d,
        Err(e) => {
            let msg = e.to_string();
            let _ = ready.send(Err(e));
            return Err(Error::new(ErrorKind::UringUnavailable, msg));
        }
    };
    let _ = ready.send(Ok(Some(driver.features().clone())));
    drop(ready);
    run_with(spec, driver)
}

/// Runs the shard on `driver`, whichever backend it is.
fn run_with<P: Pipeline, B: Backend>(spec: ShardSpec<P>, driver: B) -> Result<(), Error> {
    let fetch = spec.pipeline.fetch_connections();
    let conns = (0..fetch)
        .map(|i| {
            let name = format!("{}-s{}-c{}", spec.conn.client_name, spec.index, i);
            Conn::new(
                i as u32,
                Role::Fetch(i as u32),
                name,
                spec.conn.clone(),
                conn_seed(spec.index, i),
            )
        })
        .collect();
    let want = spec.pipeline.control() == ControlUse::Always;
    let first = spec.routes.first().copied().unwrap_or(0);
    let controls = vec![ControlSlot {
        route: first,
        id: None,
        want,
        retired: false,
    }];
    let lane_control = vec![0; spec.routes.len()];
    let io = Io {
        shard: spec.index,
        conns,
        credits: Credits::new(spec.credits, spec.credit_bytes, fetch),
        budget: spec.budget,
        stats: spec.stats,
        shared: spec.shared,
        timers: Timers::default(),
        stopping: false,
        turn_ns: 0,
        reply_timeout: spec.reply_timeout,
        controls,
        lane_control,
        refresh_topology: false,
        events: Vec::new(),
        lose: Vec::new(),
    };
    let mut shard: Shard<P, B> = Shard {
        index: spec.index,
        driver,
        io,
        pipeline: spec.pipeline,
        handler: spec.handler,
        event_handler: spec.event_handler,
        epoch: spec.epoch,
        wake_fd: spec.wake_fd,
        wake_armed: false,
        periodic: spec.periodic,
        idle_ping: spec.idle_ping,
        stalled_drain: spec.stalled_drain,
        reply_grace: spec.reply_grace,
        conn_cfg: spec.conn,
        resolved: Vec::new(),
        failovers_seen: 0,
        routes: spec.routes,
        topology_seen: 0,
        asks: Vec::new(),
        msgs: Vec::with_capacity(1024),
        staged: Vec::new(),
        outcomes: Vec::with_capacity(1024),
        unanswered: Vec::new(),
        latency: new_histogram(),
        process: new_histogram(),
        rtt_fetch: new_histogram(),
        rtt_control: new_histogram(),
        completions: Vec::with_capacity(256),
        turn_started: Instant::now(),
        unblock_off: false,
        stop_began: None,
        depth: spec.depth.map(depth::Sampler::new),
    };
    shard.assign_controls();
    // User code runs on this thread outside the handler's own guard (`every` callbacks,
    // `orderly_by` key functions): a panic there must stop the whole engine, not just this
    // shard, or its queues and budget claims would silently go unserved.
    let result = match std::panic::catch_unwind(AssertUnwindSafe(|| shard.run_loop())) {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_string());
            Err(Error::new(
                ErrorKind::Handler,
                format!("shard {} stopped: user code panicked: {what}", shard.index),
            ))
        }
    };
    if let Err(e) = &result {
        shard.io.shared.fail(Error::new(e.kind(), e.to_string()));
        shard.abandon();
    }
    shard.publish_stats();
    result
}

/// Seeds connection `i`'s backoff jitter: different per shard, slot and process.
fn conn_seed(shard: usize, i: usize) -> u64 {
    let seed = (shard as u64) << 32 ^ i as u64 ^ u64::from(std::process::id()) << 16;
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl<P: Pipeline, B: Backend> Shard<P, B> {
    fn run_loop(&mut self) -> Result<(), Error> {
        let now = Instant::now();
        self.arm_wake()?;
        self.io
            .timers
            .add(now + STATS_PERIOD, TimerEvent::PublishStats);
        self.io
            .timers
            .add(now + self.idle_ping, TimerEvent::IdlePing);
        if let Some(d) = &self.depth {
            self.io.timers.add(now + d.every(), TimerEvent::SampleDepth);
        }
        for (i, (period, _)) in self.periodic.iter().enumerate() {
            self.io
                .timers
                .add(now + *period, TimerEvent::User(i as u32));
        }
        for id in 0..self.io.conns.len() {
            self.dial(id, now);
        }
        loop {
            let now = Instant::now();
            if self.io.shared.stop.load(Ordering::Relaxed) && !self.io.stopping {
                self.begin_stop(now);
            }
            for c in 0..self.io.controls.len() {
                if self.io.controls[c].want && self.io.controls[c].id.is_none() {
                    self.open_control(c, now);
                }
            }
            for (id, gen, e) in std::mem::take(&mut self.io.lose) {
                if self.io.conns.get(id).is_some_and(|c| c.gen() == gen) {
                    self.fail_conn(id, Failure::Retry(e), now);
                    // Nothing may be in flight to complete the close (a paused reader).
                    self.finish_close(id, now);
                }
            }
            if self.io.stopping {
                if self.stop_turn(now) {
                    self.deliver_events();
                    return self.drain_ring();
                }
            } else {
                self.pipeline.fill(&mut self.io, now);
            }
            self.flush_all(now);
            let mut timeout = self
                .io
                .timers
                .next_deadline()
                .map(|d| d.saturating_duration_since(now));
            if let HandlerSide::Workers(d) = &mut self.handler {
                d.wake_workers();
                if !d.prepare_sleep() {
                    timeout = Some(Duration::ZERO);
                }
            }
            self.driver.submit_and_wait(timeout)?;
            self.turn_started = Instant::now();
            self.io.turn_ns = epoch_nanos(self.epoch);
            if let HandlerSide::Workers(d) = &self.handler {
                d.woke();
            }
            self.collect_outcomes();
            self.dispatch_staged();
            let mut completions = std::mem::take(&mut self.completions);
            self.driver.reap(&mut completions);
            for c in completions.drain(..) {
                self.on_completion(c);
            }
            self.completions = completions;
            let now = self.turn_started;
            self.take_resolved(now);
            self.follow_failover(now);
            if std::mem::take(&mut self.io.refresh_topology) {
                if let Some(t) = &self.conn_cfg.cluster {
                    t.trigger();
                }
            }
            self.follow_topology(now);
            while let Some(ev) = self.io.timers.pop_due(now) {
                self.on_timer(ev, now);
            }
            if !self.io.events.is_empty() {
                self.deliver_events();
            }
        }
    }

    /// Hands the turn's events to the handler's `on_event`.
    fn deliver_events(&mut self) {
        let handler = match (&mut self.handler, &mut self.event_handler) {
            (HandlerSide::Inline(h), _) | (_, Some(h)) => h,
            (HandlerSide::Workers(_), None) => {
                self.io.events.clear();
                return;
            }
        };
        for ev in self.io.events.drain(..) {
            if std::panic::catch_unwind(AssertUnwindSafe(|| handler.on_event(&ev))).is_err() {
                self.io.shared.fail(Error::new(
                    ErrorKind::Handler,
                    "a handler's on_event panicked; stopping",
                ));
            }
        }
    }

    fn arm_wake(&mut self) -> Result<(), Error> {
        if !self.wake_armed {
            self.driver.read(TOKEN_WAKE, self.wake_fd, 8)?;
            self.wake_armed = true;
        }
        Ok(())
    }

    /// Applies pauses and resumes of reading, sends what each connection queued, and
    /// makes sure its oldest command has a timer.
    fn flush_all(&mut self, now: Instant) {
        for id in 0..self.io.conns.len() {
            let conn = &mut self.io.conns[id];
            let resumed = conn.apply_reading(&mut self.driver);
            let resumed = resumed.and_then(|r| {
                if r {
                    self.process_replies(id, now)
                } else {
                    Ok(())
                }
            });
            if let Err(f) = resumed {
                self.fail_conn(id, f, now);
                self.finish_close(id, now);
                continue;
            }
            let conn = &mut self.io.conns[id];
            if let Err(f) = conn.flush(&mut self.driver) {
                self.fail_conn(id, f, now);
                continue;
            }
            let conn = &mut self.io.conns[id];
            if let Some(at) = conn.arm_deadline() {
                let (conn, gen) = (conn.id(), conn.gen());
                self.io.timers.add(at, TimerEvent::Deadline { conn, gen });
            }
        }
    }

    fn on_completion(&mut self, c: Completion<B::Data>) {
        let now = self.turn_started;
        if c.token == TOKEN_WAKE {
            if let Some(d) = c.data {
                self.driver.release(d);
            }
            self.wake_armed = false;
            // Stay armed while stopping too: workers still return outcomes.
            if let Err(e) = self.arm_wake() {
                self.io.shared.fail(e);
            }
            return;
        }
        let id = (c.token >> 32) as usize;
        let gen = c.token as u32;
        let Some(conn) = self.io.conns.get_mut(id) else {
            if let Some(d) = c.data {
                self.driver.release(d);
            }
            return;
        };
        if conn.gen() != gen {
            if let Some(d) = c.data {
                self.driver.release(d);
            }
            return;
        }
        let res = match c.kind {
            OpKind::Connect => conn.on_connected(&mut self.driver, c.result),
            OpKind::Send => conn.on_sent(&mut self.driver, c.result),
            OpKind::Recv | OpKind::Read => {
                let mut data = Ok(());
                if let Some(d) = c.data {
                    data = conn.on_data(self.driver.data(&d));
                    self.driver.release(d);
                }
                if c.result == -libc::ENOBUFS {
                    self.io.stats.add(&self.io.stats.enobufs, 1);
                }
                data.and_then(|()| match conn.on_recv(c.result, c.more) {
                    Ok(true) => conn.rearm_recv(&mut self.driver),
                    Ok(false) => Ok(()),
                    Err(f) => Err(f),
                })
                .and_then(|()| self.process_replies(id, now))
            }
        };
        if let Err(f) = res {
            self.fail_conn(id, f, now);
        }
        self.finish_close(id, now);
    }
}

/// Empties `v` and reuses its allocation for messages borrowing from another reply.
///
/// The standard library collects a `vec::IntoIter` mapped to a type of the same size and
/// alignment in place, so this allocates nothing; the allocation test
/// (`engine/tests/alloc.rs`) checks that a steady drain allocates nothing per reply.
fn recycle<'b>(mut v: Vec<Message<'_>>) -> Vec<Message<'b>> {
    v.clear();
    v.into_iter()
        .map(|_| unreachable!("the vector is empty"))
        .collect()
}

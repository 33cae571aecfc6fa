//! The per-core loop. One shard = one thread, pinned to one core, owning one io_uring,
//! its connections, lanes, timers, credits and handler. Nothing here is shared with other
//! shards except the stop flag and wake-up eventfds, the stats counters, the first fatal
//! error and the `PopConsumer::limit` budget.
//!
//! A loop turn:
//! 1. queue pops on every ready connection (as credits allow) and hand queued bytes to
//!    the kernel;
//! 2. **one** `io_uring_enter` that submits every SQE of the turn and waits for a CQE or
//!    the nearest timer;
//! 3. route CQEs to connections; decode replies; run the handler on popped messages;
//! 4. fire due timers (deadlines, reconnects, heartbeats, stats, user callbacks).
//!
//! Shutdown never drops a reply in flight: a stopping shard sends nothing new, waits for
//! every pending reply (a blocked pop answers within its block timeout; pipelined BRPOPs
//! on a queue that just ran dry block one after another), hands what they
//! carry to the handler, then closes its sockets and waits for the kernel to finish with
//! every operation before the ring is dropped.

use std::os::fd::RawFd;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ringq_resp::{CommandWriter, Decoder, Frame};

use crate::conn::{Conn, ConnConfig, Failure, Phase, Tag};
use crate::dispatch::{epoch_nanos, ShardDispatch};
use crate::error::{Error, ErrorKind};
use crate::handler::{Handler, Message, Outcome};
use crate::pop::{
    Budget, Credits, Lane, PopConsumer, PopError, PopPlan, NONBLOCKING_REPLY_TIMEOUT,
};
use crate::ring::{sys, Completion, Driver, OpKind, RingConfig, RingFeatures};
use crate::stats::{new_histogram, ShardStats};
use crate::timer::{TimerEvent, Timers};

/// Token of the shard's wake-up eventfd read (connection tokens have a nonzero generation
/// in the low half, so this value never collides).
const TOKEN_WAKE: u64 = u64::MAX;
/// How often shard-local stats are merged into the shared snapshot.
const STATS_PERIOD: Duration = Duration::from_millis(100);

/// State shared by every shard of an engine and its handles.
pub(crate) struct Shared {
    pub stop: AtomicBool,
    pub fatal: Mutex<Option<Error>>,
    pub wake_fds: Vec<RawFd>,
}

impl Shared {
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

impl Drop for Shared {
    fn drop(&mut self) {
        for &fd in &self.wake_fds {
            sys::close(fd);
        }
    }
}

/// Outcome counts of handled messages.
#[derive(Default)]
struct Tally {
    n: u64,
    bytes: u64,
    ack: u64,
    retry: u64,
    dead: u64,
}

impl Tally {
    fn add(&mut self, o: Outcome) {
        self.n += 1;
        match o {
            Outcome::Ack => self.ack += 1,
            Outcome::Retry => self.retry += 1,
            Outcome::Dead => self.dead += 1,
        }
    }
}

/// A user periodic callback: its period and the shard's own instance.
pub(crate) type Periodic = (Duration, Box<dyn FnMut() + Send>);

/// Everything a shard thread needs, built by the engine.
/// Where this shard's messages are handled.
pub(crate) enum HandlerSide {
    /// On the shard thread.
    Inline(Box<dyn Handler>),
    /// On worker threads, through the shard's end of the rings.
    Workers(ShardDispatch),
}

pub(crate) struct ShardSpec {
    pub index: usize,
    pub core: Option<core_affinity::CoreId>,
    pub lanes: Vec<Vec<u32>>,
    pub credits: u32,
    pub credit_bytes: u64,
    pub conn: Arc<ConnConfig>,
    pub consumer: PopConsumer,
    pub budget: Option<Arc<Budget>>,
    pub ring: RingConfig,
    pub handler: HandlerSide,
    pub epoch: Instant,
    pub stats: Arc<ShardStats>,
    pub shared: Arc<Shared>,
    pub wake_fd: RawFd,
    pub periodic: Vec<Periodic>,
    pub heartbeat: Duration,
}

struct Shard {
    index: usize,
    driver: Driver,
    conns: Vec<Conn>,
    lanes: Vec<Lane>,
    plan: PopPlan,
    credits: Credits,
    timers: Timers,
    handler: HandlerSide,
    epoch: Instant,
    turn_ns: u64,
    stats: Arc<ShardStats>,
    shared: Arc<Shared>,
    wake_fd: RawFd,
    wake_armed: bool,
    periodic: Vec<Periodic>,
    heartbeat: Duration,
    stopping: bool,
    /// Reused for every reply's messages (see [`recycle`]).
    msgs: Vec<Message<'static>>,
    outcomes: Vec<Outcome>,
    latency: Histogram<u64>,
    completions: Vec<Completion>,
    turn_started: Instant,
    /// During a stop: the side connection that sends `CLIENT UNBLOCK` for blocked pops.
    unblocker: Option<usize>,
    /// `CLIENT UNBLOCK` is not available (an ACL without it, an error): wait instead.
    unblock_off: bool,
}

/// Runs a shard to completion on the current thread. Reports ring set-up on `ready`.
pub(crate) fn run(
    spec: ShardSpec,
    ready: mpsc::Sender<Result<RingFeatures, Error>>,
) -> Result<(), Error> {
    if let Some(core) = spec.core {
        if !core_affinity::set_for_current(core) {
            tracing::warn!(shard = spec.index, "could not pin to core {:?}", core.id);
        }
    }
    let driver = match Driver::new(spec.ring) {
        Ok(d) => d,
        Err(e) => {
            let msg = e.to_string();
            let _ = ready.send(Err(e));
            return Err(Error::new(ErrorKind::UringUnavailable, msg));
        }
    };
    let _ = ready.send(Ok(driver.features().clone()));
    drop(ready);
    let conns = spec
        .lanes
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let name = format!("{}-s{}-c{}", spec.conn.client_name, spec.index, i);
            let seed = (spec.index as u64) << 32 ^ i as u64 ^ u64::from(std::process::id()) << 16;
            Conn::new(
                i as u32,
                i,
                name,
                spec.conn.clone(),
                seed.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            )
        })
        .collect();
    let lanes = spec.lanes.into_iter().map(Lane::new).collect();
    let mut shard = Shard {
        index: spec.index,
        driver,
        conns,
        lanes,
        plan: PopPlan::new(spec.consumer, spec.budget),
        credits: Credits {
            limit: spec.credits,
            limit_bytes: spec.credit_bytes,
            requested: 0,
            held: 0,
            held_bytes: 0,
            high_water: 0,
        },
        timers: Timers::default(),
        handler: spec.handler,
        epoch: spec.epoch,
        turn_ns: 0,
        stats: spec.stats,
        shared: spec.shared,
        wake_fd: spec.wake_fd,
        wake_armed: false,
        periodic: spec.periodic,
        heartbeat: spec.heartbeat,
        stopping: false,
        msgs: Vec::with_capacity(1024),
        outcomes: Vec::with_capacity(1024),
        latency: new_histogram(),
        completions: Vec::with_capacity(256),
        turn_started: Instant::now(),
        unblocker: None,
        unblock_off: false,
    };
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
        shard.shared.fail(Error::new(e.kind(), e.to_string()));
        shard.abandon();
    }
    shard.publish_stats();
    result
}

impl Shard {
    fn run_loop(&mut self) -> Result<(), Error> {
        let now = Instant::now();
        self.arm_wake()?;
        self.timers
            .add(now + STATS_PERIOD, TimerEvent::PublishStats);
        self.timers.add(now + self.heartbeat, TimerEvent::Heartbeat);
        for (i, (period, _)) in self.periodic.iter().enumerate() {
            self.timers.add(now + *period, TimerEvent::User(i as u32));
        }
        for id in 0..self.conns.len() {
            self.connect(id, now);
        }
        loop {
            let now = Instant::now();
            if self.shared.stop.load(Ordering::Relaxed) && !self.stopping {
                self.begin_stop();
            }
            if self.stopping {
                self.unblock_blocked(now);
                self.close_idle_conns();
                let handed_out = match &self.handler {
                    HandlerSide::Workers(d) => d.in_flight(),
                    HandlerSide::Inline(_) => 0,
                };
                if handed_out == 0 && self.conns.iter().all(|c| c.phase == Phase::Done) {
                    return self.drain_ring();
                }
            } else {
                for id in 0..self.conns.len() {
                    if self.conns[id].phase == Phase::Ready {
                        let conn = &mut self.conns[id];
                        self.lanes[conn.lane].fill(&self.plan, conn, &mut self.credits, now);
                    }
                }
            }
            self.flush_all(now);
            let mut timeout = self
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
            self.turn_ns = epoch_nanos(self.epoch);
            if let HandlerSide::Workers(d) = &self.handler {
                d.woke();
            }
            self.collect_outcomes();
            let mut completions = std::mem::take(&mut self.completions);
            self.driver.reap(&mut completions);
            for c in completions.drain(..) {
                self.on_completion(c);
            }
            self.completions = completions;
            let now = self.turn_started;
            while let Some(ev) = self.timers.pop_due(now) {
                self.on_timer(ev, now);
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

    /// Sends what each connection queued and makes sure its oldest command has a timer.
    fn flush_all(&mut self, now: Instant) {
        for id in 0..self.conns.len() {
            let conn = &mut self.conns[id];
            if let Err(f) = conn.flush(&mut self.driver) {
                self.fail_conn(id, f, now);
                continue;
            }
            let conn = &mut self.conns[id];
            if let Some(head) = conn.pending.front() {
                // A new head may be due sooner than the armed timer (a blocking pop after
                // non-blocking ones): arm one for it, or a hung server is noticed late.
                if !conn.deadline_armed.is_some_and(|at| head.deadline >= at) {
                    self.timers.add(
                        head.deadline,
                        TimerEvent::Deadline {
                            conn: conn.id,
                            gen: conn.gen,
                        },
                    );
                    conn.deadline_armed = Some(head.deadline);
                }
            }
        }
    }

    fn connect(&mut self, id: usize, now: Instant) {
        if let Err(f) = self.conns[id].start_connect(&mut self.driver, now) {
            self.fail_conn(id, f, now);
        }
    }

    fn on_completion(&mut self, c: Completion) {
        let now = self.turn_started;
        if c.token == TOKEN_WAKE {
            if let Some(d) = c.data {
                self.driver.release(d);
            }
            self.wake_armed = false;
            // Stay armed while stopping too: workers still return outcomes.
            if let Err(e) = self.arm_wake() {
                self.shared.fail(e);
            }
            return;
        }
        let id = (c.token >> 32) as usize;
        let gen = c.token as u32;
        let Some(conn) = self.conns.get_mut(id) else {
            if let Some(d) = c.data {
                self.driver.release(d);
            }
            return;
        };
        if conn.gen != gen {
            if let Some(d) = c.data {
                self.driver.release(d);
            }
            return;
        }
        let res = match c.kind {
            OpKind::Connect => conn.on_connected(&mut self.driver, c.result),
            OpKind::Send => conn.on_sent(&mut self.driver, c.result),
            OpKind::Recv | OpKind::Read => {
                if let Some(d) = c.data {
                    conn.on_data(self.driver.data(&d));
                    self.driver.release(d);
                }
                if c.result == -libc::ENOBUFS {
                    self.stats.add(&self.stats.enobufs, 1);
                }
                match conn.on_recv(c.result, c.more) {
                    Ok(true) => conn.rearm_recv(&mut self.driver),
                    Ok(false) => Ok(()),
                    Err(f) => Err(f),
                }
                .and_then(|()| self.process_replies(id, now))
            }
        };
        if let Err(f) = res {
            self.fail_conn(id, f, now);
        }
        self.finish_close(id, now);
    }

    /// Decodes and routes every complete reply of connection `id`.
    fn process_replies(&mut self, id: usize, now: Instant) -> Result<(), Failure> {
        loop {
            let Some((pending, frame)) = self.conns[id].next_reply()? else {
                return Ok(());
            };
            match pending.tag {
                Tag::Pop { count, blocking } => {
                    let lane = self.conns[id].lane;
                    self.conns[id].unblock_sent = false;
                    // The messages borrow their payloads from `frame`; the vector's
                    // allocation is kept across replies.
                    let mut msgs = recycle(std::mem::take(&mut self.msgs));
                    match self.lanes[lane].on_reply(
                        &self.plan,
                        &frame,
                        (count, blocking),
                        self.turn_ns,
                        &mut self.credits,
                        &mut msgs,
                    ) {
                        Ok(reply) => {
                            self.conns[id].note_served();
                            if reply.excess > 0 {
                                let kept = reply.count as usize;
                                let excess = msgs.drain(kept..).map(|m| m.detach());
                                self.lanes[lane].returns.extend(excess);
                            }
                            if self.lanes[lane].in_flight() == 0
                                && !self.lanes[lane].returns.is_empty()
                            {
                                self.push_back(id, now);
                            }
                            self.stats.add(&self.stats.pops, 1);
                            if reply.count == 0 {
                                self.stats.add(&self.stats.empty_pops, 1);
                            }
                            if let Some(q) = reply.queue {
                                if let Some(c) = self.stats.per_queue.get(q as usize) {
                                    self.stats.add(c, u64::from(reply.count));
                                }
                            }
                            debug_assert_eq!(msgs.len(), reply.count as usize);
                            self.dispatch(&mut msgs, reply.bytes);
                            self.msgs = recycle(msgs);
                        }
                        Err(PopError::Retry(e)) => return Err(Failure::Retry(e)),
                        Err(PopError::Fatal(e)) => return Err(Failure::Fatal(e)),
                    }
                }
                Tag::Ping => {
                    if frame.first() != Some(&b'-') {
                        self.conns[id].note_served();
                    } else {
                        let conn = &self.conns[id];
                        return Err(Failure::Retry(Error::new(
                            ErrorKind::Server,
                            format!(
                                "{} answered the heartbeat PING with {}",
                                conn.peer(),
                                String::from_utf8_lossy(&frame).trim_end()
                            ),
                        )));
                    }
                }
                Tag::Unblock { conn } => {
                    let unblocked = frame.starts_with(b":1");
                    if frame.first() == Some(&b'-') {
                        tracing::warn!(
                            shard = self.index,
                            "CLIENT UNBLOCK refused ({}); the stop waits for blocked pops to time out instead",
                            String::from_utf8_lossy(&frame).trim_end()
                        );
                        self.unblock_off = true;
                    } else if !unblocked {
                        // Not blocked at that moment (its reply was on the way, or the
                        // next pipelined pop had not started): try again if still blocking.
                        if let Some(c) = self.conns.get_mut(conn as usize) {
                            c.unblock_sent = false;
                        }
                    }
                }
                Tag::PushBack { count } => {
                    let conn = &self.conns[id];
                    match Decoder::new().build(&frame) {
                        Ok(Frame::Integer(_)) => {
                            tracing::debug!(conn = %conn.name, count, "pushed back messages beyond the limit");
                        }
                        Ok(f) => tracing::error!(
                            conn = %conn.name,
                            "{count} message(s) beyond the limit could not be pushed back to {}: {f:?}; they are lost",
                            conn.peer()
                        ),
                        Err(e) => return Err(Failure::Fatal(Error::protocol(&conn.peer(), e))),
                    }
                }
                tag => {
                    let was_ready_before = self.conns[id].ever_ready;
                    if self.conns[id].on_handshake_reply(tag, &frame, now)? {
                        self.stats.add(&self.stats.connections_ready, 1);
                        if was_ready_before {
                            self.stats.add(&self.stats.reconnects, 1);
                        }
                        tracing::debug!(conn = %self.conns[id].name, server = ?self.conns[id].server, "ready");
                    }
                }
            }
            if self.stopping
                && self.conns[id].phase == Phase::Ready
                && self.conns[id].pending.is_empty()
                && Some(id) != self.unblocker
            {
                self.stop_conn(id);
            }
        }
    }

    /// Sends the messages connection `id`'s lane popped beyond the
    /// [`PopConsumer::limit`](crate::PopConsumer::limit) budget back to the right end of
    /// their lists, where they came from. They are in pop order (rightmost first, across
    /// all of the lane's replies), so walking them from the end and pushing each run of
    /// one key last-to-first with RPUSH leaves every list as it was before the pops.
    fn push_back(&mut self, id: usize, now: Instant) {
        let lane = self.conns[id].lane;
        let back = std::mem::take(&mut self.lanes[lane].returns);
        let allow = NONBLOCKING_REPLY_TIMEOUT + self.plan.consumer.reply_grace;
        let mut end = back.len();
        while end > 0 {
            let key = back[end - 1].key();
            let mut begin = end - 1;
            while begin > 0 && back[begin - 1].key() == key {
                begin -= 1;
            }
            let run = &back[begin..end];
            let count = run.len() as u32;
            self.conns[id].command(Tag::PushBack { count }, now, allow, |buf| {
                CommandWriter::new(buf, 2 + run.len())
                    .arg("RPUSH")
                    .arg(key)
                    .args(run.iter().rev().map(|m| m.payload()))
                    .finish();
            });
            end = begin;
        }
    }

    /// Hands the messages just popped to the handler, right here (inline) or to workers,
    /// and leaves `msgs` empty.
    fn dispatch(&mut self, msgs: &mut Vec<Message<'_>>, bytes: u64) {
        let n = msgs.len();
        if n == 0 {
            return;
        }
        let handler = match &mut self.handler {
            HandlerSide::Workers(d) => {
                d.submit(msgs);
                return;
            }
            HandlerSide::Inline(h) => h,
        };
        let wait_ns = self.turn_started.elapsed().as_nanos().max(1) as u64;
        let _ = self
            .latency
            .record_n(wait_ns.min(self.latency.high()), n as u64);
        self.outcomes.clear();
        let outcomes = &mut self.outcomes;
        if std::panic::catch_unwind(AssertUnwindSafe(|| handler.handle_batch(msgs, outcomes)))
            .is_err()
        {
            self.outcomes.clear();
            self.shared.fail(Error::new(
                ErrorKind::Handler,
                "a handler panicked on a shard thread; stopping",
            ));
        }
        let mut tally = Tally::default();
        for i in 0..n {
            tally.add(self.outcomes.get(i).copied().unwrap_or(Outcome::Retry));
        }
        tally.bytes = bytes;
        msgs.clear();
        self.finish(tally);
    }

    /// Takes outcomes workers returned.
    fn collect_outcomes(&mut self) {
        let HandlerSide::Workers(d) = &mut self.handler else {
            return;
        };
        let mut tally = Tally::default();
        d.collect(|done| {
            tally.bytes += done.msg.payload().len() as u64;
            tally.add(done.outcome);
        });
        if tally.n > 0 {
            self.finish(tally);
        }
    }

    /// Accounts for handled messages: stats, credits, the message budget.
    fn finish(&mut self, t: Tally) {
        let s = &self.stats;
        s.add(&s.messages, t.n);
        s.add(&s.bytes, t.bytes);
        s.add(&s.acked, t.ack);
        s.add(&s.retried, t.retry);
        s.add(&s.dead, t.dead);
        self.credits.held = self.credits.held.saturating_sub(t.n as u32);
        self.credits.held_bytes = self.credits.held_bytes.saturating_sub(t.bytes);
        if self.plan.budget.as_ref().is_some_and(|b| b.delivered(t.n)) {
            // The whole `limit` has been handled: stop every shard.
            self.shared.stop_all();
        }
    }

    fn on_timer(&mut self, ev: TimerEvent, now: Instant) {
        match ev {
            TimerEvent::Deadline { conn, gen } => {
                let id = conn as usize;
                let Some(c) = self.conns.get_mut(id) else {
                    return;
                };
                // Not armed, or a timer superseded by an earlier one that is still to fire.
                if c.gen != gen || !c.deadline_armed.is_some_and(|at| at <= now) {
                    return;
                }
                c.deadline_armed = None;
                let Some(head) = c.pending.front().copied() else {
                    return;
                };
                if head.deadline > now {
                    self.timers
                        .add(head.deadline, TimerEvent::Deadline { conn, gen });
                    c.deadline_armed = Some(head.deadline);
                    return;
                }
                let e = Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "no reply from {} to {:?} within its deadline; reconnecting",
                        c.peer(),
                        head.tag
                    ),
                );
                self.fail_conn(id, Failure::Retry(e), now);
                self.finish_close(id, now);
            }
            TimerEvent::Reconnect { conn, gen } => {
                let id = conn as usize;
                if self
                    .conns
                    .get(id)
                    .is_some_and(|c| c.gen == gen && c.phase == Phase::Idle)
                    && !self.stopping
                {
                    self.connect(id, now);
                }
            }
            TimerEvent::PublishStats => {
                self.publish_stats();
                self.timers
                    .add(now + STATS_PERIOD, TimerEvent::PublishStats);
            }
            TimerEvent::Heartbeat => {
                if !self.stopping {
                    let allow = self.plan.consumer.reply_grace;
                    for conn in &mut self.conns {
                        if conn.phase == Phase::Ready && conn.pending.is_empty() {
                            conn.command(Tag::Ping, now, allow, |buf| {
                                CommandWriter::new(buf, 1).arg("PING").finish();
                            });
                        }
                    }
                }
                self.timers.add(now + self.heartbeat, TimerEvent::Heartbeat);
            }
            TimerEvent::User(n) => {
                if let Some((period, f)) = self.periodic.get_mut(n as usize) {
                    f();
                    let next = now + *period;
                    self.timers.add(next, TimerEvent::User(n));
                }
            }
        }
    }

    fn publish_stats(&mut self) {
        self.stats.merge_latency(&mut self.latency);
        self.stats
            .max_in_flight
            .fetch_max(u64::from(self.credits.high_water), Ordering::Relaxed);
    }

    /// Handles a connection failure: fatal ones stop the engine, others reconnect.
    fn fail_conn(&mut self, id: usize, f: Failure, _now: Instant) {
        let conn = &mut self.conns[id];
        if matches!(conn.phase, Phase::Closing | Phase::Done) {
            return;
        }
        let lost: u32 = conn
            .pending
            .iter()
            .map(|p| {
                if let Tag::Pop { count, .. } = p.tag {
                    count
                } else {
                    0
                }
            })
            .sum();
        if conn.phase == Phase::Ready {
            self.stats.connections_ready.fetch_sub(1, Ordering::Relaxed);
        }
        match f {
            Failure::Fatal(e) => {
                conn.stop_after_close = true;
                conn.last_error = Some(e.to_string());
                self.shared.fail(e);
            }
            Failure::Retry(e) => {
                tracing::warn!(shard = self.index, conn = %conn.name, "{e}");
                conn.last_error = Some(e.to_string());
                if self.stopping {
                    conn.stop_after_close = true;
                }
            }
        }
        let unreturned: u32 = conn
            .pending
            .iter()
            .map(|p| match p.tag {
                Tag::PushBack { count } => count,
                _ => 0,
            })
            .sum();
        if unreturned > 0 {
            tracing::error!(
                conn = %conn.name,
                "connection lost before {unreturned} message(s) popped beyond the limit were pushed back; they may be lost"
            );
        }
        let lane = conn.lane;
        conn.begin_close(&mut self.driver);
        // The unblocking side connection has no lane.
        if let Some(l) = self.lanes.get_mut(lane) {
            l.reset(&self.plan, &mut self.credits, lost);
        }
    }

    /// Completes a close once the kernel is done with the connection's operations.
    fn finish_close(&mut self, id: usize, now: Instant) {
        let conn = &mut self.conns[id];
        match conn.try_finish_close() {
            None | Some(None) => {}
            Some(Some(backoff)) => {
                if conn.out_of_start_attempts() {
                    let why = conn
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "unknown error".into());
                    conn.phase = Phase::Done;
                    self.shared.fail(Error::new(
                        ErrorKind::ConnectionLost,
                        format!("could not connect after {} attempts: {why}", conn.failures),
                    ));
                    return;
                }
                if self.stopping {
                    conn.phase = Phase::Done;
                    return;
                }
                self.timers.add(
                    now + backoff,
                    TimerEvent::Reconnect {
                        conn: conn.id,
                        gen: conn.gen,
                    },
                );
            }
        }
    }

    fn begin_stop(&mut self) {
        self.stopping = true;
        for id in 0..self.conns.len() {
            let conn = &mut self.conns[id];
            conn.stop_after_close = true;
            match conn.phase {
                Phase::Idle => conn.phase = Phase::Done,
                Phase::Ready if !conn.pending.is_empty() => {}
                Phase::Closing | Phase::Done => {}
                _ => self.stop_conn(id),
            }
        }
    }

    /// During a stop, ends pops blocked on the server at once instead of waiting out
    /// their block timeouts (up to `pipeline` of them in turn on one connection): a side
    /// connection sends `CLIENT UNBLOCK <id>` for each connection whose head command is a
    /// blocking pop. The unblocked pop answers "nothing" — it had nothing, or it would not
    /// have been blocked — so no message is lost. The next pipelined pop then blocks in
    /// its turn and is unblocked in the same way once the previous reply has arrived.
    /// Needs the client ids from HELLO (RESP3) and the right to run CLIENT UNBLOCK; without
    /// them, or if the side connection fails, the stop waits as before.
    fn unblock_blocked(&mut self, now: Instant) {
        if self.unblock_off {
            return;
        }
        let blocked = |(i, c): &(usize, &Conn)| {
            Some(*i) != self.unblocker
                && c.phase == Phase::Ready
                && !c.unblock_sent
                && c.server.client_id.is_some()
                && c.head_blocks()
        };
        if !self.conns.iter().enumerate().any(|e| blocked(&e)) {
            return;
        }
        let Some(u) = self.unblocker else {
            let id = self.conns.len();
            let base = &self.conns[0];
            let name = format!("{}-unblock", base.name);
            let mut side = Conn::new(
                id as u32,
                usize::MAX,
                name,
                base.config().clone(),
                u64::from(std::process::id()) << 16 ^ (self.index as u64) << 32 ^ id as u64,
            );
            // One attempt only: a failure leaves the stop to the block timeouts.
            side.stop_after_close = true;
            self.conns.push(side);
            self.unblocker = Some(id);
            self.connect(id, now);
            return;
        };
        if self.conns[u].phase != Phase::Ready {
            if matches!(self.conns[u].phase, Phase::Closing | Phase::Done) {
                self.unblock_off = true;
            }
            return;
        }
        let targets: Vec<(usize, i64)> = self
            .conns
            .iter()
            .enumerate()
            .filter(|e| blocked(e))
            .filter_map(|(i, c)| Some((i, c.server.client_id?)))
            .collect();
        let allow = NONBLOCKING_REPLY_TIMEOUT + self.plan.consumer.reply_grace;
        for (id, client_id) in targets {
            self.conns[u].command(Tag::Unblock { conn: id as u32 }, now, allow, |buf| {
                CommandWriter::new(buf, 3)
                    .arg("CLIENT")
                    .arg("UNBLOCK")
                    .arg_int(client_id)
                    .finish();
            });
            self.conns[id].unblock_sent = true;
        }
    }

    fn close_idle_conns(&mut self) {
        // The unblocking connection stays while another connection still waits for replies.
        let others_open = self.conns.iter().enumerate().any(|(i, c)| {
            Some(i) != self.unblocker && !matches!(c.phase, Phase::Closing | Phase::Done)
        });
        for id in 0..self.conns.len() {
            let c = &self.conns[id];
            let is_unblocker = Some(id) == self.unblocker;
            let idle = c.phase == Phase::Ready && c.pending.is_empty();
            let unneeded = is_unblocker && !others_open;
            if (idle && !is_unblocker)
                || (unneeded && !matches!(c.phase, Phase::Closing | Phase::Done))
            {
                self.stop_conn(id);
            }
            if self.conns[id].phase == Phase::Idle {
                self.conns[id].phase = Phase::Done;
            }
            self.finish_close(id, Instant::now());
        }
    }

    fn stop_conn(&mut self, id: usize) {
        let conn = &mut self.conns[id];
        if conn.phase == Phase::Ready {
            self.stats.connections_ready.fetch_sub(1, Ordering::Relaxed);
        }
        conn.stop_after_close = true;
        conn.begin_close(&mut self.driver);
    }

    /// Every connection is done: end the wake-up read and wait until the kernel holds no
    /// operation of ours, so the ring and its buffers can be dropped safely.
    fn drain_ring(&mut self) -> Result<(), Error> {
        sys::eventfd_signal(self.wake_fd);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.driver.in_flight() > 0 {
            if Instant::now() > deadline {
                tracing::error!(
                    shard = self.index,
                    ops = self.driver.in_flight(),
                    "operations did not finish; leaking their buffers"
                );
                return Ok(());
            }
            self.driver
                .submit_and_wait(Some(Duration::from_millis(100)))?;
            let mut completions = std::mem::take(&mut self.completions);
            self.driver.reap(&mut completions);
            for c in completions.drain(..) {
                if let Some(d) = c.data {
                    self.driver.release(d);
                }
            }
            self.completions = completions;
        }
        Ok(())
    }

    /// After a ring error: close what we can without waiting.
    fn abandon(&mut self) {
        for id in 0..self.conns.len() {
            self.stop_conn(id);
        }
        let _ = self.driver.submit();
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

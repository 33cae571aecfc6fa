//! [`Io`]: the part of a shard a pipeline works with. The shard owns it and reaches its
//! fields; a pipeline sees narrow methods: the connections (to read their state and queue
//! commands), the Control connection, the fetch lanes, the credits, timers, stats,
//! events, and the engine-wide stop. Commands a pipeline queues are sent at the end of
//! the turn; it never touches the driver.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::budget::Budget;
use crate::conn::{Conn, Failure, Phase, Role};
use crate::credit::Credits;
use crate::handler::Event;
use crate::stats::ShardStats;
use crate::timer::{TimerEvent, Timers};
use crate::wake::Signals;

/// The part of a shard a pipeline works with.
pub(crate) struct Io<C> {
    /// The shard's index.
    pub(super) shard: usize,
    /// The shard's connections: fetch connections first (slot `i` starts with role
    /// `Fetch(i)`), then replacements of stalled ones and the Control connection.
    pub(super) conns: Vec<Conn<C>>,
    /// Prefetch credit, one account per fetch connection plus a shared pool.
    pub(super) credits: Credits,
    /// The engine-wide message budget (`EngineBuilder::limit`), if any.
    pub(super) budget: Option<Arc<Budget>>,
    pub(super) stats: Arc<ShardStats>,
    pub(super) shared: Arc<Signals>,
    pub(super) timers: Timers,
    /// The shard is stopping: nothing new is fetched.
    pub(super) stopping: bool,
    /// When this turn's completions were reaped, in ns since the engine's epoch.
    pub(super) turn_ns: u64,
    /// How long a non-blocking command may take before its reply is overdue.
    pub(super) reply_timeout: Duration,
    /// The Control connections: at least one. In a cluster, the modes that settle on
    /// their sources' keys have one per node their lanes' slots are on (see
    /// `Shard::assign_controls`); the others one, following the first lane.
    pub(super) controls: Vec<ControlSlot>,
    /// Each fetch lane's Control (an index into `controls`).
    pub(super) lane_control: Vec<u32>,
    /// Set by the pipeline when something it read suggests the cluster's topology
    /// changed: the shard asks for a refresh at the end of the turn.
    pub(super) refresh_topology: bool,
    /// Events for the handler's `on_event`, delivered by the shard at the end of the turn.
    pub(super) events: Vec<Event>,
    /// Connections (id, generation) a pipeline found dead, to close as lost with the
    /// error at the start of the next turn.
    pub(super) lose: Vec<(usize, u32, crate::Error)>,
}

impl<C: Copy + Debug> Io<C> {
    /// The shard's index.
    pub(crate) fn shard(&self) -> usize {
        self.shard
    }

    /// The shard's connections, to read their state: fetch connections first (slot `i`
    /// starts with role `Fetch(i)`), then replacements of stalled ones and Control.
    pub(crate) fn conns(&self) -> &[Conn<C>] {
        &self.conns
    }

    /// Gives `n` messages of the budget back: fetched, and never to reach the handler
    /// (an element dead-lettered unread), so the limit counts handled messages only.
    pub(crate) fn unclaim_budget(&self, n: u32) {
        if let Some(b) = &self.budget {
            b.unclaim(n);
        }
    }

    /// Connection `id`.
    pub(crate) fn conn(&self, id: usize) -> &Conn<C> {
        &self.conns[id]
    }

    /// Connection `id`, to queue commands on.
    pub(crate) fn conn_mut(&mut self, id: usize) -> &mut Conn<C> {
        &mut self.conns[id]
    }

    /// Connection `id` and the credits, together: a fetch is queued on the one with a
    /// grant from the other.
    pub(crate) fn conn_and_credits(&mut self, id: usize) -> (&mut Conn<C>, &mut Credits) {
        (&mut self.conns[id], &mut self.credits)
    }

    /// Whether a command matching `pred` is in flight on any connection.
    pub(crate) fn any_cmd(&self, pred: impl Fn(&C) -> bool + Copy) -> bool {
        self.conns.iter().any(|c| c.any_cmd(pred))
    }

    /// The reply `frame` that came on connection `id`, decoded into a [`Frame`] (for the
    /// few replies read whole: Control's, probes).
    ///
    /// # Errors
    /// A fatal protocol failure naming the server, when the bytes are not RESP.
    ///
    /// [`Frame`]: ringq_resp::Frame
    pub(crate) fn decode(
        &self,
        id: usize,
        frame: &bytes::Bytes,
    ) -> Result<ringq_resp::Frame, Failure> {
        ringq_resp::Decoder::new()
            .build(frame)
            .map_err(|e| Failure::Fatal(crate::Error::protocol(&self.conns[id].peer(), e)))
    }

    /// Prefetch credit, one account per fetch connection plus a shared pool.
    pub(crate) fn credits(&mut self) -> &mut Credits {
        &mut self.credits
    }

    /// The shard's counters.
    pub(crate) fn stats(&self) -> &ShardStats {
        &self.stats
    }

    /// Stops the engine with `e` (it comes back from `Running::wait`).
    pub(crate) fn fail(&self, e: crate::Error) {
        self.shared.fail(e);
    }

    /// Stops every shard, as a shutdown does.
    #[cfg(test)]
    pub(crate) fn stop_all(&self) {
        self.shared.stop_all();
    }

    /// The shard is stopping: nothing new is fetched.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping
    }

    /// When this turn's completions were reaped, in ns since the engine's epoch.
    pub(crate) fn turn_ns(&self) -> u64 {
        self.turn_ns
    }

    /// How long a non-blocking command may take before its reply is overdue.
    pub(crate) fn reply_timeout(&self) -> Duration {
        self.reply_timeout
    }

    /// The first Control connection's id, once opened (the one Control of the modes
    /// that have one).
    pub(crate) fn control_id(&self) -> Option<usize> {
        self.controls[0].id
    }

    /// Has the shard open the first Control connection (see `ControlUse::OnDemand`).
    pub(crate) fn want_control(&mut self) {
        self.controls[0].want = true;
    }

    /// The Control that serves fetch lane `lane`'s sources: in a cluster, the one on
    /// their slot's node now (it changes when the slot moves).
    pub(crate) fn control_of_lane(&self, lane: usize) -> usize {
        self.lane_control.get(lane).map_or(0, |&c| c as usize)
    }

    /// Which Control connection `id` is, if it is one.
    pub(crate) fn control_index(&self, id: usize) -> Option<usize> {
        match self.conns.get(id)?.role() {
            Role::Control(c) => Some(c as usize),
            Role::Fetch(_) => None,
        }
    }

    /// Whether connection `id` is a Control connection.
    pub(crate) fn is_control(&self, id: usize) -> bool {
        self.control_index(id).is_some()
    }

    /// Control `c`, when it is ready to carry commands.
    pub(crate) fn control_ready_at(&mut self, c: usize) -> Option<&mut Conn<C>> {
        let id = self.controls.get(c)?.id?;
        let conn = self.conns.get_mut(id)?;
        (conn.phase() == Phase::Ready).then_some(conn)
    }

    /// Whether every Control that serves a lane (or the first, without lanes) is ready
    /// to carry commands.
    pub(crate) fn all_controls_ready(&self) -> bool {
        let ready = |c: usize| {
            self.controls
                .get(c)
                .and_then(|c| c.id)
                .and_then(|id| self.conns.get(id))
                .is_some_and(|conn| conn.phase() == Phase::Ready)
        };
        if self.lane_control.is_empty() {
            return ready(0);
        }
        self.lane_control.iter().all(|&c| ready(c as usize))
    }

    /// Closes connection `id` as lost with `e`, at the start of the next turn: a pipeline
    /// that learned from elsewhere (another connection, the server) that it is dead. It
    /// reconnects like any lost connection, and the pipeline's `on_lost` hears of it.
    /// Nothing happens if `id` has been replaced by then.
    pub(crate) fn drop_conn(&mut self, id: usize, e: crate::Error) {
        if let Some(c) = self.conns.get(id) {
            self.lose.push((id, c.gen(), e));
        }
    }

    /// In a cluster, asks for a topology refresh: what the pipeline read (a shard
    /// channel ended without being asked) suggests a slot changed owner. Nothing happens
    /// on one server.
    pub(crate) fn refresh_topology(&mut self) {
        self.refresh_topology = true;
    }

    /// Tells the handler's `on_event` of `e`, at the end of the turn.
    pub(crate) fn event(&mut self, e: Event) {
        self.events.push(e);
    }

    /// Calls [`Pipeline::on_timer`] with `id` at `at`.
    pub(crate) fn timer(&mut self, at: Instant, id: u32) {
        self.timers.add(at, TimerEvent::Pipeline(id));
    }

    /// The first Control connection, when it is ready to carry commands.
    pub(crate) fn control_ready(&mut self) -> Option<&mut Conn<C>> {
        self.control_ready_at(0)
    }

    /// The lane (fetch connection number) connection `id` serves; `None` for Control,
    /// which has none. [`FetchLane`] cannot be made up, so a caller cannot quietly take
    /// Control for lane 0: it handles `None`, or uses [`Io::lane_of_reply`].
    pub(crate) fn fetch_of(&self, id: usize) -> Option<FetchLane> {
        match self.conns.get(id)?.role() {
            Role::Fetch(n) => Some(FetchLane(n as usize)),
            Role::Control(_) => None,
        }
    }

    /// This turn's fill order over the connections that may fetch now (ready, not
    /// draining, with a lane): it starts one connection further than the last turn's
    /// (`from` keeps the place), so no connection is always first to the shared part of
    /// the credit. The iterator borrows nothing: the caller queues on each connection as
    /// it goes, checking it with [`Io::fetching`].
    pub(crate) fn fill_order(&self, from: &mut usize) -> impl Iterator<Item = usize> {
        let n = self.conns.len();
        *from = (*from + 1) % n.max(1);
        let start = *from;
        (0..n).map(move |k| (start + k) % n)
    }

    /// The lane of connection `id` if it may fetch now (ready and not draining).
    pub(crate) fn fetching(&self, id: usize) -> Option<FetchLane> {
        if !self.conns.get(id)?.serves() {
            return None;
        }
        self.fetch_of(id)
    }

    /// The lane of connection `id`, which just answered a fetching command.
    ///
    /// # Errors
    /// A fatal failure if `id` has no lane: a fetching command's reply on Control would
    /// be a bug in the engine, and is never credited to some other lane.
    pub(crate) fn lane_of_reply(&self, id: usize) -> Result<usize, Failure> {
        self.fetch_of(id).map(FetchLane::index).ok_or_else(|| {
            Failure::Fatal(crate::Error::new(
                crate::ErrorKind::Protocol,
                "internal error: a fetching command was answered on the Control connection; \
                 please report this",
            ))
        })
    }
}

/// The lane a fetch connection serves: only [`Io::fetch_of`] makes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FetchLane(usize);

impl FetchLane {
    /// The lane's index on its shard.
    pub(crate) fn index(self) -> usize {
        self.0
    }
}

/// One Control connection of a shard.
#[derive(Debug, Clone)]
pub(crate) struct ControlSlot {
    /// In a cluster, a hash slot of the node it is on (one of its lanes').
    pub(super) route: u16,
    /// Its connection, once opened.
    pub(super) id: Option<usize>,
    /// The pipeline (or a stop, or the depth sampler) asked for it to be opened.
    pub(super) want: bool,
    /// Closed for good: no lane needed it any more (see `Shard::retire_idle_controls`).
    pub(super) retired: bool,
}

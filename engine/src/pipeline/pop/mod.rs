//! The pop pipeline (delivery mode `pop`, at-most-once): BRPOP, BLMPOP and LMPOP over
//! many list queues.
//!
//! - **Lanes** (`lane.rs`). The consumer's queues are split over its connections; each
//!   queue belongs to exactly one connection (a [`Lane`]), so replies for a queue arrive in
//!   pop order and the handler sees each queue in FIFO order.
//! - **Fair cycle.** A lane's key order rotates: the queue just served goes last (Kombu's
//!   `round_robin`), after `weight` consecutive turns. A flooded queue cannot starve the
//!   others: LMPOP/BRPOP serve the first non-empty of the queues a pop names, in that
//!   order, and with backlog a pop names the first few queues known to hold messages
//!   (`Scope::Hot`), the rest being checked once per block timeout (`Scope::Cold`).
//! - **Priority steps.** A queue may have levels; its keys are listed highest first, so
//!   within a queue the highest non-empty level is served first.
//! - **Adaptive.** While there is backlog, non-blocking LMPOP COUNT, pipelined `pipeline`
//!   deep; when the queues run dry, one blocking BLMPOP (or BRPOP) at a time.
//! - **Credits** (`crate::credit`). A pop asks for at most the free prefetch credit, in
//!   messages and in bytes (sizes learned from the replies); a blocking pop draws only on
//!   its own lane's reserve, so every connection can always wait on its queues.
//! - **Budget** (`crate::budget`): [`EngineBuilder::limit`]: exactly N messages.
//!
//! Replies (`reply.rs`) are walked with [`ringq_resp::Reader`]: a popped message costs no
//! allocation.
//!
//! The pipeline's commands ([`PopTag`]) are pops and the push-backs of messages popped
//! beyond the budget; both owe effects (closing their connection unanswered loses
//! messages), so a stalled connection drains (`crate::shard`'s stall handling) and its
//! lane moves to a fresh connection.

mod config;
pub(crate) mod dialect;
mod faults;
mod lane;
mod reply;
mod tracking;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ringq_resp::{CommandWriter, Decoder, Frame};

use super::{check_block_timeout, ControlUse, Drain, FetchLane, Io, Pipeline, Start, Timing};
use crate::budget::Budget;
use crate::conn::{Failure, Phase, Tag};
use crate::error::Error;
use crate::handler::{Message, Outcome, Source};

pub(crate) use config::{secs_arg, PopPlan};
pub use config::{PopConsumer, PopStrategy, Queue, MAX_BLOCK_TIMEOUT};
pub(crate) use dialect::{Dialect, Leasing, Popping, Unacking};
use lane::Lane;

/// A pop-mode command awaiting its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PopTag {
    /// A pop (see [`PopCmd`]).
    Pop(PopCmd),
    /// Popped messages beyond the budget going back to the right end of their list
    /// (RPUSH), where they were popped from.
    PushBack { count: u32 },
    /// Reliable mode: a dry lane's `EXISTS` over its keys, which tracks them (see
    /// `Lane::wake`).
    Watch,
}

/// A pipeline command type that carries pop commands: pop mode's own [`PopTag`], or a
/// mode that pops through the same lanes (reliable mode's leases) with commands of its
/// own beside them.
pub(crate) trait CarriesPop: Copy + std::fmt::Debug + Send + 'static {
    fn from_pop(t: PopTag) -> Self;
    fn as_pop(&self) -> Option<PopTag>;
    fn as_pop_mut(&mut self) -> Option<&mut PopTag>;
}

impl CarriesPop for PopTag {
    fn from_pop(t: PopTag) -> Self {
        t
    }

    fn as_pop(&self) -> Option<PopTag> {
        Some(*self)
    }

    fn as_pop_mut(&mut self) -> Option<&mut PopTag> {
        Some(self)
    }
}

fn is_pop<C: CarriesPop>(c: &C) -> bool {
    matches!(c.as_pop(), Some(PopTag::Pop(_)))
}

impl PopTag {
    /// A blocking pop: it may wait on the server for the block timeout.
    pub(crate) fn blocks(&self) -> bool {
        matches!(self, PopTag::Pop(PopCmd { blocking: true, .. }))
    }
}

/// A pop in flight: what it asked for and the credit it holds until it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PopCmd {
    /// Messages asked for (the COUNT; 1 for BRPOP).
    pub count: u32,
    /// BRPOP or BLMPOP: may wait on the server for the block timeout.
    pub blocking: bool,
    /// Payload bytes of credit held for the reply.
    pub bytes: u64,
    /// Its connection stalled while it was in flight and was replaced: it holds no credit
    /// any more, and its reply, if one comes, is a late one.
    pub late: bool,
    /// Which queues it named (see [`Scope`]).
    pub scope: Scope,
    /// Reliable mode's `BLMOVE`: the one queue it named (its first key).
    pub single: Option<u32>,
}

/// Which of a lane's queues a pop names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Every queue, in rotation order: blocking pops, BRPOP, and a lane with no queue
    /// known to hold messages.
    All,
    /// The first `len` queues known to hold messages (`queues[..len]`), in rotation
    /// order: a queue named before the one that answered, or every named one when the
    /// answer is empty, has none left.
    Hot { queues: [u32; HOT_KEYS], len: u8 },
    /// Every queue not known to hold messages: the periodic check that notices a queue
    /// filling while others are being drained.
    Cold,
}

/// Most queues a pop names while there is backlog.
pub(crate) const HOT_KEYS: usize = 4;

/// The pop pipeline of one shard: its lanes (one per fetch connection) and the plan.
pub(crate) struct PopPipeline<D> {
    plan: PopPlan<D>,
    lanes: Vec<Lane>,
    /// Where the next turn's fill starts, so no connection always comes first for the
    /// shared part of the credit.
    fill_from: usize,
    /// In the lease dialect, what the last reply leased: its key's source and how many
    /// elements (those beyond the budget included), for [`PopPipeline::take_leased`].
    leased: Option<(&'static Source, u64, Option<u64>)>,
}

impl PopConsumer {
    /// The queue list and block timeout, checked (pop and reliable mode).
    pub(crate) fn check(&self) -> Result<(), Error> {
        if self.queues.is_empty() {
            return Err(Error::config("no queues to consume: give at least one"));
        }
        check_block_timeout(self.block_timeout)
    }

    /// The queues' names, in order.
    pub(crate) fn queue_names(&self) -> Vec<String> {
        self.queues
            .iter()
            .map(|q| String::from_utf8_lossy(q.name()).into_owned())
            .collect()
    }
}

impl Start for PopConsumer {
    type Pipeline = PopPipeline<Popping>;
    const SOURCES: &'static str = "queues";
    const MODE: &'static str = "pop";

    fn check(&self) -> Result<(), Error> {
        PopConsumer::check(self)
    }

    fn source_names(&self) -> Vec<String> {
        self.queue_names()
    }

    fn source_keys(&self, i: usize) -> Option<Vec<Bytes>> {
        let q = self.queues.get(i)?;
        Some(q.levels.iter().map(|(_, k)| k.clone()).collect())
    }

    fn depth_keys(&self, i: usize) -> Vec<Bytes> {
        self.source_keys(i).unwrap_or_default()
    }

    fn pipeline(
        &self,
        lanes: Vec<Vec<u32>>,
        budget: Option<Arc<Budget>>,
        timing: Timing,
    ) -> PopPipeline<Popping> {
        PopPipeline::new(self.clone(), budget, lanes, timing, Popping)
    }
}

impl<D: Dialect> PopPipeline<D> {
    /// The pipeline of a shard whose lane `l` fetches the queues `lanes[l]` (queue
    /// indices into the consumer's list) in `dialect`.
    pub(crate) fn new(
        consumer: PopConsumer,
        budget: Option<std::sync::Arc<Budget>>,
        lanes: Vec<Vec<u32>>,
        timing: Timing,
        dialect: D,
    ) -> Self {
        let plan = PopPlan::new(consumer, budget, &lanes, timing, dialect);
        let lanes = lanes
            .into_iter()
            .enumerate()
            .map(|(i, queues)| Lane::new(i, queues))
            .collect();
        Self {
            plan,
            lanes,
            fill_from: 0,
            leased: None,
        }
    }

    /// Fetch connections (lanes) on this shard.
    /// In the lease dialect, what the reply just handled leased: its key's source and how
    /// many elements it took (messages beyond the budget included, which are not handed
    /// out). The messages' `seq` is their place in that reply.
    pub(crate) fn take_leased(&mut self) -> Option<(&'static Source, u64, Option<u64>)> {
        self.leased.take()
    }

    /// How many keys lane `lane` fetches from (queues × priority levels).
    pub(crate) fn lane_keys(&self, lane: usize) -> usize {
        self.lanes.get(lane).map_or(0, |l| l.key_count(&self.plan))
    }

    pub(crate) fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// The consumer's tables.
    pub(crate) fn plan(&self) -> &PopPlan<D> {
        &self.plan
    }

    /// The dialect, to change what later fetches carry (reliable mode's fence token).
    pub(crate) fn dialect_mut(&mut self) -> &mut D {
        &mut self.plan.dialect
    }

    /// Sends the messages connection `id`'s lane popped beyond the budget back to the
    /// right end of their lists, where they came from. They are in pop order (rightmost
    /// first, across all of the lane's replies), so walking them from the end and pushing
    /// each run of one key last-to-first with RPUSH leaves every list as it was before
    /// the pops.
    fn push_back<C: CarriesPop>(&mut self, io: &mut Io<C>, id: usize, lane: usize, now: Instant) {
        let back = std::mem::take(&mut self.lanes[lane].returns);
        let allow = io.reply_timeout();
        let mut end = back.len();
        while end > 0 {
            let key = back[end - 1].key();
            let mut begin = end - 1;
            while begin > 0 && back[begin - 1].key() == key {
                begin -= 1;
            }
            let run = &back[begin..end];
            let count = run.len() as u32;
            io.conn_mut(id).command(
                Tag::Pipe(C::from_pop(PopTag::PushBack { count })),
                now,
                allow,
                |buf| {
                    CommandWriter::new(buf, 2 + run.len())
                        .arg("RPUSH")
                        .arg(key)
                        .args(run.iter().rev().map(|m| m.payload()))
                        .finish();
                },
            );
            end = begin;
        }
    }

    /// A pop answered on connection `id`: its messages go to `out`, anything popped
    /// beyond the budget goes back to the server.
    fn on_pop_reply<'f, C: CarriesPop>(
        &mut self,
        io: &mut Io<C>,
        id: usize,
        pop: PopCmd,
        frame: &'f Bytes,
        out: &mut Vec<Message<'f>>,
        now: Instant,
    ) -> Result<u64, Failure> {
        let lane = io.lane_of_reply(id)?;
        let unblock_sent = io.conn_mut(id).take_unblock_sent();
        let start = out.len();
        let reply =
            self.lanes[lane].on_reply(&self.plan, frame, pop, io.turn_ns(), io.credits(), out)?;
        if let Some(text) = &reply.unblocked {
            if !unblock_sent {
                // Not ours: an administrator's CLIENT UNBLOCK, or a role change (the
                // server became a replica). The next pop tells which: a replica refuses
                // it with READONLY, and the connection then reconnects with backoff.
                tracing::warn!(
                    conn = %io.conn(id).name(),
                    "{} ended a blocked pop: {}; popping again",
                    io.conn(id).peer(),
                    String::from_utf8_lossy(text)
                );
            }
        }
        if D::LEASES {
            self.leased = out
                .get(start)
                .map(|m| (m.source, (out.len() - start) as u64, reply.head));
        }
        if reply.excess > 0 && D::LEASES {
            // Leased beyond the budget: they stay in the processing list, and go back to
            // the queue with the rest of it when the consumer stops.
            out.truncate(reply.count as usize);
        } else if reply.excess > 0 {
            let kept = reply.count as usize;
            let excess = out.drain(kept..).map(|m| m.detach());
            self.lanes[lane].returns.extend(excess);
        }
        let conn = &io.conn(id);
        let pops_left = if conn.draining().is_some() {
            conn.any_cmd(is_pop)
        } else {
            self.lanes[lane].in_flight() > 0
        };
        if !pops_left && !self.lanes[lane].returns.is_empty() {
            self.push_back(io, id, lane, now);
        }
        let s = &io.stats();
        s.add(&s.pops, 1);
        if reply.count == 0 {
            s.add(&s.empty_pops, 1);
        }
        if pop.late {
            s.add(&s.late_messages, u64::from(reply.count));
        }
        debug_assert_eq!(out.len(), reply.count as usize);
        Ok(reply.bytes)
    }
}

impl<D: Dialect> PopPipeline<D> {
    /// Lets every lane queue the pops its credit allows on its ready connection. The
    /// starting connection rotates each turn, so none is always first to the shared part
    /// of the credit (each lane's own reserve is its own whatever the order).
    pub(crate) fn fill_lanes<C: CarriesPop>(&mut self, io: &mut Io<C>, now: Instant) {
        for id in io.fill_order(&mut self.fill_from) {
            let Some(lane_id) = io.fetching(id).map(FetchLane::index) else {
                continue;
            };
            let Some(lane) = self.lanes.get_mut(lane_id) else {
                continue;
            };
            if !lane.returns.is_empty() && lane.in_flight() == 0 {
                // Messages popped beyond the budget wait to go back (no pop is sent
                // meanwhile). Normally the reply that brought them sends them; if that
                // was a stalled connection lost before its last pop answered, nothing
                // would: once no pop of the lane is still owed anywhere, send them here.
                let owed = io.conns().iter().any(|c| {
                    c.role() == io.conn(id).role()
                        && c.draining().is_some()
                        && c.phase() == Phase::Ready
                        && c.any_cmd(is_pop)
                });
                if !owed {
                    self.push_back(io, id, lane_id, now);
                }
                continue;
            }
            let (conn, credits) = io.conn_and_credits(id);
            lane.fill(&self.plan, conn, credits, now);
        }
    }

    pub(crate) fn reply<'f, C: CarriesPop>(
        &mut self,
        io: &mut Io<C>,
        conn: usize,
        cmd: PopTag,
        frame: &'f Bytes,
        out: &mut Vec<Message<'f>>,
        now: Instant,
    ) -> Result<u64, Failure> {
        match cmd {
            PopTag::Pop(pop) => self.on_pop_reply(io, conn, pop, frame, out, now),
            PopTag::Watch => {
                let lane = io.lane_of_reply(conn)?;
                let found = match Decoder::new().build(frame) {
                    Ok(Frame::Integer(n)) => Some(n),
                    Ok(f) => {
                        // Refused (an ACL without EXISTS, a renamed command): watching
                        // cannot work on this connection, and retrying it would spin.
                        tracing::warn!(
                            conn = %io.conn(conn).name(),
                            "EXISTS over the lane's queues answered {f:?}: this lane stops \
                             watching them and blocks on one, checking the others every \
                             idle-check"
                        );
                        None
                    }
                    Err(e) => {
                        return Err(Failure::Fatal(Error::protocol(&io.conn(conn).peer(), e)))
                    }
                };
                if let Some(l) = self.lanes.get_mut(lane) {
                    match found {
                        Some(n) => l.watched(n),
                        None => l.watch_refused(),
                    }
                }
                Ok(0)
            }
            PopTag::PushBack { count } => {
                let c = &io.conn(conn);
                match Decoder::new().build(frame) {
                    Ok(Frame::Integer(_)) => {
                        tracing::debug!(conn = %c.name(), count, "pushed back messages beyond the limit");
                    }
                    Ok(f) => tracing::error!(
                        conn = %c.name(),
                        "{count} message(s) beyond the limit could not be pushed back to {}: {f:?}; they are lost",
                        c.peer()
                    ),
                    Err(e) => return Err(Failure::Fatal(Error::protocol(&c.peer(), e))),
                }
                Ok(0)
            }
        }
    }

    pub(crate) fn outcomes<C: CarriesPop>(
        &mut self,
        io: &mut Io<C>,
        conn: Option<usize>,
        msgs: &[Message<'_>],
        _outcomes: &[Outcome],
        bytes: u64,
    ) {
        // At-most-once: the messages left the server when they were popped; an outcome
        // only gives their credit back (the shard counts it). Pop stages nothing, so
        // every batch came in on a connection.
        if let Some(lane) = conn.and_then(|c| io.fetch_of(c)) {
            io.credits().release(lane.index(), msgs.len() as u32, bytes);
        }
    }

    pub(crate) fn worker_outcome<C: CarriesPop>(&mut self, io: &mut Io<C>, msg: &Message<'static>) {
        let len = msg.payload().len() as u64;
        io.credits()
            .release(self.plan.lane_of(msg.source.index), 1, len);
    }
}

impl Pipeline for PopPipeline<Popping> {
    type Cmd = PopTag;

    fn fetch_connections(&self) -> usize {
        self.lanes.len()
    }

    fn control(&self) -> ControlUse {
        // Only a stop needs it (CLIENT UNBLOCK): a server with room for the fetch
        // connections alone still serves.
        ControlUse::OnDemand
    }

    /// Lets every lane queue the pops its credit allows on its ready connection.
    fn fill(&mut self, io: &mut Io<PopTag>, now: Instant) {
        self.fill_lanes(io, now);
    }

    fn on_reply<'f>(
        &mut self,
        io: &mut Io<PopTag>,
        conn: usize,
        cmd: PopTag,
        frame: &'f Bytes,
        out: &mut Vec<Message<'f>>,
        now: Instant,
    ) -> Result<u64, Failure> {
        self.reply(io, conn, cmd, frame, out, now)
    }

    fn on_outcomes(
        &mut self,
        io: &mut Io<PopTag>,
        conn: Option<usize>,
        msgs: &[Message<'_>],
        outcomes: &[Outcome],
        bytes: u64,
    ) {
        self.outcomes(io, conn, msgs, outcomes, bytes);
    }

    fn on_worker_outcome(
        &mut self,
        io: &mut Io<PopTag>,
        msg: &Message<'static>,
        _outcome: Outcome,
    ) {
        self.worker_outcome(io, msg);
    }

    fn owes_effects(&self, _cmd: &PopTag) -> bool {
        // A pop's reply carries messages already gone from the server; a push-back puts
        // messages back. Either is lost if its connection closes unanswered.
        true
    }

    fn blocks(&self, cmd: &PopTag) -> bool {
        cmd.blocks()
    }

    fn on_stalled(&mut self, io: &mut Io<PopTag>, conn: usize) -> String {
        self.stalled(io, conn)
    }

    fn on_lost(&mut self, io: &mut Io<PopTag>, conn: usize, unanswered: &[PopTag], stalled: bool) {
        self.lost(io, conn, unanswered, stalled);
    }

    fn on_stop(&mut self, _io: &mut Io<PopTag>, _now: Instant) -> Drain {
        // Blocked pops are unblocked by the shard; push-backs ride on fetch connections,
        // which stay open until they are answered.
        Drain::Drained
    }
}

//! The stream pipeline (delivery mode `stream`, at-least-once): one consumer of a Redis
//! Streams consumer group over one or more streams.
//!
//! - **Reading.** Streams are spread over the fetch connections like pop's queues. Each
//!   connection reads `XREADGROUP GROUP g c COUNT n STREAMS s… >…` — non-blocking and
//!   pipelined while there is backlog, one `BLOCK` read when dry — with the stream order
//!   rotated each reply. COUNT is per stream, so a read names at most as many streams
//!   as its credit grant has messages, and asks each for its share.
//! - **Own pending entries first.** At start (after `XGROUP CREATE … MKSTREAM` on
//!   Control) and after a read was lost with its connection, nothing new is read until
//!   this consumer's pending entries are read again (the fetch script, `own`, on Control,
//!   from id 0 onwards): a restart with the same id waits for no timeout. After a lost
//!   read this waits until every message in hand is settled, so what it finds is only
//!   what the lost replies carried (and entries waiting for a retry, which are skipped).
//! - **Outcomes** on Control, batched per stream per loop turn: `Ack` is one `XACK` with
//!   every id (or XACK + XDEL / XACKDEL with `delete_on_ack`); `Dead` — or a `Retry` on the
//!   last allowed delivery — the dead script (XACK + XADD to `{s}:dead`, atomic); `Retry`
//!   leaves the entry pending and schedules it: when due, `XCLAIM … 0 id…` to this
//!   consumer redelivers it (the server counts the delivery).
//! - **Claiming from dead consumers.** Every half lease, the fetch script in `claim` mode
//!   (XAUTOCLAIM with min-idle = the lease, following the cursor to `0-0`), with delivery
//!   counts from XPENDING; deleted ids are counted. Where the server's XREADGROUP takes
//!   `CLAIM` (Redis ≥ 8.4, probed with `COMMAND DOCS`), the reads claim idle entries
//!   themselves, with their delivery counts, and the loop is off.
//! - **Tags.** An entry whose tag does not pass its stream's filter is acknowledged
//!   without reaching the handler (`Stats::filtered`).
//! - **Visibility.** `XINFO GROUPS` every second: the group's lag and pending count in
//!   `Stats`.

mod config;
mod control;
mod lane;
mod reply;
mod scripts;

use std::collections::{BinaryHeap, HashMap};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringq_resp::CommandWriter;

use super::alo::{require_version, Policy, Rng, SettleQueue, Stage, Verdict};
use super::{ControlUse, Drain, Io, Pipeline, Timing};
use crate::budget::Budget;
use crate::conn::{Failure, Tag};
use crate::credit::Grant;
use crate::handler::{Message, Outcome, Source, SourceKind};
use crate::intern::intern_source;

pub use config::{StartAt, StreamConsumer, StreamKey};
use lane::{Lane, ReadCmd};

/// A stream-mode command awaiting its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamTag {
    /// XREADGROUP `>` on a fetch connection.
    Read(ReadCmd),
    /// `SCRIPT LOAD` of script `n`.
    Load(u8),
    /// `XGROUP CREATE` of stream `s`.
    Create { s: u32 },
    /// `COMMAND INFO XACKDEL`.
    Probe,
    /// `COMMAND DOCS XREADGROUP`: whether it takes `CLAIM` (Redis ≥ 8.4).
    ProbeClaim,
    /// The fetch script for stream `s` (own pending entries, or claims), holding credit.
    Fetch {
        s: u32,
        own: bool,
        count: u32,
        bytes: u64,
    },
    /// XCLAIM of due retries of stream `s`, holding credit.
    Claim { s: u32, count: u32, bytes: u64 },
    /// The oldest command in the settle queue (XACK, XACKDEL or the dead script).
    Settle,
    /// `XINFO GROUPS` of stream `s`.
    Info { s: u32 },
}

/// The tables shared by a shard's lanes and parsers.
pub(crate) struct StreamPlan {
    pub consumer: StreamConsumer,
    pub sources: Vec<&'static Source>,
    pub index: HashMap<Bytes, u32>,
    /// The shard-local lane of each stream (`usize::MAX`: another shard's).
    pub lane_of: Vec<usize>,
    pub block_ms: Bytes,
    pub budget: Option<Arc<Budget>>,
    pub timing: Timing,
}

/// Per-stream state on this shard.
#[derive(Default)]
struct StreamState {
    mine: bool,
    /// While own pending entries are read again: the cursor (`0` at first).
    own: Option<Vec<u8>>,
    /// While claims go on: the XAUTOCLAIM cursor.
    claim: Option<Vec<u8>>,
    /// A fetch script or XCLAIM of this stream is in flight.
    busy: bool,
    acks: Vec<Bytes>,
    deads: Vec<(Bytes, String, u32)>,
    lag: u64,
    pending: u64,
}

/// A retry waiting for its time.
#[derive(Debug, PartialEq, Eq)]
struct Due {
    at: Instant,
    s: u32,
    id: Bytes,
    /// Deliveries so far.
    deliveries: u32,
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.at.cmp(&self.at).then_with(|| other.id.cmp(&self.id))
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// A settle command sent and unanswered, kept to be sent again if Control is lost.
enum Sent {
    Ack {
        s: u32,
        ids: Vec<Bytes>,
    },
    Dead {
        s: u32,
        items: Vec<(Bytes, String, u32)>,
    },
}

impl Sent {
    /// The stream it settles.
    fn stream(&self) -> u32 {
        match self {
            Sent::Ack { s, .. } | Sent::Dead { s, .. } => *s,
        }
    }
}

const TIMER_CLAIM: u32 = 1;
const TIMER_INFO: u32 = 2;
const INFO_PERIOD: Duration = Duration::from_secs(1);
/// Most ids in one XACK or script call (Lua's `unpack` has a limit).
const MAX_IDS: usize = 1000;

/// The stream pipeline of one shard.
pub(crate) struct StreamPipeline {
    plan: StreamPlan,
    lanes: Vec<Lane>,
    streams: Vec<StreamState>,
    stage: Stage,
    outstanding: u64,
    settle: SettleQueue<Sent>,
    retries: BinaryHeap<Due>,
    /// Deliveries of ids being redelivered by XCLAIM.
    redeliver: HashMap<Bytes, u32>,
    filtered: Vec<(u32, Range<usize>)>,
    xackdel: bool,
    /// The server's XREADGROUP takes `CLAIM min-idle`: reads claim idle entries, and the
    /// XAUTOCLAIM loop is not needed.
    claim_in_read: bool,
    timers_on: bool,
    policy: Policy,
    rng: Rng,
    fill_from: usize,
}

impl StreamPipeline {
    /// The stream pipeline of a shard whose lane `l` reads the streams `lanes[l]`.
    pub(crate) fn new(
        consumer: &StreamConsumer,
        budget: Option<Arc<Budget>>,
        lanes: Vec<Vec<u32>>,
        timing: Timing,
    ) -> Self {
        let sources = consumer
            .streams
            .iter()
            .enumerate()
            .map(|(i, s)| intern_source(SourceKind::Stream, &s.name, &s.name, 0, i as u32))
            .collect();
        let index = consumer
            .streams
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i as u32))
            .collect();
        let mut lane_of = vec![usize::MAX; consumer.streams.len()];
        let mut streams: Vec<StreamState> = (0..consumer.streams.len())
            .map(|_| StreamState::default())
            .collect();
        for (l, members) in lanes.iter().enumerate() {
            for &s in members {
                lane_of[s as usize] = l;
                streams[s as usize].mine = true;
            }
        }
        let plan = StreamPlan {
            consumer: consumer.clone(),
            sources,
            index,
            lane_of,
            block_ms: Bytes::from(consumer.block_timeout.as_millis().max(1).to_string()),
            budget,
            timing,
        };
        Self {
            lanes: lanes
                .into_iter()
                .enumerate()
                .map(|(i, m)| Lane::new(i, m))
                .collect(),
            plan,
            streams,
            stage: Stage::Setup,
            outstanding: 0,
            settle: SettleQueue::default(),
            retries: BinaryHeap::new(),
            redeliver: HashMap::new(),
            filtered: Vec::new(),
            xackdel: false,
            claim_in_read: false,
            timers_on: false,
            policy: Policy {
                max_deliveries: consumer.max_deliveries,
                backoff: consumer.backoff.clone(),
            },
            rng: Rng::seeded(consumer.streams.len() as u64),
            fill_from: 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn plan(&self) -> &StreamPlan {
        &self.plan
    }

    fn mine(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.streams.len() as u32).filter(|&s| self.streams[s as usize].mine)
    }

    fn name(&self, s: u32) -> &Bytes {
        &self.plan.consumer.streams[s as usize].name
    }

    /// Entries filtered out by tag in the reply just parsed: acknowledged.
    fn take_filtered(&mut self, io: &mut Io<StreamTag>, frame: &Bytes) {
        if self.filtered.is_empty() {
            return;
        }
        io.stats()
            .add(&io.stats().filtered, self.filtered.len() as u64);
        for (s, at) in self.filtered.drain(..) {
            self.streams[s as usize].acks.push(frame.slice(at));
        }
    }

    fn record(&mut self, msg: &Message<'_>, outcome: Outcome) {
        let s = msg.source.index;
        let id = Bytes::copy_from_slice(msg.aux());
        let d = msg.deliveries();
        match self.policy.verdict(outcome, d, &mut self.rng) {
            Verdict::Ack => self.streams[s as usize].acks.push(id),
            Verdict::Retry { delay } => self.retries.push(Due {
                at: Instant::now() + delay.min(self.plan.consumer.lease / 2),
                s,
                id,
                deliveries: d,
            }),
            Verdict::Dead { reason } => self.streams[s as usize].deads.push((id, reason, d)),
        }
    }

    /// Every outcome recorded is applied on the server, and no claim or own-entry read is
    /// in flight.
    fn settled(&self) -> bool {
        self.settle.is_empty()
            && self
                .streams
                .iter()
                .all(|s| s.acks.is_empty() && s.deads.is_empty() && !s.busy)
    }

    /// Everything handed out is settled and no read is in flight anywhere.
    fn quiet(&self, io: &Io<StreamTag>) -> bool {
        self.outstanding == 0 && self.settled() && !io.any_cmd(|t| matches!(t, StreamTag::Read(_)))
    }
}

impl Pipeline for StreamPipeline {
    type Cmd = StreamTag;

    fn fetch_connections(&self) -> usize {
        self.lanes.len()
    }

    fn control(&self) -> ControlUse {
        ControlUse::Always
    }

    const CONTROL_PER_NODE: bool = true;

    fn on_ready(&mut self, io: &mut Io<StreamTag>, conn: usize, now: Instant) {
        let allow = io.reply_timeout();
        if !require_version(io, conn, (6, 2, 0), "stream mode (XAUTOCLAIM)") {
            return;
        }
        if !io.is_control(conn) {
            return;
        }
        scripts::SET.load(io.conn_mut(conn), now, allow, StreamTag::Load);
        if !std::mem::replace(&mut self.timers_on, true) {
            io.timer(now + self.plan.consumer.lease / 2, TIMER_CLAIM);
            io.timer(now + INFO_PERIOD, TIMER_INFO);
        }
    }

    fn fill(&mut self, io: &mut Io<StreamTag>, now: Instant) {
        self.flush(io, now);
        if matches!(self.stage, Stage::Recovering(..))
            && self.streams.iter().all(|s| s.own.is_none() && !s.busy)
        {
            self.stage = Stage::Running;
        }
        if self.stage != Stage::Running {
            return;
        }
        for id in io.fill_order(&mut self.fill_from) {
            let Some(l) = io.fetching(id) else { continue };
            if let Some(lane) = self.lanes.get_mut(l.index()) {
                let (conn, credits) = io.conn_and_credits(id);
                lane.fill(&self.plan, self.claim_in_read, conn, credits, now);
            }
        }
    }

    fn on_reply<'f>(
        &mut self,
        io: &mut Io<StreamTag>,
        conn: usize,
        cmd: StreamTag,
        frame: &'f Bytes,
        out: &mut Vec<Message<'f>>,
        _now: Instant,
    ) -> Result<u64, Failure> {
        let before = out.len();
        let bytes = match cmd {
            StreamTag::Read(read) => {
                let l = io.lane_of_reply(conn)?;
                let r = self.lanes[l].on_reply(
                    &self.plan,
                    read,
                    frame,
                    io.turn_ns(),
                    io.credits(),
                    out,
                    &mut self.filtered,
                );
                self.take_filtered(io, frame);
                r?.bytes
            }
            StreamTag::Fetch {
                s,
                own,
                count,
                bytes,
            } => self.on_fetched(io, s, own, Grant { count, bytes }, frame, out)?,
            StreamTag::Claim { s, count, bytes } => {
                self.on_claimed(io, s, Grant { count, bytes }, frame, out)?
            }
            _ => {
                self.on_control(io, conn, cmd, frame)?;
                0
            }
        };
        self.outstanding += (out.len() - before) as u64;
        Ok(bytes)
    }

    fn on_outcomes(
        &mut self,
        io: &mut Io<StreamTag>,
        _conn: Option<usize>,
        msgs: &[Message<'_>],
        outcomes: &[Outcome],
        _bytes: u64,
    ) {
        self.outstanding = self.outstanding.saturating_sub(msgs.len() as u64);
        for (m, &o) in msgs.iter().zip(outcomes) {
            let lane = self.plan.lane_of[m.source.index as usize];
            io.credits().release(lane, 1, m.payload().len() as u64);
            self.record(m, o);
        }
    }

    fn on_worker_outcome(
        &mut self,
        io: &mut Io<StreamTag>,
        msg: &Message<'static>,
        outcome: Outcome,
    ) {
        self.outstanding = self.outstanding.saturating_sub(1);
        let lane = self.plan.lane_of[msg.source.index as usize];
        io.credits().release(lane, 1, msg.payload().len() as u64);
        self.record(msg, outcome);
    }

    fn blocks(&self, cmd: &StreamTag) -> bool {
        matches!(cmd, StreamTag::Read(r) if r.blocking)
    }

    fn on_lost(
        &mut self,
        io: &mut Io<StreamTag>,
        conn: usize,
        unanswered: &[StreamTag],
        _stalled: bool,
    ) {
        let mut reads = 0;
        for cmd in unanswered {
            match *cmd {
                StreamTag::Read(r) => {
                    reads += 1;
                    if let Some(l) = io.fetch_of(conn) {
                        self.lanes[l.index()].forget(&self.plan, r, io.credits());
                    }
                }
                StreamTag::Fetch {
                    s, count, bytes, ..
                }
                | StreamTag::Claim { s, count, bytes } => {
                    reads += 1;
                    self.streams[s as usize].busy = false;
                    io.credits()
                        .release(self.plan.lane_of[s as usize], count, bytes);
                }
                StreamTag::Create { .. } | StreamTag::Probe | StreamTag::ProbeClaim => {
                    self.stage = Stage::Setup;
                }
                _ => {}
            }
        }
        if let Some(l) = io.fetch_of(conn) {
            self.lanes[l.index()].reset();
        } else {
            // XACK and the dead script only act on entries still pending: sending an
            // answered batch again changes nothing.
            self.settle
                .control_lost(io.control_index(conn).unwrap_or(0));
        }
        if reads > 0 {
            tracing::info!(
                conn = %io.conn(conn).name(),
                "{reads} read(s) unanswered: their entries are pending with this consumer and \
                 are read again once the messages in hand are settled"
            );
        }
        // Any loss, not only unanswered reads: the server may have lost acks it took (a
        // failover to a replica that had not received them, a restart without fsync),
        // leaving settled entries pending with this consumer. Reading its own pending
        // entries again delivers them again rather than leaving them stuck.
        if matches!(self.stage, Stage::Running | Stage::Recovering(..)) {
            self.stage = Stage::Orphaned;
        }
    }

    fn on_timer(&mut self, io: &mut Io<StreamTag>, id: u32, now: Instant) {
        let allow = io.reply_timeout();
        match id {
            TIMER_CLAIM => {
                io.timer(now + self.plan.consumer.lease / 2, TIMER_CLAIM);
                if self.claim_in_read {
                    return;
                }
                for st in self.streams.iter_mut().filter(|s| s.mine) {
                    st.claim.get_or_insert_with(|| b"0-0".to_vec());
                }
            }
            _ => {
                io.timer(now + INFO_PERIOD, TIMER_INFO);
                let mine: Vec<u32> = self.mine().collect();
                for s in mine {
                    let Some(ctl) = io.control_ready_at(self.stream_control(io, s)) else {
                        continue;
                    };
                    let name = &self.plan.consumer.streams[s as usize].name;
                    ctl.command(Tag::Pipe(StreamTag::Info { s }), now, allow, |buf| {
                        CommandWriter::new(buf, 3)
                            .arg("XINFO")
                            .arg("GROUPS")
                            .arg(name)
                            .finish();
                    });
                }
            }
        }
    }

    fn on_stop(&mut self, io: &mut Io<StreamTag>, now: Instant) -> Drain {
        self.flush(io, now);
        if self.outstanding == 0 && self.settled() {
            Drain::Drained
        } else {
            Drain::Waiting
        }
    }
}

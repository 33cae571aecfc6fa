//! The reliable pipeline (delivery mode `reliable`, at-least-once list queues).
//!
//! - **Fetch = lease.** The pop pipeline's lanes, rotation, weights, priority levels,
//!   hot set, credits and budget, with the lease dialect (`pop::Leasing`): a non-blocking pop
//!   is the lease script (`RPOP q n` + `LPUSH {q}:leased:<id>`, one atomic step, under
//!   this run's fence token in `{q}:lease:<id>`); a dry lane waits without moving
//!   anything (`BLMOVE k k RIGHT RIGHT`, or key tracking). The element in the leased
//!   list is the lease; every lease reads the list's head position back, and the engine
//!   numbers its elements from it (`alo::Held`), so an element it did not lease is
//!   never settled in place of its own.
//! - **Outcomes** (`settle.rs`) are batched per key per loop turn and sent on the Control
//!   connection as one settle script each, by position: the tail moves past every run of
//!   settled elements (one `LTRIM`), an ack out of order overwrites its element with a
//!   marker, retries go into `{q}:retry` with backoff and deads into `{q}:dead`, capped,
//!   rebuilt on the server from a new header and the element's payload. No payload
//!   travels back. An outcome carrying another run's token does nothing and is reported:
//!   fencing (another consumer took this one's leases back after its lease ran out). A
//!   settle lost with Control is sent again: every step is idempotent.
//! - **Liveness** (on Control, by timers): the heartbeat `{q}:consumer:<id>` every third
//!   of the lease; the recovery sweep of consumers whose heartbeat expired every half
//!   lease, under a lock; due retries moved back.
//! - **Stages** (the at-least-once core's [`Stage`]). At start the consumer takes back its own processing lists (a restart
//!   with the same id); only then does it lease. A fetch connection lost with leases
//!   unanswered leaves their elements in the processing list, unseen: leasing pauses
//!   until every message in hand is settled, then the lists (now only those orphans) are
//!   taken back, and leasing resumes. A stop does the same after the last outcome, then
//!   deletes the heartbeat.

mod config;
mod control;
mod pipeline;
pub(crate) mod scripts;
mod settle;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;

use super::alo::{now_ms, Policy, Recovery, Rng, SettleQueue, Stage, Verdict};
use super::pop::{secs_arg, CarriesPop, Leasing, PopPipeline, PopTag};
use super::{Io, Start, Timing};
use crate::budget::Budget;
use crate::envelope::keys;
use crate::envelope::keys::legacy;
use crate::error::Error;
use crate::handler::{Message, Outcome, Source};

use super::alo::Held;
pub use config::ReliableConsumer;
use settle::Batch;

/// A reliable-mode command awaiting its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RelTag {
    /// A lease (the pop lanes' command).
    Pop(PopTag),
    /// `SCRIPT LOAD` of script `n` (see [`scripts::SET`]).
    Load(u8),
    /// The settle script of the oldest batch in the settle queue.
    Settle,
    /// The recover script of queue `queue` (its index on this shard) in `mode`.
    /// `round`: which sending of a recovery it belongs to (replies of an earlier one,
    /// from a Control not lost, are not counted toward a later one).
    Recover { queue: u32, mode: Mode, round: u8 },
    /// Due retries of key `key` (its index on this shard) moved back; `gen`: the key's
    /// retry generation when it was sent.
    Requeue { key: u32, gen: u32 },
    /// `CONFIG GET maxmemory-policy`.
    Policy,
    /// `CLIENT TRACKING ON NOLOOP` on a fetch connection whose lane has several keys.
    Tracking,
}

/// What a recover script does (see [`scripts::RECOVER`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Beat,
    Start,
    Orphans,
    Stop,
    Sweep,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Beat => "beat",
            Mode::Start => "start",
            Mode::Orphans => "orphans",
            Mode::Stop => "stop",
            Mode::Sweep => "sweep",
        }
    }
}

impl RelTag {
    /// What the command is, for messages.
    fn what(self) -> &'static str {
        match self {
            RelTag::Pop(_) => "lease",
            RelTag::Load(_) => "SCRIPT LOAD",
            RelTag::Settle => "settle script (acks, retries, dead letters)",
            RelTag::Recover { .. } => "recover script (heartbeat, sweep, taking leases back)",
            RelTag::Requeue { .. } => "requeue script (due retries)",
            RelTag::Policy => "CONFIG GET maxmemory-policy",
            RelTag::Tracking => "CLIENT TRACKING ON NOLOOP",
        }
    }
}

impl CarriesPop for RelTag {
    fn from_pop(t: PopTag) -> Self {
        RelTag::Pop(t)
    }

    fn as_pop(&self) -> Option<PopTag> {
        match self {
            RelTag::Pop(t) => Some(*t),
            _ => None,
        }
    }

    fn as_pop_mut(&mut self) -> Option<&mut PopTag> {
        match self {
            RelTag::Pop(t) => Some(t),
            _ => None,
        }
    }
}

impl From<Recovery> for Mode {
    fn from(r: Recovery) -> Self {
        match r {
            Recovery::Start => Mode::Start,
            Recovery::Orphans => Mode::Orphans,
            Recovery::Stop => Mode::Stop,
        }
    }
}

const TIMER_BEAT: u32 = 1;
const TIMER_SWEEP: u32 = 2;
const TIMER_REQUEUE: u32 = 3;

/// Most due retries one requeue script moves.
const REQUEUE_MAX: i64 = 1000;

/// A queue of this shard, with the names of its keys.
struct QueueKeys {
    name: Bytes,
    heartbeat: Bytes,
    consumers: Bytes,
    sweep: Bytes,
    heartbeat_prefix: Bytes,
    /// ringq 0.1's consumer set and heartbeat prefix (swept too).
    legacy_consumers: Bytes,
    legacy_heartbeat_prefix: Bytes,
    /// Its keys (priority levels), as indices into `ReliablePipeline::keys`.
    levels: Vec<u32>,
}

/// A queue key of this shard, with its leased list, lease hash, retry set and dead list,
/// and the old names recovery still reads.
struct KeyNames {
    key: Bytes,
    processing: Bytes,
    processing_prefix: Bytes,
    lease: Bytes,
    lease_prefix: Bytes,
    retry: Bytes,
    dead: Bytes,
    legacy_processing_prefix: Bytes,
    legacy_retry: Bytes,
    legacy_dead: Bytes,
}

/// The reliable pipeline of one shard.
pub(crate) struct ReliablePipeline {
    pop: PopPipeline<Leasing>,
    id: Bytes,
    lease: Duration,
    dead_max_len: u32,
    dead_max_age: Duration,
    queues: Vec<QueueKeys>,
    keys: Vec<KeyNames>,
    /// Interned source (by address) → key index.
    key_of: HashMap<usize, u32>,
    /// Outcomes not yet sent, one batch per key.
    pending: Vec<Batch>,
    /// What each key's leased list holds, by position.
    held: Vec<Held>,
    /// Keys whose retry set may hold entries: checked every requeue period until their
    /// set is empty. Set by this consumer's own retries, and for every key at each sweep
    /// (another consumer's retries, left by one that died).
    retries: Vec<bool>,
    /// Per key, bumped by every retry recorded: a requeue reply saying the set is empty
    /// clears `retries` only if no retry was recorded after it was sent.
    retry_gen: Vec<u32>,
    /// This run's fence token: leases and settles carry it; a recovery writes it.
    token: Bytes,
    /// Keys whose batch holds something.
    dirty: Vec<u32>,
    /// Each key's queue (an index into `queues`).
    key_queue: Vec<u32>,
    /// Each queue's fetch lane: its Control is `Io::control_of_lane` of it.
    queue_lane: Vec<u32>,
    /// Recoveries sent so far (see `RelTag::Recover`).
    round: u8,
    /// Batches sent on a Control and unanswered, and those of a lost Control to send
    /// again.
    settle: SettleQueue<Batch>,
    stage: Stage,
    /// Messages handed to the handler without an outcome yet.
    outstanding: u64,
    timers_on: bool,
    policy_checked: bool,
    policy: Policy,
    rng: Rng,
    seq: u64,
}

impl Start for ReliableConsumer {
    type Pipeline = ReliablePipeline;
    const SOURCES: &'static str = "queues";
    const MODE: &'static str = "reliable";

    fn check(&self) -> Result<(), Error> {
        self.pop.check()?;
        super::alo::check_lease(self.lease)?;
        let id = &self.id;
        if id.is_empty()
            || id
                .iter()
                .any(|&b| b.is_ascii_whitespace() || b == b'%' || b == b'{' || b == b'}')
        {
            return Err(Error::config(format!(
                "consumer id {:?} must be non-empty, without spaces, '%' or braces: it is part of key names",
                String::from_utf8_lossy(id)
            )));
        }
        Ok(())
    }

    fn source_names(&self) -> Vec<String> {
        self.pop.queue_names()
    }

    /// Every level's key and the keys reliable mode keeps beside them (processing, retry
    /// and dead per key; heartbeat, consumer set and sweep lock per queue).
    fn source_keys(&self, i: usize) -> Option<Vec<Bytes>> {
        let q = self.pop.queues.get(i)?;
        let mut out: Vec<Bytes> = Vec::new();
        for (_, k) in &q.levels {
            out.push(k.clone());
            out.push(keys::processing(k, &self.id).into());
            out.push(keys::lease(k, &self.id).into());
            out.push(keys::retry(k).into());
            out.push(keys::dead(k).into());
            out.push(legacy::processing(k, &self.id).into());
            out.push(legacy::retry(k).into());
            out.push(legacy::dead(k).into());
        }
        out.push(keys::heartbeat(&q.name, &self.id).into());
        out.push(keys::consumers(&q.name).into());
        out.push(keys::sweep(&q.name).into());
        out.push(legacy::consumers(&q.name).into());
        Some(out)
    }

    /// The queue's levels (waiting messages; not those leased or due for retry).
    fn depth_keys(&self, i: usize) -> Vec<Bytes> {
        self.pop.depth_keys(i)
    }

    fn pipeline(
        &self,
        lanes: Vec<Vec<u32>>,
        budget: Option<std::sync::Arc<Budget>>,
        timing: Timing,
    ) -> ReliablePipeline {
        ReliablePipeline::new(self, budget, lanes, timing)
    }
}

impl ReliablePipeline {
    /// The reliable pipeline of a shard whose lane `l` leases the queues `lanes[l]`.
    pub(crate) fn new(
        consumer: &ReliableConsumer,
        budget: Option<std::sync::Arc<Budget>>,
        lanes: Vec<Vec<u32>>,
        timing: Timing,
    ) -> Self {
        let id = consumer.id.clone();
        let pc = &consumer.pop;
        let processing = pc
            .queues
            .iter()
            .map(|q| {
                q.levels
                    .iter()
                    .map(|(_, k)| {
                        (
                            Bytes::from(keys::processing(k, &id)),
                            Bytes::from(keys::lease(k, &id)),
                        )
                    })
                    .collect()
            })
            .collect();
        let mut rng = Rng::seeded(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ (&id as *const _ as u64),
        );
        let token = new_token(&mut rng);
        let lease = Leasing {
            sha: Bytes::from(scripts::LEASE.sha.clone()),
            processing,
            token: token.clone(),
            poll_secs: secs_arg(consumer.idle_check.min(pc.block_timeout)),
        };
        let mut queues = Vec::new();
        let mut key_names = Vec::new();
        let mut mine: Vec<u32> = lanes.iter().flatten().copied().collect();
        mine.sort_unstable();
        let mut key_queue = Vec::new();
        let mut queue_lane = Vec::new();
        for &qi in &mine {
            let lane = lanes.iter().position(|l| l.contains(&qi)).unwrap_or(0);
            queue_lane.push(lane as u32);
            let q = &pc.queues[qi as usize];
            let mut levels = Vec::new();
            for (_, k) in &q.levels {
                levels.push(key_names.len() as u32);
                key_queue.push(queues.len() as u32);
                key_names.push(KeyNames {
                    key: k.clone(),
                    processing: Bytes::from(keys::processing(k, &id)),
                    processing_prefix: Bytes::from(keys::processing_prefix(k)),
                    lease: Bytes::from(keys::lease(k, &id)),
                    lease_prefix: Bytes::from(keys::lease_prefix(k)),
                    retry: Bytes::from(keys::retry(k)),
                    dead: Bytes::from(keys::dead(k)),
                    legacy_processing_prefix: Bytes::from(legacy::processing_prefix(k)),
                    legacy_retry: Bytes::from(legacy::retry(k)),
                    legacy_dead: Bytes::from(legacy::dead(k)),
                });
            }
            queues.push(QueueKeys {
                name: q.name.clone(),
                heartbeat: Bytes::from(keys::heartbeat(&q.name, &id)),
                consumers: Bytes::from(keys::consumers(&q.name)),
                sweep: Bytes::from(keys::sweep(&q.name)),
                heartbeat_prefix: Bytes::from(keys::heartbeat_prefix(&q.name)),
                legacy_consumers: Bytes::from(legacy::consumers(&q.name)),
                legacy_heartbeat_prefix: Bytes::from(legacy::heartbeat_prefix(&q.name)),
                levels,
            });
        }
        // A lane's wait (`BLMOVE k k RIGHT RIGHT`, which moves nothing) ends well within
        // the lease, so a consumer that comes back from a freeze or a cut learns soon
        // that it was swept.
        let mut pc = pc.clone();
        pc.block_timeout = pc.block_timeout.min(consumer.lease / 3);
        let pop = PopPipeline::new(pc, budget, lanes, timing, lease);
        let mut key_of = HashMap::new();
        for (k, names) in key_names.iter().enumerate() {
            if let Some(source) = pop.plan().source_of(&names.key) {
                key_of.insert(source as *const Source as usize, k as u32);
            }
        }
        let seed = &key_of as *const _ as u64;
        Self {
            pop,
            id,
            lease: consumer.lease,
            policy: Policy {
                max_deliveries: consumer.max_deliveries,
                backoff: consumer.backoff.clone(),
            },
            dead_max_len: consumer.dead_max_len,
            dead_max_age: consumer.dead_max_age,
            pending: (0..key_names.len()).map(|_| Batch::default()).collect(),
            held: (0..key_names.len()).map(|_| Held::default()).collect(),
            retries: vec![true; key_names.len()],
            retry_gen: vec![0; key_names.len()],
            token,
            keys: key_names,
            queues,
            key_of,
            dirty: Vec::new(),
            key_queue,
            queue_lane,
            round: 0,
            settle: SettleQueue::default(),
            stage: Stage::Recover(Recovery::Start),
            outstanding: 0,
            timers_on: false,
            policy_checked: false,
            rng: Rng::seeded(seed ^ rng.unit().to_bits()),
            seq: 0,
        }
    }

    /// Records one handled message's outcome in its key's batch, by its position.
    fn record(&mut self, msg: &Message<'_>, outcome: Outcome) {
        let Some(&k) = self.key_of.get(&(msg.source as *const Source as usize)) else {
            tracing::error!("an outcome for a message of an unknown key; it stays leased");
            return;
        };
        let Some(pos) = self.held[k as usize].settle(msg.seq) else {
            tracing::error!("an outcome for a message this consumer does not hold; ignored");
            return;
        };
        if self.pending[k as usize].is_empty() {
            self.dirty.push(k);
            self.pending[k as usize].key = k;
        }
        let element = msg.aux();
        // The element's own envelope header, which the server replaces.
        let old_header = element.len().saturating_sub(msg.payload().len());
        let deliveries = msg.deliveries();
        match self.policy.verdict(outcome, deliveries, &mut self.rng) {
            Verdict::Ack => self.pending[k as usize].ack(pos),
            Verdict::Retry { delay } => {
                let due = now_ms() + delay.as_millis() as u64;
                self.retries[k as usize] = true;
                self.retry_gen[k as usize] = self.retry_gen[k as usize].wrapping_add(1);
                let id = self.identity(element);
                self.pending[k as usize].retry(pos, old_header, deliveries, &id, due);
            }
            Verdict::Dead { reason } => {
                let id = self.identity(element);
                self.pending[k as usize].dead(pos, old_header, deliveries, &id, now_ms(), &reason);
            }
        }
    }

    /// The element's id, or a new one (retried copies of equal payloads must differ in
    /// the retry set).
    fn identity(&mut self, element: &[u8]) -> Vec<u8> {
        if let Some(id) = crate::envelope::parse(element).and_then(|e| e.id) {
            return id.to_vec();
        }
        self.seq += 1;
        let r = (self.rng.unit() * (1u64 << 52) as f64) as u64;
        format!(
            "{}-{:x}{:x}",
            String::from_utf8_lossy(&self.id),
            r,
            self.seq
        )
        .into_bytes()
    }

    /// Nothing in hand: every message handed out has its outcome applied, and no lease
    /// is in flight on any connection.
    /// A connection was lost: leases may be unanswered, and the server may have lost
    /// writes it acknowledged (a failover to a replica that had not received them, a
    /// restart without fsync), leaving acked messages in this consumer's processing
    /// lists. Once the messages in hand are settled, everything still there goes back to
    /// its queue (`Recovery::Orphans`): delivered again, never stuck.
    fn suspect_lost_writes(&mut self) {
        if self.stage == Stage::Running {
            self.stage = Stage::Orphaned;
        }
    }

    /// The Control that carries queue `q`'s commands: on its slot's node in a cluster.
    fn queue_control<C: CarriesPop>(&self, io: &Io<C>, q: usize) -> usize {
        io.control_of_lane(self.queue_lane[q] as usize)
    }

    /// The Control that carries key `k`'s settles and requeues.
    fn key_control<C: CarriesPop>(&self, io: &Io<C>, k: usize) -> usize {
        self.queue_control(io, self.key_queue[k] as usize)
    }

    fn quiet<C: CarriesPop>(&self, io: &Io<C>) -> bool {
        self.outstanding == 0
            && self.dirty.is_empty()
            && self.settle.is_empty()
            && !io.any_cmd(|t| matches!(t.as_pop(), Some(PopTag::Pop(_))))
    }
}

impl ReliablePipeline {
    /// How often due retries are looked for: a quarter of the shortest backoff, between
    /// 10 ms and 1 s.
    fn requeue_period(&self) -> Duration {
        (self.policy.backoff.shortest() / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// A fence token: 104 random bits as hex. Each recovery that empties the leased lists
/// writes a new one, so a command of an earlier epoch that reaches the server late (sent
/// on a connection given up for dead) is refused.
fn new_token(rng: &mut Rng) -> Bytes {
    Bytes::from(format!(
        "{:013x}{:013x}",
        (rng.unit() * (1u64 << 52) as f64) as u64,
        (rng.unit() * (1u64 << 52) as f64) as u64
    ))
}

impl ReliablePipeline {
    /// A recovery that empties the leased lists is being sent: positions start again at
    /// 0 under a new fence token.
    fn new_epoch(&mut self) {
        self.held.iter_mut().for_each(Held::reset);
        self.token = new_token(&mut self.rng);
        self.pop.dialect_mut().token = self.token.clone();
    }
}

impl Drop for ReliablePipeline {
    fn drop(&mut self) {
        if self.outstanding > 0 || !self.dirty.is_empty() || self.settle.in_flight() > 0 {
            tracing::warn!(
                "reliable consumer stopped with {} message(s) unsettled; they stay in its \
                 processing lists and are delivered again after a restart with the same id, \
                 or by another consumer once the lease runs out",
                self.outstanding + self.settle.in_flight() as u64
            );
        }
    }
}

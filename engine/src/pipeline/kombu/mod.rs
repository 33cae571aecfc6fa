//! The Kombu pipeline (delivery mode `kombu`): Kombu / Celery queues, at-least-once, with
//! Kombu's own records so Python workers and ringq recover each other's messages.
//!
//! - **Fetch = pop and record.** The pop pipeline's lanes (rotation, priority steps, hot
//!   set, credits, budget) with the `Unacking` dialect: a fetch is the `KPOP` script
//!   (`scripts.rs`), which pops a batch and writes each message's record into Kombu's
//!   `unacked` hash and `unacked_index` in the same atomic step, under a field numbered by
//!   the key's counter, and returns the counter (the last number): the engine numbers the
//!   messages from it (`alo::Held`), as reliable mode numbers leases. A dry lane waits
//!   without moving anything (`BLMOVE k k RIGHT RIGHT`, or key tracking).
//! - **Validation.** Each element is parsed as a Kombu envelope before the handler sees
//!   it; one that is not (not JSON, no `body`, bad base64) is dead-lettered with the
//!   reason, and the drain goes on.
//! - **Outcomes** are batched per key per loop turn into one `KSETTLE` on Control: an ack
//!   removes the record; a retry removes it and pushes the message, marked redelivered
//!   with ringq's delivery count, onto the queue's tail; a dead letter moves it to
//!   `{<queue>}:dead`. A record already gone (a Python worker's `restore_visible` took
//!   it: the message was delivered twice) is counted as a stale outcome.
//! - **Renewal.** Every quarter of the visibility timeout the records still held get a
//!   fresh score (`ZADD … XX`), so no `restore_visible` takes a long task back.
//! - **Recovery** (the at-least-once core's stages): at start, after a lost fetch reply
//!   (once nothing is in hand) and at a stop, every record left in this consumer's held
//!   hashes is restored to its key's head, marked redelivered: read (`HGETALL`, `HMGET`),
//!   rewritten here, and pushed by `KSETTLE`, each only if its record is still there.

mod batch;
mod config;
pub(crate) mod scripts;
mod sweep;

use std::collections::HashMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringq_resp::CommandWriter;

use super::alo::{now_ms, Held, Policy, Recovery, Rng, SettleQueue, Stage, Verdict};
use super::pop::{secs_arg, CarriesPop, PopPipeline, PopTag, Unacking};
use super::{Io, Start, Timing};
use crate::budget::Budget;
use crate::conn::Tag;
use crate::error::Error;
use crate::handler::{Message, Outcome, Source};
use crate::kombu;

use batch::{Batch, Restoring, RESTORE_IN_FLIGHT};
pub use config::KombuConsumer;

/// A Kombu-mode command awaiting its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KTag {
    /// A fetch (the pop lanes' command).
    Pop(PopTag),
    /// `SCRIPT LOAD` of script `n`.
    Load(u8),
    /// The settle script of the oldest batch in the settle queue (its last command).
    Settle,
    /// A batch's acks: `HDEL unacked` of `n` fields (fewer removed: stale), then `ZREM
    /// unacked_index` of the same.
    SettleAcks {
        n: u32,
    },
    SettleIndex,
    /// `HSET <held> #tail`: the last command of a batch of acks only.
    SettleTail,
    /// A recovery's `HGETALL` of key `key`'s held hash.
    Held {
        key: u32,
    },
    /// A recovery's `HMGET unacked` of key `key`'s held records.
    Values {
        key: u32,
    },
    /// A recovery's settle script restoring key `key`'s records.
    Restore {
        key: u32,
    },
    /// `ZADD unacked_index XX …`: held records renewed.
    Renew,
    /// `CLIENT TRACKING ON NOLOOP` on a fetch connection of several keys.
    Tracking,
    /// The sweep (`sweep.rs`): `SET unacked_mutex … NX`, the overdue records, their
    /// values, exchange `n`'s bindings, the restore script, the unlock.
    SweepLock,
    SweepList,
    SweepValues,
    SweepBindings {
        n: u32,
    },
    SweepRestore,
    SweepUnlock,
}

impl KTag {
    fn what(self) -> &'static str {
        match self {
            KTag::Pop(_) => "pop script",
            KTag::Load(_) => "SCRIPT LOAD",
            KTag::Settle | KTag::Restore { .. } => {
                "settle script (retries, dead letters, restores)"
            }
            KTag::SettleAcks { .. } | KTag::SettleIndex | KTag::SettleTail => {
                "acks (HDEL unacked, ZREM unacked_index, HSET #tail)"
            }
            KTag::Held { .. } => "HGETALL of its held records",
            KTag::Values { .. } => "HMGET of unacked records",
            KTag::Renew => "ZADD XX of unacked_index (renewal)",
            KTag::Tracking => "CLIENT TRACKING ON NOLOOP",
            KTag::SweepLock
            | KTag::SweepList
            | KTag::SweepValues
            | KTag::SweepBindings { .. }
            | KTag::SweepRestore
            | KTag::SweepUnlock => "restore_visible sweep",
        }
    }
}

impl CarriesPop for KTag {
    fn from_pop(t: PopTag) -> Self {
        KTag::Pop(t)
    }

    fn as_pop(&self) -> Option<PopTag> {
        match self {
            KTag::Pop(t) => Some(*t),
            _ => None,
        }
    }

    fn as_pop_mut(&mut self) -> Option<&mut PopTag> {
        match self {
            KTag::Pop(t) => Some(t),
            _ => None,
        }
    }
}

const TIMER_RENEW: u32 = 1;
const TIMER_SWEEP: u32 = 2;

/// Most records one renewal command names.
const RENEW_CHUNK: usize = 500;

/// A level key of this shard and the names beside it.
struct KeyNames {
    key: Bytes,
    /// Its queue (index into the consumer's) and level: where its floor is in the dialect.
    at: (u32, u32),
    queue: String,
    /// This consumer's held hash of the key: its live record fields, and the counter `#n`.
    held: Bytes,
    dead: Bytes,
    /// The prefix of its record fields: `ringq:<consumer>:<key>:`.
    field: Vec<u8>,
    /// What follows the element in a record: `, "", "<queue>"]`.
    tail: Bytes,
}

/// The Kombu pipeline of one shard.
pub(crate) struct KombuPipeline {
    pop: PopPipeline<Unacking>,
    vt: Duration,
    unacked: Bytes,
    index: Bytes,
    keys: Vec<KeyNames>,
    /// Interned source (by address) → key index.
    key_of: HashMap<usize, u32>,
    held: Vec<Held>,
    pending: Vec<Batch>,
    dirty: Vec<u32>,
    settle: SettleQueue<Batch>,
    stage: Stage,
    /// During a recovery: each key's window being restored.
    restoring: Vec<Restoring>,
    outstanding: u64,
    /// Acks of the batch being answered whose records were gone (stale).
    ack_stale: u64,
    policy: Policy,
    rng: Rng,
    dead_max_len: u32,
    timers_on: bool,
    sweep: sweep::Sweep,
}

impl Start for KombuConsumer {
    type Pipeline = KombuPipeline;
    const SOURCES: &'static str = "queues";
    const MODE: &'static str = "kombu";

    fn check(&self) -> Result<(), Error> {
        if self.names.is_empty() {
            return Err(Error::config("no queues to consume: give at least one"));
        }
        self.pop.check()?;
        let id = &self.id;
        if id.is_empty() || id.iter().any(|&b| b.is_ascii_whitespace() || b == b':') {
            return Err(Error::config(format!(
                "consumer id {:?} must be non-empty, without spaces or ':': it is part of record fields",
                String::from_utf8_lossy(id)
            )));
        }
        super::alo::check_lease(self.visibility_timeout)
    }

    fn source_names(&self) -> Vec<String> {
        self.names.clone()
    }

    fn depth_keys(&self, i: usize) -> Vec<Bytes> {
        self.pop.depth_keys(i)
    }

    fn pipeline(
        &self,
        lanes: Vec<Vec<u32>>,
        budget: Option<std::sync::Arc<Budget>>,
        timing: Timing,
    ) -> KombuPipeline {
        KombuPipeline::new(self, budget, lanes, timing)
    }
}

impl KombuPipeline {
    fn new(
        c: &KombuConsumer,
        budget: Option<std::sync::Arc<Budget>>,
        lanes: Vec<Vec<u32>>,
        timing: Timing,
    ) -> Self {
        let id = String::from_utf8_lossy(&c.id).into_owned();
        let held_of = |k: &Bytes| {
            let mut h = c.kombu_key(&format!("ringq.kombu.held.{id}:")).to_vec();
            h.extend_from_slice(k);
            Bytes::from(h)
        };
        let tail_of = |q: usize| Bytes::from(kombu::record_tail(&c.names[q]));
        let dead_of = |q: usize| {
            c.kombu_key(&String::from_utf8_lossy(&crate::envelope::keys::dead(
                c.names[q].as_bytes(),
            )))
        };
        let held: Vec<Vec<(Bytes, Bytes, Bytes)>> = c
            .pop
            .queues
            .iter()
            .enumerate()
            .map(|(q, queue)| {
                queue
                    .levels
                    .iter()
                    .map(|(_, k)| (held_of(k), tail_of(q), dead_of(q)))
                    .collect()
            })
            .collect();
        let floors = held.iter().map(|l| vec![0; l.len()]).collect();
        let dialect = Unacking {
            sha: Bytes::from(scripts::KPOP.sha.clone()),
            unacked: c.kombu_key("unacked"),
            index: c.kombu_key("unacked_index"),
            held,
            floors,
            field_base: Bytes::from(format!("ringq:{id}:")),
            poll_secs: secs_arg(Duration::from_millis(100).min(c.pop.block_timeout)),
        };
        let mut keys = Vec::new();
        let mut mine: Vec<u32> = lanes.iter().flatten().copied().collect();
        mine.sort_unstable();
        for &q in &mine {
            let queue = &c.names[q as usize];
            let dead = dead_of(q as usize);
            for (level, (_, k)) in c.pop.queues[q as usize].levels.iter().enumerate() {
                let mut field = format!("ringq:{id}:").into_bytes();
                field.extend_from_slice(k);
                field.push(b':');
                keys.push(KeyNames {
                    key: k.clone(),
                    at: (q, level as u32),
                    queue: queue.clone(),
                    held: held_of(k),
                    dead: dead.clone(),
                    field,
                    tail: tail_of(q as usize),
                });
            }
        }
        let pop = PopPipeline::new(c.pop.clone(), budget, lanes, timing, dialect);
        let mut key_of = HashMap::new();
        for (i, k) in keys.iter().enumerate() {
            if let Some(source) = pop.plan().source_of(&k.key) {
                key_of.insert(source as *const Source as usize, i as u32);
            }
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ (&key_of as *const _ as u64);
        let n = keys.len();
        Self {
            pop,
            vt: c.visibility_timeout,
            unacked: c.kombu_key("unacked"),
            index: c.kombu_key("unacked_index"),
            keys,
            key_of,
            held: (0..n).map(|_| Held::default()).collect(),
            pending: (0..n).map(|_| Batch::default()).collect(),
            dirty: Vec::new(),
            settle: SettleQueue::default(),
            stage: Stage::Recover(Recovery::Start),
            restoring: (0..n).map(|_| Restoring::default()).collect(),
            outstanding: 0,
            ack_stale: 0,
            policy: Policy {
                max_deliveries: c.max_deliveries,
                backoff: super::alo::Backoff::default(),
            },
            rng: Rng::seeded(seed),
            dead_max_len: c.dead_max_len,
            timers_on: false,
            sweep: sweep::Sweep::new(
                c.restore_interval,
                c.kombu_key("unacked_mutex"),
                c.kombu_key("ringq.kombu.unrestorable"),
                c.prefix.clone(),
                c.steps.clone(),
                Bytes::from(format!("ringq:{id}:")),
            ),
        }
    }

    /// Key `k`'s next number is at least what its `Held` has numbered: the pop script
    /// never numbers below it (see `KPOP`).
    fn set_floor(&mut self, k: usize) {
        let (q, level) = self.keys[k].at;
        let head = self.held[k].head();
        if let Some(f) = self
            .pop
            .dialect_mut()
            .floors
            .get_mut(q as usize)
            .and_then(|l| l.get_mut(level as usize))
        {
            *f = (*f).max(head);
        }
    }

    /// Key `k`'s batch, marked dirty.
    fn batch(&mut self, k: u32) -> &mut Batch {
        if self.pending[k as usize].is_empty() {
            self.dirty.push(k);
            self.pending[k as usize].key = k;
        }
        &mut self.pending[k as usize]
    }

    /// The key of `msg` and its number, now settled; `None` (logged) for one not held.
    fn settled(&mut self, msg: &Message<'_>) -> Option<(u32, u64)> {
        let Some(&k) = self.key_of.get(&(msg.source as *const Source as usize)) else {
            tracing::error!("an outcome for a message of an unknown key; its record stays");
            return None;
        };
        let Some(pos) = self.held[k as usize].settle(msg.seq) else {
            tracing::error!("an outcome for a message this consumer does not hold; ignored");
            return None;
        };
        Some((k, pos))
    }

    /// Records one handled message's outcome in its key's batch.
    fn record(&mut self, msg: &Message<'_>, outcome: Outcome) {
        let Some((k, pos)) = self.settled(msg) else {
            return;
        };
        let deliveries = msg.deliveries();
        let op = match self.policy.verdict(outcome, deliveries, &mut self.rng) {
            Verdict::Ack => {
                self.batch(k).acks.push(pos);
                return;
            }
            Verdict::Retry { .. } => {
                let e = kombu::redelivered(msg.payload(), deliveries)
                    .unwrap_or_else(|| msg.payload().to_vec());
                (b'l', pos, e)
            }
            Verdict::Dead { reason } => (b'd', pos, dead_entry(msg.payload(), deliveries, &reason)),
        };
        self.batch(k).ops.push(op);
    }

    /// A connection was lost (or the server may have lost writes): once nothing is in
    /// hand, every record left in the held hashes is restored.
    fn suspect_lost_writes(&mut self) {
        if self.stage == Stage::Running {
            self.stage = Stage::Orphaned;
        }
    }

    fn quiet(&self, io: &Io<KTag>) -> bool {
        self.outstanding == 0
            && self.dirty.is_empty()
            && self.settle.is_empty()
            && !io.any_cmd(|t| matches!(t.as_pop(), Some(PopTag::Pop(_))))
    }

    /// Sends what waits for Control: outcome batches (and those of a lost Control again),
    /// and a recovery's first step.
    fn flush(&mut self, io: &mut Io<KTag>, now: Instant) {
        let allow = io.reply_timeout();
        let Some(ctl) = io.control_ready() else {
            return;
        };
        // Kombu mode has one Control (it does not run on a cluster).
        for b in self.settle.take_resend() {
            b.write(ctl, KTag::Settle, self, now, allow);
            self.settle.sent(b, true, 0);
        }
        for k in std::mem::take(&mut self.dirty) {
            let mut b = std::mem::take(&mut self.pending[k as usize]);
            // While writes may have been lost (a failover), `#tail` stays where it is
            // until the recovery that follows has read the window.
            b.tail = (self.stage != Stage::Orphaned).then(|| self.held[k as usize].advance());
            b.write(ctl, KTag::Settle, self, now, allow);
            self.settle.sent(b, false, 0);
        }
        if let Stage::Recover(why) = self.stage {
            for (i, k) in self.keys.iter().enumerate() {
                ctl.command(Tag::Pipe(KTag::Held { key: i as u32 }), now, allow, |buf| {
                    CommandWriter::new(buf, 2)
                        .arg("HGETALL")
                        .arg(&k.held)
                        .finish();
                });
            }
            self.restoring
                .iter_mut()
                .for_each(|r| *r = Restoring::default());
            self.stage = if self.keys.is_empty() {
                Stage::Running
            } else {
                Stage::Recovering(why, self.keys.len() as u32)
            };
        }
    }

    /// Key `key`'s part of the recovery is done.
    fn key_recovered(&mut self) {
        if let Stage::Recovering(why, left) = self.stage {
            self.stage = match (left.saturating_sub(1), why) {
                (0, Recovery::Stop) => Stage::Stopped,
                (0, _) => Stage::Running,
                (n, _) => Stage::Recovering(why, n),
            };
        }
    }

    /// Renews the score of every record still held.
    fn renew(&mut self, io: &mut Io<KTag>, now: Instant) {
        let allow = io.reply_timeout();
        let Some(ctl) = io.control_ready() else {
            return;
        };
        let score = format!("{:.3}", now_ms() as f64 / 1000.0);
        let mut f = Vec::new();
        for (k, names) in self.keys.iter().enumerate() {
            let held: Vec<u64> = self.held[k].unsettled().collect();
            for chunk in held.chunks(RENEW_CHUNK) {
                ctl.command(Tag::Pipe(KTag::Renew), now, allow, |buf| {
                    let mut w = CommandWriter::new(buf, 3 + 2 * chunk.len())
                        .arg("ZADD")
                        .arg(&self.index)
                        .arg("XX");
                    for n in chunk {
                        f.clear();
                        f.extend_from_slice(&names.field);
                        let _ = write!(f, "{n}");
                        w = w.arg(&score).arg(&f);
                    }
                    w.finish();
                });
            }
        }
    }
}

/// A dead-list entry: ringq's envelope header (deliveries, the delivery tag, when and
/// why) and the element as popped, as `ringq dead` reads it.
fn dead_entry(element: &[u8], deliveries: u32, why: &str) -> Vec<u8> {
    let tag = kombu::Incoming::parse(element)
        .ok()
        .and_then(|m| m.delivery_tag().map(str::to_owned));
    let mut out = Vec::with_capacity(element.len() + 96);
    crate::envelope::encode_header(
        &mut out,
        deliveries,
        tag.as_deref().map(str::as_bytes),
        Some((now_ms(), why)),
    );
    out.extend_from_slice(element);
    out
}

mod pipeline;

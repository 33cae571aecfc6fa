//! What a pop consumer is configured with ([`Queue`], [`PopStrategy`], [`PopConsumer`]) and
//! the tables a shard builds from it once ([`PopPlan`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::budget::Budget;
use crate::handler::Source;
use crate::handler::SourceKind;
use crate::intern::intern_source;
use crate::pipeline::Timing;

/// The longest block timeout a pop may have (24 hours). Redis takes the timeout as
/// seconds in a double and refuses values whose milliseconds overflow ("timeout is
/// negative"); a day is far below that and far above any sensible wait.
pub const MAX_BLOCK_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// A list queue, optionally with priority levels.
#[derive(Debug, Clone)]
pub struct Queue {
    pub(crate) name: Bytes,
    /// (priority, key), highest priority first.
    pub(crate) levels: Vec<(u8, Bytes)>,
    pub(crate) weight: u32,
}

impl Queue {
    /// A queue popped from the Redis list `name`.
    pub fn new(name: impl Into<Bytes>) -> Self {
        let name = name.into();
        Self {
            levels: vec![(0, name.clone())],
            name,
            weight: 1,
        }
    }

    /// Splits the queue into priority levels (0–255); the highest non-empty level is served
    /// first. Level 0 is the list `name` itself; level `p` is [`Queue::key_for_priority`].
    pub fn priorities(mut self, levels: impl IntoIterator<Item = u8>) -> Self {
        let mut ps: Vec<u8> = levels.into_iter().collect();
        ps.sort_unstable_by(|a, b| b.cmp(a));
        ps.dedup();
        if ps.is_empty() {
            ps.push(0);
        }
        self.levels = ps.iter().map(|&p| (p, self.key_for_priority(p))).collect();
        self
    }

    /// How many consecutive pops this queue gets before the cycle moves past it (default 1).
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight.max(1);
        self
    }

    /// The queue's name.
    pub fn name(&self) -> &Bytes {
        &self.name
    }

    /// The Redis key that holds priority level `p`: the name itself for 0, else
    /// `{name}:p<p>` — the hash tag keeps every level in the queue's cluster slot (a name
    /// that already has a hash tag keeps it: `name:p<p>`).
    pub fn key_for_priority(&self, p: u8) -> Bytes {
        if p == 0 {
            return self.name.clone();
        }
        let has_tag = self
            .name
            .iter()
            .position(|&b| b == b'{')
            .is_some_and(|open| {
                self.name[open + 1..]
                    .iter()
                    .position(|&b| b == b'}')
                    .is_some_and(|n| n > 0)
            });
        let mut k = Vec::with_capacity(self.name.len() + 8);
        if has_tag {
            k.extend_from_slice(&self.name);
        } else {
            k.push(b'{');
            k.extend_from_slice(&self.name);
            k.push(b'}');
        }
        k.extend_from_slice(format!(":p{p}").as_bytes());
        Bytes::from(k)
    }
}

/// Which commands the pop pipeline uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PopStrategy {
    /// One message per BRPOP (pipelined while there is backlog).
    Single,
    /// Always BLMPOP with COUNT (Redis ≥ 7; BRPOP on older servers).
    BlockingBatch,
    /// Non-blocking LMPOP COUNT while there is backlog, BLMPOP when the queues run dry
    /// (Redis ≥ 7; BRPOP on older servers).
    #[default]
    Adaptive,
}

/// A `pop`-mode consumer: which queues, and how to pop them.
#[derive(Debug, Clone)]
pub struct PopConsumer {
    pub(crate) queues: Vec<Queue>,
    pub(crate) strategy: PopStrategy,
    pub(crate) batch: u32,
    pub(crate) block_timeout: Duration,
    pub(crate) pipeline: u32,
    pub(crate) parked: u32,
}

impl PopConsumer {
    /// A consumer of the given queues (names or [`Queue`]s), with defaults: adaptive
    /// strategy, batch 128, block timeout 1 s, pipeline depth 2. How much may be in
    /// flight, the message limit and reply deadlines apply to every mode and are set on
    /// the [`EngineBuilder`](crate::EngineBuilder).
    pub fn new<Q: Into<Queue>>(queues: impl IntoIterator<Item = Q>) -> Self {
        Self {
            queues: queues.into_iter().map(Into::into).collect(),
            strategy: PopStrategy::Adaptive,
            batch: 128,
            block_timeout: Duration::from_secs(1),
            pipeline: 2,
            parked: 1,
        }
    }

    /// Which commands to use.
    pub fn strategy(mut self, s: PopStrategy) -> Self {
        self.strategy = s;
        self
    }

    /// Most messages one pop asks for (COUNT). Ignored by [`PopStrategy::Single`].
    pub fn batch(mut self, n: u32) -> Self {
        self.batch = n.max(1);
        self
    }

    /// How long a blocking pop waits on the server (rounded to milliseconds, at least 1 ms,
    /// at most [`MAX_BLOCK_TIMEOUT`]; `start` refuses a longer one).
    /// A shutdown ends blocked pops with `CLIENT UNBLOCK` from a side connection; where
    /// that is not possible (an ACL without it, a server without RESP3 client ids) it waits
    /// for them: one block timeout for a blocking pop sent alone, and up to `pipeline` of
    /// them when pipelined BRPOPs (`Single`, or servers before 7.0) find their queue just
    /// ran dry, as each then blocks in turn.
    pub fn block_timeout(mut self, d: Duration) -> Self {
        self.block_timeout = d.max(Duration::from_millis(1));
        self
    }

    /// How many non-blocking pops one connection keeps in flight while there is backlog.
    pub fn pipeline(mut self, depth: u32) -> Self {
        self.pipeline = depth.max(1);
        self
    }

    /// How many blocking pops one connection keeps waiting on the server while its
    /// queues are dry (default 1, at most [`PopConsumer::pipeline`]).
    ///
    /// With one, a message that arrives in the round trip after a wake-up (the reply
    /// travelling back, the next pop travelling out) waits for it; with two, the next pop
    /// is already queued behind the one a message woke. On one queue at 10k–50k msgs/s
    /// this took ringq's p99 from about 1.6× redis-rs's (which keeps four waiting) to
    /// 0.9–1.3× on the project's test machine (`docs/bench/2026-12-08-latency`).
    ///
    /// The cost is pop mode's at-most-once window: a connection lost while idle has this
    /// many pops that may have taken messages (all counted in
    /// [`Stats::possibly_lost`](crate::Stats::possibly_lost) and reported in
    /// [`Event::PossiblyLost`](crate::Event::PossiblyLost)), and a stalled connection's
    /// queued pops may still take messages after its server resumes, delivered only while
    /// the engine still reads it. Not used under a message limit
    /// ([`EngineBuilder::limit`](crate::EngineBuilder::limit): what is popped beyond it
    /// goes back, and must not wait behind a parked pop).
    pub fn parked_pops(mut self, n: u32) -> Self {
        self.parked = n.max(1);
        self
    }

    /// The queues, in configuration order.
    pub fn queues(&self) -> &[Queue] {
        &self.queues
    }
}

impl From<&str> for Queue {
    fn from(s: &str) -> Self {
        Queue::new(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for Queue {
    fn from(s: String) -> Self {
        Queue::new(Bytes::from(s))
    }
}

/// The consumer's immutable tables, shared by its lanes on one shard, and how they fetch.
pub(crate) struct PopPlan<D> {
    pub consumer: PopConsumer,
    /// Extra time past the block timeout before a blocking pop is overdue.
    pub reply_grace: Duration,
    /// How long a non-blocking pop may take.
    pub reply_timeout: Duration,
    pub budget: Option<Arc<Budget>>,
    /// key → where its messages come from (queue, level, position), interned.
    pub(super) keys: HashMap<Bytes, &'static Source>,
    /// The shard-local lane of each queue, by queue index (`u32::MAX`: another shard's).
    lane_of: Vec<u32>,
    /// The block timeout as the command argument, formatted once.
    pub(super) block_secs: Bytes,
    /// The same, rounded up to whole seconds, for servers before 6.0 (which reject a
    /// fractional timeout).
    pub(super) block_secs_whole: Bytes,
    /// How the lanes fetch: pop, or lease (reliable mode).
    pub(crate) dialect: D,
}

impl<D> PopPlan<D> {
    /// The tables for a shard whose lane `l` pops the queues `lanes[l]` (queue indices).
    pub(crate) fn new(
        consumer: PopConsumer,
        budget: Option<Arc<Budget>>,
        lanes: &[Vec<u32>],
        timing: Timing,
        dialect: D,
    ) -> Self {
        let mut lane_of = vec![u32::MAX; consumer.queues.len()];
        for (l, queues) in lanes.iter().enumerate() {
            for &q in queues {
                if let Some(slot) = lane_of.get_mut(q as usize) {
                    *slot = l as u32;
                }
            }
        }
        let mut keys = HashMap::new();
        for (qi, q) in consumer.queues.iter().enumerate() {
            for (p, k) in &q.levels {
                keys.insert(
                    k.clone(),
                    intern_source(SourceKind::Queue, &q.name, k, *p, qi as u32),
                );
            }
        }
        let secs = (consumer.block_timeout.as_millis().max(1) as f64) / 1000.0;
        Self {
            consumer,
            reply_grace: timing.reply_grace,
            reply_timeout: timing.reply_timeout,
            budget,
            keys,
            lane_of,
            block_secs: Bytes::from(fmt_secs(secs)),
            block_secs_whole: Bytes::from(secs.ceil().max(1.0).to_string()),
            dialect,
        }
    }
}

impl<D> PopPlan<D> {
    /// The engine's reply deadlines.
    pub(crate) fn timing(&self) -> Timing {
        Timing {
            reply_grace: self.reply_grace,
            reply_timeout: self.reply_timeout,
        }
    }

    /// Where messages of Redis key `key` come from, if the consumer pops it.
    pub(crate) fn source_of(&self, key: &[u8]) -> Option<&'static Source> {
        self.keys.get(key).copied()
    }

    /// The lane that pops queue `queue_index` on this shard.
    pub(crate) fn lane_of(&self, queue_index: u32) -> usize {
        self.lane_of
            .get(queue_index as usize)
            .map_or(usize::MAX, |&l| l as usize)
    }
}

/// A block timeout as a command argument (milliseconds resolution).
pub(crate) fn secs_arg(d: Duration) -> Bytes {
    Bytes::from(fmt_secs((d.as_millis().max(1) as f64) / 1000.0))
}

fn fmt_secs(s: f64) -> String {
    // Millisecond resolution; "1" rather than "1.000" keeps old servers happy.
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_keys_keep_the_hash_tag() {
        let q = Queue::new("jobs");
        assert_eq!(q.key_for_priority(0), "jobs");
        assert_eq!(q.key_for_priority(9), "{jobs}:p9");
        let q = Queue::new("{app}:jobs");
        assert_eq!(q.key_for_priority(3), "{app}:jobs:p3");
        let q = Queue::new("jobs").priorities([0, 9, 5]);
        let keys: Vec<_> = q.levels.iter().map(|(p, k)| (*p, k.clone())).collect();
        assert_eq!(
            keys,
            vec![
                (9, Bytes::from("{jobs}:p9")),
                (5, Bytes::from("{jobs}:p5")),
                (0, Bytes::from("jobs"))
            ]
        );
    }
}

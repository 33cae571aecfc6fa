//! What a pop consumer is configured with ([`Queue`], [`PopStrategy`], [`PopConsumer`]) and
//! the tables a shard builds from it once ([`PopPlan`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::budget::Budget;
use crate::intern::intern;

/// The longest block timeout a pop may have (24 hours). Redis takes the timeout as
/// seconds in a double and refuses values whose milliseconds overflow ("timeout is
/// negative"); a day is far below that and far above any sensible wait.
pub const MAX_BLOCK_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// A list queue, optionally with priority levels.
#[derive(Debug, Clone)]
pub struct Queue {
    pub(super) name: Bytes,
    /// (priority, key), highest priority first.
    pub(super) levels: Vec<(u8, Bytes)>,
    pub(super) weight: u32,
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

/// A `pop`-mode consumer: which queues, how to pop them, how much to hold at once.
#[derive(Debug, Clone)]
pub struct PopConsumer {
    pub(crate) queues: Vec<Queue>,
    pub(crate) strategy: PopStrategy,
    pub(crate) batch: u32,
    pub(crate) prefetch: u32,
    pub(crate) prefetch_bytes: u64,
    pub(crate) block_timeout: Duration,
    pub(crate) reply_grace: Duration,
    pub(crate) reply_timeout: Duration,
    pub(crate) pipeline: u32,
    pub(crate) limit: Option<u64>,
}

impl PopConsumer {
    /// A consumer of the given queues (names or [`Queue`]s), with defaults: adaptive
    /// strategy, batch 128, prefetch 1024 messages and 64 MiB, block timeout 1 s,
    /// pipeline depth 2, reply grace 2 s, reply timeout 10 s.
    pub fn new<Q: Into<Queue>>(queues: impl IntoIterator<Item = Q>) -> Self {
        Self {
            queues: queues.into_iter().map(Into::into).collect(),
            strategy: PopStrategy::Adaptive,
            batch: 128,
            prefetch: 1024,
            prefetch_bytes: 64 << 20,
            block_timeout: Duration::from_secs(1),
            reply_grace: Duration::from_secs(2),
            reply_timeout: Duration::from_secs(10),
            pipeline: 2,
            limit: None,
        }
    }

    /// Hands exactly `n` messages to the handler, then stops the engine
    /// (`ringq consume --count N`). No message beyond the `n`th is kept: a non-blocking pop
    /// reserves its share of what is left before it is sent; a blocking pop (which may
    /// wait on an empty queue for the whole block timeout) reserves nothing, so it never
    /// starves the other connections, and if it returns more than is left once its reply
    /// arrives (only possible in the last moments of the budget), the excess goes straight
    /// back to the right end of its list with RPUSH, in order, so the next pop gets it
    /// first. The engine stops once the `n`th message is handled; blocking pops still in
    /// flight are waited for as in any shutdown (see [`PopConsumer::block_timeout`]).
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
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

    /// Most messages in flight at once over the whole engine: asked for by pops that have
    /// not answered, or received and not yet handled.
    ///
    /// The limit is split over the connections that own queues (a *lane* each): every
    /// lane has a reserve of `prefetch / lanes` of its own, and whatever the reserves leave
    /// unused is shared. A blocking pop, which may wait on the server for its whole block
    /// timeout, asks only for its lane's reserve, so every connection can always wait on
    /// its queues; non-blocking pops (while there is backlog) may also use the shared part.
    /// [`EngineBuilder::start`](crate::EngineBuilder::start) therefore refuses a prefetch
    /// below the number of lanes (`min(shards × connections_per_shard, queues)`).
    pub fn prefetch(mut self, n: u32) -> Self {
        self.prefetch = n.max(1);
        self
    }

    /// Most payload bytes in flight at once over the whole engine (default 64 MiB), split
    /// over lanes like [`PopConsumer::prefetch`].
    ///
    /// Sizes are unknown before a pop, so each lane learns them from its replies: a pop
    /// asks for no more messages than the free bytes hold at the largest payload among
    /// the lane's last 1 024–2 048 messages. A lane that has seen no message yet plans
    /// with the largest message Redis accepts (512 MiB), so with the default limit its
    /// first pops ask for one message each. What the limit guarantees: payload bytes asked for or received and not
    /// yet handled stay within `prefetch_bytes` plus one message per lane, as long as no
    /// message is larger than that estimate (a message larger than any recent one can
    /// overshoot once, by the pop that brought it). `Stats::max_in_flight_bytes` reports
    /// the highest figure reached. Payload bytes only: the reply framing and the read
    /// buffer's spare capacity come on top.
    pub fn prefetch_bytes(mut self, n: u64) -> Self {
        self.prefetch_bytes = n.max(1);
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

    /// Extra time past the block timeout before a blocking pop's reply counts as overdue
    /// (default 2 s). Never a global read timeout: each command gets its own deadline.
    /// At most [`MAX_BLOCK_TIMEOUT`] (longer is taken as that). A connection with an
    /// overdue reply is replaced by a fresh one at once and kept
    /// open to deliver its late replies (see [`EngineBuilder::stalled_drain`]).
    ///
    /// [`EngineBuilder::stalled_drain`]: crate::EngineBuilder::stalled_drain
    pub fn reply_grace(mut self, d: Duration) -> Self {
        self.reply_grace = d.min(MAX_BLOCK_TIMEOUT);
        self
    }

    /// How long a non-blocking command (LMPOP, a heartbeat PING, a push-back RPUSH) may
    /// take before its reply counts as overdue (default 10 s; a busy server — a big DEL,
    /// a fork — can stall for seconds), at most [`MAX_BLOCK_TIMEOUT`]. Handled like an
    /// overdue blocking pop.
    pub fn reply_timeout(mut self, d: Duration) -> Self {
        self.reply_timeout = d.clamp(Duration::from_millis(1), MAX_BLOCK_TIMEOUT);
        self
    }

    /// How many non-blocking pops one connection keeps in flight while there is backlog.
    pub fn pipeline(mut self, depth: u32) -> Self {
        self.pipeline = depth.max(1);
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

/// The consumer's immutable tables, shared by its lanes on one shard.
pub(crate) struct PopPlan {
    pub consumer: PopConsumer,
    pub budget: Option<Arc<Budget>>,
    /// key → (queue index, priority, interned key)
    pub(super) keys: HashMap<Bytes, (u32, u8, &'static [u8])>,
    /// Interned queue names, by queue index.
    pub(super) names: Vec<&'static [u8]>,
    /// The shard-local lane of each queue, by queue index (`u32::MAX`: another shard's).
    lane_of: Vec<u32>,
    /// The block timeout as the command argument, formatted once.
    pub(super) block_secs: Bytes,
    /// The same, rounded up to whole seconds, for servers before 6.0 (which reject a
    /// fractional timeout).
    pub(super) block_secs_whole: Bytes,
}

impl PopPlan {
    /// The tables for a shard whose lane `l` pops the queues `lanes[l]` (queue indices).
    pub(crate) fn new(
        consumer: PopConsumer,
        budget: Option<Arc<Budget>>,
        lanes: &[Vec<u32>],
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
                keys.insert(k.clone(), (qi as u32, *p, intern(k)));
            }
        }
        let names = consumer.queues.iter().map(|q| intern(&q.name)).collect();
        let secs = (consumer.block_timeout.as_millis().max(1) as f64) / 1000.0;
        Self {
            consumer,
            budget,
            keys,
            names,
            lane_of,
            block_secs: Bytes::from(fmt_secs(secs)),
            block_secs_whole: Bytes::from(secs.ceil().max(1.0).to_string()),
        }
    }
}

impl PopPlan {
    /// The lane that pops queue `queue_index` on this shard.
    pub(crate) fn lane_of(&self, queue_index: u32) -> usize {
        self.lane_of
            .get(queue_index as usize)
            .map_or(usize::MAX, |&l| l as usize)
    }
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

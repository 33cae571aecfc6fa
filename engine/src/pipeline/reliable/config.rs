//! What a reliable consumer is configured with ([`ReliableConsumer`]).

use std::time::Duration;

use bytes::Bytes;

use crate::pipeline::alo::Backoff;
use crate::pipeline::pop::{PopConsumer, Queue};

/// A `reliable`-mode consumer (at-least-once list queues): each message is leased into
/// the consumer's processing list as it is fetched, and leaves it only by its outcome —
/// acknowledged, scheduled for a retry, or moved to the dead list — or by recovery when
/// the consumer dies. See the crate's `docs/reliable-wire.md` for the keys and the
/// envelope.
///
/// Queues, fairness, weights, priority levels, the batch, the block timeout and the
/// pipeline depth work as in pop mode ([`PopConsumer`]).
#[derive(Debug, Clone)]
pub struct ReliableConsumer {
    pub(crate) pop: PopConsumer,
    pub(crate) id: Bytes,
    pub(crate) lease: Duration,
    pub(crate) max_deliveries: u32,
    pub(crate) backoff: Backoff,
    pub(crate) dead_max_len: u32,
    pub(crate) dead_max_age: Duration,
    pub(crate) idle_check: Duration,
}

impl ReliableConsumer {
    /// A consumer named `id` (unique among the consumers of these queues, and the same
    /// across restarts: a restart with the same id takes its unfinished messages back at
    /// once) of `queues`, with defaults: lease 30 s, at most 25 deliveries, exponential
    /// backoff from 1 s to 10 min with 20 % jitter, a dead list of at most 10 000 entries
    /// and 90 days, and pop mode's batch, block timeout and pipeline depth.
    pub fn new<Q: Into<Queue>>(id: impl Into<Bytes>, queues: impl IntoIterator<Item = Q>) -> Self {
        Self {
            pop: PopConsumer::new(queues),
            id: id.into(),
            lease: Duration::from_secs(30),
            max_deliveries: 25,
            backoff: Backoff::default(),
            dead_max_len: 10_000,
            dead_max_age: Duration::from_secs(90 * 24 * 3600),
            idle_check: Duration::from_millis(100),
        }
    }

    /// How long a consumer that stopped beating (killed, frozen, cut off) keeps its leased
    /// messages before another consumer of the queue takes them back (at least 1 s). The
    /// heartbeat is refreshed every third of it by the shard loop. It bounds how long
    /// messages of a dead consumer wait; it must be longer than the loop can be held up:
    /// an inline handler that runs longer than the lease lets it expire, and its messages
    /// are delivered again elsewhere (their outcomes here are then reported as stale).
    pub fn lease(mut self, d: Duration) -> Self {
        self.lease = d.max(Duration::from_secs(1));
        self
    }

    /// Most deliveries of one message (at least 1): a message whose handler returns
    /// [`Outcome::Retry`](crate::Outcome::Retry) on its last allowed delivery goes to the
    /// dead list instead.
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n.max(1);
        self
    }

    /// The delay before a retried message is delivered again.
    pub fn backoff(mut self, b: Backoff) -> Self {
        self.backoff = b;
        self
    }

    /// The dead list's caps: at most `max_len` entries (the oldest go first), none older
    /// than `max_age`.
    pub fn dead_letters(mut self, max_len: u32, max_age: Duration) -> Self {
        self.dead_max_len = max_len.max(1);
        self.dead_max_age = max_age;
        self
    }

    /// When a connection's queues are all empty it waits on one of them (`BLMOVE`, which
    /// names one list); its other queues are checked again this often (default 100 ms).
    /// A connection that owns one queue (of one priority level) just waits on it.
    pub fn idle_check(mut self, d: Duration) -> Self {
        self.idle_check = d.max(Duration::from_millis(1));
        self
    }

    /// Most messages one lease takes (as [`PopConsumer::batch`]).
    pub fn batch(mut self, n: u32) -> Self {
        self.pop = self.pop.batch(n);
        self
    }

    /// How long a blocking lease waits on the server (as [`PopConsumer::block_timeout`]).
    pub fn block_timeout(mut self, d: Duration) -> Self {
        self.pop = self.pop.block_timeout(d);
        self
    }

    /// How many leases one connection keeps in flight while there is backlog.
    pub fn pipeline(mut self, depth: u32) -> Self {
        self.pop = self.pop.pipeline(depth);
        self
    }

    /// The consumer's id.
    pub fn id(&self) -> &Bytes {
        &self.id
    }

    /// The queues, in configuration order.
    pub fn queues(&self) -> &[Queue] {
        self.pop.queues()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Backoff::Exponential {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: 0.0,
        };
        let d: Vec<_> = (1..=6).map(|n| b.delay(n, 0.5).as_millis()).collect();
        assert_eq!(d, vec![100, 200, 400, 800, 1000, 1000]);
        let j = Backoff::Exponential {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: 0.5,
        };
        assert_eq!(j.delay(1, 0.0).as_millis(), 50);
        assert_eq!(j.delay(1, 0.999_999).as_millis(), 149);
        let l = Backoff::Levels(vec![Duration::from_secs(1), Duration::from_secs(5)]);
        assert_eq!(l.delay(1, 0.0), Duration::from_secs(1));
        assert_eq!(l.delay(9, 0.0), Duration::from_secs(5));
    }
}

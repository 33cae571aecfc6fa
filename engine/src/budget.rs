//! The engine-wide message budget of [`EngineBuilder::limit`](crate::EngineBuilder::limit)
//! (`ringq consume --count N`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::wake::Signals;

/// The engine-wide message budget of [`EngineBuilder::limit`](crate::EngineBuilder::limit), shared by the shards: one
/// atomic operation per pop, none per message.
///
/// Non-blocking pops *claim* what they ask for before they are sent and give back what
/// did not come. Blocking pops claim nothing up front: they may sit on an empty queue for
/// the whole block timeout, and a claim held there would starve the connections whose
/// queues still hold the budget's last messages (queues are spread over connections).
/// They claim what they got when the reply arrives; the rest goes back
/// to the server. Whenever claims come back to an exhausted budget, every shard is woken
/// so a connection that found nothing to claim tries again.
pub(crate) struct Budget {
    limit: u64,
    /// Messages neither claimed by an in-flight pop nor received.
    unclaimed: AtomicU64,
    /// Messages handed to handlers.
    delivered: AtomicU64,
    /// Wakes the shards when claims come back to an exhausted budget.
    waker: Option<Arc<Signals>>,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("limit", &self.limit)
            .field("unclaimed", &self.unclaimed)
            .field("delivered", &self.delivered)
            .finish_non_exhaustive()
    }
}

impl Budget {
    pub(crate) fn new(limit: u64, waker: Option<Arc<Signals>>) -> Self {
        Self {
            limit,
            unclaimed: AtomicU64::new(limit),
            delivered: AtomicU64::new(0),
            waker,
        }
    }

    /// Claims up to `want` messages; returns how many were granted.
    pub(crate) fn claim(&self, want: u32) -> u32 {
        let mut cur = self.unclaimed.load(Ordering::Relaxed);
        loop {
            let take = cur.min(u64::from(want));
            if take == 0 {
                return 0;
            }
            match self.unclaimed.compare_exchange_weak(
                cur,
                cur - take,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return take as u32,
                Err(now) => cur = now,
            }
        }
    }

    /// How many messages a blocking pop may ask for now (nothing is reserved).
    pub(crate) fn available(&self, want: u32) -> u32 {
        self.unclaimed.load(Ordering::Relaxed).min(u64::from(want)) as u32
    }

    /// Returns claims that brought nothing (short or empty replies, lost connections).
    pub(crate) fn unclaim(&self, n: u32) {
        if n > 0 && self.unclaimed.fetch_add(u64::from(n), Ordering::AcqRel) == 0 {
            if let Some(w) = &self.waker {
                w.wake_all();
            }
        }
    }

    /// Counts delivered messages; true once the whole budget has been delivered.
    pub(crate) fn delivered(&self, n: u64) -> bool {
        self.delivered.fetch_add(n, Ordering::AcqRel) + n >= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_never_grants_more_than_the_limit() {
        let b = Budget::new(10, None);
        assert_eq!(b.claim(4), 4);
        assert_eq!(b.claim(8), 6);
        assert_eq!(b.claim(1), 0);
        b.unclaim(3);
        assert_eq!(b.claim(5), 3);
        assert!(!b.delivered(9));
        assert!(b.delivered(1));
    }
}

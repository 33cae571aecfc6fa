//! Timers inside the ring (Kombu's `call_repeatedly`): a min-heap of deadlines. The loop
//! waits in `io_uring_enter` until the nearest deadline (EXT_ARG timeout), so a timer
//! costs no SQE. Entries are not removed when they become moot: the owner checks, when
//! one fires, whether it still applies (a connection counts only the timer it armed last;
//! one it superseded with an earlier deadline is ignored when it fires).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// What a timer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum TimerEvent {
    /// The head command of connection `conn` (generation `gen`) may be overdue.
    Deadline { conn: u32, gen: u32 },
    /// Connection `conn`'s reconnect backoff has passed.
    Reconnect { conn: u32, gen: u32 },
    /// Stalled connection `conn` (generation `gen`) has drained for as long as it may.
    DrainLimit { conn: u32, gen: u32 },
    /// Publish shard-local stats to the shared snapshot.
    PublishStats,
    /// PING every ready connection with no command in flight.
    IdlePing,
    /// Sample the queue depths (see `shard::depth`).
    SampleDepth,
    /// A pipeline's own timer (`Io::timer`).
    Pipeline(u32),
    /// User periodic callback number `n`.
    User(u32),
}

#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64, TimerEvent)>>,
    seq: u64,
}

impl Timers {
    pub(crate) fn add(&mut self, at: Instant, ev: TimerEvent) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, ev)));
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<TimerEvent> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => {
                self.heap.pop().map(|Reverse((_, _, ev))| ev)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fires_in_deadline_order_and_only_when_due() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.add(t0 + Duration::from_millis(30), TimerEvent::User(3));
        t.add(t0 + Duration::from_millis(10), TimerEvent::User(1));
        t.add(t0 + Duration::from_millis(20), TimerEvent::User(2));
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_millis(10)));
        assert_eq!(t.pop_due(t0), None);
        let later = t0 + Duration::from_millis(25);
        assert_eq!(t.pop_due(later), Some(TimerEvent::User(1)));
        assert_eq!(t.pop_due(later), Some(TimerEvent::User(2)));
        assert_eq!(t.pop_due(later), None);
    }
}

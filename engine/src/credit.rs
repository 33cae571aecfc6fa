//! Prefetch credit: how many messages, and how many payload bytes, one shard may have in
//! flight (asked for by commands that have not answered, or received and not yet handled).
//!
//! The shard's limit is split in two tiers:
//!
//! - **Reserves.** Every lane (connection that owns queues) has a reserve of its own:
//!   `limit / lanes` messages and `limit_bytes / lanes` bytes (the remainder goes to the
//!   first lanes). The reserves add up to the limit.
//! - **The pool** is whatever the reserves leave unused: `limit - Σ max(used, reserve)`.
//!
//! A *blocking* command (BRPOP, BLMPOP) may wait on the server for its whole block timeout
//! while holding what it asked for, so it draws on its lane's reserve only. A non-blocking
//! one answers within a round trip and may also draw on the pool. So every lane can always
//! wait on its queues once its own messages are handled, whatever the other lanes hold —
//! the bug this shape fixes: blocking pops on the first connections held the whole credit
//! for their block timeout, and later connections never sent a pop at all.
//!
//! ## Bytes
//! Sizes are unknown before a pop, so a pop asks for at most `free bytes / estimate`
//! messages, where the estimate is the largest payload among its lane's recent messages
//! ([`SizeEstimate`]); a lane that has not seen a message yet asks for one. A pop that
//! finds *some* free bytes asks for at least one message, so the credit is overshot by at
//! most one message per lane, as long as no message is larger than its lane's estimate.
//! What a pop reserved is replaced by what its reply actually carried when it arrives.
//!
//! Accounting is O(1) per pop and per handled batch: the shard keeps `Σ max(used,
//! reserve)` up to date as each lane's usage changes.

use crate::budget::Budget;

/// The largest payload a Redis server accepts by default (`proto-max-bulk-len`, 512 MiB):
/// what a message of unknown size is planned as.
pub(crate) const LARGEST_MESSAGE: u64 = 512 << 20;

/// What one command was granted (and holds until its reply arrives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Grant {
    pub count: u32,
    pub bytes: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Account {
    reserve: u32,
    reserve_bytes: u64,
    used: u32,
    used_bytes: u64,
}

/// One shard's share of the prefetch limit, split into per-lane reserves and a pool.
#[derive(Debug)]
pub(crate) struct Credits {
    limit: u32,
    limit_bytes: u64,
    accounts: Vec<Account>,
    /// `Σ max(used, reserve)` over lanes, messages and bytes.
    committed: u64,
    committed_bytes: u64,
    /// `Σ used` over lanes.
    used: u64,
    used_bytes: u64,
    high_water: u64,
    high_water_bytes: u64,
}

impl Credits {
    /// Credit for `lanes` lanes. Every lane gets a reserve of at least one message only
    /// when `limit >= lanes`; the engine refuses to start otherwise.
    pub(crate) fn new(limit: u32, limit_bytes: u64, lanes: usize) -> Self {
        let n = lanes.max(1);
        let share =
            |total: u64, i: usize| total / n as u64 + u64::from((i as u64) < total % n as u64);
        let accounts = (0..n)
            .map(|i| Account {
                reserve: share(u64::from(limit), i) as u32,
                reserve_bytes: share(limit_bytes, i).max(1),
                used: 0,
                used_bytes: 0,
            })
            .collect::<Vec<_>>();
        let committed = accounts.iter().map(|a| u64::from(a.reserve)).sum();
        let committed_bytes = accounts.iter().map(|a| a.reserve_bytes).sum();
        Self {
            limit,
            limit_bytes,
            accounts,
            committed,
            committed_bytes,
            used: 0,
            used_bytes: 0,
            high_water: 0,
            high_water_bytes: 0,
        }
    }

    /// `lane`'s reserve: the messages only it may hold (what its blocking pops draw on).
    pub(crate) fn reserve(&self, lane: usize) -> u32 {
        self.accounts.get(lane).map_or(0, |a| a.reserve)
    }

    /// Grants up to `want` messages to `lane`'s next command, or `None` when it must wait.
    /// `estimate` is the payload size the lane expects per message. `None`: unknown yet
    /// (the lane has seen no message), so every message could be as large as a Redis
    /// string can be ([`LARGEST_MESSAGE`]): as many are asked for as the free bytes hold
    /// at that size (at least one), and `1 / depth` of the free bytes is held for them,
    /// `depth` being how many such commands the lane pipelines.
    pub(crate) fn grant(
        &mut self,
        lane: usize,
        blocking: bool,
        want: u32,
        estimate: Option<u64>,
        depth: u32,
    ) -> Option<Grant> {
        let a = *self.accounts.get(lane)?;
        let mut avail = u64::from(a.reserve.saturating_sub(a.used));
        let mut avail_bytes = a.reserve_bytes.saturating_sub(a.used_bytes);
        if !blocking {
            avail += u64::from(self.limit).saturating_sub(self.committed);
            avail_bytes += self.limit_bytes.saturating_sub(self.committed_bytes);
        }
        if avail == 0 || avail_bytes == 0 || want == 0 {
            return None;
        }
        let count = u64::from(want).min(avail);
        let g = match estimate {
            Some(each) => {
                let each = each.max(1);
                let count = count.min((avail_bytes / each).max(1));
                Grant {
                    count: count as u32,
                    bytes: count * each,
                }
            }
            None => {
                // The count follows what is held, so `depth` such pops stay within the
                // free bytes at the largest possible size.
                let held = (avail_bytes / u64::from(depth.max(1))).max(1);
                let count = count.min((held / LARGEST_MESSAGE).max(1));
                Grant {
                    count: count as u32,
                    bytes: held,
                }
            }
        };
        self.charge(lane, g.count, g.bytes);
        Some(g)
    }

    /// Grants credit to `lane`'s next fetch as [`Credits::grant`] does, together with its
    /// claim on the engine's message budget (`EngineBuilder::limit`), when there is one:
    /// never more than the budget has left, and a non-blocking fetch claims what it was
    /// granted before it is sent (a blocking one claims on arrival: see [`Budget`]). The
    /// grant that comes back is what the fetch may ask for; `None`: it must wait.
    pub(crate) fn grant_fetch(
        &mut self,
        budget: Option<&Budget>,
        lane: usize,
        blocking: bool,
        want: u32,
        estimate: Option<u64>,
        depth: u32,
    ) -> Option<Grant> {
        let want = budget.map_or(want, |b| b.available(want));
        if want == 0 {
            return None;
        }
        let mut grant = self.grant(lane, blocking, want, estimate, depth)?;
        if let (Some(b), false) = (budget, blocking) {
            // Another shard may have claimed meanwhile: ask for what was claimed.
            let claimed = b.claim(grant.count);
            if claimed == 0 {
                self.release(lane, grant.count, grant.bytes);
                return None;
            }
            if claimed < grant.count {
                self.release(lane, grant.count - claimed, 0);
                grant.count = claimed;
            }
        }
        Some(grant)
    }

    /// Gives back what a fetch on `lane` held that will bring nothing (its connection was
    /// lost, or its reply failed): its credit, and for a non-blocking one its budget
    /// claim.
    pub(crate) fn forget_fetch(
        &mut self,
        budget: Option<&Budget>,
        lane: usize,
        grant: Grant,
        blocking: bool,
    ) {
        self.release(lane, grant.count, grant.bytes);
        if let (Some(b), false) = (budget, blocking) {
            b.unclaim(grant.count);
        }
    }

    /// A command's reply arrived: its grant is replaced by what it actually carried
    /// (`got` messages of `got_bytes`), held until they are handled.
    pub(crate) fn settle(&mut self, lane: usize, grant: Grant, got: u32, got_bytes: u64) {
        self.release(lane, grant.count, grant.bytes);
        self.charge(lane, got, got_bytes);
    }

    /// Messages that arrived outside any grant (late replies of a stalled connection):
    /// held until handled, like any other.
    pub(crate) fn hold(&mut self, lane: usize, got: u32, got_bytes: u64) {
        self.charge(lane, got, got_bytes);
    }

    /// Gives back credit: handled messages, or the grant of a command that will not answer.
    pub(crate) fn release(&mut self, lane: usize, count: u32, bytes: u64) {
        let Some(a) = self.accounts.get_mut(lane) else {
            return;
        };
        let before = (a.used.max(a.reserve), a.used_bytes.max(a.reserve_bytes));
        let count = count.min(a.used);
        let bytes = bytes.min(a.used_bytes);
        a.used -= count;
        a.used_bytes -= bytes;
        let after = (a.used.max(a.reserve), a.used_bytes.max(a.reserve_bytes));
        self.committed -= u64::from(before.0 - after.0);
        self.committed_bytes -= before.1 - after.1;
        self.used -= u64::from(count);
        self.used_bytes -= bytes;
    }

    fn charge(&mut self, lane: usize, count: u32, bytes: u64) {
        let Some(a) = self.accounts.get_mut(lane) else {
            return;
        };
        let before = (a.used.max(a.reserve), a.used_bytes.max(a.reserve_bytes));
        a.used = a.used.saturating_add(count);
        a.used_bytes = a.used_bytes.saturating_add(bytes);
        let after = (a.used.max(a.reserve), a.used_bytes.max(a.reserve_bytes));
        self.committed += u64::from(after.0 - before.0);
        self.committed_bytes = self.committed_bytes.saturating_add(after.1 - before.1);
        self.used += u64::from(count);
        self.used_bytes = self.used_bytes.saturating_add(bytes);
        self.high_water = self.high_water.max(self.used);
        self.high_water_bytes = self.high_water_bytes.max(self.used_bytes);
    }

    /// Whether `lane` has no credit left for one more message (its reserve and the pool
    /// are used up, in messages or in bytes): messages that arrive unasked (pub/sub) then
    /// wait for handled ones to give credit back.
    pub(crate) fn is_full(&self, lane: usize) -> bool {
        let Some(a) = self.accounts.get(lane) else {
            return true;
        };
        let free = u64::from(a.reserve.saturating_sub(a.used))
            + u64::from(self.limit).saturating_sub(self.committed);
        let free_bytes = a.reserve_bytes.saturating_sub(a.used_bytes)
            + self.limit_bytes.saturating_sub(self.committed_bytes);
        free == 0 || free_bytes == 0
    }

    /// Whether `lane` holds at most half its reserve, in messages and in bytes: a paused
    /// reader resumes then, so it does not pause and resume for every message.
    pub(crate) fn is_below_half(&self, lane: usize) -> bool {
        self.accounts
            .get(lane)
            .is_some_and(|a| a.used <= a.reserve / 2 && a.used_bytes <= a.reserve_bytes / 2)
    }

    /// Messages and payload bytes in flight now.
    pub(crate) fn in_flight(&self) -> (u64, u64) {
        (self.used, self.used_bytes)
    }

    /// Highest number of messages in flight seen at once.
    pub(crate) fn high_water(&self) -> u64 {
        self.high_water
    }

    /// Highest number of payload bytes in flight seen at once (reserved by pops that had
    /// not answered, or received and not yet handled).
    pub(crate) fn high_water_bytes(&self) -> u64 {
        self.high_water_bytes
    }
}

/// The payload size a lane expects: the largest among its last 1 024 to 2 048 messages
/// (two windows, so one unusually large message is forgotten after a while but never
/// before at least 1 024 others came after it).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SizeEstimate {
    current: u64,
    previous: u64,
    in_window: u32,
    known: bool,
}

impl SizeEstimate {
    const WINDOW: u32 = 1024;

    /// The size to plan with, or `None` before the first message.
    pub(crate) fn get(&self) -> Option<u64> {
        self.known.then(|| self.current.max(self.previous))
    }

    /// Records a reply of `count` messages whose largest payload was `largest` bytes.
    pub(crate) fn note(&mut self, count: u32, largest: u64) {
        if count == 0 {
            return;
        }
        self.known = true;
        self.current = self.current.max(largest);
        self.in_window = self.in_window.saturating_add(count);
        if self.in_window >= Self::WINDOW {
            self.previous = self.current;
            self.current = 0;
            self.in_window = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocking_pop_cannot_take_another_lanes_reserve() {
        // Two lanes, 128 messages: before the fix, the first lane's blocking pop took all
        // 128 and the second never sent one.
        let mut c = Credits::new(128, 1 << 30, 2);
        let a = c.grant(0, true, 128, Some(16), 1).expect("lane 0 waits");
        assert_eq!(a.count, 64);
        let b = c
            .grant(1, true, 128, Some(16), 1)
            .expect("lane 1 waits too");
        assert_eq!(b.count, 64);
        assert_eq!(c.grant(0, true, 1, Some(16), 1), None);
        assert_eq!(c.grant(0, false, 1, Some(16), 1), None, "no pool left");
    }

    #[test]
    fn non_blocking_pops_use_the_pool_but_never_the_reserves_of_others() {
        let mut c = Credits::new(100, 1 << 30, 4);
        // Lane 0 with backlog: its reserve (25) plus the pool, which the other lanes'
        // untouched reserves (75) leave empty.
        let g = c.grant(0, false, 1000, Some(1), 1).unwrap();
        assert_eq!(g.count, 25);
        // Lanes 1..3 each still get their reserve for a blocking pop.
        for lane in 1..4 {
            assert_eq!(c.grant(lane, true, 1000, Some(1), 1).unwrap().count, 25);
        }
        // Lane 3's blocking pop answers with 5 messages; 20 of its reserve free up, and
        // lane 0 may borrow them from the pool only once lane 3 is below its reserve.
        c.settle(
            3,
            Grant {
                count: 25,
                bytes: 25,
            },
            5,
            5,
        );
        assert_eq!(
            c.grant(0, false, 1000, Some(1), 1),
            None,
            "lane 3's reserve is its own"
        );
        c.release(0, 25, 25);
        assert_eq!(c.grant(0, false, 1000, Some(1), 1).unwrap().count, 25);
    }

    #[test]
    fn usage_never_exceeds_the_limit_in_messages() {
        let mut c = Credits::new(10, 1 << 30, 3);
        let mut grants = Vec::new();
        for round in 0..50u32 {
            let lane = (round % 3) as usize;
            if let Some(g) = c.grant(lane, round % 2 == 0, 7, Some(1), 1) {
                grants.push((lane, g));
            }
            assert!(c.used <= 10, "used {} > 10", c.used);
            if round % 3 == 2 {
                if let Some((lane, g)) = grants.pop() {
                    c.release(lane, g.count, g.bytes);
                }
            }
        }
        assert!(c.high_water() <= 10);
    }

    #[test]
    fn byte_limit_asks_for_what_fits_and_overshoots_by_at_most_one_message() {
        // 64 MiB, messages of 25 MB: the first pop learns the size with one message.
        let limit = 64 << 20;
        let big = 25_000_000;
        let mut c = Credits::new(1024, limit, 1);
        let first = c.grant(0, false, 128, None, 1).unwrap();
        assert_eq!(first.count, 1);
        assert_eq!(
            c.grant(0, false, 128, None, 1),
            None,
            "unknown size: one at a time"
        );
        // With a pipeline of 2, two single-message pops share the bytes before the size is known.
        let mut p = Credits::new(1024, limit, 1);
        let a = p.grant(0, false, 128, None, 2).unwrap();
        let b = p.grant(0, false, 128, None, 2).unwrap();
        assert_eq!((a.count, b.count), (1, 1));
        assert!(a.bytes + b.bytes <= limit);
        c.settle(0, first, 1, big);
        let next = c.grant(0, false, 128, Some(big), 1).unwrap();
        assert_eq!(next.count, 1, "39 MB free: one more");
        let third = c.grant(0, false, 128, Some(big), 1).unwrap();
        assert_eq!(third.count, 1, "14 MB free: still one (the overshoot)");
        assert_eq!(c.grant(0, false, 128, Some(big), 1), None);
        assert!(c.high_water_bytes() <= limit + big);
        // A byte limit far above the largest possible message does not hold back even
        // the first pop.
        let mut c = Credits::new(1024, 1 << 50, 1);
        assert_eq!(c.grant(0, true, 128, None, 1).unwrap().count, 128);
        // Small messages are not held back by the byte limit.
        let mut c = Credits::new(1024, limit, 1);
        assert_eq!(c.grant(0, false, 128, Some(16), 1).unwrap().count, 128);
    }

    #[test]
    fn size_estimate_remembers_the_largest_of_the_recent_window() {
        let mut e = SizeEstimate::default();
        assert_eq!(e.get(), None);
        e.note(1, 1000);
        e.note(100, 10);
        assert_eq!(e.get(), Some(1000));
        // A full window later the large one is still remembered (previous window)…
        e.note(1024, 10);
        assert_eq!(e.get(), Some(1000));
        // …and forgotten after a second one.
        e.note(1024, 10);
        assert_eq!(e.get(), Some(10));
    }
}

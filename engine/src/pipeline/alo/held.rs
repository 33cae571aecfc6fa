//! What an at-least-once consumer holds of one key, by position: reliable mode's leased
//! list, Kombu mode's records under a per-key counter. Each fetch says where its elements
//! end (the server's head position after it); the engine numbers them from there, so an
//! element it did not fetch is never settled in place of its own.

use std::collections::VecDeque;

/// What this consumer holds in one key's leased list, by position: the elements from the
/// tail (`tail`) to the head (`head`, exclusive), and which of them are settled.
#[derive(Debug, Default)]
pub(crate) struct Held {
    head: u64,
    tail: u64,
    /// `settled[i]`: the element at position `tail + i` has its outcome.
    settled: VecDeque<bool>,
}

impl Held {
    /// `n` elements were leased, in order, and the server said the list's head position
    /// after them is `head` (when it did): returns the first one's position, and how many
    /// elements the list gained before them that this consumer did not lease (a lease
    /// from a connection it had given up, or from another process with its id). Those
    /// are held unsettled, so the tail never moves past them (no settle removes an
    /// element this consumer never saw); a recovery gives them back to their queue.
    pub(crate) fn leased(&mut self, n: u64, head: Option<u64>) -> (u64, u64) {
        let first = match head {
            Some(h) if h >= n => h - n,
            _ => self.head,
        };
        if first < self.tail {
            // Not where this consumer's list is: its leases were taken back (the fence
            // refuses its settles, and a recovery follows). Numbered after the rest.
            let first = self.head;
            self.head += n;
            self.settled.resize(self.settled.len() + n as usize, false);
            return (first, 0);
        }
        let unknown = first.saturating_sub(self.head);
        let end = first + n;
        if end > self.head {
            self.settled
                .resize(self.settled.len() + (end - self.head) as usize, false);
            self.head = end;
        }
        (first, unknown)
    }

    /// A fetch's `msgs`, numbered 0, 1, … in their reply, were the `n` elements before the
    /// server's `head` ([`Held::leased`]): gives each its position (modulo 2^32, in `seq`)
    /// and returns how many elements the server holds that this consumer never fetched.
    pub(crate) fn number(
        &mut self,
        n: u64,
        head: Option<u64>,
        msgs: &mut [crate::handler::Message<'_>],
    ) -> u64 {
        let (first, unknown) = self.leased(n, head);
        for m in msgs {
            m.seq = m.seq.wrapping_add(first as u32);
        }
        unknown
    }

    /// The element at `seq` (its position modulo 2^32: what a message carries) has its
    /// outcome. Returns its position, or `None` if it is not held (never leased, or
    /// settled already). Fewer than 2^32 elements are ever held, so `seq` names one.
    pub(crate) fn settle(&mut self, seq: u32) -> Option<u64> {
        let i = seq.wrapping_sub(self.tail as u32) as u64;
        match self.settled.get_mut(i as usize) {
            Some(s) if !*s => {
                *s = true;
                Some(self.tail + i)
            }
            _ => None,
        }
    }

    /// Moves the tail past the run of settled elements at it; returns the new tail (every
    /// position before it is settled).
    pub(crate) fn advance(&mut self) -> u64 {
        while self.settled.front() == Some(&true) {
            self.settled.pop_front();
            self.tail += 1;
        }
        self.tail
    }

    /// The next position a fetch should number from (one past the last held).
    pub(crate) fn head(&self) -> u64 {
        self.head
    }

    /// The tail: every position before it is settled and trimmed (or asked to be).
    pub(crate) fn tail(&self) -> u64 {
        self.tail
    }

    /// The positions held and not settled yet, oldest first.
    pub(crate) fn unsettled(&self) -> impl Iterator<Item = u64> + '_ {
        let tail = self.tail;
        self.settled
            .iter()
            .enumerate()
            .filter(|(_, s)| !**s)
            .map(move |(i, _)| tail + i as u64)
    }

    /// Nothing is held, and the next element fetched is number `n` (a counter the server
    /// keeps, read back by a recovery).
    pub(crate) fn start_at(&mut self, n: u64) {
        *self = Self {
            head: n,
            tail: n,
            settled: VecDeque::new(),
        };
    }

    /// A recovery emptied the leased list: positions start again at 0.
    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_moves_past_settled_runs_only() {
        let mut h = Held::default();
        assert_eq!(h.leased(3, None), (0, 0));
        assert_eq!(h.leased(2, Some(5)), (3, 0));
        assert_eq!((h.settle(1), h.settle(0)), (Some(1), Some(0)));
        assert_eq!(h.settle(1), None, "settled twice");
        assert_eq!(h.advance(), 2);
        assert_eq!(h.settle(0), None, "behind the tail");
        assert_eq!((h.settle(4), h.settle(3)), (Some(4), Some(3)));
        assert_eq!(h.advance(), 2, "position 2 holds the tail");
        assert_eq!(h.settle(2), Some(2));
        assert_eq!(h.advance(), 5);
        assert_eq!(h.settle(5), None, "never leased");
        h.reset();
        assert_eq!(h.leased(1, Some(1)), (0, 0));
    }

    #[test]
    fn an_element_this_consumer_did_not_lease_is_never_passed() {
        let mut h = Held::default();
        assert_eq!(h.leased(2, Some(2)), (0, 0));
        // Another lease reached the list first (position 2): this one's are 3 and 4.
        assert_eq!(h.leased(2, Some(5)), (3, 1));
        for seq in [0, 1, 3, 4] {
            assert!(h.settle(seq).is_some());
        }
        assert_eq!(h.advance(), 2, "the tail stops at the unknown element");
        // A late reply of an earlier lease fills its place.
        let mut h = Held::default();
        assert_eq!(h.leased(1, Some(3)), (2, 2));
        assert_eq!(h.leased(2, Some(2)), (0, 0));
        assert_eq!(h.head, 3);
    }

    #[test]
    fn positions_past_2_to_the_32_are_named_by_their_low_bits() {
        let mut h = Held {
            head: (1 << 32) - 2,
            tail: (1 << 32) - 2,
            settled: VecDeque::new(),
        };
        let (first, _) = h.leased(4, None);
        let seqs: Vec<u32> = (0..4).map(|i| (first + i) as u32).collect();
        assert_eq!(seqs, [u32::MAX - 1, u32::MAX, 0, 1]);
        assert_eq!(h.settle(1), Some((1 << 32) + 1));
        assert_eq!(h.settle(u32::MAX - 1), Some((1 << 32) - 2));
        assert_eq!(h.advance(), (1 << 32) - 1);
    }

    #[test]
    fn unsettled_positions_are_listed_oldest_first() {
        let mut h = Held::default();
        h.leased(4, Some(4));
        h.settle(1);
        h.settle(0);
        h.advance();
        assert_eq!(h.unsettled().collect::<Vec<_>>(), vec![2, 3]);
    }
}

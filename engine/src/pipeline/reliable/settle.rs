//! Outcomes by position: [`Held`] numbers each key's leased elements and knows how far
//! the leased list's tail may move; [`Batch`] gathers one key's outcomes of a loop turn
//! into one settle script command (see [`super::scripts::SETTLE`]). No element travels
//! back to the server: an ack is a position (or nothing, when the tail passes it), a
//! retry or a dead letter a position and a new envelope header.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

use ringq_resp::CommandWriter;

use super::{scripts, KeyNames, RelTag};
use crate::conn::{Conn, Tag};
use crate::envelope;

/// What this consumer holds in one key's leased list, by position: the elements from the
/// tail (`tail`) to the head (`head`, exclusive), and which of them are settled.
#[derive(Debug, Default)]
pub(super) struct Held {
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
    pub fn leased(&mut self, n: u64, head: Option<u64>) -> (u64, u64) {
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

    /// The element at `seq` (its position modulo 2^32: what a message carries) has its
    /// outcome. Returns its position, or `None` if it is not held (never leased, or
    /// settled already). Fewer than 2^32 elements are ever held, so `seq` names one.
    pub fn settle(&mut self, seq: u32) -> Option<u64> {
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
    pub fn advance(&mut self) -> u64 {
        while self.settled.front() == Some(&true) {
            self.settled.pop_front();
            self.tail += 1;
        }
        self.tail
    }

    /// The tail: every position before it is settled and trimmed (or asked to be).
    pub fn tail(&self) -> u64 {
        self.tail
    }

    /// A recovery emptied the leased list: positions start again at 0.
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

/// One key's outcomes: positions, and the new headers of retried and dead elements.
#[derive(Debug, Default)]
pub(super) struct Batch {
    /// The key (index into the shard's keys).
    pub key: u32,
    /// Outcomes recorded (for the count when the whole batch is refused).
    pub outcomes: u64,
    /// Where the tail moves: every position before it is settled.
    pub tail: u64,
    /// The tail before this batch: where it stays when the batch must not trim.
    floor: u64,
    headers: Vec<u8>,
    acks: Vec<u64>,
    /// (position, old header length, new header, due ms)
    retries: Vec<(u64, usize, Range<usize>, u64)>,
    /// (position, old header length, new header)
    deads: Vec<(u64, usize, Range<usize>)>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.outcomes == 0
    }

    fn header(&mut self, deliveries: u32, id: &[u8], dead: Option<(u64, &str)>) -> Range<usize> {
        let start = self.headers.len();
        envelope::encode_header(&mut self.headers, deliveries, Some(id), dead);
        start..self.headers.len()
    }

    /// Done.
    pub fn ack(&mut self, pos: u64) {
        self.outcomes += 1;
        self.acks.push(pos);
    }

    /// Deliver again at `due` (ms since the epoch), as an envelope counting `deliveries`;
    /// `old_header` is the length of the element's own envelope header (0 if plain).
    pub fn retry(&mut self, pos: u64, old_header: usize, deliveries: u32, id: &[u8], due: u64) {
        self.outcomes += 1;
        let h = self.header(deliveries, id, None);
        self.retries.push((pos, old_header, h, due));
    }

    /// To the dead list, with when and why.
    pub fn dead(
        &mut self,
        pos: u64,
        old_header: usize,
        deliveries: u32,
        id: &[u8],
        at: u64,
        why: &str,
    ) {
        self.outcomes += 1;
        let h = self.header(deliveries, id, Some((at, why)));
        self.deads.push((pos, old_header, h));
    }

    /// The tail moves from `floor` to `tail`: acks before it need no marker (the trim
    /// removes them).
    pub fn seal(&mut self, floor: u64, tail: u64) {
        self.floor = floor;
        self.tail = tail;
    }

    /// The batch must not move the tail (the server may have lost writes, such as an
    /// earlier retry's: trimming past its element would lose it): every ack becomes a
    /// marker, and what is left goes back with the recovery that follows.
    pub fn hold(&mut self) {
        self.tail = self.floor;
    }

    /// Queues the settle script for this batch on `ctl`.
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &self,
        ctl: &mut Conn<RelTag>,
        k: &KeyNames,
        token: &[u8],
        dead_cap: u32,
        dead_cutoff: u64,
        now: Instant,
        allow: Duration,
    ) {
        let h = &self.headers;
        let acks = self.acks.iter().filter(|&&p| p >= self.tail);
        let n = 14 + acks.clone().count() + 4 * self.retries.len() + 3 * self.deads.len();
        ctl.command(Tag::Pipe(RelTag::Settle), now, allow, |out| {
            let mut w = CommandWriter::new(out, n)
                .arg("EVALSHA")
                .arg(&scripts::SETTLE.sha)
                .arg("4")
                .arg(&k.processing)
                .arg(&k.lease)
                .arg(&k.retry)
                .arg(&k.dead)
                .arg(token)
                .arg_int(self.tail as i64)
                .arg_int(acks.clone().count() as i64)
                .arg_int(self.retries.len() as i64)
                .arg_int(self.deads.len() as i64)
                .arg_int(i64::from(dead_cap))
                .arg_int(dead_cutoff as i64);
            for &p in acks {
                w = w.arg_int(p as i64);
            }
            for (p, old, new, due) in &self.retries {
                w = w
                    .arg_int(*p as i64)
                    .arg_int(*old as i64)
                    .arg(&h[new.clone()])
                    .arg_int(*due as i64);
            }
            for (p, old, new) in &self.deads {
                w = w
                    .arg_int(*p as i64)
                    .arg_int(*old as i64)
                    .arg(&h[new.clone()]);
            }
            w.finish();
        });
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
    fn acks_the_tail_passes_need_no_marker_unless_the_batch_is_held() {
        let mut b = Batch::default();
        b.ack(0);
        b.ack(1);
        b.ack(7);
        b.retry(2, 0, 2, b"x", 10);
        b.seal(0, 3);
        let marked: Vec<u64> = b.acks.iter().copied().filter(|&p| p >= b.tail).collect();
        assert_eq!(marked, vec![7]);
        b.hold();
        assert_eq!(b.tail, 0, "held: nothing trimmed, every ack marked");
        assert_eq!(b.outcomes, 4);
        assert_eq!(b.retries.len(), 1);
    }
}

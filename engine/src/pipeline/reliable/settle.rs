//! Outcomes by position: `alo::Held` numbers each key's leased elements and knows how far
//! the leased list's tail may move; [`Batch`] gathers one key's outcomes of a loop turn
//! into one settle script command (see [`super::scripts::SETTLE`]). No element travels
//! back to the server: an ack is a position (or nothing, when the tail passes it), a
//! retry or a dead letter a position and a new envelope header.

use std::ops::Range;
use std::time::{Duration, Instant};

use ringq_resp::CommandWriter;

use super::{scripts, KeyNames, RelTag};
use crate::conn::{Conn, Tag};
use crate::envelope;

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

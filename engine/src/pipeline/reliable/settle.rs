//! Outcomes batched per key per loop turn, and the settle script command that applies
//! them (see [`super::scripts::SETTLE`]).

use std::ops::Range;
use std::time::{Duration, Instant};

use ringq_resp::CommandWriter;

use super::{scripts, KeyNames, RelTag};
use crate::conn::{Conn, Tag};
use crate::envelope;

/// One key's outcomes: the elements they name, copied into one buffer.
#[derive(Debug, Default)]
pub(super) struct Batch {
    /// The key (index into the shard's keys).
    pub key: u32,
    buf: Vec<u8>,
    acks: Vec<Range<usize>>,
    /// (element, new element, due ms)
    retries: Vec<(Range<usize>, Range<usize>, u64)>,
    /// (element, new element)
    deads: Vec<(Range<usize>, Range<usize>)>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.acks.is_empty() && self.retries.is_empty() && self.deads.is_empty()
    }

    fn copy(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.buf.len();
        self.buf.extend_from_slice(bytes);
        start..self.buf.len()
    }

    fn wrap(
        &mut self,
        deliveries: u32,
        id: &[u8],
        dead: Option<(u64, &str)>,
        payload: &[u8],
    ) -> Range<usize> {
        let start = self.buf.len();
        envelope::encode(&mut self.buf, deliveries, Some(id), dead, payload);
        start..self.buf.len()
    }

    /// Done: remove `element` from the processing list.
    pub fn ack(&mut self, element: &[u8]) {
        let at = self.copy(element);
        self.acks.push(at);
    }

    /// Deliver again at `due` (ms since the epoch), as an envelope counting `deliveries`.
    pub fn retry(&mut self, element: &[u8], deliveries: u32, id: &[u8], payload: &[u8], due: u64) {
        let old = self.copy(element);
        let new = self.wrap(deliveries, id, None, payload);
        self.retries.push((old, new, due));
    }

    /// To the dead list, with when and why.
    pub fn dead(
        &mut self,
        element: &[u8],
        deliveries: u32,
        id: &[u8],
        payload: &[u8],
        at: u64,
        why: &str,
    ) {
        let old = self.copy(element);
        let new = self.wrap(deliveries, id, Some((at, why)), payload);
        self.deads.push((old, new));
    }

    /// Queues the settle script for this batch on `ctl`.
    pub fn write(
        &self,
        ctl: &mut Conn<RelTag>,
        k: &KeyNames,
        dead_cap: u32,
        dead_cutoff: u64,
        now: Instant,
        allow: Duration,
    ) {
        let b = &self.buf;
        let n = 11 + self.acks.len() + 3 * self.retries.len() + 2 * self.deads.len();
        ctl.command(Tag::Pipe(RelTag::Settle), now, allow, |out| {
            let mut w = CommandWriter::new(out, n)
                .arg("EVALSHA")
                .arg(&scripts::SETTLE.sha)
                .arg("3")
                .arg(&k.processing)
                .arg(&k.retry)
                .arg(&k.dead)
                .arg_int(self.acks.len() as i64)
                .arg_int(self.retries.len() as i64)
                .arg_int(self.deads.len() as i64)
                .arg_int(i64::from(dead_cap))
                .arg_int(dead_cutoff as i64)
                .args(self.acks.iter().map(|r| &b[r.clone()]));
            for (old, new, due) in &self.retries {
                w = w
                    .arg(&b[old.clone()])
                    .arg(&b[new.clone()])
                    .arg_int(*due as i64);
            }
            for (old, new) in &self.deads {
                w = w.arg(&b[old.clone()]).arg(&b[new.clone()]);
            }
            w.finish();
        });
    }
}

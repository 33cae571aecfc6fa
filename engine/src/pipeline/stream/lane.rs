//! One fetch connection's reads: its streams in a rotating order, whether they have
//! backlog, its reads in flight, the payload size it expects.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::Instant;

use bytes::Bytes;
use ringq_resp::CommandWriter;

use super::reply::{parse_read, ReadReply};
use super::{StreamPlan, StreamTag};
use crate::conn::{Conn, Failure, Tag};
use crate::credit::{Credits, Grant, SizeEstimate};
use crate::handler::Message;

/// An XREADGROUP in flight: the credit it holds until it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadCmd {
    pub count: u32,
    pub bytes: u64,
    /// With BLOCK: may wait on the server for the block timeout.
    pub blocking: bool,
}

impl ReadCmd {
    /// What the read holds of its lane's credit.
    fn grant(&self) -> Grant {
        Grant {
            count: self.count,
            bytes: self.bytes,
        }
    }
}

pub(crate) struct Lane {
    index: usize,
    order: VecDeque<u32>,
    backlog: bool,
    in_flight: u32,
    pub sizes: SizeEstimate,
}

impl Lane {
    pub(crate) fn new(index: usize, streams: Vec<u32>) -> Self {
        Self {
            index,
            order: streams.into(),
            backlog: true,
            in_flight: 0,
            sizes: SizeEstimate::default(),
        }
    }

    /// Queues as many reads as credit and pipeline depth allow: pipelined while there
    /// is backlog, one blocking read when dry.
    pub(crate) fn fill(
        &mut self,
        plan: &StreamPlan,
        claim: bool,
        conn: &mut Conn<StreamTag>,
        credits: &mut Credits,
        now: Instant,
    ) {
        let c = &plan.consumer;
        loop {
            if self.order.is_empty() {
                return;
            }
            let depth = if self.backlog { c.pipeline } else { 1 };
            if self.in_flight >= depth {
                return;
            }
            let blocking = !self.backlog;
            let want = c.batch.saturating_mul(self.order.len() as u32);
            let Some(grant) = credits.grant_fetch(
                plan.budget.as_deref(),
                self.index,
                blocking,
                want,
                self.sizes.get(),
                depth,
            ) else {
                return;
            };
            // COUNT is per stream: name as many streams as the grant has messages, and
            // ask each for its share.
            let k = (self.order.len() as u32).min(grant.count).max(1) as usize;
            let per = (grant.count / k as u32).max(1);
            let names = self
                .order
                .iter()
                .take(k)
                .map(|&s| &c.streams[s as usize].name);
            let allow = plan.timing.allow(blocking.then_some(c.block_timeout));
            let block = &plan.block_ms;
            conn.command(
                Tag::Pipe(StreamTag::Read(ReadCmd {
                    count: grant.count,
                    bytes: grant.bytes,
                    blocking,
                })),
                now,
                allow,
                |buf| {
                    let n = 7 + if blocking { 2 } else { 0 } + if claim { 2 } else { 0 } + 2 * k;
                    let mut w = CommandWriter::new(buf, n)
                        .arg("XREADGROUP")
                        .arg("GROUP")
                        .arg(&c.group)
                        .arg(&c.id)
                        .arg("COUNT")
                        .arg_int(i64::from(per));
                    if blocking {
                        w = w.arg("BLOCK").arg(block);
                    }
                    if claim {
                        // Entries idle past the lease with any consumer come first.
                        w = w.arg("CLAIM").arg_int(c.lease.as_millis().max(1) as i64);
                    }
                    w.arg("STREAMS")
                        .args(names)
                        .args(std::iter::repeat(">").take(k))
                        .finish();
                },
            );
            self.in_flight += 1;
        }
    }

    /// A read answered: its messages go to `out`, its credit is settled, the order
    /// rotates, and an empty answer means the streams are dry.
    #[allow(
        clippy::too_many_arguments,
        reason = "a read reply updates the lane, the credits and two outputs, each borrowed separately from the pipeline"
    )]
    pub(crate) fn on_reply<'f>(
        &mut self,
        plan: &StreamPlan,
        read: ReadCmd,
        frame: &'f Bytes,
        received_ns: u64,
        credits: &mut Credits,
        out: &mut Vec<Message<'f>>,
        filtered: &mut Vec<(u32, Range<usize>)>,
    ) -> Result<ReadReply, Failure> {
        self.in_flight = self.in_flight.saturating_sub(1);
        let start = out.len();
        let r = match parse_read(plan, frame, received_ns, out, filtered) {
            Ok(r) => r,
            Err(e) => {
                out.truncate(start);
                credits.forget_fetch(
                    plan.budget.as_deref(),
                    self.index,
                    read.grant(),
                    read.blocking,
                );
                return Err(e);
            }
        };
        if let Some(b) = &plan.budget {
            if read.blocking {
                // Kept what the budget grants; the rest stay pending (read again by a
                // later run of this consumer, or claimed after the lease).
                let kept = b.claim(r.count);
                out.truncate(start + kept as usize);
            } else {
                b.unclaim(read.count.saturating_sub(r.count));
            }
        }
        let got = (out.len() - start) as u32;
        let bytes: u64 = out[start..].iter().map(|m| m.payload().len() as u64).sum();
        self.sizes.note(got, r.largest);
        credits.settle(
            self.index,
            Grant {
                count: read.count,
                bytes: read.bytes,
            },
            got,
            bytes,
        );
        let seen = r.count as usize + filtered.len();
        self.backlog = seen > 0;
        if let Some(s) = self.order.pop_front() {
            self.order.push_back(s);
        }
        Ok(ReadReply { bytes, ..r })
    }

    /// A read that will not answer: its credit and budget claim come back.
    pub(crate) fn forget(&mut self, plan: &StreamPlan, read: ReadCmd, credits: &mut Credits) {
        self.in_flight = self.in_flight.saturating_sub(1);
        credits.forget_fetch(
            plan.budget.as_deref(),
            self.index,
            read.grant(),
            read.blocking,
        );
    }

    /// The connection was lost: nothing is in flight on it any more.
    pub(crate) fn reset(&mut self) {
        self.in_flight = 0;
        self.backlog = true;
    }
}

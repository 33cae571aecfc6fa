//! One connection's pop state: its queues in a rotating order, whether they have backlog,
//! its pops in flight, the payload size it expects, and messages to push back.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use ringq_resp::CommandWriter;

use super::reply::{parse_pop_reply, PopReply};
use super::{PopCmd, PopPlan, PopStrategy, PopTag};
use crate::conn::{Conn, Failure, Tag};
use crate::credit::{Credits, Grant, SizeEstimate};
use crate::handler::Message;

/// The pop state of one connection.
pub(crate) struct Lane {
    /// This lane's index on its shard (its credit account).
    index: usize,
    /// Indices into the consumer's queue list, rotated for fairness.
    order: VecDeque<u32>,
    streak: (u32, u32),
    backlog: bool,
    /// Pops sent on the lane's current connection and not yet answered.
    in_flight: u32,
    /// The payload size to plan pops with, learned from replies.
    sizes: SizeEstimate,
    /// Messages popped beyond the [`Budget`](super::Budget), in pop order, waiting for the lane's pops in
    /// flight to answer so they go back to the server in one go, in the right order (a
    /// later pop on this connection took messages from further left; see
    /// `PopPipeline::push_back`). No pop is issued while any wait.
    pub returns: Vec<Message<'static>>,
}

impl Lane {
    pub(crate) fn new(index: usize, queues: Vec<u32>) -> Self {
        Self {
            index,
            order: queues.into(),
            streak: (u32::MAX, 0),
            backlog: true,
            in_flight: 0,
            sizes: SizeEstimate::default(),
            returns: Vec::new(),
        }
    }

    /// Pops sent and not yet answered.
    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// A pop of this lane will not answer (its connection was lost): its credit and its
    /// budget claim come back. Returns how many messages it had asked for.
    pub(crate) fn forget(&mut self, plan: &PopPlan, pop: &PopCmd, credits: &mut Credits) -> u32 {
        if !pop.late {
            self.in_flight = self.in_flight.saturating_sub(1);
            credits.release(self.index, pop.count, pop.bytes);
        }
        if let (Some(b), false) = (&plan.budget, pop.blocking) {
            b.unclaim(pop.count);
        }
        pop.count
    }

    /// The lane's connection stalled: its pops in flight stay on it, to answer late, and
    /// give their credit back so a fresh connection can pop at once. Their budget claims
    /// stay until they answer or are lost. The caller marks them late.
    pub(crate) fn detach(&mut self, pop: &PopCmd, credits: &mut Credits) {
        if !pop.late {
            self.in_flight = self.in_flight.saturating_sub(1);
            credits.release(self.index, pop.count, pop.bytes);
        }
        self.backlog = true;
    }

    /// The lane's connection was lost: no pop of it is in flight any more.
    pub(crate) fn reset(&mut self) {
        if !self.returns.is_empty() {
            tracing::error!(
                "connection lost before {} message(s) popped beyond the limit went back to the server; they are lost",
                self.returns.len()
            );
            self.returns.clear();
        }
        self.in_flight = 0;
        self.backlog = true;
    }

    /// Queues as many pops as credits, pipeline depth and mode allow.
    pub(crate) fn fill(
        &mut self,
        plan: &PopPlan,
        conn: &mut Conn<PopTag>,
        credits: &mut Credits,
        now: Instant,
    ) {
        let c = &plan.consumer;
        loop {
            if self.order.is_empty() || !self.returns.is_empty() {
                return;
            }
            // With backlog, pops (even BRPOP/BLMPOP, which then answer at once) are
            // pipelined; once the queues run dry, one blocking pop goes out alone, so
            // nothing waits behind a command that may block for the whole timeout.
            let depth = if self.backlog { c.pipeline } else { 1 };
            if self.in_flight >= depth {
                return;
            }
            let lmpop = conn.server().has_lmpop() && c.strategy != PopStrategy::Single;
            let blocking = match c.strategy {
                PopStrategy::Single | PopStrategy::BlockingBatch => true,
                PopStrategy::Adaptive => !self.backlog || !lmpop,
            };
            let mut want = if lmpop { c.batch } else { 1 };
            if let Some(b) = &plan.budget {
                // Never ask for more than the budget has left unclaimed.
                want = b.available(want);
                if want == 0 {
                    return;
                }
            }
            let Some(mut grant) =
                credits.grant(self.index, blocking, want, self.sizes.get(), depth)
            else {
                return;
            };
            if let (Some(b), false) = (&plan.budget, blocking) {
                // See `Budget`: only non-blocking pops reserve. Another shard may have
                // claimed meanwhile; ask for what was granted.
                let claimed = b.claim(grant.count);
                if claimed < grant.count {
                    credits.release(self.index, grant.count - claimed, 0);
                    grant.count = claimed;
                }
                if claimed == 0 {
                    credits.release(self.index, 0, grant.bytes);
                    return;
                }
            }
            let count = grant.count;
            let nkeys: usize = self
                .order
                .iter()
                .map(|&q| c.queues[q as usize].levels.len())
                .sum();
            let keys = self
                .order
                .iter()
                .flat_map(|&q| c.queues[q as usize].levels.iter().map(|(_, k)| k));
            let allow = if blocking {
                c.block_timeout + plan.reply_grace
            } else {
                plan.reply_timeout
            };
            let block = if conn.server().version >= (6, 0, 0) {
                &plan.block_secs
            } else {
                &plan.block_secs_whole
            };
            conn.command(
                Tag::Pipe(PopTag::Pop(PopCmd {
                    count,
                    blocking,
                    bytes: grant.bytes,
                    late: false,
                })),
                now,
                allow,
                |buf: &mut BytesMut| {
                    if !lmpop {
                        // BRPOP key [key ...] timeout
                        let mut w = CommandWriter::new(buf, 2 + nkeys).arg("BRPOP").args(keys);
                        w = w.arg(block);
                        w.finish();
                    } else {
                        // BLMPOP timeout numkeys key [key ...] RIGHT COUNT n, or
                        // LMPOP numkeys key [key ...] RIGHT COUNT n
                        let w = if blocking {
                            CommandWriter::new(buf, 6 + nkeys).arg("BLMPOP").arg(block)
                        } else {
                            CommandWriter::new(buf, 5 + nkeys).arg("LMPOP")
                        };
                        w.arg_int(nkeys as i64)
                            .args(keys)
                            .arg("RIGHT")
                            .arg("COUNT")
                            .arg_int(i64::from(count))
                            .finish();
                    }
                },
            );
            self.in_flight += 1;
        }
    }

    /// Parses a pop reply into `out` (appending) and updates the cycle, the size estimate
    /// and the credits. A late reply (its connection stalled and was replaced) is
    /// delivered all the same: its messages are real pops, held from their arrival.
    ///
    /// # Errors
    /// `Retry` errors (LOADING, READONLY…) or fatal ones (WRONGTYPE…).
    pub(crate) fn on_reply<'f>(
        &mut self,
        plan: &PopPlan,
        frame: &'f Bytes,
        pop: PopCmd,
        received_ns: u64,
        credits: &mut Credits,
        out: &mut Vec<Message<'f>>,
    ) -> Result<PopReply, Failure> {
        let start = out.len();
        let parsed = parse_pop_reply(plan, frame, received_ns, out);
        let mut reply = match parsed {
            Ok(r) => r,
            Err(e) => {
                out.truncate(start);
                if !pop.late {
                    self.in_flight = self.in_flight.saturating_sub(1);
                    credits.release(self.index, pop.count, pop.bytes);
                }
                if let (Some(b), false) = (&plan.budget, pop.blocking) {
                    b.unclaim(pop.count);
                }
                return Err(e);
            }
        };
        let got = reply.count;
        if let Some(b) = &plan.budget {
            if pop.blocking {
                // Claimed on arrival: what the budget grants is kept, the rest goes back.
                let kept = b.claim(got);
                if kept < got {
                    reply.excess = got - kept;
                    reply.count = kept;
                    reply.bytes = out[start + kept as usize..]
                        .iter()
                        .fold(reply.bytes, |n, m| n - m.payload().len() as u64);
                }
            } else {
                b.unclaim(pop.count.saturating_sub(got));
            }
        }
        self.sizes.note(got, reply.largest);
        if pop.late {
            credits.hold(self.index, reply.count, reply.bytes);
        } else {
            self.in_flight = self.in_flight.saturating_sub(1);
            credits.settle(
                self.index,
                Grant {
                    count: pop.count,
                    bytes: pop.bytes,
                },
                reply.count,
                reply.bytes,
            );
            if got == 0 {
                self.backlog = false;
            } else if !pop.blocking || got >= pop.count {
                self.backlog = true;
            }
        }
        if let Some(q) = reply.queue {
            self.rotate_after(plan, q);
        }
        Ok(reply)
    }

    fn rotate_after(&mut self, plan: &PopPlan, q: u32) {
        let weight = plan.consumer.queues.get(q as usize).map_or(1, |x| x.weight);
        if self.streak.0 == q {
            self.streak.1 += 1;
        } else {
            self.streak = (q, 1);
        }
        if self.streak.1 < weight {
            return;
        }
        self.streak = (u32::MAX, 0);
        if let Some(pos) = self.order.iter().position(|&x| x == q) {
            if let Some(x) = self.order.remove(pos) {
                self.order.push_back(x);
            }
        }
    }

    #[cfg(test)]
    fn order(&self) -> Vec<u32> {
        self.order.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::pop::{PopConsumer, Queue};

    #[test]
    fn served_queue_moves_to_the_back_after_its_weight() {
        let p = PopPlan::new(
            PopConsumer::new([Queue::new("a").weight(2), Queue::new("b"), Queue::new("c")]),
            None,
            &[vec![0, 1, 2]],
            (
                std::time::Duration::from_secs(2),
                std::time::Duration::from_secs(10),
            ),
        );
        let mut lane = Lane::new(0, vec![0, 1, 2]);
        lane.rotate_after(&p, 0);
        assert_eq!(
            lane.order(),
            vec![0, 1, 2],
            "weight 2: first turn keeps a in front"
        );
        lane.rotate_after(&p, 0);
        assert_eq!(lane.order(), vec![1, 2, 0]);
        lane.rotate_after(&p, 1);
        assert_eq!(lane.order(), vec![2, 0, 1]);
        lane.rotate_after(&p, 0);
        lane.rotate_after(&p, 2);
        assert_eq!(lane.order(), vec![0, 1, 2]);
    }
}

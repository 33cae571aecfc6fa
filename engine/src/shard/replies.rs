//! Replies: routing each one to what it answers, handing popped messages to the handler,
//! and accounting for their outcomes (stats, credits, the message budget).

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use ringq_resp::{CommandWriter, Decoder, Frame};

use super::{recycle, HandlerSide, Shard, Tally};
use crate::conn::{Failure, Phase, PopCmd, Tag};
use crate::error::{Error, ErrorKind};
use crate::handler::{Message, Outcome};
use crate::pop::PopError;

impl Shard {
    /// Decodes and routes every complete reply of connection `id`.
    pub(super) fn process_replies(&mut self, id: usize, now: Instant) -> Result<(), Failure> {
        loop {
            let Some((pending, frame)) = self.conns[id].next_reply()? else {
                return Ok(());
            };
            match pending.tag {
                Tag::Pop(pop) => self.on_pop_reply(id, pop, &frame, now)?,
                Tag::Ping => {
                    if frame.first() != Some(&b'-') {
                        self.conns[id].note_served();
                    } else {
                        let conn = &self.conns[id];
                        return Err(Failure::Retry(Error::new(
                            ErrorKind::Server,
                            format!(
                                "{} answered the heartbeat PING with {}",
                                conn.peer(),
                                String::from_utf8_lossy(&frame).trim_end()
                            ),
                        )));
                    }
                }
                Tag::Unblock { conn } => {
                    let unblocked = frame.starts_with(b":1");
                    if frame.first() == Some(&b'-') {
                        tracing::warn!(
                            shard = self.index,
                            "CLIENT UNBLOCK refused ({}); the stop waits for blocked pops to time out instead",
                            String::from_utf8_lossy(&frame).trim_end()
                        );
                        self.unblock_off = true;
                    } else if !unblocked {
                        // Not blocked at that moment (its reply was on the way, or the
                        // next pipelined pop had not started): try again if still blocking.
                        if let Some(c) = self.conns.get_mut(conn as usize) {
                            c.unblock_sent = false;
                        }
                    }
                }
                Tag::PushBack { count } => {
                    let conn = &self.conns[id];
                    match Decoder::new().build(&frame) {
                        Ok(Frame::Integer(_)) => {
                            tracing::debug!(conn = %conn.name, count, "pushed back messages beyond the limit");
                        }
                        Ok(f) => tracing::error!(
                            conn = %conn.name,
                            "{count} message(s) beyond the limit could not be pushed back to {}: {f:?}; they are lost",
                            conn.peer()
                        ),
                        Err(e) => return Err(Failure::Fatal(Error::protocol(&conn.peer(), e))),
                    }
                }
                tag => {
                    let was_ready_before = self.conns[id].ever_ready;
                    if self.conns[id].on_handshake_reply(tag, &frame, now)? {
                        self.stats.add(&self.stats.connections_ready, 1);
                        if was_ready_before {
                            self.stats.add(&self.stats.reconnects, 1);
                        }
                        tracing::debug!(conn = %self.conns[id].name, server = ?self.conns[id].server, "ready");
                    }
                }
            }
            let c = &self.conns[id];
            let finished = c.phase == Phase::Ready
                && c.pending.is_empty()
                && Some(id) != self.unblocker
                && (self.stopping || c.draining.is_some());
            if finished {
                if c.draining.is_some() {
                    tracing::info!(conn = %c.name, "the stalled connection delivered every late reply; closing it");
                }
                self.stop_conn(id);
            }
        }
    }

    /// A pop answered on connection `id`: its messages go to the handler, anything popped
    /// beyond the budget goes back to the server.
    fn on_pop_reply(
        &mut self,
        id: usize,
        pop: PopCmd,
        frame: &bytes::Bytes,
        now: Instant,
    ) -> Result<(), Failure> {
        let lane = self.conns[id].lane;
        let unblock_sent = std::mem::take(&mut self.conns[id].unblock_sent);
        // The messages borrow their payloads from `frame`; the vector's allocation is
        // kept across replies.
        let mut msgs = recycle(std::mem::take(&mut self.msgs));
        let reply = match self.lanes[lane].on_reply(
            &self.plan,
            frame,
            pop,
            self.turn_ns,
            &mut self.credits,
            &mut msgs,
        ) {
            Ok(r) => r,
            Err(e) => {
                self.msgs = recycle(msgs);
                return Err(match e {
                    PopError::Retry(e) => Failure::Retry(e),
                    PopError::Fatal(e) => Failure::Fatal(e),
                });
            }
        };
        self.conns[id].note_served();
        if let Some(text) = &reply.unblocked {
            if !unblock_sent {
                // Not ours: an administrator's CLIENT UNBLOCK, or a role change (the
                // server became a replica). The next pop tells which: a replica refuses
                // it with READONLY, and the connection then reconnects with backoff.
                tracing::warn!(
                    conn = %self.conns[id].name,
                    "{} ended a blocked pop: {}; popping again",
                    self.conns[id].peer(),
                    String::from_utf8_lossy(text)
                );
            }
        }
        if reply.excess > 0 {
            let kept = reply.count as usize;
            let excess = msgs.drain(kept..).map(|m| m.detach());
            self.lanes[lane].returns.extend(excess);
        }
        let conn = &self.conns[id];
        let pops_left = if conn.draining.is_some() {
            conn.pending.iter().any(|p| matches!(p.tag, Tag::Pop(_)))
        } else {
            self.lanes[lane].in_flight() > 0
        };
        if !pops_left && !self.lanes[lane].returns.is_empty() {
            self.push_back(id, now);
        }
        let s = &self.stats;
        s.add(&s.pops, 1);
        if reply.count == 0 {
            s.add(&s.empty_pops, 1);
        }
        if pop.late {
            s.add(&s.late_messages, u64::from(reply.count));
        }
        if let Some(q) = reply.queue {
            if let Some(c) = s.per_queue.get(q as usize) {
                s.add(c, u64::from(reply.count));
            }
        }
        debug_assert_eq!(msgs.len(), reply.count as usize);
        self.dispatch(&mut msgs, reply.bytes, lane);
        self.msgs = recycle(msgs);
        Ok(())
    }

    /// Sends the messages connection `id`'s lane popped beyond the
    /// [`PopConsumer::limit`](crate::PopConsumer::limit) budget back to the right end of
    /// their lists, where they came from. They are in pop order (rightmost first, across
    /// all of the lane's replies), so walking them from the end and pushing each run of
    /// one key last-to-first with RPUSH leaves every list as it was before the pops.
    pub(super) fn push_back(&mut self, id: usize, now: Instant) {
        let lane = self.conns[id].lane;
        let back = std::mem::take(&mut self.lanes[lane].returns);
        let allow = self.plan.consumer.reply_timeout;
        let mut end = back.len();
        while end > 0 {
            let key = back[end - 1].key();
            let mut begin = end - 1;
            while begin > 0 && back[begin - 1].key() == key {
                begin -= 1;
            }
            let run = &back[begin..end];
            let count = run.len() as u32;
            self.conns[id].command(Tag::PushBack { count }, now, allow, |buf| {
                CommandWriter::new(buf, 2 + run.len())
                    .arg("RPUSH")
                    .arg(key)
                    .args(run.iter().rev().map(|m| m.payload()))
                    .finish();
            });
            end = begin;
        }
    }

    /// Hands the messages just popped by `lane` to the handler, right here (inline) or to
    /// workers, and leaves `msgs` empty.
    fn dispatch(&mut self, msgs: &mut Vec<Message<'_>>, bytes: u64, lane: usize) {
        let n = msgs.len();
        if n == 0 {
            return;
        }
        let handler = match &mut self.handler {
            HandlerSide::Workers(d) => {
                d.submit(msgs);
                return;
            }
            HandlerSide::Inline(h) => h,
        };
        let wait_ns = self.turn_started.elapsed().as_nanos().max(1) as u64;
        let _ = self
            .latency
            .record_n(wait_ns.min(self.latency.high()), n as u64);
        self.outcomes.clear();
        let outcomes = &mut self.outcomes;
        if std::panic::catch_unwind(AssertUnwindSafe(|| handler.handle_batch(msgs, outcomes)))
            .is_err()
        {
            self.outcomes.clear();
            self.shared.fail(Error::new(
                ErrorKind::Handler,
                "a handler panicked on a shard thread; stopping",
            ));
        }
        let mut tally = Tally::default();
        for i in 0..n {
            tally.add(self.outcomes.get(i).copied().unwrap_or(Outcome::Retry));
        }
        tally.bytes = bytes;
        msgs.clear();
        self.credits.release(lane, tally.n as u32, tally.bytes);
        self.finish(tally);
    }

    /// Takes outcomes workers returned.
    pub(super) fn collect_outcomes(&mut self) {
        let HandlerSide::Workers(d) = &mut self.handler else {
            return;
        };
        let mut tally = Tally::default();
        let (plan, credits) = (&self.plan, &mut self.credits);
        d.collect(|done| {
            let len = done.msg.payload().len() as u64;
            credits.release(plan.lane_of(done.msg.queue_index), 1, len);
            tally.bytes += len;
            tally.add(done.outcome);
        });
        if tally.n > 0 {
            self.finish(tally);
        }
    }

    /// Accounts for handled messages (their credit is back already): stats, the budget.
    fn finish(&mut self, t: Tally) {
        let s = &self.stats;
        s.add(&s.messages, t.n);
        s.add(&s.bytes, t.bytes);
        s.add(&s.acked, t.ack);
        s.add(&s.retried, t.retry);
        s.add(&s.dead, t.dead);
        if self.plan.budget.as_ref().is_some_and(|b| b.delivered(t.n)) {
            // The whole `limit` has been handled: stop every shard.
            self.shared.stop_all();
        }
    }
}

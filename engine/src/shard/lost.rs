//! Connections that fail or stall: deadlines, the stalled-connection drain, reconnects.
//!
//! ## Why a stalled connection is kept, not closed
//! Closing a socket cannot take back commands the server has not read yet. A server that
//! hangs (kill -STOP, a long fork, a VM pause) past a pop's deadline still runs the
//! pipelined pops in its socket buffer when it resumes, and their replies would go to a
//! closed socket: whole batches lost, though nothing failed on the wire. So a connection
//! whose reply is overdue while pops (or push-backs) are unanswered is *retired*, not
//! closed ([`Shard::retire`]):
//!
//! - a fresh connection takes over its lane at once and pops from the lane's own credit;
//! - the retired one sends nothing new, and stays open to deliver the replies still owed —
//!   they are real pops — until they have all arrived, the server closes it, or
//!   [`EngineBuilder::stalled_drain`](crate::EngineBuilder::stalled_drain) passes;
//! - its pops give their credit back when it is retired, and late messages are held
//!   from their arrival like any others, so the lane's fresh connection is never starved
//!   by a connection that may never answer. The prefetch limit can then be exceeded by
//!   what the stalled connection had asked for (at most one lane's share per stall);
//! - budget claims (`PopConsumer::limit`) stay with the late pops until they answer or are
//!   lost, so `--count N` still never pops more than N;
//! - order: the server runs the retired connection's buffered commands before any pop of
//!   the fresh one, which must first complete its handshake, so each queue's messages
//!   still reach the handler oldest first.
//!
//! What remains of the at-most-once window: replies lost when the connection itself is
//! lost (RST, EOF, CLIENT KILL) or closed at the drain limit or a stop while pops are
//! unanswered. Those pops are counted in `Stats::unanswered_pops` and what they asked for
//! in `Stats::possibly_lost`.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::Shard;
use crate::conn::{Failure, Phase, Tag};
use crate::error::{Error, ErrorKind};
use crate::timer::TimerEvent;

impl Shard {
    /// The deadline timer of connection `id` fired.
    pub(super) fn on_deadline(&mut self, id: usize, gen: u32, now: Instant) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        // Not armed, or a timer superseded by an earlier one that is still to fire.
        if c.gen != gen || !c.deadline_armed.is_some_and(|at| at <= now) {
            return;
        }
        c.deadline_armed = None;
        if c.draining.is_some() {
            return;
        }
        let Some(head) = c.pending.front().copied() else {
            return;
        };
        if head.deadline > now {
            self.timers.add(
                head.deadline,
                TimerEvent::Deadline {
                    conn: id as u32,
                    gen,
                },
            );
            c.deadline_armed = Some(head.deadline);
            return;
        }
        let owes_effects = c
            .pending
            .iter()
            .any(|p| matches!(p.tag, Tag::Pop(_) | Tag::PushBack { .. }));
        let what = format!(
            "no reply from {} to {:?} within its deadline",
            c.peer(),
            head.tag
        );
        if owes_effects && c.phase == Phase::Ready && !self.stopping && Some(id) != self.unblocker {
            self.retire(id, what, now);
            return;
        }
        let e = Error::new(ErrorKind::Timeout, format!("{what}; reconnecting"));
        self.fail_conn(id, Failure::Retry(e), now);
        self.finish_close(id, now);
    }

    /// Connection `id` stalled with pops unanswered: a fresh connection takes over its
    /// lane and this one drains (see the module docs).
    fn retire(&mut self, id: usize, what: String, now: Instant) {
        let lane = self.conns[id].lane;
        let until = now + self.stalled_drain;
        let mut pops = 0u32;
        let mut asked = 0u64;
        {
            let conn = &mut self.conns[id];
            conn.draining = Some(until);
            for p in conn.pending.iter_mut() {
                if let Tag::Pop(pop) = &mut p.tag {
                    if let Some(l) = self.lanes.get_mut(lane) {
                        l.detach(pop, &mut self.credits);
                    }
                    pop.late = true;
                    pops += 1;
                    asked += u64::from(pop.count);
                }
            }
        }
        self.stats.add(&self.stats.stalls, 1);
        // It no longer serves: the fresh connection counts as ready once it is.
        self.stats.connections_ready.fetch_sub(1, Ordering::Relaxed);
        let gen = self.conns[id].gen;
        self.timers.add(
            until,
            TimerEvent::DrainLimit {
                conn: id as u32,
                gen,
            },
        );
        // A slot whose stalled connection finished draining is reused.
        let slot = self
            .conns
            .iter()
            .position(|c| c.phase == Phase::Done && c.retired)
            .unwrap_or(self.conns.len());
        let prev_gen = self.conns.get(slot).map_or(0, |c| c.gen);
        let mut fresh = self.conns[id].successor(slot as u32, prev_gen);
        self.conns[id].retired = true;
        let name = fresh.name.clone();
        fresh.phase = Phase::Idle;
        if slot == self.conns.len() {
            self.conns.push(fresh);
        } else {
            self.conns[slot] = fresh;
        }
        tracing::warn!(
            shard = self.index,
            conn = %name,
            "{what}: a fresh connection takes over its queues now; the stalled one stays \
             open for up to {:?} to deliver the replies of its {pops} pop(s) (asking for up \
             to {asked} messages) if the server resumes",
            self.stalled_drain
        );
        self.reconnect(slot, now);
    }

    /// A stalled connection's drain limit passed.
    pub(super) fn on_drain_limit(&mut self, id: usize, gen: u32, now: Instant) {
        let Some(c) = self.conns.get(id) else {
            return;
        };
        if c.gen != gen || !c.draining.is_some_and(|until| until <= now) {
            return;
        }
        let e = Error::new(
            ErrorKind::Timeout,
            format!(
                "{} still owed replies when the stalled connection's drain limit passed; closing it",
                c.peer()
            ),
        );
        self.fail_conn(id, Failure::Retry(e), now);
        self.finish_close(id, now);
    }

    /// Handles a connection failure: fatal ones stop the engine, others reconnect. The
    /// commands it had not seen answered are handed back: pops give back their credit and
    /// budget claims, and are counted as possibly lost.
    pub(super) fn fail_conn(&mut self, id: usize, f: Failure, _now: Instant) {
        let conn = &mut self.conns[id];
        if matches!(conn.phase, Phase::Closing | Phase::Done) {
            return;
        }
        if conn.phase == Phase::Ready && conn.draining.is_none() {
            self.stats.connections_ready.fetch_sub(1, Ordering::Relaxed);
        }
        let lane = conn.lane;
        let draining = conn.draining.is_some();
        let mut pops = 0u64;
        let mut asked = 0u64;
        let mut unreturned = 0u32;
        for p in &conn.pending {
            match &p.tag {
                Tag::Pop(pop) => {
                    pops += 1;
                    if let Some(l) = self.lanes.get_mut(lane) {
                        asked += u64::from(l.forget(&self.plan, pop, &mut self.credits));
                    }
                }
                Tag::PushBack { count } => unreturned += count,
                _ => {}
            }
        }
        self.stats.add(&self.stats.unanswered_pops, pops);
        self.stats.add(&self.stats.possibly_lost, asked);
        match f {
            Failure::Fatal(e) => {
                conn.stop_after_close = true;
                conn.last_error = Some(e.to_string());
                self.shared.fail(e);
            }
            Failure::Retry(e) => {
                if pops > 0 {
                    tracing::warn!(
                        shard = self.index, conn = %conn.name,
                        "{e} ({pops} pop(s) unanswered: up to {asked} messages they may have taken are lost)"
                    );
                } else {
                    tracing::warn!(shard = self.index, conn = %conn.name, "{e}");
                }
                conn.last_error = Some(e.to_string());
                if self.stopping || draining {
                    conn.stop_after_close = true;
                }
            }
        }
        if unreturned > 0 {
            tracing::error!(
                conn = %conn.name,
                "connection lost before {unreturned} message(s) popped beyond the limit were pushed back; they may be lost"
            );
        }
        conn.begin_close(&mut self.driver);
        // A stalled connection's loss leaves its lane's fresh connection alone.
        if !draining {
            if let Some(l) = self.lanes.get_mut(lane) {
                l.reset();
            }
        }
    }

    /// Completes a close once the kernel is done with the connection's operations.
    pub(super) fn finish_close(&mut self, id: usize, now: Instant) {
        let conn = &mut self.conns[id];
        match conn.try_finish_close() {
            None | Some(None) => {}
            Some(Some(backoff)) => {
                if conn.out_of_start_attempts() {
                    let why = conn
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "unknown error".into());
                    conn.phase = Phase::Done;
                    self.shared.fail(Error::new(
                        ErrorKind::ConnectionLost,
                        format!("could not connect after {} attempts: {why}", conn.failures),
                    ));
                    return;
                }
                if self.stopping {
                    conn.phase = Phase::Done;
                    return;
                }
                self.timers.add(
                    now + backoff,
                    TimerEvent::Reconnect {
                        conn: conn.id,
                        gen: conn.gen,
                    },
                );
            }
        }
    }
}

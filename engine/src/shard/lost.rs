//! Connections that fail or stall: deadlines, the stalled-connection drain, reconnects.
//! What a stall or a loss means for the commands in flight is the pipeline's
//! (`Pipeline::on_stalled`, `Pipeline::on_lost`); this module keeps the connections.
//!
//! ## Why a stalled connection is kept, not closed
//! Closing a socket cannot take back commands the server has not read yet. A server that
//! hangs (kill -STOP, a long fork, a VM pause) past a pop's deadline still runs the
//! pipelined pops in its socket buffer when it resumes, and their replies would go to a
//! closed socket: whole batches lost, though nothing failed on the wire. So a connection
//! whose reply is overdue while commands that owe effects (`Pipeline::owes_effects`: in pop
//! mode, pops and push-backs) are unanswered is *retired*, not closed ([`Shard::retire`]):
//!
//! - a fresh connection takes over its role (pop: its lane) at once and pops from the
//!   lane's own credit;
//! - the retired one sends nothing new, and stays open to deliver the replies still owed —
//!   they are real pops — until they have all arrived, the server closes it, or
//!   [`EngineBuilder::stalled_drain`](crate::EngineBuilder::stalled_drain) passes;
//! - its pops give their credit back when it is retired, and late messages are held
//!   from their arrival like any others, so the lane's fresh connection is never starved
//!   by a connection that may never answer. The prefetch limit can then be exceeded by
//!   what the stalled connection had asked for (at most one lane's share per stall);
//! - budget claims (`EngineBuilder::limit`) stay with the late pops until they answer or are
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
use crate::backend::Backend;
use crate::conn::{Deadline, Failure, Phase};
use crate::error::{Error, ErrorKind};
use crate::pipeline::Pipeline;
use crate::timer::TimerEvent;

impl<P: Pipeline, B: Backend> Shard<P, B> {
    /// The deadline timer of connection `id` fired.
    pub(super) fn on_deadline(&mut self, id: usize, gen: u32, now: Instant) {
        let is_control = self.io.is_control(id);
        let Some(c) = self.io.conns.get_mut(id) else {
            return;
        };
        if c.gen() != gen {
            return;
        }
        let head = match c.deadline_fired(now) {
            Deadline::Moot => return,
            Deadline::Rearm(at) => {
                let conn = id as u32;
                self.io.timers.add(at, TimerEvent::Deadline { conn, gen });
                return;
            }
            Deadline::Overdue(head) => head,
        };
        let pipeline = &self.pipeline;
        let owes_effects = c.any_cmd(|cmd| pipeline.owes_effects(cmd));
        let what = match c.phase() {
            Phase::Connecting => {
                format!("cannot connect to {} within the connect timeout", c.peer())
            }
            Phase::Tls => format!(
                "no TLS handshake with {} within the connect timeout: is it a plaintext port \
                 (use redis://)?",
                c.peer()
            ),
            _ => format!("no reply from {} to {head:?} within its deadline", c.peer()),
        };
        if owes_effects && c.phase() == Phase::Ready && !self.io.stopping && !is_control {
            self.retire(id, what, now);
            return;
        }
        let kind = if c.phase() == Phase::Tls {
            ErrorKind::Tls
        } else {
            ErrorKind::Timeout
        };
        let e = Error::new(kind, format!("{what}; reconnecting"));
        self.fail_conn(id, Failure::Retry(e), now);
        self.finish_close(id, now);
    }

    /// Connection `id` stalled with commands that owe effects: a fresh connection takes
    /// over its role and this one drains (see the module docs).
    pub(super) fn retire(&mut self, id: usize, what: String, now: Instant) {
        let until = now + self.stalled_drain;
        self.io.conns[id].set_draining(until);
        let owed = self.pipeline.on_stalled(&mut self.io, id);
        let s = &self.io.stats;
        s.add(&s.stalls, 1);
        // It no longer serves: the fresh connection counts as ready once it is.
        s.connections_ready.fetch_sub(1, Ordering::Relaxed);
        let gen = self.io.conns[id].gen();
        self.io.timers.add(
            until,
            TimerEvent::DrainLimit {
                conn: id as u32,
                gen,
            },
        );
        // A slot whose stalled connection finished draining is reused.
        let conns = &mut self.io.conns;
        let slot = conns
            .iter()
            .position(|c| c.phase() == Phase::Done && c.retired())
            .unwrap_or(conns.len());
        let prev_gen = conns.get(slot).map_or(0, |c| c.gen());
        let fresh = conns[id].successor(slot as u32, prev_gen);
        conns[id].set_retired();
        let name = fresh.name().to_owned();
        if slot == conns.len() {
            conns.push(fresh);
        } else {
            conns[slot] = fresh;
        }
        tracing::warn!(
            shard = self.index,
            conn = %name,
            "{what}: a fresh connection takes over its queues now; the stalled one stays \
             open for up to {:?} to deliver the replies of {owed} if the server resumes",
            self.stalled_drain
        );
        self.reconnect(slot, now);
    }

    /// A stalled connection's drain limit passed.
    pub(super) fn on_drain_limit(&mut self, id: usize, gen: u32, now: Instant) {
        let Some(c) = self.io.conns.get(id) else {
            return;
        };
        if c.gen() != gen || !c.draining().is_some_and(|until| until <= now) {
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
    /// pipeline's commands it had not seen answered are handed back to the pipeline.
    pub(super) fn fail_conn(&mut self, id: usize, f: Failure, _now: Instant) {
        if matches!(self.io.conns[id].phase(), Phase::Closing | Phase::Done) {
            return;
        }
        let f = self.note_failure(id, f);
        let conn = &mut self.io.conns[id];
        if conn.serves() {
            self.io
                .stats
                .connections_ready
                .fetch_sub(1, Ordering::Relaxed);
        }
        let draining = conn.draining().is_some();
        let kind = match &f {
            Failure::Fatal(e) | Failure::Retry(e) => e.kind(),
        };
        self.io
            .stats
            .conn_errors
            .get(kind.index())
            .map(|c| c.fetch_add(1, Ordering::Relaxed));
        let mut unanswered = std::mem::take(&mut self.unanswered);
        conn.take_unanswered(&mut unanswered);
        match f {
            Failure::Fatal(e) => {
                conn.stop_after_close();
                conn.set_last_error(&e);
                self.io.shared.fail(e);
            }
            Failure::Retry(e) => {
                if P::LOSSES_ARE_EVENTS {
                    // Told as an event (a gap) as well: see `handler::EVENT_TARGET`.
                    tracing::warn!(target: "ringq::event", shard = self.index, conn = %conn.name(), "{e}");
                } else {
                    tracing::warn!(shard = self.index, conn = %conn.name(), "{e}");
                }
                conn.set_last_error(&e);
                if self.io.stopping || draining {
                    conn.stop_after_close();
                }
            }
        }
        conn.begin_close(&mut self.driver);
        self.pipeline
            .on_lost(&mut self.io, id, &unanswered, draining);
        unanswered.clear();
        self.unanswered = unanswered;
    }

    /// Completes a close once the kernel is done with the connection's operations.
    pub(super) fn finish_close(&mut self, id: usize, now: Instant) {
        let conn = &mut self.io.conns[id];
        match conn.try_finish_close(&mut self.driver) {
            None | Some(None) => {}
            Some(Some(backoff)) => {
                if conn.out_of_start_attempts() {
                    let why = conn.last_error().unwrap_or("unknown error").to_owned();
                    let kind = match conn.last_kind() {
                        Some(ErrorKind::Tls) => ErrorKind::Tls,
                        _ => ErrorKind::ConnectionLost,
                    };
                    conn.set_done();
                    self.io.shared.fail(Error::new(
                        kind,
                        format!(
                            "could not connect after {} attempts: {why}",
                            conn.failures()
                        ),
                    ));
                    return;
                }
                if self.io.stopping {
                    conn.set_done();
                    return;
                }
                let (conn, gen) = (conn.id(), conn.gen());
                self.io
                    .timers
                    .add(now + backoff, TimerEvent::Reconnect { conn, gen });
            }
        }
    }

    /// Behind Sentinel: when the watcher heard of a failover (`+switch-master`), closes
    /// every connection to another address, so it reconnects — asking the sentinels —
    /// now, not when the old master's errors reach it.
    pub(super) fn follow_failover(&mut self, now: Instant) {
        let Some(s) = &self.conn_cfg.sentinels else {
            return;
        };
        let (seen, to) = s.switched();
        if seen == self.failovers_seen {
            return;
        }
        self.failovers_seen = seen;
        let Some(to) = to else {
            return;
        };
        for id in 0..self.io.conns.len() {
            let c = &self.io.conns[id];
            let live = !matches!(
                c.phase(),
                Phase::Idle | Phase::Resolving | Phase::Closing | Phase::Done
            );
            if live && c.target_addr().is_some_and(|a| a != to) {
                let e = Error::new(
                    ErrorKind::ConnectionLost,
                    format!(
                        "failover: the sentinels moved the master from {} to {to}; reconnecting",
                        c.peer()
                    ),
                );
                self.fail_conn(id, Failure::Retry(e), now);
                self.finish_close(id, now);
            }
        }
    }
}

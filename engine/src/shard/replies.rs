//! Replies: routing each frame to what it answers (the handshake, the shard's own PING
//! and CLIENT UNBLOCK, or the pipeline), handing the messages the pipeline made of it to
//! the handler, and taking outcomes back to the pipeline.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;

use super::{recycle, HandlerSide, Shard};
use crate::backend::Backend;
use crate::conn::{Failure, Phase, Reply, Tag};
use crate::error::{Error, ErrorKind};
use crate::handler::{Message, Outcome};
use crate::pipeline::Pipeline;

/// Outcome counts of handled messages.
#[derive(Default)]
struct OutcomeCounts {
    n: u64,
    bytes: u64,
    ack: u64,
    retry: u64,
    dead: u64,
}

impl OutcomeCounts {
    fn add(&mut self, o: Outcome) {
        self.n += 1;
        match o {
            Outcome::Ack => self.ack += 1,
            Outcome::Retry => self.retry += 1,
            Outcome::Dead => self.dead += 1,
        }
    }
}

impl<P: Pipeline, B: Backend> Shard<P, B> {
    /// Decodes and routes every complete frame of connection `id`.
    pub(super) fn process_replies(&mut self, id: usize, now: Instant) -> Result<(), Failure> {
        loop {
            let Some(reply) = self.io.conns[id].next_reply()? else {
                return Ok(());
            };
            match reply {
                Reply::Push(frame) => self.deliver(id, None, &frame, now)?,
                Reply::Answer(Tag::Pipe(cmd), frame) => {
                    self.note_round_trip(id, &cmd, now);
                    self.deliver(id, Some(cmd), &frame, now)?;
                }
                Reply::Answer(Tag::Ping, frame) => {
                    if frame.first() != Some(&b'-') {
                        self.io.conns[id].note_served();
                    } else {
                        let conn = &self.io.conns[id];
                        return Err(Failure::Retry(Error::new(
                            ErrorKind::Server,
                            format!(
                                "{} answered the idle PING with {}",
                                conn.peer(),
                                String::from_utf8_lossy(&frame).trim_end()
                            ),
                        )));
                    }
                }
                Reply::Answer(Tag::Unblock { conn }, frame) => self.on_unblock_reply(conn, &frame),
                Reply::Answer(Tag::Depth { source, round }, frame) => {
                    self.on_depth_reply(id, source, round, &frame);
                }
                Reply::Answer(tag @ (Tag::Asking | Tag::Framing), frame) => {
                    if frame.first() == Some(&b'-') {
                        let conn = &self.io.conns[id];
                        let what = if matches!(tag, Tag::Asking) {
                            "ASKING"
                        } else {
                            "a command of a transaction"
                        };
                        return Err(Failure::Retry(Error::new(
                            ErrorKind::Server,
                            format!(
                                "{} refused {what}: {}",
                                conn.peer(),
                                String::from_utf8_lossy(&frame).trim_end()
                            ),
                        )));
                    }
                }
                Reply::Answer(tag, frame) => {
                    let conn = &mut self.io.conns[id];
                    let was_ready_before = conn.ever_ready();
                    if conn.on_handshake_reply(tag, &frame, now)? {
                        let s = &self.io.stats;
                        s.add(&s.connections_ready, 1);
                        if was_ready_before {
                            s.add(&s.reconnects, 1);
                        }
                        tracing::debug!(conn = %conn.name(), server = ?conn.server(), "ready");
                        self.pipeline.on_ready(&mut self.io, id, now);
                    }
                }
            }
            let c = &self.io.conns[id];
            let finished = c.phase() == Phase::Ready
                && c.is_idle()
                && !self.io.is_control(id)
                && (self.io.stopping || c.draining().is_some());
            if finished {
                if c.draining().is_some() {
                    tracing::info!(conn = %c.name(), "the stalled connection delivered every late reply; closing it");
                }
                self.stop_conn(id);
            }
        }
    }

    /// A frame for the pipeline (the reply to its command `cmd`, or a push frame): the
    /// messages it makes of it go to the handler.
    fn deliver(
        &mut self,
        id: usize,
        cmd: Option<P::Cmd>,
        frame: &Bytes,
        now: Instant,
    ) -> Result<(), Failure> {
        // The messages borrow their payloads from `frame`; the vector's allocation is
        // kept across replies.
        let mut msgs = recycle(std::mem::take(&mut self.msgs));
        let made = match cmd {
            Some(cmd) => self
                .pipeline
                .on_reply(&mut self.io, id, cmd, frame, &mut msgs, now),
            None => self
                .pipeline
                .on_push(&mut self.io, id, frame, &mut msgs, now),
        };
        let bytes = match made {
            Ok(bytes) => bytes,
            Err(f) => {
                self.msgs = recycle(msgs);
                return Err(f);
            }
        };
        if cmd.is_some() {
            self.io.conns[id].note_served();
        }
        self.dispatch(Some(id), &mut msgs, bytes);
        self.msgs = recycle(msgs);
        Ok(())
    }

    /// Hands the handler what the pipeline had staged and may go now.
    pub(super) fn dispatch_staged(&mut self) {
        let mut staged = std::mem::take(&mut self.staged);
        let bytes = self.pipeline.take_staged(&mut self.io, &mut staged);
        if !staged.is_empty() {
            self.dispatch(None, &mut staged, bytes);
        }
        self.staged = staged;
    }

    /// The Control connection's `CLIENT UNBLOCK` for connection `conn` answered.
    fn on_unblock_reply(&mut self, conn: u32, frame: &Bytes) {
        if frame.first() == Some(&b'-') {
            tracing::warn!(
                shard = self.index,
                "CLIENT UNBLOCK refused ({}); the stop waits for blocked commands to time out instead",
                String::from_utf8_lossy(frame).trim_end()
            );
            self.unblock_off = true;
        } else if !frame.starts_with(b":1") {
            // Not blocked at that moment (its reply was on the way, or the next
            // pipelined command had not started): try again if still blocking.
            if let Some(c) = self.io.conns.get_mut(conn as usize) {
                c.set_unblock_sent(false);
            }
        }
    }

    /// Hands the messages the pipeline just made of a frame on connection `conn` to the
    /// handler, right here (inline) or to workers, and leaves `msgs` empty. Inline
    /// outcomes go straight back to the pipeline.
    fn dispatch(&mut self, conn: Option<usize>, msgs: &mut Vec<Message<'_>>, bytes: u64) {
        let n = msgs.len();
        if n == 0 {
            return;
        }
        self.count_per_source(msgs);
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
        let began = Instant::now();
        let panicked =
            std::panic::catch_unwind(AssertUnwindSafe(|| handler.handle_batch(msgs, outcomes)))
                .is_err();
        // One clock read per batch; its time is spread over the batch's messages.
        let per = (began.elapsed().as_nanos() as u64 / n as u64).max(1);
        let _ = self
            .process
            .record_n(per.min(self.process.high()), n as u64);
        if panicked {
            self.outcomes.clear();
            self.io.shared.fail(Error::new(
                ErrorKind::Handler,
                "a handler panicked on a shard thread; stopping",
            ));
        }
        // One outcome per message: a missing one (or a panic) is a retry, never an ack.
        self.outcomes.resize(n, Outcome::Retry);
        let mut tally = OutcomeCounts::default();
        for &o in &self.outcomes {
            tally.add(o);
        }
        tally.bytes = bytes;
        self.pipeline
            .on_outcomes(&mut self.io, conn, msgs, &self.outcomes, bytes);
        msgs.clear();
        self.finish(tally);
    }

    /// Records how long the pipeline command just answered on connection `id` took, from
    /// its loop turn to this one, as a fetch or a Control round trip (a blocking fetch,
    /// which waits on the server by design, is left out).
    fn note_round_trip(&mut self, id: usize, cmd: &P::Cmd, now: Instant) {
        if self.pipeline.blocks(cmd) {
            return;
        }
        let Some(queued) = self.io.conns[id].answered_queued() else {
            return;
        };
        let ns = now.saturating_duration_since(queued).as_nanos() as u64;
        let h = if self.io.is_control(id) {
            &mut self.rtt_control
        } else {
            &mut self.rtt_fetch
        };
        let _ = h.record(ns.clamp(1, h.high()));
    }

    /// Counts messages per source (`Stats::per_source`), one add per run of messages of
    /// one source (a reply's messages mostly share theirs).
    fn count_per_source(&self, msgs: &[Message<'_>]) {
        let per = &self.io.stats.per_source;
        let mut run: Option<(u32, u64)> = None;
        for m in msgs {
            let i = m.source.index;
            match &mut run {
                Some((at, n)) if *at == i => *n += 1,
                _ => {
                    if let Some((at, n)) = run.replace((i, 1)) {
                        if let Some(c) = per.get(at as usize) {
                            c.fetch_add(n, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        if let Some((at, n)) = run {
            if let Some(c) = per.get(at as usize) {
                c.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// Takes outcomes workers returned to the pipeline.
    pub(super) fn collect_outcomes(&mut self) {
        let HandlerSide::Workers(d) = &mut self.handler else {
            return;
        };
        let mut tally = OutcomeCounts::default();
        let (pipeline, io) = (&mut self.pipeline, &mut self.io);
        d.collect(|done| {
            tally.bytes += done.msg.payload().len() as u64;
            tally.add(done.outcome);
            pipeline.on_worker_outcome(io, &done.msg, done.outcome);
        });
        if tally.n > 0 {
            self.finish(tally);
        }
    }

    /// Accounts for handled messages: stats, the budget.
    fn finish(&mut self, t: OutcomeCounts) {
        let s = &self.io.stats;
        s.add(&s.messages, t.n);
        s.add(&s.bytes, t.bytes);
        s.add(&s.acked, t.ack);
        s.add(&s.retried, t.retry);
        s.add(&s.dead, t.dead);
        if self.io.budget.as_ref().is_some_and(|b| b.delivered(t.n)) {
            // The whole `limit` has been handled: stop every shard.
            self.io.shared.stop_all();
        }
    }
}

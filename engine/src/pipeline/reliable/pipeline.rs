//! The reliable pipeline as the shard drives it: leases (the pop lanes' replies, numbered
//! from the server's head), key tracking pushes, outcomes, lost connections, the timers
//! (heartbeat, sweep, due retries) and the stop.

use std::time::Instant;

use bytes::Bytes;
use ringq_resp::CommandWriter;

use super::{
    scripts, Mode, RelTag, ReliablePipeline, REQUEUE_MAX, TIMER_BEAT, TIMER_REQUEUE, TIMER_SWEEP,
};
use crate::conn::{Failure, Tag};
use crate::handler::{Message, Outcome, Source};
use crate::pipeline::alo::{foreign, now_ms, require_version, Recovery, Stage};
use crate::pipeline::pop::{CarriesPop, PopTag};
use crate::pipeline::{ControlUse, Drain, Io, Pipeline};

impl Pipeline for ReliablePipeline {
    type Cmd = RelTag;

    fn fetch_connections(&self) -> usize {
        self.pop.lanes()
    }

    fn control(&self) -> ControlUse {
        ControlUse::Always
    }

    const CONTROL_PER_NODE: bool = true;

    fn on_ready(&mut self, io: &mut Io<RelTag>, conn: usize, now: Instant) {
        let allow = io.reply_timeout();
        if !require_version(
            io,
            conn,
            (6, 2, 0),
            "reliable mode (LMOVE, BLMOVE, RPOP with a count)",
        ) {
            return;
        }
        scripts::SET.load(io.conn_mut(conn), now, allow, RelTag::Load);
        if !io.is_control(conn) {
            // A lane of several keys, once dry, watches them all through the server's
            // key tracking (RESP3 invalidation pushes) instead of polling.
            self.pop.request_tracking(io, conn, now, RelTag::Tracking);
            return;
        }
        let c = io.conn_mut(conn);
        if !std::mem::replace(&mut self.policy_checked, true) {
            c.command(Tag::Pipe(RelTag::Policy), now, allow, |buf| {
                CommandWriter::new(buf, 3)
                    .arg("CONFIG")
                    .arg("GET")
                    .arg("maxmemory-policy")
                    .finish();
            });
        }
        if !std::mem::replace(&mut self.timers_on, true) {
            io.timer(now + self.lease / 3, TIMER_BEAT);
            io.timer(now + self.lease / 2, TIMER_SWEEP);
            io.timer(now + self.requeue_period(), TIMER_REQUEUE);
        }
    }

    fn fill(&mut self, io: &mut Io<RelTag>, now: Instant) {
        if self.stage == Stage::Orphaned && self.quiet(io) {
            self.stage = Stage::Recover(Recovery::Orphans);
        }
        self.flush(io, now);
        if self.stage == Stage::Running {
            self.pop.fill_lanes(io, now);
        }
    }

    fn on_reply<'f>(
        &mut self,
        io: &mut Io<RelTag>,
        conn: usize,
        cmd: RelTag,
        frame: &'f Bytes,
        out: &mut Vec<Message<'f>>,
        now: Instant,
    ) -> Result<u64, Failure> {
        match cmd {
            RelTag::Pop(p) => {
                let before = out.len();
                let bytes = self.pop.reply(io, conn, p, frame, out, now)?;
                if let Some((source, n, head)) = self.pop.take_leased() {
                    // The reply's elements are the `n` positions of their key's leased
                    // list before the head the server read back.
                    match self.key_of.get(&(source as *const Source as usize)) {
                        Some(&k) => {
                            let unknown = self.held[k as usize].number(n, head, &mut out[before..]);
                            if unknown > 0 {
                                foreign(io, conn, unknown, "element(s) in a leased list");
                                self.suspect_lost_writes();
                            }
                        }
                        None => tracing::error!("a lease of an unknown key"),
                    }
                }
                self.outstanding += (out.len() - before) as u64;
                Ok(bytes)
            }
            _ => {
                self.on_control_reply(io, conn, cmd, frame)?;
                Ok(0)
            }
        }
    }

    fn on_push<'f>(
        &mut self,
        io: &mut Io<RelTag>,
        conn: usize,
        frame: &'f Bytes,
        _out: &mut Vec<Message<'f>>,
        _now: Instant,
    ) -> Result<u64, Failure> {
        // `>2 invalidate [keys]`: a watched queue changed.
        self.pop.on_push_frame(io, conn, frame)?;
        Ok(0)
    }

    fn on_outcomes(
        &mut self,
        io: &mut Io<RelTag>,
        conn: Option<usize>,
        msgs: &[Message<'_>],
        outcomes: &[Outcome],
        bytes: u64,
    ) {
        self.pop.outcomes(io, conn, msgs, outcomes, bytes);
        self.outstanding = self.outstanding.saturating_sub(msgs.len() as u64);
        for (m, &o) in msgs.iter().zip(outcomes) {
            self.record(m, o);
        }
    }

    fn on_worker_outcome(&mut self, io: &mut Io<RelTag>, msg: &Message<'static>, outcome: Outcome) {
        self.pop.worker_outcome(io, msg);
        self.outstanding = self.outstanding.saturating_sub(1);
        self.record(msg, outcome);
    }

    fn blocks(&self, cmd: &RelTag) -> bool {
        matches!(cmd, RelTag::Pop(p) if p.blocks())
    }

    fn on_lost(&mut self, io: &mut Io<RelTag>, conn: usize, unanswered: &[RelTag], stalled: bool) {
        if let Some(ctl) = io.control_index(conn) {
            // Settles not answered are sent again (they act only on elements still
            // leased, so one that was applied does nothing the second time).
            let lost = self.settle.control_lost(ctl);
            if let Stage::Recovering(why, _) = self.stage {
                self.stage = Stage::Recover(why);
            }
            if lost > 0 {
                tracing::info!("{lost} outcome batch(es) unanswered on the lost Control connection; sending them again");
            }
            self.suspect_lost_writes();
            return;
        }
        let leases = unanswered
            .iter()
            .filter(|t| matches!(t.as_pop(), Some(PopTag::Pop(_))))
            .count();
        self.pop.lost(io, conn, unanswered, stalled);
        if leases > 0 {
            tracing::info!(
                conn = %io.conn(conn).name(),
                "{leases} lease(s) unanswered: what they leased is in the processing list, \
                 and goes back to its queue once the messages in hand are settled"
            );
        }
        self.suspect_lost_writes();
    }

    fn on_timer(&mut self, io: &mut Io<RelTag>, id: u32, now: Instant) {
        let allow = io.reply_timeout();
        let (mode, next) = match id {
            TIMER_BEAT => (Some(Mode::Beat), self.lease / 3),
            TIMER_SWEEP => (Some(Mode::Sweep), self.lease / 2),
            _ => (None, self.requeue_period()),
        };
        let stopped = self.stage == Stage::Stopped;
        if !stopped {
            io.timer(now + next, id);
        }
        let stopping = io.stopping();
        match mode {
            _ if stopped => {}
            Some(Mode::Sweep) if stopping => {}
            Some(m) => {
                if m == Mode::Sweep {
                    self.retries.iter_mut().for_each(|r| *r = true);
                    self.retry_gen
                        .iter_mut()
                        .for_each(|g| *g = g.wrapping_add(1));
                }
                for q in 0..self.queues.len() {
                    let c = self.queue_control(io, q);
                    if let Some(ctl) = io.control_ready_at(c) {
                        self.recover(ctl, q, m, now, allow);
                    }
                }
            }
            None if stopping => {}
            None => {
                let at = now_ms() as i64;
                let due = self.keys.iter().zip(&self.retries).enumerate();
                for (i, k) in due.filter(|(_, (_, r))| **r).map(|(i, (k, _))| (i, k)) {
                    let Some(ctl) = io.control_ready_at(self.key_control(io, i)) else {
                        continue;
                    };
                    // The old retry set too while it differs (an old consumer of a queue
                    // with a hash tag may still be retrying into it).
                    let old = (k.legacy_retry != k.retry).then_some(&k.legacy_retry);
                    let n = 2 + usize::from(old.is_some());
                    let tag = RelTag::Requeue {
                        key: i as u32,
                        gen: self.retry_gen[i],
                    };
                    ctl.command(Tag::Pipe(tag), now, allow, |buf| {
                        CommandWriter::new(buf, 5 + n)
                            .arg("EVALSHA")
                            .arg(&scripts::REQUEUE.sha)
                            .arg_int(n as i64)
                            .arg(&k.key)
                            .arg(&k.retry)
                            .args(old)
                            .arg_int(at)
                            .arg_int(REQUEUE_MAX)
                            .finish();
                    });
                }
            }
        }
    }

    fn on_stop(&mut self, io: &mut Io<RelTag>, now: Instant) -> Drain {
        match self.stage {
            Stage::Stopped => return Drain::Drained,
            Stage::Recovering(..) | Stage::Setup | Stage::SettingUp(_) => {}
            Stage::Recover(_) | Stage::Running | Stage::Orphaned => {
                if self.quiet(io) {
                    self.stage = Stage::Recover(Recovery::Stop);
                }
            }
        }
        self.flush(io, now);
        if self.stage == Stage::Stopped {
            Drain::Drained
        } else {
            Drain::Waiting
        }
    }
}

//! The stop protocol: no new command; commands blocked on the server ended with CLIENT
//! UNBLOCK from the Control connection; every reply still owed waited for; the pipeline
//! asked each turn whether it has drained (its last acks answered) before Control
//! closes; then the ring drained of our operations.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ringq_resp::CommandWriter;

use super::{HandlerSide, Shard};
use crate::backend::Backend;
use crate::conn::{Phase, Tag};
use crate::error::Error;
use crate::pipeline::{Drain, Pipeline};
use crate::ring::sys;
use crate::timer::TimerEvent;

impl<P: Pipeline, B: Backend> Shard<P, B> {
    pub(super) fn begin_stop(&mut self, now: Instant) {
        self.io.stopping = true;
        self.stop_began = Some(now);
        // A stalled connection is waited for a reply grace at most: its server may never
        // resume, and a stop must not hang on it for the whole drain limit.
        let grace = now + self.reply_grace;
        for id in 0..self.io.conns.len() {
            let conn = &mut self.io.conns[id];
            conn.stop_after_close();
            if let Some(until) = conn.draining() {
                if until > grace {
                    conn.set_draining(grace);
                    let (conn, gen) = (conn.id(), conn.gen());
                    self.io
                        .timers
                        .add(grace, TimerEvent::DrainLimit { conn, gen });
                }
            }
            let conn = &mut self.io.conns[id];
            // Replies still owed must be read to be waited for.
            conn.resume_reading();
            match conn.phase() {
                Phase::Idle | Phase::Resolving => conn.set_done(),
                // Control stays for the pipeline's last commands and CLIENT UNBLOCK.
                Phase::Ready if !conn.is_idle() || self.io.is_control(id) => {}
                Phase::Closing | Phase::Done => {}
                _ => self.stop_conn(id),
            }
        }
    }

    /// One loop turn of a stop. Returns true once everything is closed and no message is
    /// out with workers.
    pub(super) fn stop_turn(&mut self, now: Instant) -> bool {
        let handed_out = match &self.handler {
            HandlerSide::Workers(d) => d.in_flight(),
            HandlerSide::Inline(_) => 0,
        };
        let mut drained = self.pipeline.on_stop(&mut self.io, now) == Drain::Drained;
        let waited = self
            .stop_began
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        if !drained && waited >= self.reply_grace {
            // Its last commands may never be answered (Control lost for good, a server
            // that went away): what they would have done is redone after a restart.
            tracing::warn!(
                shard = self.index,
                "the pipeline had not drained {:?} into the stop (reply grace); stopping anyway",
                self.reply_grace
            );
            self.stop_began = None;
            drained = true;
        } else if self.stop_began.is_none() {
            drained = true;
        }
        let drained = drained && handed_out == 0;
        self.unblock_blocked(now);
        self.close_idle_conns(drained);
        drained && self.io.conns.iter().all(|c| c.phase() == Phase::Done)
    }

    /// During a stop, ends commands blocked on the server (`Pipeline::blocks`) at once
    /// instead of waiting out their block timeouts (up to `pipeline` of them in turn on
    /// one connection): a Control connection (in a cluster, one on the same node) sends
    /// `CLIENT UNBLOCK <id>` for each connection whose head command blocks. An unblocked pop answers "nothing" — it had
    /// nothing, or it would not have been blocked — so no message is lost. The next
    /// pipelined pop then blocks in its turn and is unblocked in the same way once the
    /// previous reply has arrived. Needs the client ids from HELLO (RESP3) and the right
    /// to run CLIENT UNBLOCK; without them, or if Control fails, the stop waits instead.
    pub(super) fn unblock_blocked(&mut self, now: Instant) {
        if self.unblock_off {
            return;
        }
        let pipeline = &self.pipeline;
        let io = &self.io;
        let blocked = |i: usize, c: &crate::conn::Conn<P::Cmd>| {
            !io.is_control(i)
                && c.phase() == Phase::Ready
                && !c.unblock_sent()
                && c.server().client_id.is_some()
                && matches!(c.head(), Some(Tag::Pipe(cmd)) if pipeline.blocks(&cmd))
        };
        if !io.conns.iter().enumerate().any(|(i, c)| blocked(i, c)) {
            return;
        }
        let controls: Vec<usize> = io.controls.iter().filter_map(|c| c.id).collect();
        if controls.is_empty() {
            self.open_control(0, now);
            return;
        }
        if controls
            .iter()
            .all(|&u| matches!(io.conns[u].phase(), Phase::Closing | Phase::Done))
        {
            self.unblock_off = true;
            return;
        }
        let ready: Vec<usize> = controls
            .into_iter()
            .filter(|&u| io.conns[u].phase() == Phase::Ready)
            .collect();
        // Client ids are a server's own: in a cluster, a Control unblocks only the
        // connections on its own node (the others wait out their block timeouts).
        let cluster = self.conn_cfg.cluster.is_some();
        let targets: Vec<(usize, usize, i64)> = io
            .conns
            .iter()
            .enumerate()
            .filter(|(i, c)| blocked(*i, c))
            .filter_map(|(i, c)| {
                let at = c.target_addr();
                let u = ready.iter().copied().find(|&u| {
                    let node = io.conns[u].target_addr();
                    !cluster || node.is_none() || node == at
                })?;
                Some((u, i, c.server().client_id?))
            })
            .collect();
        let allow = self.io.reply_timeout;
        for (u, id, client_id) in targets {
            self.io.conns[u].command(Tag::Unblock { conn: id as u32 }, now, allow, |buf| {
                CommandWriter::new(buf, 3)
                    .arg("CLIENT")
                    .arg("UNBLOCK")
                    .arg_int(client_id)
                    .finish();
            });
            self.io.conns[id].set_unblock_sent(true);
        }
    }

    /// Closes connections with nothing left to answer. Control stays while another
    /// connection is open (it may need unblocking), while its own commands are
    /// unanswered, and until the pipeline has `drained`.
    pub(super) fn close_idle_conns(&mut self, drained: bool) {
        let others_open = self.io.conns.iter().enumerate().any(|(i, c)| {
            !self.io.is_control(i) && !matches!(c.phase(), Phase::Closing | Phase::Done)
        });
        for id in 0..self.io.conns.len() {
            let c = &self.io.conns[id];
            let is_control = self.io.is_control(id);
            let open = !matches!(c.phase(), Phase::Closing | Phase::Done);
            let idle = c.phase() == Phase::Ready && c.is_idle();
            let close = if is_control {
                open && !others_open && drained && (idle || c.phase() != Phase::Ready)
            } else {
                idle
            };
            if close {
                self.stop_conn(id);
            }
            let c = &mut self.io.conns[id];
            if matches!(c.phase(), Phase::Idle | Phase::Resolving) {
                c.set_done();
            }
            self.finish_close(id, Instant::now());
        }
    }

    pub(super) fn stop_conn(&mut self, id: usize) {
        let conn = &mut self.io.conns[id];
        if conn.serves() {
            self.io
                .stats
                .connections_ready
                .fetch_sub(1, Ordering::Relaxed);
        }
        conn.stop_after_close();
        conn.begin_close(&mut self.driver);
    }

    /// Every connection is done: end the wake-up read and wait until the kernel holds no
    /// operation of ours, so the ring and its buffers can be dropped safely.
    pub(super) fn drain_ring(&mut self) -> Result<(), Error> {
        sys::eventfd_signal(self.wake_fd);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.driver.in_flight() > 0 {
            if Instant::now() > deadline {
                tracing::error!(
                    shard = self.index,
                    ops = self.driver.in_flight(),
                    "operations did not finish; leaking their buffers"
                );
                return Ok(());
            }
            self.driver
                .submit_and_wait(Some(Duration::from_millis(100)))?;
            let mut completions = std::mem::take(&mut self.completions);
            self.driver.reap(&mut completions);
            for c in completions.drain(..) {
                if let Some(d) = c.data {
                    self.driver.release(d);
                }
            }
            self.completions = completions;
        }
        Ok(())
    }

    /// After a ring error: close what we can without waiting.
    pub(super) fn abandon(&mut self) {
        for id in 0..self.io.conns.len() {
            self.stop_conn(id);
        }
        let _ = self.driver.submit();
    }
}

//! The stop protocol: no new command, pops blocked on the server ended with CLIENT
//! UNBLOCK, every reply still owed waited for, then the ring drained of our operations.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ringq_resp::CommandWriter;

use super::Shard;
use crate::conn::{Conn, Phase, Tag};
use crate::error::Error;
use crate::ring::sys;
use crate::timer::TimerEvent;

impl Shard {
    pub(super) fn begin_stop(&mut self, now: Instant) {
        self.stopping = true;
        // A stalled connection is waited for a reply grace at most: its server may never
        // resume, and a stop must not hang on it for the whole drain limit.
        let grace = now + self.plan.consumer.reply_grace;
        for id in 0..self.conns.len() {
            let conn = &mut self.conns[id];
            conn.stop_after_close = true;
            if let Some(until) = conn.draining {
                if until > grace {
                    conn.draining = Some(grace);
                    self.timers.add(
                        grace,
                        TimerEvent::DrainLimit {
                            conn: conn.id,
                            gen: conn.gen,
                        },
                    );
                }
            }
            match conn.phase {
                Phase::Idle | Phase::Resolving => conn.phase = Phase::Done,
                Phase::Ready if !conn.pending.is_empty() => {}
                Phase::Closing | Phase::Done => {}
                _ => self.stop_conn(id),
            }
        }
    }

    /// During a stop, ends pops blocked on the server at once instead of waiting out
    /// their block timeouts (up to `pipeline` of them in turn on one connection): a side
    /// connection sends `CLIENT UNBLOCK <id>` for each connection whose head command is a
    /// blocking pop. The unblocked pop answers "nothing" — it had nothing, or it would not
    /// have been blocked — so no message is lost. The next pipelined pop then blocks in
    /// its turn and is unblocked in the same way once the previous reply has arrived.
    /// Needs the client ids from HELLO (RESP3) and the right to run CLIENT UNBLOCK; without
    /// them, or if the side connection fails, the stop waits as before.
    pub(super) fn unblock_blocked(&mut self, now: Instant) {
        if self.unblock_off {
            return;
        }
        let blocked = |(i, c): &(usize, &Conn)| {
            Some(*i) != self.unblocker
                && c.phase == Phase::Ready
                && !c.unblock_sent
                && c.server.client_id.is_some()
                && c.head_blocks()
        };
        if !self.conns.iter().enumerate().any(|e| blocked(&e)) {
            return;
        }
        let Some(u) = self.unblocker else {
            let id = self.conns.len();
            let base = &self.conns[0];
            let name = format!("{}-unblock", base.name);
            let mut side = Conn::new(
                id as u32,
                usize::MAX,
                name,
                base.config().clone(),
                u64::from(std::process::id()) << 16 ^ (self.index as u64) << 32 ^ id as u64,
            );
            // One attempt only: a failure leaves the stop to the block timeouts.
            side.stop_after_close = true;
            self.conns.push(side);
            self.unblocker = Some(id);
            let addr = self.conns[id].config().addr.clone();
            self.connect(id, now, &addr);
            return;
        };
        if self.conns[u].phase != Phase::Ready {
            if matches!(self.conns[u].phase, Phase::Closing | Phase::Done) {
                self.unblock_off = true;
            }
            return;
        }
        let targets: Vec<(usize, i64)> = self
            .conns
            .iter()
            .enumerate()
            .filter(|e| blocked(e))
            .filter_map(|(i, c)| Some((i, c.server.client_id?)))
            .collect();
        let allow = self.plan.consumer.reply_timeout;
        for (id, client_id) in targets {
            self.conns[u].command(Tag::Unblock { conn: id as u32 }, now, allow, |buf| {
                CommandWriter::new(buf, 3)
                    .arg("CLIENT")
                    .arg("UNBLOCK")
                    .arg_int(client_id)
                    .finish();
            });
            self.conns[id].unblock_sent = true;
        }
    }

    pub(super) fn close_idle_conns(&mut self) {
        // The unblocking connection stays while another connection still waits for replies.
        let others_open = self.conns.iter().enumerate().any(|(i, c)| {
            Some(i) != self.unblocker && !matches!(c.phase, Phase::Closing | Phase::Done)
        });
        for id in 0..self.conns.len() {
            let c = &self.conns[id];
            let is_unblocker = Some(id) == self.unblocker;
            let idle = c.phase == Phase::Ready && c.pending.is_empty();
            let unneeded = is_unblocker && !others_open;
            if (idle && !is_unblocker)
                || (unneeded && !matches!(c.phase, Phase::Closing | Phase::Done))
            {
                self.stop_conn(id);
            }
            if matches!(self.conns[id].phase, Phase::Idle | Phase::Resolving) {
                self.conns[id].phase = Phase::Done;
            }
            self.finish_close(id, Instant::now());
        }
    }

    pub(super) fn stop_conn(&mut self, id: usize) {
        let conn = &mut self.conns[id];
        if conn.phase == Phase::Ready && conn.draining.is_none() {
            self.stats.connections_ready.fetch_sub(1, Ordering::Relaxed);
        }
        conn.stop_after_close = true;
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
        for id in 0..self.conns.len() {
            self.stop_conn(id);
        }
        let _ = self.driver.submit();
    }
}

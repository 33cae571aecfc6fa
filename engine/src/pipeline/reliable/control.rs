//! What the reliable pipeline sends and reads on the Control connection: outcome
//! batches (the settle script), the recover script in each of its modes (heartbeat,
//! sweep, taking back its own leases at start, after a lost lease and at a stop), due
//! retries, and the maxmemory-policy check — and how each reply moves the pipeline on.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ringq_resp::{CommandWriter, Frame, ServerError, ServerErrorKind};

use super::{scripts, Mode, RelTag, ReliablePipeline};
use crate::conn::{classify, Conn, Failure, Tag};
use crate::frames;
use crate::handler::Event;
use crate::pipeline::alo::{ms, now_ms, Recovery, Stage};
use crate::pipeline::Io;

impl ReliablePipeline {
    /// Sends what waits for the Controls: settles, each on its key's Control, and the
    /// recover scripts of a recovery (once every Control is ready).
    pub(super) fn flush(&mut self, io: &mut Io<RelTag>, now: Instant) {
        let allow = io.reply_timeout();
        let (cutoff, cap) = (
            now_ms().saturating_sub(self.dead_max_age.as_millis() as u64),
            self.dead_max_len,
        );
        for mut b in self.settle.take_resend() {
            let c = self.key_control(io, b.key as usize);
            let Some(ctl) = io.control_ready_at(c) else {
                self.settle.resend_later(b);
                continue;
            };
            // Sent again after a lost connection: the server may have lost writes (a
            // failover), an earlier retry's among them, so nothing is trimmed until the
            // recovery that follows.
            b.hold();
            b.write(
                ctl,
                &self.keys[b.key as usize],
                &self.token,
                cap,
                cutoff,
                now,
                allow,
            );
            self.settle.sent(b, true, c);
        }
        // While writes may have been lost, acks mark their elements and the tail stays.
        let hold = self.stage == Stage::Orphaned;
        let mut waiting = Vec::new();
        for k in std::mem::take(&mut self.dirty) {
            let c = self.key_control(io, k as usize);
            let Some(ctl) = io.control_ready_at(c) else {
                waiting.push(k);
                continue;
            };
            let mut b = std::mem::take(&mut self.pending[k as usize]);
            let held = &mut self.held[k as usize];
            let floor = held.tail();
            b.seal(floor, if hold { floor } else { held.advance() });
            b.write(
                ctl,
                &self.keys[k as usize],
                &self.token,
                cap,
                cutoff,
                now,
                allow,
            );
            self.settle.sent(b, false, c);
        }
        self.dirty = waiting;
        if let Stage::Recover(why) = self.stage {
            if !io.all_controls_ready() {
                return;
            }
            if why != Recovery::Stop {
                // Everything in hand is settled: the recovery empties the leased lists,
                // and positions start again at 0 under a new token.
                self.new_epoch();
            }
            self.round = self.round.wrapping_add(1);
            for q in 0..self.queues.len() {
                let c = self.queue_control(io, q);
                if let Some(ctl) = io.control_ready_at(c) {
                    self.recover(ctl, q, why.into(), now, allow);
                }
            }
            self.stage = if self.queues.is_empty() {
                Stage::Running
            } else {
                Stage::Recovering(why, self.queues.len() as u32)
            };
        }
    }

    /// The recover script of queue `q` in `mode`.
    pub(super) fn recover(
        &self,
        ctl: &mut Conn<RelTag>,
        q: usize,
        mode: Mode,
        now: Instant,
        allow: Duration,
    ) {
        let qk = &self.queues[q];
        // The sweep lock lapses just before the next sweep is due, so the consumer that
        // swept can sweep again.
        let lease = match mode {
            Mode::Sweep => ms(self.lease / 2).saturating_mul(9) / 10,
            _ => ms(self.lease),
        };
        let at = now_ms() as i64;
        ctl.command(
            Tag::Pipe(RelTag::Recover {
                queue: q as u32,
                mode,
                round: self.round,
            }),
            now,
            allow,
            |buf| {
                let levels = qk.levels.iter().map(|&k| &self.keys[k as usize]);
                let names = levels.flat_map(|k| {
                    [
                        &k.key,
                        &k.processing_prefix,
                        &k.lease_prefix,
                        &k.legacy_processing_prefix,
                        &k.retry,
                        &k.legacy_retry,
                        &k.dead,
                        &k.legacy_dead,
                    ]
                });
                CommandWriter::new(buf, 14 + 8 * qk.levels.len())
                    .arg("EVALSHA")
                    .arg(&scripts::RECOVER.sha)
                    .arg("3")
                    .arg(&qk.heartbeat)
                    .arg(&qk.consumers)
                    .arg(&qk.sweep)
                    .arg(mode.arg())
                    .arg(&self.id)
                    .arg_int(at)
                    .arg_int(lease)
                    .arg(&self.token)
                    .arg(&qk.heartbeat_prefix)
                    .arg(&qk.legacy_consumers)
                    .arg(&qk.legacy_heartbeat_prefix)
                    .args(names)
                    .finish();
            },
        );
    }

    pub(super) fn on_control_reply(
        &mut self,
        io: &mut Io<RelTag>,
        conn: usize,
        cmd: RelTag,
        frame: &Bytes,
    ) -> Result<(), Failure> {
        let f = io.decode(conn, frame)?;
        if let Frame::SimpleError(m) | Frame::BulkError(m) = &f {
            let e = ServerError::parse(m.clone());
            if cmd == RelTag::Policy {
                tracing::debug!("could not read maxmemory-policy: {e}");
                return Ok(());
            }
            if cmd == RelTag::Tracking {
                tracing::info!(
                    "CLIENT TRACKING refused ({e}): an idle lane of several queues blocks on \
                     one and checks the others every idle-check instead"
                );
                return Ok(());
            }
            return Err(classify::failure(
                &format!("reliable mode's {}", cmd.what()),
                e,
                |kind| {
                    Some(
                        match (cmd, kind) {
                            (RelTag::Load(_), _) | (_, ServerErrorKind::NoPerm) => {
                                "; the ACL user needs +script|load, +evalsha and access to the \
                             queue keys and ringq's keys beside them ({queue}:…)"
                            }
                            (_, ServerErrorKind::WrongType) => {
                                "; a queue, processing, retry or dead key holds another type"
                            }
                            _ => return None,
                        }
                        .to_owned(),
                    )
                },
            ));
        }
        let ints = |f: &Frame| -> Vec<i64> {
            match f {
                Frame::Array(v) => v
                    .iter()
                    .map(|x| if let Frame::Integer(n) = x { *n } else { 0 })
                    .collect(),
                Frame::Integer(n) => vec![*n],
                _ => Vec::new(),
            }
        };
        match cmd {
            RelTag::Load(n) => scripts::SET.check_loaded(n, &f)?,
            RelTag::Settle => {
                let ctl = io.control_index(conn).unwrap_or(0);
                let Some((b, resent)) = self.settle.answered(ctl) else {
                    return Ok(());
                };
                let v = ints(&f);
                let fenced = v == [-1];
                let stale = if fenced {
                    b.outcomes as i64
                } else {
                    v.iter().sum()
                };
                if fenced {
                    // Another consumer took this one's leases back: settle what is in
                    // hand (refused the same way), then take the lists back and lease
                    // under the token again.
                    self.suspect_lost_writes();
                }
                if stale > 0 && !resent {
                    let key = String::from_utf8_lossy(&self.keys[b.key as usize].key).into_owned();
                    tracing::warn!(
                        "{stale} outcome(s) for messages of {key:?} not applied: their lease \
                         had run out and they were delivered again elsewhere (raise the lease \
                         if this consumer was only slow)"
                    );
                    io.stats().add(&io.stats().stale_outcomes, stale as u64);
                    io.event(Event::StaleOutcomes {
                        key,
                        count: stale as u64,
                    });
                }
            }
            RelTag::Recover { queue, mode, round } => {
                self.on_recovered(io, queue, mode, round, &ints(&f));
            }
            RelTag::Requeue { key, gen } => {
                // {moved, left}: a set with nothing left is not checked again until a
                // retry or the next sweep.
                let v = ints(&f);
                let moved = v.first().copied().unwrap_or(0);
                io.stats().add(&io.stats().requeued, moved.max(0) as u64);
                if v.get(1) == Some(&0) && self.retry_gen.get(key as usize) == Some(&gen) {
                    if let Some(r) = self.retries.get_mut(key as usize) {
                        *r = false;
                    }
                }
            }
            RelTag::Policy => match frames::config_value(&f, "maxmemory-policy") {
                Some(p) if p != b"noeviction" => tracing::warn!(
                    "the server's maxmemory-policy is not noeviction ({}): when memory \
                     runs out it may evict queue, processing or retry keys, and the \
                     messages in them are lost. Set `maxmemory-policy noeviction`.",
                    String::from_utf8_lossy(p)
                ),
                _ => {}
            },
            RelTag::Tracking => self.pop.tracking_on(io, conn),
            RelTag::Pop(_) => {}
        }
        Ok(())
    }

    /// A recover script's reply `v` (`{consumers swept, messages moved}`) for queue
    /// `queue` in `mode`: counted, reported, and the stage moved on when it was the last
    /// reply of the recovery sent last (`round`).
    fn on_recovered(&mut self, io: &mut Io<RelTag>, queue: u32, mode: Mode, round: u8, v: &[i64]) {
        let (swept, moved) = (
            v.first().copied().unwrap_or(0),
            v.get(1).copied().unwrap_or(0),
        );
        let name = String::from_utf8_lossy(&self.queues[queue as usize].name).into_owned();
        if moved > 0 {
            io.stats().add(&io.stats().recovered, moved as u64);
            match mode {
                Mode::Sweep => tracing::warn!(
                    "took back {moved} message(s) of {swept} consumer(s) of {name:?} whose heartbeat expired"
                ),
                Mode::Start => tracing::info!(
                    "took back {moved} unfinished message(s) of {name:?} left by this consumer's previous run"
                ),
                _ => tracing::info!("put {moved} leased message(s) back on {name:?}"),
            }
            if mode != Mode::Stop {
                io.event(Event::Recovered {
                    queue: name,
                    swept: swept.max(0) as u64,
                    messages: moved as u64,
                });
            }
        }
        if let Stage::Recovering(why, left) = self.stage {
            if Mode::from(why) == mode && round == self.round {
                self.stage = match (left.saturating_sub(1), why) {
                    (0, Recovery::Stop) => Stage::Stopped,
                    (0, _) => Stage::Running,
                    (n, _) => Stage::Recovering(why, n),
                };
            }
        }
    }
}

//! The Kombu pipeline as the shard drives it: fetch replies (validated), outcomes,
//! Control's replies (settles, the recovery's steps, renewals), lost connections, timers
//! and the stop.

use std::time::Instant;

/// Most records one recovery command reads back.
const RESTORE_CHUNK: usize = 1000;

use bytes::Bytes;
use ringq_resp::{Frame, ServerError};

use super::{dead_entry, scripts, Batch, KTag, KombuPipeline, TIMER_RENEW, TIMER_SWEEP};
use crate::conn::{classify, Failure, Tag};
use crate::handler::{Event, Message, Outcome, Source};
use crate::kombu;
use crate::pipeline::alo::{foreign, require_version, Recovery, Stage};
use crate::pipeline::pop::{CarriesPop, PopTag};
use crate::pipeline::{ControlUse, Drain, Io, Pipeline};
use ringq_resp::CommandWriter;

impl Pipeline for KombuPipeline {
    type Cmd = KTag;

    fn fetch_connections(&self) -> usize {
        self.pop.lanes()
    }

    fn control(&self) -> ControlUse {
        ControlUse::Always
    }

    fn on_ready(&mut self, io: &mut Io<KTag>, conn: usize, now: Instant) {
        let allow = io.reply_timeout();
        if !require_version(
            io,
            conn,
            (6, 2, 0),
            "kombu mode (RPOP with a count, BLMOVE)",
        ) {
            return;
        }
        scripts::SET.load(io.conn_mut(conn), now, allow, KTag::Load);
        if Some(conn) != io.control_id() {
            self.pop.request_tracking(io, conn, now, KTag::Tracking);
            return;
        }
        if !std::mem::replace(&mut self.timers_on, true) {
            io.timer(now + self.renew_every(), TIMER_RENEW);
            if !self.sweep.every.is_zero() {
                io.timer(now + self.sweep.every, TIMER_SWEEP);
            }
        }
    }

    fn fill(&mut self, io: &mut Io<KTag>, now: Instant) {
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
        io: &mut Io<KTag>,
        conn: usize,
        cmd: KTag,
        frame: &'f Bytes,
        out: &mut Vec<Message<'f>>,
        now: Instant,
    ) -> Result<u64, Failure> {
        let KTag::Pop(p) = cmd else {
            self.on_control_reply(io, conn, cmd, frame)?;
            return Ok(0);
        };
        let before = out.len();
        let mut bytes = self.pop.reply(io, conn, p, frame, out, now)?;
        if let Some((source, n, head)) = self.pop.take_leased() {
            match self.key_of.get(&(source as *const Source as usize)) {
                Some(&k) => {
                    let unknown = self.held[k as usize].number(n, head, &mut out[before..]);
                    self.set_floor(k as usize);
                    if unknown > 0 {
                        foreign(io, conn, unknown, "record(s) of its numbering");
                        self.suspect_lost_writes();
                    }
                }
                None => tracing::error!("a pop of an unknown key"),
            }
        }
        // What is not a Kombu envelope never reaches the handler: dead-lettered (by the
        // pop script itself when it is not even a JSON object: no record of it was
        // made), and its credit and its share of the budget given back.
        let mut i = before;
        while i < out.len() {
            let element = out[i].payload();
            let recorded = element.first() == Some(&b'{') && element.last() == Some(&b'}');
            let parsed = kombu::Incoming::parse(element);
            if let (true, Ok(m)) = (recorded, &parsed) {
                out[i].deliveries = kombu::deliveries_of(m).saturating_add(1);
                i += 1;
                continue;
            }
            let bad = out.remove(i);
            let len = bad.payload().len() as u64;
            bytes = bytes.saturating_sub(len);
            let why = parsed
                .err()
                .map_or_else(|| "not a JSON object".to_owned(), |e| e.to_string());
            tracing::warn!(conn = %io.conn(conn).name(), "dead-lettered an element: {why}");
            self.pop.outcomes(
                io,
                Some(conn),
                std::slice::from_ref(&bad),
                &[Outcome::Dead],
                len,
            );
            if let Some((k, pos)) = self.settled(&bad) {
                if recorded {
                    let entry = dead_entry(bad.payload(), bad.deliveries(), &why);
                    self.batch(k).ops.push((b'd', pos, entry));
                }
            }
            io.stats().add(&io.stats().dead, 1);
            io.unclaim_budget(1);
        }
        self.outstanding += (out.len() - before) as u64;
        Ok(bytes)
    }

    fn on_push<'f>(
        &mut self,
        io: &mut Io<KTag>,
        conn: usize,
        frame: &'f Bytes,
        _out: &mut Vec<Message<'f>>,
        _now: Instant,
    ) -> Result<u64, Failure> {
        self.pop.on_push_frame(io, conn, frame)?;
        Ok(0)
    }

    fn on_outcomes(
        &mut self,
        io: &mut Io<KTag>,
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

    fn on_worker_outcome(&mut self, io: &mut Io<KTag>, msg: &Message<'static>, outcome: Outcome) {
        self.pop.worker_outcome(io, msg);
        self.outstanding = self.outstanding.saturating_sub(1);
        self.record(msg, outcome);
    }

    fn blocks(&self, cmd: &KTag) -> bool {
        matches!(cmd, KTag::Pop(p) if p.blocks())
    }

    fn on_lost(&mut self, io: &mut Io<KTag>, conn: usize, unanswered: &[KTag], stalled: bool) {
        if Some(conn) == io.control_id() || io.fetch_of(conn).is_none() {
            let lost = self.settle.control_lost(0);
            self.sweep.reset();
            if let Stage::Recovering(why, _) = self.stage {
                self.stage = Stage::Recover(why);
            }
            if lost > 0 {
                tracing::info!("{lost} outcome batch(es) unanswered on the lost Control connection; sending them again");
            }
            self.suspect_lost_writes();
            return;
        }
        let pops = unanswered
            .iter()
            .filter(|t| matches!(t.as_pop(), Some(PopTag::Pop(_))))
            .count();
        self.pop.lost(io, conn, unanswered, stalled);
        if pops > 0 {
            tracing::info!(
                conn = %io.conn(conn).name(),
                "{pops} pop(s) unanswered: what they popped is recorded as this consumer's, \
                 and goes back to its queue once the messages in hand are settled"
            );
        }
        self.suspect_lost_writes();
    }

    fn on_timer(&mut self, io: &mut Io<KTag>, id: u32, now: Instant) {
        if self.stage == Stage::Stopped {
            return;
        }
        if id == TIMER_SWEEP {
            io.timer(now + self.sweep.every, TIMER_SWEEP);
            if !io.stopping() {
                self.on_sweep_timer(io, now);
            }
            return;
        }
        io.timer(now + self.renew_every(), TIMER_RENEW);
        self.renew(io, now);
    }

    fn on_stop(&mut self, io: &mut Io<KTag>, now: Instant) -> Drain {
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
        // A restore_visible round in flight ends first: it holds Kombu's mutex.
        if self.stage == Stage::Stopped && !self.sweep.busy() {
            Drain::Drained
        } else {
            Drain::Waiting
        }
    }
}

impl KombuPipeline {
    /// How often held records are renewed: a quarter of the visibility timeout.
    fn renew_every(&self) -> std::time::Duration {
        self.vt / 4
    }

    fn on_control_reply(
        &mut self,
        io: &mut Io<KTag>,
        conn: usize,
        cmd: KTag,
        frame: &Bytes,
    ) -> Result<(), Failure> {
        let f = io.decode(conn, frame)?;
        if let Frame::SimpleError(m) | Frame::BulkError(m) = &f {
            let e = ServerError::parse(m.clone());
            if cmd == KTag::Tracking {
                tracing::info!(
                    "CLIENT TRACKING refused ({e}): an idle lane of several keys blocks on \
                     one and checks the others every 100 ms instead"
                );
                return Ok(());
            }
            return Err(classify::failure(
                &format!("kombu mode's {}", cmd.what()),
                e,
                |_| {
                    Some(
                    "; the ACL user needs +script|load, +evalsha, and access to the queue keys, \
                     unacked, unacked_index and ringq.kombu.held.*"
                        .to_owned(),
                )
                },
            ));
        }
        match cmd {
            KTag::Load(n) => scripts::SET.check_loaded(n, &f)?,
            KTag::Settle => self.on_settled(io, &f),
            KTag::SettleTail => self.on_settled(io, &Frame::Integer(0)),
            KTag::SettleAcks { n } => {
                let removed = match f {
                    Frame::Integer(r) => r.max(0) as u64,
                    _ => 0,
                };
                self.ack_stale += u64::from(n).saturating_sub(removed);
            }
            KTag::SettleIndex => {}
            KTag::Held { key } => self.on_held(io, key, &f),
            KTag::Values { key } => self.on_values(io, key, &f),
            KTag::Restore { key } => self.on_restored(io, key, &f),
            KTag::Tracking => self.pop.tracking_on(io, conn),
            KTag::Renew | KTag::Pop(_) => {}
            sweep => self.on_sweep_reply(io, sweep, &f),
        }
        Ok(())
    }

    fn on_settled(&mut self, io: &mut Io<KTag>, f: &Frame) {
        let Some((b, resent)) = self.settle.answered(0) else {
            return;
        };
        let stale = match f {
            Frame::Integer(n) => (*n).max(0) as u64,
            _ => 0,
        } + std::mem::take(&mut self.ack_stale);
        if stale > 0 && !resent {
            let key = String::from_utf8_lossy(&self.keys[b.key as usize].key).into_owned();
            tracing::warn!(
                "{stale} outcome(s) for messages of {key:?} not applied: their records were \
                 restored by another worker (older than the visibility timeout: the renewals \
                 did not reach the server in time), so they were delivered again"
            );
            io.stats().add(&io.stats().stale_outcomes, stale);
            io.event(Event::StaleOutcomes { key, count: stale });
        }
    }

    /// A recovery's `HGETALL` of key `key`'s held hash: the numbers between `#tail` and
    /// the counter (or what this run numbered, if the server lost the counter) are read
    /// back a few chunks at a time; the key's numbering goes on from there.
    fn on_held(&mut self, io: &mut Io<KTag>, key: u32, f: &Frame) {
        let k = key as usize;
        let (mut head, mut tail) = (0u64, 0u64);
        for (name, value) in pairs(f) {
            let v = std::str::from_utf8(&value)
                .ok()
                .and_then(|v| v.parse().ok());
            match name.as_ref() {
                b"#n" => head = v.unwrap_or(0),
                b"#tail" => tail = v.unwrap_or(0),
                _ => {}
            }
        }
        // Numbering goes on above everything given before: the server's counter, what
        // this run numbered, and `#tail` (a server that lost the counter in a failover
        // keeps no record below it that a later recovery would skip).
        let head = head.max(tail).max(self.held[k].head());
        self.held[k].start_at(head);
        self.set_floor(k);
        self.restoring[k] = super::Restoring {
            next: tail.min(head),
            head,
            ..Default::default()
        };
        if tail >= head {
            self.key_recovered();
            return;
        }
        for _ in 0..super::RESTORE_IN_FLIGHT {
            if !self.read_chunk(io, key) {
                return;
            }
        }
    }

    /// Asks for the next chunk of key `key`'s window; false when there is none (or Control
    /// is gone: the recovery starts again).
    fn read_chunk(&mut self, io: &mut Io<KTag>, key: u32) -> bool {
        let k = key as usize;
        let r = &mut self.restoring[k];
        if r.next >= r.head {
            return false;
        }
        let allow = io.reply_timeout();
        let Some(ctl) = io.control_ready() else {
            self.restart_recovery();
            return false;
        };
        let end = (r.next + RESTORE_CHUNK as u64).min(r.head);
        let chunk: Vec<u64> = (r.next..end).collect();
        r.next = end;
        let names = &self.keys[k];
        ctl.command(
            Tag::Pipe(KTag::Values { key }),
            Instant::now(),
            allow,
            |buf| {
                let fields = chunk.iter().map(|n| {
                    let mut f = names.field.clone();
                    f.extend_from_slice(n.to_string().as_bytes());
                    f
                });
                CommandWriter::new(buf, 2 + chunk.len())
                    .arg("HMGET")
                    .arg(&self.unacked)
                    .args(fields)
                    .finish();
            },
        );
        r.chunks.push_back(chunk);
        true
    }

    /// A recovery step found Control gone: it starts again once Control is back.
    fn restart_recovery(&mut self) {
        if let Stage::Recovering(why, _) = self.stage {
            self.stage = Stage::Recover(why);
        }
    }

    /// A chunk of key `key`'s records read back: each still there is restored to the
    /// key's head, marked redelivered; the window's last chunk moves `#tail` to its end.
    fn on_values(&mut self, io: &mut Io<KTag>, key: u32, f: &Frame) {
        let k = key as usize;
        let values: Vec<Option<Bytes>> = match f {
            Frame::Array(v) => v.iter().map(|x| x.as_bytes().cloned()).collect(),
            _ => Vec::new(),
        };
        let tail = self.keys[k].tail.clone();
        let r = &mut self.restoring[k];
        let Some(chunk) = r.chunks.pop_front() else {
            return;
        };
        let last = r.chunks.is_empty() && r.next >= r.head;
        let mut b = Batch {
            key,
            tail: last.then_some(r.head),
            ..Batch::default()
        };
        for (&n, value) in chunk.iter().zip(values.iter()) {
            let Some(v) = value else { continue };
            let op = match v
                .strip_prefix(b"[")
                .and_then(|e| e.strip_suffix(&tail[..]))
                .and_then(|e| {
                    let d = kombu::Incoming::parse(e).map_or(0, |m| kombu::deliveries_of(&m));
                    kombu::redelivered(e, d.saturating_add(1))
                }) {
                Some(e) => (b'r', n, e),
                None => (
                    b'd',
                    n,
                    dead_entry(v, 0, "a record ringq made that it cannot read back"),
                ),
            };
            b.ops.push(op);
        }
        let restores = b.ops.iter().filter(|o| o.0 == b'r').count() as u64;
        let allow = io.reply_timeout();
        let Some(ctl) = io.control_ready() else {
            self.restart_recovery();
            return;
        };
        b.write(ctl, KTag::Restore { key }, self, Instant::now(), allow);
        self.restoring[k].sent.push_back(restores);
        self.read_chunk(io, key);
    }

    /// A chunk of key `key`'s records restored (but those another worker had taken
    /// first); the key is done with its last.
    fn on_restored(&mut self, io: &mut Io<KTag>, key: u32, f: &Frame) {
        let k = key as usize;
        let stale = match f {
            Frame::Integer(n) => (*n).max(0) as u64,
            _ => 0,
        };
        let r = &mut self.restoring[k];
        let moved = r.sent.pop_front().unwrap_or(0).saturating_sub(stale);
        let done = r.chunks.is_empty() && r.sent.is_empty() && r.next >= r.head;
        if moved > 0 {
            io.stats().add(&io.stats().recovered, moved);
            let queue = self.keys[k].queue.clone();
            let why = match self.stage {
                Stage::Recovering(why, _) => why,
                _ => Recovery::Orphans,
            };
            tracing::info!("restored {moved} message(s) of {queue:?} this consumer held");
            if why != Recovery::Stop {
                io.event(Event::Recovered {
                    queue,
                    swept: 0,
                    messages: moved,
                });
            }
        }
        if done {
            self.key_recovered();
        }
    }
}

/// The (name, value) pairs of an `HGETALL` reply (a RESP3 map or a RESP2 flat array).
fn pairs(f: &Frame) -> Vec<(Bytes, Bytes)> {
    let b = |x: &Frame| x.as_bytes().cloned().unwrap_or_default();
    match f {
        Frame::Map(m) => m.iter().map(|(k, v)| (b(k), b(v))).collect(),
        Frame::Array(v) => v
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (b(&c[0]), b(&c[1])))
            .collect(),
        _ => Vec::new(),
    }
}

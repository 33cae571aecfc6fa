//! What the stream pipeline sends and reads on the Control connection: group creation
//! and the XACKDEL probe, settles (sent again if Control is lost), own-entry reads, claims
//! from dead consumers, due retries, and the group's lag.

use std::time::{Duration, Instant};

use bytes::Bytes;
use ringq_resp::{CommandWriter, Frame, ServerError, ServerErrorKind};

use super::{reply, scripts, Sent, StreamPipeline, StreamTag, MAX_IDS};
use crate::conn::{Conn, Failure, Tag};
use crate::credit::Grant;
use crate::frames;
use crate::handler::Message;
use crate::pipeline::alo::{now_ms, Recovery, Stage};
use crate::pipeline::Io;

impl StreamPipeline {
    pub(super) fn write_sent(
        &self,
        ctl: &mut Conn<StreamTag>,
        sent: &Sent,
        now: Instant,
        allow: Duration,
    ) {
        let c = &self.plan.consumer;
        match sent {
            Sent::Ack { s, ids } => {
                let key = self.name(*s);
                ctl.command(Tag::Pipe(StreamTag::Settle), now, allow, |buf| {
                    if c.delete_on_ack && self.xackdel {
                        CommandWriter::new(buf, 6 + ids.len())
                            .arg("XACKDEL")
                            .arg(key)
                            .arg(&c.group)
                            .arg("IDS")
                            .arg_int(ids.len() as i64)
                            .args(ids)
                            .finish();
                    } else if c.delete_on_ack {
                        CommandWriter::new(buf, 5 + ids.len())
                            .arg("EVALSHA")
                            .arg(&scripts::ACKDEL.sha)
                            .arg("1")
                            .arg(key)
                            .arg(&c.group)
                            .args(ids)
                            .finish();
                    } else {
                        CommandWriter::new(buf, 3 + ids.len())
                            .arg("XACK")
                            .arg(key)
                            .arg(&c.group)
                            .args(ids)
                            .finish();
                    }
                });
            }
            Sent::Dead { s, items } => {
                let key = self.name(*s);
                let dead = crate::envelope::keys::dead(key);
                let at = now_ms() as i64;
                ctl.command(Tag::Pipe(StreamTag::Settle), now, allow, |buf| {
                    let mut w = CommandWriter::new(buf, 9 + 3 * items.len())
                        .arg("EVALSHA")
                        .arg(&scripts::DEAD.sha)
                        .arg("2")
                        .arg(key)
                        .arg(&dead)
                        .arg(&c.group)
                        .arg_int(i64::from(c.dead_max_len))
                        .arg(if c.delete_on_ack { "1" } else { "0" })
                        .arg_int(at);
                    for (id, why, d) in items {
                        w = w.arg(id).arg(why).arg_int(i64::from(*d));
                    }
                    w.finish();
                });
            }
        }
    }

    /// Sends what waits for the Controls (each stream's commands on its own, on its
    /// slot's node in a cluster): group creation, settles, own-entry reads, claims from
    /// dead consumers, due retries.
    pub(super) fn flush(&mut self, io: &mut Io<StreamTag>, now: Instant) {
        let allow = io.reply_timeout();
        match self.stage {
            Stage::Setup => {
                // Every Control, and no reply of an earlier setup still to come (one
                // that came late would count toward this one).
                let earlier = io.any_cmd(|t| {
                    matches!(
                        t,
                        StreamTag::Create { .. } | StreamTag::Probe | StreamTag::ProbeClaim
                    )
                });
                if !io.all_controls_ready() || earlier {
                    return;
                }
                let n = self.send_setup(io, now, allow);
                self.stage = Stage::SettingUp(n);
                return;
            }
            Stage::SettingUp(_) => return,
            _ => {}
        }
        self.send_settles(io, now, allow);
        if io.stopping() {
            return;
        }
        if self.stage == Stage::Orphaned && self.quiet(io) {
            self.begin_own(Recovery::Orphans);
        }
        self.send_fetches(io, now, allow);
        if self.stage == Stage::Running {
            self.send_due_retries(io, now, allow);
        }
    }

    /// The Control that carries stream `s`'s commands.
    pub(super) fn stream_control<C>(&self, io: &Io<C>, s: u32) -> usize
    where
        C: Copy + std::fmt::Debug,
    {
        io.control_of_lane(self.plan.lane_of[s as usize])
    }

    /// Group creation for every stream of this shard (each on its Control), and the
    /// probes (on the first); returns how many replies to wait for.
    fn send_setup(&self, io: &mut Io<StreamTag>, now: Instant, allow: Duration) -> u32 {
        let c = &self.plan.consumer;
        let mut n = 0;
        for s in (0..self.streams.len() as u32).filter(|&s| self.streams[s as usize].mine) {
            let Some(ctl) = io.control_ready_at(self.stream_control(io, s)) else {
                continue;
            };
            n += 1;
            ctl.command(Tag::Pipe(StreamTag::Create { s }), now, allow, |buf| {
                CommandWriter::new(buf, 6)
                    .arg("XGROUP")
                    .arg("CREATE")
                    .arg(&c.streams[s as usize].name)
                    .arg(&c.group)
                    .arg(c.start.arg())
                    .arg("MKSTREAM")
                    .finish();
            });
        }
        let Some(ctl) = io.control_ready() else {
            return n;
        };
        ctl.command(Tag::Pipe(StreamTag::Probe), now, allow, |buf| {
            CommandWriter::new(buf, 3)
                .arg("COMMAND")
                .arg("INFO")
                .arg("XACKDEL")
                .finish();
        });
        // XREADGROUP … CLAIM (Redis 8.4) is an argument, not a command: its docs say.
        ctl.command(Tag::Pipe(StreamTag::ProbeClaim), now, allow, |buf| {
            CommandWriter::new(buf, 3)
                .arg("COMMAND")
                .arg("DOCS")
                .arg("XREADGROUP")
                .finish();
        });
        n + 2
    }

    /// Outcome batches, each on its stream's Control: those of a lost Control again
    /// first, then the new ones (a stream whose Control is not ready keeps them).
    fn send_settles(&mut self, io: &mut Io<StreamTag>, now: Instant, allow: Duration) {
        let mut sends: Vec<(Sent, bool)> = Vec::new();
        for t in self.settle.take_resend() {
            if io
                .control_ready_at(self.stream_control(io, t.stream()))
                .is_some()
            {
                sends.push((t, true));
            } else {
                self.settle.resend_later(t);
            }
        }
        for s in 0..self.streams.len() as u32 {
            if io.control_ready_at(self.stream_control(io, s)).is_none() {
                continue;
            }
            let st = &mut self.streams[s as usize];
            while !st.acks.is_empty() {
                let n = st.acks.len().min(MAX_IDS);
                sends.push((
                    Sent::Ack {
                        s,
                        ids: st.acks.drain(..n).collect(),
                    },
                    false,
                ));
            }
            while !st.deads.is_empty() {
                let n = st.deads.len().min(MAX_IDS / 3);
                sends.push((
                    Sent::Dead {
                        s,
                        items: st.deads.drain(..n).collect(),
                    },
                    false,
                ));
            }
        }
        for (sent, resent) in sends {
            let c = self.stream_control(io, sent.stream());
            if let Some(ctl) = io.control_ready_at(c) {
                self.write_sent(ctl, &sent, now, allow);
            }
            self.settle.sent(sent, resent, c);
        }
    }

    /// Own pending entries (after a start or a lost read) and claims from dead
    /// consumers, one fetch script per stream at a time: each holds credit of its lane.
    fn send_fetches(&mut self, io: &mut Io<StreamTag>, now: Instant, allow: Duration) {
        let c = &self.plan.consumer;
        let mine: Vec<u32> = self.mine().collect();
        for s in mine {
            let st = &self.streams[s as usize];
            if st.busy {
                continue;
            }
            let (own, cursor) = match (&st.own, &st.claim) {
                (Some(cur), _) => (true, cur.clone()),
                (None, Some(cur)) if self.stage == Stage::Running => (false, cur.clone()),
                _ => continue,
            };
            let lane = self.plan.lane_of[s as usize];
            let ctl = self.stream_control(io, s);
            if io.control_ready_at(ctl).is_none() {
                continue;
            }
            let Some(g) = io
                .credits()
                .grant(lane, false, c.batch, self.lanes[lane].sizes.get(), 1)
            else {
                continue;
            };
            let lease = c.lease.as_millis().max(1) as i64;
            let Some(ctl) = io.control_ready_at(ctl) else {
                continue;
            };
            ctl.command(
                Tag::Pipe(StreamTag::Fetch {
                    s,
                    own,
                    count: g.count,
                    bytes: g.bytes,
                }),
                now,
                allow,
                |buf| {
                    CommandWriter::new(buf, 10)
                        .arg("EVALSHA")
                        .arg(&scripts::FETCH.sha)
                        .arg("1")
                        .arg(&c.streams[s as usize].name)
                        .arg(&c.group)
                        .arg(&c.id)
                        .arg(if own { "own" } else { "claim" })
                        .arg(&cursor)
                        .arg_int(i64::from(g.count))
                        .arg_int(lease)
                        .finish();
                },
            );
            self.streams[s as usize].busy = true;
        }
    }

    /// Retries that are due, XCLAIMed back to this consumer (the server counts the
    /// delivery), a batch per stream: each holds credit of its lane.
    fn send_due_retries(&mut self, io: &mut Io<StreamTag>, now: Instant, allow: Duration) {
        let c = &self.plan.consumer;
        while let Some(top) = self.retries.peek() {
            if top.at > now || self.streams[top.s as usize].busy {
                break;
            }
            let s = top.s;
            let lane = self.plan.lane_of[s as usize];
            let ctl = self.stream_control(io, s);
            if io.control_ready_at(ctl).is_none() {
                // Its Control is reconnecting: the retries wait (they are pending).
                break;
            }
            let mut due = Vec::new();
            while let Some(t) = self.retries.peek() {
                if t.at > now || t.s != s || due.len() >= c.batch as usize {
                    break;
                }
                due.extend(self.retries.pop());
            }
            let Some(g) = io.credits().grant(
                lane,
                false,
                due.len() as u32,
                self.lanes[lane].sizes.get(),
                1,
            ) else {
                self.retries.extend(due);
                break;
            };
            for d in due.drain(g.count as usize..) {
                self.retries.push(d);
            }
            for d in &due {
                self.redeliver.insert(d.id.clone(), d.deliveries + 1);
            }
            let Some(ctl) = io.control_ready_at(ctl) else {
                break;
            };
            ctl.command(
                Tag::Pipe(StreamTag::Claim {
                    s,
                    count: g.count,
                    bytes: g.bytes,
                }),
                now,
                allow,
                |buf| {
                    CommandWriter::new(buf, 5 + due.len())
                        .arg("XCLAIM")
                        .arg(&c.streams[s as usize].name)
                        .arg(&c.group)
                        .arg(&c.id)
                        .arg("0")
                        .args(due.iter().map(|d| &d.id))
                        .finish();
                },
            );
            self.streams[s as usize].busy = true;
        }
    }

    /// The fetch script's reply for stream `s` (`own`: this consumer's pending entries
    /// read again; else claims from dead consumers), which held `grant`.
    pub(super) fn on_fetched<'f>(
        &mut self,
        io: &mut Io<StreamTag>,
        s: u32,
        own: bool,
        grant: Grant,
        frame: &'f Bytes,
        out: &mut Vec<Message<'f>>,
    ) -> Result<u64, Failure> {
        self.streams[s as usize].busy = false;
        let lane = self.plan.lane_of[s as usize];
        let before = out.len();
        let r = reply::parse_fetch(&self.plan, s, frame, io.turn_ns(), out, &mut self.filtered);
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                io.credits().release(lane, grant.count, grant.bytes);
                return Err(e);
            }
        };
        io.credits().settle(lane, grant, r.count, r.bytes);
        self.take_filtered(io, frame);
        io.stats().add(&io.stats().deleted, r.deleted);
        let cursor = r.cursor.map(|at| frame[at].to_vec()).unwrap_or_default();
        let st = &mut self.streams[s as usize];
        if own {
            // Entries waiting for a retry are pending too: their schedule stays.
            if !self.retries.is_empty() {
                let waiting: std::collections::HashSet<&Bytes> =
                    self.retries.iter().map(|d| &d.id).collect();
                let mut i = before;
                while i < out.len() {
                    if waiting.contains(&Bytes::copy_from_slice(out[i].aux())) {
                        let m = out.remove(i);
                        io.credits().release(lane, 1, m.payload().len() as u64);
                    } else {
                        i += 1;
                    }
                }
            }
            st.own = (!cursor.is_empty()).then_some(cursor);
        } else {
            st.claim = (cursor != b"0-0" && !cursor.is_empty()).then_some(cursor);
            if out.len() > before {
                io.stats()
                    .add(&io.stats().recovered, (out.len() - before) as u64);
            }
        }
        Ok(out[before..].iter().map(|m| m.payload().len() as u64).sum())
    }

    /// The XCLAIM of due retries of stream `s`, which held `grant`.
    pub(super) fn on_claimed<'f>(
        &mut self,
        io: &mut Io<StreamTag>,
        s: u32,
        grant: Grant,
        frame: &'f Bytes,
        out: &mut Vec<Message<'f>>,
    ) -> Result<u64, Failure> {
        self.streams[s as usize].busy = false;
        let lane = self.plan.lane_of[s as usize];
        let redeliver = &mut self.redeliver;
        let mut deliveries = |id: &[u8]| redeliver.remove(id).unwrap_or(2);
        let r = reply::parse_claim(
            &self.plan,
            s,
            frame,
            io.turn_ns(),
            &mut deliveries,
            out,
            &mut self.filtered,
        );
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                io.credits().release(lane, grant.count, grant.bytes);
                return Err(e);
            }
        };
        io.credits().settle(lane, grant, r.count, r.bytes);
        self.take_filtered(io, frame);
        Ok(r.bytes)
    }

    /// Reads own pending entries again, from the start, before anything new.
    pub(super) fn begin_own(&mut self, why: Recovery) {
        for st in self.streams.iter_mut().filter(|s| s.mine) {
            st.own = Some(b"0".to_vec());
        }
        self.stage = Stage::Recovering(why, 0);
    }

    pub(super) fn on_control(
        &mut self,
        io: &mut Io<StreamTag>,
        conn: usize,
        cmd: StreamTag,
        frame: &Bytes,
    ) -> Result<(), Failure> {
        let f = io.decode(conn, frame)?;
        if let Frame::SimpleError(m) | Frame::BulkError(m) = &f {
            let e = ServerError::parse(m.clone());
            match cmd {
                StreamTag::Create { .. } if *e.kind() == ServerErrorKind::BusyGroup => {}
                StreamTag::Probe | StreamTag::ProbeClaim | StreamTag::Info { .. } => {
                    tracing::debug!("{cmd:?}: {e}");
                }
                _ => return Err(reply::server_error(&self.plan, m.clone())),
            }
        }
        match cmd {
            StreamTag::Load(n) => scripts::SET.check_loaded(n, &f)?,
            StreamTag::Create { .. } | StreamTag::Probe | StreamTag::ProbeClaim => {
                if cmd == StreamTag::Probe {
                    self.xackdel = frames::command_exists(&f);
                }
                if cmd == StreamTag::ProbeClaim {
                    self.claim_in_read = frames::docs_have_token(&f, "CLAIM");
                    if self.claim_in_read {
                        tracing::info!("the server has XREADGROUP … CLAIM: idle entries are claimed by the reads themselves");
                    }
                }
                if let Stage::SettingUp(left) = self.stage {
                    if left <= 1 {
                        self.begin_own(Recovery::Start);
                    } else {
                        self.stage = Stage::SettingUp(left - 1);
                    }
                }
            }
            StreamTag::Settle => {
                self.settle.answered(io.control_index(conn).unwrap_or(0));
            }
            StreamTag::Info { s } => {
                if let Some((lag, pending)) = group_info(&f, &self.plan.consumer.group) {
                    let st = &mut self.streams[s as usize];
                    st.lag = lag;
                    st.pending = pending;
                    if let Some(src) = self.plan.sources.get(s as usize) {
                        let i = src.index as usize;
                        let stats = io.stats();
                        if let (Some(l), Some(p)) =
                            (stats.source_lag.get(i), stats.source_pending.get(i))
                        {
                            l.store(lag, std::sync::atomic::Ordering::Relaxed);
                            p.store(pending, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    let (lag, pending) = self
                        .streams
                        .iter()
                        .fold((0, 0), |(a, b), s| (a + s.lag, b + s.pending));
                    io.stats()
                        .stream_lag
                        .store(lag, std::sync::atomic::Ordering::Relaxed);
                    io.stats()
                        .stream_pending
                        .store(pending, std::sync::atomic::Ordering::Relaxed);
                }
            }
            StreamTag::Read(_) | StreamTag::Fetch { .. } | StreamTag::Claim { .. } => {}
        }
        Ok(())
    }
}

/// The `lag` and `pending` of `group` in an `XINFO GROUPS` reply.
fn group_info(f: &Frame, group: &[u8]) -> Option<(u64, u64)> {
    let Frame::Array(groups) = f else { return None };
    for g in groups {
        let pairs: Vec<(&Frame, &Frame)> = match g {
            Frame::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
            Frame::Array(v) => v
                .chunks(2)
                .filter_map(|c| Some((c.first()?, c.get(1)?)))
                .collect(),
            _ => continue,
        };
        let field = |name: &str| {
            pairs.iter().find_map(|(k, v)| match k {
                Frame::BulkString(b) | Frame::SimpleString(b) if b.as_ref() == name.as_bytes() => {
                    Some(*v)
                }
                _ => None,
            })
        };
        let is_ours = matches!(field("name"), Some(Frame::BulkString(b) | Frame::SimpleString(b)) if b.as_ref() == group);
        if !is_ours {
            continue;
        }
        let int = |v: Option<&Frame>| match v {
            Some(Frame::Integer(n)) => (*n).max(0) as u64,
            _ => 0,
        };
        return Some((int(field("lag")), int(field("pending"))));
    }
    None
}

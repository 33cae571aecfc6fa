//! Taking part in Kombu's `restore_visible`: every restore interval, under Kombu's own
//! `unacked_mutex` (`SET … NX PX 300000`, released by token), the records in
//! `unacked_index` older than the visibility timeout that are not this consumer's are
//! read back and restored as Kombu's `restore_by_tag` does: to each queue their exchange
//! and routing key name (the anonymous exchange: the queue named by the routing key;
//! another exchange: its `_kombu.binding.<exchange>` members with that routing key, as a
//! Python process that never declared the exchange routes it: direct), at the step of the
//! message's priority, at the head, marked redelivered. A record that cannot be read back
//! or routed goes to `ringq.kombu.unrestorable` instead of being dropped (Kombu drops the
//! unroutable and crashes its sweep on the unreadable).

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use ringq_resp::{CommandWriter, Frame};
use serde_json::Value;

use super::{dead_entry, scripts, KTag, KombuPipeline};
use crate::conn::Tag;
use crate::handler::Event;
use crate::kombu;
use crate::pipeline::alo::{now_ms, Stage};
use crate::pipeline::Io;

/// Most overdue records one round reads.
const ROUND: usize = 500;

/// The sweep's settings and the state of its round.
pub(super) struct Sweep {
    pub every: std::time::Duration,
    /// `unacked_mutex`, and the list of what cannot be restored (with the key prefix).
    pub mutex: Bytes,
    pub unrestorable: Bytes,
    /// The key prefix and priority steps, to name a target queue's keys.
    pub prefix: String,
    pub steps: Vec<u8>,
    /// `ringq:<consumer>:`: records of this consumer are its own recovery's.
    pub own: Bytes,
    /// A round is under way.
    busy: bool,
    token: Bytes,
    /// The round's records: (field, value read back).
    found: Vec<(Bytes, Option<Bytes>)>,
    /// Exchanges asked for, and their bindings: (routing key, queue).
    exchanges: Vec<String>,
    bindings: HashMap<String, Vec<(String, String)>>,
    waiting: usize,
    seq: u64,
    /// Where this round's `ZRANGE` page starts: pages of only this consumer's own records
    /// are skipped (its own recovery restores those), so they cannot starve the others'.
    offset: u64,
}

impl Sweep {
    pub(super) fn new(
        every: std::time::Duration,
        mutex: Bytes,
        unrestorable: Bytes,
        prefix: String,
        steps: Vec<u8>,
        own: Bytes,
    ) -> Self {
        Self {
            every,
            mutex,
            unrestorable,
            prefix,
            steps,
            own,
            busy: false,
            token: Bytes::new(),
            found: Vec::new(),
            exchanges: Vec::new(),
            bindings: HashMap::new(),
            waiting: 0,
            seq: 0,
            offset: 0,
        }
    }

    /// A round is under way (it holds Kombu's mutex).
    pub(super) fn busy(&self) -> bool {
        self.busy
    }

    /// Control was lost mid-round: the round is abandoned (the mutex expires by itself,
    /// as a crashed Kombu worker's does).
    pub(super) fn reset(&mut self) {
        self.busy = false;
        self.found.clear();
    }

    /// The key of `queue` for a message of `priority` (Kombu's `_q_for_pri`).
    fn key_for(&self, queue: &str, priority: u8) -> Vec<u8> {
        let p = priority.min(9);
        let step = self
            .steps
            .iter()
            .rev()
            .copied()
            .find(|&s| s <= p)
            .unwrap_or(0);
        let mut k = format!("{}{queue}", self.prefix);
        if step != 0 {
            k.push_str(kombu::SEP);
            k.push_str(&step.to_string());
        }
        k.into_bytes()
    }
}

impl KombuPipeline {
    /// The sweep timer: starts a round by taking the mutex.
    pub(super) fn on_sweep_timer(&mut self, io: &mut Io<KTag>, now: Instant) {
        let allow = io.reply_timeout();
        let r = (self.rng.unit() * (1u64 << 52) as f64) as u64;
        let s = &mut self.sweep;
        if s.busy || self.stage != Stage::Running {
            return;
        }
        let Some(ctl) = io.control_ready() else {
            return;
        };
        s.seq += 1;
        s.token = Bytes::from(format!("ringq-{r:013x}{:x}", s.seq));
        s.busy = true;
        ctl.command(Tag::Pipe(KTag::SweepLock), now, allow, |buf| {
            CommandWriter::new(buf, 6)
                .arg("SET")
                .arg(&s.mutex)
                .arg(&s.token)
                .arg("NX")
                .arg("PX")
                .arg("300000")
                .finish();
        });
    }

    /// A reply of the sweep's round.
    pub(super) fn on_sweep_reply(&mut self, io: &mut Io<KTag>, cmd: KTag, f: &Frame) {
        let allow = io.reply_timeout();
        let now = Instant::now();
        let vt = self.vt;
        let index = self.index.clone();
        let unacked = self.unacked.clone();
        let s = &mut self.sweep;
        if !s.busy {
            return;
        }
        let Some(ctl) = io.control_ready() else {
            s.reset();
            return;
        };
        match cmd {
            KTag::SweepLock => {
                if !matches!(f, Frame::SimpleString(_)) {
                    // Another worker sweeps now.
                    s.busy = false;
                    return;
                }
                s.offset = 0;
                list_overdue(ctl, &index, vt, 0, now, allow);
            }
            KTag::SweepList => {
                let own = s.own.clone();
                let listed = match f {
                    Frame::Array(v) => v.len(),
                    _ => 0,
                };
                let fields: Vec<Bytes> = match f {
                    Frame::Array(v) => v
                        .iter()
                        .filter_map(|x| x.as_bytes().cloned())
                        .filter(|x| !x.starts_with(&own))
                        .collect(),
                    _ => Vec::new(),
                };
                if fields.is_empty() {
                    // A full page of this consumer's own records: look further (ten
                    // pages a round at most).
                    if listed == ROUND && s.offset < 9 * ROUND as u64 {
                        s.offset += ROUND as u64;
                        list_overdue(ctl, &index, vt, s.offset, now, allow);
                        return;
                    }
                    self.unlock(io);
                    return;
                }
                ctl.command(Tag::Pipe(KTag::SweepValues), now, allow, |buf| {
                    CommandWriter::new(buf, 2 + fields.len())
                        .arg("HMGET")
                        .arg(&unacked)
                        .args(&fields)
                        .finish();
                });
                s.found = fields.into_iter().map(|x| (x, None)).collect();
            }
            KTag::SweepValues => {
                if let Frame::Array(v) = f {
                    for (slot, x) in s.found.iter_mut().zip(v) {
                        slot.1 = x.as_bytes().cloned();
                    }
                }
                // Records already gone (acked, or restored by someone else) are left out.
                s.found.retain(|(_, v)| v.is_some());
                let mut wanted: Vec<String> = s
                    .found
                    .iter()
                    .filter_map(|(_, v)| record(v.as_deref()?).map(|r| r.1))
                    .filter(|ex| !ex.is_empty())
                    .collect();
                wanted.sort();
                wanted.dedup();
                s.bindings.clear();
                s.waiting = wanted.len();
                for (i, ex) in wanted.iter().enumerate() {
                    let key = format!("{}_kombu.binding.{ex}", s.prefix);
                    ctl.command(
                        Tag::Pipe(KTag::SweepBindings { n: i as u32 }),
                        now,
                        allow,
                        |buf| {
                            CommandWriter::new(buf, 2)
                                .arg("SMEMBERS")
                                .arg(&key)
                                .finish();
                        },
                    );
                }
                s.exchanges = wanted;
                if s.waiting == 0 {
                    self.restore_found(io, now);
                }
            }
            KTag::SweepBindings { n } => {
                let members: Vec<(String, String)> = match f {
                    Frame::Array(v) | Frame::Set(v) => v
                        .iter()
                        .filter_map(|m| {
                            let m = String::from_utf8_lossy(m.as_bytes()?).into_owned();
                            let parts: Vec<&str> = m.split(kombu::SEP).collect();
                            (parts.len() == 3).then(|| (parts[0].to_owned(), parts[2].to_owned()))
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                if let Some(ex) = s.exchanges.get(n as usize) {
                    s.bindings.insert(ex.clone(), members);
                }
                s.waiting = s.waiting.saturating_sub(1);
                if s.waiting == 0 {
                    self.restore_found(io, now);
                }
            }
            KTag::SweepRestore => {
                let moved = match f {
                    Frame::Integer(n) => (*n).max(0) as u64,
                    _ => 0,
                };
                if moved > 0 {
                    tracing::warn!(
                        "restored {moved} message(s) whose records were older than the \
                         visibility timeout (a worker that died holding them)"
                    );
                    io.stats().add(&io.stats().recovered, moved);
                    io.event(Event::Recovered {
                        queue: "(restore_visible)".into(),
                        swept: 1,
                        messages: moved,
                    });
                }
                self.unlock(io);
            }
            KTag::SweepUnlock => s.busy = false,
            _ => {}
        }
    }

    /// The round's records, routed and restored in one script.
    fn restore_found(&mut self, io: &mut Io<KTag>, now: Instant) {
        let allow = io.reply_timeout();
        let s = &mut self.sweep;
        let mut args: Vec<Vec<u8>> = Vec::new();
        for (field, value) in std::mem::take(&mut s.found) {
            let Some(value) = value else { continue };
            let mut targets = Vec::new();
            let element = record(&value).and_then(|(mut m, ex, rk)| {
                let queues: Vec<String> = if ex.is_empty() {
                    vec![rk.clone()]
                } else {
                    s.bindings
                        .get(&ex)
                        .map(|b| {
                            b.iter()
                                .filter(|(k, _)| *k == rk)
                                .map(|(_, q)| q.clone())
                                .collect()
                        })
                        .unwrap_or_default()
                };
                let priority = m["properties"]["priority"].as_u64().unwrap_or(0).min(9) as u8;
                // A record of a ringq consumer: one more delivery by ringq.
                let deliveries = field.starts_with(b"ringq:").then(|| {
                    m["headers"][kombu::DELIVERIES_HEADER]
                        .as_u64()
                        .unwrap_or(0)
                        .saturating_add(1) as u32
                });
                kombu::mark_redelivered(&mut m, deliveries);
                targets = queues.iter().map(|q| s.key_for(q, priority)).collect();
                serde_json::to_vec(&m).ok()
            });
            let (element, targets) = match element {
                Some(e) if !targets.is_empty() => (e, targets),
                Some(_) => (
                    dead_entry(
                        &value,
                        0,
                        "restore_visible: no queue is bound to its exchange and routing key",
                    ),
                    Vec::new(),
                ),
                None => (
                    dead_entry(
                        &value,
                        0,
                        "restore_visible: a record that is not [message, exchange, routing key]",
                    ),
                    Vec::new(),
                ),
            };
            args.push(field.to_vec());
            args.push(element);
            args.push(targets.len().to_string().into_bytes());
            args.extend(targets);
        }
        let Some(ctl) = io.control_ready() else {
            s.reset();
            return;
        };
        if args.is_empty() {
            self.unlock(io);
            return;
        }
        let (unacked, index) = (&self.unacked, &self.index);
        ctl.command(Tag::Pipe(KTag::SweepRestore), now, allow, |buf| {
            CommandWriter::new(buf, 6 + args.len())
                .arg("EVALSHA")
                .arg(&scripts::KRESTORE.sha)
                .arg("3")
                .arg(unacked)
                .arg(index)
                .arg(&s.unrestorable)
                .args(&args)
                .finish();
        });
    }

    /// Releases the mutex (only if still this round's).
    fn unlock(&mut self, io: &mut Io<KTag>) {
        let allow = io.reply_timeout();
        let s = &mut self.sweep;
        let Some(ctl) = io.control_ready() else {
            s.reset();
            return;
        };
        ctl.command(Tag::Pipe(KTag::SweepUnlock), Instant::now(), allow, |buf| {
            CommandWriter::new(buf, 5)
                .arg("EVALSHA")
                .arg(&scripts::KUNLOCK.sha)
                .arg("1")
                .arg(&s.mutex)
                .arg(&s.token)
                .finish();
        });
    }
}

/// `ZRANGE unacked_index -inf <now - vt> BYSCORE LIMIT offset ROUND`: the oldest overdue
/// records.
fn list_overdue(
    ctl: &mut crate::conn::Conn<KTag>,
    index: &Bytes,
    vt: std::time::Duration,
    offset: u64,
    now: Instant,
    allow: std::time::Duration,
) {
    let cutoff = format!(
        "{:.3}",
        now_ms().saturating_sub(vt.as_millis() as u64) as f64 / 1000.0
    );
    ctl.command(Tag::Pipe(KTag::SweepList), now, allow, |buf| {
        CommandWriter::new(buf, 8)
            .arg("ZRANGE")
            .arg(index)
            .arg("-inf")
            .arg(&cutoff)
            .arg("BYSCORE")
            .arg("LIMIT")
            .arg_int(offset as i64)
            .arg_int(ROUND as i64)
            .finish();
    });
}

/// A Kombu record `[message, exchange, routing key]`, parsed.
fn record(value: &[u8]) -> Option<(Value, String, String)> {
    let Value::Array(mut v) = serde_json::from_slice::<Value>(value).ok()? else {
        return None;
    };
    if v.len() != 3 || !v[0].is_object() {
        return None;
    }
    let rk = v.pop()?.as_str()?.to_owned();
    let ex = v.pop()?.as_str()?.to_owned();
    Some((v.pop()?, ex, rk))
}

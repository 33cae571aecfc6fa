//! The listen pipeline (delivery mode `listen`, at-most-once broadcast): SUBSCRIBE,
//! PSUBSCRIBE and SSUBSCRIBE, with RESP3 push frames or RESP2 message arrays.
//!
//! - **Subscriptions** are spread over the fetch connections (subscription `i` on
//!   connection `i mod L`), each subscribed once. On every handshake — the first one and
//!   after every reconnect — a connection subscribes to all of its subscriptions, one
//!   command each ([`Conn::command_pushed`]: answered by a confirmation push, or by an
//!   error reply if the server refuses), then sends a PING. The PING's reply comes after
//!   every confirmation, so when it arrives each subscription must be confirmed: that is
//!   the confirmation deadline. A refusal (an ACL without the channel) stops the engine
//!   with the server's reason; it is not retried.
//! - **Never silent.** A lost connection opens a *gap* for its subscriptions; when they
//!   are confirmed again the handler gets [`Event::Gap`] with both times and the cause,
//!   and `Stats::gaps` counts it. An `unsubscribe` nobody asked for (a shard channel's
//!   slot moved, an ACL change) is subscribed again at once, with a gap of its own. A
//!   frozen server or a half-open connection is noticed by the shard's idle PING, which
//!   a subscribed connection answers in both protocols (`*2 pong ""` in RESP2).
//! - **Overflow.** Messages arrive unasked, so each one holds credit from its arrival
//!   until its outcome. With [`Overflow::Block`], a connection whose credit runs out stops
//!   reading (TCP then pushes back on the server) and resumes once half its reserve is
//!   free; if the server drops it meanwhile (its `client-output-buffer-limit pubsub`), the
//!   gap says so ([`GapCause::OutputBufferLimit`]). With [`Overflow::DropOldest`], reading
//!   goes on and messages beyond the credit wait in a bounded staging area, the oldest
//!   dropped when it is full, counted and reported ([`Event::Dropped`]).
//!
//! Messages borrow their payload from the push frame on the inline path, like pop's; the
//! channel is the message's `aux` span of the same frame, the subscription its interned
//! source.
//!
//! [`Conn::command_pushed`]: crate::conn::Conn

mod config;
mod confirm;
mod push;
mod watch;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use ringq_resp::{CommandWriter, ServerError, ServerErrorKind};

use super::{ControlUse, Drain, FetchLane, Io, Pipeline};
use crate::conn::classify::{self, Class};
use crate::conn::{Failure, Tag};
use crate::error::{Error, ErrorKind};
use crate::handler::{GapCause, Message, Outcome, Payload, Source, SourceKind, Span};
use crate::intern::intern_source;

pub use config::{ListenConsumer, Overflow, Subscription};
use push::{kind_slot, Push};

/// A listen-mode command awaiting its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListenTag {
    /// SUBSCRIBE / PSUBSCRIBE / SSUBSCRIBE of subscription `sub` (answered by a push, or
    /// by an error reply).
    Subscribe { sub: u32 },
    /// The PING after a round of subscribe commands: their confirmations come first.
    Barrier { round: u32 },
    /// On Control: `CLIENT LIST ID client` about paused connection `conn` of `lane`.
    Alive { lane: u32, conn: u32, client: i64 },
}

/// Where a subscription is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not in force (not yet subscribed, or its connection was lost).
    Off,
    /// SUBSCRIBE sent, confirmation awaited.
    Asked,
    /// Confirmed.
    On,
}

struct Sub {
    spec: Subscription,
    source: &'static Source,
    lane: usize,
    state: State,
    /// The subscribe round (barrier) that asked for it last.
    round: u32,
}

/// A gap: since when a lane's (or one subscription's) messages may be missed, and why.
struct Gap {
    since: SystemTime,
    cause: GapCause,
    /// The subscriptions it covers (indices).
    subs: Vec<usize>,
}

#[derive(Default)]
struct Lane {
    subs: Vec<usize>,
    /// Reading is paused for want of credit (`Overflow::Block`).
    paused: bool,
    gap: Option<Gap>,
    /// When the server last listed its paused connection (see `watch`).
    alive_at: Option<SystemTime>,
    /// When its last message arrived (ns since the engine's epoch; 0: none yet).
    last_msg_ns: u64,
    /// When reading last resumed after a pause.
    resumed_at: Option<Instant>,
}

impl Lane {
    /// Reading resumed within [`watch::RESUME_GRACE`]: what it reads is what the server
    /// buffered while it was paused.
    fn resumed_recently(&self) -> bool {
        self.resumed_at
            .is_some_and(|t| t.elapsed() < watch::RESUME_GRACE)
    }
}

/// The listen pipeline of one shard.
pub(crate) struct ListenPipeline {
    subs: Vec<Sub>,
    /// name → subscription, one map per kind (channel, pattern, shard channel), for
    /// routing pushes without building a key.
    by_name: [HashMap<Bytes, usize>; 3],
    /// The shard-local subscription of each subscription index (`usize::MAX`: another
    /// shard's).
    by_index: Vec<usize>,
    lanes: Vec<Lane>,
    overflow: Overflow,
    confirm_timeout: Option<Duration>,
    /// `Overflow::DropOldest`: messages beyond the credit, oldest first, per lane (so one
    /// lane's full credit does not hold back another's).
    staged: Vec<VecDeque<Message<'static>>>,
    /// Subscribe rounds sent so far (each ends with its barrier).
    rounds: u32,
    dropped_unreported: u64,
    /// When drops were last reported (once per `watch::WATCH_PERIOD` at most).
    dropped_reported_at: Option<Instant>,
    /// The watch timer is set.
    watching: bool,
    /// `CLIENT LIST` works here (false once the server refused it).
    watch_usable: bool,
    /// The engine-wide message budget (`EngineBuilder::limit`), if any.
    budget: Option<std::sync::Arc<crate::budget::Budget>>,
}

impl ListenPipeline {
    /// The listen pipeline of a shard whose lane `l` holds the subscriptions `lanes[l]`
    /// (indices into the consumer's list).
    pub(crate) fn new(
        consumer: &ListenConsumer,
        lanes: Vec<Vec<u32>>,
        budget: Option<std::sync::Arc<crate::budget::Budget>>,
    ) -> Self {
        let mut subs = Vec::new();
        let mut by_name: [HashMap<Bytes, usize>; 3] = Default::default();
        let mut by_index = vec![usize::MAX; consumer.subscriptions.len()];
        let nlanes = lanes.len();
        let mut lane_states = Vec::with_capacity(nlanes);
        for (l, members) in lanes.into_iter().enumerate() {
            let mut lane = Lane::default();
            for i in members {
                let spec = consumer.subscriptions[i as usize].clone();
                let kind = match spec {
                    Subscription::Channel(_) => SourceKind::Channel,
                    Subscription::Pattern(_) => SourceKind::Pattern,
                    Subscription::ShardChannel(_) => SourceKind::ShardChannel,
                };
                let name = spec.name().clone();
                let source = intern_source(kind, &name, &name, 0, i);
                by_name[kind_slot(kind)].insert(name, subs.len());
                by_index[i as usize] = subs.len();
                lane.subs.push(subs.len());
                subs.push(Sub {
                    spec,
                    source,
                    lane: l,
                    state: State::Off,
                    round: 0,
                });
            }
            lane_states.push(lane);
        }
        Self {
            budget,
            subs,
            by_name,
            by_index,
            lanes: lane_states,
            overflow: consumer.overflow,
            confirm_timeout: consumer.confirm_timeout,
            staged: (0..nlanes).map(|_| VecDeque::new()).collect(),
            rounds: 0,
            dropped_unreported: 0,
            dropped_reported_at: None,
            watching: false,
            watch_usable: true,
        }
    }

    /// Sends the subscribe command of every subscription of `lane` (or just `only`) on
    /// connection `conn`, then the PING that comes back after their confirmations.
    fn subscribe(&mut self, io: &mut Io<ListenTag>, conn: usize, lane: usize, only: Option<usize>) {
        let allow = self.confirm_timeout.unwrap_or(io.reply_timeout());
        let now = Instant::now();
        let c = io.conn_mut(conn);
        let resp3 = c.server().resp3;
        c.set_subscriber(!resp3);
        let members: Vec<usize> = match only {
            Some(s) => vec![s],
            None => self.lanes[lane].subs.clone(),
        };
        self.rounds = self.rounds.wrapping_add(1);
        let round = self.rounds;
        for s in members {
            let sub = &mut self.subs[s];
            sub.state = State::Asked;
            sub.round = round;
            let (cmd, name) = (sub.spec.command(), sub.spec.name());
            c.command_pushed(
                Tag::Pipe(ListenTag::Subscribe { sub: s as u32 }),
                now,
                allow,
                |buf| {
                    CommandWriter::new(buf, 2).arg(cmd).arg(name).finish();
                },
            );
        }
        c.command(Tag::Pipe(ListenTag::Barrier { round }), now, allow, |buf| {
            CommandWriter::new(buf, 1).arg("PING").finish();
        });
    }

    /// The lane of connection `conn`.
    fn lane_of(io: &Io<ListenTag>, conn: usize) -> Result<usize, Failure> {
        io.lane_of_reply(conn)
    }

    /// Gives credit back for one handled message of subscription `index`, and resumes a
    /// paused reader once half its reserve is free.
    fn handled(&mut self, io: &mut Io<ListenTag>, index: u32, bytes: u64) {
        let Some(sub) = self
            .by_index
            .get(index as usize)
            .and_then(|&s| self.subs.get(s))
        else {
            return;
        };
        let lane = sub.lane;
        io.credits().release(lane, 1, bytes);
        if self.lanes[lane].paused && io.credits().is_below_half(lane) {
            self.lanes[lane].paused = false;
            self.lanes[lane].resumed_at = Some(Instant::now());
            let serving = (0..io.conns().len())
                .find(|&id| io.fetching(id).map(FetchLane::index) == Some(lane));
            if let Some(id) = serving {
                io.conn_mut(id).resume_reading();
            }
        }
    }

    /// A published message (`at`: where its parts lie in `frame`).
    fn on_message<'f>(
        &mut self,
        io: &mut Io<ListenTag>,
        conn: usize,
        frame: &'f Bytes,
        at: push::Parts,
        out: &mut Vec<Message<'f>>,
    ) -> u64 {
        let push::Parts {
            kind,
            name,
            channel,
            payload,
        } = at;
        let Some(&s) = self.by_name[kind_slot(kind)].get(&frame[name]) else {
            tracing::debug!("a message for a subscription this shard does not hold; ignored");
            return 0;
        };
        if let Some(b) = &self.budget {
            // `limit`: exactly N messages, then the engine stops.
            if b.claim(1) == 0 {
                return 0;
            }
        }
        let lane = self.subs[s].lane;
        self.lanes[lane].last_msg_ns = io.turn_ns();
        let len = payload.len() as u64;
        let msg = Message {
            payload: Payload::Lent {
                bytes: &frame[payload],
                frame,
            },
            source: self.subs[s].source,
            aux: Span::of(&frame[channel], frame),
            deliveries: 1,
            received_ns: io.turn_ns(),
            seq: 0,
        };
        let full = io.credits().is_full(lane);
        match self.overflow {
            Overflow::DropOldest(cap) if full || !self.staged[lane].is_empty() => {
                // Behind the lane's staged ones, to keep each channel's order.
                let staged = &mut self.staged[lane];
                if staged.len() >= cap.max(1) {
                    staged.pop_front();
                    self.dropped_unreported += 1;
                    io.stats().add(&io.stats().dropped, 1);
                    if let Some(b) = &self.budget {
                        // A dropped message was never delivered: its claim goes back.
                        b.unclaim(1);
                    }
                }
                staged.push_back(msg.into_static());
                0
            }
            _ => {
                io.credits().hold(lane, 1, len);
                if self.overflow == Overflow::Block && io.credits().is_full(lane) {
                    // `Block`: no credit left; stop reading until handlers catch up.
                    self.lanes[lane].paused = true;
                    io.conn_mut(conn).pause_reading();
                }
                out.push(msg);
                len
            }
        }
    }
}

impl Pipeline for ListenPipeline {
    type Cmd = ListenTag;
    const LOSSES_ARE_EVENTS: bool = true;

    fn fetch_connections(&self) -> usize {
        self.lanes.len()
    }

    fn control(&self) -> ControlUse {
        ControlUse::OnDemand
    }

    fn on_ready(&mut self, io: &mut Io<ListenTag>, conn: usize, _now: Instant) {
        if let Some(lane) = io.fetch_of(conn) {
            let l = &mut self.lanes[lane.index()];
            l.paused = false;
            l.alive_at = None;
            l.resumed_at = None;
            self.subscribe(io, conn, lane.index(), None);
        }
    }

    fn fill(&mut self, io: &mut Io<ListenTag>, now: Instant) {
        self.tend(io, now);
    }

    fn on_timer(&mut self, io: &mut Io<ListenTag>, id: u32, now: Instant) {
        if id == watch::TIMER_WATCH {
            self.on_watch_timer(io, now);
        }
    }

    fn on_reply<'f>(
        &mut self,
        io: &mut Io<ListenTag>,
        conn: usize,
        cmd: ListenTag,
        frame: &'f Bytes,
        _out: &mut Vec<Message<'f>>,
        _now: Instant,
    ) -> Result<u64, Failure> {
        if let ListenTag::Alive { lane, conn, client } = cmd {
            self.on_alive(io, lane as usize, conn as usize, client, frame)?;
            return Ok(0);
        }
        let lane = Self::lane_of(io, conn)?;
        match cmd {
            ListenTag::Subscribe { sub } => {
                // Only an error answers a subscribe command with a reply.
                let spec = &self.subs[sub as usize].spec;
                let text = frame.get(1..).unwrap_or_default();
                let e = ServerError::parse(Bytes::copy_from_slice(text.trim_ascii_end()));
                let hint = match (classify::class(&e), e.kind()) {
                    (Class::Passing | Class::Failover | Class::Scripts | Class::Redirect, _) => {
                        return Err(Failure::Retry(Error::server(&format!("{spec}"), e)));
                    }
                    (Class::Auth, _) | (_, ServerErrorKind::NoPerm) => {
                        ": the ACL user needs access to it (`&<channel>` or `allchannels` in ACL SETUSER)"
                    }
                    (_, ServerErrorKind::UnknownCommand) => ": shard channels need Redis 7.0 or later",
                    _ => "",
                };
                Err(Failure::Fatal(Error::server(
                    &format!("the server refused to subscribe to {spec}{hint}"),
                    e,
                )))
            }
            ListenTag::Barrier { round } => {
                if matches!(frame.first(), Some(b'-' | b'!')) {
                    return Err(Failure::Retry(Error::new(
                        ErrorKind::Server,
                        format!(
                            "{} answered PING after the subscriptions with {}",
                            io.conn(conn).peer(),
                            String::from_utf8_lossy(frame).trim_end()
                        ),
                    )));
                }
                let missing: Vec<String> = self.lanes[lane]
                    .subs
                    .iter()
                    // Only the subscriptions this barrier's round asked for: a later
                    // round's confirmations come after its own barrier.
                    .filter(|&&s| self.subs[s].state == State::Asked && self.subs[s].round == round)
                    .map(|&s| self.subs[s].spec.to_string())
                    .collect();
                if !missing.is_empty() {
                    return Err(Failure::Retry(Error::new(
                        ErrorKind::Protocol,
                        format!(
                            "{} did not confirm {}; subscribing again",
                            io.conn(conn).peer(),
                            missing.join(", ")
                        ),
                    )));
                }
                if self.lanes[lane]
                    .subs
                    .iter()
                    .all(|&s| self.subs[s].state == State::On)
                {
                    self.close_gap(io, lane, true);
                }
                Ok(0)
            }
            ListenTag::Alive { .. } => Ok(0),
        }
    }

    fn on_push<'f>(
        &mut self,
        io: &mut Io<ListenTag>,
        conn: usize,
        frame: &'f Bytes,
        out: &mut Vec<Message<'f>>,
        _now: Instant,
    ) -> Result<u64, Failure> {
        match push::parse(frame)? {
            Push::Message(parts) => Ok(self.on_message(io, conn, frame, parts, out)),
            Push::Confirm { kind, name, on } => {
                if let Some(&s) = self.by_name[kind_slot(kind)].get(&frame[name]) {
                    if on {
                        self.on_subscribed(io, conn, s);
                    } else if !io.stopping() {
                        self.on_unsolicited_unsubscribe(io, conn, s);
                    }
                }
                Ok(0)
            }
            Push::Other => {
                io.stats().add(&io.stats().push_frames, 1);
                Ok(0)
            }
        }
    }

    fn on_outcomes(
        &mut self,
        io: &mut Io<ListenTag>,
        _conn: Option<usize>,
        msgs: &[Message<'_>],
        _outcomes: &[Outcome],
        _bytes: u64,
    ) {
        for m in msgs {
            self.handled(io, m.source.index, m.payload().len() as u64);
        }
    }

    fn on_worker_outcome(
        &mut self,
        io: &mut Io<ListenTag>,
        msg: &Message<'static>,
        _outcome: Outcome,
    ) {
        self.handled(io, msg.source.index, msg.payload().len() as u64);
    }

    fn take_staged(&mut self, io: &mut Io<ListenTag>, out: &mut Vec<Message<'static>>) -> u64 {
        let mut bytes = 0;
        for (lane, staged) in self.staged.iter_mut().enumerate() {
            while let Some(m) = staged.front() {
                if io.credits().is_full(lane) {
                    break;
                }
                let len = m.payload().len() as u64;
                io.credits().hold(lane, 1, len);
                bytes += len;
                out.extend(staged.pop_front());
            }
        }
        bytes
    }

    fn blocks(&self, _cmd: &ListenTag) -> bool {
        false
    }

    fn on_lost(
        &mut self,
        io: &mut Io<ListenTag>,
        conn: usize,
        _unanswered: &[ListenTag],
        _stalled: bool,
    ) {
        let Some(lane) = io.fetch_of(conn).map(FetchLane::index) else {
            return; // Control: no subscription rides on it
        };
        let why = io
            .conn(conn)
            .last_error()
            .unwrap_or("connection lost")
            .to_owned();
        let was_on: Vec<usize> = self.lanes[lane]
            .subs
            .iter()
            .copied()
            // Only those in force: one still being asked for was never confirmed, or is
            // already in the lane's open gap.
            .filter(|&s| self.subs[s].state == State::On)
            .collect();
        for &s in &self.lanes[lane].subs {
            self.subs[s].state = State::Off;
        }
        let paused = std::mem::take(&mut self.lanes[lane].paused);
        if io.stopping() || was_on.is_empty() && self.lanes[lane].gap.is_none() {
            return;
        }
        let since = self.lost_since(io, lane, paused);
        let cause = if paused || self.lanes[lane].resumed_recently() {
            GapCause::OutputBufferLimit(format!(
                "{why}; reading was paused because the handlers were behind, so the server \
                 most likely dropped the subscriber at its client-output-buffer-limit \
                 pubsub: raise it (CONFIG SET client-output-buffer-limit \"pubsub 0 0 0\" \
                 removes it), add workers, or use Overflow::DropOldest"
            ))
        } else {
            GapCause::ConnectionLost(why)
        };
        let gap = self.lanes[lane].gap.get_or_insert_with(|| Gap {
            since,
            cause,
            subs: Vec::new(),
        });
        for s in was_on {
            if !gap.subs.contains(&s) {
                gap.subs.push(s);
            }
        }
    }

    fn on_stop(&mut self, io: &mut Io<ListenTag>, _now: Instant) -> Drain {
        for lane in 0..self.lanes.len() {
            self.close_gap(io, lane, false);
        }
        self.report_drops(io, Instant::now());
        Drain::Drained
    }
}

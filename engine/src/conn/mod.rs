//! The connection state machine:
//!
//! ```text
//! Idle ──connect──▶ Connecting ──▶ Hello ──▶ [Select] ──▶ Ready ──▶ Closing ──▶ Idle (backoff)
//!                                   │ unknown command                  ▲
//!                                   └──▶ Auth2 ──▶ SetName2 ──▶ [Select] ┘ (RESP2 fallback)
//! ```
//!
//! A `Conn` owns its socket, read and write buffers, decoder and the queue of replies it
//! expects (in order: RESP replies come back in command order). It never builds SQEs: it
//! asks the [`Driver`]. It also never frees anything the kernel may still touch: on any
//! failure it cancels its operations and waits in `Closing` until every one of them has
//! ended, then closes the fd and schedules a reconnect with backoff and jitter.
//!
//! Pipelines (pop now; listen, reliable and stream later) only queue commands with
//! [`Conn::command`] (or [`Conn::command_unanswered`] for commands whose only answer is a
//! push frame) and receive their replies back from the shard. The reply FIFO is generic
//! over the pipeline's command tag `C`; [`Conn::next_reply`] tells a reply to a queued
//! command from a push frame (RESP3 `>`, or a RESP2 message array on a subscriber
//! connection), which answers none.

mod handshake;

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringq_resp::{CommandWriter, Decoder};

use crate::error::{Error, ErrorKind};
use crate::resolve::Resolver;
use crate::ring::{sys, Driver, OpId, SockAddr};
use crate::url::{ConnectionInfo, ResolvedAddr};

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// No socket; waiting for the reconnect timer (or never started).
    Idle,
    /// Waiting for the host name to be resolved again before a reconnect.
    Resolving,
    /// `connect` in flight.
    Connecting,
    /// `HELLO 3` sent.
    Hello,
    /// RESP2 fallback: `AUTH` sent.
    Auth2,
    /// RESP2 fallback: `CLIENT SETNAME` sent.
    SetName2,
    /// `SELECT` sent.
    Select,
    /// Handshake done; the pipeline may send.
    Ready,
    /// Failed or stopping; waiting for in-flight operations to end.
    Closing,
    /// Stopped for good (shutdown or fatal error) once its operations ended.
    Done,
}

/// What a queued command's reply is for: the connection's own handshake, the shard's
/// idle PING and CLIENT UNBLOCK, or a command of the pipeline (its tag `C`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tag<C> {
    Hello,
    Auth,
    SetName,
    Select,
    /// An idle PING on a connection with nothing in flight.
    Ping,
    /// `CLIENT UNBLOCK` of connection `conn`'s blocked command, sent during a stop on the
    /// Control connection (see `Shard::unblock_blocked`).
    Unblock {
        conn: u32,
    },
    /// A pipeline's command.
    Pipe(C),
}

/// What a connection is for on its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Carries the pipeline's fetching (possibly blocking) commands; the number is the
    /// pipeline's own (pop: the lane).
    Fetch(u32),
    /// The shard's Control connection: acks, scripts, CLIENT UNBLOCK — commands that must
    /// never wait behind a blocked fetch.
    Control,
}

/// A reply taken from a connection's read buffer.
pub(crate) enum Reply<C> {
    /// The answer to the oldest queued command.
    Answer(Tag<C>, Bytes),
    /// A push frame, which answers no command.
    Push(Bytes),
}

/// A queued command waiting for its reply.
#[derive(Debug, Clone, Copy)]
struct Pending<C> {
    tag: Tag<C>,
    deadline: Instant,
    /// The time the command is allowed once it reaches the head of the pipeline: a
    /// command queued behind a blocking pop that blocks gets its deadline pushed back by
    /// the time it waited (see [`Conn::next_reply`]).
    allow: Duration,
}

/// What a connection's deadline timer found when it fired.
pub(crate) enum Deadline<C> {
    /// Stale (another timer counts, or nothing is due): nothing to do.
    Moot,
    /// The head command is not due yet: arm a timer for this instant.
    Rearm(Instant),
    /// The head command is overdue.
    Overdue(Tag<C>),
}

impl<C> Pending<C> {
    fn new(tag: Tag<C>, deadline: Instant) -> Self {
        Self {
            tag,
            deadline,
            allow: deadline.saturating_duration_since(Instant::now()),
        }
    }
}

/// Facts learned in the handshake.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServerInfo {
    #[cfg_attr(
        not(test),
        allow(
            dead_code,
            reason = "the seam's own tests use it now; the listen, reliable and stream pipelines will"
        )
    )]
    pub resp3: bool,
    pub version: (u32, u32, u32),
    pub client_id: Option<i64>,
}

impl ServerInfo {
    /// LMPOP/BLMPOP exist from Redis 7.0 (Valkey reports its own version, 7.2+ or 8+).
    pub(crate) fn has_lmpop(&self) -> bool {
        self.version.0 >= 7
    }
}

/// Settings shared by every connection of an engine.
#[derive(Debug)]
pub(crate) struct ConnConfig {
    pub info: ConnectionInfo,
    /// The address found at start.
    pub addr: ResolvedAddr,
    /// Looks the host name up again before every reconnect (`None`: an IP literal or a
    /// Unix socket, nothing to look up).
    pub resolver: Option<Arc<Resolver>>,
    pub connect_timeout: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Connection attempts before a connection that has never been ready gives up.
    pub start_attempts: u32,
    pub client_name: String,
}

/// Why a connection is closing.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Lost or timed out: reconnect after a backoff.
    Retry(Error),
    /// Cannot be fixed by retrying (auth, protocol, config): stop the engine.
    Fatal(Error),
}

/// One connection: socket, buffers, decoder, the FIFO of commands it awaits replies to,
/// and its place in its shard (id, generation, role).
pub(crate) struct Conn<C> {
    id: u32,
    gen: u32,
    role: Role,
    phase: Phase,
    name: String,
    cfg: Arc<ConnConfig>,
    fd: RawFd,
    connect_op: Option<OpId>,
    send_op: Option<OpId>,
    recv_op: Option<OpId>,
    rbuf: BytesMut,
    dec: Decoder,
    wbuf: BytesMut,
    in_send: Bytes,
    pending: VecDeque<Pending<C>>,
    server: ServerInfo,
    /// When this connection's deadline timer fires, if one is armed (at most one counts;
    /// an earlier head deadline arms an earlier one, and the later one is then ignored).
    deadline_armed: Option<Instant>,
    failures: u32,
    ever_ready: bool,
    /// After closing, go to `Done` instead of reconnecting.
    stop_after_close: bool,
    last_error: Option<String>,
    /// During a stop: a `CLIENT UNBLOCK` for the blocking command at the head is on its
    /// way.
    unblock_sent: bool,
    /// A reply was overdue and a fresh connection took over this one's role: it sends
    /// nothing new and stays open until this instant at most, to deliver the replies
    /// still owed (see `Shard::retire`).
    draining: Option<Instant>,
    /// This connection stalled once and was replaced; once done, its slot may be reused.
    retired: bool,
    /// Subscribed (RESP2): message and (un)subscribe arrays are push frames.
    subscriber: bool,
    /// Reading is paused (backpressure): no receive is armed, replies stay buffered.
    paused: bool,
    /// Reading resumed this turn: re-arm the receive and process what was buffered.
    resumed: bool,
    /// The receive was cancelled for a pause (its final completion is still to come).
    recv_cancelled: bool,
    rng: u64,
}

/// Packs a connection's id and generation into a driver token.
pub(crate) fn token(id: u32, gen: u32) -> u64 {
    u64::from(id) << 32 | u64::from(gen)
}

impl<C: Copy + std::fmt::Debug> Conn<C> {
    pub(crate) fn new(id: u32, role: Role, name: String, cfg: Arc<ConnConfig>, seed: u64) -> Self {
        Self {
            id,
            gen: 0,
            role,
            phase: Phase::Idle,
            name,
            cfg,
            fd: -1,
            connect_op: None,
            send_op: None,
            recv_op: None,
            rbuf: BytesMut::with_capacity(64 * 1024),
            dec: Decoder::new(),
            wbuf: BytesMut::with_capacity(4 * 1024),
            in_send: Bytes::new(),
            pending: VecDeque::with_capacity(16),
            server: ServerInfo::default(),
            deadline_armed: None,
            failures: 0,
            ever_ready: false,
            stop_after_close: false,
            last_error: None,
            unblock_sent: false,
            draining: None,
            retired: false,
            subscriber: false,
            paused: false,
            resumed: false,
            recv_cancelled: false,
            rng: seed | 1,
        }
    }

    /// A fresh connection for this one's role, in slot `id` (whose previous occupant, if
    /// any, had generation `gen`), when this one stalled: same name and settings, and the
    /// same standing (a connection that has worked before is retried for as long as it
    /// takes).
    pub(crate) fn successor(&mut self, id: u32, gen: u32) -> Conn<C> {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let mut c = Conn::new(id, self.role, self.name.clone(), self.cfg.clone(), self.rng);
        c.gen = gen;
        c.failures = self.failures;
        c.ever_ready = self.ever_ready;
        c.last_error = self.last_error.clone();
        c
    }

    /// Index in its shard's connection table.
    pub(crate) fn id(&self) -> u32 {
        self.id
    }

    /// Generation: bumped by every connect, so stale completions and timers are told apart.
    pub(crate) fn gen(&self) -> u32 {
        self.gen
    }

    pub(crate) fn role(&self) -> Role {
        self.role
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// Ready and not draining: the pipeline may queue commands on it.
    pub(crate) fn serves(&self) -> bool {
        self.phase == Phase::Ready && self.draining.is_none()
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// What the handshake learned about the server.
    pub(crate) fn server(&self) -> &ServerInfo {
        &self.server
    }

    /// Failed attempts since it last served.
    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether its handshake ever completed.
    pub(crate) fn ever_ready(&self) -> bool {
        self.ever_ready
    }

    pub(crate) fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    pub(crate) fn set_last_error(&mut self, e: String) {
        self.last_error = Some(e);
    }

    /// After its next close, it stays closed (`Done`) instead of reconnecting.
    pub(crate) fn stop_after_close(&mut self) {
        self.stop_after_close = true;
    }

    /// Waiting for its host name to be looked up again.
    pub(crate) fn set_resolving(&mut self) {
        self.phase = Phase::Resolving;
    }

    /// Given up without a socket (stop, or out of start attempts).
    pub(crate) fn set_done(&mut self) {
        self.phase = Phase::Done;
    }

    /// A lookup failed: counts as a failed attempt (`try_finish_close` then backs off).
    pub(crate) fn lookup_failed(&mut self, e: String) {
        self.last_error = Some(e);
        self.phase = Phase::Closing;
    }

    /// Draining after a stall: the instant it closes at the latest.
    pub(crate) fn draining(&self) -> Option<Instant> {
        self.draining
    }

    pub(crate) fn set_draining(&mut self, until: Instant) {
        self.draining = Some(until);
    }

    /// Stalled once and replaced; its slot may be reused once done.
    pub(crate) fn retired(&self) -> bool {
        self.retired
    }

    pub(crate) fn set_retired(&mut self) {
        self.retired = true;
    }

    /// A `CLIENT UNBLOCK` for its head command is on its way (during a stop).
    pub(crate) fn unblock_sent(&self) -> bool {
        self.unblock_sent
    }

    pub(crate) fn set_unblock_sent(&mut self, sent: bool) {
        self.unblock_sent = sent;
    }

    /// Whether a `CLIENT UNBLOCK` was sent for the command just answered; clears it.
    pub(crate) fn take_unblock_sent(&mut self) -> bool {
        std::mem::take(&mut self.unblock_sent)
    }

    #[cfg_attr(
        not(test),
        allow(
            dead_code,
            reason = "the seam's own tests use it now; the listen, reliable and stream pipelines will"
        )
    )]
    /// From now on RESP2 message and (un)subscribe arrays are push frames (RESP3 push
    /// frames are told apart by their type byte on any connection).
    pub(crate) fn set_subscriber(&mut self, on: bool) {
        self.subscriber = on;
    }

    /// No command awaits a reply.
    pub(crate) fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether any queued pipeline command matches `f`.
    pub(crate) fn any_cmd(&self, mut f: impl FnMut(&C) -> bool) -> bool {
        self.pending.iter().any(|p| match &p.tag {
            Tag::Pipe(c) => f(c),
            _ => false,
        })
    }

    /// The pipeline's commands awaiting replies, oldest first, to update in place.
    pub(crate) fn cmds_mut(&mut self) -> impl Iterator<Item = &mut C> {
        self.pending.iter_mut().filter_map(|p| match &mut p.tag {
            Tag::Pipe(c) => Some(c),
            _ => None,
        })
    }

    /// The tag of the oldest command awaiting its reply.
    pub(crate) fn head(&self) -> Option<Tag<C>> {
        self.pending.front().map(|p| p.tag)
    }

    /// Moves the pipeline's unanswered commands to `out`, oldest first (the connection
    /// is lost: they will never be answered).
    pub(crate) fn take_unanswered(&mut self, out: &mut Vec<C>) {
        out.extend(self.pending.iter().filter_map(|p| match p.tag {
            Tag::Pipe(c) => Some(c),
            _ => None,
        }));
        self.pending.retain(|p| !matches!(p.tag, Tag::Pipe(_)));
    }

    /// The head command's deadline, if no timer armed so far fires by then: the caller
    /// adds a timer for it. (A new head may be due sooner than the armed timer — a
    /// blocking pop after non-blocking ones — or a hung server would be noticed late.)
    pub(crate) fn arm_deadline(&mut self) -> Option<Instant> {
        if self.draining.is_some() {
            // Past its deadline already; its drain limit has a timer of its own.
            return None;
        }
        let head = self.pending.front()?.deadline;
        if self.deadline_armed.is_some_and(|at| head >= at) {
            return None;
        }
        self.deadline_armed = Some(head);
        Some(head)
    }

    /// The deadline timer armed for this generation fired at `now`.
    pub(crate) fn deadline_fired(&mut self, now: Instant) -> Deadline<C> {
        if !self.deadline_armed.is_some_and(|at| at <= now) {
            // Not armed, or a timer superseded by an earlier one that is still to fire.
            return Deadline::Moot;
        }
        self.deadline_armed = None;
        if self.draining.is_some() {
            return Deadline::Moot;
        }
        let Some(head) = self.pending.front() else {
            return Deadline::Moot;
        };
        if head.deadline > now {
            self.deadline_armed = Some(head.deadline);
            return Deadline::Rearm(head.deadline);
        }
        Deadline::Overdue(head.tag)
    }

    pub(crate) fn token(&self) -> u64 {
        token(self.id, self.gen)
    }

    pub(crate) fn peer(&self) -> String {
        self.cfg.info.to_string()
    }

    /// Whether any operation of this connection is still in the kernel.
    pub(crate) fn has_ops(&self) -> bool {
        self.connect_op.is_some() || self.send_op.is_some() || self.recv_op.is_some()
    }

    /// Opens a socket and starts connecting to `addr`.
    pub(crate) fn start_connect(
        &mut self,
        driver: &mut Driver,
        now: Instant,
        addr: &ResolvedAddr,
    ) -> Result<(), Failure> {
        debug_assert!(!self.has_ops());
        self.gen = self.gen.wrapping_add(1);
        self.rbuf.clear();
        self.wbuf.clear();
        self.dec.reset();
        self.pending.clear();
        self.server = ServerInfo::default();
        // A fresh socket: not subscribed, reading.
        self.subscriber = false;
        self.paused = false;
        self.resumed = false;
        self.recv_cancelled = false;
        let addr = match addr {
            ResolvedAddr::Tcp(a) => SockAddr::from_std(a),
            ResolvedAddr::Unix(p) => SockAddr::unix(p).map_err(|e| {
                Failure::Fatal(Error::config(format!("unix socket {}: {e}", p.display())))
            })?,
        };
        self.fd = sys::stream_socket(&addr).map_err(|e| Failure::Retry(Error::io("socket", e)))?;
        self.phase = Phase::Connecting;
        let op = driver
            .connect(self.token(), self.fd, addr)
            .map_err(Failure::Fatal)?;
        self.connect_op = Some(op);
        // The connect and the handshake share one deadline.
        self.pending
            .push_back(Pending::new(Tag::Hello, now + self.cfg.connect_timeout));
        Ok(())
    }

    /// The connect finished with `result` (0 or -errno).
    pub(crate) fn on_connected(&mut self, driver: &mut Driver, result: i32) -> Result<(), Failure> {
        self.connect_op = None;
        if self.phase != Phase::Connecting {
            return Ok(());
        }
        if result < 0 {
            let e = std::io::Error::from_raw_os_error(-result);
            return Err(Failure::Retry(
                Error::new(
                    ErrorKind::ConnectionLost,
                    format!("cannot connect to {}: {e}", self.peer()),
                )
                .with_source(e),
            ));
        }
        self.recv_op = Some(driver.recv(self.token(), self.fd).map_err(Failure::Fatal)?);
        self.phase = Phase::Hello;
        // Replace the connect's placeholder with the HELLO it stands for.
        let deadline = self
            .pending
            .pop_front()
            .map_or_else(Instant::now, |p| p.deadline);
        let info = &self.cfg.info;
        let user = info.username.as_deref().unwrap_or("default");
        let name = self.name.clone();
        let nargs = 2 + if info.password.is_some() { 3 } else { 0 } + 2;
        let mut w = CommandWriter::new(&mut self.wbuf, nargs)
            .arg("HELLO")
            .arg("3");
        if let Some(pw) = &info.password {
            w = w.arg("AUTH").arg(user).arg(pw);
        }
        w.arg("SETNAME").arg(&name).finish();
        self.pending.push_back(Pending::new(Tag::Hello, deadline));
        self.flush(driver)
    }

    /// Queues one command for the pipeline, allowed `allow` from `now` (and from when it
    /// reaches the pipeline's head). Sent at the end of the loop turn.
    pub(crate) fn command(
        &mut self,
        tag: Tag<C>,
        now: Instant,
        allow: Duration,
        encode: impl FnOnce(&mut BytesMut),
    ) {
        encode(&mut self.wbuf);
        self.pending.push_back(Pending {
            tag,
            deadline: now + allow,
            allow,
        });
    }

    #[cfg_attr(
        not(test),
        allow(
            dead_code,
            reason = "the seam's own tests use it now; the listen, reliable and stream pipelines will"
        )
    )]
    /// Queues a command no reply answers in order: its only answers are push frames
    /// (RESP3 SUBSCRIBE, redis#11784; every SUBSCRIBE-family command in RESP2 subscribe
    /// mode), which the pipeline counts itself.
    pub(crate) fn command_unanswered(&mut self, encode: impl FnOnce(&mut BytesMut)) {
        encode(&mut self.wbuf);
    }

    /// Hands queued bytes to the kernel if no send is in flight.
    pub(crate) fn flush(&mut self, driver: &mut Driver) -> Result<(), Failure> {
        if self.send_op.is_some()
            || self.wbuf.is_empty()
            || self.fd < 0
            || self.phase == Phase::Closing
        {
            return Ok(());
        }
        let buf = self.wbuf.split().freeze();
        self.in_send = buf.clone();
        self.send_op = Some(
            driver
                .send(self.token(), self.fd, buf)
                .map_err(Failure::Fatal)?,
        );
        Ok(())
    }

    /// A send finished with `result` (bytes sent or -errno).
    pub(crate) fn on_sent(&mut self, driver: &mut Driver, result: i32) -> Result<(), Failure> {
        self.send_op = None;
        if self.phase == Phase::Closing {
            return Ok(());
        }
        if result < 0 {
            let e = std::io::Error::from_raw_os_error(-result);
            return Err(Failure::Retry(
                Error::new(
                    ErrorKind::ConnectionLost,
                    format!("send to {} failed: {e}", self.peer()),
                )
                .with_source(e),
            ));
        }
        let sent = result as usize;
        if sent < self.in_send.len() {
            // Short send: the rest goes first, before anything queued since.
            let rest = self.in_send.slice(sent..);
            self.in_send = rest.clone();
            self.send_op = Some(
                driver
                    .send(self.token(), self.fd, rest)
                    .map_err(Failure::Fatal)?,
            );
            return Ok(());
        }
        self.in_send = Bytes::new();
        self.flush(driver)
    }

    /// Appends received bytes.
    pub(crate) fn on_data(&mut self, data: &[u8]) {
        if self.phase != Phase::Closing {
            self.rbuf.extend_from_slice(data);
        }
    }

    /// A recv CQE (its data, if any, already appended). Returns whether the receive must
    /// be re-armed: a single-shot recv, or a multishot the kernel ended (ENOBUFS, or its
    /// own reasons).
    pub(crate) fn on_recv(&mut self, result: i32, more: bool) -> Result<bool, Failure> {
        if !more {
            self.recv_op = None;
            self.recv_cancelled = false;
        }
        if self.phase == Phase::Closing || self.phase == Phase::Done {
            return Ok(false);
        }
        if result > 0 || result == -libc::ENOBUFS {
            return Ok(!more && !self.paused);
        }
        if result == -libc::ECANCELED {
            // The receive cancelled for a pause; a resume since then re-arms it.
            return Ok(!self.paused);
        }
        if result == 0 {
            return Err(Failure::Retry(Error::new(
                ErrorKind::ConnectionLost,
                format!("{} closed the connection", self.peer()),
            )));
        }
        let e = std::io::Error::from_raw_os_error(-result);
        Err(Failure::Retry(
            Error::new(
                ErrorKind::ConnectionLost,
                format!("receive from {} failed: {e}", self.peer()),
            )
            .with_source(e),
        ))
    }

    pub(crate) fn rearm_recv(&mut self, driver: &mut Driver) -> Result<(), Failure> {
        if self.recv_op.is_none() && self.fd >= 0 && self.phase != Phase::Closing && !self.paused {
            self.recv_op = Some(driver.recv(self.token(), self.fd).map_err(Failure::Fatal)?);
        }
        Ok(())
    }

    #[cfg_attr(
        not(test),
        allow(
            dead_code,
            reason = "the seam's own tests use it now; the listen, reliable and stream pipelines will"
        )
    )]
    /// Stops reading (backpressure): at the end of the turn the receive is cancelled, so
    /// the socket's receive buffer fills and TCP pushes back on the server. Replies
    /// already buffered stay here until [`Conn::resume_reading`]; [`Conn::next_reply`]
    /// yields none meanwhile.
    pub(crate) fn pause_reading(&mut self) {
        self.paused = true;
    }

    #[cfg_attr(
        not(test),
        allow(
            dead_code,
            reason = "the seam's own tests use it now; the listen, reliable and stream pipelines will"
        )
    )]
    /// Reads again after [`Conn::pause_reading`]: at the end of the turn the receive is
    /// re-armed and the replies buffered meanwhile are processed.
    pub(crate) fn resume_reading(&mut self) {
        if self.paused {
            self.paused = false;
            self.resumed = true;
        }
    }

    #[cfg_attr(
        not(test),
        allow(
            dead_code,
            reason = "the seam's own tests use it now; the listen, reliable and stream pipelines will"
        )
    )]
    /// Whether reading is paused.
    pub(crate) fn reading_paused(&self) -> bool {
        self.paused
    }

    /// Applies a pause or a resume asked for this turn. Returns true when reading has
    /// just resumed: the caller then processes what was buffered.
    pub(crate) fn apply_reading(&mut self, driver: &mut Driver) -> Result<bool, Failure> {
        if self.paused {
            if let (Some(op), false) = (self.recv_op, self.recv_cancelled) {
                self.recv_cancelled = true;
                if let Err(e) = driver.cancel(op) {
                    tracing::warn!(conn = %self.name, "cancel failed: {e}");
                }
            }
            return Ok(false);
        }
        if !std::mem::take(&mut self.resumed) {
            return Ok(false);
        }
        self.rearm_recv(driver)?;
        Ok(true)
    }

    /// The next complete frame: the reply to the oldest queued command, or a push frame
    /// (RESP3 `>`; on a subscriber connection, a RESP2 message or (un)subscribe array).
    /// None while reading is paused.
    pub(crate) fn next_reply(&mut self) -> Result<Option<Reply<C>>, Failure> {
        if self.paused {
            return Ok(None);
        }
        let n = match self.dec.scan(&self.rbuf) {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(None),
            Err(e) => return Err(Failure::Fatal(Error::protocol(&self.peer(), e))),
        };
        let frame = self.rbuf.split_to(n).freeze();
        if frame.first() == Some(&b'>') || (self.subscriber && is_resp2_push(&frame)) {
            return Ok(Some(Reply::Push(frame)));
        }
        let Some(p) = self.pending.pop_front() else {
            return Err(Failure::Fatal(Error::new(
                ErrorKind::Protocol,
                format!("{} sent a reply nobody asked for", self.peer()),
            )));
        };
        // The next command only starts now (a pipelined BRPOP waits behind one that
        // blocked): it gets its full allowance from here, so a pipeline of blocking pops
        // on a queue that ran dry is never mistaken for a hung server.
        if let Some(next) = self.pending.front_mut() {
            next.deadline = next.deadline.max(Instant::now() + next.allow);
        }
        Ok(Some(Reply::Answer(p.tag, frame)))
    }

    /// A reply that shows the server serving, not just accepting connections: ends the
    /// backoff. (A handshake alone does not: a server that accepts HELLO and answers every
    /// pop with LOADING would otherwise be reconnected to at the shortest backoff forever.)
    pub(crate) fn note_served(&mut self) {
        self.failures = 0;
    }

    /// Starts closing: cancels every in-flight operation. The connection stays in
    /// `Closing` until they have all ended (see [`Conn::try_finish_close`]).
    pub(crate) fn begin_close(&mut self, driver: &mut Driver) {
        if self.phase == Phase::Closing || self.phase == Phase::Done {
            return;
        }
        self.phase = Phase::Closing;
        if self.fd >= 0 {
            sys::shutdown(self.fd);
        }
        for op in [self.connect_op, self.send_op, self.recv_op]
            .into_iter()
            .flatten()
        {
            if let Err(e) = driver.cancel(op) {
                tracing::warn!(conn = %self.name, "cancel failed: {e}");
            }
        }
        self.pending.clear();
        self.wbuf.clear();
        self.rbuf.clear();
        self.dec.reset();
        self.deadline_armed = None;
    }

    /// Once no operation is in flight: closes the fd. Returns the backoff before the next
    /// attempt, or `None` when the connection stops for good.
    pub(crate) fn try_finish_close(&mut self) -> Option<Option<Duration>> {
        if self.phase != Phase::Closing || self.has_ops() {
            return None;
        }
        sys::close(self.fd);
        self.fd = -1;
        if self.stop_after_close {
            self.phase = Phase::Done;
            return Some(None);
        }
        self.phase = Phase::Idle;
        self.failures = self.failures.saturating_add(1);
        Some(Some(self.backoff()))
    }

    /// Exponential backoff with equal jitter: half the step fixed, half random.
    fn backoff(&mut self) -> Duration {
        let exp = self.failures.saturating_sub(1).min(16);
        let step = self
            .cfg
            .backoff_min
            .saturating_mul(1 << exp)
            .min(self.cfg.backoff_max);
        // xorshift64: jitter needs no cryptographic quality.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = step / 2;
        let nanos = half.as_nanos().max(1) as u64;
        half + Duration::from_nanos(self.rng % nanos)
    }

    /// Whether a never-ready connection has used up its start-up attempts.
    pub(crate) fn out_of_start_attempts(&self) -> bool {
        !self.ever_ready && self.failures >= self.cfg.start_attempts
    }
}

/// Whether a RESP2 frame is a subscriber connection's push: an array whose first element
/// is `message`, `pmessage`, `smessage` or a (un)subscribe confirmation. (A PING there
/// answers `*2 pong ""`, which is a reply.)
fn is_resp2_push(frame: &[u8]) -> bool {
    const KINDS: [&[u8]; 9] = [
        b"message",
        b"pmessage",
        b"smessage",
        b"subscribe",
        b"psubscribe",
        b"ssubscribe",
        b"unsubscribe",
        b"punsubscribe",
        b"sunsubscribe",
    ];
    if frame.first() != Some(&b'*') {
        return false;
    }
    // `*N\r\n$L\r\n<kind>\r\n`: the kind is the first bulk string.
    let Some(nl) = frame.iter().position(|&b| b == b'\n') else {
        return false;
    };
    let rest = &frame[nl + 1..];
    if rest.first() != Some(&b'$') {
        return false;
    }
    let Some(nl2) = rest.iter().position(|&b| b == b'\n') else {
        return false;
    };
    let body = &rest[nl2 + 1..];
    KINDS.iter().any(|k| {
        body.len() >= k.len() + 2
            && body[..k.len()].eq_ignore_ascii_case(k)
            && &body[k.len()..k.len() + 2] == b"\r\n"
    })
}

#[cfg(test)]
mod tests {
    use super::is_resp2_push;

    #[test]
    fn resp2_subscriber_pushes_are_told_from_replies() {
        assert!(is_resp2_push(
            b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nx\r\n"
        ));
        assert!(is_resp2_push(
            b"*4\r\n$8\r\npmessage\r\n$1\r\np\r\n$1\r\nc\r\n$1\r\nx\r\n"
        ));
        assert!(is_resp2_push(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n"));
        assert!(is_resp2_push(
            b"*3\r\n$12\r\npunsubscribe\r\n$1\r\np\r\n:0\r\n"
        ));
        assert!(!is_resp2_push(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n"));
        assert!(!is_resp2_push(b"*2\r\n$8\r\nmessages\r\n$1\r\nx\r\n"));
        assert!(!is_resp2_push(b"+OK\r\n"));
        assert!(!is_resp2_push(b"*1\r\n:1\r\n"));
    }
}

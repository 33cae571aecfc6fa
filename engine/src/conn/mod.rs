//! The connection state machine:
//!
//! ```text
//! Idle ──connect──▶ Connecting ──▶ [Tls] ──▶ Hello ──▶ [Select] ──▶ Ready ──▶ Closing ──▶ Idle (backoff)
//!                                            │ unknown command                  ▲
//!                                            └──▶ Auth2 ──▶ SetName2 ──▶ [Select] ┘ (RESP2 fallback)
//! ```
//!
//! On a `rediss://` server the TLS handshake is a phase of its own (`Tls`), under the
//! same connect deadline as the connect and the HELLO; from then on every byte passes
//! through the connection's `TlsLayer` (`conn/tls.rs`) and nothing else changes. Behind
//! Sentinel the handshake ends with `ROLE` (`Role`): a node that is not the master is
//! not used, and the reconnect asks the sentinels again.
//!
//! A `Conn` owns its socket, read and write buffers, decoder and the queue of replies it
//! expects (in order: RESP replies come back in command order). It never builds SQEs: it
//! asks the backend ([`Backend`]). It also never frees anything the kernel may still touch: on any
//! failure it cancels its operations and waits in `Closing` until every one of them has
//! ended, then closes the fd and schedules a reconnect with backoff and jitter.
//!
//! Pipelines only queue commands with [`Conn::command`] (listen's subscribe commands
//! with `Conn::command_pushed`, whose confirmations come as push frames) and receive
//! their replies back from the shard. The reply FIFO is generic
//! over the pipeline's command tag `C`; [`Conn::next_reply`] tells a reply to a queued
//! command from a push frame (RESP3 `>`, or a RESP2 message array on a subscriber
//! connection), which answers none.

pub(crate) mod classify;
mod fifo;
mod handshake;
mod socket;
mod tls;

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringq_resp::Decoder;

use crate::backend::OpId;
use crate::error::Error;
use crate::resolve::Resolver;
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
    /// TLS handshake in progress (`rediss://`).
    Tls,
    /// `HELLO 3` sent.
    Hello,
    /// RESP2 fallback: `AUTH` sent.
    Auth2,
    /// RESP2 fallback: `CLIENT SETNAME` sent.
    SetName2,
    /// `SELECT` sent.
    Select,
    /// `ROLE` sent (behind Sentinel: is this node the master?).
    Role,
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
    Role,
    /// An idle PING on a connection with nothing in flight.
    Ping,
    /// The `ASKING` sent before each pipeline command on a connection that follows a
    /// cluster's ASK redirect (see [`Conn::set_asking`]).
    Asking,
    /// `MULTI`, or a command queued inside it: its `+OK` / `+QUEUED` is swallowed (the
    /// transaction's answer is its `EXEC`'s; see [`Conn::command_framed`]).
    Framing,
    /// `CLIENT UNBLOCK` of connection `conn`'s blocked command, sent during a stop on the
    /// Control connection (see `Shard::unblock_blocked`).
    Unblock {
        conn: u32,
    },
    /// An `LLEN` of queue depth sampling: sampled source `source` (the shard's own
    /// numbering), in sampling round `round` (see `shard::depth`).
    Depth {
        source: u32,
        round: u32,
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
    /// One of the shard's Control connections: acks, scripts, CLIENT UNBLOCK — commands
    /// that must never wait behind a blocked fetch. The number is the Control's index
    /// (one per cluster slot group in the modes that settle on their sources' keys; else
    /// one, index 0).
    Control(u32),
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
    /// Answered by push frames on success, by an error reply on failure
    /// ([`Conn::command_pushed`]).
    pushed: bool,
    /// When it was queued (the loop turn's time).
    queued: Instant,
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
            pushed: false,
            queued: Instant::now(),
        }
    }
}

/// Facts learned in the handshake.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServerInfo {
    pub resp3: bool,
    pub version: (u32, u32, u32),
    pub client_id: Option<i64>,
    /// HELLO said `mode: cluster`.
    pub cluster: bool,
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
    /// TLS settings for a `rediss://` server (`None`: plaintext).
    pub tls: Option<TlsConnect>,
    /// Behind Sentinel: the sentinels (every handshake then checks `ROLE`, and the shard
    /// follows their `+switch-master`).
    pub sentinels: Option<Arc<crate::sentinel::Sentinels>>,
    /// A Redis or Valkey Cluster: the topology every connection's node is read from (see
    /// `cluster/`).
    pub cluster: Option<Arc<crate::cluster::Topology>>,
}

/// What every TLS connection of an engine starts from.
#[derive(Debug, Clone)]
pub(crate) struct TlsConnect {
    pub config: Arc<rustls::ClientConfig>,
    /// The name the certificate must carry (and the SNI sent, for a DNS name); `None`
    /// behind Sentinel: the host the sentinels name for the master.
    pub name: Option<rustls::pki_types::ServerName<'static>>,
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
    /// The address dialled and the host it was found for (TCP).
    target: Option<(std::net::SocketAddr, Arc<str>)>,
    connect_op: Option<OpId>,
    send_op: Option<OpId>,
    recv_op: Option<OpId>,
    rbuf: BytesMut,
    dec: Decoder,
    wbuf: BytesMut,
    /// TLS session of a `rediss://` connection (the handshake runs in `Phase::Tls`).
    tls: Option<Box<tls::TlsLayer>>,
    /// Ciphertext to send: handshake records and encrypted commands, in order.
    tls_out: BytesMut,
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
    /// The kind of the last error: a start that runs out of attempts reports
    /// `ErrorKind::Tls` when TLS was the trouble, `ConnectionLost` otherwise.
    last_kind: Option<crate::ErrorKind>,
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
    /// Dialled to follow a cluster's ASK: every pipeline command goes after an
    /// `ASKING`, which lets the node importing the slot serve it.
    asking: bool,
    /// When the command whose reply came last was queued.
    answered_queued: Option<Instant>,
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
            target: None,
            connect_op: None,
            send_op: None,
            recv_op: None,
            rbuf: BytesMut::with_capacity(64 * 1024),
            dec: Decoder::new(),
            wbuf: BytesMut::with_capacity(4 * 1024),
            tls: None,
            tls_out: BytesMut::new(),
            in_send: Bytes::new(),
            pending: VecDeque::with_capacity(16),
            server: ServerInfo::default(),
            deadline_armed: None,
            failures: 0,
            ever_ready: false,
            stop_after_close: false,
            last_error: None,
            last_kind: None,
            unblock_sent: false,
            draining: None,
            retired: false,
            subscriber: false,
            paused: false,
            resumed: false,
            recv_cancelled: false,
            asking: false,
            answered_queued: None,
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
        c.last_kind = self.last_kind;
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

    pub(crate) fn set_last_error(&mut self, e: &Error) {
        self.last_error = Some(e.to_string());
        self.last_kind = Some(e.kind());
    }

    /// The kind of the last error, if any.
    pub(crate) fn last_kind(&self) -> Option<crate::ErrorKind> {
        self.last_kind
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
        self.last_kind = Some(crate::ErrorKind::ConnectionLost);
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

    pub(crate) fn token(&self) -> u64 {
        token(self.id, self.gen)
    }

    pub(crate) fn peer(&self) -> String {
        match (&self.cfg.info.address, &self.target) {
            (crate::url::Address::Sentinel { master, .. }, Some((a, _))) => {
                format!("{a} (master '{master}')")
            }
            (crate::url::Address::Cluster { .. }, Some((a, _))) => format!("cluster node {a}"),
            _ => self.cfg.info.to_string(),
        }
    }

    /// From the next command on, each pipeline command is sent after an `ASKING` (the
    /// connection was dialled to the node an ASK named), or no longer is.
    pub(crate) fn set_asking(&mut self, on: bool) {
        self.asking = on;
    }

    /// Whether pipeline commands go after an `ASKING`.
    pub(crate) fn asking(&self) -> bool {
        self.asking
    }

    /// The address this connection dialled last (TCP).
    pub(crate) fn target_addr(&self) -> Option<std::net::SocketAddr> {
        self.target.as_ref().map(|(a, _)| *a)
    }

    /// A reply that shows the server serving, not just accepting connections: ends the
    /// backoff. (A handshake alone does not: a server that accepts HELLO and answers every
    /// pop with LOADING would otherwise be reconnected to at the shortest backoff forever.)
    pub(crate) fn note_served(&mut self) {
        self.failures = 0;
    }
}

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
//! [`Conn::command`] and receive their replies back from the shard.

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

/// What a queued command's reply is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tag {
    Hello,
    Auth,
    SetName,
    Select,
    /// A pop (see [`PopCmd`]).
    Pop(PopCmd),
    /// A heartbeat on an idle connection.
    Ping,
    /// `CLIENT UNBLOCK` of connection `conn`'s blocked pop, sent during a stop from a
    /// side connection (see `Shard::unblock_blocked`).
    Unblock {
        conn: u32,
    },
    /// Popped messages beyond [`PopConsumer::limit`](crate::PopConsumer::limit) going
    /// back to the right end of their list (RPUSH), where they were popped from.
    PushBack {
        count: u32,
    },
}

/// A pop in flight: what it asked for and the credit it holds until it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PopCmd {
    /// Messages asked for (the COUNT; 1 for BRPOP).
    pub count: u32,
    /// BRPOP or BLMPOP: may wait on the server for the block timeout.
    pub blocking: bool,
    /// Payload bytes of credit held for the reply.
    pub bytes: u64,
    /// Its connection stalled while it was in flight and was replaced: it holds no credit
    /// any more, and its reply, if one comes, is a late one (see `Shard::retire`).
    pub late: bool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Pending {
    pub tag: Tag,
    pub deadline: Instant,
    /// The time the command is allowed once it reaches the head of the pipeline: a
    /// command queued behind a blocking pop that blocks gets its deadline pushed back by
    /// the time it waited (see [`Conn::next_reply`]).
    pub allow: Duration,
}

impl Pending {
    fn new(tag: Tag, deadline: Instant) -> Self {
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

pub(crate) struct Conn {
    pub id: u32,
    pub gen: u32,
    pub lane: usize,
    pub phase: Phase,
    pub name: String,
    cfg: Arc<ConnConfig>,
    fd: RawFd,
    connect_op: Option<OpId>,
    send_op: Option<OpId>,
    recv_op: Option<OpId>,
    rbuf: BytesMut,
    dec: Decoder,
    wbuf: BytesMut,
    in_send: Bytes,
    pub pending: VecDeque<Pending>,
    pub server: ServerInfo,
    /// When this connection's deadline timer fires, if one is armed (at most one counts;
    /// an earlier head deadline arms an earlier one, and the later one is then ignored).
    pub deadline_armed: Option<Instant>,
    pub failures: u32,
    pub ever_ready: bool,
    /// After closing, go to `Done` instead of reconnecting.
    pub stop_after_close: bool,
    pub last_error: Option<String>,
    /// During a stop: a `CLIENT UNBLOCK` for the blocking pop at the head is on its way.
    pub unblock_sent: bool,
    /// A reply was overdue and a fresh connection took over this one's lane: it sends
    /// nothing new and stays open until this instant at most, to deliver the replies
    /// still owed (see `Shard::retire`).
    pub draining: Option<Instant>,
    /// This connection stalled once and was replaced; once done, its slot may be reused.
    pub retired: bool,
    rng: u64,
}

/// Packs a connection's id and generation into a driver token.
pub(crate) fn token(id: u32, gen: u32) -> u64 {
    u64::from(id) << 32 | u64::from(gen)
}

impl Conn {
    pub(crate) fn new(id: u32, lane: usize, name: String, cfg: Arc<ConnConfig>, seed: u64) -> Self {
        Self {
            id,
            gen: 0,
            lane,
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
            rng: seed | 1,
        }
    }

    /// A fresh connection for this one's lane, in slot `id` (whose previous occupant, if
    /// any, had generation `gen`), when this one stalled: same name and settings, and the
    /// same standing (a connection that has worked before is retried for as long as it
    /// takes).
    pub(crate) fn successor(&mut self, id: u32, gen: u32) -> Conn {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let mut c = Conn::new(id, self.lane, self.name.clone(), self.cfg.clone(), self.rng);
        c.gen = gen;
        c.failures = self.failures;
        c.ever_ready = self.ever_ready;
        c.last_error = self.last_error.clone();
        c
    }

    /// The settings this connection was made with (shared by the engine's connections).
    pub(crate) fn config(&self) -> &Arc<ConnConfig> {
        &self.cfg
    }

    /// Whether the command at the head of the pipeline is a blocking pop.
    pub(crate) fn head_blocks(&self) -> bool {
        matches!(
            self.pending.front().map(|p| p.tag),
            Some(Tag::Pop(PopCmd { blocking: true, .. }))
        )
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
        tag: Tag,
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
        }
        if self.phase == Phase::Closing || self.phase == Phase::Done {
            return Ok(false);
        }
        if result > 0 || result == -libc::ENOBUFS {
            return Ok(!more);
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
        if self.recv_op.is_none() && self.fd >= 0 && self.phase != Phase::Closing {
            self.recv_op = Some(driver.recv(self.token(), self.fd).map_err(Failure::Fatal)?);
        }
        Ok(())
    }

    /// The next complete reply with the command it answers. RESP3 push frames, which no
    /// command answers, are skipped here (no pipeline of this connection subscribes).
    pub(crate) fn next_reply(&mut self) -> Result<Option<(Pending, Bytes)>, Failure> {
        loop {
            let n = match self.dec.scan(&self.rbuf) {
                Ok(Some(n)) => n,
                Ok(None) => return Ok(None),
                Err(e) => return Err(Failure::Fatal(Error::protocol(&self.peer(), e))),
            };
            let frame = self.rbuf.split_to(n).freeze();
            if self.server.resp3 && frame.first() == Some(&b'>') {
                continue;
            }
            let Some(p) = self.pending.pop_front() else {
                return Err(Failure::Fatal(Error::new(
                    ErrorKind::Protocol,
                    format!("{} sent a reply nobody asked for", self.peer()),
                )));
            };
            // The next command only starts now (a pipelined BRPOP waits behind one that
            // blocked): it gets its full allowance from here, so a pipeline of blocking
            // pops on a queue that ran dry is never mistaken for a hung server.
            if let Some(next) = self.pending.front_mut() {
                next.deadline = next.deadline.max(Instant::now() + next.allow);
            }
            return Ok(Some((p, frame)));
        }
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

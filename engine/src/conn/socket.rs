//! The socket's life: connect, send, receive (paused and resumed for backpressure),
//! close once the backend has finished every operation, and the backoff before the next
//! attempt.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{tls, Conn, Failure, Pending, Phase, ServerInfo, Tag};
use crate::backend::{Backend, SockAddr};
use crate::error::{Error, ErrorKind};
use crate::url::ResolvedAddr;

impl<C: Copy + std::fmt::Debug> Conn<C> {
    /// Whether any operation of this connection is still in the kernel.
    pub(crate) fn has_ops(&self) -> bool {
        self.connect_op.is_some() || self.send_op.is_some() || self.recv_op.is_some()
    }

    /// Opens a socket and starts connecting to `addr`.
    pub(crate) fn start_connect(
        &mut self,
        driver: &mut impl Backend,
        now: Instant,
        addr: &ResolvedAddr,
    ) -> Result<(), Failure> {
        debug_assert!(!self.has_ops());
        self.gen = self.gen.wrapping_add(1);
        self.rbuf.clear();
        self.wbuf.clear();
        self.tls = None;
        self.tls_out.clear();
        self.dec.reset();
        self.pending.clear();
        self.server = ServerInfo::default();
        // A fresh socket: not subscribed, reading.
        self.subscriber = false;
        self.paused = false;
        self.resumed = false;
        self.recv_cancelled = false;
        self.target = None;
        let addr = match addr {
            ResolvedAddr::Tcp(a, host) => {
                self.target = Some((*a, host.clone()));
                SockAddr::from_std(a)
            }
            ResolvedAddr::Unix(p) => SockAddr::unix(p).map_err(|e| {
                Failure::Fatal(Error::config(format!("unix socket {}: {e}", p.display())))
            })?,
        };
        self.fd = driver
            .socket(&addr)
            .map_err(|e| Failure::Retry(Error::io("socket", e)))?;
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
    pub(crate) fn on_connected(
        &mut self,
        driver: &mut impl Backend,
        result: i32,
    ) -> Result<(), Failure> {
        self.connect_op = None;
        if self.phase != Phase::Connecting {
            return Ok(());
        }
        if result < 0 {
            return Err(self.lost(format_args!("cannot connect to {}", self.peer()), result));
        }
        self.recv_op = Some(driver.recv(self.token(), self.fd).map_err(Failure::Fatal)?);
        if let Some(t) = &self.cfg.tls {
            // The HELLO placeholder keeps counting the connect deadline through the
            // TLS handshake.
            // The URL's host, or (behind Sentinel) the host the sentinels named.
            let name = match (&t.name, &self.target) {
                (Some(n), _) => n.clone(),
                (None, Some((_, host))) => crate::tls::server_name(host).map_err(Failure::Fatal)?,
                (None, None) => {
                    return Err(Failure::Fatal(Error::config("TLS needs a TCP address")))
                }
            };
            let mut layer = tls::TlsLayer::new(t.config.clone(), name)
                .map_err(|e| Failure::Fatal(crate::tls::explain(&self.peer(), e)))?;
            layer
                .handshake(&mut self.tls_out)
                .map_err(|e| Failure::Fatal(crate::tls::explain(&self.peer(), e)))?;
            self.tls = Some(Box::new(layer));
            self.phase = Phase::Tls;
        } else {
            self.send_hello();
        }
        self.flush(driver)
    }

    /// Hands queued bytes to the kernel if no send is in flight.
    pub(crate) fn flush(&mut self, driver: &mut impl Backend) -> Result<(), Failure> {
        if self.send_op.is_some()
            || (self.wbuf.is_empty() && self.tls_out.is_empty())
            || self.fd < 0
            || self.phase == Phase::Closing
        {
            return Ok(());
        }
        let buf = match &mut self.tls {
            None => self.wbuf.split().freeze(),
            Some(t) => {
                if t.ready() && !self.wbuf.is_empty() {
                    let sealed = t.seal(&self.wbuf, &mut self.rbuf, &mut self.tls_out);
                    self.wbuf.clear();
                    sealed.map_err(|e| {
                        Failure::Retry(crate::tls::explain(&self.cfg.info.to_string(), e))
                    })?;
                }
                if self.tls_out.is_empty() {
                    return Ok(());
                }
                self.tls_out.split().freeze()
            }
        };
        self.in_send = buf.clone();
        self.send_op = Some(
            driver
                .send(self.token(), self.fd, buf)
                .map_err(Failure::Fatal)?,
        );
        Ok(())
    }

    /// A send finished with `result` (bytes sent or -errno).
    pub(crate) fn on_sent(
        &mut self,
        driver: &mut impl Backend,
        result: i32,
    ) -> Result<(), Failure> {
        self.send_op = None;
        if self.phase == Phase::Closing {
            return Ok(());
        }
        if result < 0 {
            return Err(self.lost(format_args!("send to {} failed", self.peer()), result));
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

    /// Appends received bytes (decrypted first on a TLS connection; a handshake that
    /// completes here queues the HELLO).
    pub(crate) fn on_data(&mut self, data: &[u8]) -> Result<(), Failure> {
        if self.phase == Phase::Closing || self.phase == Phase::Done {
            return Ok(());
        }
        let Some(t) = &mut self.tls else {
            if self.phase == Phase::Hello && self.rbuf.is_empty() {
                plaintext_to_tls(data, &self.peer())?;
            }
            self.rbuf.extend_from_slice(data);
            return Ok(());
        };
        t.open(data, &mut self.rbuf, &mut self.tls_out)
            .map_err(|e| self.tls_failure(e))?;
        if self.phase == Phase::Tls && self.tls.as_ref().is_some_and(|t| t.ready()) {
            self.send_hello();
        }
        Ok(())
    }

    /// A TLS error: fatal while the connection has never been ready (a certificate, a
    /// name, a plaintext port — retrying cannot fix them), a loss afterwards.
    fn tls_failure(&self, e: rustls::Error) -> Failure {
        let e = crate::tls::explain(&self.peer(), e);
        if self.ever_ready {
            Failure::Retry(e)
        } else {
            Failure::Fatal(e)
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
            return Err(self.closed_by_peer());
        }
        let hint = if self.phase == Phase::Hello && self.tls.is_none() && !self.ever_ready {
            " (while waiting for the answer to HELLO: if it is a TLS port, use rediss://)"
        } else {
            ""
        };
        Err(self.lost(
            format_args!("receive from {} failed{hint}", self.peer()),
            result,
        ))
    }

    /// The server closed the connection. In the handshake that usually means the two
    /// sides disagree about TLS: say so. A plaintext HELLO to a TLS port is dropped by
    /// the server; so is a TLS handshake it refuses.
    fn closed_by_peer(&self) -> Failure {
        let peer = self.peer();
        let (kind, why) = match (self.phase, self.tls.as_ref()) {
            (Phase::Tls, _) => (
                ErrorKind::Tls,
                format!(
                    "{peer} closed the connection during the TLS handshake: is it a plaintext \
                     port (use redis://), or does it require a client certificate \
                     (--tls-cert, --tls-key)?"
                ),
            ),
            (Phase::Hello, None) if !self.ever_ready => (
                ErrorKind::ConnectionLost,
                format!(
                    "{peer} closed the connection before answering HELLO: if it is a TLS \
                     port, use rediss://"
                ),
            ),
            (_, Some(t)) if t.peer_closed() => (
                ErrorKind::ConnectionLost,
                format!("{peer} closed the TLS session"),
            ),
            _ => (
                ErrorKind::ConnectionLost,
                format!("{peer} closed the connection"),
            ),
        };
        let e = Error::new(kind, why);
        if kind == ErrorKind::Tls && !self.ever_ready {
            Failure::Fatal(e)
        } else {
            Failure::Retry(e)
        }
    }

    /// The connection is lost: operation `what` ended with `-errno`.
    fn lost(&self, what: std::fmt::Arguments<'_>, errno: i32) -> Failure {
        let e = std::io::Error::from_raw_os_error(-errno);
        Failure::Retry(Error::new(ErrorKind::ConnectionLost, format!("{what}: {e}")).with_source(e))
    }

    pub(crate) fn rearm_recv(&mut self, driver: &mut impl Backend) -> Result<(), Failure> {
        if self.recv_op.is_none() && self.fd >= 0 && self.phase != Phase::Closing && !self.paused {
            self.recv_op = Some(driver.recv(self.token(), self.fd).map_err(Failure::Fatal)?);
        }
        Ok(())
    }

    /// Stops reading (backpressure): at the end of the turn the receive is cancelled, so
    /// the socket's receive buffer fills and TCP pushes back on the server. Replies
    /// already buffered stay here until [`Conn::resume_reading`]; [`Conn::next_reply`]
    /// yields none meanwhile.
    pub(crate) fn pause_reading(&mut self) {
        self.paused = true;
    }

    /// Reads again after [`Conn::pause_reading`]: at the end of the turn the receive is
    /// re-armed and the replies buffered meanwhile are processed.
    pub(crate) fn resume_reading(&mut self) {
        if self.paused {
            self.paused = false;
            self.resumed = true;
            // Replies that waited unread are not late: the oldest command's deadline
            // counts from now.
            if let Some(head) = self.pending.front_mut() {
                head.deadline = head.deadline.max(Instant::now() + head.allow);
            }
        }
    }

    /// Whether reading is paused.
    pub(crate) fn reading_paused(&self) -> bool {
        self.paused
    }

    /// Applies a pause or a resume asked for this turn. Returns true when reading has
    /// just resumed: the caller then processes what was buffered.
    pub(crate) fn apply_reading(&mut self, driver: &mut impl Backend) -> Result<bool, Failure> {
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

    /// Starts closing: cancels every in-flight operation. The connection stays in
    /// `Closing` until they have all ended (see [`Conn::try_finish_close`]).
    pub(crate) fn begin_close(&mut self, driver: &mut impl Backend) {
        if self.phase == Phase::Closing || self.phase == Phase::Done {
            return;
        }
        self.phase = Phase::Closing;
        if self.fd >= 0 {
            driver.shutdown(self.fd);
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
    pub(crate) fn try_finish_close(
        &mut self,
        driver: &mut impl Backend,
    ) -> Option<Option<Duration>> {
        if self.phase != Phase::Closing || self.has_ops() {
            return None;
        }
        driver.close(self.fd);
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

/// The first bytes answering our plaintext HELLO look like a TLS record (an alert or a
/// handshake): the port speaks TLS.
fn plaintext_to_tls(data: &[u8], peer: &str) -> Result<(), Failure> {
    if let [0x15 | 0x16, 3, 0..=4, ..] = data {
        return Err(Failure::Fatal(Error::new(
            ErrorKind::Tls,
            format!("{peer} answered in TLS: it is a TLS port; use rediss:// (and --tls-ca-cert)"),
        )));
    }
    Ok(())
}

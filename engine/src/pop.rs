//! The pop pipeline (delivery mode `pop`, at-most-once): BRPOP, BLMPOP and LMPOP over
//! many list queues.
//!
//! - **Lanes.** The consumer's queues are split over its connections; each queue belongs
//!   to exactly one connection (a [`Lane`]), so replies for a queue arrive in pop order
//!   and the handler sees each queue in FIFO order.
//! - **Fair cycle.** A lane's key order rotates: the queue just served goes last (Kombu's
//!   `round_robin`), after `weight` consecutive turns. A flooded queue cannot starve the
//!   others, because every pop names them all and LMPOP/BRPOP serve the first non-empty.
//! - **Priority steps.** A queue may have levels; its keys are listed highest first, so
//!   within a queue the highest non-empty level is served first.
//! - **Adaptive.** While there is backlog, non-blocking LMPOP COUNT, pipelined `pipeline`
//!   deep; when the queues run dry, one blocking BLMPOP (or BRPOP) at a time.
//! - **Credits.** A pop asks for at most the shard's free prefetch credit, and none is sent
//!   while the credit is used up.
//!
//! Replies are walked with [`ringq_resp::Reader`]: a popped message costs no allocation.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringq_resp::{CommandWriter, Reader, ServerError, ServerErrorKind, Token};

use crate::conn::{Conn, Tag};
use crate::error::{Error, ErrorKind};
use crate::handler::{Message, Payload};
use crate::intern::intern;
use crate::shard::Shared;

/// How long a non-blocking pop (LMPOP) may take on top of the reply grace before the
/// connection counts as hung. Generous: in `pop` mode a reconnect can lose the messages
/// of the pops in flight, and a busy server (a big DEL, a fork) can stall for seconds.
pub(crate) const NONBLOCKING_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A list queue, optionally with priority levels.
#[derive(Debug, Clone)]
pub struct Queue {
    name: Bytes,
    /// (priority, key), highest priority first.
    levels: Vec<(u8, Bytes)>,
    weight: u32,
}

impl Queue {
    /// A queue popped from the Redis list `name`.
    pub fn new(name: impl Into<Bytes>) -> Self {
        let name = name.into();
        Self {
            levels: vec![(0, name.clone())],
            name,
            weight: 1,
        }
    }

    /// Splits the queue into priority levels (0–255); the highest non-empty level is served
    /// first. Level 0 is the list `name` itself; level `p` is [`Queue::key_for_priority`].
    pub fn priorities(mut self, levels: impl IntoIterator<Item = u8>) -> Self {
        let mut ps: Vec<u8> = levels.into_iter().collect();
        ps.sort_unstable_by(|a, b| b.cmp(a));
        ps.dedup();
        if ps.is_empty() {
            ps.push(0);
        }
        self.levels = ps.iter().map(|&p| (p, self.key_for_priority(p))).collect();
        self
    }

    /// How many consecutive pops this queue gets before the cycle moves past it (default 1).
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight.max(1);
        self
    }

    /// The queue's name.
    pub fn name(&self) -> &Bytes {
        &self.name
    }

    /// The Redis key that holds priority level `p`: the name itself for 0, else
    /// `{name}:p<p>` — the hash tag keeps every level in the queue's cluster slot (a name
    /// that already has a hash tag keeps it: `name:p<p>`).
    pub fn key_for_priority(&self, p: u8) -> Bytes {
        if p == 0 {
            return self.name.clone();
        }
        let has_tag = self
            .name
            .iter()
            .position(|&b| b == b'{')
            .is_some_and(|open| {
                self.name[open + 1..]
                    .iter()
                    .position(|&b| b == b'}')
                    .is_some_and(|n| n > 0)
            });
        let mut k = Vec::with_capacity(self.name.len() + 8);
        if has_tag {
            k.extend_from_slice(&self.name);
        } else {
            k.push(b'{');
            k.extend_from_slice(&self.name);
            k.push(b'}');
        }
        k.extend_from_slice(format!(":p{p}").as_bytes());
        Bytes::from(k)
    }
}

/// Which commands the pop pipeline uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum PopStrategy {
    /// One message per BRPOP (pipelined while there is backlog).
    Single,
    /// Always BLMPOP with COUNT (Redis ≥ 7; BRPOP on older servers).
    BlockingBatch,
    /// Non-blocking LMPOP COUNT while there is backlog, BLMPOP when the queues run dry
    /// (Redis ≥ 7; BRPOP on older servers).
    #[default]
    Adaptive,
}

/// A `pop`-mode consumer: which queues, how to pop them, how much to hold at once.
#[derive(Debug, Clone)]
pub struct PopConsumer {
    pub(crate) queues: Vec<Queue>,
    pub(crate) strategy: PopStrategy,
    pub(crate) batch: u32,
    pub(crate) prefetch: u32,
    pub(crate) prefetch_bytes: u64,
    pub(crate) block_timeout: Duration,
    pub(crate) reply_grace: Duration,
    pub(crate) pipeline: u32,
    pub(crate) limit: Option<u64>,
}

impl PopConsumer {
    /// A consumer of the given queues (names or [`Queue`]s), with defaults: adaptive
    /// strategy, batch 128, prefetch 1024 messages and 64 MiB, block timeout 1 s,
    /// pipeline depth 2.
    pub fn new<Q: Into<Queue>>(queues: impl IntoIterator<Item = Q>) -> Self {
        Self {
            queues: queues.into_iter().map(Into::into).collect(),
            strategy: PopStrategy::Adaptive,
            batch: 128,
            prefetch: 1024,
            prefetch_bytes: 64 << 20,
            block_timeout: Duration::from_secs(1),
            reply_grace: Duration::from_secs(2),
            pipeline: 2,
            limit: None,
        }
    }

    /// Hands exactly `n` messages to the handler, then stops the engine
    /// (`ringq consume --count N`). No message beyond the `n`th is kept: a non-blocking pop
    /// reserves its share of what is left before it is sent; a blocking pop (which may
    /// wait on an empty queue for the whole block timeout) reserves nothing, so it never
    /// starves the other connections, and if it returns more than is left once its reply
    /// arrives (only possible in the last moments of the budget), the excess goes straight
    /// back to the right end of its list with RPUSH, in order, so the next pop gets it
    /// first. The engine stops once the `n`th message is handled; blocking pops still in
    /// flight are waited for as in any shutdown (see [`PopConsumer::block_timeout`]).
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }

    /// Which commands to use.
    pub fn strategy(mut self, s: PopStrategy) -> Self {
        self.strategy = s;
        self
    }

    /// Most messages one pop asks for (COUNT). Ignored by [`PopStrategy::Single`].
    pub fn batch(mut self, n: u32) -> Self {
        self.batch = n.max(1);
        self
    }

    /// Most messages in flight at once over the whole engine: asked for by pops that have
    /// not answered, or received and not yet handled. Split evenly over shards (at least
    /// one each).
    pub fn prefetch(mut self, n: u32) -> Self {
        self.prefetch = n.max(1);
        self
    }

    /// Most payload bytes held at once over the whole engine; no pop is sent while a
    /// shard's share is used up.
    pub fn prefetch_bytes(mut self, n: u64) -> Self {
        self.prefetch_bytes = n.max(1);
        self
    }

    /// How long a blocking pop waits on the server (rounded to milliseconds, at least 1 ms).
    /// A shutdown ends blocked pops with `CLIENT UNBLOCK` from a side connection; where
    /// that is not possible (an ACL without it, a server without RESP3 client ids) it waits
    /// for them: one block timeout for a blocking pop sent alone, and up to `pipeline` of
    /// them when pipelined BRPOPs (`Single`, or servers before 7.0) find their queue just
    /// ran dry, as each then blocks in turn.
    pub fn block_timeout(mut self, d: Duration) -> Self {
        self.block_timeout = d.max(Duration::from_millis(1));
        self
    }

    /// Extra time past the block timeout before a reply counts as lost and the connection
    /// is re-established (default 2 s). Never a global read timeout: each command gets its
    /// own deadline.
    pub fn reply_grace(mut self, d: Duration) -> Self {
        self.reply_grace = d;
        self
    }

    /// How many non-blocking pops one connection keeps in flight while there is backlog.
    pub fn pipeline(mut self, depth: u32) -> Self {
        self.pipeline = depth.max(1);
        self
    }

    /// The queues, in configuration order.
    pub fn queues(&self) -> &[Queue] {
        &self.queues
    }
}

impl From<&str> for Queue {
    fn from(s: &str) -> Self {
        Queue::new(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for Queue {
    fn from(s: String) -> Self {
        Queue::new(Bytes::from(s))
    }
}

/// In-flight accounting for one shard's share of the prefetch limit.
#[derive(Debug)]
pub(crate) struct Credits {
    pub limit: u32,
    pub limit_bytes: u64,
    /// Messages asked for by pops that have not answered.
    pub requested: u32,
    /// Messages received and not yet handled.
    pub held: u32,
    pub held_bytes: u64,
    pub high_water: u32,
}

impl Credits {
    pub(crate) fn free(&self) -> u32 {
        if self.held_bytes >= self.limit_bytes {
            return 0;
        }
        self.limit.saturating_sub(self.requested + self.held)
    }

    fn note(&mut self) {
        self.high_water = self.high_water.max(self.requested + self.held);
    }
}

/// The engine-wide message budget of [`PopConsumer::limit`], shared by the shards: one
/// atomic operation per pop, none per message.
///
/// Non-blocking pops *claim* what they ask for before they are sent and give back what
/// did not come. Blocking pops claim nothing up front: they may sit on an empty queue for
/// the whole block timeout, and a claim held there would starve the connections whose
/// queues still hold the budget's last messages (queues are spread over connections).
/// They claim what they got when the reply arrives; the rest goes back
/// to the server. Whenever claims come back to an exhausted budget, every shard is woken
/// so a connection that found nothing to claim tries again.
pub(crate) struct Budget {
    limit: u64,
    /// Messages neither claimed by an in-flight pop nor received.
    unclaimed: AtomicU64,
    /// Messages handed to handlers.
    delivered: AtomicU64,
    /// Wakes the shards when claims come back to an exhausted budget.
    waker: Option<Arc<Shared>>,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("limit", &self.limit)
            .field("unclaimed", &self.unclaimed)
            .field("delivered", &self.delivered)
            .finish_non_exhaustive()
    }
}

impl Budget {
    pub(crate) fn new(limit: u64, waker: Option<Arc<Shared>>) -> Self {
        Self {
            limit,
            unclaimed: AtomicU64::new(limit),
            delivered: AtomicU64::new(0),
            waker,
        }
    }

    /// Claims up to `want` messages; returns how many were granted.
    fn claim(&self, want: u32) -> u32 {
        let mut cur = self.unclaimed.load(Ordering::Relaxed);
        loop {
            let take = cur.min(u64::from(want));
            if take == 0 {
                return 0;
            }
            match self.unclaimed.compare_exchange_weak(
                cur,
                cur - take,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return take as u32,
                Err(now) => cur = now,
            }
        }
    }

    /// How many messages a blocking pop may ask for now (nothing is reserved).
    fn available(&self, want: u32) -> u32 {
        self.unclaimed.load(Ordering::Relaxed).min(u64::from(want)) as u32
    }

    /// Returns claims that brought nothing (short or empty replies, lost connections).
    fn unclaim(&self, n: u32) {
        if n > 0 && self.unclaimed.fetch_add(u64::from(n), Ordering::AcqRel) == 0 {
            if let Some(w) = &self.waker {
                w.wake_all();
            }
        }
    }

    /// Counts delivered messages; true once the whole budget has been delivered.
    pub(crate) fn delivered(&self, n: u64) -> bool {
        self.delivered.fetch_add(n, Ordering::AcqRel) + n >= self.limit
    }
}

/// The pop state of one connection.
pub(crate) struct Lane {
    /// Indices into the consumer's queue list, rotated for fairness.
    order: VecDeque<u32>,
    streak: (u32, u32),
    backlog: bool,
    in_flight: u32,
    /// Messages claimed from the [`Budget`] by the non-blocking pops in flight.
    claimed: u32,
    /// Messages popped beyond the [`Budget`], in pop order, waiting for the lane's pops in
    /// flight to answer so they go back to the server in one go, in the right order (a
    /// later pop on this connection took messages from further left; see
    /// `Shard::push_back`). No pop is issued while any wait.
    pub returns: Vec<Message<'static>>,
}

/// What one pop reply held.
pub(crate) struct PopReply {
    /// Messages kept (appended to the output).
    pub count: u32,
    pub bytes: u64,
    pub queue: Option<u32>,
    /// Messages beyond the [`Budget`], left at the end of the output for the caller to
    /// push back to the server (blocking pops in the budget's last moments only).
    pub excess: u32,
}

/// The consumer's immutable tables, shared by its lanes on one shard.
pub(crate) struct PopPlan {
    pub consumer: PopConsumer,
    pub budget: Option<Arc<Budget>>,
    /// key → (queue index, priority, interned key)
    keys: HashMap<Bytes, (u32, u8, &'static [u8])>,
    /// Interned queue names, by queue index.
    names: Vec<&'static [u8]>,
    /// The block timeout as the command argument, formatted once.
    block_secs: Bytes,
    /// The same, rounded up to whole seconds, for servers before 6.0 (which reject a
    /// fractional timeout).
    block_secs_whole: Bytes,
}

impl PopPlan {
    pub(crate) fn new(consumer: PopConsumer, budget: Option<Arc<Budget>>) -> Self {
        let mut keys = HashMap::new();
        for (qi, q) in consumer.queues.iter().enumerate() {
            for (p, k) in &q.levels {
                keys.insert(k.clone(), (qi as u32, *p, intern(k)));
            }
        }
        let names = consumer.queues.iter().map(|q| intern(&q.name)).collect();
        let secs = (consumer.block_timeout.as_millis().max(1) as f64) / 1000.0;
        Self {
            consumer,
            budget,
            keys,
            names,
            block_secs: Bytes::from(fmt_secs(secs)),
            block_secs_whole: Bytes::from(secs.ceil().max(1.0).to_string()),
        }
    }
}

impl Lane {
    pub(crate) fn new(queues: Vec<u32>) -> Self {
        Self {
            order: queues.into(),
            streak: (u32::MAX, 0),
            backlog: true,
            in_flight: 0,
            claimed: 0,
            returns: Vec::new(),
        }
    }

    /// Pops sent and not yet answered.
    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// The connection was lost: every pop in flight is gone with it.
    pub(crate) fn reset(&mut self, plan: &PopPlan, credits: &mut Credits, lost_requested: u32) {
        if !self.returns.is_empty() {
            tracing::error!(
                "connection lost before {} message(s) popped beyond the limit went back to the server; they are lost",
                self.returns.len()
            );
            self.returns.clear();
        }
        if let Some(b) = &plan.budget {
            b.unclaim(self.claimed);
        }
        self.claimed = 0;
        credits.requested = credits.requested.saturating_sub(lost_requested);
        self.in_flight = 0;
        self.backlog = true;
    }

    /// Queues as many pops as credits, pipeline depth and mode allow.
    pub(crate) fn fill(
        &mut self,
        plan: &PopPlan,
        conn: &mut Conn,
        credits: &mut Credits,
        now: Instant,
    ) {
        let c = &plan.consumer;
        loop {
            if self.order.is_empty() || !self.returns.is_empty() {
                return;
            }
            // With backlog, pops (even BRPOP/BLMPOP, which then answer at once) are
            // pipelined; once the queues run dry, one blocking pop goes out alone, so
            // nothing waits behind a command that may block for the whole timeout.
            let depth = if self.backlog { c.pipeline } else { 1 };
            if self.in_flight >= depth {
                return;
            }
            let free = credits.free();
            if free == 0 {
                return;
            }
            let lmpop = conn.server.has_lmpop() && c.strategy != PopStrategy::Single;
            let mut count = if lmpop { c.batch.min(free) } else { 1 };
            let blocking = match c.strategy {
                PopStrategy::Single | PopStrategy::BlockingBatch => true,
                PopStrategy::Adaptive => !self.backlog || !lmpop,
            };
            if let Some(b) = &plan.budget {
                // See `Budget`: only non-blocking pops reserve.
                count = if blocking {
                    b.available(count)
                } else {
                    b.claim(count)
                };
                if count == 0 {
                    return;
                }
                if !blocking {
                    self.claimed += count;
                }
            }
            let nkeys: usize = self
                .order
                .iter()
                .map(|&q| c.queues[q as usize].levels.len())
                .sum();
            let keys = self
                .order
                .iter()
                .flat_map(|&q| c.queues[q as usize].levels.iter().map(|(_, k)| k));
            let allow = if blocking {
                c.block_timeout + c.reply_grace
            } else {
                NONBLOCKING_REPLY_TIMEOUT + c.reply_grace
            };
            let block = if conn.server.version >= (6, 0, 0) {
                &plan.block_secs
            } else {
                &plan.block_secs_whole
            };
            conn.command(
                Tag::Pop { count, blocking },
                now,
                allow,
                |buf: &mut BytesMut| {
                    if !lmpop {
                        // BRPOP key [key ...] timeout
                        let mut w = CommandWriter::new(buf, 2 + nkeys).arg("BRPOP").args(keys);
                        w = w.arg(block);
                        w.finish();
                    } else if blocking {
                        // BLMPOP timeout numkeys key [key ...] RIGHT COUNT n
                        CommandWriter::new(buf, 6 + nkeys)
                            .arg("BLMPOP")
                            .arg(block)
                            .arg_int(nkeys as i64)
                            .args(keys)
                            .arg("RIGHT")
                            .arg("COUNT")
                            .arg_int(i64::from(count))
                            .finish();
                    } else {
                        // LMPOP numkeys key [key ...] RIGHT COUNT n
                        CommandWriter::new(buf, 5 + nkeys)
                            .arg("LMPOP")
                            .arg_int(nkeys as i64)
                            .args(keys)
                            .arg("RIGHT")
                            .arg("COUNT")
                            .arg_int(i64::from(count))
                            .finish();
                    }
                },
            );
            credits.requested += count;
            credits.note();
            self.in_flight += 1;
        }
    }

    /// Parses a pop reply into `out` (appending) and updates the cycle and credits.
    ///
    /// # Errors
    /// `Retry` errors (LOADING, UNBLOCKED handled as empty) or fatal ones (WRONGTYPE…).
    pub(crate) fn on_reply<'f>(
        &mut self,
        plan: &PopPlan,
        frame: &'f Bytes,
        (count, blocking): (u32, bool),
        received_ns: u64,
        credits: &mut Credits,
        out: &mut Vec<Message<'f>>,
    ) -> Result<PopReply, PopError> {
        self.in_flight = self.in_flight.saturating_sub(1);
        credits.requested = credits.requested.saturating_sub(count);
        let start = out.len();
        let parsed = parse_pop_reply(plan, frame, received_ns, out);
        let reply = match parsed {
            Ok(r) => r,
            Err(e) => {
                out.truncate(start);
                return Err(e);
            }
        };
        let mut reply = reply;
        let got = reply.count;
        if let Some(b) = &plan.budget {
            if blocking {
                // Claimed on arrival: what the budget grants is kept, the rest goes back.
                let kept = b.claim(got);
                if kept < got {
                    reply.excess = got - kept;
                    reply.count = kept;
                    reply.bytes = out[start + kept as usize..]
                        .iter()
                        .fold(reply.bytes, |n, m| n - m.payload().len() as u64);
                }
            } else {
                self.claimed = self.claimed.saturating_sub(count);
                b.unclaim(count.saturating_sub(got));
            }
        }
        if got == 0 {
            self.backlog = false;
        } else if !blocking || got >= count {
            self.backlog = true;
        }
        if let Some(q) = reply.queue {
            self.rotate_after(plan, q);
        }
        credits.held += reply.count;
        credits.held_bytes += reply.bytes;
        credits.note();
        Ok(reply)
    }

    fn rotate_after(&mut self, plan: &PopPlan, q: u32) {
        let weight = plan.consumer.queues.get(q as usize).map_or(1, |x| x.weight);
        if self.streak.0 == q {
            self.streak.1 += 1;
        } else {
            self.streak = (q, 1);
        }
        if self.streak.1 < weight {
            return;
        }
        self.streak = (u32::MAX, 0);
        if let Some(pos) = self.order.iter().position(|&x| x == q) {
            if let Some(x) = self.order.remove(pos) {
                self.order.push_back(x);
            }
        }
    }

    #[cfg(test)]
    fn order(&self) -> Vec<u32> {
        self.order.iter().copied().collect()
    }
}

/// A pop reply the pipeline cannot use.
#[derive(Debug)]
pub(crate) enum PopError {
    /// Try again on a fresh connection after a backoff (LOADING, BUSY…).
    Retry(Error),
    /// Stop the engine (WRONGTYPE, NOPERM, malformed reply…).
    Fatal(Error),
}

fn fmt_secs(s: f64) -> String {
    // Millisecond resolution; "1" rather than "1.000" keeps old servers happy.
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s:.3}")
    }
}

fn malformed(what: &str, t: &Token) -> PopError {
    PopError::Fatal(Error::new(
        ErrorKind::Protocol,
        format!("unexpected pop reply: {what}, got {t:?}"),
    ))
}

fn server_error(plan: &PopPlan, msg: Bytes) -> PopError {
    let e = ServerError::parse(msg);
    if e.is_retryable() {
        return PopError::Retry(Error::server("pop", e));
    }
    let names: Vec<String> = plan
        .consumer
        .queues
        .iter()
        .map(|q| String::from_utf8_lossy(&q.name).into_owned())
        .collect();
    let hint = match e.kind() {
        ServerErrorKind::WrongType => "; a queue key holds something other than a list",
        ServerErrorKind::Moved { .. } | ServerErrorKind::Ask { .. } => {
            "; this is a Redis Cluster node, and cluster mode is not supported yet"
        }
        ServerErrorKind::NoPerm => "; the ACL user needs +@list and access to the queue keys",
        _ => "",
    };
    PopError::Fatal(Error::server(
        &format!("pop from queues {names:?} failed{hint}"),
        e,
    ))
}

/// Reads `_`/`*-1` (nothing), `*2 key value` (BRPOP) or `*2 key *N values…` (LMPOP).
/// The messages borrow their payloads from `frame`: no reference count per message.
fn parse_pop_reply<'f>(
    plan: &PopPlan,
    frame: &'f Bytes,
    received_ns: u64,
    out: &mut Vec<Message<'f>>,
) -> Result<PopReply, PopError> {
    let mut r = Reader::new(frame.clone());
    let proto = |e| {
        PopError::Fatal(Error::new(
            ErrorKind::Protocol,
            format!("malformed pop reply: {e}"),
        ))
    };
    let t = r.next_value_token().map_err(proto)?;
    match t {
        Token::Null => {
            return Ok(PopReply {
                count: 0,
                bytes: 0,
                queue: None,
                excess: 0,
            })
        }
        Token::SimpleError(m) | Token::BulkError(m) => {
            if m.starts_with(b"UNBLOCKED") {
                return Ok(PopReply {
                    count: 0,
                    bytes: 0,
                    queue: None,
                    excess: 0,
                });
            }
            return Err(server_error(plan, m));
        }
        Token::Array(2) => {}
        t => return Err(malformed("expected a two-element array or null", &t)),
    }
    let key = match r.next_slice().map_err(proto)? {
        Ok(k) => k,
        Err(t) => return Err(malformed("expected the key", &t)),
    };
    let Some(&(qi, priority, key)) = plan.keys.get(key) else {
        return Err(PopError::Fatal(Error::new(
            ErrorKind::Protocol,
            format!(
                "pop reply names key {:?}, which this consumer did not ask for",
                String::from_utf8_lossy(key)
            ),
        )));
    };
    let queue = plan.names[qi as usize];
    let mut bytes = 0;
    let mut push = |at: Range<usize>| {
        let payload = &frame[at];
        bytes += payload.len() as u64;
        out.push(Message {
            payload: Payload::Lent {
                bytes: payload,
                frame,
            },
            queue,
            key,
            priority,
            queue_index: qi,
            deliveries: 1,
            received_ns,
        });
    };
    let count = match r.next_range().map_err(proto)? {
        Ok(at) => {
            push(at);
            1
        }
        Err(Token::Array(n)) => {
            for _ in 0..n {
                match r.next_range().map_err(proto)? {
                    Ok(at) => push(at),
                    Err(t) => return Err(malformed("expected a message", &t)),
                }
            }
            n as u32
        }
        Err(t) => return Err(malformed("expected a message or an array of messages", &t)),
    };
    Ok(PopReply {
        count,
        bytes,
        queue: Some(qi),
        excess: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(queues: Vec<Queue>) -> PopPlan {
        PopPlan::new(PopConsumer::new(queues), None)
    }

    #[test]
    fn budget_never_grants_more_than_the_limit() {
        let b = Budget::new(10, None);
        assert_eq!(b.claim(4), 4);
        assert_eq!(b.claim(8), 6);
        assert_eq!(b.claim(1), 0);
        b.unclaim(3);
        assert_eq!(b.claim(5), 3);
        assert!(!b.delivered(9));
        assert!(b.delivered(1));
    }

    #[test]
    fn priority_keys_keep_the_hash_tag() {
        let q = Queue::new("jobs");
        assert_eq!(q.key_for_priority(0), "jobs");
        assert_eq!(q.key_for_priority(9), "{jobs}:p9");
        let q = Queue::new("{app}:jobs");
        assert_eq!(q.key_for_priority(3), "{app}:jobs:p3");
        let q = Queue::new("jobs").priorities([0, 9, 5]);
        let keys: Vec<_> = q.levels.iter().map(|(p, k)| (*p, k.clone())).collect();
        assert_eq!(
            keys,
            vec![
                (9, Bytes::from("{jobs}:p9")),
                (5, Bytes::from("{jobs}:p5")),
                (0, Bytes::from("jobs"))
            ]
        );
    }

    #[test]
    fn served_queue_moves_to_the_back_after_its_weight() {
        let p = plan(vec![
            Queue::new("a").weight(2),
            Queue::new("b"),
            Queue::new("c"),
        ]);
        let mut lane = Lane::new(vec![0, 1, 2]);
        lane.rotate_after(&p, 0);
        assert_eq!(
            lane.order(),
            vec![0, 1, 2],
            "weight 2: first turn keeps a in front"
        );
        lane.rotate_after(&p, 0);
        assert_eq!(lane.order(), vec![1, 2, 0]);
        lane.rotate_after(&p, 1);
        assert_eq!(lane.order(), vec![2, 0, 1]);
        lane.rotate_after(&p, 0);
        lane.rotate_after(&p, 2);
        assert_eq!(lane.order(), vec![0, 1, 2]);
    }

    #[test]
    fn parses_brpop_lmpop_and_null_replies() {
        let p = plan(vec![Queue::new("a"), Queue::new("b").priorities([0, 7])]);
        let brpop = Bytes::from_static(b"*2\r\n$1\r\na\r\n$2\r\nhi\r\n");
        let lmpop = Bytes::from_static(b"*2\r\n$6\r\n{b}:p7\r\n*2\r\n$1\r\nx\r\n$3\r\nyyy\r\n");
        let nulls = [&b"_\r\n"[..], b"*-1\r\n", b"$-1\r\n"].map(Bytes::copy_from_slice);
        let mut out = Vec::new();
        let r = parse_pop_reply(&p, &brpop, 0, &mut out).unwrap();
        assert_eq!((r.count, r.bytes, r.queue), (1, 2, Some(0)));
        let r = parse_pop_reply(&p, &lmpop, 0, &mut out).unwrap();
        assert_eq!((r.count, r.bytes, r.queue), (2, 4, Some(1)));
        assert_eq!(out[0].payload(), b"hi");
        assert_eq!(out[1].priority(), 7);
        assert_eq!(out[1].queue(), b"b");
        assert_eq!(out[1].key(), b"{b}:p7");
        assert_eq!(out[2].payload(), b"yyy");
        // The owned forms share the reply's bytes.
        let owned = out[2].detach();
        assert_eq!(owned.payload(), b"yyy");
        assert_eq!(owned.payload_bytes().as_ptr(), out[2].payload().as_ptr());
        // Debug shows the message's own bytes, never the rest of the reply it borrows from.
        let shown = format!("{:?}", out[2]);
        assert!(shown.contains(r#"payload: b"yyy""#), "{shown}");
        assert!(!shown.contains("\\r\\n"), "{shown}");
        assert_eq!(shown, format!("{owned:?}"));
        for null in &nulls {
            let r = parse_pop_reply(&p, null, 0, &mut out).unwrap();
            assert_eq!(r.count, 0);
        }
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn rejects_unknown_keys_and_maps_server_errors() {
        let p = plan(vec![Queue::new("a")]);
        assert!(matches!(
            parse_pop_reply(
                &p,
                &Bytes::from_static(b"*2\r\n$1\r\nz\r\n$1\r\nv\r\n"),
                0,
                &mut Vec::new()
            ),
            Err(PopError::Fatal(_))
        ));
        assert!(matches!(
            parse_pop_reply(
                &p,
                &Bytes::from_static(b"-LOADING wait\r\n"),
                0,
                &mut Vec::new()
            ),
            Err(PopError::Retry(_))
        ));
        match parse_pop_reply(
            &p,
            &Bytes::from_static(b"-WRONGTYPE Operation against a key\r\n"),
            0,
            &mut Vec::new(),
        ) {
            Err(PopError::Fatal(e)) => assert!(
                e.to_string().contains("holds something other than a list"),
                "{e}"
            ),
            _ => panic!("WRONGTYPE must be fatal"),
        }
        assert_eq!(
            parse_pop_reply(
                &p,
                &Bytes::from_static(b"-UNBLOCKED by admin\r\n"),
                0,
                &mut Vec::new()
            )
            .unwrap()
            .count,
            0
        );
    }
}

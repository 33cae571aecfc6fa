//! What every engine test file shares (`mod support;`): one recording handler, the servers
//! the cases run on (redis-server and Valkey 9), the waits on the server's view of the
//! engine, producers, and the counting the fault tests end with (delivered, duplicated).
//!
//! The recorder keeps one record per delivery, in a shape each file picks ([`Record`]):
//! pop tests look at queue and priority, reliable and stream tests at delivery counts and
//! times, listen tests at channels and patterns. Everything else — handing messages over,
//! the optional slow handler, events, counting — is the same for all.
//!
//! Each test file is its own crate and uses only part of this module.
#![allow(
    dead_code,
    reason = "each test file compiles this module and uses part of it"
)]

pub mod cluster;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ringq::{EngineBuilder, Event, Handler, Message, Outcome};
use ringq_tests::{find_valkey_server, wait_until, RedisServer, RedisServerBuilder, TestClient};

/// How long a test waits for something that must happen: far beyond what a loaded
/// two-core machine needs, so only a real failure runs into it.
pub const WAIT: Duration = Duration::from_secs(60);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// What a [`Recorder`] keeps of one delivery.
pub trait Record: Clone + Send + 'static {
    /// The record of `m`, handed over now.
    fn of(m: &Message<'_>) -> Self;
    /// The payload.
    fn payload(&self) -> &str;
    /// What tells two messages apart when counting duplicates.
    fn key(&self) -> String {
        self.payload().to_owned()
    }
}

/// The payload alone.
impl Record for String {
    fn of(m: &Message<'_>) -> Self {
        text(m.payload())
    }
    fn payload(&self) -> &str {
        self
    }
}

/// Pop mode: (queue, payload, priority level).
impl Record for (String, String, u8) {
    fn of(m: &Message<'_>) -> Self {
        (text(m.queue()), text(m.payload()), m.priority())
    }
    fn payload(&self) -> &str {
        &self.1
    }
    fn key(&self) -> String {
        format!("{}\0{}", self.0, self.1)
    }
}

/// Reliable mode: (payload, deliveries, when).
impl Record for (String, u32, Instant) {
    fn of(m: &Message<'_>) -> Self {
        (text(m.payload()), m.deliveries(), Instant::now())
    }
    fn payload(&self) -> &str {
        &self.0
    }
}

/// Stream mode: (stream, payload, deliveries, when).
impl Record for (String, String, u32, Instant) {
    fn of(m: &Message<'_>) -> Self {
        (
            text(m.queue()),
            text(m.payload()),
            m.deliveries(),
            Instant::now(),
        )
    }
    fn payload(&self) -> &str {
        &self.1
    }
    fn key(&self) -> String {
        format!("{}\0{}", self.0, self.1)
    }
}

/// Listen mode: (channel, pattern, payload).
impl Record for (String, Option<String>, String) {
    fn of(m: &Message<'_>) -> Self {
        (text(m.channel()), m.pattern().map(text), text(m.payload()))
    }
    fn payload(&self) -> &str {
        &self.2
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A handler that records every message (as `R`) and every event, and acks. Clones share
/// the records, so a test keeps one and hands the engine another.
pub struct Recorder<R> {
    log: Arc<Mutex<Vec<R>>>,
    events: Arc<Mutex<Vec<Event>>>,
    /// Sleep per message before recording it (a slow handler).
    pause: Option<Duration>,
}

impl<R> Clone for Recorder<R> {
    fn clone(&self) -> Self {
        Self {
            log: self.log.clone(),
            events: self.events.clone(),
            pause: self.pause,
        }
    }
}

impl<R> Default for Recorder<R> {
    fn default() -> Self {
        Self {
            log: Arc::default(),
            events: Arc::default(),
            pause: None,
        }
    }
}

impl<R: Record> Handler for Recorder<R> {
    fn handle(&mut self, m: &Message<'_>) -> Outcome {
        if let Some(d) = self.pause.filter(|d| !d.is_zero()) {
            std::thread::sleep(d);
        }
        lock(&self.log).push(R::of(m));
        Outcome::Ack
    }

    fn on_event(&mut self, e: &Event) {
        lock(&self.events).push(e.clone());
    }
}

impl<R: Record> Recorder<R> {
    /// A handle on the same records whose handler sleeps `pause` per message.
    pub fn with_pause(&self, pause: Duration) -> Self {
        Self {
            pause: Some(pause),
            ..self.clone()
        }
    }

    /// A handler recording into the same records that answers `decide(payload,
    /// deliveries)` (after recording) instead of acking.
    pub fn deciding<F>(&self, decide: F) -> Deciding<R, F>
    where
        F: FnMut(&str, u32) -> Outcome + Clone + Send + 'static,
    {
        Deciding {
            rec: self.clone(),
            decide,
        }
    }

    /// Deliveries so far (duplicates included).
    pub fn len(&self) -> usize {
        lock(&self.log).len()
    }

    /// Every delivery so far, in handler-call order.
    pub fn snapshot(&self) -> Vec<R> {
        lock(&self.log).clone()
    }

    /// The payloads delivered so far, in handler-call order.
    pub fn payloads(&self) -> Vec<String> {
        lock(&self.log)
            .iter()
            .map(|r| r.payload().to_owned())
            .collect()
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.events).clone()
    }

    /// The gap events so far (listen mode).
    pub fn gaps(&self) -> Vec<Event> {
        lock(&self.events)
            .iter()
            .filter(|e| matches!(e, Event::Gap { .. }))
            .cloned()
            .collect()
    }

    /// How often each message ([`Record::key`]) was delivered.
    pub fn counts(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for r in lock(&self.log).iter() {
            *m.entry(r.key()).or_insert(0) += 1;
        }
        m
    }

    /// Distinct messages delivered.
    pub fn distinct(&self) -> usize {
        self.counts().len()
    }

    /// Deliveries beyond the first of each message.
    pub fn dups(&self) -> usize {
        self.tally().1
    }

    /// (distinct messages delivered, duplicate deliveries).
    pub fn tally(&self) -> (usize, usize) {
        let c = self.counts();
        (c.len(), c.values().map(|n| n - 1).sum())
    }
}

/// A [`Recorder`] whose outcome is decided per message: see [`Recorder::deciding`].
#[derive(Clone)]
pub struct Deciding<R, F> {
    rec: Recorder<R>,
    decide: F,
}

impl<R: Record, F: FnMut(&str, u32) -> Outcome + Clone + Send + 'static> Handler
    for Deciding<R, F>
{
    fn handle(&mut self, m: &Message<'_>) -> Outcome {
        self.rec.handle(m);
        (self.decide)(&text(m.payload()), m.deliveries())
    }

    fn on_event(&mut self, e: &Event) {
        self.rec.on_event(e);
    }
}

/// `decide` for [`Recorder::deciding`]: sleep `pause` (a slow handler), then ack.
pub fn ack_after(pause: Duration) -> impl FnMut(&str, u32) -> Outcome + Clone + Send + 'static {
    move |_: &str, _: u32| {
        std::thread::sleep(pause);
        Outcome::Ack
    }
}

/// Which server a case runs against.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// `redis-server`.
    Redis,
    /// `valkey-server` (Valkey 9, from `scripts/setup.sh`).
    Valkey,
}

/// A builder for Valkey 9; panics, saying how to install it, when it is missing (the tests
/// that run on it fail rather than skip).
pub fn valkey() -> RedisServerBuilder {
    let binary = find_valkey_server()
        .unwrap_or_else(|e| panic!("these tests run against Valkey 9 too and need it: {e}"));
    RedisServer::builder().binary(binary)
}

/// A builder for `kind`'s server.
pub fn builder_for(kind: Kind) -> RedisServerBuilder {
    match kind {
        Kind::Redis => RedisServer::builder(),
        Kind::Valkey => valkey(),
    }
}

/// A private server of `kind`, started.
pub fn start(kind: Kind) -> RedisServer {
    builder_for(kind).start().unwrap()
}

/// Each case `fn case(kind: Kind)` as the tests `redis::case` and `valkey::case`.
#[allow(
    unused_macros,
    reason = "only the files whose cases run on both servers use it"
)]
macro_rules! on_redis_and_valkey {
    ($($case:ident),* $(,)?) => {
        mod redis {
            $(#[test] fn $case() { super::$case($crate::support::Kind::Redis) })*
        }
        mod valkey {
            $(#[test] fn $case() { super::$case($crate::support::Kind::Valkey) })*
        }
    };
}
#[allow(
    unused_imports,
    reason = "only the files whose cases run on both servers use it"
)]
pub(crate) use on_redis_and_valkey;

/// An engine for `url` that does not pin cores (tests share the machine).
pub fn builder(url: impl Into<String>) -> EngineBuilder {
    EngineBuilder::new(url.into()).pin_cores(false)
}

/// `n` payloads `<prefix>-<i>`, zero-padded so they sort in push order.
pub fn payloads(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:08}")).collect()
}

/// XADDs `n` entries `payload = <prefix>-<i>` (the payloads of [`payloads`]), plus
/// `tag = T` when given, pipelined 500 at a time.
pub fn xadd(c: &mut TestClient, stream: &str, prefix: &str, n: usize, tag: Option<&str>) {
    let all = payloads(prefix, n);
    for chunk in all.chunks(500) {
        for p in chunk {
            let mut args = vec!["XADD", stream, "*", "payload", p.as_str()];
            if let Some(t) = tag {
                args.extend(["tag", t]);
            }
            c.send(args).unwrap();
        }
        for _ in chunk {
            let f = c.read_reply().unwrap();
            assert!(matches!(f, ringq_resp::Frame::BulkString(_)), "{f:?}");
        }
    }
}

/// How many clients `CLIENT LIST` shows blocked in a blocking command.
pub fn blocked_clients(c: &mut TestClient) -> usize {
    c.client_list()
        .unwrap()
        .iter()
        .filter(|i| i.is_blocked())
        .count()
}

/// Waits until exactly `n` clients are blocked in a blocking command, with a message
/// naming how many were.
pub fn wait_blocked(c: &mut TestClient, n: usize) {
    assert!(
        wait_until(WAIT, || blocked_clients(c) == n),
        "expected every one of the {n} connections blocked in a pop; {} are",
        blocked_clients(c)
    );
}

/// Waits until at least one client is blocked in a blocking command.
pub fn wait_any_blocked(c: &mut TestClient) {
    assert!(
        wait_until(WAIT, || blocked_clients(c) > 0),
        "no connection ever blocked"
    );
}

/// A delivery: payload, delivery count, when.
pub type Rec = (String, u32, Instant);

/// The longest time between two deliveries after `from`: how long consuming stopped.
pub fn longest_stop(seen: &Recorder<Rec>, from: Instant) -> Duration {
    let mut times: Vec<Instant> = seen.snapshot().into_iter().map(|r| r.2).collect();
    times.sort_unstable();
    let mut last = from;
    let mut worst = Duration::ZERO;
    for t in times.into_iter().filter(|t| *t >= from) {
        worst = worst.max(t - last);
        last = t;
    }
    worst
}

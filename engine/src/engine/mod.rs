//! The public entry point: [`EngineBuilder`] → [`Running`] → [`Stats`].
//!
//! Start-up is synchronous where it can fail for a reason the caller must see at once
//! (bad URL, io_uring unavailable): [`EngineBuilder::start`] waits until every shard has
//! built its ring. Connection problems after that are handled by the shards (reconnect
//! with backoff), and the ones retrying cannot fix (bad password, malformed replies, a
//! server that cannot be reached at all at start) stop the engine and come back from
//! [`Running::wait`].

use std::sync::Arc;
use std::time::Duration;

use crate::backend::IoBackend;
use crate::dispatch::Dispatch;
use crate::error::Error;
use crate::handler::Handler;
use crate::pipeline::pop::MAX_BLOCK_TIMEOUT;
use crate::pipeline::{Start, Timing};
use crate::resolve::{system_resolver, ResolveFn};
use crate::ring::RingConfig;
use crate::url::ConnectionInfo;

mod consumer;
mod depth;
#[cfg(test)]
pub(crate) use depth::DepthPlan;
pub(crate) mod launch;
mod running;

use launch::Launch;

pub use consumer::Consumer;
pub use running::{Running, ShutdownHandle};

pub(crate) type PeriodicFactory = (
    Duration,
    Arc<dyn Fn() -> Box<dyn FnMut() + Send> + Send + Sync>,
);

/// Configures and starts an engine.
///
/// ```no_run
/// use ringq::{EngineBuilder, Outcome, PopConsumer};
///
/// let running = EngineBuilder::new("redis://127.0.0.1:6379")
///     .shards(2)
///     .start(PopConsumer::new(["emails", "reports"]).batch(64), |msg: &ringq::Message<'_>| {
///         let queue = String::from_utf8_lossy(msg.queue());
///         println!("{queue}: {}", String::from_utf8_lossy(msg.payload()));
///         Outcome::Ack
///     })?;
/// let stop = running.shutdown_handle();
/// // ... later, from any thread: stop.shutdown();
/// # stop.shutdown();
/// let stats = running.wait()?;
/// println!("{} messages", stats.messages);
/// # Ok::<(), ringq::Error>(())
/// ```
pub struct EngineBuilder {
    url: String,
    /// Credentials given apart from the URL (they win over the URL's).
    username: Option<String>,
    password: Option<String>,
    sentinel_username: Option<String>,
    sentinel_password: Option<String>,
    tls: Option<crate::Tls>,
    shards: usize,
    connections_per_shard: usize,
    pin_cores: bool,
    ring: RingConfig,
    connect_timeout: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    start_attempts: u32,
    client_name: String,
    idle_ping: Duration,
    periodic: Vec<PeriodicFactory>,
    dispatch: Dispatch,
    stalled_drain: Duration,
    resolver: Arc<ResolveFn>,
    /// The backend asked for, or the `RINGQ_BACKEND` value that could not be parsed.
    backend: Result<IoBackend, String>,
    prefetch: u32,
    prefetch_bytes: u64,
    limit: Option<u64>,
    reply_grace: Duration,
    reply_timeout: Duration,
    /// Queue depth sampling: the period (zero: never) and the most sources sampled.
    depth_every: Duration,
    depth_limit: usize,
}

/// Each shard's lanes, each lane its sources (indices).
type ShardLanes = Vec<Vec<Vec<u32>>>;

impl EngineBuilder {
    /// An engine for the server at `url` (`redis://[user:pass@]host[:port][/db]`,
    /// `rediss://…` for TLS, `unix:///path`, or the master of a Sentinel set:
    /// `redis+sentinel://host1:26379[,host2:26379]/<master name>[/db]`), with one shard, one connection per shard, cores pinned, prefetch
    /// 1024 messages and 64 MiB, no message limit, reply grace 2 s, reply timeout 10 s.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            username: None,
            password: None,
            sentinel_username: None,
            sentinel_password: None,
            tls: None,
            shards: 1,
            connections_per_shard: 1,
            pin_cores: true,
            ring: RingConfig {
                entries: 256,
                recv_buffers: 64,
                recv_buffer_size: 64 * 1024,
            },
            connect_timeout: Duration::from_secs(5),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            start_attempts: 3,
            client_name: "ringq".into(),
            idle_ping: Duration::from_secs(15),
            periodic: Vec::new(),
            dispatch: Dispatch::inline(),
            stalled_drain: Duration::from_secs(300),
            resolver: system_resolver(),
            backend: match std::env::var("RINGQ_BACKEND") {
                Ok(v) => IoBackend::parse(&v).ok_or(v),
                Err(_) => Ok(IoBackend::Auto),
            },
            prefetch: 1024,
            prefetch_bytes: 64 << 20,
            limit: None,
            reply_grace: Duration::from_secs(2),
            reply_timeout: Duration::from_secs(10),
            depth_every: depth::DEFAULT_EVERY,
            depth_limit: depth::DEFAULT_LIMIT,
        }
    }

    /// The password to authenticate with, instead of one in the URL: a URL is easily
    /// shown (`ps`, shell history, a config dump), so keep the password apart, read from a
    /// file or a secret store. Never logged or shown in an error.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// The ACL user name, instead of the URL's (`None` there means `default`).
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// The sentinels' own password (`requirepass` in their configuration), for a
    /// `redis+sentinel://` URL: the URL's credentials are the data nodes', and the
    /// sentinels are asked without a password unless this is set.
    pub fn sentinel_password(mut self, password: impl Into<String>) -> Self {
        self.sentinel_password = Some(password.into());
        self
    }

    /// The ACL user name for the sentinels (with [`EngineBuilder::sentinel_password`]).
    pub fn sentinel_username(mut self, username: impl Into<String>) -> Self {
        self.sentinel_username = Some(username.into());
        self
    }

    /// The sentinels' credentials, if any.
    pub(crate) fn sentinel_auth(&self) -> Option<(Option<String>, String)> {
        self.sentinel_password
            .clone()
            .map(|p| (self.sentinel_username.clone(), p))
    }

    /// TLS settings for a `rediss://` URL: a CA file, a client certificate, or a rustls
    /// `ClientConfig` of your own (see [`crate::Tls`]). Without this, a `rediss://` server's
    /// certificate is verified against the system's roots. Settings given with a
    /// `redis://` URL are refused at start rather than ignored: the URL decides whether
    /// the traffic is encrypted.
    pub fn tls(mut self, tls: crate::Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The TLS settings given, if any.
    pub(crate) fn tls_settings(&self) -> Option<&crate::Tls> {
        self.tls.as_ref()
    }

    /// The URL parsed, with the credentials given apart from it.
    pub(crate) fn connection_info(&self) -> Result<ConnectionInfo, Error> {
        let mut info = ConnectionInfo::parse(&self.url)?;
        if let Some(u) = &self.username {
            info.username = Some(u.clone());
        }
        if let Some(p) = &self.password {
            info.password = Some(p.clone());
        }
        Ok(info)
    }

    /// Hands exactly `n` messages to the handler, then stops the engine
    /// (`ringq consume --count N`). In `pop` mode no message beyond the `n`th is kept: a
    /// non-blocking pop
    /// reserves its share of what is left before it is sent; a blocking pop (which may
    /// wait on an empty queue for the whole block timeout) reserves nothing, so it never
    /// starves the other connections, and if it returns more than is left once its reply
    /// arrives (only possible in the last moments of the budget), the excess goes straight
    /// back to the right end of its list with RPUSH, in order, so the next pop gets it
    /// first. The engine stops once the `n`th message is handled; blocking pops still in
    /// flight are waited for as in any shutdown (see [`PopConsumer::block_timeout`](crate::PopConsumer::block_timeout)).
    pub fn limit(mut self, n: u64) -> Self {
        self.limit = Some(n);
        self
    }

    /// Most messages in flight at once over the whole engine: asked for by pops that have
    /// not answered, or received and not yet handled.
    ///
    /// The limit is split over the fetch connections — in `pop` mode the connections that
    /// own queues, a *lane* each: every lane has a reserve of `prefetch / lanes` of its own, and whatever the reserves leave
    /// unused is shared. A blocking pop, which may wait on the server for its whole block
    /// timeout, asks only for its lane's reserve, so every connection can always wait on
    /// its queues; non-blocking pops (while there is backlog) may also use the shared part.
    /// [`EngineBuilder::start`] therefore refuses a prefetch
    /// below the number of lanes (`min(shards × connections_per_shard, queues)`).
    pub fn prefetch(mut self, n: u32) -> Self {
        self.prefetch = n.max(1);
        self
    }

    /// Most payload bytes in flight at once over the whole engine (default 64 MiB), split
    /// over lanes like [`EngineBuilder::prefetch`].
    ///
    /// Sizes are unknown before a pop, so each lane learns them from its replies: a pop
    /// asks for no more messages than the free bytes hold at the largest payload among
    /// the lane's last 1 024–2 048 messages. A lane that has seen no message yet plans
    /// with the largest message Redis accepts (512 MiB), so with the default limit its
    /// first pops ask for one message each. What the limit guarantees: payload bytes asked for or received and not
    /// yet handled stay within `prefetch_bytes` plus one message per lane, as long as no
    /// message is larger than that estimate (a message larger than any recent one can
    /// overshoot once, by the pop that brought it). `Stats::max_in_flight_bytes` reports
    /// the highest figure reached. Payload bytes only: the reply framing and the read
    /// buffer's spare capacity come on top.
    pub fn prefetch_bytes(mut self, n: u64) -> Self {
        self.prefetch_bytes = n.max(1);
        self
    }

    /// Extra time past the block timeout before a blocking pop's reply counts as overdue
    /// (default 2 s). Never a global read timeout: each command gets its own deadline.
    /// At most [`MAX_BLOCK_TIMEOUT`] (longer is taken as that). A connection with an
    /// overdue reply is replaced by a fresh one at once and kept
    /// open to deliver its late replies (see [`EngineBuilder::stalled_drain`]).
    pub fn reply_grace(mut self, d: Duration) -> Self {
        self.reply_grace = d.min(MAX_BLOCK_TIMEOUT);
        self
    }

    /// How long a non-blocking command (LMPOP, an idle PING, a push-back RPUSH) may
    /// take before its reply counts as overdue (default 10 s; a busy server — a big DEL,
    /// a fork — can stall for seconds), at most [`MAX_BLOCK_TIMEOUT`]. Handled like an
    /// overdue blocking pop.
    pub fn reply_timeout(mut self, d: Duration) -> Self {
        self.reply_timeout = d.clamp(Duration::from_millis(1), MAX_BLOCK_TIMEOUT);
        self
    }

    /// The I/O backend (default [`IoBackend::Auto`], or the `RINGQ_BACKEND` environment
    /// variable: `auto`, `io_uring`, `epoll`). `Auto` uses io_uring where it can be set up
    /// and falls back to epoll otherwise, with one warning that names the cause (a seccomp
    /// profile refusing it, `kernel.io_uring_disabled`, an old kernel, RLIMIT_MEMLOCK) and
    /// how to get io_uring back. `Stats::backend` says which ran.
    pub fn backend(mut self, backend: IoBackend) -> Self {
        self.backend = Ok(backend);
        self
    }

    /// How long a connection whose reply is overdue stays open to deliver its late
    /// replies (default 5 minutes). Such a connection — its server hung past a command's
    /// deadline — is replaced by a fresh one at once, but closing it would not take back
    /// the pops the server has not read yet: when the server resumes it runs them, and
    /// their messages would be lost. So it stays open, sends nothing new, and delivers
    /// what its pops bring until all have answered, the server closes it, or this much
    /// time has passed. A stop waits for it for `reply_grace` at most.
    /// At most a day (longer is taken as a day).
    pub fn stalled_drain(mut self, d: Duration) -> Self {
        self.stalled_drain = d.min(MAX_BLOCK_TIMEOUT);
        self
    }

    /// Resolves the server's host name: at start, and again before every reconnect, on a
    /// background thread (a failover of a managed Redis moves the name to the new
    /// primary). The default is the system resolver (`getaddrinfo`); give your own for
    /// service discovery, or in tests. The first address returned is dialled.
    pub fn resolver<F>(mut self, f: F) -> Self
    where
        F: Fn(&str, u16) -> std::io::Result<Vec<std::net::SocketAddr>> + Send + Sync + 'static,
    {
        self.resolver = Arc::new(f);
        self
    }

    /// Where handlers run: [`Dispatch::inline`] (default), [`Dispatch::workers`],
    /// [`Dispatch::orderly`]. With workers, the handler is cloned once per worker thread.
    pub fn dispatch(mut self, dispatch: Dispatch) -> Self {
        self.dispatch = dispatch;
        self
    }

    /// Number of shard threads, each with its own ring (default 1). Shards that would get
    /// no queue are not started.
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = n.max(1);
        self
    }

    /// Connections per shard (default 1). Queues are spread over all connections; each
    /// queue is popped by exactly one, which keeps its messages in order.
    pub fn connections_per_shard(mut self, n: usize) -> Self {
        self.connections_per_shard = n.max(1);
        self
    }

    /// Pin shard `i` to core `i mod cores` (default on).
    pub fn pin_cores(mut self, on: bool) -> Self {
        self.pin_cores = on;
        self
    }

    /// Submission-queue entries per ring (default 256; completion queue is 4×).
    pub fn ring_entries(mut self, n: u32) -> Self {
        self.ring.entries = n.clamp(8, 32768);
        self
    }

    /// Provided receive buffers per shard: `count` (a power of two) of `size` bytes
    /// (default 64 × 64 KiB).
    pub fn recv_buffers(mut self, count: u16, size: usize) -> Self {
        self.ring.recv_buffers = count.max(1).next_power_of_two();
        self.ring.recv_buffer_size = size.max(512);
        self
    }

    /// Deadline for connecting plus the handshake (default 5 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Reconnect backoff: doubles from `min` up to `max`, with jitter (default 50 ms – 5 s).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min.max(Duration::from_millis(1));
        self.backoff_max = max.max(self.backoff_min);
        self
    }

    /// Connection attempts before giving up on a server that was never reachable (default
    /// 3). Once a connection has worked, it is re-established for as long as it takes.
    pub fn start_attempts(mut self, n: u32) -> Self {
        self.start_attempts = n.max(1);
        self
    }

    /// Prefix of the connection names set with `CLIENT SETNAME` (default `ringq`); each
    /// connection is named `<prefix>-s<shard>-c<n>`.
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = name.into();
        self
    }

    /// How often a connection with nothing in flight (its credits used up by a slow
    /// handler, or a spent budget) is PINGed, so a dead server is noticed within this plus
    /// the reply timeout (default 15 s). Connections with a command in flight are watched
    /// by that command's deadline instead. (Not reliable mode's heartbeat keys: this is
    /// a liveness check of the connection only.)
    pub fn idle_ping(mut self, period: Duration) -> Self {
        self.idle_ping = period.max(Duration::from_millis(1));
        self
    }

    /// Calls `f` every `period` on every shard thread, from inside its loop (Kombu's
    /// `call_repeatedly`). Keep it short: it runs between I/O completions.
    pub fn every<F>(mut self, period: Duration, f: F) -> Self
    where
        F: FnMut() + Clone + Send + Sync + 'static,
    {
        let period = period.max(Duration::from_millis(1));
        self.periodic.push((
            period,
            Arc::new(move || Box::new(f.clone()) as Box<dyn FnMut() + Send>),
        ));
        self
    }

    /// Starts the shards and begins consuming: any kind of [`Consumer`] — a
    /// [`PopConsumer`](crate::PopConsumer), [`ReliableConsumer`](crate::ReliableConsumer),
    /// [`StreamConsumer`](crate::StreamConsumer), [`ListenConsumer`](crate::ListenConsumer)
    /// or [`KombuConsumer`](crate::KombuConsumer).
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a bad URL or a consumer that
    /// cannot work (no sources, a block timeout past [`MAX_BLOCK_TIMEOUT`], a tag
    /// expression that does not parse, …);
    /// [`ErrorKind::UringUnavailable`](crate::ErrorKind::UringUnavailable) when
    /// [`IoBackend::IoUring`] was asked for and io_uring cannot be used here (with the
    /// default [`IoBackend::Auto`] the engine runs on epoll instead, with one warning);
    /// connection and authentication errors when no connection could be made at start.
    pub fn start<H>(self, consumer: impl Into<Consumer>, handler: H) -> Result<Running, Error>
    where
        H: Handler + Clone,
    {
        match consumer.into() {
            Consumer::Pop(c) => self.start_with(c, handler),
            Consumer::Listen(c) => self.start_with(c, handler),
            Consumer::Reliable(c) => self.start_with(c, handler),
            Consumer::Stream(c) => self.start_with(c, handler),
            Consumer::Kombu(c) => self.start_with(c, handler),
        }
    }

    /// The one way in for every consumer type: check it, spread its sources over lanes,
    /// and launch the shards with its pipeline.
    fn start_with<K, H>(self, consumer: K, handler: H) -> Result<Running, Error>
    where
        K: Start + Send + 'static,
        H: Handler + Clone,
    {
        consumer.check()?;
        consumer.check_dispatch(&self.dispatch)?;
        let sources = consumer.source_names();
        let cluster = matches!(
            self.connection_info()?.address,
            crate::url::Address::Cluster { .. }
        );
        let (lanes_per_shard, routes) = if cluster {
            self.cluster_lanes(&consumer)?
        } else {
            (self.lanes(sources.len(), K::SOURCES)?, Vec::new())
        };
        let timing = Timing {
            reply_grace: self.reply_grace,
            reply_timeout: self.reply_timeout,
        };
        let launch = Launch {
            fetch_per_shard: lanes_per_shard.iter().map(Vec::len).collect(),
            prefetch: self.prefetch,
            prefetch_bytes: self.prefetch_bytes,
            limit: self.limit,
            sources,
            mode: K::MODE,
            group: consumer.group_name(),
            timing,
            routes,
            depth: self.depth_plan(&consumer, &lanes_per_shard),
        };
        let mut lanes = lanes_per_shard.into_iter();
        launch::launch(self, launch, handler, move |budget| {
            consumer.pipeline(lanes.next().unwrap_or_default(), budget, timing)
        })
    }

    /// Spreads `n` sources over the fetch connections: source `i` on lane `i mod L`, lane
    /// `l` on shard `l mod S`. Returns each shard's lanes (source indices), after checking
    /// that the prefetch gives every lane credit.
    fn lanes(&self, n: usize, what: &str) -> Result<ShardLanes, Error> {
        let total_conns = self.shards * self.connections_per_shard;
        let nlanes = total_conns.min(n);
        let nshards = self.shards.min(nlanes);
        self.check_prefetch(nlanes, total_conns, n, what)?;
        let mut lanes_per_shard: Vec<Vec<Vec<u32>>> = vec![Vec::new(); nshards];
        for l in 0..nlanes {
            let members = (0..n)
                .filter(|q| q % nlanes == l)
                .map(|q| q as u32)
                .collect();
            lanes_per_shard[l % nshards].push(members);
        }
        Ok(lanes_per_shard)
    }

    /// In a cluster: one lane per hash slot the sources use (a lane's multi-key commands
    /// must name keys of one slot; sources without keys share one lane on any primary),
    /// lane `l` on shard `l mod S`. Returns each shard's lanes
    /// and each lane's slot. Refuses a mode that does not run on a cluster yet, and a
    /// source whose keys span slots.
    fn cluster_lanes<K: Start>(&self, consumer: &K) -> Result<(ShardLanes, Vec<Vec<u16>>), Error> {
        let names = consumer.source_names();
        let mut groups: std::collections::BTreeMap<u16, Vec<u32>> = Default::default();
        for (i, name) in names.iter().enumerate() {
            let Some(keys) = consumer.source_keys(i) else {
                return Err(Error::config(
                    "this consumer's mode does not run on a Redis Cluster; connect it to one \
                     primary with a redis:// URL",
                ));
            };
            // No key: any node serves it (classic pub/sub); those share one lane.
            let slot = keys.first().map_or(crate::cluster::ANY_NODE, |k| {
                crate::cluster::slot::key_slot(k)
            });
            if let Some(k) = keys
                .iter()
                .find(|k| crate::cluster::slot::key_slot(k) != slot)
            {
                return Err(Error::config(format!(
                    "{} '{name}' uses keys in two cluster slots ('{}' in {slot}, '{}' in {}): \
                     a name with braces must hold a non-empty hash tag ({{tag}}) that every \
                     key shares",
                    K::SOURCES,
                    String::from_utf8_lossy(&keys[0]),
                    String::from_utf8_lossy(k),
                    crate::cluster::slot::key_slot(k)
                )));
            }
            groups.entry(slot).or_default().push(i as u32);
        }
        let nlanes = groups.len();
        self.check_prefetch(nlanes, nlanes, names.len(), K::SOURCES)?;
        // A slot group per lane, spread over the shards; the modes that settle on their
        // sources' keys keep a Control per slot group (`Pipeline::CONTROL_PER_NODE`).
        let nshards = self.shards.min(nlanes).max(1);
        let mut lanes: Vec<Vec<Vec<u32>>> = vec![Vec::new(); nshards];
        let mut routes: Vec<Vec<u16>> = vec![Vec::new(); nshards];
        for (l, (slot, members)) in groups.into_iter().enumerate() {
            lanes[l % nshards].push(members);
            routes[l % nshards].push(slot);
        }
        Ok((lanes, routes))
    }

    /// Every lane needs at least one message of credit.
    fn check_prefetch(
        &self,
        nlanes: usize,
        total_conns: usize,
        n: usize,
        what: &str,
    ) -> Result<(), Error> {
        if u64::from(self.prefetch) < nlanes as u64 {
            return Err(Error::config(format!(
                "prefetch {} is below the {nlanes} connections that own {what}: each needs at \
                 least one message of credit. Raise the prefetch to at least {nlanes}, or use \
                 fewer connections (shards × connections per shard = {total_conns}, capped at \
                 the {n} {what})",
                self.prefetch,
            )));
        }
        Ok(())
    }
}

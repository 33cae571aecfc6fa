//! Launching an engine: from a checked consumer's pipelines to running shard threads.
//!
//! The steps, each its own function: the wake eventfds and the shared stop/fail flags;
//! the connection settings (the URL resolved once here, and again before reconnects on a
//! resolver thread); how the prefetch is split over shards (credit follows the lanes);
//! the worker pool, when handlers run on workers; the shard threads; and waiting until
//! every shard has built its ring, so a failure to start comes back from `start` itself.

use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{EngineBuilder, Running};
use crate::backend::IoBackend;
use crate::budget::Budget;
use crate::cluster::Topology;
use crate::conn::{ConnConfig, TlsConnect};
use crate::dispatch::{start_pool, ShardDispatch, ShardWaker};
use crate::error::{Error, ErrorKind};
use crate::handler::Handler;
use crate::pipeline::{Pipeline, Timing};
use crate::resolve::{is_name, Lookup, Resolver};
use crate::ring::{sys, RingFeatures};
use crate::sentinel::Sentinels;
use crate::shard::{self, HandlerSide, Periodic, ShardSpec};
use crate::stats::ShardStats;
use crate::url::{Address, ConnectionInfo};
use crate::wake::Signals;

/// What launching needs besides the pipelines: how the shards split the credit, the
/// budget, the names of the sources stats count messages per, and the reply deadlines.
pub(crate) struct Launch {
    /// Fetch connections (credit accounts) on each shard; one shard per entry.
    pub fetch_per_shard: Vec<usize>,
    pub prefetch: u32,
    pub prefetch_bytes: u64,
    pub limit: Option<u64>,
    pub sources: Vec<String>,
    /// The delivery mode's name (`Start::MODE`).
    pub mode: &'static str,
    /// Stream mode's consumer group (`Start::group_name`).
    pub group: Option<String>,
    pub timing: Timing,
    /// In a cluster: each shard's lanes' hash slots (empty otherwise).
    pub routes: Vec<Vec<u16>>,
    /// Queue depth sampling: which shard samples which source.
    pub depth: super::depth::DepthPlan,
}

impl Launch {
    /// Shard `i`'s share of `total` (messages or bytes of prefetch): credit follows the
    /// lanes, so every lane's reserve is about `total / lanes` wherever it runs. The
    /// split is cumulative, so the shares add up to `total` exactly; each is at least 1.
    fn share(&self, total: u64, i: usize) -> u64 {
        let nlanes = self.fetch_per_shard.iter().sum::<usize>().max(1) as u128;
        let before: u64 = self.fetch_per_shard[..i].iter().map(|&n| n as u64).sum();
        let upto = before + self.fetch_per_shard[i] as u64;
        let cut = |k: u64| (u128::from(total) * u128::from(k) / nlanes) as u64;
        (cut(upto) - cut(before)).max(1)
    }
}

/// Starts one shard per entry of `launch.fetch_per_shard`, each running the pipeline
/// `make(budget)` builds for it.
pub(crate) fn launch<P, H>(
    builder: EngineBuilder,
    mut launch: Launch,
    handler: H,
    mut make: impl FnMut(Option<Arc<Budget>>) -> P,
) -> Result<Running, Error>
where
    P: Pipeline,
    H: Handler + Clone,
{
    let info = builder.connection_info()?;
    let backend = builder.choose_backend()?;
    let nshards = launch.fetch_per_shard.len();
    let shared = signals(nshards)?;
    let conn = Arc::new(conn_config(&builder, info, nshards, &shared)?);
    let budget = launch
        .limit
        .map(|n| Arc::new(Budget::new(n, Some(shared.clone()))));
    if launch.limit == Some(0) {
        shared.stop_all();
    }
    let epoch = Instant::now();
    let pool = Pool::start(&builder, &launch, &handler, &shared, epoch)?;
    let cores = if builder.pin_cores {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut sides = pool.sides;
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut threads = Vec::with_capacity(nshards);
    let mut shard_stats = Vec::with_capacity(nshards);
    let mut first_err = None;
    for (i, side) in sides.iter_mut().enumerate() {
        let stats = Arc::new(ShardStats::new(launch.sources.len()));
        shard_stats.push(stats.clone());
        let spec = ShardSpec {
            index: i,
            core: (!cores.is_empty()).then(|| cores[i % cores.len()]),
            pipeline: make(budget.clone()),
            credits: launch.share(u64::from(launch.prefetch), i) as u32,
            credit_bytes: launch.share(launch.prefetch_bytes, i),
            budget: budget.clone(),
            conn: conn.clone(),
            ring: builder.ring,
            backend,
            event_handler: side
                .is_some()
                .then(|| Box::new(handler.clone()) as Box<dyn Handler>),
            handler: match side.take() {
                Some(side) => HandlerSide::Workers(side),
                None => HandlerSide::Inline(Box::new(handler.clone())),
            },
            epoch,
            stats,
            shared: shared.clone(),
            wake_fd: shared.wake_fds[i],
            periodic: builder
                .periodic
                .iter()
                .map(|(p, f)| (*p, f()))
                .collect::<Vec<Periodic>>(),
            idle_ping: builder.idle_ping,
            stalled_drain: builder.stalled_drain,
            reply_timeout: launch.timing.reply_timeout,
            reply_grace: launch.timing.reply_grace,
            routes: launch.routes.get(i).cloned().unwrap_or_default(),
            depth: launch.depth.spec(i),
        };
        match spawn_shard(i, spec, ready_tx.clone()) {
            Ok(t) => threads.push(t),
            Err(e) => {
                // The shards already started must not go on consuming unowned: they are
                // stopped and joined below, with this as the error.
                first_err = Some(e);
                break;
            }
        }
    }
    drop(ready_tx);
    // Worker links of shards never spawned (after a spawn failure) must go too: a worker
    // exits only once every shard's end of its rings is gone.
    drop(sides);
    let features = await_ready(&ready_rx, threads.len(), &mut first_err);
    let running = Running {
        workers: pool.threads,
        worker_latency: pool.latency,
        shared,
        threads,
        stats: shard_stats,
        source_names: launch.sources,
        mode: launch.mode,
        group: launch.group,
        backend,
        features,
        topology: conn.cluster.clone(),
        depth_on: launch.depth.on.clone(),
    };
    if let Some(e) = first_err {
        running.shared.stop_all();
        let _ = running.join();
        return Err(e);
    }
    Ok(running)
}

/// The shared stop and failure flags, with one wake eventfd per shard.
fn signals(nshards: usize) -> Result<Arc<Signals>, Error> {
    let mut wake_fds = Vec::with_capacity(nshards);
    for _ in 0..nshards {
        match sys::eventfd() {
            Ok(fd) => wake_fds.push(fd),
            Err(e) => {
                for fd in wake_fds {
                    sys::close(fd);
                }
                return Err(Error::io("eventfd", e));
            }
        }
    }
    Ok(Arc::new(Signals {
        stop: AtomicBool::new(false),
        fatal: Mutex::new(None),
        wake_fds,
    }))
}

/// The connection settings every shard shares. A host name is resolved here (a name
/// that does not resolve fails the start) and again before every reconnect, on a
/// resolver thread.
fn conn_config(
    builder: &EngineBuilder,
    info: ConnectionInfo,
    nshards: usize,
    shared: &Arc<Signals>,
) -> Result<ConnConfig, Error> {
    let tls = tls_connect(builder, &info)?;
    let mut sentinels = None;
    let mut cluster = None;
    let (addr, resolver) = match &info.address {
        Address::Tcp { host, port } if is_name(host) => {
            let lookup = Lookup::Host {
                f: builder.resolver.clone(),
                host: host.clone(),
                port: *port,
            };
            let first = lookup.run()?;
            let r = Resolver::start(lookup, nshards, shared.clone())?;
            (first, Some(Arc::new(r)))
        }
        Address::Sentinel {
            sentinels: list,
            master,
        } => {
            let s = Arc::new(Sentinels::new(
                master.clone(),
                list.clone(),
                builder.sentinel_auth(),
                tls.as_ref().map(|t| t.config.clone()),
                // Each sentinel gets a short deadline: a slow one is skipped, not waited on.
                builder.connect_timeout.min(Duration::from_secs(1)),
            ));
            let lookup = Lookup::Sentinel(s.clone());
            let first = lookup.run()?;
            let r = Resolver::start(lookup, nshards, shared.clone())?;
            crate::sentinel::watch(s.clone(), shared.clone())?;
            sentinels = Some(s);
            (first, Some(Arc::new(r)))
        }
        Address::Cluster { seeds } => {
            let auth = info.password.clone().map(|p| (info.username.clone(), p));
            let t = Topology::discover(
                seeds.clone(),
                auth,
                tls.as_ref().map(|t| t.config.clone()),
                // Each node gets a short deadline: a slow one is skipped, not waited on.
                builder.connect_timeout.min(Duration::from_secs(1)),
            )?;
            t.follow(shared.clone())?;
            let view = t.view();
            let first = view
                .primaries()
                .first()
                .map(|n| crate::sentinel::socket_addr(&n.host, n.port).map(|a| (a, n.host.clone())))
                .transpose()?
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::ConnectionLost,
                        format!("the cluster at {info} serves no slot"),
                    )
                })?;
            let r = Resolver::start(
                Lookup::Nodes(builder.resolver.clone()),
                nshards,
                shared.clone(),
            )?;
            cluster = Some(t);
            (
                crate::url::ResolvedAddr::Tcp(first.0, first.1.as_str().into()),
                Some(Arc::new(r)),
            )
        }
        _ => (info.resolve()?, None),
    };
    Ok(ConnConfig {
        info,
        addr,
        resolver,
        connect_timeout: builder.connect_timeout,
        backoff_min: builder.backoff_min,
        backoff_max: builder.backoff_max,
        start_attempts: builder.start_attempts,
        client_name: builder.client_name.clone(),
        tls,
        sentinels,
        cluster,
    })
}

/// The TLS settings of a `rediss://` URL, built once for every connection.
fn tls_connect(
    builder: &EngineBuilder,
    info: &ConnectionInfo,
) -> Result<Option<TlsConnect>, Error> {
    let settings = builder.tls_settings();
    if !info.tls {
        if settings.is_some() {
            return Err(Error::config(
                "TLS settings were given for a redis:// URL; use rediss:// to connect with TLS",
            ));
        }
        return Ok(None);
    }
    let name = match &info.address {
        Address::Tcp { host, .. } => Some(crate::tls::server_name(host)?),
        // The master's host, as the sentinels name it, or the node's, as the cluster's
        // topology does, for each connection.
        Address::Sentinel { .. } | Address::Cluster { .. } => None,
        Address::Unix(_) => return Err(Error::config("TLS needs a TCP address, not unix://")),
    };
    let default = crate::Tls::new();
    let settings = settings.unwrap_or(&default);
    if settings.is_insecure() {
        tracing::warn!(
            "TLS certificate verification is OFF (--tls-insecure): anyone on the path to {info} \
             can read and change this traffic; use it for test set-ups only"
        );
    }
    Ok(Some(TlsConnect {
        config: settings.client_config()?,
        name,
    }))
}

/// The worker pool (none with inline dispatch): its threads, their latency
/// histograms, and each shard's side of the rings.
struct Pool {
    threads: Vec<JoinHandle<()>>,
    latency: Vec<Arc<crate::stats::WorkerStats>>,
    sides: Vec<Option<ShardDispatch>>,
}

impl Pool {
    fn start<H: Handler + Clone>(
        builder: &EngineBuilder,
        launch: &Launch,
        handler: &H,
        shared: &Arc<Signals>,
        epoch: Instant,
    ) -> Result<Self, Error> {
        let nshards = launch.fetch_per_shard.len();
        let mut pool = Pool {
            threads: Vec::new(),
            latency: Vec::new(),
            sides: (0..nshards).map(|_| None).collect(),
        };
        if builder.dispatch.worker_count() == 0 {
            return Ok(pool);
        }
        // A worker's results ring holds what one shard may have in flight.
        let max_share = (0..nshards)
            .map(|i| launch.share(u64::from(launch.prefetch), i))
            .max()
            .unwrap_or(1) as usize
            + 1;
        let wakers: Vec<Arc<ShardWaker>> = shared
            .wake_fds
            .iter()
            .map(|&fd| Arc::new(ShardWaker::new(fd)))
            .collect();
        let sh = shared.clone();
        let on_fatal: Arc<dyn Fn(Error) + Send + Sync> = Arc::new(move |e| sh.fail(e));
        let started = start_pool(
            &builder.dispatch,
            handler,
            &wakers,
            max_share,
            epoch,
            on_fatal,
        )?;
        pool.threads = started.threads;
        pool.latency = started.latency;
        for (slot, side) in pool.sides.iter_mut().zip(started.shard_sides) {
            *slot = Some(side);
        }
        Ok(pool)
    }
}

fn spawn_shard<P: Pipeline>(
    i: usize,
    spec: ShardSpec<P>,
    ready: mpsc::Sender<Result<Option<RingFeatures>, Error>>,
) -> Result<JoinHandle<Result<(), Error>>, Error> {
    std::thread::Builder::new()
        .name(format!("ringq-shard-{i}"))
        .spawn(move || shard::run(spec, ready))
        .map_err(|e| Error::io("spawning a shard thread", e))
}

/// Waits for `n` shards to report their ring built (or their failure, kept in
/// `first_err` unless one is there already); returns the ring features they found.
fn await_ready(
    ready: &mpsc::Receiver<Result<Option<RingFeatures>, Error>>,
    n: usize,
    first_err: &mut Option<Error>,
) -> Option<RingFeatures> {
    let mut features = None;
    for _ in 0..n {
        match ready.recv() {
            Ok(Ok(f)) => features = f,
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(Error::new(
                    ErrorKind::Io,
                    "a shard thread died during start-up",
                ));
            }
        }
    }
    features
}

/// Which backend a launch runs on is chosen before anything starts.
impl EngineBuilder {
    /// The backend to run: `Auto` becomes io_uring when a ring can be set up here, else
    /// epoll (with one warning saying why).
    pub(super) fn choose_backend(&self) -> Result<IoBackend, Error> {
        let asked = self.backend.clone().map_err(|v| {
            Error::config(format!(
                "RINGQ_BACKEND={v:?} is not a backend: use auto, io_uring or epoll"
            ))
        })?;
        if asked != IoBackend::Auto {
            return Ok(asked);
        }
        match crate::ring::probe() {
            Ok(_) => Ok(IoBackend::IoUring),
            Err(e) => {
                tracing::warn!(
                    "io_uring is not available here, so ringq runs on epoll (slower per \
                     message): {e}"
                );
                Ok(IoBackend::Epoll)
            }
        }
    }
}

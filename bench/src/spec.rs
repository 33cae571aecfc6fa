//! The parent ↔ child protocol, as JSON: the parent passes a [`ChildSpec`] as the child's
//! argument; the child prints `ready` on a line of its own once it is connected and
//! waiting for messages, then one [`ChildReport`] line when it has counted them all.

use serde::{Deserialize, Serialize};

use crate::cli::{Cli, ClientKind, PopMode};
use crate::server::Broker;

/// The hidden subcommand a parent uses to start a consumer child: `ringq-bench __child`
/// with the [`ChildSpec`] as JSON in `$RINGQ_BENCH_CHILD_SPEC`.
pub const CHILD_SUBCOMMAND: &str = "__child";

/// The environment variable that carries a child's [`ChildSpec`] (JSON).
pub const SPEC_ENV: &str = "RINGQ_BENCH_CHILD_SPEC";

/// The stdout line a child prints once it is connected and consuming.
pub const READY_LINE: &str = "ready";

/// What one consumer child does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildSpec {
    /// Which client to run.
    pub client: ClientKind,
    /// The server.
    pub url: String,
    /// The list keys to consume; queue `q` goes to connection `q mod connections`.
    pub queues: Vec<String>,
    /// One message per pop, or batches.
    pub pop: PopMode,
    /// COUNT of batch pops.
    pub batch: u32,
    /// Pops in flight per connection while there is backlog.
    pub pipeline: u32,
    /// ringq pop mode: blocking pops parked per dry connection.
    #[serde(default)]
    pub parked_pops: u32,
    /// Connections (at most one per queue is used).
    pub connections: usize,
    /// Threads: ringq shards, tokio worker threads, tokio-uring runtimes.
    pub shards: usize,
    /// Pin ringq's shards to cores.
    pub pin_cores: bool,
    /// Messages to consume before stopping (pings to send for `ping`).
    pub expected: u64,
    /// Payloads carry intended send times: record latency.
    pub latency: bool,
    /// Pings per second (`ping` only).
    pub rate: u32,
    /// Give up (and fail) after this many seconds.
    pub deadline_secs: f64,
    /// `pubsub`: subscribe to this channel instead of popping `queues`. Messages may then
    /// be lost (pub/sub is at-most-once): the child stops once `expected` arrived, or
    /// when none has arrived for a while, and reports what it got.
    #[serde(default)]
    pub channel: Option<String>,
    /// `pubsub --cluster`: `queues` are sharded channels to `SSUBSCRIBE` to on a cluster
    /// (`channel` is then the first of them). Without it, a `channel` with `queues` (the
    /// load scenario's pubsub mode) subscribes to each of `queues`.
    #[serde(default)]
    pub sharded: bool,
    /// ringq's backend (`io_uring`, `epoll`, `auto`).
    #[serde(default)]
    pub backend: String,
    /// `reliable`: at-least-once consumption — ringq's reliable mode, or the baseline's
    /// LMOVE into a processing list and LREM per message.
    #[serde(default)]
    pub reliable: bool,
    /// `stream`: consume `queues` as streams through the consumer group
    /// [`STREAM_GROUP`] (created by the parent), acknowledging every entry.
    #[serde(default)]
    pub stream: bool,
    /// `kombu`: consume `queues` as Kombu queues in ringq's kombu mode (pop and record,
    /// acks by the settle script).
    #[serde(default)]
    pub kombu: bool,
    /// `load`: second 0 of the per-second figures (`CLOCK_MONOTONIC` ns), and the
    /// warm-up left out of the window's latency.
    #[serde(default)]
    pub series_origin_ns: Option<u64>,
    #[serde(default)]
    pub series_warmup_ns: u64,
    /// `load`: when the schedule's last message is due; a lossy run does not end for
    /// quiet before then (a consumer cut off for a while mid-run comes back).
    #[serde(default)]
    pub series_end_ns: Option<u64>,
    /// `load --hdr-prefix`: write the end-to-end histograms of each second here (an
    /// HdrHistogram interval log).
    #[serde(default)]
    pub hdr_e2e: Option<std::path::PathBuf>,
    /// `--tls`: `url` is `rediss://`, and this PEM file holds the CA to trust.
    #[serde(default)]
    pub tls_ca: Option<std::path::PathBuf>,
}

/// The consumer group of the `stream` scenario.
pub const STREAM_GROUP: &str = "ringq-bench";

/// The consumer id the reliable runs lease under (`{q}:processing:<id>`).
pub const RELIABLE_ID: &str = "ringq-bench";

impl ChildSpec {
    /// The spec every scenario starts from: `cli`'s workload flags for client `client`
    /// on `queues` of `broker` (the scenario then sets what it measures).
    pub fn base(cli: &Cli, broker: &Broker, queues: &[String], client: ClientKind) -> Self {
        Self::for_url(cli, &broker.url, queues, client)
    }

    /// As [`ChildSpec::base`], for the server (or cluster) at `url`.
    pub fn for_url(cli: &Cli, url: &str, queues: &[String], client: ClientKind) -> Self {
        Self {
            client,
            url: url.to_owned(),
            queues: queues.to_vec(),
            pop: cli.pop,
            batch: cli.batch.max(1),
            pipeline: cli.pipeline.max(1),
            parked_pops: cli.parked_pops.max(1),
            connections: cli.connections,
            shards: cli.shards,
            pin_cores: cli.pin_cores,
            expected: 0,
            latency: false,
            rate: cli.rate,
            deadline_secs: 60.0,
            channel: None,
            sharded: false,
            hdr_e2e: None,
            reliable: false,
            stream: false,
            kombu: false,
            series_origin_ns: None,
            series_warmup_ns: 0,
            series_end_ns: None,
            tls_ca: None,
            backend: match client {
                ClientKind::RingqEpoll => "epoll".to_owned(),
                _ => cli.backend.clone(),
            },
        }
    }

    /// The same client over TLS (`broker`'s TLS port), when the broker has one.
    pub fn over_tls(mut self, broker: &Broker) -> Self {
        if let Some(t) = &broker.tls {
            self.url = t.url.clone();
            self.tls_ca = Some(t.ca.clone());
        }
        self
    }

    /// Connections actually used: one per queue at most.
    pub fn lanes(&self) -> usize {
        self.connections.clamp(1, self.queues.len().max(1))
    }

    /// The queues of connection `lane`.
    pub fn lane_queues(&self, lane: usize) -> Vec<String> {
        let lanes = self.lanes();
        self.queues
            .iter()
            .enumerate()
            .filter(|(q, _)| q % lanes == lane)
            .map(|(_, k)| k.clone())
            .collect()
    }
}

/// What a child measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildReport {
    /// Messages consumed (pings answered for `ping`).
    pub messages: u64,
    /// From the start of consuming (connecting, for drain; the `ready` line, for latency)
    /// to the last message.
    pub seconds: f64,
    /// Latency percentiles, when payloads carried time stamps.
    pub latency: Option<LatencySummary>,
    /// Anything the reader of the table should know (a server that lacks a command…).
    pub note: Option<String>,
    /// `load`: per-second figures, and the latency of the measured window.
    #[serde(default)]
    pub series: Option<Vec<crate::series::ConsumerSecond>>,
    #[serde(default)]
    pub window: Option<LatencySummary>,
    /// `load`: later deliveries of messages already counted.
    #[serde(default)]
    pub duplicates: Option<u64>,
    /// Connections the engine re-established (ringq only).
    #[serde(default)]
    pub reconnects: Option<u64>,
    /// The engine's system calls and completions over the run (ringq only; see
    /// `ringq::IoCounters`).
    #[serde(default)]
    pub io: Option<(u64, u64)>,
    /// `load`: the message numbers never delivered, as half-open ranges (None when not
    /// tracked, or too scattered to list).
    #[serde(default)]
    pub missing: Option<Vec<(u64, u64)>>,
}

/// A latency histogram boiled down to what the report needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Median, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Maximum, µs.
    pub max_us: f64,
    /// (percentile in %, µs) points for the percentile plot, percentile ascending.
    pub curve: Vec<(f64, f64)>,
}

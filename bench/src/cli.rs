//! The command line: `ringq-bench SCENARIO [--url URL] [options] [--json PATH]`.
//!
//! One flat set of options shared by all scenarios (each scenario reads the ones it
//! needs), so a suite script can pass the same workload flags everywhere.
//! `ringq-bench SCENARIO --help` shows that scenario's description and only the options it
//! reads ([`Cli::parse_args`]).

use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser, ValueEnum};
use serde::{Deserialize, Serialize};

const LONG_ABOUT: &str = "\
Benchmarks ringq against baseline Redis consumers on the same workload, in the same run, and
load-tests a broker.

Each client's consumer runs in its own child process, so its CPU time (user + system, as the
kernel accounts it with wait4) is the consumer's alone; filling the queues and producing
messages happen in the parent process and are not counted.

CLIENTS
  ringq        this engine: io_uring (or --backend), one pinned shard thread per --shards
  ringq-epoll  this engine on its epoll backend (where containers refuse io_uring)
  ringq-metrics  this engine with its Prometheus collector scraped every 100 ms (drain:
               the metrics' cost, against the ringq row of the same run)
  redis-rs     the `redis` crate on tokio (multiplexed connection; --pipeline concurrent
               BRPOP or BLMPOP COUNT commands per connection)
  tokio-uring  a straightforward tokio-uring consumer: writes --pipeline pops, reads replies
               into a buffer and decodes them with ringq-resp's Decoder
  limit        the raw limit probe: a blocking socket pipelining RPOP key [count], only
               counting elements — what the server can deliver with the least client work
  ping         (latency only, always run) PING round trips at the same rate: the floor

SCENARIOS
  drain        fill --queues lists with --messages messages of --size bytes, then consume
               them all; --pop single is one message per BRPOP, --pop batch uses COUNT
  latency      a producer pushes --rate messages per second for --duration seconds, each
               carrying its intended send time; latency is measured from that time to the
               consumer's handler (coordinated-omission corrected, as wrk2 does)
  pubsub       one subscriber per client (ringq, redis-rs) on one channel: the parent
               publishes --messages messages of --size bytes pipelined at full speed, then
               --rate messages per second for --duration seconds stamped with their send
               time. Reports received, lost, receive rate ÷ the publisher's, consumer and
               server CPU per message, and p50/p99 latency at the fixed rate
  reliable     at-least-once: drain --messages with acks — ringq's reliable mode (leases
               and batched acks), ringq's pop mode (the at-most-once ceiling) and redis-rs
               (pipelined LMOVE into a processing list, LREM per message), with the
               server's CPU per message
  stream       drain one stream of --messages entries through a consumer group with acks —
               ringq's stream mode, redis-rs (XREADGROUP COUNT + XACK) and the limit client
               (pipelined XREADGROUP, walking only the ids to XACK) — with the server's CPU
               per entry
  load         a broker load test: open-loop producers at --rate for --warmup + --duration
               seconds while ringq consumes in --mode list|reliable|stream|pubsub|kombu; one row a
               second (produced, consumed, backlog, end-to-end and produce latency, server
               CPU) and a summary (lost, extra, latency percentiles, CPU per message)
  produce      the load tester's LPUSH producer at full speed on --producers connections
               against redis-benchmark -P 64 on the same server: msgs/s, server CPU per
               message, and the ratio (is the load tester ever the bottleneck?)
  kombu        drain Kombu envelopes with acks — ringq's kombu mode, ringq's pop mode on
               the same data, and Kombu's own Python consumer (from the venv
               scripts/setup.sh makes) on --python-messages — with the server's CPU per
               message (Kombu's keys get the global_keyprefix ringq-bench:)

  `ringq-bench SCENARIO --help` shows one scenario and only the options it reads.

OUTPUT
  A markdown table on stdout: msgs/s, CPU µs per message, latency percentiles (latency
  scenario), and ratios to the best baseline (redis-rs, tokio-uring): msgs/s and CPU in
  drain (plus msgs/s to the limit probe), p99 and CPU in latency (plus p99 to PING's).
  pubsub, reliable and stream add the server's CPU per message (INFO cpu before and
  after). Then the targets ringq is held to, each with its measured ratio.
  --json PATH writes {\"scenario\", \"clients\": [{\"name\", \"messages\", \"seconds\",
  \"msgs_per_sec\", \"cpu_us_per_msg\", \"p50_us\", \"p99_us\", \"p999_us\", \"max_us\"}]}
  (latency fields null where not measured) and, for the latency scenario, an SVG
  percentile plot next to it (PATH with the extension .svg).

SERVER
  Without --url, a private redis-server (from $REDIS_SERVER, else PATH, /usr/bin, ...)
  starts on a free port in a temp dir and is stopped afterwards. With --url, any RESP
  server: Redis, Valkey (REDIS_SERVER=/path/to/valkey-server for the embedded one). Only
  keys named ringq-bench:* are written and deleted.

EXAMPLES
  ringq-bench drain --pop batch --messages 1000000
  ringq-bench drain --pop single --messages 200000 --clients ringq,redis-rs
  ringq-bench latency --rate 10000 --duration 10 --json target/ringq-bench/latency.json
  ringq-bench drain --url redis://127.0.0.1:6379 --queues 4 --connections 2 --shards 2";

/// What `ringq-bench SCENARIO --help` says about each scenario, and the options it reads.
const SCENARIO_HELP: [(Scenario, &str, &[&str]); 8] = [
    (
        Scenario::Drain,
        "Fill --queues lists with --messages messages of --size bytes, then consume them all \
         with each client in turn: --pop single is one message per BRPOP, --pop batch uses \
         COUNT. Reports msgs/s and consumer CPU per message, with ratios to the best \
         baseline (redis-rs, tokio-uring) and to the limit probe.",
        &[
            "url",
            "repeats",
            "messages",
            "size",
            "queues",
            "connections",
            "shards",
            "pop",
            "batch",
            "pipeline",
            "parked_pops",
            "clients",
            "backend",
            "pin_cores",
            "cluster",
            "json",
        ],
    ),
    (
        Scenario::Latency,
        "A producer pushes --rate messages per second for --duration seconds over --queues \
         lists, each carrying its intended send time; latency runs from that time to the \
         consumer's handler (coordinated-omission corrected, as wrk2 does). PING round trips \
         at the same rate run first: the floor. --json also writes an SVG percentile plot.",
        &[
            "url",
            "repeats",
            "size",
            "queues",
            "connections",
            "shards",
            "pop",
            "batch",
            "pipeline",
            "parked_pops",
            "rate",
            "rates",
            "duration",
            "clients",
            "backend",
            "pin_cores",
            "json",
        ],
    ),
    (
        Scenario::Pubsub,
        "One subscriber per client (ringq, ringq-epoll, redis-rs) on one channel. A separate \
         process publishes --messages messages of --size bytes pipelined at full speed, then \
         --rate messages per second for --duration seconds stamped with their send time. \
         Reports received, lost, receive rate ÷ the publisher's, consumer CPU and server \
         CPU (INFO cpu) per message, and p50/p99 latency at the fixed rate. --connections N: \
         fan-in over N channels, one subscriber connection each (a list is the connections \
         sweep).",
        &[
            "url",
            "repeats",
            "messages",
            "size",
            "connections",
            "rate",
            "duration",
            "clients",
            "backend",
            "pin_cores",
            "json",
        ],
    ),
    (
        Scenario::Reliable,
        "At-least-once: drain --messages messages of --size bytes from one queue with acks — \
         ringq's reliable mode (leases and batched acks), ringq's pop mode (the at-most-once \
         ceiling, popping as --pop says) and redis-rs (pipelined LMOVE into a processing \
         list, LREM per message). Reports consumer CPU and server CPU (INFO cpu) per \
         message, and what was left queued or leased.",
        &[
            "url",
            "repeats",
            "messages",
            "size",
            "pop",
            "batch",
            "pipeline",
            "clients",
            "backend",
            "pin_cores",
            "cluster",
            "json",
        ],
    ),
    (
        Scenario::Stream,
        "Drain one stream of --messages entries of --size bytes through a consumer group \
         with acks — ringq's stream mode, redis-rs (XREADGROUP COUNT + XACK) and the limit \
         client (pipelined XREADGROUP, walking only the ids to XACK). Reports consumer CPU \
         and server CPU (INFO cpu) per entry, and what was left pending.",
        &[
            "url",
            "repeats",
            "messages",
            "size",
            "batch",
            "pipeline",
            "clients",
            "backend",
            "pin_cores",
            "cluster",
            "json",
        ],
    ),
    (
        Scenario::Kombu,
        "Kombu/Celery queues: drain --messages Kombu envelopes (--size byte bodies) from one \
         queue with acks — ringq's kombu mode (pop and record in Kombu's unacked hash, one \
         script a batch), ringq's pop mode on the same data, and Kombu's own Python \
         consumer (drain_events + ack, from the venv scripts/setup.sh makes) on \
         --python-messages. Reports msgs/s, consumer CPU and server CPU (INFO cpu) per \
         message, the ratios to Kombu's consumer, and Kombu's records written with native \
         commands (what the records alone cost the server).",
        &[
            "url",
            "repeats",
            "messages",
            "python_messages",
            "size",
            "batch",
            "pipeline",
            "backend",
            "pin_cores",
            "json",
        ],
    ),
    (
        Scenario::Produce,
        "Is the load tester's producer ever the bottleneck? Its paced LPUSH producer (the \
         load scenario's) on --producers connections with a schedule always due, then \
         redis-benchmark -P 64 -c 50 LPUSHing as many --size byte messages to the same \
         server (Debian's redis-tools; REDIS_BENCHMARK names another binary). Reports \
         msgs/s and server CPU per message of each, and the ratio (target >= 0.9x).",
        &["url", "repeats", "messages", "size", "producers", "json"],
    ),
    (
        Scenario::Load,
        "A broker load test at a fixed rate: --producers connections push --rate messages a \
         second in all (each sent at its intended time, stamped with it) for --warmup + \
         --duration seconds into --queues lists, streams or channels, while ringq consumes \
         them in --mode (list: pop mode; reliable; stream: a consumer group; pubsub: listen \
         mode on channels, published with PUBLISH; kombu: Kombu envelopes, kombu mode). Prints one row a \
         second — produced, consumed, backlog (read from the server), end-to-end latency \
         (intended send time to the handler, by the second it was due in), produce latency \
         (the push's reply), the server's CPU — and a summary of the measured window: \
         totals, lost and extra messages, latency percentiles, CPU per message. --json \
         writes {scenario, config, series, summary}; --csv the series.",
        &[
            "url",
            "mode",
            "rate",
            "duration",
            "warmup",
            "producers",
            "size",
            "queues",
            "connections",
            "shards",
            "batch",
            "pipeline",
            "backend",
            "pin_cores",
            "json",
            "csv",
            "hdr_prefix",
            "kill_consumers_at",
            "restart_server_at",
            "failover_at",
            "find_max",
            "slo_p99_ms",
            "backlog",
        ],
    ),
];

/// `ringq-bench`'s command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "ringq-bench",
    version,
    about = "Benchmarks ringq against baseline Redis consumers, in the same run",
    long_about = LONG_ABOUT
)]
pub struct Cli {
    /// What to measure.
    #[arg(value_enum)]
    pub scenario: Scenario,

    /// Server URL (redis://[user:pass@]host[:port][/db] or unix:///path; default
    /// $RINGQ_URL); without either, a private redis-server is started and stopped.
    /// (`--tls` needs that private server.)
    #[arg(long, env = "RINGQ_URL", hide_env_values = true)]
    pub url: Option<String>,

    /// Messages: drained (drain, reliable, stream) or published in the burst (pubsub).
    #[arg(long, default_value_t = 200_000)]
    pub messages: u64,

    /// Run the scenario this many times and report each client's figures as the median
    /// with the min–max, and its ratios to the first baseline from paired runs (drain,
    /// latency, pubsub, reliable, stream, kombu). --json then holds the medians, and
    /// PATH.runN.json each run.
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,

    /// latency: a sweep — one latency run per rate (PING, then each client), then a
    /// table and a plot of p99 against the rate (the SVG next to --json).
    #[arg(long, value_delimiter = ',', value_name = "RATES")]
    pub rates: Vec<u32>,

    /// load: what ringq consumes — lists in pop mode, lists in reliable mode, or streams
    /// through a consumer group.
    #[arg(long, value_enum, default_value_t = LoadMode::List)]
    pub mode: LoadMode,

    /// load: seconds of producing before the measured window (shown in the series, left
    /// out of the summary).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,

    /// load: producer connections sharing --rate (each sends every Nth message of one
    /// schedule).
    #[arg(long, default_value_t = 1)]
    pub producers: usize,

    /// load: at the end of each of these seconds (counted from the schedule's start),
    /// kill every connection of the consumer (CLIENT KILL): the run goes on, and the
    /// summary counts reconnects and what was lost or delivered twice.
    #[arg(long, value_delimiter = ',', value_name = "SECONDS")]
    pub kill_consumers_at: Vec<u64>,

    /// load: at the end of each of these seconds, restart the embedded server (SIGTERM,
    /// then started again on its port; it runs with `appendfsync always` for such a run,
    /// so what it acknowledged survives). Producers and consumer reconnect; the summary
    /// counts what was sent without a reply (unconfirmed) apart from what the server had
    /// confirmed and never came back (lost).
    #[arg(long, value_delimiter = ',', value_name = "SECONDS")]
    pub restart_server_at: Vec<u64>,

    /// load: run against an embedded master with a replica behind three sentinels, and at
    /// the end of each of these seconds fail it over (SENTINEL FAILOVER). Producers and
    /// consumer follow the sentinels to the new master; writes the old master confirmed
    /// and had not replicated when it was demoted are counted lost (the broker lost
    /// them: Redis replication is asynchronous).
    #[arg(long, value_delimiter = ',', value_name = "SECONDS")]
    pub failover_at: Vec<u64>,

    /// load: search for the highest rate whose end-to-end p99 stays within --slo-p99-ms
    /// in every measured second with nothing lost: doubling from --rate until it breaks
    /// (or halving until it holds), then bisecting to within 5 %. Each try is a full run.
    #[arg(long)]
    pub find_max: bool,

    /// load --find-max: the p99 objective, in milliseconds.
    #[arg(long, default_value_t = 1.0)]
    pub slo_p99_ms: f64,

    /// load: first push this many messages without consuming (a backlog), then consume
    /// while producing at --rate: how fast it drains, what latency does meanwhile (list
    /// and reliable mode).
    #[arg(long, default_value_t = 0)]
    pub backlog: u64,

    /// load: write the per-second series as CSV here.
    #[arg(long)]
    pub csv: Option<PathBuf>,

    /// load: write HdrHistogram interval logs, one interval a second, values in ns:
    /// PATH.e2e.hlog (end-to-end latency, by the second each message was due in) and
    /// PATH.produce.hlog (produce latency). With --find-max, the last passing run's.
    #[arg(long, value_name = "PATH")]
    pub hdr_prefix: Option<PathBuf>,

    /// kombu: messages the Python Kombu consumer drains (it takes about a thousandth of
    /// ringq's time per message, so fewer keep the run short; rates are compared).
    #[arg(long, default_value_t = 20_000)]
    pub python_messages: u64,

    /// Payload bytes per message (latency payloads are at least 16: the time stamp and a
    /// sequence number).
    #[arg(long, default_value_t = 64)]
    pub size: usize,

    /// Number of list queues (drain, latency); messages are spread evenly over them.
    #[arg(long, default_value_t = 1)]
    pub queues: usize,

    /// Connections per client (drain, latency: each queue is served by one connection; at
    /// most --queues are used). drain: a list (`1,100,1000,4000`) is the connections
    /// sweep — the drain at each count, over at least as many queues, each client's
    /// medians of --repeats runs with its system calls and completions per message.
    #[arg(
        long = "connections",
        value_delimiter = ',',
        default_value = "1",
        value_name = "N"
    )]
    pub connection_counts: Vec<usize>,

    /// The first of `--connections` (the only one outside a sweep).
    #[arg(skip)]
    pub connections: usize,

    /// ringq shard threads (drain, latency; the other scenarios use one); the tokio-based
    /// baselines get as many runtime threads, the limit probe one thread per connection.
    #[arg(long, default_value_t = 1)]
    pub shards: usize,

    /// How messages are popped: one per BRPOP, or batches (LMPOP/BLMPOP COUNT). Drain,
    /// latency, and reliable's `ringq pop` row.
    #[arg(long, value_enum, default_value_t = PopMode::Batch)]
    pub pop: PopMode,

    /// COUNT of batch pops, of leases (reliable) and of XREADGROUP reads (stream).
    #[arg(long, default_value_t = 256)]
    pub batch: u32,

    /// Pops (leases, reads) in flight per connection while there is backlog (every client
    /// uses the same).
    #[arg(long, default_value_t = 4)]
    pub pipeline: u32,

    /// ringq (pop mode): blocking pops each connection keeps waiting on the server while
    /// its queues are dry (`PopConsumer::parked_pops`; drain, latency).
    #[arg(long, default_value_t = 1)]
    pub parked_pops: u32,

    /// Messages per second (latency, and pubsub's latency phase).
    #[arg(long, default_value_t = 10_000)]
    pub rate: u32,

    /// Seconds of producing (latency, and pubsub's latency phase).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Clients to measure, comma-separated, in order; a scenario skips (and says so) the
    /// clients it has no consumer for.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "ringq,ringq-epoll,redis-rs,tokio-uring,limit"
    )]
    pub clients: Vec<ClientKind>,

    /// The backend of the `ringq` client: io-uring (the default), epoll, or auto
    /// (io_uring where it can be set up). `ringq-epoll` always runs on epoll.
    #[arg(long, default_value = "io-uring", value_parser = parse_backend)]
    pub backend: String,

    /// Pin ringq's shard threads to cores (the engine's default).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub pin_cores: bool,

    /// drain and latency over TLS: the embedded server also listens with TLS (a
    /// throw-away CA made for the run) and every client that speaks TLS connects there
    /// (tokio-uring and the limit probe do not, and are skipped); the latency floor is
    /// a TLS PING client. drain runs each client over plaintext too, in the same run, and
    /// adds a TLS ÷ plaintext table with the server's CPU per message.
    #[arg(long)]
    pub tls: bool,

    /// drain, pubsub, reliable and stream on a Redis Cluster: a private cluster of 3
    /// primaries (no replicas), or the one at --url redis+cluster://…; sources spread
    /// evenly over the primaries (reliable and stream: one per primary; pubsub: sharded
    /// channels, one or more per primary, published with SPUBLISH at each owner); ringq
    /// and redis-rs's
    /// cluster client, the server CPU summed over the primaries; drain adds ringq on one
    /// standalone server with one primary's share (the cluster layer's cost). Implied by
    /// a redis+cluster:// --url.
    #[arg(long)]
    pub cluster: bool,

    /// Write the results as JSON here (and the latency plot next to it, as .svg).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The scenarios of the `ringq-bench` contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Pre-fill, then consume everything.
    Drain,
    /// Fixed-rate producer, coordinated-omission-corrected latency.
    Latency,
    /// Pub/sub: a full-speed burst to one subscriber (received, lost, rates, consumer and
    /// server CPU), then latency at --rate.
    Pubsub,
    /// At-least-once: drain with acks — ringq's reliable mode, ringq's pop mode, and
    /// redis-rs doing LMOVE into a processing list and LREM per message — with the
    /// server's CPU per message (INFO cpu before and after).
    Reliable,
    /// Streams: drain one stream through a consumer group with acks — ringq's stream
    /// mode, redis-rs (XREADGROUP COUNT + XACK) and the limit client — with the server's
    /// CPU per entry.
    Stream,
    /// Kombu/Celery queues: drain Kombu envelopes with acks — ringq's kombu mode, ringq's
    /// pop mode on the same data, and a Python Kombu consumer (`drain_events`, `ack`,
    /// from the venv `scripts/setup.sh` makes) — with the server's CPU per message.
    Kombu,
    /// The load tester's producer at full speed against redis-benchmark -P 64 (LPUSH),
    /// on the same server: msgs/s and server CPU per message of each.
    Produce,
    /// A broker load test: open-loop producers at --rate for --warmup + --duration
    /// seconds while ringq consumes in --mode; a per-second series (produced, consumed,
    /// backlog, end-to-end and produce latency, server CPU) and a summary.
    Load,
}

/// `load --mode`: what ringq consumes, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum LoadMode {
    /// Lists, pop mode (at-most-once).
    List,
    /// Lists, reliable mode (leases, acks).
    Reliable,
    /// Streams through a consumer group (acks).
    Stream,
    /// Pub/sub channels, listen mode (PUBLISH; nothing is kept for a subscriber that
    /// falls behind: the summary counts what it lost).
    Pubsub,
    /// Kombu/Celery queues of Kombu envelopes, ringq's kombu mode (each batch recorded in
    /// Kombu's unacked hash, acks removing the records).
    Kombu,
}

impl LoadMode {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            LoadMode::List => "list",
            LoadMode::Reliable => "reliable",
            LoadMode::Stream => "stream",
            LoadMode::Pubsub => "pubsub",
            LoadMode::Kombu => "kombu",
        }
    }
}

/// One message per command, or batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum PopMode {
    /// One message per BRPOP (RPOP for the limit probe).
    Single,
    /// LMPOP/BLMPOP with COUNT (`RPOP key count` for the limit probe).
    Batch,
}

/// The consumers a run can measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, Serialize, Deserialize)]
pub enum ClientKind {
    /// This engine (on `--backend`, io_uring by default).
    Ringq,
    /// This engine on its epoll backend.
    #[value(name = "ringq-epoll")]
    RingqEpoll,
    /// This engine with its Prometheus collector registered and scraped (encoded to
    /// text) every 100 ms, as a Prometheus server would: the metrics' cost.
    #[value(name = "ringq-metrics")]
    RingqMetrics,
    /// redis-rs on tokio.
    #[value(name = "redis-rs")]
    RedisRs,
    /// A straightforward tokio-uring consumer.
    #[value(name = "tokio-uring")]
    TokioUring,
    /// The raw limit probe.
    Limit,
    /// PING round trips (the latency floor; not a consumer).
    Ping,
}

/// `--backend`: a name the engine knows.
fn parse_backend(s: &str) -> Result<String, String> {
    ringq::IoBackend::parse(s)
        .map(|b| b.name().to_owned())
        .ok_or_else(|| format!("'{s}' is not a backend: auto, io-uring or epoll"))
}

impl ClientKind {
    /// Whether the client can connect with TLS (`--tls`).
    pub fn speaks_tls(self) -> bool {
        matches!(
            self,
            ClientKind::Ringq
                | ClientKind::RingqEpoll
                | ClientKind::RingqMetrics
                | ClientKind::RedisRs
                | ClientKind::Ping
        )
    }

    /// The name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            ClientKind::Ringq => "ringq",
            ClientKind::RingqEpoll => "ringq-epoll",
            ClientKind::RingqMetrics => "ringq-metrics",
            ClientKind::RedisRs => "redis-rs",
            ClientKind::TokioUring => "tokio-uring",
            ClientKind::Limit => "limit",
            ClientKind::Ping => "ping",
        }
    }

    /// Whether this client is one of the baselines ringq is compared with.
    pub fn is_baseline(self) -> bool {
        matches!(self, ClientKind::RedisRs | ClientKind::TokioUring)
    }
}

impl Scenario {
    /// The command `ringq-bench SCENARIO --help` prints: this scenario's description and
    /// only the options it reads.
    pub fn command(self) -> clap::Command {
        let (_, about, keep) = SCENARIO_HELP
            .iter()
            .find(|(s, _, _)| *s == self)
            .copied()
            .unwrap_or((self, "", &[]));
        let name = self
            .to_possible_value()
            .map_or_else(String::new, |v| v.get_name().to_owned());
        let mut cmd = Cli::command()
            .about(about)
            .long_about(about)
            .override_usage(format!("ringq-bench {name} [OPTIONS]"));
        let ids: Vec<String> = cmd
            .get_arguments()
            .map(|a| a.get_id().to_string())
            .collect();
        for id in ids {
            if !keep.contains(&id.as_str()) && id != "help" && id != "version" {
                cmd = cmd.mut_arg(id, |a| a.hide(true));
            }
        }
        cmd
    }
}

impl Cli {
    /// Parses the command line, exiting on errors and help as clap does — except that
    /// `--help` after a scenario name prints that scenario's help ([`Scenario::command`]).
    pub fn parse_args() -> Self {
        match Self::try_parse() {
            Ok(mut cli) => {
                cli.connections = cli.connection_counts.first().copied().unwrap_or(1);
                cli
            }
            Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {
                let named = std::env::args()
                    .skip(1)
                    .filter(|a| !a.starts_with('-'))
                    .find_map(|a| Scenario::from_str(&a, true).ok());
                match named {
                    Some(s) => {
                        let long = std::env::args().any(|a| a == "--help");
                        let mut cmd = s.command();
                        let _ = if long {
                            cmd.print_long_help()
                        } else {
                            cmd.print_help()
                        };
                        std::process::exit(0)
                    }
                    None => e.exit(),
                }
            }
            Err(e) => e.exit(),
        }
    }

    /// `--duration` as a `Duration` (at least 1 ms).
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration.max(0.001))
    }
}

//! The command line, as clap derive types. The doc comments are the `--help` text: keep
//! them the reference for every command and flag.

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Default server when `--url` is not given.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// Consume, produce and subscribe to Redis queues on the ringq io_uring engine.
///
/// Messages go to stdout, one per line; errors, warnings and progress go to stderr as
/// `ringq: ...`. Exit status: 0 on success (also after SIGINT/SIGTERM or a closed stdout),
/// 1 for a runtime failure, 2 for a usage error. Set RINGQ_LOG=off|error|warn|info|debug
/// to choose which engine events reach stderr (default: warn).
#[derive(Debug, Parser)]
#[command(name = "ringq", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pop messages from list queues and print one per line.
    ///
    /// Pop mode is at-most-once: a message leaves the server when it is popped. The tool
    /// never pops more than it prints: `--count N` pops at most N, and on SIGINT/SIGTERM
    /// it stops fetching, prints every message already popped, and exits 0. A second
    /// signal exits at once without waiting.
    ///
    /// Example: ringq consume --url redis://127.0.0.1:6379 --queue jobs --count 10 --format json
    Consume(ConsumeArgs),
    /// Push messages onto a list queue (pipelined LPUSH), for tests and load.
    ///
    /// Messages are pushed in order with LPUSH, so a consumer popping from the right
    /// (BRPOP, LMPOP RIGHT, `ringq consume`) receives them in the same order. Every reply
    /// is checked. A one-line summary goes to stderr at the end, with progress while it
    /// runs when stderr is a terminal.
    ///
    /// Example: ringq produce --queue jobs --messages 100000 --size 128 --rate 20000
    Produce(ProduceArgs),
    /// Print messages from pub/sub channels, patterns and shard channels, one per line.
    ///
    /// Pub/sub is at-most-once: what is published while the subscriber is not subscribed
    /// is missed. ringq resubscribes by itself after every reconnect and says so: each gap
    /// (with its start, end and cause) is a warning on stderr. SIGINT/SIGTERM exit 0.
    ///
    /// Example: ringq subscribe --channel news --pattern 'jobs.*' --format json
    Subscribe(SubscribeArgs),
    /// Publish messages to a channel (pipelined PUBLISH), for tests and load.
    ///
    /// Every reply is checked. A summary goes to stderr at the end: messages sent, and how
    /// many subscribers received them (the sum of PUBLISH's replies).
    ///
    /// Example: ringq publish --channel news --messages 100000 --size 16
    Publish(PublishArgs),
    /// Show a reliable-mode queue (messages pending, leased per consumer with the age of
    /// its heartbeat, waiting for a retry, dead) or, with --mode stream, a stream's groups
    /// (lag, pending per consumer, dead).
    ///
    /// A queue or stream that does not exist is shown with zeros (and, for a stream,
    /// "does not exist"), not as an error: a plain list queue shows its length as
    /// pending.
    ///
    /// Example: ringq stats --queue jobs --format json
    Stats(StatsArgs),
    /// List, requeue or purge a reliable-mode queue's or a stream's dead letters ({Q}:dead).
    ///
    /// Example: ringq dead --queue jobs list --count 10 --format json
    Dead(DeadArgs),
    /// Show what io_uring offers on this host, or why ringq cannot use it (exit 1), and
    /// the epoll fallback.
    Probe,
}

/// Where the server is.
#[derive(Args)]
pub struct ServerArgs {
    /// Server URL: redis://[user[:password]@]host[:port][/db], rediss://… for TLS,
    /// unix:///path[?db=N], or the master of a Sentinel set:
    /// redis+sentinel://host1:26379[,host2:26379…]/<master name>[/db] (rediss+sentinel://
    /// for TLS), or a Redis/Valkey Cluster: redis+cluster://host1:port[,host2:port…][/db]
    /// (rediss+cluster:// for TLS; one node is enough) (default: $RINGQ_URL, else
    /// redis://127.0.0.1:6379). Percent-encode special
    /// characters in the credentials. A password in a URL on the command line is visible
    /// to `ps` and kept in shell history: prefer --password-file, $RINGQ_PASSWORD, or the
    /// URL in $RINGQ_URL.
    #[arg(
        long,
        value_name = "URL",
        env = "RINGQ_URL",
        hide_env_values = true,
        default_value = DEFAULT_URL
    )]
    pub url: String,

    /// Read the password from FILE (its first line; a trailing newline is not part of
    /// it) instead of the URL. $RINGQ_PASSWORD does the same from the environment; the
    /// file wins over it, and both win over a password in the URL.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<std::path::PathBuf>,

    /// With a redis+sentinel:// URL: read the sentinels' own password from FILE (its
    /// first line); $RINGQ_SENTINEL_PASSWORD does the same. The URL's credentials are the
    /// data nodes'.
    #[arg(long, value_name = "FILE")]
    pub sentinel_password_file: Option<std::path::PathBuf>,

    /// With a rediss:// URL: trust the CA certificates in FILE (PEM) instead of the
    /// system's roots.
    #[arg(long, value_name = "FILE")]
    pub tls_ca_cert: Option<std::path::PathBuf>,

    /// With a rediss:// URL: present this client certificate (PEM) for mutual TLS; needs
    /// --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,

    /// With a rediss:// URL: do not verify the server's certificate. For test set-ups
    /// only: anyone on the path can read and change the traffic (a warning says so at
    /// every start).
    #[arg(long)]
    pub tls_insecure: bool,
}

impl std::fmt::Debug for ServerArgs {
    /// Never shows the password the URL may carry.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerArgs")
            .field(
                "url",
                &ringq::ConnectionInfo::parse(&self.url)
                    .map_or_else(|_| "<invalid>".to_owned(), |i| format!("{i}")),
            )
            .field("password_file", &self.password_file)
            .field("sentinel_password_file", &self.sentinel_password_file)
            .field("tls_ca_cert", &self.tls_ca_cert)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("tls_insecure", &self.tls_insecure)
            .finish()
    }
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// Serve the engine's metrics at `http://ADDR/metrics` in the Prometheus (OpenMetrics)
    /// text format while it runs, and nothing else; it binds only the address given
    /// (`127.0.0.1:9464` for this host only). Names: see `ringq::metrics`.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// A list to pop from; repeat for several. Every pop names all of a connection's
    /// queues in a rotating order, so a busy queue cannot starve the others.
    #[arg(long = "queue", value_name = "Q", required = true)]
    pub queues: Vec<String>,

    /// Delivery mode: `pop` (at-most-once), `reliable` (at-least-once: each message is
    /// leased into {Q}:processing:ID and acknowledged only after its line is written and
    /// stdout flushed; needs --consumer-id) or `stream` (a consumer of a Redis Streams
    /// group over the --queue streams, acknowledged the same way; needs --group and
    /// --consumer-id), or `kombu` (Kombu/Celery queues, at-least-once with Kombu's own
    /// unacked records, each message acknowledged once its body is printed; needs
    /// --consumer-id).
    #[arg(long, value_enum, default_value_t = Mode::Pop)]
    pub mode: Mode,

    /// Kombu mode: Kombu's visibility_timeout, in milliseconds (at least 1000, at most a
    /// day; default 3600000, Kombu's own): a record older than this is restored by any
    /// Kombu worker's restore_visible. Every worker of the queue must use the same.
    #[arg(long, value_name = "MS", value_parser = lease_ms)]
    pub visibility_timeout_ms: Option<u64>,

    /// Stream mode: the consumer group (created with MKSTREAM when missing).
    #[arg(long, value_name = "G")]
    pub group: Option<String>,

    /// Stream mode: where a group that does not exist yet starts: `new` or `$` (entries
    /// added from now on, the default), `start` or `0` (every entry), or an entry id
    /// (`MS` or `MS-SEQ`, as XADD returns them: entries after it).
    #[arg(long, value_name = "new|start|ID", value_parser = start_id)]
    pub from: Option<String>,

    /// Stream mode: only entries whose `tag` field is one of these (`TagA || TagB`; `*`
    /// is everything); the others are acknowledged without being printed, and counted
    /// on stderr at exit. A tag is one word: no spaces, `|`, `(`, `)`, `&` or `!`.
    #[arg(long, value_name = "EXPR", value_parser = tag_expression)]
    pub tag: Option<String>,

    /// Reliable and stream modes: most deliveries of one message before it goes to the
    /// dead list (a message whose line cannot be written is retried).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_retries: Option<u32>,

    /// Reliable and stream modes: how long a consumer that stopped (killed, frozen, cut
    /// off) keeps its messages before another consumer takes them back, in milliseconds
    /// (at least 1000, at most 86400000 — a day: a crashed consumer's messages wait that
    /// long; default 30000).
    #[arg(long, value_name = "MS", value_parser = lease_ms)]
    pub lease_ms: Option<u64>,

    /// Exit 0 after exactly N messages. No more than N are popped: the rest stay queued.
    #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = count)]
    pub count: Option<u64>,

    /// Most messages one pop asks for (the COUNT of LMPOP/BLMPOP).
    #[arg(long, value_name = "B", default_value_t = 128,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,

    /// Most messages in flight at once (popped or asked for, not yet printed). At least
    /// the number of connections that own queues: each needs credit to wait on its queues.
    #[arg(long, value_name = "P", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub prefetch: u32,

    /// Consumer identity: 1 to 200 printable ASCII characters, no spaces (what Redis
    /// accepts in a connection name). Names the connections (CLIENT SETNAME
    /// ID-s<shard>-c<n>); the reliable and stream modes key their leased lists and
    /// group consumers by it.
    #[arg(long, value_name = "ID", value_parser = consumer_id)]
    pub consumer_id: Option<String>,

    /// Output format. `raw`: the payload bytes as they are, then a newline (a payload
    /// containing newlines spans lines; use json for those). `json`: one object per line,
    /// {"queue":..,"payload":..,"deliveries":..}; a payload that is not valid UTF-8 has
    /// U+FFFD in `payload` and its exact bytes in an added `payload_base64` field.
    #[arg(long, value_enum, default_value_t = Format::Raw)]
    pub format: Format,

    /// Pop commands: `adaptive` (LMPOP COUNT while there is backlog, BLMPOP when dry),
    /// `single` (BRPOP, one message per pop), `batch` (always BLMPOP COUNT). Servers older
    /// than Redis 7 get BRPOP whatever the choice.
    #[arg(long, value_enum, default_value_t = Strategy::Adaptive)]
    pub strategy: Strategy,

    /// Shard threads, each with its own io_uring, pinned to a core unless --no-pin.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub shards: u16,

    /// Connections per shard. Queues are spread over all connections; each queue is popped
    /// by exactly one, which keeps its messages in order.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub connections: u16,

    /// How long a blocking pop waits on the server, in milliseconds (at most 86400000, a
    /// day). A stop ends blocked pops at once with CLIENT UNBLOCK where the server allows.
    #[arg(long, value_name = "MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=MAX_BLOCK_TIMEOUT_MS))]
    pub block_timeout_ms: u64,

    /// Extra time past the block timeout before a blocking pop's reply counts as overdue,
    /// in milliseconds. A connection with an overdue reply is replaced at once and kept
    /// open to deliver its late replies, so a hung server loses nothing when it resumes.
    #[arg(long, value_name = "MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..=MAX_BLOCK_TIMEOUT_MS))]
    pub reply_grace_ms: u64,

    /// How long a non-blocking command (LMPOP, PING) may take before its reply counts as
    /// overdue, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=MAX_BLOCK_TIMEOUT_MS))]
    pub reply_timeout_ms: u64,

    /// Print on N worker threads instead of the shard threads. Without --orderly, lines of
    /// one queue may come out of order.
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,

    /// With --workers: all messages of one queue go to one worker, so each queue's lines
    /// keep their order.
    #[arg(long, requires = "workers")]
    pub orderly: bool,

    /// Do not pin shard threads to cores (for several consumers on one host).
    #[arg(long)]
    pub no_pin: bool,

    /// I/O backend: io_uring where it works, else epoll with a warning (auto, the
    /// default; also RINGQ_BACKEND), or one of them only.
    #[arg(long, value_enum)]
    pub backend: Option<BackendArg>,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("payload").args(["size", "seq"]))]
pub struct ProduceArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// The list to push onto (with --stream: the stream to XADD to).
    #[arg(long, value_name = "Q")]
    pub queue: String,

    /// Add entries to a stream (pipelined `XADD Q * payload <p> [tag T]`) instead of
    /// pushing onto a list.
    #[arg(long)]
    pub stream: bool,

    /// With --stream: a `tag` field on every entry (for `consume --mode stream --tag`).
    #[arg(long, value_name = "T", requires = "stream")]
    pub tag: Option<String>,

    /// `list` (plain payloads, the default) or `kombu`: every payload wrapped in Kombu's
    /// JSON envelope (body base64, a fresh delivery tag), which a Python Kombu consumer or
    /// a Celery worker accepts; pushed onto the key of its priority step.
    #[arg(long, value_enum, default_value = "list", conflicts_with = "stream")]
    pub mode: ProduceMode,

    /// With --mode kombu: the message priority, 0 (highest, the default) to 9; it picks
    /// Kombu's key for the queue's step (Q, Q\x06\x163, …6, …9).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=9))]
    pub priority: Option<u8>,

    /// With --mode kombu: Celery protocol 2 task messages for the task NAME, each with one
    /// argument (the sequence number, or the --size payload as a string).
    #[arg(long, value_name = "NAME")]
    pub task: Option<String>,

    /// How many messages to push.
    #[arg(long, value_name = "N")]
    pub messages: u64,

    /// Payloads of S bytes ('x' repeated). Without --size, payloads are sequence numbers.
    #[arg(long, value_name = "S",
          value_parser = clap::value_parser!(u64).range(0..=MAX_PAYLOAD))]
    pub size: Option<u64>,

    /// Payloads are the decimal sequence numbers 0..N-1, so a consumer can check order
    /// and completeness (the default).
    #[arg(long)]
    pub seq: bool,

    /// Push at most R messages per second, paced from the start time (no drift).
    #[arg(long, value_name = "R", value_parser = positive_rate)]
    pub rate: Option<f64>,
}

/// Longest `--block-timeout-ms` (and reply allowance): a day, as the engine's
/// `MAX_BLOCK_TIMEOUT`. Redis refuses timeouts whose milliseconds overflow.
pub const MAX_BLOCK_TIMEOUT_MS: u64 = 86_400_000;

/// Largest payload `--size` accepts: Redis's default proto-max-bulk-len (512 MiB).
pub const MAX_PAYLOAD: u64 = 512 << 20;

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("targets").args(["channel", "pattern", "shard_channel"])
    .required(true).multiple(true))]
pub struct SubscribeArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// Serve the engine's metrics at `http://ADDR/metrics` in the Prometheus (OpenMetrics)
    /// text format while it runs, and nothing else; it binds only the address given
    /// (`127.0.0.1:9464` for this host only). Names: see `ringq::metrics`.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// A channel to SUBSCRIBE to; repeat for several.
    #[arg(long, value_name = "C")]
    pub channel: Vec<String>,

    /// A glob pattern to PSUBSCRIBE to; repeat for several. JSON lines then carry the
    /// pattern as well as the channel.
    #[arg(long, value_name = "P")]
    pub pattern: Vec<String>,

    /// A shard channel to SSUBSCRIBE to (Redis 7.0 or later); repeat for several.
    #[arg(long = "shard-channel", value_name = "C")]
    pub shard_channel: Vec<String>,

    /// Exit 0 after N messages.
    #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = count)]
    pub count: Option<u64>,

    /// Output format: raw payloads, or JSON objects with channel, pattern (when a pattern
    /// matched) and payload (payload_base64 too when it is not UTF-8).
    #[arg(long, value_enum, default_value_t = Format::Raw)]
    pub format: Format,

    /// When stdout is slower than the publishers, keep reading and drop the oldest of up
    /// to N waiting messages (counted, and reported on stderr), instead of the default:
    /// stop reading, so the server holds the messages — and drops the subscriber once its
    /// client-output-buffer-limit pubsub is passed (reported as a gap).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub drop_oldest: Option<u64>,

    /// Messages in flight at once (received, not yet printed).
    #[arg(long, value_name = "P", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub prefetch: u32,

    /// Do not pin the shard thread to a core.
    #[arg(long)]
    pub no_pin: bool,

    /// I/O backend, as for consume.
    #[arg(long, value_enum)]
    pub backend: Option<BackendArg>,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("payload").args(["size", "seq"]))]
pub struct PublishArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// The channel to publish to.
    #[arg(long, value_name = "C")]
    pub channel: String,

    /// Publish to a shard channel (SPUBLISH, Redis 7.0 or later).
    #[arg(long)]
    pub shard: bool,

    /// How many messages to publish.
    #[arg(long, value_name = "N")]
    pub messages: u64,

    /// Payloads of S bytes ('x' repeated). Without --size, payloads are sequence numbers.
    #[arg(long, value_name = "S",
          value_parser = clap::value_parser!(u64).range(0..=MAX_PAYLOAD))]
    pub size: Option<u64>,

    /// Payloads are the decimal sequence numbers 0..N-1 (the default).
    #[arg(long)]
    pub seq: bool,

    /// Publish at most R messages per second, paced from the start time (no drift).
    #[arg(long, value_name = "R", value_parser = positive_rate)]
    pub rate: Option<f64>,
}

/// Delivery mode (see the README's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// BRPOP/LMPOP: at-most-once.
    Pop,
    /// Leases into a leased list, acks by position with one script per batch: at-least-once.
    Reliable,
    /// XREADGROUP/XACK consumer groups: at-least-once.
    Stream,
    /// Kombu/Celery queues (priority steps Q, Q\x06\x163, …), at-least-once with
    /// Kombu's own unacked records: prints each message's decoded body.
    Kombu,
}

/// `stats --mode` and `dead --mode`: the modes that keep state on the server.
/// What `ringq produce` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProduceMode {
    /// Plain payloads, LPUSH.
    List,
    /// Kombu/Celery envelopes, LPUSH onto the priority step's key.
    Kombu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AdminMode {
    /// List queues and their {Q}:* keys.
    Reliable,
    /// Streams, their groups and {S}:dead.
    Stream,
}

/// `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// io_uring where it can be set up, else epoll (one warning says why).
    Auto,
    /// io_uring only.
    IoUring,
    /// epoll only.
    Epoll,
}

impl BackendArg {
    /// The engine's value.
    pub fn engine(self) -> ringq::IoBackend {
        match self {
            BackendArg::Auto => ringq::IoBackend::Auto,
            BackendArg::IoUring => ringq::IoBackend::IoUring,
            BackendArg::Epoll => ringq::IoBackend::Epoll,
        }
    }
}

/// How a message is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// The payload bytes and a newline.
    Raw,
    /// A JSON object per line.
    Json,
}

/// Which pop commands to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Strategy {
    /// LMPOP COUNT while there is backlog, BLMPOP when the queues run dry.
    Adaptive,
    /// BRPOP: one message per pop.
    Single,
    /// Always BLMPOP COUNT.
    Batch,
}

/// `--consumer-id`: what Redis accepts in a connection name (CLIENT SETNAME refuses
/// spaces, newlines and anything outside printable ASCII), checked here so a bad id is a
/// usage error before anything connects.
fn consumer_id(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 200 {
        return Err("must be 1 to 200 characters".into());
    }
    if let Some(c) = s.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "{c:?} is not allowed: use printable ASCII without spaces (letters, digits, and \
             punctuation such as - _ . :), as Redis requires of connection names"
        ));
    }
    Ok(s.to_owned())
}

/// `--count`: a whole number, with a message that says so (clap alone would call `-1` an
/// unexpected argument).
/// `--lease-ms`: 1 s to a day ([`ringq::MAX_LEASE`]), checked here so that a huge value
/// is a usage error that says why, not a failure at run time.
fn lease_ms(s: &str) -> Result<u64, String> {
    let max = ringq::MAX_LEASE.as_millis() as u64;
    match s.trim().parse::<u64>() {
        Ok(ms) if (1000..=max).contains(&ms) => Ok(ms),
        Ok(ms) if ms < 1000 => Err(format!(
            "{ms} ms is too short: the lease is at least 1000 ms (heartbeats go every third of it)"
        )),
        Ok(ms) => Err(format!(
            "{ms} ms is longer than a day ({max} ms): a crashed consumer's messages would \
             wait that long before another consumer took them back"
        )),
        Err(_) => Err(format!("'{s}' is not a number of milliseconds")),
    }
}

fn count(s: &str) -> Result<u64, String> {
    s.trim().parse().map_err(|_| {
        format!("'{s}' is not a number of messages: --count takes a whole number, 0 or more")
    })
}

/// `--from`: what XGROUP CREATE accepts as a start, checked here so a typo is a usage
/// error naming the flag rather than the server's "Invalid stream ID" at run time.
fn start_id(s: &str) -> Result<String, String> {
    let digits = |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
    let ok = matches!(s, "new" | "start" | "$")
        || match s.split_once('-') {
            None => digits(s),
            Some((ms, seq)) => digits(ms) && digits(seq),
        };
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "'{s}' is not a start: use new (or $), start (or 0), or an entry id MS or MS-SEQ \
             such as 1700000000000-0"
        ))
    }
}

/// `--tag`: the grammar `StreamKey::tags` documents — `*`, or tags separated by `||` — where
/// a tag is one word. The engine takes any text (an expression it cannot read becomes a
/// tag no entry has, so every entry would be acknowledged unseen), so the check is here.
fn tag_expression(s: &str) -> Result<String, String> {
    // The engine's own grammar, so the CLI and the library refuse the same expressions.
    ringq::StreamKey::new("")
        .try_tags(s)
        .map(|_| s.to_owned())
        .map_err(|e| {
            format!("{e} (--tag takes `*` or tags separated by `||`, such as 'TagA || TagB')")
        })
}

fn positive_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of messages per second"))?;
    if r.is_finite() && r > 0.0 {
        Ok(r)
    } else {
        Err("the rate must be a positive number of messages per second".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn orderly_needs_workers_and_size_excludes_seq() {
        let e = Cli::try_parse_from(["ringq", "consume", "--queue", "q", "--orderly"]);
        assert!(e.is_err());
        let e = Cli::try_parse_from([
            "ringq",
            "produce",
            "--queue",
            "q",
            "--messages",
            "1",
            "--size",
            "3",
            "--seq",
        ]);
        assert!(e.is_err());
        let e = Cli::try_parse_from(["ringq", "subscribe"]);
        assert!(e.is_err(), "subscribe needs a channel or a pattern");
        let ok = Cli::try_parse_from(["ringq", "subscribe", "--shard-channel", "s"]);
        assert!(ok.is_ok(), "a shard channel alone is enough");
        for bad in ["a b", "é", "tab\there", "", "line\n"] {
            assert!(consumer_id(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(consumer_id("worker-1.eu:a_b"), Ok("worker-1.eu:a_b".into()));
        let e = Cli::try_parse_from([
            "ringq",
            "consume",
            "--queue",
            "q",
            "--block-timeout-ms",
            "18446744073709551615",
        ]);
        assert!(e.is_err(), "a block timeout beyond a day is refused");
        for good in ["new", "start", "$", "0", "1700000000000", "1700000000000-7"] {
            assert_eq!(start_id(good).as_deref(), Ok(good), "--from {good}");
        }
        for bad in ["garbage", "", "1-", "-1", "1-2-3", "12a", "NEW"] {
            assert!(start_id(bad).is_err(), "--from {bad:?} must be refused");
        }
        for good in ["*", "A", "A || B", "A||B", " A ", "order.created || *"] {
            assert!(tag_expression(good).is_ok(), "--tag {good:?}");
        }
        for bad in ["((", "", "A ||", "|| B", "A | B", "A && B", "A B", "!A"] {
            assert!(
                tag_expression(bad).is_err(),
                "--tag {bad:?} must be refused"
            );
        }
        assert!(count("-1")
            .unwrap_err()
            .contains("--count takes a whole number"));
        assert_eq!(count("0"), Ok(0));
        assert!(positive_rate("0").is_err());
        assert!(positive_rate("nan").is_err());
        assert_eq!(positive_rate("2.5"), Ok(2.5));
    }
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// `reliable` (list queues, the default; plain pop-mode queues too) or `stream`
    /// (streams: every group's lag and pending entries, and each consumer's).
    #[arg(long, value_enum, default_value_t = AdminMode::Reliable)]
    pub mode: AdminMode,

    /// A queue to show; repeat for several.
    #[arg(long = "queue", value_name = "Q", required = true)]
    pub queues: Vec<String>,

    /// `text` (a few lines per queue) or `json` (one object per queue per line).
    #[arg(long, value_enum, default_value_t = StatsFormat::Text)]
    pub format: StatsFormat,

    /// Keep watching: depths and rates every SECONDS (default 1), refreshed in place on a
    /// terminal, one line per queue and refresh otherwise (`--format json`: one object),
    /// until interrupted.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "1",
          value_parser = parse_watch)]
    pub watch: Option<std::time::Duration>,
}

/// `--watch SECONDS`: a positive number of seconds (0.1 at least).
fn parse_watch(s: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !(0.1..=3600.0).contains(&secs) {
        return Err(format!("--watch {s}: give 0.1 to 3600 seconds"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// `ringq stats --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatsFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct DeadArgs {
    #[command(flatten)]
    pub server: ServerArgs,

    /// `reliable` ({Q}:dead is a list, the default) or `stream` ({S}:dead is a stream).
    #[arg(long, value_enum, default_value_t = AdminMode::Reliable)]
    pub mode: AdminMode,

    /// The queue whose dead list ({Q}:dead) to work on (before the action).
    #[arg(long, value_name = "Q")]
    pub queue: String,

    #[command(subcommand)]
    pub action: DeadAction,
}

#[derive(Debug, Subcommand)]
pub enum DeadAction {
    /// Print dead letters, newest first: raw payloads, or JSON objects with the payload,
    /// deliveries, when and why it died, and its id.
    List {
        /// At most N entries.
        #[arg(long, value_name = "N", default_value_t = 100,
              allow_hyphen_values = true, value_parser = count)]
        count: u64,
        #[arg(long, value_enum, default_value_t = Format::Raw)]
        format: Format,
    },
    /// Move the oldest N dead letters back to the queue (served next), each with a fresh
    /// delivery count; atomic per message.
    Requeue {
        /// At most N entries (default: all).
        #[arg(long, value_name = "N", allow_hyphen_values = true, value_parser = count)]
        count: Option<u64>,
    },
    /// Delete the dead list.
    Purge,
}

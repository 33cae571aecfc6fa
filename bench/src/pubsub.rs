//! The `pubsub` scenario: one subscriber per client.
//!
//! 1. **Burst.** The parent (its own process) publishes `--messages` messages of
//!    `--size` bytes pipelined as fast as the server takes them, to a subscriber child
//!    that counts until it has all of them or none arrived for a while. Reported:
//!    received, lost, the receive rate and its ratio to the publisher's rate, the
//!    consumer's CPU per message (`wait4`), and the server's CPU per message (`INFO cpu`
//!    before and after the burst).
//! 2. **Latency.** `--rate` messages per second for `--duration` seconds, each stamped with
//!    its intended send time: p50/p99 from the intended time to the handler.
//!
//! On one server the subscriber listens on one channel. With `--cluster` (a private
//! 3-primary cluster, or `--url redis+cluster://…`) it listens on `--queues` *sharded*
//! channels (`SSUBSCRIBE`, at least one per primary), and the parent publishes with
//! `SPUBLISH` from one thread per primary, each to the channels its primary serves; the
//! server CPU is summed over the primaries. ringq's listen mode and redis-rs's cluster
//! client (RESP3 pushes) are measured on the same cluster in the same run.
//!
//! JSON: `{"scenario": "pubsub" | "pubsub-cluster", "clients": [{"name", "messages",
//! "seconds", "msgs_per_sec", "cpu_us_per_msg", "p50_us", "p99_us", "p999_us", "max_us",
//! "published", "lost", "publisher_msgs_per_sec", "server_cpu_us_per_msg"}]}` —
//! `messages` is what was received in the burst.

use serde::Serialize;

use crate::child::{self, ChildOutcome};
use crate::cli::{Cli, ClientKind};
use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::load::{self, Push, Schedule};
use crate::noise::measured_on;
use crate::progress;
use crate::report::{join_notes, opt, verdict, write_clients_json, Table};
use crate::server::Broker;
use crate::spec::ChildSpec;

const CHANNEL: &str = "ringq-bench:channel";

/// One client's figures.
#[derive(Debug, Clone, Serialize)]
struct Row {
    name: String,
    /// Received in the burst.
    messages: u64,
    seconds: f64,
    msgs_per_sec: f64,
    cpu_us_per_msg: f64,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    p999_us: Option<f64>,
    max_us: Option<f64>,
    published: u64,
    lost: u64,
    publisher_msgs_per_sec: f64,
    server_cpu_us_per_msg: Option<f64>,
    /// ringq: the engine's system calls and completions per message received (the
    /// table and the connections sweep; not in the JSON contract's rows).
    #[serde(skip)]
    syscalls_per_msg: Option<f64>,
    #[serde(skip)]
    completions_per_msg: Option<f64>,
}

struct Outcome {
    kind: ClientKind,
    row: std::result::Result<Row, String>,
    note: Option<String>,
}

/// Where the scenario publishes: one server's channel, or a cluster's sharded channels.
enum Target {
    One(Broker),
    Cluster(Cluster),
}

impl Target {
    fn label(&self, channels: usize) -> String {
        match self {
            Self::One(b) if channels > 1 => format!(
                "fan-in: one subscriber on {channels} channels over {channels} connections \
                 (redis-rs: one connection), one publisher round-robin; {}",
                b.label()
            ),
            Self::One(b) => format!("one subscriber on one channel; {}", b.label()),
            Self::Cluster(c) => format!(
                "one subscriber on sharded channels over {} primaries (SSUBSCRIBE; SPUBLISH \
                 to each owner); {}",
                c.primaries(),
                if c.is_embedded() {
                    "private cluster (no replicas)"
                } else {
                    "--url"
                }
            ),
        }
    }

    /// The channels subscribed to.
    fn channels(&self, cli: &Cli) -> Vec<String> {
        match self {
            // Fan-in: a channel per subscriber connection.
            Self::One(_) if cli.connections > 1 => (0..cli.connections)
                .map(|i| format!("{CHANNEL}:{i}"))
                .collect(),
            Self::One(_) => vec![CHANNEL.to_owned()],
            Self::Cluster(c) => c.names("ringq-bench:ch", cli.queues),
        }
    }

    /// A subscriber child's spec for `kind` on `channels`.
    fn spec(&self, cli: &Cli, kind: ClientKind, channels: &[String]) -> ChildSpec {
        let mut spec = match self {
            Self::One(b) if channels.len() > 1 => ChildSpec::base(cli, b, channels, kind),
            Self::One(b) => ChildSpec::base(cli, b, &[], kind),
            Self::Cluster(c) => {
                let mut s = ChildSpec::for_url(cli, c.url(), channels, kind);
                s.sharded = true;
                s
            }
        };
        spec.channel = channels.first().cloned();
        spec.shards = 1;
        spec
    }

    fn cpu_seconds(&self) -> Result<f64> {
        match self {
            Self::One(b) => b.cpu_seconds(),
            Self::Cluster(c) => c.cpu_seconds(),
        }
    }

    fn server_pids(&self) -> Vec<u32> {
        match self {
            Self::One(b) => b.server_pid().into_iter().collect(),
            Self::Cluster(c) => c.server_pids(),
        }
    }

    /// `(URL, command, its channels)` per publishing connection: one, or one per primary.
    fn publishers(&self, channels: &[String]) -> Vec<(String, Push, Vec<String>)> {
        match self {
            Self::One(b) => vec![(b.url.clone(), Push::Publish, channels.to_vec())],
            Self::Cluster(c) => c
                .by_node(channels)
                .into_iter()
                .filter(|(_, mine)| !mine.is_empty())
                .map(|(url, mine)| (url.to_owned(), Push::Spublish, mine))
                .collect(),
        }
    }

    /// Publishes `n` messages pipelined at full speed, one thread per publisher; returns
    /// the seconds until the last reply and the receivers the replies counted.
    fn burst(&self, channels: &[String], n: u64, size: usize) -> Result<(f64, u64)> {
        let publishers = self.publishers(channels);
        let p = publishers.len() as u64;
        std::thread::scope(|s| {
            let runs: Vec<_> = publishers
                .iter()
                .enumerate()
                .map(|(i, (url, push, mine))| {
                    let share = n / p + u64::from((i as u64) < n % p);
                    s.spawn(move || load::publish_burst(url, *push, mine, share, size))
                })
                .collect();
            let mut out = (0.0f64, 0u64);
            for r in runs {
                let (secs, receivers) = r
                    .join()
                    .unwrap_or_else(|_| Err(Error::new("a publisher panicked")))?;
                out = (out.0.max(secs), out.1 + receivers);
            }
            Ok(out)
        })
    }

    /// Publishes `count` messages at `rate` in total, each stamped with its intended
    /// time, the publishers sharing one schedule.
    fn paced(
        &self,
        channels: &[String],
        rate: u32,
        count: u64,
        size: usize,
        pb: &indicatif::ProgressBar,
    ) -> Result<()> {
        let publishers = self.publishers(channels);
        let stride = publishers.len() as u64;
        let start_ns = crate::latency::mono_ns() + 1_000_000;
        std::thread::scope(|s| {
            let runs: Vec<_> = publishers
                .iter()
                .enumerate()
                .map(|(i, (url, push, mine))| {
                    let sched = Schedule {
                        rate,
                        count,
                        start_ns,
                        stride,
                        offset: i as u64,
                        series: false,
                    };
                    s.spawn(move || load::produce_paced(*push, url, mine, sched, size, pb))
                })
                .collect();
            for r in runs {
                r.join()
                    .unwrap_or_else(|_| Err(Error::new("a publisher panicked")))?;
            }
            Ok(())
        })
    }
}

/// Runs the scenario, prints the table, writes `--json`. `cluster`: on a Redis Cluster's
/// sharded channels.
///
/// # Errors
/// A server that cannot be started or reached, or an output file that cannot be written.
pub fn run(cli: &Cli, cluster: bool) -> Result<()> {
    if cli.tls {
        return Err(Error::new(
            "--tls applies to the drain and latency scenarios (this one runs over plaintext)",
        ));
    }
    let target = if cluster {
        Target::Cluster(Cluster::open(cli.url.as_deref())?)
    } else {
        Target::One(Broker::open(cli.url.as_deref())?)
    };
    if cli.connection_counts.len() > 1 {
        if cluster {
            return Err(Error::new(
                "the connections sweep runs on one server, not --cluster",
            ));
        }
        return crate::connsweep::run(cli, "pubsub", |connections, _| {
            let mut c = cli.clone();
            c.connections = connections;
            let (title, results) = run_once(&c, &target);
            let rows = results
                .iter()
                .filter_map(|r| r.row.as_ref().ok())
                .map(|r| crate::connsweep::SweepRow {
                    name: r.name.clone(),
                    msgs_per_sec: r.msgs_per_sec,
                    cpu_us_per_msg: r.cpu_us_per_msg,
                    syscalls_per_msg: r.syscalls_per_msg,
                    completions_per_msg: r.completions_per_msg,
                })
                .collect();
            Ok((title, rows))
        });
    }
    let (_, results) = run_once(cli, &target);
    let ok: Vec<&Row> = results.iter().filter_map(|r| r.row.as_ref().ok()).collect();
    let scenario = if cluster { "pubsub-cluster" } else { "pubsub" };
    write_clients_json(cli.json.as_deref(), scenario, &ok)
}

/// One run of every client on `target`; prints its table and returns its title and
/// results.
fn run_once(cli: &Cli, target: &Target) -> (String, Vec<Outcome>) {
    let n = cli.messages.max(1);
    let rate = cli.rate.max(1);
    let count = ((f64::from(rate) * cli.duration().as_secs_f64()).round() as u64).max(1);
    let channels = target.channels(cli);
    let title = format!(
        "pubsub: a burst of {n} messages of {} B published pipelined at full speed, then \
         {rate} msg/s for {:.1} s; {}",
        cli.size,
        cli.duration().as_secs_f64(),
        target.label(channels.len())
    );
    eprintln!("{title}");
    let mut results = Vec::new();
    for &kind in &cli.clients {
        if !matches!(
            kind,
            ClientKind::Ringq | ClientKind::RingqEpoll | ClientKind::RedisRs
        ) {
            eprintln!(
                "ringq-bench: {} has no pub/sub consumer; skipped in pubsub",
                kind.name()
            );
            continue;
        }
        results.push(one_client(cli, target, &channels, kind, n, rate, count));
    }
    print!("{}", render(&title, &results));
    (title, results)
}

fn one_client(
    cli: &Cli,
    target: &Target,
    channels: &[String],
    kind: ClientKind,
    n: u64,
    rate: u32,
    count: u64,
) -> Outcome {
    // 1. The burst.
    let mut spec = target.spec(cli, kind, channels);
    spec.expected = n;
    spec.deadline_secs = 60.0 + n as f64 / 20_000.0;
    let server_before = target.cpu_seconds().ok();
    let mut published = (0.0, 0);
    eprintln!(
        "publishing {n} messages to {}'s subscriber ...",
        kind.name()
    );
    let (burst, noise) = measured_on(target.server_pids(), || {
        child::run(&spec, || {
            published = target.burst(channels, n, cli.size)?;
            Ok(())
        })
    });
    let server_after = target.cpu_seconds().ok();
    let burst = match burst {
        Ok(b) => b,
        Err(e) => {
            eprintln!("ringq-bench: {}: {e}", kind.name());
            return Outcome {
                kind,
                row: Err(e.to_string()),
                note: noise,
            };
        }
    };
    // 2. Latency at a fixed rate.
    let mut spec = target.spec(cli, kind, channels);
    spec.expected = count;
    spec.latency = true;
    spec.deadline_secs = cli.duration().as_secs_f64() + 30.0;
    let pb = progress::bar(
        count,
        &format!("publishing at {rate}/s for {}", kind.name()),
    );
    let size = cli.size.max(crate::latency::STAMP_LEN);
    let (lat, lat_noise) = measured_on(target.server_pids(), || {
        child::run(&spec, || target.paced(channels, rate, count, size, &pb))
    });
    pb.finish_and_clear();
    let ChildOutcome { report, cpu } = burst;
    let received = report.messages;
    let seconds = report.seconds.max(1e-9);
    let server_cpu = match (server_before, server_after) {
        (Some(a), Some(b)) => Some((b - a).max(0.0) * 1e6 / n as f64),
        _ => None,
    };
    let (latency, lat_note) = match lat {
        Ok(o) => (o.report.latency, o.report.note),
        Err(e) => (None, Some(format!("latency run failed: {e}"))),
    };
    let row = Row {
        name: kind.name().to_owned(),
        messages: received,
        seconds: report.seconds,
        msgs_per_sec: received as f64 / seconds,
        cpu_us_per_msg: cpu.as_secs_f64() * 1e6 / received.max(1) as f64,
        p50_us: latency.as_ref().map(|l| l.p50_us),
        p99_us: latency.as_ref().map(|l| l.p99_us),
        p999_us: latency.as_ref().map(|l| l.p999_us),
        max_us: latency.as_ref().map(|l| l.max_us),
        published: n,
        lost: n.saturating_sub(received),
        publisher_msgs_per_sec: n as f64 / published.0.max(1e-9),
        server_cpu_us_per_msg: server_cpu,
        syscalls_per_msg: report.io.map(|(s, _)| s as f64 / received.max(1) as f64),
        completions_per_msg: report.io.map(|(_, c)| c as f64 / received.max(1) as f64),
    };
    let note = [report.note, lat_note, noise, lat_noise]
        .into_iter()
        .fold(None, join_notes);
    Outcome {
        kind,
        row: Ok(row),
        note,
    }
}

fn render(title: &str, results: &[Outcome]) -> String {
    let mut table = Table::new(
        title.to_owned(),
        vec![
            "client",
            "published",
            "received",
            "lost",
            "msgs/s",
            "÷ publisher",
            "CPU µs/msg",
            "server CPU µs/msg",
            "syscalls/msg",
            "p50 µs",
            "p99 µs",
            "CPU ÷ redis-rs",
        ],
    );
    let redis_cpu = results
        .iter()
        .find(|r| r.kind == ClientKind::RedisRs)
        .and_then(|r| r.row.as_ref().ok())
        .map(|r| r.cpu_us_per_msg);
    for r in results {
        table.note(r.kind.name(), r.note.as_deref());
        match &r.row {
            Ok(row) => table.row(vec![
                row.name.clone(),
                row.published.to_string(),
                row.messages.to_string(),
                row.lost.to_string(),
                format!("{:.0}", row.msgs_per_sec),
                format!(
                    "{:.2}×",
                    row.msgs_per_sec / row.publisher_msgs_per_sec.max(1e-9)
                ),
                format!("{:.3}", row.cpu_us_per_msg),
                opt(row.server_cpu_us_per_msg, 3),
                opt(row.syscalls_per_msg, 4),
                opt(row.p50_us, 1),
                opt(row.p99_us, 1),
                opt(redis_cpu.map(|c| row.cpu_us_per_msg / c.max(1e-12)), 2),
            ]),
            Err(why) => table.failed(r.kind.name(), why),
        }
    }
    if let Some(ringq) = results
        .iter()
        .find(|r| r.kind == ClientKind::Ringq)
        .and_then(|r| r.row.as_ref().ok())
    {
        let t = &mut table.targets;
        let ratio = ringq.msgs_per_sec / ringq.publisher_msgs_per_sec.max(1e-9);
        t.push(format!(
            "every message received: {} of {} — {}",
            ringq.messages,
            ringq.published,
            verdict(ringq.lost == 0)
        ));
        t.push(format!(
            "receive rate ÷ publisher's: {ratio:.2}× (target ≥ 0.95×) — {}",
            verdict(ratio >= 0.95)
        ));
        t.push(format!(
            "consumer CPU: {:.3} µs/msg (target ≤ 0.5) — {}",
            ringq.cpu_us_per_msg,
            verdict(ringq.cpu_us_per_msg <= 0.5)
        ));
        t.push(match redis_cpu {
            Some(c) => {
                let r = ringq.cpu_us_per_msg / c.max(1e-12);
                format!(
                    "consumer CPU ÷ redis-rs: {r:.2}× (target ≤ 0.3×) — {}",
                    verdict(r <= 0.3)
                )
            }
            None => "consumer CPU ÷ redis-rs: not measured (redis-rs did not run)".into(),
        });
    }
    table.render()
}

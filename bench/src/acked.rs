//! The at-least-once scenarios: drain N messages *with acks*, one client after another on
//! the same server.
//!
//! - `reliable`: ringq's reliable mode (lease script, batched settle script), ringq's own
//!   pop mode (the at-most-once ceiling), and redis-rs speaking the same protocol the
//!   usual way (pipelined LMOVE into `{q}:processing:<id>`, LREM per message).
//! - `stream`: one stream through a consumer group — ringq's stream mode, redis-rs
//!   (XREADGROUP COUNT, decoded into owned values, then XACK), and the limit client
//!   (pipelined XREADGROUP whose replies are walked only for the ids to XACK).
//!
//! Besides the consumer's CPU, each row has the *server's* CPU per message, from `INFO
//! cpu` before and after the drain: at-least-once costs the broker, and that cost decides
//! how far it scales.
//!
//! JSON: `{"scenario", "clients": [{"name", "messages", "seconds", "msgs_per_sec",
//! "cpu_us_per_msg", "server_cpu_us_per_msg", "left"}]}` (`left`: messages still queued,
//! leased or pending after the run; 0 unless something was lost or left behind).

use serde::Serialize;

use crate::child;
use crate::cli::{Cli, ClientKind};
use crate::cluster::Cluster;
use crate::error::{Error, Result};
use crate::load;
use crate::noise::measured;
use crate::progress;
use crate::report::{join_notes, opt, ratio, verdict, write_file, Table};
use crate::server::{cpu_seconds_of, Broker};
use crate::spec::{ChildSpec, RELIABLE_ID, STREAM_GROUP};
use ringq::envelope::keys;

/// Where the scenario runs: one server, or a cluster (`--cluster`).
enum At {
    One(Broker),
    Cluster(Cluster),
}

impl At {
    /// The URL the consumers connect to.
    fn url(&self) -> &str {
        match self {
            At::One(b) => &b.url,
            At::Cluster(c) => c.url(),
        }
    }

    /// The URL of the server that holds `key`.
    fn node_url(&self, key: &str) -> &str {
        match self {
            At::One(b) => &b.url,
            At::Cluster(c) => c.node_url(key),
        }
    }

    /// The servers' CPU seconds so far (summed over a cluster's primaries).
    fn cpu_seconds(&self) -> Result<f64> {
        match self {
            At::One(b) => cpu_seconds_of(&b.url),
            At::Cluster(c) => c.cpu_seconds(),
        }
    }
}

/// Which at-least-once scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Reliable,
    Stream,
}

#[derive(Debug, Clone, Serialize)]
struct Row {
    name: String,
    messages: u64,
    seconds: f64,
    msgs_per_sec: f64,
    cpu_us_per_msg: f64,
    server_cpu_us_per_msg: Option<f64>,
    left: u64,
}

struct Outcome {
    row: std::result::Result<Row, String>,
    name: &'static str,
    note: Option<String>,
}

/// Runs the scenario, prints its table, writes `--json`.
///
/// # Errors
/// Bad options, a server that cannot be started or reached, an output file that cannot be
/// written. A client that fails is a row in the table.
pub fn run(cli: &Cli, cluster: bool, flavor: Flavor) -> Result<()> {
    if cli.clients.is_empty() {
        return Err(Error::new("--clients names no client"));
    }
    if cli.tls {
        return Err(Error::new(
            "--tls applies to the drain and latency scenarios (this one runs over plaintext)",
        ));
    }
    let at = if cluster {
        At::Cluster(Cluster::open(cli.url.as_deref())?)
    } else {
        let broker = Broker::open(cli.url.as_deref())?;
        if broker.redis_version < (6, 2, 0) {
            return Err(Error::new(format!(
                "{} has no LMOVE/BLMOVE or RPOP with a count (Redis 6.2+): reliable mode \
                 needs them",
                broker.version
            )));
        }
        At::One(broker)
    };
    let stream = flavor == Flavor::Stream;
    // One source; on a cluster one per primary.
    let queues = match &at {
        At::One(_) => vec![if stream {
            "ringq-bench:s"
        } else {
            "ringq-bench:rq"
        }
        .to_owned()],
        At::Cluster(c) => c.queues(c.primaries()),
    };
    // Every key a run may leave behind, by source: the source, ringq's leased list,
    // lease hash, heartbeat and sets, and the redis-rs baseline's processing list.
    let keys_of = |q: &str| -> Vec<String> {
        let k = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
        let (qb, id) = (q.as_bytes(), RELIABLE_ID.as_bytes());
        vec![
            q.to_owned(),
            k(keys::processing(qb, id)),
            format!("{{{q}}}:processing:{RELIABLE_ID}"),
            k(keys::lease(qb, id)),
            k(keys::heartbeat(qb, id)),
            k(keys::consumers(qb)),
            k(keys::sweep(qb)),
            k(keys::retry(qb)),
        ]
    };
    let n = cli.messages.max(1);
    let per = (n / queues.len() as u64).max(1);
    let n = per * queues.len() as u64;
    let what = match &at {
        At::One(b) => format!(
            "in 1 {}; {}",
            if stream { "stream" } else { "queue" },
            b.label()
        ),
        At::Cluster(c) => format!(
            "in {} {}, one per primary of a {}cluster",
            queues.len(),
            if stream { "streams" } else { "queues" },
            if c.is_embedded() { "private " } else { "" }
        ),
    };
    let title = if stream {
        format!(
            "stream (consumer group, acked): {n} entries of {} B {what}; batch {}, pipeline {}",
            cli.size, cli.batch, cli.pipeline,
        )
    } else {
        format!(
            "reliable (at-least-once, acked): {n} messages of {} B {what}; batch {}, pipeline {}",
            cli.size, cli.batch, cli.pipeline,
        )
    };
    eprintln!("{title}");
    let mut runs: Vec<(ClientKind, bool, &'static str)> = Vec::new();
    for &kind in &cli.clients {
        if matches!(at, At::Cluster(_)) && kind == ClientKind::Limit {
            eprintln!("ringq-bench: limit has no cluster client; skipped with --cluster");
            continue;
        }
        match (kind, stream) {
            (ClientKind::Ringq, false) => {
                runs.push((kind, true, "ringq reliable"));
                runs.push((kind, false, "ringq pop (at-most-once)"));
            }
            (ClientKind::RingqEpoll, false) => runs.push((kind, true, "ringq-epoll reliable")),
            (ClientKind::RedisRs, false) => runs.push((kind, true, "redis-rs LMOVE+LREM")),
            (ClientKind::Ringq, true) => runs.push((kind, true, "ringq stream")),
            (ClientKind::RingqEpoll, true) => runs.push((kind, true, "ringq-epoll stream")),
            (ClientKind::RedisRs, true) => runs.push((kind, true, "redis-rs XREADGROUP+XACK")),
            (ClientKind::Limit, true) => runs.push((kind, true, "limit")),
            (other, _) => eprintln!(
                "ringq-bench: {} has no at-least-once consumer in this scenario; skipped",
                other.name()
            ),
        }
    }
    let mut results = Vec::new();
    let delete_all = || -> Result<()> {
        for q in &queues {
            load::delete(at.node_url(q), &keys_of(q))?;
        }
        Ok(())
    };
    for (kind, reliable, name) in runs {
        delete_all()?;
        let pb = progress::bar(n, &format!("filling for {name}"));
        for q in &queues {
            let url = at.node_url(q);
            if stream {
                load::fill_stream(url, q, STREAM_GROUP, per, cli.size, &pb)?;
            } else {
                load::fill(url, std::slice::from_ref(q), per, cli.size, &pb)?;
            }
        }
        pb.finish_and_clear();
        let mut spec = ChildSpec::for_url(cli, at.url(), &queues, kind);
        spec.reliable = reliable && !stream;
        spec.stream = stream;
        spec.expected = n;
        spec.shards = 1;
        spec.connections = queues.len();
        spec.deadline_secs = 60.0 + n as f64 / 2000.0;
        eprintln!("draining: {name} ...");
        let before = at.cpu_seconds()?;
        let (outcome, noise) = match &at {
            At::One(broker) => measured(broker, || child::run(&spec, || Ok(()))),
            At::Cluster(_) => (child::run(&spec, || Ok(())), None),
        };
        let after = at.cpu_seconds()?;
        let mut left = 0;
        for q in &queues {
            let url = at.node_url(q);
            left += if stream {
                load::stream_left(url, q, STREAM_GROUP)?
            } else {
                // Still queued, or leased by ringq or the baseline.
                load::total_len(url, &keys_of(q)[..3])?
            };
        }
        let note = (left > 0).then(|| format!("{left} messages left queued, leased or pending"));
        let note = join_notes(note, noise);
        match outcome {
            Ok(child::ChildOutcome { report, cpu }) => {
                let messages = report.messages;
                results.push(Outcome {
                    row: Ok(Row {
                        name: name.to_owned(),
                        messages,
                        seconds: report.seconds,
                        msgs_per_sec: messages as f64 / report.seconds.max(1e-9),
                        cpu_us_per_msg: cpu.as_secs_f64() * 1e6 / messages.max(1) as f64,
                        server_cpu_us_per_msg: Some((after - before).max(0.0) * 1e6 / n as f64),
                        left,
                    }),
                    name,
                    note: join_notes(note, report.note),
                });
            }
            Err(e) => {
                eprintln!("ringq-bench: {name}: {e}");
                results.push(Outcome {
                    row: Err(e.to_string()),
                    name,
                    note,
                });
            }
        }
    }
    let _ = delete_all();
    print!("{}", render(&title, &results, flavor));
    if let Some(path) = &cli.json {
        let json = serde_json::json!({
            "scenario": if stream { "stream" } else { "reliable" },
            "clients": results.iter().filter_map(|r| r.row.as_ref().ok()).collect::<Vec<_>>(),
        });
        write_file(path, &serde_json::to_string_pretty(&json)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn render(title: &str, results: &[Outcome], flavor: Flavor) -> String {
    let find = |prefix: &str| {
        results
            .iter()
            .find(|r| r.name.starts_with(prefix))
            .and_then(|r| r.row.as_ref().ok())
    };
    let baseline = find("redis-rs");
    let mut table = Table::new(
        title.to_owned(),
        vec![
            "client",
            "messages",
            "seconds",
            "msgs/s",
            "CPU µs/msg",
            "server CPU µs/msg",
            "msgs/s ÷ redis-rs",
            "CPU ÷ redis-rs",
            "server CPU ÷ redis-rs",
            "left",
        ],
    );
    for r in results {
        table.note(r.name, r.note.as_deref());
        match &r.row {
            Ok(row) => table.row(vec![
                row.name.clone(),
                row.messages.to_string(),
                format!("{:.3}", row.seconds),
                format!("{:.0}", row.msgs_per_sec),
                format!("{:.3}", row.cpu_us_per_msg),
                opt(row.server_cpu_us_per_msg, 3),
                ratio(Some(row.msgs_per_sec), baseline.map(|b| b.msgs_per_sec)),
                ratio(Some(row.cpu_us_per_msg), baseline.map(|b| b.cpu_us_per_msg)),
                ratio(
                    row.server_cpu_us_per_msg,
                    baseline.and_then(|b| b.server_cpu_us_per_msg),
                ),
                row.left.to_string(),
            ]),
            Err(why) => table.failed(r.name, why),
        }
    }
    let t = &mut table.targets;
    match flavor {
        Flavor::Stream => {
            if let Some(ringq) = find("ringq stream") {
                match find("limit") {
                    Some(l) => {
                        let r = ringq.msgs_per_sec / l.msgs_per_sec.max(1e-9);
                        t.push(format!(
                            "entries/s ÷ limit client: {r:.2}× (target ≥ 0.9×) — {}",
                            verdict(r >= 0.9)
                        ));
                        if let (Some(a), Some(b)) =
                            (ringq.server_cpu_us_per_msg, l.server_cpu_us_per_msg)
                        {
                            t.push(format!(
                                "server CPU per entry: {a:.3} µs against the limit client's {b:.3} (target: no higher) — {}",
                                verdict(a <= b * 1.02)
                            ));
                        }
                    }
                    None => t.push("÷ limit client: not measured (limit did not run)".into()),
                }
                if let Some(b) = baseline {
                    let r = ringq.cpu_us_per_msg / b.cpu_us_per_msg.max(1e-12);
                    t.push(format!(
                        "consumer CPU ÷ redis-rs: {r:.2}× (target ≤ 0.3×) — {}",
                        verdict(r <= 0.3)
                    ));
                }
            }
        }
        Flavor::Reliable => {
            if let Some(ringq) = find("ringq reliable") {
                t.push(format!(
                    "leased and acked: {:.0} msgs/s (target ≥ 1,000,000) — {}",
                    ringq.msgs_per_sec,
                    verdict(ringq.msgs_per_sec >= 1e6)
                ));
                if let Some(cpu) = ringq.server_cpu_us_per_msg {
                    t.push(format!(
                        "server CPU: {cpu:.3} µs/msg (target ≤ 0.15) — {}",
                        verdict(cpu <= 0.15)
                    ));
                }
                if let Some(b) = baseline {
                    let r = ringq.msgs_per_sec / b.msgs_per_sec.max(1e-9);
                    t.push(format!(
                        "reliable ÷ redis-rs LMOVE+LREM: {r:.2}× (target ≥ 2×) — {}",
                        verdict(r >= 2.0)
                    ));
                }
                match find("ringq pop") {
                    Some(p) => {
                        let r = ringq.msgs_per_sec / p.msgs_per_sec.max(1e-9);
                        t.push(format!(
                            "reliable ÷ pop mode, same run: {r:.2}× (target ≥ 0.6×) — {}",
                            verdict(r >= 0.6)
                        ));
                    }
                    None => t.push("reliable ÷ pop mode: not measured (pop did not run)".into()),
                }
            }
        }
    }
    table.render()
}

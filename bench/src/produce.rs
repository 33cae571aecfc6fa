//! The `produce` scenario: is the load tester's producer ever the bottleneck of a broker
//! test? The `load` scenario's own paced producer (`load::produce_paced`: one `LPUSH` per
//! message, each stamped with its intended send time, replies read on another thread) is
//! run with a schedule it can never keep up with, so it sends as fast as the server
//! takes it, on `--producers` connections; then `redis-benchmark -P 64` pushes the same
//! number of messages of the same size (`LPUSH` to a list of ours, its default 50
//! connections) at the same server. Reported: messages a second and the server's CPU per
//! message of each, and their ratio (target ≥ 0.9×).
//!
//! JSON: `{"scenario": "produce", "clients": [{"name", "messages", "seconds",
//! "msgs_per_sec", "server_cpu_us_per_msg"}]}`.

use std::process::Command;
use std::time::Instant;

use serde::Serialize;

use crate::cli::Cli;
use crate::error::{Error, Result};
use crate::latency;
use crate::load::{self, Push, Schedule};
use crate::progress;
use crate::report::{opt, target_line, write_clients_json, Table};
use crate::server::Broker;

/// The list both producers push to (deleted before and after each).
const QUEUE: &str = "ringq-bench:produce";
/// redis-benchmark's pipeline depth and connections (its default), as the issue's
/// reference command runs it.
const RB_PIPELINE: u32 = 64;
const RB_CLIENTS: u32 = 50;

/// One producer's figures.
#[derive(Debug, Clone, Serialize)]
struct Row {
    name: String,
    messages: u64,
    seconds: f64,
    msgs_per_sec: f64,
    server_cpu_us_per_msg: Option<f64>,
}

/// Runs the scenario, prints its table, writes `--json`.
///
/// # Errors
/// Bad options, a server that cannot be started or reached, an output file that cannot
/// be written. A producer that fails is a row in the table.
pub fn run(cli: &Cli) -> Result<()> {
    if cli.tls {
        return Err(Error::new(
            "--tls applies to the drain and latency scenarios",
        ));
    }
    let broker = Broker::open(cli.url.as_deref())?;
    let n = cli.messages.max(1);
    let size = cli.size.max(latency::STAMP_LEN);
    let producers = cli.producers.max(1);
    let title = format!(
        "produce: {n} LPUSHes of {size} B at full speed — ringq-bench's load producer on \
         {producers} connection(s) against redis-benchmark -P {RB_PIPELINE} -c \
         {RB_CLIENTS}; {}",
        broker.label()
    );
    eprintln!("{title}");
    let queue = [QUEUE.to_owned()];
    let ours = measure(&broker, "ringq-bench producer", n, true, || {
        ringq_bench_producer(&broker.url, &queue, n, size, producers)
    });
    let theirs = measure(
        &broker,
        &format!("redis-benchmark -P {RB_PIPELINE}"),
        n,
        false,
        || redis_benchmark(&broker.url, n, size),
    );
    let rows = [ours, theirs];
    print!("{}", render(&title, &rows));
    let ok: Vec<&Row> = rows.iter().filter_map(|r| r.as_ref().ok()).collect();
    write_clients_json(cli.json.as_deref(), "produce", &ok)
}

/// Runs `push` (which returns its seconds) between two server CPU readings, and checks
/// the list then holds all `n` messages (`exact`), or at least `n` (redis-benchmark
/// sends whole pipelines on each of its connections: up to 64 × 50 more).
fn measure(
    broker: &Broker,
    name: &str,
    n: u64,
    exact: bool,
    push: impl FnOnce() -> Result<f64>,
) -> std::result::Result<Row, String> {
    let queue = [QUEUE.to_owned()];
    let run = || -> Result<Row> {
        load::delete(&broker.url, &queue)?;
        eprintln!("producing: {name} ...");
        let before = broker.cpu_seconds().ok();
        let seconds = push()?;
        let after = broker.cpu_seconds().ok();
        let pushed = load::total_len(&broker.url, &queue)?;
        load::delete(&broker.url, &queue)?;
        if pushed < n || (exact && pushed != n) {
            return Err(Error::new(format!(
                "{pushed} messages reached the list, for {n} sent"
            )));
        }
        Ok(Row {
            name: name.to_owned(),
            messages: pushed,
            seconds,
            msgs_per_sec: pushed as f64 / seconds.max(1e-9),
            server_cpu_us_per_msg: before
                .zip(after)
                .map(|(b, a)| (a - b).max(0.0) * 1e6 / pushed as f64),
        })
    };
    run().map_err(|e| {
        eprintln!("ringq-bench: {name}: {e}");
        e.to_string()
    })
}

/// The load scenario's paced producer on `producers` connections sharing one schedule
/// that is always due (the highest rate there is): each sends as fast as its server
/// takes it. Returns the seconds from the first send to the last reply.
fn ringq_bench_producer(
    url: &str,
    queue: &[String],
    n: u64,
    size: usize,
    producers: usize,
) -> Result<f64> {
    let pb = progress::bar(n, "producing at full speed");
    let start_ns = latency::mono_ns();
    let started = Instant::now();
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..producers as u64)
            .map(|offset| {
                let sched = Schedule {
                    rate: u32::MAX,
                    count: n,
                    start_ns,
                    stride: producers as u64,
                    offset,
                    series: false,
                };
                let pb = &pb;
                s.spawn(move || load::produce_paced(Push::Lpush, url, queue, sched, size, pb))
            })
            .collect();
        for r in runs {
            r.join()
                .unwrap_or_else(|_| Err(Error::new("a producer panicked")))?;
        }
        Ok::<_, Error>(())
    })?;
    pb.finish_and_clear();
    Ok(started.elapsed().as_secs_f64())
}

/// `redis-benchmark -P 64 -c 50 -n N LPUSH <our list> <size bytes>` against `url`;
/// returns the seconds it took by its own count (N ÷ its requests per second; the few
/// dozen it sends beyond N to fill its last pipelines are left out).
fn redis_benchmark(url: &str, n: u64, size: usize) -> Result<f64> {
    let binary = std::env::var_os("REDIS_BENCHMARK").unwrap_or_else(|| "redis-benchmark".into());
    let uri = url.replacen("redis+unix://", "unix://", 1);
    let mut cmd = Command::new(&binary);
    match uri.strip_prefix("unix://") {
        Some(path) => cmd.args(["-s", path.split('?').next().unwrap_or(path)]),
        None => cmd.args(["-u", &uri]),
    };
    let payload = "x".repeat(size);
    let out = cmd
        .args(["-P", &RB_PIPELINE.to_string()])
        .args(["-c", &RB_CLIENTS.to_string()])
        .args(["-n", &n.to_string()])
        .args(["--csv", "LPUSH", QUEUE, &payload])
        .output()
        .map_err(|e| {
            Error::io(
                format!(
                    "running {} (Debian's redis-tools has it; scripts/setup.sh installs it, \
                     or set REDIS_BENCHMARK)",
                    binary.to_string_lossy()
                ),
                e,
            )
        })?;
    if !out.status.success() {
        return Err(Error::new(format!(
            "redis-benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // `"test","rps",…`, then `"LPUSH …","<requests per second>",…`.
    let rps = text
        .lines()
        .filter(|l| l.starts_with("\"LPUSH"))
        .filter_map(|l| l.split("\",\"").nth(1))
        .find_map(|v| v.trim_matches('"').parse::<f64>().ok())
        .ok_or_else(|| Error::new(format!("no rate in redis-benchmark's output: {text}")))?;
    Ok(n as f64 / rps.max(1e-9))
}

fn render(title: &str, rows: &[std::result::Result<Row, String>; 2]) -> String {
    let mut t = Table::new(
        title.to_owned(),
        vec![
            "producer",
            "messages",
            "seconds",
            "msgs/s",
            "server CPU µs/msg",
        ],
    );
    let names = ["ringq-bench producer", "redis-benchmark"];
    for (r, name) in rows.iter().zip(names) {
        match r {
            Ok(r) => t.row(vec![
                r.name.clone(),
                r.messages.to_string(),
                format!("{:.2}", r.seconds),
                format!("{:.0}", r.msgs_per_sec),
                opt(r.server_cpu_us_per_msg, 3),
            ]),
            Err(e) => t.failed(name, e),
        }
    }
    let ratio = match rows {
        [Ok(a), Ok(b)] => Some(a.msgs_per_sec / b.msgs_per_sec.max(1e-9)),
        _ => None,
    };
    t.targets.push(target_line(
        "ringq-bench's producer ÷ redis-benchmark's LPUSH rate",
        ratio,
        0.9,
        true,
    ));
    t.render()
}

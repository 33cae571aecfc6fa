//! The parent's side of the list-queue scenarios, `drain` and `latency`: prepare the
//! server for one client, run that client's consumer child (producing in the parent for
//! `latency`), turn its report and CPU time into a row, and move on to the next client on
//! a clean slate.
//!
//! Clients run one after another, never at once: on a small machine they would otherwise
//! compete for the same cores and for the server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::child::{self, ChildOutcome};
use crate::cli::{Cli, ClientKind, PopMode, Scenario};
use crate::error::{Error, Result};
use crate::load;
use crate::noise::measured;
use crate::plot;
use crate::progress;
use crate::report::{self, join_notes, ClientResult, ClientRow, ScenarioReport};
use crate::server::Broker;
use crate::spec::ChildSpec;

/// Runs `drain` or `latency` (the scenario `cli` names), prints its table, writes
/// `--json` (and the plot).
///
/// # Errors
/// Bad options, a server that cannot be started or reached, or an output file that cannot
/// be written. A client that fails is a row in the table, not an error.
pub fn run(cli: &Cli) -> Result<()> {
    if cli.queues == 0 || cli.connections == 0 || cli.shards == 0 {
        return Err(Error::new(
            "--queues, --connections and --shards must be at least 1",
        ));
    }
    if cli.clients.is_empty() {
        return Err(Error::new("--clients names no client"));
    }
    let broker = Broker::open_with(cli.url.as_deref(), cli.tls)?;
    if cli.pop == PopMode::Batch && !broker.has_lmpop {
        return Err(Error::new(format!(
            "{} has no LMPOP/BLMPOP (Redis 7+): use --pop single",
            broker.version
        )));
    }
    let queues: Vec<String> = (0..cli.queues)
        .map(|i| format!("ringq-bench:q{i}"))
        .collect();
    if cli.scenario == Scenario::Latency && !cli.rates.is_empty() {
        let swept = crate::sweep::run(cli, &cli.rates, |rate| {
            let r = latency(cli, &broker, &queues, rate);
            let _ = load::delete(&broker.url, &queues);
            r
        });
        let _ = load::delete(&broker.url, &queues);
        return swept;
    }
    if cli.connection_counts.len() > 1 {
        if cli.scenario != Scenario::Drain {
            return Err(Error::new(
                "a list of --connections (the connections sweep) is for drain and pubsub",
            ));
        }
        let mut used: Vec<String> = Vec::new();
        let swept = crate::connsweep::run(cli, "drain", |connections, nqueues| {
            let mut c = cli.clone();
            c.connections = connections;
            c.queues = nqueues;
            let queues: Vec<String> = (0..nqueues).map(|i| format!("ringq-bench:q{i}")).collect();
            let r = drain(&c, &broker, &queues);
            let _ = load::delete(&broker.url, &queues);
            if queues.len() > used.len() {
                used = queues;
            }
            let r = r?;
            print!("{}", r.render());
            let rows = r
                .results
                .iter()
                .filter_map(|res| res.outcome.as_ref().ok())
                .map(crate::connsweep::SweepRow::from)
                .collect();
            Ok((r.title, rows))
        });
        let _ = load::delete(&broker.url, &used);
        return swept;
    }
    let report = match cli.scenario {
        Scenario::Latency => latency(cli, &broker, &queues, cli.rate),
        _ => drain(cli, &broker, &queues),
    };
    // Leave nothing behind on a shared server, whatever happened.
    let _ = load::delete(&broker.url, &queues);
    let report = report?;
    print!("{}", report.render());
    if let Some(path) = &cli.json {
        report.write_json(path)?;
        eprintln!("wrote {}", path.display());
        let series: Vec<(String, Vec<(f64, f64)>)> = report
            .results
            .iter()
            .filter(|r| r.outcome.is_ok())
            .filter_map(|r| Some((r.kind.name().to_owned(), r.latency.as_ref()?.curve.clone())))
            .collect();
        if !series.is_empty() {
            let svg_path = path.with_extension("svg");
            report::write_file(&svg_path, &plot::percentile_svg(&report.title, &series))?;
            eprintln!("wrote {}", svg_path.display());
        }
    }
    Ok(())
}

fn pop_label(pop: PopMode) -> &'static str {
    match pop {
        PopMode::Single => "single",
        PopMode::Batch => "batch",
    }
}

fn to_result(
    kind: ClientKind,
    outcome: Result<ChildOutcome>,
    note: Option<String>,
) -> ClientResult {
    to_result_with(kind, outcome, note, None)
}

/// As [`to_result`], with the server's CPU seconds over the run when measured.
fn to_result_with(
    kind: ClientKind,
    outcome: Result<ChildOutcome>,
    note: Option<String>,
    server_cpu: Option<f64>,
) -> ClientResult {
    match outcome {
        Ok(ChildOutcome { report, cpu }) => {
            let messages = report.messages;
            let seconds = report.seconds.max(1e-9);
            let lat = report.latency.clone();
            let note = join_notes(note, report.note);
            ClientResult {
                kind,
                outcome: Ok(ClientRow {
                    name: kind.name().to_owned(),
                    messages,
                    seconds: report.seconds,
                    msgs_per_sec: messages as f64 / seconds,
                    cpu_us_per_msg: cpu.as_secs_f64() * 1e6 / messages.max(1) as f64,
                    server_cpu_us_per_msg: server_cpu.map(|s| s * 1e6 / messages.max(1) as f64),
                    p50_us: lat.as_ref().map(|l| l.p50_us),
                    p99_us: lat.as_ref().map(|l| l.p99_us),
                    p999_us: lat.as_ref().map(|l| l.p999_us),
                    max_us: lat.as_ref().map(|l| l.max_us),
                    syscalls_per_msg: report.io.map(|(s, _)| s as f64 / messages.max(1) as f64),
                    completions_per_msg: report.io.map(|(_, c)| c as f64 / messages.max(1) as f64),
                }),
                latency: lat,
                note,
            }
        }
        Err(e) => {
            eprintln!("ringq-bench: {}: {e}", kind.name());
            ClientResult {
                kind,
                outcome: Err(e.to_string()),
                latency: None,
                note,
            }
        }
    }
}

fn drain(cli: &Cli, broker: &Broker, queues: &[String]) -> Result<ScenarioReport> {
    let per_queue = (cli.messages / queues.len() as u64).max(1);
    let total = per_queue * queues.len() as u64;
    let title = format!(
        "drain, --pop {}: {total} messages of {} B in {} queue(s); {} connection(s), {} shard(s), batch {}, pipeline {}; {}",
        pop_label(cli.pop),
        cli.size,
        queues.len(),
        cli.connections,
        cli.shards,
        cli.batch,
        cli.pipeline,
        broker.label()
    );
    eprintln!("{title}");
    // A warm-up fill, deleted unmeasured: the first fill of a fresh server takes its
    // memory from the OS and a later one reuses it, which made whichever client drained
    // first look slower (seen as TLS "faster" than plaintext when plaintext ran first).
    let pb = progress::bar(total, "warming the server up");
    load::fill(&broker.url, queues, per_queue, cli.size, &pb)?;
    load::delete(&broker.url, queues)?;
    pb.finish_and_clear();
    let mut results = Vec::new();
    let mut plain = Vec::new();
    for &kind in &cli.clients {
        if kind == ClientKind::Ping {
            eprintln!("ringq-bench: ping runs in the latency scenario only; skipped");
            continue;
        }
        if broker.tls.is_some() && !kind.speaks_tls() {
            eprintln!(
                "ringq-bench: {} has no TLS; skipped with --tls",
                kind.name()
            );
            continue;
        }
        let run = |tls: bool| drain_one(cli, broker, queues, kind, per_queue, tls);
        if broker.tls.is_some() {
            // The same client over plaintext first, on the same server: the TLS table.
            plain.push(run(false)?);
        }
        results.push(run(broker.tls.is_some())?);
    }
    Ok(ScenarioReport {
        scenario: "drain",
        pop: cli.pop,
        title,
        results,
        plain,
        tls: broker.tls.is_some(),
    })
}

/// Fills the queues, drains them with `kind` (over TLS when `tls`), and measures the
/// client's and the server's CPU.
fn drain_one(
    cli: &Cli,
    broker: &Broker,
    queues: &[String],
    kind: ClientKind,
    per_queue: u64,
    tls: bool,
) -> Result<ClientResult> {
    let total = per_queue * queues.len() as u64;
    let how = if tls { " over TLS" } else { "" };
    let pb = progress::bar(total, &format!("filling for {}{how}", kind.name()));
    load::fill(&broker.url, queues, per_queue, cli.size, &pb)?;
    pb.finish_and_clear();
    let mut spec = ChildSpec::base(cli, broker, queues, kind);
    if tls {
        spec = spec.over_tls(broker);
    }
    spec.expected = total;
    // Generous: a consumer at 2k msg/s still finishes; a lost message fails the row.
    spec.deadline_secs = 60.0 + total as f64 / 2000.0;
    let pb = progress::bar(total, &format!("draining: {}{how}", kind.name()));
    let server_before = broker.cpu_seconds().ok();
    let (outcome, noise) = measured(broker, || {
        with_drain_progress(&broker.url, queues, total, &pb, || {
            child::run(&spec, || Ok(()))
        })
    });
    let server_cpu = match (server_before, broker.cpu_seconds().ok()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    pb.finish_and_clear();
    let left = load::total_len(&broker.url, queues)?;
    let note = (left > 0).then(|| format!("{left} messages left in the queues"));
    Ok(to_result_with(
        kind,
        outcome,
        join_notes(note, noise),
        server_cpu,
    ))
}

/// Runs `f` while a thread moves `pb` by polling the queues' length — only when the bar
/// is visible, so a logged run sends the server nothing extra.
fn with_drain_progress<T>(
    url: &str,
    queues: &[String],
    total: u64,
    pb: &indicatif::ProgressBar,
    f: impl FnOnce() -> T,
) -> T {
    if pb.is_hidden() {
        return f();
    }
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        let stop2 = stop.clone();
        s.spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                if let Ok(left) = load::total_len(url, queues) {
                    pb.set_position(total.saturating_sub(left));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        let r = f();
        stop.store(true, Ordering::Relaxed);
        r
    })
}

fn latency(cli: &Cli, broker: &Broker, queues: &[String], rate: u32) -> Result<ScenarioReport> {
    let rate = rate.max(1);
    let count = ((f64::from(rate) * cli.duration().as_secs_f64()).round() as u64).max(1);
    let size = cli.size.max(crate::latency::STAMP_LEN);
    let title = format!(
        "latency, --pop {}: {rate} msg/s for {:.1} s ({count} messages of {size} B) over {} queue(s); {} connection(s), {} shard(s), batch {}, pipeline {}; {}",
        pop_label(cli.pop),
        cli.duration().as_secs_f64(),
        queues.len(),
        cli.connections,
        cli.shards,
        cli.batch,
        cli.pipeline,
        broker.label()
    );
    eprintln!("{title}");
    let deadline = cli.duration().as_secs_f64() + 30.0;
    let mut results = Vec::new();

    // The floor first: PING round trips on the same schedule (over TLS with --tls).
    let mut spec = ChildSpec::base(cli, broker, queues, ClientKind::Ping).over_tls(broker);
    spec.expected = count;
    spec.latency = true;
    spec.rate = rate;
    spec.deadline_secs = deadline;
    eprintln!("measuring PING round trips at {rate}/s ...");
    let (outcome, noise) = measured(broker, || child::run(&spec, || Ok(())));
    results.push(to_result(ClientKind::Ping, outcome, noise));

    for &kind in cli.clients.iter().filter(|&&k| k != ClientKind::Ping) {
        if broker.tls.is_some() && !kind.speaks_tls() {
            eprintln!(
                "ringq-bench: {} has no TLS; skipped with --tls",
                kind.name()
            );
            continue;
        }
        load::delete(&broker.url, queues)?;
        let mut spec = ChildSpec::base(cli, broker, queues, kind).over_tls(broker);
        spec.expected = count;
        spec.latency = true;
        spec.deadline_secs = deadline;
        let pb = progress::bar(count, &format!("producing for {}", kind.name()));
        let mut late = 0;
        let (outcome, noise) = measured(broker, || {
            child::run(&spec, || {
                let p = load::produce(
                    load::Push::Lpush,
                    &broker.url,
                    queues,
                    rate,
                    count,
                    size,
                    &pb,
                )?;
                late = p.max_late_ns;
                Ok(())
            })
        });
        pb.finish_and_clear();
        let note = (late > 1_000_000).then(|| {
            format!(
                "the producer fell behind its schedule by up to {:.1} ms (counted as latency)",
                late as f64 / 1e6
            )
        });
        results.push(to_result(kind, outcome, join_notes(note, noise)));
    }
    Ok(ScenarioReport {
        scenario: "latency",
        pop: cli.pop,
        title,
        results,
        plain: Vec::new(),
        tls: broker.tls.is_some(),
    })
}

//! The `load` scenario: a broker load test at a fixed rate. Open-loop producers
//! (`--producers` connections, `--rate` messages a second in all, each message sent at
//! its intended time and stamped with it) push for `--warmup` + `--duration` seconds
//! into `--queues` lists (or streams, or channels) while ringq consumes them in `--mode`
//! (`list`: pop mode; `reliable`; `stream`: a consumer group; `pubsub`: listen mode,
//! published with PUBLISH — the backlog is always 0, and what the subscriber cannot take
//! is lost, counted by sequence number; `kombu`: Kombu envelopes, kombu mode). Every second is reported: produced,
//! consumed, backlog (read from the server), end-to-end latency (intended send time →
//! handler, by the second it was due in: coordinated-omission corrected), produce latency
//! (the push's reply), and the server's CPU. The summary covers the measured window
//! (after the warm-up): totals, what was lost or delivered twice, latency percentiles,
//! CPU per message.
//!
//! JSON (`--json`): `{"scenario": "load", "config": {…}, "series": [{"t", "produced",
//! "consumed", "backlog", "e2e_p50_us", "e2e_p99_us", "e2e_p999_us", "e2e_max_us",
//! "produce_p99_us", "server_cpu"}], "summary": {…}}`; `--csv` writes the series.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use crate::child;
use crate::cli::{Cli, ClientKind, LoadMode};
use crate::error::{Error, Result};
use crate::latency;
use crate::load::{self, Push, Schedule};
use crate::loadreport::{csv, merge, render, write_produce_hlog, Pick, Point, Sample, Summary};
use crate::progress;
use crate::report::{write_file, Table};
use crate::server::Broker;
use crate::spec::{ChildSpec, RELIABLE_ID, STREAM_GROUP};
use ringq::envelope::keys;

/// How long the consumer child may take to start before the schedule begins.
const START_SLACK_NS: u64 = 1_500_000_000;

fn names(mode: LoadMode, n: usize) -> Vec<String> {
    let stem = match mode {
        LoadMode::Stream => "ls",
        LoadMode::Pubsub => "lc",
        LoadMode::Kombu => "lk",
        LoadMode::List | LoadMode::Reliable => "lq",
    };
    (0..n.max(1))
        .map(|i| format!("ringq-bench:{stem}{i}"))
        .collect()
}

/// Every key a run may leave behind.
fn keys_of(mode: LoadMode, queues: &[String]) -> Vec<String> {
    let k = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    let id = RELIABLE_ID.as_bytes();
    let mut out = Vec::new();
    if mode == LoadMode::Pubsub {
        // Channels are not keys.
        return out;
    }
    if mode == LoadMode::Kombu {
        let names: Vec<&str> = queues.iter().map(|q| kombu_name(q)).collect();
        return crate::kombu::keys_of(&names);
    }
    for q in queues {
        let qb = q.as_bytes();
        out.push(q.clone());
        if mode == LoadMode::Reliable {
            out.extend([
                k(keys::processing(qb, id)),
                k(keys::lease(qb, id)),
                k(keys::heartbeat(qb, id)),
                k(keys::consumers(qb)),
                k(keys::sweep(qb)),
                k(keys::retry(qb)),
                k(keys::dead(qb)),
            ]);
        }
        if mode == LoadMode::Stream {
            out.push(k(keys::dead(qb)));
        }
    }
    out
}

/// A Kombu queue's name: its key without the bench's key prefix.
fn kombu_name(key: &str) -> &str {
    key.strip_prefix(crate::kombu::PREFIX).unwrap_or(key)
}

/// Messages waiting (lists: queued; streams: not yet acked by the group).
pub(crate) fn backlog(url: &str, mode: LoadMode, queues: &[String]) -> Result<u64> {
    if mode == LoadMode::Pubsub {
        // Pub/sub keeps nothing: what a subscriber cannot take is dropped, not queued.
        return Ok(0);
    }
    if mode == LoadMode::Stream {
        let mut n = 0;
        for q in queues {
            n += load::stream_left(url, q, STREAM_GROUP)?;
        }
        return Ok(n);
    }
    load::total_len(url, queues)
}

/// One run's result.
struct Run {
    rate: u32,
    title: String,
    series: Vec<Point>,
    summary: Summary,
}

impl Run {
    /// The worst per-second end-to-end p99 of the messages due in the measured window.
    fn worst_p99_us(&self, warmup: f64) -> f64 {
        self.series
            .iter()
            .filter(|p| p.t as f64 >= warmup && p.produced > 0)
            .filter_map(|p| p.e2e_p99_us)
            .fold(0.0, f64::max)
    }

    /// Whether it held the SLO: every measured second's p99 within it, nothing lost.
    fn passes(&self, warmup: f64, slo_us: f64) -> bool {
        self.summary.lost == 0 && self.worst_p99_us(warmup) <= slo_us
    }
}

/// Runs the scenario: one run at `--rate`, or with `--find-max` the search for the
/// highest rate that holds `--slo-p99-ms`; prints, writes `--json` and `--csv`.
///
/// # Errors
/// Bad options, a server that cannot be started or reached, a consumer that fails or
/// starts too slowly, an output file that cannot be written.
pub fn run(cli: &Cli) -> Result<()> {
    if cli.tls {
        return Err(Error::new(
            "--tls applies to the drain and latency scenarios",
        ));
    }
    if !cli.failover_at.is_empty() && (cli.url.is_some() || !cli.restart_server_at.is_empty()) {
        return Err(Error::new(
            "--failover-at runs its own master, replica and sentinels: not with --url or \
             --restart-server-at",
        ));
    }
    let broker = if !cli.failover_at.is_empty() {
        Broker::open_sentinel()?
    } else if cli.restart_server_at.is_empty() {
        Broker::open(cli.url.as_deref())?
    } else {
        if cli.url.is_some() {
            return Err(Error::new(
                "--restart-server-at restarts the embedded server; it cannot restart one at \
                 --url",
            ));
        }
        Broker::open_durable(None)?
    };
    if cli.mode == LoadMode::Reliable && broker.redis_version < (6, 2, 0) {
        return Err(Error::new(format!(
            "{} has no LMOVE/BLMOVE (Redis 6.2+): reliable mode needs them",
            broker.version
        )));
    }
    let warmup = cli.warmup.max(0.0);
    let Some(slo_ms) = cli.find_max.then_some(cli.slo_p99_ms) else {
        let r = run_once(cli, &broker, cli.rate.max(1))?;
        print!("{}", render(&r.title, &r.series, &r.summary));
        return write_outputs(cli, &broker, &r, None);
    };
    let slo_us = slo_ms * 1000.0;
    let mut tries: Vec<Run> = Vec::new();
    let try_rate = |rate: u32, tries: &mut Vec<Run>| -> Result<bool> {
        let r = run_once(cli, &broker, rate)?;
        let ok = r.passes(warmup, slo_us);
        eprintln!(
            "ringq-bench: {rate} msgs/s: worst p99 {:.0} µs, lost {} — {}",
            r.worst_p99_us(warmup),
            r.summary.lost,
            if ok { "holds" } else { "breaks" }
        );
        tries.push(r);
        Ok(ok)
    };
    // Doubling (or halving) from --rate until the SLO breaks (holds), then bisection to
    // within 5 % or eight more runs.
    let (mut pass, mut fail): (Option<u32>, Option<u32>) = (None, None);
    let mut rate = cli.rate.max(1);
    while pass.is_none() || fail.is_none() {
        if try_rate(rate, &mut tries)? {
            pass = Some(rate);
            rate = rate.saturating_mul(2);
        } else {
            fail = Some(rate);
            rate /= 2;
            if rate < 10 {
                break;
            }
        }
        if tries.len() > 24 {
            break;
        }
    }
    if let (Some(mut lo), Some(mut hi)) = (pass, fail) {
        for _ in 0..8 {
            if f64::from(hi - lo) <= 0.05 * f64::from(lo) {
                break;
            }
            let mid = lo + (hi - lo) / 2;
            if try_rate(mid, &mut tries)? {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        pass = Some(lo);
        fail = Some(hi);
    }
    let find = |r: Option<u32>| tries.iter().rev().find(|t| Some(t.rate) == r);
    let (best, first_fail) = (find(pass), find(fail));
    let mut table = Table::new(
        format!(
            "load --find-max, --mode {}: the highest rate whose end-to-end p99 stays within \
             {slo_ms} ms in every measured second, nothing lost; {}",
            cli.mode.name(),
            broker.label()
        ),
        vec!["rate msgs/s", "worst p99 µs", "lost", "holds"],
    );
    let mut sorted: Vec<&Run> = tries.iter().collect();
    sorted.sort_by_key(|r| r.rate);
    for r in sorted {
        table.row(vec![
            r.rate.to_string(),
            format!("{:.0}", r.worst_p99_us(warmup)),
            r.summary.lost.to_string(),
            if r.passes(warmup, slo_us) {
                "yes"
            } else {
                "no"
            }
            .to_owned(),
        ]);
    }
    table.targets.push(match best {
        Some(b) => format!(
            "highest rate that holds p99 ≤ {slo_ms} ms: {} msgs/s (first that breaks: {})",
            b.rate,
            fail.map_or_else(|| "none found".to_owned(), |f| f.to_string())
        ),
        None => format!("no rate from {} down held p99 ≤ {slo_ms} ms", cli.rate),
    });
    print!("{}", table.render());
    for r in [best, first_fail].into_iter().flatten() {
        print!("{}", render(&r.title, &r.series, &r.summary));
    }
    match best {
        Some(b) => write_outputs(cli, &broker, b, first_fail),
        None => Ok(()),
    }
}

/// `--json` (with the first failing run's series under `"breaks"` after `--find-max`) and
/// `--csv`.
fn write_outputs(cli: &Cli, broker: &Broker, r: &Run, breaks: Option<&Run>) -> Result<()> {
    let config = serde_json::json!({
        "mode": cli.mode.name(), "rate": r.rate, "duration_s": cli.duration().as_secs_f64(),
        "warmup_s": cli.warmup.max(0.0), "producers": cli.producers.max(1),
        "queues": cli.queues.max(1), "size": cli.size.max(latency::STAMP_LEN),
        "shards": cli.shards, "connections": cli.connections, "batch": cli.batch,
        "pipeline": cli.pipeline, "server": broker.version,
        "slo_p99_ms": cli.find_max.then_some(cli.slo_p99_ms),
    });
    if let Some(path) = &cli.json {
        let picks: [(&str, Pick); 3] = [
            ("p50", |p| p.e2e_p50_us),
            ("p99", |p| p.e2e_p99_us),
            ("p99.9", |p| p.e2e_p999_us),
        ];
        let lines: Vec<(String, Vec<(f64, f64)>)> = picks
            .into_iter()
            .map(|(name, pick)| {
                let points = r
                    .series
                    .iter()
                    .filter_map(|p| Some((p.t as f64, pick(p)?)))
                    .collect();
                (format!("end-to-end {name}"), points)
            })
            .collect();
        let svg = path.with_extension("svg");
        write_file(&svg, &crate::plot::time_svg(&r.title, &lines))?;
        eprintln!("wrote {}", svg.display());
        let mut json = serde_json::json!({
            "scenario": "load", "config": config, "series": r.series, "summary": r.summary,
        });
        if let Some(b) = breaks {
            json["breaks"] = serde_json::json!({
                "rate": b.rate, "series": b.series, "summary": b.summary,
            });
        }
        write_file(path, &serde_json::to_string_pretty(&json)?)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = &cli.csv {
        write_file(path, &csv(&r.series))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// One run at `rate`: fresh keys, a consumer child, the producers, the sampler.
fn run_once(cli: &Cli, broker: &Broker, rate: u32) -> Result<Run> {
    let mode = cli.mode;
    let queues = names(mode, cli.queues);
    let warmup = cli.warmup.max(0.0);
    let seconds = warmup + cli.duration().as_secs_f64();
    let count = ((f64::from(rate) * seconds).round() as u64).max(1);
    let producers = cli.producers.max(1);
    let size = cli.size.max(latency::STAMP_LEN);
    let title = format!(
        "load, --mode {}: {rate} msgs/s for {warmup:.0} s of warm-up + {:.0} s ({count} \
         messages of {size} B) over {} {}, {producers} producer connection(s); ringq: {} \
         shard(s), {} connection(s), batch {}, pipeline {}; {}",
        mode.name(),
        cli.duration().as_secs_f64(),
        queues.len(),
        match mode {
            LoadMode::Stream => "stream(s)",
            LoadMode::Pubsub => "channel(s)",
            LoadMode::List | LoadMode::Reliable | LoadMode::Kombu => "queue(s)",
        },
        cli.shards,
        cli.connections,
        cli.batch,
        cli.pipeline,
        broker.label()
    );
    eprintln!("{title}");
    let all_keys = keys_of(mode, &queues);
    load::delete(&broker.url, &all_keys)?;
    if mode == LoadMode::Stream {
        for q in &queues {
            load::create_group(&broker.url, q, STREAM_GROUP)?;
        }
    }
    // The backlog phase: messages already waiting when consuming starts (numbered after
    // the schedule's, stamped with the time they were pushed).
    let backlog = if cli.backlog > 0 {
        if matches!(mode, LoadMode::Stream | LoadMode::Pubsub) {
            return Err(Error::new(
                "--backlog applies to --mode list and reliable for now (pub/sub keeps no \
                 backlog)",
            ));
        }
        let per = cli.backlog.div_ceil(queues.len() as u64);
        let pb = progress::bar(per * queues.len() as u64, "filling the backlog");
        let mut payload = vec![b'x'; size];
        load::fill_by(&broker.url, &queues, per, &pb, |i| {
            latency::stamp(&mut payload, latency::mono_ns(), count + i);
            payload.clone()
        })?;
        pb.finish_and_clear();
        per * queues.len() as u64
    } else {
        0
    };
    let origin = latency::mono_ns() + START_SLACK_NS;
    let mut spec = ChildSpec::base(cli, broker, &queues, ClientKind::Ringq);
    spec.reliable = mode == LoadMode::Reliable;
    spec.stream = mode == LoadMode::Stream;
    if mode == LoadMode::Pubsub {
        // Listen mode on every channel (`queues` names them).
        spec.channel = queues.first().cloned();
    }
    if mode == LoadMode::Kombu {
        // Kombu mode names its queues without the key prefix (it adds it).
        spec.kombu = true;
        spec.queues = queues.iter().map(|q| kombu_name(q).to_owned()).collect();
    }
    spec.expected = count + backlog;
    spec.latency = true;
    spec.series_origin_ns = Some(origin);
    spec.series_warmup_ns = (warmup * 1e9) as u64;
    spec.series_end_ns = Some(origin + (seconds * 1e9) as u64);
    spec.hdr_e2e = cli
        .hdr_prefix
        .as_deref()
        .map(|p| crate::hlog::path(p, "e2e"));
    spec.deadline_secs = seconds + 60.0;
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (samples, stop, url, queues) = (
            samples.clone(),
            stop.clone(),
            broker.url.clone(),
            queues.clone(),
        );
        let faults = crate::faults::Faults {
            kill_consumers_at: cli.kill_consumers_at.clone(),
            restart_server_at: cli.restart_server_at.clone(),
            failover_at: cli.failover_at.clone(),
            server: broker.embedded(),
            sentinels: broker.sentinels(),
        };
        thread::spawn(move || {
            crate::faults::sample_every_second(
                &url, mode, &queues, origin, &faults, &stop, &samples,
            );
        })
    };
    let push = match mode {
        LoadMode::Stream => Push::Xadd,
        LoadMode::Pubsub => Push::Publish,
        LoadMode::Kombu => Push::Kombu,
        LoadMode::List | LoadMode::Reliable => Push::Lpush,
    };
    let pb = progress::bar(count, "producing");
    let mut produced = Vec::new();
    let outcome = child::run(&spec, || {
        if latency::mono_ns() > origin {
            return Err(Error::new(format!(
                "the consumer took more than {:.1} s to start: the schedule could not begin on time",
                START_SLACK_NS as f64 / 1e9
            )));
        }
        produced = thread::scope(|s| {
            let handles: Vec<_> = (0..producers as u64)
                .map(|p| {
                    let sched = Schedule {
                        rate,
                        count,
                        start_ns: origin,
                        stride: producers as u64,
                        offset: p,
                        series: true,
                    };
                    let (url, queues, pb) = (&broker.url, &queues, &pb);
                    s.spawn(move || load::produce_paced(push, url, queues, sched, size, pb))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::new("a producer panicked")))
                })
                .collect::<Result<Vec<_>>>()
        })?;
        Ok(())
    });
    pb.finish_and_clear();
    stop.store(true, Ordering::Release);
    let _ = sampler.join();
    let outcome = outcome?;
    let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    if let Some(note) = &outcome.report.note {
        eprintln!("ringq-bench: consumer: {note}");
    }
    if let Some(prefix) = &cli.hdr_prefix {
        write_produce_hlog(prefix, &produced, origin)?;
    }
    let (series, mut summary) = merge(&produced, &outcome, &samples, warmup, count + backlog);
    if backlog > 0 {
        summary.backlog = Some(backlog);
        // Drained: the first second whose sampled backlog is at most 1 % of a second's
        // messages.
        summary.backlog_drained_s = series
            .iter()
            .find(|p| p.backlog.is_some_and(|b| b <= u64::from(rate) / 100))
            .map(|p| p.t + 1);
    }
    let _ = load::delete(&broker.url, &all_keys);
    Ok(Run {
        rate,
        title,
        series,
        summary,
    })
}

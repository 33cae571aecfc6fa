//! What a `load` run reports (see `loadtest.rs`): the producers' and the consumer's
//! per-second figures and the sampler's merged into one series, the summary of the
//! measured window, the markdown table, the CSV, and the produce latencies' HdrHistogram
//! log.

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::child;
use crate::error::{Error, Result};
use crate::latency;
use crate::load;
use crate::report::Table;
use crate::series::quantiles_us;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Point {
    pub(crate) t: u64,
    pub(crate) produced: u64,
    pub(crate) consumed: u64,
    pub(crate) backlog: Option<u64>,
    pub(crate) e2e_p50_us: Option<f64>,
    pub(crate) e2e_p99_us: Option<f64>,
    pub(crate) e2e_p999_us: Option<f64>,
    pub(crate) e2e_max_us: Option<f64>,
    pub(crate) produce_p99_us: Option<f64>,
    /// The server's CPU in this second, in % of one core.
    pub(crate) server_cpu: Option<f64>,
}

/// One figure of a point (for the plot's lines).
pub(crate) type Pick = fn(&Point) -> Option<f64>;

/// What the sampler reads from the server each second, and the fault it injected.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sample {
    pub(crate) backlog: u64,
    pub(crate) cpu_pct: f64,
    pub(crate) fault: Option<String>,
}

/// `--hdr-prefix`: the producers' per-second produce latencies, merged, as
/// `PREFIX.produce.hlog`.
pub(crate) fn write_produce_hlog(
    prefix: &std::path::Path,
    produced: &[load::Produced],
    origin: u64,
) -> Result<()> {
    let mut seconds: Vec<hdrhistogram::Histogram<u64>> = Vec::new();
    for p in produced {
        for (t, (_, h)) in p.seconds.iter().enumerate() {
            while seconds.len() <= t {
                seconds.push(latency::new_histogram());
            }
            seconds[t]
                .add(h)
                .map_err(|e| Error::new(format!("merging produce histograms: {e:?}")))?;
        }
    }
    crate::hlog::write(
        &crate::hlog::path(prefix, "produce"),
        "produce latency (intended send time to the push's reply), by the second it was due in",
        crate::hlog::unix_time_of(origin),
        &seconds,
    )
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Summary {
    pub(crate) produced: u64,
    pub(crate) consumed: u64,
    /// Produced — confirmed by the server — and never consumed (0 unless something was
    /// lost).
    pub(crate) lost: u64,
    /// Sent without a success reply: the producer's connection broke first (a server
    /// restart, a cut) or the server refused it (`-LOADING`). The server may or may not
    /// have stored these, so they are not counted in `lost`.
    pub(crate) unconfirmed: u64,
    /// Of those, the ones never consumed (the server did not store them).
    pub(crate) unconfirmed_missing: u64,
    /// Producer connections that broke, and error replies.
    pub(crate) producer_errors: u64,
    /// Later deliveries of messages already consumed (duplicates).
    pub(crate) extra: u64,
    /// Connections the consumer re-established.
    pub(crate) reconnects: Option<u64>,
    /// Faults injected (`--kill-consumers-at`), with their second.
    pub(crate) faults: Vec<String>,
    /// `--backlog`: messages waiting when consuming began, and the end of the first
    /// second whose sampled backlog was back to at most 1 % of the rate.
    pub(crate) backlog: Option<u64>,
    pub(crate) backlog_drained_s: Option<u64>,
    pub(crate) e2e_p50_us: f64,
    pub(crate) e2e_p99_us: f64,
    pub(crate) e2e_p999_us: f64,
    pub(crate) e2e_max_us: f64,
    pub(crate) produce_p50_us: Option<f64>,
    pub(crate) produce_p99_us: Option<f64>,
    pub(crate) consumer_cpu_us_per_msg: f64,
    pub(crate) server_cpu_us_per_msg: Option<f64>,
}

pub(crate) fn merge(
    produced: &[load::Produced],
    outcome: &child::ChildOutcome,
    samples: &[Sample],
    warmup: f64,
    count: u64,
) -> (Vec<Point>, Summary) {
    let consumer = outcome.report.series.clone().unwrap_or_default();
    let n = produced
        .iter()
        .map(|p| p.seconds.len())
        .chain([consumer.len(), samples.len()])
        .max()
        .unwrap_or(0);
    let mut window = latency::new_histogram();
    let series: Vec<Point> = (0..n)
        .map(|t| {
            let mut h: Histogram<u64> = latency::new_histogram();
            let mut sent = 0;
            for p in produced {
                if let Some((c, ph)) = p.seconds.get(t) {
                    sent += c;
                    let _ = h.add(ph);
                }
            }
            if t as f64 >= warmup {
                let _ = window.add(&h);
            }
            let c = consumer.get(t);
            let e2e = c.and_then(|c| c.e2e_us);
            let s = samples.get(t);
            Point {
                t: t as u64,
                produced: sent,
                consumed: c.map_or(0, |c| c.consumed),
                backlog: s.map(|s| s.backlog),
                e2e_p50_us: e2e.map(|q| q[0]),
                e2e_p99_us: e2e.map(|q| q[1]),
                e2e_p999_us: e2e.map(|q| q[2]),
                e2e_max_us: e2e.map(|q| q[3]),
                produce_p99_us: (!h.is_empty()).then(|| quantiles_us(&h)[1]),
                server_cpu: s.map(|s| s.cpu_pct),
            }
        })
        .collect();
    let consumed = outcome.report.messages;
    let (lost, unconfirmed, unconfirmed_missing) = losses(produced, outcome, count);
    let lat = outcome.report.window.clone();
    let produce = (!window.is_empty()).then(|| quantiles_us(&window));
    let cpu_total: f64 = samples.iter().map(|s| s.cpu_pct / 100.0).sum();
    let summary = Summary {
        produced: count,
        consumed,
        lost,
        unconfirmed,
        unconfirmed_missing,
        producer_errors: produced.iter().map(|p| p.errors).sum(),
        extra: outcome.report.duplicates.unwrap_or(0),
        reconnects: outcome.report.reconnects,
        faults: samples
            .iter()
            .enumerate()
            .filter_map(|(t, s)| Some(format!("t={t}: {}", s.fault.as_ref()?)))
            .collect(),
        backlog: None,
        backlog_drained_s: None,
        e2e_p50_us: lat.as_ref().map_or(0.0, |l| l.p50_us),
        e2e_p99_us: lat.as_ref().map_or(0.0, |l| l.p99_us),
        e2e_p999_us: lat.as_ref().map_or(0.0, |l| l.p999_us),
        e2e_max_us: lat.as_ref().map_or(0.0, |l| l.max_us),
        produce_p50_us: produce.map(|q| q[0]),
        produce_p99_us: produce.map(|q| q[1]),
        consumer_cpu_us_per_msg: outcome.cpu.as_secs_f64() * 1e6 / consumed.max(1) as f64,
        server_cpu_us_per_msg: (!samples.is_empty())
            .then(|| cpu_total * 1e6 / consumed.max(1) as f64),
    };
    (series, summary)
}

/// (lost, unconfirmed, unconfirmed and never consumed): from the consumer's list of the
/// numbers it never got, when it sent one; else every message not consumed is counted
/// lost, less the unconfirmed (an estimate).
fn losses(
    produced: &[load::Produced],
    outcome: &child::ChildOutcome,
    count: u64,
) -> (u64, u64, u64) {
    let mut unconfirmed: Vec<u64> = produced
        .iter()
        .flat_map(|p| p.unconfirmed.iter().copied())
        .collect();
    unconfirmed.sort_unstable();
    let n = unconfirmed.len() as u64;
    let Some(missing) = &outcome.report.missing else {
        let not_consumed = count.saturating_sub(outcome.report.messages);
        return (not_consumed.saturating_sub(n), n, not_consumed.min(n));
    };
    let total: u64 = missing.iter().map(|(a, b)| b - a).sum();
    // Unconfirmed numbers that fall in a missing range.
    let never = unconfirmed
        .iter()
        .filter(|&&i| {
            let r = missing.partition_point(|(_, end)| *end <= i);
            missing.get(r).is_some_and(|(start, _)| *start <= i)
        })
        .count() as u64;
    (total - never, n, never)
}

pub(crate) fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
}

pub(crate) fn render(title: &str, series: &[Point], s: &Summary) -> String {
    let mut table = Table::new(
        title.to_owned(),
        vec![
            "t (s)",
            "produced",
            "consumed",
            "backlog",
            "e2e p50 µs",
            "e2e p99 µs",
            "e2e p99.9 µs",
            "produce p99 µs",
            "server CPU %",
        ],
    );
    for p in series {
        table.row(vec![
            p.t.to_string(),
            p.produced.to_string(),
            p.consumed.to_string(),
            p.backlog.map_or_else(|| "–".to_owned(), |b| b.to_string()),
            opt(p.e2e_p50_us, 0),
            opt(p.e2e_p99_us, 0),
            opt(p.e2e_p999_us, 0),
            opt(p.produce_p99_us, 0),
            opt(p.server_cpu, 0),
        ]);
    }
    let mut out = table.render();
    for f in &s.faults {
        out.push_str(&format!("\nFault at {f}"));
    }
    if let Some(b) = s.backlog {
        out.push_str(&format!(
            "\nBacklog: {b} messages waiting at the start; drained {}",
            s.backlog_drained_s.map_or_else(
                || "not within the run".to_owned(),
                |t| format!("by t = {t} s")
            )
        ));
    }
    out.push_str(&format!(
        "\nSummary (messages due after the warm-up for latency): produced {}, consumed {}, \
         lost {}, unconfirmed {} ({} of them never consumed), producer errors {}, extra {}, \
         reconnects {}; end-to-end p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} \
         µs; produce p99 {} µs; consumer CPU {:.3} µs/msg (the child's whole life, start \
         included), server CPU {} µs/msg (every second sampled)\n",
        s.produced,
        s.consumed,
        s.lost,
        s.unconfirmed,
        s.unconfirmed_missing,
        s.producer_errors,
        s.extra,
        s.reconnects
            .map_or_else(|| "–".to_owned(), |n| n.to_string()),
        s.e2e_p50_us,
        s.e2e_p99_us,
        s.e2e_p999_us,
        s.e2e_max_us,
        opt(s.produce_p99_us, 0),
        s.consumer_cpu_us_per_msg,
        opt(s.server_cpu_us_per_msg, 3),
    ));
    out
}

pub(crate) fn csv(series: &[Point]) -> String {
    let mut out = String::from(
        "t,produced,consumed,backlog,e2e_p50_us,e2e_p99_us,e2e_p999_us,e2e_max_us,produce_p99_us,server_cpu\n",
    );
    let f = |v: Option<f64>| v.map_or_else(String::new, |v| format!("{v:.1}"));
    for p in series {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{}\n",
            p.t,
            p.produced,
            p.consumed,
            p.backlog.map_or_else(String::new, |b| b.to_string()),
            f(p.e2e_p50_us),
            f(p.e2e_p99_us),
            f(p.e2e_p999_us),
            f(p.e2e_max_us),
            f(p.produce_p99_us),
            f(p.server_cpu),
        ));
    }
    out
}

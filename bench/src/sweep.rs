//! `latency --rates R1,R2,…`: the latency scenario at each rate (PING's floor, then every
//! client; `--repeats N` times each, the medians kept), and how each client's p99 grows
//! with the rate, side by side: a table, the
//! targets (ringq's p99 no higher than the best baseline's at every rate, and how fast it
//! grows against PING's), `--json` and an SVG of p99 against the rate.

use serde::Serialize;

use crate::cli::Cli;
use crate::error::{Error, Result};
use crate::plot;
use crate::report::{verdict, write_file, ScenarioReport, Table};

#[derive(Debug, Clone, Serialize)]
struct Point {
    rate: u32,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    cpu_us_per_msg: f64,
}

/// Runs `one(rate)` for each of `rates`, printing each run's table, then the sweep's.
///
/// # Errors
/// A run that fails as a whole (a client failing is a row of its table), an output file
/// that cannot be written.
pub fn run(
    cli: &Cli,
    rates: &[u32],
    mut one: impl FnMut(u32) -> Result<ScenarioReport>,
) -> Result<()> {
    let mut rates = rates.to_vec();
    rates.sort_unstable();
    rates.dedup();
    if rates.contains(&0) {
        return Err(Error::new("--rates takes rates above 0"));
    }
    // Client name → its points, in first-seen order.
    let mut clients: Vec<(String, Vec<Point>)> = Vec::new();
    let mut title = String::new();
    let repeats = cli.repeats.max(1);
    for &rate in &rates {
        // Each client's figures at this rate, one per repeat.
        let mut runs: Vec<(String, Vec<[f64; 4]>)> = Vec::new();
        for _ in 0..repeats {
            let report = one(rate)?;
            print!("{}", report.render());
            title = report.title.clone();
            for r in &report.results {
                let Ok(row) = &r.outcome else { continue };
                let (Some(p50), Some(p99), Some(p999)) = (row.p50_us, row.p99_us, row.p999_us)
                else {
                    continue;
                };
                let figures = [p50, p99, p999, row.cpu_us_per_msg];
                match runs.iter_mut().find(|(n, _)| *n == row.name) {
                    Some((_, v)) => v.push(figures),
                    None => runs.push((row.name.clone(), vec![figures])),
                }
            }
        }
        for (name, figures) in runs {
            let median = |i: usize| {
                let mut v: Vec<f64> = figures.iter().map(|f| f[i]).collect();
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let point = Point {
                rate,
                p50_us: median(0),
                p99_us: median(1),
                p999_us: median(2),
                cpu_us_per_msg: median(3),
            };
            match clients.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => v.push(point),
                None => clients.push((name, vec![point])),
            }
        }
    }
    let p99 = |name: &str, rate: u32| {
        clients
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.iter().find(|p| p.rate == rate))
            .map(|p| p.p99_us)
    };
    let names: Vec<String> = clients.iter().map(|(n, _)| n.clone()).collect();
    let mut header = vec!["rate msgs/s".to_owned()];
    header.extend(names.iter().map(|n| format!("{n} p99 µs")));
    header.extend([
        "ringq ÷ PING".to_owned(),
        "ringq ÷ best baseline".to_owned(),
    ]);
    let what = format!(
        "{:.1} s per rate, {} B messages over {} queue(s), batch {}, pipeline {}; {}",
        cli.duration().as_secs_f64(),
        cli.size.max(crate::latency::STAMP_LEN),
        cli.queues,
        cli.batch,
        cli.pipeline,
        title.rsplit("; ").next().unwrap_or_default()
    );
    let runs = if repeats > 1 {
        format!(" (median of {repeats} runs per rate)")
    } else {
        String::new()
    };
    let mut table = Table::new(format!("latency sweep, p99 by rate{runs}: {what}"), header);
    let baselines = ["redis-rs", "tokio-uring"];
    let mut ringq_ok = true;
    for &rate in &rates {
        let mut cells = vec![rate.to_string()];
        cells.extend(
            names
                .iter()
                .map(|n| p99(n, rate).map_or("–".into(), |v| format!("{v:.0}"))),
        );
        let ringq = p99("ringq", rate);
        let ping = p99("ping", rate);
        let best = baselines
            .iter()
            .filter_map(|b| p99(b, rate))
            .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.min(v))));
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
            _ => "–".into(),
        };
        cells.push(ratio(ringq, ping));
        cells.push(ratio(ringq, best));
        if let (Some(r), Some(b)) = (ringq, best) {
            ringq_ok &= r <= b;
        }
        table.row(cells);
    }
    table.targets.push(format!(
        "ringq's p99 ≤ the best baseline's at every rate — {}",
        verdict(ringq_ok)
    ));
    if let (Some(first), Some(last)) = (rates.first(), rates.last()) {
        let growth = |n: &str| Some(p99(n, *last)? / p99(n, *first)?);
        if let (Some(r), Some(p)) = (growth("ringq"), growth("ping")) {
            table.targets.push(format!(
                "p99 growth from {first} to {last} msgs/s: ringq {r:.2}×, PING {p:.2}× ({})",
                if r <= p * 1.2 {
                    "ringq grows no faster than PING"
                } else {
                    "ringq grows faster than PING: see the per-rate tables above"
                }
            ));
        }
    }
    print!("{}", table.render());
    if let Some(path) = &cli.json {
        let json = serde_json::json!({
            "scenario": "latency-sweep",
            "rates": rates,
            "clients": clients
                .iter()
                .map(|(n, v)| serde_json::json!({"name": n, "points": v}))
                .collect::<Vec<_>>(),
        });
        write_file(path, &serde_json::to_string_pretty(&json)?)?;
        eprintln!("wrote {}", path.display());
        let series: Vec<(String, Vec<(f64, f64)>)> = clients
            .iter()
            .map(|(n, v)| {
                (
                    n.clone(),
                    v.iter().map(|p| (f64::from(p.rate), p.p99_us)).collect(),
                )
            })
            .collect();
        let svg = path.with_extension("svg");
        write_file(
            &svg,
            &plot::rate_svg(&format!("p99 against the rate: {what}"), &series),
        )?;
        eprintln!("wrote {}", svg.display());
    }
    Ok(())
}

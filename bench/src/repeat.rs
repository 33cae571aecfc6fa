//! `--repeats N`: a scenario run N times, each with its own tables and JSON
//! (`PATH.run1.json` …), then each client's figures as the median with the min–max, and
//! its ratios to the run's reference (the first baseline client: redis-rs, tokio-uring,
//! Kombu's consumer, redis-benchmark) computed run by run — paired, so a slow second that hits both
//! clients of a run cancels out. `--json PATH` holds the medians.

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::cli::{Cli, Scenario};
use crate::error::{Error, Result};
use crate::report::{write_file, Table};

/// The client figures summarized, in table order: (JSON field, column, decimals).
const FIELDS: [(&str, &str, usize); 5] = [
    ("msgs_per_sec", "msgs/s", 0),
    ("cpu_us_per_msg", "CPU µs/msg", 3),
    ("server_cpu_us_per_msg", "server CPU µs/msg", 3),
    ("p50_us", "p50 µs", 1),
    ("p99_us", "p99 µs", 1),
];

/// Median, min and max of `v` (not empty).
pub(crate) fn spread(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

fn cell((median, min, max): (f64, f64, f64), decimals: usize) -> String {
    format!("{median:.decimals$} [{min:.decimals$}–{max:.decimals$}]")
}

/// Runs `one` `cli.repeats` times and reports the spread.
///
/// # Errors
/// A scenario whose results are not per client (load, a latency sweep), a run that
/// fails, a JSON file that cannot be read or written.
pub fn run(cli: &Cli, one: fn(&Cli) -> Result<()>) -> Result<()> {
    if cli.scenario == Scenario::Load {
        return Err(Error::new(
            "--repeats applies to drain, latency (a sweep too), pubsub, reliable, stream and \
             kombu (a load run is a series of seconds already)",
        ));
    }
    if !cli.rates.is_empty() || cli.connection_counts.len() > 1 {
        // A sweep repeats each rate (connection count) itself and keeps the medians.
        return one(cli);
    }
    let n = cli.repeats;
    let base = cli.json.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("ringq-bench-repeats-{}.json", std::process::id()))
    });
    let mut runs: Vec<Value> = Vec::new();
    for i in 1..=n {
        eprintln!("ringq-bench: run {i} of {n}");
        let mut c = cli.clone();
        c.repeats = 1;
        let path = PathBuf::from(format!("{}.run{i}.json", base.with_extension("").display()));
        c.json = Some(path.clone());
        one(&c)?;
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        runs.push(serde_json::from_str(&text)?);
    }
    let scenario = runs[0]["scenario"].as_str().unwrap_or("").to_owned();
    let names: Vec<String> = runs[0]["clients"]
        .as_array()
        .ok_or_else(|| Error::new(format!("{scenario}'s results have no clients to summarize")))?
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    let client = |run: &Value, name: &str| -> Option<Value> {
        run["clients"]
            .as_array()?
            .iter()
            .find(|c| c["name"] == name)
            .cloned()
    };
    let reference = names
        .iter()
        .find(|n| {
            ["redis-rs", "tokio-uring", "python", "redis-benchmark"]
                .iter()
                .any(|b| n.starts_with(b))
        })
        .cloned();
    let fields: Vec<(&str, &str, usize)> = FIELDS
        .iter()
        .copied()
        .filter(|(f, _, _)| {
            runs.iter().any(|r| {
                names
                    .iter()
                    .any(|n| client(r, n).is_some_and(|c| c[*f].is_number()))
            })
        })
        .collect();
    let mut header = vec!["client".to_owned()];
    header.extend(fields.iter().map(|(_, col, _)| (*col).to_owned()));
    if let Some(r) = &reference {
        header.push(format!("msgs/s ÷ {r}"));
        header.push(format!("CPU ÷ {r}"));
    }
    let mut table = Table::new(
        format!("{scenario}, {n} runs: median [min–max] per client; ratios paired run by run"),
        header,
    );
    let mut summary = Vec::new();
    for name in &names {
        let mut row = vec![name.clone()];
        let mut entry = json!({ "name": name });
        for (f, _, d) in &fields {
            let mut v: Vec<f64> = runs
                .iter()
                .filter_map(|r| client(r, name)?[*f].as_f64())
                .collect();
            if v.is_empty() {
                row.push("–".into());
                continue;
            }
            let s = spread(&mut v);
            row.push(cell(s, *d));
            entry[*f] = json!({"median": s.0, "min": s.1, "max": s.2});
        }
        if let Some(r) = &reference {
            for (f, key) in [
                ("msgs_per_sec", "msgs_per_sec_ratio"),
                ("cpu_us_per_msg", "cpu_ratio"),
            ] {
                let mut v: Vec<f64> = runs
                    .iter()
                    .filter_map(|run| {
                        let a = client(run, name)?[f].as_f64()?;
                        let b = client(run, r)?[f].as_f64()?;
                        (b > 0.0).then(|| a / b)
                    })
                    .collect();
                if v.is_empty() {
                    row.push("–".into());
                    continue;
                }
                let s = spread(&mut v);
                row.push(format!("{:.2}× [{:.2}–{:.2}]", s.0, s.1, s.2));
                entry[key] = json!({"median": s.0, "min": s.1, "max": s.2});
            }
        }
        table.row(row);
        summary.push(entry);
    }
    print!("{}", table.render());
    if cli.json.is_some() {
        let out = json!({
            "scenario": scenario,
            "repeats": n,
            "reference": reference,
            "clients": summary,
        });
        write_file(&base, &serde_json::to_string_pretty(&out)?)?;
        eprintln!("wrote {} (and one .runN.json per run)", base.display());
    }
    Ok(())
}

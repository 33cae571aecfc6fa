//! `drain --connections N1,N2,…` and `pubsub --connections N1,N2,…`: the connections
//! sweep. The scenario at each connection count (a drain over at least as many queues,
//! so every connection has one; pub/sub fan-in over as many channels, one subscriber
//! connection each), `--repeats` times each, then one table: per count and client the
//! median [min–max] msgs/s, consumer CPU per message, and — for ringq on each backend —
//! the engine's own count of system calls and completions per message; and epoll's CPU
//! per message over io_uring's, paired run by run. The question it answers: where, as
//! connections grow, io_uring's fewer system calls start to pay (issue 26).

use serde_json::json;

use crate::cli::Cli;
use crate::error::{Error, Result};
use crate::report::{write_file, ClientRow, Table};

/// One client's figures in one run of a sweep.
#[derive(Debug, Clone)]
pub struct SweepRow {
    pub name: String,
    pub msgs_per_sec: f64,
    pub cpu_us_per_msg: f64,
    pub syscalls_per_msg: Option<f64>,
    pub completions_per_msg: Option<f64>,
}

impl From<&ClientRow> for SweepRow {
    fn from(r: &ClientRow) -> Self {
        Self {
            name: r.name.clone(),
            msgs_per_sec: r.msgs_per_sec,
            cpu_us_per_msg: r.cpu_us_per_msg,
            syscalls_per_msg: r.syscalls_per_msg,
            completions_per_msg: r.completions_per_msg,
        }
    }
}

/// One client's figures in one run: msgs/s, CPU µs/msg, syscalls/msg, completions/msg.
type Figures = [Option<f64>; 4];

/// Median, min and max of what is there.
fn spread(v: impl Iterator<Item = f64>) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = v.collect();
    (!v.is_empty()).then(|| crate::repeat::spread(&mut v))
}

fn cell(s: Option<(f64, f64, f64)>, d: usize) -> String {
    s.map_or("–".into(), |(m, lo, hi)| {
        format!("{m:.d$} [{lo:.d$}–{hi:.d$}]")
    })
}

/// Runs `one(connections, queues)` for each count, `--repeats` times (each run prints its
/// own table and returns its title and rows), then prints the sweep's table.
///
/// # Errors
/// A count of 0, a run that fails as a whole, an output file that cannot be written.
pub fn run(
    cli: &Cli,
    scenario: &str,
    mut one: impl FnMut(usize, usize) -> Result<(String, Vec<SweepRow>)>,
) -> Result<()> {
    let mut counts = cli.connection_counts.clone();
    counts.sort_unstable();
    counts.dedup();
    if counts.contains(&0) {
        return Err(Error::new("--connections takes counts above 0"));
    }
    let repeats = cli.repeats.max(1);
    // (count, client) → its Figures in each run, by repeat (None: it failed that run), so
    // pairs stay of the same repeat.
    let mut points: Vec<(usize, String, Vec<Option<Figures>>)> = Vec::new();
    let mut title = String::new();
    for &n in &counts {
        let queues = cli.queues.max(n);
        for r in 1..=repeats {
            eprintln!("ringq-bench: {n} connections, run {r} of {repeats}");
            let (t, rows) = one(n, queues)?;
            title = t;
            for row in &rows {
                let f = [
                    Some(row.msgs_per_sec),
                    Some(row.cpu_us_per_msg),
                    row.syscalls_per_msg,
                    row.completions_per_msg,
                ];
                let at = match points
                    .iter()
                    .position(|(c, name, _)| *c == n && *name == row.name)
                {
                    Some(i) => i,
                    None => {
                        points.push((n, row.name.clone(), Vec::new()));
                        points.len() - 1
                    }
                };
                let v = &mut points[at].2;
                v.resize(r - 1, None);
                v.push(Some(f));
            }
        }
    }
    let figures = |n: usize, name: &str| {
        points
            .iter()
            .find(|(c, nm, _)| *c == n && nm == name)
            .map(|(_, _, v)| v.clone())
    };
    let mut table = Table::new(
        format!(
            "{scenario} connections sweep, median [min–max] of {repeats} run(s) per count; \
             ratios paired run by run: {}",
            title.rsplit("; ").next().unwrap_or_default()
        ),
        [
            "connections",
            "client",
            "msgs/s",
            "CPU µs/msg",
            "syscalls/msg",
            "completions/msg",
            "epoll ÷ io_uring CPU/msg",
        ]
        .map(String::from)
        .to_vec(),
    );
    let mut json_points = Vec::new();
    for (n, name, v) in &points {
        let col = |i: usize| spread(v.iter().flatten().filter_map(|f| f[i]));
        // epoll's row carries the paired ratio to io_uring's run of the same repeat.
        let ratio = (name == "ringq-epoll")
            .then(|| figures(*n, "ringq"))
            .flatten()
            .and_then(|uring| {
                spread(
                    v.iter()
                        .zip(&uring)
                        .filter_map(|(e, u)| Some((*e)?[1]? / (*u)?[1].filter(|u| *u > 0.0)?)),
                )
            });
        table.row(vec![
            n.to_string(),
            name.clone(),
            cell(col(0), 0),
            cell(col(1), 3),
            cell(col(2), 4),
            cell(col(3), 4),
            ratio.map_or("–".into(), |(m, lo, hi)| {
                format!("{m:.2}× [{lo:.2}–{hi:.2}]")
            }),
        ]);
        let field = |s: Option<(f64, f64, f64)>| {
            s.map(|(m, lo, hi)| json!({"median": m, "min": lo, "max": hi}))
        };
        json_points.push(json!({
            "connections": n,
            "name": name,
            "msgs_per_sec": field(col(0)),
            "cpu_us_per_msg": field(col(1)),
            "syscalls_per_msg": field(col(2)),
            "completions_per_msg": field(col(3)),
            "epoll_cpu_ratio": field(ratio),
        }));
    }
    print!("{}", table.render());
    if let Some(path) = &cli.json {
        let out = json!({
            "scenario": format!("{scenario}-connections-sweep"),
            "repeats": repeats,
            "connections": counts,
            "points": json_points,
        });
        write_file(path, &serde_json::to_string_pretty(&out)?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

//! Results: [`Table`], the one markdown renderer every scenario prints with (rows, failed
//! clients, footnotes, targets); the `drain` and `latency` rows and their targets; and
//! the `--json` file in the contract's shape:
//! `{"scenario", "clients": [{"name", "messages", "seconds", "msgs_per_sec",
//! "cpu_us_per_msg", "p50_us", "p99_us", "p999_us", "max_us"}]}` — latency fields are
//! `null` where not measured (every client in `drain`). Clients that failed are left out
//! of the JSON and shown in the table with the reason.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::cli::{ClientKind, PopMode};
use crate::error::{Error, Result};
use crate::spec::LatencySummary;

/// One client's figures, exactly as the JSON contract spells them.
#[derive(Debug, Clone, Serialize)]
pub struct ClientRow {
    /// Client name (`ringq`, `ringq-epoll`, `redis-rs`, `tokio-uring`, `limit`, `ping`).
    pub name: String,
    /// Messages consumed (pings, for `ping`).
    pub messages: u64,
    /// Seconds from start to the last message.
    pub seconds: f64,
    /// `messages / seconds`.
    pub msgs_per_sec: f64,
    /// Consumer CPU (user + system, whole child process) per message, µs.
    pub cpu_us_per_msg: f64,
    /// The server's CPU (`INFO cpu`, user + system) per message over the run, µs (drain;
    /// null where not measured).
    pub server_cpu_us_per_msg: Option<f64>,
    /// Latency median, µs (null when not measured).
    pub p50_us: Option<f64>,
    /// Latency 99th percentile, µs.
    pub p99_us: Option<f64>,
    /// Latency 99.9th percentile, µs.
    pub p999_us: Option<f64>,
    /// Latency maximum, µs.
    pub max_us: Option<f64>,
    /// ringq: the engine's system calls per message (its own count: `io_uring_enter` on
    /// io_uring; `epoll_wait`, `read`, `send`… on epoll). In the table and the connections
    /// sweep's JSON, not in the contract's rows.
    #[serde(skip)]
    pub syscalls_per_msg: Option<f64>,
    /// ringq: completions the engine's loop handled per message (CQEs on io_uring), as
    /// `syscalls_per_msg`.
    #[serde(skip)]
    pub completions_per_msg: Option<f64>,
}

/// What happened to one client in a run.
#[derive(Debug, Clone)]
pub struct ClientResult {
    /// Which client.
    pub kind: ClientKind,
    /// Its figures, or why there are none.
    pub outcome: std::result::Result<ClientRow, String>,
    /// The latency curve, for the plot.
    pub latency: Option<LatencySummary>,
    /// A remark for the table's footnotes.
    pub note: Option<String>,
}

/// A finished scenario.
#[derive(Debug, Clone)]
pub struct ScenarioReport {
    /// The contract's scenario name (`drain`, `latency`).
    pub scenario: &'static str,
    /// Pop mode (drain targets depend on it).
    pub pop: PopMode,
    /// One line describing the workload and the server.
    pub title: String,
    /// Every client, in run order (over TLS with `--tls`).
    pub results: Vec<ClientResult>,
    /// `drain --tls`: the same clients over plaintext, in the same run.
    pub plain: Vec<ClientResult>,
    /// `results` ran over TLS.
    pub tls: bool,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    scenario: &'a str,
    /// Whether `clients` ran over TLS (`--tls`; absent otherwise).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    tls: bool,
    clients: Vec<&'a ClientRow>,
    /// `drain --tls`: the same clients over plaintext.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    plaintext_clients: Vec<&'a ClientRow>,
}

impl ScenarioReport {
    fn row(&self, kind: ClientKind) -> Option<&ClientRow> {
        self.results
            .iter()
            .find(|r| r.kind == kind)
            .and_then(|r| r.outcome.as_ref().ok())
    }

    fn baselines(&self) -> impl Iterator<Item = &ClientRow> {
        self.results
            .iter()
            .filter(|r| r.kind.is_baseline())
            .filter_map(|r| r.outcome.as_ref().ok())
    }

    /// Highest msgs/s among the baselines.
    pub fn best_baseline_rate(&self) -> Option<f64> {
        self.baselines().map(|r| r.msgs_per_sec).reduce(f64::max)
    }

    /// Lowest CPU per message among the baselines.
    pub fn best_baseline_cpu(&self) -> Option<f64> {
        self.baselines().map(|r| r.cpu_us_per_msg).reduce(f64::min)
    }

    /// Lowest p99 latency among the baselines.
    pub fn best_baseline_p99(&self) -> Option<f64> {
        self.baselines().filter_map(|r| r.p99_us).reduce(f64::min)
    }

    fn is_latency(&self) -> bool {
        self.scenario == "latency"
    }

    /// The TLS ÷ plaintext table of `drain --tls`: each client's rate and CPU (its own
    /// and the server's) per message over both, from the same run.
    fn tls_table(&self) -> Option<String> {
        if self.plain.is_empty() {
            return None;
        }
        let mut t = Table::new(
            "TLS ÷ plaintext, same clients, same server, same run".into(),
            vec![
                "client",
                "msgs/s plain",
                "msgs/s TLS",
                "TLS ÷ plain",
                "CPU µs/msg plain",
                "CPU µs/msg TLS",
                "TLS ÷ plain",
                "server CPU µs/msg plain",
                "server CPU µs/msg TLS",
                "TLS ÷ plain",
            ],
        );
        for (p, s) in self.plain.iter().zip(&self.results) {
            let (Ok(p), Ok(s)) = (&p.outcome, &s.outcome) else {
                t.failed(s.kind.name(), "a run failed (see above)");
                continue;
            };
            t.row(vec![
                s.name.clone(),
                format!("{:.0}", p.msgs_per_sec),
                format!("{:.0}", s.msgs_per_sec),
                ratio(Some(s.msgs_per_sec), Some(p.msgs_per_sec)),
                format!("{:.3}", p.cpu_us_per_msg),
                format!("{:.3}", s.cpu_us_per_msg),
                ratio(Some(s.cpu_us_per_msg), Some(p.cpu_us_per_msg)),
                opt(p.server_cpu_us_per_msg, 3),
                opt(s.server_cpu_us_per_msg, 3),
                ratio(s.server_cpu_us_per_msg, p.server_cpu_us_per_msg),
            ]);
        }
        Some(t.render())
    }

    /// The markdown table, its footnotes and the targets.
    pub fn render(&self) -> String {
        let lat = self.is_latency();
        let mut header = vec!["client", "messages", "seconds", "msgs/s", "CPU µs/msg"];
        let server_cpu = !lat;
        if server_cpu {
            header.push("server CPU µs/msg");
        }
        let io = self.results.iter().any(|r| {
            r.outcome
                .as_ref()
                .is_ok_and(|row| row.syscalls_per_msg.is_some())
        });
        if io {
            header.extend(["syscalls/msg", "completions/msg"]);
        }
        if lat {
            header.extend(["p50 µs", "p99 µs", "p99.9 µs", "max µs", "p99 ÷ ping p99"]);
        }
        // Every client of `latency` receives at the producer's rate: there the comparison
        // with the best baseline is by p99, not by msgs/s.
        if lat {
            header.extend(["p99 ÷ best baseline", "CPU ÷ best baseline"]);
        } else {
            header.extend([
                "msgs/s ÷ best baseline",
                "CPU ÷ best baseline",
                "msgs/s ÷ limit",
            ]);
        }
        let mut table = Table::new(self.title.clone(), header);
        let best_rate = self.best_baseline_rate();
        let best_cpu = self.best_baseline_cpu();
        let best_p99 = self.best_baseline_p99();
        let limit_rate = self.row(ClientKind::Limit).map(|r| r.msgs_per_sec);
        let ping_p99 = self.row(ClientKind::Ping).and_then(|r| r.p99_us);
        for r in &self.results {
            table.note(r.kind.name(), r.note.as_deref());
            let row = match &r.outcome {
                Ok(row) => row,
                Err(why) => {
                    table.failed(r.kind.name(), why);
                    continue;
                }
            };
            let mut cells = vec![
                row.name.clone(),
                row.messages.to_string(),
                format!("{:.3}", row.seconds),
                format!("{:.0}", row.msgs_per_sec),
                format!("{:.3}", row.cpu_us_per_msg),
            ];
            if server_cpu {
                cells.push(opt(row.server_cpu_us_per_msg, 3));
            }
            if io {
                cells.push(opt(row.syscalls_per_msg, 4));
                cells.push(opt(row.completions_per_msg, 4));
            }
            let comparable = r.kind != ClientKind::Ping;
            if lat {
                cells.extend([
                    opt(row.p50_us, 1),
                    opt(row.p99_us, 1),
                    opt(row.p999_us, 1),
                    opt(row.max_us, 1),
                    ratio(row.p99_us, ping_p99),
                ]);
            }
            if comparable {
                if lat {
                    cells.push(ratio(row.p99_us, best_p99));
                } else {
                    cells.push(ratio(Some(row.msgs_per_sec), best_rate));
                }
                cells.push(ratio(Some(row.cpu_us_per_msg), best_cpu));
            } else {
                cells.extend(["–".into(), "–".into()]);
            }
            if !lat {
                cells.push(ratio(Some(row.msgs_per_sec), limit_rate));
            }
            table.row(cells);
        }
        table.targets = self.targets();
        let mut out = table.render();
        if let Some(t) = self.tls_table() {
            out.push('\n');
            out.push_str(&t);
        }
        out
    }

    /// The targets that apply to this scenario, each with its measured value and verdict.
    pub fn targets(&self) -> Vec<String> {
        let Some(ringq) = self.row(ClientKind::Ringq) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut check = |what: &str, value: Option<f64>, goal: f64, at_least: bool| {
            out.push(target_line(what, value, goal, at_least));
        };
        let div = |a: f64, b: Option<f64>| b.filter(|b| *b > 0.0).map(|b| a / b);
        match (self.scenario, self.pop) {
            ("drain", PopMode::Batch) => {
                check(
                    "batch drain, ringq msgs/s ÷ best baseline",
                    div(ringq.msgs_per_sec, self.best_baseline_rate()),
                    1.5,
                    true,
                );
                check(
                    "batch drain, ringq msgs/s ÷ limit probe",
                    div(
                        ringq.msgs_per_sec,
                        self.row(ClientKind::Limit).map(|r| r.msgs_per_sec),
                    ),
                    0.8,
                    true,
                );
                if !self.plain.is_empty() {
                    check(
                        "batch drain over TLS, ringq CPU per message ÷ best baseline",
                        div(ringq.cpu_us_per_msg, self.best_baseline_cpu()),
                        0.5,
                        false,
                    );
                }
                if let Some(m) = self.row(ClientKind::RingqMetrics) {
                    check(
                        "metrics scraped every 100 ms, msgs/s ÷ ringq without",
                        div(m.msgs_per_sec, Some(ringq.msgs_per_sec)),
                        0.97,
                        true,
                    );
                    check(
                        "metrics scraped every 100 ms, CPU per message ÷ ringq without",
                        div(m.cpu_us_per_msg, Some(ringq.cpu_us_per_msg)),
                        1.03,
                        false,
                    );
                }
                let epoll = self.row(ClientKind::RingqEpoll);
                check(
                    "batch drain, epoll msgs/s ÷ io_uring",
                    epoll.and_then(|e| div(e.msgs_per_sec, Some(ringq.msgs_per_sec))),
                    0.85,
                    true,
                );
                check(
                    "batch drain, epoll CPU per message ÷ io_uring",
                    epoll.and_then(|e| div(e.cpu_us_per_msg, Some(ringq.cpu_us_per_msg))),
                    1.3,
                    false,
                );
            }
            ("drain", PopMode::Single) => check(
                "one-per-BRPOP, ringq CPU per message ÷ best baseline",
                div(ringq.cpu_us_per_msg, self.best_baseline_cpu()),
                0.2,
                false,
            ),
            ("latency", _) => check(
                "latency, ringq p99 ÷ PING p99",
                ringq
                    .p99_us
                    .and_then(|p| div(p, self.row(ClientKind::Ping).and_then(|r| r.p99_us))),
                1.2,
                false,
            ),
            _ => {}
        }
        out
    }

    /// Writes the contract JSON to `path` (creating its directory).
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        fn ok(v: &[ClientResult]) -> Vec<&ClientRow> {
            v.iter().filter_map(|r| r.outcome.as_ref().ok()).collect()
        }
        let report = JsonReport {
            scenario: self.scenario,
            tls: self.tls,
            clients: ok(&self.results),
            plaintext_clients: ok(&self.plain),
        };
        let text = serde_json::to_string_pretty(&report)?;
        write_file(path, &text)
    }
}

/// A markdown table as every scenario prints it: a `###` title, a header row (the first
/// column left-aligned, the figures right-aligned), one row per client — or the reason it
/// failed — then the clients' footnotes and the targets, each with its verdict.
pub struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<String>,
    notes: Vec<String>,
    /// One line per target (without the leading `- `).
    pub targets: Vec<String>,
}

impl Table {
    /// An empty table.
    pub fn new<H: Into<String>>(title: String, header: Vec<H>) -> Self {
        Self {
            title,
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
            targets: Vec::new(),
        }
    }

    /// A row of figures (as many cells as the header has columns).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(format!("| {} |", cells.join(" | ")));
    }

    /// A client that has no figures, with the reason.
    pub fn failed(&mut self, name: &str, why: &str) {
        let why = why.replace('|', "/").replace('\n', " ");
        let blanks = " |".repeat(self.header.len().saturating_sub(2));
        self.rows
            .push(format!("| {name} | **failed**: {why} |{blanks}"));
    }

    /// A footnote about client `name`, if there is one.
    pub fn note(&mut self, name: &str, note: Option<&str>) {
        if let Some(n) = note {
            self.notes.push(format!("- {name}: {n}"));
        }
    }

    /// The markdown text.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "### {}\n", self.title);
        let _ = writeln!(s, "| {} |", self.header.join(" | "));
        let _ = writeln!(
            s,
            "|---|{}",
            "---:|".repeat(self.header.len().saturating_sub(1))
        );
        for r in &self.rows {
            let _ = writeln!(s, "{r}");
        }
        if !self.notes.is_empty() {
            let _ = writeln!(s, "\n{}", self.notes.join("\n"));
        }
        if !self.targets.is_empty() {
            let _ = writeln!(s, "\nTargets (reported, not asserted):");
            for t in &self.targets {
                let _ = writeln!(s, "- {t}");
            }
        }
        s
    }
}

/// A target's line: the measured ratio `value`, the goal (at least or at most), met or
/// missed; or that it was not measured.
pub fn target_line(what: &str, value: Option<f64>, goal: f64, at_least: bool) -> String {
    match value {
        Some(v) => {
            let ok = if at_least { v >= goal } else { v <= goal };
            let op = if at_least { "≥" } else { "≤" };
            format!("{what}: {v:.2}× (target {op} {goal}×) — {}", verdict(ok))
        }
        None => format!("{what}: not measured (a client it needs did not run)"),
    }
}

/// `a ÷ b` as `1.23×`, or `–` when either is missing or `b` is not positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

/// `v` with `digits` decimals, or `–`.
pub fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

/// A target's verdict.
pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// Both footnotes, joined, or whichever there is.
pub fn join_notes(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    }
}

/// Writes `{"scenario": scenario, "clients": [...]}` (each client row serialized as it
/// is) to `path` when there is one, and says so on stderr: the JSON of every
/// per-client scenario.
///
/// # Errors
/// A row that does not serialize, or a file that cannot be written.
pub fn write_clients_json<T: serde::Serialize>(
    path: Option<&Path>,
    scenario: &str,
    clients: &[&T],
) -> Result<()> {
    let Some(path) = path else {
        return Ok(());
    };
    let json = serde_json::json!({ "scenario": scenario, "clients": clients });
    write_file(path, &serde_json::to_string_pretty(&json)?)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// Writes `text` to `path`, creating missing directories.
///
/// # Errors
/// I/O errors, naming the path.
pub fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    std::fs::write(path, text).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

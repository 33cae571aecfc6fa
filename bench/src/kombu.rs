//! The `kombu` scenario: drain Kombu envelopes (each with its own delivery tag, as
//! Kombu's producer writes them) *with acks*, one client after another on the same
//! server:
//!
//! - `ringq kombu`: ringq's kombu mode (each batch popped and recorded in Kombu's
//!   `unacked` hash and index by one script, acks by the settle script);
//! - `ringq pop`: ringq's pop mode on the same data (the at-most-once ceiling);
//! - `python kombu`: Kombu's own consumer (`Connection.drain_events`, `Message.ack`) from
//!   the virtual environment `scripts/setup.sh` makes, on `--python-messages` messages
//!   (it is about a thousand times slower; rates are compared), reporting its own wall
//!   and CPU time (`time.process_time`).
//! - `kombu records, native`: Kombu's records written with native commands, from the
//!   parent process: pipelined `RPOP q <batch>`, then per batch one `HSET unacked`, one
//!   `ZADD unacked_index` (the records `restore_visible` needs) and one `HDEL` and one
//!   `ZREM` (the acks) — no script and no atomicity (a crash between the pop and the
//!   records would lose the batch, which is why kombu mode uses a script). It shows
//!   what the records themselves cost the server, against kombu mode's script.
//!
//! Each row has the server's CPU per message (`INFO cpu` before and after).

use std::process::Command;

use bytes::BytesMut;
use ringq_resp::{CommandWriter, Frame};
use serde::Serialize;

use crate::child;
use crate::cli::{Cli, ClientKind};
use crate::conn::RawConn;
use crate::error::{Error, Result};
use crate::load;
use crate::noise::measured;
use crate::progress;
use crate::report::{join_notes, opt, ratio, verdict, write_clients_json, Table};
use crate::server::{cpu_seconds_of, Broker};
use crate::spec::{ChildSpec, RELIABLE_ID};

/// The Kombu queue, and the `global_keyprefix` both sides use, so every key the run
/// writes is `ringq-bench:*` (the suite's contract with a server given by `--url`).
const QUEUE: &str = "kq";
pub const PREFIX: &str = "ringq-bench:";

#[derive(Debug, Clone, Serialize)]
struct Row {
    name: String,
    messages: u64,
    seconds: f64,
    msgs_per_sec: f64,
    cpu_us_per_msg: f64,
    server_cpu_us_per_msg: f64,
    left: u64,
}

impl Row {
    /// A row from a drain's (messages, seconds, client CPU seconds), the server's CPU
    /// seconds over it, the `n` messages it was given, and what was `left`.
    fn of(
        name: &str,
        (messages, seconds, cpu): (u64, f64, f64),
        server: f64,
        n: u64,
        left: u64,
    ) -> Self {
        Self {
            name: name.to_owned(),
            messages,
            seconds,
            msgs_per_sec: messages as f64 / seconds.max(1e-9),
            cpu_us_per_msg: cpu * 1e6 / messages.max(1) as f64,
            server_cpu_us_per_msg: server.max(0.0) * 1e6 / n as f64,
            left,
        }
    }
}

struct Outcome {
    name: &'static str,
    row: std::result::Result<Row, String>,
    note: Option<String>,
}

/// Every key a run may leave: the queue's step keys, Kombu's records, ringq's held hash.
fn keys() -> Vec<String> {
    keys_of(&[QUEUE])
}

/// Every key a run over the Kombu queues `queues` (named without the prefix) may leave:
/// their step keys (each queue's four first), Kombu's records and lock, ringq's held
/// hashes.
pub fn keys_of(queues: &[&str]) -> Vec<String> {
    let mut k: Vec<String> = Vec::new();
    for q in queues {
        k.extend(
            ringq::kombu::STEPS
                .iter()
                .map(|&s| format!("{PREFIX}{}", ringq::kombu::queue_key(q, s))),
        );
    }
    for name in [
        "unacked",
        "unacked_index",
        "unacked_mutex",
        "ringq.kombu.unrestorable",
    ] {
        k.push(format!("{PREFIX}{name}"));
    }
    for q in queues {
        k.push(format!(
            "{PREFIX}ringq.kombu.held.{RELIABLE_ID}:{PREFIX}{q}"
        ));
    }
    k
}

/// `n` envelopes of `size`-byte bodies on the queue.
fn fill(url: &str, n: u64, size: usize, what: &str) -> Result<()> {
    load::delete(url, &keys())?;
    let pb = progress::bar(n, &format!("filling for {what}"));
    let body = vec![b'x'; size];
    let r = load::fill_by(url, &[format!("{PREFIX}{QUEUE}")], n, &pb, |_| {
        ringq::kombu::Outgoing::new(body.clone(), "text/plain")
            .routing_key(QUEUE)
            .encode()
    });
    pb.finish_and_clear();
    r
}

/// Runs the scenario, prints its table, writes `--json`.
///
/// # Errors
/// Bad options, a server that cannot be started or reached, an output file that cannot
/// be written. A client that fails is a row in the table.
pub fn run(cli: &Cli) -> Result<()> {
    if cli.tls {
        return Err(Error::new(
            "--tls applies to the drain and latency scenarios",
        ));
    }
    let broker = Broker::open(cli.url.as_deref())?;
    if broker.redis_version < (6, 2, 0) {
        return Err(Error::new(format!(
            "{} has no RPOP with a count or BLMOVE (Redis 6.2+): kombu mode needs them",
            broker.version
        )));
    }
    let n = cli.messages.max(1);
    let title = format!(
        "kombu (Kombu envelopes, acked): {n} messages of {} B bodies in 1 queue ({} for \
         Python); {}; batch {}, pipeline {}",
        cli.size,
        cli.python_messages,
        broker.label(),
        cli.batch,
        cli.pipeline
    );
    eprintln!("{title}");
    let mut results = Vec::new();
    for (name, kombu) in [("ringq kombu", true), ("ringq pop (at-most-once)", false)] {
        fill(&broker.url, n, cli.size, name)?;
        // The kombu child names the Kombu queue (it adds the prefix); pop names the key.
        let queue = if kombu {
            QUEUE.to_owned()
        } else {
            format!("{PREFIX}{QUEUE}")
        };
        let mut spec = ChildSpec::base(cli, &broker, &[queue], ClientKind::Ringq);
        spec.kombu = kombu;
        spec.expected = n;
        spec.shards = 1;
        spec.connections = 1;
        spec.deadline_secs = 60.0 + n as f64 / 2000.0;
        eprintln!("draining: {name} ...");
        let before = cpu_seconds_of(&broker.url)?;
        let (outcome, noise) = measured(&broker, || child::run(&spec, || Ok(())));
        let after = cpu_seconds_of(&broker.url)?;
        let left = load::total_len(&broker.url, &keys()[..4])?;
        let note = join_notes(
            (left > 0).then(|| format!("{left} messages left queued")),
            noise,
        );
        results.push(match outcome {
            Ok(child::ChildOutcome { report, cpu }) => Outcome {
                name,
                row: Ok(Row {
                    name: name.to_owned(),
                    messages: report.messages,
                    seconds: report.seconds,
                    msgs_per_sec: report.messages as f64 / report.seconds.max(1e-9),
                    cpu_us_per_msg: cpu.as_secs_f64() * 1e6 / report.messages.max(1) as f64,
                    server_cpu_us_per_msg: (after - before).max(0.0) * 1e6 / n as f64,
                    left,
                }),
                note: join_notes(note, report.note),
            },
            Err(e) => Outcome {
                name,
                row: Err(e.to_string()),
                note,
            },
        });
    }
    let native_name = "kombu records, native";
    fill(&broker.url, n, cli.size, native_name)?;
    eprintln!("draining: {native_name} ...");
    let before = cpu_seconds_of(&broker.url)?;
    let native = native_records(&broker.url, cli.batch.max(1));
    let after = cpu_seconds_of(&broker.url)?;
    let left = load::total_len(&broker.url, &keys()[..4])?;
    results.push(Outcome {
        name: native_name,
        row: native
            .map(|m| Row::of(native_name, m, after - before, n, left))
            .map_err(|e| e.to_string()),
        note: (left > 0).then(|| format!("{left} messages left queued")),
    });
    let pn = cli.python_messages.max(1);
    fill(&broker.url, pn, cli.size, "python kombu")?;
    eprintln!("draining: python kombu ...");
    let before = cpu_seconds_of(&broker.url)?;
    let python = python_drain(&broker.url, pn);
    let after = cpu_seconds_of(&broker.url)?;
    let left = load::total_len(&broker.url, &keys()[..4])?;
    results.push(Outcome {
        name: "python kombu",
        row: python.map(|m| Row::of("python kombu", m, after - before, pn, left)),
        note: (left > 0).then(|| format!("{left} messages left queued")),
    });
    let _ = load::delete(&broker.url, &keys());
    print!("{}", render(&title, &results));
    let ok: Vec<&Row> = results.iter().filter_map(|r| r.row.as_ref().ok()).collect();
    write_clients_json(cli.json.as_deref(), "kombu", &ok)
}

/// Pops in flight at once when the records are written natively.
const FLOOR_DEPTH: usize = 8;

/// Kombu's records written natively (see the module's doc): drains the queue `batch` at a time, writing
/// and removing each batch's Kombu records without a script. Returns (messages, seconds,
/// this thread's CPU seconds).
fn native_records(url: &str, batch: u32) -> Result<(u64, f64, f64)> {
    let mut conn = RawConn::connect(url)?;
    let (queue, unacked, index) = (
        format!("{PREFIX}{QUEUE}"),
        format!("{PREFIX}unacked"),
        format!("{PREFIX}unacked_index"),
    );
    let tail = format!(", \"\", \"{QUEUE}\"]");
    let score = format!(
        "{:.3}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    );
    let (start, cpu0) = (std::time::Instant::now(), thread_cpu());
    let (mut got, mut tag) = (0u64, 0u64);
    let mut out = BytesMut::new();
    loop {
        out.clear();
        for _ in 0..FLOOR_DEPTH {
            CommandWriter::new(&mut out, 3)
                .arg("RPOP")
                .arg(&queue)
                .arg_int(i64::from(batch))
                .finish();
        }
        conn.write_all(&out)?;
        let mut batches = Vec::with_capacity(FLOOR_DEPTH);
        for _ in 0..FLOOR_DEPTH {
            match conn.read_frame()? {
                Frame::Array(items) => batches.push(items),
                Frame::Null => {}
                other => return Err(Error::new(format!("RPOP answered {other:?}"))),
            }
        }
        if batches.is_empty() {
            break;
        }
        out.clear();
        let mut replies = 0;
        for items in &batches {
            let fields: Vec<Vec<u8>> = (0..items.len())
                .map(|j| format!("ringq:native:{}", tag + j as u64).into_bytes())
                .collect();
            tag += items.len() as u64;
            got += items.len() as u64;
            let n = items.len();
            let mut w = CommandWriter::new(&mut out, 2 + 2 * n)
                .arg("HSET")
                .arg(&unacked);
            for (f, e) in fields.iter().zip(items) {
                let e: &[u8] = e.as_bytes().map_or(&[], |b| b);
                let mut v = Vec::with_capacity(e.len() + 16);
                v.push(b'[');
                v.extend_from_slice(e);
                v.extend_from_slice(tail.as_bytes());
                w = w.arg(f).arg(&v);
            }
            w.finish();
            let mut w = CommandWriter::new(&mut out, 2 + 2 * n)
                .arg("ZADD")
                .arg(&index);
            for f in &fields {
                w = w.arg(&score).arg(f);
            }
            w.finish();
            CommandWriter::new(&mut out, 2 + n)
                .arg("HDEL")
                .arg(&unacked)
                .args(&fields)
                .finish();
            CommandWriter::new(&mut out, 2 + n)
                .arg("ZREM")
                .arg(&index)
                .args(&fields)
                .finish();
            replies += 4;
        }
        conn.write_all(&out)?;
        for _ in 0..replies {
            if let Frame::SimpleError(m) | Frame::BulkError(m) = conn.read_frame()? {
                return Err(Error::new(format!(
                    "the native records were refused: {}",
                    String::from_utf8_lossy(&m)
                )));
            }
        }
    }
    Ok((
        got,
        start.elapsed().as_secs_f64(),
        (thread_cpu() - cpu0).max(0.0),
    ))
}

/// This thread's CPU time in seconds.
fn thread_cpu() -> f64 {
    // SAFETY: all-zero is a valid `timespec`; clock_gettime only writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is valid for writes.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Kombu's consumer draining `n` messages with acks: (messages, seconds, CPU seconds), as
/// the Python process measured them (from its first message on).
fn python_drain(url: &str, n: u64) -> std::result::Result<(u64, f64, f64), String> {
    const SCRIPT: &str = r#"
import json, os, time
from kombu import Connection, Queue
n = int(os.environ["N"])
got = 0
t0 = c0 = None
def on(body, message):
    global got, t0, c0
    if t0 is None:
        t0, c0 = time.perf_counter(), time.process_time()
    got += 1
    message.ack()
opts = {"global_keyprefix": os.environ["PREFIX"]}
with Connection(os.environ["BROKER"], transport_options=opts) as conn:
    with conn.Consumer([Queue(os.environ["Q"])], callbacks=[on], accept=["text/plain"]):
        while got < n:
            conn.drain_events(timeout=30)
print(json.dumps([got, time.perf_counter() - t0, time.process_time() - c0]))
"#;
    let python = ringq_tests::kombu_python()?;
    let out = Command::new(python)
        .args(["-c", SCRIPT])
        .env("BROKER", url)
        .env("N", n.to_string())
        .env("Q", QUEUE)
        .env("PREFIX", PREFIX)
        .output()
        .map_err(|e| format!("running the Kombu consumer: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the Kombu consumer failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let (messages, seconds, cpu): (u64, f64, f64) = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("the Kombu consumer's report: {e}"))?;
    Ok((messages, seconds, cpu))
}

fn render(title: &str, results: &[Outcome]) -> String {
    let find = |prefix: &str| {
        results
            .iter()
            .find(|r| r.name.starts_with(prefix))
            .and_then(|r| r.row.as_ref().ok())
    };
    let python = find("python");
    let mut table = Table::new(
        title.to_owned(),
        vec![
            "client",
            "messages",
            "seconds",
            "msgs/s",
            "CPU µs/msg",
            "server CPU µs/msg",
            "msgs/s ÷ python",
            "server CPU ÷ python",
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
                opt(Some(row.server_cpu_us_per_msg), 3),
                ratio(Some(row.msgs_per_sec), python.map(|b| b.msgs_per_sec)),
                ratio(
                    Some(row.server_cpu_us_per_msg),
                    python.map(|b| b.server_cpu_us_per_msg),
                ),
                row.left.to_string(),
            ]),
            Err(why) => table.failed(r.name, why),
        }
    }
    let t = &mut table.targets;
    if let Some(k) = find("ringq kombu") {
        match python {
            Some(p) => {
                let r = k.msgs_per_sec / p.msgs_per_sec.max(1e-9);
                t.push(format!(
                    "kombu mode ÷ Kombu's consumer: {r:.0}× (target ≥ 100×) — {}",
                    verdict(r >= 100.0)
                ));
            }
            None => t.push("÷ Kombu's consumer: not measured (python kombu did not run)".into()),
        }
        if let Some(p) = find("ringq pop") {
            let r = k.msgs_per_sec / p.msgs_per_sec.max(1e-9);
            t.push(format!(
                "kombu mode ÷ pop mode, same data: {r:.2}× (target ≥ 0.3×) — {}",
                verdict(r >= 0.3)
            ));
            if let Some(f) = find("kombu records") {
                // The server is the bottleneck of a drain: its CPU per message bounds
                // the rate. 0.3× pop's rate leaves the records and acks this much.
                let budget = p.server_cpu_us_per_msg / 0.3 - p.server_cpu_us_per_msg;
                t.push(format!(
                    "Kombu's records and acks written natively (no script) cost the server \
                     {:.3} µs per message, kombu mode's script {:.3}, pop mode {:.3}: 0.3× \
                     pop mode's rate leaves them {budget:.3} µs",
                    f.server_cpu_us_per_msg, k.server_cpu_us_per_msg, p.server_cpu_us_per_msg
                ));
            }
        }
    }
    table.render()
}

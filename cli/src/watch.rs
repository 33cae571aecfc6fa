//! `ringq stats --watch [SECONDS]`: each queue's (or stream's) depths every SECONDS, with
//! the rate each changed at since the refresh before, until interrupted.
//!
//! On a terminal the lines are redrawn in place (cursor home, clear); otherwise (a pipe,
//! a log) one line per queue and refresh, prefixed with the seconds since the start, so
//! the output is a time series. `--format json` prints one object per queue and refresh.
//!
//! Reliable and pop queues show `pending` (LLEN), `leased` (every consumer's leased list,
//! markers included: the cheap reading), `retry` and `dead`; streams `length`, the groups'
//! `lag` and `pending` (summed) and `dead`. A negative rate means draining.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use ringq::envelope::keys;
use ringq_resp::Frame;
use serde_json::json;

use crate::admin::int;
use crate::args::{AdminMode, ServerArgs, StatsFormat};
use crate::client::Conn;
use crate::exit::Exit;
use crate::stream_admin::{list, pairs};

/// The figures of one source at one instant, by name.
type Figures = Vec<(&'static str, i64)>;

/// Reads `q`'s figures.
fn read(c: &mut Conn, mode: AdminMode, q: &str) -> Result<Figures, Exit> {
    let qb = q.as_bytes();
    let what = format!("reading '{q}'");
    if mode == AdminMode::Stream {
        let length = int(&c.cmd(&[&b"XLEN"[..], qb], &what)?);
        let dead = int(&c.cmd(&[&b"XLEN"[..], &keys::dead(qb)], &what)?);
        let (mut lag, mut pending) = (0, 0);
        if length > 0 {
            for g in list(c.cmd(&[&b"XINFO"[..], b"GROUPS", qb], &what)?) {
                for (k, v) in pairs(&g) {
                    match k.as_str() {
                        "lag" => lag += int(v),
                        "pending" => pending += int(v),
                        _ => {}
                    }
                }
            }
        }
        return Ok(vec![
            ("length", length),
            ("lag", lag),
            ("pending", pending),
            ("dead", dead),
        ]);
    }
    let pending = int(&c.cmd(&[&b"LLEN"[..], qb], &what)?);
    let retry = int(&c.cmd(&[&b"ZCARD"[..], &keys::retry(qb)], &what)?);
    let dead = int(&c.cmd(&[&b"LLEN"[..], &keys::dead(qb)], &what)?);
    let mut leased = 0;
    let ids = c.cmd(&[&b"SMEMBERS"[..], &keys::consumers(qb)], &what)?;
    for id in list(ids) {
        if let Frame::BulkString(id) = id {
            leased += int(&c.cmd(&[&b"LLEN"[..], &keys::processing(qb, &id)], &what)?);
        }
    }
    Ok(vec![
        ("pending", pending),
        ("leased", leased),
        ("retry", retry),
        ("dead", dead),
    ])
}

/// Runs the watch until the process is interrupted.
///
/// # Errors
/// A server that cannot be reached or refuses a read (the first refresh; later ones
/// report the error and try again at the next refresh).
pub fn watch(
    server: &ServerArgs,
    mode: AdminMode,
    queues: &[String],
    every: Duration,
    format: StatsFormat,
) -> Result<(), Exit> {
    let mut conns = Vec::new();
    for q in queues {
        // In a cluster each queue's keys are on its own node.
        conns.push(Conn::open(server, q.as_bytes())?);
    }
    let tty = std::io::stdout().is_terminal() && format == StatsFormat::Text;
    let start = Instant::now();
    let mut last: Vec<Option<(Instant, Figures)>> = vec![None; queues.len()];
    let mut first = true;
    loop {
        let mut out = String::new();
        if tty {
            out.push_str("\x1b[H\x1b[2J");
            out.push_str(&format!(
                "ringq stats --watch {:.1} s (Ctrl-C to stop)\n",
                every.as_secs_f64()
            ));
        }
        for (i, q) in queues.iter().enumerate() {
            let now = Instant::now();
            let figures = match read(&mut conns[i], mode, q) {
                Ok(f) => f,
                Err(e) if !first => {
                    eprintln!(
                        "ringq: {}; trying again in {:.1} s",
                        e.message,
                        every.as_secs_f64()
                    );
                    if let Ok(c) = Conn::open(server, q.as_bytes()) {
                        conns[i] = c;
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            let rates: Vec<Option<f64>> = match &last[i] {
                Some((then, before)) => {
                    let dt = now.duration_since(*then).as_secs_f64().max(1e-3);
                    figures
                        .iter()
                        .zip(before)
                        .map(|((_, v), (_, b))| Some((v - b) as f64 / dt))
                        .collect()
                }
                None => vec![None; figures.len()],
            };
            let t = start.elapsed().as_secs_f64();
            match format {
                StatsFormat::Json => {
                    let mut o = serde_json::Map::new();
                    o.insert("t".into(), json!((t * 1000.0).round() / 1000.0));
                    o.insert("queue".into(), json!(q));
                    for ((name, v), r) in figures.iter().zip(&rates) {
                        o.insert((*name).into(), json!(v));
                        o.insert(format!("{name}_per_sec"), json!(r.map(|r| r.round())));
                    }
                    out.push_str(&serde_json::Value::Object(o).to_string());
                }
                StatsFormat::Text => {
                    if !tty {
                        out.push_str(&format!("{t:.1}s "));
                    }
                    out.push_str(&format!("{q}:"));
                    for ((name, v), r) in figures.iter().zip(&rates) {
                        match r {
                            Some(r) => out.push_str(&format!(" {name} {v} ({r:+.0}/s)")),
                            None => out.push_str(&format!(" {name} {v}")),
                        }
                    }
                }
            }
            out.push('\n');
            last[i] = Some((now, figures));
        }
        first = false;
        let mut stdout = std::io::stdout().lock();
        if stdout
            .write_all(out.as_bytes())
            .and_then(|()| stdout.flush())
            .is_err()
        {
            // The reader went away: nothing more to show.
            return Ok(());
        }
        drop(stdout);
        std::thread::sleep(every);
    }
}

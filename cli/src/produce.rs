//! `ringq produce` and `ringq publish`: N messages with pipelined LPUSH (or PUBLISH,
//! SPUBLISH) over one blocking connection.
//!
//! This is a test and load tool, not the engine: a plain `std` socket, RESP2, `AUTH` and
//! `SELECT` from the URL, then rounds of up to [`PIPELINE`] commands written at once
//! and their replies read and checked (an error reply stops the run with status 1).
//!
//! With `--rate R`, message `i` is due at `start + i/R`: each round sends what is due by
//! now, so a late round is caught up by the next instead of shifting the whole schedule.

use std::io::{self, IsTerminal};
use std::time::{Duration, Instant};

use ringq_resp::{encode_command, Frame};

use crate::args::{ProduceArgs, ProduceMode, PublishArgs};
use crate::client::Conn;
use crate::exit::Exit;

/// Most commands in one pipeline round.
const PIPELINE: u64 = 256;
/// Most payload bytes in one pipeline round (big `--size` payloads get smaller rounds).
const ROUND_BYTES: u64 = 4 << 20;
/// How often progress is redrawn on a terminal.
const PROGRESS_PERIOD: Duration = Duration::from_millis(200);

/// Runs `ringq produce`.
///
/// # Errors
/// A bad URL (status 2); a connection, AUTH, SELECT or LPUSH failure (status 1).
pub fn run(a: ProduceArgs) -> Result<(), Exit> {
    let kombu = a.mode == ProduceMode::Kombu;
    if !kombu && (a.priority.is_some() || a.task.is_some()) {
        return Err(Exit::usage(
            "--priority and --task apply to --mode kombu only",
        ));
    }
    let key = if kombu {
        ringq::kombu::queue_key(&a.queue, a.priority.unwrap_or(0))
    } else {
        a.queue.clone()
    };
    let wrap = kombu.then(|| Kombu {
        queue: a.queue.clone(),
        priority: a.priority.unwrap_or(0),
        task: a.task.clone(),
    });
    let done = pump(&Pump {
        server: &a.server,
        command: if a.stream { "XADD" } else { "LPUSH" },
        key: &key,
        tag: a.tag.as_deref(),
        messages: a.messages,
        size: a.size,
        rate: a.rate,
        kombu: wrap.as_ref(),
    })?;
    eprintln!(
        "ringq: produced {} messages to '{}' in {:.3} s ({:.0} msgs/s)",
        done.sent,
        a.queue,
        done.secs,
        done.sent as f64 / done.secs.max(1e-9)
    );
    Ok(())
}

/// Runs `ringq publish`.
///
/// # Errors
/// A bad URL (status 2); a connection, AUTH, SELECT or PUBLISH failure (status 1).
pub fn publish(a: PublishArgs) -> Result<(), Exit> {
    let done = pump(&Pump {
        server: &a.server,
        command: if a.shard { "SPUBLISH" } else { "PUBLISH" },
        key: &a.channel,
        tag: None,
        messages: a.messages,
        size: a.size,
        rate: a.rate,
        kombu: None,
    })?;
    let per = done.replies as f64 / (done.sent.max(1) as f64);
    eprintln!(
        "ringq: published {} messages to '{}' in {:.3} s ({:.0} msgs/s); {} deliveries to \
         subscribers ({per:.2} per message)",
        done.sent,
        a.channel,
        done.secs,
        done.sent as f64 / done.secs.max(1e-9),
        done.replies
    );
    Ok(())
}

/// One pipelined run: `messages` commands `command key payload`.
struct Pump<'a> {
    server: &'a crate::args::ServerArgs,
    command: &'static str,
    key: &'a str,
    /// XADD only: a `tag` field.
    tag: Option<&'a str>,
    messages: u64,
    size: Option<u64>,
    rate: Option<f64>,
    /// `--mode kombu`: how to wrap each payload.
    kombu: Option<&'a Kombu>,
}

/// `--mode kombu`: each payload becomes a Kombu message for `queue` (a Celery task when
/// `task` is set, its one argument the sequence number or the payload).
struct Kombu {
    queue: String,
    priority: u8,
    task: Option<String>,
}

impl Kombu {
    fn wrap(&self, payload: &[u8], seq: Option<u64>) -> Vec<u8> {
        use ringq::kombu::Outgoing;
        let text = String::from_utf8_lossy(payload);
        let m = match &self.task {
            Some(name) => {
                let arg = seq.map_or_else(|| serde_json::json!(text), |i| serde_json::json!(i));
                Outgoing::celery_task(name, serde_json::json!([arg]), serde_json::json!({}))
            }
            None => Outgoing::new(payload, "text/plain"),
        };
        m.routing_key(&self.queue).priority(self.priority).encode()
    }
}

/// What a run did.
struct Pumped {
    sent: u64,
    /// The integer replies summed (LPUSH: list lengths; PUBLISH: receivers).
    replies: i64,
    secs: f64,
}

fn pump(p: &Pump<'_>) -> Result<Pumped, Exit> {
    let mut conn = Conn::open(p.server, p.key.as_bytes())?;

    let filler = p.size.map(|s| vec![b'x'; s as usize]);
    let payload = |i: u64, buf: &mut Vec<u8>| {
        buf.clear();
        match &filler {
            Some(f) => buf.extend_from_slice(f),
            None => buf.extend_from_slice(i.to_string().as_bytes()),
        }
    };
    let per_round = p
        .size
        .map_or(PIPELINE, |s| (ROUND_BYTES / s.max(1)).clamp(1, PIPELINE));
    let progress = io::stderr().is_terminal();
    let start = Instant::now();
    let mut last_progress = start;
    let mut sent = 0u64;
    let mut replies = 0i64;
    let mut out = Vec::new();
    let mut body = Vec::new();
    while sent < p.messages {
        let due = match p.rate {
            None => p.messages,
            Some(rate) => {
                // Messages 0..=floor(elapsed·R) are due now.
                let due = (start.elapsed().as_secs_f64() * rate).floor() as u64 + 1;
                if due <= sent {
                    let next = start + Duration::from_secs_f64(sent as f64 / rate);
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    continue;
                }
                due.min(p.messages)
            }
        };
        let n = (due - sent).min(per_round);
        out.clear();
        for i in sent..sent + n {
            payload(i, &mut body);
            if let Some(k) = p.kombu {
                body = k.wrap(&body, filler.is_none().then_some(i));
            }
            if p.command == "XADD" {
                let mut args: Vec<&[u8]> = vec![b"XADD", p.key.as_bytes(), b"*", b"payload", &body];
                if let Some(t) = p.tag {
                    args.extend([&b"tag"[..], t.as_bytes()]);
                }
                encode_command(&mut out, args);
            } else {
                encode_command(&mut out, [p.command.as_bytes(), p.key.as_bytes(), &body]);
            }
        }
        conn.write(&out)?;
        for _ in 0..n {
            match conn.read_reply()? {
                Frame::Integer(k) => replies += k,
                Frame::BulkString(_) if p.command == "XADD" => replies += 1,
                other => {
                    let (cmd, key) = (p.command, p.key);
                    return Err(Exit::runtime(match other.to_server_error() {
                        Some(e) if e.is_redirect() => format!(
                            "{cmd} to '{key}' failed after {sent} messages: {e}; the cluster \
                             moved '{key}' to another node: run again (it asks the cluster \
                             where '{key}' is now)"
                        ),
                        Some(e) => format!("{cmd} to '{key}' failed after {sent} messages: {e}"),
                        None => format!("{cmd} to '{key}': unexpected reply {other:?}"),
                    }));
                }
            }
        }
        sent += n;
        if progress && last_progress.elapsed() >= PROGRESS_PERIOD {
            last_progress = Instant::now();
            let secs = start.elapsed().as_secs_f64();
            eprint!(
                "\r\x1b[Kringq: {sent}/{} messages, {:.0} msgs/s",
                p.messages,
                sent as f64 / secs.max(1e-9)
            );
        }
    }
    if progress {
        eprint!("\r\x1b[K");
    }
    Ok(Pumped {
        sent,
        replies,
        secs: start.elapsed().as_secs_f64(),
    })
}

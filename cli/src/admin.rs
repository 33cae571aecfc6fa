//! `ringq stats` and `ringq dead`: what a reliable-mode queue holds, and its dead letters,
//! read and changed with plain commands over one blocking connection. The key names are
//! the engine's ([`ringq::envelope::keys`]).

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ringq::envelope::{self, keys};
use ringq_resp::Frame;
use serde_json::json;

use crate::args::{AdminMode, DeadAction, DeadArgs, Format, StatsArgs, StatsFormat};
use crate::client::Conn;
use crate::exit::Exit;
use crate::output::write_raw;

/// Moves up to `ARGV[1]` of the oldest dead letters (`KEYS[1]`) back to the consuming end
/// of the queue (`KEYS[2]`), each with a fresh delivery count (its id kept).
const REQUEUE_DEAD: &str = r"local n = tonumber(ARGV[1])
local moved = 0
while moved < n do
  local e = redis.call('RPOP', KEYS[1])
  if not e then break end
  local nl = string.find(e, '\n', 1, true)
  if string.sub(e, 1, 5) == '\0rq1 ' and nl then
    local id = string.match(string.sub(e, 1, nl - 1), ' id=([^ ]+)')
    local payload = string.sub(e, nl + 1)
    if id then e = '\0rq1 d=0 id=' .. id .. '\n' .. payload else e = payload end
  end
  redis.call('RPUSH', KEYS[2], e)
  moved = moved + 1
end
return moved
";

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn int(f: &Frame) -> i64 {
    match f {
        Frame::Integer(n) => *n,
        Frame::BulkString(b) | Frame::SimpleString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

fn strings(f: Frame) -> Vec<Vec<u8>> {
    match f {
        Frame::Array(v) | Frame::Set(v) => v
            .into_iter()
            .filter_map(|x| match x {
                Frame::BulkString(b) | Frame::SimpleString(b) => Some(b.to_vec()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// `prefix*` as a SCAN pattern, with the prefix's glob characters escaped.
fn glob_prefix(prefix: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(prefix.len() + 4);
    for &b in prefix {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            p.push(b'\\');
        }
        p.push(b);
    }
    p.push(b'*');
    p
}

/// One consumer of a queue, as `ringq stats` shows it.
struct ConsumerRow {
    id: String,
    processing: i64,
    /// Age of its heartbeat in ms, or `None` when it has expired.
    heartbeat_age_ms: Option<u64>,
}

/// Runs `ringq stats`.
///
/// # Errors
/// A bad URL (status 2); a connection or command failure (status 1).
pub fn stats(a: StatsArgs) -> Result<(), Exit> {
    if let Some(every) = a.watch {
        return crate::watch::watch(&a.server, a.mode, &a.queues, every, a.format);
    }
    if a.mode == AdminMode::Stream {
        return crate::stream_admin::stats(&a.server, &a.queues, a.format);
    }
    for q in &a.queues {
        // In a cluster each queue's keys are on its own node.
        let mut c = Conn::open(&a.server, q.as_bytes())?;
        let qb = q.as_bytes();
        let what = format!("reading queue '{q}'");
        let pending = int(&c.cmd(&[&b"LLEN"[..], qb], &what)?);
        let retry = int(&c.cmd(&[&b"ZCARD"[..], &keys::retry(qb)], &what)?);
        let dead = int(&c.cmd(&[&b"LLEN"[..], &keys::dead(qb)], &what)?);
        // Consumers: the set's members, and any leased list left by one that is not
        // in it (a consumer swept while its list was being written, or an old one).
        let mut ids: BTreeSet<Vec<u8>> =
            strings(c.cmd(&[&b"SMEMBERS"[..], &keys::consumers(qb)], &what)?)
                .into_iter()
                .collect();
        let prefix = keys::processing_prefix(qb);
        let pattern = glob_prefix(&prefix);
        let mut cursor = b"0".to_vec();
        loop {
            let reply = c.cmd(
                &[&b"SCAN"[..], &cursor, b"MATCH", &pattern, b"COUNT", b"1000"],
                &what,
            )?;
            let Frame::Array(mut parts) = reply else {
                break;
            };
            if parts.len() != 2 {
                break;
            }
            let found = strings(parts.pop().unwrap_or(Frame::Null));
            cursor = strings(Frame::Array(parts))
                .pop()
                .unwrap_or_else(|| b"0".to_vec());
            ids.extend(
                found
                    .into_iter()
                    .filter_map(|k| k.strip_prefix(&prefix[..]).map(<[u8]>::to_vec)),
            );
            if cursor == b"0" {
                break;
            }
        }
        let now = now_ms();
        let mut rows = Vec::new();
        for id in ids {
            // Leased messages: the list's length less the markers of messages settled
            // out of order that wait there for the tail.
            let list = keys::processing(qb, &id);
            let len = int(&c.cmd(&[&b"LLEN"[..], &list], &what)?);
            let markers =
                match c.cmd(&[&b"LPOS"[..], &list, keys::SETTLED, b"COUNT", b"0"], &what)? {
                    Frame::Array(v) => v.len() as i64,
                    _ => 0,
                };
            let processing = len - markers;
            let beat = c.cmd(&[&b"GET"[..], &keys::heartbeat(qb, &id)], &what)?;
            let heartbeat_age_ms = match beat {
                Frame::Null => None,
                f => Some(now.saturating_sub(int(&f).max(0) as u64)),
            };
            rows.push(ConsumerRow {
                id: String::from_utf8_lossy(&id).into_owned(),
                processing,
                heartbeat_age_ms,
            });
        }
        match a.format {
            StatsFormat::Json => {
                let consumers: Vec<_> = rows
                    .iter()
                    .map(|r| {
                        json!({
                            "id": r.id,
                            "processing": r.processing,
                            "alive": r.heartbeat_age_ms.is_some(),
                            "heartbeat_age_ms": r.heartbeat_age_ms,
                        })
                    })
                    .collect();
                let line = json!({
                    "queue": q,
                    "pending": pending,
                    "processing": rows.iter().map(|r| r.processing).sum::<i64>(),
                    "retry": retry,
                    "dead": dead,
                    "consumers": consumers,
                });
                println!("{line}");
            }
            StatsFormat::Text => {
                println!("queue {q}: pending {pending}, retry {retry}, dead {dead}");
                for r in &rows {
                    let beat = r.heartbeat_age_ms.map_or_else(
                        || {
                            "heartbeat expired (another consumer takes its messages back)"
                                .to_owned()
                        },
                        |age| format!("heartbeat {:.1} s ago", age as f64 / 1000.0),
                    );
                    println!("  consumer {}: processing {}, {beat}", r.id, r.processing);
                }
            }
        }
    }
    Ok(())
}

/// Runs `ringq dead`.
///
/// # Errors
/// A bad URL (status 2); a connection or command failure (status 1).
pub fn dead(a: DeadArgs) -> Result<(), Exit> {
    let mut c = Conn::open(&a.server, a.queue.as_bytes())?;
    if a.mode == AdminMode::Stream {
        return crate::stream_admin::dead(&mut c, &a.queue, a.action);
    }
    let q = a.queue.as_bytes();
    let dead = keys::dead(q);
    let what = format!("the dead list of '{}'", a.queue);
    match a.action {
        DeadAction::List { count, format } => {
            if count == 0 {
                return Ok(());
            }
            let last = (count - 1).to_string();
            let entries = strings(c.cmd(&[&b"LRANGE"[..], &dead, b"0", last.as_bytes()], &what)?);
            let mut out = Vec::new();
            for e in entries {
                let env = envelope::parse(&e);
                let payload = &e[env.as_ref().map_or(0, |v| v.header_len)..];
                match format {
                    Format::Raw => write_raw(&mut out, payload),
                    Format::Json => {
                        let mut line = json!({
                            "queue": a.queue,
                            "payload": String::from_utf8_lossy(payload),
                            "deliveries": env.as_ref().map_or(1, |v| v.deliveries),
                            "dead_at_ms": env.as_ref().and_then(|v| v.dead_at_ms),
                            "reason": env.as_ref().and_then(|v| v.reason.as_deref()),
                            "id": env.as_ref().and_then(|v| v.id).map(String::from_utf8_lossy),
                        });
                        if std::str::from_utf8(payload).is_err() {
                            line["payload_base64"] = base64::engine::general_purpose::STANDARD
                                .encode(payload)
                                .into();
                        }
                        out.extend_from_slice(line.to_string().as_bytes());
                        out.push(b'\n');
                    }
                }
            }
            use std::io::Write;
            std::io::stdout()
                .write_all(&out)
                .and_then(|()| std::io::stdout().flush())
                .map_err(|e| Exit::runtime(format!("writing to stdout: {e}")))?;
        }
        DeadAction::Requeue { count } => {
            let n = count
                .unwrap_or(i64::MAX as u64)
                .min(i64::MAX as u64)
                .to_string();
            let moved = int(&c.cmd(
                &[
                    &b"EVAL"[..],
                    REQUEUE_DEAD.as_bytes(),
                    b"2",
                    &dead,
                    q,
                    n.as_bytes(),
                ],
                &what,
            )?);
            eprintln!("ringq: requeued {moved} dead letter(s) onto '{}'", a.queue);
        }
        DeadAction::Purge => {
            let n = int(&c.cmd(&[&b"LLEN"[..], &dead], &what)?);
            c.cmd(&[&b"DEL"[..], &dead], &what)?;
            eprintln!("ringq: purged {n} dead letter(s) of '{}'", a.queue);
        }
    }
    Ok(())
}

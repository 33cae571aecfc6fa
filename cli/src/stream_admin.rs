//! `ringq stats --mode stream` and `ringq dead --mode stream`: a stream's consumer groups
//! (lag, pending entries, consumers) and its dead stream `{S}:dead`, over the blocking
//! client.

use base64::Engine as _;
use ringq::envelope::keys;
use ringq_resp::Frame;
use serde_json::{json, Map, Value};

use crate::args::{DeadAction, Format, StatsFormat};
use crate::client::Conn;
use crate::exit::Exit;
use crate::output::write_raw;

/// Moves up to `ARGV[1]` of the oldest dead entries (`KEYS[1]`) back to the stream
/// (`KEYS[2]`) as new entries with their own fields (ringq's `ringq-*` fields dropped),
/// each in one atomic step. Returns how many moved.
const REQUEUE_DEAD: &str = r"local n = tonumber(ARGV[1])
local entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', n)
for _, e in ipairs(entries) do
  local f = {}
  for i = 1, #e[2], 2 do
    if string.sub(e[2][i], 1, 6) ~= 'ringq-' then
      f[#f + 1] = e[2][i]
      f[#f + 1] = e[2][i + 1]
    end
  end
  if #f == 0 then f = {'payload', ''} end
  redis.call('XADD', KEYS[2], '*', unpack(f))
  redis.call('XDEL', KEYS[1], e[1])
end
return #entries
";

/// A RESP map or flat array of pairs, as (name, value).
pub(crate) fn pairs(f: &Frame) -> Vec<(String, &Frame)> {
    let items: Vec<(&Frame, &Frame)> = match f {
        Frame::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
        Frame::Array(v) => v
            .chunks(2)
            .filter_map(|c| Some((c.first()?, c.get(1)?)))
            .collect(),
        _ => Vec::new(),
    };
    items
        .into_iter()
        .filter_map(|(k, v)| match k {
            Frame::BulkString(b) | Frame::SimpleString(b) => {
                Some((String::from_utf8_lossy(b).into_owned(), v))
            }
            _ => None,
        })
        .collect()
}

fn to_json(f: &Frame) -> Value {
    match f {
        Frame::Integer(n) => json!(n),
        Frame::BulkString(b) | Frame::SimpleString(b) => json!(String::from_utf8_lossy(b)),
        Frame::Null => Value::Null,
        Frame::Double(d) => json!(d),
        other => json!(format!("{other:?}")),
    }
}

pub(crate) fn list(f: Frame) -> Vec<Frame> {
    match f {
        Frame::Array(v) | Frame::Set(v) => v,
        _ => Vec::new(),
    }
}

/// `ringq stats --mode stream`. A stream that does not exist is shown as such, with
/// zeros (`"exists": false` in JSON), as a list queue that does not exist shows zeros.
///
/// # Errors
/// A connection or command failure (status 1).
pub fn stats(
    server: &crate::args::ServerArgs,
    streams: &[String],
    format: StatsFormat,
) -> Result<(), Exit> {
    for s in streams {
        // In a cluster each stream is on its own node.
        let mut conn = Conn::open(server, s.as_bytes())?;
        let c = &mut conn;
        let what = format!("reading stream '{s}'");
        let len = c.cmd(&["XLEN", s.as_str()], &what)?;
        let dead = c.cmd(&[&b"XLEN"[..], &keys::dead(s.as_bytes())], &what)?;
        // XINFO GROUPS fails on a missing key ("ERR no such key"): ask first.
        let exists = matches!(c.cmd(&["EXISTS", s.as_str()], &what)?, Frame::Integer(n) if n > 0);
        let groups = if exists {
            list(c.cmd(&["XINFO", "GROUPS", s.as_str()], &what)?)
        } else {
            Vec::new()
        };
        let mut out_groups = Vec::new();
        for g in &groups {
            let fields = pairs(g);
            let mut m = Map::new();
            for (k, v) in &fields {
                if matches!(
                    k.as_str(),
                    "name" | "consumers" | "pending" | "lag" | "last-delivered-id" | "entries-read"
                ) {
                    m.insert(k.clone(), to_json(v));
                }
            }
            let name = m
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let consumers = list(c.cmd(&["XINFO", "CONSUMERS", s.as_str(), name.as_str()], &what)?);
            let rows: Vec<Value> = consumers
                .iter()
                .map(|x| {
                    let mut r = Map::new();
                    for (k, v) in pairs(x) {
                        if matches!(k.as_str(), "name" | "pending" | "idle" | "inactive") {
                            r.insert(k, to_json(v));
                        }
                    }
                    Value::Object(r)
                })
                .collect();
            m.insert("consumers".into(), Value::Array(rows));
            out_groups.push(Value::Object(m));
        }
        let line = json!({
            "stream": s,
            "exists": exists,
            "length": to_json(&len),
            "dead": to_json(&dead),
            "groups": out_groups,
        });
        match format {
            StatsFormat::Json => println!("{line}"),
            StatsFormat::Text => {
                let missing = if exists { "" } else { " (does not exist)" };
                println!(
                    "stream {s}{missing}: length {}, dead {}",
                    line["length"], line["dead"]
                );
                for g in line["groups"].as_array().into_iter().flatten() {
                    println!(
                        "  group {}: lag {}, pending {}",
                        g["name"].as_str().unwrap_or("?"),
                        g["lag"],
                        g["pending"]
                    );
                    for r in g["consumers"].as_array().into_iter().flatten() {
                        println!(
                            "    consumer {}: pending {}, idle {} ms",
                            r["name"].as_str().unwrap_or("?"),
                            r["pending"],
                            r["idle"]
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// `ringq dead --mode stream`.
///
/// # Errors
/// A connection or command failure (status 1), or a failed write to stdout.
pub fn dead(c: &mut Conn, stream: &str, action: DeadAction) -> Result<(), Exit> {
    let dead = keys::dead(stream.as_bytes());
    let what = format!("the dead stream of '{stream}'");
    match action {
        DeadAction::List { count, format } => {
            let n = count.to_string();
            let entries = list(c.cmd(
                &[&b"XREVRANGE"[..], &dead, b"+", b"-", b"COUNT", n.as_bytes()],
                &what,
            )?);
            let mut out = Vec::new();
            for e in entries {
                let mut parts = list(e).into_iter();
                let id = parts.next();
                let fields = parts
                    .next()
                    .map(|f| {
                        pairs(&f)
                            .into_iter()
                            .map(|(k, v)| (k, v.clone()))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                let payload = fields
                    .iter()
                    .find(|(k, _)| k == "payload")
                    .and_then(|(_, v)| match v {
                        Frame::BulkString(b) => Some(b.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                match format {
                    Format::Raw => write_raw(&mut out, &payload),
                    Format::Json => {
                        let mut m = Map::new();
                        m.insert("dead_id".into(), id.as_ref().map_or(Value::Null, to_json));
                        for (k, v) in &fields {
                            m.insert(k.clone(), to_json(v));
                        }
                        if std::str::from_utf8(&payload).is_err() {
                            m.insert(
                                "payload_base64".into(),
                                base64::engine::general_purpose::STANDARD
                                    .encode(&payload)
                                    .into(),
                            );
                        }
                        out.extend_from_slice(Value::Object(m).to_string().as_bytes());
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
            let n = count.unwrap_or(1 << 40).to_string();
            let moved = match c.cmd(
                &[
                    &b"EVAL"[..],
                    REQUEUE_DEAD.as_bytes(),
                    b"2",
                    &dead,
                    stream.as_bytes(),
                    n.as_bytes(),
                ],
                &what,
            )? {
                Frame::Integer(k) => k,
                _ => 0,
            };
            eprintln!("ringq: requeued {moved} dead entr(ies) onto '{stream}'");
        }
        DeadAction::Purge => {
            let n = match c.cmd(&[&b"XLEN"[..], &dead], &what)? {
                Frame::Integer(k) => k,
                _ => 0,
            };
            c.cmd(&[&b"DEL"[..], &dead], &what)?;
            eprintln!("ringq: purged {n} dead entr(ies) of '{stream}'");
        }
    }
    Ok(())
}

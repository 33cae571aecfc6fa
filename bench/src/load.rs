//! The parent's load generators, never part of a consumer's CPU figures:
//! - [`fill`]: pre-fills queues for `drain` with pipelined multi-value LPUSH, writing
//!   from one thread and counting the replies on another, so the writer never waits for a
//!   round trip;
//! - [`produce`] and [`produce_paced`]: the paced producer (in `crate::paced`);
//! - what the scenarios read and clean up on the server (lengths, stream groups, keys).

use std::thread;

use bytes::BytesMut;
use indicatif::ProgressBar;
use ringq_resp::{CommandWriter, Frame};

use crate::conn::RawConn;
use crate::error::{Error, Result};
pub use crate::paced::{produce, produce_paced, Produced, Push, Schedule};

/// Values per LPUSH when filling.
const FILL_VALUES_PER_COMMAND: u64 = 1000;
/// Bytes of commands buffered before a write when filling.
const FILL_WRITE_BYTES: usize = 1 << 20;

/// Counts `expected` replies on a reply-only connection; an error reply fails.
fn count_replies(mut conn: RawConn, expected: u64) -> Result<()> {
    for _ in 0..expected {
        match conn.read_frame()? {
            Frame::SimpleError(m) | Frame::BulkError(m) => {
                return Err(Error::new(format!(
                    "LPUSH failed: {}",
                    String::from_utf8_lossy(&m)
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Deletes `keys` (one DEL).
///
/// # Errors
/// Connection and server errors.
pub fn delete(url: &str, keys: &[String]) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let mut conn = RawConn::connect(url)?;
    let mut args: Vec<&str> = vec!["DEL"];
    args.extend(keys.iter().map(String::as_str));
    conn.command_ok(args)?;
    Ok(())
}

/// Sum of `LLEN` over `keys`.
///
/// # Errors
/// Connection and server errors.
pub fn total_len(url: &str, keys: &[String]) -> Result<u64> {
    let mut conn = RawConn::connect(url)?;
    let mut total = 0;
    for k in keys {
        match conn.command_ok(["LLEN", k.as_str()])? {
            Frame::Integer(n) => total += n.max(0) as u64,
            f => return Err(Error::new(format!("unexpected LLEN reply: {f:?}"))),
        }
    }
    Ok(total)
}

/// Replaces each of `queues` with `per_queue` messages of `size` bytes.
///
/// # Errors
/// Connection and server errors (an out-of-memory server, a wrong key type).
pub fn fill(
    url: &str,
    queues: &[String],
    per_queue: u64,
    size: usize,
    pb: &ProgressBar,
) -> Result<()> {
    let payload = vec![b'x'; size];
    fill_by(url, queues, per_queue, pb, |_| payload.clone())
}

/// Replaces each of `queues` with `per_queue` elements made by `element(i)`.
///
/// # Errors
/// Connection and server errors (an out-of-memory server, a wrong key type).
pub fn fill_by(
    url: &str,
    queues: &[String],
    per_queue: u64,
    pb: &ProgressBar,
    mut element: impl FnMut(u64) -> Vec<u8> + Send,
) -> Result<()> {
    delete(url, queues)?;
    let mut conn = RawConn::connect(url)?;
    let commands_per_queue = per_queue.div_ceil(FILL_VALUES_PER_COMMAND);
    let expected = commands_per_queue * queues.len() as u64;
    let reader = RawConn::from_stream(conn.try_clone_stream()?);
    thread::scope(|s| {
        let replies = s.spawn(move || count_replies(reader, expected));
        let mut out = BytesMut::with_capacity(FILL_WRITE_BYTES + 64 * 1024);
        let mut pushed = 0;
        let mut write = || -> Result<()> {
            for q in queues {
                let mut left = per_queue;
                while left > 0 {
                    let n = left.min(FILL_VALUES_PER_COMMAND);
                    let mut w = CommandWriter::new(&mut out, 2 + n as usize)
                        .arg("LPUSH")
                        .arg(q);
                    for i in 0..n {
                        w = w.arg(element(pushed + i));
                    }
                    w.finish();
                    left -= n;
                    pushed += n;
                    if out.len() >= FILL_WRITE_BYTES {
                        conn.write_all(&out)?;
                        out.clear();
                        pb.set_position(pushed);
                    }
                }
            }
            conn.write_all(&out)
        };
        let written = write();
        if written.is_err() {
            // Unblock the reader: the replies it waits for will never come.
            conn.shutdown();
        }
        let counted = replies
            .join()
            .unwrap_or_else(|_| Err(Error::new("the reply reader panicked")));
        pb.set_position(pushed);
        written.and(counted)
    })
}

/// Replaces `stream` with `count` entries `payload = <size bytes>` (a server-side loop,
/// 10 000 entries a call) and creates the consumer group `group` at its start.
///
/// # Errors
/// Connection and server errors.
pub fn fill_stream(
    url: &str,
    stream: &str,
    group: &str,
    count: u64,
    size: usize,
    pb: &ProgressBar,
) -> Result<()> {
    delete(url, &[stream.to_owned()])?;
    let mut conn = RawConn::connect(url)?;
    let payload = vec![b'x'; size];
    let script = "for i = 1, tonumber(ARGV[1]) do redis.call('XADD', KEYS[1], '*', 'payload', ARGV[2]) end return 1";
    let mut left = count;
    while left > 0 {
        let n = left.min(10_000);
        let n_s = n.to_string();
        conn.command_ok([
            &b"EVAL"[..],
            script.as_bytes(),
            b"1",
            stream.as_bytes(),
            n_s.as_bytes(),
            &payload,
        ])?;
        left -= n;
        pb.set_position(count - left);
    }
    conn.command_ok(["XGROUP", "CREATE", stream, group, "0"])?;
    Ok(())
}

/// The group's pending entries plus its lag (entries not yet delivered): 0 once a
/// stream is drained and every entry acknowledged.
///
/// # Errors
/// Connection and server errors.
pub fn stream_left(url: &str, stream: &str, group: &str) -> Result<u64> {
    let mut conn = RawConn::connect(url)?;
    let pending = match conn.command_ok(["XPENDING", stream, group])? {
        Frame::Array(v) => match v.first() {
            Some(Frame::Integer(n)) => (*n).max(0) as u64,
            _ => 0,
        },
        _ => 0,
    };
    let lag = match conn.command_ok(["XINFO", "GROUPS", stream])? {
        Frame::Array(groups) => groups
            .iter()
            .find_map(|g| {
                let kv: Vec<&Frame> = match g {
                    Frame::Array(v) => v.iter().collect(),
                    Frame::Map(m) => m.iter().flat_map(|(k, v)| [k, v]).collect(),
                    _ => return None,
                };
                kv.chunks(2).find_map(|p| match (p[0], p.get(1)?) {
                    (Frame::BulkString(k), Frame::Integer(v)) if k.as_ref() == b"lag" => {
                        Some((*v).max(0) as u64)
                    }
                    _ => None,
                })
            })
            .unwrap_or(0),
        _ => 0,
    };
    Ok(pending + lag)
}

/// Creates the consumer group `group` on `stream` (MKSTREAM) at its end.
///
/// # Errors
/// Connection and server errors.
pub fn create_group(url: &str, stream: &str, group: &str) -> Result<()> {
    let mut conn = RawConn::connect(url)?;
    conn.command_ok(["XGROUP", "CREATE", stream, group, "$", "MKSTREAM"])?;
    Ok(())
}

/// Publishes `count` messages of `size` bytes with `push` (`PUBLISH` or `SPUBLISH`),
/// round-robin over `channels`, as fast as the server takes them (pipelined from one thread; replies counted on another). Returns the seconds from
/// the first write to the last reply, and the receivers summed over the replies.
///
/// # Errors
/// Connection and server errors.
pub fn publish_burst(
    url: &str,
    push: Push,
    channels: &[String],
    count: u64,
    size: usize,
) -> Result<(f64, u64)> {
    let mut conn = RawConn::connect(url)?;
    let mut reader = RawConn::from_stream(conn.try_clone_stream()?);
    let payload = vec![b'x'; size];
    thread::scope(|s| {
        let start = std::time::Instant::now();
        let replies = s.spawn(move || -> Result<u64> {
            let mut receivers = 0u64;
            for _ in 0..count {
                match reader.read_frame()? {
                    Frame::Integer(n) => receivers += u64::try_from(n).unwrap_or(0),
                    other => return Err(Error::new(format!("{} failed: {other:?}", push.name()))),
                }
            }
            Ok(receivers)
        });
        let mut out = BytesMut::with_capacity(FILL_WRITE_BYTES + 4096);
        let sent = (|| -> Result<()> {
            for i in 0..count {
                CommandWriter::new(&mut out, 3)
                    .arg(push.name())
                    .arg(&channels[(i % channels.len() as u64) as usize])
                    .arg(&payload)
                    .finish();
                if out.len() >= FILL_WRITE_BYTES {
                    conn.write_all(&out)?;
                    out.clear();
                }
            }
            conn.write_all(&out)
        })();
        if sent.is_err() {
            conn.shutdown();
        }
        let receivers = replies
            .join()
            .unwrap_or_else(|_| Err(Error::new("the reply reader panicked")));
        sent?;
        Ok((start.elapsed().as_secs_f64(), receivers?))
    })
}

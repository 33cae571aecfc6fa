//! The raw limit probe: what the server can deliver when the client does as little as
//! possible. One OS thread and one blocking socket per lane.
//!
//! - `drain`: `--pipeline` non-blocking `RPOP key batch` (batch) or `RPOP key`
//!   (single) in flight, rotating over the lane's queues and dropping a queue once it
//!   answers empty. Replies are only *counted*: ringq-resp's `Decoder::scan` finds where
//!   a reply ends, and its first header line says how many elements it has; payloads are
//!   never looked at, nothing is allocated per message.
//! - `latency`: the same blocking pops as the other clients (BRPOP / BLMPOP COUNT), with
//!   payloads walked by ringq-resp's zero-allocation `Reader` to read their time stamps.
//!
//! - `stream`: `--pipeline` non-blocking `XREADGROUP … COUNT batch STREAMS s >` in
//!   flight on the lane's first stream; each reply is walked with the `Reader` only for
//!   its entry ids, which go straight back as one `XACK`, pipelined with the next read.
//!
//! Reads go straight into the spare capacity of one buffer (`read(2)`, no zeroing, no
//! copy).

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use ringq_resp::{CommandWriter, Reader, Token};

use super::Sink;
use crate::cli::PopMode;
use crate::conn::RawConn;
use crate::error::{Error, Result};
use crate::spec::ChildSpec;

pub fn run(spec: &ChildSpec, sink: &Arc<Sink>) -> Result<Option<String>> {
    let mut conns = Vec::new();
    for lane in 0..spec.lanes() {
        conns.push((RawConn::connect(&spec.url)?, spec.lane_queues(lane)));
    }
    sink.watchdog(super::deadline(spec), || {});
    let mut threads = Vec::new();
    for (conn, keys) in conns {
        let sink = sink.clone();
        let (pop, batch, pipeline, latency, stream) = (
            spec.pop,
            spec.batch,
            spec.pipeline.max(1),
            spec.latency,
            spec.stream,
        );
        let t = std::thread::Builder::new()
            .name("limit".into())
            .spawn(move || {
                let r = if stream {
                    stream_lane(conn, &keys, batch, pipeline, &sink)
                } else if latency {
                    blocking_lane(conn, &keys, pop, batch, pipeline, &sink)
                } else {
                    drain_lane(conn, &keys, pop, batch, pipeline, &sink)
                };
                if let Err(e) = r {
                    sink.fail(format!("limit: {e}"));
                }
            })
            .map_err(|e| Error::io("spawning a limit-probe thread", e))?;
        threads.push(t);
    }
    sink.ready();
    for t in threads {
        let _ = t.join();
    }
    Ok(None)
}

fn encode_rpop(out: &mut BytesMut, pop: PopMode, key: &str, batch: u32) {
    match pop {
        PopMode::Single => CommandWriter::new(out, 2).arg("RPOP").arg(key).finish(),
        PopMode::Batch => CommandWriter::new(out, 3)
            .arg("RPOP")
            .arg(key)
            .arg_int(i64::from(batch))
            .finish(),
    }
}

/// Elements in a complete `RPOP key` / `RPOP key count` reply, from its first line only.
fn count_elements(frame: &[u8]) -> Result<u64> {
    let line_end = frame
        .iter()
        .position(|&b| b == b'\r')
        .unwrap_or(frame.len());
    let (kind, digits) = frame[..line_end].split_first().unwrap_or((&b'?', &[]));
    let number = || -> Result<i64> {
        std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| Error::new("bad length in a reply"))
    };
    match kind {
        b'_' => Ok(0),
        b'$' => Ok(u64::from(number()? >= 0)),
        b'*' => Ok(number()?.max(0) as u64),
        b'-' | b'!' => Err(Error::new(format!(
            "RPOP failed: {}",
            String::from_utf8_lossy(&frame[1..line_end])
        ))),
        _ => Err(Error::new(format!(
            "unexpected RPOP reply: {}",
            String::from_utf8_lossy(&frame[..line_end])
        ))),
    }
}

fn drain_lane(
    mut conn: RawConn,
    keys: &[String],
    pop: PopMode,
    batch: u32,
    pipeline: u32,
    sink: &Sink,
) -> Result<()> {
    let mut live: Vec<bool> = vec![true; keys.len()];
    // Queue index of each pop in flight, oldest first.
    let mut in_flight = std::collections::VecDeque::new();
    let mut next = 0usize;
    let mut out = BytesMut::new();
    let issue = |out: &mut BytesMut,
                 in_flight: &mut std::collections::VecDeque<usize>,
                 next: &mut usize,
                 live: &[bool]| {
        for step in 0..keys.len() {
            let q = (*next + step) % keys.len();
            if live[q] {
                encode_rpop(out, pop, &keys[q], batch);
                in_flight.push_back(q);
                *next = q + 1;
                return;
            }
        }
    };
    for _ in 0..pipeline {
        issue(&mut out, &mut in_flight, &mut next, &live);
    }
    conn.write_all(&out)?;
    while !in_flight.is_empty() {
        conn.fill()?;
        out.clear();
        let (buf, decoder) = conn.buffer();
        while let Some(n) = decoder.scan(buf)? {
            let elements = count_elements(&buf[..n])?;
            buf.advance(n);
            let q = in_flight.pop_front().unwrap_or(0);
            if elements == 0 {
                live[q] = false;
            } else if sink.add(elements) {
                return Ok(());
            }
            issue(&mut out, &mut in_flight, &mut next, &live);
        }
        if !out.is_empty() {
            conn.write_all(&out)?;
        }
    }
    Ok(())
}

fn blocking_lane(
    mut conn: RawConn,
    keys: &[String],
    pop: PopMode,
    batch: u32,
    pipeline: u32,
    sink: &Sink,
) -> Result<()> {
    let mut out = BytesMut::new();
    for _ in 0..pipeline {
        super::encode_blocking_pop(&mut out, pop, keys, batch);
    }
    conn.write_all(&out)?;
    let mut values: Vec<Bytes> = Vec::with_capacity(batch as usize);
    loop {
        let frame = conn.read_raw_frame()?;
        values.clear();
        let mut r = Reader::new(frame);
        match r.next_value_token()? {
            Token::Null => {}
            Token::Array(2) => {
                r.skip_value()?;
                match r.next_value_token()? {
                    Token::BulkString(v) => values.push(v),
                    Token::Array(n) => {
                        for _ in 0..n {
                            if let Ok(v) = r.next_bytes()? {
                                values.push(v);
                            }
                        }
                    }
                    t => return Err(Error::new(format!("unexpected pop reply element: {t:?}"))),
                }
            }
            Token::SimpleError(m) | Token::BulkError(m) => {
                return Err(Error::new(format!(
                    "pop failed: {}",
                    String::from_utf8_lossy(&m)
                )))
            }
            t => return Err(Error::new(format!("unexpected pop reply: {t:?}"))),
        }
        if sink.consume(values.iter().map(|v| &v[..])) {
            return Ok(());
        }
        out.clear();
        super::encode_blocking_pop(&mut out, pop, keys, batch);
        conn.write_all(&out)?;
    }
}

fn encode_read(out: &mut BytesMut, key: &str, batch: u32) {
    CommandWriter::new(out, 9)
        .arg("XREADGROUP")
        .arg("GROUP")
        .arg(crate::spec::STREAM_GROUP)
        .arg("limit")
        .arg("COUNT")
        .arg_int(i64::from(batch))
        .arg("STREAMS")
        .arg(key)
        .arg(">")
        .finish();
}

fn stream_lane(
    mut conn: RawConn,
    keys: &[String],
    batch: u32,
    pipeline: u32,
    sink: &Sink,
) -> Result<()> {
    let Some(key) = keys.first() else {
        return Ok(());
    };
    // What each reply in flight answers: true for a read, false for an XACK.
    let mut in_flight = std::collections::VecDeque::new();
    let mut out = BytesMut::new();
    for _ in 0..pipeline {
        encode_read(&mut out, key, batch);
        in_flight.push_back(true);
    }
    conn.write_all(&out)?;
    let mut dry = false;
    let mut done = false;
    let mut ids: Vec<Bytes> = Vec::with_capacity(batch as usize);
    while !in_flight.is_empty() {
        conn.fill()?;
        out.clear();
        let (buf, decoder) = conn.buffer();
        while let Some(n) = decoder.scan(buf)? {
            let frame = buf.split_to(n).freeze();
            if !in_flight.pop_front().unwrap_or(false) {
                if frame.first() == Some(&b'-') {
                    return Err(Error::new(format!(
                        "XACK failed: {}",
                        String::from_utf8_lossy(&frame)
                    )));
                }
                continue;
            }
            ids.clear();
            let mut r = Reader::new(frame);
            match r.next_value_token()? {
                Token::Null => {}
                Token::Array(_) => {
                    // [[stream, [[id, fields]…]]]
                    let _ = r.next_value_token()?;
                    r.skip_value()?;
                    if let Token::Array(m) = r.next_value_token()? {
                        for _ in 0..m {
                            let _ = r.next_value_token()?;
                            if let Ok(id) = r.next_bytes()? {
                                ids.push(id);
                            }
                            r.skip_value()?;
                        }
                    }
                }
                Token::SimpleError(m) | Token::BulkError(m) => {
                    return Err(Error::new(format!(
                        "XREADGROUP failed: {}",
                        String::from_utf8_lossy(&m)
                    )))
                }
                t => return Err(Error::new(format!("unexpected XREADGROUP reply: {t:?}"))),
            }
            if ids.is_empty() {
                dry = true;
                continue;
            }
            CommandWriter::new(&mut out, 3 + ids.len())
                .arg("XACK")
                .arg(key)
                .arg(crate::spec::STREAM_GROUP)
                .args(ids.iter())
                .finish();
            in_flight.push_back(false);
            done = done || sink.add(ids.len() as u64);
            if !dry && !done {
                encode_read(&mut out, key, batch);
                in_flight.push_back(true);
            }
        }
        if !out.is_empty() {
            conn.write_all(&out)?;
        }
    }
    Ok(())
}

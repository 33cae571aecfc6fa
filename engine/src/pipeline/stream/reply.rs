//! Stream replies, walked with the codec's zero-allocation [`Reader`]:
//! - XREADGROUP: `_`/`*-1` (nothing), a RESP3 map `{stream: [entry…]}` or a RESP2 array
//!   `[[stream, [entry…]]…]`;
//! - the fetch script (own pending entries, or XAUTOCLAIM):
//!   `[cursor, [entry…], [deliveries…], deleted]`;
//! - XCLAIM (a retry's redelivery): `[entry…]`.
//!
//! An entry is `[id, [field, value, …]]`. A message's payload is the payload field's
//! value (borrowed from the frame), its `aux` the entry id; an entry whose tag does not
//! pass its stream's filter is not delivered but handed back to be acknowledged.

use std::ops::Range;

use bytes::Bytes;
use ringq_resp::{Reader, ServerError, ServerErrorKind, Token};

use super::StreamPlan;
use crate::conn::{classify, Failure};
use crate::error::{Error, ErrorKind};
use crate::handler::{Message, Payload, Span};

/// What one reply held.
#[derive(Debug, Default)]
pub(crate) struct ReadReply {
    /// Messages appended to the output.
    pub count: u32,
    pub bytes: u64,
    pub largest: u64,
    /// Fetch script: where the next claim continues (`0-0`: done), or the last id read
    /// of the own pending entries (empty: none left).
    pub cursor: Option<Range<usize>>,
    /// Fetch script: pending entries the server had deleted (trimmed, XDEL), acknowledged.
    pub deleted: u64,
}

fn proto(e: impl std::fmt::Display) -> Failure {
    Failure::Fatal(Error::new(
        ErrorKind::Protocol,
        format!("malformed stream reply: {e}"),
    ))
}

fn malformed(what: &str, t: &Token) -> Failure {
    Failure::Fatal(Error::new(
        ErrorKind::Protocol,
        format!("unexpected stream reply: {what}, got {t:?}"),
    ))
}

/// A server error on a stream command.
pub(crate) fn server_error(plan: &StreamPlan, m: Bytes) -> Failure {
    classify::failure("stream command", ServerError::parse(m), |kind| match kind {
        ServerErrorKind::NoGroup => Some(format!(
            ": the consumer group {:?} no longer exists on the server: the server lost it \
             (most likely a restart without persistence: AOF or RDB off), or someone ran \
             XGROUP DESTROY or deleted the stream. ringq does not recreate it behind your \
             back, because where the group starts reading again (new entries only, or \
             from the start) is your decision: restart the consumer, which runs XGROUP \
             CREATE … MKSTREAM at start from where it is configured to \
             (StreamConsumer::start, `ringq consume --from`)",
            String::from_utf8_lossy(&plan.consumer.group)
        )),
        ServerErrorKind::NoPerm => {
            Some("; the ACL user needs +@stream, +evalsha and access to the stream keys".to_owned())
        }
        _ => None,
    })
}

/// Walks one entry `[id, fields]` of stream `s`, delivering it to `out` (or to
/// `filtered` when its tag does not pass) with `deliveries`. Returns the id's range.
#[allow(
    clippy::too_many_arguments,
    reason = "one entry of a reply: the plan, the reader, the frame, the stream, its delivery count and the three outputs, all borrowed from the caller's loop"
)]
fn entry<'f>(
    plan: &StreamPlan,
    r: &mut Reader,
    frame: &'f Bytes,
    s: u32,
    deliveries: u32,
    received_ns: u64,
    reply: &mut ReadReply,
    out: &mut Vec<Message<'f>>,
    filtered: &mut Vec<(u32, Range<usize>)>,
) -> Result<Range<usize>, Failure> {
    // [id, fields], or with XREADGROUP … CLAIM a claimed entry [id, fields, idle ms,
    // deliveries] (integers since Redis 8.4.2, strings before).
    let claimed = match r.next_value_token().map_err(proto)? {
        Token::Array(2) => false,
        Token::Array(4) => true,
        t => return Err(malformed("expected an entry [id, fields]", &t)),
    };
    let id = match r.next_range().map_err(proto)? {
        Ok(at) => at,
        Err(t) => return Err(malformed("expected an entry id", &t)),
    };
    let nfields = match r.next_value_token().map_err(proto)? {
        Token::Array(n) | Token::Map(n) => n,
        // A pending entry the server deleted: nothing to deliver.
        Token::Null => {
            if claimed {
                r.skip_value().map_err(proto)?;
                r.skip_value().map_err(proto)?;
            }
            return Ok(id);
        }
        t => return Err(malformed("expected the entry's fields", &t)),
    };
    let pairs = nfields / 2;
    let (mut payload, mut tag) = (None, None);
    for _ in 0..pairs {
        let name = match r.next_range().map_err(proto)? {
            Ok(at) => at,
            Err(t) => return Err(malformed("expected a field name", &t)),
        };
        let value = match r.next_range().map_err(proto)? {
            Ok(at) => at,
            Err(t) => return Err(malformed("expected a field value", &t)),
        };
        if frame[name.clone()] == plan.consumer.payload_field[..] {
            payload = Some(value);
        } else if frame[name] == plan.consumer.tag_field[..] {
            tag = Some(value);
        }
    }
    let mut deliveries = deliveries;
    if claimed {
        r.skip_value().map_err(proto)?;
        let n = match r.next_value_token().map_err(proto)? {
            Token::Integer(n) => n,
            Token::BulkString(b) | Token::SimpleString(b) => std::str::from_utf8(&b)
                .ok()
                .and_then(|t| t.parse().ok())
                .unwrap_or(2),
            t => return Err(malformed("expected a delivery count", &t)),
        };
        deliveries = n.clamp(1, i64::from(u32::MAX)) as u32;
    }
    let stream = &plan.consumer.streams[s as usize];
    if !stream.accepts(tag.map(|t| &frame[t])) {
        filtered.push((s, id.clone()));
        return Ok(id);
    }
    let at = payload.unwrap_or(0..0);
    let len = at.len() as u64;
    reply.count += 1;
    reply.bytes += len;
    reply.largest = reply.largest.max(len);
    out.push(Message {
        payload: Payload::Lent {
            bytes: &frame[at],
            frame,
        },
        source: plan.sources[s as usize],
        aux: Span::of(&frame[id.clone()], frame),
        deliveries,
        received_ns,
        seq: 0,
    });
    Ok(id)
}

/// An XREADGROUP reply (new entries: first deliveries).
pub(crate) fn parse_read<'f>(
    plan: &StreamPlan,
    frame: &'f Bytes,
    received_ns: u64,
    out: &mut Vec<Message<'f>>,
    filtered: &mut Vec<(u32, Range<usize>)>,
) -> Result<ReadReply, Failure> {
    let mut r = Reader::new(frame.clone());
    let mut reply = ReadReply::default();
    let (n, map) = match r.next_value_token().map_err(proto)? {
        Token::Null => return Ok(reply),
        Token::SimpleError(m) | Token::BulkError(m) => return Err(server_error(plan, m)),
        Token::Map(n) => (n, true),
        Token::Array(n) => (n, false),
        t => return Err(malformed("expected streams", &t)),
    };
    for _ in 0..n {
        if !map {
            match r.next_value_token().map_err(proto)? {
                Token::Array(2) => {}
                t => return Err(malformed("expected [stream, entries]", &t)),
            }
        }
        let name = match r.next_slice().map_err(proto)? {
            Ok(k) => k,
            Err(t) => return Err(malformed("expected a stream name", &t)),
        };
        let Some(&s) = plan.index.get(name) else {
            return Err(Failure::Fatal(Error::new(
                ErrorKind::Protocol,
                format!(
                    "XREADGROUP reply names stream {:?}, which this consumer did not ask for",
                    String::from_utf8_lossy(name)
                ),
            )));
        };
        let m = match r.next_value_token().map_err(proto)? {
            Token::Array(m) => m,
            Token::Null => 0,
            t => return Err(malformed("expected entries", &t)),
        };
        for _ in 0..m {
            entry(
                plan,
                &mut r,
                frame,
                s,
                1,
                received_ns,
                &mut reply,
                out,
                filtered,
            )?;
        }
    }
    Ok(reply)
}

/// The fetch script's reply for stream `s`.
pub(crate) fn parse_fetch<'f>(
    plan: &StreamPlan,
    s: u32,
    frame: &'f Bytes,
    received_ns: u64,
    out: &mut Vec<Message<'f>>,
    filtered: &mut Vec<(u32, Range<usize>)>,
) -> Result<ReadReply, Failure> {
    let mut r = Reader::new(frame.clone());
    let mut reply = ReadReply::default();
    match r.next_value_token().map_err(proto)? {
        Token::Array(4) => {}
        Token::SimpleError(m) | Token::BulkError(m) => return Err(server_error(plan, m)),
        t => {
            return Err(malformed(
                "expected [cursor, entries, deliveries, deleted]",
                &t,
            ))
        }
    }
    reply.cursor = match r.next_range().map_err(proto)? {
        Ok(at) => Some(at),
        Err(t) => return Err(malformed("expected a cursor", &t)),
    };
    let n = match r.next_value_token().map_err(proto)? {
        Token::Array(n) => n,
        Token::Null => 0,
        t => return Err(malformed("expected entries", &t)),
    };
    // The delivery counts come after the entries: read them first from a second reader.
    let mut counts = Vec::with_capacity(n);
    {
        let mut c = Reader::new(frame.clone());
        let _ = c.next_value_token().map_err(proto)?;
        let _ = c.next_range().map_err(proto)?;
        let _ = c.next_value_token().map_err(proto)?;
        for _ in 0..n {
            c.skip_value().map_err(proto)?;
        }
        match c.next_value_token().map_err(proto)? {
            Token::Array(k) => {
                for _ in 0..k {
                    match c.next_value_token().map_err(proto)? {
                        Token::Integer(d) => counts.push(d.clamp(1, i64::from(u32::MAX)) as u32),
                        t => return Err(malformed("expected a delivery count", &t)),
                    }
                }
            }
            t => return Err(malformed("expected delivery counts", &t)),
        }
        if let Token::Integer(d) = c.next_value_token().map_err(proto)? {
            reply.deleted = d.max(0) as u64;
        }
    }
    for i in 0..n {
        let d = counts.get(i).copied().unwrap_or(2);
        entry(
            plan,
            &mut r,
            frame,
            s,
            d,
            received_ns,
            &mut reply,
            out,
            filtered,
        )?;
    }
    Ok(reply)
}

/// An XCLAIM reply: entries redelivered after a retry, with `deliveries(id)` each.
pub(crate) fn parse_claim<'f>(
    plan: &StreamPlan,
    s: u32,
    frame: &'f Bytes,
    received_ns: u64,
    deliveries: &mut dyn FnMut(&[u8]) -> u32,
    out: &mut Vec<Message<'f>>,
    filtered: &mut Vec<(u32, Range<usize>)>,
) -> Result<ReadReply, Failure> {
    let mut r = Reader::new(frame.clone());
    let mut reply = ReadReply::default();
    let n = match r.next_value_token().map_err(proto)? {
        Token::Array(n) => n,
        Token::Null => 0,
        Token::SimpleError(m) | Token::BulkError(m) => return Err(server_error(plan, m)),
        t => return Err(malformed("expected claimed entries", &t)),
    };
    for _ in 0..n {
        // Peek the id for its delivery count: entries are [id, fields].
        let mut peek = r.clone();
        let _ = peek.next_value_token().map_err(proto)?;
        let d = match peek.next_slice().map_err(proto)? {
            Ok(id) => deliveries(id),
            Err(_) => 2,
        };
        entry(
            plan,
            &mut r,
            frame,
            s,
            d,
            received_ns,
            &mut reply,
            out,
            filtered,
        )?;
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::stream::{StreamConsumer, StreamPipeline};

    #[test]
    fn reads_new_and_claimed_entries_in_both_protocols() {
        let p = StreamPipeline::new(
            &StreamConsumer::new("g", "c", ["s"]),
            None,
            vec![vec![0]],
            crate::pipeline::Timing {
                reply_grace: std::time::Duration::from_secs(1),
                reply_timeout: std::time::Duration::from_secs(10),
            },
        );
        let plan = p.plan();
        // RESP2: a new entry, and a claimed one (idle 5000 ms, 3 deliveries) as XREADGROUP
        // … CLAIM answers.
        let resp2 = Bytes::from_static(
            b"*1\r\n*2\r\n$1\r\ns\r\n*2\r\n\
              *2\r\n$3\r\n1-0\r\n*2\r\n$7\r\npayload\r\n$1\r\na\r\n\
              *4\r\n$3\r\n2-0\r\n*4\r\n$3\r\ntag\r\n$1\r\nT\r\n$7\r\npayload\r\n$1\r\nb\r\n:5000\r\n:3\r\n",
        );
        let (mut out, mut filtered) = (Vec::new(), Vec::new());
        let r = parse_read(plan, &resp2, 0, &mut out, &mut filtered).unwrap();
        assert_eq!(r.count, 2);
        assert_eq!(
            (out[0].payload(), out[0].id(), out[0].deliveries()),
            (&b"a"[..], &b"1-0"[..], 1)
        );
        assert_eq!(
            (out[1].payload(), out[1].id(), out[1].deliveries()),
            (&b"b"[..], &b"2-0"[..], 3)
        );
        // RESP3: a map of streams; a claimed count as a string (before 8.4.2).
        let resp3 = Bytes::from_static(
            b"%1\r\n$1\r\ns\r\n*1\r\n*4\r\n$3\r\n3-0\r\n*2\r\n$7\r\npayload\r\n$1\r\nc\r\n$4\r\n1000\r\n$1\r\n7\r\n",
        );
        out.clear();
        parse_read(plan, &resp3, 0, &mut out, &mut filtered).unwrap();
        assert_eq!((out[0].payload(), out[0].deliveries()), (&b"c"[..], 7));
        assert!(filtered.is_empty());
    }
}

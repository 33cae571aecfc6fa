//! Pop replies: `_`/`*-1` (nothing), `*2 key value` (BRPOP), `*2 key *N values…` (LMPOP),
//! or an error, walked with the codec's zero-allocation [`Reader`].

use std::ops::Range;

use bytes::Bytes;
use ringq_resp::{Reader, ServerError, ServerErrorKind, Token};

use super::dialect::Dialect;
use super::PopPlan;
use crate::conn::{classify, Failure};
use crate::envelope;
use crate::error::{Error, ErrorKind};
use crate::handler::{Message, Payload, Source, Span};

/// What one pop reply held.
#[derive(Debug, Default)]
pub(crate) struct PopReply {
    /// Messages kept (appended to the output).
    pub count: u32,
    pub bytes: u64,
    /// The largest payload in the reply.
    pub largest: u64,
    pub queue: Option<u32>,
    /// Messages beyond the [`Budget`](super::Budget), left at the end of the output for
    /// the caller to push back to the server (blocking pops in the budget's last moments
    /// only).
    pub excess: u32,
    /// The server ended the blocked pop with `-UNBLOCKED` (our own CLIENT UNBLOCK during a
    /// stop, an administrator's, or a role change); the text is the server's.
    pub unblocked: Option<Bytes>,
    /// Reliable mode: the leased list's head position right after this lease (read by
    /// the server in the same atomic step): the reply's elements are the `count + excess`
    /// positions before it.
    pub head: Option<u64>,
    /// Reliable mode's wait (`BLMOVE k k RIGHT RIGHT`) found a message in queue `queue`:
    /// nothing was leased; the lane leases next.
    pub woke: bool,
}

fn malformed(what: &str, t: &Token) -> Failure {
    Failure::Fatal(Error::new(
        ErrorKind::Protocol,
        format!("unexpected pop reply: {what}, got {t:?}"),
    ))
}

fn server_error<D>(plan: &PopPlan<D>, msg: Bytes) -> Failure {
    let names: Vec<String> = plan
        .consumer
        .queues
        .iter()
        .map(|q| String::from_utf8_lossy(&q.name).into_owned())
        .collect();
    classify::failure(
        &format!("pop from queues {names:?}"),
        ServerError::parse(msg),
        |kind| {
            let hint = match kind {
                ServerErrorKind::WrongType => "; a queue key holds something other than a list",
                ServerErrorKind::NoPerm => {
                    "; the ACL user needs +@list (and +evalsha in reliable mode) and access to the queue keys"
                }
                _ => return None,
            };
            Some(hint.to_owned())
        },
    )
}

/// Reads `_`/`*-1` (nothing), `*2 key value` (BRPOP) or `*2 key *N values…` (LMPOP), and
/// in reliable mode `*3 key *N values head` (the lease script). Reliable mode's fetches
/// of queue `single`: when `blocking`, the wait's element or nothing (no message: the
/// lane leases next); else the `EXEC` of the large-message `LMOVE`, `*3 element-or-null
/// tail-or-null length`. The messages borrow their payloads from `frame`: no reference
/// count per message. In reliable mode a message's `aux` is the whole list element (what
/// its outcome names), its payload what follows the envelope, if it has one.
pub(super) fn parse_pop_reply<'f, D: Dialect>(
    plan: &PopPlan<D>,
    single: Option<u32>,
    blocking: bool,
    frame: &'f Bytes,
    received_ns: u64,
    out: &mut Vec<Message<'f>>,
) -> Result<PopReply, Failure> {
    let mut r = Reader::new(frame.clone());
    let mut lend = Lender::<D> {
        frame,
        received_ns,
        bytes: 0,
        largest: 0,
        next: 0,
        dialect: std::marker::PhantomData,
    };
    let t = match single {
        Some(q) if blocking => match r.next_range().map_err(proto)? {
            // The wait saw a message: the lease script takes it next.
            Ok(_) => {
                return Ok(PopReply {
                    queue: Some(q),
                    woke: true,
                    ..PopReply::default()
                })
            }
            Err(t) => t,
        },
        Some(q) => {
            let key = &plan.consumer.queues[q as usize].levels[0].1;
            let source = plan.keys[key];
            match r.next_value_token().map_err(proto)? {
                Token::Array(3) => {}
                t @ (Token::SimpleError(_) | Token::BulkError(_) | Token::Null) => {
                    return single_error(plan, t)
                }
                t => return Err(malformed("expected EXEC's three replies", &t)),
            }
            let at = match r.next_range().map_err(proto)? {
                Ok(at) => Some(at),
                Err(Token::Null) => None,
                Err(t) => return Err(malformed("expected the moved element or null", &t)),
            };
            let tail = match r.next_slice().map_err(proto)? {
                Ok(t) => std::str::from_utf8(t)
                    .ok()
                    .and_then(|t| t.parse::<u64>().ok())
                    .ok_or_else(|| malformed("expected the lease's tail", &Token::Null))?,
                Err(Token::Null) => 0,
                Err(t) => return Err(malformed("expected the lease's tail", &t)),
            };
            let len = match r.next_value_token().map_err(proto)? {
                Token::Integer(n) if n >= 0 => n as u64,
                t => return Err(malformed("expected the leased list's length", &t)),
            };
            let Some(at) = at else {
                return Ok(PopReply::default());
            };
            out.push(lend.message(at, source));
            let mut reply = lend.reply(1, q);
            reply.head = Some(tail + len);
            return Ok(reply);
        }
        None => r.next_value_token().map_err(proto)?,
    };
    match t {
        Token::Null | Token::Boolean(false) => return Ok(PopReply::default()),
        Token::SimpleError(m) | Token::BulkError(m) => {
            let e = ServerError::parse(m.clone());
            if *e.kind() == ServerErrorKind::Unblocked && !e.is_role_change() {
                // An unblocked pop held nothing, or it would not have been blocked.
                return Ok(PopReply {
                    unblocked: Some(m),
                    ..PopReply::default()
                });
            }
            return Err(server_error(plan, m));
        }
        Token::Array(2) => {}
        Token::Array(3) if D::LEASES => {}
        Token::Integer(-1) if D::LEASES => return Err(fenced()),
        t => return Err(malformed("expected a two-element array or null", &t)),
    }
    let key = match r.next_slice().map_err(proto)? {
        Ok(k) => k,
        Err(t) => return Err(malformed("expected the key", &t)),
    };
    let Some(&source) = plan.keys.get(key) else {
        return Err(Failure::Fatal(Error::new(
            ErrorKind::Protocol,
            format!(
                "pop reply names key {:?}, which this consumer did not ask for",
                String::from_utf8_lossy(key)
            ),
        )));
    };
    let count = match r.next_range().map_err(proto)? {
        Ok(at) => {
            out.push(lend.message(at, source));
            1
        }
        Err(Token::Array(n)) => {
            for _ in 0..n {
                match r.next_range().map_err(proto)? {
                    Ok(at) => out.push(lend.message(at, source)),
                    Err(t) => return Err(malformed("expected a message", &t)),
                }
            }
            n as u32
        }
        Err(t) => return Err(malformed("expected a message or an array of messages", &t)),
    };
    let mut reply = lend.reply(count, source.index);
    if D::LEASES {
        // The lease script's third element: the leased list's head position after it.
        match r.next_value_token() {
            Ok(Token::Integer(h)) if h >= 0 => reply.head = Some(h as u64),
            Ok(t) => return Err(malformed("expected the leased list's head position", &t)),
            Err(_) => {}
        }
    }
    Ok(reply)
}

/// An error (or a null: no transaction ran) where the large-message `LMOVE`'s `EXEC`
/// answer was expected.
fn single_error<D>(plan: &PopPlan<D>, t: Token) -> Result<PopReply, Failure> {
    match t {
        Token::SimpleError(m) | Token::BulkError(m) => Err(server_error(plan, m)),
        _ => Ok(PopReply::default()),
    }
}

/// The lease script found this consumer's leases taken back by another consumer (its
/// heartbeat had expired: it was frozen or cut off for longer than the lease). The
/// connection starts again, and like any lost lease connection that makes the consumer
/// settle what it holds (those outcomes are refused and counted as stale), then take
/// back its leased lists and lease under its token again.
fn fenced() -> Failure {
    Failure::Retry(Error::new(
        ErrorKind::ConnectionLost,
        "this consumer's leases were taken back by another consumer (its heartbeat had \
         expired); leasing resumes once the messages in hand are settled"
            .to_owned(),
    ))
}

fn proto(e: ringq_resp::DecodeError) -> Failure {
    Failure::Fatal(Error::new(
        ErrorKind::Protocol,
        format!("malformed pop reply: {e}"),
    ))
}

/// Turns the elements of one reply into messages that borrow from it, counting their
/// bytes as it goes.
struct Lender<'f, D> {
    frame: &'f Bytes,
    received_ns: u64,
    bytes: u64,
    largest: u64,
    /// The next message's position in the reply (its `seq`, which reliable mode turns
    /// into its position in the leased list).
    next: u32,
    dialect: std::marker::PhantomData<D>,
}

impl<'f, D: Dialect> Lender<'f, D> {
    /// The message of the element at `at`: its payload, and in the lease dialect the
    /// whole element as `aux` and the envelope's delivery count.
    fn message(&mut self, at: Range<usize>, source: &'static Source) -> Message<'f> {
        let frame = self.frame;
        let element = &frame[at.clone()];
        self.bytes += element.len() as u64;
        self.largest = self.largest.max(element.len() as u64);
        let (at, aux, deliveries) = match (
            D::LEASES,
            D::LEASES.then(|| envelope::parse(element)).flatten(),
        ) {
            (false, _) => (at, Span::default(), 1),
            (true, None) => (at, Span::of(element, frame), 1),
            (true, Some(env)) => (
                at.start + env.header_len..at.end,
                Span::of(element, frame),
                env.deliveries.saturating_add(1),
            ),
        };
        Message {
            payload: Payload::Lent {
                bytes: &frame[at],
                frame,
            },
            source,
            aux,
            deliveries,
            received_ns: self.received_ns,
            seq: {
                self.next = self.next.wrapping_add(1);
                self.next.wrapping_sub(1)
            },
        }
    }

    /// The reply's summary: `count` messages from queue `queue`.
    fn reply(&self, count: u32, queue: u32) -> PopReply {
        PopReply {
            count,
            bytes: self.bytes,
            largest: self.largest,
            queue: Some(queue),
            ..PopReply::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::pipeline::pop::dialect::Popping;
    use crate::pipeline::pop::{PopConsumer, Queue};

    const TIMING: crate::pipeline::Timing = crate::pipeline::Timing {
        reply_grace: std::time::Duration::from_secs(2),
        reply_timeout: std::time::Duration::from_secs(10),
    };

    fn plan(queues: Vec<Queue>) -> PopPlan<Popping> {
        let lane = (0..queues.len() as u32).collect();
        PopPlan::new(PopConsumer::new(queues), None, &[lane], TIMING, Popping)
    }

    #[test]
    fn parses_brpop_lmpop_and_null_replies() {
        let p = plan(vec![Queue::new("a"), Queue::new("b").priorities([0, 7])]);
        let brpop = Bytes::from_static(b"*2\r\n$1\r\na\r\n$2\r\nhi\r\n");
        let lmpop = Bytes::from_static(b"*2\r\n$6\r\n{b}:p7\r\n*2\r\n$1\r\nx\r\n$3\r\nyyy\r\n");
        let nulls = [&b"_\r\n"[..], b"*-1\r\n", b"$-1\r\n"].map(Bytes::copy_from_slice);
        let mut out = Vec::new();
        let r = parse_pop_reply(&p, None, false, &brpop, 0, &mut out).unwrap();
        assert_eq!((r.count, r.bytes, r.queue), (1, 2, Some(0)));
        let r = parse_pop_reply(&p, None, false, &lmpop, 0, &mut out).unwrap();
        assert_eq!((r.count, r.bytes, r.queue), (2, 4, Some(1)));
        assert_eq!(out[0].payload(), b"hi");
        assert_eq!(out[1].priority(), 7);
        assert_eq!(out[1].queue(), b"b");
        assert_eq!(out[1].key(), b"{b}:p7");
        assert_eq!(out[2].payload(), b"yyy");
        // The owned forms share the reply's bytes.
        let owned = out[2].detach();
        assert_eq!(owned.payload(), b"yyy");
        assert_eq!(owned.payload_bytes().as_ptr(), out[2].payload().as_ptr());
        // Debug shows the message's own bytes, never the rest of the reply it borrows from.
        let shown = format!("{:?}", out[2]);
        assert!(shown.contains(r#"payload: b"yyy""#), "{shown}");
        assert!(!shown.contains("\\r\\n"), "{shown}");
        assert_eq!(shown, format!("{owned:?}"));
        for null in &nulls {
            let r = parse_pop_reply(&p, None, false, null, 0, &mut out).unwrap();
            assert_eq!(r.count, 0);
        }
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn rejects_unknown_keys_and_maps_server_errors() {
        let p = plan(vec![Queue::new("a")]);
        assert!(matches!(
            parse_pop_reply(
                &p,
                None,
                false,
                &Bytes::from_static(b"*2\r\n$1\r\nz\r\n$1\r\nv\r\n"),
                0,
                &mut Vec::new()
            ),
            Err(Failure::Fatal(_))
        ));
        assert!(matches!(
            parse_pop_reply(
                &p,
                None,
                false,
                &Bytes::from_static(b"-LOADING wait\r\n"),
                0,
                &mut Vec::new()
            ),
            Err(Failure::Retry(_))
        ));
        match parse_pop_reply(
            &p,
            None,
            false,
            &Bytes::from_static(b"-WRONGTYPE Operation against a key\r\n"),
            0,
            &mut Vec::new(),
        ) {
            Err(Failure::Fatal(e)) => assert!(
                e.to_string().contains("holds something other than a list"),
                "{e}"
            ),
            _ => panic!("WRONGTYPE must be fatal"),
        }
        assert_eq!(
            parse_pop_reply(
                &p,
                None,
                false,
                &Bytes::from_static(b"-UNBLOCKED by admin\r\n"),
                0,
                &mut Vec::new()
            )
            .unwrap()
            .count,
            0
        );
    }
}

//! Reliable mode's wire format: the envelope a list element may carry, and the names of
//! the keys the mode keeps beside each queue. Documented for producers in other languages
//! in `docs/reliable-wire.md`.
//!
//! # The envelope
//! A plain element pushed by any producer (`LPUSH q payload`) is consumed as it is, as its
//! first delivery. An element that ringq retried, recovered from a dead consumer or moved
//! to the dead list, or that a producer wrapped on purpose, starts with the five bytes
//! [`MAGIC`] (`NUL r q 1 space`), then a header of space-separated `name=value` fields up
//! to the first `\n`, then the payload, untouched:
//!
//! ```text
//! \0rq1 d=2 id=7f3a9c t=1764590000000 why=handler%20said%20dead\n<payload bytes>
//! ```
//!
//! | field | meaning |
//! |---|---|
//! | `d` | deliveries before this one (required, first; `0` for a fresh wrapped message) |
//! | `id` | an identity: bytes other than space, `\n` and `%` (optional) |
//! | `t` | when it was moved to the dead list, ms since the Unix epoch (dead list only) |
//! | `why` | why it is dead, percent-encoded (dead list only) |
//!
//! Unknown fields are ignored, so later versions can add some. An element that starts
//! with [`MAGIC`] but has no `\n` within [`MAX_HEADER`] bytes is consumed as a plain
//! payload (nothing is lost; it is delivered whole).

use std::borrow::Cow;

/// The first bytes of an envelope.
pub const MAGIC: &[u8] = b"\0rq1 ";

/// The longest header (magic included) looked for.
pub const MAX_HEADER: usize = 1024;

/// An element's envelope, parsed ([`parse`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// Deliveries before this one.
    pub deliveries: u32,
    /// The message's identity, if it has one.
    pub id: Option<&'a [u8]>,
    /// When it went to the dead list (ms since the Unix epoch).
    pub dead_at_ms: Option<u64>,
    /// Why it is dead, decoded.
    pub reason: Option<Cow<'a, str>>,
    /// How many bytes of the element the envelope header takes; the payload follows.
    pub header_len: usize,
}

/// Parses the envelope at the start of `element`; `None` for a plain payload.
pub fn parse(element: &[u8]) -> Option<Envelope<'_>> {
    if !element.starts_with(MAGIC) {
        return None;
    }
    let limit = element.len().min(MAX_HEADER);
    let nl = element[..limit].iter().position(|&b| b == b'\n')?;
    let mut env = Envelope {
        deliveries: 0,
        id: None,
        dead_at_ms: None,
        reason: None,
        header_len: nl + 1,
    };
    let mut have_d = false;
    for (i, field) in element[MAGIC.len()..nl].split(|&b| b == b' ').enumerate() {
        if i == 0 && !field.starts_with(b"d=") {
            // `d` comes first (the server-side scripts count on it).
            return None;
        }
        let Some(eq) = field.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (name, value) = (&field[..eq], &field[eq + 1..]);
        match name {
            b"d" => {
                env.deliveries = std::str::from_utf8(value).ok()?.parse().ok()?;
                have_d = true;
            }
            b"id" => env.id = Some(value),
            b"t" => env.dead_at_ms = std::str::from_utf8(value).ok()?.parse().ok(),
            b"why" => env.reason = Some(percent_decode(value)),
            _ => {}
        }
    }
    have_d.then_some(env)
}

/// Writes `payload` wrapped in an envelope: `deliveries` before the next one, an optional
/// `id`, and for the dead list when and why.
pub fn encode(
    out: &mut Vec<u8>,
    deliveries: u32,
    id: Option<&[u8]>,
    dead: Option<(u64, &str)>,
    payload: &[u8],
) {
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(b"d=");
    out.extend_from_slice(deliveries.to_string().as_bytes());
    if let Some(id) = id {
        out.extend_from_slice(b" id=");
        out.extend(id.iter().map(|&b| {
            if matches!(b, b' ' | b'\n' | b'%') {
                b'_'
            } else {
                b
            }
        }));
    }
    if let Some((at, why)) = dead {
        out.extend_from_slice(b" t=");
        out.extend_from_slice(at.to_string().as_bytes());
        out.extend_from_slice(b" why=");
        percent_encode(out, why.as_bytes());
    }
    out.push(b'\n');
    out.extend_from_slice(payload);
}

fn percent_encode(out: &mut Vec<u8>, s: &[u8]) {
    for &b in s {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
}

fn percent_decode(v: &[u8]) -> Cow<'_, str> {
    if !v.contains(&b'%') {
        return String::from_utf8_lossy(v);
    }
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        let hex = v
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (v[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The names of the keys reliable mode keeps beside a queue. `queue` is the queue's name
/// (heartbeats, the consumer set) or one of its keys (a priority level's key: processing,
/// retry and dead lists are per key). Every name shares the queue's hash tag, so all of a
/// queue's keys live in one Redis Cluster slot: `{jobs}:processing:c1` for the queue
/// `jobs`; a name that has a hash tag already keeps it (`{app}:jobs:processing:c1`).
pub mod keys {
    /// The hash-tagged prefix of a queue's keys: `{q}`, or `q` when it has a tag.
    pub fn tag(queue: &[u8]) -> Vec<u8> {
        let has_tag = queue.iter().position(|&b| b == b'{').is_some_and(|open| {
            queue[open + 1..]
                .iter()
                .position(|&b| b == b'}')
                .is_some_and(|n| n > 0)
        });
        if has_tag {
            queue.to_vec()
        } else {
            let mut k = Vec::with_capacity(queue.len() + 2);
            k.push(b'{');
            k.extend_from_slice(queue);
            k.push(b'}');
            k
        }
    }

    fn join(queue: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let mut k = tag(queue);
        for p in parts {
            k.push(b':');
            k.extend_from_slice(p);
        }
        k
    }

    /// `{key}:processing:<consumer>`: the consumer's leased elements of `key`.
    pub fn processing(key: &[u8], consumer: &[u8]) -> Vec<u8> {
        join(key, &[b"processing", consumer])
    }

    /// `{key}:processing:`: the prefix of every consumer's processing list of `key`.
    pub fn processing_prefix(key: &[u8]) -> Vec<u8> {
        let mut k = join(key, &[b"processing"]);
        k.push(b':');
        k
    }

    /// `{key}:retry`: a sorted set of retried elements, scored by due time (ms).
    pub fn retry(key: &[u8]) -> Vec<u8> {
        join(key, &[b"retry"])
    }

    /// `{key}:dead`: the dead list, newest at the head.
    pub fn dead(key: &[u8]) -> Vec<u8> {
        join(key, &[b"dead"])
    }

    /// `{queue}:consumer:<consumer>`: the consumer's heartbeat (value: ms since the
    /// epoch when it was set; expires after the lease).
    pub fn heartbeat(queue: &[u8], consumer: &[u8]) -> Vec<u8> {
        join(queue, &[b"consumer", consumer])
    }

    /// `{queue}:consumer:`: the prefix of every heartbeat of `queue`.
    pub fn heartbeat_prefix(queue: &[u8]) -> Vec<u8> {
        let mut k = join(queue, &[b"consumer"]);
        k.push(b':');
        k
    }

    /// `{queue}:consumers`: the set of consumer ids that lease from `queue`.
    pub fn consumers(queue: &[u8]) -> Vec<u8> {
        join(queue, &[b"consumers"])
    }

    /// `{queue}:sweep`: held (`SET NX PX`) by the consumer sweeping `queue`.
    pub fn sweep(queue: &[u8]) -> Vec<u8> {
        join(queue, &[b"sweep"])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_plain_payloads() {
        let mut e = Vec::new();
        encode(
            &mut e,
            2,
            Some(b"a b"),
            Some((17, "handler said: no")),
            b"body\nmore",
        );
        let env = parse(&e).unwrap();
        assert_eq!(env.deliveries, 2);
        assert_eq!(env.id, Some(&b"a_b"[..]));
        assert_eq!(env.dead_at_ms, Some(17));
        assert_eq!(env.reason.as_deref(), Some("handler said: no"));
        assert_eq!(&e[env.header_len..], b"body\nmore");
        assert_eq!(parse(b"plain"), None);
        assert_eq!(parse(b"\0rq1 no newline"), None);
        assert_eq!(parse(b"\0rq1 id=x\n"), None, "d is required");
        assert_eq!(parse(b"\0rq1 id=x d=1\n"), None, "d comes first");
        let mut e = Vec::new();
        encode(&mut e, 0, None, None, b"");
        assert_eq!(e, b"\0rq1 d=0\n");
    }

    #[test]
    fn key_names_share_the_hash_tag() {
        assert_eq!(keys::processing(b"jobs", b"c1"), b"{jobs}:processing:c1");
        assert_eq!(
            keys::processing(b"{jobs}:p9", b"c1"),
            b"{jobs}:p9:processing:c1"
        );
        assert_eq!(keys::retry(b"{app}:q"), b"{app}:q:retry");
        assert_eq!(keys::heartbeat(b"jobs", b"c1"), b"{jobs}:consumer:c1");
        assert_eq!(keys::heartbeat_prefix(b"jobs"), b"{jobs}:consumer:");
        assert_eq!(keys::processing_prefix(b"jobs"), b"{jobs}:processing:");
    }
}

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
    encode_header(out, deliveries, id, dead);
    out.extend_from_slice(payload);
}

/// Writes the header [`encode`] puts before a payload (magic to `\n` included).
pub fn encode_header(
    out: &mut Vec<u8>,
    deliveries: u32,
    id: Option<&[u8]>,
    dead: Option<(u64, &str)>,
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
/// (heartbeats, the consumer set) or one of its keys (a priority level's key: leased,
/// lease, retry and dead keys are per key). Every name starts with the queue's own prefix
/// ([`keys::tag`]), which carries the queue's hash tag, so all of a queue's keys live in
/// one Redis Cluster slot, and which is the queue's alone, whatever its name:
/// `{jobs}:leased:c1` for the queue `jobs`; `{app}:10:{app}:jobs:leased:c1` for the queue
/// `{app}:jobs`, which has a hash tag already (its name, with its length, after the tag).
pub mod keys {
    /// The hash tag Redis Cluster hashes `key` by: the bytes between the first `{` and the
    /// first `}` after it, when there are any.
    fn hash_tag(key: &[u8]) -> Option<&[u8]> {
        let open = key.iter().position(|&b| b == b'{')?;
        let len = key[open + 1..].iter().position(|&b| b == b'}')?;
        (len > 0).then(|| &key[open + 1..open + 1 + len])
    }

    /// The prefix of a queue's keys: `{q}` for a name without a hash tag; for a name with
    /// one, `{tag}:<length of the name>:<name>`. The two forms never meet (after `}:` the
    /// first comes with a letter, the second with a digit), and the length makes the
    /// second one unambiguous, so two queues never share a key.
    pub fn tag(queue: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(queue.len() * 2 + 8);
        k.push(b'{');
        match hash_tag(queue) {
            Some(t) => {
                k.extend_from_slice(t);
                k.extend_from_slice(b"}:");
                k.extend_from_slice(queue.len().to_string().as_bytes());
                k.push(b':');
                k.extend_from_slice(queue);
            }
            None => {
                k.extend_from_slice(queue);
                k.push(b'}');
            }
        }
        k
    }

    fn join(queue: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        join_to(tag(queue), parts)
    }

    /// `prefix:part1:part2…`
    fn join_to(mut k: Vec<u8>, parts: &[&[u8]]) -> Vec<u8> {
        for p in parts {
            k.push(b':');
            k.extend_from_slice(p);
        }
        k
    }

    fn prefix(mut k: Vec<u8>) -> Vec<u8> {
        k.push(b':');
        k
    }

    /// `{key}:leased:<consumer>`: the consumer's leased elements of `key`, oldest at the
    /// tail; an element settled out of order is overwritten with [`SETTLED`] until the
    /// tail reaches it.
    pub fn processing(key: &[u8], consumer: &[u8]) -> Vec<u8> {
        join(key, &[b"leased", consumer])
    }

    /// `{key}:leased:`: the prefix of every consumer's leased list of `key`.
    pub fn processing_prefix(key: &[u8]) -> Vec<u8> {
        prefix(join(key, &[b"leased"]))
    }

    /// `{key}:lease:<consumer>`: a hash describing the consumer's leased list: `fence`
    /// (the consumer run's token; an outcome carrying another is refused) and `tail` (how
    /// many elements have left the list's tail since it was last emptied: the position
    /// of the element at the tail).
    pub fn lease(key: &[u8], consumer: &[u8]) -> Vec<u8> {
        join(key, &[b"lease", consumer])
    }

    /// `{key}:lease:`: the prefix of every consumer's lease hash of `key`.
    pub fn lease_prefix(key: &[u8]) -> Vec<u8> {
        prefix(join(key, &[b"lease"]))
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
        prefix(join(queue, &[b"consumer"]))
    }

    /// `{queue}:leasers`: the set of consumer ids that lease from `queue`.
    pub fn consumers(queue: &[u8]) -> Vec<u8> {
        join(queue, &[b"leasers"])
    }

    /// `{queue}:sweep`: held (`SET NX PX`) by the consumer sweeping `queue`.
    pub fn sweep(queue: &[u8]) -> Vec<u8> {
        join(queue, &[b"sweep"])
    }

    /// What an element of a leased list settled out of order is overwritten with: never
    /// a message (recovery skips it), and reserved: producers must not push it.
    pub const SETTLED: &[u8] = b"\0rq1 settled\n";

    /// The names ringq 0.1 used (processing lists of whole elements, acked by value),
    /// still read so that an upgrade with messages in flight loses nothing: a consumer
    /// takes back its own old processing lists at start, sweeps those of old consumers
    /// whose heartbeat expired, and moves the old retry set and dead list of a queue
    /// with a hash tag (whose names changed) into the new ones.
    pub mod legacy {
        fn tag(queue: &[u8]) -> Vec<u8> {
            if super::hash_tag(queue).is_some() {
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
            super::join_to(tag(queue), parts)
        }

        /// `{key}:processing:<consumer>`.
        pub fn processing(key: &[u8], consumer: &[u8]) -> Vec<u8> {
            join(key, &[b"processing", consumer])
        }

        /// `{key}:processing:`.
        pub fn processing_prefix(key: &[u8]) -> Vec<u8> {
            super::prefix(join(key, &[b"processing"]))
        }

        /// `{queue}:consumers`.
        pub fn consumers(queue: &[u8]) -> Vec<u8> {
            join(queue, &[b"consumers"])
        }

        /// `{queue}:consumer:`.
        pub fn heartbeat_prefix(queue: &[u8]) -> Vec<u8> {
            super::prefix(join(queue, &[b"consumer"]))
        }

        /// `{key}:retry` (`key:retry` with a hash tag).
        pub fn retry(key: &[u8]) -> Vec<u8> {
            join(key, &[b"retry"])
        }

        /// `{key}:dead` (`key:dead` with a hash tag).
        pub fn dead(key: &[u8]) -> Vec<u8> {
            join(key, &[b"dead"])
        }
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
    fn key_names_share_the_hash_tag_and_are_each_queues_alone() {
        assert_eq!(keys::processing(b"jobs", b"c1"), b"{jobs}:leased:c1");
        assert_eq!(keys::lease(b"jobs", b"c1"), b"{jobs}:lease:c1");
        assert_eq!(
            keys::processing(b"{jobs}:p9", b"c1"),
            b"{jobs}:9:{jobs}:p9:leased:c1"
        );
        assert_eq!(keys::retry(b"{app}:q"), b"{app}:7:{app}:q:retry");
        assert_eq!(keys::heartbeat(b"jobs", b"c1"), b"{jobs}:consumer:c1");
        assert_eq!(keys::heartbeat_prefix(b"jobs"), b"{jobs}:consumer:");
        assert_eq!(keys::processing_prefix(b"jobs"), b"{jobs}:leased:");
        assert_eq!(
            keys::legacy::processing(b"{app}:q", b"c1"),
            b"{app}:q:processing:c1"
        );
        assert_eq!(keys::legacy::retry(b"jobs"), keys::retry(b"jobs"));
        // Names that used to share keys (`x` and `{x}`), and odd ones, never do.
        let names: [&[u8]; 9] = [
            b"x",
            b"{x}",
            b"a{b}c",
            b"{b}",
            b"b",
            b"{}",
            b"{",
            b"}",
            b"\xff\0{x}:",
        ];
        let mut all = std::collections::HashSet::new();
        for n in names {
            for k in [
                keys::processing(n, b"c"),
                keys::lease(n, b"c"),
                keys::retry(n),
                keys::dead(n),
                keys::heartbeat(n, b"c"),
                keys::consumers(n),
                keys::sweep(n),
            ] {
                assert!(
                    all.insert(k.clone()),
                    "{:?} is shared",
                    String::from_utf8_lossy(&k)
                );
            }
        }
        // A name with a hash tag keeps it, so its keys hash like the queue.
        assert!(keys::dead(b"a{b}c").starts_with(b"{b}:"));
    }
}

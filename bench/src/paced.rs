//! The paced producer of `latency`, `pubsub` and `load` (and `produce`'s row): message
//! `i` of a run is due at `start + i / rate`; each producer connection sends its share at
//! its intended time (an absolute sleep on `CLOCK_MONOTONIC` with 1 ns timer slack), or
//! at once with every other message already due when it falls behind, stamped with that
//! time. One thread writes, another counts the replies, so the writer never waits for a
//! round trip.
//!
//! Faults are counted, not fatal: when the connection breaks (a server restart, a
//! `CLIENT KILL`) the producer connects again (for up to [`RECONNECT_FOR`]) and goes on
//! from the next message, late messages catching up in bursts as the schedule says; no
//! message is sent twice.
//! What it had sent without a reply is *unconfirmed* — the server may or may not have
//! stored it — and a message the server refused (`-LOADING` while a restarted server
//! reads its data, `-READONLY` from a master a failover demoted: the producer then
//! connects again, through the sentinels with a `redis+sentinel://` URL) is unconfirmed
//! too; [`Produced::unconfirmed`] lists their numbers so
//! the report can tell a message the server confirmed and lost from one it never took.

use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use ringq_resp::{CommandWriter, Frame};

use crate::conn::RawConn;
use crate::error::{Error, Result};
use crate::latency::{self, STAMP_LEN};

/// Most messages the producer sends in one write when catching up.
const PRODUCE_MAX_BURST: u64 = 1000;
/// How long a producer keeps trying to connect again after its connection broke.
pub const RECONNECT_FOR: Duration = Duration::from_secs(30);
/// The producers' client name (`CLIENT SETNAME`), so a fault injector can find them.
pub const PRODUCER_NAME: &str = "ringq-bench-producer";

/// Connects to `url` and names the connection [`PRODUCER_NAME`].
fn connect(url: &str) -> Result<RawConn> {
    let mut c = RawConn::connect(url)?;
    c.command_ok(["CLIENT", "SETNAME", PRODUCER_NAME])?;
    Ok(c)
}

/// What the producer did.
#[derive(Debug, Clone, Default)]
pub struct Produced {
    /// Largest delay between a message's intended and actual send time, in ns.
    pub max_late_ns: u64,
    /// Per second of intended send time from the schedule's start (the `load` scenario):
    /// messages the server confirmed, and produce latency (reply − intended send time) of
    /// their replies.
    pub seconds: Vec<(u64, Histogram<u64>)>,
    /// Numbers of the messages sent without a success reply (see the module docs).
    pub unconfirmed: Vec<u64>,
    /// Connections that broke under the producer, and error replies.
    pub errors: u64,
}

/// The command a paced producer sends per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// `LPUSH queue payload`.
    Lpush,
    /// `PUBLISH channel payload`.
    Publish,
    /// `XADD stream * payload payload`.
    Xadd,
    /// `SPUBLISH channel payload`: a sharded channel, sent to its slot's primary.
    Spublish,
    /// `LPUSH queue <Kombu envelope of the payload>` (base64 body, the queue's name
    /// without the bench's key prefix as the routing key), as Kombu's producer writes.
    Kombu,
}

impl Push {
    /// The command's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Lpush => "LPUSH",
            Self::Publish => "PUBLISH",
            Self::Xadd => "XADD",
            Self::Spublish => "SPUBLISH",
            Self::Kombu => "LPUSH",
        }
    }
}

/// A paced producer's schedule: message `i` of the whole run (over every producer) is due
/// at `start_ns + i / rate`; this producer sends those with `i % stride == offset`.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub rate: u32,
    /// Messages of the whole run.
    pub count: u64,
    pub start_ns: u64,
    pub stride: u64,
    pub offset: u64,
    /// The load scenario's producer: keep per-second figures ([`Produced::seconds`]) and
    /// go on through faults (reconnect; count what was refused or left unconfirmed).
    /// Without it the first error reply or broken connection fails the run, as a
    /// benchmark's producer must (a failed push would only show as a consumer timeout).
    pub series: bool,
}

impl Schedule {
    /// The run-wide number of this producer's `k`-th message.
    fn number(&self, k: u64) -> u64 {
        self.offset + k * self.stride
    }

    /// When message number `i` is due.
    fn due(&self, i: u64) -> u64 {
        self.start_ns + (i as f64 * 1e9 / f64::from(self.rate.max(1))) as u64
    }

    /// How many messages this producer sends.
    fn total(&self) -> u64 {
        self.count
            .saturating_sub(self.offset)
            .div_ceil(self.stride.max(1))
    }
}

/// Sends `count` messages of `size` bytes (at least [`STAMP_LEN`]) at `rate` per second
/// with `push` (`LPUSH` to lists, `PUBLISH` to channels…), round-robin over `queues`, each
/// stamped with its intended send time.
///
/// # Errors
/// As [`produce_paced`].
pub fn produce(
    push: Push,
    url: &str,
    queues: &[String],
    rate: u32,
    count: u64,
    size: usize,
    pb: &ProgressBar,
) -> Result<Produced> {
    let schedule = Schedule {
        rate,
        count,
        start_ns: latency::mono_ns() + 1_000_000,
        stride: 1,
        offset: 0,
        series: false,
    };
    produce_paced(push, url, queues, schedule, size, pb)
}

/// What one connection's reply reader saw.
struct Replies {
    /// This producer's messages up to (not including) this one were answered.
    answered_to: u64,
    seconds: Vec<(u64, Histogram<u64>)>,
    refused: Vec<u64>,
    /// The first error reply, verbatim.
    first_error: Option<String>,
    /// It stopped at a `-READONLY` (a demoted master), not at a broken connection.
    readonly: bool,
}

/// Reads the replies of this producer's messages `from..` until `total` or until the
/// connection ends (then shuts it, so the writer's next write fails at once).
fn read_replies(mut reader: RawConn, sched: Schedule, from: u64, total: u64) -> Replies {
    let mut r = Replies {
        answered_to: from,
        seconds: Vec::new(),
        refused: Vec::new(),
        first_error: None,
        readonly: false,
    };
    while r.answered_to < total {
        let Ok(f) = reader.read_frame() else {
            reader.shutdown();
            break;
        };
        let i = sched.number(r.answered_to);
        r.answered_to += 1;
        if let Frame::SimpleError(m) | Frame::BulkError(m) = f {
            r.refused.push(i);
            r.first_error
                .get_or_insert_with(|| String::from_utf8_lossy(&m).into_owned());
            if m.starts_with(b"READONLY") || !sched.series {
                // A master demoted by a failover: connect again (through the sentinels,
                // to the new one). Outside a load run: stop at once.
                r.readonly = m.starts_with(b"READONLY");
                reader.shutdown();
                break;
            }
            continue;
        }
        if sched.series {
            let intended = sched.due(i);
            let sec = ((intended - sched.start_ns) / 1_000_000_000) as usize;
            while r.seconds.len() <= sec {
                r.seconds.push((0, latency::new_histogram()));
            }
            let (n, h) = &mut r.seconds[sec];
            *n += 1;
            latency::record(h, intended, latency::mono_ns());
        }
    }
    r
}

/// Connects to `url`, trying again every 100 ms for up to [`RECONNECT_FOR`].
fn reconnect(url: &str) -> Result<RawConn> {
    let until = Instant::now() + RECONNECT_FOR;
    loop {
        match connect(url) {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() >= until => {
                return Err(e.context(format!(
                    "the producer's connection broke and {} s of reconnecting failed",
                    RECONNECT_FOR.as_secs()
                )))
            }
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Appends message `i`'s command (payload stamped with its due time) to `out`.
fn encode(push: Push, out: &mut BytesMut, queue: &str, payload: &[u8]) {
    match push {
        Push::Xadd => CommandWriter::new(out, 5)
            .arg("XADD")
            .arg(queue)
            .arg("*")
            .arg("payload")
            .arg(payload)
            .finish(),
        Push::Kombu => {
            let rk = queue.strip_prefix(crate::kombu::PREFIX).unwrap_or(queue);
            let envelope = ringq::kombu::Outgoing::new(payload.to_vec(), "text/plain")
                .routing_key(rk)
                .encode();
            CommandWriter::new(out, 3)
                .arg("LPUSH")
                .arg(queue)
                .arg(&envelope)
                .finish();
        }
        Push::Lpush | Push::Publish | Push::Spublish => CommandWriter::new(out, 3)
            .arg(push.name())
            .arg(queue)
            .arg(payload)
            .finish(),
    }
}

/// One paced producer (see [`Schedule`] and the module docs).
///
/// # Errors
/// The first connection cannot be made, or a broken one cannot be made again within
/// [`RECONNECT_FOR`].
pub fn produce_paced(
    push: Push,
    url: &str,
    queues: &[String],
    sched: Schedule,
    size: usize,
    pb: &ProgressBar,
) -> Result<Produced> {
    let total = sched.total();
    let mut payload = vec![b'x'; size.max(STAMP_LEN)];
    let mut out = Produced::default();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut conn = connect(url)?;
    latency::tighten_timer_slack();
    // This producer's next message to send.
    let mut k = 0u64;
    loop {
        let from = k;
        let reader = RawConn::from_stream(conn.try_clone_stream()?);
        let replies = thread::scope(|s| {
            let replies = s.spawn(move || read_replies(reader, sched, from, total));
            let sent = (|| -> Result<()> {
                while k < total {
                    let due = sched.due(sched.number(k));
                    latency::sleep_until_ns(due);
                    let now = latency::mono_ns();
                    out.max_late_ns = out.max_late_ns.max(now.saturating_sub(due));
                    buf.clear();
                    let burst_end = (k + PRODUCE_MAX_BURST).min(total);
                    while k < burst_end && sched.due(sched.number(k)) <= now {
                        let i = sched.number(k);
                        latency::stamp(&mut payload, sched.due(i), i);
                        let q = &queues[(i % queues.len() as u64) as usize];
                        encode(push, &mut buf, q, &payload);
                        k += 1;
                    }
                    // A failed write's messages count as unconfirmed (some of their bytes
                    // may have reached the server): never sent twice.
                    conn.write_all(&buf)?;
                    if sched.offset == 0 && (k.is_multiple_of(256) || k == total) {
                        pb.set_position(k * sched.stride);
                    }
                }
                Ok(())
            })();
            if sent.is_err() {
                conn.shutdown();
            }
            replies
                .join()
                .map_err(|_| Error::new("the reply reader panicked"))
        })?;
        for (t, (n, h)) in replies.seconds.into_iter().enumerate() {
            while out.seconds.len() <= t {
                out.seconds.push((0, latency::new_histogram()));
            }
            out.seconds[t].0 += n;
            let _ = out.seconds[t].1.add(&h);
        }
        if !sched.series && (!replies.refused.is_empty() || replies.answered_to < total) {
            return Err(Error::new(match replies.first_error {
                Some(e) => format!("the producer's {} failed: {e}", push.name()),
                None => format!(
                    "the producer's connection broke after {} of {total} replies",
                    replies.answered_to
                ),
            }));
        }
        out.errors += replies.refused.len() as u64;
        out.unconfirmed.extend(replies.refused);
        if replies.answered_to >= total {
            return Ok(out);
        }
        // The connection broke (or a demoted master refused, counted above): what was
        // sent and not answered may or may not be stored.
        out.errors += u64::from(!replies.readonly);
        out.unconfirmed
            .extend((replies.answered_to..k).map(|j| sched.number(j)));
        if k >= total {
            // Nothing left to send: no connection needed.
            return Ok(out);
        }
        conn = reconnect(url)?;
    }
}

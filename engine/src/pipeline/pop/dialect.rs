//! How a queue lane fetches: its *dialect*. The lanes (rotation, weights, priority
//! levels, the hot set, credits, the budget) are the same in pop and reliable mode; the
//! dialect decides the rest, statically (the lanes and the pipeline are generic over it):
//!
//! | | [`Popping`] (pop mode) | [`Leasing`] (reliable mode) |
//! |---|---|---|
//! | with backlog | `LMPOP … COUNT n` (or `BRPOP` on servers before 7.0, or by choice) | the lease script: `RPOP q n` + `LPUSH` onto the leased list, atomic, under the run's fence token |
//! | large messages (≥ [`LARGE`]) | as above | `LMOVE` of one key into the leased list, one message each, in a `MULTI` that reads back where it landed |
//! | when dry | `BLMPOP` / `BRPOP` over every queue | a wait that moves nothing (`BLMOVE k k RIGHT RIGHT`), or `CLIENT TRACKING` over a lane's keys; then the lease script |
//! | a message | its payload | its element (for its envelope), its place in the reply (made its position in the leased list) and the envelope's delivery count |
//! | fetched beyond the budget | pushed back to the right end of its list | stays leased; goes back with the rest at the stop |
//! | a fetch lost unanswered | counted as possibly lost | nothing lost: its elements are in the leased list |

use bytes::{Bytes, BytesMut};
use ringq_resp::CommandWriter;

use super::config::{PopConsumer, PopStrategy};

/// Reliable mode leases messages of at least this many bytes (the lane's size estimate)
/// one per native `LMOVE` instead of in batches through the lease script: measured on
/// this project's machine, the script costs the server about 2 µs per KiB it moves, a
/// native move a few µs per message whatever its size; they meet near 2 KiB.
pub(crate) const LARGE: u64 = 2048;

/// What the next fetch of a lane is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    /// It may wait on the server for the block timeout.
    pub blocking: bool,
    /// It takes a count and says which key answered (LMPOP's shape), so it may ask for a
    /// batch and name only the queues known to hold messages.
    pub counted: bool,
    /// It names one queue only (reliable mode's `BLMOVE`).
    pub single: bool,
}

/// One of two iterators (the queues a pop names), without boxing.
#[derive(Clone)]
pub(crate) enum Either<A, B> {
    Left(A),
    Right(B),
}

impl<T, A: Iterator<Item = T>, B: Iterator<Item = T>> Iterator for Either<A, B> {
    type Item = T;

    fn next(&mut self) -> Option<T> {
        match self {
            Either::Left(a) => a.next(),
            Either::Right(b) => b.next(),
        }
    }
}

/// One fetch to write: what it names and asks for.
pub(crate) struct Fetch<'a, Q> {
    pub consumer: &'a PopConsumer,
    /// The queues it names, in order (indices into the consumer's list).
    pub queues: Q,
    /// How many keys (queues × priority levels) that is.
    pub nkeys: usize,
    /// The one queue of a single-queue fetch.
    pub single: Option<u32>,
    /// How many keys the whole lane has (a single-queue fetch of a lane with more waits
    /// only briefly, then checks them all).
    pub lane_keys: usize,
    pub count: u32,
    pub blocking: bool,
    /// Of the [`Shape`]: a counted command.
    pub counted: bool,
    /// The block timeout, as the server takes it.
    pub block: &'a Bytes,
}

impl<Q: Iterator<Item = u32> + Clone> Fetch<'_, Q> {
    fn keys(&self) -> impl Iterator<Item = &Bytes> + '_ {
        let c = self.consumer;
        self.queues
            .clone()
            .flat_map(move |q| c.queues[q as usize].levels.iter().map(|(_, k)| k))
    }
}

/// How a lane fetches. See the module docs.
pub(crate) trait Dialect: Send + 'static {
    /// Fetched messages are leases: each carries its whole list element and the delivery
    /// count of its envelope; a fetch beyond the budget or lost unanswered loses nothing.
    const LEASES: bool;

    /// The next fetch's shape, from the consumer's strategy, whether the server has
    /// LMPOP, whether the lane has backlog, whether its last single-queue fetch came back
    /// empty (`recheck`: check every key next), and whether its messages are large (their
    /// estimated size at least [`LARGE`]).
    fn shape(
        &self,
        strategy: PopStrategy,
        has_lmpop: bool,
        backlog: bool,
        recheck: bool,
        large: bool,
    ) -> Shape;

    /// Writes `f` into `buf`.
    fn write<Q: Iterator<Item = u32> + Clone>(&self, buf: &mut BytesMut, f: &Fetch<'_, Q>);

    /// Replies before the one that answers `f` (a transaction's `+OK` and `+QUEUED`s).
    fn framing<Q: Iterator<Item = u32> + Clone>(&self, _f: &Fetch<'_, Q>) -> usize {
        0
    }
}

/// Pop mode: at-most-once pops.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Popping;

impl Dialect for Popping {
    const LEASES: bool = false;

    fn shape(
        &self,
        strategy: PopStrategy,
        has_lmpop: bool,
        backlog: bool,
        _: bool,
        _: bool,
    ) -> Shape {
        let counted = has_lmpop && strategy != PopStrategy::Single;
        let blocking = match strategy {
            PopStrategy::Single | PopStrategy::BlockingBatch => true,
            PopStrategy::Adaptive => !backlog || !counted,
        };
        Shape {
            blocking,
            counted,
            single: false,
        }
    }

    fn write<Q: Iterator<Item = u32> + Clone>(&self, buf: &mut BytesMut, f: &Fetch<'_, Q>) {
        if !f.counted {
            // BRPOP key [key ...] timeout
            CommandWriter::new(buf, 2 + f.nkeys)
                .arg("BRPOP")
                .args(f.keys())
                .arg(f.block)
                .finish();
            return;
        }
        // BLMPOP timeout numkeys key [key ...] RIGHT COUNT n, or
        // LMPOP numkeys key [key ...] RIGHT COUNT n
        let w = if f.blocking {
            CommandWriter::new(buf, 6 + f.nkeys)
                .arg("BLMPOP")
                .arg(f.block)
        } else {
            CommandWriter::new(buf, 5 + f.nkeys).arg("LMPOP")
        };
        w.arg_int(f.nkeys as i64)
            .args(f.keys())
            .arg("RIGHT")
            .arg("COUNT")
            .arg_int(i64::from(f.count))
            .finish();
    }
}

/// Reliable mode: leases into the consumer's processing lists.
pub(crate) struct Leasing {
    /// The lease script's SHA-1, for `EVALSHA`.
    pub sha: Bytes,
    /// The leased list and lease hash of each queue's keys, as `consumer.queues[q].levels`.
    pub processing: Vec<Vec<(Bytes, Bytes)>>,
    /// This run's fence token (see the lease script).
    pub token: Bytes,
    /// How long a single-queue fetch of a lane with several keys waits before the lane
    /// checks them all again.
    pub poll_secs: Bytes,
}

impl Dialect for Leasing {
    const LEASES: bool = true;

    fn framing<Q: Iterator<Item = u32> + Clone>(&self, f: &Fetch<'_, Q>) -> usize {
        // MULTI's +OK and three +QUEUED before EXEC's answer.
        if f.single.is_some() && !f.blocking {
            4
        } else {
            0
        }
    }

    fn shape(&self, _: PopStrategy, _: bool, backlog: bool, recheck: bool, large: bool) -> Shape {
        let blocking = !backlog && !recheck;
        Shape {
            blocking,
            counted: true,
            // Large messages are leased one per native LMOVE: a script copies every byte
            // of what it moves into Lua and out again (measured here: ~3 ms of server
            // CPU per MiB, against ~0.3 ms for LMOVE or LMPOP).
            single: blocking || (large && !recheck),
        }
    }

    fn write<Q: Iterator<Item = u32> + Clone>(&self, buf: &mut BytesMut, f: &Fetch<'_, Q>) {
        let c = f.consumer;
        match f.single {
            // MULTI, LMOVE key leased RIGHT LEFT, HGET lease tail, LLEN leased, EXEC: one
            // large message of the queue's first (highest) key, natively, and where it
            // landed (the list's head position right after, read in the same step).
            Some(q) if !f.blocking => {
                let key = &c.queues[q as usize].levels[0].1;
                let (leased, lease) = &self.processing[q as usize][0];
                CommandWriter::new(buf, 1).arg("MULTI").finish();
                CommandWriter::new(buf, 5)
                    .arg("LMOVE")
                    .arg(key)
                    .arg(leased)
                    .arg("RIGHT")
                    .arg("LEFT")
                    .finish();
                CommandWriter::new(buf, 3)
                    .arg("HGET")
                    .arg(lease)
                    .arg("tail")
                    .finish();
                CommandWriter::new(buf, 2).arg("LLEN").arg(leased).finish();
                CommandWriter::new(buf, 1).arg("EXEC").finish();
            }
            Some(q) => write_wait(buf, f, q, &self.poll_secs),
            // EVALSHA lease 3n key1 leased1 lease1 … count token
            None => {
                let triples = f.queues.clone().flat_map(|q| {
                    c.queues[q as usize]
                        .levels
                        .iter()
                        .zip(&self.processing[q as usize])
                        .flat_map(|((_, k), (p, h))| [k, p, h])
                });
                CommandWriter::new(buf, 5 + 3 * f.nkeys)
                    .arg("EVALSHA")
                    .arg(&self.sha)
                    .arg_int(3 * f.nkeys as i64)
                    .args(triples)
                    .arg_int(i64::from(f.count))
                    .arg(&self.token)
                    .finish();
            }
        }
    }
}

/// `BLMOVE key key RIGHT RIGHT timeout`: waits until queue `q`'s first (highest) key holds
/// a message and moves nothing (the last element goes back where it was); the lane's
/// script then takes it. A lane with other keys checks them again after `poll_secs`.
/// The dry-lane wait of every dialect whose fetch is a script (scripts cannot block).
fn write_wait<Q>(buf: &mut BytesMut, f: &Fetch<'_, Q>, q: u32, poll_secs: &Bytes) {
    let key = &f.consumer.queues[q as usize].levels[0].1;
    let wait = if f.lane_keys == 1 { f.block } else { poll_secs };
    CommandWriter::new(buf, 6)
        .arg("BLMOVE")
        .arg(key)
        .arg(key)
        .arg("RIGHT")
        .arg("RIGHT")
        .arg(wait)
        .finish();
}

/// Kombu mode: each batch popped and recorded in Kombu's `unacked` hash and
/// `unacked_index` in one script (see `kombu::scripts::KPOP`), so no crash between the
/// pop and the record loses a message.
pub(crate) struct Unacking {
    /// The pop script's SHA-1, for `EVALSHA`.
    pub sha: Bytes,
    /// Kombu's `unacked` hash and `unacked_index` sorted set (with the key prefix).
    pub unacked: Bytes,
    pub index: Bytes,
    /// Per queue, per level: this consumer's held hash of that key, the tail of each
    /// record (`, "", "<queue>"]`), and the queue's dead list.
    pub held: Vec<Vec<(Bytes, Bytes, Bytes)>>,
    /// Per queue, per level: the lowest number the next pop may give (what the engine
    /// has numbered so far; see `KPOP`).
    pub floors: Vec<Vec<u64>>,
    /// The prefix of this consumer's record fields (`ringq:<id>:`).
    pub field_base: Bytes,
    /// How long a single-queue wait of a lane with several keys lasts.
    pub poll_secs: Bytes,
}

impl Dialect for Unacking {
    const LEASES: bool = true;

    fn shape(&self, _: PopStrategy, _: bool, backlog: bool, recheck: bool, _: bool) -> Shape {
        let blocking = !backlog && !recheck;
        Shape {
            blocking,
            counted: true,
            single: blocking,
        }
    }

    fn write<Q: Iterator<Item = u32> + Clone>(&self, buf: &mut BytesMut, f: &Fetch<'_, Q>) {
        if let Some(q) = f.single {
            write_wait(buf, f, q, &self.poll_secs);
            return;
        }
        // EVALSHA kpop 2+3n unacked index key1 held1 dead1 … count score field-base ms
        //   tail1 floor1 …
        let c = f.consumer;
        let keys = f.queues.clone().flat_map(|q| {
            c.queues[q as usize]
                .levels
                .iter()
                .zip(&self.held[q as usize])
                .flat_map(|((_, k), (h, _, d))| [k, h, d])
        });
        let now = crate::pipeline::alo::now_ms();
        let mut w = CommandWriter::new(buf, 9 + 5 * f.nkeys)
            .arg("EVALSHA")
            .arg(&self.sha)
            .arg_int(2 + 3 * f.nkeys as i64)
            .arg(&self.unacked)
            .arg(&self.index)
            .args(keys)
            .arg_int(i64::from(f.count))
            .arg(format!("{:.3}", now as f64 / 1000.0))
            .arg(&self.field_base)
            .arg_int(now as i64);
        for q in f.queues.clone() {
            for ((_, t, _), floor) in self.held[q as usize].iter().zip(&self.floors[q as usize]) {
                w = w.arg(t).arg_int(*floor as i64);
            }
        }
        w.finish();
    }
}

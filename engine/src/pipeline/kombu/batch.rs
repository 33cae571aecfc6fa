//! What the Kombu pipeline sends on Control for one key: a batch of outcomes (acks as
//! native `HDEL`/`ZREM`, the rest through `KSETTLE`, the key's new `#tail` last), and
//! the state of a recovery reading the key's window back.

use std::io::Write as _;
use std::time::{Duration, Instant};

use ringq_resp::CommandWriter;

use super::{scripts, KTag, KombuPipeline};
use crate::conn::{Conn, Tag};

/// One key's operations for one settle script (see `scripts::KSETTLE`): acks by number,
/// other operations (op, number, element), and the key's new `#tail`.
#[derive(Debug, Default)]
pub(super) struct Batch {
    pub key: u32,
    pub acks: Vec<u64>,
    pub ops: Vec<(u8, u64, Vec<u8>)>,
    pub tail: Option<u64>,
}

impl Batch {
    pub(super) fn is_empty(&self) -> bool {
        self.acks.is_empty() && self.ops.is_empty()
    }

    /// Sends the batch: acks as native commands (`HDEL`, `ZREM`: no script copies their
    /// fields), the other operations through the settle script, and the new `#tail` last
    /// (in the script, or an `HSET` when there is no other operation). Its last command
    /// carries `tag`.
    pub(super) fn write(
        &self,
        ctl: &mut Conn<KTag>,
        tag: KTag,
        p: &KombuPipeline,
        now: Instant,
        allow: Duration,
    ) {
        let k = &p.keys[self.key as usize];
        let mut f = Vec::with_capacity(k.field.len() + 20);
        let mut field = |n: u64| {
            f.clear();
            f.extend_from_slice(&k.field);
            let _ = write!(f, "{n}");
            f.clone()
        };
        if !self.acks.is_empty() {
            let fields: Vec<Vec<u8>> = self.acks.iter().map(|&n| field(n)).collect();
            let n = fields.len() as u32;
            for (cmd, key, t) in [
                ("HDEL", &p.unacked, KTag::SettleAcks { n }),
                ("ZREM", &p.index, KTag::SettleIndex),
            ] {
                ctl.command(Tag::Pipe(t), now, allow, |buf| {
                    CommandWriter::new(buf, 2 + fields.len())
                        .arg(cmd)
                        .arg(key)
                        .args(&fields)
                        .finish();
                });
            }
        }
        if let (true, KTag::Settle, Some(t)) = (self.ops.is_empty(), tag, self.tail) {
            ctl.command(Tag::Pipe(KTag::SettleTail), now, allow, |buf| {
                CommandWriter::new(buf, 4)
                    .arg("HSET")
                    .arg(&k.held)
                    .arg("#tail")
                    .arg_int(t as i64)
                    .finish();
            });
            return;
        }
        ctl.command(Tag::Pipe(tag), now, allow, |buf| {
            let mut w = CommandWriter::new(buf, 11 + 3 * self.ops.len())
                .arg("EVALSHA")
                .arg(&scripts::KSETTLE.sha)
                .arg("5")
                .arg(&p.unacked)
                .arg(&p.index)
                .arg(&k.held)
                .arg(&k.key)
                .arg(&k.dead)
                .arg_int(i64::from(p.dead_max_len));
            w = match self.tail {
                Some(t) => w.arg_int(t as i64),
                None => w.arg("-"),
            };
            w = w.arg("0");
            for (op, n, e) in &self.ops {
                w = w.arg([*op]).arg(field(*n)).arg(e);
            }
            w.finish();
        });
    }
}

/// A recovery of one key: the numbers between its `#tail` and `#n` (whose records may
/// still be in `unacked`), read in chunks.
#[derive(Debug, Default)]
pub(super) struct Restoring {
    /// The next number to read back, and the end of the window (the key's new `#tail`
    /// once everything below is restored).
    pub next: u64,
    pub head: u64,
    /// Chunks asked for (`HMGET`), not yet answered (at most [`RESTORE_IN_FLIGHT`]).
    pub chunks: std::collections::VecDeque<Vec<u64>>,
    /// Restore scripts sent: how many records each restores.
    pub sent: std::collections::VecDeque<u64>,
}

/// Most `HMGET`s of one key's recovery in flight: a window pinned by one long task can
/// span millions of numbers, read a chunk at a time.
pub(super) const RESTORE_IN_FLIGHT: usize = 4;

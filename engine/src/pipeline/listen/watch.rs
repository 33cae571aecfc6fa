//! Telling the truth about what a subscriber missed: gaps closing (the event with both
//! times and the cause), subscriber connections whose reading is paused
//! (`Overflow::Block`) watched, and drops reported at a steady pace
//! (`Overflow::DropOldest`).
//!
//! A paused connection cannot notice that the server closed it: the server's last bytes
//! and its FIN wait behind a zero TCP window that only reading would open. Redis closes
//! exactly such subscribers, at `client-output-buffer-limit pubsub`. So while any lane is
//! paused, the pipeline asks the server itself, every [`WATCH_PERIOD`], on the Control
//! connection: `CLIENT LIST ID <id>` of each paused connection (the id its `HELLO`
//! returned). A connection the server no longer lists is closed at once as lost —
//! noticed within a period of the server's close, not when the handlers catch up — and
//! its gap starts at the last moment the server was seen holding it (or its last
//! message, if later), so the gap's start is within a period of the real close.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use ringq_resp::{CommandWriter, Frame};

use super::{ListenPipeline, ListenTag};
use crate::conn::{Failure, Tag};
use crate::error::{Error, ErrorKind};
use crate::handler::{Event, EVENT_TARGET};
use crate::pipeline::{FetchLane, Io};

/// The pipeline timer of the watch.
pub(super) const TIMER_WATCH: u32 = 1;
/// How often paused connections are checked, and drops reported.
pub(super) const WATCH_PERIOD: Duration = Duration::from_secs(1);
/// A connection lost this soon after reading resumed was most likely closed while it
/// was paused (what was read since is what the server had buffered before): its gap
/// names the output-buffer limit too.
pub(super) const RESUME_GRACE: Duration = Duration::from_secs(2);

impl ListenPipeline {
    /// Every subscription of a gap is in force again: the handler hears of it.
    pub(super) fn close_gap(&mut self, io: &mut Io<ListenTag>, lane: usize, resubscribed: bool) {
        let Some(gap) = self.lanes[lane].gap.take() else {
            return;
        };
        let names: Vec<String> = gap
            .subs
            .iter()
            .map(|&s| self.subs[s].spec.to_string())
            .collect();
        let until = resubscribed.then(SystemTime::now);
        let lasted = until
            .and_then(|t| t.duration_since(gap.since).ok())
            .map_or_else(
                || "never restored before the stop".to_owned(),
                |d| format!("{d:?}"),
            );
        tracing::warn!(
            target: EVENT_TARGET,
            shard = io.shard(),
            "pub/sub gap on {}: messages published meanwhile were missed, how many the \
             server cannot tell ({lasted}): {}",
            names.join(", "),
            gap.cause
        );
        io.stats().add(&io.stats().gaps, 1);
        io.event(Event::Gap {
            subscriptions: names,
            disconnected_at: gap.since,
            resubscribed_at: until,
            cause: gap.cause,
        });
    }

    /// Called every turn: starts the watch timer while a lane is paused (opening the
    /// Control connection it asks on), and reports drops once per period.
    pub(super) fn tend(&mut self, io: &mut Io<ListenTag>, now: Instant) {
        if self.dropped_unreported > 0
            && self
                .dropped_reported_at
                .map_or(true, |t| now.duration_since(t) >= WATCH_PERIOD)
        {
            self.report_drops(io, now);
        }
        let paused = self.lanes.iter().any(|l| l.paused);
        if (paused || self.dropped_unreported > 0) && !self.watching {
            self.watching = true;
            io.timer(now + WATCH_PERIOD, TIMER_WATCH);
        }
        if paused && self.watch_usable {
            io.want_control();
        }
    }

    /// Tells the handler (and the event log) of the messages dropped since the last
    /// report.
    pub(super) fn report_drops(&mut self, io: &mut Io<ListenTag>, now: Instant) {
        let count = std::mem::take(&mut self.dropped_unreported);
        if count == 0 {
            return;
        }
        self.dropped_reported_at = Some(now);
        tracing::warn!(
            target: EVENT_TARGET,
            shard = io.shard(),
            "dropped {count} pub/sub message(s): the handlers are behind and the staging \
             area is full (Overflow::DropOldest)"
        );
        io.event(Event::Dropped { count });
    }

    /// The watch timer: asks the server about every paused connection.
    pub(super) fn on_watch_timer(&mut self, io: &mut Io<ListenTag>, now: Instant) {
        self.watching = false;
        if self.dropped_unreported > 0 {
            self.report_drops(io, now);
        }
        let paused: Vec<(usize, usize, i64)> = (0..io.conns().len())
            .filter_map(|id| {
                let lane = io.fetching(id).map(FetchLane::index)?;
                let client = io.conn(id).server().client_id?;
                self.lanes[lane].paused.then_some((lane, id, client))
            })
            .collect();
        if paused.is_empty() {
            return;
        }
        self.watching = true;
        io.timer(now + WATCH_PERIOD, TIMER_WATCH);
        if !self.watch_usable {
            return;
        }
        let allow = io.reply_timeout();
        // Client ids are a server's own: ask only about connections on Control's node
        // (in a cluster the others wait until a Control of theirs exists; standalone,
        // every connection is on Control's node).
        let Some(node) = io.control_id().map(|c| io.conn(c).target_addr()) else {
            io.want_control();
            return;
        };
        let paused: Vec<_> = paused
            .into_iter()
            .filter(|&(_, id, _)| io.conn(id).target_addr() == node)
            .collect();
        let Some(ctl) = io.control_ready() else {
            return;
        };
        for (lane, conn, client) in paused {
            let tag = ListenTag::Alive {
                lane: lane as u32,
                conn: conn as u32,
                client,
            };
            ctl.command(Tag::Pipe(tag), now, allow, |buf| {
                CommandWriter::new(buf, 4)
                    .arg("CLIENT")
                    .arg("LIST")
                    .arg("ID")
                    .arg_int(client)
                    .finish();
            });
        }
    }

    /// The server's answer about paused connection `conn` (client `client`) of `lane`.
    pub(super) fn on_alive(
        &mut self,
        io: &mut Io<ListenTag>,
        lane: usize,
        conn: usize,
        client: i64,
        frame: &Bytes,
    ) -> Result<(), Failure> {
        let f = io.decode(conn, frame)?;
        if f.is_error() {
            self.watch_usable = false;
            tracing::warn!(
                "cannot watch paused subscriber connections ({}): CLIENT LIST was refused, so \
                 a subscriber the server drops while reading is paused is noticed only when \
                 reading resumes; give the ACL user +client|list",
                f.as_bytes()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default()
            );
            return Ok(());
        }
        // The connection may have been replaced since the question was asked.
        if io.conn(conn).server().client_id != Some(client) || !self.lanes[lane].paused {
            return Ok(());
        }
        if lists_client(&f, client) {
            self.lanes[lane].alive_at = Some(SystemTime::now());
            return Ok(());
        }
        io.drop_conn(
            conn,
            Error::new(
                ErrorKind::ConnectionLost,
                format!(
                    "the server closed the subscriber connection (client id {client}) while \
                     ringq had stopped reading it"
                ),
            ),
        );
        Ok(())
    }

    /// When `lane`'s messages stopped coming, for a gap opening now: the last moment its
    /// connection was known alive (a watch answer, or its last message) if reading was
    /// paused or had just resumed, else now (a loss noticed as it happens).
    pub(super) fn lost_since(&self, io: &Io<ListenTag>, lane: usize, paused: bool) -> SystemTime {
        let now = SystemTime::now();
        let l = &self.lanes[lane];
        if !paused && !l.resumed_recently() {
            return now;
        }
        let last_msg = (l.last_msg_ns > 0).then(|| {
            now.checked_sub(Duration::from_nanos(
                io.turn_ns().saturating_sub(l.last_msg_ns),
            ))
            .unwrap_or(now)
        });
        match (l.alive_at, last_msg) {
            (Some(a), Some(m)) => a.max(m),
            (a, m) => a.or(m).unwrap_or(now),
        }
    }
}

/// Whether a `CLIENT LIST` reply (lines of `key=value` fields) lists client `id`.
fn lists_client(f: &Frame, id: i64) -> bool {
    let Some(text) = f.as_bytes() else {
        return false;
    };
    let want = format!("id={id}");
    text.split(|&b| b == b'\n').any(|line| {
        line.split(|&b| b == b' ')
            .any(|field| field.trim_ascii() == want.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_list_lines_are_read_by_field() {
        let f = Frame::BulkString(Bytes::from_static(
            b"id=17 addr=127.0.0.1:5000 name=x\nid=170 addr=127.0.0.1:5001\n",
        ));
        assert!(lists_client(&f, 17));
        assert!(lists_client(&f, 170));
        assert!(!lists_client(&f, 1));
        assert!(!lists_client(&Frame::BulkString(Bytes::new()), 17));
    }
}

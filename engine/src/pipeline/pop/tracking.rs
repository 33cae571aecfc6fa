//! Key tracking for the dialects whose fetch is a script (reliable, Kombu): a lane of
//! several keys, once dry, cannot block on all of them (scripts cannot block), so its
//! connection turns `CLIENT TRACKING ON NOLOOP` on, reads the keys (`EXISTS`), and is woken
//! by the server's invalidation push when a producer writes one of them.

use std::time::Instant;

use bytes::Bytes;
use ringq_resp::{CommandWriter, Frame};

use super::dialect::Dialect;
use super::{CarriesPop, PopPipeline};
use crate::conn::{Failure, Tag};
use crate::pipeline::Io;

impl<D: Dialect> PopPipeline<D> {
    /// On fetch connection `conn` just ready: `CLIENT TRACKING ON NOLOOP` when its lane
    /// has several keys and the server speaks RESP3 (invalidations are push frames).
    /// `tag` is the pipeline's tag for the command; its `+OK` goes to
    /// [`PopPipeline::tracking_on`].
    pub(crate) fn request_tracking<C: CarriesPop>(
        &self,
        io: &mut Io<C>,
        conn: usize,
        now: Instant,
        tag: C,
    ) {
        let allow = io.reply_timeout();
        let many = io
            .fetch_of(conn)
            .is_some_and(|l| self.lane_keys(l.index()) > 1);
        let c = io.conn_mut(conn);
        if many && c.server().resp3 {
            c.command(Tag::Pipe(tag), now, allow, |buf| {
                CommandWriter::new(buf, 4)
                    .arg("CLIENT")
                    .arg("TRACKING")
                    .arg("ON")
                    .arg("NOLOOP")
                    .finish();
            });
        }
    }

    /// Connection `conn`'s lane has `CLIENT TRACKING` on.
    pub(crate) fn tracking_on<C: CarriesPop>(&mut self, io: &Io<C>, conn: usize) {
        if let Some(l) = io
            .fetch_of(conn)
            .and_then(|l| self.lanes.get_mut(l.index()))
        {
            l.tracking_on();
        }
    }

    /// A push frame on connection `conn`: `>2 invalidate [keys]` (or a null: everything)
    /// wakes its lane; anything else is logged and ignored.
    ///
    /// # Errors
    /// A fatal protocol failure when the frame is not RESP.
    pub(crate) fn on_push_frame<C: CarriesPop>(
        &mut self,
        io: &Io<C>,
        conn: usize,
        frame: &Bytes,
    ) -> Result<(), Failure> {
        let f = io.decode(conn, frame)?;
        match &f {
            Frame::Push(v) if matches!(v.first(), Some(Frame::BulkString(k)) if k.eq_ignore_ascii_case(b"invalidate")) =>
            {
                let keys: Option<Vec<Bytes>> = match v.get(1) {
                    Some(Frame::Array(ks)) => {
                        Some(ks.iter().filter_map(|k| k.as_bytes().cloned()).collect())
                    }
                    _ => None,
                };
                self.wake(io, conn, keys.as_deref());
            }
            _ => tracing::debug!(conn = %io.conn(conn).name(), "ignored a push frame: {f:?}"),
        }
        Ok(())
    }

    /// Keys connection `conn`'s lane watches changed (`None`: any of them may have): the
    /// lane fetches again, starting with the queue of the first key named.
    pub(crate) fn wake<C: CarriesPop>(&mut self, io: &Io<C>, conn: usize, keys: Option<&[Bytes]>) {
        let first = keys
            .and_then(|k| k.first())
            .and_then(|k| self.plan.keys.get(&k[..]))
            .map(|s| s.index);
        if let Some(l) = io
            .fetch_of(conn)
            .and_then(|l| self.lanes.get_mut(l.index()))
        {
            l.wake(first);
        }
    }
}

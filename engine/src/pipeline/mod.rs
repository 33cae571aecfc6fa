//! The pipeline seam: one shard loop, many delivery modes.
//!
//! The shard ([`crate::shard`]) owns the loop, the driver, the connections, the credits,
//! generic timers, idle PINGs, dispatch and the stop protocol. A *pipeline* owns what is
//! mode-specific: which commands to send on a ready connection within the free credits,
//! how a reply or a push frame becomes messages, what an outcome does on the server,
//! what happens when a connection is lost or stalls, timers of its own, and when it has
//! drained at a stop. Pop is the first ([`pop::PopPipeline`]); listen, reliable and stream
//! are each one more module here.
//!
//! The shard is generic over its pipeline (`Shard<P: Pipeline>`), so every call below is
//! statically dispatched and inlined on the hot path; nothing here is a trait object.
//!
//! What a pipeline sees of its shard is [`Io`]: the connections (to queue commands and
//! read their state), the credits, the message budget, timers, stats and the stop flag.
//! It never touches the driver: commands it queues are sent at the end of the turn.
//!
//! ## Connection roles
//! A pipeline asks for [`Pipeline::fetch_connections`] *fetch* connections per shard,
//! which carry its (possibly blocking) fetching commands, and says when the shard's
//! *Control* connection is opened ([`Pipeline::control`]). Control carries what must
//! never wait behind a blocked fetch: acks, scripts, group creation, and the shard's own
//! `CLIENT UNBLOCK` at a stop.
//!
//! ## Outcomes
//! Every handled message's outcome reaches the pipeline on the shard thread: inline right
//! after the handler returns ([`Pipeline::on_outcomes`]), or from a worker through the
//! results ring ([`Pipeline::on_worker_outcome`]). A handler that panics, or returns fewer
//! outcomes than messages, produces [`Outcome::Retry`] for the messages without one, so a
//! message is never acknowledged unless its handler said so. What `Retry` does is the
//! mode's: pop mode (at-most-once) counts it; an at-least-once mode delivers it again.

pub(crate) mod alo;
pub(crate) mod kombu;
pub(crate) mod listen;
pub(crate) mod pop;
pub(crate) mod reliable;
pub(crate) mod stream;
#[cfg(test)]
mod testing;

pub(crate) use crate::shard::{FetchLane, Io};

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::budget::Budget;
use crate::conn::Failure;
use crate::handler::{Message, Outcome};

/// How long a command may take before its reply is overdue: the engine's
/// [`EngineBuilder::reply_grace`](crate::EngineBuilder::reply_grace) and
/// [`EngineBuilder::reply_timeout`](crate::EngineBuilder::reply_timeout), the same for
/// every mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Timing {
    /// Extra time past a blocking command's block timeout.
    pub reply_grace: Duration,
    /// How long a non-blocking command may take.
    pub reply_timeout: Duration,
}

impl Timing {
    /// The deadline of a command that blocks for `block` on the server (`None`: one that
    /// does not block).
    pub(crate) fn allow(&self, block: Option<Duration>) -> Duration {
        match block {
            Some(b) => b.saturating_add(self.reply_grace),
            None => self.reply_timeout,
        }
    }
}

/// A consumer type's way into the engine: checked, its sources named, its pipeline built
/// for each shard. [`EngineBuilder::start`](crate::EngineBuilder::start) runs every mode
/// through this one path.
pub(crate) trait Start {
    /// The pipeline this consumer runs on each shard.
    type Pipeline: Pipeline;

    /// What its sources are, plural, for messages ("queues", "streams").
    const SOURCES: &'static str;

    /// The delivery mode's name (`pop`, `reliable`, `stream`, `listen`): the `mode` label
    /// of the metrics.
    const MODE: &'static str;

    /// Refuses a consumer that cannot work, before anything starts.
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config), saying what to change.
    fn check(&self) -> Result<(), crate::Error>;

    /// The consumer group (stream mode): the `group` label of the per-stream metrics.
    fn group_name(&self) -> Option<String> {
        None
    }

    /// Refuses a dispatch the consumer cannot keep its promises with (default: any
    /// works).
    ///
    /// # Errors
    /// [`ErrorKind::Config`](crate::ErrorKind::Config), saying what to change.
    fn check_dispatch(&self, dispatch: &crate::Dispatch) -> Result<(), crate::Error> {
        let _ = dispatch;
        Ok(())
    }

    /// Its sources' names, in order: stats count messages per source.
    fn source_names(&self) -> Vec<String>;

    /// Every key the commands for source `i` name, for a cluster engine: they must all be
    /// in one hash slot, and the source's lane is routed to that slot's node. `None`: the
    /// mode does not run on a cluster yet (the start is refused, saying so).
    fn source_keys(&self, i: usize) -> Option<Vec<Bytes>> {
        let _ = i;
        None
    }

    /// The keys whose lengths (`LLEN`), summed, are source `i`'s depth: the messages
    /// waiting in it (see `EngineBuilder::queue_depth`). Empty: the mode has no depth
    /// to sample (the default).
    fn depth_keys(&self, i: usize) -> Vec<Bytes> {
        let _ = i;
        Vec::new()
    }

    /// The pipeline of a shard whose lane `l` fetches the sources `lanes[l]` (indices
    /// into [`Start::source_names`]).
    fn pipeline(
        &self,
        lanes: Vec<Vec<u32>>,
        budget: Option<Arc<Budget>>,
        timing: Timing,
    ) -> Self::Pipeline;
}

/// Refuses a block timeout longer than [`MAX_BLOCK_TIMEOUT`](crate::MAX_BLOCK_TIMEOUT):
/// every mode that blocks checks it at start, so no deadline computed from it can
/// overflow on a shard thread.
pub(crate) fn check_block_timeout(d: Duration) -> Result<(), crate::Error> {
    if d > pop::MAX_BLOCK_TIMEOUT {
        return Err(crate::Error::config(format!(
            "block timeout {d:?} is longer than the longest allowed, {:?}",
            pop::MAX_BLOCK_TIMEOUT
        )));
    }
    Ok(())
}

/// When the shard opens its Control connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ControlUse {
    /// At start, with the fetch connections (acks and scripts need it from the first
    /// message on).
    Always,
    /// Only when needed: [`Io::want_control`], or a stop that must unblock blocked
    /// commands (pop mode: a server without room for one more connection still serves).
    OnDemand,
}

/// Where a stopping pipeline is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drain {
    /// Commands it must see answered are still in flight (last acks): keep Control open.
    Waiting,
    /// Nothing more to wait for.
    Drained,
}

/// A delivery mode, as the shard loop drives it. See the module docs.
pub(crate) trait Pipeline: Send + 'static {
    /// What the pipeline remembers about each command it queued, handed back with the
    /// command's reply ([`Pipeline::on_reply`]) or when the connection is lost
    /// ([`Pipeline::on_lost`]).
    type Cmd: Copy + Debug + Send + 'static;

    /// Whether every lost fetch connection reaches the handler as an event of its own
    /// (listen mode's gaps, which carry the error): the shard then logs the loss under
    /// the event target (`handler::EVENT_TARGET`), which a program that reports events
    /// itself can filter out.
    const LOSSES_ARE_EVENTS: bool = false;

    /// Fetch connections on this shard.
    fn fetch_connections(&self) -> usize;

    /// When the Control connection opens.
    fn control(&self) -> ControlUse;

    /// In a cluster, whether the shard keeps one Control per node its lanes' slots are
    /// on — the modes whose Control settles, recovers and sweeps on their sources' keys —
    /// instead of one following the first lane. The pipeline then sends each key's
    /// commands on [`Io::control_of_lane`] of the key's lane, which follows the slot when
    /// it moves to another node.
    const CONTROL_PER_NODE: bool = false;

    /// Connection `conn` completed its handshake (the first time, or after a reconnect):
    /// re-issue, resubscribe, reclaim.
    fn on_ready(&mut self, io: &mut Io<Self::Cmd>, conn: usize, now: Instant) {
        let _ = (io, conn, now);
    }

    /// Queues what ready connections should send this turn, within the free credits.
    /// Not called while stopping.
    fn fill(&mut self, io: &mut Io<Self::Cmd>, now: Instant);

    /// The reply to the pipeline's command `cmd` on connection `conn`. Messages it
    /// carries are appended to `out`, borrowing from `frame`; returns their payload bytes.
    ///
    /// # Errors
    /// A [`Failure`] closes the connection (and reconnects, or stops the engine).
    fn on_reply<'f>(
        &mut self,
        io: &mut Io<Self::Cmd>,
        conn: usize,
        cmd: Self::Cmd,
        frame: &'f Bytes,
        out: &mut Vec<Message<'f>>,
        now: Instant,
    ) -> Result<u64, Failure>;

    /// A push frame on connection `conn` (RESP3 `>`, or a RESP2 message array on a
    /// subscriber connection). Messages go to `out` as in [`Pipeline::on_reply`].
    ///
    /// # Errors
    /// As [`Pipeline::on_reply`].
    fn on_push<'f>(
        &mut self,
        io: &mut Io<Self::Cmd>,
        conn: usize,
        frame: &'f Bytes,
        out: &mut Vec<Message<'f>>,
        now: Instant,
    ) -> Result<u64, Failure> {
        let _ = (out, now);
        io.stats().add(&io.stats().push_frames, 1);
        tracing::debug!(
            conn = %io.conn(conn).name(),
            "ignored a push frame: {}",
            String::from_utf8_lossy(&frame[..frame.len().min(64)])
        );
        Ok(0)
    }

    /// Outcomes of messages handled inline, all from one frame on connection `conn`
    /// (`None`: messages the pipeline had staged, [`Pipeline::take_staged`]) carrying
    /// `bytes` payload bytes: one outcome per message, in order.
    fn on_outcomes(
        &mut self,
        io: &mut Io<Self::Cmd>,
        conn: Option<usize>,
        msgs: &[Message<'_>],
        outcomes: &[Outcome],
        bytes: u64,
    );

    /// Messages the pipeline held back for want of credit (a staging area) that may go to
    /// the handler now, appended to `out`; returns their payload bytes. Called every turn.
    fn take_staged(&mut self, io: &mut Io<Self::Cmd>, out: &mut Vec<Message<'static>>) -> u64 {
        let _ = (io, out);
        0
    }

    /// The outcome of one message handled on a worker thread.
    fn on_worker_outcome(
        &mut self,
        io: &mut Io<Self::Cmd>,
        msg: &Message<'static>,
        outcome: Outcome,
    );

    /// Whether closing a connection with `cmd` unanswered would lose what the server did
    /// for it (popped messages): such a connection is kept open to drain when it stalls
    /// (see [`Pipeline::on_stalled`]). Default: nothing is lost with a connection (the
    /// at-least-once modes keep what a lost reply carried on the server; listen
    /// resubscribes).
    fn owes_effects(&self, cmd: &Self::Cmd) -> bool {
        let _ = cmd;
        false
    }

    /// Whether `cmd` may block on the server (a stop ends it with `CLIENT UNBLOCK`).
    fn blocks(&self, cmd: &Self::Cmd) -> bool;

    /// The optional part of stall handling, for a pipeline whose commands owe effects
    /// ([`Pipeline::owes_effects`]; only pop mode's do): connection `conn` stalled with
    /// such commands; it stays open to drain and a fresh connection takes over its role.
    /// Update its commands (`cmds_mut`) and give back what the fresh one needs; returns
    /// what they had asked for, for the log. Never called for other pipelines: their
    /// stalled connections are closed and reconnected.
    fn on_stalled(&mut self, io: &mut Io<Self::Cmd>, conn: usize) -> String {
        let _ = (io, conn);
        String::new()
    }

    /// Connection `conn` was lost with `unanswered` commands (oldest first) that will
    /// never be answered. `stalled`: it was a drained stalled connection, whose role a
    /// fresh connection has taken over.
    fn on_lost(
        &mut self,
        io: &mut Io<Self::Cmd>,
        conn: usize,
        unanswered: &[Self::Cmd],
        stalled: bool,
    );

    /// A timer set with [`Io::timer`] fired.
    fn on_timer(&mut self, io: &mut Io<Self::Cmd>, id: u32, now: Instant) {
        let _ = (io, id, now);
    }

    /// Called every loop turn while the shard stops, before connections are closed.
    fn on_stop(&mut self, io: &mut Io<Self::Cmd>, now: Instant) -> Drain;
}

//! The at-least-once core that reliable and stream mode share; each mode keeps only its
//! own wire commands.
//!
//! - `scripts`: a mode's Lua scripts as a set that loads and checks itself per
//!   connection ([`ScriptSet`]).
//! - `policy`: what an outcome becomes — ack, a retry after a backoff ([`Backoff`]), or a
//!   dead letter with a reason ([`Verdict`]).
//! - `settle`: outcome commands in flight on Control, sent again when Control is lost
//!   ([`SettleQueue`]).
//! - `clock`: the wall clock written into server records, and the random source.
//! - [`Stage`]: where a consumer is between start, running, a lost fetch and a stop — the
//!   same stages in both modes — and [`require_version`], the version gate.

mod clock;
mod held;
mod policy;
mod scripts;
mod settle;

pub(crate) use clock::{now_ms, Rng};
pub(crate) use held::Held;
pub use policy::Backoff;
pub(crate) use policy::{Policy, Verdict};
pub(crate) use scripts::{Script, ScriptSet};
pub(crate) use settle::SettleQueue;

use super::Io;
use crate::error::{Error, ErrorKind};

/// Why a consumer takes back what it holds on the server before it fetches anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recovery {
    /// At start: what a previous run with the same id left (a restart).
    Start,
    /// After a fetch reply was lost with its connection: what that reply carried, once
    /// every message in hand is settled.
    Orphans,
    /// At a stop: give back what was fetched and not handled (reliable mode).
    Stop,
}

/// Where an at-least-once consumer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Setup commands (group creation, probes) to send once Control is ready.
    Setup,
    /// `left` setup replies awaited.
    SettingUp(u32),
    /// Recovery to start once Control is ready.
    Recover(Recovery),
    /// Recovery under way (`left` replies awaited, where the mode counts them).
    Recovering(Recovery, u32),
    /// Fetching.
    Running,
    /// A fetch reply was lost: nothing new until everything in hand is settled, then
    /// [`Recovery::Orphans`].
    Orphaned,
    /// Stopped: everything given back.
    Stopped,
}

/// Fails the engine unless the server on `conn` is at least `min` (`what` says which
/// mode needs it and for which commands). Returns whether it is.
pub(crate) fn require_version<C: Copy + std::fmt::Debug>(
    io: &mut Io<C>,
    conn: usize,
    min: (u32, u32, u32),
    what: &str,
) -> bool {
    let version = io.conn(conn).server().version;
    if version >= min {
        return true;
    }
    io.fail(Error::new(
        ErrorKind::Config,
        format!(
            "{what} needs Redis {}.{} or later; {} is {}.{}.{}",
            min.0,
            min.1,
            io.conn(conn).peer(),
            version.0,
            version.1,
            version.2
        ),
    ));
    false
}

/// The longest lease (reliable mode) or claim idle time (stream mode) ringq takes: a day.
/// It is how long a crashed consumer's messages wait before another consumer takes them
/// back, so a longer one would strand them for as long (and one past what the server's
/// `PX` holds would fail at run time, not at start).
pub const MAX_LEASE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Refuses a lease longer than [`MAX_LEASE`], saying why.
pub(crate) fn check_lease(d: std::time::Duration) -> Result<(), Error> {
    if d > MAX_LEASE {
        return Err(Error::config(format!(
            "a lease of {} s is longer than the longest ringq takes, {} s (a day): a \
             crashed consumer's messages would wait that long before another consumer \
             took them back. Give a lease longer than a handler takes, and not much more",
            d.as_secs(),
            MAX_LEASE.as_secs()
        )));
    }
    Ok(())
}

/// Milliseconds for a script argument, at least 1.
pub(crate) fn ms(d: std::time::Duration) -> i64 {
    d.as_millis().clamp(1, i64::MAX as u128) as i64
}

/// `unknown` elements a fetch on connection `conn` found that this consumer never fetched
/// (`what` says where, for the log): counted as foreign; the caller's recovery gives them
/// back once the messages in hand are settled.
pub(crate) fn foreign<C: Copy + std::fmt::Debug>(
    io: &mut Io<C>,
    conn: usize,
    unknown: u64,
    what: &str,
) {
    tracing::warn!(
        conn = %io.conn(conn).name(),
        "{unknown} {what} this consumer did not fetch (a fetch from a connection it gave \
         up, or another process with the same consumer id): kept, and given back once the \
         messages in hand are settled"
    );
    let s = io.stats();
    s.add(&s.foreign_leases, unknown);
}

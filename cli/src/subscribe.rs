//! `ringq subscribe`: the engine in listen mode, printing every message it receives.
//!
//! Channels, patterns and shard channels are subscribed on one connection (one shard):
//! a subscriber's order is the server's order. Gaps — times the subscriptions were not
//! in force, after which ringq resubscribed by itself — are warnings on stderr (the
//! [`Printer`](crate::output::Printer)'s event callback). `--count N` exits after N
//! messages; SIGINT/SIGTERM exit 0 after printing what was received.

use ringq::{Dispatch, ListenConsumer, Overflow};

use crate::args::SubscribeArgs;
use crate::consume::print_until_stopped;
use crate::exit::Exit;
use crate::output::Lines;

/// Runs `ringq subscribe`.
///
/// # Errors
/// A bad URL (status 2); whatever stopped the engine (status 1): a refused subscription,
/// a server unreachable at start, a failed write to stdout.
pub fn run(a: SubscribeArgs) -> Result<(), Exit> {
    a.server.info()?;
    let mut consumer = ListenConsumer::new();
    for c in &a.channel {
        consumer = consumer.channel(c.clone());
    }
    for p in &a.pattern {
        consumer = consumer.pattern(p.clone());
    }
    for s in &a.shard_channel {
        consumer = consumer.shard_channel(s.clone());
    }
    if let Some(n) = a.drop_oldest {
        consumer = consumer.overflow(Overflow::DropOldest(
            usize::try_from(n).unwrap_or(usize::MAX),
        ));
    }
    let mut builder = a
        .server
        .builder()?
        .pin_cores(!a.no_pin)
        .prefetch(a.prefetch);
    // Printing happens on one worker thread (one keeps the order), never on the shard:
    // whatever stdout does, the shard goes on — reading and staging with --drop-oldest,
    // and with the default (pausing the socket while stdout is behind) watching whether
    // the server drops the paused subscriber, so a gap is told when it happens.
    builder = builder.dispatch(Dispatch::workers(1));
    if let Some(n) = a.count {
        builder = builder.limit(n);
    }
    if let Some(b) = a.backend {
        builder = builder.backend(b.engine());
    }
    print_until_stopped(
        builder,
        consumer,
        Lines {
            kombu: false,
            format: a.format,
            listen: true,
            metrics: a.metrics_addr,
        },
        |_| None,
    )
    .map(|_| ())
}

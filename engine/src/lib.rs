//! ringq: an io_uring, thread-per-core consumer engine for Redis-protocol brokers.
//!
//! Each shard thread owns one io_uring and speaks RESP directly over its sockets. This
//! release consumes list queues in `pop` mode (at-most-once): BRPOP, or BLMPOP/LMPOP with
//! COUNT, over many queues with a fair rotation, priority levels and a prefetch limit; in
//! `reliable` mode (at-least-once, [`ReliableConsumer`]): leases into a processing list,
//! batched acks, retries with backoff, dead letters, heartbeats and recovery, fencing of
//! stale outcomes; Redis Streams consumer groups in `stream` mode ([`StreamConsumer`]):
//! own pending entries read again at start, XAUTOCLAIM from dead consumers, retries, dead
//! letters, tag filters, lag; and pub/sub in `listen` mode: SUBSCRIBE, PSUBSCRIBE and
//! SSUBSCRIBE, resubscribed after every reconnect, with a gap event whenever messages may
//! have been missed.
//!
//! # Layout
//! - `shard`: the per-core loop — connections, credits, timers, idle PINGs, dispatch and
//!   the stop protocol — generic over its pipeline and its backend.
//! - `pipeline`: the seam between the loop and a delivery mode, and the modes behind it:
//!   `pipeline::pop` ([`Queue`], [`PopConsumer`], lanes, reply parsing) and
//!   `pipeline::listen` ([`ListenConsumer`], [`Subscription`], [`Overflow`]) and
//!   `pipeline::reliable` ([`ReliableConsumer`], [`Backoff`]) and `pipeline::stream`
//!   ([`StreamConsumer`], [`StreamKey`], [`StartAt`]); [`envelope`]: reliable mode's wire
//!   format and key names.
//! - `backend`: the driver interface and its contract, and [`IoBackend`]; `ring`: its
//!   io_uring implementation and its epoll one (the only `unsafe` code), the
//!   provided-buffer ring, the kernel feature probe, the few plain syscalls.
//! - `conn`: the connection state machine (connect, HELLO/AUTH/SELECT handshake, the reply
//!   FIFO and push frames, pause/resume, close, backoff).
//! - `credit`, `budget`, `timer`: prefetch credit, the message limit, deadlines.
//! - `handler`: [`Message`], [`Outcome`], [`Event`], [`Handler`].
//! - `dispatch`: [`Dispatch`] — inline, or worker threads fed by SPSC rings, orderly or not.
//! - `engine`: [`EngineBuilder`], [`Consumer`], [`Running`], [`ShutdownHandle`].
//! - `stats`, `url`, `tls`, `error`: [`Stats`], [`ConnectionInfo`], [`Tls`], [`Error`].
//! - [`kombu`]: Kombu's Redis transport and Celery's protocol 2 (keys, envelope, tasks).
//! - `sentinel`: discovery behind Redis Sentinel and the `+switch-master` watcher;
//!   `cluster`: a cluster's topology (CLUSTER SHARDS/SLOTS, the majority view, the
//!   refresh thread) and key slots ([`key_slot`]); `blocking`: the small blocking RESP
//!   client those threads use; `resolve`: re-resolving an address off the shards.
//!
//! # Example
//! ```no_run
//! use ringq::{EngineBuilder, Message, Outcome, PopConsumer, PopStrategy};
//!
//! let consumer = PopConsumer::new(["jobs:high", "jobs:low"])
//!     .strategy(PopStrategy::Adaptive)
//!     .batch(128);
//! let running = EngineBuilder::new("redis://127.0.0.1:6379")
//!     .shards(2)
//!     .prefetch(4096)
//!     .start(consumer, |m: &Message<'_>| {
//!         let _ = m.payload();
//!         Outcome::Ack
//!     })?;
//! std::thread::sleep(std::time::Duration::from_secs(1));
//! let stats = running.shutdown()?;
//! println!("{} messages, {} pops", stats.messages, stats.pops);
//! # Ok::<(), ringq::Error>(())
//! ```
#![warn(missing_docs)]
// The only unsafe code is in `ring` (the io_uring driver and the plain system calls),
// and every block there says why it is sound.
#![deny(unsafe_code)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod backend;
mod blocking;
mod budget;
mod cluster;
mod conn;
mod credit;
mod dispatch;
mod engine;
pub mod envelope;
mod error;
mod frames;
mod handler;
mod intern;
pub mod kombu;
#[cfg(feature = "prometheus")]
pub mod metrics;
mod pipeline;
mod resolve;
#[allow(
    unsafe_code,
    reason = "the io_uring driver and the system calls: the only unsafe code"
)]
mod ring;
mod sentinel;
mod shard;
mod stats;
mod timer;
mod tls;
mod url;
mod wake;

pub use backend::{IoBackend, IoCounters};
pub use cluster::cluster_node;
pub use cluster::slot::key_slot;
#[cfg(feature = "bench-support")]
#[doc(hidden)]
pub use dispatch::bench_support;
pub use dispatch::{Dispatch, KeyFn};
pub use engine::{Consumer, EngineBuilder, Running, ShutdownHandle};
pub use error::{Error, ErrorKind};
pub use handler::{Event, GapCause, Handler, Message, Outcome, EVENT_TARGET};
pub use pipeline::alo::{Backoff, MAX_LEASE};
pub use pipeline::kombu::KombuConsumer;
pub use pipeline::listen::{ListenConsumer, Overflow, Subscription};
pub use pipeline::pop::{PopConsumer, PopStrategy, Queue, MAX_BLOCK_TIMEOUT};
pub use pipeline::reliable::ReliableConsumer;
pub use pipeline::stream::{StartAt, StreamConsumer, StreamKey};
pub use ring::{probe, RingFeatures};
/// The rustls version ringq links, for building a [`Tls::config`] of your own.
pub use rustls;
pub use sentinel::sentinel_master;
/// The `serde_json` ringq links, whose `Value` carries Celery task arguments in
/// [`kombu`].
pub use serde_json;
pub use stats::{ConnectionCounts, Stats};
pub use tls::Tls;
pub use url::{Address, ConnectionInfo};

/// The README's code examples, compiled as doctests so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

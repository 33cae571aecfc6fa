//! [`Consumer`]: what an engine consumes, one kind per delivery mode.

use crate::pipeline::listen::ListenConsumer;
use crate::pipeline::pop::PopConsumer;
use crate::pipeline::reliable::ReliableConsumer;
use crate::pipeline::stream::StreamConsumer;

#[allow(unused_imports, reason = "named in the docs")]
use super::EngineBuilder;

/// What an engine consumes: one kind per delivery mode. Every consumer type converts
/// into it, so [`EngineBuilder::start`] takes any of them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Consumer {
    /// List queues, at-most-once ([`PopConsumer`]).
    Pop(PopConsumer),
    /// Pub/sub channels, patterns and shard channels, at-most-once with gap events
    /// ([`ListenConsumer`]).
    Listen(ListenConsumer),
    /// List queues, at-least-once: leases, acks, retries, dead letters, recovery
    /// ([`ReliableConsumer`]).
    Reliable(ReliableConsumer),
    /// Redis Streams consumer groups, at-least-once ([`StreamConsumer`]).
    Stream(StreamConsumer),
    /// Kombu / Celery queues, at-least-once with Kombu's own records
    /// ([`KombuConsumer`](crate::KombuConsumer)).
    Kombu(crate::KombuConsumer),
}

impl From<crate::KombuConsumer> for Consumer {
    fn from(c: crate::KombuConsumer) -> Self {
        Consumer::Kombu(c)
    }
}

impl From<PopConsumer> for Consumer {
    fn from(c: PopConsumer) -> Self {
        Consumer::Pop(c)
    }
}

impl From<ReliableConsumer> for Consumer {
    fn from(c: ReliableConsumer) -> Self {
        Consumer::Reliable(c)
    }
}

impl From<StreamConsumer> for Consumer {
    fn from(c: StreamConsumer) -> Self {
        Consumer::Stream(c)
    }
}

impl From<ListenConsumer> for Consumer {
    fn from(c: ListenConsumer) -> Self {
        Consumer::Listen(c)
    }
}

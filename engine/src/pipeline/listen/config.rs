//! What a listen consumer is configured with: its subscriptions and the overflow policy.

use std::time::Duration;

use bytes::Bytes;

use super::ListenPipeline;
use crate::error::Error;
use crate::pipeline::{Start, Timing};

/// What one subscription listens to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subscription {
    /// A channel (`SUBSCRIBE`).
    Channel(Bytes),
    /// A glob-style pattern of channels (`PSUBSCRIBE`); messages report the pattern and
    /// the channel they were published to.
    Pattern(Bytes),
    /// A shard channel (`SSUBSCRIBE`, Redis ≥ 7.0; published with `SPUBLISH`).
    ShardChannel(Bytes),
}

impl Subscription {
    /// The channel or pattern.
    pub fn name(&self) -> &Bytes {
        match self {
            Subscription::Channel(n) | Subscription::Pattern(n) | Subscription::ShardChannel(n) => {
                n
            }
        }
    }

    /// The command that subscribes to it.
    pub(crate) fn command(&self) -> &'static str {
        match self {
            Subscription::Channel(_) => "SUBSCRIBE",
            Subscription::Pattern(_) => "PSUBSCRIBE",
            Subscription::ShardChannel(_) => "SSUBSCRIBE",
        }
    }
}

impl std::fmt::Display for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Subscription::Channel(_) => "channel",
            Subscription::Pattern(_) => "pattern",
            Subscription::ShardChannel(_) => "shard channel",
        };
        write!(f, "{kind} {}", String::from_utf8_lossy(self.name()))
    }
}

/// What happens when handlers are slower than publishers and the prefetch credit is used
/// up (messages received and not yet handled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Overflow {
    /// Stop reading the connection, so TCP pushes back on the server (default). Nothing is
    /// dropped by ringq; the server keeps the messages in the client's output buffer, and
    /// drops the connection when it passes `client-output-buffer-limit pubsub`. While
    /// reading is paused, ringq asks the server every second (on a second connection,
    /// `CLIENT LIST ID`) whether it still holds the subscriber, so such a drop is noticed
    /// within about a second, not when the handlers catch up: the connection is replaced,
    /// the subscriptions restored, and a gap event names the limit.
    #[default]
    Block,
    /// Keep reading whatever the handler does; hold up to `n` messages beyond the credit
    /// in a staging area, dropping the oldest when it is full. Every drop is counted
    /// (`Stats::dropped`) and reported (`Event::Dropped`, about once a second). Needs the
    /// handler off the shard thread: `start` refuses it with `Dispatch::inline`
    /// (`Dispatch::workers(1)` keeps the order).
    DropOldest(usize),
}

/// A `listen`-mode consumer (pub/sub, at-most-once broadcast): channels, patterns and
/// shard channels, resubscribed after every reconnect, with a gap event whenever messages
/// may have been missed.
#[derive(Debug, Clone, Default)]
pub struct ListenConsumer {
    pub(crate) subscriptions: Vec<Subscription>,
    pub(crate) overflow: Overflow,
    pub(crate) confirm_timeout: Option<Duration>,
}

impl ListenConsumer {
    /// A consumer with no subscription yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Subscribes to a channel.
    pub fn channel(self, name: impl Into<Bytes>) -> Self {
        self.subscribe(Subscription::Channel(name.into()))
    }

    /// Subscribes to a pattern (`news.*`).
    pub fn pattern(self, pattern: impl Into<Bytes>) -> Self {
        self.subscribe(Subscription::Pattern(pattern.into()))
    }

    /// Subscribes to a shard channel (Redis ≥ 7.0).
    pub fn shard_channel(self, name: impl Into<Bytes>) -> Self {
        self.subscribe(Subscription::ShardChannel(name.into()))
    }

    /// Adds a subscription. The same one given twice is subscribed once: one engine never
    /// receives a message twice through one subscription.
    pub fn subscribe(mut self, s: Subscription) -> Self {
        if !self.subscriptions.contains(&s) {
            self.subscriptions.push(s);
        }
        self
    }

    /// The overflow policy (default [`Overflow::Block`]).
    pub fn overflow(mut self, policy: Overflow) -> Self {
        self.overflow = policy;
        self
    }

    /// How long the server may take to confirm a subscription (default: the engine's
    /// reply timeout). A subscription not confirmed in time counts as a stalled
    /// connection: it is reconnected and subscribed again.
    pub fn confirm_timeout(mut self, d: Duration) -> Self {
        self.confirm_timeout = Some(d.max(Duration::from_millis(1)));
        self
    }

    /// The subscriptions, in configuration order.
    pub fn subscriptions(&self) -> &[Subscription] {
        &self.subscriptions
    }
}

impl Start for ListenConsumer {
    type Pipeline = ListenPipeline;
    const SOURCES: &'static str = "subscriptions";
    const MODE: &'static str = "listen";

    fn check(&self) -> Result<(), Error> {
        if self.subscriptions.is_empty() {
            return Err(Error::config(
                "nothing to listen to: give at least one channel, pattern or shard channel",
            ));
        }
        if let Overflow::DropOldest(0) = self.overflow {
            return Err(Error::config(
                "Overflow::DropOldest needs room for at least one message",
            ));
        }
        Ok(())
    }

    fn check_dispatch(&self, dispatch: &crate::Dispatch) -> Result<(), Error> {
        if matches!(self.overflow, Overflow::DropOldest(_)) && dispatch.worker_count() == 0 {
            return Err(Error::config(
                "Overflow::DropOldest keeps reading the socket whatever the handler does, which \
                 needs the handler off the shard thread: use Dispatch::workers(1) (one worker \
                 keeps the order), or Overflow::Block",
            ));
        }
        Ok(())
    }

    fn source_names(&self) -> Vec<String> {
        self.subscriptions.iter().map(ToString::to_string).collect()
    }

    /// A shard channel lives on its slot's owner; channels and patterns on any node (the
    /// cluster forwards every PUBLISH to every node): no key, so they share one lane.
    fn source_keys(&self, i: usize) -> Option<Vec<Bytes>> {
        Some(match self.subscriptions.get(i)? {
            Subscription::ShardChannel(n) => vec![n.clone()],
            Subscription::Channel(_) | Subscription::Pattern(_) => Vec::new(),
        })
    }

    fn pipeline(
        &self,
        lanes: Vec<Vec<u32>>,
        budget: Option<std::sync::Arc<crate::budget::Budget>>,
        _timing: Timing,
    ) -> ListenPipeline {
        ListenPipeline::new(self, lanes, budget)
    }
}

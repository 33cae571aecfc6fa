//! The handler boundary: what user code receives ([`Message`]) and returns ([`Outcome`]).
//!
//! A handler gets a batch of messages and returns one outcome per message, so a failure
//! never re-runs the messages that succeeded. [`Handler::handle`] is the single-message
//! convenience; closures `FnMut(&Message) -> Outcome` are handlers.

use bytes::Bytes;

/// One message taken from a queue.
///
/// Cheap to clone: the payload is a reference-counted slice of the reply it came in, and
/// the queue name and key are interned (no reference count at all).
#[derive(Debug, Clone)]
pub struct Message {
    pub(crate) queue: &'static [u8],
    pub(crate) key: &'static [u8],
    pub(crate) payload: Bytes,
    pub(crate) priority: u8,
    pub(crate) queue_index: u32,
    pub(crate) deliveries: u32,
    /// When the reply carrying it was received, in ns since the engine's epoch.
    pub(crate) received_ns: u64,
}

impl Message {
    /// The logical queue's name, as configured.
    pub fn queue(&self) -> &[u8] {
        self.queue
    }

    /// The Redis key the message was popped from (the queue name, or a priority level's key).
    pub fn key(&self) -> &[u8] {
        self.key
    }

    /// The message body.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The priority level it was popped from (0 for a queue without levels).
    pub fn priority(&self) -> u8 {
        self.priority
    }

    /// Position of the queue in the consumer's queue list.
    pub fn queue_index(&self) -> usize {
        self.queue_index as usize
    }

    /// How many times this message has been delivered, this delivery included. Always 1 in
    /// `pop` mode, which cannot redeliver.
    pub fn deliveries(&self) -> u32 {
        self.deliveries
    }
}

/// What happened to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Done; never deliver it again.
    Ack,
    /// Failed; deliver it again later. In `pop` mode (at-most-once) the message is already
    /// gone from the server: a retry is counted in the stats and has no other effect.
    Retry,
    /// Failed for good; move it to the dead-letter list. In `pop` mode counted only.
    Dead,
}

/// User code that consumes messages. One instance runs per shard thread with
/// [`Dispatch::inline`](crate::Dispatch::inline), or per worker thread with
/// [`Dispatch::workers`](crate::Dispatch::workers) / `orderly`, each cloned from the one
/// given to the engine.
pub trait Handler: Send + 'static {
    /// Handles one message.
    fn handle(&mut self, msg: &Message) -> Outcome;

    /// Handles a batch, pushing exactly one outcome per message onto `outcomes`, in order.
    /// Missing outcomes count as [`Outcome::Retry`]; extra ones are ignored.
    fn handle_batch(&mut self, batch: &[Message], outcomes: &mut Vec<Outcome>) {
        for m in batch {
            outcomes.push(self.handle(m));
        }
    }
}

impl<F> Handler for F
where
    F: FnMut(&Message) -> Outcome + Send + 'static,
{
    fn handle(&mut self, msg: &Message) -> Outcome {
        self(msg)
    }
}

//! The handler boundary: what user code receives ([`Message`]) and returns ([`Outcome`]).
//!
//! A handler gets a batch of messages and returns one outcome per message, so a failure
//! never re-runs the messages that succeeded. [`Handler::handle`] is the single-message
//! convenience; closures `FnMut(&Message<'_>) -> Outcome` are handlers.
//!
//! ## Borrowed and owned messages
//! A [`Message`] handed to an inline handler (the default, [`Dispatch::inline`]) *borrows*
//! its payload from the reply it came in: popping it touched no reference count and
//! allocated nothing, which is most of what a message costs the client at millions a
//! second. The borrow ends when the handler returns. To keep a message (or its payload)
//! longer, take an owned handle: [`Message::payload_bytes`] (a reference-counted slice of
//! the reply, no copy) or [`Message::detach`] (the whole message, `Message<'static>`).
//! Messages handed to worker threads are owned already.
//!
//! [`Dispatch::inline`]: crate::Dispatch::inline

use std::fmt;

use bytes::Bytes;

/// One message taken from a queue.
///
/// The lifetime is that of the reply the payload is borrowed from; `Message<'static>` owns
/// its payload (see [`Message::detach`]). Cloning is cheap either way: the queue name and
/// key are interned, and an owned payload is reference-counted.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub(crate) payload: Payload<'a>,
    pub(crate) queue: &'static [u8],
    pub(crate) key: &'static [u8],
    pub(crate) priority: u8,
    pub(crate) queue_index: u32,
    pub(crate) deliveries: u32,
    /// When the reply carrying it was received, in ns since the engine's epoch.
    pub(crate) received_ns: u64,
}

/// Where a message's bytes live.
#[derive(Clone)]
pub(crate) enum Payload<'a> {
    /// A slice of `frame`, the reply it came in (no reference taken).
    Lent { bytes: &'a [u8], frame: &'a Bytes },
    /// A reference-counted handle of its own.
    Owned(Bytes),
}

impl fmt::Debug for Payload<'_> {
    /// The message's own bytes only (never the rest of the reply it borrows from), the
    /// same for a borrowed and an owned payload.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes: &[u8] = match self {
            Payload::Lent { bytes, .. } => bytes,
            Payload::Owned(b) => b,
        };
        write!(f, "b\"{}\"", bytes.escape_ascii())
    }
}

impl<'a> Message<'a> {
    /// The message body.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        match &self.payload {
            Payload::Lent { bytes, .. } => bytes,
            Payload::Owned(b) => b,
        }
    }

    /// The message body as a [`Bytes`] handle that outlives the message: a
    /// reference-counted slice of the reply it came in, never a copy.
    pub fn payload_bytes(&self) -> Bytes {
        match &self.payload {
            Payload::Lent { bytes, frame } => frame.slice_ref(bytes),
            Payload::Owned(b) => b.clone(),
        }
    }

    /// An owned copy of the message (the payload is shared, not copied), to keep after
    /// the handler returns or to send to another thread.
    pub fn detach(&self) -> Message<'static> {
        self.clone().into_static()
    }

    /// As [`Message::detach`], without a new reference when the payload is owned already.
    pub(crate) fn into_static(self) -> Message<'static> {
        let payload = match self.payload {
            Payload::Lent { bytes, frame } => frame.slice_ref(bytes),
            Payload::Owned(b) => b,
        };
        Message {
            payload: Payload::Owned(payload),
            queue: self.queue,
            key: self.key,
            priority: self.priority,
            queue_index: self.queue_index,
            deliveries: self.deliveries,
            received_ns: self.received_ns,
        }
    }

    /// The logical queue's name, as configured.
    pub fn queue(&self) -> &[u8] {
        self.queue
    }

    /// The Redis key the message was popped from (the queue name, or a priority level's key).
    pub fn key(&self) -> &[u8] {
        self.key
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
    fn handle(&mut self, msg: &Message<'_>) -> Outcome;

    /// Handles a batch, pushing exactly one outcome per message onto `outcomes`, in order.
    /// Missing outcomes count as [`Outcome::Retry`]; extra ones are ignored.
    fn handle_batch(&mut self, batch: &[Message<'_>], outcomes: &mut Vec<Outcome>) {
        for m in batch {
            outcomes.push(self.handle(m));
        }
    }
}

impl<F> Handler for F
where
    F: FnMut(&Message<'_>) -> Outcome + Send + 'static,
{
    fn handle(&mut self, msg: &Message<'_>) -> Outcome {
        self(msg)
    }
}

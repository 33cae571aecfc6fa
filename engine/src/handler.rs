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

/// One message: from a queue (pop, reliable), a stream entry (stream) or a pub/sub
/// channel (listen).
///
/// Every getter works in every mode and costs nothing unless called; the mode-specific
/// ones return an empty value where the mode has nothing to say, rather than an
/// `Option` a handler of one mode would unwrap on every message:
///
/// | getter | pop / reliable | stream | listen |
/// |---|---|---|---|
/// | [`payload`](Message::payload) | the element (reliable: after its envelope) | the `payload` field | the message |
/// | [`queue`](Message::queue) | the queue | the stream | the channel, pattern or shard channel subscribed |
/// | [`key`](Message::key) | the key popped (a priority level's) | the stream | as `queue` |
/// | [`priority`](Message::priority) | the level | 0 | 0 |
/// | [`channel`](Message::channel) | empty | empty | the channel published to |
/// | [`pattern`](Message::pattern) | `None` | `None` | the pattern that matched |
/// | [`id`](Message::id) | empty | the entry id | empty |
/// | [`field`](Message::field) | `None` | the entry's field | `None` |
/// | [`deliveries`](Message::deliveries) | pop: 1; reliable: from the envelope | from the PEL | 1 |
///
/// The lifetime is that of the reply the payload is borrowed from; `Message<'static>` owns
/// its payload (see [`Message::detach`]). Cloning is cheap either way: where it came from
/// is interned, and an owned payload is reference-counted.
///
/// A message is kept small (72 bytes on 64-bit targets), because the inline path writes
/// one per popped element: where it came from is one pointer to an interned `Source`,
/// and what a mode needs besides the payload — the exact list element to acknowledge, a
/// stream entry's id and fields, the channel of a pattern match — is a span of the same
/// reply frame (`aux`), not a field of its own.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub(crate) payload: Payload<'a>,
    pub(crate) source: &'static Source,
    /// Another part of the reply frame, per mode (empty in `pop` mode).
    pub(crate) aux: Span,
    pub(crate) deliveries: u32,
    /// When the reply carrying it was received, in ns since the engine's epoch.
    pub(crate) received_ns: u64,
    /// Its position in its mode's record of what it holds (reliable mode: in the
    /// consumer's leased list, modulo 2^32); 0 elsewhere.
    pub(crate) seq: u32,
}

/// Where messages come from: a queue's key (pop), a subscription (listen), later a
/// stream. Interned once per configuration, shared by every message from it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Source {
    /// The logical name: the queue, channel or pattern as configured.
    pub name: &'static [u8],
    /// The Redis key (a priority level's key, or the name itself).
    pub key: &'static [u8],
    pub priority: u8,
    /// Position in the consumer's list of sources.
    pub index: u32,
    pub kind: SourceKind,
}

/// What a [`Source`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SourceKind {
    Queue,
    Channel,
    Pattern,
    ShardChannel,
    Stream,
}

/// A byte range of a message's reply frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: u32,
    pub len: u32,
}

impl Span {
    fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.start as usize + self.len as usize
    }

    /// Where `part` (a slice of `frame`) lies in it; `None` past 4 GiB.
    pub(crate) fn within(part: &[u8], frame: &[u8]) -> Option<Self> {
        let start = (part.as_ptr() as usize).checked_sub(frame.as_ptr() as usize)?;
        debug_assert!(
            start + part.len() <= frame.len(),
            "the part is not in the frame"
        );
        let start = u32::try_from(start).ok()?;
        let len = u32::try_from(part.len()).ok()?;
        start.checked_add(len)?;
        Some(Self { start, len })
    }

    /// As [`Span::within`], empty past 4 GiB (a frame that large carries no aux part).
    pub(crate) fn of(part: &[u8], frame: &[u8]) -> Self {
        Self::within(part, frame).unwrap_or_default()
    }
}

/// Where a message's bytes live.
#[derive(Clone)]
pub(crate) enum Payload<'a> {
    /// A slice of `frame`, the reply it came in (no reference taken).
    Lent { bytes: &'a [u8], frame: &'a Bytes },
    /// The reply it came in, reference-counted, and where the payload lies in it.
    Owned { frame: Bytes, at: Span },
}

impl Payload<'_> {
    /// An owned payload that is its whole buffer.
    pub(crate) fn owned(bytes: Bytes) -> Payload<'static> {
        // A payload is at most 512 MiB (Redis's largest string), so its length fits.
        let at = Span {
            start: 0,
            len: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
        };
        Payload::Owned { frame: bytes, at }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Payload::Lent { bytes, .. } => bytes,
            Payload::Owned { frame, at } => frame.get(at.range()).unwrap_or(&[]),
        }
    }

    fn frame(&self) -> &Bytes {
        match self {
            Payload::Lent { frame, .. } => frame,
            Payload::Owned { frame, .. } => frame,
        }
    }
}

impl fmt::Debug for Payload<'_> {
    /// The message's own bytes only (never the rest of the reply it borrows from), the
    /// same for a borrowed and an owned payload.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.bytes().escape_ascii())
    }
}

impl<'a> Message<'a> {
    /// The message body.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        match &self.payload {
            Payload::Lent { bytes, .. } => bytes,
            Payload::Owned { frame, at } => frame.get(at.range()).unwrap_or(&[]),
        }
    }

    /// The message body as a [`Bytes`] handle that outlives the message: a
    /// reference-counted slice of the reply it came in, never a copy.
    pub fn payload_bytes(&self) -> Bytes {
        match &self.payload {
            Payload::Lent { bytes, frame } => frame.slice_ref(bytes),
            Payload::Owned { frame, at } => frame.slice(at.range()),
        }
    }

    /// An owned copy of the message (the payload is shared, not copied), to keep after
    /// the handler returns or to send to another thread.
    pub fn detach(&self) -> Message<'static> {
        self.clone().into_static()
    }

    /// As [`Message::detach`], without a new reference when the payload is owned already.
    pub(crate) fn into_static(self) -> Message<'static> {
        let (payload, aux) = match self.payload {
            Payload::Lent { bytes, frame } => match Span::within(bytes, frame) {
                Some(at) => (
                    Payload::Owned {
                        at,
                        frame: frame.clone(),
                    },
                    self.aux,
                ),
                // Past 4 GiB into a huge reply: the payload alone, without the aux part.
                None => (Payload::owned(frame.slice_ref(bytes)), Span::default()),
            },
            Payload::Owned { frame, at } => (Payload::Owned { frame, at }, self.aux),
        };
        Message {
            payload,
            source: self.source,
            aux,
            deliveries: self.deliveries,
            received_ns: self.received_ns,
            seq: self.seq,
        }
    }

    /// The mode's second part of the reply frame (see the type's docs); empty in `pop`
    /// mode.
    pub(crate) fn aux(&self) -> &[u8] {
        self.payload.frame().get(self.aux.range()).unwrap_or(&[])
    }

    /// Where it came from, as configured: the queue (pop, reliable), the stream
    /// (stream), or the channel, pattern or shard channel subscribed (listen).
    pub fn queue(&self) -> &[u8] {
        self.source.name
    }

    /// The Redis key the message was popped from (the queue name, or a priority level's key).
    pub fn key(&self) -> &[u8] {
        self.source.key
    }

    /// The priority level it was popped from (0 for a queue without levels).
    pub fn priority(&self) -> u8 {
        self.source.priority
    }

    /// Position of the queue in the consumer's queue list.
    pub fn queue_index(&self) -> usize {
        self.source.index as usize
    }

    /// Listen mode: the channel the message was published to (for a pattern
    /// subscription, the channel that matched). Empty in the other modes.
    pub fn channel(&self) -> &[u8] {
        match self.source.kind {
            SourceKind::Channel | SourceKind::Pattern | SourceKind::ShardChannel => self.aux(),
            SourceKind::Queue | SourceKind::Stream => &[],
        }
    }

    /// Stream mode: the entry's id (`1700000000000-0`). Empty in the other modes.
    pub fn id(&self) -> &[u8] {
        match self.source.kind {
            SourceKind::Stream => self.aux(),
            _ => &[],
        }
    }

    /// Stream mode: the value of the entry's field `name` (`None` when it has none, and in
    /// the other modes). Found by walking the entry's fields in the reply it came in, so it
    /// costs nothing unless called: for example an orderly key,
    /// `Dispatch::orderly_by(4, |m| hash(m.field(b"customer")))`.
    pub fn field(&self, name: &[u8]) -> Option<&[u8]> {
        if self.source.kind != SourceKind::Stream || self.aux.len == 0 {
            return None;
        }
        let frame = self.payload.frame();
        // The fields follow the id's bulk string and its CRLF.
        let start = self.aux.start as usize + self.aux.len as usize + 2;
        let mut r = ringq_resp::Reader::new(frame.slice(start.min(frame.len())..));
        let n = match r.next_value_token().ok()? {
            ringq_resp::Token::Array(n) | ringq_resp::Token::Map(n) => n,
            _ => return None,
        };
        for _ in 0..n / 2 {
            let k = r.next_range().ok()?.ok()?;
            let v = r.next_range().ok()?.ok()?;
            if frame.get(start + k.start..start + k.end)? == name {
                return frame.get(start + v.start..start + v.end);
            }
        }
        None
    }

    /// Listen mode: the pattern that matched, for a pattern subscription (`PSUBSCRIBE`).
    pub fn pattern(&self) -> Option<&[u8]> {
        (self.source.kind == SourceKind::Pattern).then_some(self.source.name)
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

/// The `tracing` target of the engine's log lines that say what an [`Event`] also says
/// (a gap, drops, possibly lost pops, the loss of a subscriber connection). A program
/// that reports events itself (as `ringq subscribe` does, one line each) filters this
/// target out so each is said once; with no such reporting, the log has them.
pub const EVENT_TARGET: &str = "ringq::event";

/// Something the application should know about, beyond messages: when it may have
/// missed some, or when a connection was replaced. Given to [`Handler::on_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A connection was lost while commands that take messages were unanswered: what
    /// they took from the server, if anything, is lost (pop mode is at-most-once).
    /// `commands` were unanswered, asking for up to `messages` messages in all.
    PossiblyLost {
        /// The connection's name (`CLIENT SETNAME`).
        connection: String,
        /// Commands unanswered.
        commands: u64,
        /// Messages they asked for: an upper bound on what was lost.
        messages: u64,
    },
    /// Listen mode: subscriptions were not in force for a while, so messages published
    /// meanwhile were missed. Reported once they are restored (`resubscribed_at`), or at
    /// the stop if they never were (`None`).
    Gap {
        /// The subscriptions affected (`channel news`, `pattern jobs.*`).
        subscriptions: Vec<String>,
        /// When they stopped being in force (the connection was lost, or the server ended
        /// the subscription).
        disconnected_at: std::time::SystemTime,
        /// When the server confirmed them again.
        resubscribed_at: Option<std::time::SystemTime>,
        /// Why.
        cause: GapCause,
    },
    /// Listen mode with `Overflow::DropOldest`: messages were dropped from the full
    /// staging area since the last such event.
    Dropped {
        /// Dropped since the last `Dropped` event.
        count: u64,
    },
    /// Reliable mode: outcomes that found their message no longer in this consumer's
    /// processing list, so they were not applied. Its lease had run out (the consumer was
    /// frozen, cut off, or its loop held up longer than the lease) and recovery gave the
    /// message to another consumer, which delivers it again.
    StaleOutcomes {
        /// The queue key.
        key: String,
        /// Outcomes not applied.
        count: u64,
    },
    /// Reliable mode: this consumer moved messages back to their queue: those of
    /// consumers whose heartbeat expired (`swept` consumers), or its own (a restart, a
    /// lease reply lost in flight).
    Recovered {
        /// The queue.
        queue: String,
        /// Consumers whose processing lists were taken back (0: this consumer's own).
        swept: u64,
        /// Messages moved back.
        messages: u64,
    },
    /// A connection stopped answering within its deadline with commands unanswered. A
    /// fresh connection took over its queues; the stalled one stays open to deliver their
    /// replies if its server resumes (see `EngineBuilder::stalled_drain`).
    Stalled {
        /// The connection's name.
        connection: String,
        /// Commands it still owes replies to.
        commands: u64,
    },
}

/// Why a listen subscription was not in force ([`Event::Gap`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GapCause {
    /// The connection was lost (closed by the server, reset, CLIENT KILL, a restart, a
    /// missed PING deadline): the error as logged.
    ConnectionLost(String),
    /// The server closed the connection while ringq had stopped reading it because the
    /// handlers were behind (`Overflow::Block`): almost certainly the server's
    /// `client-output-buffer-limit pubsub`. Raise that limit (`CONFIG SET
    /// client-output-buffer-limit "pubsub 0 0 0"` removes it), speed up the handlers or
    /// add workers, or use `Overflow::DropOldest`.
    OutputBufferLimit(String),
    /// The server ended the subscription itself (an `unsubscribe` nobody asked for: a
    /// shard channel's slot moved, an ACL change); ringq subscribed again.
    Unsubscribed,
}

impl fmt::Display for GapCause {
    /// One human-readable sentence (no `Debug` form in logs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GapCause::ConnectionLost(why) => write!(f, "the connection was lost ({why})"),
            GapCause::OutputBufferLimit(why) => write!(f, "{why}"),
            GapCause::Unsubscribed => f.write_str(
                "the server ended the subscription itself (a shard channel's slot moved, or \
                 an ACL change)",
            ),
        }
    }
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

    /// Told about an [`Event`]; does nothing unless overridden. Called on the shard
    /// thread where it happened, between messages: with [`Dispatch::inline`] on that
    /// shard's handler, with workers on a clone of the handler kept for events. Keep it
    /// short. A panic here stops the engine, as in [`Handler::handle`].
    ///
    /// [`Dispatch::inline`]: crate::Dispatch::inline
    fn on_event(&mut self, event: &Event) {
        let _ = event;
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::{Message, Payload, Span};
    use crate::handler::SourceKind;
    use crate::intern::intern_source;

    /// A message is small enough that the inline path writes little per element, and its
    /// second span of the frame (a mode's ack token, entry id or channel) survives
    /// detaching, as the payload does, without a copy.
    #[test]
    fn a_message_is_small_and_its_aux_span_survives_detach() {
        assert!(std::mem::size_of::<Message<'static>>() <= 72);
        let frame = Bytes::from_static(b"*2\r\n$3\r\nid1\r\n$5\r\nhello\r\n");
        let m = Message {
            payload: Payload::Lent {
                bytes: &frame[17..22],
                frame: &frame,
            },
            source: intern_source(SourceKind::Queue, b"s", b"s", 0, 0),
            aux: Span::of(&frame[8..11], &frame),
            deliveries: 2,
            received_ns: 0,
            seq: 0,
        };
        assert_eq!((m.payload(), m.aux()), (&b"hello"[..], &b"id1"[..]));
        let owned = m.detach();
        assert_eq!((owned.payload(), owned.aux()), (&b"hello"[..], &b"id1"[..]));
        assert_eq!(
            owned.payload_bytes().as_ptr(),
            frame[17..].as_ptr(),
            "shared, not copied"
        );
        assert_eq!(owned.deliveries(), 2);
    }
}

//! The incremental decoder.
//!
//! Decoding is two passes over a reply:
//! 1. [`Decoder::scan`] walks headers and skips blob bodies by their length until one
//!    whole frame is present. It is *resumable*: it keeps the offset of the next unscanned
//!    header and a stack of open aggregates, so a 10 000-element array arriving in 1 000
//!    reads is scanned once in total, not once per read. "Need more bytes" is `Ok(None)`.
//! 2. Once the frame is complete, [`Decoder::build`] (or a [`Reader`]) walks it again to
//!    produce values as [`Bytes`] slices of the input. Nothing is allocated in proportion
//!    to a declared length before those bytes have arrived: aggregates are allocated only
//!    when their elements are all present.
//!
//! Scanning a header is a handful of branches, so the second pass costs little compared
//! with the state a one-pass incremental tree builder would have to keep.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use crate::error::{DecodeError, DecodeErrorKind as K};
use crate::frame::Frame;
use crate::head::{read_head, read_head_fast, Head, Step};

/// Bounds on what a peer may make the decoder accept. Defaults are safe for any Redis reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest bulk string, bulk error or verbatim string, in bytes. Default 512 MiB,
    /// Redis's own `proto-max-bulk-len`.
    pub max_bulk_len: u64,
    /// Most elements one aggregate may declare (pairs for maps). Default 2^31 − 1.
    pub max_aggregate_len: u64,
    /// Deepest nesting of aggregates (attributes count as a level). Default 64; Redis
    /// replies rarely pass 8. A [`Decoder`] caps it at 256, because building a [`Frame`]
    /// recurses once per level and must fit a thread's stack.
    pub max_depth: usize,
    /// Longest simple string, simple error or big-number line. Default 64 KiB.
    pub max_line_len: usize,
}

/// The cap on [`Limits::max_depth`]. Building a frame recurses once per level, at about
/// 0.5 KiB of stack per level in release builds and 2–4 KiB in debug builds: 256 levels fit
/// a 2 MiB thread stack either way (a test builds one in a debug build).
const MAX_DEPTH_CAP: usize = 256;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bulk_len: 512 * 1024 * 1024,
            max_aggregate_len: i32::MAX as u64,
            max_depth: 64,
            max_line_len: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Open {
    /// Elements still to come (two per map or attribute pair).
    remaining: usize,
    /// An attribute does not count as an element of its parent: the value after it does.
    attribute: bool,
}

/// Incremental RESP2/RESP3 decoder. One per connection; not shared between threads.
///
/// # Example
/// ```
/// use bytes::BytesMut;
/// use ringq_resp::{Decoder, Frame};
///
/// let mut dec = Decoder::new();
/// let mut buf = BytesMut::from(&b"*2\r\n$6\r\njobs:a\r\n$2\r"[..]);
/// assert_eq!(dec.decode(&mut buf)?, None); // waiting for the rest
/// buf.extend_from_slice(b"\nhi\r\n");
/// let frame = dec.decode(&mut buf)?.expect("complete");
/// assert_eq!(
///     frame,
///     Frame::Array(vec![Frame::BulkString("jobs:a".into()), Frame::BulkString("hi".into())])
/// );
/// assert!(buf.is_empty());
/// # Ok::<(), ringq_resp::DecodeError>(())
/// ```
#[derive(Debug, Default)]
pub struct Decoder {
    limits: Limits,
    pos: usize,
    search_from: usize,
    stack: Vec<Open>,
    attributes: Option<Vec<(Frame, Frame)>>,
}

impl Decoder {
    /// A decoder with the default [`Limits`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder with the given limits (`max_depth` capped at 256).
    pub fn with_limits(mut limits: Limits) -> Self {
        limits.max_depth = limits.max_depth.min(MAX_DEPTH_CAP);
        Self {
            limits,
            ..Self::default()
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Bytes of the current partial frame scanned so far (0 between frames).
    pub fn scanned(&self) -> usize {
        self.pos
    }

    /// Finds the length of the complete frame at the start of `buf`, or `None` when more
    /// bytes are needed.
    ///
    /// Resumable: between two calls the caller may only *append* to `buf`. After it
    /// returns `Some(n)` the caller removes those `n` bytes and the next call starts a new
    /// frame. Attributes before the reply are part of the `n` bytes.
    ///
    /// # Errors
    /// A [`DecodeError`] for malformed input or a broken limit; the stream is then unusable.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, DecodeError> {
        // The hot loop works on locals and writes them back on every exit.
        let mut pos = self.pos;
        let mut search_from = self.search_from;
        loop {
            let (head, next) = match read_head(buf, pos, search_from, &self.limits) {
                Ok(Step::Done { head, next }) => (head, next),
                Ok(Step::Incomplete { search_from }) => {
                    self.pos = pos;
                    self.search_from = search_from;
                    return Ok(None);
                }
                Err(e) => {
                    self.pos = pos;
                    return Err(e);
                }
            };
            search_from = 0;
            let open = match head {
                Head::Array(n) | Head::Set(n) | Head::Push(n) => Some((Some(n), false)),
                Head::Map(n) => Some((n.checked_mul(2), false)),
                Head::Attribute(n) => Some((n.checked_mul(2), true)),
                _ => None,
            };
            if let Some((count, attribute)) = open {
                if self.stack.len() >= self.limits.max_depth {
                    self.pos = pos;
                    return Err(DecodeError::new(
                        K::TooDeep {
                            max: self.limits.max_depth,
                        },
                        pos,
                    ));
                }
                let Some(count) = count else {
                    // Unreachable with a limit below usize::MAX / 2, checked all the same.
                    self.pos = pos;
                    let max = self.limits.max_aggregate_len;
                    return Err(DecodeError::new(
                        K::AggregateTooLong { len: u64::MAX, max },
                        pos + 1,
                    ));
                };
                if count > 0 {
                    self.stack.push(Open {
                        remaining: count,
                        attribute,
                    });
                    pos = next;
                    continue;
                }
                if attribute {
                    // An empty attribute: nothing to attach, and not an element.
                    pos = next;
                    continue;
                }
            }
            pos = next;
            // An element ended at `pos`: close every aggregate it completes.
            loop {
                let Some(top) = self.stack.last_mut() else {
                    self.pos = 0;
                    self.search_from = 0;
                    return Ok(Some(pos));
                };
                top.remaining -= 1;
                if top.remaining > 0 {
                    break;
                }
                let closed = self.stack.pop();
                if closed.is_some_and(|o| o.attribute) {
                    break;
                }
            }
        }
    }

    /// Decodes one frame from the front of `src`, removing its bytes, or returns `None`
    /// when `src` does not yet hold a whole frame (nothing is removed then).
    ///
    /// Top-level attributes are available from [`Decoder::take_attributes`] afterwards.
    ///
    /// # Errors
    /// A [`DecodeError`] for malformed input or a broken limit; the stream is then unusable.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        match self.scan(src)? {
            None => Ok(None),
            Some(n) => {
                let bytes = src.split_to(n).freeze();
                self.build(&bytes).map(Some)
            }
        }
    }

    /// Decodes one frame from the front of `src` without consuming it: returns the frame
    /// and the number of bytes it took, or `None` when more bytes are needed.
    ///
    /// Resumable like [`Decoder::scan`]: pass a buffer that extends the previous one until a
    /// frame is returned.
    ///
    /// # Errors
    /// A [`DecodeError`] for malformed input or a broken limit.
    pub fn decode_bytes(&mut self, src: &Bytes) -> Result<Option<(Frame, usize)>, DecodeError> {
        if self.pos == 0 && self.search_from == 0 && self.stack.is_empty() {
            // Nothing scanned yet: when the whole frame is already here (the usual case)
            // one building pass is enough. When it is not, the scan below starts and keeps
            // its place, so later calls never come back here for this frame; and a first
            // header that stays incomplete is O(1) to retry.
            self.attributes = None;
            let mut b = Builder::new(src, &self.limits);
            if let Ok((frame, attributes)) = b.top() {
                self.attributes = attributes;
                return Ok(Some((frame, b.pos)));
            }
        }
        match self.scan(src)? {
            None => Ok(None),
            Some(n) => {
                let frame = self.build(&src.slice(..n))?;
                Ok(Some((frame, n)))
            }
        }
    }

    /// Builds the frame from one complete frame's bytes, as found by [`Decoder::scan`].
    ///
    /// # Errors
    /// [`DecodeErrorKind::Truncated`](crate::DecodeErrorKind::Truncated) when `frame` is not
    /// complete, or any validation error.
    pub fn build(&mut self, frame: &Bytes) -> Result<Frame, DecodeError> {
        self.attributes = None;
        let (frame, attributes) = Builder::new(frame, &self.limits).top()?;
        self.attributes = attributes;
        Ok(frame)
    }

    /// Attributes (`|`) that preceded the last frame returned, if any. Attributes nested
    /// inside aggregates are validated and dropped.
    pub fn take_attributes(&mut self) -> Option<Vec<(Frame, Frame)>> {
        self.attributes.take()
    }

    /// Forgets a partial scan, for reuse on a new connection.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.search_from = 0;
        self.stack.clear();
        self.attributes = None;
    }
}

#[inline(always)]
fn head_at(buf: &Bytes, pos: usize, limits: &Limits) -> Result<(Head, usize), DecodeError> {
    match read_head(buf, pos, 0, limits)? {
        Step::Done { head, next } => Ok((head, next)),
        Step::Incomplete { .. } => Err(DecodeError::new(K::Truncated, buf.len())),
    }
}

/// Builds frames from one complete frame's bytes.
struct Builder<'a> {
    buf: &'a Bytes,
    pos: usize,
    limits: &'a Limits,
    /// Element slots the aggregates still to be allocated may reserve, in all. Every value
    /// takes at least 3 bytes (`_\r\n`), so a complete frame declares fewer than
    /// `buf.len() / 3` elements over all its aggregates (a map pair counts two); a
    /// declaration beyond what is left proves the frame incomplete. This bounds the memory
    /// a build allocates by the bytes in hand, however deep the aggregates nest, when
    /// [`Decoder::decode_bytes`] tries a build on a frame that has not fully arrived.
    budget: usize,
}

impl<'a> Builder<'a> {
    fn new(buf: &'a Bytes, limits: &'a Limits) -> Self {
        Self {
            buf,
            pos: 0,
            limits,
            budget: buf.len() / 3,
        }
    }

    /// Reserves `slots` of the budget, or proves the frame truncated.
    #[inline(always)]
    fn reserve(&mut self, slots: usize) -> Result<(), DecodeError> {
        match self.budget.checked_sub(slots) {
            Some(left) => {
                self.budget = left;
                Ok(())
            }
            None => Err(DecodeError::new(K::Truncated, self.buf.len())),
        }
    }

    /// A top-level frame and the attributes in front of it.
    #[allow(clippy::type_complexity, reason = "a private helper's pair of results")]
    fn top(&mut self) -> Result<(Frame, Option<Vec<(Frame, Frame)>>), DecodeError> {
        let mut attributes = None;
        loop {
            let at = self.pos;
            match self.head()? {
                Head::Attribute(n) => attributes = Some(self.pairs(n, at, 0)?),
                head => return Ok((self.frame(head, at, 0)?, attributes)),
            }
        }
    }

    #[inline(always)]
    fn head(&mut self) -> Result<Head, DecodeError> {
        let (head, next) = head_at(self.buf, self.pos, self.limits)?;
        self.pos = next;
        Ok(head)
    }

    /// One element of an aggregate at `depth`, dropping any attribute in front of it.
    #[inline(always)]
    fn value(&mut self, depth: usize) -> Result<Frame, DecodeError> {
        loop {
            let at = self.pos;
            match self.head()? {
                Head::Attribute(n) => drop(self.pairs(n, at, depth)?),
                head => return self.frame(head, at, depth),
            }
        }
    }

    /// The frame whose header `head` was read at `at`.
    #[inline(always)]
    fn frame(&mut self, head: Head, at: usize, depth: usize) -> Result<Frame, DecodeError> {
        let buf = self.buf;
        Ok(match head {
            Head::BulkString { start, len } => Frame::BulkString(buf.slice(start..start + len)),
            Head::SimpleString { start, end } => Frame::SimpleString(buf.slice(start..end)),
            Head::SimpleError { start, end } => Frame::SimpleError(buf.slice(start..end)),
            Head::BigNumber { start, end } => Frame::BigNumber(buf.slice(start..end)),
            Head::Integer(i) => Frame::Integer(i),
            Head::Double(d) => Frame::Double(d),
            Head::Boolean(b) => Frame::Boolean(b),
            Head::Null => Frame::Null,
            Head::BulkError { start, len } => Frame::BulkError(buf.slice(start..start + len)),
            Head::Verbatim { start, len } => {
                let f = &buf[start..start + 3];
                Frame::VerbatimString {
                    format: [f[0], f[1], f[2]],
                    text: buf.slice(start + 4..start + len),
                }
            }
            Head::Array(n) => Frame::Array(self.items(n, at, depth)?),
            Head::Set(n) => Frame::Set(self.items(n, at, depth)?),
            Head::Push(n) => Frame::Push(self.items(n, at, depth)?),
            Head::Map(n) => Frame::Map(self.pairs(n, at, depth)?),
            Head::Attribute(n) => {
                // Callers consume attributes before calling here; stay total all the same.
                drop(self.pairs(n, at, depth)?);
                return self.value(depth);
            }
        })
    }

    /// The `n` elements of an aggregate whose header was at `at` (recursion is bounded by
    /// `max_depth`).
    #[inline(never)]
    fn items(&mut self, n: usize, at: usize, depth: usize) -> Result<Vec<Frame>, DecodeError> {
        if depth >= self.limits.max_depth {
            return Err(DecodeError::new(
                K::TooDeep {
                    max: self.limits.max_depth,
                },
                at,
            ));
        }
        self.reserve(n)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.value(depth + 1)?);
        }
        Ok(items)
    }

    /// The `n` key/value pairs of a map or attribute whose header was at `at`.
    #[inline(never)]
    fn pairs(
        &mut self,
        n: usize,
        at: usize,
        depth: usize,
    ) -> Result<Vec<(Frame, Frame)>, DecodeError> {
        if depth >= self.limits.max_depth {
            return Err(DecodeError::new(
                K::TooDeep {
                    max: self.limits.max_depth,
                },
                at,
            ));
        }
        self.reserve(n.saturating_mul(2))?;
        let mut pairs = Vec::with_capacity(n);
        for _ in 0..n {
            let k = self.value(depth + 1)?;
            let v = self.value(depth + 1)?;
            pairs.push((k, v));
        }
        Ok(pairs)
    }
}

/// One step of a [`Reader`]: a scalar, or the header of an aggregate whose elements follow.
#[derive(Debug, Clone, PartialEq)]
pub enum Token {
    /// `+...`
    SimpleString(Bytes),
    /// `-...`
    SimpleError(Bytes),
    /// `:...`
    Integer(i64),
    /// `$...`
    BulkString(Bytes),
    /// `_`, `$-1`, `*-1`
    Null,
    /// `#t` / `#f`
    Boolean(bool),
    /// `,...`
    Double(f64),
    /// `(...`
    BigNumber(Bytes),
    /// `!...`
    BulkError(Bytes),
    /// `=...`: the three-byte format and the text.
    VerbatimString([u8; 3], Bytes),
    /// `*n`: `n` elements follow.
    Array(usize),
    /// `%n`: `n` key/value pairs follow.
    Map(usize),
    /// `~n`: `n` elements follow.
    Set(usize),
    /// `>n`: `n` elements follow.
    Push(usize),
    /// `|n`: `n` attribute pairs follow, then the value they describe.
    Attribute(usize),
}

/// Walks a complete frame token by token, allocating nothing.
///
/// The engine's hot path reads BRPOP and LMPOP replies this way so a popped message costs
/// no allocation. Build the frame with [`Decoder::scan`] first.
#[derive(Debug, Clone)]
pub struct Reader {
    buf: Bytes,
    pos: usize,
    limits: Limits,
}

impl Reader {
    /// A reader over `frame`, one or more complete frames.
    pub fn new(frame: Bytes) -> Self {
        Self {
            buf: frame,
            pos: 0,
            limits: Limits::default(),
        }
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Reads the next header and moves past it.
    #[inline(always)]
    fn head(&mut self) -> Result<Head, DecodeError> {
        let (head, next) = head_at(&self.buf, self.pos, &self.limits)?;
        self.pos = next;
        Ok(head)
    }

    fn token(&self, head: Head) -> Token {
        let buf = &self.buf;
        match head {
            Head::SimpleString { start, end } => Token::SimpleString(buf.slice(start..end)),
            Head::SimpleError { start, end } => Token::SimpleError(buf.slice(start..end)),
            Head::BigNumber { start, end } => Token::BigNumber(buf.slice(start..end)),
            Head::Integer(i) => Token::Integer(i),
            Head::Double(d) => Token::Double(d),
            Head::Boolean(b) => Token::Boolean(b),
            Head::Null => Token::Null,
            Head::BulkString { start, len } => Token::BulkString(buf.slice(start..start + len)),
            Head::BulkError { start, len } => Token::BulkError(buf.slice(start..start + len)),
            Head::Verbatim { start, len } => {
                let f = &buf[start..start + 3];
                Token::VerbatimString([f[0], f[1], f[2]], buf.slice(start + 4..start + len))
            }
            Head::Array(n) => Token::Array(n),
            Head::Map(n) => Token::Map(n),
            Head::Set(n) => Token::Set(n),
            Head::Push(n) => Token::Push(n),
            Head::Attribute(n) => Token::Attribute(n),
        }
    }

    /// The next token.
    ///
    /// # Errors
    /// [`DecodeErrorKind::Truncated`](crate::DecodeErrorKind::Truncated) past the end, or a
    /// validation error.
    pub fn next_token(&mut self) -> Result<Token, DecodeError> {
        let head = self.head()?;
        Ok(self.token(head))
    }

    /// The next token that is not part of an attribute (attributes are skipped whole).
    ///
    /// # Errors
    /// As [`Reader::next_token`].
    pub fn next_value_token(&mut self) -> Result<Token, DecodeError> {
        let head = self.next_value_head()?;
        Ok(self.token(head))
    }

    /// The next header that is not part of an attribute.
    #[inline(always)]
    fn next_value_head(&mut self) -> Result<Head, DecodeError> {
        loop {
            match self.head()? {
                Head::Attribute(n) => self.skip_pending(n.saturating_mul(2))?,
                head => return Ok(head),
            }
        }
    }

    /// The next bulk or simple string's bytes; any other value is returned as `Err(token)`
    /// so the caller can report what it got.
    ///
    /// # Errors
    /// The outer error as [`Reader::next_token`].
    #[inline(always)]
    pub fn next_bytes(&mut self) -> Result<Result<Bytes, Token>, DecodeError> {
        match self.next_string_fast() {
            Some((start, end)) => Ok(Ok(self.buf.slice(start..end))),
            None => self.next_bytes_slow(),
        }
    }

    /// As [`Reader::next_bytes`], but borrows the bytes from the reader instead of taking a
    /// [`Bytes`] handle: no reference count is touched, which saves two atomic operations
    /// per value for a caller that only reads or copies it.
    ///
    /// # Errors
    /// The outer error as [`Reader::next_token`].
    #[inline(always)]
    pub fn next_slice(&mut self) -> Result<Result<&[u8], Token>, DecodeError> {
        match self.next_string_fast() {
            Some((start, end)) => Ok(Ok(&self.buf[start..end])),
            None => self.next_slice_slow(),
        }
    }

    /// As [`Reader::next_slice`], but says where the bytes are: offsets into the frame the
    /// reader was made from. A caller that holds that frame can then borrow the value from
    /// it for as long as it holds the frame, not just while the reader lives.
    ///
    /// # Errors
    /// The outer error as [`Reader::next_token`].
    #[inline(always)]
    pub fn next_range(&mut self) -> Result<Result<Range<usize>, Token>, DecodeError> {
        match self.next_string_fast() {
            Some((start, end)) => Ok(Ok(start..end)),
            None => self.next_range_slow(),
        }
    }

    // `next_bytes`, `next_slice` and `next_range` are inlined into their callers with only the common
    // case, a bulk string the fast header path reads, in line; everything else is out of
    // line. Their nested `Result` then never goes through memory: returned by pointer, the
    // caller's copy of it stalled on store forwarding (measured on an LMPOP reply: 20 ns per
    // element, against 12 ns inlined).

    /// Where the next value's bytes are, when it is a bulk string the fast header path
    /// reads; `None` (having moved nothing) for anything else.
    #[inline(always)]
    fn next_string_fast(&mut self) -> Option<(usize, usize)> {
        match read_head_fast(&self.buf, self.pos, &self.limits) {
            Some(Step::Done {
                head: Head::BulkString { start, len },
                next,
            }) => {
                self.pos = next;
                Some((start, start + len))
            }
            _ => None,
        }
    }

    #[inline(never)]
    fn next_string_slow(&mut self) -> Result<Result<(usize, usize), Token>, DecodeError> {
        Ok(match self.next_value_head()? {
            Head::BulkString { start, len } => Ok((start, start + len)),
            Head::SimpleString { start, end } => Ok((start, end)),
            head => Err(self.token(head)),
        })
    }

    #[inline(never)]
    fn next_bytes_slow(&mut self) -> Result<Result<Bytes, Token>, DecodeError> {
        Ok(self
            .next_string_slow()?
            .map(|(start, end)| self.buf.slice(start..end)))
    }

    #[inline(never)]
    fn next_range_slow(&mut self) -> Result<Result<Range<usize>, Token>, DecodeError> {
        Ok(self.next_string_slow()?.map(|(start, end)| start..end))
    }

    #[inline(never)]
    fn next_slice_slow(&mut self) -> Result<Result<&[u8], Token>, DecodeError> {
        Ok(self
            .next_string_slow()?
            .map(|(start, end)| &self.buf[start..end]))
    }

    /// Skips one whole value (with its elements).
    ///
    /// # Errors
    /// As [`Reader::next_token`].
    pub fn skip_value(&mut self) -> Result<(), DecodeError> {
        self.skip_pending(1)
    }

    /// Skips `pending` whole values; iterative so depth cannot overflow the stack.
    fn skip_pending(&mut self, mut pending: usize) -> Result<(), DecodeError> {
        while pending > 0 {
            pending -= 1;
            pending = match self.head()? {
                Head::Array(n) | Head::Set(n) | Head::Push(n) => pending.saturating_add(n),
                Head::Map(n) => pending.saturating_add(n.saturating_mul(2)),
                // The attribute's pairs, and the value it annotates, are all to be skipped.
                Head::Attribute(n) => pending
                    .saturating_add(n.saturating_mul(2))
                    .saturating_add(1),
                _ => pending,
            };
        }
        Ok(())
    }
}

//! [`DecodeError`]: malformed input and limit violations, with the byte offset where
//! decoding stopped.
//!
//! "Not enough bytes yet" is not an error: the decoder reports it as `Ok(None)`.

use std::fmt;

/// What was wrong with the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The first byte of a frame is not a RESP2/RESP3 type byte.
    InvalidTypeByte(u8),
    /// A length or integer line holds something other than an optional `-` and digits,
    /// or does not fit in 64 bits.
    InvalidInteger,
    /// A length is negative, and not the `-1` that means null.
    NegativeLength(i64),
    /// A line or bulk body is not followed by `\r\n`.
    MissingCrlf,
    /// A bulk payload is longer than [`crate::Limits::max_bulk_len`].
    BulkTooLong {
        /// The declared length.
        len: u64,
        /// The configured limit.
        max: u64,
    },
    /// An aggregate declares more elements than [`crate::Limits::max_aggregate_len`].
    AggregateTooLong {
        /// The declared element count.
        len: u64,
        /// The configured limit.
        max: u64,
    },
    /// Aggregates nest deeper than [`crate::Limits::max_depth`].
    TooDeep {
        /// The configured limit.
        max: usize,
    },
    /// A simple line (simple string, error, number) is longer than
    /// [`crate::Limits::max_line_len`] without a `\r\n`.
    LineTooLong {
        /// The configured limit.
        max: usize,
    },
    /// A `,` double that is not a number, `inf`, `-inf` or `nan`.
    InvalidDouble,
    /// A `#` boolean other than `t` or `f`.
    InvalidBoolean,
    /// A `(` big number with something other than an optional `-` and digits.
    InvalidBigNumber,
    /// A `=` verbatim string shorter than its `xxx:` prefix or without the `:`.
    InvalidVerbatim,
    /// The input ended inside a frame where the caller said it was complete.
    Truncated,
}

/// A malformed reply or a limit violation, with the offset of the offending byte from the
/// start of the frame being decoded.
///
/// The stream is unusable after this error: the caller closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError {
    kind: DecodeErrorKind,
    offset: usize,
}

impl DecodeError {
    pub(crate) fn new(kind: DecodeErrorKind, offset: usize) -> Self {
        Self { kind, offset }
    }

    /// What was wrong.
    pub fn kind(&self) -> DecodeErrorKind {
        self.kind
    }

    /// Byte offset, from the start of the frame, where the problem was found.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Whether the input broke a configured limit (as opposed to being malformed).
    pub fn is_limit(&self) -> bool {
        matches!(
            self.kind,
            DecodeErrorKind::BulkTooLong { .. }
                | DecodeErrorKind::AggregateTooLong { .. }
                | DecodeErrorKind::TooDeep { .. }
                | DecodeErrorKind::LineTooLong { .. }
        )
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DecodeErrorKind as K;
        let at = self.offset;
        match self.kind {
            K::InvalidTypeByte(b) => {
                write!(
                    f,
                    "invalid RESP type byte {:?} at offset {at}",
                    char::from(b)
                )
            }
            K::InvalidInteger => write!(f, "invalid integer or length at offset {at}"),
            K::NegativeLength(n) => write!(f, "negative length {n} at offset {at}"),
            K::MissingCrlf => write!(f, "expected CRLF at offset {at}"),
            K::BulkTooLong { len, max } => write!(
                f,
                "bulk length {len} at offset {at} exceeds the limit of {max} bytes \
                 (raise Limits::max_bulk_len if the server really sends this)"
            ),
            K::AggregateTooLong { len, max } => write!(
                f,
                "aggregate length {len} at offset {at} exceeds the limit of {max} elements \
                 (raise Limits::max_aggregate_len if the server really sends this)"
            ),
            K::TooDeep { max } => {
                write!(
                    f,
                    "aggregates nested deeper than {max} levels at offset {at}"
                )
            }
            K::LineTooLong { max } => {
                write!(
                    f,
                    "line longer than {max} bytes without CRLF at offset {at}"
                )
            }
            K::InvalidDouble => write!(f, "invalid double at offset {at}"),
            K::InvalidBoolean => write!(f, "invalid boolean at offset {at}"),
            K::InvalidBigNumber => write!(f, "invalid big number at offset {at}"),
            K::InvalidVerbatim => write!(f, "invalid verbatim string at offset {at}"),
            K::Truncated => write!(f, "frame truncated at offset {at}"),
        }
    }
}

impl std::error::Error for DecodeError {}

//! Reading one frame header (the type byte and its line) and, for blobs, locating the
//! body. Shared by the resumable scanner, the frame builder and the token reader so all
//! three agree on every validation rule and limit.

use crate::error::{DecodeError, DecodeErrorKind as K};
use crate::Limits;

/// A length line longer than this cannot hold a valid `i64`: fail early rather than wait
/// for a CRLF that a hostile peer never sends.
const MAX_LENGTH_LINE: usize = 24;

/// One frame header. One variant per type, with no tag byte beside the offsets: the hot
/// paths then move a header in registers instead of re-packing a byte through the stack.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Head {
    /// `+`: the text is `start..end` of the buffer (likewise the next two).
    SimpleString {
        start: usize,
        end: usize,
    },
    /// `-`
    SimpleError {
        start: usize,
        end: usize,
    },
    /// `(`
    BigNumber {
        start: usize,
        end: usize,
    },
    Integer(i64),
    Double(f64),
    Boolean(bool),
    /// `_`, `$-1` or `*-1`.
    Null,
    /// `$`: the body is `start..start + len` (likewise the next two).
    BulkString {
        start: usize,
        len: usize,
    },
    /// `!`
    BulkError {
        start: usize,
        len: usize,
    },
    /// `=`, including its `xxx:` prefix.
    Verbatim {
        start: usize,
        len: usize,
    },
    /// `*n`
    Array(usize),
    /// `%n`: `n` pairs.
    Map(usize),
    /// `~n`
    Set(usize),
    /// `>n`
    Push(usize),
    /// `|n`: `n` pairs.
    Attribute(usize),
}

impl Head {
    fn line(tag: u8, start: usize, end: usize) -> Self {
        match tag {
            b'+' => Head::SimpleString { start, end },
            b'-' => Head::SimpleError { start, end },
            _ => Head::BigNumber { start, end },
        }
    }

    #[inline(always)]
    fn blob(tag: u8, start: usize, len: usize) -> Self {
        match tag {
            b'$' => Head::BulkString { start, len },
            b'!' => Head::BulkError { start, len },
            _ => Head::Verbatim { start, len },
        }
    }

    #[inline(always)]
    fn aggregate(tag: u8, len: usize) -> Self {
        match tag {
            b'*' => Head::Array(len),
            b'%' => Head::Map(len),
            b'~' => Head::Set(len),
            b'>' => Head::Push(len),
            _ => Head::Attribute(len),
        }
    }
}

/// The outcome of reading a header at some offset.
pub(crate) enum Step {
    /// The header (and for blobs the whole body) is present; `next` is the offset after it.
    Done { head: Head, next: usize },
    /// More bytes are needed. `search_from` is where the CR search can resume, so a long
    /// line arriving in pieces is not searched from its start every time.
    Incomplete { search_from: usize },
}

/// Reads the header at `pos`. `search_from` (≥ `pos + 1`, or 0) resumes an earlier CR search.
#[inline(always)]
pub(crate) fn read_head(
    buf: &[u8],
    pos: usize,
    search_from: usize,
    limits: &Limits,
) -> Result<Step, DecodeError> {
    match read_head_fast(buf, pos, limits) {
        Some(step) => Ok(step),
        None => read_head_general(buf, pos, search_from, limits),
    }
}

/// Longest digit run the fast path parses: `10^18 - 1` cannot overflow an `i64`.
const FAST_DIGITS: usize = 18;

/// The common case, inlined into every caller: a length or integer of at most 18 digits
/// followed by CRLF, and for a bulk string or bulk error its whole body and CRLF. Anything
/// else (a sign, a long number, missing bytes, a broken limit, a malformed line) returns
/// `None` and [`read_head_general`] decides, so both paths agree on every accepted input.
#[inline(always)]
pub(crate) fn read_head_fast(buf: &[u8], pos: usize, limits: &Limits) -> Option<Step> {
    let tag = *buf.get(pos)?;
    if !matches!(tag, b'$' | b'*' | b':' | b'!' | b'~' | b'>' | b'%' | b'|') {
        return None;
    }
    let body = pos + 1;
    let mut i = body;
    let mut n: u64 = 0;
    loop {
        let d = buf.get(i)?.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        n = n * 10 + u64::from(d);
        i += 1;
        if i - body > FAST_DIGITS {
            return None;
        }
    }
    if i == body
        || i - body > limits.max_line_len
        || buf.get(i) != Some(&b'\r')
        || buf.get(i + 1) != Some(&b'\n')
    {
        return None;
    }
    let next = i + 2;
    let head = match tag {
        b'$' | b'!' => {
            if n > limits.max_bulk_len {
                return None;
            }
            let len = usize::try_from(n).ok()?;
            let end = next.checked_add(len)?.checked_add(2)?;
            if buf.get(end - 2) != Some(&b'\r') || buf.get(end - 1) != Some(&b'\n') {
                return None;
            }
            return Some(Step::Done {
                head: Head::blob(tag, next, len),
                next: end,
            });
        }
        // 18 digits always fit.
        b':' => Head::Integer(n as i64),
        _ => {
            if n > limits.max_aggregate_len {
                return None;
            }
            Head::aggregate(tag, usize::try_from(n).ok()?)
        }
    };
    Some(Step::Done { head, next })
}

/// Every header, with every validation and limit; the reference the fast path defers to.
#[inline(never)]
fn read_head_general(
    buf: &[u8],
    pos: usize,
    search_from: usize,
    limits: &Limits,
) -> Result<Step, DecodeError> {
    let Some(&tag) = buf.get(pos) else {
        return Ok(Step::Incomplete { search_from: 0 });
    };
    let is_length_line = matches!(
        tag,
        b'$' | b'!' | b'=' | b'*' | b'~' | b'>' | b'%' | b'|' | b':'
    );
    if !is_known_tag(tag) {
        return Err(DecodeError::new(K::InvalidTypeByte(tag), pos));
    }
    let body = pos + 1;
    let from = search_from.max(body);
    let cr = match buf
        .get(from..)
        .and_then(|rest| rest.iter().position(|&b| b == b'\r'))
    {
        Some(i) => from + i,
        None => {
            // The line is at least this long: fail now if that is already too long.
            check_line_len(buf.len().saturating_sub(body), is_length_line, body, limits)?;
            return Ok(Step::Incomplete {
                search_from: buf.len().max(body),
            });
        }
    };
    check_line_len(cr - body, is_length_line, body, limits)?;
    match buf.get(cr + 1) {
        None => return Ok(Step::Incomplete { search_from: cr }),
        Some(b'\n') => {}
        Some(_) => return Err(DecodeError::new(K::MissingCrlf, cr)),
    }
    let line = &buf[body..cr];
    let next = cr + 2;
    let head = match tag {
        b'+' | b'-' => Head::line(tag, body, cr),
        b'(' => {
            let digits = line
                .strip_prefix(b"-")
                .or_else(|| line.strip_prefix(b"+"))
                .unwrap_or(line);
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(DecodeError::new(K::InvalidBigNumber, body));
            }
            Head::line(tag, body, cr)
        }
        b':' => {
            // The spec allows an explicit `+` on an integer (never on a length).
            let signed = match line {
                [b'+', rest @ ..] if rest.first().is_some_and(u8::is_ascii_digit) => rest,
                _ => line,
            };
            Head::Integer(parse_i64(signed).ok_or(DecodeError::new(K::InvalidInteger, body))?)
        }
        b',' => Head::Double(parse_double(line).ok_or(DecodeError::new(K::InvalidDouble, body))?),
        b'#' => match line {
            b"t" => Head::Boolean(true),
            b"f" => Head::Boolean(false),
            _ => return Err(DecodeError::new(K::InvalidBoolean, body)),
        },
        b'_' => {
            if !line.is_empty() {
                return Err(DecodeError::new(K::MissingCrlf, body));
            }
            Head::Null
        }
        b'$' | b'!' | b'=' => {
            let n = parse_i64(line).ok_or(DecodeError::new(K::InvalidInteger, body))?;
            if n == -1 && tag == b'$' {
                return Ok(Step::Done {
                    head: Head::Null,
                    next,
                });
            }
            if n < 0 {
                return Err(DecodeError::new(K::NegativeLength(n), body));
            }
            let len = n.unsigned_abs();
            if len > limits.max_bulk_len {
                return Err(DecodeError::new(
                    K::BulkTooLong {
                        len,
                        max: limits.max_bulk_len,
                    },
                    body,
                ));
            }
            let len = usize::try_from(len).map_err(|_| {
                DecodeError::new(
                    K::BulkTooLong {
                        len,
                        max: limits.max_bulk_len,
                    },
                    body,
                )
            })?;
            if tag == b'=' && len < 4 {
                return Err(DecodeError::new(K::InvalidVerbatim, body));
            }
            let end =
                next.checked_add(len)
                    .and_then(|e| e.checked_add(2))
                    .ok_or(DecodeError::new(
                        K::BulkTooLong {
                            len: n.unsigned_abs(),
                            max: limits.max_bulk_len,
                        },
                        body,
                    ))?;
            if end > buf.len() {
                // The header is valid; wait for the body. Resume the scan at this header:
                // re-reading a short length line is cheaper than keeping more state.
                return Ok(Step::Incomplete { search_from: 0 });
            }
            if &buf[end - 2..end] != b"\r\n" {
                return Err(DecodeError::new(K::MissingCrlf, end - 2));
            }
            if tag == b'=' && buf[next + 3] != b':' {
                return Err(DecodeError::new(K::InvalidVerbatim, next + 3));
            }
            return Ok(Step::Done {
                head: Head::blob(tag, next, len),
                next: end,
            });
        }
        // `*`, `~`, `>`, `%`, `|`
        _ => {
            let n = parse_i64(line).ok_or(DecodeError::new(K::InvalidInteger, body))?;
            if n == -1 && tag == b'*' {
                return Ok(Step::Done {
                    head: Head::Null,
                    next,
                });
            }
            if n < 0 {
                return Err(DecodeError::new(K::NegativeLength(n), body));
            }
            let len = n.unsigned_abs();
            if len > limits.max_aggregate_len {
                return Err(DecodeError::new(
                    K::AggregateTooLong {
                        len,
                        max: limits.max_aggregate_len,
                    },
                    body,
                ));
            }
            let len = usize::try_from(len).map_err(|_| {
                DecodeError::new(
                    K::AggregateTooLong {
                        len,
                        max: limits.max_aggregate_len,
                    },
                    body,
                )
            })?;
            Head::aggregate(tag, len)
        }
    };
    Ok(Step::Done { head, next })
}

/// The verdict on a line of `len` bytes (or at least `len`, while its CR has not arrived)
/// starting at `body`. It depends on the length alone, so a reply gets the same error
/// however it is split into reads: the lower of the two bounds decides, and its kind.
fn check_line_len(
    len: usize,
    is_length_line: bool,
    body: usize,
    limits: &Limits,
) -> Result<(), DecodeError> {
    if is_length_line && MAX_LENGTH_LINE <= limits.max_line_len {
        if len > MAX_LENGTH_LINE {
            return Err(DecodeError::new(K::InvalidInteger, body));
        }
    } else if len > limits.max_line_len {
        let max = limits.max_line_len;
        return Err(DecodeError::new(K::LineTooLong { max }, body));
    }
    Ok(())
}

#[inline]
fn is_known_tag(tag: u8) -> bool {
    matches!(
        tag,
        b'+' | b'-'
            | b':'
            | b'$'
            | b'*'
            | b'_'
            | b'#'
            | b','
            | b'('
            | b'!'
            | b'='
            | b'%'
            | b'~'
            | b'|'
            | b'>'
    )
}

/// Parses an optional `-` followed by at least one ASCII digit, with overflow checks.
#[inline]
pub(crate) fn parse_i64(line: &[u8]) -> Option<i64> {
    let (neg, digits) = match line.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, line),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    // Accumulate as a negative number so i64::MIN parses too.
    let mut acc: i64 = 0;
    for &b in digits {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        acc = acc.checked_mul(10)?.checked_sub(i64::from(d))?;
    }
    if neg {
        Some(acc)
    } else {
        acc.checked_neg()
    }
}

fn parse_double(line: &[u8]) -> Option<f64> {
    match line {
        b"inf" | b"+inf" => return Some(f64::INFINITY),
        b"-inf" => return Some(f64::NEG_INFINITY),
        b"nan" | b"-nan" => return Some(f64::NAN),
        _ => {}
    }
    // Only plain decimal notation: reject the words `str::parse` would also accept.
    if line.is_empty()
        || !line
            .iter()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
    {
        return None;
    }
    std::str::from_utf8(line).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parse_i64;

    #[test]
    fn parse_i64_accepts_extremes_and_rejects_overflow() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-1"), Some(-1));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775808"), None);
        assert_eq!(parse_i64(b"99999999999999999999"), None);
        assert_eq!(parse_i64(b""), None);
        assert_eq!(parse_i64(b"-"), None);
        assert_eq!(parse_i64(b"+1"), None);
        assert_eq!(parse_i64(b"1a"), None);
    }
}

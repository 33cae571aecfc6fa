//! The owned reply tree: [`Frame`], one variant per RESP2/RESP3 type.
//!
//! Payload-carrying variants hold [`Bytes`] slices of the buffer the frame was decoded
//! from, so decoding copies no payload. Scalars allocate nothing; each aggregate owns
//! exactly one `Vec`.
//!
//! RESP2's null bulk string (`$-1`) and null array (`*-1`) and RESP3's null (`_`) all
//! decode to [`Frame::Null`]: no Redis command gives the difference a meaning.

use bytes::{BufMut, Bytes};

use crate::encode::write_len_line;

/// One decoded RESP value.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// `+OK\r\n`
    SimpleString(Bytes),
    /// `-ERR message\r\n`; see [`crate::ServerError`] for the typed kind.
    SimpleError(Bytes),
    /// `:42\r\n`
    Integer(i64),
    /// `$5\r\nhello\r\n`
    BulkString(Bytes),
    /// `$-1\r\n`, `*-1\r\n` or `_\r\n`
    Null,
    /// `#t\r\n` / `#f\r\n`
    Boolean(bool),
    /// `,3.14\r\n`, also `,inf`, `,-inf`, `,nan`
    Double(f64),
    /// `(3492890328409238509324850943850943825024385\r\n`, kept as its ASCII digits.
    BigNumber(Bytes),
    /// `!21\r\nSYNTAX invalid syntax\r\n`
    BulkError(Bytes),
    /// `=15\r\ntxt:Some string\r\n`: a three-byte format and the text.
    VerbatimString {
        /// The encoding, such as `txt` or `mkd`.
        format: [u8; 3],
        /// The text after the `xxx:` prefix.
        text: Bytes,
    },
    /// `*2\r\n...`
    Array(Vec<Frame>),
    /// `%1\r\n<key><value>`, in wire order.
    Map(Vec<(Frame, Frame)>),
    /// `~2\r\n...`
    Set(Vec<Frame>),
    /// `>3\r\nmessage...`: out-of-band data such as pub/sub messages in RESP3.
    Push(Vec<Frame>),
}

impl Frame {
    /// The bytes of a simple string, bulk string, verbatim string or big number.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Frame::SimpleString(b) | Frame::BulkString(b) | Frame::BigNumber(b) => Some(b),
            Frame::VerbatimString { text, .. } => Some(text),
            _ => None,
        }
    }

    /// The integer value of an integer frame.
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Frame::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The elements of an array, set or push frame.
    pub fn as_elements(&self) -> Option<&[Frame]> {
        match self {
            Frame::Array(v) | Frame::Set(v) | Frame::Push(v) => Some(v),
            _ => None,
        }
    }

    /// Whether this frame is a simple or bulk error.
    pub fn is_error(&self) -> bool {
        matches!(self, Frame::SimpleError(_) | Frame::BulkError(_))
    }

    /// The server error carried by a simple or bulk error frame, parsed into its kind.
    pub fn to_server_error(&self) -> Option<crate::ServerError> {
        match self {
            Frame::SimpleError(b) | Frame::BulkError(b) => {
                Some(crate::ServerError::parse(b.clone()))
            }
            _ => None,
        }
    }

    /// Writes this frame in RESP3 wire form (RESP2 form where the two agree).
    ///
    /// Used by tests and by scripted servers; clients send commands with
    /// [`crate::encode_command`] instead. Simple strings and errors are written as given:
    /// the caller keeps them free of `\r` and `\n`.
    pub fn write_to<B: BufMut>(&self, dst: &mut B) {
        match self {
            Frame::SimpleString(b) => simple_line(dst, b'+', b),
            Frame::SimpleError(b) => simple_line(dst, b'-', b),
            Frame::Integer(i) => write_len_line(dst, b':', *i),
            Frame::BulkString(b) => blob(dst, b'$', b),
            Frame::Null => dst.put_slice(b"_\r\n"),
            Frame::Boolean(t) => dst.put_slice(if *t { b"#t\r\n" } else { b"#f\r\n" }),
            Frame::Double(d) => {
                dst.put_u8(b',');
                if d.is_nan() {
                    dst.put_slice(b"nan");
                } else if d.is_infinite() {
                    dst.put_slice(if *d > 0.0 { b"inf" } else { b"-inf" });
                } else {
                    // `{:?}` prints the shortest representation that round-trips.
                    let mut tmp = [0u8; 64];
                    let n = fmt_into(&mut tmp, format_args!("{d:?}"));
                    dst.put_slice(&tmp[..n]);
                }
                dst.put_slice(b"\r\n");
            }
            Frame::BigNumber(b) => simple_line(dst, b'(', b),
            Frame::BulkError(b) => blob(dst, b'!', b),
            Frame::VerbatimString { format, text } => {
                write_len_line(dst, b'=', len_i64(text.len() + 4));
                dst.put_slice(format);
                dst.put_u8(b':');
                dst.put_slice(text);
                dst.put_slice(b"\r\n");
            }
            Frame::Array(v) => aggregate(dst, b'*', v),
            Frame::Set(v) => aggregate(dst, b'~', v),
            Frame::Push(v) => aggregate(dst, b'>', v),
            Frame::Map(pairs) => {
                write_len_line(dst, b'%', len_i64(pairs.len()));
                for (k, v) in pairs {
                    k.write_to(dst);
                    v.write_to(dst);
                }
            }
        }
    }

    /// This frame in wire form, as a new buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut v = Vec::new();
        self.write_to(&mut v);
        Bytes::from(v)
    }
}

fn len_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn simple_line<B: BufMut>(dst: &mut B, tag: u8, body: &[u8]) {
    dst.put_u8(tag);
    dst.put_slice(body);
    dst.put_slice(b"\r\n");
}

fn blob<B: BufMut>(dst: &mut B, tag: u8, body: &[u8]) {
    write_len_line(dst, tag, len_i64(body.len()));
    dst.put_slice(body);
    dst.put_slice(b"\r\n");
}

fn aggregate<B: BufMut>(dst: &mut B, tag: u8, items: &[Frame]) {
    write_len_line(dst, tag, len_i64(items.len()));
    for f in items {
        f.write_to(dst);
    }
}

/// Formats into a stack buffer; returns the bytes written (truncated at the buffer's end).
fn fmt_into(buf: &mut [u8], args: std::fmt::Arguments<'_>) -> usize {
    struct W<'a> {
        buf: &'a mut [u8],
        n: usize,
    }
    impl std::fmt::Write for W<'_> {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let room = self.buf.len() - self.n;
            let take = s.len().min(room);
            self.buf[self.n..self.n + take].copy_from_slice(&s.as_bytes()[..take]);
            self.n += take;
            Ok(())
        }
    }
    let mut w = W { buf, n: 0 };
    let _ = std::fmt::write(&mut w, args);
    w.n
}

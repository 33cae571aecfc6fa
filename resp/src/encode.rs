//! Command encoding: RESP arrays of bulk strings written straight into a [`BufMut`].
//!
//! No intermediate allocation: lengths and integer arguments are formatted into a stack
//! buffer. A BLMPOP over hundreds of keys is one pass over the keys.

use bytes::BufMut;

/// Longest decimal form of an `i64` ("-9223372036854775808").
const MAX_I64_DIGITS: usize = 20;

/// Formats `v` into the end of `buf`, returning the start index of the digits.
#[inline]
fn fmt_i64(v: i64, buf: &mut [u8; MAX_I64_DIGITS]) -> usize {
    let mut n = v.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    i
}

/// Writes `<tag><n>\r\n`, as in `*3\r\n`, `$5\r\n` or `:42\r\n`.
#[inline]
pub fn write_len_line<B: BufMut>(dst: &mut B, tag: u8, n: i64) {
    let mut tmp = [0u8; MAX_I64_DIGITS];
    let start = fmt_i64(n, &mut tmp);
    dst.put_u8(tag);
    dst.put_slice(&tmp[start..]);
    dst.put_slice(b"\r\n");
}

fn len_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Writes one command: an array of bulk strings, one per argument.
///
/// ```
/// let mut out = Vec::new();
/// ringq_resp::encode_command(&mut out, [&b"BRPOP"[..], b"q1", b"q2", b"5"]);
/// assert_eq!(out, b"*4\r\n$5\r\nBRPOP\r\n$2\r\nq1\r\n$2\r\nq2\r\n$1\r\n5\r\n");
/// ```
pub fn encode_command<B, I, A>(dst: &mut B, args: I)
where
    B: BufMut,
    I: IntoIterator<Item = A>,
    I::IntoIter: ExactSizeIterator,
    A: AsRef<[u8]>,
{
    let args = args.into_iter();
    write_len_line(dst, b'*', len_i64(args.len()));
    for a in args {
        write_bulk(dst, a.as_ref());
    }
}

#[inline]
fn write_bulk<B: BufMut>(dst: &mut B, arg: &[u8]) {
    write_len_line(dst, b'$', len_i64(arg.len()));
    dst.put_slice(arg);
    dst.put_slice(b"\r\n");
}

/// Writes a command whose argument count is known up front, one argument at a time, for
/// arguments of mixed kinds (names, keys, integers).
///
/// ```
/// use ringq_resp::CommandWriter;
/// let keys = [&b"q:high"[..], b"q:low"];
/// let mut out = Vec::new();
/// CommandWriter::new(&mut out, 2 + keys.len())
///     .arg(b"BRPOP")
///     .args(keys)
///     .arg_int(5)
///     .finish();
/// assert_eq!(out, b"*4\r\n$5\r\nBRPOP\r\n$6\r\nq:high\r\n$5\r\nq:low\r\n$1\r\n5\r\n");
/// ```
#[must_use = "call finish() to check the argument count"]
pub struct CommandWriter<'a, B: BufMut> {
    dst: &'a mut B,
    declared: usize,
    written: usize,
}

impl<'a, B: BufMut> CommandWriter<'a, B> {
    /// Starts a command of `nargs` arguments (the command name counts).
    pub fn new(dst: &'a mut B, nargs: usize) -> Self {
        write_len_line(dst, b'*', len_i64(nargs));
        Self {
            dst,
            declared: nargs,
            written: 0,
        }
    }

    /// Adds a bytes argument.
    #[inline]
    pub fn arg(self, arg: impl AsRef<[u8]>) -> Self {
        let Self {
            dst,
            declared,
            written,
        } = self;
        write_bulk(dst, arg.as_ref());
        Self {
            dst,
            declared,
            written: written + 1,
        }
    }

    /// Adds every item of `args`.
    pub fn args<I, A>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: AsRef<[u8]>,
    {
        for a in args {
            self = self.arg(a);
        }
        self
    }

    /// Adds an integer argument, formatted without allocation.
    #[inline]
    pub fn arg_int(self, v: i64) -> Self {
        let mut tmp = [0u8; MAX_I64_DIGITS];
        let start = fmt_i64(v, &mut tmp);
        self.arg(&tmp[start..])
    }

    /// Ends the command.
    ///
    /// # Panics
    /// In debug builds, when the number of arguments written differs from the count given
    /// to [`CommandWriter::new`]: that is a bug in the caller, and the command on the wire
    /// would desynchronize the connection.
    pub fn finish(self) {
        debug_assert_eq!(
            self.declared, self.written,
            "CommandWriter: argument count mismatch"
        );
    }

    /// Whether the argument count matches the declaration (for release-mode checks).
    pub fn is_complete(&self) -> bool {
        self.declared == self.written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_format_like_std() {
        for v in [0, 1, -1, 9, 10, 99, 100, 12345, i64::MAX, i64::MIN, -42] {
            let mut out = Vec::new();
            write_len_line(&mut out, b':', v);
            assert_eq!(out, format!(":{v}\r\n").into_bytes());
        }
    }
}

//! Printing messages: the [`Printer`] handler and the line formats.
//!
//! Each handler instance (one per shard thread, or per worker thread with `--workers`)
//! formats a whole batch into its own buffer, then writes it to stdout in one `write_all`
//! under the [`Output`] lock and flushes: lines never interleave mid-line, the lock is
//! taken once per batch, and nothing printed waits in a buffer when the process stops.
//!
//! # JSON lines
//! `{"queue":"jobs","payload":"hello","deliveries":1}`. Strings are escaped as RFC 8259
//! requires (`"`, `\`, control characters). A payload that is not valid UTF-8 cannot be a
//! JSON string without loss, so its `payload` holds the lossy text (U+FFFD for each bad
//! sequence) and an added `payload_base64` field holds the exact bytes (RFC 4648 standard
//! alphabet, padded): `{"queue":"q","payload":"\ufffd","payload_base64":"/w==","deliveries":1}`.
//! A consumer that needs the bytes reads `payload_base64` when present, else `payload`.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use ringq::{Handler, Message, Outcome};

use crate::args::Format;
use crate::stop::StopSwitch;

/// Where every handler instance writes: stdout behind one lock, plus what went wrong.
pub struct Output {
    format: Format,
    stop: Arc<StopSwitch>,
    sink: Mutex<Sink>,
}

struct Sink {
    out: Box<dyn Write + Send>,
    /// The reader went away (EPIPE): nothing more is written, the engine is stopping.
    closed: bool,
    /// A write failed for another reason (disk full…): reported at exit, status 1.
    error: Option<io::Error>,
    lines: u64,
}

/// How the output ended, for the exit status.
#[derive(Debug)]
pub struct Summary {
    pub closed: bool,
    pub error: Option<io::Error>,
    pub lines: u64,
}

impl Output {
    /// Output to `out` (stdout in the tool, a buffer in tests).
    pub fn new(format: Format, out: Box<dyn Write + Send>, stop: Arc<StopSwitch>) -> Self {
        Self {
            format,
            stop,
            sink: Mutex::new(Sink {
                out,
                closed: false,
                error: None,
                lines: 0,
            }),
        }
    }

    fn write_batch(&self, buf: &[u8], lines: u64) {
        let mut s = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        if s.closed || s.error.is_some() {
            return;
        }
        match s.out.write_all(buf).and_then(|()| s.out.flush()) {
            Ok(()) => s.lines += lines,
            Err(e) => {
                if e.kind() == io::ErrorKind::BrokenPipe {
                    s.closed = true;
                } else {
                    s.error = Some(e);
                }
                drop(s);
                self.stop.request();
            }
        }
    }

    /// Flushes (a no-op unless a write was cut short) and says how the output ended.
    pub fn finish(&self) -> Summary {
        let mut s = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        if !s.closed && s.error.is_none() {
            if let Err(e) = s.out.flush() {
                if e.kind() == io::ErrorKind::BrokenPipe {
                    s.closed = true;
                } else {
                    s.error = Some(e);
                }
            }
        }
        Summary {
            closed: s.closed,
            error: s.error.take(),
            lines: s.lines,
        }
    }
}

/// The consume handler: formats messages into lines and prints them. Cloned once per
/// shard (inline dispatch) or per worker; each clone keeps its own line buffer.
pub struct Printer {
    output: Arc<Output>,
    buf: Vec<u8>,
}

impl Printer {
    pub fn new(output: Arc<Output>) -> Self {
        Self {
            output,
            buf: Vec::with_capacity(64 * 1024),
        }
    }
}

impl Clone for Printer {
    fn clone(&self) -> Self {
        Self::new(self.output.clone())
    }
}

impl Handler for Printer {
    fn handle(&mut self, msg: &Message<'_>) -> Outcome {
        let mut outcomes = Vec::with_capacity(1);
        self.handle_batch(std::slice::from_ref(msg), &mut outcomes);
        outcomes.pop().unwrap_or(Outcome::Ack)
    }

    fn handle_batch(&mut self, batch: &[Message<'_>], outcomes: &mut Vec<Outcome>) {
        self.buf.clear();
        for m in batch {
            match self.output.format {
                Format::Raw => write_raw(&mut self.buf, m.payload()),
                Format::Json => write_json(&mut self.buf, m.queue(), m.payload(), m.deliveries()),
            }
        }
        self.output.write_batch(&self.buf, batch.len() as u64);
        // Pop mode cannot give a message back: after EPIPE the rest are dropped, which is
        // what at-most-once means; the stop switch keeps that to what was in flight.
        outcomes.extend(batch.iter().map(|_| Outcome::Ack));
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::with_capacity(64 * 1024);
        }
    }
}

/// `payload\n`.
pub fn write_raw(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(payload);
    out.push(b'\n');
}

/// One JSON object and a newline; see the module docs for the fields.
pub fn write_json(out: &mut Vec<u8>, queue: &[u8], payload: &[u8], deliveries: u32) {
    out.extend_from_slice(b"{\"queue\":");
    write_json_string(out, &String::from_utf8_lossy(queue));
    out.extend_from_slice(b",\"payload\":");
    match std::str::from_utf8(payload) {
        Ok(text) => write_json_string(out, text),
        Err(_) => {
            write_json_string(out, &String::from_utf8_lossy(payload));
            out.extend_from_slice(b",\"payload_base64\":\"");
            write_base64(out, payload);
            out.push(b'"');
        }
    }
    // Writing to a Vec cannot fail.
    let _ = writeln!(out, ",\"deliveries\":{deliveries}}}");
}

/// A JSON string literal: quotes, backslashes and control characters escaped; everything
/// else (valid UTF-8 by the type) copied as it is.
fn write_json_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Standard base64 with padding (RFC 4648 §4).
fn write_base64(out: &mut Vec<u8>, data: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sym = |v: u32| ALPHABET[(v & 63) as usize];
    let mut chunks = data.chunks_exact(3);
    for c in &mut chunks {
        let v = u32::from(c[0]) << 16 | u32::from(c[1]) << 8 | u32::from(c[2]);
        out.extend_from_slice(&[sym(v >> 18), sym(v >> 12), sym(v >> 6), sym(v)]);
    }
    match *chunks.remainder() {
        [a] => {
            let v = u32::from(a) << 16;
            out.extend_from_slice(&[sym(v >> 18), sym(v >> 12), b'=', b'=']);
        }
        [a, b] => {
            let v = u32::from(a) << 16 | u32::from(b) << 8;
            out.extend_from_slice(&[sym(v >> 18), sym(v >> 12), sym(v >> 6), b'=']);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(queue: &[u8], payload: &[u8]) -> String {
        let mut out = Vec::new();
        write_json(&mut out, queue, payload, 1);
        String::from_utf8(out).expect("JSON output is UTF-8")
    }

    fn b64(data: &[u8]) -> String {
        let mut out = Vec::new();
        write_base64(&mut out, data);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, enc) in vectors {
            assert_eq!(b64(plain.as_bytes()), enc, "{plain:?}");
        }
        assert_eq!(b64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn json_escapes_quotes_backslashes_and_control_characters() {
        assert_eq!(
            json(b"q", b"a\"b\\c\nd\re\tf\x08g\x0ch\x01i\x1fj\x7fk"),
            "{\"queue\":\"q\",\"payload\":\"a\\\"b\\\\c\\nd\\re\\tf\\bg\\fh\\u0001i\\u001fj\x7fk\",\"deliveries\":1}\n"
        );
        assert_eq!(
            json(b"q", "h\u{e9}llo \u{1f600}".as_bytes()),
            "{\"queue\":\"q\",\"payload\":\"h\u{e9}llo \u{1f600}\",\"deliveries\":1}\n"
        );
    }

    #[test]
    fn json_keeps_non_utf8_bytes_in_payload_base64() {
        assert_eq!(
            json(b"q", b"a\xffb"),
            "{\"queue\":\"q\",\"payload\":\"a\u{fffd}b\",\"payload_base64\":\"Yf9i\",\"deliveries\":1}\n"
        );
    }

    #[test]
    fn batches_are_written_whole_and_counted() {
        #[derive(Clone, Default)]
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                // One byte at a time: a batch must still come out whole.
                self.0
                    .lock()
                    .unwrap()
                    .extend_from_slice(&b[..1.min(b.len())]);
                Ok(1.min(b.len()))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let buf = Shared::default();
        let out = Arc::new(Output::new(
            Format::Raw,
            Box::new(buf.clone()),
            Arc::new(StopSwitch::default()),
        ));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let out = out.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let mut b = Vec::new();
                        write_raw(&mut b, format!("t{t}-{i}").as_bytes());
                        write_raw(&mut b, format!("t{t}-{i}b").as_bytes());
                        out.write_batch(&b, 2);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 800);
        for pair in lines.chunks(2) {
            assert_eq!(format!("{}b", pair[0]), pair[1], "a batch was split");
        }
        let s = out.finish();
        assert_eq!((s.lines, s.closed, s.error.is_none()), (800, false, true));
    }

    #[test]
    fn broken_pipe_closes_the_output_and_asks_for_a_stop() {
        struct Gone;
        impl Write for Gone {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let stop = Arc::new(StopSwitch::default());
        let out = Output::new(Format::Raw, Box::new(Gone), stop.clone());
        out.write_batch(b"x\n", 1);
        out.write_batch(b"y\n", 1);
        let s = out.finish();
        assert!(s.closed && s.error.is_none() && s.lines == 0, "{s:?}");
        assert!(stop.request(), "EPIPE must have asked for a stop already");
    }
}

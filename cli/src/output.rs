//! Printing messages: the [`Printer`] handler and the line formats.
//!
//! Each handler instance (one per shard thread, or per worker thread with `--workers`)
//! formats a whole batch into its own buffer, then hands it to the [`Output`] whole, so
//! lines never interleave mid-line. The output is either:
//! - **direct** (`consume`): written with one `write_all` under a lock and flushed before
//!   the handler returns — reliable and stream modes acknowledge a message only then;
//! - **queued** (`subscribe`): copied into the bounded queue of a writer thread
//!   ([`crate::writer`]) that coalesces writes under load and prints at once when quiet.
//!
//! # JSON lines
//! `{"queue":"jobs","payload":"hello","deliveries":1}`. Strings are escaped as RFC 8259
//! requires (`"`, `\`, control characters). A payload that is not valid UTF-8 cannot be a
//! JSON string without loss, so its `payload` holds the lossy text (U+FFFD for each bad
//! sequence) and an added `payload_base64` field holds the exact bytes (RFC 4648 standard
//! alphabet, padded): `{"queue":"q","payload":"\ufffd","payload_base64":"/w==","deliveries":1}`.
//! A consumer that needs the bytes reads `payload_base64` when present, else `payload`.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ringq::{Event, GapCause, Handler, Message, Outcome};

use crate::args::Format;
use crate::stop::StopSwitch;
use crate::writer::StdoutQueue;

/// Where every handler instance writes: stdout behind one lock, or the writer thread's
/// queue; plus what went wrong.
pub struct Output {
    format: Format,
    stop: Arc<StopSwitch>,
    target: Target,
}

enum Target {
    Direct(Mutex<Sink>),
    Queued {
        queue: StdoutQueue,
        lines: AtomicU64,
    },
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
    /// Lines written (direct), or handed to the writer thread (queued).
    pub lines: u64,
}

impl Output {
    /// Direct output to `out` (stdout in the tool, a buffer in tests): each batch is
    /// written and flushed before [`Printer`] returns its outcomes.
    pub fn new(format: Format, out: Box<dyn Write + Send>, stop: Arc<StopSwitch>) -> Self {
        Self {
            format,
            stop,
            target: Target::Direct(Mutex::new(Sink {
                out,
                closed: false,
                error: None,
                lines: 0,
            })),
        }
    }

    /// Queued output to `out` through a writer thread (see [`crate::writer`]).
    ///
    /// # Errors
    /// The writer thread could not be started.
    pub fn queued(
        format: Format,
        out: Box<dyn Write + Send>,
        stop: Arc<StopSwitch>,
    ) -> io::Result<Self> {
        Ok(Self {
            format,
            target: Target::Queued {
                queue: StdoutQueue::start(out, stop.clone())?,
                lines: AtomicU64::new(0),
            },
            stop,
        })
    }

    /// Writes and flushes one batch of lines (direct), or queues it; false if it was not.
    fn write_batch(&self, buf: &[u8], lines: u64) -> bool {
        let sink = match &self.target {
            Target::Direct(sink) => sink,
            Target::Queued { queue, lines: n } => {
                let queued = queue.push(buf);
                if queued {
                    n.fetch_add(lines, Ordering::Relaxed);
                }
                return queued;
            }
        };
        let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
        if s.closed || s.error.is_some() {
            return false;
        }
        match s.out.write_all(buf).and_then(|()| s.out.flush()) {
            Ok(()) => {
                s.lines += lines;
                true
            }
            Err(e) => {
                if e.kind() == io::ErrorKind::BrokenPipe {
                    s.closed = true;
                } else {
                    s.error = Some(e);
                }
                drop(s);
                self.stop.request();
                false
            }
        }
    }

    /// Flushes (direct: a no-op unless a write was cut short; queued: writes what is
    /// queued and ends the writer thread) and says how the output ended.
    pub fn finish(&self) -> Summary {
        let sink = match &self.target {
            Target::Direct(sink) => sink,
            Target::Queued { queue, lines } => {
                let end = queue.finish();
                return Summary {
                    closed: end.closed,
                    error: end.error,
                    lines: lines.load(Ordering::Relaxed),
                };
            }
        };
        let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
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

/// What lines look like: the format, and whether messages come from channels (listen:
/// JSON names the channel and pattern; printed through the queued output) or queues
/// (direct output: acknowledged only once written and flushed).
#[derive(Debug, Clone, Copy)]
pub struct Lines {
    pub format: Format,
    pub listen: bool,
    /// `--mode kombu`: messages are Kombu envelopes, printed decoded.
    pub kombu: bool,
    /// `--metrics-addr`: where to serve `/metrics` while the engine runs.
    pub metrics: Option<std::net::SocketAddr>,
}

/// The consume and subscribe handler: formats messages into lines and prints them.
/// Cloned once per shard (inline dispatch) or per worker; each clone keeps its own line
/// buffer. Events (gaps, drops, lost pops) become warnings on stderr.
pub struct Printer {
    output: Arc<Output>,
    listen: bool,
    kombu: bool,
    buf: Vec<u8>,
    /// Messages dropped so far (`--drop-oldest`), for the running total.
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl Printer {
    pub fn new(output: Arc<Output>, listen: bool) -> Self {
        Self {
            output,
            listen,
            kombu: false,
            dropped: Arc::default(),
            buf: Vec::with_capacity(64 * 1024),
        }
    }
}

impl Printer {
    /// Prints Kombu envelopes decoded (`--mode kombu`).
    pub fn kombu(mut self, on: bool) -> Self {
        self.kombu = on;
        self
    }
}

impl Clone for Printer {
    fn clone(&self) -> Self {
        let mut p = Self::new(self.output.clone(), self.listen).kombu(self.kombu);
        p.dropped = self.dropped.clone();
        p
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
            if self.kombu {
                write_kombu(&mut self.buf, self.output.format, m);
                continue;
            }
            match (self.output.format, self.listen) {
                (Format::Raw, _) => write_raw(&mut self.buf, m.payload()),
                (Format::Json, false) => {
                    write_json(
                        &mut self.buf,
                        m.queue(),
                        m.id(),
                        m.payload(),
                        m.deliveries(),
                    );
                }
                (Format::Json, true) => {
                    write_listen_json(&mut self.buf, m.channel(), m.pattern(), m.payload());
                }
            }
        }
        // Acknowledged only once written and flushed. A batch that could not be written is
        // retried: reliable mode delivers it again; pop mode cannot give a message back,
        // so after EPIPE the rest are dropped (counted as retries), which is what
        // at-most-once means, and the stop switch keeps that to what was in flight.
        let outcome = if self.output.write_batch(&self.buf, batch.len() as u64) {
            Outcome::Ack
        } else {
            Outcome::Retry
        };
        outcomes.extend(batch.iter().map(|_| outcome));
        if self.buf.capacity() > 1 << 20 {
            self.buf = Vec::with_capacity(64 * 1024);
        }
    }

    fn on_event(&mut self, event: &Event) {
        let text = match event {
            Event::Gap {
                subscriptions,
                disconnected_at,
                resubscribed_at,
                cause,
                ..
            } => {
                let span = match resubscribed_at {
                    Some(t) => format!(
                        "from {} to {} UTC ({:.3} s)",
                        clock(*disconnected_at),
                        clock(*t),
                        t.duration_since(*disconnected_at)
                            .unwrap_or_default()
                            .as_secs_f64()
                    ),
                    None => format!(
                        "from {} UTC, not restored before the stop",
                        clock(*disconnected_at)
                    ),
                };
                let why = match cause {
                    GapCause::OutputBufferLimit(_) => "the server dropped the subscriber at \
                        its client-output-buffer-limit pubsub while ringq had stopped reading \
                        (stdout was behind). Raise the limit (CONFIG SET \
                        client-output-buffer-limit \"pubsub 0 0 0\" removes it), read stdout \
                        faster, or use --drop-oldest"
                        .to_owned(),
                    _ => cause.to_string(),
                };
                format!(
                    "gap on {}: messages published {span} were missed, how many the server \
                     cannot tell; resubscribed. Why: {why}",
                    subscriptions.join(", ")
                )
            }
            Event::Dropped { count } => {
                let total = self
                    .dropped
                    .fetch_add(*count, std::sync::atomic::Ordering::Relaxed)
                    + count;
                format!(
                    "dropped {count} message(s) ({total} in all): stdout is slower than the \
                     publishers (--drop-oldest)"
                )
            }
            Event::PossiblyLost {
                connection,
                messages,
                ..
            } => format!(
                "{connection} was cut with pops unanswered: up to {messages} message(s) lost"
            ),
            // The engine logs these two itself (a `tracing` warning, shown by `log`):
            // printing the event as well would say it twice.
            Event::StaleOutcomes { .. } => return,
            Event::Recovered { swept, .. } if *swept > 0 => return,
            Event::Recovered {
                queue, messages, ..
            } => {
                format!("put {messages} leased message(s) back on '{queue}'")
            }
            other => format!("{other:?}"),
        };
        eprintln!("ringq: warning: {text}");
    }
}

/// A Kombu message (`--mode kombu`): raw, its decoded body and a newline; JSON, one
/// object with `queue`, `body` (lossy UTF-8; `body_base64` too when not UTF-8),
/// `content_type`, `headers`, `properties`, `deliveries` and `redelivered`. The engine
/// hands over only envelopes that parse (it dead-letters the rest).
fn write_kombu(out: &mut Vec<u8>, format: Format, m: &Message<'_>) {
    let Ok(k) = ringq::kombu::Incoming::parse(m.payload()) else {
        write_raw(out, m.payload());
        return;
    };
    if format == Format::Raw {
        write_raw(out, &k.body);
        return;
    }
    let mut v = serde_json::json!({
        "queue": String::from_utf8_lossy(m.queue()),
        "body": String::from_utf8_lossy(&k.body),
        "content_type": k.content_type,
        "headers": k.headers,
        "properties": k.properties,
        "deliveries": m.deliveries(),
        "redelivered": k.redelivered(),
    });
    if std::str::from_utf8(&k.body).is_err() {
        let mut b = Vec::new();
        write_base64(&mut b, &k.body);
        v["body_base64"] = String::from_utf8_lossy(&b).into_owned().into();
    }
    let _ = serde_json::to_writer(&mut *out, &v);
    out.push(b'\n');
}

/// `payload\n`.
pub fn write_raw(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(payload);
    out.push(b'\n');
}

/// One JSON object and a newline; see the module docs for the fields.
pub fn write_json(out: &mut Vec<u8>, queue: &[u8], id: &[u8], payload: &[u8], deliveries: u32) {
    out.extend_from_slice(b"{\"queue\":");
    write_json_string(out, &String::from_utf8_lossy(queue));
    if !id.is_empty() {
        out.extend_from_slice(b",\"id\":");
        write_json_string(out, &String::from_utf8_lossy(id));
    }
    write_payload(out, payload);
    // Writing to a Vec cannot fail.
    let _ = writeln!(out, ",\"deliveries\":{deliveries}}}");
}

/// A subscribe line: `{"channel":…,"pattern":…,"payload":…}` (no pattern unless one
/// matched; `payload_base64` too when the payload is not UTF-8).
pub fn write_listen_json(
    out: &mut Vec<u8>,
    channel: &[u8],
    pattern: Option<&[u8]>,
    payload: &[u8],
) {
    out.extend_from_slice(b"{\"channel\":");
    write_json_string(out, &String::from_utf8_lossy(channel));
    if let Some(p) = pattern {
        out.extend_from_slice(b",\"pattern\":");
        write_json_string(out, &String::from_utf8_lossy(p));
    }
    write_payload(out, payload);
    out.extend_from_slice(b"}\n");
}

/// `,"payload":"…"`, and `,"payload_base64":"…"` when the payload is not UTF-8.
fn write_payload(out: &mut Vec<u8>, payload: &[u8]) {
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
}

/// A JSON string literal (serde_json's escaping).
fn write_json_string(out: &mut Vec<u8>, s: &str) {
    // Serializing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Standard base64 with padding (RFC 4648 §4).
fn write_base64(out: &mut Vec<u8>, data: &[u8]) {
    use base64::Engine as _;
    let start = out.len();
    out.resize(start + data.len().div_ceil(3) * 4, 0);
    let written = base64::engine::general_purpose::STANDARD
        .encode_slice(data, &mut out[start..])
        .unwrap_or(0);
    out.truncate(start + written);
}

/// `HH:MM:SS.mmm` (UTC) of a wall-clock time, for stderr lines.
fn clock(t: std::time::SystemTime) -> String {
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let (s, ms) = (ms / 1000, ms % 1000);
    format!(
        "{:02}:{:02}:{:02}.{ms:03}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(queue: &[u8], payload: &[u8]) -> String {
        let mut out = Vec::new();
        write_json(&mut out, queue, b"", payload, 1);
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

//! The stdout writer thread of `ringq subscribe`: handlers hand their formatted lines to a
//! bounded byte queue (an `rtrb` ring) and return; one thread writes whatever is queued in
//! one `writev`.
//!
//! Why a thread: a handler that writes to stdout itself makes one `write` per batch the
//! engine hands it (a handful of messages under load), and blocks its shard on a slow
//! reader. Here the shard only copies bytes into the ring. The writer coalesces:
//! - **idle** (nothing written for [`COALESCE_TIME`]): the first bytes queued are written
//!   at once, so a quiet subscriber prints each message as it arrives;
//! - **under load**: after a write, the next one waits until [`COALESCE_TIME`] has passed
//!   or [`COALESCE_BYTES`] are queued, whichever comes first.
//!
//! **Queue full** ([`QUEUE_BYTES`]): the handler blocks until the writer has made room —
//! backpressure, by choice. The shard then stops reading its socket and the server holds
//! the messages. (A `--drop-oldest` that keeps reading while stdout is blocked would
//! replace this wait with a drop; it is the one place to change.)
//!
//! Wake-ups cost no syscall per message: the writer publishes how many queued bytes it
//! wants to be woken at (`wake_at`: 1 when parked idle, [`COALESCE_BYTES`] while
//! coalescing, never while it runs), and a handler unparks it only when the queue reaches
//! that. Both sides store, fence (SeqCst), then load the other's value, so one of them
//! always sees the other: no wake-up is lost.

use std::io::{self, IoSlice, Write};
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use rtrb::{Consumer, Producer, RingBuffer};

use crate::stop::StopSwitch;

/// Bytes the queue holds before a handler waits for the writer.
pub const QUEUE_BYTES: usize = 1 << 20;
/// Under load, a write waits for this many queued bytes…
pub const COALESCE_BYTES: usize = 64 * 1024;
/// …or this long after the previous write.
pub const COALESCE_TIME: Duration = Duration::from_micros(250);
/// A handler waiting for room checks again after this long even without a wake-up.
const FULL_RECHECK: Duration = Duration::from_millis(50);

/// State the handlers and the writer thread share.
struct Shared {
    /// Queued bytes at which a handler unparks the writer (`usize::MAX`: it is running).
    wake_at: AtomicUsize,
    /// The writer thread, to unpark.
    writer: OnceLock<Thread>,
    /// A handler waits for room; the writer unparks `waiting` after its next write.
    full: AtomicBool,
    waiting: Mutex<Option<Thread>>,
    /// No more bytes will be queued: write what is left and end.
    closing: AtomicBool,
    /// The writer can write no more (closed pipe or an error): bytes are dropped.
    failed: AtomicBool,
    stop: Arc<StopSwitch>,
}

/// How the writer thread ended.
#[derive(Debug, Default)]
pub struct WriterEnd {
    /// The reader went away (EPIPE).
    pub closed: bool,
    /// Another write error (disk full…).
    pub error: Option<io::Error>,
}

/// The handlers' end of the queue (behind one lock, so batches never interleave) and the
/// writer thread.
pub struct StdoutQueue {
    producer: Mutex<Producer<u8>>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<WriterEnd>>>,
}

impl StdoutQueue {
    /// Starts the writer thread on `out`.
    ///
    /// # Errors
    /// The thread could not be started.
    pub fn start(out: Box<dyn Write + Send>, stop: Arc<StopSwitch>) -> io::Result<Self> {
        let (producer, consumer) = RingBuffer::new(QUEUE_BYTES);
        let shared = Arc::new(Shared {
            wake_at: AtomicUsize::new(usize::MAX),
            writer: OnceLock::new(),
            full: AtomicBool::new(false),
            waiting: Mutex::new(None),
            closing: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            stop,
        });
        let s = shared.clone();
        let handle = thread::Builder::new()
            .name("ringq-stdout".into())
            .spawn(move || write_loop(consumer, out, &s))?;
        let _ = shared.writer.set(handle.thread().clone());
        Ok(Self {
            producer: Mutex::new(producer),
            shared,
            thread: Mutex::new(Some(handle)),
        })
    }

    /// Queues `buf` whole (waiting for room when the queue is full); false if the writer
    /// can write no more, so the bytes were dropped.
    pub fn push(&self, mut buf: &[u8]) -> bool {
        let sh = &*self.shared;
        let mut p = self.producer.lock().unwrap_or_else(|e| e.into_inner());
        while !buf.is_empty() {
            if sh.failed.load(Ordering::Acquire) {
                return false;
            }
            match p.write(buf) {
                Ok(n) => {
                    buf = &buf[n..];
                    fence(Ordering::SeqCst);
                    let queued = QUEUE_BYTES - p.slots();
                    if queued >= sh.wake_at.load(Ordering::SeqCst) {
                        sh.wake_writer();
                    }
                }
                Err(_) => {
                    // Full: wait for the writer to make room (backpressure).
                    *sh.waiting.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread::current());
                    sh.full.store(true, Ordering::SeqCst);
                    sh.wake_writer();
                    if p.slots() == 0 {
                        thread::park_timeout(FULL_RECHECK);
                    }
                }
            }
        }
        !sh.failed.load(Ordering::Acquire)
    }

    /// Writes what is queued, ends the writer thread and says how it ended. Later pushes
    /// drop their bytes.
    pub fn finish(&self) -> WriterEnd {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared.wake_writer();
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        let end = handle.map_or_else(WriterEnd::default, |h| {
            h.join().unwrap_or_else(|_| WriterEnd {
                closed: false,
                error: Some(io::Error::other("the stdout writer thread panicked")),
            })
        });
        self.shared.failed.store(true, Ordering::Release);
        end
    }
}

impl Shared {
    fn wake_writer(&self) {
        if let Some(t) = self.writer.get() {
            t.unpark();
        }
    }

    /// Parks the writer until `wake_at` bytes are queued (or `timeout`), unless they
    /// already are.
    fn park_until(&self, consumer: &Consumer<u8>, wake_at: usize, timeout: Option<Duration>) {
        self.wake_at.store(wake_at, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if consumer.slots() < wake_at && !self.closing.load(Ordering::SeqCst) {
            match timeout {
                Some(t) => thread::park_timeout(t),
                None => thread::park(),
            }
        }
        self.wake_at.store(usize::MAX, Ordering::SeqCst);
    }
}

/// The writer thread: see the module docs.
fn write_loop(
    mut consumer: Consumer<u8>,
    mut out: Box<dyn Write + Send>,
    sh: &Shared,
) -> WriterEnd {
    let mut end = WriterEnd::default();
    let mut last_write: Option<Instant> = None;
    loop {
        let queued = consumer.slots();
        if queued == 0 {
            if sh.closing.load(Ordering::SeqCst) {
                // Bytes pushed before `closing` was set are visible now.
                if consumer.slots() == 0 {
                    break;
                }
                continue;
            }
            sh.park_until(&consumer, 1, None);
            continue;
        }
        if queued < COALESCE_BYTES && !sh.closing.load(Ordering::SeqCst) {
            let due = last_write.map(|t| t + COALESCE_TIME);
            let now = Instant::now();
            if let Some(due) = due.filter(|&d| d > now) {
                sh.park_until(&consumer, COALESCE_BYTES, Some(due - now));
                continue;
            }
        }
        let Ok(chunk) = consumer.read_chunk(queued) else {
            continue;
        };
        if !sh.failed.load(Ordering::Acquire) {
            let (a, b) = chunk.as_slices();
            if let Err(e) = write_all_vectored(&mut *out, a, b) {
                fail(sh, &mut end, e);
            }
        }
        chunk.commit_all();
        last_write = Some(Instant::now());
        if sh.full.swap(false, Ordering::SeqCst) {
            if let Some(t) = sh.waiting.lock().unwrap_or_else(|e| e.into_inner()).take() {
                t.unpark();
            }
        }
    }
    if !sh.failed.load(Ordering::Acquire) {
        if let Err(e) = out.flush() {
            fail(sh, &mut end, e);
        }
    }
    end
}

/// Records a write failure: nothing more is written, and the engine is asked to stop.
fn fail(sh: &Shared, end: &mut WriterEnd, e: io::Error) {
    if e.kind() == io::ErrorKind::BrokenPipe {
        end.closed = true;
    } else {
        end.error = Some(e);
    }
    sh.failed.store(true, Ordering::Release);
    sh.stop.request();
    // A handler waiting for room must see `failed`.
    if let Some(t) = sh.waiting.lock().unwrap_or_else(|p| p.into_inner()).take() {
        t.unpark();
    }
}

/// `a` then `b`, whole, in as few `writev`s as the kernel allows.
fn write_all_vectored(out: &mut dyn Write, mut a: &[u8], mut b: &[u8]) -> io::Result<()> {
    while !a.is_empty() || !b.is_empty() {
        let n = match out.write_vectored(&[IoSlice::new(a), IoSlice::new(b)]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records each write call's bytes.
    #[derive(Clone, Default)]
    struct Calls(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Calls {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(b.to_vec());
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn bytes(c: &Calls) -> Vec<u8> {
        c.0.lock().unwrap().concat()
    }

    #[test]
    fn everything_pushed_is_written_once_in_order_in_few_writes() {
        let calls = Calls::default();
        let q =
            StdoutQueue::start(Box::new(calls.clone()), Arc::new(StopSwitch::default())).unwrap();
        let mut expected = Vec::new();
        for i in 0..200_000u32 {
            let line = format!("{i}\n");
            expected.extend_from_slice(line.as_bytes());
            assert!(q.push(line.as_bytes()));
        }
        let end = q.finish();
        assert!(!end.closed && end.error.is_none());
        assert_eq!(bytes(&calls), expected);
        let writes = calls.0.lock().unwrap().len();
        assert!(
            writes < 200_000 / 2,
            "{writes} writes for 200000 lines: not coalesced"
        );
    }

    #[test]
    fn a_quiet_queue_writes_each_push_without_a_flush() {
        let calls = Calls::default();
        let q =
            StdoutQueue::start(Box::new(calls.clone()), Arc::new(StopSwitch::default())).unwrap();
        for i in 0..3 {
            let line = format!("m{i}\n");
            q.push(line.as_bytes());
            // Each line comes out on its own, with no finish() to push it.
            while !bytes(&calls).ends_with(line.as_bytes()) {
                thread::sleep(Duration::from_millis(1));
            }
        }
        q.finish();
        assert_eq!(bytes(&calls), b"m0\nm1\nm2\n");
    }

    #[test]
    fn a_batch_larger_than_the_queue_waits_for_room_and_stays_whole() {
        let calls = Calls::default();
        let q =
            StdoutQueue::start(Box::new(calls.clone()), Arc::new(StopSwitch::default())).unwrap();
        let big: Vec<u8> = (0..QUEUE_BYTES * 3 + 7).map(|i| (i % 251) as u8).collect();
        assert!(q.push(&big));
        q.finish();
        assert_eq!(bytes(&calls), big);
    }

    #[test]
    fn broken_pipe_stops_the_engine_and_drops_later_pushes() {
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
        let q = StdoutQueue::start(Box::new(Gone), stop.clone()).unwrap();
        q.push(b"x\n");
        while !q.shared.failed.load(Ordering::Acquire) {
            thread::sleep(Duration::from_millis(1));
        }
        assert!(!q.push(&vec![b'y'; QUEUE_BYTES * 2]), "no wait once failed");
        let end = q.finish();
        assert!(end.closed && end.error.is_none(), "{end:?}");
        assert!(stop.request(), "EPIPE must have asked for a stop already");
    }
}

//! The child's side: [`child_main`] (the `__child` subcommand), the consumers a run
//! measures, each run inside a child process, and the per-message work they all do
//! ([`Sink`]), so they differ only in how they get messages.
//!
//! - `ringq_client`: the engine, with a [`ringq::Handler`] feeding the sink per batch.
//! - `redis_rs`: redis-rs on tokio; `--pipeline` tasks per multiplexed connection.
//! - `tokio_uring`: one tokio-uring runtime per thread, a task per connection.
//! - `limit`: blocking sockets, the least client work; `ping`: the latency floor.
//!
//! The work per message ("the handler") is the same everywhere: in `drain`, look at the
//! payload's length; in `latency`, read the payload's intended send time and record
//! now − intended into a histogram (one lock per reply, not per message).

mod limit;
mod ping;
mod redis_rs;
mod ringq_client;
mod tokio_uring;

use std::ffi::OsString;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::cli::ClientKind;
use crate::error::{Error, Result};
use crate::latency;
use crate::spec::{ChildReport, ChildSpec, READY_LINE};

/// The child's `main`: parses the spec, runs the client, prints the report.
pub fn child_main(spec: Option<OsString>) -> ExitCode {
    let result = spec
        .ok_or_else(|| Error::new("missing child spec"))
        .and_then(|s| serde_json::from_str::<ChildSpec>(&s.to_string_lossy()).map_err(Error::from))
        .and_then(|spec| run(&spec));
    match result {
        Ok(report) => {
            let line = serde_json::to_string(&report).unwrap_or_default();
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
            // Blocked pops of baselines may still be pending: leave without waiting.
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the client `spec` names and reports what it measured.
///
/// # Errors
/// The client failed, or did not consume every expected message before its deadline.
pub fn run(spec: &ChildSpec) -> Result<ChildReport> {
    let sink = Arc::new(Sink::new(spec));
    if spec.channel.is_some() {
        let note = match spec.client {
            ClientKind::Ringq | ClientKind::RingqEpoll => ringq_client::listen(spec, &sink)?,
            ClientKind::RedisRs => redis_rs::listen(spec, &sink)?,
            other => {
                return Err(Error::new(format!(
                    "{} has no pub/sub consumer in the pubsub scenario",
                    other.name()
                )))
            }
        };
        return sink.report(note);
    }
    let note = match spec.client {
        ClientKind::Ringq | ClientKind::RingqEpoll | ClientKind::RingqMetrics => {
            ringq_client::run(spec, &sink)?
        }
        ClientKind::RedisRs => redis_rs::run(spec, &sink)?,
        ClientKind::TokioUring => tokio_uring::run(spec, &sink)?,
        ClientKind::Limit => limit::run(spec, &sink)?,
        ClientKind::Ping => ping::run(spec, &sink)?,
    };
    sink.report(note)
}

/// The shared per-message work and the tally: counts messages, notes when the last one
/// arrived, and records latencies.
pub struct Sink {
    expected: u64,
    latency: bool,
    count: AtomicU64,
    /// Payload bytes seen: the drain "handler" looks at every payload.
    bytes: AtomicU64,
    start_ns: AtomicU64,
    end_ns: AtomicU64,
    histogram: Mutex<Histogram<u64>>,
    /// `load`: the per-second figures.
    series: Option<Mutex<crate::series::ChildSeries>>,
    /// `load --hdr-prefix`: where the series' histograms go.
    hdr_e2e: Option<std::path::PathBuf>,
    /// The engine's reconnects, when the client reports them.
    reconnects: Mutex<Option<u64>>,
    /// The engine's system calls and completions (`Stats::io`), when it reports them.
    io: Mutex<Option<ringq::IoCounters>>,
    error: Mutex<Option<String>>,
    /// Woken when the last message is counted, or on failure (async waiters).
    done: tokio::sync::Notify,
    /// The same, for threads: set once, under its mutex, then the condvar is notified.
    done_flag: (Mutex<bool>, Condvar),
    /// Pub/sub: messages may be lost, so a run also ends once no message has arrived
    /// for [`QUIET`], and reports what it got.
    lossy: bool,
    /// Set when a lossy run ended quiet.
    quiet: std::sync::atomic::AtomicBool,
    /// When the latest message was counted (lossy runs only).
    last_ns: AtomicU64,
    /// No quiet end before this instant (`CLOCK_MONOTONIC` ns; `load`: the schedule's end).
    quiet_from_ns: u64,
}

/// How long a pub/sub consumer waits without a message before it stops counting.
pub const QUIET: Duration = Duration::from_secs(2);

impl Sink {
    fn new(spec: &ChildSpec) -> Self {
        Self {
            expected: spec.expected,
            latency: spec.latency,
            count: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            start_ns: AtomicU64::new(latency::mono_ns()),
            end_ns: AtomicU64::new(0),
            histogram: Mutex::new(latency::new_histogram()),
            series: spec.series_origin_ns.map(|o| {
                Mutex::new(crate::series::ChildSeries::new(
                    o,
                    spec.series_warmup_ns,
                    spec.expected,
                ))
            }),
            hdr_e2e: spec.hdr_e2e.clone(),
            reconnects: Mutex::new(None),
            io: Mutex::new(None),
            error: Mutex::new(None),
            done: tokio::sync::Notify::new(),
            done_flag: (Mutex::new(false), Condvar::new()),
            // Pub/sub, and load runs (pop mode loses what a cut connection held; a
            // fault-free run ends on the count all the same).
            lossy: spec.channel.is_some() || spec.series_origin_ns.is_some(),
            quiet: std::sync::atomic::AtomicBool::new(false),
            last_ns: AtomicU64::new(0),
            quiet_from_ns: spec.series_end_ns.unwrap_or(0),
        }
    }

    /// Lossy runs: ends the run once messages have arrived and then none for [`QUIET`].
    pub fn stop_when_quiet(self: &Arc<Self>) {
        let sink = self.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(100));
            if sink.is_done() {
                return;
            }
            let last = sink.last_ns.load(Ordering::Acquire);
            let now = latency::mono_ns();
            let idle = now.saturating_sub(last);
            if last > 0 && idle >= QUIET.as_nanos() as u64 && now >= sink.quiet_from_ns {
                sink.quiet.store(true, Ordering::Release);
                sink.end_ns.store(last, Ordering::Release);
                sink.wake();
                return;
            }
        });
    }

    /// Says the client is connected and consuming: prints `ready` for the parent, and
    /// in the latency scenario starts the clock (in drain it started before connecting).
    pub fn ready(&self) {
        if self.latency {
            self.start_ns.store(latency::mono_ns(), Ordering::Relaxed);
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{READY_LINE}");
        let _ = out.flush();
    }

    /// Handles the messages of one reply. Returns true once every expected message has
    /// been counted.
    pub fn consume<'a>(&self, payloads: impl IntoIterator<Item = &'a [u8]>) -> bool {
        let mut n = 0u64;
        if self.latency {
            let mut h = self
                .histogram
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut series = self
                .series
                .as_ref()
                .map(|s| s.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
            for p in payloads {
                if let Some(intended) = latency::intended_ns(p) {
                    let now = latency::mono_ns();
                    latency::record(&mut h, intended, now);
                    if let Some(s) = series.as_mut() {
                        // A load run counts distinct messages: duplicates are reported,
                        // not counted towards the end.
                        if !s.record(latency::seq(p).unwrap_or(0), intended, now) {
                            continue;
                        }
                    }
                }
                n += 1;
            }
        } else {
            let mut bytes = 0;
            for p in payloads {
                bytes += p.len() as u64;
                n += 1;
            }
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        self.add(n)
    }

    /// Records one latency sample (the ping prober) and counts it.
    pub fn sample(&self, intended_ns: u64, now_ns: u64) -> bool {
        {
            let mut h = self
                .histogram
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            latency::record(&mut h, intended_ns, now_ns);
        }
        self.add(1)
    }

    /// Counts `n` messages without looking at them (the limit probe). Returns true once
    /// every expected message has been counted.
    pub fn add(&self, n: u64) -> bool {
        if n == 0 {
            return self.is_done();
        }
        let total = self.count.fetch_add(n, Ordering::AcqRel) + n;
        if self.lossy {
            self.last_ns.store(latency::mono_ns(), Ordering::Release);
        }
        if total >= self.expected {
            if total - n < self.expected {
                self.end_ns.store(latency::mono_ns(), Ordering::Release);
                self.wake();
            }
            return true;
        }
        false
    }

    /// Whether every expected message was counted, or the client failed.
    pub fn is_done(&self) -> bool {
        self.count.load(Ordering::Acquire) >= self.expected
            || self.failed()
            || self.quiet.load(Ordering::Acquire)
    }

    fn failed(&self) -> bool {
        self.error.lock().map(|e| e.is_some()).unwrap_or(true)
    }

    /// Records a failure (the first one wins) and wakes whoever waits for the end.
    pub fn fail(&self, message: impl Into<String>) {
        if let Ok(mut e) = self.error.lock() {
            e.get_or_insert_with(|| message.into());
        }
        self.wake();
    }

    fn wake(&self) {
        self.done.notify_waiters();
        let (flag, cv) = &self.done_flag;
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }

    /// Blocks the calling thread until done or failed.
    pub fn wait_blocking(&self) {
        let (flag, cv) = &self.done_flag;
        let mut done = flag.lock().unwrap_or_else(|p| p.into_inner());
        while !*done {
            done = cv.wait(done).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits (async) until done or failed.
    pub async fn finished(&self) {
        loop {
            // Registered before the check, so a wake-up between the two is not lost.
            let mut notified = std::pin::pin!(self.done.notified());
            notified.as_mut().enable();
            if self.is_done() {
                return;
            }
            notified.await;
        }
    }

    /// Notes the engine's reconnects, system calls and completions for the report.
    pub fn set_engine(&self, stats: &ringq::Stats) {
        *self.reconnects.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats.reconnects);
        *self.io.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats.io);
    }

    /// Messages counted so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    /// Fails the sink after `deadline` unless it finished: a consumer that loses messages
    /// must not hang the suite.
    pub fn watchdog(
        self: &Arc<Self>,
        deadline: Duration,
        on_expiry: impl FnOnce() + Send + 'static,
    ) {
        let sink = self.clone();
        std::thread::spawn(move || {
            std::thread::sleep(deadline);
            if !sink.is_done() {
                sink.fail(format!(
                    "timed out after {:.1}s with {} of {} messages",
                    deadline.as_secs_f64(),
                    sink.count(),
                    sink.expected
                ));
                on_expiry();
            }
        });
    }

    fn report(&self, note: Option<String>) -> Result<ChildReport> {
        /// Most ranges of undelivered numbers a report lists.
        const MISSING_RANGES_CAP: usize = 100_000;
        if let Ok(Some(e)) = self.error.lock().map(|e| e.clone()) {
            return Err(Error::new(e));
        }
        let messages = self.count();
        let lost = self.lossy && messages < self.expected;
        if messages != self.expected && !lost {
            return Err(Error::new(format!(
                "counted {messages} messages, expected {}",
                self.expected
            )));
        }
        let start = self.start_ns.load(Ordering::Relaxed);
        let end = self.end_ns.load(Ordering::Acquire).max(start);
        let latency = if self.latency {
            let h = self
                .histogram
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            Some(latency::summarize(&h))
        } else {
            None
        };
        let series = match &self.series {
            Some(s) => {
                let s = s.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if let Some(path) = &self.hdr_e2e {
                    s.write_hlog(path)?;
                }
                Some(s.report())
            }
            None => None,
        };
        let note = match (lost, note) {
            (true, n) => Some(format!(
                "{}lost {} of {} messages",
                n.map(|n| format!("{n}; ")).unwrap_or_default(),
                self.expected - messages,
                self.expected
            )),
            (false, n) => n,
        };
        Ok(ChildReport {
            messages,
            seconds: (end - start) as f64 / 1e9,
            latency,
            note,
            series: series.as_ref().map(|s| s.0.clone()),
            window: series.map(|s| s.1),
            duplicates: self.series.as_ref().map(|s| {
                s.lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .duplicates()
            }),
            reconnects: *self.reconnects.lock().unwrap_or_else(|p| p.into_inner()),
            io: self
                .io
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .map(|io| (io.syscalls, io.completions)),
            missing: self.series.as_ref().and_then(|s| {
                s.lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .missing(self.expected, MISSING_RANGES_CAP)
            }),
        })
    }
}

/// Waits until the server counts a subscriber of the spec's channel (`PUBSUB NUMSUB`),
/// or, for sharded channels on a cluster, of each of them at its primary (`PUBSUB
/// SHARDNUMSUB`), so the publisher's first message is not missed; or until `give_up`.
///
/// # Errors
/// The server cannot be reached, or no subscriber showed up within 30 s.
pub fn wait_subscribed(spec: &ChildSpec, give_up: impl Fn() -> bool) -> Result<()> {
    let targets = if spec.sharded {
        let cluster = crate::cluster::Cluster::open(Some(&spec.url))?;
        spec.queues
            .iter()
            .map(|c| (cluster.node_url(c).to_owned(), "SHARDNUMSUB", c.clone()))
            .collect()
    } else if !spec.queues.is_empty() {
        spec.queues
            .iter()
            .map(|c| (spec.url.clone(), "NUMSUB", c.clone()))
            .collect()
    } else {
        let channel = spec.channel.clone().unwrap_or_default();
        vec![(spec.url.clone(), "NUMSUB", channel)]
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for (url, numsub, channel) in targets {
        let mut conn = crate::conn::RawConn::connect(&url)?;
        loop {
            let reply = conn.command(["PUBSUB", numsub, &channel])?;
            let n = reply
                .as_elements()
                .and_then(|e| e.get(1).and_then(|v| v.as_integer()))
                .unwrap_or(0);
            if n >= 1 || give_up() {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::new(format!(
                    "{channel}: never subscribed within 30 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    Ok(())
}

/// The per-client deadline: the spec's, as a `Duration`.
pub fn deadline(spec: &ChildSpec) -> Duration {
    Duration::from_secs_f64(spec.deadline_secs.max(1.0))
}

/// The message elements of a decoded pop reply — BRPOP `[key, value]`, LMPOP/BLMPOP
/// `[key, [values]]`, or null — as a slice of bulk-string frames.
///
/// # Errors
/// A server error reply, or a reply of another shape.
pub fn pop_values(frame: &ringq_resp::Frame) -> Result<&[ringq_resp::Frame]> {
    use ringq_resp::Frame;
    match frame {
        Frame::Null => Ok(&[]),
        Frame::Array(items) if items.len() == 2 => match &items[1] {
            Frame::BulkString(_) => Ok(&items[1..]),
            Frame::Array(vs) => Ok(vs),
            other => Err(Error::new(format!(
                "unexpected pop reply element: {other:?}"
            ))),
        },
        Frame::SimpleError(m) | Frame::BulkError(m) => Err(Error::new(format!(
            "pop failed: {}",
            String::from_utf8_lossy(m)
        ))),
        other => Err(Error::new(format!("unexpected pop reply: {other:?}"))),
    }
}

/// The payload bytes of bulk-string frames (others are skipped).
pub fn bulk_bytes(values: &[ringq_resp::Frame]) -> impl Iterator<Item = &[u8]> {
    values.iter().filter_map(|v| match v {
        ringq_resp::Frame::BulkString(b) => Some(&b[..]),
        _ => None,
    })
}

/// Block timeout of every blocking pop, in seconds (as the server reads it).
pub const BLOCK_SECS: &str = "1";

/// Appends one blocking pop for `keys`: `BRPOP keys… 1` (single) or
/// `BLMPOP 1 numkeys keys… RIGHT COUNT batch` (batch).
pub fn encode_blocking_pop(
    out: &mut bytes::BytesMut,
    pop: crate::cli::PopMode,
    keys: &[String],
    batch: u32,
) {
    use ringq_resp::CommandWriter;
    match pop {
        crate::cli::PopMode::Single => CommandWriter::new(out, 2 + keys.len())
            .arg("BRPOP")
            .args(keys)
            .arg(BLOCK_SECS)
            .finish(),
        crate::cli::PopMode::Batch => CommandWriter::new(out, 6 + keys.len())
            .arg("BLMPOP")
            .arg(BLOCK_SECS)
            .arg_int(keys.len() as i64)
            .args(keys)
            .arg("RIGHT")
            .arg("COUNT")
            .arg_int(i64::from(batch))
            .finish(),
    }
}

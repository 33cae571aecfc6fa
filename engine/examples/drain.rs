//! Drains list queues from a Redis server and reports throughput and client CPU per
//! message. Until `ringq-bench` lands, this is the engine's end-to-end benchmark.
//!
//! ```text
//! cargo run --release -p ringq --example drain -- redis://127.0.0.1:6379 \
//!     --messages 1000000 --size 16 --queues 1 --pop batch [--workers N]
//! ```
//! Fills the queues first (pipelined LPUSH, not counted), then consumes them all.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringq::{Dispatch, EngineBuilder, Handler, Message, Outcome, PopConsumer, PopStrategy};

struct Args {
    url: String,
    messages: u64,
    size: usize,
    queues: usize,
    batch: u32,
    single: bool,
    shards: usize,
    pipeline: u32,
    workers: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        url: "redis://127.0.0.1:6379".into(),
        messages: 1_000_000,
        size: 16,
        queues: 1,
        batch: 512,
        single: false,
        shards: 1,
        pipeline: 4,
        workers: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{arg} needs a value"));
        match arg.as_str() {
            "--messages" => a.messages = val().parse().expect("--messages N"),
            "--size" => a.size = val().parse().expect("--size BYTES"),
            "--queues" => a.queues = val().parse().expect("--queues N"),
            "--batch" => a.batch = val().parse().expect("--batch N"),
            "--shards" => a.shards = val().parse().expect("--shards N"),
            "--pipeline" => a.pipeline = val().parse().expect("--pipeline N"),
            "--workers" => a.workers = val().parse().expect("--workers N"),
            "--pop" => a.single = val() == "single",
            url if url.starts_with("redis://") || url.starts_with("unix://") => a.url = url.into(),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn cpu_time() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct we own.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr());
        ru.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn fill(url: &str, queues: &[String], per_queue: u64, size: usize) {
    let addr = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:6379");
    let mut s = TcpStream::connect(addr).expect("connect for filling");
    let payload = vec![b'x'; size];
    let mut out = Vec::new();
    let mut expected = 0usize;
    for q in queues {
        ringq_resp::encode_command(&mut out, [&b"DEL"[..], q.as_bytes()]);
        expected += 1;
        let mut left = per_queue;
        while left > 0 {
            let n = left.min(1000);
            let mut w = ringq_resp::CommandWriter::new(&mut out, 2 + n as usize)
                .arg("LPUSH")
                .arg(q);
            for _ in 0..n {
                w = w.arg(&payload);
            }
            w.finish();
            expected += 1;
            left -= n;
            if out.len() > 1 << 20 {
                s.write_all(&out).expect("write");
                out.clear();
            }
        }
    }
    s.write_all(&out).expect("write");
    // Read until every reply arrived (each ends with CRLF; count replies with the codec).
    let mut dec = ringq_resp::Decoder::new();
    let mut buf = bytes::BytesMut::new();
    let mut got = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    while got < expected {
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0, "server closed while filling");
        buf.extend_from_slice(&chunk[..n]);
        while let Some(f) = dec.decode(&mut buf).expect("valid reply") {
            assert!(!f.is_error(), "fill failed: {f:?}");
            got += 1;
        }
    }
}

/// The cheapest realistic handler: acknowledges everything, counting once per batch.
#[derive(Clone)]
struct Counter(Arc<AtomicU64>);

impl Handler for Counter {
    fn handle(&mut self, _m: &Message<'_>) -> Outcome {
        self.0.fetch_add(1, Ordering::Relaxed);
        Outcome::Ack
    }

    fn handle_batch(&mut self, batch: &[Message<'_>], outcomes: &mut Vec<Outcome>) {
        outcomes.resize(batch.len(), Outcome::Ack);
        self.0.fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
}

fn main() -> Result<(), ringq::Error> {
    let a = parse_args();
    let queues: Vec<String> = (0..a.queues).map(|i| format!("ringq:drain:{i}")).collect();
    let per_queue = a.messages / a.queues as u64;
    let total = per_queue * a.queues as u64;
    eprintln!(
        "filling {} queues with {per_queue} messages of {} bytes ...",
        a.queues, a.size
    );
    fill(&a.url, &queues, per_queue, a.size);

    let seen = Arc::new(AtomicU64::new(0));
    let strategy = if a.single {
        PopStrategy::Single
    } else {
        PopStrategy::Adaptive
    };
    let consumer = PopConsumer::new(queues.clone())
        .strategy(strategy)
        .batch(a.batch)
        .pipeline(a.pipeline)
        .block_timeout(Duration::from_millis(100));
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let running = EngineBuilder::new(&a.url)
        .prefetch(a.batch * a.pipeline * 2)
        .shards(a.shards)
        .dispatch(if a.workers > 0 {
            Dispatch::workers(a.workers)
        } else {
            Dispatch::inline()
        })
        .start(consumer, Counter(seen.clone()))?;
    while seen.load(Ordering::Relaxed) < total {
        if running.is_stopping() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let elapsed = t0.elapsed();
    let cpu = cpu_time() - cpu0;
    let stats = running.shutdown()?;
    let n = stats.messages;
    println!(
        "pop={} workers={} messages={n} seconds={:.3} msgs_per_sec={:.0} cpu_us_per_msg={:.3} pops={} features: {}",
        if a.single { "single" } else { "batch" },
        a.workers,
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / n.max(1) as f64,
        stats.pops,
        ringq::probe().map(|f| f.to_string()).unwrap_or_else(|e| e.to_string()),
    );
    assert_eq!(n, total, "every message drained");
    Ok(())
}

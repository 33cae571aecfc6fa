//! What reliable mode costs the server and the process (issue 23): large payloads keep
//! to the byte limit and never travel back to the server; an idle consumer of hundreds
//! of queues costs the server about what pop mode does and sees a new message at once.
//! Figures are printed beside pop mode's, measured in the same test; the assertions are
//! on behaviour (bytes, counts), never on time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringq::{EngineBuilder, Message, Outcome, ReliableConsumer};
use ringq_tests::{wait_until, RedisServer, TestClient};

mod support;
use support::WAIT;

fn info_u64(c: &mut TestClient, section: &str, field: &str) -> u64 {
    c.info_field(section, field)
        .unwrap()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("INFO {section} has no {field}"))
}

/// A client that PINGs the server back to back until stopped: how long another client
/// waits while ringq works. Returns (pings, longest wait).
fn pinger(server: &RedisServer, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, Duration)> {
    let mut c = server.client().unwrap();
    std::thread::spawn(move || {
        let (mut n, mut worst) = (0u64, Duration::ZERO);
        while !stop.load(Ordering::SeqCst) {
            let t = Instant::now();
            c.cmd(["PING"]).unwrap();
            worst = worst.max(t.elapsed());
            n += 1;
            std::thread::sleep(Duration::from_millis(1));
        }
        (n, worst)
    })
}

/// What one drain of `N` payloads of `SIZE` bytes cost, in reliable or pop mode.
struct LargeDrain {
    stats: ringq::Stats,
    took: Duration,
    /// Bytes the server received from ringq during the consume.
    input: u64,
    pings: u64,
    worst_ping: Duration,
}

/// Fills `big` with `n` payloads of `size` bytes and drains it in `mode` with default
/// settings, a pinger beside it.
fn drain_large(server: &RedisServer, mode: &str, n: usize, size: usize) -> LargeDrain {
    let mut c = server.client().unwrap();
    for i in 0..n {
        c.lpush_many("big", [vec![i as u8; size]]).unwrap();
    }
    let input_before = info_u64(&mut c, "stats", "total_net_input_bytes");
    let stop = Arc::new(AtomicBool::new(false));
    let ping = pinger(server, stop.clone());
    let seen = Arc::new(AtomicU64::new(0));
    let count = seen.clone();
    let handler = move |m: &Message<'_>| {
        assert_eq!(m.payload().len(), size);
        count.fetch_add(1, Ordering::SeqCst);
        Outcome::Ack
    };
    let started = Instant::now();
    let b = EngineBuilder::new(server.url());
    let running = match mode {
        "pop" => b.start(ringq::PopConsumer::new(["big"]), handler),
        _ => b.start(ReliableConsumer::new("c1", ["big"]), handler),
    }
    .unwrap();
    assert!(wait_until(WAIT, || seen.load(Ordering::SeqCst) == n as u64));
    let took = started.elapsed();
    let stats = running.shutdown().unwrap();
    stop.store(true, Ordering::SeqCst);
    let (pings, worst_ping) = ping.join().unwrap();
    let input = info_u64(&mut c, "stats", "total_net_input_bytes") - input_before;
    // What the pinger sent (`*1\r\n$4\r\nPING\r\n`) and this client's INFO are not ringq's.
    let input = input.saturating_sub(pings * 14 + 64);
    assert_eq!(c.llen("big").unwrap(), 0);
    LargeDrain {
        stats,
        took,
        input,
        pings,
        worst_ping,
    }
}

/// 40 payloads of 25 MiB with default settings: in flight within the 64 MiB byte limit
/// plus one message (one lane), and the server receives almost nothing during the
/// consume — acks name positions, not payloads (ringq 0.1 sent every acked element back:
/// 1 GB here). Pop mode drains the same beside it, for comparison.
#[test]
fn large_payloads_keep_to_the_byte_limit_and_never_travel_back() {
    const SIZE: usize = 25 << 20;
    const N: usize = 40;
    const LIMIT: u64 = 64 << 20;
    let server = RedisServer::start().unwrap();
    let r = drain_large(&server, "reliable", N, SIZE);
    let p = drain_large(&server, "pop", N, SIZE);
    for (mode, d) in [("reliable", &r), ("pop", &p)] {
        println!(
            "{N} × 25 MiB, {mode}: drained in {:?}; most in flight {:.1} MiB (limit {} MiB); \
             server input from ringq during the consume {} B; another client's longest PING \
             {:?} over {} pings",
            d.took,
            d.stats.max_in_flight_bytes as f64 / (1 << 20) as f64,
            LIMIT >> 20,
            d.input,
            d.worst_ping,
            d.pings
        );
    }
    assert_eq!(r.stats.acked, N as u64);
    assert!(
        r.stats.max_in_flight_bytes <= LIMIT + SIZE as u64,
        "in flight {} B with a limit of {LIMIT} B and messages of {SIZE} B",
        r.stats.max_in_flight_bytes
    );
    assert!(
        r.stats.max_in_flight_bytes >= SIZE as u64,
        "nothing was measured"
    );
    assert!(
        r.input < 1 << 20,
        "the server received {} B from ringq during the consume: payloads travelled back",
        r.input
    );
    let mut c = server.client().unwrap();
    assert_eq!(c.llen("{big}:leased:c1").unwrap(), 0);
}

/// Every command the server ran (INFO commandstats, calls inside scripts included), by
/// command.
fn command_calls(c: &mut TestClient) -> std::collections::HashMap<String, u64> {
    let text = c.info("commandstats").unwrap();
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|f| f.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

/// One idle consumer of `queues` in `mode` on its own server for `idle`: the commands
/// the server ran meanwhile (by command, this test's own INFO calls left out), then the
/// time from an LPUSH to the last queue to the handler seeing it.
fn idle_cost(
    mode: &'static str,
    queues: Vec<String>,
    idle: Duration,
) -> (std::collections::HashMap<String, u64>, Duration) {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    let seen: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let at = seen.clone();
    let handler = move |_: &Message<'_>| {
        at.lock().unwrap().get_or_insert_with(Instant::now);
        Outcome::Ack
    };
    let b = EngineBuilder::new(server.url()).pin_cores(false);
    let running = match mode {
        "pop" => b.start(ringq::PopConsumer::new(queues.clone()), handler),
        _ => b.start(ReliableConsumer::new("c1", queues.clone()), handler),
    }
    .unwrap();
    // Settled: connected, recovered, dry.
    std::thread::sleep(Duration::from_secs(2));
    let before = command_calls(&mut c);
    std::thread::sleep(idle);
    let after = command_calls(&mut c);
    let mut ran: std::collections::HashMap<String, u64> = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(k, v)| *v > 0 && k != "info")
        .collect();
    ran.retain(|_, v| *v > 0);
    let pushed = Instant::now();
    c.lpush_many(queues.last().unwrap(), ["wake"]).unwrap();
    assert!(
        wait_until(WAIT, || seen.lock().unwrap().is_some()),
        "{mode}: the message was never seen"
    );
    let delay = seen.lock().unwrap().unwrap() - pushed;
    running.shutdown().unwrap();
    (ran, delay)
}

/// An idle reliable consumer of 500 queues sends the server about what an idle pop-mode
/// consumer does, and sees a message pushed to the last queue at once: its lanes, once
/// dry, watch every key through the server's key tracking instead of polling them (ringq
/// 0.1 leased every 100 ms: about 7 900 commands a second, counting those inside its
/// scripts, and a median wait of 106 ms). Both run side by side for 30 s.
#[test]
fn an_idle_consumer_of_many_queues_is_cheap_and_wakes_at_once() {
    const QUEUES: usize = 500;
    let idle = Duration::from_secs(30);
    let queues: Vec<String> = (0..QUEUES).map(|i| format!("idle{i}")).collect();
    let pop = {
        let q = queues.clone();
        std::thread::spawn(move || idle_cost("pop", q, idle))
    };
    let (reliable, r_delay) = idle_cost("reliable", queues, idle);
    let (pop, p_delay) = pop.join().unwrap();
    let per_s = |m: &std::collections::HashMap<String, u64>| {
        m.values().sum::<u64>() as f64 / idle.as_secs_f64()
    };
    println!(
        "idle over {QUEUES} queues for {idle:?}: reliable {:.1} commands/s {reliable:?}, woke \
         {r_delay:?} after a push; pop {:.1} commands/s {pop:?}, woke {p_delay:?} after a push",
        per_s(&reliable),
        per_s(&pop)
    );
    // Idle, reliable mode neither leases nor blocks on a queue: no RPOP (inside the lease
    // script) or BLMOVE ran; what runs is liveness (heartbeats, sweeps, a check of
    // retry sets per sweep), a few hundred calls a second at most for 500 queues.
    for polling in ["rpop", "blmove", "exists"] {
        assert_eq!(
            reliable.get(polling),
            None,
            "an idle reliable lane ran {polling}: {reliable:?}"
        );
    }
    let liveness: u64 = reliable.values().sum();
    assert!(
        (liveness as f64) < QUEUES as f64 * idle.as_secs_f64(),
        "more than one call per queue per second while idle: {reliable:?}"
    );
}

//! Worker dispatch against a real redis-server: loss, duplication, order, outcomes,
//! backpressure, shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use ringq::{Dispatch, EngineBuilder, ErrorKind, Handler, Message, Outcome, PopConsumer};
use ringq_tests::{wait_until, RedisServer};

const WAIT: Duration = Duration::from_secs(120);

fn index(m: &Message<'_>) -> usize {
    std::str::from_utf8(m.payload())
        .unwrap()
        .rsplit('-')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_million_messages_through_two_workers_none_lost_none_duplicated() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    const N: usize = 1_000_000;
    c.lpush_many("big", (0..N).map(|i| format!("m-{i}")))
        .unwrap();
    let seen: Arc<Vec<AtomicU64>> = Arc::new((0..N).map(|_| AtomicU64::new(0)).collect());
    let count = Arc::new(AtomicU64::new(0));
    let (s2, c2) = (seen.clone(), count.clone());
    let handler = move |m: &Message<'_>| {
        s2[index(m)].fetch_add(1, Ordering::Relaxed);
        c2.fetch_add(1, Ordering::Relaxed);
        Outcome::Ack
    };
    let running = EngineBuilder::new(server.url())
        .prefetch(2048)
        .pin_cores(false)
        .dispatch(Dispatch::workers(2).batch(64))
        .start(PopConsumer::new(["big"]).batch(256), handler)
        .unwrap();
    assert!(
        wait_until(WAIT, || count.load(Ordering::Relaxed) >= N as u64),
        "handled {}",
        count.load(Ordering::Relaxed)
    );
    let stats = running.shutdown().unwrap();
    assert_eq!(stats.messages, N as u64);
    assert_eq!(stats.acked, N as u64);
    let missing = seen
        .iter()
        .filter(|s| s.load(Ordering::Relaxed) == 0)
        .count();
    let doubled = seen
        .iter()
        .filter(|s| s.load(Ordering::Relaxed) > 1)
        .count();
    assert_eq!(
        (missing, doubled),
        (0, 0),
        "lost {missing}, duplicated {doubled}"
    );
    assert!(
        stats.latency_ns.len() >= N as u64,
        "pop-to-handler latency recorded per message"
    );
}

#[test]
fn orderly_dispatch_keeps_each_queue_in_order_across_four_workers() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    let queues: Vec<String> = (0..8).map(|q| format!("oq{q}")).collect();
    for q in &queues {
        c.lpush_many(q, (0..5_000).map(|i| format!("{q}-{i}")))
            .unwrap();
    }
    let last: Arc<Mutex<HashMap<String, i64>>> = Arc::new(Mutex::new(HashMap::new()));
    let violations = Arc::new(AtomicU64::new(0));
    let count = Arc::new(AtomicU64::new(0));
    let threads: Arc<Mutex<HashMap<String, std::thread::ThreadId>>> = Arc::default();
    let (l2, v2, c2, t2) = (
        last.clone(),
        violations.clone(),
        count.clone(),
        threads.clone(),
    );
    let handler = move |m: &Message<'_>| {
        let q = String::from_utf8_lossy(m.queue()).into_owned();
        let i = index(m) as i64;
        let mut last = l2.lock().unwrap();
        let prev = last.insert(q.clone(), i).unwrap_or(-1);
        if i <= prev {
            v2.fetch_add(1, Ordering::Relaxed);
        }
        let me = std::thread::current().id();
        if *t2.lock().unwrap().entry(q).or_insert(me) != me {
            v2.fetch_add(1_000_000, Ordering::Relaxed);
        }
        c2.fetch_add(1, Ordering::Relaxed);
        Outcome::Ack
    };
    let running = EngineBuilder::new(server.url())
        .shards(2)
        .connections_per_shard(2)
        .pin_cores(false)
        .dispatch(Dispatch::orderly(4))
        .start(PopConsumer::new(queues.clone()).batch(64), handler)
        .unwrap();
    assert!(wait_until(WAIT, || count.load(Ordering::Relaxed) >= 40_000));
    running.shutdown().unwrap();
    assert_eq!(
        violations.load(Ordering::Relaxed),
        0,
        "a queue went out of order or changed worker"
    );
    let threads = threads.lock().unwrap();
    let distinct: std::collections::HashSet<_> = threads.values().collect();
    assert!(
        distinct.len() > 1,
        "8 queues should spread over several workers"
    );
}

#[test]
fn orderly_retry_blocks_the_queue_and_retries_locally() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    c.lpush_many("rq", (0..20).map(|i| format!("r-{i}")))
        .unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let o2 = order.clone();
    // Message 5 fails twice before it succeeds.
    let fails = Arc::new(AtomicU64::new(0));
    let handler = move |m: &Message<'_>| {
        let i = index(m);
        o2.lock().unwrap().push(i);
        if i == 5 && fails.fetch_add(1, Ordering::Relaxed) < 2 {
            return Outcome::Retry;
        }
        Outcome::Ack
    };
    let running = EngineBuilder::new(server.url())
        .pin_cores(false)
        .dispatch(Dispatch::orderly(2).suspend(Duration::from_millis(5), 3))
        .start(PopConsumer::new(["rq"]).batch(8), handler)
        .unwrap();
    assert!(wait_until(WAIT, || order.lock().unwrap().len() >= 22));
    let stats = running.shutdown().unwrap();
    let order = order.lock().unwrap().clone();
    let mut expected: Vec<usize> = (0..=5).collect();
    expected.extend([5, 5]);
    expected.extend(6..20);
    assert_eq!(order, expected, "5 is retried in place before 6 runs");
    assert_eq!((stats.acked, stats.retried), (20, 0));
}

#[derive(Clone)]
struct Mixed;

impl Handler for Mixed {
    fn handle(&mut self, _m: &Message<'_>) -> Outcome {
        unreachable!("batch handler only")
    }
    fn handle_batch(&mut self, batch: &[Message<'_>], out: &mut Vec<Outcome>) {
        for m in batch {
            let i = index(m);
            out.push(if i % 5 == 0 {
                Outcome::Dead
            } else if i % 2 == 1 {
                Outcome::Retry
            } else {
                Outcome::Ack
            });
        }
    }
}

#[test]
fn partial_batch_outcomes_are_counted_exactly() {
    for dispatch in [Dispatch::inline(), Dispatch::workers(2).batch(7)] {
        let server = RedisServer::start().unwrap();
        let mut c = server.client().unwrap();
        c.lpush_many("mix", (0..1000).map(|i| format!("x-{i}")))
            .unwrap();
        let running = EngineBuilder::new(server.url())
            .pin_cores(false)
            .dispatch(dispatch.clone())
            .start(PopConsumer::new(["mix"]).batch(50), Mixed)
            .unwrap();
        assert!(wait_until(WAIT, || running.stats().messages >= 1000));
        let stats = running.shutdown().unwrap();
        let dead = (0..1000).filter(|i| i % 5 == 0).count() as u64;
        let retry = (0..1000).filter(|i| i % 5 != 0 && i % 2 == 1).count() as u64;
        assert_eq!(stats.dead, dead, "{dispatch:?}");
        assert_eq!(stats.retried, retry, "{dispatch:?}");
        assert_eq!(stats.acked, 1000 - dead - retry, "{dispatch:?}");
    }
}

/// Blocks every handler call until released.
#[derive(Clone)]
struct Gate(Arc<(Mutex<bool>, Condvar)>, Arc<AtomicU64>);

impl Handler for Gate {
    fn handle(&mut self, _m: &Message<'_>) -> Outcome {
        let (lock, cv) = &*self.0;
        let mut open = lock.lock().unwrap();
        while !*open {
            open = cv.wait(open).unwrap();
        }
        self.1.fetch_add(1, Ordering::Relaxed);
        Outcome::Ack
    }
}

#[test]
fn stalled_workers_pause_fetching_within_the_prefetch_limit_then_resume() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    c.lpush_many("stall", (0..10_000).map(|i| format!("s-{i}")))
        .unwrap();
    let gate = Gate(
        Arc::new((Mutex::new(false), Condvar::new())),
        Arc::new(AtomicU64::new(0)),
    );
    let running = EngineBuilder::new(server.url())
        .prefetch(64)
        .pin_cores(false)
        .dispatch(Dispatch::workers(2))
        .start(PopConsumer::new(["stall"]).batch(16), gate.clone())
        .unwrap();
    // Both workers are stuck in their first message; the shard fills its credit and stops.
    assert!(wait_until(WAIT, || c.llen("stall").unwrap() == 10_000 - 64));
    // The consumer holds exactly its prefetch and asks for nothing more.
    for _ in 0..20 {
        assert_eq!(
            c.llen("stall").unwrap(),
            10_000 - 64,
            "fetched past the prefetch limit while stalled"
        );
        std::thread::yield_now();
    }
    assert!(running.stats().max_in_flight <= 64);
    {
        let (lock, cv) = &*gate.0;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }
    assert!(wait_until(WAIT, || gate.1.load(Ordering::Relaxed) >= 10_000));
    let stats = running.shutdown().unwrap();
    assert_eq!(stats.messages, 10_000);
    assert!(stats.max_in_flight <= 64, "{}", stats.max_in_flight);
}

#[test]
fn shutdown_hands_every_fetched_message_to_a_worker() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    c.lpush_many("sd", (0..5_000).map(|i| format!("d-{i}")))
        .unwrap();
    let handled = Arc::new(AtomicU64::new(0));
    let h2 = handled.clone();
    let handler = move |_m: &Message<'_>| {
        std::thread::sleep(Duration::from_micros(200));
        h2.fetch_add(1, Ordering::Relaxed);
        Outcome::Ack
    };
    let running = EngineBuilder::new(server.url())
        .prefetch(256)
        .pin_cores(false)
        .dispatch(Dispatch::workers(2))
        .start(PopConsumer::new(["sd"]).batch(32), handler)
        .unwrap();
    assert!(wait_until(WAIT, || handled.load(Ordering::Relaxed) >= 500));
    let stats = running.shutdown().unwrap();
    let left = c.llen("sd").unwrap() as u64;
    assert!(left > 0, "shut down before the queue was drained");
    assert_eq!(
        handled.load(Ordering::Relaxed) + left,
        5_000,
        "a fetched message was dropped"
    );
    assert_eq!(stats.messages, handled.load(Ordering::Relaxed));
}

#[test]
fn a_panicking_worker_handler_stops_the_engine_with_an_error() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    c.lpush_many("boom", ["x-1"]).unwrap();
    let running = EngineBuilder::new(server.url())
        .pin_cores(false)
        .dispatch(Dispatch::workers(1))
        .start(PopConsumer::new(["boom"]), |_m: &Message<'_>| -> Outcome {
            panic!("handler bug")
        })
        .unwrap();
    let err = running.wait().expect_err("a panic must surface");
    assert_eq!(err.kind(), ErrorKind::Handler, "{err}");
}

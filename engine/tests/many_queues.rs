//! Pop mode over 1000 queues (issue 13): while there is backlog a pop names only a few
//! queues known to hold messages, yet every promise of the mode holds — rotation
//! fairness, weights, priority levels, per-queue order, the `limit` budget — and a queue
//! that fills while others drain is noticed within a block timeout.

use std::time::Duration;

use ringq::{EngineBuilder, PopConsumer, Queue, Running};
use ringq_tests::{wait_until, RedisServer};

mod support;
use support::{blocked_clients as blocked, payloads, WAIT};

const QUEUES: usize = 1000;

/// Every delivered message as (queue, payload, priority), in handler-call order.
type Log = support::Recorder<(String, String, u8)>;

fn names() -> Vec<String> {
    (0..QUEUES).map(|i| format!("mq{i}")).collect()
}

fn start(server: &RedisServer, consumer: PopConsumer, log: &Log, pause: Duration) -> Running {
    EngineBuilder::new(server.url())
        .pin_cores(false)
        .start(consumer, log.with_pause(pause))
        .expect("engine starts")
}

/// As `flooded_queue_does_not_starve_a_small_one`, among 998 empty queues.
#[test]
fn a_flooded_queue_does_not_starve_a_small_one_among_1000() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    let names = names();
    c.lpush_many(&names[500], payloads("A", 10_000)).unwrap();
    c.lpush_many(&names[900], payloads("B", 100)).unwrap();
    let log = Log::default();
    let running = start(
        &server,
        PopConsumer::new(names.clone()).batch(10),
        &log,
        Duration::ZERO,
    );
    assert!(wait_until(WAIT, || log.len() >= 10_100));
    running.shutdown().unwrap();
    let log = log.snapshot();
    let last_b = log
        .iter()
        .rposition(|(q, _, _)| q == &names[900])
        .expect("B delivered");
    let a_before = log[..last_b]
        .iter()
        .filter(|(q, _, _)| q == &names[500])
        .count();
    assert!(
        a_before < 5_000,
        "all of B before A is half drained; A had {a_before}"
    );
}

/// As `weights_give_a_queue_consecutive_turns`, among 998 empty queues.
#[test]
fn weights_give_consecutive_turns_among_1000() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    let names = names();
    c.lpush_many(&names[5], payloads("A", 300)).unwrap();
    c.lpush_many(&names[7], payloads("B", 300)).unwrap();
    let queues: Vec<Queue> = names
        .iter()
        .enumerate()
        .map(|(i, n)| Queue::from(n.as_str()).weight(if i == 5 { 3 } else { 1 }))
        .collect();
    let log = Log::default();
    let running = start(
        &server,
        PopConsumer::new(queues).batch(10).pipeline(1),
        &log,
        Duration::ZERO,
    );
    assert!(wait_until(WAIT, || log.len() >= 200));
    running.shutdown().unwrap();
    let log = log.snapshot();
    let first_200_a = log[..200].iter().filter(|(q, _, _)| q == &names[5]).count();
    assert_eq!(
        first_200_a, 150,
        "weight 3 gives A three turns for each of B's"
    );
}

/// As `higher_priority_levels_are_served_first`, the prioritised queue among 999 others.
#[test]
fn priority_levels_are_served_highest_first_among_1000() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    let names = names();
    let jobs = Queue::new(names[321].clone()).priorities([0, 5, 9]);
    for p in [0u8, 5, 9] {
        c.lpush_many(jobs.key_for_priority(p), payloads(&format!("p{p}"), 200))
            .unwrap();
    }
    let queues: Vec<Queue> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            if i == 321 {
                jobs.clone()
            } else {
                Queue::from(n.as_str())
            }
        })
        .collect();
    let log = Log::default();
    let running = start(
        &server,
        PopConsumer::new(queues).batch(16),
        &log,
        Duration::ZERO,
    );
    assert!(wait_until(WAIT, || log.len() >= 600));
    running.shutdown().unwrap();
    let prios: Vec<u8> = log.snapshot().iter().map(|m| m.2).collect();
    assert_eq!(prios.len(), 600);
    assert!(
        prios.windows(2).all(|w| w[0] >= w[1]),
        "priorities never rise"
    );
    assert_eq!((prios[0], prios[599]), (9, 0));
}

/// Every queue's messages arrive once and in order, with messages in 100 of the 1000.
#[test]
fn every_queue_drains_in_order_among_1000() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    let names = names();
    for n in names.iter().step_by(10) {
        c.lpush_many(n, payloads(n, 50)).unwrap();
    }
    let log = Log::default();
    let running = start(
        &server,
        PopConsumer::new(names.clone()).batch(8),
        &log,
        Duration::ZERO,
    );
    assert!(wait_until(WAIT, || log.len() >= 5_000));
    running.shutdown().unwrap();
    let log = log.snapshot();
    assert_eq!(log.len(), 5_000);
    for n in names.iter().step_by(10) {
        let got: Vec<&String> = log.iter().filter(|m| &m.0 == n).map(|m| &m.1).collect();
        let want = payloads(n, 50);
        assert_eq!(got, want.iter().collect::<Vec<_>>(), "{n} in order");
    }
}

/// `limit(N)` over 1000 queues pops exactly N; the rest stay queued.
#[test]
fn a_limit_over_1000_queues_pops_exactly_n() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    let names = names();
    for n in names.iter().step_by(3) {
        c.lpush_many(n, payloads(n, 5)).unwrap();
    }
    let total = names.iter().step_by(3).count() * 5;
    let log = Log::default();
    let stats = EngineBuilder::new(server.url())
        .pin_cores(false)
        .limit(777)
        .start(
            PopConsumer::new(names.clone()).batch(32).pipeline(4),
            log.clone(),
        )
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!(stats.messages, 777);
    assert_eq!(log.len(), 777);
    let left: i64 = names.iter().map(|n| c.llen(n).unwrap()).sum();
    assert_eq!(
        left as usize,
        total - 777,
        "nothing beyond the limit left the server"
    );
}

/// Messages only in queues 17 and 999: the first drains, the consumer waits blocked on
/// all 1000, then the second drains.
#[test]
fn queues_17_and_999_drain_with_a_blocking_wait_between() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    let names = names();
    c.lpush_many(&names[17], payloads("a", 300)).unwrap();
    let log = Log::default();
    let running = start(
        &server,
        PopConsumer::new(names.clone()).batch(64),
        &log,
        Duration::ZERO,
    );
    assert!(wait_until(WAIT, || log.len() == 300));
    assert!(
        wait_until(WAIT, || blocked(&mut c) == 1),
        "waits blocked once dry"
    );
    c.lpush_many(&names[999], payloads("b", 300)).unwrap();
    assert!(wait_until(WAIT, || log.len() == 600), "got {}", log.len());
    running.shutdown().unwrap();
    let log = log.snapshot();
    assert!(log[..300].iter().all(|m| m.0 == names[17]));
    assert!(log[300..].iter().all(|m| m.0 == names[999]));
}

/// A queue empty at start that fills while another is being drained is served while
/// that drain goes on (the periodic check of the queues not known to hold messages, once
/// per block timeout), not only once the other queue runs dry.
#[test]
fn a_queue_that_fills_mid_drain_is_served_before_the_drain_ends() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    let names = names();
    c.lpush_many(&names[0], payloads("bulk", 40_000)).unwrap();
    let log = Log::default();
    // ~100 µs per message: the bulk queue takes several seconds to drain.
    let running = start(
        &server,
        PopConsumer::new(names.clone())
            .batch(16)
            .block_timeout(Duration::from_millis(200)),
        &log,
        Duration::from_micros(100),
    );
    assert!(wait_until(WAIT, || log.len() >= 1_000));
    c.lpush_many(&names[500], ["late"]).unwrap();
    assert!(
        wait_until(WAIT, || log.snapshot().iter().any(|m| m.0 == names[500])),
        "the late queue was never served"
    );
    running.shutdown().unwrap();
    let left = c.llen(&names[0]).unwrap();
    assert!(
        left > 0,
        "served while the bulk queue still had {left} waiting (it must not be 0)"
    );
}

/// Many quiet queues filling at once while another is drained are all noticed soon: each
/// check that finds one checks again at once, so they do not wait a block timeout each.
#[test]
fn many_queues_filling_mid_drain_are_noticed_together() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    let names = names();
    c.lpush_many(&names[0], payloads("bulk", 40_000)).unwrap();
    let log = Log::default();
    let running = start(
        &server,
        PopConsumer::new(names.clone())
            .batch(16)
            .block_timeout(Duration::from_millis(500)),
        &log,
        Duration::from_micros(100),
    );
    assert!(wait_until(WAIT, || log.len() >= 1_000));
    for n in names.iter().skip(100).step_by(20) {
        c.lpush_many(n, ["late"]).unwrap();
    }
    let late = names.iter().skip(100).step_by(20).count();
    assert!(wait_until(WAIT, || {
        log.snapshot().iter().filter(|m| m.1 == "late").count() == late
    }));
    running.shutdown().unwrap();
    // 45 queues at one check per block timeout would take 22 s; the bulk queue drains
    // in about 4 s, so it still has backlog only if they were found together.
    assert!(
        c.llen(&names[0]).unwrap() > 0,
        "all {late} found while the bulk queue drained"
    );
}

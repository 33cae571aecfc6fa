//! Pop mode under the faults and knob edges of issue 14 (FAULTS.md F5, F7, F21), against
//! real redis-servers: every connection can always wait on its queues, the byte limit
//! holds, a stalled server loses no pipeline of pops when it resumes, a failover does not
//! end the consumer, and reconnects follow a host name to its new address.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringq::{
    Dispatch, EngineBuilder, ErrorKind, Event, Message, Outcome, PopConsumer, PopStrategy, Running,
};
use ringq_tests::{wait_until, RedisServer};

mod support;
use support::{wait_blocked, WAIT};

/// Every delivered payload, in handler-call order.
type Log = support::Recorder<String>;

fn start(
    engine: EngineBuilder,
    shards: usize,
    conns: usize,
    consumer: PopConsumer,
    log: &Log,
) -> Running {
    engine
        .shards(shards)
        .connections_per_shard(conns)
        .pin_cores(false)
        .start(consumer, log.clone())
        .expect("engine starts")
}

/// The reproductions of issue 14 §1: with blocking pops holding their credit, connections
/// past about prefetch / batch never sent a pop and their queues were never served.
#[test]
fn every_connection_waits_on_its_queues_whatever_the_prefetch_batch_and_shards() {
    // (shards, connections per shard, queues, prefetch)
    for (shards, conns, queues, prefetch) in [(1, 2, 2, 128), (1, 9, 9, 1024), (4, 3, 12, 1024)] {
        let server = RedisServer::start().unwrap();
        let mut c = server.client().unwrap();
        let names: Vec<String> = (0..queues).map(|q| format!("sq{q}")).collect();
        let log = Log::default();
        let running = start(
            EngineBuilder::new(server.url()).prefetch(prefetch),
            shards,
            conns,
            PopConsumer::new(names.iter().map(String::as_str)),
            &log,
        );
        wait_blocked(&mut c, shards * conns);
        for name in &names {
            c.lpush_many(name, [format!("{name}-only")]).unwrap();
        }
        // A backlog in the last queue drains too.
        let last = names.last().unwrap();
        let backlog: Vec<String> = (0..10_000).map(|i| format!("{last}-{i}")).collect();
        c.lpush_many(last, &backlog).unwrap();
        let want = queues + backlog.len();
        assert!(
            wait_until(WAIT, || log.len() == want),
            "{shards} shard(s) × {conns} connections, prefetch {prefetch}: {} of {want} consumed; \
             left: {:?}",
            log.len(),
            names
                .iter()
                .map(|n| (n.clone(), c.llen(n).unwrap()))
                .collect::<Vec<_>>()
        );
        let stats = running.shutdown().unwrap();
        assert_eq!(stats.messages, want as u64);
        let got: HashSet<String> = log.snapshot().into_iter().collect();
        for name in &names {
            assert!(
                got.contains(&format!("{name}-only")),
                "{name} was never served"
            );
        }
    }
}

/// `--count 1000 --connections 9`, idle, then 1000 pushed to the 9th queue.
#[test]
fn a_limit_over_nine_idle_connections_is_met_from_the_ninth_queue() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    let names: Vec<String> = (0..9).map(|q| format!("q{q}")).collect();
    let log = Log::default();
    let running = start(
        EngineBuilder::new(server.url()).limit(1000),
        1,
        9,
        PopConsumer::new(names.iter().map(String::as_str)),
        &log,
    );
    wait_blocked(&mut c, 9);
    let items: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
    c.lpush_many("q8", &items).unwrap();
    let stats = running.wait().unwrap();
    assert_eq!(stats.messages, 1000);
    assert_eq!(log.snapshot(), items, "every message, in push order");
    assert_eq!(c.llen("q8").unwrap(), 0);
}

/// 2000 queues over 2000 connections: every one blocks in its own pop, and a message in
/// the last queue is taken at once (with the prefetch at least the connection count).
#[test]
fn two_thousand_connections_each_wait_on_their_own_queue() {
    let server = RedisServer::builder()
        .arg("--maxclients", "4000")
        .start()
        .unwrap();
    let mut c = server.client().unwrap();
    let names: Vec<String> = (0..2000).map(|q| format!("k{q}")).collect();
    let log = Log::default();
    let running = start(
        EngineBuilder::new(server.url()).prefetch(2000),
        1,
        2000,
        // Blocking pops of up to 128 (the default batch) each: before issue 14 the first
        // 15 connections held all 2000 of credit and the rest never sent a pop.
        PopConsumer::new(names.iter().map(String::as_str)),
        &log,
    );
    wait_blocked(&mut c, 2000);
    c.lpush_many("k1999", ["last"]).unwrap();
    assert!(
        wait_until(WAIT, || log.len() == 1),
        "the last queue was never served"
    );
    let stats = running.shutdown().unwrap();
    assert_eq!(stats.messages, 1);
    assert_eq!(log.snapshot(), ["last"]);
}

#[test]
fn a_prefetch_below_the_connection_count_is_refused_at_start_naming_the_fix() {
    let server = RedisServer::start().unwrap();
    let names: Vec<String> = (0..10).map(|q| format!("q{q}")).collect();
    let err = EngineBuilder::new(server.url())
        .connections_per_shard(10)
        .pin_cores(false)
        .prefetch(5)
        .start(
            PopConsumer::new(names.iter().map(String::as_str)),
            |_: &Message<'_>| Outcome::Ack,
        )
        .err()
        .expect("prefetch 5 cannot give 10 connections credit each");
    assert_eq!(err.kind(), ErrorKind::Config);
    let text = err.to_string();
    assert!(
        text.contains("prefetch 5 is below the 10 connections"),
        "{text}"
    );
    assert!(text.contains("Raise the prefetch to at least 10"), "{text}");
}

/// Issue 14 §2: large payloads. Memory must follow the byte limit, not batch × size.
#[test]
fn the_byte_limit_holds_within_one_message_for_large_payloads() {
    const SIZE: usize = 4 << 20;
    const LIMIT: u64 = 10 << 20;
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    for i in 0..40u8 {
        c.lpush_many("big", [vec![i; SIZE]]).unwrap();
    }
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    // On a worker, slowly: messages are held (and count against the limit) until handled.
    let handler = move |m: &Message<'_>| {
        assert_eq!(m.payload().len(), SIZE);
        std::thread::sleep(Duration::from_millis(5));
        count.fetch_add(1, Ordering::SeqCst);
        Outcome::Ack
    };
    let running = EngineBuilder::new(server.url())
        .pin_cores(false)
        .dispatch(Dispatch::workers(1))
        .prefetch_bytes(LIMIT)
        .start(PopConsumer::new(["big"]).batch(128), handler)
        .unwrap();
    assert!(wait_until(WAIT, || seen.load(Ordering::SeqCst) == 40));
    let stats = running.shutdown().unwrap();
    assert_eq!(stats.messages, 40);
    assert!(
        stats.max_in_flight_bytes <= LIMIT + SIZE as u64,
        "in-flight bytes reached {} with a limit of {LIMIT} and messages of {SIZE}",
        stats.max_in_flight_bytes
    );
    assert!(
        stats.max_in_flight_bytes >= LIMIT,
        "the limit was never reached ({}), so the test proves nothing",
        stats.max_in_flight_bytes
    );
}

/// Freezes the server `times` times for `pause` each while a drain is under way, then
/// checks that pushed = delivered + left on the server, with no duplicate and each
/// queue in order. Before issue 14 the pops written to the frozen server ran when it
/// resumed, and their replies went to a closed socket.
fn freeze_during_drain(strategy: PopStrategy, dispatch: Dispatch) {
    const TOTAL: usize = 60_000;
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    let items: Vec<String> = (0..TOTAL).map(|i| format!("{i:06}")).collect();
    c.lpush_many("drain", &items).unwrap();
    let log = Log::default();
    // Slow enough that the drain outlasts three freezes.
    let handler = log.with_pause(Duration::from_micros(40));
    let running = EngineBuilder::new(server.url())
        .pin_cores(false)
        .dispatch(dispatch)
        .connect_timeout(Duration::from_millis(400))
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .reply_grace(Duration::from_millis(200))
        .reply_timeout(Duration::from_millis(300))
        .start(
            PopConsumer::new(["drain"])
                .strategy(strategy)
                .batch(50)
                .pipeline(3)
                .block_timeout(Duration::from_millis(100)),
            handler,
        )
        .unwrap();
    for round in 1..=3u64 {
        let before = log.len();
        assert!(
            wait_until(WAIT, || log.len() > before + 500),
            "no progress before freeze {round}"
        );
        server.freeze().unwrap();
        // Longer than every deadline: the connection is retired, a fresh one tries.
        assert!(
            wait_until(WAIT, || running.stats().stalls >= round),
            "freeze {round} was not noticed"
        );
        std::thread::sleep(Duration::from_millis(600));
        server.thaw().unwrap();
    }
    let left_after_faults = c.llen("drain").unwrap();
    assert!(
        left_after_faults > 0,
        "the drain ended before the last freeze was over: the test proves nothing"
    );
    assert!(
        wait_until(WAIT, || c.llen("drain").unwrap() == 0 && log.len() >= TOTAL),
        "drain did not finish: {} delivered, {} left",
        log.len(),
        c.llen("drain").unwrap()
    );
    let stats = running.shutdown().unwrap();
    let got = log.snapshot();
    let distinct: HashSet<&String> = got.iter().collect();
    assert_eq!(distinct.len(), got.len(), "duplicates delivered");
    assert_eq!(
        got.len(),
        TOTAL,
        "lost: {} (possibly_lost {})",
        TOTAL - got.len(),
        stats.possibly_lost
    );
    assert_eq!(got, items, "each queue in push order, across the stalls");
    assert!(stats.stalls >= 3);
    assert!(
        stats.late_messages > 0,
        "no late reply was delivered: the freezes never caught a pop in flight"
    );
}

#[test]
fn a_stalled_server_loses_no_pipelined_lmpop_when_it_resumes() {
    freeze_during_drain(PopStrategy::Adaptive, Dispatch::inline());
}

#[test]
fn a_stalled_server_loses_no_pipelined_brpop_when_it_resumes() {
    freeze_during_drain(PopStrategy::Single, Dispatch::inline());
}

#[test]
fn a_stalled_server_loses_no_blmpop_handed_to_orderly_workers() {
    freeze_during_drain(PopStrategy::BlockingBatch, Dispatch::orderly(2));
}

/// Issue 14 §5 (F7): `REPLICAOF` on the consumed server — what a failover does to the old
/// master — then `REPLICAOF NO ONE`. The blocked pop gets `-UNBLOCKED`, the next ones
/// `-READONLY`; the consumer must warn, reconnect with backoff, and consume again once the
/// server is a primary.
#[test]
fn a_role_swap_does_not_end_the_consumer() {
    let primary = RedisServer::start().unwrap();
    let other = RedisServer::start().unwrap();
    let mut c = primary.client().unwrap();
    let log = Log::default();
    let running = EngineBuilder::new(primary.url())
        .pin_cores(false)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .start(PopConsumer::new(["jobs"]), log.clone())
        .unwrap();
    c.lpush_many("jobs", ["before"]).unwrap();
    assert!(wait_until(WAIT, || log.len() == 1));
    let reconnects = running.stats().reconnects;
    let port = other.port().to_string();
    c.cmd(["REPLICAOF", "127.0.0.1", port.as_str()]).unwrap();
    assert!(
        wait_until(WAIT, || c
            .info_field("replication", "master_link_status")
            .unwrap()
            .as_deref()
            == Some("up")),
        "the server did not become a replica"
    );
    // Refused pops (READONLY) make the consumer reconnect, again and again.
    assert!(
        wait_until(WAIT, || running.stats().reconnects >= reconnects + 2),
        "the consumer never noticed it was talking to a replica"
    );
    assert!(!running.is_stopping(), "a role change stopped the consumer");
    c.cmd(["REPLICAOF", "NO", "ONE"]).unwrap();
    c.lpush_many("jobs", ["after-1", "after-2"]).unwrap();
    assert!(
        wait_until(WAIT, || log.len() == 3),
        "nothing consumed after the swap back: {:?}",
        log.snapshot()
    );
    let stats = running.shutdown().unwrap();
    assert_eq!(log.snapshot(), ["before", "after-1", "after-2"]);
    assert_eq!(stats.messages, 3);
}

/// A host name is looked up again before every reconnect: when it moves to another server
/// (a managed endpoint after a failover), the consumer follows it.
#[test]
fn reconnects_follow_a_host_name_to_its_new_address() {
    let first = RedisServer::start().unwrap();
    let second = RedisServer::start().unwrap();
    let port = Arc::new(AtomicU16::new(first.port()));
    let lookups = Arc::new(AtomicUsize::new(0));
    let (p, n) = (port.clone(), lookups.clone());
    let log = Log::default();
    let running = EngineBuilder::new("redis://queue.example.test")
        .pin_cores(false)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .resolver(move |host: &str, _port: u16| {
            assert_eq!(host, "queue.example.test");
            n.fetch_add(1, Ordering::SeqCst);
            Ok(vec![std::net::SocketAddr::from((
                [127, 0, 0, 1],
                p.load(Ordering::SeqCst),
            ))])
        })
        .start(PopConsumer::new(["jobs"]), log.clone())
        .unwrap();
    let mut a = first.client().unwrap();
    a.lpush_many("jobs", ["on-first"]).unwrap();
    assert!(wait_until(WAIT, || log.len() == 1));
    // The name moves; the old server drops its clients.
    port.store(second.port(), Ordering::SeqCst);
    let mut b = second.client().unwrap();
    b.lpush_many("jobs", ["on-second"]).unwrap();
    a.client_kill(&[("TYPE", "normal"), ("SKIPME", "yes")])
        .unwrap();
    assert!(
        wait_until(WAIT, || log.len() == 2),
        "the consumer did not follow the name: {:?}",
        log.snapshot()
    );
    running.shutdown().unwrap();
    assert_eq!(log.snapshot(), ["on-first", "on-second"]);
    assert!(
        lookups.load(Ordering::SeqCst) >= 2,
        "no lookup at reconnect"
    );
}

/// A handler that records the events it is told about (and the payloads).
type Events = support::Recorder<String>;

/// A connection killed while its blocking pop waits: the handler is told that what the
/// pop may have taken is lost (inline on the shard's handler, and with workers on the
/// shard's clone kept for events), and the figures match the stats.
#[test]
fn the_handler_is_told_when_a_lost_connection_may_have_lost_messages() {
    for dispatch in [Dispatch::inline(), Dispatch::workers(1)] {
        let server = RedisServer::start().unwrap();
        let mut c = server.client().unwrap();
        let events = Events::default();
        let running = EngineBuilder::new(server.url())
            .pin_cores(false)
            .backoff(Duration::from_millis(20), Duration::from_millis(100))
            .dispatch(dispatch)
            .start(
                PopConsumer::new(["ev"]).block_timeout(Duration::from_secs(30)),
                events.clone(),
            )
            .unwrap();
        wait_blocked(&mut c, 1);
        assert_eq!(c.client_kill_by_name("ringq-s0-c0").unwrap(), 1);
        assert!(wait_until(WAIT, || !events.events().is_empty()));
        // It reconnects and waits on its queue again.
        wait_blocked(&mut c, 1);
        let stats = running.shutdown().unwrap();
        assert!(stats.possibly_lost >= 1);
        assert_eq!(
            events.events(),
            [Event::PossiblyLost {
                connection: "ringq-s0-c0".into(),
                commands: 1,
                messages: stats.possibly_lost,
            }]
        );
    }
}

/// A frozen server: the handler is told the connection stalled and was replaced.
#[test]
fn the_handler_is_told_when_a_stalled_connection_is_replaced() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    let events = Events::default();
    let running = EngineBuilder::new(server.url())
        .pin_cores(false)
        .reply_grace(Duration::from_millis(200))
        .start(
            PopConsumer::new(["st"]).block_timeout(Duration::from_millis(100)),
            events.clone(),
        )
        .unwrap();
    wait_blocked(&mut c, 1);
    server.freeze().unwrap();
    let stalled = || {
        events
            .events()
            .iter()
            .any(|e| matches!(e, Event::Stalled { .. }))
    };
    let seen = wait_until(WAIT, stalled);
    server.thaw().unwrap();
    assert!(seen, "no Stalled event; saw {:?}", events.events());
    let stats = running.shutdown().unwrap();
    let evs = events.events();
    assert_eq!(
        evs[0],
        Event::Stalled {
            connection: "ringq-s0-c0".into(),
            commands: 1
        }
    );
    let stalls = evs
        .iter()
        .filter(|e| matches!(e, Event::Stalled { .. }))
        .count();
    assert_eq!(stalls as u64, stats.stalls);
}

/// The at-most-once window, made to happen: the fault proxy resets the connection right
/// after forwarding pop replies, so some replies never reach the consumer. Nothing
/// vanishes uncounted: delivered + left on the server + what unanswered pops may have
/// taken (`Stats::possibly_lost`) covers every message pushed.
#[test]
fn replies_lost_in_flight_are_counted_never_silent() {
    use ringq_tests::{Fault, FaultProxy};
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).unwrap();
    let mut c = server.client().unwrap();
    let total = 20_000u64;
    let items: Vec<String> = (0..total).map(|i| format!("m{i}")).collect();
    c.lpush_many("lossy", &items).unwrap();
    let log = Log::default();
    let running = EngineBuilder::new(proxy.url())
        .pin_cores(false)
        .backoff(Duration::from_millis(5), Duration::from_millis(20))
        .start(
            PopConsumer::new(["lossy"]).batch(50).pipeline(4),
            log.clone(),
        )
        .unwrap();
    // The faults come mid-drain: after messages were delivered, with messages left.
    assert!(wait_until(WAIT, || log.len() > 0));
    let mut resets = 0;
    let mut first_at = None;
    while resets < 5 && log.len() < total as usize {
        let before = proxy.fired();
        let delivered = log.len();
        proxy.set(Fault::ResetAfterReply);
        if wait_until(WAIT, || proxy.fired() > before) {
            resets += 1;
            first_at.get_or_insert(delivered);
        }
        let seen = log.len();
        wait_until(WAIT, || log.len() > seen + 100 || log.len() as u64 >= total);
    }
    assert!(resets >= 1, "the fault really happened");
    assert!(
        first_at.is_some_and(|n| n > 0 && (n as u64) < total),
        "the first fault was armed mid-drain: {first_at:?} of {total} delivered"
    );
    assert!(wait_until(WAIT, || c.llen("lossy").unwrap() == 0));
    let stats = running.shutdown().unwrap();
    let delivered = log.len() as u64;
    let left = c.llen("lossy").unwrap() as u64;
    assert!(
        delivered + left + stats.possibly_lost >= total,
        "{} message(s) vanished uncounted: delivered {delivered}, left {left}, possibly lost {}",
        total - delivered - left - stats.possibly_lost.min(total),
        stats.possibly_lost
    );
    let unique: HashSet<String> = log.snapshot().into_iter().collect();
    assert_eq!(unique.len() as u64, delivered, "no duplicates in pop mode");
}

/// The `qbuf=` of the one `ringq-s0-c0` connection: bytes of commands the server holds
/// for it unprocessed (a pop queued behind a blocked one).
fn queued_bytes(c: &mut ringq_tests::TestClient) -> u64 {
    c.client_list()
        .unwrap()
        .into_iter()
        .find(|i| i.name == "ringq-s0-c0")
        .and_then(|i| {
            i.fields
                .iter()
                .find(|(k, _)| k == "qbuf")
                .and_then(|(_, v)| v.parse().ok())
        })
        .unwrap_or(0)
}

/// `PopConsumer::parked_pops(2)`: an idle connection keeps a second blocking pop queued
/// on the server behind the blocked one (its `qbuf` is not empty; with the default one it
/// is), also when the prefetch is below the batch (they share the lane's reserve). Messages pushed one at a time while it waits arrive once each, in order; a stop
/// ends both pops with `CLIENT UNBLOCK` (long before their 30 s block timeout); and a
/// connection killed while idle reports both pops as possibly lossy.
#[test]
fn two_parked_pops_serve_in_order_stop_at_once_and_count_both_when_lost() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    let consumer = |parked: u32| {
        PopConsumer::new(["parked"])
            .pipeline(4)
            .parked_pops(parked)
            .block_timeout(Duration::from_secs(30))
    };
    // The default: one pop waits, nothing queued behind it.
    let log = Log::default();
    let one = start(EngineBuilder::new(server.url()), 1, 1, consumer(1), &log);
    wait_blocked(&mut c, 1);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(queued_bytes(&mut c), 0, "one parked pop by default");
    one.shutdown().unwrap();

    // A prefetch below the batch: the two parked pops share the lane's reserve, so the
    // second gets a grant too.
    let running = start(
        EngineBuilder::new(server.url()).prefetch(8),
        1,
        1,
        consumer(2),
        &log,
    );
    wait_blocked(&mut c, 1);
    assert!(
        wait_until(WAIT, || queued_bytes(&mut c) > 0),
        "a second pop queued behind the blocked one"
    );
    let sent: Vec<String> = (0..200).map(|i| format!("p{i}")).collect();
    for m in &sent {
        c.lpush_many("parked", [m.clone()]).unwrap();
    }
    assert!(wait_until(WAIT, || log.len() >= 200));
    assert_eq!(log.payloads(), sent, "each once, in push order");
    wait_blocked(&mut c, 1);
    // Dry again, now with the messages' size known (a pop then asks for what the reserve
    // holds): still two parked.
    assert!(
        wait_until(WAIT, || queued_bytes(&mut c) > 0),
        "two parked pops once sizes are known"
    );
    let began = std::time::Instant::now();
    running.shutdown().unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "both parked pops unblocked at the stop, not waited out"
    );

    let events = Events::default();
    let running = EngineBuilder::new(server.url())
        .pin_cores(false)
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .start(consumer(2), events.clone())
        .unwrap();
    wait_blocked(&mut c, 1);
    assert!(wait_until(WAIT, || queued_bytes(&mut c) > 0));
    assert_eq!(c.client_kill_by_name("ringq-s0-c0").unwrap(), 1);
    assert!(wait_until(WAIT, || !events.events().is_empty()));
    let stats = running.shutdown().unwrap();
    assert_eq!(
        events.events()[0],
        Event::PossiblyLost {
            connection: "ringq-s0-c0".into(),
            commands: 2,
            messages: stats.possibly_lost,
        }
    );
}

//! The pop pipeline against a real redis-server (started per test by the harness).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringq::{
    Dispatch, EngineBuilder, ErrorKind, Message, Outcome, PopConsumer, PopStrategy, Queue, Running,
};
use ringq_tests::{wait_until, RedisServer, TestClient};

mod support;
use support::{payloads, WAIT};

/// Every delivered message as (queue, payload, priority), in handler-call order per shard.
type Recorder = support::Recorder<(String, String, u8)>;

/// Asserts each queue's messages arrived exactly once and in push order.
fn assert_exactly_once_in_order(
    log: &[(String, String, u8)],
    expected: &HashMap<String, Vec<String>>,
) {
    let mut per_queue: HashMap<&str, Vec<&str>> = HashMap::new();
    for (q, p, _) in log {
        per_queue.entry(q.as_str()).or_default().push(p.as_str());
    }
    for (q, want) in expected {
        let got = per_queue.remove(q.as_str()).unwrap_or_default();
        assert_eq!(got.len(), want.len(), "queue {q}: delivered count");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g, w, "queue {q}: message {i} out of order or wrong");
        }
    }
    assert!(
        per_queue.is_empty(),
        "messages from unexpected queues: {:?}",
        per_queue.keys()
    );
}

fn start(server_url: &str, shards: usize, consumer: PopConsumer, rec: &Recorder) -> Running {
    EngineBuilder::new(server_url)
        .shards(shards)
        .pin_cores(false)
        .start(consumer, rec.clone())
        .expect("engine starts")
}

#[test]
fn io_uring_probe_reports_features() {
    match ringq::probe() {
        Ok(f) => println!("io_uring probe: {f}"),
        Err(e) => panic!("io_uring is not usable here, so no engine test can run: {e}"),
    }
}

#[test]
fn drains_100k_messages_from_4_queues_with_2_shards_exactly_once_in_order() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    let mut expected = HashMap::new();
    for q in 0..4 {
        let name = format!("q{q}");
        let items = payloads(&name, 25_000);
        // LPUSH + RPOP consumption = FIFO in push order.
        c.lpush_many(&name, &items).unwrap();
        expected.insert(name, items);
    }
    let rec = Recorder::default();
    let consumer = PopConsumer::new(["q0", "q1", "q2", "q3"]).batch(100);
    let running = EngineBuilder::new(server.url())
        .shards(2)
        .connections_per_shard(2)
        .pin_cores(false)
        .start(consumer, rec.clone())
        .unwrap();
    assert!(
        wait_until(WAIT, || rec.len() >= 100_000),
        "only {} of 100000 delivered",
        rec.len()
    );
    let stats = running.shutdown().unwrap();
    assert_eq!(stats.messages, 100_000);
    assert_eq!(
        stats.per_source.iter().map(|(_, n)| n).sum::<u64>(),
        100_000
    );
    assert_exactly_once_in_order(&rec.snapshot(), &expected);
    for q in 0..4 {
        assert_eq!(c.llen(format!("q{q}")).unwrap(), 0);
    }
}

#[test]
fn flooded_queue_does_not_starve_a_small_one() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    c.lpush_many("A", payloads("A", 10_000)).unwrap();
    c.lpush_many("B", payloads("B", 100)).unwrap();
    let rec = Recorder::default();
    let running = start(
        &server.url(),
        1,
        PopConsumer::new(["A", "B"]).batch(10),
        &rec,
    );
    assert!(wait_until(WAIT, || rec.len() >= 10_100));
    running.shutdown().unwrap();
    let log = rec.snapshot();
    let last_b = log
        .iter()
        .rposition(|(q, _, _)| q == "B")
        .expect("B delivered");
    let a_before_last_b = log[..last_b].iter().filter(|(q, _, _)| q == "A").count();
    assert!(
        a_before_last_b < 5_000,
        "all of B must be delivered before A is half drained; A had {a_before_last_b}"
    );
}

#[test]
fn weights_give_a_queue_consecutive_turns() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    c.lpush_many("A", payloads("A", 300)).unwrap();
    c.lpush_many("B", payloads("B", 300)).unwrap();
    let rec = Recorder::default();
    let consumer = PopConsumer::new([Queue::new("A").weight(3), Queue::new("B")])
        .batch(10)
        .pipeline(1);
    let running = start(&server.url(), 1, consumer, &rec);
    assert!(wait_until(WAIT, || rec.len() >= 200));
    running.shutdown().unwrap();
    let log = rec.snapshot();
    let first_200_a = log[..200].iter().filter(|(q, _, _)| q == "A").count();
    // Three batches of A per batch of B while both have backlog: 150 of the first 200.
    assert_eq!(
        first_200_a, 150,
        "weight 3 gives A three turns for each of B's"
    );
}

#[test]
fn higher_priority_levels_are_served_first() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    let q = Queue::new("jobs").priorities([0, 5, 9]);
    for p in [0u8, 5, 9] {
        c.lpush_many(q.key_for_priority(p), payloads(&format!("p{p}"), 200))
            .unwrap();
    }
    let rec = Recorder::default();
    let running = start(&server.url(), 1, PopConsumer::new([q]).batch(16), &rec);
    assert!(wait_until(WAIT, || rec.len() >= 600));
    running.shutdown().unwrap();
    let prios: Vec<u8> = rec.snapshot().iter().map(|(_, _, p)| *p).collect();
    assert_eq!(prios.len(), 600);
    assert!(
        prios.windows(2).all(|w| w[0] >= w[1]),
        "priorities must never rise: {:?}",
        &prios[..40]
    );
    assert_eq!(prios[0], 9);
    assert_eq!(prios[599], 0);
    let payloads: Vec<String> = rec.snapshot().into_iter().map(|(_, p, _)| p).collect();
    assert!(payloads[0].starts_with("p9-"));
}

#[test]
fn prefetch_limit_is_never_exceeded_with_a_slow_handler() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    c.lpush_many("slow", payloads("s", 400)).unwrap();
    let largest_batch = Arc::new(Mutex::new(0usize));
    #[derive(Clone)]
    struct Slow(Arc<Mutex<usize>>, Arc<Mutex<usize>>);
    impl ringq::Handler for Slow {
        fn handle(&mut self, _m: &Message<'_>) -> Outcome {
            Outcome::Ack
        }
        fn handle_batch(&mut self, batch: &[Message<'_>], out: &mut Vec<Outcome>) {
            let mut l = self.0.lock().unwrap();
            *l = (*l).max(batch.len());
            // The slow part of the handler: real work stand-in, not synchronization.
            std::thread::sleep(Duration::from_millis(2));
            *self.1.lock().unwrap() += batch.len();
            out.extend(batch.iter().map(|_| Outcome::Ack));
        }
    }
    let done = Arc::new(Mutex::new(0usize));
    let consumer = PopConsumer::new(["slow"]).batch(100).pipeline(4);
    let running = EngineBuilder::new(server.url())
        .prefetch(8)
        .pin_cores(false)
        .start(consumer, Slow(largest_batch.clone(), done.clone()))
        .unwrap();
    assert!(wait_until(WAIT, || *done.lock().unwrap() >= 400));
    let stats = running.shutdown().unwrap();
    assert_eq!(stats.messages, 400);
    assert!(
        stats.max_in_flight <= 8,
        "in flight reached {}",
        stats.max_in_flight
    );
    assert!(stats.max_in_flight >= 1);
    let largest = *largest_batch.lock().unwrap();
    assert!(
        (1..=8).contains(&largest),
        "a pop asked for more than the free credit: batch of {largest}"
    );
}

/// Waits until the server counts `n` clients blocked in a blocking command.
fn wait_for_blocked_clients(c: &mut TestClient, n: u64) {
    let blocked = |c: &mut TestClient| {
        c.info_field("clients", "blocked_clients")
            .unwrap()
            .and_then(|v| v.parse::<u64>().ok())
    };
    assert!(
        wait_until(WAIT, || blocked(c) == Some(n)),
        "expected {n} blocked client(s), the server counts {:?}",
        blocked(c)
    );
}

fn command_calls(c: &mut TestClient, cmd: &str) -> u64 {
    let info = c.info("commandstats").unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn forced_brpop_path_pops_one_message_per_command() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    c.lpush_many("one", payloads("x", 500)).unwrap();
    let rec = Recorder::default();
    let consumer = PopConsumer::new(["one"])
        .strategy(PopStrategy::Single)
        .pipeline(4);
    let running = start(&server.url(), 1, consumer, &rec);
    assert!(wait_until(WAIT, || rec.len() >= 500));
    let stats = running.shutdown().unwrap();
    assert!(
        stats.pops >= 500,
        "one BRPOP per message: {} pops",
        stats.pops
    );
    assert!(command_calls(&mut c, "brpop") >= 500);
    assert_eq!(command_calls(&mut c, "lmpop"), 0);
    assert_eq!(command_calls(&mut c, "blmpop"), 0);
    assert_exactly_once_in_order(
        &rec.snapshot(),
        &HashMap::from([("one".to_owned(), payloads("x", 500))]),
    );
}

#[test]
fn forced_blmpop_path_pops_batches() {
    let server = RedisServer::start().unwrap();
    assert!(
        server.version().has_blmpop(),
        "this test needs Redis 7: {}",
        server.version()
    );
    let mut c = server.client().unwrap();
    c.lpush_many("batch", payloads("x", 1000)).unwrap();
    let rec = Recorder::default();
    let consumer = PopConsumer::new(["batch"])
        .strategy(PopStrategy::BlockingBatch)
        .batch(50);
    let running = start(&server.url(), 1, consumer, &rec);
    assert!(wait_until(WAIT, || rec.len() >= 1000));
    let stats = running.shutdown().unwrap();
    assert!(stats.pops <= 40, "batches of up to 50: {} pops", stats.pops);
    assert!(command_calls(&mut c, "blmpop") >= 20);
    assert_eq!(command_calls(&mut c, "brpop"), 0);
    assert_eq!(command_calls(&mut c, "lmpop"), 0);
    assert_exactly_once_in_order(
        &rec.snapshot(),
        &HashMap::from([("batch".to_owned(), payloads("x", 1000))]),
    );
}

#[test]
fn adaptive_path_uses_lmpop_with_backlog_and_blmpop_when_dry() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    c.lpush_many("ad", payloads("x", 2000)).unwrap();
    let rec = Recorder::default();
    let consumer = PopConsumer::new(["ad"])
        .batch(100)
        .block_timeout(Duration::from_millis(200));
    let running = start(&server.url(), 1, consumer, &rec);
    assert!(wait_until(WAIT, || rec.len() >= 2000));
    // Dry now: the consumer must fall back to blocking pops.
    assert!(wait_until(WAIT, || command_calls(&mut c, "blmpop") >= 1));
    // And a message pushed while it blocks is delivered.
    c.lpush_many("ad", ["late"]).unwrap();
    assert!(wait_until(WAIT, || rec.len() >= 2001));
    running.shutdown().unwrap();
    assert!(command_calls(&mut c, "lmpop") >= 20);
    assert_eq!(rec.snapshot().last().unwrap().1, "late");
}

#[test]
fn consumption_resumes_after_client_kill_without_duplicates() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    let rec = Recorder::default();
    let consumer = PopConsumer::new(["k1", "k2"]).block_timeout(Duration::from_millis(500));
    let running = EngineBuilder::new(server.url())
        .connections_per_shard(2)
        .pin_cores(false)
        .client_name("killme")
        .start(consumer, rec.clone())
        .unwrap();
    assert!(wait_until(WAIT, || running.stats().connections_ready == 2));
    // Kill the consumer's connections while they are blocked in pops.
    let killed = c.client_kill_by_name("killme-s0-c0").unwrap()
        + c.client_kill_by_name("killme-s0-c1").unwrap();
    assert_eq!(
        killed, 2,
        "both consumer connections are named killme-s0-c<n>"
    );
    assert!(
        wait_until(WAIT, || running.stats().reconnects >= 2),
        "did not reconnect"
    );
    let items = payloads("after", 1000);
    c.lpush_many("k1", &items).unwrap();
    c.lpush_many("k2", &items).unwrap();
    assert!(
        wait_until(WAIT, || rec.len() >= 2000),
        "delivered {}",
        rec.len()
    );
    let stats = running.shutdown().unwrap();
    assert!(stats.reconnects >= 1);
    assert_exactly_once_in_order(
        &rec.snapshot(),
        &HashMap::from([("k1".to_owned(), items.clone()), ("k2".to_owned(), items)]),
    );
}

#[test]
fn server_restart_during_a_drain_resumes_without_duplicates() {
    let server = RedisServer::builder().aof_always(true).start().unwrap();
    let mut c = server.client().unwrap();
    let items = payloads("r", 20_000);
    c.lpush_many("rq", &items).unwrap();
    let rec = Recorder::default();
    // A handler slow enough that the restart lands mid-drain.
    let handler = rec.deciding(support::ack_after(Duration::from_micros(50)));
    let prefetch = 64;
    let consumer = PopConsumer::new(["rq"])
        .batch(32)
        .block_timeout(Duration::from_millis(200));
    let running = EngineBuilder::new(server.url())
        .prefetch(prefetch)
        .pin_cores(false)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .start(consumer, handler)
        .unwrap();
    assert!(wait_until(WAIT, || rec.len() >= 2_000));
    server.restart().unwrap();
    assert!(
        wait_until(WAIT, || running.stats().reconnects >= 1),
        "no reconnect after restart"
    );
    let mut c = server.client().unwrap();
    assert!(
        wait_until(WAIT, || c.llen("rq").unwrap_or(1) == 0),
        "queue not drained after restart"
    );
    // Let the last replies reach the handler.
    assert!(wait_until(WAIT, || running.stats().messages == rec.len() as u64));
    running.shutdown().unwrap();
    let got: Vec<String> = rec.snapshot().into_iter().map(|(_, p, _)| p).collect();
    let mut seen = std::collections::HashSet::new();
    for p in &got {
        assert!(seen.insert(p.clone()), "delivered twice: {p}");
    }
    // At-most-once: pops answered while the server died may be lost, at most one
    // prefetch window's worth; everything else arrives, in order.
    let lost = items.len() - got.len();
    assert!(
        lost <= prefetch as usize,
        "lost {lost} messages, more than the {prefetch} in flight"
    );
    let positions: Vec<usize> = got
        .iter()
        .map(|p| p[2..].parse::<usize>().unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "order broken across the restart"
    );
}

#[test]
fn authenticates_with_requirepass() {
    let server = RedisServer::builder()
        .requirepass("s3cret")
        .start()
        .unwrap();
    let mut c = server.client().unwrap();
    c.lpush_many("authq", ["a", "b"]).unwrap();
    let rec = Recorder::default();
    let running = start(&server.url(), 1, PopConsumer::new(["authq"]), &rec);
    assert!(wait_until(WAIT, || rec.len() >= 2));
    running.shutdown().unwrap();
}

#[test]
fn authenticates_as_an_acl_user() {
    let server = RedisServer::builder()
        .acl_user("alice", "wonder")
        .start()
        .unwrap();
    let mut c = server.client().unwrap();
    c.lpush_many("aclq", ["a", "b", "c"]).unwrap();
    let rec = Recorder::default();
    let running = start(
        &server.url_as(Some("alice"), "wonder"),
        1,
        PopConsumer::new(["aclq"]),
        &rec,
    );
    assert!(wait_until(WAIT, || rec.len() >= 3));
    running.shutdown().unwrap();
}

#[test]
fn wrong_password_is_a_clear_auth_error_not_a_retry_loop() {
    let server = RedisServer::builder().requirepass("right").start().unwrap();
    let rec = Recorder::default();
    let running = start(
        &server.url_as(None, "wrong"),
        1,
        PopConsumer::new(["q"]),
        &rec,
    );
    let err = running
        .wait()
        .expect_err("a wrong password must stop the engine");
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(err.is_auth());
    assert!(err.to_string().contains("WRONGPASS"), "{err}");
    let running = start(&server.url_without_auth(), 1, PopConsumer::new(["q"]), &rec);
    let err = running
        .wait()
        .expect_err("no password must stop the engine");
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(err.to_string().contains("requires a password"), "{err}");
}

#[test]
fn unreachable_server_fails_after_the_start_attempts() {
    let port = ringq_tests::free_port().unwrap();
    let rec = Recorder::default();
    let running = EngineBuilder::new(format!("redis://127.0.0.1:{port}"))
        .pin_cores(false)
        .start_attempts(2)
        .backoff(Duration::from_millis(5), Duration::from_millis(10))
        .start(PopConsumer::new(["q"]), rec.clone())
        .unwrap();
    let err = running.wait().expect_err("nothing listens there");
    assert!(err.is_connection_lost(), "{err}");
    assert!(err.to_string().contains("refused"), "{err}");
}

#[test]
fn shutdown_while_blocked_returns_within_the_block_timeout_and_loses_nothing() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    let rec = Recorder::default();
    let block = Duration::from_secs(30);
    let running = start(
        &server.url(),
        1,
        PopConsumer::new(["idle"]).block_timeout(block),
        &rec,
    );
    wait_for_blocked_clients(&mut c, 1);
    let asked = Instant::now();
    let stats = running.shutdown().unwrap();
    let took = asked.elapsed();
    // A behaviour bound, not a speed target: a stop that waited for the blocked pop
    // would take the rest of its 30 s block timeout.
    assert!(
        took < block / 3,
        "the stop took {took:?}: it waited out the {block:?} block timeout"
    );
    assert_eq!(stats.messages, 0);
    assert_eq!(stats.connections_ready, 0);
    // Nothing was popped and dropped: a message pushed now is still there.
    c.lpush_many("idle", ["kept"]).unwrap();
    assert_eq!(c.llen("idle").unwrap(), 1);
}

#[test]
fn limit_pops_exactly_n_and_leaves_the_rest_on_the_server() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    c.lpush_many("lim", payloads("m", 1000)).unwrap();
    for _ in 0..2 {
        let rec = Recorder::default();
        let consumer = PopConsumer::new(["lim"]).batch(64).pipeline(4);
        let running = EngineBuilder::new(server.url())
            .limit(150)
            .pin_cores(false)
            .start(consumer, rec.clone())
            .expect("engine starts");
        // The engine stops by itself once 150 messages are handled.
        let stats = running.wait().unwrap();
        assert_eq!(stats.messages, 150);
        assert_eq!(rec.len(), 150);
    }
    assert_eq!(
        c.llen("lim").unwrap(),
        700,
        "no message beyond the limit left the server"
    );
}

#[test]
fn periodic_callbacks_run_on_every_shard() {
    let server = RedisServer::start().unwrap();
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let threads = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let (c2, t2) = (calls.clone(), threads.clone());
    let rec = Recorder::default();
    let running = EngineBuilder::new(server.url())
        .shards(2)
        .pin_cores(false)
        .every(Duration::from_millis(10), move || {
            c2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            t2.lock()
                .unwrap()
                .insert(std::thread::current().name().unwrap_or("").to_owned());
        })
        .start(PopConsumer::new(["p1", "p2"]), rec.clone())
        .unwrap();
    assert!(wait_until(WAIT, || calls
        .load(std::sync::atomic::Ordering::Relaxed)
        >= 10));
    assert!(
        wait_until(WAIT, || threads.lock().unwrap().len() == 2),
        "{:?}",
        threads.lock().unwrap()
    );
    running.shutdown().unwrap();
    let names = threads.lock().unwrap().clone();
    assert!(
        names.iter().all(|n| n.starts_with("ringq-shard-")),
        "{names:?}"
    );
}

#[test]
fn consumes_over_a_unix_socket_and_from_the_database_in_the_url() {
    let sock = std::env::temp_dir().join(format!("ringq-test-{}.sock", std::process::id()));
    let server = RedisServer::builder()
        .arg("--unixsocket", &sock)
        .arg("--unixsocketperm", "700")
        .start()
        .unwrap();
    let mut c = TestClient::connect(&format!("{}/3", server.url())).unwrap();
    c.lpush_many("dbq", ["in-db-3"]).unwrap();
    let mut c0 = server.client().unwrap();
    c0.lpush_many("dbq", ["in-db-0"]).unwrap();
    let rec = Recorder::default();
    let url = format!("unix://{}?db=3", sock.display());
    let running = start(&url, 1, PopConsumer::new(["dbq"]), &rec);
    assert!(wait_until(WAIT, || rec.len() >= 1));
    running.shutdown().unwrap();
    assert_eq!(rec.snapshot()[0].1, "in-db-3");
    assert_eq!(c0.llen("dbq").unwrap(), 1, "database 0 untouched");
    let rec = Recorder::default();
    let running = start(
        &format!("{}/0", server.url()),
        1,
        PopConsumer::new(["dbq"]),
        &rec,
    );
    assert!(wait_until(WAIT, || rec.len() >= 1));
    running.shutdown().unwrap();
    assert_eq!(rec.snapshot()[0].1, "in-db-0");
    let _ = std::fs::remove_file(&sock);
}

#[test]
fn a_hung_server_is_detected_by_command_deadlines_and_consumption_resumes() {
    let server = RedisServer::start().unwrap();
    let rec = Recorder::default();
    let consumer = PopConsumer::new(["hung"]).block_timeout(Duration::from_millis(200));
    let running = EngineBuilder::new(server.url())
        .reply_grace(Duration::from_millis(300))
        .pin_cores(false)
        .connect_timeout(Duration::from_millis(500))
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .start(consumer, rec.clone())
        .unwrap();
    assert!(wait_until(WAIT, || running.stats().connections_ready == 1));
    // SIGSTOP: sockets stay open, nothing answers. Only a per-command deadline notices.
    server.freeze().unwrap();
    assert!(
        wait_until(WAIT, || running.stats().connections_ready == 0),
        "hang not detected"
    );
    server.thaw().unwrap();
    assert!(
        wait_until(WAIT, || running.stats().connections_ready == 1),
        "did not reconnect after thaw"
    );
    let mut c = server.client().unwrap();
    c.lpush_many("hung", payloads("h", 100)).unwrap();
    assert!(wait_until(WAIT, || rec.len() >= 100));
    let stats = running.shutdown().unwrap();
    assert!(stats.reconnects >= 1);
    assert_exactly_once_in_order(
        &rec.snapshot(),
        &HashMap::from([("hung".to_owned(), payloads("h", 100))]),
    );
}

/// Several queues, several connections and shards, one message per BRPOP, pipelined, with a
/// limit equal to the number of messages: every message is popped, and quickly (the last
/// ones must not wait for a block timeout or a reply deadline).
#[test]
fn limit_equal_to_the_backlog_drains_every_queue_over_several_lanes() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    let mut expected = HashMap::new();
    for q in ["la", "lb", "lc"] {
        let p = payloads(q, 666);
        c.lpush_many(q, &p).unwrap();
        expected.insert(q.to_string(), p);
    }
    for (strategy, shards, conns) in [
        (PopStrategy::Single, 2, 1),
        (PopStrategy::Single, 1, 2),
        (PopStrategy::Adaptive, 2, 2),
    ] {
        for q in ["la", "lb", "lc"] {
            c.cmd(&["DEL", q]).unwrap();
            c.lpush_many(q, &expected[q]).unwrap();
        }
        let rec = Recorder::default();
        let consumer = PopConsumer::new(["la", "lb", "lc"])
            .strategy(strategy)
            .batch(16)
            .pipeline(4)
            .block_timeout(Duration::from_secs(2));
        let running = EngineBuilder::new(server.url())
            .limit(1998)
            .shards(shards)
            .connections_per_shard(conns)
            .pin_cores(false)
            .start(consumer, rec.clone())
            .expect("engine starts");
        let stop = running.shutdown_handle();
        // A lane starved of budget used to hang here for good; the watchdog turns a hang
        // into a short count below instead of a stuck test.
        let watchdog = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(30));
            stop.shutdown();
        });
        let stats = running.wait().unwrap();
        drop(watchdog);
        assert_eq!(
            rec.len(),
            1998,
            "{strategy:?} shards {shards} conns {conns}: delivered (left: {})",
            c.llen("la").unwrap() + c.llen("lb").unwrap() + c.llen("lc").unwrap()
        );
        assert_eq!(stats.messages, 1998);
        let mut log = rec.snapshot();
        log.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        assert_exactly_once_in_order(&log, &expected);
    }
}

/// Two connections blocked on their own empty queues when the budget's last messages
/// arrive in both at once: each blocking pop may ask for what is left, so together they can
/// pop more than the limit. The handler gets exactly the limit and the excess goes back
/// to its list, in order.
#[test]
fn messages_popped_beyond_the_limit_go_back_to_their_list_in_order() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    let rec = Recorder::default();
    let consumer = PopConsumer::new(["pa", "pb"])
        .strategy(PopStrategy::BlockingBatch)
        .batch(10)
        .block_timeout(Duration::from_secs(2));
    let running = EngineBuilder::new(server.url())
        // Far above any message size, so the first pops are not held to one message
        // while sizes are unknown (see `EngineBuilder::prefetch_bytes`).
        .prefetch_bytes(1 << 50)
        .limit(5)
        .shards(1)
        .connections_per_shard(2)
        .pin_cores(false)
        .start(consumer, rec.clone())
        .expect("engine starts");
    // Both connections blocked, each asking for the whole budget of 5.
    wait_for_blocked_clients(&mut c, 2);
    let a = payloads("a", 5);
    let b = payloads("b", 5);
    // One transaction: both blocked pops are served in the same server turn.
    c.cmd(["MULTI"]).unwrap();
    let mut lpush = |k: &str, v: &[String]| {
        let mut args = vec!["LPUSH".to_string(), k.to_string()];
        args.extend(v.iter().cloned());
        c.cmd(&args).unwrap();
    };
    lpush("pa", &a);
    lpush("pb", &b);
    c.cmd(["EXEC"]).unwrap();
    let stats = running.wait().unwrap();
    assert_eq!(stats.messages, 5);
    let log = rec.snapshot();
    assert_eq!(log.len(), 5, "exactly the limit reached the handler");
    let (kept, back_key, back) = if log[0].0 == "pa" {
        (&a, "pb", &b)
    } else {
        (&b, "pa", &a)
    };
    let got: Vec<&String> = log.iter().map(|(_, p, _)| p).collect();
    assert_eq!(
        got,
        kept.iter().collect::<Vec<_>>(),
        "one queue's 5, in order"
    );
    // The other queue is whole again, in its original order (RPOP order = push order).
    let mut left = Vec::new();
    while let ringq_resp::Frame::BulkString(v) = c.cmd(["RPOP", back_key]).unwrap() {
        left.push(String::from_utf8(v.to_vec()).unwrap());
    }
    assert_eq!(
        &left, back,
        "the excess went back where it came from, in order"
    );
}

/// A panic in user code that runs on a shard thread outside the handler (an `every`
/// callback) stops the whole engine with a Handler error instead of silently ending one
/// shard while the others run on.
#[test]
fn a_panicking_periodic_callback_stops_the_engine_with_a_handler_error() {
    let server = RedisServer::start().unwrap();
    let rec = Recorder::default();
    let running = EngineBuilder::new(server.url())
        .shards(2)
        .pin_cores(false)
        .every(Duration::from_millis(10), || panic!("boom in every"))
        .start(PopConsumer::new(["pp1", "pp2"]), rec.clone())
        .unwrap();
    let err = running.wait().expect_err("the engine stops with an error");
    assert_eq!(err.kind(), ErrorKind::Handler, "{err}");
    assert!(err.to_string().contains("boom in every"), "{err}");
}

/// Pipelined BRPOPs with a budget of one: the pops after the first bring messages beyond
/// the limit, from further left in the list. They go back in one go, so the list keeps its
/// order (an RPUSH per reply would have swapped them).
#[test]
fn excess_from_pipelined_pops_goes_back_in_list_order() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    let all = payloads("o", 6);
    c.lpush_many("ord", &all).unwrap();
    let rec = Recorder::default();
    let consumer = PopConsumer::new(["ord"])
        .strategy(PopStrategy::Single)
        .pipeline(4)
        .block_timeout(Duration::from_secs(1));
    let running = EngineBuilder::new(server.url())
        .prefetch(64)
        .limit(1)
        .shards(1)
        .pin_cores(false)
        .start(consumer, rec.clone())
        .expect("engine starts");
    let stats = running.wait().unwrap();
    assert_eq!(stats.messages, 1);
    assert!(
        stats.pops >= 3,
        "pipelined pops brought excess: {} pops",
        stats.pops
    );
    let got: Vec<String> = rec.snapshot().into_iter().map(|(_, p, _)| p).collect();
    assert_eq!(got, all[..1], "the oldest message, and only it");
    let mut left = Vec::new();
    while let ringq_resp::Frame::BulkString(v) = c.cmd(["RPOP", "ord"]).unwrap() {
        left.push(String::from_utf8(v.to_vec()).unwrap());
    }
    assert_eq!(left, all[1..], "the rest is still there, in order");
}

/// A connection with nothing in flight (its credit held by a slow handler) is still
/// watched: heartbeat PINGs go out, and a server that stops answering them is noticed and
/// reconnected to, without a pop to time out.
#[test]
fn heartbeats_watch_idle_connections_and_notice_a_hung_server() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    c.lpush_many("hb", ["one", "two"]).unwrap();
    let (gate_tx, gate_rx) = std::sync::mpsc::channel::<()>();
    let gate_rx = Arc::new(Mutex::new(gate_rx));
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen2 = seen.clone();
    let handler = move |_: &Message<'_>| {
        seen2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Hold the only credit until the test opens the gate.
        let _ = gate_rx.lock().unwrap().recv();
        Outcome::Ack
    };
    let running = EngineBuilder::new(server.url())
        .prefetch(1)
        .reply_grace(Duration::from_millis(500))
        .shards(1)
        .pin_cores(false)
        .idle_ping(Duration::from_millis(100))
        // On a worker, so the shard loop runs on while the handler holds the credit.
        .dispatch(Dispatch::workers(1))
        .start(
            PopConsumer::new(["hb"]).strategy(PopStrategy::Single),
            handler,
        )
        .unwrap();
    assert!(wait_until(WAIT, || seen
        .load(std::sync::atomic::Ordering::SeqCst)
        == 1));
    let pings = |c: &mut TestClient| command_calls(c, "ping");
    let before = pings(&mut c);
    assert!(
        wait_until(WAIT, || pings(&mut c) >= before + 3),
        "heartbeat PINGs on the idle connection"
    );
    // A hung server: the next heartbeat goes unanswered, its deadline passes, the
    // connection is dropped and (after the thaw) made again.
    server.freeze().unwrap();
    assert!(wait_until(WAIT, || running.stats().reconnects >= 1
        || running.stats().connections_ready == 0));
    server.thaw().unwrap();
    assert!(wait_until(WAIT, || running.stats().reconnects >= 1));
    gate_tx.send(()).unwrap();
    gate_tx.send(()).unwrap();
    assert!(wait_until(WAIT, || seen
        .load(std::sync::atomic::Ordering::SeqCst)
        == 2));
    drop(gate_tx);
    running.shutdown().unwrap();
}

#[test]
fn a_full_server_is_retried_until_it_has_room() {
    // "max number of clients reached" answers the HELLO of a server with no room: not a
    // configuration error but a passing state, so the engine reconnects with backoff.
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    c.lpush_many("q", ["a", "b", "c"]).unwrap();
    c.cmd(["CONFIG", "SET", "maxclients", "1"]).unwrap();
    let rejected = |c: &mut ringq_tests::TestClient| -> u64 {
        c.info_field("stats", "rejected_connections")
            .unwrap()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let admin = std::thread::spawn(move || {
        // Make room once the engine has been turned away twice.
        assert!(wait_until(WAIT, || rejected(&mut c) >= 2));
        c.cmd(["CONFIG", "SET", "maxclients", "1000"]).unwrap();
        c
    });
    let rec = Recorder::default();
    let running = EngineBuilder::new(server.url())
        .pin_cores(false)
        .backoff(Duration::from_millis(5), Duration::from_millis(50))
        .start_attempts(1000)
        .start(
            PopConsumer::new(["q"]).block_timeout(Duration::from_millis(100)),
            rec.clone(),
        )
        .expect("engine starts");
    let mut c = admin.join().unwrap();
    assert!(
        wait_until(WAIT, || rec.len() == 3 || running.is_stopping()),
        "the engine neither consumed nor failed"
    );
    let stats = running
        .shutdown()
        .expect("a full server is not a fatal error");
    assert_eq!(stats.messages, 3);
    assert!(rejected(&mut c) >= 2);
}

#[test]
fn shutdown_unblocks_pipelined_blocking_pops_instead_of_waiting_out_each_timeout() {
    // Four pipelined BRPOPs on an empty queue block one after the other, 30 s each: waiting
    // them out would take two minutes. A stop sends CLIENT UNBLOCK for each in turn from a
    // side connection, and nothing is popped and dropped on the way.
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    let rec = Recorder::default();
    let running = start(
        &server.url(),
        1,
        PopConsumer::new(["idle"])
            .strategy(PopStrategy::Single)
            .pipeline(4)
            .block_timeout(Duration::from_secs(30)),
        &rec,
    );
    wait_for_blocked_clients(&mut c, 1);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(running.shutdown());
    });
    let stats = done_rx
        .recv_timeout(WAIT)
        .expect("the stop waited out the blocked pops instead of unblocking them")
        .expect("a clean stop");
    assert_eq!(stats.messages, 0);
    assert_eq!(stats.connections_ready, 0);
    let unblocks = command_calls(&mut c, "client|unblock");
    println!("{unblocks} CLIENT UNBLOCK calls");
    assert!(
        (1..=8).contains(&unblocks),
        "{unblocks} CLIENT UNBLOCK calls"
    );
    // Nothing was popped and dropped: a message pushed now is still there.
    c.lpush_many("idle", ["kept"]).unwrap();
    assert_eq!(c.llen("idle").unwrap(), 1);
    assert_eq!(rec.len(), 0);
}

#[test]
fn without_the_right_to_unblock_a_stop_waits_for_blocked_pops_and_still_ends_cleanly() {
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    c.cmd([
        "ACL",
        "SETUSER",
        "nounblock",
        "on",
        ">pw",
        "~*",
        "&*",
        "+@all",
        "-client|unblock",
    ])
    .unwrap();
    let rec = Recorder::default();
    let running = start(
        &server.url_as(Some("nounblock"), "pw"),
        1,
        PopConsumer::new(["idle"])
            .strategy(PopStrategy::Single)
            .pipeline(2)
            .block_timeout(Duration::from_millis(300)),
        &rec,
    );
    wait_for_blocked_clients(&mut c, 1);
    let stats = running
        .shutdown()
        .expect("a refused CLIENT UNBLOCK is not an error");
    assert_eq!(stats.messages, 0);
    assert_eq!(stats.connections_ready, 0);
    assert_eq!(command_calls(&mut c, "client|unblock"), 0);
    c.lpush_many("idle", ["kept"]).unwrap();
    assert_eq!(c.llen("idle").unwrap(), 1);
}

/// Both backends drain a queue, and the one asked for is the one that runs; without a
/// choice, `RINGQ_BACKEND` decides (scripts/test.sh runs the engine suite a second time
/// with `RINGQ_BACKEND=epoll`), and `Auto` is io_uring where io_uring works.
#[test]
fn the_backend_asked_for_is_the_one_that_runs() {
    use ringq::IoBackend;
    let server = RedisServer::start().unwrap();
    let mut c = server.client().unwrap();
    for backend in [IoBackend::IoUring, IoBackend::Epoll] {
        c.lpush_many("be", payloads("m", 10_000)).unwrap();
        let rec = Recorder::default();
        let running = EngineBuilder::new(server.url())
            .pin_cores(false)
            .backend(backend)
            .limit(10_000)
            .start(PopConsumer::new(["be"]), rec.clone())
            .unwrap();
        assert_eq!(running.backend(), backend);
        let stats = running.wait().unwrap();
        assert_eq!((stats.messages, stats.backend), (10_000, backend));
        assert_eq!(rec.len(), 10_000);
        // The backend counts its system calls and completions (published at the end).
        assert!(
            stats.io.syscalls > 0 && stats.io.completions > 0,
            "{backend}: {:?}",
            stats.io
        );
    }
    let from_env = std::env::var("RINGQ_BACKEND")
        .ok()
        .and_then(|v| IoBackend::parse(&v))
        .filter(|b| *b != IoBackend::Auto)
        .unwrap_or(IoBackend::IoUring);
    let running = EngineBuilder::new(server.url())
        .pin_cores(false)
        .start(PopConsumer::new(["be"]), |_: &Message<'_>| Outcome::Ack)
        .unwrap();
    assert_eq!(running.backend(), from_env);
    running.shutdown().unwrap();
}

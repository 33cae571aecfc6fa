//! The Prometheus collector (feature `prometheus`, issue 25): the exposition of real runs
//! parses with an independent parser (Python `prometheus-client`'s OpenMetrics parser,
//! from the venv `scripts/setup.sh` makes), and its counters equal what happened — a
//! reliable run that forces retries and dead letters, a restart that claims its
//! unfinished leases back, and a pub/sub connection killed (a gap). (`required-features`:
//! it runs in the workspace test run, where the CLI turns the feature on.)

use std::collections::HashMap;
use std::time::Duration;

use prometheus_client::registry::Registry;
use ringq::{
    Dispatch, Event, ListenConsumer, Outcome, PopConsumer, ReliableConsumer, Running, StartAt,
    StreamConsumer,
};
use ringq_tests::{parse_openmetrics, wait_until};

mod support;
use support::{builder, payloads, start, xadd, Kind, Recorder, WAIT};

/// Every sample of `running`'s exposition, parsed by Python's OpenMetrics parser:
/// `name{label=value,...}` (labels sorted) → value.
fn samples(running: &Running) -> HashMap<String, f64> {
    let mut registry = Registry::with_prefix("ringq");
    registry.register_collector(Box::new(running.metrics()));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    parse_openmetrics(&text).into_iter().collect()
}

fn get(s: &HashMap<String, f64>, key: &str) -> f64 {
    *s.get(key)
        .unwrap_or_else(|| panic!("no sample {key}; have {:?}", s.keys().collect::<Vec<_>>()))
}

/// A reliable run whose handler retries every 10th message once and dead-letters every
/// 25th: consumed, acked, retried, dead-lettered and failed equal those counts. Then a
/// run stopped holding unacked leases (its handler never returns for a few) is followed
/// by a restart with the same id: the restart's claimed counter counts what it took back.
#[test]
fn reliable_counters_equal_what_happened() {
    let server = start(Kind::Redis);
    let mut c = server.client().unwrap();
    const N: usize = 1000;
    c.lpush_many("mq", payloads("m", N)).unwrap();
    let seen = Recorder::<(String, u32, std::time::Instant)>::default();
    let n_of = |p: &str| p.rsplit('-').next().unwrap().parse::<usize>().unwrap();
    let handler = seen.deciding(move |p: &str, d: u32| match (n_of(p), d) {
        (i, 1) if i % 25 == 0 => Outcome::Dead,
        (i, 1) if i % 10 == 0 => Outcome::Retry,
        _ => Outcome::Ack,
    });
    let running = builder(server.url())
        .start(
            ReliableConsumer::new("c1", ["mq"])
                .batch(32)
                .backoff(ringq::Backoff::Levels(vec![Duration::from_millis(10)])),
            handler,
        )
        .unwrap();
    let dead = (0..N).filter(|i| i % 25 == 0).count();
    let retried = (0..N).filter(|i| i % 10 == 0 && i % 25 != 0).count();
    assert!(
        wait_until(WAIT, || seen.len() >= N + retried),
        "delivered {} of {}",
        seen.len(),
        N + retried
    );
    let mut s = HashMap::new();
    assert!(
        wait_until(WAIT, || {
            s = samples(&running);
            s.get("ringq_messages_acked_total{mode=reliable}") == Some(&((N - dead) as f64))
                && s.get("ringq_await_time_seconds_count{mode=reliable}")
                    == Some(&((N + retried) as f64))
        }),
        "the counters caught up: {s:?}"
    );
    assert_eq!(
        get(&s, "ringq_messages_consumed_total{mode=reliable,source=mq}"),
        (N + retried) as f64
    );
    assert_eq!(
        get(&s, "ringq_messages_retried_total{mode=reliable}"),
        retried as f64
    );
    assert_eq!(
        get(&s, "ringq_messages_dead_lettered_total{mode=reliable}"),
        dead as f64
    );
    assert_eq!(
        get(&s, "ringq_messages_failed_total{mode=reliable}"),
        (retried + dead) as f64
    );
    assert_eq!(
        get(&s, "ringq_messages_requeued_total{mode=reliable}"),
        retried as f64
    );
    assert_eq!(get(&s, "ringq_messages_claimed_total{mode=reliable}"), 0.0);
    // Inline dispatch: every message's handler time is in the histogram.
    assert!(
        wait_until(WAIT, || {
            samples(&running).get("ringq_process_duration_seconds_count{mode=reliable}")
                == Some(&((N + retried) as f64))
        }),
        "the handler times are counted"
    );
    let s = samples(&running);
    // Drained: at most the one message the lane's blocked wait holds credit for.
    assert!(get(&s, "ringq_inflight_messages{mode=reliable}") <= 1.0);
    // The backend's system calls and completions: some of each, and at most what the
    // engine's stats say a moment after the scrape (the same counters, still growing).
    let io = running.stats().io;
    let (sys, done) = (
        get(&s, "ringq_io_syscalls_total{mode=reliable}"),
        get(&s, "ringq_io_completions_total{mode=reliable}"),
    );
    assert!(
        sys > 0.0 && done > 0.0,
        "{sys} syscalls, {done} completions"
    );
    assert!(
        sys <= io.syscalls as f64 && done <= io.completions as f64,
        "the exposition ({sys}, {done}) is of the engine's counters ({io:?})"
    );
    assert_eq!(
        get(
            &s,
            "ringq_connections{mode=reliable,role=control,state=ready}"
        ),
        1.0
    );
    assert!(
        get(
            &s,
            "ringq_connections{mode=reliable,role=fetch,state=ready}"
        ) >= 1.0
    );
    // Leases and settles were timed.
    for op in ["fetch", "control"] {
        let key = format!("ringq_operation_duration_seconds_count{{mode=reliable,op={op}}}");
        assert!(get(&s, &key) >= 1.0, "{op} round trips timed");
    }
    running.shutdown().unwrap();

    // A run killed holding leases (its shard thread never returns them: the process
    // would be gone); the restart claims them.
    c.lpush_many("cq", payloads("c", 50)).unwrap();
    let held = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    /// Lets the first run's handler return, even when an assertion fails first.
    struct Release(std::sync::Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Release {
        fn drop(&mut self) {
            self.0.store(false, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let release = Release(held.clone());
    let h = held.clone();
    let first = builder(server.url())
        .start(
            ReliableConsumer::new("c2", ["cq"]).batch(50),
            move |_: &ringq::Message<'_>| {
                while h.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Outcome::Ack
            },
        )
        .unwrap();
    // Its first lease is one message (its size unknown yet), and the handler holds it.
    let leased = ringq::envelope::keys::processing(b"cq", b"c2");
    assert!(
        wait_until(WAIT, || c.llen(&leased).unwrap_or(0) >= 1),
        "the first run leased"
    );
    let n = c.llen(&leased).unwrap() as f64;
    // Its leases stay on the server as a crash would leave them: the restart runs
    // beside it under the same id (a stuck process), and takes them back at start.
    let again = builder(server.url())
        .start(
            ReliableConsumer::new("c2", ["cq"]).batch(50),
            |_: &ringq::Message<'_>| Outcome::Ack,
        )
        .unwrap();
    assert!(
        wait_until(WAIT, || {
            let s = samples(&again);
            s.get("ringq_messages_claimed_total{mode=reliable}") == Some(&n)
                && s.get("ringq_messages_consumed_total{mode=reliable,source=cq}") == Some(&50.0)
        }),
        "the restart claimed the {n} held and consumed the 50: {:?}",
        samples(&again)
    );
    drop(release);
    again.shutdown().unwrap();
    let _ = first.shutdown();
}

/// A subscriber whose connection is killed: `ringq_pubsub_gaps_total` counts the gap the
/// handler was told about, and the reconnect.
#[test]
fn a_killed_subscriber_shows_a_gap_and_a_reconnect() {
    let server = start(Kind::Redis);
    let rec = Recorder::<(String, Option<String>, String)>::default();
    let running = builder(server.url())
        .start(ListenConsumer::new().channel("ch"), rec.clone())
        .unwrap();
    let mut c = server.client().unwrap();
    assert!(
        wait_until(WAIT, || c.publish("ch", "x").unwrap_or(0) >= 1),
        "subscribed"
    );
    assert!(c.client_kill(&[("TYPE", "pubsub")]).unwrap() >= 1);
    assert!(
        wait_until(WAIT, || !rec.gaps().is_empty()),
        "the gap reached the handler"
    );
    let told = rec
        .events()
        .iter()
        .filter(|e| matches!(e, Event::Gap { .. }))
        .count();
    assert!(
        wait_until(WAIT, || {
            let s = samples(&running);
            s.get("ringq_pubsub_gaps_total{mode=listen}") == Some(&(told as f64))
                && s.get("ringq_reconnects_total{mode=listen}")
                    .is_some_and(|v| *v >= 1.0)
                && s.get("ringq_connection_errors_total{kind=connection_lost,mode=listen}")
                    .is_some_and(|v| *v >= 1.0)
        }),
        "gaps {told} and a reconnect counted: {:?}",
        samples(&running)
    );
    running.shutdown().unwrap();
}

/// Stream mode over two streams: consumed per stream, and the group's lag and pending
/// per stream and group, read back to zero once everything is acknowledged.
#[test]
fn stream_gauges_are_per_stream_and_group() {
    let server = start(Kind::Redis);
    let mut c = server.client().unwrap();
    xadd(&mut c, "s1", "a", 300, None);
    xadd(&mut c, "s2", "b", 200, None);
    let rec = Recorder::<(String, String, u32, std::time::Instant)>::default();
    let running = builder(server.url())
        .start(
            StreamConsumer::new("g", "c1", ["s1", "s2"]).start_at(StartAt::Beginning),
            rec.clone(),
        )
        .unwrap();
    assert!(
        wait_until(WAIT, || rec.len() >= 500),
        "consumed {}",
        rec.len()
    );
    let mut s = HashMap::new();
    assert!(
        wait_until(WAIT, || {
            s = samples(&running);
            ["s1", "s2"].iter().all(|st| {
                s.get(&format!(
                    "ringq_stream_lag{{group=g,mode=stream,stream={st}}}"
                )) == Some(&0.0)
                    && s.get(&format!(
                        "ringq_stream_pending{{group=g,mode=stream,stream={st}}}"
                    )) == Some(&0.0)
            })
        }),
        "lag and pending per stream read back to 0: {s:?}"
    );
    assert_eq!(
        get(&s, "ringq_messages_consumed_total{mode=stream,source=s1}"),
        300.0
    );
    assert_eq!(
        get(&s, "ringq_messages_consumed_total{mode=stream,source=s2}"),
        200.0
    );
    running.shutdown().unwrap();
}

/// With worker dispatch the handler runs on the workers: their handler times are in the
/// histogram too, one per message.
#[test]
fn worker_handler_times_are_counted() {
    let server = start(Kind::Redis);
    let mut c = server.client().unwrap();
    c.lpush_many("wq", payloads("w", 3000)).unwrap();
    let rec = Recorder::<String>::default();
    let running = builder(server.url())
        .dispatch(Dispatch::workers(2))
        .start(PopConsumer::new(["wq"]), rec.clone())
        .unwrap();
    assert!(
        wait_until(WAIT, || rec.len() >= 3000),
        "consumed {}",
        rec.len()
    );
    assert!(
        wait_until(WAIT, || {
            samples(&running).get("ringq_process_duration_seconds_count{mode=pop}") == Some(&3000.0)
        }),
        "3000 handler times: {:?}",
        samples(&running).get("ringq_process_duration_seconds_count{mode=pop}")
    );
    running.shutdown().unwrap();
}

/// Queue depth (`ringq_queue_depth`): nothing is sampled (and pop mode opens no Control
/// connection) until metrics are asked for; then each queue's gauge equals its waiting
/// messages as the server counts them — every priority level summed — while the handler
/// holds the drain up, and falls to 0 once the queues are drained.
#[test]
fn queue_depth_is_sampled_once_asked_for() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let server = start(Kind::Redis);
    let mut c = server.client().unwrap();
    let d2 = ringq::Queue::new("d2").priorities([0, 5]);
    c.lpush_many("d1", payloads("a", 300)).unwrap();
    c.lpush_many("d2", payloads("b", 100)).unwrap();
    c.lpush_many(d2.key_for_priority(5), payloads("c", 200))
        .unwrap();
    let open = Arc::new(AtomicBool::new(false));
    let handled = Arc::new(AtomicUsize::new(0));
    let (o, h) = (open.clone(), handled.clone());
    let handler = move |_: &ringq::Message<'_>| {
        h.fetch_add(1, Ordering::SeqCst);
        while !o.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        Outcome::Ack
    };
    // Opens the gate when dropped: a failed assertion must not leave the worker waiting.
    struct Opens(Arc<AtomicBool>);
    impl Drop for Opens {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let _gate = Opens(open.clone());
    let running = builder(server.url())
        .dispatch(Dispatch::workers(1))
        .prefetch(8)
        .queue_depth(Duration::from_millis(50), 10)
        .start(
            PopConsumer::new([ringq::Queue::new("d1"), d2.clone()]),
            handler,
        )
        .unwrap();
    assert!(wait_until(WAIT, || handled.load(Ordering::SeqCst) >= 1));
    // Ten periods unasked: nothing sampled, no Control connection.
    std::thread::sleep(Duration::from_millis(500));
    let s = running.stats();
    assert!(
        s.per_source_depth.iter().all(|(_, d)| d.is_none()),
        "sampled before asked: {:?}",
        s.per_source_depth
    );
    assert_eq!(s.connections.control_ready + s.connections.control_down, 0);
    // Asked (a collector is created): the gauges equal the server's lengths.
    let waiting = |c: &mut ringq_tests::TestClient| {
        let d1 = c.llen("d1").unwrap();
        let d2 = c.llen("d2").unwrap() + c.llen(d2.key_for_priority(5)).unwrap();
        (d1 as f64, d2 as f64)
    };
    let mut last = HashMap::new();
    let mut want = (0.0, 0.0);
    assert!(
        wait_until(WAIT, || {
            last = samples(&running);
            want = waiting(&mut c);
            last.get("ringq_queue_depth{mode=pop,source=d1}") == Some(&want.0)
                && last.get("ringq_queue_depth{mode=pop,source=d2}") == Some(&want.1)
        }),
        "depths {want:?} sampled: {last:?}"
    );
    assert!(
        want.0 > 0.0 && want.1 > 0.0,
        "the drain was held up: {want:?}"
    );
    assert!(want.0 + want.1 <= 600.0 - 1.0);
    open.store(true, Ordering::SeqCst);
    assert!(wait_until(WAIT, || handled.load(Ordering::SeqCst) >= 600));
    assert!(
        wait_until(WAIT, || {
            last = samples(&running);
            last.get("ringq_queue_depth{mode=pop,source=d1}") == Some(&0.0)
                && last.get("ringq_queue_depth{mode=pop,source=d2}") == Some(&0.0)
        }),
        "drained queues sampled at 0: {last:?}"
    );
    running.shutdown().unwrap();
}

/// Above the source limit nothing is sampled and no `ringq_queue_depth` series is
/// exported, though metrics were asked for; reliable mode samples its queues' levels.
#[test]
fn queue_depth_above_the_limit_is_not_sampled() {
    let server = start(Kind::Redis);
    let mut c = server.client().unwrap();
    for q in ["l1", "l2", "l3"] {
        c.lpush_many(q, payloads(q, 50)).unwrap();
    }
    let rec = Recorder::<String>::default();
    let over = builder(server.url())
        .queue_depth(Duration::from_millis(20), 2)
        .start(PopConsumer::new(["l1", "l2", "l3"]), rec.clone())
        .unwrap();
    let _ = samples(&over);
    assert!(
        wait_until(WAIT, || rec.len() >= 150),
        "consumed {}",
        rec.len()
    );
    std::thread::sleep(Duration::from_millis(300));
    let s = samples(&over);
    assert!(
        !s.keys().any(|k| k.starts_with("ringq_queue_depth")),
        "no depth above the limit: {s:?}"
    );
    over.shutdown().unwrap();
    // At the limit, in reliable mode: every queue sampled (all drained: 0).
    let rec = Recorder::<String>::default();
    c.lpush_many("r1", payloads("r", 40)).unwrap();
    let running = builder(server.url())
        .queue_depth(Duration::from_millis(20), 2)
        .start(ReliableConsumer::new("c9", ["r1", "r2"]), rec.clone())
        .unwrap();
    let mut s = samples(&running);
    assert!(
        wait_until(WAIT, || rec.len() >= 40),
        "consumed {}",
        rec.len()
    );
    assert!(
        wait_until(WAIT, || {
            s = samples(&running);
            s.get("ringq_queue_depth{mode=reliable,source=r1}") == Some(&0.0)
                && s.get("ringq_queue_depth{mode=reliable,source=r2}") == Some(&0.0)
        }),
        "reliable depths: {s:?}"
    );
    running.shutdown().unwrap();
}

/// Kombu mode's exposition parses too, with its own mode label: consumed and acked equal
/// what was handled, the queue's depth is sampled (Kombu's step keys summed).
#[test]
fn kombu_mode_exports_its_counters_and_depth() {
    let server = start(Kind::Redis);
    let mut c = server.client().unwrap();
    for i in 0..50 {
        let e = ringq::kombu::Outgoing::new(format!("k{i}"), "text/plain")
            .routing_key("kq")
            .priority(if i % 2 == 0 { 0 } else { 9 })
            .encode();
        let key = ringq::kombu::queue_key("kq", if i % 2 == 0 { 0 } else { 9 });
        c.cmd([b"LPUSH".to_vec(), key.into_bytes(), e]).unwrap();
    }
    let rec = Recorder::<String>::default();
    let running = builder(server.url())
        .queue_depth(Duration::from_millis(20), 10)
        .start(ringq::KombuConsumer::new("m1", ["kq"]), rec.clone())
        .unwrap();
    let _ = samples(&running);
    assert!(
        wait_until(WAIT, || rec.len() >= 50),
        "consumed {}",
        rec.len()
    );
    let mut s = HashMap::new();
    assert!(
        wait_until(WAIT, || {
            s = samples(&running);
            s.get("ringq_messages_acked_total{mode=kombu}") == Some(&50.0)
                && s.get("ringq_queue_depth{mode=kombu,source=kq}") == Some(&0.0)
        }),
        "kombu counters: {s:?}"
    );
    assert_eq!(
        get(&s, "ringq_messages_consumed_total{mode=kombu,source=kq}"),
        50.0
    );
    running.shutdown().unwrap();
}

//! Reliable mode (issue 11) against a real redis-server: leases, acks, retries with
//! backoff, dead letters, recovery of a dead consumer's messages, a restart with the same
//! id, fencing of stale outcomes, a stop with handlers in flight, and faults between the
//! server and the engine. Each fault test checks the fault really happened, then counts
//! delivered, lost (must be 0) and duplicated.

use std::time::{Duration, Instant};

use ringq::envelope::{self, keys};
use ringq::{Backoff, Dispatch, Event, Outcome, ReliableConsumer};
use ringq_resp::Frame;
use ringq_tests::{wait_until, Fault, FaultProxy, TestClient};

mod support;
use support::{
    builder, builder_for, on_redis_and_valkey, payloads, start, wait_any_blocked, Kind, WAIT,
};

on_redis_and_valkey!(
    drains_with_acks_and_leaves_nothing_leased,
    a_dry_lane_wakes_for_new_messages_on_any_queue,
    without_key_tracking_a_blocked_lease_wakes_for_any_queue,
    a_refused_exists_falls_back_to_polling_without_spinning,
    plain_payloads_and_envelopes_are_both_consumed,
    a_poison_message_goes_dead_after_exactly_max_deliveries_with_growing_delays,
    dead_outcomes_are_capped_by_length,
    another_consumer_takes_back_a_dead_consumers_messages,
    a_restart_with_the_same_id_takes_its_messages_back_at_once,
    a_stop_with_handlers_in_flight_loses_nothing_and_leaves_no_lease,
    a_stale_ack_is_fenced_and_reported,
    replies_lost_in_flight_lose_nothing,
    client_kill_while_blocked_loses_nothing,
    a_server_restart_with_appendfsync_always_loses_nothing,
    a_frozen_server_loses_nothing,
    priority_levels_hold_in_reliable_mode,
    dead_letters_older_than_the_age_cap_are_dropped,
);

/// What a handler saw: (payload, deliveries, when) of each delivery.
type Seen = support::Recorder<(String, u32, Instant)>;

fn exists(c: &mut TestClient, key: &[u8]) -> bool {
    matches!(c.cmd([&b"EXISTS"[..], key]).unwrap(), Frame::Integer(1))
}

fn llen(c: &mut TestClient, key: &[u8]) -> i64 {
    c.llen(key).unwrap()
}

/// Everything of consumer `id` on queue `q` is gone: no processing list, no heartbeat,
/// not a member of the consumer set.
fn assert_clean(c: &mut TestClient, q: &str, id: &str) {
    let q = q.as_bytes();
    let id = id.as_bytes();
    assert_eq!(
        llen(c, &keys::processing(q, id)),
        0,
        "processing list empty"
    );
    assert!(!exists(c, &keys::lease(q, id)), "lease hash deleted");
    assert!(!exists(c, &keys::heartbeat(q, id)), "heartbeat deleted");
    let member = c.cmd([&b"SISMEMBER"[..], &keys::consumers(q), id]).unwrap();
    assert_eq!(member, Frame::Integer(0), "left the consumer set");
}

fn drains_with_acks_and_leaves_nothing_leased(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    c.lpush_many("ra", payloads("a", 5000)).unwrap();
    c.lpush_many("rb", payloads("b", 3000)).unwrap();
    let seen = Seen::default();
    let running = builder(server.url())
        .start(
            ReliableConsumer::new("c1", ["ra", "rb"]).batch(64),
            seen.clone(),
        )
        .unwrap();
    assert!(
        wait_until(WAIT, || seen.len() >= 8000),
        "delivered {}",
        seen.len()
    );
    let stats = running.shutdown().unwrap();
    assert_eq!(seen.tally(), (8000, 0));
    assert_eq!(stats.acked, 8000);
    assert_eq!(stats.stale_outcomes, 0);
    for q in ["ra", "rb"] {
        assert_eq!(llen(&mut c, q.as_bytes()), 0);
        assert_clean(&mut c, q, "c1");
    }
}

/// A client on `c`'s server has key tracking on and last ran `cmd`.
fn a_client_ran(c: &mut TestClient, tracking: bool, cmd: &str) -> bool {
    let list = c.cmd(["CLIENT", "LIST"]).unwrap();
    let text = list
        .as_bytes()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default();
    text.lines().any(|l| {
        let flags = l
            .split(' ')
            .find_map(|f| f.strip_prefix("flags="))
            .unwrap_or("");
        flags.contains('t') == tracking && l.contains(&format!(" cmd={cmd} "))
    })
}

/// A consumer of three queues on one lane (one connection), as `user` (password `pw`)
/// when given, checking dry queues every 50 ms where it polls.
fn three_queues(
    server: &ringq_tests::RedisServer,
    user: Option<&str>,
    qs: [&str; 3],
    seen: &Seen,
) -> ringq::Running {
    let mut b = builder(server.url()).connections_per_shard(1);
    if let Some(u) = user {
        b = b.username(u).password("pw");
    }
    b.start(
        ReliableConsumer::new("c1", qs).idle_check(Duration::from_millis(50)),
        seen.clone(),
    )
    .unwrap()
}

/// Pushes one message onto each of `qs` in turn (after `before(i)`), waiting for each to
/// be delivered; then stops and checks each came once.
fn each_queue_wakes_the_lane(
    c: &mut TestClient,
    running: ringq::Running,
    seen: &Seen,
    qs: [&str; 3],
    mut before: impl FnMut(&mut TestClient, usize),
) {
    for (i, q) in qs.iter().enumerate() {
        before(c, i);
        c.lpush_many(q, [format!("m{i}")]).unwrap();
        assert!(
            wait_until(WAIT, || seen.len() > i),
            "message on {q} delivered"
        );
    }
    running.shutdown().unwrap();
    assert_eq!(seen.tally(), (3, 0));
}

/// A user with every command but `denied`.
fn acl_user_without(c: &mut TestClient, user: &str, denied: &str) {
    let deny = format!("-{denied}");
    c.cmd(["ACL", "SETUSER", user, "on", ">pw", "~*", "+@all", &deny])
        .unwrap();
}

/// A dry lane of several queues names them all in one EXISTS, which tracks them, and
/// then waits for the server's invalidation of one: a message on any queue is leased.
fn a_dry_lane_wakes_for_new_messages_on_any_queue(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    let seen = Seen::default();
    let qs = ["w1", "w2", "w3"];
    let running = three_queues(&server, None, qs, &seen);
    each_queue_wakes_the_lane(&mut c, running, &seen, qs, |c, i| {
        assert!(
            wait_until(WAIT, || a_client_ran(c, true, "exists")),
            "the lane watches its keys before message {i}"
        );
    });
}

/// Where key tracking is refused (here an ACL without CLIENT TRACKING), a dry lane of
/// several queues blocks on one and checks the others every idle-check instead.
fn without_key_tracking_a_blocked_lease_wakes_for_any_queue(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    acl_user_without(&mut c, "nt", "client|tracking");
    let seen = Seen::default();
    let qs = ["w1", "w2", "w3"];
    let running = three_queues(&server, Some("nt"), qs, &seen);
    wait_any_blocked(&mut c);
    assert!(
        !a_client_ran(&mut c, true, "blmove"),
        "no connection tracks keys"
    );
    each_queue_wakes_the_lane(&mut c, running, &seen, qs, |_, _| {});
}

/// Where EXISTS is refused (an ACL without it) a lane cannot watch its keys: it falls
/// back to blocking on one and polling the others, without retrying EXISTS in a loop.
fn a_refused_exists_falls_back_to_polling_without_spinning(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    acl_user_without(&mut c, "ne", "exists");
    let seen = Seen::default();
    let qs = ["x1", "x2", "x3"];
    let running = three_queues(&server, Some("ne"), qs, &seen);
    wait_any_blocked(&mut c);
    // EXISTS calls the ACL refused (INFO commandstats' rejected_calls).
    let refused = |c: &mut TestClient| -> u64 {
        let stats = c.info("commandstats").unwrap_or_default();
        stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_exists:"))
            .and_then(|r| r.split(',').find_map(|f| f.strip_prefix("rejected_calls=")))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let before = refused(&mut c);
    std::thread::sleep(Duration::from_secs(1));
    let spins = refused(&mut c) - before;
    assert!(
        spins <= 2,
        "EXISTS refused {spins} times in a second: the lane spins"
    );
    each_queue_wakes_the_lane(&mut c, running, &seen, qs, |_, _| {});
}

fn plain_payloads_and_envelopes_are_both_consumed(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    let mut wrapped = Vec::new();
    envelope::encode(&mut wrapped, 2, Some(b"id-7"), None, b"wrapped");
    c.cmd([&b"LPUSH"[..], b"env", b"plain", &wrapped]).unwrap();
    let seen = Seen::default();
    let running = builder(server.url())
        .start(ReliableConsumer::new("c1", ["env"]), seen.clone())
        .unwrap();
    assert!(wait_until(WAIT, || seen.len() >= 2));
    running.shutdown().unwrap();
    let log = seen.snapshot();
    let got: Vec<(String, u32)> = log.into_iter().map(|(p, d, _)| (p, d)).collect();
    assert_eq!(
        got,
        vec![("plain".to_owned(), 1), ("wrapped".to_owned(), 3)],
        "a plain payload is delivery 1; an envelope counting 2 earlier ones is delivery 3"
    );
    assert_clean(&mut c, "env", "c1");
}

fn a_poison_message_goes_dead_after_exactly_max_deliveries_with_growing_delays(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    c.lpush_many("pq", ["poison", "fine"]).unwrap();
    let seen = Seen::default();
    let handler = seen.deciding(|p: &str, _: u32| {
        if p == "poison" {
            Outcome::Retry
        } else {
            Outcome::Ack
        }
    });
    let backoff = Backoff::Exponential {
        base: Duration::from_millis(200),
        max: Duration::from_secs(10),
        jitter: 0.0,
    };
    let running = builder(server.url())
        .start(
            ReliableConsumer::new("c1", ["pq"])
                .max_deliveries(4)
                .backoff(backoff),
            handler,
        )
        .unwrap();
    let dead = keys::dead(b"pq");
    assert!(
        wait_until(WAIT, || llen(&mut c, &dead) == 1),
        "poison is dead"
    );
    let stats = running.shutdown().unwrap();
    let log = seen.snapshot();
    let poison: Vec<_> = log.iter().filter(|(p, _, _)| p == "poison").collect();
    let deliveries: Vec<u32> = poison.iter().map(|(_, d, _)| *d).collect();
    assert_eq!(
        deliveries,
        vec![1, 2, 3, 4],
        "exactly max-deliveries deliveries"
    );
    let gaps: Vec<Duration> = poison.windows(2).map(|w| w[1].2 - w[0].2).collect();
    // 200 ms, 400 ms, 800 ms as configured: each wait is longer than the one before, and
    // no shorter than its delay.
    for (i, g) in gaps.iter().enumerate() {
        // (Due times are whole milliseconds of the wall clock.)
        assert!(
            *g + Duration::from_millis(2) >= Duration::from_millis(200 << i),
            "gap {i}: {gaps:?}"
        );
    }
    assert!(
        gaps[0] < gaps[1] && gaps[1] < gaps[2],
        "delays grow: {gaps:?}"
    );
    let entry = match c.cmd([&b"LINDEX"[..], &dead, b"0"]).unwrap() {
        Frame::BulkString(b) => b,
        f => panic!("dead entry: {f:?}"),
    };
    let env = envelope::parse(&entry).expect("dead entries carry an envelope");
    assert_eq!(env.deliveries, 4);
    assert!(env.reason.unwrap().contains("retries exhausted"));
    assert!(env.dead_at_ms.is_some());
    assert_eq!(&entry[env.header_len..], b"poison");
    assert_eq!(stats.acked, 1);
    assert!(
        !exists(&mut c, &keys::retry(b"pq")),
        "nothing left to retry"
    );
    assert_clean(&mut c, "pq", "c1");
}

fn dead_outcomes_are_capped_by_length(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    c.lpush_many("dq", payloads("d", 50)).unwrap();
    let seen = Seen::default();
    let handler = seen.deciding(|_: &str, _: u32| Outcome::Dead);
    let running = builder(server.url())
        .start(
            ReliableConsumer::new("c1", ["dq"]).dead_letters(10, Duration::from_secs(3600)),
            handler,
        )
        .unwrap();
    assert!(wait_until(WAIT, || seen.len() >= 50));
    running.shutdown().unwrap();
    assert_eq!(
        llen(&mut c, &keys::dead(b"dq")),
        10,
        "the dead list keeps its newest 10"
    );
    assert_clean(&mut c, "dq", "c1");
}

fn another_consumer_takes_back_a_dead_consumers_messages(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    // A consumer "gone" leased 100 messages and died: its processing list and its set
    // membership remain, its heartbeat has expired.
    let proc_gone = keys::processing(b"rq", b"gone");
    c.lpush_many(&proc_gone, payloads("leased", 100)).unwrap();
    c.cmd([&b"SADD"[..], &keys::consumers(b"rq"), b"gone"])
        .unwrap();
    c.lpush_many("rq", payloads("fresh", 100)).unwrap();
    let seen = Seen::default();
    let running = builder(server.url())
        .start(
            ReliableConsumer::new("alive", ["rq"]).lease(Duration::from_secs(1)),
            seen.clone(),
        )
        .unwrap();
    assert!(
        wait_until(WAIT, || seen.len() >= 200),
        "delivered {}",
        seen.len()
    );
    let stats = running.shutdown().unwrap();
    assert_eq!(seen.tally(), (200, 0));
    let log = seen.snapshot();
    assert!(
        log.iter()
            .filter(|(p, _, _)| p.starts_with("leased"))
            .all(|(_, d, _)| *d == 2),
        "a recovered message counts its earlier delivery"
    );
    assert_eq!(stats.recovered, 100);
    assert_eq!(llen(&mut c, &proc_gone), 0);
    let events = seen.events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Recovered {
                swept: 1,
                messages: 100,
                ..
            }
        )),
        "{events:?}"
    );
    assert_clean(&mut c, "rq", "alive");
}

fn a_restart_with_the_same_id_takes_its_messages_back_at_once(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    // The previous run of "c1" left 50 leased messages, and its heartbeat is still alive
    // for ten minutes: nobody else may take them, but c1 itself does at once.
    let held = Duration::from_secs(600);
    let proc1 = keys::processing(b"sq", b"c1");
    c.lpush_many(&proc1, payloads("left", 50)).unwrap();
    let px = held.as_millis().to_string();
    c.cmd([
        &b"SET"[..],
        &keys::heartbeat(b"sq", b"c1"),
        b"1",
        b"PX",
        px.as_bytes(),
    ])
    .unwrap();
    let seen = Seen::default();
    let running = builder(server.url())
        .start(ReliableConsumer::new("c1", ["sq"]), seen.clone())
        .unwrap();
    // "At once" as a behaviour bound: the wait gives up after a tenth of the time the old
    // heartbeat still holds the messages, so passing it means no lease was waited out.
    assert!(WAIT <= held / 10);
    assert!(
        wait_until(WAIT, || seen.len() >= 50),
        "c1 took back {} of its 50 messages within {WAIT:?}; its old heartbeat holds \
         them for {held:?}",
        seen.len()
    );
    running.shutdown().unwrap();
    assert_eq!(seen.tally(), (50, 0));
    assert_clean(&mut c, "sq", "c1");
}

fn a_stop_with_handlers_in_flight_loses_nothing_and_leaves_no_lease(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    const N: usize = 2000;
    c.lpush_many("tq", payloads("t", N)).unwrap();
    let seen = Seen::default();
    let handler = seen.deciding(|_: &str, _: u32| {
        std::thread::sleep(Duration::from_millis(2));
        Outcome::Ack
    });
    let running = builder(server.url())
        .dispatch(Dispatch::workers(2))
        .prefetch(256)
        .start(ReliableConsumer::new("c1", ["tq"]).batch(32), handler)
        .unwrap();
    assert!(wait_until(WAIT, || seen.len() >= 200));
    let stats = running.shutdown().unwrap();
    let handled = seen.len();
    assert!(
        handled < N,
        "the stop came mid-drain ({handled} of {N} handled)"
    );
    let left = llen(&mut c, b"tq") as usize;
    assert_eq!(seen.tally().1, 0, "no duplicates");
    assert_eq!(
        handled + left,
        N,
        "every message handled or back in the queue"
    );
    assert_eq!(stats.acked as usize, handled);
    assert_clean(&mut c, "tq", "c1");
}

fn a_stale_ack_is_fenced_and_reported(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    c.lpush_many("fq", ["slow"]).unwrap();
    // Consumer A's inline handler holds its loop past the 1 s lease (as SIGSTOP would):
    // its heartbeat expires, B takes the message back and handles it; A's ack, when it
    // finally comes, finds nothing and is reported, not applied to anything else.
    let seen_a = Seen::default();
    let a = builder(server.url())
        .start(
            ReliableConsumer::new("a", ["fq"]).lease(Duration::from_secs(1)),
            seen_a.deciding(|_: &str, _: u32| {
                std::thread::sleep(Duration::from_secs(4));
                Outcome::Ack
            }),
        )
        .unwrap();
    assert!(wait_until(WAIT, || seen_a.len() >= 1));
    let seen_b = Seen::default();
    let b = builder(server.url())
        .start(
            ReliableConsumer::new("b", ["fq"]).lease(Duration::from_secs(1)),
            seen_b.clone(),
        )
        .unwrap();
    assert!(wait_until(WAIT, || seen_b.len() >= 1), "B got the message");
    assert!(wait_until(WAIT, || {
        seen_a
            .events()
            .iter()
            .any(|e| matches!(e, Event::StaleOutcomes { count: 1, .. }))
    }));
    let sa = a.shutdown().unwrap();
    let sb = b.shutdown().unwrap();
    assert_eq!(sa.stale_outcomes, 1);
    assert_eq!(sb.stale_outcomes, 0);
    let log_b = seen_b.snapshot();
    assert_eq!(log_b[0].1, 2, "B's delivery is the second");
    assert_eq!(llen(&mut c, b"fq"), 0);
    assert_clean(&mut c, "fq", "a");
    assert_clean(&mut c, "fq", "b");
}

fn replies_lost_in_flight_lose_nothing(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    const N: usize = 20_000;
    c.lpush_many("lq", payloads("l", N)).unwrap();
    let proxy = FaultProxy::start(server.addr()).unwrap();
    let seen = Seen::default();
    let running = builder(proxy.url())
        .prefetch(512)
        .start(ReliableConsumer::new("c1", ["lq"]).batch(64), seen.clone())
        .unwrap();
    for _ in 0..3 {
        let before = seen.len();
        assert!(wait_until(WAIT, || seen.len() > before + 1000));
        // The proxy forwards the next reply, then resets the connection before the
        // engine can read it: a lease applied on the server whose answer is lost.
        let fired = proxy.fired();
        let delivered = seen.distinct();
        assert!(
            delivered < N,
            "armed mid-drain: {delivered} of {N} delivered"
        );
        proxy.set(Fault::ResetAfterReply);
        assert!(
            wait_until(WAIT, || proxy.fired() > fired),
            "the fault fired"
        );
        proxy.set(Fault::None);
    }
    assert!(
        wait_until(WAIT, || seen.distinct() >= N),
        "delivered {}",
        seen.distinct()
    );
    let stats = running.shutdown().unwrap();
    let (distinct, dups) = seen.tally();
    assert_eq!(distinct, N, "0 lost");
    assert!(stats.reconnects >= 1);
    assert!(
        dups <= 3 * 512,
        "duplicates bounded by the prefetch per fault: {dups}"
    );
    assert_clean(&mut c, "lq", "c1");
}

fn client_kill_while_blocked_loses_nothing(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    let seen = Seen::default();
    let running = builder(server.url())
        .start(ReliableConsumer::new("c1", ["kq"]), seen.clone())
        .unwrap();
    wait_any_blocked(&mut c); // waiting in BLMOVE
    let killed = c
        .client_kill(&[("TYPE", "normal"), ("SKIPME", "yes")])
        .unwrap();
    assert!(killed >= 1, "killed the engine's connections");
    c.lpush_many("kq", payloads("k", 1000)).unwrap();
    assert!(wait_until(WAIT, || seen.distinct() >= 1000));
    let stats = running.shutdown().unwrap();
    assert_eq!(seen.tally(), (1000, 0));
    assert!(stats.reconnects >= 1);
    assert_clean(&mut c, "kq", "c1");
}

fn a_server_restart_with_appendfsync_always_loses_nothing(kind: Kind) {
    let server = builder_for(kind).aof_always(true).start().unwrap();
    let mut c = server.client().unwrap();
    const N: usize = 20_000;
    c.lpush_many("aq", payloads("a", N)).unwrap();
    let seen = Seen::default();
    let running = builder(server.url())
        .start(
            ReliableConsumer::new("c1", ["aq"]).batch(32),
            seen.deciding(|_: &str, _: u32| {
                std::thread::sleep(Duration::from_micros(50));
                Outcome::Ack
            }),
        )
        .unwrap();
    assert!(wait_until(WAIT, || seen.len() >= 2000));
    server.restart().unwrap();
    let after_restart = seen.len();
    assert!(after_restart < N, "the restart came mid-drain");
    assert!(
        wait_until(WAIT, || seen.distinct() >= N),
        "delivered {}",
        seen.distinct()
    );
    let stats = running.shutdown().unwrap();
    assert_eq!(seen.tally().0, N, "0 lost");
    assert!(stats.reconnects >= 1);
    let mut c = server.client().unwrap();
    assert_clean(&mut c, "aq", "c1");
}

fn a_frozen_server_loses_nothing(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    const N: usize = 5000;
    c.lpush_many("zq", payloads("z", N)).unwrap();
    let seen = Seen::default();
    let running = builder(server.url())
        .reply_timeout(Duration::from_secs(1))
        .reply_grace(Duration::from_secs(1))
        .start(
            ReliableConsumer::new("c1", ["zq"]).batch(16),
            seen.deciding(|_: &str, _: u32| {
                std::thread::sleep(Duration::from_micros(200));
                Outcome::Ack
            }),
        )
        .unwrap();
    assert!(wait_until(WAIT, || seen.len() >= 500));
    // kill -STOP for 10 s: replies stop, the deadlines fire, the connections are
    // replaced (their connects wait until the server resumes).
    server.freeze().unwrap();
    std::thread::sleep(Duration::from_secs(10));
    let during = seen.len();
    server.thaw().unwrap();
    assert!(during < N, "the freeze came mid-drain");
    assert!(
        wait_until(WAIT, || seen.distinct() >= N),
        "delivered {}",
        seen.distinct()
    );
    let stats = running.shutdown().unwrap();
    assert_eq!(seen.tally().0, N, "0 lost");
    assert!(
        stats.reconnects >= 1,
        "the reply deadline fired and the connections were replaced"
    );
    assert_clean(&mut c, "zq", "c1");
}

fn priority_levels_hold_in_reliable_mode(kind: Kind) {
    use ringq::Queue;
    let server = start(kind);
    let mut c = server.client().unwrap();
    let q = Queue::new("pr").priorities([0, 9]);
    c.lpush_many(q.key_for_priority(0), payloads("low", 50))
        .unwrap();
    c.lpush_many(q.key_for_priority(9), payloads("high", 50))
        .unwrap();
    let seen = Seen::default();
    let running = builder(server.url())
        .start(ReliableConsumer::new("c1", [q]).batch(10), seen.clone())
        .unwrap();
    assert!(wait_until(WAIT, || seen.len() >= 100));
    running.shutdown().unwrap();
    let log = seen.snapshot();
    let first_low = log
        .iter()
        .position(|(p, _, _)| p.starts_with("low"))
        .unwrap();
    let last_high = log
        .iter()
        .rposition(|(p, _, _)| p.starts_with("high"))
        .unwrap();
    assert!(last_high < first_low, "the higher level is served first");
    let highs: Vec<&String> = log
        .iter()
        .map(|(p, _, _)| p)
        .filter(|p| p.starts_with("high"))
        .collect();
    let mut sorted = highs.clone();
    sorted.sort();
    assert_eq!(highs, sorted, "each level in FIFO order");
    assert_eq!(seen.tally(), (100, 0));
    assert_eq!(llen(&mut c, &keys::processing(b"{pr}:p9", b"c1")), 0);
    assert_clean(&mut c, "pr", "c1");
}

fn dead_letters_older_than_the_age_cap_are_dropped(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    let dead = keys::dead(b"ag");
    // An entry that died long ago, at the tail (oldest) of the dead list.
    let mut old = Vec::new();
    envelope::encode(&mut old, 3, Some(b"old"), Some((1_000, "long ago")), b"old");
    c.cmd([&b"LPUSH"[..], &dead, &old]).unwrap();
    c.lpush_many("ag", ["new"]).unwrap();
    let seen = Seen::default();
    let running = builder(server.url())
        .start(
            ReliableConsumer::new("c1", ["ag"]).dead_letters(100, Duration::from_secs(3600)),
            seen.deciding(|_: &str, _: u32| Outcome::Dead),
        )
        .unwrap();
    assert!(wait_until(WAIT, || seen.len() >= 1));
    running.shutdown().unwrap();
    let entries = match c.cmd([&b"LRANGE"[..], &dead, b"0", b"-1"]).unwrap() {
        Frame::Array(v) => v,
        f => panic!("{f:?}"),
    };
    assert_eq!(
        entries.len(),
        1,
        "the entry past the age cap went: {entries:?}"
    );
    let Frame::BulkString(e) = &entries[0] else {
        panic!("{entries:?}")
    };
    let env = envelope::parse(e).unwrap();
    assert_eq!(&e[env.header_len..], b"new");
}

//! Stream mode (issue 12) against real servers — redis-server and Valkey 9 for every
//! case: consumer groups, own pending entries read again at start, claims from dead
//! consumers, retries and dead letters, deleted entries, tag filters, order, lag, and
//! faults between the server and the engine. Fault tests check the fault happened, then
//! count delivered, lost (must be 0) and duplicated.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringq::{Backoff, Dispatch, Message, Outcome, StartAt, StreamConsumer, StreamKey};
use ringq_resp::Frame;
use ringq_tests::{wait_until, Fault, FaultProxy, TestClient};

mod support;
use support::{
    ack_after, builder, builder_for, on_redis_and_valkey, start, wait_any_blocked, xadd, Kind, WAIT,
};

on_redis_and_valkey!(
    drains_a_group_with_acks,
    a_new_group_starts_with_new_entries_by_default,
    a_restart_with_the_same_id_reads_its_pending_entries_first,
    another_consumer_claims_a_dead_consumers_entries_after_the_lease,
    a_poison_entry_goes_dead_after_exactly_max_deliveries,
    a_deleted_pending_entry_is_skipped_and_acked,
    the_tag_filter_acks_what_it_does_not_deliver,
    orderly_dispatch_keeps_each_streams_order,
    lag_and_pending_are_reported,
    client_kill_while_blocked_loses_nothing,
    replies_lost_in_flight_lose_nothing,
    a_server_restart_with_appendfsync_always_loses_nothing,
    a_frozen_server_loses_nothing,
    delete_on_ack_removes_settled_entries,
    a_deleted_group_stops_the_engine_with_a_clear_error,
    orderly_by_a_field_keeps_each_keys_order,
);

/// (stream, payload, deliveries, when) of each delivery.
type Seen = support::Recorder<(String, String, u32, Instant)>;

fn int(f: Frame) -> i64 {
    match f {
        Frame::Integer(n) => n,
        f => panic!("expected an integer, got {f:?}"),
    }
}

/// The group's pending count (XPENDING summary).
fn pending(c: &mut TestClient, stream: &str, group: &str) -> i64 {
    match c.cmd(["XPENDING", stream, group]).unwrap() {
        Frame::Array(v) => int(v.into_iter().next().unwrap()),
        f => panic!("{f:?}"),
    }
}

fn from_start(streams: &[&str], id: &str) -> StreamConsumer {
    StreamConsumer::new(
        "g",
        id.to_owned(),
        streams.iter().map(|s| StreamKey::from(*s)),
    )
    .start_at(StartAt::Beginning)
}

fn drains_a_group_with_acks(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    xadd(&mut c, "sa", "a", 3000, None);
    xadd(&mut c, "sb", "b", 2000, None);
    let seen = Seen::default();
    let running = builder(server.url())
        .start(from_start(&["sa", "sb"], "c1").batch(64), seen.clone())
        .unwrap();
    assert!(
        wait_until(WAIT, || seen.len() >= 5000),
        "delivered {}",
        seen.len()
    );
    let stats = running.shutdown().unwrap();
    assert_eq!((seen.distinct(), seen.dups()), (5000, 0));
    assert_eq!(stats.acked, 5000);
    assert_eq!(pending(&mut c, "sa", "g") + pending(&mut c, "sb", "g"), 0);
}

fn a_new_group_starts_with_new_entries_by_default(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    xadd(&mut c, "sn", "old", 10, None);
    let seen = Seen::default();
    let running = builder(server.url())
        .start(StreamConsumer::new("g", "c1", ["sn"]), seen.clone())
        .unwrap();
    wait_any_blocked(&mut c);
    xadd(&mut c, "sn", "new", 5, None);
    assert!(wait_until(WAIT, || seen.len() >= 5));
    running.shutdown().unwrap();
    let log = seen.snapshot();
    assert!(
        log.iter()
            .all(|(_, p, d, _)| p.starts_with("new") && *d == 1),
        "{log:?}"
    );
    assert_eq!(log.len(), 5);
}

fn a_restart_with_the_same_id_reads_its_pending_entries_first(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    c.cmd(["XGROUP", "CREATE", "sr", "g", "$", "MKSTREAM"])
        .unwrap();
    xadd(&mut c, "sr", "left", 50, None);
    // The previous run of c1 read 50 entries and died before acking them.
    c.cmd([
        "XREADGROUP",
        "GROUP",
        "g",
        "c1",
        "COUNT",
        "100",
        "STREAMS",
        "sr",
        ">",
    ])
    .unwrap();
    xadd(&mut c, "sr", "fresh", 20, None);
    let seen = Seen::default();
    let running = builder(server.url())
        .start(
            StreamConsumer::new("g", "c1", ["sr"]).lease(Duration::from_secs(600)),
            seen.clone(),
        )
        .unwrap();
    assert!(wait_until(WAIT, || seen.len() >= 70));
    running.shutdown().unwrap();
    let log = seen.snapshot();
    assert_eq!(seen.distinct(), 70);
    // Its own pending entries first, each as its second delivery; then the new ones.
    assert!(
        log[..50]
            .iter()
            .all(|(_, p, d, _)| p.starts_with("left") && *d == 2),
        "{log:?}"
    );
    assert!(log[50..]
        .iter()
        .all(|(_, p, d, _)| p.starts_with("fresh") && *d == 1));
    assert_eq!(pending(&mut c, "sr", "g"), 0);
}

fn another_consumer_claims_a_dead_consumers_entries_after_the_lease(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    c.cmd(["XGROUP", "CREATE", "sc", "g", "$", "MKSTREAM"])
        .unwrap();
    xadd(&mut c, "sc", "held", 100, None);
    c.cmd([
        "XREADGROUP",
        "GROUP",
        "g",
        "gone",
        "COUNT",
        "100",
        "STREAMS",
        "sc",
        ">",
    ])
    .unwrap();
    let seen = Seen::default();
    let running = builder(server.url())
        .start(
            StreamConsumer::new("g", "alive", ["sc"]).lease(Duration::from_secs(1)),
            seen.clone(),
        )
        .unwrap();
    assert!(
        wait_until(WAIT, || seen.len() >= 100),
        "claimed {}",
        seen.len()
    );
    let stats = running.shutdown().unwrap();
    let log = seen.snapshot();
    assert_eq!(seen.distinct(), 100);
    assert!(
        log.iter().all(|(_, _, d, _)| *d == 2),
        "claimed entries carry their count"
    );
    assert_eq!(stats.recovered, 100);
    assert_eq!(pending(&mut c, "sc", "g"), 0);
}

fn a_poison_entry_goes_dead_after_exactly_max_deliveries(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    c.cmd(["XGROUP", "CREATE", "sp", "g", "$", "MKSTREAM"])
        .unwrap();
    c.cmd(["XADD", "sp", "*", "payload", "poison", "extra", "kept"])
        .unwrap();
    c.cmd(["XADD", "sp", "*", "payload", "fine"]).unwrap();
    let seen = Seen::default();
    let handler = seen.deciding(|p: &str, _: u32| {
        if p == "poison" {
            Outcome::Retry
        } else {
            Outcome::Ack
        }
    });
    let backoff = Backoff::Exponential {
        base: Duration::from_millis(100),
        max: Duration::from_secs(5),
        jitter: 0.0,
    };
    let running = builder(server.url())
        .start(
            StreamConsumer::new("g", "c1", ["sp"])
                .start_at(StartAt::Beginning)
                .max_deliveries(4)
                .backoff(backoff),
            handler,
        )
        .unwrap();
    assert!(wait_until(WAIT, || int(c
        .cmd(["XLEN", "{sp}:dead"])
        .unwrap())
        == 1));
    running.shutdown().unwrap();
    let log = seen.snapshot();
    let poison: Vec<_> = log.iter().filter(|(_, p, _, _)| p == "poison").collect();
    let deliveries: Vec<u32> = poison.iter().map(|(_, _, d, _)| *d).collect();
    assert_eq!(
        deliveries,
        vec![1, 2, 3, 4],
        "exactly max-deliveries, counted by the server"
    );
    let gaps: Vec<Duration> = poison.windows(2).map(|w| w[1].3 - w[0].3).collect();
    assert!(
        gaps[0] < gaps[1] && gaps[1] < gaps[2],
        "delays grow: {gaps:?}"
    );
    let dead = match c.cmd(["XRANGE", "{sp}:dead", "-", "+"]).unwrap() {
        Frame::Array(v) => v,
        f => panic!("{f:?}"),
    };
    let text = format!("{dead:?}");
    for want in [
        "poison",
        "extra",
        "kept",
        "ringq-reason",
        "retries exhausted",
        "ringq-deliveries",
    ] {
        assert!(text.contains(want), "dead entry lacks {want}: {text}");
    }
    assert_eq!(
        pending(&mut c, "sp", "g"),
        0,
        "dead is acked: not both dead and pending"
    );
}

fn a_deleted_pending_entry_is_skipped_and_acked(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    c.cmd(["XGROUP", "CREATE", "sd", "g", "$", "MKSTREAM"])
        .unwrap();
    let id = match c.cmd(["XADD", "sd", "*", "payload", "gone"]).unwrap() {
        Frame::BulkString(b) => String::from_utf8(b.to_vec()).unwrap(),
        f => panic!("{f:?}"),
    };
    xadd(&mut c, "sd", "kept", 5, None);
    c.cmd([
        "XREADGROUP",
        "GROUP",
        "g",
        "c1",
        "COUNT",
        "10",
        "STREAMS",
        "sd",
        ">",
    ])
    .unwrap();
    assert_eq!(int(c.cmd(["XDEL", "sd", &id]).unwrap()), 1);
    let seen = Seen::default();
    let running = builder(server.url())
        .start(StreamConsumer::new("g", "c1", ["sd"]), seen.clone())
        .unwrap();
    assert!(wait_until(WAIT, || seen.len() >= 5));
    let stats = running.shutdown().unwrap();
    assert_eq!(seen.distinct(), 5);
    assert_eq!(
        stats.deleted, 1,
        "the deleted entry was found and acknowledged"
    );
    assert_eq!(pending(&mut c, "sd", "g"), 0);
}

fn the_tag_filter_acks_what_it_does_not_deliver(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    xadd(&mut c, "st", "a", 30, Some("TagA"));
    xadd(&mut c, "st", "b", 20, Some("TagB"));
    xadd(&mut c, "st", "c", 40, Some("TagC"));
    xadd(&mut c, "st", "none", 10, None);
    let seen = Seen::default();
    let running = builder(server.url())
        .start(
            StreamConsumer::new("g", "c1", [StreamKey::new("st").tags("TagA || TagB")])
                .start_at(StartAt::Beginning),
            seen.clone(),
        )
        .unwrap();
    assert!(wait_until(WAIT, || seen.len() >= 50));
    assert!(wait_until(WAIT, || pending(&mut c, "st", "g") == 0));
    let stats = running.shutdown().unwrap();
    let log = seen.snapshot();
    assert_eq!(log.len(), 50);
    assert!(log
        .iter()
        .all(|(_, p, _, _)| p.starts_with("a-") || p.starts_with("b-")));
    assert_eq!(stats.filtered, 50, "TagC and untagged entries acked unseen");
}

fn orderly_dispatch_keeps_each_streams_order(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    for s in ["o1", "o2", "o3"] {
        xadd(&mut c, s, s, 500, None);
    }
    let seen = Seen::default();
    let running = builder(server.url())
        .dispatch(Dispatch::orderly(3))
        .start(
            from_start(&["o1", "o2", "o3"], "c1").batch(16),
            seen.deciding(ack_after(Duration::from_micros(100))),
        )
        .unwrap();
    assert!(wait_until(WAIT, || seen.len() >= 1500));
    running.shutdown().unwrap();
    let log = seen.snapshot();
    for s in ["o1", "o2", "o3"] {
        let got: Vec<&String> = log
            .iter()
            .filter(|(q, _, _, _)| q == s)
            .map(|(_, p, _, _)| p)
            .collect();
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(got.len(), 500);
        assert_eq!(got, sorted, "{s} in order");
    }
}

fn lag_and_pending_are_reported(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    xadd(&mut c, "sl", "l", 1000, None);
    let seen = Seen::default();
    let gate = Arc::new(Mutex::new(()));
    let held = gate.lock().unwrap();
    let g2 = gate.clone();
    let handler = seen.deciding(move |_: &str, _: u32| {
        drop(g2.lock().unwrap());
        Outcome::Ack
    });
    let running = builder(server.url())
        .prefetch(100)
        .dispatch(Dispatch::workers(1))
        .start(from_start(&["sl"], "c1").batch(50), handler)
        .unwrap();
    // The handler is held: at most the prefetch is delivered, the rest is lag.
    assert!(wait_until(WAIT, || {
        let s = running.stats();
        s.pending > 0 && s.lag > 0
    }));
    let s = running.stats();
    assert!(s.lag >= 800 && s.lag <= 1000, "lag {}", s.lag);
    assert!(s.pending >= 1 && s.pending <= 100, "pending {}", s.pending);
    drop(held);
    assert!(wait_until(WAIT, || seen.len() >= 1000));
    assert!(wait_until(WAIT, || {
        let s = running.stats();
        s.lag == 0 && s.pending == 0
    }));
    running.shutdown().unwrap();
}

fn client_kill_while_blocked_loses_nothing(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    let seen = Seen::default();
    let running = builder(server.url())
        .start(StreamConsumer::new("g", "c1", ["sk"]), seen.clone())
        .unwrap();
    wait_any_blocked(&mut c);
    let killed = c
        .client_kill(&[("TYPE", "normal"), ("SKIPME", "yes")])
        .unwrap();
    assert!(killed >= 1);
    xadd(&mut c, "sk", "k", 1000, None);
    assert!(wait_until(WAIT, || seen.distinct() >= 1000));
    let stats = running.shutdown().unwrap();
    assert_eq!((seen.distinct(), seen.dups()), (1000, 0));
    assert!(stats.reconnects >= 1);
    assert_eq!(pending(&mut c, "sk", "g"), 0);
}

fn replies_lost_in_flight_lose_nothing(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    const N: usize = 20_000;
    xadd(&mut c, "sx", "x", N, None);
    let proxy = FaultProxy::start(server.addr()).unwrap();
    let seen = Seen::default();
    let running = builder(proxy.url())
        .prefetch(512)
        .start(from_start(&["sx"], "c1").batch(64), seen.clone())
        .unwrap();
    for _ in 0..3 {
        let before = seen.len();
        assert!(wait_until(WAIT, || seen.len() > before + 1000));
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
    assert_eq!(seen.distinct(), N, "0 lost");
    assert!(stats.reconnects >= 1);
    assert!(
        seen.dups() <= 3 * 512,
        "duplicates bounded: {}",
        seen.dups()
    );
    assert_eq!(pending(&mut c, "sx", "g"), 0);
}

fn a_server_restart_with_appendfsync_always_loses_nothing(kind: Kind) {
    let server = builder_for(kind).aof_always(true).start().unwrap();
    let mut c = server.client().unwrap();
    const N: usize = 10_000;
    xadd(&mut c, "sf", "f", N, None);
    let seen = Seen::default();
    let running = builder(server.url())
        .start(
            from_start(&["sf"], "c1").batch(32),
            seen.deciding(ack_after(Duration::from_micros(100))),
        )
        .unwrap();
    assert!(wait_until(WAIT, || seen.len() >= 1000));
    server.restart().unwrap();
    assert!(seen.len() < N, "the restart came mid-drain");
    assert!(
        wait_until(WAIT, || seen.distinct() >= N),
        "delivered {}",
        seen.distinct()
    );
    let stats = running.shutdown().unwrap();
    assert_eq!(seen.distinct(), N, "0 lost");
    assert!(stats.reconnects >= 1);
    let mut c = server.client().unwrap();
    assert_eq!(pending(&mut c, "sf", "g"), 0);
}

fn a_frozen_server_loses_nothing(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    const N: usize = 5000;
    xadd(&mut c, "sz", "z", N, None);
    let seen = Seen::default();
    let running = builder(server.url())
        .reply_timeout(Duration::from_secs(1))
        .reply_grace(Duration::from_secs(1))
        .start(
            from_start(&["sz"], "c1").batch(16),
            seen.deciding(ack_after(Duration::from_micros(200))),
        )
        .unwrap();
    assert!(wait_until(WAIT, || seen.len() >= 500));
    server.freeze().unwrap();
    std::thread::sleep(Duration::from_secs(5));
    let during = seen.len();
    server.thaw().unwrap();
    assert!(during < N, "the freeze came mid-drain");
    assert!(
        wait_until(WAIT, || seen.distinct() >= N),
        "delivered {}",
        seen.distinct()
    );
    let stats = running.shutdown().unwrap();
    assert_eq!(seen.distinct(), N, "0 lost");
    assert!(
        stats.reconnects >= 1,
        "the deadline fired and the connections were replaced"
    );
    assert_eq!(pending(&mut c, "sz", "g"), 0);
}

fn delete_on_ack_removes_settled_entries(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    xadd(&mut c, "sdel", "d", 500, None);
    let seen = Seen::default();
    let running = builder(server.url())
        .start(
            from_start(&["sdel"], "c1").delete_on_ack(true),
            seen.clone(),
        )
        .unwrap();
    assert!(wait_until(WAIT, || seen.len() >= 500));
    assert!(
        wait_until(WAIT, || int(c.cmd(["XLEN", "sdel"]).unwrap()) == 0),
        "acked entries deleted"
    );
    running.shutdown().unwrap();
    assert_eq!(pending(&mut c, "sdel", "g"), 0);
}

fn a_deleted_group_stops_the_engine_with_a_clear_error(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    let seen = Seen::default();
    let running = builder(server.url())
        .start(StreamConsumer::new("g", "c1", ["sg"]), seen.clone())
        .unwrap();
    wait_any_blocked(&mut c);
    c.cmd(["XGROUP", "DESTROY", "sg", "g"]).unwrap();
    c.cmd(["XADD", "sg", "*", "payload", "x"]).unwrap();
    let err = running
        .wait()
        .expect_err("a destroyed group stops the engine");
    let text = err.to_string();
    assert!(
        text.contains("no longer exists") && text.contains("XGROUP CREATE"),
        "{text}"
    );
}

fn orderly_by_a_field_keeps_each_keys_order(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    for i in 0..600 {
        let (k, p) = (format!("k{}", i % 3), format!("{i:05}"));
        c.send(["XADD", "sk2", "*", "payload", &p, "key", &k])
            .unwrap();
    }
    for _ in 0..600 {
        c.read_reply().unwrap();
    }
    let log: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let l2 = log.clone();
    let handler = move |m: &Message<'_>| {
        let key = String::from_utf8_lossy(m.field(b"key").unwrap_or(b"?")).into_owned();
        l2.lock()
            .unwrap()
            .push((key, String::from_utf8_lossy(m.payload()).into_owned()));
        std::thread::sleep(Duration::from_micros(50));
        Outcome::Ack
    };
    let running = builder(server.url())
        .dispatch(Dispatch::orderly_by(3, |m: &Message<'_>| {
            m.field(b"key")
                .map_or(0, |k| k.iter().map(|&b| u64::from(b)).sum())
        }))
        .start(from_start(&["sk2"], "c1").batch(32), handler)
        .unwrap();
    assert!(wait_until(WAIT, || log.lock().unwrap().len() >= 600));
    running.shutdown().unwrap();
    let log = log.lock().unwrap().clone();
    for k in ["k0", "k1", "k2"] {
        let got: Vec<&String> = log.iter().filter(|(x, _)| x == k).map(|(_, p)| p).collect();
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(got.len(), 200, "{k}: every entry, its field read back");
        assert_eq!(got, sorted, "{k} in order");
    }
}

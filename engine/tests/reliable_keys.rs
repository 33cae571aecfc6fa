//! Reliable mode's records on the server (issue 23): leases recorded by position and
//! settled by reference, whatever order outcomes come in; every key a queue's alone,
//! whatever its name; and an upgrade from ringq 0.1's processing lists (acked by value)
//! with messages in flight, which loses nothing. And an element that lands in a leased
//! list without this consumer leasing it (a second process with the same id, or a late
//! command of a connection given up) is never settled in place of one of its own.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ringq::envelope::keys::{self, legacy};
use ringq::{Dispatch, Outcome, ReliableConsumer};
use ringq_resp::Frame;
use ringq_tests::{wait_until, TestClient};

mod support;
use support::{builder, on_redis_and_valkey, payloads, start, Kind, WAIT};

on_redis_and_valkey!(
    a_lease_this_consumer_did_not_make_is_never_settled_by_mistake,
    outcomes_in_any_order_settle_by_position_and_lose_nothing,
    queues_whose_names_used_to_meet_keep_their_messages_apart,
    an_upgrade_from_processing_lists_with_messages_in_flight_loses_nothing,
);

/// (queue, payload, deliveries, when) of each delivery.
type Seen = support::Recorder<(String, String, u32, Instant)>;

fn exists(c: &mut TestClient, key: &[u8]) -> bool {
    matches!(c.cmd([&b"EXISTS"[..], key]).unwrap(), Frame::Integer(1))
}

/// Nothing of consumer `id` left on queue key `q`: no leased list, no lease hash.
fn assert_released(c: &mut TestClient, q: &[u8], id: &[u8]) {
    for k in [keys::processing(q, id), keys::lease(q, id)] {
        assert!(
            !exists(c, &k),
            "{} left behind",
            String::from_utf8_lossy(&k)
        );
    }
}

/// Four workers finishing in any order, with retries and dead letters among the acks:
/// the tail moves only past settled runs, out-of-order acks are marked, retries and
/// deads are rebuilt on the server from their position. Every message ends acked once or
/// dead once; nothing is lost, nothing is left leased.
fn outcomes_in_any_order_settle_by_position_and_lose_nothing(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    const N: usize = 3000;
    c.lpush_many("oq", payloads("o", N)).unwrap();
    let verdict = |p: &str| -> u32 { p.rsplit('-').next().unwrap().parse::<u32>().unwrap() % 13 };
    let seen = Seen::default();
    let handler = seen.deciding(move |p: &str, d: u32| {
        // A little work of varying length, so the workers finish out of order.
        std::thread::sleep(Duration::from_micros(u64::from(verdict(p)) * 40));
        match (verdict(p), d) {
            (0, 1) | (1, 1) => Outcome::Retry,
            (2, _) => Outcome::Dead,
            _ => Outcome::Ack,
        }
    });
    let running = builder(server.url())
        .dispatch(Dispatch::workers(4))
        .prefetch(512)
        .start(
            ReliableConsumer::new("c1", ["oq"])
                .batch(64)
                .backoff(ringq::Backoff::Levels(vec![Duration::from_millis(20)])),
            handler,
        )
        .unwrap();
    let retried = (0..N).filter(|i| (i % 13) < 2).count();
    let dead = (0..N).filter(|i| i % 13 == 2).count();
    assert!(
        wait_until(WAIT, || seen.len() >= N + retried),
        "delivered {} of {}",
        seen.len(),
        N + retried
    );
    let stats = running.shutdown().unwrap();
    let mut per: HashMap<String, Vec<u32>> = HashMap::new();
    for (_, p, d, _) in seen.snapshot() {
        per.entry(p).or_default().push(d);
    }
    assert_eq!(per.len(), N, "every message delivered");
    for (p, ds) in &per {
        let want: &[u32] = if verdict(p) < 2 { &[1, 2] } else { &[1] };
        assert_eq!(ds, want, "deliveries of {p}");
    }
    assert_eq!(stats.stale_outcomes, 0);
    assert_eq!(stats.dead as usize, dead);
    assert_eq!(c.llen(keys::dead(b"oq")).unwrap() as usize, dead);
    assert_eq!(c.llen("oq").unwrap(), 0);
    assert!(!exists(&mut c, &keys::retry(b"oq")));
    // The dead list holds the payloads whole, behind the new envelope.
    let Frame::Array(deads) = c.cmd(["LRANGE", "{oq}:dead", "0", "-1"]).unwrap() else {
        panic!("no dead list")
    };
    for f in deads {
        let Frame::BulkString(e) = f else { panic!() };
        let env = ringq::envelope::parse(&e).expect("an envelope");
        let payload = std::str::from_utf8(&e[env.header_len..]).unwrap();
        assert_eq!(verdict(payload), 2, "dead {payload:?}");
        assert_eq!(env.deliveries, 1);
    }
    assert_released(&mut c, b"oq", b"c1");
}

/// `x` and `{x}` used to share `{x}:processing:<id>`, so a restart put `{x}`'s messages
/// back on `x`. Each queue below leaves messages leased by a crashed run; the restarted
/// consumer gives every one back to its own queue.
fn queues_whose_names_used_to_meet_keep_their_messages_apart(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    let names = [
        "x",
        "{x}",
        "a{b}c",
        "{b}",
        "b",
        "{}",
        "{x}:p",
        "z\u{e9}\u{1}",
    ];
    for n in names {
        let key = keys::processing(n.as_bytes(), b"c1");
        c.lpush_many(&key, (0..20).map(|i| format!("{n}|{i}")))
            .unwrap();
        // The crashed run's lease hash (its token is not the new run's).
        c.cmd([
            &b"HSET"[..],
            &keys::lease(n.as_bytes(), b"c1"),
            b"fence",
            b"old",
            b"tail",
            b"0",
        ])
        .unwrap();
    }
    let seen = Seen::default();
    let running = builder(server.url())
        .start(ReliableConsumer::new("c1", names), seen.clone())
        .unwrap();
    assert!(wait_until(WAIT, || seen.len() >= 20 * names.len()));
    running.shutdown().unwrap();
    let log = seen.snapshot();
    assert_eq!(log.len(), 20 * names.len(), "no duplicates");
    for (queue, payload, d, _) in &log {
        let from = payload.rsplit_once('|').unwrap().0;
        assert_eq!(queue, from, "{payload:?} came back on {queue:?}");
        assert_eq!(*d, 2, "a taken-back message counts its earlier delivery");
    }
    for n in names {
        assert_released(&mut c, n.as_bytes(), b"c1");
    }
}

/// An upgrade from ringq 0.1 with messages in flight, as its keys were left: this
/// consumer's own old processing list (a restart with the same id), a dead old consumer's
/// processing list in the old consumer set, and, for a queue with a hash tag (whose key
/// names changed), the old retry set and dead list. All of it comes back; nothing is
/// lost and the old keys are gone.
fn an_upgrade_from_processing_lists_with_messages_in_flight_loses_nothing(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    let queues = ["up", "{app}:up"];
    for q in queues {
        let qb = q.as_bytes();
        c.lpush_many(q, (0..10).map(|i| format!("{q}|fresh{i}")))
            .unwrap();
        c.lpush_many(
            legacy::processing(qb, b"c1"),
            (0..20).map(|i| format!("{q}|own{i}")),
        )
        .unwrap();
        c.lpush_many(
            legacy::processing(qb, b"old"),
            (0..30).map(|i| format!("{q}|old{i}")),
        )
        .unwrap();
        c.cmd([&b"SADD"[..], &legacy::consumers(qb), b"old"])
            .unwrap();
    }
    // The queue with a hash tag: five retries due at once, three dead letters.
    let tagged = b"{app}:up";
    for i in 0..5 {
        let e = format!("\0rq1 d=1 id=r{i}\n{{app}}:up|retry{i}");
        c.cmd([&b"ZADD"[..], &legacy::retry(tagged), b"1", e.as_bytes()])
            .unwrap();
    }
    for i in 0..3 {
        let e = format!("\0rq1 d=25 id=d{i} t=1 why=x\n{{app}}:up|dead{i}");
        c.cmd([&b"LPUSH"[..], &legacy::dead(tagged), e.as_bytes()])
            .unwrap();
    }
    assert_ne!(legacy::retry(tagged), keys::retry(tagged));
    let seen = Seen::default();
    let running = builder(server.url())
        .start(
            ReliableConsumer::new("c1", queues).lease(Duration::from_secs(1)),
            seen.clone(),
        )
        .unwrap();
    let want = 2 * (10 + 20 + 30) + 5;
    assert!(
        wait_until(WAIT, || seen.len() >= want),
        "delivered {} of {want}",
        seen.len()
    );
    let stats = running.shutdown().unwrap();
    assert_eq!(seen.tally(), (want, 0), "every message once");
    for (queue, payload, d, _) in seen.snapshot() {
        assert_eq!(payload.rsplit_once('|').unwrap().0, queue);
        let carried =
            payload.contains("|own") || payload.contains("|old") || payload.contains("|retry");
        assert_eq!(d, if carried { 2 } else { 1 }, "deliveries of {payload}");
    }
    assert_eq!(stats.recovered, 2 * (20 + 30));
    for q in queues {
        let qb = q.as_bytes();
        for k in [
            legacy::processing(qb, b"c1"),
            legacy::processing(qb, b"old"),
        ] {
            assert!(!exists(&mut c, &k), "{} left", String::from_utf8_lossy(&k));
        }
        let member = c
            .cmd([&b"SISMEMBER"[..], &legacy::consumers(qb), b"old"])
            .unwrap();
        assert_eq!(
            member,
            Frame::Integer(0),
            "the old consumer left the old set"
        );
        assert_released(&mut c, qb, b"c1");
    }
    assert!(!exists(&mut c, &legacy::retry(tagged)));
    assert!(!exists(&mut c, &legacy::dead(tagged)));
    assert_eq!(
        c.llen(keys::dead(tagged)).unwrap(),
        3,
        "the dead letters moved"
    );
}

/// Mid-drain, a second process with the same consumer id (the test, by hand) moves
/// messages from the queue into the consumer's leased list, as a late `LMOVE` of a
/// connection it gave up would. Every later lease reads the list's head back, so the
/// consumer numbers its own elements where they really are, never settles the strangers,
/// and gives them back to the queue once its messages in hand are settled: every message
/// is delivered, none twice, and the strangers are counted.
fn a_lease_this_consumer_did_not_make_is_never_settled_by_mistake(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    const N: usize = 4000;
    c.lpush_many("fq", payloads("f", N)).unwrap();
    let seen = Seen::default();
    let running = builder(server.url())
        .prefetch(64)
        .start(
            ReliableConsumer::new("c1", ["fq"]).batch(16),
            seen.with_pause(Duration::from_micros(300)),
        )
        .unwrap();
    assert!(wait_until(WAIT, || seen.len() >= 500), "draining");
    let leased = keys::processing(b"fq", b"c1");
    let mut strangers = Vec::new();
    for _ in 0..3 {
        match c
            .cmd([&b"LMOVE"[..], b"fq", &leased, b"RIGHT", b"LEFT"])
            .unwrap()
        {
            Frame::BulkString(e) => strangers.push(String::from_utf8_lossy(&e).into_owned()),
            f => panic!("LMOVE by hand: {f:?}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let at = seen.len();
    assert!(at < N, "the strangers came mid-drain ({at} of {N})");
    assert!(
        wait_until(WAIT, || seen.distinct() >= N),
        "delivered {} of {N}",
        seen.distinct()
    );
    let stats = running.shutdown().unwrap();
    let (distinct, dups) = seen.tally();
    println!(
        "{kind:?}: 3 elements moved into the leased list by hand mid-drain: {distinct} of {N} \
         delivered, {dups} duplicates, {} counted as foreign leases",
        stats.foreign_leases
    );
    let delivered: std::collections::HashSet<String> =
        seen.snapshot().into_iter().map(|r| r.1).collect();
    for s in &strangers {
        assert!(delivered.contains(s), "{s}, moved by hand, was delivered");
    }
    assert_eq!((distinct, dups), (N, 0));
    assert!(stats.foreign_leases >= 1, "the strangers were noticed");
    assert_eq!(c.llen("fq").unwrap(), 0);
    assert_released(&mut c, b"fq", b"c1");
}

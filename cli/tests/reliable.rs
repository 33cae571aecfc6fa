//! `ringq consume --mode reliable`, `ringq stats` and `ringq dead` as a user meets them:
//! kill -9 mid-drain and restart with the same id, a dead consumer's messages taken back
//! by another after its lease, a frozen consumer's stale acks fenced, and the dead-letter
//! commands. Every fault is checked to have hit mid-run; then the lines are counted:
//! every message printed at least once, duplicates bounded.

use std::collections::HashMap;
use std::time::Duration;

use ringq::envelope::{self, keys};
use ringq_resp::Frame;
use ringq_tests::{wait_until, TestClient};

mod common;
use common::*;

const WAIT: Duration = Duration::from_secs(60);

/// `ringq consume --mode reliable` with a slow reader.
fn reliable(url: &str, id: &str, queue: &str, extra: &[&str]) -> Consumer {
    Consumer::spawn(&reliable_args(url, id, &[queue], extra))
}

fn llen(c: &mut TestClient, key: &[u8]) -> i64 {
    c.llen(key).unwrap()
}

/// Messages in consumer `id`'s leased list of `q` (not the markers of elements settled
/// out of order, which wait there for the tail).
fn leased_by(c: &mut TestClient, q: &str, id: &str) -> i64 {
    let Frame::Array(v) = c
        .cmd([
            &b"LRANGE"[..],
            &keys::processing(q.as_bytes(), id.as_bytes()),
            b"0",
            b"-1",
        ])
        .unwrap()
    else {
        return 0;
    };
    v.iter()
        .filter(|f| !matches!(f, Frame::BulkString(e) if e[..] == *keys::SETTLED))
        .count() as i64
}

/// Leased or queued: what is still on the server for queue `q` and consumer `id`.
fn left(c: &mut TestClient, q: &str, id: &str) -> i64 {
    llen(c, q.as_bytes()) + leased_by(c, q, id)
}

fn tally(lines: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for l in lines {
        *m.entry(l.clone()).or_insert(0) += 1;
    }
    m
}

/// All of 0..n printed at least once; returns the duplicates.
fn assert_all_printed(lines: &[String], n: u64) -> usize {
    let t = tally(lines);
    let missing: Vec<u64> = (0..n).filter(|i| !t.contains_key(&i.to_string())).collect();
    assert!(
        missing.is_empty(),
        "{} of {n} never printed (first: {:?})",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(t.len() as u64, n, "nothing printed that was not produced");
    t.values().map(|k| k - 1).sum()
}

#[test]
fn kill_9_five_times_mid_drain_loses_nothing() {
    let s = server();
    let url = s.url();
    const N: u64 = 50_000;
    produce_seq(&url, "k9", N);
    let mut c = client(&s);
    let mut lines = Vec::new();
    let mut kills = 0;
    for round in 0..6 {
        let p = reliable(&url, "c1", "k9", &[]);
        if round == 5 {
            // The last run drains what is left and is stopped by SIGTERM.
            assert!(wait_until(WAIT, || left(&mut c, "k9", "c1") == 0));
            p.signal(libc::SIGTERM);
            let (l, err, code) = p.finish();
            assert_eq!(code, Some(0), "stderr:\n{err}");
            lines.extend(l);
            break;
        }
        let target = lines.len() + 3000;
        assert!(
            wait_until(WAIT, || lines.len() + p.count() >= target),
            "run {round} printed {}",
            p.count()
        );
        p.signal(libc::SIGKILL);
        let (l, _, _) = p.finish();
        lines.extend(l);
        // The kill hit mid-drain: messages were still queued or leased.
        assert!(
            left(&mut c, "k9", "c1") > 0,
            "run {round} was killed after the drain"
        );
        kills += 1;
    }
    assert_eq!(kills, 5);
    let dups = assert_all_printed(&lines, N);
    eprintln!(
        "{kills} kills: {} lines for {N} messages, {dups} duplicates",
        lines.len()
    );
    assert!(
        dups <= 5 * 256,
        "duplicates {dups} exceed the prefetch per kill (5 × 256)"
    );
    assert_eq!(left(&mut c, "k9", "c1"), 0);
}

#[test]
fn another_consumer_takes_over_a_killed_ones_messages_after_its_lease() {
    let s = server();
    let url = s.url();
    const N: u64 = 20_000;
    produce_seq(&url, "ko", N);
    let mut c = client(&s);
    let a = reliable(&url, "a", "ko", &["--lease-ms", "1000"]);
    assert!(wait_until(WAIT, || a.count() >= 3000));
    // Killed holding leases: a SIGKILL could land between batches, when it holds none,
    // so it is frozen first until it is seen holding some (as the frozen-consumer test).
    let mut leased = 0;
    for _ in 0..50 {
        a.signal(libc::SIGSTOP);
        std::thread::sleep(Duration::from_millis(20));
        leased = leased_by(&mut c, "ko", "a");
        if leased > 0 {
            break;
        }
        a.signal(libc::SIGCONT);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(leased > 0, "a was frozen holding leased messages");
    a.signal(libc::SIGKILL);
    let (mut lines, _, _) = a.finish();
    // What the server ran of a's last commands after the freeze counts too.
    let leased = leased_by(&mut c, "ko", "a");
    assert!(leased > 0, "a was killed holding leased messages");
    let b = reliable(&url, "b", "ko", &["--lease-ms", "1000"]);
    assert!(wait_until(WAIT, || {
        llen(&mut c, b"ko") == 0
            && llen(&mut c, &keys::processing(b"ko", b"a")) == 0
            && llen(&mut c, &keys::processing(b"ko", b"b")) == 0
    }));
    b.signal(libc::SIGTERM);
    let (l, err, code) = b.finish();
    assert_eq!(code, Some(0), "stderr:\n{err}");
    // Said once: the engine's warning, not that and the CLI's own copy of the event.
    assert_eq!(
        err.lines()
            .filter(|l| l.contains("whose heartbeat expired"))
            .count(),
        1,
        "b says once that it took a's messages: {err}"
    );
    lines.extend(l);
    let dups = assert_all_printed(&lines, N);
    assert!(
        dups as i64 <= leased,
        "duplicates {dups} beyond a's {leased} leased"
    );
}

#[test]
fn a_frozen_consumers_late_acks_are_fenced() {
    let s = server();
    let url = s.url();
    const N: u64 = 20_000;
    produce_seq(&url, "fz", N);
    let mut c = client(&s);
    let a = reliable(&url, "a", "fz", &["--lease-ms", "1000"]);
    assert!(wait_until(WAIT, || a.count() >= 2000));
    // SIGSTOP with messages in hand (its reader is slow, so it mostly waits to write a
    // batch); a stop that caught it between batches, holding none, is tried again.
    let mut leased = 0;
    for _ in 0..50 {
        a.signal(libc::SIGSTOP);
        std::thread::sleep(Duration::from_millis(20));
        leased = leased_by(&mut c, "fz", "a");
        if leased > 0 {
            break;
        }
        a.signal(libc::SIGCONT);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(leased > 0, "a was frozen holding leased messages");
    let b = reliable(&url, "b", "fz", &["--lease-ms", "1000"]);
    assert!(
        wait_until(WAIT, || llen(&mut c, &keys::processing(b"fz", b"a")) == 0),
        "b took a's messages back after the lease"
    );
    a.signal(libc::SIGCONT);
    assert!(wait_until(WAIT, || {
        llen(&mut c, b"fz") == 0
            && llen(&mut c, &keys::processing(b"fz", b"a")) == 0
            && llen(&mut c, &keys::processing(b"fz", b"b")) == 0
    }));
    a.signal(libc::SIGTERM);
    b.signal(libc::SIGTERM);
    let (la, err_a, code_a) = a.finish();
    let (lb, err_b, code_b) = b.finish();
    assert_eq!((code_a, code_b), (Some(0), Some(0)), "{err_a}\n{err_b}");
    assert!(
        err_a.contains("not applied"),
        "a reports the acks its lease no longer covered:\n{err_a}"
    );
    let mut lines = la;
    lines.extend(lb);
    assert_all_printed(&lines, N);
}

#[test]
fn stats_and_dead_letters() {
    let s = server();
    let url = s.url();
    let mut c = client(&s);
    c.lpush_many("dl", ["p1", "p2"]).unwrap();
    // Two dead letters, as the engine writes them, and a consumer with a lease.
    for (i, why) in [
        "retries exhausted after 3 deliveries",
        "the handler said dead",
    ]
    .iter()
    .enumerate()
    {
        let mut e = Vec::new();
        envelope::encode(
            &mut e,
            3,
            Some(format!("id{i}").as_bytes()),
            Some((1_700_000_000_000 + i as u64, why)),
            format!("dead{i}").as_bytes(),
        );
        c.cmd([&b"LPUSH"[..], &keys::dead(b"dl"), &e]).unwrap();
    }
    c.lpush_many(keys::processing(b"dl", b"w1"), ["leased"])
        .unwrap();
    c.cmd([&b"SADD"[..], &keys::consumers(b"dl"), b"w1"])
        .unwrap();
    c.cmd([
        &b"SET"[..],
        &keys::heartbeat(b"dl", b"w1"),
        b"1",
        b"PX",
        b"60000",
    ])
    .unwrap();

    let st = run(&["stats", "--url", &url, "--queue", "dl", "--format", "json"]);
    st.assert_success();
    let v: serde_json::Value = serde_json::from_str(&st.lines()[0]).unwrap();
    assert_eq!(v["pending"], 2);
    assert_eq!(v["dead"], 2);
    assert_eq!(v["processing"], 1);
    assert_eq!(v["consumers"][0]["id"], "w1");
    assert_eq!(v["consumers"][0]["alive"], true);
    let text = run(&["stats", "--url", &url, "--queue", "dl"]);
    text.assert_success();
    assert!(
        text.lines()[0].contains("pending 2, retry 0, dead 2"),
        "{:?}",
        text.lines()
    );

    let list = run(&[
        "dead", "--url", &url, "--queue", "dl", "list", "--format", "json",
    ]);
    list.assert_success();
    let rows: Vec<serde_json::Value> = list
        .lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["payload"], "dead1", "newest first");
    assert_eq!(rows[0]["reason"], "the handler said dead");
    assert_eq!(rows[1]["deliveries"], 3);
    assert_eq!(rows[1]["id"], "id0");

    let rq = run(&[
        "dead", "--url", &url, "--queue", "dl", "requeue", "--count", "1",
    ]);
    rq.assert_success();
    assert!(rq.stderr.contains("requeued 1"), "{}", rq.stderr);
    assert_eq!(llen(&mut c, &keys::dead(b"dl")), 1);
    // The oldest dead letter is served next, with a fresh delivery count.
    let got = run(&[
        "consume",
        "--url",
        &url,
        "--mode",
        "reliable",
        "--consumer-id",
        "r1",
        "--queue",
        "dl",
        "--count",
        "1",
        "--format",
        "json",
    ]);
    got.assert_success();
    let m: serde_json::Value = serde_json::from_str(&got.lines()[0]).unwrap();
    assert_eq!(m["payload"], "dead0");
    assert_eq!(m["deliveries"], 1);

    let purge = run(&["dead", "--url", &url, "--queue", "dl", "purge"]);
    purge.assert_success();
    assert!(purge.stderr.contains("purged 1"), "{}", purge.stderr);
    assert_eq!(llen(&mut c, &keys::dead(b"dl")), 0);
    assert!(matches!(
        c.cmd([&b"EXISTS"[..], &keys::dead(b"dl")]).unwrap(),
        Frame::Integer(0)
    ));
}

#[test]
fn reliable_mode_needs_a_consumer_id_and_pop_mode_refuses_its_flags() {
    run(&["consume", "--mode", "reliable", "--queue", "q"])
        .assert_fails_with(2, "--mode reliable needs --consumer-id");
    run(&["consume", "--queue", "q", "--lease-ms", "5000"])
        .assert_fails_with(2, "apply to --mode reliable and stream only");
    run(&["consume", "--queue", "q", "--group", "g"])
        .assert_fails_with(2, "apply to --mode stream only");
}

/// A lease of 31 years (or one that overflows the server's PX) is a usage error at parse
/// time that says why, not a run-time failure blaming the server.
#[test]
fn a_lease_longer_than_a_day_is_refused_with_the_reason() {
    for ms in ["999999999999", "18446744073709551615"] {
        let done = run(&[
            "consume",
            "--mode",
            "reliable",
            "--consumer-id",
            "c1",
            "--queue",
            "q",
            "--lease-ms",
            ms,
        ]);
        done.assert_fails_with(2, "longer than a day");
        assert!(
            done.stderr.contains("crashed consumer's messages"),
            "{}",
            done.stderr
        );
    }
    run(&[
        "consume",
        "--mode",
        "reliable",
        "--consumer-id",
        "c1",
        "--queue",
        "q",
        "--lease-ms",
        "999",
    ])
    .assert_fails_with(2, "at least 1000 ms");
    run(&[
        "consume",
        "--mode",
        "reliable",
        "--consumer-id",
        "c1",
        "--queue",
        "q",
        "--lease-ms",
        "1e9",
    ])
    .assert_fails_with(2, "not a number of milliseconds");
}

#[test]
fn a_server_that_may_evict_gets_a_warning() {
    let s = ringq_tests::RedisServer::builder()
        .arg("--maxmemory-policy", "allkeys-lru")
        .start()
        .expect("redis-server");
    let url = s.url();
    let mut c = client(&s);
    c.lpush_many("ev", ["x"]).unwrap();
    let done = run(&[
        "consume",
        "--url",
        &url,
        "--mode",
        "reliable",
        "--consumer-id",
        "c1",
        "--queue",
        "ev",
        "--count",
        "1",
    ]);
    done.assert_success();
    assert_eq!(done.lines(), ["x"]);
    assert!(
        done.stderr
            .contains("maxmemory-policy is not noeviction (allkeys-lru)"),
        "{}",
        done.stderr
    );
}

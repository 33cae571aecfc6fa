//! `ringq consume --mode stream`, `ringq produce --stream`, `ringq stats --mode stream`
//! and `ringq dead --mode stream` as a user meets them: kill -9 mid-drain and restart
//! with the same id, a killed consumer's entries claimed by another after the lease, tag
//! filters, and the dead stream's commands.

use std::collections::HashMap;
use std::time::Duration;

use ringq_resp::Frame;
use ringq_tests::{wait_until, TestClient};

mod common;
use common::*;

const WAIT: Duration = Duration::from_secs(60);

fn stream_consumer(url: &str, id: &str, stream: &str, extra: &[&str]) -> Consumer {
    let mut args = vec![
        "consume",
        "--url",
        url,
        "--mode",
        "stream",
        "--group",
        "g",
        "--consumer-id",
        id,
        "--queue",
        stream,
        "--from",
        "start",
        "--prefetch",
        "256",
        "--batch",
        "32",
        "--no-pin",
    ];
    args.extend_from_slice(extra);
    Consumer::spawn(&args)
}

fn produce_stream(url: &str, stream: &str, n: u64, tag: Option<&str>) {
    let n = n.to_string();
    let mut args = vec![
        "produce",
        "--url",
        url,
        "--stream",
        "--queue",
        stream,
        "--messages",
        &n,
        "--seq",
    ];
    if let Some(t) = tag {
        args.extend(["--tag", t]);
    }
    run(&args).assert_success();
}

fn int(f: Frame) -> i64 {
    match f {
        Frame::Integer(n) => n,
        f => panic!("expected an integer, got {f:?}"),
    }
}

fn xlen(c: &mut TestClient, s: &str) -> i64 {
    int(c.cmd(["XLEN", s]).unwrap())
}

/// Entries not yet delivered to the group, plus pending ones: 0 once drained and acked.
fn left(c: &mut TestClient, s: &str) -> i64 {
    let pending = match c.cmd(["XPENDING", s, "g"]) {
        Ok(Frame::Array(v)) => int(v.into_iter().next().unwrap()),
        _ => return i64::MAX,
    };
    let lag = match c.cmd(["XINFO", "GROUPS", s]).unwrap() {
        Frame::Array(groups) => groups
            .iter()
            .find_map(|g| {
                let Frame::Array(kv) = g else { return None };
                kv.chunks(2).find_map(|p| match (&p[0], &p[1]) {
                    (Frame::BulkString(k), Frame::Integer(v)) if k.as_ref() == b"lag" => Some(*v),
                    _ => None,
                })
            })
            .unwrap_or(i64::MAX),
        _ => i64::MAX,
    };
    pending.saturating_add(lag)
}

fn assert_all_printed(lines: &[String], n: u64) -> usize {
    let mut t: HashMap<&str, usize> = HashMap::new();
    for l in lines {
        *t.entry(l.as_str()).or_insert(0) += 1;
    }
    let missing: Vec<u64> = (0..n)
        .filter(|i| !t.contains_key(i.to_string().as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {n} never printed (first: {:?})",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(t.len() as u64, n);
    t.values().map(|k| k - 1).sum()
}

#[test]
fn kill_9_five_times_mid_drain_loses_nothing() {
    let s = server();
    let url = s.url();
    const N: u64 = 50_000;
    produce_stream(&url, "k9s", N, None);
    let mut c = client(&s);
    let mut lines = Vec::new();
    let mut kills = 0;
    for round in 0..6 {
        let p = stream_consumer(&url, "c1", "k9s", &[]);
        if round == 5 {
            assert!(wait_until(WAIT, || left(&mut c, "k9s") == 0));
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
        assert!(
            left(&mut c, "k9s") > 0,
            "run {round} was killed after the drain"
        );
        kills += 1;
    }
    assert_eq!(kills, 5);
    let dups = assert_all_printed(&lines, N);
    eprintln!(
        "{kills} kills: {} lines for {N} entries, {dups} duplicates",
        lines.len()
    );
    assert!(
        dups <= 5 * 256,
        "duplicates {dups} exceed the prefetch per kill (5 × 256)"
    );
}

#[test]
fn another_consumer_claims_a_killed_ones_entries_after_the_lease() {
    let s = server();
    let url = s.url();
    const N: u64 = 20_000;
    produce_stream(&url, "kos", N, None);
    let mut c = client(&s);
    let a = stream_consumer(&url, "a", "kos", &["--lease-ms", "1000"]);
    assert!(wait_until(WAIT, || a.count() >= 3000));
    a.signal(libc::SIGKILL);
    let (mut lines, _, _) = a.finish();
    assert!(left(&mut c, "kos") > 0, "a was killed mid-drain");
    let b = stream_consumer(&url, "b", "kos", &["--lease-ms", "1000"]);
    assert!(wait_until(WAIT, || left(&mut c, "kos") == 0));
    b.signal(libc::SIGTERM);
    let (l, err, code) = b.finish();
    assert_eq!(code, Some(0), "stderr:\n{err}");
    lines.extend(l);
    let dups = assert_all_printed(&lines, N);
    assert!(
        dups <= 256,
        "duplicates {dups} beyond what a held (prefetch 256)"
    );
}

#[test]
fn tags_filter_and_json_lines_carry_the_entry_id() {
    let s = server();
    let url = s.url();
    produce_stream(&url, "tg", 30, Some("TagA"));
    produce_stream(&url, "tg", 20, Some("TagB"));
    let done = run(&[
        "consume",
        "--url",
        &url,
        "--mode",
        "stream",
        "--group",
        "g",
        "--consumer-id",
        "c1",
        "--queue",
        "tg",
        "--from",
        "start",
        "--tag",
        "TagB",
        "--count",
        "20",
        "--format",
        "json",
    ]);
    done.assert_success();
    assert!(
        done.stderr.contains(
            "30 entr(ies) did not match --tag 'TagB': acknowledged without being printed"
        ),
        "the filtered entries are counted at exit:\n{}",
        done.stderr
    );
    let rows: Vec<serde_json::Value> = done
        .lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 20);
    assert_eq!(rows[0]["queue"], "tg");
    assert_eq!(rows[0]["payload"], "0");
    assert!(
        rows[0]["id"].as_str().is_some_and(|id| id.contains('-')),
        "{:?}",
        rows[0]
    );
    let mut c = client(&s);
    assert_eq!(
        left(&mut c, "tg"),
        0,
        "TagA entries were acknowledged unprinted"
    );
}

#[test]
fn stream_stats_and_dead_letters() {
    let s = server();
    let url = s.url();
    let mut c = client(&s);
    produce_stream(&url, "ds", 5, None);
    c.cmd(["XGROUP", "CREATE", "ds", "g", "0"]).unwrap();
    c.cmd([
        "XREADGROUP",
        "GROUP",
        "g",
        "w1",
        "COUNT",
        "2",
        "STREAMS",
        "ds",
        ">",
    ])
    .unwrap();
    for i in 0..2 {
        let p = format!("dead{i}");
        c.cmd([
            "XADD",
            "{ds}:dead",
            "*",
            "payload",
            &p,
            "ringq-id",
            "1-1",
            "ringq-reason",
            "the handler returned Outcome::Dead",
            "ringq-deliveries",
            "3",
        ])
        .unwrap();
    }
    let st = run(&[
        "stats", "--url", &url, "--mode", "stream", "--queue", "ds", "--format", "json",
    ]);
    st.assert_success();
    let v: serde_json::Value = serde_json::from_str(&st.lines()[0]).unwrap();
    assert_eq!(v["length"], 5);
    assert_eq!(v["dead"], 2);
    assert_eq!(v["groups"][0]["name"], "g");
    assert_eq!(v["groups"][0]["pending"], 2);
    assert_eq!(v["groups"][0]["lag"], 3);
    assert_eq!(v["groups"][0]["consumers"][0]["name"], "w1");

    let list = run(&[
        "dead", "--url", &url, "--mode", "stream", "--queue", "ds", "list", "--format", "json",
    ]);
    list.assert_success();
    let rows: Vec<serde_json::Value> = list
        .lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["payload"], "dead1", "newest first");
    assert_eq!(
        rows[0]["ringq-reason"],
        "the handler returned Outcome::Dead"
    );

    let rq = run(&[
        "dead", "--url", &url, "--mode", "stream", "--queue", "ds", "requeue", "--count", "1",
    ]);
    rq.assert_success();
    assert_eq!(xlen(&mut c, "{ds}:dead"), 1);
    assert_eq!(xlen(&mut c, "ds"), 6, "requeued as a new entry");
    let last = c.cmd(["XREVRANGE", "ds", "+", "-", "COUNT", "1"]).unwrap();
    let text = format!("{last:?}");
    assert!(
        text.contains("dead0") && !text.contains("ringq-reason"),
        "{text}"
    );

    let purge = run(&[
        "dead", "--url", &url, "--mode", "stream", "--queue", "ds", "purge",
    ]);
    purge.assert_success();
    assert_eq!(xlen(&mut c, "{ds}:dead"), 0);
}

#[test]
fn a_bad_from_or_tag_is_a_usage_error_naming_the_flag() {
    let s = server();
    let url = s.url();
    let base = [
        "consume",
        "--url",
        &url,
        "--mode",
        "stream",
        "--group",
        "g",
        "--consumer-id",
        "c1",
        "--queue",
        "s",
    ];
    for (flag, value) in [
        ("--from", "garbage"),
        ("--from", "1-2-3"),
        ("--tag", "(("),
        ("--tag", "A ||"),
        ("--tag", "A | B"),
    ] {
        let mut args = base.to_vec();
        args.extend([flag, value]);
        let done = run(&args);
        done.assert_fails_with(2, flag);
    }
    // Nothing was created: the check came before anything connected.
    let mut c = client(&s);
    assert_eq!(xlen(&mut c, "s"), 0);
}

#[test]
fn stats_of_a_stream_that_does_not_exist_shows_zeros_and_succeeds() {
    let s = server();
    let url = s.url();
    let text = run(&[
        "stats", "--url", &url, "--mode", "stream", "--queue", "nope",
    ]);
    text.assert_success();
    assert_eq!(
        text.lines(),
        ["stream nope (does not exist): length 0, dead 0"],
        "{}",
        text.stderr
    );
    let json = run(&[
        "stats", "--url", &url, "--mode", "stream", "--queue", "nope", "--format", "json",
    ]);
    json.assert_success();
    let v: serde_json::Value = serde_json::from_str(&json.lines()[0]).unwrap();
    assert_eq!(
        (&v["exists"], &v["length"], &v["groups"]),
        (
            &serde_json::json!(false),
            &serde_json::json!(0),
            &serde_json::json!([])
        )
    );
    // A list queue that does not exist shows zeros the same way.
    let list = run(&["stats", "--url", &url, "--queue", "nope"]);
    list.assert_success();
    assert_eq!(list.lines(), ["queue nope: pending 0, retry 0, dead 0"]);
}

#[test]
fn a_group_lost_in_a_restart_without_persistence_says_to_start_consume_again() {
    let s = server();
    let url = s.url();
    produce_stream(&url, "lost", 5, None);
    let consumer = stream_consumer(&url, "c1", "lost", &["--lease-ms", "1000"]);
    assert!(wait_until(WAIT, || consumer.count() == 5), "never drained");
    // The test servers never save: a restart comes back empty, without the group.
    s.kill().unwrap();
    s.restart().unwrap();
    let (_, err, code) = consumer.finish();
    assert_eq!(code, Some(1), "stderr:\n{err}");
    assert!(
        err.contains("no longer has consumer group 'g' (NOGROUP)")
            && err.contains("restarted without persistence")
            && err.contains("Start `ringq consume` again"),
        "{err}"
    );
}

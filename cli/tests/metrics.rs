//! `--metrics-addr` (issue 25, first part): what `ringq consume` serves at `/metrics`
//! parses with an independent parser (the Python `prometheus-client` package's
//! OpenMetrics parser, from PyPI into `target/kombu-venv` by `scripts/setup.sh`), its
//! counters equal what happened, a CLIENT KILL shows as a reconnect, and 50 concurrent
//! scrapers during a drain change no count and grow no memory. And `ringq stats --watch`,
//! the terminal's view of the same figures.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use ringq_tests::{free_port, parse_openmetrics, wait_until};

mod common;
use common::*;

const WAIT: Duration = Duration::from_secs(60);

/// `GET /metrics` at `port`: the status line and the body.
fn scrape(port: u16) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// The samples of an exposition, parsed by Python's `prometheus_client` OpenMetrics
/// parser, as `name{label=value,...} value` lines (labels sorted).
fn parsed(body: &str) -> Vec<String> {
    parse_openmetrics(body)
        .into_iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect()
}

/// The value of the sample `name{labels}` (labels as the parser prints them).
fn value(samples: &[String], sample: &str) -> f64 {
    samples
        .iter()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample} in:\n{}", samples.join("\n")))
}

/// A reliable consumer's exposition, read by an independent parser: messages consumed
/// per source and acked equal what was printed; the await-time histogram counts them;
/// a CLIENT KILL of its connections shows as reconnects.
#[test]
fn the_exposition_parses_and_counts_what_happened() {
    let s = server();
    let url = s.url();
    produce_seq(&url, "mq", 2000);
    let port = free_port().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let p = spawn(&[
        "consume",
        "--url",
        &url,
        "--mode",
        "reliable",
        "--consumer-id",
        "c1",
        "--queue",
        "mq",
        "--metrics-addr",
        &addr,
    ]);
    assert!(
        wait_until(WAIT, || p.stdout_lines() >= 2000),
        "consumed {} of 2000; stderr:\n{}",
        p.stdout_lines(),
        p.stderr_text()
    );
    let acked = |samples: &[String]| value(samples, "ringq_messages_acked_total{mode=reliable}");
    let mut samples = Vec::new();
    assert!(
        wait_until(WAIT, || {
            let (status, body) = scrape(port);
            assert_eq!(status, "HTTP/1.1 200 OK");
            samples = parsed(&body);
            // The shards publish their latency histograms every 100 ms.
            acked(&samples) >= 2000.0
                && value(&samples, "ringq_await_time_seconds_count{mode=reliable}") >= 2000.0
        }),
        "the acks and the await times are counted"
    );
    assert_eq!(
        value(
            &samples,
            "ringq_messages_consumed_total{mode=reliable,source=mq}"
        ),
        2000.0
    );
    assert_eq!(acked(&samples), 2000.0);
    assert_eq!(
        value(&samples, "ringq_messages_failed_total{mode=reliable}"),
        0.0
    );
    assert_eq!(
        value(&samples, "ringq_await_time_seconds_count{mode=reliable}"),
        2000.0
    );
    assert_eq!(
        value(
            &samples,
            "ringq_await_time_seconds_bucket{le=+Inf,mode=reliable}"
        ),
        2000.0
    );
    assert!(
        value(
            &samples,
            "ringq_connections{mode=reliable,role=fetch,state=ready}"
        ) >= 1.0
    );
    assert_eq!(
        value(
            &samples,
            "ringq_connections{mode=reliable,role=control,state=ready}"
        ),
        1.0
    );
    let before = value(&samples, "ringq_reconnects_total{mode=reliable}");

    let mut c = client(&s);
    let killed = c.client_kill(&[("type", "normal")]).unwrap();
    assert!(killed >= 1, "the consumer's connections were killed");
    assert!(
        wait_until(WAIT, || {
            let samples = parsed(&scrape(port).1);
            value(&samples, "ringq_reconnects_total{mode=reliable}") > before
        }),
        "the reconnect is counted"
    );
    // Only /metrics is served.
    let mut other = TcpStream::connect(("127.0.0.1", port)).unwrap();
    other.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let mut text = String::new();
    other.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    p.signal(libc::SIGTERM);
    p.finish().assert_success();
}

/// 50 scrapers at once, over and over, from before the messages arrive until every one
/// was printed, while a pop consumer drains at full speed: every scrape answers a
/// complete exposition and every message is printed once. Then, the consumer idle (so
/// nothing but the scrapes can move its memory), 20 more rounds of 50 leave its resident
/// memory where it was.
#[test]
fn fifty_concurrent_scrapers_change_nothing() {
    let s = server();
    let url = s.url();
    const N: u64 = 300_000;
    let port = free_port().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let p = spawn(&[
        "consume",
        "--url",
        &url,
        "--queue",
        "sq",
        "--metrics-addr",
        &addr,
    ]);
    assert!(
        wait_until(WAIT, || TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "the metrics endpoint listens"
    );
    let rss = || -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", p.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let round = || {
        std::thread::scope(|sc| {
            let handles: Vec<_> = (0..50).map(|_| sc.spawn(|| scrape(port))).collect();
            for h in handles {
                let (status, body) = h.join().unwrap();
                assert_eq!(status, "HTTP/1.1 200 OK");
                assert!(body.ends_with("# EOF\n"), "a complete exposition");
            }
        });
    };
    round();
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut rounds = 0;
    let mut during = 0;
    std::thread::scope(|sc| {
        sc.spawn(|| {
            produce_seq(&url, "sq", N);
            wait_until(WAIT, || p.stdout_lines() as u64 >= N);
            done.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        while !done.load(std::sync::atomic::Ordering::Relaxed) {
            let printed = p.stdout_lines() as u64;
            round();
            rounds += 1;
            if printed > 0 && printed < N {
                during += 1;
            }
        }
    });
    assert!(
        p.stdout_lines() as u64 >= N,
        "consumed {} of {N}",
        p.stdout_lines()
    );
    // Idle now: only the scrapes could grow the process.
    round();
    let first = rss();
    for _ in 0..20 {
        round();
    }
    let after = rss();
    rounds += 21;
    p.signal(libc::SIGTERM);
    let finished = p.finish();
    finished.assert_success();
    let lines = finished.lines();
    let distinct: std::collections::HashSet<&String> = lines.iter().collect();
    println!(
        "{} scrapes, 50 at a time, {during} rounds of them while messages were being \
         printed, around a drain of {N}; idle after it, RSS {first} kB before 1 000 more \
         scrapes and {after} kB after",
        50 * (rounds + 1)
    );
    assert!(
        during >= 1,
        "some scrapes came while the consumer was draining"
    );
    assert_eq!((lines.len() as u64, distinct.len() as u64), (N, N));
    assert!(
        after <= first + 4 * 1024,
        "memory grew with the scrapes: {first} kB -> {after} kB"
    );
}

/// `ringq stats --watch 0.2` on a pipe: one line per refresh, its depth following the
/// queue as a producer fills it and a consumer drains it, with the rate of change; JSON
/// the same as objects. Stopped by SIGTERM.
#[test]
fn stats_watch_follows_a_queue_as_it_fills_and_drains() {
    let s = server();
    let url = s.url();
    produce_seq(&url, "wq", 1000);
    let w = spawn(&["stats", "--url", &url, "--queue", "wq", "--watch", "0.2"]);
    assert!(
        wait_until(WAIT, || w
            .stdout_text_lines()
            .iter()
            .any(|l| l.contains("wq: pending 1000"))),
        "the first refresh shows 1000: {:?}",
        w.stdout_text_lines()
    );
    produce_seq(&url, "wq", 500);
    assert!(
        wait_until(WAIT, || w
            .stdout_text_lines()
            .iter()
            .any(|l| l.contains("pending 1500 (+"))),
        "a refresh shows the queue grown, with a positive rate: {:?}",
        w.stdout_text_lines()
    );
    run(&["consume", "--url", &url, "--queue", "wq", "--count", "1500"]).assert_success();
    assert!(
        wait_until(WAIT, || w
            .stdout_text_lines()
            .iter()
            .any(|l| l.contains("pending 0 (-"))),
        "a refresh shows it drained, with a negative rate: {:?}",
        w.stdout_text_lines()
    );
    let lines = w.stdout_text_lines();
    assert!(
        lines
            .iter()
            .all(|l| l.ends_with("dead 0 (+0/s)") || l.ends_with("dead 0")),
        "{lines:?}"
    );
    w.signal(libc::SIGTERM);
    let _ = w.finish();

    let j = spawn(&[
        "stats", "--url", &url, "--queue", "wq", "--watch", "0.2", "--format", "json",
    ]);
    assert!(
        wait_until(WAIT, || j.stdout_text_lines().len() >= 2),
        "two refreshes"
    );
    for l in j.stdout_text_lines().iter().take(2) {
        let v: serde_json::Value = serde_json::from_str(l).expect("a JSON object per line");
        assert_eq!(
            (v["queue"].as_str(), v["pending"].as_i64()),
            (Some("wq"), Some(0))
        );
        assert!(
            v["t"].is_number() && v.get("pending_per_sec").is_some(),
            "{v}"
        );
    }
    j.signal(libc::SIGTERM);
    let _ = j.finish();
}

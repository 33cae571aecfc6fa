//! `ringq consume` under the faults and knob edges of issue 14, as a user meets them:
//! queues that must never go unserved, large payloads against the byte limit, a server
//! frozen mid-drain, and the errors and exit codes of bad input.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringq_tests::{wait_until, TestClient};

mod common;
use common::*;

const WAIT: Duration = Duration::from_secs(60);

fn blocked(c: &mut TestClient) -> usize {
    c.client_list()
        .unwrap()
        .iter()
        .filter(|i| i.is_blocked())
        .count()
}

/// Waits until `n` connections are blocked in a pop, naming how many were otherwise.
fn wait_blocked(c: &mut TestClient, n: usize) {
    assert!(
        wait_until(WAIT, || blocked(c) == n),
        "expected {n} connections blocked in a pop; {} are",
        blocked(c)
    );
}

/// `ringq consume --queue sq0 --queue sq1 --connections 2 --prefetch 128`, then
/// `LPUSH sq1 x`: before issue 14, sq1's connection never sent a pop.
#[test]
fn the_second_connection_is_served_with_a_prefetch_equal_to_the_batch() {
    let s = server();
    let url = s.url();
    let p = spawn(&[
        "consume",
        "--url",
        &url,
        "--queue",
        "sq0",
        "--queue",
        "sq1",
        "--connections",
        "2",
        "--prefetch",
        "128",
    ]);
    let mut c = client(&s);
    wait_blocked(&mut c, 2);
    c.lpush_many("sq1", ["x"]).unwrap();
    assert!(
        wait_until(WAIT, || p.stdout_lines() == 1),
        "sq1 was never served"
    );
    p.signal(libc::SIGTERM);
    let done = p.finish();
    done.assert_success();
    assert_eq!(done.lines(), ["x"]);
}

/// 2000 queues over 2000 connections: the message in the last queue is printed.
#[test]
fn two_thousand_connections_serve_the_last_queue() {
    let s = ringq_tests::RedisServer::builder()
        .arg("--maxclients", "4000")
        .start()
        .unwrap();
    let url = s.url();
    let mut args: Vec<String> = [
        "consume",
        "--url",
        &url,
        "--connections",
        "2000",
        "--prefetch",
        "2000",
        "--count",
        "1",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    for q in 0..2000 {
        args.push("--queue".into());
        args.push(format!("k{q}"));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = spawn(&refs);
    let mut c = client(&s);
    wait_blocked(&mut c, 2000);
    c.lpush_many("k1999", ["last"]).unwrap();
    let done = p.finish();
    done.assert_success();
    assert_eq!(done.lines(), ["last"]);
}

#[test]
fn a_prefetch_below_the_connection_count_is_a_usage_error_naming_the_flags() {
    let s = server();
    let done = run(&[
        "consume",
        "--url",
        &s.url(),
        "--queue",
        "a",
        "--queue",
        "b",
        "--queue",
        "c",
        "--connections",
        "3",
        "--prefetch",
        "2",
    ]);
    done.assert_fails_with(2, "--prefetch 2 is below the 3 connections that own queues");
    assert!(
        done.stderr.contains("Raise --prefetch to 3"),
        "{}",
        done.stderr
    );
}

/// Issue 14 §4: each bad input exits with the right status and says what to do.
#[test]
fn bad_input_exits_with_the_right_status_and_says_what_is_wrong() {
    let s = server();
    let url = s.url();
    // An unresolvable host is a runtime failure (1), for consume and produce alike.
    let host = "redis://no-such-host.invalid:6379";
    for args in [
        &["consume", "--url", host, "--queue", "q"][..],
        &["produce", "--url", host, "--queue", "q", "--messages", "1"][..],
    ] {
        let done = run(args);
        done.assert_fails_with(1, "no-such-host.invalid");
    }
    // A consumer id Redis would refuse as a connection name: a usage error at once.
    for id in ["has space", "café"] {
        let done = run(&[
            "consume",
            "--url",
            &url,
            "--queue",
            "q",
            "--consumer-id",
            id,
        ]);
        done.assert_fails_with(2, "printable ASCII without spaces");
    }
    // A block timeout Redis would refuse ("timeout is negative"): bounded at parse time.
    let done = run(&[
        "consume",
        "--url",
        &url,
        "--queue",
        "q",
        "--block-timeout-ms",
        "18446744073709551615",
    ]);
    done.assert_fails_with(2, "86400000");
    // `?db=N` selects the database, as `/N` does.
    let mut c = TestClient::connect(&format!("{url}/1")).unwrap();
    c.lpush_many("q", ["in-db-1"]).unwrap();
    let done = run(&[
        "consume",
        "--url",
        &format!("{url}?db=1"),
        "--queue",
        "q",
        "--count",
        "1",
    ]);
    done.assert_success();
    assert_eq!(done.lines(), ["in-db-1"]);
    // An unknown query parameter is named.
    let done = run(&[
        "consume",
        "--url",
        &format!("{url}?tls=yes"),
        "--queue",
        "q",
    ]);
    done.assert_fails_with(2, "unknown query parameter 'tls=yes'");
}

/// Issue 14 §3 through the CLI: a producer pushes at a steady rate, the consumer prints,
/// the server is frozen three times for longer than every deadline. Afterwards pushed =
/// printed + left on the server: nothing lost, nothing printed twice.
fn freeze_three_times_while_consuming(strategy: &str) {
    let s = server();
    let url = s.url();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringq"))
        .args([
            "consume",
            "--url",
            &url,
            "--queue",
            "live",
            "--strategy",
            strategy,
            "--block-timeout-ms",
            "100",
            "--reply-grace-ms",
            "200",
            "--reply-timeout-ms",
            "300",
        ])
        .env("RINGQ_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let printed = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let out = child.stdout.take().unwrap();
    let sink = printed.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let n = line.unwrap().parse::<u64>().expect("a sequence number");
            sink.lock().unwrap().push(n);
        }
    });
    let err = child.stderr.take().unwrap();
    let stderr = Arc::new(std::sync::Mutex::new(String::new()));
    let e = stderr.clone();
    let err_reader = std::thread::spawn(move || {
        for line in BufReader::new(err).lines() {
            let mut e = e.lock().unwrap();
            e.push_str(&line.unwrap());
            e.push('\n');
        }
    });
    // The producer: 200 pushes of 10 every 10 ms or so, until told to stop. Its own
    // connection blocks while the server is frozen, which is fine: it counts what the
    // server acknowledged.
    let pushed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (pushed, stop, url) = (pushed.clone(), stop.clone(), url.clone());
        std::thread::spawn(move || {
            let mut c = TestClient::connect(&url).unwrap();
            let mut next = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let batch: Vec<String> = (next..next + 10).map(|i| i.to_string()).collect();
                c.lpush_many("live", &batch).unwrap();
                next += 10;
                pushed.store(next, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let count = || printed.lock().unwrap().len();
    for round in 1..=3 {
        let before = count();
        assert!(
            wait_until(WAIT, || count() > before + 200),
            "no progress before freeze {round}"
        );
        s.freeze().unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        s.thaw().unwrap();
    }
    let before = count();
    assert!(
        wait_until(WAIT, || count() > before + 200),
        "no progress after the last freeze"
    );
    stop.store(true, Ordering::SeqCst);
    producer.join().unwrap();
    let total = pushed.load(Ordering::SeqCst);
    let mut c = client(&s);
    assert!(
        wait_until(WAIT, || count() as u64 + c.llen("live").unwrap() as u64
            == total
            && c.llen("live").unwrap() == 0),
        "pushed {total}, printed {}, left {}: lost {}",
        count(),
        c.llen("live").unwrap(),
        total as i64 - count() as i64 - c.llen("live").unwrap()
    );
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own unreaped child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    reader.join().unwrap();
    err_reader.join().unwrap();
    let stderr = stderr.lock().unwrap().clone();
    assert!(status.success(), "{status:?}\n{stderr}");
    let got = printed.lock().unwrap().clone();
    assert_eq!(
        got,
        (0..total).collect::<Vec<_>>(),
        "every message once, in order"
    );
    let stalls = stderr.matches("a fresh connection takes over").count();
    assert!(
        stalls >= 3,
        "each freeze must have caught the consumer with a pop in flight; stderr:\n{stderr}"
    );
}

#[test]
fn a_server_frozen_three_times_mid_drain_loses_nothing_adaptive() {
    freeze_three_times_while_consuming("adaptive");
}

#[test]
fn a_server_frozen_three_times_mid_drain_loses_nothing_single() {
    freeze_three_times_while_consuming("single");
}

/// Issue 14 §2 through the CLI: 40 payloads of 25 MB with default flags. Before, the
/// first pop took all 40 (peak RSS 1.96 GB).
#[test]
fn forty_payloads_of_25_mb_keep_the_consumer_s_memory_bounded() {
    const SIZE: usize = 25_000_000;
    let s = server();
    let mut c = client(&s);
    for i in 0..40u8 {
        c.lpush_many("big", [vec![b'a' + (i % 26); SIZE]]).unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringq"))
        .args([
            "consume",
            "--url",
            &s.url(),
            "--queue",
            "big",
            "--count",
            "40",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status_path = format!("/proc/{}/status", child.id());
    let peak_kib = |p: &str| -> Option<u64> {
        let text = std::fs::read_to_string(p).ok()?;
        let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    // VmHWM is the peak resident set: sample it until the process exits.
    let mut peak = 0;
    let mut status = None;
    let exited = wait_until(WAIT, || {
        if let Some(kib) = peak_kib(&status_path) {
            peak = peak.max(kib);
        }
        status = child.try_wait().unwrap();
        status.is_some()
    });
    assert!(exited, "ringq did not finish 40 messages");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.unwrap().success(), "{err}");
    assert_eq!(c.llen("big").unwrap(), 0);
    println!("peak RSS of ringq consume: {} MiB", peak / 1024);
    assert!(peak > 0, "VmHWM was never read");
    // The 64 MiB limit plus one 25 MB message, the read buffer that holds a reply while
    // it arrives, and the binary itself: well under 200 MiB (105 MiB measured; it was
    // 1.96 GB).
    assert!(
        peak < 200 * 1024,
        "peak RSS {} MiB: memory follows batch × size, not the byte limit",
        peak / 1024
    );
}

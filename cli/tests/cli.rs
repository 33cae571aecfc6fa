//! Black-box tests of the `ringq` binary against private, real `redis-server`s.
//!
//! Every test runs the built binary as a user would and checks what reaches stdout,
//! stderr, the exit status and the server. Waiting is on events (output lines, LLEN,
//! CLIENT LIST), never on sleeps; nothing asserts on wall-clock time.

use ringq_tests::{free_port, wait_until, RedisServer, TestClient};
use std::collections::BTreeSet;
use std::io::Read;
use std::process::{Command, Stdio};

mod common;
use common::*;

#[test]
fn produce_seq_then_consume_count_gets_every_message_once_in_order() {
    let s = server();
    let url = s.url();
    let produced = produce_seq(&url, "jobs", 5_000);
    assert!(
        produced.stderr.contains("produced 5000 messages to 'jobs'"),
        "summary line missing: {}",
        produced.stderr
    );
    assert_eq!(client(&s).llen("jobs").unwrap(), 5_000);

    let done = run(&[
        "consume", "--url", &url, "--queue", "jobs", "--count", "5000", "--format", "raw",
    ]);
    done.assert_success();
    assert_eq!(done.lines(), seq(0..5_000));
    assert_eq!(client(&s).llen("jobs").unwrap(), 0);
}

#[test]
fn count_pops_no_more_than_n_and_leaves_exactly_the_rest() {
    let s = server();
    let url = s.url();
    produce_seq(&url, "q", 1_000);
    for strategy in ["adaptive", "single", "batch"] {
        let done = run(&[
            "consume",
            "--url",
            &url,
            "--queue",
            "q",
            "--count",
            "100",
            "--batch",
            "64",
            "--strategy",
            strategy,
        ]);
        done.assert_success();
        assert_eq!(done.lines().len(), 100, "--strategy {strategy}");
    }
    assert_eq!(client(&s).llen("q").unwrap(), 700, "exactly 3 × 100 popped");
    // The rest is all there, in order: nothing popped was lost.
    let done = run(&["consume", "--url", &url, "--queue", "q", "--count", "700"]);
    done.assert_success();
    assert_eq!(done.lines(), seq(300..1_000));
    assert_eq!(client(&s).llen("q").unwrap(), 0);
}

/// `--count` equal to the backlog, with several connections: every lane shares one budget
/// of N pops, and the last messages must not wait behind lanes blocked on empty queues.
#[test]
fn count_over_several_connections_pops_exactly_n() {
    let s = server();
    let url = s.url();
    let mut c = client(&s);
    for q in ["m0", "m1", "m2"] {
        c.lpush_many(q, (0..500).map(|i| i.to_string())).unwrap();
    }
    let done = run(&[
        "consume",
        "--url",
        &url,
        "--queue",
        "m0",
        "--queue",
        "m1",
        "--queue",
        "m2",
        "--connections",
        "3",
        "--batch",
        "16",
        "--count",
        "1500",
    ]);
    done.assert_success();
    assert_eq!(done.lines().len(), 1500);
    let left: i64 = ["m0", "m1", "m2"].iter().map(|q| c.llen(q).unwrap()).sum();
    assert_eq!(left, 0, "every message popped");
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|&c| c != b'=').collect();
        let mut v = 0u32;
        for (i, &c) in data.iter().enumerate() {
            v |= val(c) << (18 - 6 * i);
        }
        let bytes = [(v >> 16) as u8, (v >> 8) as u8, v as u8];
        out.extend_from_slice(&bytes[..data.len().saturating_sub(1)]);
    }
    out
}

#[test]
fn json_format_escapes_strings_and_keeps_non_utf8_bytes() {
    let s = server();
    let url = s.url();
    let payloads: Vec<&[u8]> = vec![
        b"plain",
        b"quote \" backslash \\ slash /",
        b"newline\nreturn\rtab\tbell\x07nul\x00esc\x1b",
        "h\u{e9}llo \u{1f600} \u{2028}".as_bytes(),
        b"",
        b"\xff\xfe\x00raw",
        b"ok\xc3(",
    ];
    client(&s).lpush_many("weird \"q\"", &payloads).unwrap();
    let done = run(&[
        "consume",
        "--url",
        &url,
        "--queue",
        "weird \"q\"",
        "--count",
        &payloads.len().to_string(),
        "--format",
        "json",
    ]);
    done.assert_success();
    let lines = done.lines();
    assert_eq!(
        lines.len(),
        payloads.len(),
        "one line per message: {lines:?}"
    );
    for (line, want) in lines.iter().zip(&payloads) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"));
        assert_eq!(v["queue"], "weird \"q\"", "{line}");
        assert_eq!(v["deliveries"], 1, "{line}");
        let text = v["payload"].as_str().expect("payload is a string");
        match std::str::from_utf8(want) {
            Ok(utf8) => {
                assert_eq!(text, utf8, "{line}");
                assert!(v.get("payload_base64").is_none(), "{line}");
            }
            Err(_) => {
                assert_eq!(text, String::from_utf8_lossy(want), "{line}");
                let b64 = v["payload_base64"].as_str().expect("payload_base64");
                assert_eq!(base64_decode(b64), *want, "{line}");
            }
        }
    }
}

#[test]
fn raw_format_prints_payload_bytes_unchanged() {
    let s = server();
    let payloads: Vec<&[u8]> = vec![b"\xff\xfe\x00raw", "\u{1f600}".as_bytes(), b"end"];
    client(&s).lpush_many("bin", &payloads).unwrap();
    let done = run(&[
        "consume",
        "--url",
        &s.url(),
        "--queue",
        "bin",
        "--count",
        "3",
    ]);
    done.assert_success();
    assert_eq!(done.stdout, b"\xff\xfe\x00raw\n\xf0\x9f\x98\x80\nend\n");
}

/// Payloads `q<k>-<i>-` padded with `k` to 200 bytes: long lines, easy to spot torn.
fn padded(k: usize, i: usize) -> String {
    let mut p = format!("q{k}-{i}-");
    while p.len() < 200 {
        p.push(char::from(b'a' + k as u8));
    }
    p
}

#[test]
fn workers_print_every_message_once_without_torn_lines() {
    let s = server();
    let url = s.url();
    let (queues, per_queue) = (3, 3_000);
    let mut c = client(&s);
    for k in 0..queues {
        c.lpush_many(format!("w{k}"), (0..per_queue).map(|i| padded(k, i)))
            .unwrap();
    }
    let total = (queues * per_queue).to_string();
    let done = run(&[
        "consume",
        "--url",
        &url,
        "--queue",
        "w0",
        "--queue",
        "w1",
        "--queue",
        "w2",
        "--workers",
        "2",
        "--batch",
        "32",
        "--count",
        &total,
    ]);
    done.assert_success();
    let lines = done.lines();
    let got: BTreeSet<&str> = lines.iter().map(String::as_str).collect();
    let want: Vec<String> = (0..queues)
        .flat_map(|k| (0..per_queue).map(move |i| padded(k, i)))
        .collect();
    let want: BTreeSet<&str> = want.iter().map(String::as_str).collect();
    assert_eq!(
        lines.len(),
        queues * per_queue,
        "no duplicates, no extra lines"
    );
    assert_eq!(got, want, "every line is one whole message");
}

#[test]
fn orderly_workers_keep_each_queue_in_order() {
    let s = server();
    let url = s.url();
    let (queues, per_queue) = (4, 2_000);
    let mut c = client(&s);
    for k in 0..queues {
        c.lpush_many(format!("o{k}"), (0..per_queue).map(|i| padded(k, i)))
            .unwrap();
    }
    let total = queues * per_queue;
    // Four lanes (2 shards × 2 connections), one queue each, four orderly workers. Stopped
    // by SIGTERM once every line is out rather than by --count (see
    // count_over_several_connections_pops_exactly_n for why).
    let consumer = spawn(&[
        "consume",
        "--url",
        &url,
        "--queue",
        "o0",
        "--queue",
        "o1",
        "--queue",
        "o2",
        "--queue",
        "o3",
        "--shards",
        "2",
        "--connections",
        "2",
        "--workers",
        "4",
        "--orderly",
        "--batch",
        "16",
        "--format",
        "json",
    ]);
    assert!(
        wait_until(RUN_TIMEOUT, || consumer.stdout_lines() >= total),
        "only {} of {total} lines printed",
        consumer.stdout_lines()
    );
    consumer.signal(libc::SIGTERM);
    let done = consumer.finish();
    done.assert_success();
    let mut per: Vec<Vec<String>> = vec![Vec::new(); queues];
    for line in done.lines() {
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON line");
        let q = v["queue"].as_str().unwrap();
        let k: usize = q[1..].parse().unwrap();
        per[k].push(v["payload"].as_str().unwrap().to_owned());
    }
    for (k, got) in per.iter().enumerate() {
        let want: Vec<String> = (0..per_queue).map(|i| padded(k, i)).collect();
        assert!(got == &want, "queue o{k} out of order or incomplete");
    }
}

#[test]
fn sigterm_while_consuming_prints_every_popped_message_and_exits_zero() {
    let s = server();
    let url = s.url();
    let produced: u64 = 40_000;
    // A paced producer keeps messages arriving, so pops are in flight at the signal.
    let producer = spawn(&[
        "produce",
        "--url",
        &url,
        "--queue",
        "live",
        "--messages",
        &produced.to_string(),
        "--seq",
        "--rate",
        "20000",
    ]);
    let consumer = spawn(&["consume", "--url", &url, "--queue", "live", "--batch", "16"]);
    assert!(
        wait_until(RUN_TIMEOUT, || consumer.stdout_lines() >= 1_000),
        "the consumer printed nothing"
    );
    consumer.signal(libc::SIGTERM);
    let done = consumer.finish();
    assert_eq!(done.code(), Some(0), "stderr:\n{}", done.stderr);
    producer.finish().assert_success();

    let lines = done.lines();
    let left = client(&s).llen("live").unwrap();
    assert_eq!(
        lines.len() as u64 + left as u64,
        produced,
        "every message popped was printed ({} printed, {left} left)",
        lines.len()
    );
    assert_eq!(lines, seq(0..lines.len() as u64), "in order, once each");
}

#[test]
fn sigint_while_blocked_exits_zero_with_nothing_printed() {
    let s = server();
    let consumer = spawn(&[
        "consume",
        "--url",
        &s.url(),
        "--queue",
        "idle",
        "--consumer-id",
        "idle-consumer",
    ]);
    let mut c = client(&s);
    // --consumer-id names the connections: `idle-consumer-s0-c0`.
    let blocked = |c: &mut TestClient| {
        c.client_list()
            .unwrap()
            .iter()
            .any(|ci| ci.get("name") == Some("idle-consumer-s0-c0") && ci.is_blocked())
    };
    assert!(
        wait_until(RUN_TIMEOUT, || blocked(&mut c)),
        "the consumer never blocked in a pop: {:?}",
        c.client_list().unwrap()
    );
    consumer.signal(libc::SIGINT);
    let done = consumer.finish();
    assert_eq!(done.code(), Some(0), "stderr:\n{}", done.stderr);
    assert!(done.stdout.is_empty());
}

#[test]
fn closed_stdout_ends_the_consumer_cleanly() {
    let s = server();
    let url = s.url();
    run(&[
        "produce",
        "--url",
        &url,
        "--queue",
        "big",
        "--messages",
        "20000",
        "--size",
        "100",
    ])
    .assert_success();
    // 2 MB of output cannot fit in a pipe: the consumer is still writing when the reader
    // goes away, and must take the EPIPE as the end.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringq"))
        .args(["consume", "--url", &url, "--queue", "big"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 101];
    out.read_exact(&mut first).unwrap();
    assert_eq!(&first[..], format!("{}\n", "x".repeat(100)).as_bytes());
    drop(out);
    let mut status = None;
    assert!(
        wait_until(RUN_TIMEOUT, || {
            status = child.try_wait().unwrap();
            status.is_some()
        }),
        "the consumer kept running after its stdout closed"
    );
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.unwrap().code(), Some(0), "stderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn wrong_password_fails_with_a_clear_auth_error() {
    let s = RedisServer::builder()
        .requirepass("right-password")
        .start()
        .unwrap();
    let bad = s.url_as(None, "wrong-password");
    let done = run(&["consume", "--url", &bad, "--queue", "q"]);
    assert_eq!(done.code(), Some(1), "stderr:\n{}", done.stderr);
    let last = done.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("ringq: ") && last.contains("AUTH failed") && last.contains("WRONGPASS"),
        "{}",
        done.stderr
    );
    assert!(!done.stderr.contains("wrong-password"), "password leaked");

    let done = run(&["produce", "--url", &bad, "--queue", "q", "--messages", "1"]);
    assert_eq!(done.code(), Some(1), "stderr:\n{}", done.stderr);
    assert!(
        done.stderr.starts_with("ringq: ") && done.stderr.contains("WRONGPASS"),
        "{}",
        done.stderr
    );
    // The right password works for both.
    produce_seq(&s.url(), "q", 3);
    let done = run(&["consume", "--url", &s.url(), "--queue", "q", "--count", "3"]);
    done.assert_success();
    assert_eq!(done.lines(), seq(0..3));
}

#[test]
fn connection_refused_exits_nonzero_with_the_reason() {
    let port = free_port().unwrap();
    let url = format!("redis://127.0.0.1:{port}");
    let done = run(&["consume", "--url", &url, "--queue", "q"]);
    assert_eq!(done.code(), Some(1), "stderr:\n{}", done.stderr);
    let last = done.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("ringq: could not connect") && last.contains("refused"),
        "{}",
        done.stderr
    );
    let done = run(&["produce", "--url", &url, "--queue", "q", "--messages", "1"]);
    assert_eq!(done.code(), Some(1), "stderr:\n{}", done.stderr);
    assert!(done.stderr.contains("refused"), "{}", done.stderr);
}

#[test]
fn incomplete_modes_and_bad_usage_exit_2() {
    let done = run(&["consume", "--queue", "q", "--mode", "stream"]);
    assert_eq!(done.code(), Some(2), "{}", done.stderr);
    assert!(
        done.stderr
            .contains("ringq: --mode stream needs --group and --consumer-id"),
        "{}",
        done.stderr
    );
    let done = run(&[
        "subscribe",
        "--channel",
        "news",
        "--url",
        "redis://h:notaport",
    ]);
    assert_eq!(done.code(), Some(2), "{}", done.stderr);

    let done = run(&[
        "consume",
        "--queue",
        "q",
        "--url",
        "redis://u:hunter2@h:notaport",
    ]);
    assert_eq!(done.code(), Some(2), "{}", done.stderr);
    assert!(
        done.stderr.starts_with("ringq: invalid server URL"),
        "{}",
        done.stderr
    );
    assert!(!done.stderr.contains("hunter2"), "password leaked");

    for args in [
        &["consume"][..],
        &["consume", "--queue", "q", "--orderly"],
        &["consume", "--queue", "q", "--batch", "0"],
        &[
            "produce",
            "--queue",
            "q",
            "--messages",
            "1",
            "--seq",
            "--size",
            "3",
        ],
        &["produce", "--queue", "q", "--messages", "1", "--rate", "0"],
    ] {
        assert_eq!(run(args).code(), Some(2), "{args:?}");
    }
}

#[test]
fn produce_rate_paces_the_pushes() {
    let s = server();
    let n = 150;
    let producer = spawn(&[
        "produce",
        "--url",
        &s.url(),
        "--queue",
        "paced",
        "--messages",
        &n.to_string(),
        "--rate",
        "100",
    ]);
    // Unpaced, 150 pushes go in one pipeline round and the list jumps from 0 to 150.
    // Paced, the list grows a few messages at a time: watch it pass through many lengths.
    let mut c = client(&s);
    let mut seen = BTreeSet::new();
    wait_until(RUN_TIMEOUT, || {
        let len = c.llen("paced").unwrap();
        seen.insert(len);
        len == n
    });
    let done = producer.finish();
    done.assert_success();
    assert!(
        done.stderr.contains("produced 150 messages to 'paced'"),
        "{}",
        done.stderr
    );
    assert_eq!(c.llen("paced").unwrap(), n);
    let between = seen.iter().filter(|&&l| l > 0 && l < n).count();
    assert!(between >= 5, "list lengths seen while producing: {seen:?}");
}

#[test]
fn produce_size_and_unix_socket_with_a_database() {
    // Unix socket paths are short (108 bytes): a fresh directory under the temp dir.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("redis.sock");
    let s = RedisServer::builder()
        .arg("--unixsocket", &sock)
        .arg("--unixsocketperm", "700")
        .start()
        .unwrap();
    let url = format!("unix://{}?db=3", sock.display());
    run(&[
        "produce",
        "--url",
        &url,
        "--queue",
        "u",
        "--messages",
        "10",
        "--size",
        "7",
    ])
    .assert_success();
    let mut c = client(&s);
    assert_eq!(c.llen("u").unwrap(), 0, "database 0 untouched");
    c.cmd(["SELECT", "3"]).unwrap();
    assert_eq!(c.llen("u").unwrap(), 10);
    let done = run(&["consume", "--url", &url, "--queue", "u", "--count", "10"]);
    done.assert_success();
    assert_eq!(done.lines(), vec!["xxxxxxx".to_owned(); 10]);
    assert_eq!(c.llen("u").unwrap(), 0);
}

#[test]
fn probe_reports_io_uring_or_says_why_not() {
    let done = run(&["probe"]);
    match done.code() {
        Some(0) => {
            let out = String::from_utf8(done.stdout).unwrap();
            assert!(out.starts_with("io_uring on Linux "), "{out}");
        }
        Some(1) => assert!(done.stderr.starts_with("ringq: ") && done.stderr.contains("io_uring")),
        other => panic!("probe exited {other:?}: {}", done.stderr),
    }
}

#[test]
fn help_documents_every_command_and_flag() {
    let help = |args: &[&str]| {
        let done = run(args);
        done.assert_success();
        String::from_utf8(done.stdout).unwrap()
    };
    let top = help(&["--help"]);
    for cmd in ["consume", "produce", "subscribe", "publish", "probe"] {
        assert!(top.contains(cmd), "{cmd} missing from --help");
    }
    let consume = help(&["consume", "--help"]);
    for flag in [
        "--url",
        "--queue",
        "--mode",
        "--count",
        "--batch",
        "--prefetch",
        "--consumer-id",
        "--format",
        "--strategy",
        "--shards",
        "--connections",
        "--block-timeout-ms",
        "--workers",
        "--orderly",
    ] {
        assert!(consume.contains(flag), "{flag} missing from consume --help");
    }
    let produce = help(&["produce", "--help"]);
    for flag in [
        "--url",
        "--queue",
        "--messages",
        "--size",
        "--seq",
        "--rate",
    ] {
        assert!(produce.contains(flag), "{flag} missing from produce --help");
    }
    let subscribe = help(&["subscribe", "--help"]);
    for flag in [
        "--url",
        "--channel",
        "--pattern",
        "--shard-channel",
        "--count",
        "--format",
        "--drop-oldest",
    ] {
        assert!(
            subscribe.contains(flag),
            "{flag} missing from subscribe --help"
        );
    }
    let publish = help(&["publish", "--help"]);
    for flag in [
        "--url",
        "--channel",
        "--shard",
        "--messages",
        "--size",
        "--seq",
        "--rate",
    ] {
        assert!(publish.contains(flag), "{flag} missing from publish --help");
    }
}

#[test]
fn a_negative_count_says_what_count_takes() {
    for args in [
        &["consume", "--queue", "q", "--count", "-1"][..],
        &["subscribe", "--channel", "c", "--count", "-1"][..],
        &["dead", "--queue", "q", "list", "--count", "-1"][..],
    ] {
        let done = run(args);
        done.assert_fails_with(2, "--count takes a whole number");
        assert!(
            !done.stderr.contains("unexpected argument"),
            "{}",
            done.stderr
        );
    }
}

#[test]
fn an_unknown_ringq_log_level_warns_and_uses_warn() {
    let s = server();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringq"))
        .args(["stats", "--url", &s.url(), "--queue", "q"])
        .env("RINGQ_LOG", "verbose")
        .output()
        .expect("run ringq");
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [
            "ringq: warning: RINGQ_LOG=\"verbose\" is not a level (off, error, warn, info, \
             debug, trace); using warn"
        ],
        "{err}"
    );
}

#[test]
fn stats_and_dead_offer_only_the_modes_that_keep_state() {
    for args in [
        &["stats", "--queue", "q", "--mode", "pop"][..],
        &["dead", "--queue", "q", "--mode", "pop", "list"][..],
    ] {
        run(args).assert_fails_with(2, "invalid value 'pop' for '--mode");
    }
    // A plain (pop-mode) list queue still shows under the default mode.
    let s = server();
    let url = s.url();
    produce_seq(&url, "plain", 3);
    let done = run(&["stats", "--url", &url, "--queue", "plain"]);
    done.assert_success();
    assert_eq!(done.lines(), ["queue plain: pending 3, retry 0, dead 0"]);
}

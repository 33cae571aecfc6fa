//! The CLI over TLS (issue 21): every command that connects — consume in each mode,
//! produce, stats, dead, subscribe, publish — against a redis-server listening with TLS,
//! with `--tls-ca-cert`; mutual TLS with `--tls-cert`/`--tls-key`; `--tls-insecure`
//! warning every time; clear failures (unknown CA, a --tls flag with redis://) and a
//! wrong password over TLS never echoed. redis-server only: the Valkey 9 wheel here is
//! built without TLS.

mod common;

use std::process::{Command, Stdio};

use ringq_tests::{wait_until, RedisServer, TestPki};

fn server(pki: &TestPki, mtls: bool) -> RedisServer {
    RedisServer::builder()
        .tls(pki, mtls)
        .start()
        .expect("redis-server with TLS")
}

#[test]
fn every_command_works_over_tls() {
    let pki = TestPki::generate().unwrap();
    let s = server(&pki, false);
    let url = s.tls_url();
    let ca = pki.ca_cert();
    let ca = ca.to_str().unwrap();
    let tls = ["--url", url.as_str(), "--tls-ca-cert", ca];
    let with = |args: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        a.splice(1..1, tls.iter().map(|s| (*s).to_owned()));
        a
    };
    let run = |args: &[&str]| {
        let a = with(args);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        common::succeeded(&common::ringq_env(&a, &[]))
    };
    run(&["produce", "--queue", "q", "--messages", "300"]);
    let (out, _) = run(&["consume", "--queue", "q", "--count", "100"]);
    assert_eq!(out.lines().count(), 100, "pop mode");
    assert_eq!(
        out.lines().next(),
        Some("0"),
        "first produced, first consumed"
    );
    let (out, _) = run(&[
        "consume",
        "--queue",
        "q",
        "--count",
        "200",
        "--mode",
        "reliable",
        "--consumer-id",
        "c1",
    ]);
    assert_eq!(out.lines().count(), 200, "reliable mode");
    let mut c = s.client().unwrap();
    for i in 0..50 {
        c.cmd(["XADD", "st", "*", "payload", &i.to_string()])
            .unwrap();
    }
    let (out, _) = run(&[
        "consume",
        "--queue",
        "st",
        "--count",
        "50",
        "--mode",
        "stream",
        "--group",
        "g",
        "--consumer-id",
        "c1",
        "--from",
        "start",
    ]);
    assert_eq!(out.lines().count(), 50, "stream mode");
    let (out, _) = run(&["stats", "--queue", "q"]);
    assert!(out.contains('q'), "{out}");
    run(&["dead", "--queue", "q", "list"]);
    run(&["publish", "--channel", "ch", "--messages", "5"]);
    // Subscribe over TLS until --count.
    let a = with(&["subscribe", "--channel", "ch2", "--count", "1"]);
    let sub = Command::new(env!("CARGO_BIN_EXE_ringq"))
        .args(&a)
        .env_remove("RINGQ_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(common::RUN_TIMEOUT, || c
        .publish("ch2", "hello")
        .unwrap()
        == 1));
    let out = sub.wait_with_output().unwrap();
    common::succeeded(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");
}

#[test]
fn mutual_tls_with_a_client_certificate() {
    let pki = TestPki::generate().unwrap();
    let s = server(&pki, true);
    let url = s.tls_url();
    let (ca, cert, key) = (pki.ca_cert(), pki.client_cert(), pki.client_key());
    let (ca, cert, key) = (
        ca.to_str().unwrap(),
        cert.to_str().unwrap(),
        key.to_str().unwrap(),
    );
    let produce = ["produce", "--url", &url, "--tls-ca-cert", ca];
    let o = common::ringq_env(
        &[&produce[..], &["--queue", "m", "--messages", "10"]].concat(),
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "no client certificate: refused");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("client certificate"), "{stderr}");
    let mtls = ["--tls-cert", cert, "--tls-key", key];
    common::succeeded(&common::ringq_env(
        &[&produce[..], &mtls, &["--queue", "m", "--messages", "10"]].concat(),
        &[],
    ));
    let (out, _) = common::succeeded(&common::ringq_env(
        &[
            &["consume", "--url", &url, "--tls-ca-cert", ca][..],
            &mtls,
            &["--queue", "m", "--count", "10"],
        ]
        .concat(),
        &[],
    ));
    assert_eq!(out.lines().count(), 10);
}

#[test]
fn failures_are_clear_and_insecure_warns_every_time() {
    let pki = TestPki::generate().unwrap();
    let s = RedisServer::builder()
        .tls(&pki, false)
        .requirepass("right-pw")
        .start()
        .unwrap();
    let url = format!("rediss://127.0.0.1:{}", s.tls_port());
    // Unknown CA: the engine (consume) and the admin client (stats) say the same thing.
    let other = pki.other_ca_cert();
    let other = other.to_str().unwrap();
    for cmd in [
        &["consume", "--queue", "q", "--count", "1"][..],
        &["stats", "--queue", "q"][..],
    ] {
        let o = common::ringq_env(
            &[
                &[cmd[0], "--url", &url, "--tls-ca-cert", other][..],
                &cmd[1..],
            ]
            .concat(),
            &[("RINGQ_PASSWORD", "right-pw")],
        );
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{cmd:?}: {stderr}");
        assert!(
            stderr.contains("not signed by a trusted CA"),
            "{cmd:?}: {stderr}"
        );
        assert!(
            stderr.contains("--tls-ca-cert"),
            "says what to do: {stderr}"
        );
    }
    // A TLS flag with redis:// is a usage error.
    let o = common::ringq_env(
        &[
            "stats",
            "--url",
            &s.url_without_auth(),
            "--tls-ca-cert",
            other,
            "--queue",
            "q",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("rediss://"));
    // --tls-insecure: accepted, with a warning each run.
    for cmd in [
        &["produce", "--queue", "i", "--messages", "2"][..],
        &["consume", "--queue", "i", "--count", "2"][..],
    ] {
        let (_, stderr) = common::succeeded(&common::ringq_env(
            &[&[cmd[0], "--url", &url, "--tls-insecure"][..], &cmd[1..]].concat(),
            &[("RINGQ_PASSWORD", "right-pw")],
        ));
        assert!(
            stderr.contains("verification is OFF"),
            "{cmd:?} warns: {stderr}"
        );
    }
    // A wrong password over TLS: refused, never echoed.
    let ca = pki.ca_cert();
    for cmd in [
        &["produce", "--queue", "w", "--messages", "1"][..],
        &["consume", "--queue", "w", "--count", "1"][..],
    ] {
        let o = common::ringq_env(
            &[
                &[cmd[0], "--url", &url, "--tls-ca-cert", ca.to_str().unwrap()][..],
                &cmd[1..],
            ]
            .concat(),
            &[("RINGQ_PASSWORD", "wrong-TLS-pw-5150")],
        );
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{cmd:?}: {stderr}");
        assert!(!stderr.contains("wrong-TLS-pw-5150"), "{cmd:?}: {stderr}");
    }
}

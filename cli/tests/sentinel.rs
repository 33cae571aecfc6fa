//! The CLI behind Sentinel (issue 21): every command that connects works with a
//! `redis+sentinel://` URL (the engine's commands and the admin client alike), the
//! sentinels' own password comes from `--sentinel-password-file` or
//! `$RINGQ_SENTINEL_PASSWORD` and is never echoed, and `consume --mode reliable` prints
//! every message across a `SENTINEL FAILOVER`.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use ringq_tests::{wait_until, SentinelGroup, SentinelOptions};

const SENTINEL_PW: &str = "sentinel-pw-4242";

#[test]
fn every_command_works_through_sentinels_with_their_own_password() {
    let g = SentinelGroup::start_with(
        "cli-m",
        1,
        3,
        &SentinelOptions {
            sentinel_password: Some(SENTINEL_PW),
            ..SentinelOptions::default()
        },
    )
    .unwrap();
    let url = g.url();
    let mut file = tempfile::NamedTempFile::new().unwrap();
    writeln!(file, "{SENTINEL_PW}").unwrap();
    let pf = file.path().to_str().unwrap();
    let with = |cmd: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = cmd.iter().map(|s| (*s).to_owned()).collect();
        a.splice(
            1..1,
            ["--url", url.as_str(), "--sentinel-password-file", pf].map(str::to_owned),
        );
        a
    };
    let run = |cmd: &[&str]| {
        let a = with(cmd);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        common::stdout_of(&common::ringq_env(&a, &[]))
    };
    run(&["produce", "--queue", "q", "--messages", "200"]);
    let out = run(&["consume", "--queue", "q", "--count", "100"]);
    assert_eq!(out.lines().count(), 100);
    let out = run(&[
        "consume",
        "--queue",
        "q",
        "--count",
        "100",
        "--mode",
        "reliable",
        "--consumer-id",
        "c1",
    ]);
    assert_eq!(out.lines().count(), 100);
    let out = run(&["stats", "--queue", "q"]);
    assert!(out.contains('q'), "{out}");
    run(&["dead", "--queue", "q", "list"]);
    run(&["publish", "--channel", "ch", "--messages", "3"]);
    // $RINGQ_SENTINEL_PASSWORD does the same for subscribe.
    let sub = Command::new(env!("CARGO_BIN_EXE_ringq"))
        .args([
            "subscribe",
            "--url",
            &url,
            "--channel",
            "ch2",
            "--count",
            "1",
        ])
        .env_remove("RINGQ_URL")
        .env("RINGQ_SENTINEL_PASSWORD", SENTINEL_PW)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut c = g.master().unwrap().client().unwrap();
    assert!(wait_until(common::RUN_TIMEOUT, || c
        .publish("ch2", "hello")
        .unwrap()
        == 1));
    let out = sub.wait_with_output().unwrap();
    common::stdout_of(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello");

    // Without the sentinels' password: refused, saying so, never showing it.
    for cmd in [
        &[
            "consume",
            "--url",
            url.as_str(),
            "--queue",
            "q",
            "--count",
            "1",
        ][..],
        &["stats", "--url", url.as_str(), "--queue", "q"][..],
    ] {
        let o = common::ringq_env(cmd, &[("RINGQ_SENTINEL_PASSWORD", "wrong-sentinel-pw-77")]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{cmd:?}: {stderr}");
        assert!(stderr.contains("sentinel"), "{cmd:?}: {stderr}");
        assert!(
            !stderr.contains("wrong-sentinel-pw-77"),
            "{cmd:?}: {stderr}"
        );
    }
}

#[test]
fn reliable_consume_prints_every_message_across_a_failover() {
    let g = SentinelGroup::start("cli-f", 1, 3).unwrap();
    let url = g.url();
    // Enough that the drain (read slowly by the test) outlasts the failover.
    const N: usize = 150_000;
    let mut c = g.master().unwrap().client().unwrap();
    c.lpush_many("fq", (0..N).map(|i| i.to_string())).unwrap();
    assert_eq!(
        c.cmd(["WAIT", "1", "10000"]).unwrap(),
        ringq_resp::Frame::Integer(1)
    );
    let consumer = common::Consumer::spawn(&[
        "consume",
        "--url",
        &url,
        "--queue",
        "fq",
        "--mode",
        "reliable",
        "--consumer-id",
        "c1",
        "--batch",
        "16",
    ]);
    assert!(
        wait_until(common::RUN_TIMEOUT, || consumer.count() >= 1000),
        "consuming"
    );
    g.failover().unwrap();
    assert!(consumer.count() < N, "the failover came mid-drain");
    let done = wait_until(common::RUN_TIMEOUT, || consumer.distinct() >= N);
    consumer.signal(libc::SIGTERM);
    let (lines, stderr, code) = consumer.finish();
    assert!(done, "printed {} of {N}\n{stderr}", lines.len());
    assert_eq!(code, Some(0), "{stderr}");
    let distinct: std::collections::HashSet<&String> = lines.iter().collect();
    assert_eq!(distinct.len(), N, "every message printed, none lost");
}

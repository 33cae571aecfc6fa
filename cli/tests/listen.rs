//! `ringq subscribe` and `ringq publish` as a user runs them, against real servers:
//! every message published reaches stdout in order, JSON lines name the channel and the
//! pattern, `--count` and signals exit 0, a killed subscriber resubscribes with a gap
//! warning on stderr, and a refused subscription is an error, not a retry loop.

mod common;

use std::time::Duration;

use common::{client, run, seq, server, spawn, Proc};
use ringq_tests::{wait_until, TestClient};

const WAIT: Duration = Duration::from_secs(30);

fn subscribers(c: &mut TestClient, channel: &str) -> i64 {
    let reply = c.cmd(["PUBSUB", "NUMSUB", channel]).unwrap();
    reply
        .as_elements()
        .and_then(|e| e.get(1).and_then(|v| v.as_integer()))
        .unwrap_or(0)
}

fn wait_subscribed(c: &mut TestClient, channel: &str) {
    assert!(
        wait_until(WAIT, || subscribers(c, channel) == 1),
        "{channel}: the subscriber never subscribed"
    );
}

fn stderr_of(p: &Proc) -> String {
    String::from_utf8_lossy(&p.err.lock().unwrap()).into_owned()
}

#[test]
fn subscribe_prints_what_publish_sends_in_order_and_count_exits_0() {
    // A burst big enough to pass through the writer thread's coalesced writes many
    // times over (and to fill its queue when stdout is slow): every line once, in order.
    const N: u64 = 200_000;
    let s = server();
    let mut c = client(&s);
    let url = s.url();
    let sub = spawn(&[
        "subscribe",
        "--url",
        &url,
        "--channel",
        "news",
        "--count",
        &N.to_string(),
    ]);
    wait_subscribed(&mut c, "news");
    let done = run(&[
        "publish",
        "--url",
        &url,
        "--channel",
        "news",
        "--messages",
        &N.to_string(),
    ]);
    done.assert_success();
    assert!(
        done.stderr
            .contains(&format!("published {N} messages to 'news'"))
            && done.stderr.contains(&format!("{N} deliveries")),
        "{}",
        done.stderr
    );
    let got = sub.finish();
    got.assert_success();
    assert_eq!(got.lines(), seq(0..N));
}

#[test]
fn an_idle_subscriber_prints_each_message_as_it_arrives() {
    // Output is coalesced under load, but a quiet subscriber must not hold a line back
    // waiting for more: each message is published only once the previous one is on
    // stdout, so a held line would never be followed by the next.
    let s = server();
    let mut c = client(&s);
    let url = s.url();
    let sub = spawn(&[
        "subscribe",
        "--url",
        &url,
        "--channel",
        "quiet",
        "--count",
        "3",
    ]);
    wait_subscribed(&mut c, "quiet");
    for i in 0..3 {
        c.publish("quiet", format!("m{i}")).unwrap();
        assert!(
            wait_until(WAIT, || sub.stdout_lines() == i + 1),
            "message {i} was not printed before the next was published; stderr:\n{}",
            stderr_of(&sub)
        );
    }
    let got = sub.finish();
    got.assert_success();
    assert_eq!(got.lines(), ["m0", "m1", "m2"]);
}

#[test]
fn json_lines_name_the_channel_and_the_pattern() {
    let s = server();
    let mut c = client(&s);
    let url = s.url();
    let sub = spawn(&[
        "subscribe",
        "--url",
        &url,
        "--pattern",
        "n.*",
        "--channel",
        "c",
        "--format",
        "json",
        "--count",
        "3",
    ]);
    wait_subscribed(&mut c, "c");
    assert!(wait_until(WAIT, || {
        c.cmd(["PUBSUB", "NUMPAT"]).unwrap().as_integer() == Some(1)
    }));
    c.publish("n.1", "a").unwrap();
    c.publish("c", "b").unwrap();
    c.publish("n.2", [0xffu8, 0xfe].as_slice()).unwrap();
    let got = sub.finish();
    got.assert_success();
    let lines: Vec<serde_json::Value> = got
        .lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            serde_json::json!({"channel": "n.1", "pattern": "n.*", "payload": "a"}),
            serde_json::json!({"channel": "c", "payload": "b"}),
            serde_json::json!({"channel": "n.2", "pattern": "n.*", "payload": "\u{fffd}\u{fffd}",
                               "payload_base64": "//4="}),
        ]
    );
}

#[test]
fn shard_channels_with_publish_shard() {
    let s = server();
    let url = s.url();
    let sub = spawn(&[
        "subscribe",
        "--url",
        &url,
        "--shard-channel",
        "sc",
        "--count",
        "100",
    ]);
    let mut c = client(&s);
    assert!(wait_until(WAIT, || {
        c.cmd(["PUBSUB", "SHARDNUMSUB", "sc"])
            .unwrap()
            .as_elements()
            .and_then(|e| e.get(1).and_then(|v| v.as_integer()))
            == Some(1)
    }));
    run(&[
        "publish",
        "--url",
        &url,
        "--channel",
        "sc",
        "--shard",
        "--messages",
        "100",
    ])
    .assert_success();
    let got = sub.finish();
    got.assert_success();
    assert_eq!(got.lines(), seq(0..100));
}

/// F1 through the CLI: the subscriber is killed, resubscribes by itself, warns of the
/// gap on stderr, prints what is published afterwards, and exits 0 on SIGINT.
#[test]
fn a_killed_subscriber_warns_of_the_gap_and_sigint_exits_0() {
    let s = server();
    let mut c = client(&s);
    let url = s.url();
    let sub = spawn(&["subscribe", "--url", &url, "--channel", "g"]);
    wait_subscribed(&mut c, "g");
    c.publish("g", "before").unwrap();
    assert!(wait_until(WAIT, || sub.stdout_lines() == 1));
    assert_eq!(
        c.client_kill(&[("TYPE", "pubsub")]).unwrap(),
        1,
        "the fault happened"
    );
    assert!(
        wait_until(WAIT, || stderr_of(&sub).contains("gap")),
        "no gap warning: {}",
        stderr_of(&sub)
    );
    wait_subscribed(&mut c, "g");
    c.publish("g", "after").unwrap();
    assert!(wait_until(WAIT, || sub.stdout_lines() == 2));
    sub.signal(libc::SIGINT);
    let done = sub.finish();
    done.assert_success();
    assert_eq!(done.lines(), ["before", "after"]);
    assert!(
        done.stderr
            .contains("ringq: warning: gap on channel g: messages published from "),
        "{}",
        done.stderr
    );
    // One gap, one line: not the connection error, the gap and a Debug form besides.
    assert_eq!(done.stderr.lines().count(), 1, "{}", done.stderr);
    assert!(
        done.stderr.contains("the connection was lost"),
        "{}",
        done.stderr
    );
}

/// F15 through the CLI: a channel the ACL user may not read is an error (exit 1) that
/// says what to change.
#[test]
fn a_refused_subscription_exits_1_with_the_reason() {
    let s = server();
    let mut c = client(&s);
    c.cmd([
        "ACL",
        "SETUSER",
        "sub",
        "on",
        ">pw",
        "resetchannels",
        "+@all",
    ])
    .unwrap();
    let url = s.url_as(Some("sub"), "pw");
    let done = run(&["subscribe", "--url", &url, "--channel", "secret"]);
    done.assert_fails_with(1, "refused to subscribe to channel secret");
    assert!(done.stderr.contains("ACL"), "{}", done.stderr);
}

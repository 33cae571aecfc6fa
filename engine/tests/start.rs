//! The one start path: every consumer type is checked the same way before anything
//! starts, and every mode honours the same builder settings.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringq::{
    EngineBuilder, ErrorKind, Message, Outcome, PopConsumer, ReliableConsumer, StreamConsumer,
    MAX_BLOCK_TIMEOUT, MAX_LEASE,
};
use ringq_tests::{wait_until, RedisServer};

fn ack(_: &Message<'_>) -> Outcome {
    Outcome::Ack
}

/// A block timeout past the longest allowed is refused at start with a configuration
/// error in every mode that blocks — never a panic on a shard thread later (stream mode
/// once overflowed a deadline computed from `Duration::MAX`).
#[test]
fn every_mode_refuses_a_block_timeout_past_the_maximum_at_start() {
    let server = RedisServer::start().unwrap();
    let too_long = [MAX_BLOCK_TIMEOUT + Duration::from_secs(1), Duration::MAX];
    for d in too_long {
        let starts = [
            (
                "pop",
                EngineBuilder::new(server.url())
                    .start(PopConsumer::new(["q"]).block_timeout(d), ack),
            ),
            (
                "reliable",
                EngineBuilder::new(server.url())
                    .start(ReliableConsumer::new("c1", ["q"]).block_timeout(d), ack),
            ),
            (
                "stream",
                EngineBuilder::new(server.url())
                    .start(StreamConsumer::new("g", "c1", ["s"]).block_timeout(d), ack),
            ),
        ];
        for (mode, started) in starts {
            let err = match started {
                Ok(running) => {
                    let _ = running.shutdown();
                    panic!("{mode} mode started with a block timeout of {d:?}");
                }
                Err(e) => e,
            };
            assert_eq!(err.kind(), ErrorKind::Config, "{mode}: {err}");
            assert!(err.to_string().contains("block timeout"), "{mode}: {err}");
        }
    }
}

/// Stream mode's non-blocking reads get the engine's `reply_timeout`, like every other
/// command (they once got `5 × max(reply_grace, 1 s)` whatever the setting). With a
/// reply timeout of 30 s, a server busy for 8 s (`DEBUG SLEEP`) while reads are in flight
/// makes no read overdue: nothing stalls, nothing reconnects. With the old rule (here
/// 5 s) the read in flight went overdue and its connection was replaced.
/// A lease past a day is refused at start in both at-least-once modes, saying why
/// (a crashed consumer's messages would wait that long); a day is accepted.
#[test]
fn a_lease_past_a_day_is_refused_at_start() {
    let server = RedisServer::start().unwrap();
    for d in [MAX_LEASE + Duration::from_secs(1), Duration::MAX] {
        let starts = [
            EngineBuilder::new(server.url())
                .start(ReliableConsumer::new("c1", ["q"]).lease(d), ack),
            EngineBuilder::new(server.url())
                .start(StreamConsumer::new("g", "c1", ["s"]).lease(d), ack),
        ];
        for r in starts {
            let err = r.err().expect("refused");
            assert_eq!(err.kind(), ErrorKind::Config, "{err}");
            assert!(
                err.to_string().contains("crashed consumer's messages"),
                "{err}"
            );
        }
    }
    let running = EngineBuilder::new(server.url())
        .start(ReliableConsumer::new("c1", ["q"]).lease(MAX_LEASE), ack)
        .unwrap();
    running.shutdown().unwrap();
}

#[test]
fn stream_reads_honour_the_engines_reply_timeout() {
    let server = RedisServer::builder().debug_command(true).start().unwrap();
    let mut c = server.client().unwrap();
    const N: u64 = 200_000;
    c.cmd([
        "EVAL",
        "for i = 1, tonumber(ARGV[1]) do redis.call('XADD', KEYS[1], '*', 'payload', 'x') end",
        "1",
        "sbusy",
        &N.to_string(),
    ])
    .unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    let running = EngineBuilder::new(server.url())
        .pin_cores(false)
        .reply_grace(Duration::from_secs(1))
        .reply_timeout(Duration::from_secs(30))
        .idle_ping(Duration::from_secs(600))
        .start(
            StreamConsumer::new("g", "c1", ["sbusy"])
                .start_at(ringq::StartAt::Beginning)
                .batch(64),
            move |_: &Message<'_>| {
                counter.fetch_add(1, Ordering::Relaxed);
                // Slow enough that the drain outlasts the start of the sleep below.
                std::thread::sleep(Duration::from_micros(20));
                Outcome::Ack
            },
        )
        .unwrap();
    assert!(wait_until(Duration::from_secs(60), || seen
        .load(Ordering::Relaxed)
        > 1000));
    let before = seen.load(Ordering::Relaxed);
    c.cmd(["DEBUG", "SLEEP", "8"]).unwrap();
    assert!(
        before < N,
        "the sleep must come mid-drain, with reads in flight"
    );
    assert!(wait_until(Duration::from_secs(120), || seen
        .load(Ordering::Relaxed)
        >= N));
    let stats = running.shutdown().unwrap();
    assert_eq!(stats.stalls, 0, "a read went overdue");
    assert_eq!(
        stats.reconnects, 0,
        "a connection was replaced (its read went overdue)"
    );
    assert_eq!(stats.messages, N);
}

/// The password can come apart from the URL (`EngineBuilder::password`), and a refused
/// one is never shown in the error.
#[test]
fn a_password_given_apart_from_the_url_authenticates_and_is_never_shown() {
    let server = RedisServer::builder()
        .requirepass("apart-pw-5521")
        .start()
        .unwrap();
    let mut c = server.client().unwrap();
    c.rpush_many("pw", ["a", "b"]).unwrap();
    // A password in the URL and one apart from it: neither shows in the server's view
    // of the connections (CLIENT LIST: names, and everything else it lists).
    let running = EngineBuilder::new(server.url_as(None, "url-pw-xyz"))
        .password("apart-pw-5521")
        .start(PopConsumer::new(["another-queue"]), ack)
        .unwrap();
    assert!(wait_until(Duration::from_secs(60), || c
        .client_list()
        .unwrap()
        .iter()
        .any(|i| i
            .get("name")
            .is_some_and(|n| n.starts_with("ringq-")))));
    let listed = format!("{:?}", c.cmd(["CLIENT", "LIST"]).unwrap());
    assert!(
        !listed.contains("apart-pw-5521") && !listed.contains("url-pw-xyz"),
        "{listed}"
    );
    running.shutdown().unwrap();
    let running = EngineBuilder::new(server.url_without_auth())
        .password("apart-pw-5521")
        .limit(2)
        .start(PopConsumer::new(["pw"]), ack)
        .unwrap();
    assert_eq!(running.wait().unwrap().messages, 2);
    let err = match EngineBuilder::new(server.url_without_auth())
        .password("wrong-pw-8812")
        .start_attempts(1)
        .start(PopConsumer::new(["pw"]), ack)
    {
        Ok(r) => r.wait().expect_err("a wrong password stops the engine"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::Auth, "{err}");
    assert!(!err.to_string().contains("wrong-pw-8812"), "{err}");
}

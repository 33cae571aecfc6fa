//! Listen mode (pub/sub) against real servers — redis-server, and Valkey 9 for every case
//! but the dispatch-mode sweep and the scripted one — in RESP3 and RESP2 (a server
//! without HELLO): every message of a burst arrives
//! in order, patterns and shard channels, subscriptions spread over shards, and the
//! never-silent promises: a killed connection, a restart and a frozen server are each
//! followed by a resubscribe and a gap event; a slow handler either blocks (and the
//! server's output-buffer limit is named when it drops us) or drops oldest, counted; a
//! subscription the ACL refuses is a clear error.

use std::time::Duration;

use ringq::{Dispatch, EngineBuilder, Event, GapCause, ListenConsumer, Overflow, Running};
use ringq_tests::{wait_until, RedisServer, TestClient};

mod support;
use support::{valkey, WAIT};

/// What reached the handler — (channel, pattern, payload) of each message — and the
/// events.
type Rec = support::Recorder<(String, Option<String>, String)>;

fn seq(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// redis-server and Valkey 9 (both RESP3), for the cases where RESP2 adds nothing.
fn redis_and_valkey() -> Vec<(&'static str, RedisServer)> {
    vec![
        ("redis", RedisServer::start().unwrap()),
        ("valkey", valkey().start().unwrap()),
    ]
}

/// The servers the core cases run on: redis-server (RESP3), redis-server without HELLO
/// (so the engine falls back to RESP2), and Valkey 9.
fn servers() -> Vec<(&'static str, RedisServer)> {
    vec![
        ("redis", RedisServer::start().unwrap()),
        (
            "redis-resp2",
            RedisServer::builder()
                .args(["--rename-command", "HELLO", ""])
                .start()
                .unwrap(),
        ),
        ("valkey", valkey().start().unwrap()),
    ]
}

/// Waits until the server counts `n` subscribers of `channel` (a pattern with `PSUB`).
fn wait_subscribed(c: &mut TestClient, what: &str, name: &str, n: i64) {
    let count = |c: &mut TestClient| -> i64 {
        let reply = match what {
            "pattern" => c.cmd(["PUBSUB", "NUMPAT"]),
            "shard" => c.cmd(["PUBSUB", "SHARDNUMSUB", name]),
            _ => c.cmd(["PUBSUB", "NUMSUB", name]),
        }
        .unwrap();
        match reply {
            ringq_resp::Frame::Integer(k) => k,
            f => f
                .as_elements()
                .and_then(|e| e.get(1).and_then(|v| v.as_integer()))
                .unwrap_or(0),
        }
    };
    assert!(
        wait_until(WAIT, || count(c) == n),
        "{what} {name}: expected {n} subscriber(s), the server counts {}",
        count(c)
    );
}

fn start(server: &RedisServer, consumer: ListenConsumer, rec: &Rec) -> Running {
    EngineBuilder::new(server.url())
        .pin_cores(false)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .start(consumer, rec.clone())
        .expect("engine starts")
}

#[test]
fn a_burst_of_100k_pipelined_publishes_is_received_in_order() {
    for (name, server) in servers() {
        let rec = Rec::default();
        let running = start(&server, ListenConsumer::new().channel("burst"), &rec);
        let mut c = server.client().unwrap();
        wait_subscribed(&mut c, "channel", "burst", 1);
        let sent = seq("m", 100_000);
        assert_eq!(
            c.publish_many("PUBLISH", "burst", &sent).unwrap(),
            100_000,
            "{name}"
        );
        assert!(
            wait_until(WAIT, || rec.len() == sent.len()),
            "{name}: got {}",
            rec.len()
        );
        let stats = running.shutdown().unwrap();
        assert_eq!(rec.payloads(), sent, "{name}: every message, in order");
        assert!(rec
            .snapshot()
            .iter()
            .all(|m| m.0 == "burst" && m.1.is_none()));
        assert_eq!((stats.messages, stats.gaps), (100_000, 0), "{name}");
    }
}

#[test]
fn patterns_report_the_pattern_and_the_channel() {
    for (name, server) in servers() {
        let rec = Rec::default();
        let running = start(
            &server,
            ListenConsumer::new().pattern("news.*").channel("plain"),
            &rec,
        );
        let mut c = server.client().unwrap();
        wait_subscribed(&mut c, "pattern", "news.*", 1);
        wait_subscribed(&mut c, "channel", "plain", 1);
        c.publish("news.eu", "a").unwrap();
        c.publish("other", "ignored").unwrap();
        c.publish("news.us", "b").unwrap();
        c.publish("plain", "c").unwrap();
        assert!(wait_until(WAIT, || rec.len() == 3), "{name}");
        running.shutdown().unwrap();
        let got = rec.snapshot();
        let p = Some("news.*".to_owned());
        assert_eq!(
            got,
            [
                ("news.eu".into(), p.clone(), "a".into()),
                ("news.us".into(), p, "b".into()),
                ("plain".into(), None, "c".into()),
            ],
            "{name}"
        );
    }
}

#[test]
fn shard_channels_are_received() {
    for (name, server) in servers() {
        let rec = Rec::default();
        let running = start(&server, ListenConsumer::new().shard_channel("sc"), &rec);
        let mut c = server.client().unwrap();
        wait_subscribed(&mut c, "shard", "sc", 1);
        assert_eq!(
            c.publish_many("SPUBLISH", "sc", seq("s", 1000)).unwrap(),
            1000,
            "{name}"
        );
        assert!(wait_until(WAIT, || rec.len() == 1000), "{name}");
        running.shutdown().unwrap();
        assert_eq!(rec.payloads(), seq("s", 1000), "{name}");
    }
}

/// 40 channels over 2 shards × 2 connections, with each dispatch mode: everything is
/// received, and every channel's messages in order (orderly keeps each channel's order
/// on its worker; inline and plain workers keep it per connection batch).
#[test]
fn many_channels_spread_over_shards_in_every_dispatch_mode() {
    let server = RedisServer::start().unwrap();
    for dispatch in [
        Dispatch::inline(),
        Dispatch::orderly(3),
        Dispatch::workers(2),
    ] {
        let ordered = !format!("{dispatch:?}").contains("Workers(");
        let rec = Rec::default();
        let names = seq("ch", 40);
        let consumer = names
            .iter()
            .fold(ListenConsumer::new(), |c, n| c.channel(n.clone()));
        let running = EngineBuilder::new(server.url())
            .pin_cores(false)
            .shards(2)
            .connections_per_shard(2)
            .dispatch(dispatch)
            .start(consumer, rec.clone())
            .unwrap();
        let mut c = server.client().unwrap();
        for n in &names {
            wait_subscribed(&mut c, "channel", n, 1);
        }
        for n in &names {
            c.publish_many("PUBLISH", n, seq(&format!("{n}-"), 50))
                .unwrap();
        }
        assert!(wait_until(WAIT, || rec.len() == 2000), "got {}", rec.len());
        running.shutdown().unwrap();
        let got = rec.snapshot();
        for n in &names {
            let mine: Vec<String> = got
                .iter()
                .filter(|m| &m.0 == n)
                .map(|m| m.2.clone())
                .collect();
            assert_eq!(mine.len(), 50, "{n}");
            if ordered {
                assert_eq!(mine, seq(&format!("{n}-"), 50), "{n} in order");
            }
        }
    }
}

/// F1: CLIENT KILL TYPE pubsub. The subscriber reconnects and resubscribes by itself, the
/// handler hears of the gap with its times, and messages published afterwards arrive.
#[test]
fn a_killed_subscriber_resubscribes_and_reports_the_gap() {
    for (name, server) in servers() {
        let rec = Rec::default();
        let running = start(
            &server,
            ListenConsumer::new().channel("k").pattern("kp.*"),
            &rec,
        );
        let mut c = server.client().unwrap();
        wait_subscribed(&mut c, "channel", "k", 1);
        c.publish("k", "before").unwrap();
        assert!(wait_until(WAIT, || rec.len() == 1));
        let killed = c.client_kill(&[("TYPE", "pubsub")]).unwrap();
        assert_eq!(killed, 1, "{name}: the fault happened");
        assert!(
            wait_until(WAIT, || !rec.gaps().is_empty()),
            "{name}: no gap event"
        );
        wait_subscribed(&mut c, "channel", "k", 1);
        c.publish("k", "after").unwrap();
        c.publish("kp.1", "after-p").unwrap();
        assert!(
            wait_until(WAIT, || rec.len() == 3),
            "{name}: got {:?}",
            rec.payloads()
        );
        let stats = running.shutdown().unwrap();
        assert_eq!(rec.payloads(), ["before", "after", "after-p"], "{name}");
        let gaps = rec.gaps();
        assert_eq!(gaps.len(), 1, "{name}: {gaps:?}");
        let Event::Gap {
            subscriptions,
            disconnected_at,
            resubscribed_at,
            cause,
        } = &gaps[0]
        else {
            unreachable!()
        };
        assert_eq!(subscriptions, &["channel k", "pattern kp.*"], "{name}");
        assert!(
            resubscribed_at.is_some_and(|t| t >= *disconnected_at),
            "{name}"
        );
        assert!(
            matches!(cause, GapCause::ConnectionLost(_)),
            "{name}: {cause:?}"
        );
        assert_eq!(stats.gaps, 1, "{name}");
    }
}

/// F3: a server restart (SIGTERM, then the same port): resubscribed, with a gap.
#[test]
fn a_server_restart_is_followed_by_a_resubscribe_and_a_gap() {
    for (name, server) in servers() {
        let rec = Rec::default();
        let running = start(&server, ListenConsumer::new().channel("r"), &rec);
        let mut c = server.client().unwrap();
        wait_subscribed(&mut c, "channel", "r", 1);
        server.restart().unwrap();
        let mut c = server.client().unwrap();
        wait_subscribed(&mut c, "channel", "r", 1);
        assert!(
            wait_until(WAIT, || rec.gaps().len() == 1),
            "{name}: no gap event"
        );
        c.publish("r", "after").unwrap();
        assert!(wait_until(WAIT, || rec.len() == 1), "{name}");
        let stats = running.shutdown().unwrap();
        assert_eq!(stats.gaps, 1, "{name}");
        assert!(stats.reconnects >= 1, "{name}");
    }
}

/// F5 on a subscriber: kill -STOP. The subscribed connection answers nothing, so the
/// idle PING's deadline fires; after kill -CONT it reconnects and resubscribes, with a
/// gap event, and receives again.
#[test]
fn a_frozen_server_is_noticed_by_the_ping_deadline_and_resubscribed_after_it_thaws() {
    for (_, server) in redis_and_valkey() {
        frozen(&server);
    }
}

fn frozen(server: &RedisServer) {
    let rec = Rec::default();
    let running = EngineBuilder::new(server.url())
        .pin_cores(false)
        .idle_ping(Duration::from_millis(100))
        .reply_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(500))
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .start(ListenConsumer::new().channel("f"), rec.clone())
        .unwrap();
    let mut c = server.client().unwrap();
    wait_subscribed(&mut c, "channel", "f", 1);
    server.freeze().unwrap();
    // Frozen for well over a PING period plus its deadline: the subscribed connection is
    // given up on while the server is still frozen.
    let lost = wait_until(WAIT, || running.stats().connections_ready == 0);
    server.thaw().unwrap();
    assert!(lost, "the PING deadline never fired on the frozen server");
    let mut c = server.client().unwrap();
    assert!(
        wait_until(WAIT, || rec.gaps().len() == 1),
        "no gap event: {:?}",
        rec.events()
    );
    wait_subscribed(&mut c, "channel", "f", 1);
    c.publish("f", "after").unwrap();
    assert!(wait_until(WAIT, || rec.len() == 1));
    let stats = running.shutdown().unwrap();
    assert!(stats.reconnects >= 1);
    let Event::Gap { cause, .. } = &rec.gaps()[0] else {
        unreachable!()
    };
    let GapCause::ConnectionLost(why) = cause else {
        panic!("{cause:?}")
    };
    assert!(
        why.to_lowercase().contains("ping"),
        "the PING deadline noticed it: {why}"
    );
}

/// F10 under `Overflow::Block`: a slow handler on a worker fills the credit, ringq stops
/// reading, the server's pubsub output buffer passes its limit and the server drops the
/// subscriber. Nothing before the drop is lost (the messages received are the first
/// ones, in order), and the gap names the output-buffer limit.
#[test]
fn a_blocked_slow_subscriber_dropped_by_the_server_names_the_output_buffer_limit() {
    for (_, server) in redis_and_valkey() {
        blocked_until_dropped(&server);
    }
}

fn blocked_until_dropped(server: &RedisServer) {
    let mut c = server.client().unwrap();
    c.cmd([
        "CONFIG",
        "SET",
        "client-output-buffer-limit",
        "pubsub 256kb 128kb 1",
    ])
    .unwrap();
    let rec = Rec::default().with_pause(Duration::from_millis(2));
    let running = EngineBuilder::new(server.url())
        .pin_cores(false)
        .prefetch(16)
        .dispatch(Dispatch::workers(1))
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .start(ListenConsumer::new().channel("slow"), rec.clone())
        .unwrap();
    wait_subscribed(&mut c, "channel", "slow", 1);
    // Until the server's output buffer for the subscriber passes its limit and the
    // server drops it (a PUBLISH then reaches nobody): the kernel's socket buffers take
    // tens of MB first (receive buffers autotune up to net.ipv4.tcp_rmem's maximum,
    // 32 MiB here, and faster on a loaded machine), so a fixed burst is not always
    // enough. Bounded: at most 100 rounds of 5 MB.
    let payload = "x".repeat(500);
    let mut sent = 0usize;
    let mut dropped = false;
    for _ in 0..100 {
        let round: Vec<String> = (sent..sent + 10_000)
            .map(|i| format!("{i:07}{payload}"))
            .collect();
        let receivers = c.publish_many("PUBLISH", "slow", &round).unwrap();
        sent += round.len();
        if receivers < round.len() as i64 {
            dropped = true;
            break;
        }
    }
    assert!(
        dropped,
        "the server never dropped the subscriber after {sent} messages"
    );
    if !wait_until(WAIT, || !rec.gaps().is_empty()) {
        let drops = c
            .info_field("stats", "client_output_buffer_limit_disconnections")
            .unwrap();
        let clients: Vec<String> = c
            .client_list()
            .unwrap()
            .iter()
            .map(|i| format!("{i:?}"))
            .collect();
        let s = running.stats();
        panic!(
            "no gap reported: the server counts {drops:?} output-buffer disconnections; \
             clients {clients:?}; engine: {} messages, {} gaps, {} reconnects, {} stalls",
            s.messages, s.gaps, s.reconnects, s.stalls
        );
    }
    let stats = running.shutdown().unwrap();
    let got: Vec<usize> = rec
        .payloads()
        .iter()
        .map(|p| p[..7].parse().unwrap())
        .collect();
    assert!(
        !got.is_empty() && got.len() < sent,
        "received {}",
        got.len()
    );
    // Up to the drop, every message in order from the first; after each resubscribe,
    // later ones (the publisher went on meanwhile, and the server may drop the
    // subscriber again): every jump in the sequence is a reported gap, nothing else.
    let jumps: Vec<usize> = (1..got.len())
        .filter(|&i| got[i] != got[i - 1] + 1)
        .collect();
    assert_eq!(got[0], 0, "the first message arrived");
    let around: Vec<_> = jumps.iter().map(|&j| (got[j - 1], got[j])).collect();
    assert!(
        jumps.len() as u64 <= stats.gaps,
        "messages lost without a gap: jumps {around:?}, gaps {}",
        stats.gaps
    );
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order");
    let Event::Gap { cause, .. } = &rec.gaps()[0] else {
        unreachable!()
    };
    let GapCause::OutputBufferLimit(text) = cause else {
        panic!("{cause:?}")
    };
    assert!(text.contains("client-output-buffer-limit"), "{text}");
    assert!(stats.gaps >= 1);
    assert_eq!(
        rec.gaps().len() as u64,
        stats.gaps,
        "every gap reached the handler"
    );
}

/// `Overflow::DropOldest`: reading never stops; what the handlers cannot take waits in
/// the staging area, the oldest dropped when it is full. Received + dropped = published,
/// and the drops are reported.
#[test]
fn drop_oldest_accounts_for_every_message() {
    for (_, server) in redis_and_valkey() {
        drop_oldest(&server);
    }
}

fn drop_oldest(server: &RedisServer) {
    let rec = Rec::default().with_pause(Duration::from_micros(200));
    let running = EngineBuilder::new(server.url())
        .pin_cores(false)
        .prefetch(8)
        .dispatch(Dispatch::workers(1))
        .start(
            ListenConsumer::new()
                .channel("d")
                .overflow(Overflow::DropOldest(100)),
            rec.clone(),
        )
        .unwrap();
    let mut c = server.client().unwrap();
    wait_subscribed(&mut c, "channel", "d", 1);
    let sent = seq("d", 20_000);
    c.publish_many("PUBLISH", "d", &sent).unwrap();
    assert!(
        wait_until(WAIT, || {
            let s = running.stats();
            s.messages + s.dropped == 20_000
        }),
        "received {} + dropped {} != 20000 (the rest were lost)",
        running.stats().messages,
        running.stats().dropped
    );
    let stats = running.shutdown().unwrap();
    assert!(
        stats.dropped > 0,
        "the handler was slow enough to drop some"
    );
    assert_eq!(rec.len() as u64, stats.messages);
    let reported: u64 = rec
        .events()
        .iter()
        .map(|e| match e {
            Event::Dropped { count } => *count,
            _ => 0,
        })
        .sum();
    assert_eq!(reported, stats.dropped);
    // What was kept is in order: drops only take the oldest staged.
    let got = rec.payloads();
    let idx: Vec<usize> = got.iter().map(|p| p[1..].parse().unwrap()).collect();
    assert!(idx.windows(2).all(|w| w[0] < w[1]), "in order");
}

/// F15: an ACL user without the channel. The refusal is a clear error, not a retry loop.
#[test]
fn a_subscription_the_acl_refuses_is_a_clear_error() {
    for (_, server) in redis_and_valkey() {
        acl_refusal(&server);
    }
}

fn acl_refusal(server: &RedisServer) {
    let mut c = server.client().unwrap();
    c.cmd([
        "ACL",
        "SETUSER",
        "sub",
        "on",
        ">pw",
        "resetchannels",
        "&allowed",
        "+@all",
    ])
    .unwrap();
    let url = server.url_as(Some("sub"), "pw");
    let rec = Rec::default();
    let err = EngineBuilder::new(url)
        .pin_cores(false)
        .start(
            ListenConsumer::new()
                .channel("allowed")
                .channel("forbidden"),
            rec.clone(),
        )
        .unwrap()
        .wait()
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("refused to subscribe to channel forbidden"),
        "{text}"
    );
    assert!(text.contains("ACL"), "says what to change: {text}");
    let connections: i64 = c
        .info_field("stats", "total_connections_received")
        .unwrap()
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(connections < 10, "no retry loop: {connections} connections");
}

/// An `unsubscribe` nobody asked for (as a shard channel's slot migration or an ACL
/// change sends): ringq subscribes again at once and reports the gap once the server has
/// confirmed. Scripted, since a single real server sends this only in cluster setups.
#[test]
fn an_unsolicited_unsubscribe_is_resubscribed_and_reported() {
    use ringq_tests::{Script, ScriptedServer};
    let hello = "%2\r\n$7\r\nversion\r\n$5\r\n7.2.0\r\n$2\r\nid\r\n:7\r\n";
    let confirm = ">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n";
    let script = Script::new()
        .reply(hello)
        .reply(confirm)
        .reply("+PONG\r\n>3\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n:0\r\n")
        .reply(confirm)
        .reply("+PONG\r\n>3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nafter\r\n");
    let server = ScriptedServer::start(script).unwrap();
    let rec = Rec::default();
    let running = EngineBuilder::new(server.url())
        .pin_cores(false)
        .start(ListenConsumer::new().channel("ch"), rec.clone())
        .unwrap();
    assert!(
        wait_until(WAIT, || rec.len() == 1),
        "the message after the resubscribe"
    );
    let stats = running.shutdown().unwrap();
    let subscribes = server
        .received()
        .iter()
        .filter(|c| c.first().is_some_and(|a| a == "SUBSCRIBE"))
        .count();
    assert_eq!(subscribes, 2, "subscribed again");
    let gaps = rec.gaps();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let Event::Gap {
        subscriptions,
        cause,
        resubscribed_at,
        ..
    } = &gaps[0]
    else {
        unreachable!()
    };
    assert_eq!(subscriptions, &["channel ch"]);
    assert_eq!(cause, &GapCause::Unsubscribed);
    assert!(resubscribed_at.is_some());
    assert_eq!(stats.gaps, 1);
}

/// A half-open connection (the fault proxy's black hole: nothing forwarded, nothing
/// closed) is noticed by the PING on the subscribed connection; once the path works
/// again the subscriber resubscribes, reports the gap and receives.
#[test]
fn a_half_open_subscriber_connection_is_noticed_and_restored() {
    use ringq_tests::{Fault, FaultProxy};
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(server.addr()).unwrap();
    let rec = Rec::default();
    let running = EngineBuilder::new(proxy.url())
        .pin_cores(false)
        // Short enough for a quick test, long enough that a loaded machine (the suite
        // runs two tests at once on two cores) does not miss a healthy PONG.
        .idle_ping(Duration::from_millis(200))
        .reply_timeout(Duration::from_millis(1000))
        .connect_timeout(Duration::from_millis(1000))
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .start(ListenConsumer::new().channel("h"), rec.clone())
        .unwrap();
    let mut c = server.client().unwrap();
    wait_subscribed(&mut c, "channel", "h", 1);
    proxy.set(Fault::BlackHole);
    assert!(
        wait_until(WAIT, || running.stats().connections_ready == 0),
        "the black-holed connection was never given up"
    );
    // The engine giving up orders nothing after the proxy's count (it counts when it
    // reads what it then swallows), so wait for it rather than read it once.
    assert!(
        wait_until(WAIT, || proxy.fired() > 0),
        "the fault never swallowed traffic"
    );
    proxy.set(Fault::None);
    assert!(wait_until(WAIT, || !rec.gaps().is_empty()), "no gap event");
    // The old, half-open connection may still count as a subscriber on the server
    // until it notices; the new one is subscribed too.
    assert!(wait_until(WAIT, || {
        c.publish("h", "after").unwrap();
        rec.len() >= 1
    }));
    running.shutdown().unwrap();
    assert!(proxy.connections() >= 2, "it reconnected through the proxy");
}

/// `limit(N)` with `DropOldest`: a dropped message gives its claim back, so exactly N are
/// delivered and the engine stops by itself.
#[test]
fn a_limit_with_drop_oldest_delivers_exactly_n_and_stops() {
    let server = RedisServer::start().unwrap();
    let rec = Rec::default().with_pause(Duration::from_micros(300));
    let running = EngineBuilder::new(server.url())
        .pin_cores(false)
        .prefetch(8)
        .limit(500)
        .dispatch(Dispatch::workers(1))
        .start(
            ListenConsumer::new()
                .channel("ld")
                .overflow(Overflow::DropOldest(10)),
            rec.clone(),
        )
        .unwrap();
    let mut c = server.client().unwrap();
    wait_subscribed(&mut c, "channel", "ld", 1);
    // Publish until the engine has taken its 500 and stopped.
    let mut round = 0;
    while !running.is_stopping() && round < 100 {
        c.publish_many("PUBLISH", "ld", seq(&format!("r{round}-"), 2_000))
            .unwrap();
        round += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = running.wait().unwrap();
    assert_eq!(stats.messages, 500);
    assert_eq!(rec.len(), 500);
    assert!(
        stats.dropped > 0,
        "drops happened, and did not use up the budget"
    );
}

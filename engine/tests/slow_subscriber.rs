//! Listen mode under a slow consumer, against real servers (redis-server and Valkey 9):
//! `Overflow::DropOldest` keeps reading whatever the handler does and accounts for every
//! message; `Overflow::Block` with a reader that stops notices the server's close while
//! reading is paused, and its gap tells when and why.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use ringq::{
    Dispatch, EngineBuilder, ErrorKind, Event, GapCause, Handler, ListenConsumer, Message, Outcome,
    Overflow, PopConsumer,
};
use ringq_tests::{wait_until, RedisServer, TestClient};

mod support;
use support::{valkey, WAIT};

fn redis_and_valkey() -> Vec<(&'static str, RedisServer)> {
    vec![
        ("redis", RedisServer::start().unwrap()),
        ("valkey", valkey().start().unwrap()),
    ]
}

fn pubsub_clients(c: &mut TestClient) -> usize {
    let clients = c.client_list().unwrap();
    clients.iter().filter(|i| i.is_subscriber()).count()
}

fn wait_subscribed(c: &mut TestClient) {
    assert!(
        wait_until(WAIT, || pubsub_clients(c) == 1),
        "the subscriber never subscribed"
    );
}

/// `DropOldest` with a handler that sleeps, during a burst: the socket keeps being read
/// (the server, whose limit is raised, never has to cut the client, and no gap opens),
/// the oldest staged messages are dropped, and received + dropped = published exactly,
/// with every drop reported.
#[test]
fn drop_oldest_with_a_sleeping_handler_accounts_for_every_message() {
    for (name, server) in redis_and_valkey() {
        let mut c = server.client().unwrap();
        c.cmd([
            "CONFIG",
            "SET",
            "client-output-buffer-limit",
            "pubsub 0 0 0",
        ])
        .unwrap();
        let received = Arc::new(AtomicU64::new(0));
        let dropped_reported = Arc::new(AtomicU64::new(0));
        let gaps = Arc::new(AtomicU64::new(0));
        let h = Counting {
            received: received.clone(),
            dropped: dropped_reported.clone(),
            gaps: gaps.clone(),
            pause: Duration::from_micros(500),
        };
        let running = EngineBuilder::new(server.url())
            .pin_cores(false)
            .prefetch(64)
            .dispatch(Dispatch::workers(1))
            .start(
                ListenConsumer::new()
                    .channel("burst")
                    .overflow(Overflow::DropOldest(1000)),
                h,
            )
            .unwrap();
        wait_subscribed(&mut c);
        const N: u64 = 300_000;
        for round in 0..(N / 10_000) {
            let msgs: Vec<String> = (0..10_000).map(|i| format!("{round}-{i}")).collect();
            c.publish_many("PUBLISH", "burst", &msgs).unwrap();
        }
        assert!(
            wait_until(WAIT, || {
                let s = running.stats();
                s.messages + s.dropped == N
            }),
            "{name}: received {} + dropped {} != {N}",
            running.stats().messages,
            running.stats().dropped
        );
        let stats = running.shutdown().unwrap();
        assert!(
            stats.dropped > 0,
            "{name}: the handler was slow enough to drop"
        );
        assert_eq!(received.load(Ordering::Relaxed), stats.messages, "{name}");
        assert_eq!(
            dropped_reported.load(Ordering::Relaxed),
            stats.dropped,
            "{name}: every drop reported"
        );
        assert_eq!(
            stats.gaps, 0,
            "{name}: the server never closed the subscriber"
        );
        assert_eq!(stats.reconnects, 0, "{name}: no reconnect");
        assert_eq!(gaps.load(Ordering::Relaxed), 0, "{name}");
    }
}

/// `DropOldest` promises to read the socket whatever the handler does, which an inline
/// handler (on the shard thread) would make impossible: refused at start, saying what
/// to use.
#[test]
fn drop_oldest_with_an_inline_handler_is_refused_at_start() {
    let server = RedisServer::start().unwrap();
    let err = match EngineBuilder::new(server.url()).start(
        ListenConsumer::new()
            .channel("c")
            .overflow(Overflow::DropOldest(10)),
        |_: &Message<'_>| Outcome::Ack,
    ) {
        Ok(r) => {
            let _ = r.shutdown();
            panic!("DropOldest started with an inline handler");
        }
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("Dispatch::workers"), "{err}");
    // Other modes are not concerned.
    let r = EngineBuilder::new(server.url())
        .start(PopConsumer::new(["q"]), |_: &Message<'_>| Outcome::Ack)
        .unwrap();
    r.shutdown().unwrap();
}

/// `Block` with a reader that stops: the server drops the subscriber at its
/// output-buffer limit while ringq is not reading. The close is noticed while reading is
/// still paused (the server is asked every second), the gap says `OutputBufferLimit`,
/// starts close to the server's close and is reported soon after it, and once the reader
/// goes on the subscription works again.
#[test]
fn a_stopped_reader_dropped_by_the_server_is_noticed_while_paused() {
    for (name, server) in redis_and_valkey() {
        stopped_reader(name, &server);
    }
}

fn stopped_reader(name: &str, server: &RedisServer) {
    let mut c = server.client().unwrap();
    c.cmd([
        "CONFIG",
        "SET",
        "client-output-buffer-limit",
        "pubsub 1mb 256kb 5",
    ])
    .unwrap();
    let h = Gated::default();
    let running = EngineBuilder::new(server.url())
        .pin_cores(false)
        .prefetch(16)
        .dispatch(Dispatch::workers(1))
        .backoff(Duration::from_millis(20), Duration::from_millis(100))
        .start(ListenConsumer::new().channel("stuck"), h.clone())
        .unwrap();
    wait_subscribed(&mut c);
    // A publisher that goes on until told: 1 KiB messages, far more than the socket
    // buffers hold once ringq stops reading.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        let url = server.url();
        std::thread::spawn(move || {
            let mut p = TestClient::connect(&url).unwrap();
            let body = "x".repeat(1024);
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let msgs: Vec<String> = (0..500).map(|i| format!("{round}-{i}-{body}")).collect();
                if p.publish_many("PUBLISH", "stuck", &msgs).is_err() {
                    break;
                }
                round += 1;
            }
        })
    };
    // When the server closed the subscriber: between the last poll that listed it and
    // the first that did not.
    let mut listed_at = SystemTime::now();
    let closed = wait_until(WAIT, || {
        if pubsub_clients(&mut c) > 0 {
            listed_at = SystemTime::now();
            false
        } else {
            true
        }
    });
    let gone_at = SystemTime::now();
    assert!(closed, "{name}: the server never dropped the subscriber");
    let reported = wait_until(WAIT, || !h.gaps.lock().unwrap().is_empty());
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    if !reported {
        h.open.store(true, Ordering::Relaxed);
        panic!("{name}: no gap reported while the reader stayed stopped");
    }
    let (seen_at, gap) = h.gaps.lock().unwrap()[0].clone();
    let Event::Gap {
        disconnected_at,
        resubscribed_at,
        cause,
        ..
    } = gap
    else {
        unreachable!()
    };
    let GapCause::OutputBufferLimit(text) = &cause else {
        panic!("{name}: {cause:?}")
    };
    assert!(text.contains("client-output-buffer-limit"), "{text}");
    assert!(
        resubscribed_at.is_some(),
        "{name}: resubscribed while the reader was still stopped"
    );
    // Reported while the reader was still stopped, soon after the close (the server is
    // asked every second; the bound leaves room for a loaded machine).
    let late = seen_at.duration_since(gone_at).unwrap_or_default();
    assert!(
        late < Duration::from_secs(5),
        "{name}: reported {late:?} after the close"
    );
    // The gap starts at the last moment the server was seen holding the connection: at
    // most about a period before the close, never after it.
    let early = listed_at
        .duration_since(disconnected_at)
        .unwrap_or_default();
    let after = disconnected_at.duration_since(gone_at).unwrap_or_default();
    assert!(
        early < Duration::from_secs(3) && after.is_zero(),
        "{name}: the gap starts {early:?} before the last listing, {after:?} after the close"
    );
    // The reader goes on: the subscription works again.
    h.open.store(true, Ordering::Relaxed);
    let before = h.received.load(Ordering::Relaxed);
    assert!(wait_until(WAIT, || pubsub_clients(&mut c) == 1));
    assert!(
        wait_until(WAIT, || {
            c.publish("stuck", "after").unwrap();
            h.after.load(Ordering::Relaxed)
        }),
        "{name}: nothing arrived after the reader went on (received {before} before)"
    );
    let stats = running.shutdown().unwrap();
    assert!(stats.gaps >= 1);
}

/// Counts messages, reported drops and gaps; sleeps `pause` per message.
#[derive(Clone)]
struct Counting {
    received: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
    gaps: Arc<AtomicU64>,
    pause: Duration,
}

impl Handler for Counting {
    fn handle(&mut self, _: &Message<'_>) -> Outcome {
        std::thread::sleep(self.pause);
        self.received.fetch_add(1, Ordering::Relaxed);
        Outcome::Ack
    }

    fn on_event(&mut self, e: &Event) {
        match e {
            Event::Dropped { count } => {
                self.dropped.fetch_add(*count, Ordering::Relaxed);
            }
            Event::Gap { .. } => {
                self.gaps.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// A handler that stops at its first message until `open`, and records gaps with the
/// time they reached it.
#[derive(Clone, Default)]
struct Gated {
    open: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    after: Arc<AtomicBool>,
    gaps: Arc<Mutex<Vec<(SystemTime, Event)>>>,
}

impl Handler for Gated {
    fn handle(&mut self, m: &Message<'_>) -> Outcome {
        while !self.open.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.received.fetch_add(1, Ordering::Relaxed);
        if m.payload() == b"after" {
            self.after.store(true, Ordering::Relaxed);
        }
        Outcome::Ack
    }

    fn on_event(&mut self, e: &Event) {
        if matches!(e, Event::Gap { .. }) {
            self.gaps
                .lock()
                .unwrap()
                .push((SystemTime::now(), e.clone()));
        }
    }
}

//! Kombu mode (issue 24): Kombu / Celery queues consumed at-least-once with Kombu's own
//! records, side by side with real Python Kombu consumers and Celery from PyPI (the venv
//! `scripts/setup.sh` makes; a test without it fails saying so).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ringq::kombu::{step_of, Incoming};
use ringq::{KombuConsumer, Message, Outcome};
use ringq_resp::Frame;
use ringq_tests::{run_python, wait_until, Fault, FaultProxy, TestClient};

mod support;
use support::{builder, on_redis_and_valkey, start, Kind, WAIT};

on_redis_and_valkey!(replies_lost_in_flight_lose_nothing);

/// What a handler saw of each message: queue, decoded envelope, deliveries.
type Seen = Arc<Mutex<Vec<(String, Incoming, u32)>>>;

fn recording(
    seen: &Seen,
    outcome: fn(&Incoming, u32) -> Outcome,
) -> impl Fn(&Message<'_>) -> Outcome + Clone + Send + Sync + 'static {
    let seen = seen.clone();
    move |m: &Message<'_>| {
        let k = Incoming::parse(m.payload()).expect("the engine hands over envelopes only");
        let o = outcome(&k, m.deliveries());
        seen.lock().unwrap().push((
            String::from_utf8_lossy(m.queue()).into_owned(),
            k,
            m.deliveries(),
        ));
        o
    }
}

/// Opens a gate when dropped, so a handler waiting on it never outlives a failed
/// assertion (the test would hang instead of failing).
struct Opens(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Opens {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A handler that waits until `open` is set, then records and acks (on a worker, so the
/// shard keeps renewing and fetching while it waits); and the gate that opens when the
/// test ends, passed or failed.
fn gated(
    seen: &Seen,
) -> (
    Opens,
    impl Fn(&Message<'_>) -> Outcome + Clone + Send + Sync + 'static,
) {
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let wait = open.clone();
    let record = recording(seen, ack);
    let handler = move |m: &Message<'_>| {
        while !wait.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(2));
        }
        record(m)
    };
    (Opens(open), handler)
}

fn ack(_: &Incoming, _: u32) -> Outcome {
    Outcome::Ack
}

fn int(c: &mut TestClient, args: &[&str]) -> i64 {
    match c.cmd(args.iter().copied()).unwrap() {
        Frame::Integer(n) => n,
        f => panic!("{args:?}: {f:?}"),
    }
}

/// Nothing left anywhere: no records, no index entries, empty queues, no held records.
fn assert_clean(c: &mut TestClient, queues: &[&str]) {
    assert_eq!(int(c, &["HLEN", "unacked"]), 0, "records left in unacked");
    assert_eq!(
        int(c, &["ZCARD", "unacked_index"]),
        0,
        "entries left in unacked_index"
    );
    for q in queues {
        for p in [0u8, 3, 6, 9] {
            let key = ringq::kombu::queue_key(q, p);
            assert_eq!(c.llen(&key).unwrap(), 0, "{key:?} not drained");
        }
    }
    let Frame::Array(keys) = c.cmd(["KEYS", "ringq.kombu.held.*"]).unwrap() else {
        panic!()
    };
    for k in keys {
        let k = k.as_bytes().unwrap().clone();
        let Frame::Array(fields) = c.cmd([&b"HKEYS"[..], &k]).unwrap() else {
            panic!()
        };
        assert!(
            fields
                .iter()
                .all(|f| f.as_bytes().unwrap().starts_with(b"#")),
            "only the counter and the tail stay in {k:?}: {fields:?}"
        );
    }
}

fn body_of(k: &Incoming) -> String {
    String::from_utf8_lossy(&k.body).into_owned()
}

/// A Python Kombu producer publishes 20 000 messages over priorities 0–9 to two queues;
/// ringq consumes every one exactly once, and within a queue never takes a message of a
/// lower priority step while one of a higher step waits (Kombu's step 0 is the highest).
#[test]
fn kombu_messages_are_consumed_once_highest_step_first() {
    let server = start(Kind::Redis);
    let url = server.url();
    let script = r#"
import os
from kombu import Connection
with Connection(os.environ["BROKER"]) as conn:
    p = conn.Producer(serializer="json")
    for i in range(20000):
        q = "ka" if i % 2 == 0 else "kb"
        p.publish({"i": i}, routing_key=q, priority=(i // 2) % 10)
"#;
    run_python(script, &[("BROKER", &url)]);
    let seen: Seen = Arc::default();
    let running = builder(&url)
        .start(
            KombuConsumer::new("r1", ["ka", "kb"]).batch(64),
            recording(&seen, ack),
        )
        .unwrap();
    assert!(
        wait_until(WAIT, || seen.lock().unwrap().len() >= 20000),
        "consumed {}",
        seen.lock().unwrap().len()
    );
    let stats = running.shutdown().unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 20000, "every message exactly once");
    let ids: HashSet<u64> = seen
        .iter()
        .map(|(_, k, _)| {
            serde_json::from_slice::<serde_json::Value>(&k.body).unwrap()["i"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 20000);
    for q in ["ka", "kb"] {
        let steps: Vec<u8> = seen
            .iter()
            .filter(|(queue, _, _)| queue == q)
            .map(|(_, k, _)| step_of(k.priority()))
            .collect();
        assert_eq!(steps.len(), 10000);
        assert!(
            steps.windows(2).all(|w| w[0] <= w[1]),
            "{q}: a lower step was taken while a higher one waited"
        );
        assert_eq!(steps.first(), Some(&0));
        assert_eq!(steps.last(), Some(&9));
    }
    assert!(seen.iter().all(|(_, k, d)| *d == 1 && !k.redelivered()));
    assert_eq!(stats.acked, 20000);
    let mut c = server.client().unwrap();
    assert_clean(&mut c, &["ka", "kb"]);
}

/// Celery `apply_async` of 5 000 tasks (protocol 2, JSON): ringq sees the task names,
/// ids, args and kwargs.
#[test]
fn celery_tasks_are_read_with_their_arguments() {
    let server = start(Kind::Redis);
    let url = server.url();
    let script = r#"
import os
from celery import Celery
app = Celery("t", broker=os.environ["BROKER"])
@app.task(name="tasks.mul")
def mul(x, y, scale=1):
    return x * y * scale
for i in range(5000):
    mul.apply_async((i, 2), {"scale": 3}, task_id="task-%d" % i, priority=i % 10)
"#;
    run_python(script, &[("BROKER", &url)]);
    let seen: Seen = Arc::default();
    let running = builder(&url)
        .start(KombuConsumer::new("r1", ["celery"]), recording(&seen, ack))
        .unwrap();
    assert!(wait_until(WAIT, || seen.lock().unwrap().len() >= 5000));
    running.shutdown().unwrap();
    let seen = seen.lock().unwrap();
    let tasks: HashMap<String, ringq::kombu::Task> = seen
        .iter()
        .map(|(_, k, _)| {
            let t = k.task().expect("a Celery task");
            (t.id.clone(), t)
        })
        .collect();
    assert_eq!(tasks.len(), 5000);
    for i in 0..5000 {
        let t = &tasks[&format!("task-{i}")];
        assert_eq!(t.name, "tasks.mul");
        assert_eq!(t.args, serde_json::json!([i, 2]));
        assert_eq!(t.kwargs, serde_json::json!({"scale": 3}));
    }
    let mut c = server.client().unwrap();
    assert_clean(&mut c, &["celery"]);
}

/// ringq and a Python Kombu consumer (`drain_events`, acks) on the same queue at the same
/// time: every message is consumed once between them, and both took some.
#[test]
fn ringq_and_a_python_consumer_share_a_queue() {
    let server = start(Kind::Redis);
    let url = server.url();
    run_python(
        r#"
import os
from kombu import Connection
with Connection(os.environ["BROKER"]) as conn:
    p = conn.Producer(serializer="json")
    for i in range(6000):
        p.publish({"i": i}, routing_key="shared")
"#,
        &[("BROKER", &url)],
    );
    let seen: Seen = Arc::default();
    // A slow ringq handler, so the Python consumer gets its share.
    let slow = |_: &Incoming, _: u32| {
        std::thread::sleep(Duration::from_millis(1));
        Outcome::Ack
    };
    let running = builder(&url)
        .start(
            KombuConsumer::new("r1", ["shared"]).batch(16),
            recording(&seen, slow),
        )
        .unwrap();
    let out = run_python(
        r#"
import os, json, socket
from kombu import Connection, Queue
got = []
def on(body, message):
    got.append(body["i"])
    message.ack()
with Connection(os.environ["BROKER"]) as conn:
    with conn.Consumer([Queue("shared")], callbacks=[on], accept=["json"]):
        idle = 0
        while idle < 3:
            try:
                conn.drain_events(timeout=1)
                idle = 0
            except socket.timeout:
                idle += 1
print(json.dumps(got))
"#,
        &[("BROKER", &url)],
    );
    let python: Vec<u64> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(wait_until(WAIT, || {
        let mut c = server.client().unwrap();
        c.llen("shared").unwrap() == 0 && int(&mut c, &["HLEN", "unacked"]) == 0
    }));
    running.shutdown().unwrap();
    let ringq: Vec<u64> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(_, k, _)| {
            serde_json::from_slice::<serde_json::Value>(&k.body).unwrap()["i"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(
        !python.is_empty() && !ringq.is_empty(),
        "python {} ringq {}",
        python.len(),
        ringq.len()
    );
    let mut all: Vec<u64> = python.iter().chain(&ringq).copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..6000).collect::<Vec<_>>(),
        "each message once between them"
    );
    let mut c = server.client().unwrap();
    assert_clean(&mut c, &["shared"]);
}

/// Bad input: an element that is not JSON (dead-lettered by the pop script itself, so no
/// Kombu record of it ever exists to trip a Python `restore_visible`), a JSON object
/// without `body`, a body that is not valid base64 — each dead-lettered with its reason; the 100 good ones around them
/// are delivered, and a message limit counts only those.
#[test]
fn bad_elements_are_dead_lettered_with_the_reason() {
    let server = start(Kind::Redis);
    let url = server.url();
    let mut c = server.client().unwrap();
    let good = |i: usize| {
        ringq::kombu::Outgoing::new(format!("m{i}"), "text/plain")
            .routing_key("bq")
            .encode()
    };
    for i in 0..50 {
        c.cmd([b"LPUSH".to_vec(), b"bq".to_vec(), good(i)]).unwrap();
    }
    c.cmd(["LPUSH", "bq", "this is not json"]).unwrap();
    c.cmd([
        "LPUSH",
        "bq",
        r#"{"headers": {}, "properties": {"delivery_tag": "x"}}"#,
    ])
    .unwrap();
    c.cmd([
        "LPUSH",
        "bq",
        r#"{"body": "%%%", "properties": {"delivery_tag": "y", "body_encoding": "base64"}}"#,
    ])
    .unwrap();
    for i in 50..100 {
        c.cmd([b"LPUSH".to_vec(), b"bq".to_vec(), good(i)]).unwrap();
    }
    let seen: Seen = Arc::default();
    // A limit of 100 counts handled messages: the dead-lettered ones do not use it up,
    // and the engine stops by itself after the 100th good one.
    let running = builder(&url)
        .limit(100)
        .start(KombuConsumer::new("r1", ["bq"]), recording(&seen, ack))
        .unwrap();
    let stats = running.wait().unwrap();
    assert_eq!(c.llen("{bq}:dead").unwrap(), 3);
    assert_eq!(stats.dead, 3);
    assert_eq!(seen.lock().unwrap().len(), 100);
    let bodies: HashSet<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(_, k, _)| body_of(k))
        .collect();
    assert_eq!(bodies.len(), 100);
    let Frame::Array(dead) = c.cmd(["LRANGE", "{bq}:dead", "0", "-1"]).unwrap() else {
        panic!()
    };
    let dead: Vec<String> = dead
        .iter()
        .map(|f| String::from_utf8_lossy(f.as_bytes().unwrap()).into_owned())
        .collect();
    for why in [
        "not%20a%20JSON%20object",
        "no%20`body`",
        "not%20valid%20base64",
    ] {
        assert!(dead.iter().any(|d| d.contains(why)), "{why} in {dead:?}");
    }
    assert_clean(&mut c, &["bq"]);
}

/// Retry puts the message back at its queue's tail marked redelivered with ringq's
/// delivery count; Dead moves it to `{q}:dead`; max deliveries sends the last retry dead.
#[test]
fn retries_requeue_marked_and_dead_letters_move() {
    let server = start(Kind::Redis);
    let url = server.url();
    let mut c = server.client().unwrap();
    for i in 0..30 {
        let e = ringq::kombu::Outgoing::new(format!("m{i}"), "text/plain")
            .routing_key("rq")
            .encode();
        c.cmd([b"LPUSH".to_vec(), b"rq".to_vec(), e]).unwrap();
    }
    let seen: Seen = Arc::default();
    // m0–m9 retried forever (dead after 3 deliveries), m10–m19 dead at once, the rest acked.
    let decide = |k: &Incoming, _: u32| {
        let n: usize = body_of(k)[1..].parse().unwrap();
        match n {
            0..=9 => Outcome::Retry,
            10..=19 => Outcome::Dead,
            _ => Outcome::Ack,
        }
    };
    let running = builder(&url)
        .start(
            KombuConsumer::new("r1", ["rq"]).max_deliveries(3),
            recording(&seen, decide),
        )
        .unwrap();
    assert!(wait_until(WAIT, || c.llen("{rq}:dead").unwrap() == 20));
    let stats = running.shutdown().unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 10 * 3 + 20);
    for (_, k, d) in seen.iter() {
        let n: usize = body_of(k)[1..].parse().unwrap();
        if n < 10 {
            assert_eq!(k.redelivered(), *d > 1, "m{n} delivery {d}");
        } else {
            assert_eq!(*d, 1);
        }
    }
    // Handler outcomes: three retries of each of m0–m9 (the last went dead by the policy).
    assert_eq!((stats.retried, stats.dead), (30, 10));
    assert_clean(&mut c, &["rq"]);
}

/// A Python Kombu consumer (acks off until done) takes 40 messages from each of two
/// queues — one behind a direct exchange with a routing key, one on the anonymous
/// exchange — and dies (`os._exit`) holding them. ringq, with a short visibility timeout,
/// takes part in `restore_visible`: it restores those records (routing the direct
/// exchange's through its `_kombu.binding` set) and consumes every message exactly once,
/// the 80 restored ones marked redelivered.
#[test]
fn ringq_restores_what_a_killed_python_worker_held() {
    let server = start(Kind::Redis);
    let url = server.url();
    let script = r#"
import os
from kombu import Connection, Exchange, Queue
dq = Queue("dq", Exchange("dx", type="direct"), routing_key="rk")
aq = Queue("aq")
with Connection(os.environ["BROKER"]) as conn:
    p = conn.Producer(serializer="json")
    for i in range(300):
        p.publish({"i": i}, exchange=dq.exchange, routing_key="rk", declare=[dq])
        p.publish({"i": 1000 + i}, exchange="", routing_key="aq", declare=[aq])
    got = []
    with conn.Consumer([dq, aq], callbacks=[lambda body, m: got.append(body)], accept=["json"]):
        while len(got) < 80:
            conn.drain_events(timeout=5)
    os._exit(9)
"#;
    let python = ringq_tests::kombu_python().unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(python)
        .args(["-c", script])
        .env("BROKER", &url)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut c = server.client().unwrap();
    let held = int(&mut c, &["HLEN", "unacked"]);
    assert!(held >= 80, "the Python worker died holding {held} records");
    let seen: Seen = Arc::default();
    let running = builder(&url)
        .start(
            KombuConsumer::new("r1", ["dq", "aq"])
                .visibility_timeout(Duration::from_secs(1))
                .restore_interval(Duration::from_millis(200)),
            recording(&seen, ack),
        )
        .unwrap();
    assert!(
        wait_until(WAIT, || {
            seen.lock().unwrap().len() >= 600 && int(&mut c, &["HLEN", "unacked"]) == 0
        }),
        "consumed {}, records left {}",
        seen.lock().unwrap().len(),
        int(&mut c, &["HLEN", "unacked"])
    );
    let stats = running.shutdown().unwrap();
    let seen = seen.lock().unwrap();
    let ids: Vec<u64> = seen
        .iter()
        .map(|(_, k, _)| {
            serde_json::from_slice::<serde_json::Value>(&k.body).unwrap()["i"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let distinct: HashSet<u64> = ids.iter().copied().collect();
    assert_eq!(ids.len(), 600, "each message once");
    assert_eq!(distinct.len(), 600);
    let redelivered = seen.iter().filter(|(_, k, _)| k.redelivered()).count() as i64;
    assert_eq!(
        redelivered, held,
        "the restored ones are marked redelivered"
    );
    assert_eq!(stats.recovered as i64, held);
    assert_clean(&mut c, &["dq", "aq"]);
}

/// A Kombu fanout exchange: ringq's listen mode (`kombu::fanout_consumer`) receives what a
/// Kombu producer published to it, with and without a routing key, as envelopes.
#[test]
fn listen_mode_receives_a_kombu_fanout_exchange() {
    let server = start(Kind::Redis);
    let url = server.url();
    let got: Arc<Mutex<Vec<Incoming>>> = Arc::default();
    let g = got.clone();
    let running = builder(&url)
        .start(
            ringq::kombu::fanout_consumer(0, "fx"),
            move |m: &Message<'_>| {
                g.lock()
                    .unwrap()
                    .push(Incoming::parse(m.payload()).unwrap());
                Outcome::Ack
            },
        )
        .unwrap();
    // The subscriptions are in force once the server counts them.
    let mut c = server.client().unwrap();
    assert!(wait_until(WAIT, || {
        let Frame::Array(v) = c.cmd(["PUBSUB", "NUMSUB", "/0.fx"]).unwrap() else {
            return false;
        };
        matches!(v.get(1), Some(Frame::Integer(1))) && int(&mut c, &["PUBSUB", "NUMPAT"]) == 1
    }));
    run_python(
        r#"
import os
from kombu import Connection, Exchange
fx = Exchange("fx", type="fanout")
with Connection(os.environ["BROKER"]) as conn:
    p = conn.Producer(serializer="json")
    for i in range(50):
        p.publish({"i": i}, exchange=fx, routing_key="", declare=[fx])
    for i in range(50, 100):
        p.publish({"i": i}, exchange=fx, routing_key="news", declare=[fx])
"#,
        &[("BROKER", &url)],
    );
    assert!(wait_until(WAIT, || got.lock().unwrap().len() >= 100));
    running.shutdown().unwrap();
    let ids: HashSet<u64> = got
        .lock()
        .unwrap()
        .iter()
        .map(|k| {
            serde_json::from_slice::<serde_json::Value>(&k.body).unwrap()["i"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids, (0..100).collect());
}

/// `n` Kombu envelopes with bodies `<prefix>-<i>` on `queue` (step 0), pushed in order.
fn push_envelopes(c: &mut TestClient, queue: &str, prefix: &str, n: usize) {
    let all: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            ringq::kombu::Outgoing::new(format!("{prefix}-{i}"), "text/plain")
                .routing_key(queue)
                .encode()
        })
        .collect();
    for chunk in all.chunks(1000) {
        c.lpush_many(queue, chunk).unwrap();
    }
}

/// The proxy swallows a pop's reply (the first large reply after it is armed: the pop
/// ran, its batch was recorded) and resets the connection, three times mid-drain. Once
/// nothing is in hand the consumer restores its orphaned records: 0 lost, every
/// duplicate marked redelivered and bounded by the batch per fault, no record left.
fn replies_lost_in_flight_lose_nothing(kind: Kind) {
    let server = start(kind);
    let mut c = server.client().unwrap();
    const N: usize = 20_000;
    push_envelopes(&mut c, "lq", "l", N);
    let proxy = FaultProxy::start(server.addr()).unwrap();
    let seen: Seen = Arc::default();
    let running = builder(proxy.url())
        .prefetch(512)
        .start(
            KombuConsumer::new("c1", ["lq"]).batch(64),
            recording(&seen, ack),
        )
        .unwrap();
    let distinct = |seen: &Seen| {
        seen.lock()
            .unwrap()
            .iter()
            .map(|(_, k, _)| body_of(k))
            .collect::<HashSet<_>>()
            .len()
    };
    for round in 1..=3 {
        let before = seen.lock().unwrap().len();
        assert!(wait_until(WAIT, || seen.lock().unwrap().len() > before + 1000));
        let fired = proxy.fired();
        let delivered = distinct(&seen);
        assert!(
            delivered < N,
            "armed mid-drain: {delivered} of {N} delivered"
        );
        proxy.set(Fault::SwallowReplyAtLeast(4096));
        assert!(
            wait_until(WAIT, || proxy.fired() > fired),
            "the fault fired"
        );
        // The swallowed batch comes back once the messages in hand are settled.
        assert!(
            wait_until(WAIT, || running.stats().recovered >= round),
            "round {round}: a lost pop's records restored"
        );
    }
    assert!(
        wait_until(WAIT, || distinct(&seen) >= N),
        "delivered {}",
        distinct(&seen)
    );
    assert!(wait_until(WAIT, || int(&mut c, &["HLEN", "unacked"]) == 0));
    let stats = running.shutdown().unwrap();
    let total = seen.lock().unwrap().len();
    assert_eq!(distinct(&seen), N, "0 lost");
    assert!(stats.reconnects >= 3);
    let dups = total - N;
    assert!(
        dups <= 3 * 64,
        "duplicates bounded by a batch per fault: {dups}"
    );
    // The swallowed batches were never handled: restored, they are delivered once more
    // than their first (lost) delivery, marked.
    let redelivered = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, k, _)| k.redelivered())
        .count();
    assert_eq!(
        redelivered as u64, stats.recovered,
        "each restored one marked"
    );
    eprintln!(
        "3 lost pop replies: {total} deliveries for {N}, {dups} duplicates, {} restored",
        stats.recovered
    );
    assert_clean(&mut c, &["lq"]);
}

/// Kombu's `unacked_mutex`: while another worker holds it, ringq's sweep leaves an
/// overdue record alone; once it is released, ringq restores the record (a Python
/// worker's: the anonymous exchange, the queue as routing key) and consumes it, marked
/// redelivered, and releases the mutex it took (only its own token).
#[test]
fn the_sweep_waits_for_kombus_mutex() {
    let server = start(Kind::Redis);
    let url = server.url();
    let mut c = server.client().unwrap();
    let element = String::from_utf8(
        ringq::kombu::Outgoing::new("orphan", "text/plain")
            .routing_key("mq")
            .encode(),
    )
    .unwrap();
    let record = format!("[{element}, \"\", \"mq\"]");
    c.cmd(["HSET", "unacked", "python-tag-1", &record]).unwrap();
    c.cmd(["ZADD", "unacked_index", "1000", "python-tag-1"])
        .unwrap();
    c.cmd(["SET", "unacked_mutex", "a-python-worker", "PX", "300000"])
        .unwrap();
    let seen: Seen = Arc::default();
    let running = builder(&url)
        .start(
            KombuConsumer::new("r1", ["mq"])
                .visibility_timeout(Duration::from_secs(1))
                .restore_interval(Duration::from_millis(50)),
            recording(&seen, ack),
        )
        .unwrap();
    // Twenty sweep periods under another worker's mutex: nothing restored.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(int(&mut c, &["HLEN", "unacked"]), 1);
    assert!(seen.lock().unwrap().is_empty());
    c.cmd(["DEL", "unacked_mutex"]).unwrap();
    assert!(wait_until(WAIT, || seen.lock().unwrap().len() == 1));
    let (queue, k, _) = seen.lock().unwrap()[0].clone();
    assert_eq!(
        (queue.as_str(), body_of(&k).as_str(), k.redelivered()),
        ("mq", "orphan", true)
    );
    assert!(wait_until(WAIT, || int(
        &mut c,
        &["EXISTS", "unacked_mutex"]
    ) == 0));
    running.shutdown().unwrap();
    assert_clean(&mut c, &["mq"]);
}

/// Renewal: ringq holds 20 messages for longer than the visibility timeout (a handler on
/// a worker that waits) while a Python Kombu worker runs `restore_visible` with the same
/// 3 s timeout every 0.3 s for 6 s: the records' scores are renewed, Python restores none of
/// them (no duplicate delivery), and they are acked once released.
#[test]
fn held_records_are_renewed_past_the_visibility_timeout() {
    let server = start(Kind::Redis);
    let url = server.url();
    let mut c = server.client().unwrap();
    push_envelopes(&mut c, "hq", "h", 20);
    let seen: Seen = Arc::default();
    let (gate, handler) = gated(&seen);
    let running = builder(&url)
        .dispatch(ringq::Dispatch::workers(1))
        .prefetch(20)
        .start(
            KombuConsumer::new("r1", ["hq"]).visibility_timeout(Duration::from_secs(3)),
            handler,
        )
        .unwrap();
    assert!(wait_until(WAIT, || int(&mut c, &["HLEN", "unacked"]) == 20));
    let min_score = |c: &mut TestClient| -> f64 {
        let Frame::Array(v) = c
            .cmd(["ZRANGE", "unacked_index", "0", "0", "WITHSCORES"])
            .unwrap()
        else {
            panic!()
        };
        let s = v[1].as_bytes().unwrap();
        std::str::from_utf8(s).unwrap().parse().unwrap()
    };
    let first = min_score(&mut c);
    run_python(
        r#"
import os, time
from kombu import Connection
opts = {"visibility_timeout": 3}
with Connection(os.environ["BROKER"], transport_options=opts) as conn:
    ch = conn.default_channel
    end = time.time() + 6
    while time.time() < end:
        ch.qos.restore_visible(num=1000, interval=1)
        time.sleep(0.3)
"#,
        &[("BROKER", &url)],
    );
    assert_eq!(
        c.llen("hq").unwrap(),
        0,
        "Python restored records ringq holds"
    );
    assert_eq!(int(&mut c, &["HLEN", "unacked"]), 20);
    let renewed = min_score(&mut c);
    assert!(
        renewed > first + 3.0,
        "scores renewed: {first} then {renewed}"
    );
    drop(gate);
    assert!(wait_until(WAIT, || seen.lock().unwrap().len() >= 20));
    running.shutdown().unwrap();
    assert_eq!(seen.lock().unwrap().len(), 20, "no duplicate");
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .all(|(_, k, d)| *d == 1 && !k.redelivered()));
    assert_clean(&mut c, &["hq"]);
}

/// A server that loses a key's counter (a failover to a replica that had not received
/// it; here the held hash is deleted) while messages are held: the next pop still numbers
/// above everything the engine has numbered (its floor), so no new record overwrites a
/// held one — 40 messages, 40 distinct records — and all are acked.
#[test]
fn a_lost_counter_never_reuses_a_held_number() {
    let server = start(Kind::Redis);
    let url = server.url();
    let mut c = server.client().unwrap();
    let seen: Seen = Arc::default();
    let (gate, handler) = gated(&seen);
    let running = builder(&url)
        .dispatch(ringq::Dispatch::workers(1))
        .prefetch(64)
        .start(KombuConsumer::new("r1", ["fq"]).batch(20), handler)
        .unwrap();
    push_envelopes(&mut c, "fq", "a", 20);
    assert!(wait_until(WAIT, || int(&mut c, &["HLEN", "unacked"]) == 20));
    assert_eq!(int(&mut c, &["DEL", "ringq.kombu.held.r1:fq"]), 1);
    push_envelopes(&mut c, "fq", "b", 20);
    assert!(wait_until(WAIT, || c.llen("fq").unwrap() == 0));
    assert!(
        wait_until(WAIT, || int(&mut c, &["HLEN", "unacked"]) == 40),
        "both batches recorded under distinct fields: {}",
        int(&mut c, &["HLEN", "unacked"])
    );
    drop(gate);
    assert!(wait_until(WAIT, || seen.lock().unwrap().len() >= 40));
    assert!(wait_until(WAIT, || int(&mut c, &["HLEN", "unacked"]) == 0));
    running.shutdown().unwrap();
    assert_eq!(seen.lock().unwrap().len(), 40);
    assert_clean(&mut c, &["fq"]);
}

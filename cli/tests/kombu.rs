//! Kombu and Celery interop, first part (issue 24): what `ringq produce --mode kombu`
//! writes, a real Python Kombu consumer and a Celery worker accept; and what Kombu and
//! Celery write, `ringq::kombu::Incoming` reads. Kombu 5.7.0 and Celery 5.7.0 come from
//! PyPI into `target/kombu-venv` (`scripts/setup.sh`); a test without them fails saying so.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use ringq::kombu::{queue_key, Incoming};
use ringq_resp::Frame;
use ringq_tests::{kombu_python, run_python, wait_until, TestClient};

mod common;
use common::*;

const WAIT: Duration = Duration::from_secs(60);

fn produce(url: &str, extra: &[&str]) {
    let mut args = vec!["produce", "--url", url, "--mode", "kombu"];
    args.extend_from_slice(extra);
    run(&args).assert_success();
}

/// A Python Kombu consumer (`SimpleQueue.get` + `ack`) reads every message ringq wrote,
/// and takes the priority-0 ones (Kombu's highest) before the priority-9 ones.
#[test]
fn a_python_kombu_consumer_reads_what_ringq_produces_in_priority_order() {
    let s = server();
    let url = s.url();
    produce(
        &url,
        &["--queue", "kq", "--messages", "300", "--priority", "9"],
    );
    produce(
        &url,
        &["--queue", "kq", "--messages", "300", "--priority", "0"],
    );
    let script = r#"
import os, json
from kombu import Connection
with Connection(os.environ["BROKER"]) as conn:
    q = conn.SimpleQueue("kq")
    for _ in range(600):
        m = q.get(timeout=10)
        print(json.dumps([m.payload, m.properties.get("priority"), m.content_type]))
        m.ack()
    q.close()
"#;
    let out = run_python(script, &[("BROKER", &url)]);
    let rows: Vec<(String, u8, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 600);
    assert!(rows[..300].iter().all(|r| r.1 == 0), "priority 0 first");
    assert!(rows[300..].iter().all(|r| r.1 == 9));
    assert!(rows.iter().all(|r| r.2 == "text/plain"));
    let bodies: HashSet<(String, u8)> = rows.iter().map(|r| (r.0.clone(), r.1)).collect();
    for p in [0u8, 9] {
        for i in 0..300 {
            assert!(bodies.contains(&(i.to_string(), p)), "{i} at priority {p}");
        }
    }
    // Kombu's consumer read them in push order within a step.
    let firsts: Vec<&str> = rows[..3].iter().map(|r| r.0.as_str()).collect();
    assert_eq!(firsts, ["0", "1", "2"]);
}

/// A Celery worker (solo pool) runs the tasks `ringq produce --mode kombu --task` wrote.
#[test]
fn a_celery_worker_runs_tasks_ringq_produced() {
    let s = server();
    let url = s.url();
    let dir = tempdir();
    std::fs::write(
        dir.join("ringq_tasks.py"),
        r#"
import os, redis
from celery import Celery
app = Celery("ringq_tasks", broker=os.environ["BROKER"])
results = redis.Redis.from_url(os.environ["BROKER"])

@app.task(name="ringq.record")
def record(x):
    results.rpush("done", x)
"#,
    )
    .unwrap();
    produce(
        &url,
        &[
            "--queue",
            "celery",
            "--messages",
            "200",
            "--task",
            "ringq.record",
        ],
    );
    let python = kombu_python().unwrap_or_else(|e| panic!("{e}"));
    let mut worker = Command::new(python)
        .args([
            "-m",
            "celery",
            "-A",
            "ringq_tasks",
            "worker",
            "--pool",
            "solo",
            "-Q",
            "celery",
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
            "-l",
            "warning",
        ])
        .current_dir(&dir)
        .env("BROKER", &url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a celery worker");
    let mut c = client(&s);
    let done = wait_until(WAIT, || c.llen("done").unwrap() >= 200);
    let _ = worker.kill();
    let out = worker.wait_with_output().unwrap();
    assert!(
        done,
        "the worker ran {} of 200 tasks; its log:\n{}",
        c.llen("done").unwrap(),
        String::from_utf8_lossy(&out.stderr)
    );
    let Frame::Array(items) = c.cmd(["LRANGE", "done", "0", "-1"]).unwrap() else {
        panic!("no results")
    };
    let got: HashSet<String> = items
        .iter()
        .filter_map(|f| {
            f.as_bytes()
                .map(|b| String::from_utf8_lossy(b).into_owned())
        })
        .collect();
    assert_eq!(got, (0..200).map(|i| i.to_string()).collect::<HashSet<_>>());
}

/// What a Kombu producer and Celery's `send_task` write, `Incoming::parse` reads: the
/// body decoded from base64, content type, priority, and Celery's task name, id and
/// arguments.
#[test]
fn ringq_reads_what_kombu_and_celery_write() {
    let s = server();
    let url = s.url();
    let script = r#"
import os
from kombu import Connection, Exchange, Queue
from celery import Celery
with Connection(os.environ["BROKER"]) as conn:
    q = Queue("dq", Exchange("dq"), routing_key="dq")
    p = conn.Producer()
    for i in range(10):
        p.publish({"n": i, "text": "h\u00e9"}, exchange=q.exchange, routing_key="dq", declare=[q], priority=i, serializer="json")
    p.publish("plain text", exchange=q.exchange, routing_key="dq", declare=[q], serializer="raw")
app = Celery("x", broker=os.environ["BROKER"])
for i in range(5):
    app.send_task("tasks.add", args=(i, i + 1), kwargs={"k": i}, queue="cq", task_id="id-%d" % i)
"#;
    run_python(script, &[("BROKER", &url)]);
    let mut c = client(&s);
    let mut read = |key: &str| -> Vec<Incoming> {
        let Frame::Array(items) = c.cmd(["LRANGE", key, "0", "-1"]).unwrap() else {
            panic!("{key} is not a list")
        };
        items
            .iter()
            .rev()
            .map(|f| Incoming::parse(f.as_bytes().expect("an element")).unwrap())
            .collect()
    };
    // Kombu put priorities 0–9 on the keys of steps 0, 3, 6 and 9.
    let mut json_bodies = Vec::new();
    for p in [0u8, 3, 6, 9] {
        for m in read(&queue_key("dq", p)) {
            assert_eq!(ringq::kombu::step_of(m.priority()), p);
            assert!(m.delivery_tag().is_some());
            assert!(!m.redelivered());
            if m.content_type == "application/json" {
                let v: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
                assert_eq!(v["text"], "h\u{e9}");
                json_bodies.push(v["n"].as_u64().unwrap());
            } else {
                assert_eq!(m.body, b"plain text");
            }
        }
    }
    json_bodies.sort_unstable();
    assert_eq!(json_bodies, (0..10).collect::<Vec<u64>>());
    let tasks: Vec<_> = read("cq")
        .iter()
        .map(|m| m.task().expect("a Celery task"))
        .collect();
    assert_eq!(tasks.len(), 5);
    for (i, t) in tasks.iter().enumerate() {
        assert_eq!(t.name, "tasks.add");
        assert_eq!(t.id, format!("id-{i}"));
        assert_eq!(t.args, serde_json::json!([i, i + 1]));
        assert_eq!(t.kwargs, serde_json::json!({"k": i}));
        assert_eq!(t.retries, 0);
    }
}

/// `--priority` and `--task` belong to `--mode kombu`.
#[test]
fn kombu_flags_need_the_kombu_mode() {
    run(&[
        "produce",
        "--queue",
        "q",
        "--messages",
        "1",
        "--priority",
        "3",
    ])
    .assert_fails_with(2, "apply to --mode kombu only");
    run(&[
        "produce",
        "--queue",
        "q",
        "--messages",
        "1",
        "--mode",
        "kombu",
        "--priority",
        "10",
    ])
    .assert_fails_with(2, "--priority");
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "ringq-kombu-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// `ringq consume --mode kombu` as these tests run it: JSON lines, a small prefetch.
fn kombu_consumer(url: &str, id: &str, q: &str, extra: &[&str]) -> Consumer {
    let mut args = vec![
        "consume",
        "--url",
        url,
        "--mode",
        "kombu",
        "--consumer-id",
        id,
        "--queue",
        q,
        "--format",
        "json",
        "--prefetch",
        "256",
        "--batch",
        "32",
        "--no-pin",
    ];
    args.extend_from_slice(extra);
    Consumer::spawn(&args)
}

/// (body, redelivered) of each JSON line.
fn bodies(lines: &[String]) -> Vec<(String, bool)> {
    lines
        .iter()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            (
                v["body"].as_str().unwrap().to_owned(),
                v["redelivered"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn hlen(c: &mut TestClient, key: &str) -> i64 {
    match c.cmd(["HLEN", key]).unwrap() {
        Frame::Integer(n) => n,
        f => panic!("HLEN {key}: {f:?}"),
    }
}

/// Starts a kombu-mode consumer of `kq` (already holding `n` messages), lets it print
/// some, freezes it until it is seen holding records, and kills it (SIGKILL). Returns
/// what it printed and how many records it held.
fn killed_holding(url: &str, c: &mut TestClient, id: &str) -> (Vec<String>, i64) {
    let a = kombu_consumer(url, id, "kq", &[]);
    assert!(
        wait_until(WAIT, || a.count() >= 1000),
        "printed {}",
        a.count()
    );
    let mut held = 0;
    for _ in 0..50 {
        a.signal(libc::SIGSTOP);
        std::thread::sleep(Duration::from_millis(20));
        held = hlen(c, "unacked");
        if held > 0 {
            break;
        }
        a.signal(libc::SIGCONT);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(held > 0, "frozen holding records");
    a.signal(libc::SIGKILL);
    let (mut lines, _, _) = a.finish();
    // The kill may cut the last line short (its batch was not acknowledged).
    if lines
        .last()
        .is_some_and(|l| serde_json::from_str::<serde_json::Value>(l).is_err())
    {
        lines.pop();
    }
    let held = hlen(c, "unacked");
    assert!(held > 0, "killed holding records");
    assert!(llen_of(c, "kq") > 0, "killed mid-drain");
    (lines, held)
}

fn llen_of(c: &mut TestClient, key: &str) -> i64 {
    c.llen(key).unwrap()
}

/// Every one of `0..n` is among `got`; returns the duplicates.
fn all_delivered(got: &[(String, bool)], n: usize) -> usize {
    let distinct: HashSet<&str> = got.iter().map(|(b, _)| b.as_str()).collect();
    let missing: Vec<usize> = (0..n)
        .filter(|i| !distinct.contains(i.to_string().as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} lost, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(distinct.len(), n, "nothing delivered that was not produced");
    got.len() - n
}

/// kill -9 of `ringq consume --mode kombu` mid-drain, then a restart with the same id:
/// the restart restores what the killed run held at once (the visibility timeout is
/// Kombu's default hour), every message is delivered, none lost, and each one delivered
/// again is marked redelivered.
#[test]
fn a_killed_kombu_consumer_restarted_restores_what_it_held() {
    let s = server();
    let url = s.url();
    const N: usize = 8000;
    produce(&url, &["--queue", "kq", "--messages", &N.to_string()]);
    let mut c = client(&s);
    let (first, held) = killed_holding(&url, &mut c, "c1");
    let b = kombu_consumer(&url, "c1", "kq", &[]);
    assert!(wait_until(WAIT, || llen_of(&mut c, "kq") == 0
        && hlen(&mut c, "unacked") == 0));
    b.signal(libc::SIGTERM);
    let (second, err, code) = b.finish();
    assert_eq!(code, Some(0), "stderr:\n{err}");
    assert!(
        err.contains("back on 'kq'"),
        "the restart said what it restored:\n{err}"
    );
    let first = bodies(&first);
    let second = bodies(&second);
    let mut all = first.clone();
    all.extend(second.iter().cloned());
    let dups = all_delivered(&all, N);
    assert!(
        dups as i64 <= held,
        "{dups} duplicates, {held} held at the kill"
    );
    let printed: HashSet<&str> = first.iter().map(|(b, _)| b.as_str()).collect();
    for (body, redelivered) in &second {
        if printed.contains(body.as_str()) {
            assert!(
                redelivered,
                "{body}: delivered again, not marked redelivered"
            );
        }
    }
    assert!(
        second.iter().any(|(_, r)| *r),
        "some were restored: {held} held"
    );
    eprintln!(
        "held {held} at the kill; {} lines for {N} messages, {dups} duplicates",
        all.len()
    );
}

/// kill -9 of `ringq consume --mode kombu`, then a Python Kombu consumer with a short
/// visibility timeout: its `restore_visible` puts ringq's records back (they are
/// Kombu's own), it gets every message the killed run did not finish, marked
/// redelivered where they had been delivered.
#[test]
fn a_python_kombu_consumer_restores_what_a_killed_ringq_held() {
    let s = server();
    let url = s.url();
    const N: usize = 8000;
    produce(&url, &["--queue", "kq", "--messages", &N.to_string()]);
    let mut c = client(&s);
    let (first, held) = killed_holding(&url, &mut c, "c1");
    let script = r#"
import os, json, socket, time
from kombu import Connection, Queue
opts = {"visibility_timeout": 1, "unacked_restore_interval": 1}
got = []
def on(body, message):
    got.append([body, bool(message.delivery_info.get("redelivered"))])
    message.ack()
with Connection(os.environ["BROKER"], transport_options=opts) as conn:
    time.sleep(1.5)
    # restore_visible takes 10 per call unless told (num=10)
    conn.default_channel.qos.restore_visible(num=100000)
    with conn.Consumer([Queue("kq")], callbacks=[on], accept=["text/plain"]):
        idle = 0
        while idle < 3:
            try:
                conn.drain_events(timeout=1)
                idle = 0
            except socket.timeout:
                idle += 1
print(json.dumps(got))
"#;
    let out = run_python(script, &[("BROKER", &url)]);
    let python: Vec<(String, bool)> = serde_json::from_slice(&out.stdout).unwrap();
    let first = bodies(&first);
    let mut all = first.clone();
    all.extend(python.iter().cloned());
    let dups = all_delivered(&all, N);
    assert!(
        dups as i64 <= held,
        "{dups} duplicates, {held} held at the kill"
    );
    let restored = python.iter().filter(|(_, r)| *r).count();
    assert!(
        restored > 0 && restored as i64 <= held,
        "{restored} restored of {held} held"
    );
    assert_eq!(hlen(&mut c, "unacked"), 0);
    eprintln!("held {held}; python restored {restored}; {dups} duplicates");
}

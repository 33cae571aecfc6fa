//! Kombu and Celery interop, first part (issue 24): what `ringq produce --mode kombu`
//! writes, a real Python Kombu consumer and a Celery worker accept; and what Kombu and
//! Celery write, `ringq::kombu::Incoming` reads. Kombu 5.7.0 and Celery 5.7.0 come from
//! PyPI into `target/kombu-venv` (`scripts/setup.sh`); a test without them fails saying so.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use ringq::kombu::{queue_key, Incoming};
use ringq_resp::Frame;
use ringq_tests::{kombu_python, run_python, wait_until};

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

//! Scenario smoke tests: the real `ringq-bench` binary, tiny workloads, the embedded
//! redis-server. They check the JSON contract's shape and that every client counted every
//! message; they assert nothing about speed (that is what the suite is for).

mod common;
use common::*;

#[test]
fn batch_drain_counts_every_message_for_every_client() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("drain.json");
    let out = run(&[
        "drain",
        "--pop",
        "batch",
        "--messages",
        "2000",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("| client |"), "a table on stdout");
    let report = read_json(&json);
    let clients = clients(&report, "drain");
    assert_eq!(
        names(&clients),
        ["ringq", "ringq-epoll", "redis-rs", "tokio-uring", "limit"]
    );
    for (name, c) in &clients {
        assert_eq!(c["messages"], 2000, "{name} counted every message");
        for f in ["p50_us", "p99_us", "p999_us", "max_us"] {
            assert!(c[f].is_null(), "{name}.{f} is not measured in drain");
        }
    }
    assert!(
        !dir.path().join("drain.svg").exists(),
        "no plot without latencies"
    );
}

#[test]
fn single_drain_over_several_queues_and_connections_counts_every_message() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("single.json");
    let out = run(&[
        "drain",
        "--pop",
        "single",
        "--messages",
        "2000",
        "--queues",
        "3",
        "--connections",
        "2",
        "--shards",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let clients = clients(&read_json(&json), "drain");
    assert_eq!(
        names(&clients),
        ["ringq", "ringq-epoll", "redis-rs", "tokio-uring", "limit"]
    );
    // 2000 over 3 queues: 666 each.
    for (name, c) in &clients {
        assert_eq!(c["messages"], 1998, "{name} counted every message");
    }
}

#[test]
fn latency_records_percentiles_for_every_client_and_ping() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("latency.json");
    let out = run(&[
        "latency",
        "--rate",
        "500",
        "--duration",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let clients = clients(&read_json(&json), "latency");
    assert_eq!(
        names(&clients),
        [
            "ping",
            "ringq",
            "ringq-epoll",
            "redis-rs",
            "tokio-uring",
            "limit"
        ]
    );
    for (name, c) in &clients {
        assert_eq!(c["messages"], 500, "{name} counted every message");
        let p = |f: &str| {
            c[f].as_f64()
                .unwrap_or_else(|| panic!("{name}.{f} measured"))
        };
        assert!(p("p50_us") > 0.0);
        assert!(p("p50_us") <= p("p99_us") && p("p99_us") <= p("p999_us"));
        assert!(p("p999_us") <= p("max_us"));
    }
    let svg = std::fs::read_to_string(dir.path().join("latency.svg")).expect("plot written");
    assert!(svg.starts_with("<svg") && svg.contains("ringq") && svg.contains("ping"));
}

#[test]
fn clients_option_selects_and_orders_clients() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("two.json");
    let out = run(&[
        "drain",
        "--messages",
        "2000",
        "--clients",
        "limit,ringq",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let clients = clients(&read_json(&json), "drain");
    assert_eq!(names(&clients), ["limit", "ringq"]);
}

/// The pubsub scenario: both subscribers receive the whole burst, and the row carries the
/// pub/sub figures next to the contract's fields.
#[test]
fn pubsub_counts_every_message_for_ringq_and_redis_rs() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("pubsub.json");
    let out = run(&[
        "pubsub",
        "--messages",
        "20000",
        "--rate",
        "500",
        "--duration",
        "1",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = read_json(&json);
    assert_eq!(report["scenario"], "pubsub");
    let rows = report["clients"].as_array().expect("clients");
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["ringq", "ringq-epoll", "redis-rs"],
        "the pub/sub clients of the default list"
    );
    for r in rows {
        let name = r["name"].as_str().unwrap();
        for f in CONTRACT_FIELDS {
            assert!(r.get(f).is_some(), "{name}: {f} missing");
        }
        assert_eq!(r["published"], 20_000, "{name}");
        assert_eq!(
            r["messages"].as_u64().unwrap() + r["lost"].as_u64().unwrap(),
            20_000,
            "{name}: received + lost = published"
        );
        assert!(
            r["p99_us"].as_f64().is_some_and(|p| p > 0.0),
            "{name}: latency measured"
        );
        assert!(r["publisher_msgs_per_sec"]
            .as_f64()
            .is_some_and(|v| v > 0.0));
    }
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("Targets (reported, not asserted)"),
        "{table}"
    );
}

#[test]
fn reliable_drains_with_acks_and_reports_server_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("reliable.json");
    let out = run(&[
        "reliable",
        "--messages",
        "20000",
        "--size",
        "16",
        "--clients",
        "ringq,redis-rs",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let report = read_json(&json);
    assert_eq!(report["scenario"], "reliable");
    let rows = report["clients"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "ringq reliable",
            "ringq pop (at-most-once)",
            "redis-rs LMOVE+LREM"
        ]
    );
    for r in rows {
        let name = r["name"].as_str().unwrap();
        assert_eq!(r["messages"], 20_000, "{name}: every message consumed");
        assert_eq!(r["left"], 0, "{name}: nothing left queued or leased");
        assert!(
            r["server_cpu_us_per_msg"].as_f64().is_some_and(|v| v > 0.0),
            "{name}: server CPU measured"
        );
    }
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("Targets (reported, not asserted)"),
        "{table}"
    );
}

#[test]
fn stream_drains_a_group_with_acks() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("stream.json");
    let out = run(&[
        "stream",
        "--messages",
        "20000",
        "--size",
        "16",
        "--clients",
        "ringq,redis-rs,limit",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let report = read_json(&json);
    assert_eq!(report["scenario"], "stream");
    let rows = report["clients"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["ringq stream", "redis-rs XREADGROUP+XACK", "limit"]);
    for r in rows {
        let name = r["name"].as_str().unwrap();
        assert_eq!(r["messages"], 20_000, "{name}: every entry consumed");
        assert_eq!(r["left"], 0, "{name}: nothing left pending or undelivered");
        assert!(r["server_cpu_us_per_msg"].as_f64().is_some_and(|v| v > 0.0));
    }
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("Targets (reported, not asserted)"),
        "{table}"
    );
}

#[test]
fn url_option_uses_that_server_with_auth_and_db_and_deletes_only_its_keys() {
    let server = ringq_tests::RedisServer::builder()
        .requirepass("s3cret")
        .start()
        .expect("a private redis-server");
    let mut c = server.client().expect("a test client");
    c.cmd(["SELECT", "2"]).unwrap();
    c.cmd(["SET", "unrelated", "kept"]).unwrap();
    let url = format!("{}/2", server.url());
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("url.json");
    let out = run(&[
        "drain",
        "--url",
        &url,
        "--pop",
        "single",
        "--messages",
        "300",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("(--url)"), "the title names the server");
    let clients = clients(&read_json(&json), "drain");
    assert_eq!(
        names(&clients),
        ["ringq", "ringq-epoll", "redis-rs", "tokio-uring", "limit"]
    );
    for (name, c) in &clients {
        assert_eq!(c["messages"], 300, "{name} counted every message");
    }
    let keys = c.cmd(["KEYS", "*"]).unwrap();
    assert_eq!(
        format!("{keys:?}"),
        format!("{:?}", c.cmd(["KEYS", "unrelated"]).unwrap()),
        "only ringq-bench's own keys were written and deleted"
    );
}

#[test]
fn help_lists_every_scenario_and_scenario_help_shows_only_its_options() {
    let global = run(&["--help"]);
    assert!(global.status.success());
    let text = String::from_utf8_lossy(&global.stdout);
    for s in [
        "drain", "latency", "pubsub", "reliable", "stream", "kombu", "load", "produce",
    ] {
        assert!(text.contains(&format!("\n  {s} ")), "{s} missing:\n{text}");
    }
    assert!(!text.contains("not available"), "{text}");
    assert!(
        !text.contains("issue"),
        "issue numbers mean nothing to users:\n{text}"
    );

    let stream = run(&["stream", "--help"]);
    assert!(stream.status.success());
    let text = String::from_utf8_lossy(&stream.stdout);
    assert!(
        text.contains("XREADGROUP") && text.contains("--messages"),
        "{text}"
    );
    assert!(
        !text.contains("--queues") && !text.contains("--duration") && !text.contains("SCENARIOS"),
        "stream --help shows options stream does not read:\n{text}"
    );
    let latency = run(&["latency", "-h"]);
    let text = String::from_utf8_lossy(&latency.stdout);
    assert!(
        text.contains("--rate") && !text.contains("--messages"),
        "{text}"
    );
}

/// `--tls`: drain runs every client that speaks TLS over TLS and again over plaintext
/// (the TLS ÷ plaintext table), skipping the ones that do not, loudly; latency's floor
/// is a TLS PING client; the other scenarios refuse the flag.
#[test]
fn tls_drain_and_latency_run_over_tls_and_say_what_they_skip() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("drain-tls.json");
    let out = run(&[
        "drain",
        "--tls",
        "--messages",
        "2000",
        "--clients",
        "ringq,redis-rs,tokio-uring",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("TLS ÷ plaintext"), "{stdout}");
    assert!(
        stderr.contains("tokio-uring has no TLS; skipped"),
        "{stderr}"
    );
    let report = read_json(&json);
    assert_eq!(report["tls"], true);
    for field in ["clients", "plaintext_clients"] {
        let rows = client_rows(&report, field, "drain");
        assert_eq!(names(&rows), ["ringq", "redis-rs"], "{field}");
        for (name, c) in &rows {
            assert_eq!(c["messages"], 2000, "{field}: {name} counted every message");
            assert!(
                c["server_cpu_us_per_msg"].as_f64().is_some_and(|v| v > 0.0),
                "{field}: {name}: server CPU measured"
            );
        }
    }

    let json = dir.path().join("latency-tls.json");
    let out = run(&[
        "latency",
        "--tls",
        "--rate",
        "2000",
        "--duration",
        "1",
        "--clients",
        "ringq",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let report = read_json(&json);
    let rows = client_rows(&report, "clients", "latency");
    assert_eq!(names(&rows), ["ping", "ringq"]);
    for (name, c) in &rows {
        assert_eq!(c["messages"], 2000, "{name}");
        assert!(c["p99_us"].as_f64().is_some_and(|v| v > 0.0), "{name}");
    }

    let out = run(&["pubsub", "--tls", "--messages", "10"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls applies to"));
}

/// `drain --cluster`: a private 3-primary cluster; ringq and redis-rs's cluster client
/// each drain every message, the standalone row drains one primary's share, a client
/// without a cluster consumer is skipped saying so, and the server CPU is measured.
#[test]
fn cluster_drain_counts_every_message_for_ringq_and_redis_rs() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("cluster.json");
    let out = run(&[
        "drain",
        "--cluster",
        "--messages",
        "30000",
        "--size",
        "16",
        "--clients",
        "ringq,redis-rs,limit",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("limit has no cluster client"),
        "the skipped client is named"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("ringq msgs/s ÷ redis-rs cluster"),
        "{stdout}"
    );
    let report = read_json(&json);
    let clients = clients(&report, "drain-cluster");
    assert_eq!(
        names(&clients),
        ["ringq", "redis-rs", "ringq, one standalone node"]
    );
    for (name, c) in &clients {
        let want = if name.contains("standalone") {
            10_000
        } else {
            30_000
        };
        assert_eq!(c["messages"], want, "{name} counted every message");
        assert!(
            c["server_cpu_us_per_msg"].as_f64().is_some_and(|v| v > 0.0),
            "{name}: the servers' CPU was measured"
        );
    }
}

/// `pubsub --cluster`: sharded channels over a private 3-primary cluster, published with
/// SPUBLISH at each owner; ringq's listen mode and redis-rs's cluster client each receive
/// every message of the burst (nothing is lost while nothing fails), measure latency, and
/// the servers' CPU is summed; a client without a pub/sub consumer is skipped saying so.
#[test]
fn pubsub_runs_on_a_clusters_sharded_channels() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("pubsub-cluster.json");
    let out = run(&[
        "pubsub",
        "--cluster",
        "--messages",
        "20000",
        "--rate",
        "500",
        "--duration",
        "1",
        "--queues",
        "4",
        "--clients",
        "ringq,redis-rs,limit",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("limit has no pub/sub consumer"), "{stderr}");
    let report = read_json(&json);
    assert_eq!(report["scenario"], "pubsub-cluster");
    let rows = report["clients"].as_array().expect("clients");
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["ringq", "redis-rs"]);
    for r in rows {
        let name = r["name"].as_str().unwrap();
        assert_eq!(r["published"], 20_000, "{name}");
        assert_eq!(r["messages"], 20_000, "{name}: every message received");
        assert_eq!(r["lost"], 0, "{name}");
        assert!(
            r["p99_us"].as_f64().is_some_and(|p| p > 0.0),
            "{name}: latency measured"
        );
        assert!(
            r["server_cpu_us_per_msg"].as_f64().is_some_and(|v| v > 0.0),
            "{name}: the primaries' CPU was measured"
        );
    }
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("sharded channels over 3 primaries"),
        "{table}"
    );
}

/// `reliable --cluster` and `stream --cluster`: one source per primary of a private
/// cluster; every client drains every message and leaves nothing leased or pending.
#[test]
fn reliable_and_stream_run_on_a_cluster() {
    for (scenario, rows) in [
        (
            "reliable",
            &[
                "ringq reliable",
                "ringq pop (at-most-once)",
                "redis-rs LMOVE+LREM",
            ][..],
        ),
        ("stream", &["ringq stream", "redis-rs XREADGROUP+XACK"][..]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("acked.json");
        let out = run(&[
            scenario,
            "--cluster",
            "--messages",
            "30000",
            "--size",
            "16",
            "--clients",
            "ringq,redis-rs,limit",
            "--json",
            json.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{scenario}");
        let report = read_json(&json);
        let clients = report["clients"].as_array().expect("clients");
        let names: Vec<&str> = clients.iter().filter_map(|c| c["name"].as_str()).collect();
        assert_eq!(names, rows, "{scenario}");
        for c in clients {
            assert_eq!(c["messages"], 30_000, "{scenario}: {c}");
            assert_eq!(c["left"], 0, "{scenario}: nothing left: {c}");
            assert!(
                c["server_cpu_us_per_msg"].as_f64().is_some_and(|v| v > 0.0),
                "{scenario}: {c}"
            );
        }
    }
}

/// `kombu`: ringq's kombu mode, its pop mode on the same envelopes and Kombu's own Python
/// consumer each drain everything (nothing left), with server CPU per message.
#[test]
fn kombu_drains_envelopes_with_ringq_and_kombus_consumer() {
    let dir = std::env::temp_dir().join(format!("ringq-bench-kombu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("kombu.json");
    let out = run(&[
        "kombu",
        "--messages",
        "3000",
        "--python-messages",
        "300",
        "--size",
        "32",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let report = read_json(&json);
    assert_eq!(report["scenario"], "kombu");
    let rows = report["clients"].as_array().expect("clients");
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "ringq kombu",
            "ringq pop (at-most-once)",
            "kombu records, native",
            "python kombu"
        ]
    );
    for r in rows {
        assert_eq!(r["left"], 0, "{r}");
        assert!(r["server_cpu_us_per_msg"]
            .as_f64()
            .is_some_and(|v| v >= 0.0));
        assert!(r["msgs_per_sec"].as_f64().is_some_and(|v| v > 0.0));
    }
    assert_eq!(rows[0]["messages"], 3000);
    assert_eq!(
        rows[2]["messages"], 3000,
        "the native records drained everything"
    );
    assert_eq!(rows[3]["messages"], 300);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("kombu mode ÷ Kombu's consumer"), "{text}");
    assert!(text.contains("written natively (no script)"), "{text}");
}

/// `produce`: the load tester's producer and redis-benchmark each push every message (the
/// list is checked), with rates, server CPU and the ratio target.
#[test]
fn produce_compares_the_load_producer_with_redis_benchmark() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("produce.json");
    let out = run(&[
        "produce",
        "--messages",
        "20000",
        "--producers",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report = read_json(&json);
    assert_eq!(report["scenario"], "produce");
    let rows = report["clients"].as_array().expect("clients");
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["ringq-bench producer", "redis-benchmark -P 64"],
        "both ran (redis-benchmark comes with Debian's redis-tools): {stderr}"
    );
    assert_eq!(
        rows[0]["messages"], 20_000,
        "exactly what the producer sent"
    );
    assert!(
        rows[1]["messages"]
            .as_u64()
            .is_some_and(|m| (20_000..20_000 + 64 * 50).contains(&m)),
        "redis-benchmark sends whole pipelines: {}",
        rows[1]
    );
    for r in rows {
        assert!(r["msgs_per_sec"].as_f64().is_some_and(|v| v > 0.0), "{r}");
        assert!(
            r["server_cpu_us_per_msg"].as_f64().is_some_and(|v| v > 0.0),
            "{r}"
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ringq-bench's producer ÷ redis-benchmark's LPUSH rate"),
        "{text}"
    );
}

//! Sweeps and repeats of `ringq-bench`: `latency --rates`, `drain --connections N1,N2,…`
//! and `--repeats` — every point there, the medians and paired ratios in their JSON.

mod common;
use common::*;

/// `latency --rates` with `--repeats 2`: two latency runs per rate, then the sweep's JSON
/// (every client with a median point per rate) and its SVG next to it.
#[test]
fn latency_sweep_reports_p99_per_rate_and_plots_it() {
    let dir = std::env::temp_dir().join(format!("ringq-bench-sweep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("sweep.json");
    let out = run(&[
        "latency",
        "--rates",
        "2000,1000",
        "--duration",
        "1",
        "--repeats",
        "2",
        "--clients",
        "ringq",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let report = read_json(&json);
    assert_eq!(report["scenario"], "latency-sweep");
    assert_eq!(report["rates"], serde_json::json!([1000, 2000]));
    let clients = report["clients"].as_array().unwrap();
    let names: Vec<&str> = clients
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ping", "ringq"]);
    for c in clients {
        let points = c["points"].as_array().unwrap();
        assert_eq!(points.len(), 2, "{c}");
        assert!(points
            .iter()
            .all(|p| p["p99_us"].as_f64().is_some_and(|v| v > 0.0)));
    }
    let svg = std::fs::read_to_string(json.with_extension("svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.matches("<polyline").count() == 2);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("latency sweep, p99 by rate (median of 2 runs per rate)"),
        "{text}"
    );
}

/// `--repeats`: each run has its own JSON, and the summary holds each client's median
/// with the min–max and its paired ratio to the reference baseline.
#[test]
fn repeats_report_medians_and_paired_ratios() {
    let dir = std::env::temp_dir().join(format!("ringq-bench-rep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("drain.json");
    let out = run(&[
        "drain",
        "--messages",
        "20000",
        "--clients",
        "ringq,redis-rs",
        "--repeats",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    for i in 1..=2 {
        let run = read_json(&dir.join(format!("drain.run{i}.json")));
        assert_eq!(run["scenario"], "drain");
    }
    let summary = read_json(&json);
    assert_eq!(summary["repeats"], 2);
    assert_eq!(summary["reference"], "redis-rs");
    let clients = summary["clients"].as_array().unwrap();
    let ringq = clients.iter().find(|c| c["name"] == "ringq").unwrap();
    let m = &ringq["msgs_per_sec"];
    let (min, med, max) = (
        m["min"].as_f64().unwrap(),
        m["median"].as_f64().unwrap(),
        m["max"].as_f64().unwrap(),
    );
    assert!(min <= med && med <= max && min > 0.0);
    assert!(ringq["msgs_per_sec_ratio"]["median"]
        .as_f64()
        .is_some_and(|r| r > 0.0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("drain, 2 runs: median [min–max]"), "{text}");
}

/// `drain --connections 3,1`: the drain at each count (sorted) over at least as many
/// queues; the sweep's JSON has each client's point per count with the engine's own count
/// of system calls and completions per message, and epoll's CPU per message over
/// io_uring's, paired run by run.
#[test]
fn connections_sweep_reports_syscalls_and_completions_per_count() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("conns.json");
    let out = run(&[
        "drain",
        "--pop",
        "batch",
        "--connections",
        "3,1",
        "--messages",
        "6000",
        "--clients",
        "ringq,ringq-epoll",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("in 3 queue(s); 3 connection(s)") && text.contains("connections sweep"),
        "{text}"
    );
    let report = read_json(&json);
    assert_eq!(report["scenario"], "drain-connections-sweep");
    assert_eq!(report["connections"], serde_json::json!([1, 3]));
    let points = report["points"].as_array().unwrap();
    let seen: Vec<(u64, &str)> = points
        .iter()
        .map(|p| {
            (
                p["connections"].as_u64().unwrap(),
                p["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (1, "ringq"),
            (1, "ringq-epoll"),
            (3, "ringq"),
            (3, "ringq-epoll")
        ]
    );
    for p in points {
        for f in [
            "msgs_per_sec",
            "cpu_us_per_msg",
            "syscalls_per_msg",
            "completions_per_msg",
        ] {
            assert!(
                p[f]["median"].as_f64().is_some_and(|v| v > 0.0),
                "{f} of {p}"
            );
        }
        let ratio = p["epoll_cpu_ratio"]["median"].as_f64();
        assert_eq!(ratio.is_some(), p["name"] == "ringq-epoll", "{p}");
    }
}

/// `pubsub --connections 3`: fan-in over three channels, one ringq subscriber connection
/// each (redis-rs subscribes to all three on one), every message of the burst received;
/// then `pubsub --connections 3,1`, the sweep: a point per count and client, with the
/// engine's system calls and completions per message.
#[test]
fn pubsub_fans_in_over_many_connections_and_sweeps_them() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("fanin.json");
    let out = run(&[
        "pubsub",
        "--connections",
        "3",
        "--messages",
        "6000",
        "--rate",
        "2000",
        "--duration",
        "1",
        "--clients",
        "ringq,redis-rs",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("fan-in: one subscriber on 3 channels over 3 connections"),
        "{text}"
    );
    let report = read_json(&json);
    let clients = report["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 2, "{report}");
    for c in clients {
        assert_eq!(
            (c["messages"].as_u64(), c["lost"].as_u64()),
            (Some(6000), Some(0)),
            "{c}"
        );
    }
    let json = dir.path().join("sweep.json");
    let out = run(&[
        "pubsub",
        "--connections",
        "3,1",
        "--messages",
        "3000",
        "--rate",
        "2000",
        "--duration",
        "1",
        "--clients",
        "ringq,ringq-epoll",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let report = read_json(&json);
    assert_eq!(report["scenario"], "pubsub-connections-sweep");
    let points = report["points"].as_array().unwrap();
    assert_eq!(points.len(), 4, "{report}");
    for p in points {
        for f in ["msgs_per_sec", "syscalls_per_msg", "completions_per_msg"] {
            assert!(
                p[f]["median"].as_f64().is_some_and(|v| v > 0.0),
                "{f} of {p}"
            );
        }
    }
}

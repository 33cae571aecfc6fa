//! What the `ringq-bench` smoke tests share: running the real binary, reading its JSON,
//! and checking the contract's shape.
#![allow(dead_code)] // each test crate uses its own part of these helpers

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_ringq-bench");
pub const CONTRACT_FIELDS: [&str; 10] = [
    "name",
    "messages",
    "seconds",
    "msgs_per_sec",
    "cpu_us_per_msg",
    "server_cpu_us_per_msg",
    "p50_us",
    "p99_us",
    "p999_us",
    "max_us",
];

pub fn run(args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("ringq-bench runs");
    eprintln!("--- stdout\n{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("--- stderr\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("the JSON file was written");
    serde_json::from_str(&text).expect("valid JSON")
}

/// Checks the contract shape and returns the clients by name.
pub fn clients(report: &Value, scenario: &str) -> Vec<(String, serde_json::Map<String, Value>)> {
    let top = report.as_object().expect("a JSON object");
    let mut keys: Vec<&str> = top.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["clients", "scenario"]);
    client_rows(report, "clients", scenario)
}

/// The rows of the array `field` of a report of `scenario`, checked against the contract.
pub fn client_rows(
    report: &Value,
    field: &str,
    scenario: &str,
) -> Vec<(String, serde_json::Map<String, Value>)> {
    let top = report.as_object().expect("a JSON object");
    assert_eq!(top["scenario"], scenario);
    top[field]
        .as_array()
        .expect("clients is an array")
        .iter()
        .map(|c| {
            let c = c.as_object().expect("a client is an object").clone();
            let mut keys: Vec<&str> = c.keys().map(String::as_str).collect();
            keys.sort_unstable();
            let mut want = CONTRACT_FIELDS;
            want.sort_unstable();
            assert_eq!(keys, want, "exactly the contract's fields");
            let name = c["name"].as_str().expect("name is a string").to_owned();
            for f in ["seconds", "msgs_per_sec", "cpu_us_per_msg"] {
                assert!(
                    c[f].as_f64().is_some_and(|v| v >= 0.0),
                    "{name}.{f}: {}",
                    c[f]
                );
            }
            (name, c)
        })
        .collect()
}

pub fn names(clients: &[(String, serde_json::Map<String, Value>)]) -> Vec<&str> {
    clients.iter().map(|(n, _)| n.as_str()).collect()
}

/// Runs `ringq-bench load --mode MODE --rate RATE --duration SECS --warmup 0 EXTRA…` with
/// `--json` into a temporary directory, asserts it succeeded, and returns the report.
pub fn load_run(mode: &str, rate: u32, secs: u32, extra: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("load.json");
    let (rate, secs) = (rate.to_string(), secs.to_string());
    let mut args = vec![
        "load",
        "--mode",
        mode,
        "--rate",
        &rate,
        "--duration",
        &secs,
        "--warmup",
        "0",
    ];
    args.extend_from_slice(extra);
    args.extend(["--json", json.to_str().unwrap()]);
    let out = run(&args);
    assert!(
        out.status.success(),
        "load --mode {mode} {extra:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    read_json(&json)
}

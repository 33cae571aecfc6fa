//! `ringq-bench load` smoke tests: the real binary, short open-loop runs against the
//! embedded redis-server — the series, the summary's counts through faults, the HdrHistogram
//! logs, `--find-max`. Behaviour only, nothing about speed.

mod common;
use common::*;

/// `load`: a 3-second list run at 2 000 msgs/s — one point a second, exactly the rate
/// produced in each, everything consumed, the documented JSON fields, the CSV; then a
/// short reliable run with two producers and two queues loses nothing.
#[test]
fn load_reports_one_point_a_second_and_loses_nothing() {
    let dir = std::env::temp_dir().join(format!("ringq-bench-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, csv) = (dir.join("load.json"), dir.join("load.csv"));
    let out = run(&[
        "load",
        "--rate",
        "2000",
        "--duration",
        "3",
        "--warmup",
        "0",
        "--json",
        json.to_str().unwrap(),
        "--csv",
        csv.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let report = read_json(&json);
    assert_eq!(report["scenario"], "load");
    assert_eq!(report["config"]["mode"], "list");
    let series = report["series"].as_array().expect("series");
    assert!(series.len() >= 3, "{series:?}");
    for (t, p) in series.iter().enumerate() {
        let p = p.as_object().unwrap();
        for f in [
            "t",
            "produced",
            "consumed",
            "backlog",
            "e2e_p50_us",
            "e2e_p99_us",
            "e2e_p999_us",
            "e2e_max_us",
            "produce_p99_us",
            "server_cpu",
        ] {
            assert!(p.contains_key(f), "point {t} lacks {f}");
        }
        assert_eq!(p["t"], t as u64);
        if t < 3 {
            assert_eq!(p["produced"], 2000, "second {t}");
            assert!(p["e2e_p99_us"].as_f64().is_some_and(|v| v > 0.0));
        }
    }
    let sum = |f: &str| series.iter().map(|p| p[f].as_u64().unwrap()).sum::<u64>();
    assert_eq!(sum("produced"), 6000);
    assert_eq!(sum("consumed"), 6000);
    let s = &report["summary"];
    assert_eq!(
        (s["produced"].as_u64(), s["consumed"].as_u64()),
        (Some(6000), Some(6000))
    );
    assert_eq!(
        (s["lost"].as_u64(), s["extra"].as_u64()),
        (Some(0), Some(0))
    );
    let svg = std::fs::read_to_string(json.with_extension("svg")).unwrap();
    assert_eq!(
        svg.matches("<polyline").count(),
        3,
        "p50, p99 and p99.9 over time"
    );
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("t,produced,consumed,backlog"));
    assert_eq!(lines.count(), series.len());

    let out = run(&[
        "load",
        "--mode",
        "reliable",
        "--rate",
        "1500",
        "--duration",
        "2",
        "--warmup",
        "0",
        "--queues",
        "2",
        "--producers",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let report = read_json(&json);
    let s = &report["summary"];
    assert_eq!(
        (s["produced"].as_u64(), s["lost"].as_u64()),
        (Some(3000), Some(0))
    );

    // A backlog phase: 20 000 waiting at the start are drained while producing.
    let out = run(&[
        "load",
        "--rate",
        "2000",
        "--duration",
        "2",
        "--warmup",
        "0",
        "--backlog",
        "20000",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let s = &read_json(&json)["summary"];
    assert_eq!(s["backlog"].as_u64(), Some(20000));
    assert!(s["backlog_drained_s"].as_u64().is_some(), "{s}");
    assert_eq!(
        (s["consumed"].as_u64(), s["lost"].as_u64()),
        (Some(24000), Some(0))
    );
}

/// `load --kill-consumers-at`: the consumer's connections are killed mid-run; the run
/// completes, the summary counts the fault and the reconnect, and reliable mode loses
/// nothing.
#[test]
fn load_goes_on_through_a_client_kill_and_reliable_loses_nothing() {
    let report = load_run("reliable", 3000, 3, &["--kill-consumers-at", "1"]);
    let s = &report["summary"];
    assert_eq!(s["faults"].as_array().map(Vec::len), Some(1), "{s}");
    assert!(s["faults"][0]
        .as_str()
        .unwrap()
        .contains("CLIENT KILL of the consumer's"));
    assert!(s["reconnects"].as_u64().is_some_and(|n| n >= 1), "{s}");
    assert_eq!(
        (s["produced"].as_u64(), s["lost"].as_u64()),
        (Some(9000), Some(0))
    );
}

/// `load --restart-server-at`: the embedded server (append-only file, fsync always) is
/// restarted mid-run. The run goes on — producers and consumer reconnect — and in
/// reliable and stream mode nothing the server confirmed is lost. The fault must really
/// have hit the run: the producer saw its connection break and the consumer reconnected,
/// and messages were produced after it.
#[test]
fn load_goes_on_through_a_server_restart_and_reliable_and_stream_lose_nothing() {
    for mode in ["reliable", "stream"] {
        let report = load_run(mode, 2000, 4, &["--restart-server-at", "1"]);
        let s = &report["summary"];
        let fault = s["faults"][0].as_str().unwrap_or_default();
        assert!(fault.contains("server restarted"), "{mode}: {s}");
        assert!(
            s["reconnects"].as_u64().is_some_and(|n| n >= 1),
            "{mode}: {s}"
        );
        assert!(
            s["producer_errors"].as_u64().is_some_and(|n| n >= 1),
            "{mode}: the producer's connection broke: {s}"
        );
        let after: u64 = report["series"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["t"].as_u64().is_some_and(|t| t >= 2))
            .map(|p| p["produced"].as_u64().unwrap())
            .sum();
        assert!(after > 0, "{mode}: produced after the restart: {report}");
        assert_eq!(s["produced"].as_u64(), Some(8000), "{mode}");
        assert_eq!(
            s["lost"].as_u64(),
            Some(0),
            "{mode}: nothing confirmed was lost: {s}"
        );
        let (unconfirmed, never) = (
            s["unconfirmed"].as_u64().unwrap(),
            s["unconfirmed_missing"].as_u64().unwrap(),
        );
        assert!(never <= unconfirmed, "{mode}: {s}");
        println!(
            "{mode}: restart mid-run: {} consumed, 0 lost, {unconfirmed} unconfirmed ({never} \
             never stored), {} duplicates, {} consumer reconnects",
            s["consumed"], s["extra"], s["reconnects"]
        );
    }
}

/// `load --failover-at`: a master with a replica behind three sentinels, failed over
/// mid-run (SENTINEL FAILOVER). The run goes on: the consumer follows the sentinels and
/// the producers reconnect through them, and messages produced after the failover are
/// consumed. What was lost is counted, not asserted to be 0: Redis replication is
/// asynchronous, so writes the old master confirmed and had not replicated may be gone
/// (the split-brain window Sentinel documents); the run prints it.
#[test]
fn load_follows_a_sentinel_failover_and_counts_what_was_lost() {
    let report = load_run("reliable", 2000, 4, &["--failover-at", "1"]);
    let s = &report["summary"];
    let fault = s["faults"][0].as_str().unwrap_or_default();
    assert!(
        fault.contains("failover (SENTINEL FAILOVER): master"),
        "{s}"
    );
    assert!(s["reconnects"].as_u64().is_some_and(|n| n >= 1), "{s}");
    assert!(
        s["producer_errors"].as_u64().is_some_and(|n| n >= 1),
        "the producer's connection to the old master was cut: {s}"
    );
    // The failover ended the second second: seconds 2 and 3 were produced at the new
    // master and consumed there.
    let late = |field: &str| -> u64 {
        report["series"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["t"].as_u64().is_some_and(|t| t >= 3))
            .map(|p| p[field].as_u64().unwrap())
            .sum()
    };
    assert!(late("produced") > 0 && late("consumed") > 0, "{report}");
    let (consumed, lost, never, extra) = (
        s["consumed"].as_u64().unwrap(),
        s["lost"].as_u64().unwrap(),
        s["unconfirmed_missing"].as_u64().unwrap(),
        s["extra"].as_u64().unwrap(),
    );
    // `consumed` counts distinct messages (duplicates are `extra`).
    assert_eq!(
        consumed + lost + never,
        8000,
        "every message accounted for: {s}"
    );
    println!(
        "failover mid-run: {consumed} consumed, {lost} lost (confirmed by the old master, not \
         replicated), {never} unconfirmed and never stored, {extra} duplicates; {fault}"
    );
}

/// `load --hdr-prefix`: HdrHistogram interval logs of the end-to-end and produce
/// latencies, one interval a second, that the HdrHistogram library reads back with every
/// message counted once.
#[test]
fn load_writes_hdrhistogram_interval_logs() {
    use base64::Engine as _;
    use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("run");
    let out = run(&[
        "load",
        "--rate",
        "2000",
        "--duration",
        "2",
        "--warmup",
        "0",
        "--hdr-prefix",
        prefix.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for what in ["e2e", "produce"] {
        let path = dir.path().join(format!("run.{what}.hlog"));
        let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (mut intervals, mut count, mut base) = (0, 0u64, false);
        for entry in IntervalLogIterator::new(&text) {
            match entry.expect("a well-formed log") {
                LogEntry::BaseTime(_) => base = true,
                LogEntry::StartTime(_) => {}
                LogEntry::Interval(i) => {
                    intervals += 1;
                    assert_eq!(i.duration(), std::time::Duration::from_secs(1));
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(i.encoded_histogram())
                        .unwrap();
                    let h: hdrhistogram::Histogram<u64> =
                        hdrhistogram::serialization::Deserializer::new()
                            .deserialize(&mut &bytes[..])
                            .unwrap();
                    count += h.len();
                }
            }
        }
        assert!(base, "{what}: a BaseTime header");
        assert!(
            intervals >= 2,
            "{what}: one interval a second ({intervals})"
        );
        assert_eq!(count, 4000, "{what}: every message in some second");
    }
}

/// `load --mode pubsub`: channels published with PUBLISH and consumed by listen mode —
/// every message of a quiet run arrives (the summary counts by sequence number); then a
/// CLIENT KILL of the subscriber mid-run: the run completes, the reconnect is counted,
/// and what was published while it was away is counted as lost, never hidden.
#[test]
fn load_runs_on_pubsub_channels_and_counts_what_a_cut_loses() {
    let report = load_run("pubsub", 2000, 2, &["--queues", "3"]);
    assert_eq!(report["config"]["mode"], "pubsub");
    let s = &report["summary"];
    assert_eq!(
        (
            s["produced"].as_u64(),
            s["consumed"].as_u64(),
            s["lost"].as_u64()
        ),
        (Some(4000), Some(4000), Some(0)),
        "{s}"
    );
    assert!(
        report["series"]
            .as_array()
            .is_some_and(|v| v.iter().all(|p| p["backlog"] == 0)),
        "pub/sub keeps no backlog"
    );

    let report = load_run("pubsub", 3000, 3, &["--kill-consumers-at", "1"]);
    let s = &report["summary"];
    assert_eq!(s["faults"].as_array().map(Vec::len), Some(1), "{s}");
    assert!(s["reconnects"].as_u64().is_some_and(|n| n >= 1), "{s}");
    let (produced, consumed, lost) = (
        s["produced"].as_u64().unwrap(),
        s["consumed"].as_u64().unwrap(),
        s["lost"].as_u64().unwrap(),
    );
    assert_eq!(produced, 9000, "{s}");
    assert_eq!(
        consumed + lost,
        produced,
        "every message arrived or is counted lost: {s}"
    );
    assert!(consumed > 0 && consumed < produced + 1, "{s}");
}

/// `load --mode kombu`: Kombu envelopes (the stamp in the base64 body) consumed by kombu
/// mode; a CLIENT KILL of the consumer mid-run loses nothing (its held records are
/// restored), and the run leaves no key behind.
#[test]
fn load_runs_on_kombu_queues_and_a_kill_loses_nothing() {
    let report = load_run(
        "kombu",
        3000,
        3,
        &["--queues", "2", "--kill-consumers-at", "1"],
    );
    assert_eq!(report["config"]["mode"], "kombu");
    let s = &report["summary"];
    assert_eq!(s["faults"].as_array().map(Vec::len), Some(1), "{s}");
    assert!(s["reconnects"].as_u64().is_some_and(|n| n >= 1), "{s}");
    assert_eq!(
        (s["produced"].as_u64(), s["lost"].as_u64()),
        (Some(9000), Some(0)),
        "{s}"
    );
    assert!(
        s["e2e_p99_us"].as_f64().is_some_and(|v| v > 0.0),
        "latency read from the decoded bodies: {s}"
    );
}

/// `load --find-max` finds a rate in the right range: the consumer is held to one message
/// a round trip (batch 1, pipeline 1), whose capacity a drain of the same configuration
/// measures first; the highest rate holding p99 ≤ 50 ms is within [0.1, 1.5]× of it, and
/// the first rate that breaks is above it.
#[test]
fn load_find_max_finds_a_rate_near_the_consumers_capacity() {
    let dir = std::env::temp_dir().join(format!("ringq-bench-loadf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (drain, load) = (dir.join("drain.json"), dir.join("load.json"));
    let one = ["--pop", "batch", "--batch", "1", "--pipeline", "1"];
    let mut args = vec![
        "drain",
        "--clients",
        "ringq",
        "--messages",
        "30000",
        "--json",
        drain.to_str().unwrap(),
    ];
    args.extend(one);
    assert!(run(&args).status.success());
    let capacity = read_json(&drain)["clients"][0]["msgs_per_sec"]
        .as_f64()
        .unwrap();
    let start = ((capacity / 8.0) as u64).max(100).to_string();
    let mut args = vec![
        "load",
        "--find-max",
        "--slo-p99-ms",
        "50",
        "--rate",
        &start,
        "--duration",
        "2",
        "--warmup",
        "1",
        "--json",
        load.to_str().unwrap(),
    ];
    args.extend(one);
    let out = run(&args);
    assert!(out.status.success());
    let report = read_json(&load);
    let found = report["config"]["rate"].as_f64().unwrap();
    assert!(
        (0.1 * capacity..=1.5 * capacity).contains(&found),
        "found {found} msgs/s for a capacity of {capacity:.0}"
    );
    let breaks = report["breaks"]["rate"]
        .as_f64()
        .expect("a rate that breaks");
    assert!(breaks > found);
}

//! An upgrade of reliable mode with messages in flight (issue 23): the previous release
//! (acks by value, `{q}:processing:<id>`, built from the last commit before the change)
//! is killed mid-drain holding leases; this version then takes over — restarted with the
//! same id, or as another consumer once the old one's heartbeat expired — and every
//! message is printed, none lost.
//!
//! The previous release is built here from the repository's history the first time
//! (`git archive` of [`PREVIOUS`], then `cargo build`, a few minutes), and kept under
//! `target/previous-ringq`; `RINGQ_PREVIOUS_BIN` names a binary to use instead.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ringq::envelope::keys::legacy;
use ringq_tests::{wait_until, TestClient};

mod common;
use common::*;

/// The last commit before reliable mode recorded leases by position.
const PREVIOUS: &str = "a65558e857c3c5b417ab10f8a21c8fbcdb389dbb";

const WAIT: Duration = Duration::from_secs(60);

/// The previous release's `ringq`, built once from the repository's history.
fn previous_ringq() -> PathBuf {
    if let Some(p) = std::env::var_os("RINGQ_PREVIOUS_BIN") {
        return p.into();
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let dir = root.join("target/previous-ringq");
    let src = dir.join(&PREVIOUS[..12]);
    let bin = dir.join("target/debug/ringq");
    if !src.join("Cargo.toml").exists() {
        // Unpacked beside, then renamed: two test processes may race here.
        let tmp = dir.join(format!("unpack-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let unpack = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "git -C '{}' archive {PREVIOUS} | tar -x -C '{}'",
                root.display(),
                tmp.display()
            ))
            .output()
            .expect("run git archive");
        assert!(
            unpack.status.success() && tmp.join("Cargo.toml").exists(),
            "cannot unpack the previous release ({PREVIOUS}) from the repository's history — \
             a shallow clone? Fetch the history (git fetch --unshallow) or set \
             RINGQ_PREVIOUS_BIN to a ringq binary built from that commit: {}",
            String::from_utf8_lossy(&unpack.stderr)
        );
        if std::fs::rename(&tmp, &src).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    // Cargo's own lock keeps two builds of one target directory apart.
    eprintln!("building the previous release of ringq ({PREVIOUS}) for the upgrade test");
    let build = Command::new(env!("CARGO"))
        .args(["build", "-q", "-j", "2", "-p", "ringq-cli", "--target-dir"])
        .arg(dir.join("target"))
        .current_dir(&src)
        .env_remove("RUSTFLAGS")
        .output()
        .expect("run cargo build");
    assert!(
        build.status.success() && bin.exists(),
        "building the previous release failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    bin
}

/// The old consumer `id`, killed (SIGKILL) once it holds leased messages in its old
/// processing lists. Returns what it printed and how many it held.
fn kill_previous_mid_drain(
    c: &mut TestClient,
    url: &str,
    id: &str,
    queues: &[&str],
) -> (Vec<String>, i64) {
    let old = previous_ringq();
    let a = Consumer::spawn_bin(
        &old,
        &reliable_args(url, id, queues, &["--lease-ms", "1000"]),
    );
    assert!(
        wait_until(WAIT, || a.count() >= 3000),
        "the previous release consumes"
    );
    let held = |c: &mut TestClient| -> i64 {
        queues
            .iter()
            .map(|q| {
                c.llen(legacy::processing(q.as_bytes(), id.as_bytes()))
                    .unwrap()
            })
            .sum()
    };
    let mut leased = 0;
    for _ in 0..50 {
        a.signal(libc::SIGSTOP);
        std::thread::sleep(Duration::from_millis(20));
        leased = held(c);
        if leased > 0 {
            break;
        }
        a.signal(libc::SIGCONT);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        leased > 0,
        "the previous release was frozen holding leased messages"
    );
    a.signal(libc::SIGKILL);
    let (lines, _, _) = a.finish();
    let leased = held(c);
    assert!(
        leased > 0,
        "the previous release was killed holding leased messages"
    );
    (lines, leased)
}

/// Every one of `want` printed at least once; duplicates within `bound`.
fn assert_every_message(lines: &[String], want: &HashSet<String>, bound: i64) {
    let seen: HashSet<&String> = lines.iter().collect();
    let lost: Vec<_> = want.iter().filter(|m| !seen.contains(m)).take(5).collect();
    assert!(lost.is_empty(), "lost (first 5): {lost:?}");
    let dups = lines.len() - seen.len();
    assert!(
        dups as i64 <= bound,
        "{dups} duplicates beyond the {bound} leased"
    );
    println!(
        "{} printed, {} duplicates, {bound} were leased at the kill",
        seen.len(),
        dups
    );
}

fn produce_both(url: &str, queues: &[&str], n: u64) -> HashSet<String> {
    let mut c = TestClient::connect(url).unwrap();
    let mut want = HashSet::new();
    for q in queues {
        let payloads: Vec<String> = (0..n).map(|i| format!("{q}|{i}")).collect();
        c.lpush_many(q, &payloads).unwrap();
        want.extend(payloads);
    }
    want
}

/// The same consumer id, restarted on this version: its old processing lists come back
/// at once (a queue with a hash tag too, whose key names changed).
#[test]
fn a_restart_on_this_version_takes_back_what_the_previous_release_held() {
    let s = server();
    let url = s.url();
    let mut c = client(&s);
    let queues = ["up", "{app}:up"];
    let want = produce_both(&url, &queues, 10_000);
    let (mut lines, leased) = kill_previous_mid_drain(&mut c, &url, "c1", &queues);
    let b = Consumer::spawn(&reliable_args(&url, "c1", &queues, &["--lease-ms", "1000"]));
    assert!(wait_until(WAIT, || {
        queues.iter().all(|q| {
            c.llen(q).unwrap() == 0 && c.llen(legacy::processing(q.as_bytes(), b"c1")).unwrap() == 0
        })
    }));
    assert!(wait_until(WAIT, || b.distinct() + lines.len() >= want.len()));
    b.signal(libc::SIGTERM);
    let (l, err, code) = b.finish();
    assert_eq!(code, Some(0), "{err}");
    lines.extend(l);
    assert_every_message(&lines, &want, leased);
}

/// Another consumer on this version takes the killed old consumer's messages back once
/// its heartbeat expired, from the old consumer set (a rolling upgrade).
#[test]
fn a_consumer_of_this_version_sweeps_a_dead_consumer_of_the_previous_release() {
    let s = server();
    let url = s.url();
    let mut c = client(&s);
    let queues = ["roll", "{app}:roll"];
    let want = produce_both(&url, &queues, 10_000);
    let (mut lines, leased) = kill_previous_mid_drain(&mut c, &url, "old", &queues);
    let b = Consumer::spawn(&reliable_args(
        &url,
        "new",
        &queues,
        &["--lease-ms", "1000"],
    ));
    assert!(
        wait_until(WAIT, || {
            queues.iter().all(|q| {
                c.llen(q).unwrap() == 0
                    && c.llen(legacy::processing(q.as_bytes(), b"old")).unwrap() == 0
            })
        }),
        "the old consumer's messages were taken back"
    );
    assert!(wait_until(WAIT, || b.distinct() + lines.len() >= want.len()));
    b.signal(libc::SIGTERM);
    let (l, err, code) = b.finish();
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("whose heartbeat expired"), "{err}");
    lines.extend(l);
    assert_every_message(&lines, &want, leased);
}

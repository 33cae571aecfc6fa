//! `ringq subscribe` writing into a pipe nobody reads, as a user's slow consumer does:
//! with `--drop-oldest` it keeps reading the socket and accounts for every message; by
//! default it stops reading, and when the server drops it at its output-buffer limit it
//! says so in one line, about when it happens, and subscribes again.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{client, run, server, spawn_held, Proc};
use ringq_tests::{wait_until, TestClient};

const WAIT: Duration = Duration::from_secs(30);

fn pubsub_clients(c: &mut TestClient) -> usize {
    let clients = c.client_list().unwrap();
    clients.iter().filter(|i| i.is_subscriber()).count()
}

/// Waits until `lines` stops growing for a second.
fn settled(h: &Proc) {
    let mut last = usize::MAX;
    let mut since = Instant::now();
    assert!(wait_until(Duration::from_secs(120), || {
        let n = h.stdout_text_lines().len();
        if n != last {
            last = n;
            since = Instant::now();
        }
        since.elapsed() > Duration::from_secs(1)
    }));
}

#[test]
fn drop_oldest_into_an_unread_pipe_keeps_reading_and_accounts_for_every_message() {
    let s = server();
    let mut c = client(&s);
    // Raised so that only ringq's own choice (drop the oldest) can lose messages.
    c.cmd([
        "CONFIG",
        "SET",
        "client-output-buffer-limit",
        "pubsub 0 0 0",
    ])
    .unwrap();
    let url = s.url();
    let mut sub = spawn_held(&[
        "subscribe",
        "--url",
        &url,
        "--channel",
        "burst",
        "--drop-oldest",
        "1000",
    ]);
    assert!(wait_until(WAIT, || pubsub_clients(&mut c) == 1));
    const N: u64 = 300_000;
    let started = Instant::now();
    run(&[
        "publish",
        "--url",
        &url,
        "--channel",
        "burst",
        "--messages",
        &N.to_string(),
    ])
    .assert_success();
    // Nobody reads stdout for 5 s.
    std::thread::sleep(Duration::from_secs(5).saturating_sub(started.elapsed()));
    assert_eq!(pubsub_clients(&mut c), 1, "the server kept the subscriber");
    sub.read_stdout();
    settled(&sub);
    sub.signal(libc::SIGINT);
    let done = sub.finish();
    done.assert_success();
    let (lines, stderr) = (done.lines(), done.stderr.clone());
    let drops: Vec<&str> = stderr.lines().filter(|l| l.contains("dropped")).collect();
    let total: u64 = drops
        .last()
        .and_then(|l| l.split(" in all").next()?.rsplit('(').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no drop report with a total: {stderr}"));
    assert_eq!(
        lines.len() as u64 + total,
        N,
        "printed {} + dropped {total} != published {N}; stderr:\n{stderr}",
        lines.len()
    );
    assert!(total > 0, "stdout was blocked long enough to drop some");
    // Reports are paced (about one a second), not one per message or per read.
    assert!(drops.len() <= 30, "{} drop lines:\n{stderr}", drops.len());
    assert!(
        !stderr.contains("gap"),
        "the server never closed it:\n{stderr}"
    );
    // What was printed is in order: drops only take the oldest staged.
    let got: Vec<u64> = lines.iter().map(|l| l.parse().unwrap()).collect();
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order");
}

#[test]
fn a_blocked_subscriber_dropped_by_the_server_says_so_in_one_line_while_stdout_is_stuck() {
    let s = server();
    let mut c = client(&s);
    c.cmd([
        "CONFIG",
        "SET",
        "client-output-buffer-limit",
        "pubsub 1mb 256kb 5",
    ])
    .unwrap();
    let url = s.url();
    let mut sub = spawn_held(&["subscribe", "--url", &url, "--channel", "stuck"]);
    assert!(wait_until(WAIT, || pubsub_clients(&mut c) == 1));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        let url = url.clone();
        std::thread::spawn(move || {
            let mut p = TestClient::connect(&url).unwrap();
            let body = "x".repeat(1024);
            while !stop.load(Ordering::Relaxed) {
                let msgs: Vec<String> = (0..500).map(|i| format!("{i}-{body}")).collect();
                if p.publish_many("PUBLISH", "stuck", &msgs).is_err() {
                    break;
                }
            }
        })
    };
    let closed = wait_until(WAIT, || pubsub_clients(&mut c) == 0);
    let gone_at = Instant::now();
    let told = closed && wait_until(WAIT, || sub.stderr_text().contains("gap on"));
    let told_after = gone_at.elapsed();
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    assert!(closed, "the server never dropped the subscriber");
    assert!(
        told,
        "no gap said while stdout was stuck:\n{}",
        sub.stderr_text()
    );
    assert!(
        told_after < Duration::from_secs(5),
        "the gap was said {told_after:?} after the server's close"
    );
    let stderr = sub.stderr_text();
    let gap_lines: Vec<&str> = stderr.lines().filter(|l| l.contains("gap")).collect();
    assert!(
        gap_lines
            .iter()
            .all(|l| l.contains("gap on channel stuck") && l.contains("client-output-buffer-limit")),
        "one human-readable line per gap, naming the limit:\n{stderr}"
    );
    assert!(
        !stderr.contains("OutputBufferLimit(") && !stderr.contains("ConnectionLost("),
        "no Debug form:\n{stderr}"
    );
    // The reader goes on: a later message arrives.
    sub.read_stdout();
    assert!(
        wait_until(WAIT, || {
            let _ = c.publish("stuck", "after");
            sub.stdout_text_lines().iter().any(|l| l == "after")
        }),
        "nothing printed after stdout was read again"
    );
    sub.signal(libc::SIGINT);
    sub.finish().assert_success();
}

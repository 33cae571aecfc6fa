//! `ringq subscribe` writing into a pipe nobody reads, as a user's slow consumer does:
//! with `--drop-oldest` it keeps reading the socket and accounts for every message; by
//! default it stops reading, and when the server drops it at its output-buffer limit it
//! says so in one line, about when it happens, and subscribes again.

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{client, run, server};
use ringq_tests::{wait_until, TestClient};

const WAIT: Duration = Duration::from_secs(30);

/// A `ringq subscribe` whose stdout is not read until [`Held::read`]; stderr is
/// collected as it comes.
struct Held {
    child: Child,
    out: Option<std::process::ChildStdout>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

fn collect(mut r: impl Read + Send + 'static, buf: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 64 * 1024];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            buf.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    })
}

impl Held {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringq"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringq");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![collect(child.stderr.take().unwrap(), stderr.clone())];
        Self {
            out: child.stdout.take(),
            child,
            stdout: Arc::default(),
            stderr,
            readers,
        }
    }

    /// Starts reading stdout.
    fn read(&mut self) {
        if let Some(out) = self.out.take() {
            self.readers.push(collect(out, self.stdout.clone()));
        }
    }

    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.stdout.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// SIGINT, then waits for the exit; returns the exit code.
    fn interrupt(mut self) -> (Option<i32>, Vec<String>, String) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let mut code = None;
        assert!(
            wait_until(WAIT, || {
                code = self.child.try_wait().unwrap().map(|s| s.code());
                code.is_some()
            }),
            "ringq subscribe did not exit after SIGINT"
        );
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        (code.flatten(), self.lines(), self.stderr())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pubsub_clients(c: &mut TestClient) -> usize {
    let list = c.cmd(["CLIENT", "LIST", "TYPE", "pubsub"]).unwrap();
    let text = list.as_bytes().map(|b| b.to_vec()).unwrap_or_default();
    String::from_utf8_lossy(&text).lines().count()
}

/// Waits until `lines` stops growing for a second.
fn settled(h: &Held) {
    let mut last = usize::MAX;
    let mut since = Instant::now();
    assert!(wait_until(Duration::from_secs(120), || {
        let n = h.lines().len();
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
    let mut sub = Held::spawn(&[
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
    sub.read();
    settled(&sub);
    let (code, lines, stderr) = sub.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
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
    let mut sub = Held::spawn(&["subscribe", "--url", &url, "--channel", "stuck"]);
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
    let told = closed && wait_until(WAIT, || sub.stderr().contains("gap on"));
    let told_after = gone_at.elapsed();
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    assert!(closed, "the server never dropped the subscriber");
    assert!(
        told,
        "no gap said while stdout was stuck:\n{}",
        sub.stderr()
    );
    assert!(
        told_after < Duration::from_secs(5),
        "the gap was said {told_after:?} after the server's close"
    );
    let stderr = sub.stderr();
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
    sub.read();
    assert!(
        wait_until(WAIT, || {
            let _ = c.publish("stuck", "after");
            sub.lines().iter().any(|l| l == "after")
        }),
        "nothing printed after stdout was read again"
    );
    let (code, _, stderr) = sub.interrupt();
    assert_eq!(code, Some(0), "{stderr}");
}

//! Helpers shared by the `ringq` binary's black-box tests: private servers, and a
//! running `ringq` whose output is collected as it arrives.
#![allow(dead_code, reason = "each test file uses a different subset")]

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ringq_tests::{wait_until, RedisServer, TestClient};

/// Longest any one `ringq` run may take before the test kills it and fails.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

pub fn server() -> RedisServer {
    RedisServer::start().expect("start redis-server")
}

pub fn client(s: &RedisServer) -> TestClient {
    TestClient::connect(&s.url()).expect("connect to redis-server")
}

/// A running `ringq` whose stdout and stderr are collected as they arrive.
pub struct Proc {
    pub child: Child,
    pub out: Arc<Mutex<Vec<u8>>>,
    pub err: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    /// Stdout not read yet ([`spawn_held`]).
    held: Option<std::process::ChildStdout>,
}

pub struct Done {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Done {
    pub fn lines(&self) -> Vec<String> {
        String::from_utf8(self.stdout.clone())
            .expect("UTF-8 output")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Asserts the exit status and that stderr says `needle`.
    pub fn assert_fails_with(&self, code: i32, needle: &str) {
        assert_eq!(self.code(), Some(code), "stderr:\n{}", self.stderr);
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            self.stderr
        );
    }

    pub fn assert_success(&self) {
        assert!(
            self.status.success(),
            "ringq failed: {:?}\nstderr:\n{}",
            self.status,
            self.stderr
        );
    }
}

pub fn spawn(args: &[&str]) -> Proc {
    let mut p = spawn_held(args);
    p.read_stdout();
    p
}

fn collect(mut r: Box<dyn Read + Send>, buf: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
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

/// A running `ringq` whose stdout nobody reads until [`Proc::read_stdout`] (a pipe that
/// fills: a slow consumer); stderr is collected as it arrives.
pub fn spawn_held(args: &[&str]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ringq"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringq");
    let out = Arc::new(Mutex::new(Vec::new()));
    let err = Arc::new(Mutex::new(Vec::new()));
    let readers = vec![collect(Box::new(child.stderr.take().unwrap()), err.clone())];
    Proc {
        held: child.stdout.take(),
        child,
        out,
        err,
        readers,
    }
}

impl Proc {
    /// Starts collecting stdout (at once for [`spawn`]).
    pub fn read_stdout(&mut self) {
        if let Some(out) = self.held.take() {
            self.readers.push(collect(Box::new(out), self.out.clone()));
        }
    }

    /// Stdout so far, as lines.
    pub fn stdout_text_lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.out.lock().unwrap())
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Stderr so far.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned()
    }

    pub fn stdout_lines(&self) -> usize {
        self.out
            .lock()
            .unwrap()
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    pub fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child,
        // not yet reaped (we hold its `Child`), so it cannot name another process.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    pub fn finish(mut self) -> Done {
        // A stdout nobody will read would hold the child in a write forever.
        self.held.take();
        let mut status = None;
        let exited = wait_until(RUN_TIMEOUT, || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        });
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
            panic!(
                "ringq did not exit within {RUN_TIMEOUT:?}; stderr:\n{}",
                String::from_utf8_lossy(&self.err.lock().unwrap())
            );
        }
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        let stdout = std::mem::take(&mut *self.out.lock().unwrap());
        let stderr = String::from_utf8_lossy(&self.err.lock().unwrap()).into_owned();
        Done {
            status: status.expect("exited"),
            stdout,
            stderr,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn run(args: &[&str]) -> Done {
    spawn(args).finish()
}

pub fn produce_seq(url: &str, queue: &str, n: u64) -> Done {
    let done = run(&[
        "produce",
        "--url",
        url,
        "--queue",
        queue,
        "--messages",
        &n.to_string(),
        "--seq",
    ]);
    done.assert_success();
    done
}

pub fn seq(range: std::ops::Range<u64>) -> Vec<String> {
    range.map(|i| i.to_string()).collect()
}

/// A running `ringq` whose stdout is read slowly (a one-page pipe, a pause every 50
/// lines), so a drain takes long enough to be hit by faults mid-way.
pub struct Consumer {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
}

impl Consumer {
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_bin(std::path::Path::new(env!("CARGO_BIN_EXE_ringq")), args)
    }

    /// As [`Consumer::spawn`], with another `ringq` binary (an earlier release's).
    pub fn spawn_bin(bin: &std::path::Path, args: &[&str]) -> Self {
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringq");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().unwrap();
        // A one-page pipe, so the lines a consumer has written ahead of the reader (all
        // acknowledged) stay few, and a drain needs many of the reader's turns.
        // SAFETY: fcntl(2) on a pipe descriptor we own; no memory is passed.
        unsafe {
            libc::fcntl(stdout.as_raw_fd(), libc::F_SETPIPE_SZ, 4096);
        }
        let out = BufReader::new(stdout);
        let l = lines.clone();
        let r1 = std::thread::spawn(move || {
            for (i, line) in out.lines().map_while(Result::ok).enumerate() {
                l.lock().unwrap().push(line);
                if i % 50 == 49 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        let e = err.clone();
        let errs = BufReader::new(child.stderr.take().unwrap());
        let r2 = std::thread::spawn(move || {
            for line in errs.lines().map_while(Result::ok) {
                let mut e = e.lock().unwrap();
                e.push_str(&line);
                e.push('\n');
            }
        });
        Self {
            child,
            lines,
            err,
            readers: vec![r1, r2],
        }
    }

    pub fn count(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Distinct lines so far (duplicates counted once).
    pub fn distinct(&self) -> usize {
        let lines = self.lines.lock().unwrap();
        lines.iter().collect::<std::collections::HashSet<_>>().len()
    }

    pub fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child,
        // not yet reaped (we hold its `Child`), so it cannot name another process.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// Waits for the exit (after a signal), then returns every line and stderr.
    pub fn finish(mut self) -> (Vec<String>, String, Option<i32>) {
        let mut status = None;
        assert!(
            wait_until(RUN_TIMEOUT, || {
                status = self.child.try_wait().expect("try_wait");
                status.is_some()
            }),
            "ringq did not exit"
        );
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
        let lines = std::mem::take(&mut *self.lines.lock().unwrap());
        let err = std::mem::take(&mut *self.err.lock().unwrap());
        (lines, err, status.and_then(|s| s.code()))
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs `ringq args` to the end with `env` set, and $RINGQ_URL, $RINGQ_PASSWORD and
/// $RINGQ_SENTINEL_PASSWORD unset unless `env` sets them.
pub fn ringq_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ringq"));
    c.args(args)
        .env_remove("RINGQ_URL")
        .env_remove("RINGQ_PASSWORD")
        .env_remove("RINGQ_SENTINEL_PASSWORD")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run ringq")
}

/// Asserts `o` succeeded (showing its stderr if not); returns (stdout, stderr).
pub fn succeeded(o: &Output) -> (String, String) {
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "ringq failed: {:?}\n{stderr}", o.status);
    (String::from_utf8_lossy(&o.stdout).into_owned(), stderr)
}

/// [`succeeded`]'s stdout.
pub fn stdout_of(o: &Output) -> String {
    succeeded(o).0
}

/// [`succeeded`]'s stderr.
pub fn stderr_of(o: &Output) -> String {
    succeeded(o).1
}

/// `ringq consume --mode reliable` as the tests run it: a small prefetch and batch, no
/// pinning, then `extra`.
pub fn reliable_args<'a>(
    url: &'a str,
    id: &'a str,
    queues: &[&'a str],
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "consume",
        "--url",
        url,
        "--mode",
        "reliable",
        "--consumer-id",
        id,
        "--prefetch",
        "256",
        "--batch",
        "32",
        "--no-pin",
    ];
    for q in queues {
        args.extend(["--queue", q]);
    }
    args.extend_from_slice(extra);
    args
}

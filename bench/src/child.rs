//! Consumer children, the parent's side (the child's is `clients::child_main`): the
//! parent re-executes this binary as `ringq-bench __child SPEC`,
//! so each client's consumer is alone in its process and the kernel's CPU accounting of
//! that process (`wait4`'s rusage: user + system time of all its threads) is the
//! consumer's cost and nothing else's.
//!
//! Protocol on the child's stdout: a `ready` line once connected and consuming, then one
//! JSON [`ChildReport`] line. Its stderr is collected and shown when it fails. A child
//! gets `PR_SET_PDEATHSIG`, so it dies if the parent does.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::spec::{ChildReport, ChildSpec, CHILD_SUBCOMMAND, READY_LINE, SPEC_ENV};

/// What the parent learns from one child.
#[derive(Debug)]
pub struct ChildOutcome {
    /// The child's own report.
    pub report: ChildReport,
    /// User + system CPU time of the child process, from `wait4`.
    pub cpu: Duration,
}

/// Runs one consumer child for `spec`. `on_ready` runs in the parent once the child says
/// it is consuming (the latency producer goes there); the child's report follows.
///
/// # Errors
/// The child cannot be spawned, fails (its stderr is quoted), or reports garbage.
pub fn run(spec: &ChildSpec, on_ready: impl FnOnce() -> Result<()>) -> Result<ChildOutcome> {
    let exe = std::env::current_exe().map_err(|e| Error::io("finding ringq-bench itself", e))?;
    let mut cmd = Command::new(exe);
    // The spec (with the URL, which may hold a password) goes through the environment,
    // not argv: other users can read a process's arguments (`ps`), not its environment.
    cmd.arg(CHILD_SUBCOMMAND)
        .env(SPEC_ENV, serde_json::to_string(spec)?)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe and touches only the new process.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io("starting a consumer child", e))?;
    let pid = child.id() as libc::pid_t;
    let mut stderr = child.stderr.take();
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_string(&mut text);
        }
        text
    });
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::new("child stdout missing"))?;
    let mut lines = BufReader::new(stdout).lines();
    let mut report = None;
    let mut failure = None;
    let mut on_ready = Some(on_ready);
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        if line == READY_LINE {
            let Some(ready) = on_ready.take() else {
                continue;
            };
            if let Err(e) = ready() {
                failure = Some(e);
                let _ = child.kill();
                break;
            }
        } else if let Ok(r) = serde_json::from_str::<ChildReport>(&line) {
            report = Some(r);
        }
    }
    drop(lines);
    let (status, cpu) = wait4(pid)?;
    // The Child handle must not wait again: the process is reaped.
    std::mem::forget(child);
    let stderr_text = stderr_reader.join().unwrap_or_default();
    if let Some(e) = failure {
        return Err(e);
    }
    let last_words = || {
        let t = stderr_text.trim();
        if t.is_empty() {
            String::new()
        } else {
            format!(": {t}")
        }
    };
    if !status_ok(status) {
        return Err(Error::new(format!(
            "the {} child failed ({}){}",
            spec.client.name(),
            describe_status(status),
            last_words()
        )));
    }
    let report = report.ok_or_else(|| {
        Error::new(format!(
            "the {} child exited without a report{}",
            spec.client.name(),
            last_words()
        ))
    })?;
    if !stderr_text.trim().is_empty() {
        eprint!("{stderr_text}");
    }
    Ok(ChildOutcome { report, cpu })
}

/// Reaps `pid` and returns its wait status and CPU time (user + system).
fn wait4(pid: libc::pid_t) -> Result<(libc::c_int, Duration)> {
    let mut status = 0;
    // SAFETY: all-zero is a valid `rusage`.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `ru` are valid for writes; `pid` is our unreaped child.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if rc == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(Error::io("waiting for a consumer child", e));
        }
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok((status, tv(ru.ru_utime) + tv(ru.ru_stime)))
}

fn status_ok(status: libc::c_int) -> bool {
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}

fn describe_status(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exit code {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("wait status {status}")
    }
}

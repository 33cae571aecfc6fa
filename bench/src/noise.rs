//! What else ran on the machine while a client was measured. On a small shared machine
//! another process (a build, a test run) steals cores from the server, the producer or the
//! consumer, and latency tails grow by milliseconds. The report cannot prevent that, but it
//! can say so: busy CPU time of the whole machine (`/proc/stat`) minus what this run
//! accounts for — this process (filling, producing), the consumer child (from `wait4`) and
//! the embedded server (`/proc/PID/stat`) — is other processes' load, reported as a note
//! when it is large enough to matter.

use std::time::{Duration, Instant};

use crate::child::ChildOutcome;
use crate::error::Result;
use crate::server::Broker;

/// Average other load (cores) worth a note.
const NOTE_CORES: f64 = 0.15;
/// Runs shorter than this are not judged: `/proc/stat` counts in clock ticks (10 ms).
const MIN_RUN: Duration = Duration::from_millis(900);

/// CPU counters at one instant.
pub struct Snapshot {
    at: Instant,
    machine_busy: Option<Duration>,
    own: Duration,
    /// The embedded servers' CPU time, summed (zero with `--url`).
    server: Duration,
    server_pids: Vec<u32>,
}

fn ticks_to_duration(ticks: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / hz)
}

/// Busy time of all CPUs: the first `/proc/stat` line minus idle and iowait.
fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: u64 = fields
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    Some(ticks_to_duration(busy))
}

/// Runs one client's child through `f`, and notes other processes' load meanwhile.
pub fn measured(
    broker: &Broker,
    f: impl FnOnce() -> Result<ChildOutcome>,
) -> (Result<ChildOutcome>, Option<String>) {
    measured_on(broker.server_pid().into_iter().collect(), f)
}

/// As [`measured`], for the embedded servers `server_pids` (a private cluster's nodes).
pub fn measured_on(
    server_pids: Vec<u32>,
    f: impl FnOnce() -> Result<ChildOutcome>,
) -> (Result<ChildOutcome>, Option<String>) {
    let before = Snapshot::take(server_pids);
    let outcome = f();
    let note = outcome.as_ref().ok().and_then(|o| before.note_since(o.cpu));
    (outcome, note)
}

/// utime + stime of process `pid`.
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(ticks_to_duration(utime + stime))
}

fn own_cpu() -> Duration {
    // SAFETY: all-zero is a valid `rusage`; getrusage only writes it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is valid for writes.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

impl Snapshot {
    /// Takes the counters now; `server_pids` are the embedded servers', if any.
    pub fn take(server_pids: Vec<u32>) -> Self {
        Self {
            at: Instant::now(),
            machine_busy: machine_busy(),
            own: own_cpu(),
            server: server_pids.iter().filter_map(|&p| process_cpu(p)).sum(),
            server_pids,
        }
    }

    /// A note on other processes' load since this snapshot, if it was large enough to
    /// disturb the figures. `child_cpu` is the consumer child's CPU time.
    pub fn note_since(&self, child_cpu: Duration) -> Option<String> {
        let now = Self::take(self.server_pids.clone());
        let wall = now.at.duration_since(self.at);
        if wall < MIN_RUN {
            return None;
        }
        let busy = now.machine_busy?.checked_sub(self.machine_busy?)?;
        let server = now.server.saturating_sub(self.server);
        let ours = now.own.saturating_sub(self.own) + server + child_cpu;
        let other = busy.saturating_sub(ours).as_secs_f64() / wall.as_secs_f64();
        (other >= NOTE_CORES).then(|| {
            format!(
                "other processes kept {other:.2} cores busy on average during this run \
                 (the machine was not quiet: treat tails with care)"
            )
        })
    }
}

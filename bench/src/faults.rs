//! The `load` scenario's faults and its once-a-second sampler: at the end of the seconds
//! `--kill-consumers-at`, `--restart-server-at` and `--failover-at` name, the sampler
//! kills the consumer's connections, restarts the embedded server, or fails the embedded
//! sentinel group over, and says what it did; every second it reads the backlog and the
//! server's CPU.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::cli::LoadMode;
use crate::error::{Error, Result};
use crate::latency;
use crate::loadreport::Sample;
use crate::server::cpu_seconds_of;

/// Kills every connection of the consumer child (`CLIENT KILL ID` of each client named
/// `ringq-bench-…`, the producers' excepted); returns how many.
pub(crate) fn kill_consumers(url: &str) -> Result<u64> {
    kill_named(url, |n| {
        n.starts_with("ringq-bench-") && n != crate::paced::PRODUCER_NAME
    })
}

/// Kills every connection whose name passes `pick`; returns how many.
fn kill_named(url: &str, pick: impl Fn(&str) -> bool) -> Result<u64> {
    let mut conn = crate::conn::RawConn::connect(url)?;
    let list = match conn.command_ok(["CLIENT", "LIST"])? {
        f @ (ringq_resp::Frame::BulkString(_) | ringq_resp::Frame::VerbatimString { .. }) => {
            String::from_utf8_lossy(f.as_bytes().map_or(&b""[..], |b| b)).into_owned()
        }
        f => return Err(Error::new(format!("unexpected CLIENT LIST reply: {f:?}"))),
    };
    let mut killed = 0;
    for line in list.lines() {
        let field = |k: &str| {
            line.split(' ')
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
        };
        if field("name").is_some_and(&pick) {
            if let Some(id) = field("id") {
                let _ = conn.command(["CLIENT", "KILL", "ID", id])?;
                killed += 1;
            }
        }
    }
    Ok(killed)
}

/// The faults a run injects, at the end of the seconds named.
pub(crate) struct Faults {
    pub(crate) kill_consumers_at: Vec<u64>,
    pub(crate) restart_server_at: Vec<u64>,
    pub(crate) failover_at: Vec<u64>,
    /// The embedded server (restarts need it).
    pub(crate) server: Option<Arc<ringq_tests::RedisServer>>,
    /// The embedded sentinel group (failovers need it).
    pub(crate) sentinels: Option<Arc<ringq_tests::SentinelGroup>>,
}

impl Faults {
    /// The faults due at the end of second `t`, done now: what happened, for the report,
    /// and whether `url` now reaches another server process (a restart or a failover
    /// succeeded: its CPU counter starts over).
    fn inject(&self, url: &str, t: u64) -> (Option<String>, bool) {
        let mut done = Vec::new();
        let mut new_server = false;
        if self.kill_consumers_at.contains(&t) {
            done.push(match kill_consumers(url) {
                Ok(n) => format!("CLIENT KILL of the consumer's {n} connection(s)"),
                Err(e) => format!("CLIENT KILL failed: {e}"),
            });
        }
        if self.restart_server_at.contains(&t) {
            let began = std::time::Instant::now();
            done.push(match self.server.as_ref().map(|s| s.restart()) {
                Some(Ok(())) => {
                    new_server = true;
                    format!(
                        "server restarted (SIGTERM, then started again on its append-only \
                         file) in {} ms",
                        began.elapsed().as_millis()
                    )
                }
                Some(Err(e)) => format!("server restart failed: {e}"),
                None => "no embedded server to restart".to_owned(),
            });
        }
        if self.failover_at.contains(&t) {
            let began = std::time::Instant::now();
            let before = self.sentinels.as_ref().and_then(|g| g.master_addr().ok());
            done.push(match self.sentinels.as_ref().map(|g| g.failover()) {
                Some(Ok(to)) => {
                    new_server = true;
                    // The producers follow as a sentinel-aware client does on
                    // `+switch-master`: their connections to the old master are closed
                    // (they connect again through the sentinels). What they wrote there
                    // after the promotion is lost with the old master's data.
                    let moved = before.map_or(0, |b| {
                        kill_named(&format!("redis://{b}"), |n| {
                            n == crate::paced::PRODUCER_NAME
                        })
                        .unwrap_or(0)
                    });
                    format!(
                        "failover (SENTINEL FAILOVER): master {} → {to}, switched in {} ms; \
                         {moved} producer connection(s) sent to the new master",
                        before.map_or_else(|| "?".to_owned(), |a| a.to_string()),
                        began.elapsed().as_millis()
                    )
                }
                Some(Err(e)) => format!("failover failed: {e}"),
                None => "no embedded sentinels to fail over".to_owned(),
            });
        }
        ((!done.is_empty()).then(|| done.join("; ")), new_server)
    }
}

/// Reads the backlog and the server's CPU at `origin + 1 s`, `+ 2 s`, … until `stop`,
/// injecting the faults due.
pub(crate) fn sample_every_second(
    url: &str,
    mode: LoadMode,
    queues: &[String],
    origin: u64,
    faults: &Faults,
    stop: &AtomicBool,
    samples: &Mutex<Vec<Sample>>,
) {
    latency::sleep_until_ns(origin);
    let mut cpu = cpu_seconds_of(url).unwrap_or(0.0);
    let mut last_backlog = 0;
    for k in 1u64.. {
        latency::sleep_until_ns(origin + k * 1_000_000_000);
        let now_cpu = cpu_seconds_of(url).unwrap_or(cpu);
        // Second k-1 ends now: a fault due at second k-1 happens at its end.
        let (fault, new_server) = faults.inject(url, k - 1);
        // Unreadable (a restarted server still loading its data, a failover under way):
        // the last reading stands rather than a 0 that would look like a drain.
        last_backlog = crate::loadtest::backlog(url, mode, queues).unwrap_or(last_backlog);
        let s = Sample {
            backlog: last_backlog,
            cpu_pct: (now_cpu - cpu).max(0.0) * 100.0,
            fault,
        };
        // A restarted server counts its CPU from 0 again; after a failover the URL
        // reaches another server.
        cpu = if new_server {
            cpu_seconds_of(url).unwrap_or(0.0)
        } else {
            now_cpu
        };
        if let Ok(mut v) = samples.lock() {
            v.push(s);
        }
        if stop.load(Ordering::Acquire) {
            return;
        }
    }
}

//! The latency floor: PING round trips on the latency scenario's schedule, measured the
//! way the message latencies are. PING `n` is due at start + n/rate; one thread writes
//! each PING at its due time (an absolute sleep with 1 ns timer slack, exactly like the
//! producer) without waiting for earlier answers, and another thread reads the PONGs. The
//! server answers in order, so the `n`th PONG belongs to PING `n`, and its latency runs
//! from PING `n`'s *intended* send time (coordinated-omission corrected, as wrk2 does).
//!
//! A single thread that waited for each PONG before sending the next PING would measure
//! something else: after one stall (a preemption on a busy machine) every later PING
//! would start late and queue behind the stall, inflating the floor's tail far beyond the
//! round-trip time it is meant to show.

use std::sync::Arc;

use bytes::BytesMut;
use ringq_resp::encode_command;

use super::Sink;
use crate::conn::RawConn;
use crate::error::{Error, Result};
use crate::latency;
use crate::spec::ChildSpec;

/// Most PINGs written at once when the sender is behind its schedule.
const MAX_BURST: u64 = 1000;

pub fn run(spec: &ChildSpec, sink: &Arc<Sink>) -> Result<Option<String>> {
    let mut conn = RawConn::connect_with(&spec.url, spec.tls_ca.as_deref())?;
    let mut reader = RawConn::from_stream(conn.try_clone_stream()?);
    sink.watchdog(super::deadline(spec), || {});
    let mut ping = BytesMut::new();
    encode_command(&mut ping, ["PING"]);
    let interval_ns = 1e9 / f64::from(spec.rate.max(1));
    let count = spec.expected;
    sink.ready();
    let start = latency::mono_ns() + 1_000_000;
    let due = move |i: u64| start + (i as f64 * interval_ns) as u64;
    std::thread::scope(|s| {
        let pongs = s.spawn(|| -> Result<()> {
            for i in 0..count {
                let reply = reader.read_raw_frame()?;
                let now = latency::mono_ns();
                if !reply.starts_with(b"+PONG") {
                    return Err(Error::new(format!(
                        "unexpected PING reply: {}",
                        String::from_utf8_lossy(&reply)
                    )));
                }
                sink.sample(due(i), now);
            }
            Ok(())
        });
        latency::tighten_timer_slack();
        let mut out = BytesMut::with_capacity(ping.len() * 64);
        let mut i = 0u64;
        let sent = (|| -> Result<()> {
            while i < count {
                latency::sleep_until_ns(due(i));
                let now = latency::mono_ns();
                out.clear();
                let burst_end = (i + MAX_BURST).min(count);
                while i < burst_end && due(i) <= now {
                    out.extend_from_slice(&ping);
                    i += 1;
                }
                conn.write_all(&out)?;
            }
            Ok(())
        })();
        if sent.is_err() {
            // The PONGs the reader waits for will never come: wake it.
            conn.shutdown();
        }
        let received = pongs
            .join()
            .unwrap_or_else(|_| Err(Error::new("the PONG reader panicked")));
        sent.and(received)
    })?;
    Ok(None)
}

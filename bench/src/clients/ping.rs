//! The latency floor: PING round trips on the latency scenario's schedule. One blocking
//! connection; PING `n` is due at start + n/rate and its latency is measured from that
//! intended time to the PONG (so, like the message latencies, it includes any delay in
//! sending it: coordinated-omission corrected). The same absolute sleep with 1 ns timer
//! slack as the producer, so both carry the same scheduling noise.

use std::sync::Arc;

use bytes::BytesMut;
use ringq_resp::encode_command;

use super::Sink;
use crate::conn::RawConn;
use crate::error::{Error, Result};
use crate::latency;
use crate::spec::ChildSpec;

pub fn run(spec: &ChildSpec, sink: &Arc<Sink>) -> Result<Option<String>> {
    let mut conn = RawConn::connect(&spec.url)?;
    sink.watchdog(super::deadline(spec), || {});
    latency::tighten_timer_slack();
    let mut ping = BytesMut::new();
    encode_command(&mut ping, ["PING"]);
    let interval_ns = 1e9 / f64::from(spec.rate.max(1));
    sink.ready();
    let start = latency::mono_ns() + 1_000_000;
    for i in 0..spec.expected {
        let due = start + (i as f64 * interval_ns) as u64;
        latency::sleep_until_ns(due);
        conn.write_all(&ping)?;
        let reply = conn.read_raw_frame()?;
        let now = latency::mono_ns();
        if !reply.starts_with(b"+PONG") {
            return Err(Error::new(format!(
                "unexpected PING reply: {}",
                String::from_utf8_lossy(&reply)
            )));
        }
        sink.sample(due, now);
    }
    Ok(None)
}

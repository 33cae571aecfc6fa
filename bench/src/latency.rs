//! Time stamps and latency histograms.
//!
//! Producer and consumer are different processes, so the clock is `CLOCK_MONOTONIC` read
//! directly (one clock for every process on the machine), in nanoseconds. A latency
//! payload starts with the message's *intended* send time and its sequence number (both
//! little-endian u64); the producer sends on a fixed schedule, so a stalled producer,
//! server or consumer shows up as latency instead of as fewer samples — the correction for
//! coordinated omission that wrk2 applies.

use hdrhistogram::Histogram;

use crate::spec::LatencySummary;

/// Bytes a latency payload needs at least: intended send time and sequence number.
pub const STAMP_LEN: usize = 16;

/// Highest latency tracked: 60 s in nanoseconds (anything above is clamped to it).
const MAX_NS: u64 = 60_000_000_000;

/// `CLOCK_MONOTONIC` now, in nanoseconds.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps until `CLOCK_MONOTONIC` reaches `deadline_ns` (an absolute sleep: no drift from
/// computing a relative one). Returns at once if the deadline has passed.
pub fn sleep_until_ns(deadline_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (deadline_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (deadline_ns % 1_000_000_000) as libc::c_long,
    };
    loop {
        // SAFETY: `ts` is a valid timespec; the remaining-time pointer may be null with
        // TIMER_ABSTIME.
        let rc = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
        if rc != libc::EINTR {
            return;
        }
    }
}

/// Makes this thread's timed sleeps precise: the default timer slack (50 µs) would add up
/// to 50 µs to every scheduled send, which is half the interval at 10k msg/s.
pub fn tighten_timer_slack() {
    // SAFETY: PR_SET_TIMERSLACK takes an unsigned long and touches only this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

/// Writes the intended send time and sequence number at the start of `payload`.
///
/// # Panics
/// If `payload` is shorter than [`STAMP_LEN`].
pub fn stamp(payload: &mut [u8], intended_ns: u64, seq: u64) {
    payload[..8].copy_from_slice(&intended_ns.to_le_bytes());
    payload[8..16].copy_from_slice(&seq.to_le_bytes());
}

/// The intended send time a payload carries, if it is long enough to carry one.
pub fn intended_ns(payload: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = payload.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// The sequence number a payload carries, if it is long enough to carry one.
pub fn seq(payload: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = payload.get(8..16)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// A histogram from 1 ns to 60 s with 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("constant, valid histogram bounds")
}

/// Records `now_ns - intended_ns` (clamped to the histogram's range).
pub fn record(h: &mut Histogram<u64>, intended_ns: u64, now_ns: u64) {
    let v = now_ns.saturating_sub(intended_ns).clamp(1, MAX_NS);
    h.saturating_record(v);
}

/// Percentiles in µs, and the curve for the plot: one point per 1/20 decade of
/// 1/(1-p), from 0 % to 99.9999 %, cut at the last percentile the samples can resolve.
pub fn summarize(h: &Histogram<u64>) -> LatencySummary {
    let us = |ns: u64| ns as f64 / 1000.0;
    let mut curve = Vec::new();
    let len = h.len().max(1) as f64;
    for k in 0..=120 {
        let q = 1.0 - 10f64.powf(-(k as f64) / 20.0);
        if k > 0 && (1.0 - q) * len < 1.0 {
            break;
        }
        curve.push((q * 100.0, us(h.value_at_quantile(q))));
    }
    curve.push((100.0 * (1.0 - 0.5 / len), us(h.max())));
    LatencySummary {
        p50_us: us(h.value_at_quantile(0.50)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
        curve,
    }
}

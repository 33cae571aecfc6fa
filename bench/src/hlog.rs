//! `load --hdr-prefix PATH`: HdrHistogram interval logs (the format of the Java
//! `HistogramLogWriter`, read by `HistogramLogProcessor` and HdrHistogram's plotters), one
//! interval a second: `PATH.e2e.hlog` (end-to-end latency, written by the consumer child,
//! each message in the second it was due in) and `PATH.produce.hlog` (produce latency,
//! written by the parent). Values are nanoseconds; the per-interval max column is in
//! milliseconds (the Java writer's default ratio of 10^6). Interval timestamps are
//! seconds since the schedule's start, which the `BaseTime` header gives as Unix time.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use hdrhistogram::serialization::interval_log::IntervalLogWriterBuilder;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;

use crate::error::{Error, Result};

/// `PATH.<what>.hlog` for a `--hdr-prefix PATH`.
pub fn path(prefix: &Path, what: &str) -> PathBuf {
    let mut p = prefix.as_os_str().to_owned();
    p.push(format!(".{what}.hlog"));
    PathBuf::from(p)
}

/// The Unix time of the monotonic instant `ns` (the bench's clock, `latency::mono_ns`).
pub fn unix_time_of(ns: u64) -> SystemTime {
    let now_ns = crate::latency::mono_ns();
    let now = SystemTime::now();
    if ns <= now_ns {
        now - Duration::from_nanos(now_ns - ns)
    } else {
        now + Duration::from_nanos(ns - now_ns)
    }
}

/// Writes `seconds` (histogram `i` is second `i` from `base`; empty ones are left out) as
/// an interval log at `path`, with `what` in a comment.
///
/// # Errors
/// The file cannot be written, or a histogram cannot be encoded.
pub fn write(path: &Path, what: &str, base: SystemTime, seconds: &[Histogram<u64>]) -> Result<()> {
    let mut out = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    {
        let mut w = IntervalLogWriterBuilder::new()
            .add_comment(&format!("ringq-bench load: {what}, in nanoseconds"))
            .with_base_time(base)
            .with_start_time(base)
            .with_max_value_divisor(1e6)
            .begin_log_with(&mut out, &mut serializer)
            .map_err(|e| Error::io("starting an HdrHistogram log", e))?;
        for (t, h) in seconds.iter().enumerate() {
            if h.is_empty() {
                continue;
            }
            w.write_histogram(
                h,
                Duration::from_secs(t as u64),
                Duration::from_secs(1),
                None,
            )
            .map_err(|e| Error::new(format!("encoding an HdrHistogram interval: {e:?}")))?;
        }
    }
    std::fs::write(path, out).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

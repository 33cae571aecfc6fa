//! Per-second figures of the `load` scenario. The consumer child counts what it consumed
//! per second of its clock and records end-to-end latency per second of *intended send
//! time* (so a slow second's messages are charged to the second they were due in,
//! coordinated-omission corrected), plus one histogram over the measured window (after
//! the warm-up). Both processes share `CLOCK_MONOTONIC`, so second `t` is
//! `origin + t s` for both.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::latency;
use crate::spec::LatencySummary;

/// What the consumer reports per second.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsumerSecond {
    pub t: u64,
    /// Messages the handler got in this second (by receive time).
    pub consumed: u64,
    /// End-to-end latency of the messages due in this second: p50, p99, p99.9, max (µs);
    /// `None` when none was due then.
    pub e2e_us: Option<[f64; 4]>,
}

/// The child's recorder.
pub struct ChildSeries {
    origin_ns: u64,
    warmup_ns: u64,
    /// Sequence numbers seen (one bit each), and those seen again.
    seen: Vec<u64>,
    duplicates: u64,
    consumed: Vec<u64>,
    e2e: Vec<Histogram<u64>>,
    window: Histogram<u64>,
}

/// p50, p99, p99.9 and max of `h` in µs.
pub fn quantiles_us(h: &Histogram<u64>) -> [f64; 4] {
    let us = |ns: u64| ns as f64 / 1000.0;
    [
        us(h.value_at_quantile(0.5)),
        us(h.value_at_quantile(0.99)),
        us(h.value_at_quantile(0.999)),
        us(h.max()),
    ]
}

impl ChildSeries {
    pub fn new(origin_ns: u64, warmup_ns: u64, expected: u64) -> Self {
        Self {
            origin_ns,
            warmup_ns,
            seen: vec![0; expected.div_ceil(64) as usize],
            duplicates: 0,
            consumed: Vec::new(),
            e2e: Vec::new(),
            window: latency::new_histogram(),
        }
    }

    fn second(&self, ns: u64) -> usize {
        (ns.saturating_sub(self.origin_ns) / 1_000_000_000) as usize
    }

    /// One message, number `seq`, due at `intended_ns`, handled at `now_ns`. Returns
    /// whether it is the first delivery of that number.
    pub fn record(&mut self, seq: u64, intended_ns: u64, now_ns: u64) -> bool {
        let (w, b) = ((seq / 64) as usize, seq % 64);
        if w >= self.seen.len() {
            self.seen.resize(w + 1, 0);
        }
        let first = self.seen[w] & (1 << b) == 0;
        self.seen[w] |= 1 << b;
        if !first {
            self.duplicates += 1;
        }
        let (due, got) = (self.second(intended_ns), self.second(now_ns));
        if self.consumed.len() <= got {
            self.consumed.resize(got + 1, 0);
        }
        self.consumed[got] += 1;
        while self.e2e.len() <= due {
            self.e2e.push(latency::new_histogram());
        }
        latency::record(&mut self.e2e[due], intended_ns, now_ns);
        if intended_ns >= self.origin_ns + self.warmup_ns {
            latency::record(&mut self.window, intended_ns, now_ns);
        }
        first
    }

    /// Messages delivered more than once (their later deliveries).
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// The numbers in `0..expected` never delivered, as half-open ranges; `None` when
    /// there are more than `cap` ranges (the report then falls back to counts).
    pub fn missing(&self, expected: u64, cap: usize) -> Option<Vec<(u64, u64)>> {
        let seen = |i: u64| {
            self.seen
                .get((i / 64) as usize)
                .is_some_and(|w| w & (1 << (i % 64)) != 0)
        };
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut i = 0;
        while i < expected {
            // Whole words seen: skip them.
            if i % 64 == 0
                && i + 64 <= expected
                && self.seen.get((i / 64) as usize) == Some(&u64::MAX)
            {
                i += 64;
                continue;
            }
            if !seen(i) {
                match out.last_mut() {
                    Some((_, end)) if *end == i => *end += 1,
                    _ => {
                        if out.len() == cap {
                            return None;
                        }
                        out.push((i, i + 1));
                    }
                }
            }
            i += 1;
        }
        Some(out)
    }

    /// Writes the per-second end-to-end histograms as an HdrHistogram interval log
    /// (`load --hdr-prefix`).
    ///
    /// # Errors
    /// As [`crate::hlog::write`].
    pub fn write_hlog(&self, path: &std::path::Path) -> crate::error::Result<()> {
        crate::hlog::write(
            path,
            "end-to-end latency (intended send time to the handler), by the second each \
             message was due in",
            crate::hlog::unix_time_of(self.origin_ns),
            &self.e2e,
        )
    }

    /// The per-second figures and the measured window's latency.
    pub fn report(&self) -> (Vec<ConsumerSecond>, LatencySummary) {
        let n = self.consumed.len().max(self.e2e.len());
        let seconds = (0..n)
            .map(|t| ConsumerSecond {
                t: t as u64,
                consumed: self.consumed.get(t).copied().unwrap_or(0),
                e2e_us: self.e2e.get(t).filter(|h| !h.is_empty()).map(quantiles_us),
            })
            .collect();
        (seconds, latency::summarize(&self.window))
    }
}

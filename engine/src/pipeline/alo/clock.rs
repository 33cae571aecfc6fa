//! The wall clock the at-least-once modes write into server-side records (due times of
//! retries, dead-letter times, lease expiries), and the random source of their jitter
//! and ids.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A small xorshift generator: backoff jitter and message ids need no more. Per shard,
/// never shared.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; zero is made odd).
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    /// A generator seeded from the clock, the process and `salt` (an address, a shard).
    pub(crate) fn seeded(salt: u64) -> Self {
        Self::new(now_ms() ^ (u64::from(std::process::id()) << 32) ^ salt)
    }

    /// A uniform number in [0, 1).
    pub(crate) fn unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_stay_in_range_and_vary() {
        let mut r = Rng::new(0);
        let xs: Vec<f64> = (0..1000).map(|_| r.unit()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((0.4..0.6).contains(&mean), "{mean}");
    }
}

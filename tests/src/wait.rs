//! [`wait_until`]: poll a condition against a deadline — the harness's replacement for
//! "sleep and hope".

use std::time::{Duration, Instant};

/// Interval between polls: short enough not to slow tests, long enough not to spin.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Polls `condition` until it returns true or `timeout` passes; returns whether it became
/// true. The condition runs at least once, and once more at the deadline.
///
/// ```
/// use std::time::{Duration, Instant};
/// let start = Instant::now();
/// assert!(ringq_tests::wait_until(Duration::from_secs(5), || start.elapsed() > Duration::from_millis(20)));
/// assert!(!ringq_tests::wait_until(Duration::from_millis(20), || false));
/// ```
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

//! The outcome policy of the at-least-once modes: what `Ack`, `Retry` and `Dead` become
//! for a message delivered `n` times — acknowledged, delivered again after a backoff, or
//! dead-lettered with a reason — the same rule in reliable and stream mode.

use std::time::Duration;

use super::clock::Rng;
use crate::handler::Outcome;

/// How long a retried message waits before it is delivered again.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Backoff {
    /// `base × 2^(deliveries − 1)`, at most `max`, then spread by ± `jitter` (a fraction,
    /// 0–1) so that retries of a burst do not all come back at once.
    Exponential {
        /// The first retry's delay.
        base: Duration,
        /// The longest delay.
        max: Duration,
        /// Random spread, as a fraction of the delay.
        jitter: f64,
    },
    /// Fixed delays by delivery (RocketMQ's levels: 1 s, 5 s, 10 s, 30 s, 1 min…): the
    /// `n`th retry waits `levels[n − 1]`, the last level for any later one.
    Levels(Vec<Duration>),
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::Exponential {
            base: Duration::from_secs(1),
            max: Duration::from_secs(600),
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The delay before delivery `deliveries + 1`, after `deliveries` failed ones;
    /// `unit` in [0, 1) picks the jitter.
    pub(crate) fn delay(&self, deliveries: u32, unit: f64) -> Duration {
        match self {
            Backoff::Exponential { base, max, jitter } => {
                let exp = deliveries.saturating_sub(1).min(32);
                let d = base.saturating_mul(1u32 << exp.min(31)).min(*max);
                let spread = jitter.clamp(0.0, 1.0) * (2.0 * unit - 1.0);
                d.mul_f64((1.0 + spread).max(0.0))
            }
            Backoff::Levels(levels) => {
                let i = (deliveries.max(1) as usize - 1).min(levels.len().saturating_sub(1));
                levels.get(i).copied().unwrap_or(Duration::ZERO)
            }
        }
    }

    /// The shortest delay it can give (how often due retries are looked for).
    pub(crate) fn shortest(&self) -> Duration {
        match self {
            Backoff::Exponential { base, jitter, .. } => {
                base.mul_f64((1.0 - jitter.clamp(0.0, 1.0)).max(0.0))
            }
            Backoff::Levels(l) => l.iter().min().copied().unwrap_or(Duration::ZERO),
        }
    }
}

/// What the server is told about one handled message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// Done: remove it.
    Ack,
    /// Deliver it again after `delay`.
    Retry { delay: Duration },
    /// Move it to the dead letters, saying why.
    Dead { reason: String },
}

/// The retry policy of a consumer.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// Deliveries after which a `Retry` goes dead instead.
    pub max_deliveries: u32,
    pub backoff: Backoff,
}

impl Policy {
    /// The verdict for `outcome` of a message delivered `deliveries` times (this delivery
    /// included); `rng` picks the backoff's jitter.
    pub(crate) fn verdict(&self, outcome: Outcome, deliveries: u32, rng: &mut Rng) -> Verdict {
        match outcome {
            Outcome::Ack => Verdict::Ack,
            Outcome::Retry if deliveries < self.max_deliveries => Verdict::Retry {
                delay: self.backoff.delay(deliveries, rng.unit()),
            },
            Outcome::Dead => Verdict::Dead {
                reason: "the handler returned Outcome::Dead".to_owned(),
            },
            _ => Verdict::Dead {
                reason: format!("retries exhausted after {deliveries} deliveries"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_on_the_last_allowed_delivery_goes_dead_with_the_reason() {
        let p = Policy {
            max_deliveries: 3,
            backoff: Backoff::Levels(vec![Duration::from_secs(1), Duration::from_secs(5)]),
        };
        let mut rng = Rng::new(7);
        assert_eq!(p.verdict(Outcome::Ack, 9, &mut rng), Verdict::Ack);
        assert_eq!(
            p.verdict(Outcome::Retry, 1, &mut rng),
            Verdict::Retry {
                delay: Duration::from_secs(1)
            }
        );
        assert_eq!(
            p.verdict(Outcome::Retry, 2, &mut rng),
            Verdict::Retry {
                delay: Duration::from_secs(5)
            }
        );
        assert_eq!(
            p.verdict(Outcome::Retry, 3, &mut rng),
            Verdict::Dead {
                reason: "retries exhausted after 3 deliveries".into()
            }
        );
        assert_eq!(
            p.verdict(Outcome::Dead, 1, &mut rng),
            Verdict::Dead {
                reason: "the handler returned Outcome::Dead".into()
            }
        );
    }
}

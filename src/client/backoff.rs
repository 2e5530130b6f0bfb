//! Reconnect delays: exponential backoff with full jitter.
//!
//! Full jitter (a uniform delay between zero and the exponential ceiling)
//! rather than a fixed exponential delay, so that when a hub restarts, the
//! hundreds of clients it dropped at the same instant do not all come back at
//! the same instant too.

use std::time::Duration;

use rand::Rng;

/// How long the client waits before each reconnect attempt.
///
/// Attempt `n` (counting from 0) waits a uniformly random time in
/// `[0, min(cap, base * 2^n)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first attempt's delay; every later attempt doubles
    /// it. Small, so a brief blip (a hub restart) costs little.
    pub base: Duration,
    /// The largest ceiling, so a long outage is still probed regularly.
    pub cap: Duration,
}

impl Default for Backoff {
    /// `base` 100 ms, `cap` 30 s.
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The largest delay attempt `attempt` may wait: `min(cap, base * 2^attempt)`.
    /// Saturates at `cap` instead of overflowing.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        if self.base.is_zero() {
            return Duration::ZERO;
        }
        // `2^attempt` or the product overflowing means "more than any cap".
        2u32.checked_pow(attempt)
            .and_then(|factor| self.base.checked_mul(factor))
            .map_or(self.cap, |ceiling| ceiling.min(self.cap))
    }

    /// A random delay for attempt `attempt` (counting from 0), uniform in
    /// `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        if ceiling.is_zero() {
            return Duration::ZERO;
        }
        rand::rng().random_range(Duration::ZERO..=ceiling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let backoff = Backoff {
            base: ms(100),
            cap: ms(1000),
        };
        assert_eq!(backoff.ceiling(0), ms(100));
        assert_eq!(backoff.ceiling(1), ms(200));
        assert_eq!(backoff.ceiling(3), ms(800));
        assert_eq!(backoff.ceiling(4), ms(1000));
        assert_eq!(backoff.ceiling(20), ms(1000));
    }

    #[test]
    fn delay_stays_within_zero_and_the_ceiling() {
        let backoff = Backoff::default();
        for attempt in 0..64 {
            let ceiling = backoff.ceiling(attempt);
            for _ in 0..50 {
                let delay = backoff.delay(attempt);
                assert!(
                    delay <= ceiling,
                    "attempt {attempt}: {delay:?} > {ceiling:?}"
                );
                assert!(delay <= backoff.cap);
            }
        }
    }

    #[test]
    fn huge_attempts_saturate_instead_of_overflowing() {
        let backoff = Backoff {
            base: Duration::from_secs(u64::MAX / 2),
            cap: Duration::MAX,
        };
        for attempt in [31, 32, 33, 1000, u32::MAX] {
            assert_eq!(backoff.ceiling(attempt), Duration::MAX);
            let _ = backoff.delay(attempt);
        }
        assert_eq!(
            Backoff::default().ceiling(u32::MAX),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn zero_base_means_no_delay() {
        let backoff = Backoff {
            base: Duration::ZERO,
            cap: ms(100),
        };
        assert_eq!(backoff.delay(0), Duration::ZERO);
        assert_eq!(backoff.delay(u32::MAX), Duration::ZERO);
    }

    #[test]
    fn cap_below_base_wins() {
        let backoff = Backoff {
            base: ms(500),
            cap: ms(50),
        };
        assert_eq!(backoff.ceiling(0), ms(50));
        assert!(backoff.delay(0) <= ms(50));
    }

    #[test]
    fn delays_are_spread_over_the_whole_range() {
        // Full jitter: both ends of the range are reached. With 2,000 samples
        // the chance that none lands in a quarter of the range is ~(3/4)^2000.
        let backoff = Backoff {
            base: ms(100),
            cap: ms(100),
        };
        let samples: Vec<Duration> = (0..2000).map(|_| backoff.delay(5)).collect();
        assert!(samples.iter().any(|d| *d < ms(25)));
        assert!(samples.iter().any(|d| *d > ms(75)));
    }
}

//! Exponential backoff with optional jitter, for every reconnect and retry
//! loop: wait `min`, then `factor` times longer each time up to `max`,
//! back to `min` on [`Backoff::reset`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The delays of one retry loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// First delay, and the delay after a reset.
    min: Duration,
    /// Longest delay.
    max: Duration,
    /// How much longer each delay is than the one before.
    factor: u32,
    /// Each delay is spread by up to this fraction either way (0.2 is
    /// ±20 %), so that peers cut off together do not retry together.
    jitter: f64,
    /// The next delay before jitter.
    current: Duration,
    /// xorshift state for the jitter; plenty for spreading delays.
    rng: u64,
}

impl Backoff {
    /// Doubling from `min` up to `max`, no jitter. (A `max` below `min`
    /// caps every delay after the first.)
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            factor: 2,
            jitter: 0.0,
            current: min,
            rng: seed(),
        }
    }

    /// Spread each delay by up to `fraction` either way (clamped to 0..=1).
    pub fn with_jitter(mut self, fraction: f64) -> Backoff {
        self.jitter = fraction.clamp(0.0, 1.0);
        self
    }

    /// Grow each delay by `factor` (at least 1) instead of 2.
    pub fn with_factor(mut self, factor: u32) -> Backoff {
        self.factor = factor.max(1);
        self
    }

    /// The delay [`Backoff::next_delay`] will be based on (before jitter).
    pub fn current(&self) -> Duration {
        self.current
    }

    /// The delay to wait now (jitter applied); the following one grows.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = base.saturating_mul(self.factor).min(self.max);
        self.spread(base)
    }

    /// Start again from `min` (after a success).
    pub fn reset(&mut self) {
        self.current = self.min;
    }

    fn spread(&mut self, d: Duration) -> Duration {
        if self.jitter == 0.0 {
            return d;
        }
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        // A factor in [1 - jitter, 1 + jitter).
        let unit = (x % 1_000_000) as f64 / 1_000_000.0;
        d.mul_f64(1.0 - self.jitter + 2.0 * self.jitter * unit)
    }
}

/// A seed that differs between processes and between calls.
fn seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64);
    (nanos ^ u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn doubles_up_to_max_and_resets() {
        let mut b = Backoff::new(S(1), S(5));
        let got: Vec<Duration> = (0..5).map(|_| b.next_delay()).collect();
        assert_eq!(got, [S(1), S(2), S(4), S(5), S(5)]);
        b.reset();
        assert_eq!(b.current(), S(1));
        assert_eq!(b.next_delay(), S(1));
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let mut b = Backoff::new(S(10), S(10)).with_jitter(0.2);
        for _ in 0..1000 {
            let d = b.next_delay();
            assert!(d >= S(8) && d < S(12), "{d:?}");
        }
    }

    #[test]
    fn another_factor_and_a_max_below_min() {
        let mut b = Backoff::new(S(1), S(100)).with_factor(3);
        assert_eq!(
            [b.next_delay(), b.next_delay(), b.next_delay()],
            [S(1), S(3), S(9)]
        );
        let mut b = Backoff::new(S(5), S(1));
        assert_eq!([b.next_delay(), b.next_delay()], [S(5), S(1)]);
    }
}

//! Latency histogram and Prometheus text helpers, shared by the rule engine
//! and the function runtime.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

const BUCKETS: usize = 28;

/// A lock-free histogram of microseconds in powers of two (1 µs … ~134 s).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Count one observation of `us` microseconds.
    pub fn record(&self, us: u64) {
        let i = (64 - us.leading_zeros() as usize).min(BUCKETS - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The upper bound (µs) of the bucket holding quantile `q` (0..=1), or
    /// `None` before any observation.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(upper_us(i));
            }
        }
        Some(upper_us(BUCKETS - 1))
    }

    /// Write the histogram in Prometheus text format (seconds).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate().take(BUCKETS - 1) {
            cumulative += b.load(Ordering::Relaxed);
            let le = upper_us(i) as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.buckets[BUCKETS - 1].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// Bucket `i` holds values below 2^i µs (bucket 0: exactly 0).
fn upper_us(i: usize) -> u64 {
    1u64 << i
}

/// Escape a Prometheus label value.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_fall_in_the_right_bucket() {
        let h = Histogram::default();
        assert_eq!(h.quantile_us(0.5), None);
        for _ in 0..98 {
            h.record(3); // bucket [2, 4)
        }
        h.record(1000); // [512, 1024)
        h.record(5000); // [4096, 8192)
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile_us(0.5), Some(4));
        assert_eq!(h.quantile_us(0.99), Some(1024));
        assert_eq!(h.quantile_us(1.0), Some(8192));
        let mut s = String::new();
        h.render(&mut s, "x_seconds", "rule=\"r\"");
        assert!(
            s.contains("x_seconds_bucket{rule=\"r\",le=\"+Inf\"} 100"),
            "{s}"
        );
        assert!(s.contains("x_seconds_count{rule=\"r\"} 100"), "{s}");
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c"), "a\\\"b\\\\c");
    }
}

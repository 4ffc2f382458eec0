//! Tests of the histogram: bucket layout, the bench's quantiles, and the
//! node's Prometheus output against the power-of-two histogram it replaced.

use super::*;

/// The node's former histogram, bucket for bucket: what `render` and
/// `quantile_us` must keep producing.
struct PowerOfTwo {
    buckets: [u64; PROM_BUCKETS],
    sum_us: u64,
}

impl PowerOfTwo {
    fn new() -> Self {
        PowerOfTwo {
            buckets: [0; PROM_BUCKETS],
            sum_us: 0,
        }
    }

    fn record(&mut self, us: u64) {
        let i = (64 - us.leading_zeros() as usize).min(PROM_BUCKETS - 1);
        self.buckets[i] += 1;
        self.sum_us = self.sum_us.wrapping_add(us);
    }

    fn quantile_us(&self, q: f64) -> Option<u64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(upper_us(i));
            }
        }
        Some(upper_us(PROM_BUCKETS - 1))
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate().take(PROM_BUCKETS - 1) {
            cumulative += b;
            let le = upper_us(i) as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.buckets[PROM_BUCKETS - 1];
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_us as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

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
fn prometheus_output_is_the_power_of_two_histogram() {
    // Every power of two, its neighbours, the ends of the range, and a
    // spread of values in between.
    let mut values = vec![0, 1, u64::MAX, u64::MAX - 1];
    for e in 0..64 {
        let p = 1u64 << e;
        values.extend([p - 1, p, p + 1, p + p / 3]);
    }
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..10_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        values.push(x >> (x % 64));
    }
    let h = Histogram::default();
    let mut old = PowerOfTwo::new();
    for (n, &v) in values.iter().enumerate() {
        h.record(v);
        old.record(v);
        if n % 997 == 0 || n == values.len() - 1 {
            let (mut a, mut b) = (String::new(), String::new());
            h.render(&mut a, "verge_rule_latency_seconds", "rule=\"r\"");
            old.render(&mut b, "verge_rule_latency_seconds", "rule=\"r\"");
            assert_eq!(a, b, "after {} values", n + 1);
            for q in [0.0, 0.01, 0.5, 0.9, 0.99, 0.999, 1.0] {
                assert_eq!(h.quantile_us(q), old.quantile_us(q), "q{q} after {n}");
            }
        }
    }
}

#[test]
fn buckets_are_contiguous_and_ordered() {
    for i in 0..BUCKETS - 1 {
        assert!(lower(i) < lower(i + 1), "bucket {i}");
        assert_eq!(index(lower(i)), i);
        assert_eq!(index(lower(i + 1) - 1), i);
        assert!(coarse(i) <= coarse(i + 1));
    }
    assert_eq!(lower(BUCKETS), 1 << MAX_BITS);
    assert_eq!(index((1 << MAX_BITS) - 1), BUCKETS - 1);
    assert_eq!(index(1 << MAX_BITS), BUCKETS - 1);
    assert_eq!(index(u64::MAX), BUCKETS - 1);
    // Every power of two starts a bucket, so coarse buckets are exact sums.
    for e in 0..MAX_BITS {
        assert_eq!(lower(index(1 << e)), 1 << e, "2^{e}");
    }
}

#[test]
fn a_histogram_is_a_few_kib() {
    let bytes = BUCKETS * std::mem::size_of::<AtomicU64>() + std::mem::size_of::<Histogram>();
    assert!(bytes < 5 * 1024, "{bytes} bytes");
}

#[test]
fn quantiles_within_precision() {
    let mut h = Histogram::default();
    for v in 1..=100_000u64 {
        h.record_mut(v * 1000);
    }
    for (q, want) in [
        (0.5, 50_000_000.0),
        (0.99, 99_000_000.0),
        (0.999, 99_900_000.0),
    ] {
        let got = h.quantile(q) as f64;
        assert!((got - want).abs() / want < 0.04, "q{q}: {got} vs {want}");
    }
    assert_eq!(h.max(), 100_000_000);
    assert_eq!(h.quantile(1.0), 100_000_000);
    assert_eq!(h.count(), 100_000);
}

#[test]
fn small_values_exact_and_merge() {
    let mut a = Histogram::default();
    let mut b = Histogram::default();
    a.record_mut(3);
    b.record_mut(7);
    b.record(7);
    a.merge(&b);
    assert_eq!(a.count(), 3);
    assert_eq!(a.quantile(0.0), 3);
    assert_eq!(a.quantile(0.5), 7);
    assert_eq!(a.max(), 7);
    assert_eq!(Histogram::default().quantile(0.5), 0);
}

#[test]
fn values_past_the_range_keep_their_maximum() {
    let mut h = Histogram::default();
    h.record_mut(10);
    h.record_mut(1 << 50);
    assert_eq!(h.quantile(1.0), 1 << 50);
    assert_eq!(h.quantile(0.5), 10);
    assert_eq!(h.max(), 1 << 50);
}

#[test]
fn shared_recording_counts_every_sample() {
    let h = std::sync::Arc::new(Histogram::default());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let h = h.clone();
            std::thread::spawn(move || {
                for v in 0..10_000 {
                    h.record(v * (t + 1));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert_eq!(h.count(), 40_000);
    assert_eq!(h.max(), 9_999 * 4);
    let snapshot = (*h).clone();
    assert_eq!(snapshot.count(), 40_000);
    assert_eq!(snapshot.quantile(1.0), 9_999 * 4);
}

//! The workspace's one latency histogram: lock-free, log-linear (about 3%
//! relative precision), mergeable, and rendered for Prometheus in the
//! power-of-two microsecond buckets the node has always exported.
//!
//! Values are split by their highest set bit into groups of 16 linear
//! buckets, so a bucket is at most 1/16 of its lower bound wide and the
//! middle of a bucket is within ~3% of any value in it. Values below 16
//! are counted exactly; values from 2^40 on share the last bucket (18
//! minutes in nanoseconds, 12 days in microseconds). That makes 592
//! counters: 4.7 KiB per histogram. Every power of two is a bucket
//! boundary, so the coarse Prometheus buckets are sums of fine ones.
//!
//! The unit is the owner's: the node's parts record microseconds (what
//! [`Histogram::render`] and [`Histogram::quantile_us`] read), the bench
//! records nanoseconds. `hdrhistogram` would be the choice for
//! configurable precision or serialization; neither is needed.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Linear buckets per power of two: 2^SUB_BITS.
const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
/// Values below 2^MAX_BITS get a bucket of their own width; larger ones
/// are counted in the last bucket.
const MAX_BITS: u32 = 40;
/// Fine buckets: one group of exact values below `SUB`, then one group per
/// power of two from 2^SUB_BITS to 2^(MAX_BITS-1).
const BUCKETS: usize = ((MAX_BITS - SUB_BITS + 1) as usize) * SUB as usize;
/// Prometheus buckets: `le` = 2^i µs for i < 27, then `+Inf`.
const PROM_BUCKETS: usize = 28;

/// A histogram of `u64` samples; `record` takes `&self` (atomics, relaxed),
/// so one instance is shared by the tasks that observe.
pub struct Histogram {
    /// Count per fine bucket.
    counts: Box<[AtomicU64]>,
    /// Sum of the samples (wraps on overflow).
    sum: AtomicU64,
    /// Largest sample, exactly.
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }
}

impl Clone for Histogram {
    /// A snapshot: every counter read once.
    fn clone(&self) -> Self {
        Histogram {
            counts: self
                .counts
                .iter()
                .map(|c| AtomicU64::new(c.load(Ordering::Relaxed)))
                .collect(),
            sum: AtomicU64::new(self.sum.load(Ordering::Relaxed)),
            max: AtomicU64::new(self.max.load(Ordering::Relaxed)),
        }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count())
            .field("sum", &self.sum.load(Ordering::Relaxed))
            .field("max", &self.max())
            .finish()
    }
}

/// The fine bucket of `v`.
fn index(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS
    if e >= MAX_BITS {
        return BUCKETS - 1;
    }
    let m = v >> (e - SUB_BITS); // in [SUB, 2 * SUB)
    ((e - SUB_BITS + 1) as u64 * SUB + (m - SUB)) as usize
}

/// The smallest value that falls in fine bucket `i` (`lower(BUCKETS)` is
/// the end of the range).
fn lower(i: usize) -> u64 {
    let (g, s) = (i as u64 / SUB, i as u64 % SUB);
    if g == 0 { s } else { (SUB + s) << (g - 1) }
}

/// The Prometheus bucket that fine bucket `i` falls in: `i`'s values have
/// that many significant bits (0 for the value 0), the last one open.
fn coarse(i: usize) -> usize {
    ((64 - lower(i).leading_zeros()) as usize).min(PROM_BUCKETS - 1)
}

/// Prometheus bucket `i` holds values below 2^i µs (bucket 0: exactly 0).
fn upper_us(i: usize) -> u64 {
    1u64 << i
}

impl Histogram {
    /// Count one observation of `v` (from any thread).
    pub fn record(&self, v: u64) {
        self.counts[index(v)].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
        if v > self.max.load(Ordering::Relaxed) {
            self.max.fetch_max(v, Ordering::Relaxed);
        }
    }

    /// [`Histogram::record`] without atomic instructions, for a histogram
    /// one task owns (the bench's hot loops).
    pub fn record_mut(&mut self, v: u64) {
        *self.counts[index(v)].get_mut() += 1;
        let sum = self.sum.get_mut();
        *sum = sum.wrapping_add(v);
        let max = self.max.get_mut();
        *max = (*max).max(v);
    }

    /// Add another histogram's samples.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a.get_mut() += b.load(Ordering::Relaxed);
        }
        let sum = self.sum.get_mut();
        *sum = sum.wrapping_add(other.sum.load(Ordering::Relaxed));
        let max = self.max.get_mut();
        *max = (*max).max(other.max.load(Ordering::Relaxed));
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Largest observation (0 when empty).
    pub fn max(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    /// Every fine bucket's count, read once.
    fn counts(&self) -> Vec<u64> {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// The value at quantile `q` in `[0, 1]`: the middle of the fine
    /// bucket that holds it, capped at the maximum (0 when empty).
    pub fn quantile(&self, q: f64) -> u64 {
        let counts = self.counts();
        let total: u64 = counts.iter().sum();
        let max = self.max();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        if rank >= total {
            return max;
        }
        let mut seen = 0;
        for (i, &c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let (lo, hi) = (lower(i), lower(i + 1));
                return (lo + (hi - lo) / 2).min(max);
            }
        }
        max
    }

    /// The upper bound (µs) of the power-of-two bucket holding quantile `q`
    /// (0..=1), or `None` before any observation; what the node reports as
    /// p50/p99 beside its Prometheus buckets.
    pub fn quantile_us(&self, q: f64) -> Option<u64> {
        let counts = self.counts();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(upper_us(coarse(i)));
            }
        }
        Some(upper_us(PROM_BUCKETS - 1))
    }

    /// Write the histogram in Prometheus text format: values read as µs,
    /// written as seconds, in power-of-two buckets from 1 µs to ~67 s.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut buckets = [0u64; PROM_BUCKETS];
        for (i, c) in self.counts().into_iter().enumerate() {
            buckets[coarse(i)] += c;
        }
        let mut cumulative = 0;
        for (i, b) in buckets.iter().enumerate().take(PROM_BUCKETS - 1) {
            cumulative += b;
            let le = upper_us(i) as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        cumulative += buckets[PROM_BUCKETS - 1];
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
        let sum = self.sum.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

#[cfg(test)]
mod tests;

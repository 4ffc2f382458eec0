//! Per-function counters and call latency. Kept across versions: a new
//! version adds to the same counters.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use verge_metrics::Histogram;

use crate::message::{CallError, now_ms};

/// Counters of one function.
#[derive(Default)]
pub struct FunctionMetrics {
    invocations: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    outputs: AtomicU64,
    in_flight: AtomicU64,
    latency: Histogram,
    last_error: Mutex<Option<LastError>>,
}

/// The most recent failure.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LastError {
    /// When, ms since the Unix epoch.
    pub time_ms: i64,
    /// `CallError::code`.
    pub code: &'static str,
    /// What happened.
    pub message: String,
}

/// A copy of the counters for the API.
#[derive(Debug, Clone, Serialize)]
pub struct MetricsSnapshot {
    /// Calls started.
    pub invocations: u64,
    /// Calls that failed other than by timing out.
    pub errors: u64,
    /// Calls stopped for running too long (fuel or wall clock).
    pub timeouts: u64,
    /// Messages returned by successful calls.
    pub outputs: u64,
    /// Calls running now.
    pub in_flight: u64,
    /// Median call duration, µs (bucket upper bound), once there are calls.
    pub p50_us: Option<u64>,
    /// 99th percentile call duration, µs (bucket upper bound).
    pub p99_us: Option<u64>,
    /// The most recent failure.
    pub last_error: Option<LastError>,
}

// The registry records calls; without the `wasm` feature there is none.
#[cfg_attr(not(feature = "wasm"), allow(dead_code))]
impl FunctionMetrics {
    /// A call starts.
    pub(crate) fn start(&self) {
        self.invocations.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A call ended after `us` microseconds.
    pub(crate) fn finish(&self, us: u64, result: Result<usize, &CallError>) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.latency.record(us);
        match result {
            Ok(n) => {
                self.outputs.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                if e.is_timeout() {
                    self.timeouts.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                }
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(LastError {
                    time_ms: now_ms(),
                    code: e.code(),
                    message: e.to_string(),
                });
            }
        }
    }

    /// A started call that never ran (retried on a newer version).
    pub(crate) fn abandon(&self) {
        self.invocations.fetch_sub(1, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// A copy for the API.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            invocations: self.invocations.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            outputs: self.outputs.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            p50_us: self.latency.quantile_us(0.5),
            p99_us: self.latency.quantile_us(0.99),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// The latency histogram, for Prometheus.
    pub fn latency(&self) -> &Histogram {
        &self.latency
    }
}

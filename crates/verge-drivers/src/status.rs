//! What a driver reports about itself: per driver and per device state,
//! counters and read latency, for the node API and Prometheus.

use serde::Serialize;

/// One device's state.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DeviceStatus {
    /// Device name.
    pub name: String,
    /// `pending` (not read yet), `good` (last read answered) or `bad`.
    pub state: &'static str,
    /// Reads that answered.
    pub reads: u64,
    /// Reads that failed.
    pub errors: u64,
    /// Points read (good values) in total.
    pub points_read: u64,
    /// Points that failed on their own in the last read.
    pub bad_points: u64,
    /// Last read's duration, µs.
    pub last_latency_us: Option<u64>,
    /// When the last good read was, ms since the Unix epoch.
    pub last_ok_ms: Option<i64>,
    /// The last error.
    pub last_error: Option<String>,
}

/// One driver's state.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DriverStatus {
    /// Driver name.
    pub name: String,
    /// Protocol name.
    pub protocol: &'static str,
    /// Whether the connection is up.
    pub connected: bool,
    /// Connections made.
    pub connects: u64,
    /// The last connection or driver-wide error.
    pub last_error: Option<String>,
    /// Device reads that answered, all devices.
    pub reads: u64,
    /// Device reads that failed.
    pub errors: u64,
    /// Reads per second over the last 10 seconds.
    pub reads_per_sec: f64,
    /// Median read duration, µs (bucket bound).
    pub p50_us: Option<u64>,
    /// 99th percentile read duration, µs (bucket bound).
    pub p99_us: Option<u64>,
    /// Writes done and failed.
    pub writes: u64,
    /// See `writes`.
    pub write_errors: u64,
    /// Telemetry messages published.
    pub published: u64,
    /// Per device.
    pub devices: Vec<DeviceStatus>,
}

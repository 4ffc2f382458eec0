//! The store's data types: points in, samples, buckets and latest values
//! out.

use serde::ser::{Serialize, Serializer};

/// A stored value. Integers are stored as numbers (f64, exact up to
/// 2^53); non-finite numbers are refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A number.
    Number(f64),
    /// A boolean (kept as such; not a number for downsampling).
    Bool(bool),
    /// A string.
    Text(String),
    /// A JSON array or object, as its text.
    Json(String),
}

impl Value {
    /// The number, if this is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            _ => None,
        }
    }
}

impl Serialize for Value {
    /// Numbers, booleans and strings as themselves; JSON embedded as JSON.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Number(n) => s.serialize_f64(*n),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Text(t) => s.serialize_str(t),
            Value::Json(j) => match serde_json::from_str::<serde_json::Value>(j) {
                Ok(v) => v.serialize(s),
                Err(_) => s.serialize_str(j),
            },
        }
    }
}

/// One value of one metric of one device at one time, to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Device name (non-empty).
    pub device: String,
    /// Metric name (non-empty).
    pub metric: String,
    /// Time in ms since the Unix epoch (not negative).
    pub time_ms: i64,
    /// The value.
    pub value: Value,
}

/// One stored value of a series.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Sample {
    /// Time in ms since the Unix epoch.
    pub time_ms: i64,
    /// The value.
    pub value: Value,
}

/// The numbers of a series in one time bucket.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Bucket {
    /// Bucket start in ms since the Unix epoch (a multiple of the bucket
    /// width).
    pub start_ms: i64,
    /// Numbers in the bucket.
    pub count: u64,
    /// Their mean.
    pub avg: f64,
    /// Their minimum.
    pub min: f64,
    /// Their maximum.
    pub max: f64,
    /// Values in the bucket that are not numbers (booleans, strings, JSON);
    /// they are skipped. A bucket with no number is left out.
    pub non_numeric: u64,
}

/// The newest value of a series.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LatestValue {
    /// Device name.
    pub device: String,
    /// Metric name.
    pub metric: String,
    /// Time in ms since the Unix epoch.
    pub time_ms: i64,
    /// The value.
    pub value: Value,
}

/// A range query over one series; `from_ms` and `to_ms` are inclusive.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeQuery {
    /// Device name.
    pub device: String,
    /// Metric name.
    pub metric: String,
    /// First time, inclusive.
    pub from_ms: i64,
    /// Last time, inclusive.
    pub to_ms: i64,
    /// Most samples returned (earliest first); 0 means the default
    /// ([`DEFAULT_LIMIT`](crate::DEFAULT_LIMIT)); at most
    /// [`MAX_LIMIT`](crate::MAX_LIMIT). Not used by `downsample`.
    pub limit: usize,
}

/// The store's counters.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct TsdbStats {
    /// Series in the dictionary.
    pub series: u64,
    /// Points accepted since open.
    pub points_written: u64,
    /// Bytes on disk plus buffered (chunks and dictionary).
    pub disk_bytes: u64,
    /// Chunk files.
    pub chunks: u64,
    /// Chunks deleted because they passed the retention.
    pub chunks_expired: u64,
    /// Chunks deleted to stay under `max_bytes`.
    pub chunks_evicted: u64,
    /// Points refused at write: too old for the retention, too far in the
    /// future, over `max_series`, bad names or values.
    pub points_dropped: u64,
    /// Points deleted with expired or evicted chunks.
    pub points_deleted: u64,
    /// Bytes of torn or corrupt tails cut at open.
    pub torn_bytes_cut: u64,
    /// The last write or flush error, if any.
    pub last_error: Option<String>,
}

//! [`TsdbConfig`]: where the store lives and its bounds.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::TsdbError;
use crate::duration;

/// The store's configuration; every key has a default.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TsdbConfig {
    /// Directory of the chunk files and the series dictionary; created if
    /// missing. Must be set.
    pub dir: PathBuf,
    /// Time span of one chunk file (points are partitioned by their time).
    #[serde(with = "duration")]
    pub chunk: Duration,
    /// Chunks whose newest point is older than this are deleted.
    #[serde(with = "duration")]
    pub retention: Duration,
    /// Disk use bound in bytes; past it the oldest chunks are deleted.
    pub max_bytes: u64,
    /// How often buffered points are written to the files.
    #[serde(with = "duration")]
    pub flush_interval: Duration,
    /// Most series (device, metric pairs); points of further new series are
    /// dropped and counted.
    pub max_series: usize,
}

impl Default for TsdbConfig {
    fn default() -> Self {
        TsdbConfig {
            dir: PathBuf::new(),
            chunk: Duration::from_secs(3600),
            retention: Duration::from_secs(7 * 86_400),
            max_bytes: 256 << 20,
            flush_interval: Duration::from_secs(1),
            max_series: 100_000,
        }
    }
}

impl TsdbConfig {
    /// Check the values before anything is opened.
    pub fn validate(&self) -> Result<(), TsdbError> {
        let bad = |key, message: &str| {
            Err(TsdbError::Config {
                key,
                message: message.to_owned(),
            })
        };
        if self.dir.as_os_str().is_empty() {
            return bad("dir", "not set");
        }
        if self.chunk < Duration::from_secs(1) {
            return bad("chunk", "must be at least 1s");
        }
        if self.retention < self.chunk {
            return bad("retention", "must be at least one `chunk`");
        }
        if self.max_bytes < 1 << 20 {
            return bad("max_bytes", "must be at least 1048576 (1 MiB)");
        }
        if self.flush_interval.is_zero() || self.flush_interval > Duration::from_secs(60) {
            return bad("flush_interval", "must be between 1ms and 60s");
        }
        if self.max_series == 0 || self.max_series > u32::MAX as usize {
            return bad("max_series", "must be between 1 and 4294967295");
        }
        Ok(())
    }

    pub(crate) fn chunk_ms(&self) -> i64 {
        i64::try_from(self.chunk.as_millis()).unwrap_or(i64::MAX)
    }

    pub(crate) fn retention_ms(&self) -> i64 {
        i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX)
    }
}

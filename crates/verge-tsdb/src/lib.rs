//! Verge's local time-series store: telemetry points (device, metric, time,
//! value) written by the rule engine's `store` action, kept for a retention
//! period within a disk bound, and queried by range, downsampled into
//! buckets, or as the latest value of each series.
//!
//! # Design
//!
//! - **Chunks.** Points are partitioned by time into chunk files of one
//!   `chunk` span each (default 1h), `chunk-<start ms>.vts`. A chunk is an
//!   append-only sequence of checksummed records (`crc32 | length | series
//!   id | time | value`, see `record.rs`). Points may arrive out of order;
//!   each goes into the chunk of its own time.
//! - **Series dictionary.** `series.vts` maps (device, metric) to a dense
//!   u32 id, append-only with the same framing; it is always flushed before
//!   the chunks so a stored point's series is known after a crash.
//! - **Index.** For each chunk the store keeps in memory the record offsets
//!   of every series (4 bytes per point, rebuilt at open by scanning), so a
//!   query for one series reads only that series' records (one read of the
//!   span they cover, or one read per record when the span is large), never
//!   the whole chunk. The newest value per series is kept in memory too.
//! - **Writes** are encoded into per-chunk buffers and appended with
//!   `write(2)` every `flush_interval` (default 1s) by a background thread,
//!   when 1 MiB is buffered, and on [`Tsdb::close`]. There is no `fsync`:
//!   this is local telemetry, not the cache queue. **A crash of the process
//!   loses at most the last flush interval of points**; a power loss can
//!   also lose what the OS had not written back. Queries see buffered
//!   points.
//! - **Recovery.** At open every file is scanned; a record that ends early
//!   or fails its checksum ends the file, which is cut there (counted in
//!   `torn_bytes_cut`).
//! - **Bounds.** Chunks whose newest point is older than `retention`
//!   (default 7d) are deleted (`chunks_expired`); while the files and
//!   buffers pass `max_bytes` (default 256 MiB) the oldest chunks are
//!   deleted (`chunks_evicted`); points they held count in
//!   `points_deleted`. Points older than the retention, more than a day
//!   ahead of the clock, of a new series past `max_series` (default 100k),
//!   with empty or over-long (1 KiB) names, non-finite numbers or values
//!   over 64 KiB are refused and counted in `points_dropped`. Queries
//!   return at most [`MAX_LIMIT`] samples and [`MAX_BUCKETS`] buckets.
//!   Memory is about 4 bytes per stored point for the index plus the
//!   dictionary and the write buffers (at most 8 MiB; past it writes fail
//!   with [`TsdbError::Backlog`] until a flush succeeds).
//! - **Values** are numbers (f64; integers are stored as numbers, exact up
//!   to 2^53), booleans, strings and JSON text. Downsampling covers numbers
//!   only: other values in a bucket are skipped and counted in the bucket's
//!   `non_numeric`, and a bucket without numbers is left out.
//!
//! Rejected alternatives: an embedded storage engine (sled, redb, RocksDB)
//! brings a large dependency and write amplification for data that is
//! append-only and deleted a whole time partition at a time; one file per
//! series makes deleting old data and bounding disk use per file and
//! needs many open files. The series dictionary is not compacted: series
//! whose points have all expired keep their id (and count toward
//! `max_series`) until the directory is removed.
//!
//! One process owns a directory at a time.

mod chunk;
mod config;
mod dict;
pub use verge_duration as duration;
mod error;
mod record;
mod store;
mod value;

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

pub use config::TsdbConfig;
pub use error::TsdbError;
pub use value::{Bucket, LatestValue, Point, RangeQuery, Sample, TsdbStats, Value};

use store::Inner;

/// Samples a range query returns when it sets no limit.
pub const DEFAULT_LIMIT: usize = 10_000;
/// Most samples a range query may ask for.
pub const MAX_LIMIT: usize = 100_000;
/// Most buckets a downsampled query may span.
pub const MAX_BUCKETS: usize = 10_000;

/// The store. Cheap to share behind an `Arc`; every method takes an
/// internal lock and is synchronous (writes only touch memory unless a
/// buffer is full; queries read files, so async callers should use
/// `spawn_blocking` for them).
pub struct Tsdb {
    inner: Arc<Mutex<Inner>>,
    /// The retention it was opened with.
    configured_retention: std::time::Duration,
    flusher: Mutex<Option<(mpsc::Sender<()>, JoinHandle<()>)>>,
}

impl Tsdb {
    /// Open (or create) the store in `cfg.dir` and start its flusher.
    pub fn open(cfg: TsdbConfig) -> Result<Tsdb, TsdbError> {
        let interval = cfg.flush_interval;
        let configured_retention = cfg.retention;
        let inner = Arc::new(Mutex::new(Inner::open(cfg, now_ms())?));
        let (tx, rx) = mpsc::channel::<()>();
        let shared = inner.clone();
        let handle = std::thread::Builder::new()
            .name("verge-tsdb-flush".into())
            .spawn(move || {
                // A message or a dropped sender means close.
                while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(interval) {
                    let mut g = lock(&shared);
                    let _ = g.flush();
                    g.expire(now_ms());
                }
            })
            .map_err(|e| TsdbError::io("spawn flusher for", "", e))?;
        Ok(Tsdb {
            inner,
            configured_retention,
            flusher: Mutex::new(Some((tx, handle))),
        })
    }

    /// Buffer points (flushed within `flush_interval`). Points the store
    /// refuses are dropped and counted, not errors; an error means nothing
    /// more can be buffered now (closed, or flushing keeps failing).
    pub fn write(&self, points: &[Point]) -> Result<(), TsdbError> {
        lock(&self.inner).write(points, now_ms())
    }

    /// Samples of one series in `[from_ms, to_ms]`, earliest first.
    pub fn range(&self, q: &RangeQuery) -> Result<Vec<Sample>, TsdbError> {
        lock(&self.inner).range(q)
    }

    /// Numbers of one series in `[from_ms, to_ms]` in buckets of
    /// `bucket_ms` aligned to multiples of it; buckets without numbers are
    /// left out. `q.limit` is not used.
    pub fn downsample(&self, q: &RangeQuery, bucket_ms: i64) -> Result<Vec<Bucket>, TsdbError> {
        lock(&self.inner).downsample(q, bucket_ms)
    }

    /// The newest value of every series, or of one device's series, sorted
    /// by device and metric.
    pub fn latest(&self, device: Option<&str>) -> Vec<LatestValue> {
        lock(&self.inner).latest(device)
    }

    /// Every (device, metric) series, sorted.
    pub fn series(&self) -> Vec<(String, String)> {
        lock(&self.inner).series()
    }

    /// The counters.
    pub fn stats(&self) -> TsdbStats {
        lock(&self.inner).stats()
    }

    /// Write the buffers now.
    pub fn flush(&self) -> Result<(), TsdbError> {
        lock(&self.inner).flush()
    }

    /// Change how long points are kept, at run time (at least one
    /// `chunk`); chunks past it go at the flusher's next pass.
    pub fn set_retention(&self, retention: std::time::Duration) -> Result<(), TsdbError> {
        lock(&self.inner).set_retention(retention)
    }

    /// The retention of its config (before any [`set_retention`](Self::set_retention)).
    pub fn configured_retention(&self) -> std::time::Duration {
        self.configured_retention
    }

    /// How long points are kept now.
    pub fn retention(&self) -> std::time::Duration {
        lock(&self.inner).retention()
    }

    /// Apply the retention as of `now_ms` (the flusher does this every
    /// `flush_interval` with the clock).
    pub fn expire(&self, now_ms: i64) {
        lock(&self.inner).expire(now_ms);
    }

    /// Stop the flusher and write the buffers; later writes fail with
    /// [`TsdbError::Closed`]. Idempotent; also done on drop.
    pub fn close(&self) {
        let flusher = self
            .flusher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((tx, handle)) = flusher {
            drop(tx);
            let _ = handle.join();
        }
        let mut g = lock(&self.inner);
        if !g.closed {
            let _ = g.flush();
            g.closed = true;
        }
    }
}

impl Drop for Tsdb {
    fn drop(&mut self) {
        self.close();
    }
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The wall clock in ms since the Unix epoch (the workspace's one clock,
/// re-exported for the store's callers).
pub(crate) use verge_net::now_ms;

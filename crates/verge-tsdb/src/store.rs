//! The store's state behind the lock: the dictionary, the chunks, the
//! latest values and the counters, and the operations on them.

use std::collections::{BTreeMap, HashMap};

use tracing::{debug, warn};

use crate::chunk::{self, Chunk};
use crate::config::TsdbConfig;
use crate::dict::{self, Dict};
use crate::value::{Bucket, LatestValue, Point, RangeQuery, Sample, TsdbStats, Value};
use crate::{DEFAULT_LIMIT, MAX_BUCKETS, MAX_LIMIT, TsdbError};

/// Buffered bytes that trigger a flush inside `write`.
const FLUSH_AT: usize = 1 << 20;
/// Buffered bytes past which writes are refused (flushing keeps failing).
const MAX_BUFFER: usize = 8 << 20;
/// How far ahead of the clock a point's time may be.
const MAX_AHEAD_MS: i64 = 86_400_000;

/// Everything behind the store's lock.
pub struct Inner {
    cfg: TsdbConfig,
    dict: Dict,
    chunks: BTreeMap<i64, Chunk>,
    latest: HashMap<u32, (i64, Value)>,
    stats: TsdbStats,
    pub(crate) closed: bool,
}

impl Inner {
    /// Load the directory: dictionary, chunks (cutting torn tails), latest
    /// values; then apply retention and the disk bound as of `now`.
    pub fn open(cfg: TsdbConfig, now: i64) -> Result<Inner, TsdbError> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.dir).map_err(|e| TsdbError::io("create", &cfg.dir, e))?;
        let (dict, mut cut) = Dict::open(&cfg.dir)?;
        let mut starts = Vec::new();
        let entries =
            std::fs::read_dir(&cfg.dir).map_err(|e| TsdbError::io("list", &cfg.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| TsdbError::io("list", &cfg.dir, e))?;
            if let Some(start) = entry.file_name().to_str().and_then(chunk::parse_name) {
                starts.push(start);
            }
        }
        starts.sort_unstable();
        let known = dict.names.len();
        let mut latest: HashMap<u32, (i64, Value)> = HashMap::new();
        let mut chunks = BTreeMap::new();
        for start in starts {
            let (c, torn) = Chunk::open(
                &cfg.dir,
                start,
                |s| (s as usize) < known,
                |s, t, v| match latest.get(&s) {
                    Some((lt, _)) if *lt > t => {}
                    _ => {
                        latest.insert(s, (t, v));
                    }
                },
            )?;
            if torn > 0 {
                warn!(file = %c.path.display(), bytes = torn, "cut a torn tail");
            }
            cut += torn;
            chunks.insert(start, c);
        }
        let mut inner = Inner {
            cfg,
            dict,
            chunks,
            latest,
            stats: TsdbStats {
                torn_bytes_cut: cut,
                ..TsdbStats::default()
            },
            closed: false,
        };
        inner.expire(now);
        inner.evict();
        Ok(inner)
    }

    fn buffered(&self) -> usize {
        self.chunks.values().map(|c| c.buf.len()).sum()
    }

    fn disk_bytes(&self) -> u64 {
        self.dict.bytes() + self.chunks.values().map(Chunk::bytes).sum::<u64>()
    }

    /// Buffer points; refused ones are counted in `points_dropped`.
    pub fn write(&mut self, points: &[Point], now: i64) -> Result<(), TsdbError> {
        if self.closed {
            return Err(TsdbError::Closed);
        }
        if self.buffered() > MAX_BUFFER {
            let _ = self.flush();
            let b = self.buffered();
            if b > MAX_BUFFER {
                return Err(TsdbError::Backlog(b));
            }
        }
        let oldest = now.saturating_sub(self.cfg.retention_ms());
        let newest = now.saturating_add(MAX_AHEAD_MS);
        let chunk_ms = self.cfg.chunk_ms();
        for p in points {
            let ok_names = !p.device.is_empty()
                && !p.metric.is_empty()
                && p.device.len() <= dict::MAX_NAME
                && p.metric.len() <= dict::MAX_NAME;
            let ok_value = match &p.value {
                Value::Number(n) => n.is_finite(),
                v => crate::record::point_size(v).is_some(),
            };
            let t = p.time_ms;
            if !ok_names || !ok_value || t < 0 || t < oldest || t > newest {
                self.stats.points_dropped += 1;
                continue;
            }
            let Some(series) = self
                .dict
                .get_or_add(&p.device, &p.metric, self.cfg.max_series)
            else {
                self.stats.points_dropped += 1;
                continue;
            };
            let start = t - t.rem_euclid(chunk_ms);
            let dir = &self.cfg.dir;
            let c = self
                .chunks
                .entry(start)
                .or_insert_with(|| Chunk::new(dir, start));
            if !c.append(series, t, &p.value) {
                self.stats.points_dropped += 1;
                continue;
            }
            self.stats.points_written += 1;
            match self.latest.get(&series) {
                Some((lt, _)) if *lt > t => {}
                _ => {
                    self.latest.insert(series, (t, p.value.clone()));
                }
            }
        }
        if self.buffered() >= FLUSH_AT {
            // The points are buffered either way; a failure is recorded in
            // `last_error` and retried by the flusher.
            let _ = self.flush();
        }
        self.evict();
        Ok(())
    }

    /// Write the buffers: dictionary first, then the chunks.
    pub fn flush(&mut self) -> Result<(), TsdbError> {
        let mut result = self.dict.flush();
        if result.is_ok() {
            for c in self.chunks.values_mut() {
                if let Err(e) = c.flush() {
                    result = Err(e);
                    break;
                }
            }
        }
        if let Err(e) = &result {
            warn!("flush failed: {e}");
            self.stats.last_error = Some(e.to_string());
        }
        result
    }

    /// Delete chunks whose newest point is older than the retention.
    /// Change the retention (checked as the config checks it); the next
    /// [`expire`](Self::expire) applies it.
    pub fn set_retention(&mut self, retention: std::time::Duration) -> Result<(), TsdbError> {
        let mut cfg = self.cfg.clone();
        cfg.retention = retention;
        cfg.validate()?;
        self.cfg = cfg;
        Ok(())
    }

    /// The retention in force.
    pub fn retention(&self) -> std::time::Duration {
        self.cfg.retention
    }

    pub fn expire(&mut self, now: i64) {
        let cutoff = now.saturating_sub(self.cfg.retention_ms());
        let old: Vec<i64> = self
            .chunks
            .values()
            .filter(|c| c.max_t < cutoff)
            .map(|c| c.start)
            .collect();
        for start in old {
            self.remove(start);
            self.stats.chunks_expired += 1;
        }
    }

    /// Delete the oldest chunks while the disk use is over `max_bytes`.
    fn evict(&mut self) {
        while self.disk_bytes() > self.cfg.max_bytes {
            let Some(&start) = self.chunks.keys().next() else {
                break;
            };
            self.remove(start);
            self.stats.chunks_evicted += 1;
        }
    }

    fn remove(&mut self, start: i64) {
        let Some(c) = self.chunks.remove(&start) else {
            return;
        };
        debug!(file = %c.path.display(), points = c.points, "deleting chunk");
        if let Err(e) = c.delete() {
            warn!("{e}");
            self.stats.last_error = Some(e.to_string());
        }
        self.stats.points_deleted += c.points;
        for s in c.index.keys() {
            if let Some((t, _)) = self.latest.get(s)
                && *t >= c.min_t
                && *t <= c.max_t
            {
                self.latest.remove(s);
            }
        }
    }

    /// Chunks that may hold points in `[from, to]`, oldest first.
    fn overlapping(&self, from: i64, to: i64) -> impl Iterator<Item = &Chunk> {
        self.chunks
            .values()
            .filter(move |c| c.points > 0 && c.max_t >= from && c.min_t <= to)
    }

    /// Raw samples, earliest first, at most the query's limit.
    pub fn range(&self, q: &RangeQuery) -> Result<Vec<Sample>, TsdbError> {
        check_range(q)?;
        let limit = match q.limit {
            0 => DEFAULT_LIMIT,
            n if n > MAX_LIMIT => {
                return Err(TsdbError::query(
                    "limit",
                    format!("{n} is over the maximum of {MAX_LIMIT}"),
                ));
            }
            n => n,
        };
        let Some(series) = self.dict.get(&q.device, &q.metric) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<Sample> = Vec::new();
        for c in self.overlapping(q.from_ms, q.to_ms) {
            // Chunks are sorted by start; stop once enough samples are in
            // and this chunk holds none earlier than the last one kept.
            if out.len() >= limit && out.get(limit - 1).is_some_and(|s| s.time_ms < c.min_t) {
                break;
            }
            let before = out.len();
            c.read(series, q.from_ms, q.to_ms, &mut out)?;
            out[before..].sort_by_key(|s| s.time_ms);
        }
        out.sort_by_key(|s| s.time_ms);
        out.truncate(limit);
        Ok(out)
    }

    /// Per-bucket count, mean, minimum and maximum of the numbers.
    pub fn downsample(&self, q: &RangeQuery, bucket_ms: i64) -> Result<Vec<Bucket>, TsdbError> {
        check_range(q)?;
        if bucket_ms <= 0 {
            return Err(TsdbError::query("bucket", "must be at least 1ms"));
        }
        let first = q.from_ms.div_euclid(bucket_ms);
        let n = q.to_ms.div_euclid(bucket_ms) - first + 1;
        if n > MAX_BUCKETS as i64 {
            return Err(TsdbError::query(
                "bucket",
                format!(
                    "the range holds {n} buckets, more than the maximum of {MAX_BUCKETS}; \
                     use a wider bucket or a shorter range"
                ),
            ));
        }
        let Some(series) = self.dict.get(&q.device, &q.metric) else {
            return Ok(Vec::new());
        };
        let mut acc: Vec<Bucket> = (0..n)
            .map(|i| Bucket {
                start_ms: (first + i) * bucket_ms,
                count: 0,
                avg: 0.0,
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
                non_numeric: 0,
            })
            .collect();
        let mut samples = Vec::new();
        for c in self.overlapping(q.from_ms, q.to_ms) {
            samples.clear();
            c.read(series, q.from_ms, q.to_ms, &mut samples)?;
            for s in &samples {
                let i = (s.time_ms.div_euclid(bucket_ms) - first) as usize;
                let Some(b) = acc.get_mut(i) else { continue };
                match s.value.as_f64() {
                    Some(v) => {
                        b.count += 1;
                        b.avg += v; // the sum until the end
                        b.min = b.min.min(v);
                        b.max = b.max.max(v);
                    }
                    None => b.non_numeric += 1,
                }
            }
        }
        Ok(acc
            .into_iter()
            .filter(|b| b.count > 0)
            .map(|mut b| {
                b.avg /= b.count as f64;
                b
            })
            .collect())
    }

    /// The newest value of every series (of one device), sorted.
    pub fn latest(&self, device: Option<&str>) -> Vec<LatestValue> {
        let mut out: Vec<LatestValue> = self
            .latest
            .iter()
            .filter_map(|(s, (t, v))| {
                let (d, m) = self.dict.names.get(*s as usize)?;
                if device.is_some_and(|want| want != &**d) {
                    return None;
                }
                Some(LatestValue {
                    device: d.to_string(),
                    metric: m.to_string(),
                    time_ms: *t,
                    value: v.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.device, &a.metric).cmp(&(&b.device, &b.metric)));
        out
    }

    /// Every known series, sorted.
    pub fn series(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .dict
            .names
            .iter()
            .map(|(d, m)| (d.to_string(), m.to_string()))
            .collect();
        out.sort();
        out
    }

    /// The counters now.
    pub fn stats(&self) -> TsdbStats {
        TsdbStats {
            series: self.dict.names.len() as u64,
            disk_bytes: self.disk_bytes(),
            chunks: self.chunks.len() as u64,
            ..self.stats.clone()
        }
    }
}

fn check_range(q: &RangeQuery) -> Result<(), TsdbError> {
    if q.device.is_empty() {
        return Err(TsdbError::query("device", "is empty"));
    }
    if q.metric.is_empty() {
        return Err(TsdbError::query("metric", "is empty"));
    }
    if q.from_ms > q.to_ms {
        return Err(TsdbError::query(
            "from",
            format!("{} is after `to` ({})", q.from_ms, q.to_ms),
        ));
    }
    Ok(())
}

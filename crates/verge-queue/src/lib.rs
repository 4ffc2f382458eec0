//! Verge's cache queue: a crash-safe, segmented, append-only log in
//! priority lanes, with group commit, an acked-up-to cursor per lane, limits
//! and counters for everything dropped. It is the node's store-and-forward
//! buffer to the cloud: a record whose `append` returned is never lost to a
//! process crash (any policy) or a power loss (`always`, `group`).
//!
//! # On disk
//!
//! ```text
//! <dir>/id                         16 hex chars, made with the directory
//! <dir>/lock                       held (flock) while a process has the queue open
//! <dir>/<lane>/cursor              "VQC1" acked_upto:u64 next_seq:u64 crc32:u32 (LE)
//! <dir>/<lane>/00000000000000000001.seg   segment named by its first seq
//! ```
//!
//! A segment is a run of records with consecutive seqs, each
//! `[len u32][crc32 u32][seq u64][time_ms i64][topic_len u16][topic][payload]`
//! (little-endian; `len` counts the bytes after the crc, the crc covers
//! them). Seqs start at 1 per lane; `acked_upto` is inclusive (0 = nothing).
//!
//! * **Segments.** A lane rolls to a new segment when the next record would
//!   make the current one larger than `min(segment_bytes, max_bytes / 4)`;
//!   each open starts a new segment. Because a lane's disk use (its segment
//!   files, including acked records not yet deleted) is kept at or below
//!   `max_bytes`, a lane holds between about 3/4 of `max_bytes` and
//!   `max_bytes` of unacked records when full.
//! * **Cursor.** Written atomically (temp file, fsync, rename, fsync of the
//!   directory) at most every 100 ms when it moved, at close, and always
//!   before a segment is deleted, so deleted seqs are never reused. After a
//!   crash a few acked records may be handed out again (the cloud
//!   de-duplicates by message id `<id>/<lane>/<seq>`); an unacked one is
//!   never lost.
//! * **Recovery.** Every segment is scanned (checksums, consecutive seqs) to
//!   count the backlog. In the newest segment the first record that runs
//!   past the end of the file or fails its checksum ends the log: the file
//!   is truncated there (logged at warn, reported in
//!   [`LaneRecovery::truncated_bytes`]). A bad record in an older, sealed
//!   segment is reported (`corrupt`, `unreadable_bytes`, logged at error)
//!   and the rest of that segment is skipped; later segments are replayed
//!   (stopping the whole lane there would block it forever). `next_seq` is
//!   the largest of the cursor's, the last valid record's + 1 and the newest
//!   segment's name.
//!
//! # Writing
//!
//! One std thread per queue owns the files (fsync blocks; it also makes the
//! queue usable from sync code). `append` sends its records over a channel
//! and awaits a oneshot. The writer takes everything pending, writes each
//! lane's share with one `write`, syncs per [`SyncPolicy`], then makes the
//! records visible to readers (never before they are durable per the policy)
//! and answers. Under `group` everything that arrived while the previous
//! fdatasync ran shares the next one, so the sync rate adapts to the disk;
//! `group_commit` bounds how long the writer keeps gathering when appends
//! keep streaming in. (Rejected alternative: at most one sync per
//! `group_commit`. With 64 appenders and 5 ms that caps the queue at 12,800
//! appends/s while the disk idles.) Under `always` each append call gets
//! its own fdatasync. The channel holds at most `max_pending_appends` calls:
//! an append takes a permit before it sends and the writer returns it when
//! it takes the call off the channel, so an append beyond the bound waits
//! (backpressure, counted in `writer_waits` and `writer_wait_ms`) rather
//! than being dropped or growing memory while a slow fdatasync runs.
//! (Rejected alternative: a std `sync_channel`, whose blocking send would
//! stall the async appender's runtime thread.)
//!
//! # Reading
//!
//! `next_batch` reads the files with buffered positional reads (256 KiB at a
//! time) under the lane's mutex, never past the durable length, so a backlog
//! larger than memory drains at disk speed. Handed-out entries are kept in
//! a per-lane in-flight map (their position and size) until acked; its size
//! is bounded by what the consumer takes without acking (the bridge's
//! window).
//!
//! Rejected alternatives: an embedded database (sled, rocksdb) — heavier than
//! the whole node and with its own recovery semantics; one file per lane
//! truncated from the front — not portable and needs compaction.

mod config;
pub use verge_duration as duration;
mod lane;
mod record;
mod recover;
mod writer;

use std::fs::{self, File};
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::{Notify, Semaphore, oneshot};

pub use config::{LaneConfig, QueueConfig, SyncPolicy, WhenFull};
pub use record::{MAX_RECORD, Record};

use lane::Lane;
use writer::{Cmd, Writer};

/// A record handed out by [`Queue::next_batch`].
#[derive(Clone, Debug)]
pub struct Entry {
    /// Index of its lane in the config.
    pub lane: usize,
    /// Its seq in the lane.
    pub seq: u64,
    /// The record.
    pub record: Record,
}

/// What [`Queue::open`] found.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Recovery {
    /// Per lane, in config order.
    pub lanes: Vec<LaneRecovery>,
}

/// What recovery found in one lane.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LaneRecovery {
    /// The lane.
    pub name: String,
    /// Unacked records recovered.
    pub records: u64,
    /// Bytes of a torn or corrupt tail cut off the newest segment.
    pub truncated_bytes: u64,
    /// A record failed its checksum (not just a torn tail).
    pub corrupt: bool,
    /// Bytes skipped after a corrupt record in an older segment.
    pub unreadable_bytes: u64,
}

/// Counters of one lane.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LaneStats {
    /// The lane.
    pub name: String,
    /// Higher drains first.
    pub priority: u8,
    /// Unacked records.
    pub depth: u64,
    /// Their bytes (frames).
    pub bytes: u64,
    /// Age of the oldest unacked record (when it was not handed out in this
    /// process: of the first record of its segment, so an upper bound).
    pub oldest_age_ms: Option<u64>,
    /// Records appended since open.
    pub appended: u64,
    /// Records acked since open.
    pub acked: u64,
    /// Records dropped by `drop_oldest` since open.
    pub dropped_full: u64,
    /// Records dropped for being older than `max_age` since open.
    pub dropped_ttl: u64,
    /// Records refused by `reject` since open.
    pub rejected: u64,
    /// Seq the next append gets.
    pub next_seq: u64,
    /// Every seq at or below is acked or dropped.
    pub acked_upto: u64,
    /// Bytes of the lane's segment files.
    pub disk_bytes: u64,
}

/// Counters of the queue.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct QueueStats {
    /// Per lane, in config order.
    pub lanes: Vec<LaneStats>,
    /// Sum of the lanes' depths.
    pub depth: u64,
    /// Sum of the lanes' unacked bytes.
    pub bytes: u64,
    /// Sums of the lanes' counters.
    pub appended: u64,
    /// Acked.
    pub acked: u64,
    /// Dropped by `drop_oldest`.
    pub dropped_full: u64,
    /// Dropped for age.
    pub dropped_ttl: u64,
    /// Refused by `reject`.
    pub rejected: u64,
    /// Bytes of all segment files.
    pub disk_bytes: u64,
    /// Appends that waited for room in the writer's channel
    /// (`max_pending_appends`).
    pub writer_waits: u64,
    /// Milliseconds they waited in all.
    pub writer_wait_ms: u64,
}

/// Errors of the queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The config is invalid (the message names the key).
    #[error("invalid config: {0}")]
    Config(String),
    /// No lane of that name.
    #[error("unknown lane `{0}`")]
    UnknownLane(String),
    /// The lane is full and its policy is `reject`; nothing was appended.
    #[error("lane `{lane}` is full")]
    Full {
        /// The lane.
        lane: String,
    },
    /// A record (or one call's records) can never fit.
    #[error("record of {size} bytes is larger than the limit of {limit}")]
    TooLarge {
        /// Its frame size.
        size: u64,
        /// The limit it broke.
        limit: u64,
    },
    /// The queue was closed.
    #[error("queue is closed")]
    Closed,
    /// Another process has the directory open.
    #[error("queue directory {0} is in use by another process")]
    Locked(String),
    /// An I/O error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// An earlier I/O error stopped the writer; reopen the queue.
    #[error("queue stopped after an i/o error: {0}")]
    Failed(String),
}

/// `map_err` helper for I/O errors with context.
pub(crate) fn io_err(context: String) -> impl FnOnce(std::io::Error) -> QueueError {
    move |source| QueueError::Io { context, source }
}

/// State shared by the handles and the writer thread.
pub(crate) struct Shared {
    /// The validated config.
    pub cfg: QueueConfig,
    /// One mutex per lane.
    pub lanes: Vec<Mutex<Lane>>,
    /// Woken when records become readable, on rewind and on close.
    pub notify: Notify,
    /// Set by close.
    pub closed: AtomicBool,
}

/// The node's cache queue; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    /// Shared by the clones.
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    id: String,
    /// Lane indexes, highest priority first.
    order: Vec<usize>,
    tx: mpsc::Sender<Cmd>,
    /// Room in the channel to the writer: one permit per pending append.
    room: Arc<Semaphore>,
    /// Appends that waited for room.
    waits: AtomicU64,
    /// Microseconds they waited.
    waited_us: AtomicU64,
    /// The directory lock, released at close.
    lock: Mutex<Option<File>>,
    /// The writer thread.
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let (tx, _rx) = oneshot::channel();
        let _ = self.tx.send(Cmd::Close(tx));
        if let Some(t) = take(&self.thread) {
            let _ = t.join();
        }
    }
}

fn take<T>(m: &Mutex<Option<T>>) -> Option<T> {
    m.lock().unwrap_or_else(|p| p.into_inner()).take()
}

/// Milliseconds since the Unix epoch (re-exported for the queue's
/// callers).
pub(crate) use verge_net::now_ms;

/// Read `<dir>/id` or create it: 16 hex chars from a randomly keyed hash of
/// the time, the pid and the path.
fn queue_id(dir: &Path) -> Result<String, QueueError> {
    let path = dir.join("id");
    match fs::read_to_string(&path) {
        Ok(s) if s.trim().len() == 16 && s.trim().bytes().all(|b| b.is_ascii_hexdigit()) => {
            return Ok(s.trim().to_owned());
        }
        Ok(_) => tracing::warn!("{} is malformed, making a new id", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.write(dir.as_os_str().as_encoded_bytes());
    let id = format!("{:016x}", h.finish());
    let tmp = dir.join("id.tmp");
    fs::write(&tmp, format!("{id}\n"))
        .and_then(|()| File::open(&tmp)?.sync_all())
        .and_then(|()| fs::rename(&tmp, &path))
        .and_then(|()| recover::sync_dir(dir))
        .map_err(io_err(format!("writing {}", path.display())))?;
    Ok(id)
}

impl Queue {
    /// Validate `cfg`, create the directory and recover every lane. Works
    /// with or without a tokio runtime (the writer is a std thread).
    pub fn open(cfg: QueueConfig) -> Result<(Queue, Recovery), QueueError> {
        cfg.validate()?;
        fs::create_dir_all(&cfg.dir).map_err(io_err(format!("creating {}", cfg.dir.display())))?;
        let lock_path = cfg.dir.join("lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(format!("opening {}", lock_path.display())))?;
        if lock.try_lock().is_err() {
            return Err(QueueError::Locked(cfg.dir.display().to_string()));
        }
        let id = queue_id(&cfg.dir)?;
        let mut lanes = Vec::with_capacity(cfg.lanes.len());
        let mut recovery = Recovery::default();
        for i in 0..cfg.lanes.len() {
            let (lane, rec) = recover::open_lane(&cfg, i)?;
            if rec.records > 0 || rec.truncated_bytes > 0 || rec.corrupt {
                tracing::info!(lane = %rec.name, records = rec.records, truncated_bytes = rec.truncated_bytes,
                    corrupt = rec.corrupt, "queue lane recovered");
            }
            lanes.push(Mutex::new(lane));
            recovery.lanes.push(rec);
        }
        let mut order: Vec<usize> = (0..cfg.lanes.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(cfg.lanes[i].priority));
        let shared = Arc::new(Shared {
            cfg,
            lanes,
            notify: Notify::new(),
            closed: AtomicBool::new(false),
        });
        let room = Arc::new(Semaphore::new(shared.cfg.max_pending_appends));
        let (tx, rx) = mpsc::channel();
        let writer = Writer::new(Arc::clone(&shared), rx);
        let thread = std::thread::Builder::new()
            .name("verge-queue".into())
            .spawn(move || writer.run())
            .map_err(io_err("starting the queue writer".into()))?;
        let inner = Inner {
            shared,
            id,
            order,
            tx,
            room,
            waits: AtomicU64::new(0),
            waited_us: AtomicU64::new(0),
            lock: Mutex::new(Some(lock)),
            thread: Mutex::new(Some(thread)),
        };
        Ok((
            Queue {
                inner: Arc::new(inner),
            },
            recovery,
        ))
    }

    fn lane(&self, i: usize) -> MutexGuard<'_, Lane> {
        self.inner.shared.lanes[i]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The queue's id: 16 hex chars, stable across restarts.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Lane names in config order.
    pub fn lanes(&self) -> Vec<String> {
        self.inner
            .shared
            .cfg
            .lanes
            .iter()
            .map(|l| l.name.clone())
            .collect()
    }

    /// Index of the lane called `name`.
    pub fn lane_index(&self, name: &str) -> Option<usize> {
        self.inner
            .shared
            .cfg
            .lanes
            .iter()
            .position(|l| l.name == name)
    }

    /// Append `records` to `lane`, all or nothing; resolves once they are
    /// durable per the sync policy, with their seqs.
    pub async fn append(&self, lane: &str, records: Vec<Record>) -> Result<Vec<u64>, QueueError> {
        let i = self
            .lane_index(lane)
            .ok_or_else(|| QueueError::UnknownLane(lane.to_owned()))?;
        let max_bytes = self.inner.shared.cfg.lanes[i].max_bytes;
        let mut total = 0u64;
        for r in &records {
            let size = r.frame_len() as u64;
            let limit = (MAX_RECORD as u64).min(max_bytes);
            if size > limit || r.topic.len() > usize::from(u16::MAX) {
                return Err(QueueError::TooLarge { size, limit });
            }
            total += size;
        }
        if total > max_bytes {
            return Err(QueueError::TooLarge {
                size: total,
                limit: max_bytes,
            });
        }
        if records.is_empty() {
            return Ok(Vec::new());
        }
        if self.inner.shared.closed.load(Ordering::SeqCst) {
            return Err(QueueError::Closed);
        }
        let permit = match Arc::clone(&self.inner.room).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Full (or closed, which the awaited acquire reports).
                self.inner.waits.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                let p = Arc::clone(&self.inner.room).acquire_owned().await;
                let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                self.inner.waited_us.fetch_add(us, Ordering::Relaxed);
                p.map_err(|_| QueueError::Closed)?
            }
        };
        let (tx, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Cmd::Append {
                lane: i,
                records,
                reply: tx,
                permit,
            })
            .map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)?
    }

    /// Wait until an unread entry exists, then append up to `max` entries to
    /// `out`: highest-priority lane first, each lane in seq order. Entries
    /// past their lane's `max_age` are dropped (`dropped_ttl`). Returns 0
    /// only when the queue is closed (or `max` is 0).
    pub async fn next_batch(&self, max: usize, out: &mut Vec<Entry>) -> usize {
        if max == 0 {
            return 0;
        }
        loop {
            let mut notified = std::pin::pin!(self.inner.shared.notify.notified());
            notified.as_mut().enable();
            if self.inner.shared.closed.load(Ordering::SeqCst) {
                return 0;
            }
            let n = self.try_next_batch(max, out);
            if n > 0 {
                return n;
            }
            if self.readable() {
                // Readable but nothing came out: a read error (logged).
                // Retry later rather than spin.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
            notified.await;
        }
    }

    /// Whether any lane has unread records.
    fn readable(&self) -> bool {
        (0..self.inner.shared.lanes.len()).any(|i| self.lane(i).readable())
    }

    /// `next_batch` without waiting: 0 when nothing is ready.
    pub fn try_next_batch(&self, max: usize, out: &mut Vec<Entry>) -> usize {
        let now = now_ms();
        let mut n = 0;
        for &i in &self.inner.order {
            if n >= max {
                break;
            }
            n += self.lane(i).read_into(max - n, now, out);
        }
        n
    }

    /// The cloud has `seq` of lane `lane`. Acks may come in any order; the
    /// cursor moves over the contiguous acked prefix. Unknown or repeated
    /// acks are ignored.
    pub fn ack(&self, lane: usize, seq: u64) {
        if lane < self.inner.shared.lanes.len() {
            self.lane(lane).ack(seq);
        }
    }

    /// Make every handed-out, unacked entry readable again, in order.
    pub fn rewind(&self) {
        for i in 0..self.inner.shared.lanes.len() {
            self.lane(i).rewind();
        }
        self.inner.shared.notify.notify_waiters();
    }

    /// The queue's counters.
    pub fn stats(&self) -> QueueStats {
        let now = now_ms();
        let mut s = QueueStats::default();
        for i in 0..self.inner.shared.lanes.len() {
            let l = self.lane(i).stats(now);
            s.depth += l.depth;
            s.bytes += l.bytes;
            s.appended += l.appended;
            s.acked += l.acked;
            s.dropped_full += l.dropped_full;
            s.dropped_ttl += l.dropped_ttl;
            s.rejected += l.rejected;
            s.disk_bytes += l.disk_bytes;
            s.lanes.push(l);
        }
        s.writer_waits = self.inner.waits.load(Ordering::Relaxed);
        s.writer_wait_ms = self.inner.waited_us.load(Ordering::Relaxed) / 1000;
        s
    }

    /// Flush, write the cursors, stop the writer and release the directory.
    /// Later appends fail with `Closed`; `next_batch` returns 0.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.tx.send(Cmd::Close(tx)).is_ok() {
            let _ = rx.await;
        }
        // Appends still waiting for room fail with `Closed`.
        self.inner.room.close();
        self.inner.shared.closed.store(true, Ordering::SeqCst);
        self.inner.shared.notify.notify_waiters();
        drop(take(&self.inner.lock));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// With the writer held up, appends beyond `max_pending_appends` wait
    /// (and are counted) instead of piling up; none is lost.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[allow(clippy::await_holding_lock)] // holding up the writer is the point
    async fn appends_beyond_the_writer_bound_wait_and_are_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = QueueConfig {
            dir: dir.path().to_path_buf(),
            max_pending_appends: 1,
            ..QueueConfig::default()
        };
        let (q, _) = Queue::open(cfg).expect("open");
        let rec = |i: u64| Record {
            topic: format!("t/{i}"),
            payload: bytes::Bytes::from_static(b"x"),
            time_ms: 1,
        };
        // The writer blocks on this lane's mutex while staging the first
        // append; the second fills the channel; the third must wait.
        let held = q.lane(0);
        let appends: Vec<_> = (0..3)
            .map(|i| {
                let q = q.clone();
                tokio::spawn(async move { q.append("alarms", vec![rec(i)]).await })
            })
            .collect();
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while q.inner.waits.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "no append waited for room");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(
            appends.iter().all(|a| !a.is_finished()),
            "none answered yet"
        );
        drop(held);
        let mut seqs = Vec::new();
        for a in appends {
            seqs.extend(a.await.expect("task").expect("appended"));
        }
        seqs.sort_unstable();
        assert_eq!(seqs, vec![1, 2, 3], "every append acknowledged");
        let s = q.stats();
        assert!(s.writer_waits >= 1, "{s:?}");
        assert_eq!(s.lanes[0].depth, 3);
        q.close().await;
    }
}

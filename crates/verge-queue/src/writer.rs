//! The writer thread: the only code that writes segment files. It takes
//! every pending append, writes each lane's share with one `write`,
//! fdatasyncs per the policy, then publishes the records to readers and
//! wakes the appenders. Every ~100 ms it also writes changed cursors and
//! deletes acked segments (cursor first, so seqs never go backwards).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, oneshot};

use crate::config::{SyncPolicy, WhenFull};
use crate::lane::{Lane, Segment, segment_path};
use crate::record::{self, Record};
use crate::recover::{sync_dir, write_cursor};
use crate::{QueueError, Shared};

/// Where an append's answer goes.
pub(crate) type Reply = oneshot::Sender<Result<Vec<u64>, QueueError>>;

/// A request to the writer.
pub(crate) enum Cmd {
    /// Append records to a lane; answer with their seqs once durable.
    Append {
        /// Lane index.
        lane: usize,
        /// The records.
        records: Vec<Record>,
        /// Where the answer goes.
        reply: Reply,
        /// The append's room in the channel, given back when the writer
        /// takes it off.
        permit: OwnedSemaphorePermit,
    },
    /// Flush, write cursors and stop.
    Close(oneshot::Sender<()>),
}

/// How often cursors are written and acked segments deleted.
const HOUSEKEEPING: Duration = Duration::from_millis(100);
/// Bytes a batch takes before it is committed regardless.
const MAX_BATCH_BYTES: u64 = 8 * 1024 * 1024;

/// The segment a lane appends to.
struct Active {
    /// Its first seq.
    first: u64,
    /// The open file.
    file: File,
}

/// What one commit writes and whom it answers.
#[derive(Default)]
struct Batch {
    /// Encoded frames per lane, for the active segment.
    bufs: Vec<Vec<u8>>,
    /// Records staged per lane.
    counts: Vec<(u64, u64)>,
    /// Files sealed in this batch that still need a sync.
    sealed: Vec<File>,
    /// Lanes whose directory got a new file.
    new_files: Vec<usize>,
    /// Answers to send after the commit.
    replies: Vec<(Reply, Vec<u64>)>,
    /// Bytes staged.
    bytes: u64,
}

/// The writer thread's state.
pub(crate) struct Writer {
    /// Shared with the `Queue` handles.
    shared: Arc<Shared>,
    /// Requests.
    rx: Receiver<Cmd>,
    /// Active segment per lane.
    active: Vec<Option<Active>>,
    /// Set after an I/O error: every later append fails with it.
    failed: Option<String>,
    /// Last housekeeping.
    last_house: Instant,
}

fn lock(shared: &Shared, lane: usize) -> MutexGuard<'_, Lane> {
    shared.lanes[lane]
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
}

impl Writer {
    /// A writer for `shared`, fed by `rx`.
    pub fn new(shared: Arc<Shared>, rx: Receiver<Cmd>) -> Writer {
        let n = shared.lanes.len();
        Writer {
            shared,
            rx,
            active: (0..n).map(|_| None).collect(),
            failed: None,
            last_house: Instant::now(),
        }
    }

    /// Run until closed or every handle is gone.
    pub fn run(mut self) {
        let policy = self.shared.cfg.sync;
        let group_wait = self.shared.cfg.group_commit;
        loop {
            let first = match self.rx.recv_timeout(HOUSEKEEPING) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    self.housekeeping(true);
                    return;
                }
            };
            let mut batch = self.new_batch();
            let mut close = None;
            let started = Instant::now();
            if let Some(cmd) = first {
                self.take(cmd, &mut batch, &mut close);
            }
            // Group commit: everything that queued up while the previous
            // sync ran shares the next one. Always: one call per sync.
            while policy != SyncPolicy::Always
                && close.is_none()
                && batch.bytes < MAX_BATCH_BYTES
                && started.elapsed() < group_wait.max(Duration::from_micros(100))
            {
                match self.rx.try_recv() {
                    Ok(cmd) => self.take(cmd, &mut batch, &mut close),
                    Err(_) => break,
                }
            }
            self.commit(&mut batch);
            if let Some(reply) = close {
                self.housekeeping(true);
                self.shared.closed.store(true, Ordering::SeqCst);
                self.shared.notify.notify_waiters();
                let _ = reply.send(());
                return;
            }
            if self.last_house.elapsed() >= HOUSEKEEPING {
                self.housekeeping(false);
            }
        }
    }

    fn new_batch(&self) -> Batch {
        let n = self.shared.lanes.len();
        Batch {
            bufs: vec![Vec::new(); n],
            counts: vec![(0, 0); n],
            ..Batch::default()
        }
    }

    fn take(&mut self, cmd: Cmd, batch: &mut Batch, close: &mut Option<oneshot::Sender<()>>) {
        match cmd {
            Cmd::Append {
                lane,
                records,
                reply,
                permit,
            } => {
                drop(permit);
                if let Some(msg) = &self.failed {
                    let _ = reply.send(Err(QueueError::Failed(msg.clone())));
                    return;
                }
                match self.stage(lane, records, batch) {
                    Ok(seqs) => batch.replies.push((reply, seqs)),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Cmd::Close(reply) => *close = Some(reply),
        }
    }

    /// Make room in lane `i` for `size` more bytes per its policy.
    fn make_room(
        &mut self,
        i: usize,
        size: u64,
        n: u64,
        batch: &mut Batch,
    ) -> Result<(), QueueError> {
        let fits = |l: &Lane| l.disk_bytes() + size <= l.max_bytes;
        {
            let l = lock(&self.shared, i);
            if fits(&l) {
                return Ok(());
            }
        }
        // Deleting acked segments may be enough.
        self.collect(i, false)?;
        let when_full = {
            let mut l = lock(&self.shared, i);
            if fits(&l) {
                return Ok(());
            }
            if l.when_full == WhenFull::Reject {
                l.rejected += n;
                return Err(QueueError::Full {
                    lane: l.name.clone(),
                });
            }
            l.when_full
        };
        debug_assert_eq!(when_full, WhenFull::DropOldest);
        // Publish what is staged so the records dropped are all readable.
        self.commit(batch);
        loop {
            let dropped = {
                let mut l = lock(&self.shared, i);
                if fits(&l) {
                    break;
                }
                if l.segments.front().is_some_and(|s| !s.sealed) {
                    // Only the active segment is left: seal it first.
                    if let Some(s) = l.segments.back_mut() {
                        s.sealed = true;
                    }
                    self.active[i] = None;
                    continue;
                }
                match l.drop_oldest_segment() {
                    Some(seg) => (seg, l.acked_upto, l.next_seq, l.dir.clone()),
                    None => break,
                }
            };
            let (seg, acked, next, dir) = dropped;
            write_cursor(&dir, acked, next)
                .and_then(|()| std::fs::remove_file(segment_path(&dir, seg.first)))
                .map_err(|e| self.fail(format!("dropping a segment of {}", dir.display()), e))?;
        }
        Ok(())
    }

    /// Assign seqs to `records` and encode them into the batch.
    fn stage(
        &mut self,
        i: usize,
        records: Vec<Record>,
        batch: &mut Batch,
    ) -> Result<Vec<u64>, QueueError> {
        let size: u64 = records.iter().map(|r| r.frame_len() as u64).sum();
        self.make_room(i, size, records.len() as u64, batch)?;
        let mut seqs = Vec::with_capacity(records.len());
        let shared = Arc::clone(&self.shared);
        let mut l = lock(&shared, i);
        for rec in &records {
            let frame = rec.frame_len() as u64;
            let seq = l.next_seq;
            let needs_new = match (&self.active[i], l.segments.back()) {
                (Some(a), Some(s)) if s.first == a.first => {
                    s.len > 0 && s.len + frame > l.seg_bytes
                }
                _ => true,
            };
            if needs_new {
                // Write what this lane has staged to the old segment, then
                // seal it (synced with the batch) and start a new one.
                if let Some(mut old) = self.active[i].take() {
                    let buf = std::mem::take(&mut batch.bufs[i]);
                    old.file
                        .write_all(&buf)
                        .map_err(|e| self.fail(format!("writing lane {}", l.name), e))?;
                    batch.sealed.push(old.file);
                }
                if let Some(s) = l.segments.back_mut() {
                    s.sealed = true;
                }
                let path = segment_path(&l.dir, seq);
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| self.fail(format!("creating {}", path.display()), e))?;
                self.active[i] = Some(Active { first: seq, file });
                l.segments.push_back(Segment {
                    first: seq,
                    len: 0,
                    durable_len: 0,
                    last: None,
                    written_last: None,
                    first_time: None,
                    disk_len: 0,
                    sealed: false,
                });
                batch.new_files.push(i);
            }
            record::encode(seq, rec, &mut batch.bufs[i]);
            if let Some(s) = l.segments.back_mut() {
                s.len += frame;
                s.disk_len += frame;
                s.written_last = Some(seq);
                s.first_time.get_or_insert(rec.time_ms);
            }
            l.next_seq += 1;
            batch.counts[i].0 += 1;
            batch.counts[i].1 += frame;
            batch.bytes += frame;
            seqs.push(seq);
        }
        Ok(seqs)
    }

    /// Remember the first I/O error; later appends fail with it.
    fn fail(&mut self, context: String, e: std::io::Error) -> QueueError {
        tracing::error!("queue i/o error, the queue stops accepting appends: {context}: {e}");
        self.failed.get_or_insert_with(|| format!("{context}: {e}"));
        QueueError::Io { context, source: e }
    }

    /// Write, sync per policy, publish, answer.
    fn commit(&mut self, batch: &mut Batch) {
        if batch.replies.is_empty() && batch.bytes == 0 && batch.sealed.is_empty() {
            return;
        }
        let result = self.write_and_sync(batch);
        let mut replies = std::mem::take(&mut batch.replies);
        match result {
            Ok(()) => {
                for (i, &(count, bytes)) in batch.counts.iter().enumerate() {
                    let mut l = lock(&self.shared, i);
                    for s in l.segments.iter_mut().rev() {
                        if s.durable_len == s.len && s.last == s.written_last {
                            break;
                        }
                        s.durable_len = s.len;
                        s.last = s.written_last;
                    }
                    l.durable_next = l.next_seq;
                    l.depth += count;
                    l.bytes += bytes;
                    l.appended += count;
                }
                self.shared.notify.notify_waiters();
                for (reply, seqs) in replies.drain(..) {
                    let _ = reply.send(Ok(seqs));
                }
            }
            Err(msg) => {
                for (reply, _) in replies.drain(..) {
                    let _ = reply.send(Err(QueueError::Failed(msg.clone())));
                }
            }
        }
        let fresh = self.new_batch();
        *batch = fresh;
    }

    fn write_and_sync(&mut self, batch: &mut Batch) -> Result<(), String> {
        let sync = self.shared.cfg.sync != SyncPolicy::Buffered;
        let mut err = None;
        for (i, buf) in batch.bufs.iter().enumerate() {
            if buf.is_empty() {
                continue;
            }
            let Some(a) = self.active[i].as_mut() else {
                continue;
            };
            if let Err(e) = a
                .file
                .write_all(buf)
                .and_then(|()| if sync { a.file.sync_data() } else { Ok(()) })
            {
                err = Some((format!("writing lane {i}"), e));
            }
        }
        if sync {
            for f in &batch.sealed {
                if let Err(e) = f.sync_data() {
                    err = Some(("syncing a sealed segment".into(), e));
                }
            }
            batch.new_files.dedup();
            for &i in &batch.new_files {
                let dir = lock(&self.shared, i).dir.clone();
                if let Err(e) = sync_dir(&dir) {
                    err = Some((format!("syncing {}", dir.display()), e));
                }
            }
        }
        match err {
            None => Ok(()),
            Some((context, e)) => {
                let _ = self.fail(context.clone(), e);
                Err(self.failed.clone().unwrap_or(context))
            }
        }
    }

    /// Write lane `i`'s cursor if it moved (or `force`), then delete its
    /// acked segments.
    fn collect(&mut self, i: usize, force: bool) -> Result<(), QueueError> {
        let (gone, acked, next, dir, dirty) = {
            let mut l = lock(&self.shared, i);
            let acked_upto = l.acked_upto;
            if let Some(s) = l.segments.back_mut() {
                // A wholly acked active segment with nothing staged: seal it
                // so it can go; the next append starts a new one.
                if !s.sealed && s.written_last == s.last && s.last.is_some_and(|x| x <= acked_upto)
                {
                    s.sealed = true;
                    self.active[i] = None;
                }
            }
            let gone = l.take_acked_segments();
            let dirty = l.cursor_dirty;
            l.cursor_dirty = false;
            (gone, l.acked_upto, l.next_seq, l.dir.clone(), dirty)
        };
        if gone.is_empty() && !dirty && !force {
            return Ok(());
        }
        let res = write_cursor(&dir, acked, next).and_then(|()| {
            for seg in &gone {
                std::fs::remove_file(segment_path(&dir, seg.first))?;
            }
            Ok(())
        });
        if let Err(e) = res {
            lock(&self.shared, i).cursor_dirty = true;
            return Err(QueueError::Io {
                context: format!("writing the cursor of {}", dir.display()),
                source: e,
            });
        }
        Ok(())
    }

    fn housekeeping(&mut self, force: bool) {
        self.last_house = Instant::now();
        for i in 0..self.shared.lanes.len() {
            if let Err(e) = self.collect(i, force) {
                tracing::warn!("{e}");
            }
        }
    }
}

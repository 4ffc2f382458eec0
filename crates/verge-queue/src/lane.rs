//! One lane's in-memory state: its segments, the acked-up-to cursor with the
//! out-of-order acks above it, the read position, counters, and the reads
//! from disk that `next_batch` does. Shared by the writer thread and the
//! readers under one mutex per lane; file writes are the writer's alone.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::WhenFull;
use crate::record::{self, Bad, Decoded};
use crate::{Entry, LaneStats};

/// A position in a lane: byte offset `off` in the segment whose first seq
/// is `seg`. A position in a deleted segment means the start of the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    /// First seq of the segment (its file name).
    pub seg: u64,
    /// Byte offset in it.
    pub off: u64,
}

/// Where a handed-out record is and what it weighs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    /// Segment (first seq).
    pub seg: u64,
    /// Offset just after the record.
    pub end: u64,
    /// Frame length.
    pub size: u64,
    /// The record's `time_ms`.
    pub time_ms: i64,
}

/// One segment file.
#[derive(Debug)]
pub(crate) struct Segment {
    /// Seq of its first record, also its file name.
    pub first: u64,
    /// Valid bytes written (the writer's view).
    pub len: u64,
    /// Bytes readers may read: written and durable per the policy.
    pub durable_len: u64,
    /// Seq of the last durable record.
    pub last: Option<u64>,
    /// Seq of the last written record.
    pub written_last: Option<u64>,
    /// `time_ms` of its first record.
    pub first_time: Option<i64>,
    /// Size of the file (more than `len` after mid-file corruption).
    pub disk_len: u64,
    /// No more appends go to it.
    pub sealed: bool,
}

/// File name of the segment starting at `first`.
pub(crate) fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

/// A buffered reader of one segment that never reads past a limit.
pub(crate) struct SegReader {
    /// Segment (first seq).
    pub seg: u64,
    /// The open file.
    file: File,
    /// Bytes of the file from `buf_off`.
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    buf_off: u64,
}

/// How much a reader reads at once.
const READ_CHUNK: usize = 256 * 1024;

impl SegReader {
    /// Open segment `seg` of the lane in `dir`.
    pub fn open(dir: &Path, seg: u64) -> std::io::Result<SegReader> {
        Ok(SegReader {
            seg,
            file: File::open(segment_path(dir, seg))?,
            buf: Vec::new(),
            buf_off: 0,
        })
    }

    /// Make `buf` hold `[off, off + need)`, reading no further than `limit`.
    /// False when the bytes are not there.
    fn fill(&mut self, off: u64, need: usize, limit: u64) -> std::io::Result<bool> {
        let end = off + need as u64;
        if end > limit {
            return Ok(false);
        }
        if off >= self.buf_off && end <= self.buf_off + self.buf.len() as u64 {
            return Ok(true);
        }
        let want = (limit - off).min(need.max(READ_CHUNK) as u64) as usize;
        self.buf.resize(want, 0);
        let mut got = 0;
        while got < want {
            match self.file.read_at(&mut self.buf[got..], off + got as u64)? {
                0 => break,
                n => got += n,
            }
        }
        self.buf.truncate(got);
        self.buf_off = off;
        Ok(got >= need)
    }

    /// Decode the frame at `off`, reading no further than `limit`.
    pub fn frame(&mut self, off: u64, limit: u64) -> std::io::Result<Result<Decoded, Bad>> {
        if !self.fill(off, record::PREFIX, limit)? {
            return Ok(Err(Bad::Short));
        }
        let at = (off - self.buf_off) as usize;
        let len = match record::frame_len(&self.buf[at..]) {
            Ok(Some(len)) => len,
            Ok(None) => return Ok(Err(Bad::Short)),
            Err(e) => return Ok(Err(e)),
        };
        if !self.fill(off, len, limit)? {
            return Ok(Err(Bad::Short));
        }
        let at = (off - self.buf_off) as usize;
        Ok(record::decode(&self.buf[at..at + len]))
    }
}

/// The state of one lane.
pub(crate) struct Lane {
    /// Index in the config.
    pub index: usize,
    /// Name (and directory name).
    pub name: String,
    /// Higher drains first.
    pub priority: u8,
    /// Disk bound.
    pub max_bytes: u64,
    /// Records older than this are dropped.
    pub max_age: Option<Duration>,
    /// Reject or drop the oldest when full.
    pub when_full: WhenFull,
    /// Segment size of this lane.
    pub seg_bytes: u64,
    /// The lane's directory.
    pub dir: PathBuf,
    /// Live segments, oldest first; the writer's active one is last.
    pub segments: VecDeque<Segment>,
    /// Next seq to assign (the writer's).
    pub next_seq: u64,
    /// Seqs below this are durable and readable.
    pub durable_next: u64,
    /// Every seq at or below is acked (or dropped).
    pub acked_upto: u64,
    /// Just after record `acked_upto`.
    pub cursor_pos: Pos,
    /// Acks above the cursor, waiting for the gap below them to close.
    pub acked_above: BTreeMap<u64, Span>,
    /// Handed out, not acked.
    pub inflight: BTreeMap<u64, Span>,
    /// Next seq `next_batch` hands out (at least).
    pub read_next: u64,
    /// Where it is.
    pub read_pos: Pos,
    /// Open reader.
    pub reader: Option<SegReader>,
    /// Unacked records.
    pub depth: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Records appended since open.
    pub appended: u64,
    /// Records acked since open.
    pub acked: u64,
    /// Records dropped by `drop_oldest` since open.
    pub dropped_full: u64,
    /// Records dropped for age since open.
    pub dropped_ttl: u64,
    /// Records refused by `reject` since open.
    pub rejected: u64,
    /// The cursor moved since it was last written.
    pub cursor_dirty: bool,
    /// Drops not yet logged, and when the last warning was.
    pub drop_log: (u64, Option<Instant>),
}

impl Lane {
    /// Bytes of the lane's files.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.disk_len).sum()
    }

    /// Index of the segment that position `pos` is in, and the offset
    /// (positions in deleted segments move to the start of the next).
    fn locate(&self, pos: Pos) -> Option<(usize, u64)> {
        let i = self.segments.partition_point(|s| s.first < pos.seg);
        let s = self.segments.get(i)?;
        Some((i, if s.first == pos.seg { pos.off } else { 0 }))
    }

    /// Index of the last segment whose first seq is at or below `seq`.
    fn segment_of(&self, seq: u64) -> Option<usize> {
        self.segments
            .partition_point(|s| s.first <= seq)
            .checked_sub(1)
    }

    /// The first durable seq at or after `seq`, and its segment.
    fn next_existing(&self, seq: u64) -> Option<(u64, u64)> {
        let start = match self.segment_of(seq) {
            Some(i) if self.segments[i].last.is_some_and(|l| seq <= l) => {
                return Some((seq, self.segments[i].first));
            }
            Some(i) => i + 1,
            None => 0,
        };
        self.segments
            .iter()
            .skip(start)
            .find(|s| s.last.is_some())
            .map(|s| (s.first, s.first))
    }

    /// Move the cursor over the contiguous acked prefix and over seqs that
    /// do not exist (lost in a crash or to corruption).
    pub fn advance(&mut self) {
        loop {
            let n = self.acked_upto + 1;
            if let Some(span) = self.acked_above.remove(&n) {
                self.acked_upto = n;
                self.cursor_pos = Pos {
                    seg: span.seg,
                    off: span.end,
                };
                self.cursor_dirty = true;
                continue;
            }
            if n >= self.durable_next {
                break;
            }
            match self.next_existing(n) {
                Some((s, _)) if s == n => break,
                Some((s, seg)) => {
                    self.acked_upto = s - 1;
                    self.cursor_pos = Pos { seg, off: 0 };
                }
                None => {
                    self.acked_upto = self.durable_next - 1;
                    self.cursor_pos = Pos {
                        seg: self.durable_next,
                        off: 0,
                    };
                }
            }
            self.cursor_dirty = true;
        }
        if self.read_next <= self.acked_upto {
            self.read_next = self.acked_upto + 1;
            self.read_pos = self.cursor_pos;
        }
        let keep = self.acked_upto + 1;
        if self
            .inflight
            .first_key_value()
            .is_some_and(|(&k, _)| k < keep)
        {
            self.inflight = self.inflight.split_off(&keep);
        }
    }

    /// Record `seq` (at `span`) as gone: acked, expired or dropped.
    fn settle(&mut self, seq: u64, span: Span) {
        self.depth = self.depth.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(span.size);
        self.acked_above.insert(seq, span);
    }

    /// The cloud has `seq`.
    pub fn ack(&mut self, seq: u64) {
        if seq <= self.acked_upto || seq >= self.durable_next || self.acked_above.contains_key(&seq)
        {
            return;
        }
        let Some(span) = self.inflight.remove(&seq) else {
            tracing::debug!(lane = %self.name, seq, "ack for a record not handed out, ignored");
            return;
        };
        self.acked += 1;
        self.settle(seq, span);
        self.advance();
    }

    /// Hand out again everything not acked.
    pub fn rewind(&mut self) {
        self.read_next = self.acked_upto + 1;
        self.read_pos = self.cursor_pos;
    }

    /// There is something to read (maybe expired).
    pub fn readable(&self) -> bool {
        self.read_next < self.durable_next
    }

    /// Read up to `max` entries into `out`; expired ones are settled.
    pub fn read_into(&mut self, max: usize, now_ms: i64, out: &mut Vec<Entry>) -> usize {
        let mut n = 0;
        let ttl_ms = self
            .max_age
            .map(|a| i64::try_from(a.as_millis()).unwrap_or(i64::MAX));
        let mut expired = false;
        while n < max && self.read_next < self.durable_next {
            let Some((i, off)) = self.locate(self.read_pos) else {
                break;
            };
            let (seg, limit, sealed) = {
                let s = &self.segments[i];
                (s.first, s.durable_len, i + 1 < self.segments.len())
            };
            self.read_pos = Pos { seg, off };
            if off >= limit {
                match self.segments.get(i + 1) {
                    Some(next) if sealed => {
                        self.read_pos = Pos {
                            seg: next.first,
                            off: 0,
                        };
                        continue;
                    }
                    _ => break,
                }
            }
            if self.reader.as_ref().is_none_or(|r| r.seg != seg) {
                match SegReader::open(&self.dir, seg) {
                    Ok(r) => self.reader = Some(r),
                    Err(e) => {
                        tracing::error!(lane = %self.name, seg, "cannot open segment: {e}");
                        break;
                    }
                }
            }
            let Some(reader) = self.reader.as_mut() else {
                break;
            };
            let d = match reader.frame(off, limit) {
                Ok(Ok(d)) => d,
                Ok(Err(bad)) => {
                    tracing::error!(lane = %self.name, seg, off, ?bad, "unreadable record, skipping the rest of the segment");
                    if !sealed {
                        break;
                    }
                    self.segments[i].durable_len = off;
                    continue;
                }
                Err(e) => {
                    tracing::error!(lane = %self.name, seg, off, "reading segment: {e}");
                    break;
                }
            };
            let span = Span {
                seg,
                end: off + d.len as u64,
                size: d.len as u64,
                time_ms: d.record.time_ms,
            };
            self.read_pos.off = span.end;
            self.read_next = d.seq + 1;
            if d.seq <= self.acked_upto || self.acked_above.contains_key(&d.seq) {
                continue;
            }
            if ttl_ms.is_some_and(|ttl| now_ms.saturating_sub(d.record.time_ms) > ttl) {
                self.dropped_ttl += 1;
                self.inflight.remove(&d.seq);
                self.settle(d.seq, span);
                expired = true;
                continue;
            }
            self.inflight.insert(d.seq, span);
            out.push(Entry {
                lane: self.index,
                seq: d.seq,
                record: d.record,
            });
            n += 1;
        }
        if expired {
            self.advance();
        }
        n
    }

    /// Drop the oldest segment to make room, advancing the cursor over its
    /// unacked records (`dropped_full`). Only sealed segments can go: false
    /// when the oldest is the writer's active one.
    pub fn drop_oldest_segment(&mut self) -> Option<Segment> {
        let front = self.segments.front()?;
        if !front.sealed {
            return None;
        }
        if let Some(last) = front.last {
            let from = (self.acked_upto + 1).max(front.first);
            if from <= last {
                let settled: Vec<u64> = self
                    .acked_above
                    .range(from..=last)
                    .map(|(_, s)| s.size)
                    .collect();
                let count = last - from + 1 - settled.len() as u64;
                let start = if self.cursor_pos.seg == front.first {
                    self.cursor_pos.off
                } else {
                    0
                };
                let bytes = front
                    .len
                    .saturating_sub(start)
                    .saturating_sub(settled.iter().sum::<u64>());
                self.dropped_full += count;
                self.depth = self.depth.saturating_sub(count);
                self.bytes = self.bytes.saturating_sub(bytes);
                self.drop_log.0 += count;
                self.acked_upto = last;
                self.acked_above = self.acked_above.split_off(&(last + 1));
            }
        }
        let seg = self.segments.pop_front()?;
        self.cursor_pos = Pos {
            seg: self.segments.front().map_or(self.durable_next, |s| s.first),
            off: 0,
        };
        self.cursor_dirty = true;
        self.advance();
        let warn_due = self
            .drop_log
            .1
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        if self.drop_log.0 > 0 && warn_due {
            tracing::warn!(lane = %self.name, dropped = self.drop_log.0, "lane full: dropped the oldest records");
            self.drop_log = (0, Some(Instant::now()));
        }
        Some(seg)
    }

    /// Remove the sealed segments wholly at or below the cursor; the caller
    /// writes the cursor, then deletes their files.
    pub fn take_acked_segments(&mut self) -> Vec<Segment> {
        let mut gone = Vec::new();
        while let Some(front) = self.segments.front() {
            let done = match front.last {
                Some(l) => l <= self.acked_upto,
                None => self.segments.len() > 1,
            };
            if !(front.sealed && done) {
                break;
            }
            gone.extend(self.segments.pop_front());
        }
        gone
    }

    /// The lane's counters.
    pub fn stats(&self, now_ms: i64) -> LaneStats {
        let oldest_age_ms = (self.depth > 0)
            .then(|| {
                let head = self.next_existing(self.acked_upto + 1)?.0;
                let t = match self.inflight.get(&head) {
                    Some(s) => s.time_ms,
                    None => self.segments[self.segment_of(head)?].first_time?,
                };
                Some(now_ms.saturating_sub(t).max(0) as u64)
            })
            .flatten();
        LaneStats {
            name: self.name.clone(),
            priority: self.priority,
            depth: self.depth,
            bytes: self.bytes,
            oldest_age_ms,
            appended: self.appended,
            acked: self.acked,
            dropped_full: self.dropped_full,
            dropped_ttl: self.dropped_ttl,
            rejected: self.rejected,
            next_seq: self.next_seq,
            acked_upto: self.acked_upto,
            disk_bytes: self.disk_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lane over segments `(first, last)` with every record handed out,
    /// 10 bytes each; no files are touched by ack math.
    fn lane(segs: &[(u64, u64)]) -> Lane {
        let next = segs.last().map_or(1, |s| s.1 + 1);
        let mut l = Lane {
            index: 0,
            name: "t".into(),
            priority: 0,
            max_bytes: 1 << 20,
            max_age: None,
            when_full: WhenFull::Reject,
            seg_bytes: 1 << 16,
            dir: PathBuf::from("/nonexistent"),
            segments: VecDeque::new(),
            next_seq: next,
            durable_next: next,
            acked_upto: 0,
            cursor_pos: Pos { seg: 1, off: 0 },
            acked_above: BTreeMap::new(),
            inflight: BTreeMap::new(),
            read_next: next,
            read_pos: Pos { seg: next, off: 0 },
            reader: None,
            depth: 0,
            bytes: 0,
            appended: 0,
            acked: 0,
            dropped_full: 0,
            dropped_ttl: 0,
            rejected: 0,
            cursor_dirty: false,
            drop_log: (0, None),
        };
        for &(first, last) in segs {
            let len = (last - first + 1) * 10;
            l.segments.push_back(Segment {
                first,
                len,
                durable_len: len,
                last: Some(last),
                written_last: Some(last),
                first_time: Some(first as i64),
                disk_len: len,
                sealed: true,
            });
            for seq in first..=last {
                let span = Span {
                    seg: first,
                    end: (seq - first + 1) * 10,
                    size: 10,
                    time_ms: seq as i64,
                };
                l.inflight.insert(seq, span);
                l.depth += 1;
                l.bytes += 10;
            }
        }
        l
    }

    #[test]
    fn out_of_order_acks_advance_over_the_contiguous_prefix() {
        let mut l = lane(&[(1, 10)]);
        for seq in [3, 2, 5] {
            l.ack(seq);
        }
        assert_eq!(l.acked_upto, 0);
        assert_eq!((l.depth, l.bytes, l.acked), (7, 70, 3));
        l.ack(1);
        assert_eq!(l.acked_upto, 3);
        assert_eq!(l.cursor_pos, Pos { seg: 1, off: 30 });
        l.ack(4);
        assert_eq!(l.acked_upto, 5);
        assert!(l.acked_above.is_empty());
        // Repeats, acks at or below the cursor and unknown seqs are ignored.
        for seq in [1, 5, 0, 11, 99] {
            l.ack(seq);
        }
        assert_eq!((l.acked_upto, l.acked, l.depth), (5, 5, 5));
        l.ack(7);
        l.ack(7);
        assert_eq!((l.acked, l.depth), (6, 4));
        assert!(l.inflight.keys().all(|&k| k > 5 && k != 7));
    }

    #[test]
    fn cursor_skips_seqs_that_do_not_exist() {
        // Seqs 4..=7 were lost (e.g. a buffered write cut by power loss).
        let mut l = lane(&[(1, 3), (8, 10)]);
        for seq in [1, 2, 3] {
            l.ack(seq);
        }
        assert_eq!(l.acked_upto, 7);
        assert_eq!(l.cursor_pos, Pos { seg: 8, off: 0 });
        for seq in [10, 9, 8] {
            l.ack(seq);
        }
        assert_eq!(l.acked_upto, 10);
        assert_eq!(l.depth, 0);
        assert_eq!(l.take_acked_segments().len(), 2);
    }

    #[test]
    fn rewind_restarts_from_the_cursor() {
        let mut l = lane(&[(1, 5)]);
        l.ack(1);
        l.ack(3);
        l.rewind();
        assert_eq!(l.read_next, 2);
        assert_eq!(l.read_pos, Pos { seg: 1, off: 10 });
        assert!(l.readable());
    }

    #[test]
    fn dropping_the_oldest_segment_counts_unacked_records() {
        let mut l = lane(&[(1, 4), (5, 8)]);
        l.ack(2);
        l.ack(1);
        l.ack(4);
        let seg = l.drop_oldest_segment().expect("dropped");
        assert_eq!(seg.first, 1);
        // 3 was the only unacked record of the first segment.
        assert_eq!((l.dropped_full, l.depth, l.bytes), (1, 4, 40));
        assert_eq!(l.acked_upto, 4);
        assert!(l.acked_above.is_empty());
        l.ack(3);
        assert_eq!(l.acked, 3);
    }
}

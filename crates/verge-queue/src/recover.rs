//! Opening a lane from disk: the cursor file, the scan of every segment,
//! cutting a torn or corrupt tail, and writing the cursor atomically.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::config::QueueConfig;
use crate::lane::{Lane, Pos, SegReader, Segment, segment_path};
use crate::record::Bad;
use crate::{LaneRecovery, QueueError, io_err};

/// Cursor file: magic, acked-up-to, next seq, crc32 of the 20 bytes before.
const CURSOR_MAGIC: &[u8; 4] = b"VQC1";
/// Its size.
const CURSOR_LEN: usize = 4 + 8 + 8 + 4;

/// Read `<lane>/cursor`: `(acked_upto, next_seq)` with `acked_upto <
/// next_seq`, or `None` when missing, unreadable or inconsistent (then the
/// segments alone decide).
fn read_cursor(dir: &Path, lane: &str) -> Option<(u64, u64)> {
    let path = dir.join("cursor");
    let buf = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(lane, "cannot read {}: {e}", path.display());
            return None;
        }
    };
    let ok = buf.len() == CURSOR_LEN
        && &buf[..4] == CURSOR_MAGIC
        && crc32fast::hash(&buf[..20]).to_le_bytes() == buf[20..24];
    if !ok {
        tracing::warn!(lane, "{} is corrupt, ignoring it", path.display());
        return None;
    }
    let mut a = [0; 8];
    let mut n = [0; 8];
    a.copy_from_slice(&buf[4..12]);
    n.copy_from_slice(&buf[12..20]);
    let (acked_upto, next_seq) = (u64::from_le_bytes(a), u64::from_le_bytes(n));
    // Only assigned seqs are acked: a cursor saying otherwise was not
    // written by the queue.
    if acked_upto >= next_seq {
        tracing::warn!(
            lane,
            acked_upto,
            next_seq,
            "{} acks past its next seq, ignoring it",
            path.display()
        );
        return None;
    }
    Some((acked_upto, next_seq))
}

/// Write the cursor atomically: temp file, fsync, rename, fsync the dir.
pub(crate) fn write_cursor(dir: &Path, acked_upto: u64, next_seq: u64) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(CURSOR_LEN);
    buf.extend_from_slice(CURSOR_MAGIC);
    buf.extend_from_slice(&acked_upto.to_le_bytes());
    buf.extend_from_slice(&next_seq.to_le_bytes());
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join("cursor.tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&buf)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join("cursor"))?;
    sync_dir(dir)
}

/// fsync a directory, so a created, renamed or deleted entry is durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// First seqs of the lane's segment files, sorted.
fn list_segments(dir: &Path) -> Result<Vec<u64>, QueueError> {
    let mut firsts = Vec::new();
    let rd = fs::read_dir(dir).map_err(io_err(format!("listing {}", dir.display())))?;
    for entry in rd {
        let entry = entry.map_err(io_err(format!("listing {}", dir.display())))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        match stem.parse::<u64>() {
            Ok(first) if first > 0 => firsts.push(first),
            _ => tracing::warn!("ignoring stray file {}", entry.path().display()),
        }
    }
    firsts.sort_unstable();
    Ok(firsts)
}

/// Open lane `index` of `cfg` from `<cfg.dir>/<name>`, creating it if new.
pub(crate) fn open_lane(
    cfg: &QueueConfig,
    index: usize,
) -> Result<(Lane, LaneRecovery), QueueError> {
    let lc = &cfg.lanes[index];
    let dir = cfg.dir.join(&lc.name);
    fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
    let cursor = read_cursor(&dir, &lc.name);
    let firsts = list_segments(&dir)?;
    let mut acked_upto = cursor.map_or(0, |c| c.0);
    if let Some(&first) = firsts.first() {
        acked_upto = acked_upto.max(first - 1);
    }
    let mut rec = LaneRecovery {
        name: lc.name.clone(),
        ..LaneRecovery::default()
    };
    let mut segments = VecDeque::new();
    let mut next_seq = cursor.map_or(1, |c| c.1).max(acked_upto + 1);
    let mut cursor_pos = Pos {
        seg: acked_upto + 1,
        off: 0,
    };
    let (mut depth, mut bytes) = (0u64, 0u64);
    for (k, &first) in firsts.iter().enumerate() {
        let is_last = k + 1 == firsts.len();
        let path = segment_path(&dir, first);
        let disk_len = fs::metadata(&path)
            .map_err(io_err(format!("reading {}", path.display())))?
            .len();
        let mut reader =
            SegReader::open(&dir, first).map_err(io_err(format!("opening {}", path.display())))?;
        let (mut off, mut expect, mut first_time, mut bad) = (0u64, first, None, None);
        while off < disk_len {
            let d = match reader.frame(off, disk_len) {
                // No record can follow seq u64::MAX, so no lane writes it.
                Ok(Ok(d)) if d.seq == expect && d.seq < u64::MAX => d,
                Ok(Ok(_)) => {
                    bad = Some(Bad::Corrupt);
                    break;
                }
                Ok(Err(b)) => {
                    bad = Some(b);
                    break;
                }
                Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
            };
            first_time.get_or_insert(d.record.time_ms);
            off += d.len as u64;
            if d.seq == acked_upto {
                cursor_pos = Pos { seg: first, off };
            } else if d.seq > acked_upto {
                depth += 1;
                bytes += d.len as u64;
            }
            expect += 1;
        }
        next_seq = next_seq.max(expect);
        if let Some(bad) = bad {
            rec.corrupt |= bad == Bad::Corrupt;
            let cut = disk_len - off;
            if is_last {
                tracing::warn!(lane = %lc.name, segment = first, bytes = cut, ?bad, "cutting the torn tail of the log");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(format!("opening {}", path.display())))?;
                f.set_len(off)
                    .and_then(|()| f.sync_all())
                    .map_err(io_err(format!("truncating {}", path.display())))?;
                rec.truncated_bytes += cut;
            } else {
                tracing::error!(lane = %lc.name, segment = first, offset = off, bytes = cut, ?bad,
                    "corrupt record in a sealed segment: the rest of that segment is skipped");
                rec.corrupt = true;
                rec.unreadable_bytes += cut;
            }
        }
        let last = (expect > first).then(|| expect - 1);
        if last.is_none() {
            // Nothing valid in it: its name still counts for next_seq.
            fs::remove_file(&path).map_err(io_err(format!("removing {}", path.display())))?;
            continue;
        }
        segments.push_back(Segment {
            first,
            len: off,
            durable_len: off,
            last,
            written_last: last,
            first_time,
            disk_len: if is_last { off } else { disk_len },
            sealed: true,
        });
    }
    rec.records = depth;
    let mut lane = Lane {
        index,
        name: lc.name.clone(),
        priority: lc.priority,
        max_bytes: lc.max_bytes,
        max_age: lc.max_age,
        when_full: lc.when_full,
        seg_bytes: cfg.lane_segment_bytes(index),
        dir,
        segments,
        next_seq,
        durable_next: next_seq,
        acked_upto,
        cursor_pos,
        acked_above: BTreeMap::new(),
        inflight: BTreeMap::new(),
        read_next: acked_upto + 1,
        read_pos: cursor_pos,
        reader: None,
        depth,
        bytes,
        appended: 0,
        acked: 0,
        dropped_full: 0,
        dropped_ttl: 0,
        rejected: 0,
        cursor_dirty: true,
        drop_log: (0, None),
    };
    lane.advance();
    write_cursor(&lane.dir, lane.acked_upto, lane.next_seq)
        .map_err(io_err(format!("writing the cursor of lane {}", lc.name)))?;
    lane.cursor_dirty = false;
    Ok((lane, rec))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::record::{self, Record};
    use crate::{LaneConfig, Queue, WhenFull};

    fn config(dir: &Path) -> QueueConfig {
        QueueConfig {
            dir: dir.to_path_buf(),
            lanes: vec![LaneConfig {
                name: "l".into(),
                priority: 0,
                max_bytes: 1 << 20,
                max_age: None,
                when_full: WhenFull::Reject,
            }],
            ..QueueConfig::default()
        }
    }

    fn record(seq: u64, out: &mut Vec<u8>) {
        let rec = Record {
            topic: "t".into(),
            payload: bytes::Bytes::from_static(b"x"),
            time_ms: 1,
        };
        record::encode(seq, &rec, out);
    }

    /// Found by fuzz_queue_recovery: a valid record with seq u64::MAX (in
    /// a segment named after it) overflowed the next expected seq and
    /// panicked the open. No lane can get there by appending; such a
    /// record is treated as corrupt.
    #[test]
    fn fuzz_queue_recovery_seq_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let lane = dir.path().join("l");
        fs::create_dir_all(&lane).unwrap();
        let mut seg = Vec::new();
        record(u64::MAX - 1, &mut seg);
        record(u64::MAX, &mut seg);
        fs::write(segment_path(&lane, u64::MAX - 1), &seg).unwrap();
        let (q, rec) = Queue::open(config(dir.path())).expect("opens");
        assert_eq!(rec.lanes[0].records, 1);
        assert!(rec.lanes[0].corrupt);
        let mut got = Vec::new();
        q.try_next_batch(10, &mut got);
        let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![u64::MAX - 1]);
    }

    /// Found by fuzz_queue_recovery: a well-formed cursor file with
    /// acked-up-to u64::MAX overflowed `acked_upto + 1` and panicked the
    /// open. A cursor acking at or past its next seq is ignored.
    #[test]
    fn fuzz_queue_recovery_cursor_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let lane = dir.path().join("l");
        fs::create_dir_all(&lane).unwrap();
        write_cursor(&lane, u64::MAX, 1).unwrap();
        let mut seg = Vec::new();
        record(1, &mut seg);
        record(2, &mut seg);
        fs::write(segment_path(&lane, 1), &seg).unwrap();
        let (q, rec) = Queue::open(config(dir.path())).expect("opens");
        assert_eq!(rec.lanes[0].records, 2, "the segments alone decide");
        let mut got = Vec::new();
        q.try_next_batch(10, &mut got);
        let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2]);
    }
}

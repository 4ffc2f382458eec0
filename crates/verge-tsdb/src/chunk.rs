//! One chunk file: the append-only point records of one time partition,
//! its in-memory index (series → record offsets) and its write buffer.
//!
//! Offsets below `flushed` are in the file; offsets from `flushed` on are
//! in `buf`, which the next flush appends. So a record's offset never
//! changes and queries see buffered points too.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::TsdbError;
use crate::record::{self, HEADER, MAX_BODY};
use crate::value::{Sample, Value};

/// Largest span of a file read in one go for a query; sparser series are
/// read record by record.
const MAX_SPAN: u64 = 16 << 20;

/// The file name of the chunk starting at `start` ms.
pub fn file_name(start: i64) -> String {
    format!("chunk-{start:015}.vts")
}

/// The start of a chunk file name, if it is one.
pub fn parse_name(name: &str) -> Option<i64> {
    name.strip_prefix("chunk-")?
        .strip_suffix(".vts")?
        .parse()
        .ok()
}

/// One open chunk.
pub struct Chunk {
    /// Partition start (ms); the file name.
    pub start: i64,
    /// The file.
    pub path: PathBuf,
    /// Bytes in the file.
    pub flushed: u64,
    /// Encoded records not yet written.
    pub buf: Vec<u8>,
    /// Record offsets per series, in append order.
    pub index: HashMap<u32, Vec<u32>>,
    /// Oldest point time.
    pub min_t: i64,
    /// Newest point time.
    pub max_t: i64,
    /// Points in the chunk.
    pub points: u64,
}

impl Chunk {
    /// A new, empty chunk (the file is created at the first flush).
    pub fn new(dir: &Path, start: i64) -> Chunk {
        Chunk {
            start,
            path: dir.join(file_name(start)),
            flushed: 0,
            buf: Vec::new(),
            index: HashMap::new(),
            min_t: i64::MAX,
            max_t: i64::MIN,
            points: 0,
        }
    }

    /// Open an existing chunk file: index every valid record, give each to
    /// `each` (for the latest values), and cut a torn or corrupt tail.
    /// Records of series `known` does not accept are skipped. Returns the
    /// chunk and the bytes cut.
    pub fn open(
        dir: &Path,
        start: i64,
        known: impl Fn(u32) -> bool,
        mut each: impl FnMut(u32, i64, Value),
    ) -> Result<(Chunk, u64), TsdbError> {
        let mut c = Chunk::new(dir, start);
        let file = File::open(&c.path).map_err(|e| TsdbError::io("open", &c.path, e))?;
        let len = file
            .metadata()
            .map_err(|e| TsdbError::io("stat", &c.path, e))?
            .len();
        let mut r = BufReader::with_capacity(1 << 16, file);
        let mut at = 0u64;
        let mut body = Vec::with_capacity(64);
        loop {
            let mut header = [0u8; HEADER];
            match r.read_exact(&mut header) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(TsdbError::io("read", &c.path, e)),
            }
            let n = usize::from(u16::from_le_bytes([header[4], header[5]]));
            body.resize(n, 0);
            match r.read_exact(&mut body) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(TsdbError::io("read", &c.path, e)),
            }
            let crc = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            if record::crc32(&body) != crc {
                break;
            }
            let Some((series, time, value)) = record::decode_point(&body) else {
                break;
            };
            let Ok(offset) = u32::try_from(at) else { break };
            at += (HEADER + n) as u64;
            if known(series) {
                c.note(series, time, offset);
                each(series, time, value);
            }
        }
        if at < len {
            let f = OpenOptions::new()
                .write(true)
                .open(&c.path)
                .map_err(|e| TsdbError::io("open", &c.path, e))?;
            f.set_len(at)
                .map_err(|e| TsdbError::io("truncate", &c.path, e))?;
        }
        c.flushed = at;
        Ok((c, len - at))
    }

    fn note(&mut self, series: u32, time: i64, offset: u32) {
        self.index.entry(series).or_default().push(offset);
        self.min_t = self.min_t.min(time);
        self.max_t = self.max_t.max(time);
        self.points += 1;
    }

    /// Bytes on disk and buffered.
    pub fn bytes(&self) -> u64 {
        self.flushed + self.buf.len() as u64
    }

    /// Buffer one point; `false` when the chunk file would pass 4 GiB.
    pub fn append(&mut self, series: u32, time: i64, value: &Value) -> bool {
        let Ok(offset) = u32::try_from(self.bytes()) else {
            return false;
        };
        if u64::from(offset) + (HEADER + MAX_BODY) as u64 > u64::from(u32::MAX) {
            return false;
        }
        record::encode_point(&mut self.buf, series, time, value);
        self.note(series, time, offset);
        true
    }

    /// Append the buffer to the file. On failure the buffer is kept and any
    /// partial write is cut off, so the next flush can retry.
    pub fn flush(&mut self) -> Result<(), TsdbError> {
        record::append(&self.path, &mut self.buf, &mut self.flushed)
    }

    /// Append the samples of `series` with `from <= time <= to`, in record
    /// order (callers sort).
    pub fn read(
        &self,
        series: u32,
        from: i64,
        to: i64,
        out: &mut Vec<Sample>,
    ) -> Result<(), TsdbError> {
        let Some(offsets) = self.index.get(&series) else {
            return Ok(());
        };
        let split = offsets.partition_point(|o| u64::from(*o) < self.flushed);
        let (on_disk, buffered) = offsets.split_at(split);
        let mut push = |body: &[u8]| {
            if let Some((_, t, v)) = record::decode_point(body)
                && t >= from
                && t <= to
            {
                out.push(Sample {
                    time_ms: t,
                    value: v,
                });
            }
        };
        if let (Some(first), Some(last)) = (on_disk.first(), on_disk.last()) {
            let file = File::open(&self.path).map_err(|e| TsdbError::io("open", &self.path, e))?;
            let first = u64::from(*first);
            let end = (u64::from(*last) + (HEADER + MAX_BODY) as u64).min(self.flushed);
            if end - first <= MAX_SPAN {
                let mut span = vec![0u8; (end - first) as usize];
                file.read_exact_at(&mut span, first)
                    .map_err(|e| TsdbError::io("read", &self.path, e))?;
                for o in on_disk {
                    let at = (u64::from(*o) - first) as usize;
                    if let Some((body, _)) = span.get(at..).and_then(record::next) {
                        push(body);
                    }
                }
            } else {
                let mut rec = vec![0u8; HEADER + MAX_BODY];
                for o in on_disk {
                    let o = u64::from(*o);
                    let n = ((self.flushed - o) as usize).min(rec.len());
                    file.read_exact_at(&mut rec[..n], o)
                        .map_err(|e| TsdbError::io("read", &self.path, e))?;
                    if let Some((body, _)) = record::next(&rec[..n]) {
                        push(body);
                    }
                }
            }
        }
        for o in buffered {
            let at = (u64::from(*o) - self.flushed) as usize;
            if let Some((body, _)) = self.buf.get(at..).and_then(record::next) {
                push(body);
            }
        }
        Ok(())
    }

    /// Delete the file.
    pub fn delete(&self) -> Result<(), TsdbError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(TsdbError::io("delete", &self.path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_name(&file_name(3_600_000)), Some(3_600_000));
        assert_eq!(parse_name("series.vts"), None);
        assert_eq!(parse_name("chunk-x.vts"), None);
    }

    #[test]
    fn reads_buffered_and_flushed_records() {
        let dir = tempfile::tempdir().expect("dir");
        let mut c = Chunk::new(dir.path(), 0);
        assert!(c.append(1, 10, &Value::Number(1.0)));
        assert!(c.append(2, 11, &Value::Bool(true)));
        c.flush().expect("flush");
        assert!(c.append(1, 12, &Value::Text("x".into())));
        let mut out = Vec::new();
        c.read(1, 0, 100, &mut out).expect("read");
        let times: Vec<i64> = out.iter().map(|s| s.time_ms).collect();
        assert_eq!(times, [10, 12]);
        c.flush().expect("flush");
        let (re, cut) = Chunk::open(dir.path(), 0, |_| true, |_, _, _| {}).expect("open");
        assert_eq!((re.points, cut, re.min_t, re.max_t), (3, 0, 10, 12));
        let mut out = Vec::new();
        re.read(2, 0, 100, &mut out).expect("read");
        assert_eq!(out[0].value, Value::Bool(true));
    }
}

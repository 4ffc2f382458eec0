//! The series dictionary: (device, metric) ↔ series id, kept in memory
//! and in an append-only file of checksummed records (`series.vts`). Ids
//! are dense and assigned in order, so record *n* holds id *n*; a torn
//! tail is cut at open like a chunk's.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::TsdbError;
use crate::record;

/// The dictionary file's name.
pub const FILE: &str = "series.vts";

/// Longest device or metric name in bytes.
pub const MAX_NAME: usize = 1024;

/// The series dictionary.
pub struct Dict {
    path: PathBuf,
    ids: HashMap<Arc<str>, HashMap<Arc<str>, u32>>,
    /// (device, metric) by id.
    pub names: Vec<(Arc<str>, Arc<str>)>,
    flushed: u64,
    buf: Vec<u8>,
}

impl Dict {
    /// Load the dictionary of `dir` (empty when there is none); returns it
    /// and the bytes of a torn tail that were cut.
    pub fn open(dir: &Path) -> Result<(Dict, u64), TsdbError> {
        let path = dir.join(FILE);
        let mut d = Dict {
            path,
            ids: HashMap::new(),
            names: Vec::new(),
            flushed: 0,
            buf: Vec::new(),
        };
        let bytes = match std::fs::read(&d.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((d, 0)),
            Err(e) => return Err(TsdbError::io("read", &d.path, e)),
        };
        let mut at = 0;
        while let Some((body, len)) = record::next(&bytes[at..]) {
            match record::decode_series(body) {
                Some((id, device, metric)) if id as usize == d.names.len() => {
                    d.insert(id, device.into(), metric.into());
                    at += len;
                }
                _ => break,
            }
        }
        if at < bytes.len() {
            let f = OpenOptions::new()
                .write(true)
                .open(&d.path)
                .map_err(|e| TsdbError::io("open", &d.path, e))?;
            f.set_len(at as u64)
                .map_err(|e| TsdbError::io("truncate", &d.path, e))?;
        }
        d.flushed = at as u64;
        Ok((d, (bytes.len() - at) as u64))
    }

    fn insert(&mut self, id: u32, device: Arc<str>, metric: Arc<str>) {
        self.ids
            .entry(device.clone())
            .or_default()
            .insert(metric.clone(), id);
        self.names.push((device, metric));
    }

    /// The id of a series, if known.
    pub fn get(&self, device: &str, metric: &str) -> Option<u32> {
        self.ids.get(device)?.get(metric).copied()
    }

    /// The id of a series, adding it when there are fewer than `max`.
    /// `None` when the dictionary is full.
    pub fn get_or_add(&mut self, device: &str, metric: &str, max: usize) -> Option<u32> {
        if let Some(id) = self.get(device, metric) {
            return Some(id);
        }
        if self.names.len() >= max {
            return None;
        }
        let id = u32::try_from(self.names.len()).ok()?;
        record::encode_series(&mut self.buf, id, device, metric);
        self.insert(id, device.into(), metric.into());
        Some(id)
    }

    /// Bytes on disk and buffered.
    pub fn bytes(&self) -> u64 {
        self.flushed + self.buf.len() as u64
    }

    /// Append new entries to the file; before any chunk is flushed, so a
    /// stored point's series is always known after a crash.
    pub fn flush(&mut self) -> Result<(), TsdbError> {
        record::append(&self.path, &mut self.buf, &mut self.flushed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_survive_reopen_and_the_bound_holds() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut d, _) = Dict::open(dir.path()).expect("open");
        assert_eq!(d.get_or_add("a", "t", 2), Some(0));
        assert_eq!(d.get_or_add("b", "t", 2), Some(1));
        assert_eq!(d.get_or_add("a", "t", 2), Some(0));
        assert_eq!(d.get_or_add("c", "t", 2), None);
        d.flush().expect("flush");
        let (d, cut) = Dict::open(dir.path()).expect("reopen");
        assert_eq!(cut, 0);
        assert_eq!(d.get("b", "t"), Some(1));
        assert_eq!(d.names.len(), 2);
    }
}

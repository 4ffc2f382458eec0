//! A small key-value state per function, shared by its instances and kept
//! across versions. Held in memory; `flush` writes it (atomically) when it
//! changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// Longest key.
pub const MAX_KEY: usize = 256;

/// Why a `set` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetError {
    /// Keys and values would pass the function's `state_bytes`.
    Quota,
    /// Key longer than [`MAX_KEY`].
    KeyTooLong,
}

/// The state of one function.
pub struct State {
    inner: Mutex<Inner>,
    dirty: AtomicBool,
    path: Option<PathBuf>,
}

struct Inner {
    map: BTreeMap<String, Vec<u8>>,
    bytes: u64,
    quota: u64,
}

impl State {
    /// Empty state kept only in memory.
    pub fn in_memory(quota: u64) -> State {
        State {
            inner: Mutex::new(Inner {
                map: BTreeMap::new(),
                bytes: 0,
                quota,
            }),
            dirty: AtomicBool::new(false),
            path: None,
        }
    }

    /// State stored at `path` (a JSON object of base64 values); a missing
    /// file is empty state.
    pub fn open(path: &Path, quota: u64) -> Result<State, String> {
        let mut map = BTreeMap::new();
        match std::fs::read(path) {
            Ok(raw) => {
                let doc: BTreeMap<String, String> =
                    serde_json::from_slice(&raw).map_err(|e| format!("{}: {e}", path.display()))?;
                for (k, v) in doc {
                    let v = B64
                        .decode(v)
                        .map_err(|e| format!("{}: key {k:?}: {e}", path.display()))?;
                    map.insert(k, v);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
        let bytes = map.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        Ok(State {
            inner: Mutex::new(Inner { map, bytes, quota }),
            dirty: AtomicBool::new(false),
            path: Some(path.to_path_buf()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Change the quota (a new version may set another). Existing entries
    /// are kept even if they now exceed it; sets fail until under.
    pub fn set_quota(&self, quota: u64) {
        self.lock().quota = quota;
    }

    /// A value.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.lock().map.get(key).cloned()
    }

    /// Call `f` with a value without copying it.
    pub fn with<R>(&self, key: &str, f: impl FnOnce(Option<&[u8]>) -> R) -> R {
        f(self.lock().map.get(key).map(Vec::as_slice))
    }

    /// Store a value.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), SetError> {
        if key.len() > MAX_KEY {
            return Err(SetError::KeyTooLong);
        }
        let mut g = self.lock();
        let old = g.map.get(key).map_or(0, |v| (key.len() + v.len()) as u64);
        let new = (key.len() + value.len()) as u64;
        let total = g.bytes - old + new;
        if new > old && total > g.quota {
            return Err(SetError::Quota);
        }
        g.bytes = total;
        match g.map.get_mut(key) {
            Some(v) => {
                v.clear();
                v.extend_from_slice(value);
            }
            None => {
                g.map.insert(key.to_owned(), value.to_vec());
            }
        }
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }

    /// Remove a key; whether it was there.
    pub fn delete(&self, key: &str) -> bool {
        let mut g = self.lock();
        match g.map.remove(key) {
            Some(v) => {
                g.bytes -= (key.len() + v.len()) as u64;
                self.dirty.store(true, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// Number of keys and bytes held.
    pub fn usage(&self) -> (usize, u64) {
        let g = self.lock();
        (g.map.len(), g.bytes)
    }

    /// All entries (for the API), values as text when UTF-8.
    pub fn snapshot(&self) -> BTreeMap<String, Vec<u8>> {
        self.lock().map.clone()
    }

    /// Write the state to its file if it changed since the last flush.
    pub fn flush(&self) -> Result<(), String> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let doc: BTreeMap<String, String> = self
            .lock()
            .map
            .iter()
            .map(|(k, v)| (k.clone(), B64.encode(v)))
            .collect();
        let write = || -> std::io::Result<()> {
            let raw = serde_json::to_vec(&doc).map_err(std::io::Error::other)?;
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, raw)?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| {
            self.dirty.store(true, Ordering::Release);
            format!("{}: {e}", path.display())
        })
    }
}

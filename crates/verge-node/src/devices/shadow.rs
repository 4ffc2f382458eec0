//! The node's copy of each device's shadow: kept in memory, one 0600 file
//! per device under `<data_dir>/devices/shadows/` (written whole and
//! atomically), restored at start; at most [`MAX_SHADOWS`] devices.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use verge_protocol::device::{Shadow, ShadowError, ShadowUpdate};

/// Most devices whose shadow the node keeps.
pub const MAX_SHADOWS: usize = 10_000;

/// Whether `device` may name a shadow (and its file): 1 to 128 letters,
/// digits, `-`, `_`, `.` or `:`, not starting with `.`.
pub fn valid_device(device: &str) -> bool {
    !device.is_empty()
        && device.len() <= 128
        && !device.starts_with('.')
        && device
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// Why a change was not kept.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// Refused by the shadow's rules (version, shape, size, name, room).
    #[error(transparent)]
    Shadow(#[from] ShadowError),
    /// Its file could not be written: nothing changed.
    #[error("the shadow could not be saved: {0}")]
    Storage(String),
}

impl UpdateError {
    /// [`ShadowError::code`], or `storage_error`.
    pub fn code(&self) -> &'static str {
        match self {
            UpdateError::Shadow(e) => e.code(),
            UpdateError::Storage(_) => "storage_error",
        }
    }
}

/// What an accepted change did.
#[derive(Debug, Clone)]
pub struct Changed {
    /// The document after the change.
    pub shadow: Shadow,
    /// Whether anything changed (and was written).
    pub changed: bool,
    /// Whether `desired` changed (the device is told the delta).
    pub desired_changed: bool,
}

/// Every shadow the node keeps.
pub struct Shadows {
    dir: PathBuf,
    docs: HashMap<String, Shadow>,
}

impl Shadows {
    /// Read the shadows kept under `dir` (created if missing). A file that
    /// does not parse is moved aside to `.corrupt` and logged.
    pub fn load(dir: &Path) -> std::io::Result<Shadows> {
        verge_net::fs::create_private_dir(dir)?;
        let mut docs = HashMap::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(device) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|d| valid_device(d))
                .map(str::to_owned)
            else {
                continue;
            };
            if docs.len() >= MAX_SHADOWS {
                tracing::warn!(
                    device,
                    "more than {MAX_SHADOWS} shadows on disk; not loaded"
                );
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Shadow>(&b).map_err(|e| e.to_string()))
            {
                Ok(s) => {
                    docs.insert(device, s);
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), "shadow file unreadable, moved aside: {e}");
                    let _ = std::fs::rename(&path, path.with_extension("json.corrupt"));
                }
            }
        }
        Ok(Shadows {
            dir: dir.to_path_buf(),
            docs,
        })
    }

    /// How many shadows are kept.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// Every kept shadow.
    pub fn all(&self) -> impl Iterator<Item = (&String, &Shadow)> {
        self.docs.iter()
    }

    /// Whether `device` has a shadow.
    pub fn has(&self, device: &str) -> bool {
        self.docs.contains_key(device)
    }

    /// The device's shadow (an empty one, version 0, when it has none).
    pub fn get(&self, device: &str) -> Shadow {
        self.docs.get(device).cloned().unwrap_or_default()
    }

    /// Apply an update made at `now_ms` (refused: version, shape, size, or
    /// the node keeps [`MAX_SHADOWS`] others), and write the file when it
    /// changed.
    pub async fn update(
        &mut self,
        device: &str,
        update: &ShadowUpdate,
        now_ms: u64,
    ) -> Result<Changed, UpdateError> {
        self.room_for(device)?;
        let mut doc = self.get(device);
        let before = doc.desired.clone();
        let changed = doc.apply(update, now_ms)?;
        let desired_changed = doc.desired != before;
        if changed {
            self.store(device, doc.clone()).await?;
        }
        Ok(Changed {
            shadow: doc,
            changed,
            desired_changed,
        })
    }

    /// Merge the cloud's copy (the conflict rule of
    /// [`Shadow::merge_from_cloud`]) and write the file when it changed.
    pub async fn merge_from_cloud(
        &mut self,
        device: &str,
        cloud: &Shadow,
        now_ms: u64,
    ) -> Result<Changed, UpdateError> {
        self.room_for(device)?;
        let mut doc = self.get(device);
        let before = doc.desired.clone();
        let changed = doc.merge_from_cloud(cloud, now_ms);
        let desired_changed = doc.desired != before;
        if changed {
            self.store(device, doc.clone()).await?;
        }
        Ok(Changed {
            shadow: doc,
            changed,
            desired_changed,
        })
    }

    fn room_for(&self, device: &str) -> Result<(), ShadowError> {
        if !valid_device(device) {
            return Err(ShadowError::Invalid(format!(
                "`{device}` is not a device name a shadow can have (1 to 128 letters, digits, `-`, `_`, `.`, `:`)"
            )));
        }
        if !self.docs.contains_key(device) && self.docs.len() >= MAX_SHADOWS {
            return Err(ShadowError::Invalid(format!(
                "the node keeps at most {MAX_SHADOWS} shadows"
            )));
        }
        Ok(())
    }

    /// Write `doc`'s file, then keep it; a failed write keeps nothing (the
    /// change is refused, the copy in memory stays the one on disk).
    async fn store(&mut self, device: &str, doc: Shadow) -> Result<(), UpdateError> {
        let path = self.dir.join(format!("{device}.json"));
        let bytes = serde_json::to_vec(&doc).map_err(|e| UpdateError::Storage(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            verge_net::fs::write_atomic(&path, &bytes, 0o600)
                .map_err(|e| format!("{}: {e}", path.display()))
        })
        .await
        .map_err(|e| UpdateError::Storage(e.to_string()))?
        .map_err(|e| {
            tracing::error!(device, "shadow not saved: {e}");
            UpdateError::Storage(e)
        })?;
        self.docs.insert(device.to_owned(), doc);
        Ok(())
    }

    /// Forget `device`'s shadow and delete its file; whether it had one.
    pub async fn remove(&mut self, device: &str) -> bool {
        if self.docs.remove(device).is_none() {
            return false;
        }
        let path = self.dir.join(format!("{device}.json"));
        let res = tokio::task::spawn_blocking(move || std::fs::remove_file(&path)).await;
        if let Ok(Err(e)) = res
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::error!(device, "shadow file not deleted: {e}");
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn shadows_are_written_and_read_back_and_a_bad_file_is_moved_aside() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = Shadows::load(dir.path()).expect("load");
        let up: ShadowUpdate =
            serde_json::from_value(json!({"desired": {"led": "on"}})).expect("update");
        let c = s.update("d1", &up, 5).await.expect("update");
        assert!(c.changed && c.desired_changed);
        assert!(s.update("../x", &up, 5).await.is_err());
        std::fs::write(dir.path().join("bad.json"), b"{nope").expect("write");
        let back = Shadows::load(dir.path()).expect("load");
        assert_eq!(back.get("d1").desired["led"], json!("on"));
        assert_eq!(back.get("d1").version, 1);
        assert_eq!(back.len(), 1);
        assert!(dir.path().join("bad.json.corrupt").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("d1.json"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn device_names_are_checked() {
        assert!(valid_device("sensor-1"));
        assert!(valid_device("plant:line_2.a"));
        for bad in ["", ".hidden", "a/b", "a+b", "..", &"x".repeat(129)] {
            assert!(!valid_device(bad), "{bad}");
        }
    }
}

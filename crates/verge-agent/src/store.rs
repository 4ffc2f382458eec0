//! Small durable files in the agent's directory (`<data_dir>/cloud`):
//! written whole to a temporary file, synced, renamed over the old one and
//! the directory synced, so a crash leaves the old or the new file, never
//! a mix.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::AgentError;

/// Write `bytes` to `path` atomically with permissions `mode`; creates the
/// directory if needed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AgentError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| AgentError::Io { path: p, source }
    };
    let dir = path
        .parent()
        .ok_or_else(|| AgentError::Invalid(format!("{} has no directory", path.display())))?;
    fs::create_dir_all(dir).map_err(io(dir))?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp_name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io(&tmp))?;
        // The mode above is only used when the file is created, and the
        // umask applies to it; set it explicitly.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, path).map_err(io(path))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The file's bytes, `None` when it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, AgentError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AgentError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_sets_the_mode() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("sub/f.json");
        write_atomic(&path, b"one", 0o600).expect("write");
        write_atomic(&path, b"two", 0o600).expect("rewrite");
        assert_eq!(read_optional(&path).expect("read"), Some(b"two".to_vec()));
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!dir.path().join("sub/f.json.tmp").exists());
        assert_eq!(read_optional(&dir.path().join("none")).expect("read"), None);
    }
}

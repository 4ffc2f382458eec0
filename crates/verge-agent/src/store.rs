//! Small durable files in the agent's directory (`<data_dir>/cloud`),
//! written through `verge_net::fs` (atomic, private).

use std::fs;
use std::path::Path;

use crate::AgentError;

/// Write `bytes` to `path` atomically with permissions `mode`; creates the
/// directory (0700) if needed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AgentError> {
    verge_net::fs::write_atomic(path, bytes, mode).map_err(|source| AgentError::Io {
        path: path.to_path_buf(),
        source,
    })
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
    use std::os::unix::fs::PermissionsExt;

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

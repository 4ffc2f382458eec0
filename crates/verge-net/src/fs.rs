//! Small durable files holding secrets or state (tokens, credentials,
//! desired state, function modules): written whole to a temporary file,
//! synced, renamed over the old one and the directory synced, so a crash
//! leaves the old or the new file, never a mix; created with the mode
//! given (0600 for secrets), whatever the umask.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of a file only the node's user may read and write.
pub const PRIVATE_FILE: u32 = 0o600;
/// Mode of a directory only the node's user may enter.
pub const PRIVATE_DIR: u32 = 0o700;

/// Write `bytes` to `path` atomically with permissions `mode`; creates the
/// directory (mode 0700) if needed. The caller names `path` in its error.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    create_private_dir(dir)?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode above applies only when the file is created, and the
        // umask applies to it; set it explicitly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir).and_then(|d| d.sync_all())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Create `dir` and its missing parents with mode 0700. A directory that
/// already exists keeps its mode (an operator may have chosen it).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR)
        .create(dir)
}

/// Make an existing file private (0600), e.g. a database the engine
/// created with the umask's mode.
pub fn make_private(path: &Path) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(PRIVATE_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_written_0600_in_a_0700_dir() {
        let root = std::env::temp_dir().join(format!("verge-net-fs-{}", std::process::id()));
        let file = root.join("a/b/token");
        write_atomic(&file, b"one", PRIVATE_FILE).expect("write");
        write_atomic(&file, b"two", PRIVATE_FILE).expect("rewrite");
        assert_eq!(fs::read(&file).expect("read"), b"two");
        let mode = |p: &Path| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&root.join("a/b")), 0o700);
        assert!(!root.join("a/b/token.tmp").exists());
        make_private(&file).expect("chmod");
        fs::remove_dir_all(&root).expect("clean");
    }
}

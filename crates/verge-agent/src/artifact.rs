//! Process components' files: a gzipped tar archive fetched from the
//! cloud with the node's credentials, checked against the size and SHA-256
//! the desired state names, and unpacked into the component's directory
//! `<data_dir>/components/<name>/<version>`.
//!
//! Invariants:
//! - A directory is complete or absent: the archive is unpacked into a
//!   sibling `.partial` directory, a marker file with the digest is
//!   written, then it is renamed into place. A directory whose marker
//!   holds the digest is installed and is not fetched again (a cold boot
//!   without the cloud finds its files there).
//! - Nothing lands outside the directory: only regular files and
//!   directories are unpacked, paths must be relative without `..`, and
//!   the unpacked size and entry count are bounded. The size counted is
//!   the entry's real one (a PAX `size` record overrides the raw header's),
//!   and sparse entries, whose unpacked size differs from what they
//!   declare, are refused.
//! - No file or directory is group- or world-writable: modes are masked
//!   with 0o022.

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use verge_protocol::{ArtifactRef, ComponentSpec};

use crate::http;

/// The file in an installed directory that holds the archive's digest.
pub const MARKER: &str = ".verge-artifact";
/// Most bytes an archive may unpack to.
pub const MAX_UNPACKED: u64 = 1 << 30;
/// Most entries an archive may hold.
pub const MAX_ENTRIES: usize = 100_000;
/// Time limit of one download.
const FETCH_TIMEOUT: Duration = Duration::from_secs(300);

/// Where archives come from: the cloud and the node's token.
pub struct Source<'a> {
    /// The cloud's base URL.
    pub cloud_url: &'a str,
    /// The node's bearer token.
    pub token: &'a str,
}

/// A component's directory under the node's data dir.
pub fn component_dir(data_dir: &Path, spec: &ComponentSpec) -> PathBuf {
    data_dir
        .join("components")
        .join(&spec.name)
        .join(&spec.version)
}

/// Whether `dir` holds the archive with digest `sha256`.
pub fn installed(dir: &Path, sha256: &str) -> bool {
    std::fs::read_to_string(dir.join(MARKER)).is_ok_and(|m| m.trim() == sha256)
}

/// Make sure `spec`'s artifact is unpacked in its directory; fetch it when
/// it is not. `Err` says why it could not be.
pub async fn ensure(
    source: &Source<'_>,
    data_dir: &Path,
    spec: &ComponentSpec,
    artifact: &ArtifactRef,
) -> Result<(), String> {
    let dir = component_dir(data_dir, spec);
    if installed(&dir, &artifact.sha256) {
        return Ok(());
    }
    let url =
        verge_protocol::paths::component_artifact(source.cloud_url, &spec.name, &spec.version);
    let body = match http::request("GET", &url, Some(source.token), None, FETCH_TIMEOUT).await {
        Ok((200, body)) => body,
        Ok((status, body)) => return Err(http::status_error(status, &body).to_string()),
        Err(e) => return Err(format!("fetching {url}: {e}")),
    };
    check(&body, artifact)?;
    let sha = artifact.sha256.clone();
    tokio::task::spawn_blocking(move || install(&body, &dir, &sha))
        .await
        .map_err(|e| format!("unpacking: {e}"))?
}

/// The archive is the one the desired state names.
pub fn check(body: &[u8], artifact: &ArtifactRef) -> Result<(), String> {
    if body.len() as u64 != artifact.size {
        return Err(format!(
            "the archive has {} bytes, the desired state says {}",
            body.len(),
            artifact.size
        ));
    }
    let digest = hex::encode(Sha256::digest(body));
    if !digest.eq_ignore_ascii_case(&artifact.sha256) {
        return Err(format!(
            "the archive's SHA-256 is {digest}, the desired state says {}",
            artifact.sha256
        ));
    }
    Ok(())
}

/// Unpack `archive` (gzipped tar) into `dir`, complete or not at all, and
/// mark it with `sha256`.
pub fn install(archive: &[u8], dir: &Path, sha256: &str) -> Result<(), String> {
    let parent = dir
        .parent()
        .ok_or_else(|| format!("{}: no parent directory", dir.display()))?;
    let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    std::fs::create_dir_all(parent).map_err(|e| io("creating", parent, e))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let partial = parent.join(format!(".{name}.partial"));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| io("removing", &partial, e))?;
    }
    std::fs::create_dir_all(&partial).map_err(|e| io("creating", &partial, e))?;
    let unpacked = unpack(archive, &partial).and_then(|()| {
        std::fs::write(partial.join(MARKER), format!("{sha256}\n"))
            .map_err(|e| io("writing", &partial, e))
    });
    if let Err(e) = unpacked {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| io("replacing", dir, e))?;
    }
    std::fs::rename(&partial, dir).map_err(|e| io("moving into place", dir, e))
}

fn unpack(archive: &[u8], into: &Path) -> Result<(), String> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    tar.set_preserve_permissions(false);
    tar.set_mask(0o022);
    tar.set_overwrite(true);
    let entries = tar
        .entries()
        .map_err(|e| format!("not a gzipped tar archive: {e}"))?;
    let mut total: u64 = 0;
    for (n, entry) in entries.enumerate() {
        let mut entry = entry.map_err(|e| format!("not a gzipped tar archive: {e}"))?;
        if n >= MAX_ENTRIES {
            return Err(format!("the archive has more than {MAX_ENTRIES} entries"));
        }
        let path = entry
            .path()
            .map_err(|e| format!("an entry's path: {e}"))?
            .into_owned();
        let shown = path.display().to_string();
        let safe = path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        if !safe {
            return Err(format!(
                "entry `{shown}`: paths must be relative and stay inside the component's directory"
            ));
        }
        let kind = entry.header().entry_type();
        if kind.is_gnu_sparse() || sparse_pax(&mut entry)? {
            return Err(format!("entry `{shown}`: sparse files are not installed"));
        }
        if !(kind.is_file() || kind.is_dir()) {
            return Err(format!(
                "entry `{shown}`: only files and directories are installed, not links or devices"
            ));
        }
        if path.file_name().is_some_and(|f| f == MARKER) {
            return Err(format!("entry `{shown}`: the name {MARKER} is the node's"));
        }
        // The real size: a PAX `size` record overrides the raw header's.
        total = total.saturating_add(entry.size());
        if total > MAX_UNPACKED {
            return Err(format!(
                "the archive unpacks to more than {MAX_UNPACKED} bytes"
            ));
        }
        let ok = entry
            .unpack_in(into)
            .map_err(|e| format!("entry `{shown}`: {e}"))?;
        if !ok {
            return Err(format!(
                "entry `{shown}`: outside the component's directory"
            ));
        }
    }
    // A trailing garbage check: the gzip stream must have been whole.
    let mut rest = Vec::new();
    tar.into_inner()
        .read_to_end(&mut rest)
        .map_err(|e| format!("not a whole gzip stream: {e}"))?;
    Ok(())
}

/// Whether `entry` has PAX records of a sparse file (`GNU.sparse.*`).
fn sparse_pax<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<bool, String> {
    let Some(records) = entry
        .pax_extensions()
        .map_err(|e| format!("an entry's PAX records: {e}"))?
    else {
        return Ok(false);
    };
    for record in records {
        let record = record.map_err(|e| format!("an entry's PAX records: {e}"))?;
        if record.key_bytes().starts_with(b"GNU.sparse.") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Remove the installed versions of `name` other than `keep` (the ones
/// with the node's marker only; a directory the node did not install is
/// left alone).
pub fn prune(data_dir: &Path, name: &str, keep: &[&str]) {
    let base = data_dir.join("components").join(name);
    let Ok(dirs) = std::fs::read_dir(&base) else {
        return;
    };
    for d in dirs.flatten() {
        let version = d.file_name().to_string_lossy().into_owned();
        let path = d.path();
        if keep.contains(&version.as_str()) || !path.join(MARKER).is_file() {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => tracing::info!(component = name, %version, "old component version removed"),
            Err(e) => tracing::warn!(component = name, %version, "old version not removed: {e}"),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn archive(entries: &[(&str, &[u8], tar::EntryType)]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (path, data, kind) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            // Written raw, so that bad paths reach the reader.
            let name = h.as_old_mut().name.as_mut_slice();
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn unpacks_files_with_their_modes_and_marks_the_directory() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("components/r/1.0");
        let a = archive(&[
            ("bin/", b"", tar::EntryType::Directory),
            (
                "bin/run.sh",
                b"#!/bin/sh\necho hi\n",
                tar::EntryType::Regular,
            ),
        ]);
        install(&a, &dir, "abc").unwrap();
        let meta = std::fs::metadata(dir.join("bin/run.sh")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o111, 0o111);
        assert!(installed(&dir, "abc"));
        assert!(!installed(&dir, "abd"));
        // Installing again replaces it whole.
        let b = archive(&[("other.txt", b"x", tar::EntryType::Regular)]);
        install(&b, &dir, "def").unwrap();
        assert!(!dir.join("bin").exists() && dir.join("other.txt").is_file());
    }

    #[test]
    fn refuses_escapes_links_and_garbage_leaving_nothing() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("components/r/1.0");
        for (a, what) in [
            (
                archive(&[("../evil", b"x", tar::EntryType::Regular)]),
                "relative",
            ),
            (
                archive(&[("/etc/evil", b"x", tar::EntryType::Regular)]),
                "relative",
            ),
            (archive(&[("ln", b"", tar::EntryType::Symlink)]), "links"),
            (
                archive(&[(MARKER, b"x", tar::EntryType::Regular)]),
                "node's",
            ),
            (b"not gzip at all".to_vec(), "gzip"),
        ] {
            let e = install(&a, &dir, "abc").unwrap_err();
            assert!(e.contains(what), "{what}: {e}");
            assert!(
                !dir.exists(),
                "{what}: a refused archive leaves no directory"
            );
            assert!(!t.path().join("evil").exists());
        }
    }

    #[test]
    fn the_size_limit_counts_a_pax_size_record() {
        // The raw header says 0 bytes; the PAX record says more than the
        // limit, and the reader would read that many.
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        let big = (MAX_UNPACKED + 1).to_string();
        b.append_pax_extensions([("size", big.as_bytes())]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(0);
        h.set_mode(0o644);
        h.set_path("big.bin").unwrap();
        h.set_cksum();
        b.append(&h, &b""[..]).unwrap();
        let a = b.into_inner().unwrap().finish().unwrap();
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("components/r/1.0");
        let e = install(&a, &dir, "abc").unwrap_err();
        assert!(e.contains("unpacks to more than"), "{e}");
        assert!(!dir.exists());
    }

    #[test]
    fn refuses_sparse_entries() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("components/r/1.0");
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_size(0);
        h.set_mode(0o644);
        h.set_path("s").unwrap();
        h.as_gnu_mut().unwrap().set_real_size(1 << 20);
        h.set_cksum();
        b.append(&h, &b""[..]).unwrap();
        let a = b.into_inner().unwrap().finish().unwrap();
        let e = install(&a, &dir, "abc").unwrap_err();
        assert!(e.contains("sparse"), "{e}");
        // A PAX sparse file is a regular entry with `GNU.sparse.*` records.
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        b.append_pax_extensions([("GNU.sparse.major", &b"1"[..]), ("GNU.sparse.minor", b"0")])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(1);
        h.set_mode(0o644);
        h.set_path("s").unwrap();
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        let a = b.into_inner().unwrap().finish().unwrap();
        let e = install(&a, &dir, "abc").unwrap_err();
        assert!(e.contains("sparse"), "{e}");
        assert!(!dir.exists());
    }

    #[test]
    fn world_writable_modes_are_masked() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("components/r/1.0");
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (path, kind, data) in [
            ("d/", tar::EntryType::Directory, &b""[..]),
            ("d/run.sh", tar::EntryType::Regular, b"#!/bin/sh\n"),
        ] {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o777);
            h.set_path(path).unwrap();
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        let a = b.into_inner().unwrap().finish().unwrap();
        install(&a, &dir, "abc").unwrap();
        let mode = |p: &str| std::fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("d/run.sh"), 0o755);
        assert_eq!(mode("d"), 0o755);
    }

    #[test]
    fn size_and_digest_must_match_the_desired_state() {
        let body = b"archive bytes";
        let good = ArtifactRef {
            sha256: hex::encode(Sha256::digest(body)),
            size: body.len() as u64,
        };
        check(body, &good).unwrap();
        let mut bad = good.clone();
        bad.size += 1;
        assert!(check(body, &bad).unwrap_err().contains("bytes"));
        let mut bad = good;
        bad.sha256 = "0".repeat(64);
        assert!(check(body, &bad).unwrap_err().contains("SHA-256"));
    }

    #[test]
    fn prune_keeps_the_named_versions_and_foreign_directories() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("components/r");
        for v in ["1", "2", "3"] {
            std::fs::create_dir_all(base.join(v)).unwrap();
            std::fs::write(base.join(v).join(MARKER), "x").unwrap();
        }
        std::fs::create_dir_all(base.join("mine")).unwrap();
        prune(t.path(), "r", &["2", "3"]);
        assert!(!base.join("1").exists());
        assert!(base.join("2").exists() && base.join("3").exists() && base.join("mine").exists());
    }
}

//! Releases of the `verge` binary: the build version this process
//! reports, ed25519 keys and signatures of releases, and putting a
//! checked release in place of the running executable (A/B: the previous
//! binary is kept beside it). What happens after the swap (the trial of
//! the new binary, its confirmation or revert) is in [`crate::update`].
//!
//! Invariants:
//! - Nothing is swapped unless the binary's size, SHA-256 and signature
//!   (with the key the node was given at join) are right and the binary
//!   runs and reports the release's version.
//! - The executable is replaced by a rename in its own directory: it is
//!   the old binary or the new one, never a partial file.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use sha2::{Digest, Sha256};
use verge_protocol::{ReleaseRef, release_message};

use crate::http;

/// Time limit of a release's download.
const FETCH_TIMEOUT: Duration = Duration::from_secs(300);
/// Time limit of the new binary's `--version`.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);
/// The folder of releases under the node's data dir.
pub const RELEASE_DIR: &str = "release";
/// The previous binary, kept for a revert.
pub const PREVIOUS_BINARY: &str = "verge-previous";

static BUILD_VERSION: OnceLock<String> = OnceLock::new();

/// Set the version this build reports (the binary crate does, once, at
/// start: only it reads the build tag, so a tagged build recompiles only
/// it). Later calls change nothing.
pub fn set_build_version(version: &str) {
    let _ = BUILD_VERSION.set(version.to_owned());
}

/// The version this process reports (heartbeat, join, releases): what
/// [`set_build_version`] set, else the crate's version.
pub fn build_version() -> &'static str {
    BUILD_VERSION
        .get()
        .map_or(env!("CARGO_PKG_VERSION"), String::as_str)
}

/// A new release key: the private key as PKCS#8 (keep it secret) and the
/// public key, hex (give it to nodes at join).
pub fn keygen() -> Result<(Vec<u8>, String), String> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 =
        Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| "generating a key failed".to_owned())?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| "the generated key does not parse".to_owned())?;
    Ok((pkcs8.as_ref().to_vec(), hex::encode(pair.public_key())))
}

/// The release of `binary` as `version`, signed with the PKCS#8 private
/// key `pkcs8`.
pub fn sign(pkcs8: &[u8], version: &str, binary: &[u8]) -> Result<ReleaseRef, String> {
    if !verge_protocol::valid_release_version(version) {
        return Err(format!(
            "version `{version}`: 1 to 64 letters, digits, `.`, `_`, `-` or `+`, starting with a letter or digit"
        ));
    }
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
        .map_err(|_| "the key is not an ed25519 PKCS#8 private key".to_owned())?;
    let sha256 = hex::encode(Sha256::digest(binary));
    let signature = pair.sign(&release_message(version, &sha256));
    Ok(ReleaseRef {
        version: version.to_owned(),
        sha256,
        size: binary.len() as u64,
        signature: base64::engine::general_purpose::STANDARD.encode(signature.as_ref()),
    })
}

/// Whether `key` is a release public key: 32 bytes as 64 hex digits.
pub fn parse_public_key(key: &str) -> Result<Vec<u8>, String> {
    match hex::decode(key.trim()) {
        Ok(b) if b.len() == 32 => Ok(b),
        _ => Err("a release key is an ed25519 public key: 64 hex digits".to_owned()),
    }
}

/// Check `binary` against the release `r`: its size, its SHA-256 and
/// `r`'s signature with the public key `key` (hex).
pub fn verify(key: &str, r: &ReleaseRef, binary: &[u8]) -> Result<(), String> {
    if binary.len() as u64 != r.size {
        return Err(format!(
            "the binary has {} bytes, the release says {}",
            binary.len(),
            r.size
        ));
    }
    let digest = hex::encode(Sha256::digest(binary));
    if digest != r.sha256.to_ascii_lowercase() {
        return Err(format!(
            "the binary's SHA-256 is {digest}, the release says {}",
            r.sha256
        ));
    }
    verify_signature(key, r)
}

/// Check `r`'s signature of its version and SHA-256 with `key` (hex).
pub fn verify_signature(key: &str, r: &ReleaseRef) -> Result<(), String> {
    let key = parse_public_key(key)?;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(r.signature.trim())
        .map_err(|e| format!("the release's signature is not base64: {e}"))?;
    UnparsedPublicKey::new(&ED25519, key)
        .verify(&release_message(&r.version, &r.sha256), &signature)
        .map_err(|_| {
            format!(
                "release {}: the signature does not match the node's release key",
                r.version
            )
        })
}

/// Fetch the release `r` from the cloud, check it ([`verify`]) and keep it
/// as `<release_dir>/verge-{version}` (0755); then run it with
/// `--version` and check that it reports `r.version`. Returns its path.
pub async fn fetch(
    source: &crate::artifact::Source<'_>,
    release_dir: &Path,
    key: &str,
    r: &ReleaseRef,
) -> Result<PathBuf, String> {
    let url = verge_protocol::paths::release_binary(source.cloud_url, &r.version);
    let body = match http::request("GET", &url, Some(source.token), None, FETCH_TIMEOUT).await {
        Ok((200, body)) => body,
        Ok((status, body)) => return Err(http::status_error(status, &body).to_string()),
        Err(e) => return Err(format!("fetching {url}: {e}")),
    };
    verify(key, r, &body)?;
    let path = release_dir.join(format!("verge-{}", r.version));
    verge_net::fs::write_atomic(&path, &body, 0o755)
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    check_version(&path, &r.version).await?;
    Ok(path)
}

/// Run `binary --version` and check it prints `version` (as clap does:
/// `verge {version}`).
pub async fn check_version(binary: &Path, version: &str) -> Result<(), String> {
    let run = tokio::process::Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(VERSION_TIMEOUT, run)
        .await
        .map_err(|_| {
            format!(
                "`{} --version` did not finish within {} s",
                binary.display(),
                VERSION_TIMEOUT.as_secs()
            )
        })?
        .map_err(|e| format!("running {}: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let reported = text.split_whitespace().nth(1).unwrap_or_default();
    if !out.status.success() || reported != version {
        return Err(format!(
            "the binary reports version `{}` ({}), the release is {version}",
            text.trim(),
            out.status
        ));
    }
    Ok(())
}

/// The temporary file beside `to` that [`replace_file`] renames over it.
fn temp_beside(to: &Path) -> Result<PathBuf, String> {
    let dir = to
        .parent()
        .ok_or_else(|| format!("{}: no directory", to.display()))?;
    let name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(dir.join(format!(".{name}.verge-new")))
}

/// Whether the node can replace `exe`: a file can be made in its
/// directory (and is removed again). Checked before anything changes.
pub fn check_replaceable(exe: &Path) -> Result<(), String> {
    let tmp = temp_beside(exe)?;
    let made = std::fs::File::create(&tmp);
    let _ = std::fs::remove_file(&tmp);
    made.map(drop).map_err(|e| {
        format!(
            "{} cannot be replaced (its directory {} must be writable by the node): {e}",
            exe.display(),
            tmp.parent().unwrap_or(exe).display()
        )
    })
}

/// Copy `from` over `to` by a temporary file in `to`'s directory and a
/// rename, keeping mode 0755: `to` is the old file or the new one, never a
/// partial one.
pub fn replace_file(from: &Path, to: &Path) -> Result<(), String> {
    let tmp = temp_beside(to)?;
    let copied = std::fs::copy(from, &tmp).and_then(|_| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::File::open(&tmp)?.sync_all()
    });
    if let Err(e) = copied {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "copying {} to {}: {e}",
            from.display(),
            tmp.display()
        ));
    }
    std::fs::rename(&tmp, to).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("replacing {}: {e}", to.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(binary: &[u8]) -> (String, ReleaseRef) {
        let (private, public) = keygen().expect("keygen");
        (public, sign(&private, "0.1.0+b2", binary).expect("sign"))
    }

    #[test]
    fn a_signed_release_verifies() {
        let (key, r) = signed(b"new binary");
        assert_eq!(r.size, 10);
        assert_eq!(r.sha256, hex::encode(Sha256::digest(b"new binary")));
        verify(&key, &r, b"new binary").expect("good");
    }

    #[test]
    fn another_key_is_refused() {
        let (_, r) = signed(b"new binary");
        let (_, other) = keygen().expect("keygen");
        let e = verify(&other, &r, b"new binary").expect_err("wrong key");
        assert!(e.contains("does not match the node's release key"), "{e}");
    }

    #[test]
    fn a_tampered_binary_digest_or_version_is_refused() {
        let (key, r) = signed(b"new binary");
        let e = verify(&key, &r, b"new binarx").expect_err("tampered binary");
        assert!(e.contains("SHA-256"), "{e}");
        // A digest changed to match another binary: the signature breaks.
        let mut other = r.clone();
        other.sha256 = hex::encode(Sha256::digest(b"evil binar"));
        let e = verify(&key, &other, b"evil binar").expect_err("tampered sha");
        assert!(e.contains("signature"), "{e}");
        let mut moved = r.clone();
        moved.version = "0.1.0+b3".into();
        assert!(verify(&key, &moved, b"new binary").is_err());
        let e = verify(&key, &r, b"short").expect_err("size");
        assert!(e.contains("bytes"), "{e}");
    }

    #[test]
    fn bad_base64_and_bad_keys_are_refused() {
        let (key, mut r) = signed(b"x");
        r.signature = "%%%".into();
        assert!(verify(&key, &r, b"x").expect_err("b64").contains("base64"));
        let (_, r) = signed(b"x");
        assert!(
            verify("abcd", &r, b"x")
                .expect_err("key")
                .contains("64 hex")
        );
        assert!(parse_public_key(&"ab".repeat(32)).is_ok());
    }

    #[test]
    fn bad_versions_and_keys_are_not_signed() {
        let (private, _) = keygen().expect("keygen");
        assert!(sign(&private, "../x", b"x").is_err());
        assert!(sign(b"not a key", "1.0", b"x").is_err());
    }

    #[test]
    fn replace_file_swaps_whole_files() {
        let dir = tempfile::tempdir().expect("tmp");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, b"new").expect("a");
        std::fs::write(&b, b"old").expect("b");
        replace_file(&a, &b).expect("replace");
        assert_eq!(std::fs::read(&b).expect("b"), b"new");
        assert!(!dir.path().join(".b.verge-new").exists());
        let e = replace_file(&a, Path::new("/proc/verge-none/x")).expect_err("read-only");
        assert!(e.contains("/proc/verge-none"), "{e}");
        check_replaceable(&b).expect("writable");
        assert!(!dir.path().join(".b.verge-new").exists());
        let e = check_replaceable(Path::new("/proc/verge-none/x")).expect_err("read-only");
        assert!(e.contains("must be writable by the node"), "{e}");
    }

    #[tokio::test]
    async fn the_version_a_binary_reports_is_checked() {
        let dir = tempfile::tempdir().expect("tmp");
        let script = dir.path().join("verge-x");
        std::fs::write(&script, "#!/bin/sh\necho verge 0.1.0+b2\n").expect("script");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("mode");
        check_version(&script, "0.1.0+b2").await.expect("same");
        let e = check_version(&script, "0.1.0+b3").await.expect_err("other");
        assert!(e.contains("reports version"), "{e}");
    }
}

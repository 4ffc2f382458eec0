//! `verge release`: make a release key and sign a `verge` binary as a
//! release (the crypto is `verge_agent::release`'s, which checks them on
//! the node).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;

/// Write a new private key to `out` (0600, never over an existing file)
/// and print its public key.
pub fn keygen(out: &Path) -> anyhow::Result<()> {
    let public = write_key(out)?;
    println!("{public}");
    eprintln!(
        "private key in {}; give nodes the public key above: verge node --cloud URL --join TOKEN --release-key {public}",
        out.display()
    );
    Ok(())
}

/// Write a new private key to `out`; its public key (hex).
fn write_key(out: &Path) -> anyhow::Result<String> {
    let (private, public) = verge_agent::release::keygen().map_err(anyhow::Error::msg)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| {
            format!(
                "{}: not written (an existing key is never replaced)",
                out.display()
            )
        })?;
    f.write_all(&private)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(public)
}

/// Print the release JSON of `file` as `version`, signed with `key`.
pub fn sign(key: &Path, version: &str, file: &Path) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string(&release_of(key, version, file)?)?
    );
    Ok(())
}

/// The release of `file` as `version`, signed with `key`.
fn release_of(
    key: &Path,
    version: &str,
    file: &Path,
) -> anyhow::Result<verge_protocol::ReleaseRef> {
    let private = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
    let binary = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    verge_agent::release::sign(&private, version, &binary)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("signing with {}", key.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_refuses_to_overwrite_and_sign_round_trips() {
        let dir = tempfile::tempdir().expect("tmp");
        let key = dir.path().join("release.key");
        let public = write_key(&key).expect("keygen");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(keygen(&key).is_err(), "an existing key is kept");
        let bin = dir.path().join("verge");
        std::fs::write(&bin, b"binary").expect("bin");
        let release = release_of(&key, "0.1.0+b2", &bin).expect("sign");
        assert_eq!(release.size, 6);
        // What the node checks: the binary with the printed public key.
        verge_agent::release::verify(&public, &release, b"binary").expect("verifies");
        assert!(verge_agent::release::verify(&public, &release, b"binarY").is_err());
        assert!(release_of(&key, "../x", &bin).is_err());
        assert!(release_of(&bin, "1.0", &bin).is_err(), "not a key");
    }
}

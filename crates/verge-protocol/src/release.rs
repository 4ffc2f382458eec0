//! Releases of the `verge` binary itself: what a desired state names
//! ([`ReleaseRef`]), the message its ed25519 signature covers
//! ([`release_message`]) and which version strings are valid.

use serde::{Deserialize, Serialize};

/// A release of the `verge` binary a node should run. The node fetches it
/// from [`paths::release_binary`](crate::paths::release_binary), checks
/// `size`, `sha256` and `signature` (with the release key it was given at
/// join) and swaps it in; see `docs/deployments.md`, "Self-update of the
/// node".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRef {
    /// The version the binary reports (`verge --version`), e.g.
    /// `0.1.0+b2` ([`valid_release_version`]).
    pub version: String,
    /// SHA-256 of the binary, lower-case hex.
    pub sha256: String,
    /// The binary's size in bytes.
    pub size: u64,
    /// Ed25519 signature of [`release_message`]`(version, sha256)`,
    /// standard base64 (64 bytes).
    pub signature: String,
}

/// The bytes a release's signature covers: the version and the binary's
/// SHA-256, so a signature cannot be moved to another binary or version.
pub fn release_message(version: &str, sha256: &str) -> Vec<u8> {
    format!("verge-release\n{version}\n{sha256}\n").into_bytes()
}

/// A release version: 1 to 64 of ASCII letters, digits, `.`, `_`, `-`
/// and `+` (semver build metadata, as in `0.1.0+b2`), starting with a
/// letter or digit. The component rules plus `+`, which a tagged build
/// reports; no character needs escaping in a URL path.
pub fn valid_release_version(version: &str) -> bool {
    let b = version.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b'+'))
}

/// Whether `sha256` is 64 lower-case hex digits.
pub fn valid_sha256(sha256: &str) -> bool {
    sha256.len() == 64
        && sha256
            .bytes()
            .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_digests() {
        for ok in ["0.1.0", "0.1.0+b2", "1.0.0-rc.1", "a_b"] {
            assert!(valid_release_version(ok), "{ok}");
        }
        for bad in ["", "+b2", "../x", "a/b", "a b", "a?b", &"x".repeat(65)] {
            assert!(!valid_release_version(bad), "{bad}");
        }
        assert!(valid_sha256(&"ab".repeat(32)));
        assert!(!valid_sha256(&"AB".repeat(32)));
        assert!(!valid_sha256("ab"));
        assert_eq!(
            release_message("0.1.0+b2", "ff"),
            b"verge-release\n0.1.0+b2\nff\n".to_vec()
        );
    }

    #[test]
    fn a_release_ref_refuses_unknown_keys() {
        let r: Result<ReleaseRef, _> = serde_json::from_value(serde_json::json!({
            "version": "1", "sha256": "x", "size": 1, "signature": "s", "extra": 1
        }));
        assert!(r.is_err());
    }
}

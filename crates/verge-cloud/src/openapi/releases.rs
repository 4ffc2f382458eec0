//! The schemas of releases of the `verge` binary (self-update of nodes):
//! the signed release, its stored form, a node's assignment and the
//! binary itself (see [`super::schemas`] for the others).

use serde_json::{Value, json};

use super::shapes::{ms, obj, string, uint};

/// Release versions: 1–64 of `A-Z a-z 0-9 _ - . +`, a letter or digit
/// first (`0.1.0+b2`).
pub(super) fn release_version_schema() -> Value {
    json!({"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$", "minLength": 1, "maxLength": 64})
}

fn release_properties() -> Value {
    json!({
        "version": release_version_schema(),
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$", "description": "SHA-256 of the binary, lower-case hex"},
        "size": {"type": "integer", "format": "int64", "minimum": 1, "description": "the binary's size in bytes (at most `cloud.max_release_bytes`)"},
        "signature": {"type": "string", "description": "ed25519 signature (64 bytes, standard base64) of `verge-release\\n{version}\\n{sha256}\\n`, made by `verge release sign`; checked by the node, not the cloud"},
    })
}

/// The release schemas, by name.
pub(super) fn schemas() -> Vec<(&'static str, Value)> {
    let mut release = obj(
        &["version", "sha256", "size", "signature"],
        true,
        release_properties(),
    );
    release["description"] =
        json!("a signed release of the verge binary, as `verge release sign` prints it");
    let mut stored = release_properties();
    stored["size"] = uint();
    stored["created_ms"] = ms();
    stored["uploaded"] =
        json!({"type": "boolean", "description": "whether its binary was uploaded"});
    stored["nodes"] = json!({"type": "array", "items": string(), "description": "the nodes assigned this release"});
    vec![
        ("ReleaseRef", release),
        (
            "Release",
            obj(
                &[
                    "version",
                    "sha256",
                    "size",
                    "signature",
                    "created_ms",
                    "uploaded",
                    "nodes",
                ],
                true,
                stored,
            ),
        ),
        (
            "ReleaseAssign",
            obj(
                &["version"],
                true,
                json!({"version": release_version_schema()}),
            ),
        ),
        (
            "NodeRelease",
            obj(
                &["node_id", "version"],
                true,
                json!({"node_id": string(), "version": string()}),
            ),
        ),
        (
            "Binary",
            json!({"type": "string", "format": "binary",
                   "description": "a verge executable (`application/octet-stream`)"}),
        ),
    ]
}

#[cfg(test)]
mod tests {
    /// The pattern accepts what the protocol accepts and refuses the rest.
    #[test]
    fn the_release_version_pattern_is_the_protocol_rule() {
        let schema = super::release_version_schema();
        assert_eq!(schema["pattern"], "^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$");
        for v in ["0.1.0+b2", "1.0.0-rc.1"] {
            assert!(verge_protocol::valid_release_version(v), "{v}");
        }
    }
}

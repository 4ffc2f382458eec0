//! The cloud's HTTP endpoints of the node protocol, relative to the cloud's
//! base URL: the agent builds its requests and the cloud its routes from
//! these, so the two cannot drift apart.

use serde::{Deserialize, Serialize};

/// `POST`: a node joins with its one-time token ([`JoinRequest`](crate::JoinRequest)).
pub const JOIN: &str = "/api/agent/join";

/// `GET ?version=N&wait_ms=M`: long poll of the desired state.
pub const DESIRED: &str = "/api/agent/desired";

/// `POST`: a node's heartbeat ([`StatusReport`](crate::StatusReport)).
pub const STATUS: &str = "/api/agent/status";

/// `GET`: a process component's archive, `{name}` and `{version}` in the
/// path ([`component_artifact`]); answered with the node's credentials.
pub const COMPONENT_ARTIFACT: &str = "/api/agent/components/{name}/{version}/artifact";

/// The URL of a process component's archive at the cloud `base`. Names
/// and versions are checked ([`valid_component_name`](crate::valid_component_name))
/// before they are put in a URL, so they need no escaping.
pub fn component_artifact(base: &str, name: &str, version: &str) -> String {
    let path = COMPONENT_ARTIFACT
        .replace("{name}", name)
        .replace("{version}", version);
    format!("{base}{path}")
}

/// `GET`: the binary of a release of `verge`, `{version}` in the path
/// ([`release_binary`]); answered with the node's credentials to a node
/// assigned that release.
pub const RELEASE_BINARY: &str = "/api/agent/releases/{version}/binary";

/// The URL of a release's binary at the cloud `base`. Versions are checked
/// ([`valid_release_version`](crate::valid_release_version)) before they
/// are put in a URL, so they need no escaping.
pub fn release_binary(base: &str, version: &str) -> String {
    format!("{base}{}", RELEASE_BINARY.replace("{version}", version))
}

/// The query of the long poll ([`DESIRED`]): `?version=N&wait_ms=M`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredQuery {
    /// The version the node runs; answered at once when the cloud's
    /// differs.
    #[serde(default)]
    pub version: i64,
    /// How long the cloud may hold the request when it does not, in ms.
    #[serde(default)]
    pub wait_ms: u64,
}

/// The long poll's URL at the cloud `base`: answered when the desired
/// version differs from `version`, or with 204 after `wait_ms`.
pub fn desired_poll(base: &str, q: DesiredQuery) -> String {
    let DesiredQuery { version, wait_ms } = q;
    format!("{base}{DESIRED}?version={version}&wait_ms={wait_ms}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_url_carries_version_and_wait() {
        assert_eq!(
            desired_poll(
                "http://c:8080",
                DesiredQuery {
                    version: 7,
                    wait_ms: 25_000
                }
            ),
            "http://c:8080/api/agent/desired?version=7&wait_ms=25000"
        );
    }
}

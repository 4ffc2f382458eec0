//! The cloud's HTTP endpoints of the node protocol, relative to the cloud's
//! base URL: the agent builds its requests and the cloud its routes from
//! these, so the two cannot drift apart.

/// `POST`: a node joins with its one-time token ([`JoinRequest`](crate::JoinRequest)).
pub const JOIN: &str = "/api/agent/join";

/// `GET ?version=N&wait_ms=M`: long poll of the desired state.
pub const DESIRED: &str = "/api/agent/desired";

/// `POST`: a node's heartbeat ([`StatusReport`](crate::StatusReport)).
pub const STATUS: &str = "/api/agent/status";

/// The long poll's URL at the cloud `base`: answered when the desired
/// version differs from `version`, or with 204 after `wait_ms`.
pub fn desired_poll(base: &str, version: i64, wait_ms: u64) -> String {
    format!("{base}{DESIRED}?version={version}&wait_ms={wait_ms}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_url_carries_version_and_wait() {
        assert_eq!(
            desired_poll("http://c:8080", 7, 25_000),
            "http://c:8080/api/agent/desired?version=7&wait_ms=25000"
        );
    }
}

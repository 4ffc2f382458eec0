//! The node↔cloud protocol: the only types serialized between an edge node
//! and the cloud center. Plain serde structs, no I/O, no async runtime.
//!
//! The exchange (all JSON over HTTP, see `docs/cloud.md`):
//! - `POST /api/agent/join` with a one-time [`JoinRequest`] → [`JoinResponse`]
//!   holding the node's long-lived credentials;
//! - `GET /api/agent/desired?version=N&wait_ms=M` (long poll, node
//!   credentials) → [`DesiredState`] when the cloud's version differs from
//!   `N`, or `204 No Content` when it did not change within the wait;
//! - `POST /api/agent/status` with a [`StatusReport`] every few seconds.
//!
//! Upstream data and downstream commands do not use these types: they go
//! over MQTT 5 between the node's bridge and the cloud's MQTT endpoint under
//! `nodes/{node}/up/…` and `nodes/{node}/down/…`.
//!
//! Rules and function specs travel as JSON objects ([`serde_json::Value`])
//! so that this crate does not depend on the rule engine or the function
//! runtime; each side checks them with its own parser.

use serde::{Deserialize, Serialize};

/// Header value prefix of node credentials: `Authorization: Bearer
/// {node_id}.{secret}`.
pub fn node_bearer(node_id: &str, secret: &str) -> String {
    format!("Bearer {node_id}.{secret}")
}

/// Split a node bearer credential (`{node_id}.{secret}`, without the
/// `Bearer ` prefix) at its first dot.
pub fn split_node_credential(credential: &str) -> Option<(&str, &str)> {
    let (id, secret) = credential.split_once('.')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

/// A node asks to join with its one-time token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The join token the cloud returned when the node was created.
    pub token: String,
    /// The machine's host name, for people.
    #[serde(default)]
    pub hostname: String,
    /// The Verge version the node runs.
    #[serde(default)]
    pub agent_version: String,
}

/// The node's long-lived credentials, returned once by a successful join.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinResponse {
    /// The node's id (also its name in topics and its MQTT username).
    pub node_id: String,
    /// The node's secret: HTTP `Bearer {node_id}.{secret}` and MQTT password.
    pub secret: String,
    /// The cloud's MQTT endpoint for upstream/downstream data,
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub mqtt_url: String,
}

/// Everything a node should run, as set in the cloud. Versions only grow;
/// any change to a resource the node uses gives a new version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    /// The node's id.
    pub node_id: String,
    /// Desired-state version.
    pub version: i64,
    /// Devices bound to the node, allowed to connect to its broker.
    #[serde(default)]
    pub devices: Vec<DeviceEntry>,
    /// The node's rules: each a rule config object as the node's rules API
    /// takes it (`id`, `sql`, `actions`, `enabled`, `description`).
    #[serde(default)]
    pub rules: Vec<serde_json::Value>,
    /// Functions the node's rules use.
    #[serde(default)]
    pub functions: Vec<FunctionArtifact>,
    /// Free-form node settings set in the cloud (a JSON object).
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// One device the node's broker accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceEntry {
    /// The device's id: its MQTT username and the `{device}` in its topics.
    pub id: String,
    /// Argon2 PHC hash of the device's secret (the secret never leaves the
    /// cloud's answer to the request that created it).
    pub password_hash: String,
}

/// A function's code and spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionArtifact {
    /// The function's name.
    pub name: String,
    /// The cloud's version of the artifact (grows with each upload).
    pub version: i64,
    /// SHA-256 of the module, lower-case hex.
    pub sha256: String,
    /// The function spec object (`runtime`, `config`, `limits`, …) as the
    /// node's functions API takes it, without `path`.
    pub spec: serde_json::Value,
    /// The module (WebAssembly binary or text), standard base64.
    pub module_base64: String,
}

/// A node's heartbeat: what it runs and how it is doing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusReport {
    /// The desired-state version the node last applied (0 = none).
    pub applied_version: i64,
    /// What failed while applying it (empty when all of it applied).
    pub apply_errors: Vec<String>,
    /// The node's Verge version.
    pub agent_version: String,
    /// Seconds since the node process started.
    pub uptime_s: u64,
    /// CPU used by the node process since the last report, percent of one
    /// core.
    pub cpu_percent: f64,
    /// Resident memory of the node process, bytes.
    pub memory_bytes: u64,
    /// Size of the file system holding the data dir, bytes.
    pub disk_total_bytes: u64,
    /// Free space there, bytes.
    pub disk_free_bytes: u64,
    /// MQTT clients connected to the node's broker.
    pub connections: u64,
    /// Messages received by the broker since start.
    pub messages_in: u64,
    /// Messages delivered by the broker since start.
    pub messages_out: u64,
    /// Messages received per second since the last report.
    pub messages_in_rate: f64,
    /// Messages delivered per second since the last report.
    pub messages_out_rate: f64,
    /// Messages waiting in the cache queue for the cloud.
    pub backlog_messages: u64,
    /// Bytes waiting there.
    pub backlog_bytes: u64,
    /// Whether the MQTT link to the cloud is up.
    pub link_up: bool,
    /// Each rule's status object as the node's rules API shows it.
    pub rules: Vec<serde_json::Value>,
    /// Each function's status object as the node's functions API shows it.
    pub functions: Vec<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_credentials_split_at_first_dot() {
        assert_eq!(
            split_node_credential("edge-1.abc.def"),
            Some(("edge-1", "abc.def"))
        );
        assert_eq!(split_node_credential("edge-1"), None);
        assert_eq!(split_node_credential(".x"), None);
        assert_eq!(split_node_credential("x."), None);
        assert_eq!(node_bearer("n", "s"), "Bearer n.s");
    }

    #[test]
    fn desired_state_round_trips_and_refuses_unknown_keys() {
        let d = DesiredState {
            node_id: "edge-1".into(),
            version: 7,
            devices: vec![DeviceEntry {
                id: "d1".into(),
                password_hash: "$argon2id$x".into(),
            }],
            rules: vec![serde_json::json!({"id": "r", "sql": "SELECT * FROM \"a\""})],
            functions: vec![],
            config: empty_object(),
        };
        let text = serde_json::to_string(&d).unwrap_or_default();
        let back: DesiredState = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, d);
        let bad = text.replacen("{", "{\"surprise\":1,", 1);
        assert!(serde_json::from_str::<DesiredState>(&bad).is_err());
    }

    #[test]
    fn status_report_takes_missing_fields_as_defaults() {
        let r: StatusReport =
            serde_json::from_str(r#"{"applied_version": 3}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.applied_version, 3);
        assert_eq!(r.connections, 0);
    }
}

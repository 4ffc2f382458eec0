//! The node↔cloud contract: the only types serialized between an edge
//! node and the cloud center, and the only place that spells its topics
//! and properties. Plain serde structs and string builders, no I/O, no
//! async runtime.
//!
//! Over HTTP (JSON, see `docs/cloud.md`):
//! - `POST /api/agent/join` with a one-time [`JoinRequest`] → [`JoinResponse`]
//!   holding the node's long-lived credentials;
//! - `GET /api/agent/desired?version=N&wait_ms=M` (long poll, node
//!   credentials) → [`DesiredState`] when the cloud's version differs from
//!   `N`, or `204 No Content` when it did not change within the wait;
//! - `POST /api/agent/status` with a [`StatusReport`] every few seconds.
//!
//! Over MQTT 5, between the node's bridge and the cloud's MQTT endpoint:
//! upstream data and downstream commands under the topics of [`topics`],
//! each upstream message named by a [`VergeId`] in the
//! [`topics::VERGE_ID_PROPERTY`] user property.
//!
//! The desired state holds one typed spec per kind of resource
//! ([`DeviceEntry`], [`RuleSpec`], [`FunctionArtifact`] with its
//! [`FunctionSpec`], and the free-form node `config`). Settings that belong
//! to one node component (a rule action's settings, a function's limits)
//! stay JSON inside the typed spec, so this crate depends on neither the
//! rule engine nor the function runtime: each side checks them with the
//! component's own config types. [`DesiredState`] says how a new kind of
//! resource (drivers, components, …) is added without breaking the nodes
//! and clouds of today.

mod component;
mod desired;
pub mod device;
pub mod paths;
mod release;
mod settings;
mod status;
pub mod topics;
mod verge_id;

pub use component::{
    ArtifactRef, ComponentError, ComponentKind, ComponentSpec, HealthCheck, HealthKind, Limits,
    MqttRights, RestartPolicy, component_start_order, valid_component_name,
};
pub use desired::{
    ActionSpec, DesiredState, DeviceEntry, DriverSpec, FunctionArtifact, FunctionSpec, RuleSpec,
    serial_line,
};
pub use release::{ReleaseRef, release_message, valid_release_version, valid_sha256};
pub use settings::{
    DEFAULT_FORWARD_LANE, MAX_FORWARDS, RUNTIME_SETTINGS, check_forwards, check_node_config,
    check_setting,
};
pub use status::{ApplyAttempt, AttemptState, ItemOutcome, ItemResult, LocalItem, StatusReport};
pub use verge_id::{ParseVergeIdError, VergeId};

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
}

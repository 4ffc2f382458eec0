//! The status report: a node's heartbeat to the cloud.

use serde::{Deserialize, Serialize};

/// A node's heartbeat: what it runs and how it is doing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusReport {
    /// The desired-state version (revision) the node runs: the last one
    /// that applied completely (0 = none). A revision with a failed item
    /// does not advance it: the node returns to this one.
    pub applied_version: i64,
    /// What failed in the last apply (empty when all of it applied).
    pub apply_errors: Vec<String>,
    /// The last revision the node tried, and how that went; `None` before
    /// the first apply of this process (and from nodes older than the
    /// field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<ApplyAttempt>,
    /// Cloud-managed items the node found changed locally and put back at
    /// its last reconciliation (one line each); empty again once a later
    /// one finds nothing to put back.
    pub drift: Vec<String>,
    /// Items the node runs that are not the cloud's: created through the
    /// node's own API or config (the cloud shows them as drift from the
    /// node's revision). Empty from nodes older than the field.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub local: Vec<LocalItem>,
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
    /// Each component's status object as the node's components API shows
    /// it (`name`, `version`, `kind`, `state`, `restarts`, `last_error`, …).
    pub components: Vec<serde_json::Value>,
    /// Each protocol driver's status object as the node's drivers API
    /// lists it (`name`, `protocol`, `connected`, `last_error`, `reads`,
    /// `errors`, …); empty from nodes older than the field.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drivers: Vec<serde_json::Value>,
    /// The connections of the node's cloud devices (one entry per device
    /// seen since the node started); empty from nodes older than the
    /// field.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<crate::device::DeviceSession>,
    /// The node's broker addresses devices connect to (`mqtt://…`,
    /// `mqtts://…`, `ws://…`, `wss://…`, `coap://…`), as bound.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
}

/// An item the node runs on its own (not from the cloud's revision).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LocalItem {
    /// `rule`, `function`, `driver` or `component`.
    pub kind: String,
    /// Its name (id) within its kind.
    pub name: String,
    /// Where it comes from: `api` (the node's HTTP API, kept in the
    /// node's data dir) or `config` (the node's config file).
    pub source: String,
    /// Marked local-only on the node: a revision naming an item of this
    /// kind and name leaves the node's own in place (reported as
    /// `kept_local`) instead of replacing it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub local_only: bool,
}

/// How applying one revision went.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApplyAttempt {
    /// The revision tried.
    pub version: i64,
    /// Where it stands.
    pub state: AttemptState,
    /// When the node started applying it, ms since 1970.
    pub started_ms: u64,
    /// When it ended (applied, or rolled back), ms since 1970; `None`
    /// while applying.
    pub finished_ms: Option<u64>,
    /// One entry per item of the revision that was applied, failed or
    /// removed (items already as the revision wants them are left out).
    pub items: Vec<ItemResult>,
    /// Why the revision as a whole failed (a deadline, a component's
    /// health check), beside the failed items.
    pub error: Option<String>,
    /// The revision the node returned to after a failure (its
    /// `applied_version`), when it returned to one.
    pub rolled_back_to: Option<i64>,
}

/// Where an [`ApplyAttempt`] stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptState {
    /// Being applied, or its components are within their health grace.
    #[default]
    Applying,
    /// Every item applied (and every updated component is healthy).
    Applied,
    /// An item failed; the node returned to its last good revision.
    RolledBack,
}

/// The outcome of one item of a revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ItemResult {
    /// `device`, `rule`, `function`, `component` or `config`.
    pub kind: String,
    /// The item's name (id) within its kind.
    pub name: String,
    /// What happened to it.
    pub result: ItemOutcome,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What happened to one item of a revision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemOutcome {
    /// Added or changed as the revision wants it.
    #[default]
    Applied,
    /// Removed, as the revision no longer has it.
    Removed,
    /// Not applied: see its `error`.
    Failed,
    /// Not applied because the node keeps its own item of that kind and
    /// name, marked local-only there; not a failure.
    KeptLocal,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_report_takes_missing_fields_as_defaults() {
        let r: StatusReport =
            serde_json::from_str(r#"{"applied_version": 3}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.applied_version, 3);
        assert_eq!(r.connections, 0);
        assert_eq!(r.attempt, None);
    }

    #[test]
    fn an_attempt_round_trips_in_snake_case() {
        let r = StatusReport {
            applied_version: 4,
            attempt: Some(ApplyAttempt {
                version: 5,
                state: AttemptState::RolledBack,
                started_ms: 1,
                finished_ms: Some(2),
                items: vec![ItemResult {
                    kind: "rule".into(),
                    name: "hot".into(),
                    result: ItemOutcome::Failed,
                    error: Some("bad SQL".into()),
                }],
                error: None,
                rolled_back_to: Some(4),
            }),
            ..StatusReport::default()
        };
        let v = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(v["attempt"]["state"], "rolled_back");
        assert_eq!(v["attempt"]["items"][0]["result"], "failed");
        let back: StatusReport = serde_json::from_value(v).unwrap_or_default();
        assert_eq!(back, r);
    }
}

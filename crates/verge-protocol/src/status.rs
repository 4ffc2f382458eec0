//! The status report: a node's heartbeat to the cloud.

use serde::{Deserialize, Serialize};

/// A node's heartbeat: what it runs and how it is doing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusReport {
    /// The desired-state version the node last applied (0 = none).
    pub applied_version: i64,
    /// What failed while applying it (empty when all of it applied).
    pub apply_errors: Vec<String>,
    /// Cloud-managed items the node found changed locally and put back at
    /// its last reconciliation that found any (one line each).
    pub drift: Vec<String>,
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
    }
}

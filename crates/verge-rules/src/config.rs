//! Rule and action configuration, as written in the node's config file
//! (`[[rules]]`) and sent to the node's HTTP API (JSON).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use verge_broker::duration::HumanDuration;

/// One rule: SQL plus what to do with each row.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique id: letters, digits, `-` and `_` (may be left out where the
    /// id is given elsewhere, e.g. in the API path of an update).
    #[serde(default)]
    pub id: String,
    /// The rule's SQL (see docs/rules.md).
    pub sql: String,
    /// Actions, run for every output row, each in its own task.
    #[serde(default)]
    pub actions: Vec<ActionKind>,
    /// Whether the rule runs as soon as it is created.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A description for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

fn yes() -> bool {
    true
}

/// One action of a rule: `type` names the kind, the other keys are its
/// settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ActionKind {
    /// Publish the row back into the broker.
    Republish(RepublishConfig),
    /// Hand the row to an edge function.
    Function(FunctionConfig),
    /// Write the row to the local time-series store.
    Store(StoreConfig),
    /// Send the row to the cloud through the cache queue.
    Upstream(UpstreamConfig),
    /// POST the row to an HTTP endpoint.
    Webhook(WebhookConfig),
    /// Write the row to the node's log.
    Log(LogConfig),
    /// Raise (or clear) an alarm on the row's device.
    Alarm(AlarmConfig),
}

impl ActionKind {
    /// The kind's name as written in `type`.
    pub fn name(&self) -> &'static str {
        match self {
            ActionKind::Republish(_) => "republish",
            ActionKind::Function(_) => "function",
            ActionKind::Store(_) => "store",
            ActionKind::Upstream(_) => "upstream",
            ActionKind::Webhook(_) => "webhook",
            ActionKind::Log(_) => "log",
            ActionKind::Alarm(_) => "alarm",
        }
    }

    /// Queue bound and retry policy of this action.
    pub fn delivery(&self) -> &Delivery {
        match self {
            ActionKind::Republish(c) => &c.delivery,
            ActionKind::Function(c) => &c.delivery,
            ActionKind::Store(c) => &c.delivery,
            ActionKind::Upstream(c) => &c.delivery,
            ActionKind::Webhook(c) => &c.delivery,
            ActionKind::Log(c) => &c.delivery,
            ActionKind::Alarm(c) => &c.delivery,
        }
    }
}

/// How rows reach an action (its `delivery` table): the queue bound and
/// the retry policy; by default a 1,024-row queue and 3 attempts.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Delivery {
    /// Rows waiting for this action at most; when full, new rows are
    /// dropped and counted.
    pub queue: usize,
    /// Attempts per row (1 = no retry); only transient failures retry.
    pub max_attempts: u32,
    /// Wait before the first retry; doubles each retry.
    pub backoff: HumanDuration,
    /// Longest wait between retries.
    pub max_backoff: HumanDuration,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            queue: 1024,
            max_attempts: 3,
            backoff: HumanDuration(Duration::from_millis(100)),
            max_backoff: HumanDuration(Duration::from_secs(5)),
        }
    }
}

/// `type = "republish"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RepublishConfig {
    /// Topic template: `{column}` is replaced by the row's value, e.g.
    /// `alerts/{device}`.
    pub topic: String,
    /// QoS 0, 1 or 2.
    #[serde(default)]
    pub qos: u8,
    /// Retain flag.
    #[serde(default)]
    pub retain: bool,
    /// Queue and retries, e.g. `delivery = { max_attempts = 5 }`.
    #[serde(default)]
    pub delivery: Delivery,
}

/// `type = "function"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    /// Name of the deployed function.
    pub name: String,
    /// Queue and retries, e.g. `delivery = { max_attempts = 5 }`.
    #[serde(default)]
    pub delivery: Delivery,
}

/// `type = "store"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Column holding the device name (default `device`).
    #[serde(default = "device_column")]
    pub device: String,
    /// Queue and retries, e.g. `delivery = { max_attempts = 5 }`.
    #[serde(default)]
    pub delivery: Delivery,
}

fn device_column() -> String {
    "device".into()
}

/// `type = "upstream"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Topic template under the node's upstream prefix.
    pub topic: String,
    /// Cache queue lane (priority), e.g. `alarms` or `telemetry`.
    #[serde(default = "telemetry_lane")]
    pub lane: String,
    /// Queue and retries, e.g. `delivery = { max_attempts = 5 }`.
    #[serde(default)]
    pub delivery: Delivery,
}

fn telemetry_lane() -> String {
    "telemetry".into()
}

/// `type = "webhook"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL to POST each row to (JSON body).
    pub url: String,
    /// Extra request headers.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Time limit for one request, connect included.
    #[serde(default = "five_seconds")]
    pub timeout: HumanDuration,
    /// Queue and retries, e.g. `delivery = { max_attempts = 5 }`.
    #[serde(default)]
    pub delivery: Delivery,
}

fn five_seconds() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

/// `type = "log"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Level: `error`, `warn`, `info` or `debug`.
    #[serde(default = "info")]
    pub level: String,
    /// Queue and retries, e.g. `delivery = { max_attempts = 5 }`.
    #[serde(default)]
    pub delivery: Delivery,
}

fn info() -> String {
    "info".into()
}

/// `type = "alarm"`. The alarm's own type is `alarm_type`, because `type`
/// names the action's kind.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlarmConfig {
    /// The alarm's type, e.g. `overheat` (one open alarm per device and
    /// type).
    pub alarm_type: String,
    /// `critical`, `major` (default), `minor`, `warning` or `indeterminate`.
    #[serde(default = "major")]
    pub severity: verge_protocol::device::Severity,
    /// Message template: `{column}` is replaced by the row's value, e.g.
    /// `temperature {temp} °C`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Device template, e.g. `{device}`; by default the device of the
    /// input topic `devices/{d}/…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// This action only clears the device's alarm of this type.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clear: bool,
    /// A boolean SQL expression over the row's columns: a row where it is
    /// true clears the alarm, any other row raises it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_when: Option<String>,
    /// Queue and retries, e.g. `delivery = { max_attempts = 5 }`.
    #[serde(default)]
    pub delivery: Delivery,
}

fn major() -> verge_protocol::device::Severity {
    verge_protocol::device::Severity::Major
}

/// The `[rule_engine]` section: bounds shared by every rule.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleEngineConfig {
    /// Messages waiting for one rule at most; when full the broker drops
    /// new ones for that rule and counts them (`dropped_queue`).
    pub queue: usize,
    /// Groups per window at most; new groups beyond it are dropped and
    /// counted.
    pub max_groups: usize,
    /// Values buffered per group at most (SLIDING, COUNT, collect,
    /// percentile, median).
    pub max_rows_per_window: usize,
    /// Time windows open at once per rule at most.
    pub max_open_windows: usize,
    /// With `TIMESTAMP BY`: how far an event's time may be ahead of the
    /// node's clock; later ones are dropped and counted (`dropped_future`)
    /// so one bad clock cannot close every window early.
    pub max_event_time_ahead: HumanDuration,
    /// How long a stopped rule's actions may take to finish their queues.
    pub stop_grace: HumanDuration,
    /// Hosts `webhook` actions may send to: `*` any, a name or IP, or
    /// `*.domain` for its subdomains.
    pub webhook_hosts: Vec<String>,
}

impl Default for RuleEngineConfig {
    fn default() -> Self {
        let sql = verge_sql::Limits::default();
        RuleEngineConfig {
            queue: 8192,
            max_groups: sql.max_groups,
            max_rows_per_window: sql.max_rows_per_window,
            max_open_windows: sql.max_open_windows,
            max_event_time_ahead: HumanDuration(Duration::from_millis(
                u64::try_from(sql.max_future_ms).unwrap_or(0),
            )),
            stop_grace: HumanDuration(Duration::from_secs(5)),
            webhook_hosts: vec!["*".into()],
        }
    }
}

impl RuleEngineConfig {
    /// Whether a `webhook` action may send to `host` (compared without
    /// case).
    pub fn webhook_allowed(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.webhook_hosts.iter().any(|allowed| {
            let allowed = allowed.to_ascii_lowercase();
            match allowed.strip_prefix("*.") {
                _ if allowed == "*" => true,
                Some(domain) => host.ends_with(&format!(".{domain}")),
                None => host == allowed,
            }
        })
    }

    /// The executor limits these settings give.
    pub fn limits(&self) -> verge_sql::Limits {
        verge_sql::Limits {
            max_groups: self.max_groups,
            max_rows_per_window: self.max_rows_per_window,
            max_open_windows: self.max_open_windows,
            max_future_ms: i64::try_from(self.max_event_time_ahead.get().as_millis())
                .unwrap_or(i64::MAX),
        }
    }
}

//! The device side of the contract: the topics a device program uses on
//! its node (telemetry, events, commands and replies, its shadow), the
//! node↔cloud messages that carry shadows, commands and alarms, and the
//! shadow document with its merge and conflict rules.
//!
//! Device-facing topics (on the node's broker; a device may use only its
//! own, `devices/{d}/#` and `$shadow/{d}/#`):
//!
//! | topic | who publishes | what |
//! |---|---|---|
//! | `devices/{d}/telemetry` | device | readings (JSON object) |
//! | `devices/{d}/events/{type}` | device | events |
//! | `devices/{d}/commands/{name}/{id}` | node | a command (payload JSON); 5.0: response topic + correlation data = id |
//! | `devices/{d}/replies/{id}` | device | the command's reply (any payload) |
//! | `devices/{d}/replies/{id}/failed` | device | the command failed (payload: why) |
//! | `$shadow/{d}/get` | device | ask for the shadow (payload ignored) |
//! | `$shadow/{d}/get/accepted` / `rejected` | node | the document / an error |
//! | `$shadow/{d}/update` | device | a [`ShadowUpdate`] |
//! | `$shadow/{d}/update/accepted` / `rejected` | node | the new document / an error |
//! | `$shadow/{d}/update/delta` | node | [`ShadowDelta`] when desired ≠ reported |
//! | `$shadow/{d}/document` | node | the document, retained (CoAP GET/Observe) |
//!
//! Node↔cloud (node-local topics under `nodes/{n}/up|down/`, see
//! [`crate::topics`]); the node publishes its upstream ones straight into
//! the cache queue, so they survive a kill -9 like any upstream message:
//!
//! | node-local topic | direction | payload |
//! |---|---|---|
//! | `$verge/shadow/{d}` | up and down | [`ShadowSync`] |
//! | `$verge/commands/{d}` | down | [`CommandRequest`] |
//! | `$verge/command-status/{d}` | up | [`CommandStatus`] |
//! | `$verge/alarms/{d}` | up | [`AlarmEvent`] |
//! | `$verge/store-query/{d}` | down | [`StoreQuery`] |
//! | `$verge/store-reply/{d}` | up | [`StoreReply`] |
//!
//! Shadow conflict rule: every top-level key of `desired` and `reported`
//! carries the time (ms since the Unix epoch) of the edit that set or
//! removed it. When the node's and the cloud's copies meet, each key is
//! taken from the side whose edit is later; on equal times the cloud wins
//! `desired` and the node wins `reported`. So a desired value set in the
//! cloud while the node was offline and a reported value set by the device
//! meanwhile are both kept, and two edits of one key keep the later one.
//!
//! Bounds: each side (its values and their metadata, as JSON) has its own
//! cap, [`MAX_SIDE_BYTES`] (about 32 KiB): an update that leaves a side
//! larger than it was and larger than the cap is refused, any other update
//! is taken. So a merge that takes `desired` from one copy and `reported`
//! from the other stays under [`MAX_SHADOW_BYTES`]. A merge that combines
//! both copies' keys of one side is never refused (the copies must
//! converge) and may pass that side's cap; the side then takes only
//! updates that do not grow it (removals, smaller values) until it is
//! under the cap again. Removals leave tombstones; a copy drops those
//! older than [`TOMBSTONE_MAX_AGE_MS`] (30 days) when it changes, or when
//! its owner calls [`Shadow::prune_tombstones`], and remembers per side up
//! to when it dropped them ([`PrunedUntil`]): a key a copy has no metadata
//! for counts as removed at that time, so the other copy's older value
//! does not come back, and the other copy removes it when it merges.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Largest side of a shadow (`desired` with its metadata, or `reported`
/// with its metadata, as JSON) an update may leave: an update that makes a
/// side larger than it was and larger than this is refused. Each side has
/// its own cap, so a merge that takes one side from each copy cannot pass
/// [`MAX_SHADOW_BYTES`]; a merge that combines both copies' keys of one
/// side may pass the side's cap (the merge is never refused, both copies
/// must converge): that side then takes only updates that do not grow it.
pub const MAX_SIDE_BYTES: usize = 32 * 1024 - 128;

/// What a shadow document built by updates stays under: two sides of
/// [`MAX_SIDE_BYTES`] and the version, timestamp and field names.
pub const MAX_SHADOW_BYTES: usize = 64 * 1024;

/// How long a removal's tombstone is kept ([`Shadow::prune_tombstones`];
/// [`Shadow::apply`] drops older ones when it changes a copy): 30 days.
pub const TOMBSTONE_MAX_AGE_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// The user property of a command message naming its id (5.0 devices
/// also get it as correlation data).
pub const COMMAND_ID_PROPERTY: &str = "verge-command-id";

/// `devices/{d}/telemetry`.
pub fn telemetry_topic(device: &str) -> String {
    format!("devices/{device}/telemetry")
}

/// `devices/{d}/events/{kind}`.
pub fn event_topic(device: &str, kind: &str) -> String {
    format!("devices/{device}/events/{kind}")
}

/// `devices/{d}/commands/{name}/{id}`: a command as the device gets it.
pub fn command_topic(device: &str, name: &str, id: &str) -> String {
    format!("devices/{device}/commands/{name}/{id}")
}

/// `devices/{d}/commands/#`: what a device subscribes to for commands.
pub fn command_filter(device: &str) -> String {
    format!("devices/{device}/commands/#")
}

/// `devices/{d}/replies/{id}`: where a device answers a command.
pub fn reply_topic(device: &str, id: &str) -> String {
    format!("devices/{device}/replies/{id}")
}

/// `devices/{d}/replies/{id}/failed`: where a device says it failed.
pub fn failed_reply_topic(device: &str, id: &str) -> String {
    format!("{}/failed", reply_topic(device, id))
}

/// `devices/+/replies/#`: every reply of every device (the node's
/// command service subscribes to it).
pub const ALL_REPLIES_FILTER: &str = "devices/+/replies/#";

/// Split `devices/{d}/commands/{name}/{id}` into `(d, name, id)`.
pub fn parse_command_topic(topic: &str) -> Option<(&str, &str, &str)> {
    let rest = topic.strip_prefix("devices/")?;
    let (device, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("commands/")?;
    let (name, id) = rest.split_once('/')?;
    let ok = |s: &str| !s.is_empty() && !s.contains('/');
    (ok(device) && ok(name) && ok(id)).then_some((device, name, id))
}

/// Split `devices/{d}/replies/{id}[/failed]` into `(d, id, failed)`.
pub fn parse_reply_topic(topic: &str) -> Option<(&str, &str, bool)> {
    let rest = topic.strip_prefix("devices/")?;
    let (device, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("replies/")?;
    let (id, failed) = match rest.split_once('/') {
        None => (rest, false),
        Some((id, "failed")) => (id, true),
        Some(_) => return None,
    };
    (!device.is_empty() && !id.is_empty()).then_some((device, id, failed))
}

/// The operations of the shadow topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShadowTopic {
    /// `$shadow/{d}/get`
    Get,
    /// `$shadow/{d}/get/accepted`
    GetAccepted,
    /// `$shadow/{d}/get/rejected`
    GetRejected,
    /// `$shadow/{d}/update`
    Update,
    /// `$shadow/{d}/update/accepted`
    UpdateAccepted,
    /// `$shadow/{d}/update/rejected`
    UpdateRejected,
    /// `$shadow/{d}/update/delta`
    Delta,
    /// `$shadow/{d}/document` (retained)
    Document,
}

impl ShadowTopic {
    const ALL: [ShadowTopic; 8] = [
        ShadowTopic::Get,
        ShadowTopic::GetAccepted,
        ShadowTopic::GetRejected,
        ShadowTopic::Update,
        ShadowTopic::UpdateAccepted,
        ShadowTopic::UpdateRejected,
        ShadowTopic::Delta,
        ShadowTopic::Document,
    ];

    fn suffix(self) -> &'static str {
        match self {
            ShadowTopic::Get => "get",
            ShadowTopic::GetAccepted => "get/accepted",
            ShadowTopic::GetRejected => "get/rejected",
            ShadowTopic::Update => "update",
            ShadowTopic::UpdateAccepted => "update/accepted",
            ShadowTopic::UpdateRejected => "update/rejected",
            ShadowTopic::Delta => "update/delta",
            ShadowTopic::Document => "document",
        }
    }

    /// `$shadow/{device}/{suffix}`.
    pub fn topic(self, device: &str) -> String {
        format!("$shadow/{device}/{}", self.suffix())
    }
}

/// `$shadow/+/get` and `$shadow/+/update`: what the node's shadow service
/// subscribes to.
pub const SHADOW_REQUEST_FILTERS: [&str; 2] = ["$shadow/+/get", "$shadow/+/update"];

/// Split `$shadow/{d}/{op}` into `(d, op)`.
pub fn parse_shadow_topic(topic: &str) -> Option<(&str, ShadowTopic)> {
    let rest = topic.strip_prefix("$shadow/")?;
    let (device, suffix) = rest.split_once('/')?;
    if device.is_empty() {
        return None;
    }
    let op = ShadowTopic::ALL
        .into_iter()
        .find(|t| t.suffix() == suffix)?;
    Some((device, op))
}

/// The node-local topics of the node↔cloud device channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChannel {
    /// `$verge/shadow/{d}`: a [`ShadowSync`], both ways.
    Shadow,
    /// `$verge/commands/{d}`: a [`CommandRequest`], down.
    Command,
    /// `$verge/command-status/{d}`: a [`CommandStatus`], up.
    CommandStatus,
    /// `$verge/alarms/{d}`: an [`AlarmEvent`], up.
    Alarm,
    /// `$verge/store-query/{d}`: a [`StoreQuery`], down.
    StoreQuery,
    /// `$verge/store-reply/{d}`: a [`StoreReply`], up.
    StoreReply,
}

impl DeviceChannel {
    const ALL: [DeviceChannel; 6] = [
        DeviceChannel::Shadow,
        DeviceChannel::Command,
        DeviceChannel::CommandStatus,
        DeviceChannel::Alarm,
        DeviceChannel::StoreQuery,
        DeviceChannel::StoreReply,
    ];

    fn segment(self) -> &'static str {
        match self {
            DeviceChannel::Shadow => "shadow",
            DeviceChannel::Command => "commands",
            DeviceChannel::CommandStatus => "command-status",
            DeviceChannel::Alarm => "alarms",
            DeviceChannel::StoreQuery => "store-query",
            DeviceChannel::StoreReply => "store-reply",
        }
    }

    /// `$verge/{kind}/{device}` (node-local; wrap with
    /// [`crate::topics::up`] / [`crate::topics::down`]).
    pub fn topic(self, device: &str) -> String {
        format!("$verge/{}/{device}", self.segment())
    }

    /// `$verge/{kind}/+`.
    pub fn filter(self) -> String {
        format!("$verge/{}/+", self.segment())
    }
}

/// Split a node-local `$verge/{kind}/{d}` into `(kind, d)`.
pub fn parse_device_channel(rest: &str) -> Option<(DeviceChannel, &str)> {
    let rest = rest.strip_prefix("$verge/")?;
    let (segment, device) = rest.split_once('/')?;
    if device.is_empty() || device.contains('/') {
        return None;
    }
    let kind = DeviceChannel::ALL
        .into_iter()
        .find(|k| k.segment() == segment)?;
    Some((kind, device))
}

mod shadow;

pub use shadow::{
    KeyMeta, PrunedUntil, Shadow, ShadowDelta, ShadowError, ShadowMetadata, ShadowRejection,
    ShadowUpdate, Side,
};

/// A shadow on its way between node and cloud (`$verge/shadow/{d}`, both
/// ways): the sender's whole copy; the receiver merges it by the
/// conflict rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShadowSync {
    /// The device.
    pub device: String,
    /// The sender's copy.
    pub shadow: Shadow,
}

/// A command's place in its life: queued (in the cloud) → sent (the node
/// has it) → delivered (the node's broker accepted its publish to the
/// device's MQTT connection, or the node handed it to the protocol driver
/// reading the device; not proof the device processed it) → replied /
/// failed; or expired when its time to live ends first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandState {
    /// Kept in the cloud until the node takes it.
    Queued,
    /// The node has it (kept in its store until the device takes it).
    Sent,
    /// The node's broker accepted its publish to the connected device (or
    /// the node handed it to the device's protocol driver); waiting for a
    /// reply, which alone says the device processed it.
    Delivered,
    /// The device answered on its reply topic.
    Replied,
    /// The device answered on its failed topic, or the node could not
    /// deliver it (the device was removed).
    Failed,
    /// Its time to live ended before a reply.
    Expired,
}

impl CommandState {
    /// Whether nothing follows this state.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            CommandState::Replied | CommandState::Failed | CommandState::Expired
        )
    }

    /// The order of the states, so a late, older status never replaces a
    /// newer one.
    pub fn rank(self) -> u8 {
        match self {
            CommandState::Queued => 0,
            CommandState::Sent => 1,
            CommandState::Delivered => 2,
            CommandState::Replied | CommandState::Failed | CommandState::Expired => 3,
        }
    }

    /// The state's name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandState::Queued => "queued",
            CommandState::Sent => "sent",
            CommandState::Delivered => "delivered",
            CommandState::Replied => "replied",
            CommandState::Failed => "failed",
            CommandState::Expired => "expired",
        }
    }
}

/// A command on its way to the node (`$verge/commands/{d}`, down). The
/// cloud resends it until the node reports it `sent`; the node keeps one
/// copy per id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRequest {
    /// The command's id (unique; the device sees it in the topic).
    pub id: String,
    /// The device.
    pub device: String,
    /// The command's name.
    pub name: String,
    /// The payload the device gets (JSON).
    pub payload: Value,
    /// When the cloud took it, ms since the Unix epoch.
    pub created_ms: u64,
    /// When it expires, ms since the Unix epoch.
    pub expires_ms: u64,
}

/// A command's new state, reported by the node
/// (`$verge/command-status/{d}`, up).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandStatus {
    /// The command's id.
    pub id: String,
    /// The device.
    pub device: String,
    /// The new state (`sent`, `delivered`, `replied`, `failed`, `expired`).
    pub state: CommandState,
    /// When it changed, ms since the Unix epoch.
    pub at_ms: u64,
    /// The reply's payload: JSON when it parses as JSON, else the text
    /// (lossy UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Value>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An alarm's severity (ThingsBoard's scale).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Service lost.
    Critical,
    /// Service badly degraded.
    Major,
    /// Service degraded.
    Minor,
    /// Something may go wrong.
    Warning,
    /// Not known.
    Indeterminate,
}

impl Severity {
    /// The name as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Major => "major",
            Severity::Minor => "minor",
            Severity::Warning => "warning",
            Severity::Indeterminate => "indeterminate",
        }
    }
}

/// Whether an alarm event raises or clears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlarmAction {
    /// Raise (or raise again: the open alarm of this type is updated).
    Raise,
    /// Clear the open alarm of this type.
    Clear,
}

/// An alarm raised or cleared by a rule's `alarm` action on the node
/// (`$verge/alarms/{d}`, up, through the cache queue).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlarmEvent {
    /// The device.
    pub device: String,
    /// The alarm's type (one open alarm per device and type).
    #[serde(rename = "type")]
    pub alarm_type: String,
    /// Raise or clear.
    pub action: AlarmAction,
    /// Severity of a raise.
    pub severity: Severity,
    /// The message (the action's template filled from the row).
    #[serde(default)]
    pub message: String,
    /// The rule whose action it was.
    #[serde(default)]
    pub rule: String,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// The row that raised or cleared it.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub details: Value,
}

/// Most series a [`StoreReply`] carries.
pub const MAX_STORE_SERIES: usize = 16;

/// Most points per series a [`StoreReply`] carries.
pub const MAX_STORE_POINTS: usize = 2_000;

/// Most bytes of a [`StoreReply`] as JSON: the node leaves points out past
/// it (`truncated`), so the reply fits the cloud's MQTT packet limit (1 MiB
/// by default) with room to spare.
pub const MAX_STORE_REPLY_BYTES: usize = 512 * 1024;

/// The cloud asks a node for a range of a device's readings in the node's
/// local time-series store (`$verge/store-query/{d}`, down). The node
/// answers with one [`StoreReply`] carrying the same id; it is not resent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreQuery {
    /// The request's id (the reply carries it back).
    pub id: String,
    /// The device.
    pub device: String,
    /// One metric, or all of the device's metrics when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Start of the range (inclusive), ms since the Unix epoch.
    pub from_ms: u64,
    /// End of the range (inclusive), ms since the Unix epoch.
    pub to_ms: u64,
    /// Average the points over buckets this long (the store's
    /// downsampling); raw points when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_ms: Option<u64>,
    /// Most points per series (the node caps it at [`MAX_STORE_POINTS`]).
    pub limit: u32,
}

/// One metric's numeric points in a [`StoreReply`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreSeries {
    /// The metric's name.
    pub metric: String,
    /// `[ts_ms, value]` pairs, oldest first.
    pub points: Vec<(u64, f64)>,
}

/// A node's answer to a [`StoreQuery`] (`$verge/store-reply/{d}`, up).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreReply {
    /// The query's id.
    pub id: String,
    /// The device.
    pub device: String,
    /// The numeric series found (at most [`MAX_STORE_SERIES`]).
    pub series: Vec<StoreSeries>,
    /// Why the node could not answer (e.g. it has no store).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Some series or points were left out by the limits.
    pub truncated: bool,
}

/// A device's connection as the node reports it in its heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceSession {
    /// The device (its MQTT username).
    pub device: String,
    /// Whether it has a connection now.
    pub connected: bool,
    /// Since when it is connected (or was last seen disconnecting), ms
    /// since the Unix epoch.
    pub since_ms: u64,
    /// Its client id (while connected).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub client_id: String,
    /// How it connects: `mqtt`, `mqtts`, `ws`, `wss` or `coap`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub transport: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn update(v: Value) -> ShadowUpdate {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn topics_build_and_parse() {
        assert_eq!(
            command_topic("d1", "reboot", "c7"),
            "devices/d1/commands/reboot/c7"
        );
        assert_eq!(
            parse_command_topic("devices/d1/commands/reboot/c7"),
            Some(("d1", "reboot", "c7"))
        );
        assert_eq!(parse_command_topic("devices/d1/commands/reboot"), None);
        assert_eq!(parse_command_topic("devices/d1/commands/a/b/c"), None);
        assert_eq!(
            parse_reply_topic("devices/d1/replies/c7"),
            Some(("d1", "c7", false))
        );
        assert_eq!(
            parse_reply_topic("devices/d1/replies/c7/failed"),
            Some(("d1", "c7", true))
        );
        assert_eq!(parse_reply_topic("devices/d1/replies/c7/x"), None);
        assert_eq!(failed_reply_topic("d", "i"), "devices/d/replies/i/failed");
        assert_eq!(ShadowTopic::Delta.topic("d1"), "$shadow/d1/update/delta");
        assert_eq!(
            parse_shadow_topic("$shadow/d1/update"),
            Some(("d1", ShadowTopic::Update))
        );
        assert_eq!(parse_shadow_topic("$shadow/d1/nope"), None);
        assert_eq!(parse_shadow_topic("$shadow//get"), None);
        assert_eq!(DeviceChannel::Alarm.topic("d1"), "$verge/alarms/d1");
        assert_eq!(
            parse_device_channel("$verge/command-status/d1"),
            Some((DeviceChannel::CommandStatus, "d1"))
        );
        assert_eq!(parse_device_channel("$verge/shadow/d1/x"), None);
        assert_eq!(parse_device_channel("devices/d1/telemetry"), None);
    }

    #[test]
    fn updates_set_merge_and_remove_keys_and_bump_the_version() {
        let mut s = Shadow::default();
        assert!(
            s.apply(
                &update(json!({"desired": {"led": "on", "cfg": {"a": 1, "b": 2}}})),
                10
            )
            .unwrap()
        );
        assert_eq!(s.version, 1);
        assert_eq!(
            s.delta(),
            json!({"led": "on", "cfg": {"a": 1, "b": 2}})
                .as_object()
                .unwrap()
                .clone()
        );
        s.apply(
            &update(json!({"desired": {"cfg": {"b": null, "c": 3}}})),
            20,
        )
        .unwrap();
        assert_eq!(s.desired["cfg"], json!({"a": 1, "c": 3}));
        s.apply(
            &update(json!({"reported": {"led": "on"}, "version": 2})),
            30,
        )
        .unwrap();
        assert_eq!(s.version, 3);
        assert!(!s.delta().contains_key("led"));
        // the same values again change nothing
        assert!(
            !s.apply(&update(json!({"reported": {"led": "on"}})), 40)
                .unwrap()
        );
        assert_eq!(s.version, 3);
        s.apply(&update(json!({"desired": {"led": null}})), 50)
            .unwrap();
        assert!(!s.desired.contains_key("led"));
        assert!(s.metadata.desired["led"].deleted);
    }

    #[test]
    fn a_stale_version_is_refused_and_changes_nothing() {
        let mut s = Shadow::default();
        s.apply(&update(json!({"desired": {"x": 1}})), 1).unwrap();
        let before = s.clone();
        let err = s
            .apply(&update(json!({"desired": {"x": 2}, "version": 0})), 2)
            .unwrap_err();
        assert_eq!(
            err,
            ShadowError::VersionConflict {
                given: 0,
                current: 1
            }
        );
        assert_eq!(err.code(), "version_conflict");
        assert_eq!(s, before);
        assert!(ShadowUpdate::parse(b"{\"desire\": {}}").is_err());
        assert!(ShadowUpdate::parse(b"[1]").is_err());
    }

    #[test]
    fn an_oversized_update_is_refused() {
        let mut s = Shadow::default();
        let big = "x".repeat(MAX_SHADOW_BYTES);
        let err = s
            .apply(&update(json!({"reported": {"blob": big}})), 1)
            .unwrap_err();
        assert!(matches!(err, ShadowError::TooLarge { .. }));
        assert_eq!(s, Shadow::default());
    }

    #[test]
    fn offline_edits_on_both_sides_merge_per_key_by_time() {
        // both copies start equal
        let mut node = Shadow::default();
        node.apply(
            &update(json!({"desired": {"rate": 1}, "reported": {"rate": 1}})),
            100,
        )
        .unwrap();
        let mut cloud = Shadow::default();
        assert!(cloud.merge_from_node(&node, 101));
        // offline: the cloud changes desired, the device reports, and a
        // local app changes desired `mode` later than the cloud
        cloud
            .apply(&update(json!({"desired": {"rate": 5, "mode": "eco"}})), 200)
            .unwrap();
        node.apply(&update(json!({"reported": {"rate": 2}})), 210)
            .unwrap();
        node.apply(&update(json!({"desired": {"mode": "boost"}})), 220)
            .unwrap();
        // the link returns: each merges the other's copy
        assert!(node.merge_from_cloud(&cloud, 300));
        assert!(cloud.merge_from_node(&node, 301));
        for s in [&node, &cloud] {
            assert_eq!(
                s.desired["rate"],
                json!(5),
                "the cloud's later desired edit"
            );
            assert_eq!(
                s.desired["mode"],
                json!("boost"),
                "the node's later desired edit"
            );
            assert_eq!(s.reported["rate"], json!(2), "the device's report");
        }
        assert!(cloud.covered_by(&node) && node.covered_by(&cloud));
        // merging again changes nothing
        assert!(!node.merge_from_cloud(&cloud, 400));
        assert!(!cloud.merge_from_node(&node, 401));
    }

    #[test]
    fn ties_go_to_the_owner_of_each_side_and_removals_win_when_later() {
        let mut node = Shadow::default();
        let mut cloud = Shadow::default();
        node.apply(
            &update(json!({"desired": {"k": "node"}, "reported": {"r": "node"}})),
            5,
        )
        .unwrap();
        cloud
            .apply(
                &update(json!({"desired": {"k": "cloud"}, "reported": {"r": "cloud"}})),
                5,
            )
            .unwrap();
        let mut n = node.clone();
        n.merge_from_cloud(&cloud, 6);
        assert_eq!(n.desired["k"], json!("cloud"));
        assert_eq!(n.reported["r"], json!("node"));
        let mut c = cloud.clone();
        c.merge_from_node(&node, 6);
        assert_eq!(c.desired["k"], json!("cloud"));
        assert_eq!(c.reported["r"], json!("node"));
        // a later removal on the cloud removes the node's value
        c.apply(&update(json!({"desired": {"k": null}})), 9)
            .unwrap();
        n.merge_from_cloud(&c, 10);
        assert!(!n.desired.contains_key("k"));
        assert!(!cloud.covered_by(&Shadow::default()));
    }

    #[test]
    fn regression_a_merge_past_the_cap_still_takes_updates_that_do_not_grow_it() {
        let blob = |c: &str| c.repeat(30_000);
        let mut node = Shadow::default();
        node.apply(
            &update(json!({"desired": {"a": blob("a")}, "reported": {"r": blob("r")}})),
            10,
        )
        .unwrap();
        let mut cloud = Shadow::default();
        cloud
            .apply(&update(json!({"desired": {"b": blob("b")}})), 20)
            .unwrap();
        // each copy is under the caps; the merge keeps both desired keys
        assert!(node.merge_from_cloud(&cloud, 30));
        assert!(node.desired.contains_key("a") && node.desired.contains_key("b"));
        assert!(node.side_size(Side::Desired) > MAX_SIDE_BYTES);
        assert!(node.size() > MAX_SHADOW_BYTES);
        // growing the over-cap side is refused, and changes nothing
        let before = node.clone();
        let err = node
            .apply(&update(json!({"desired": {"c": 1}})), 40)
            .unwrap_err();
        assert!(matches!(
            err,
            ShadowError::TooLarge {
                side: Side::Desired,
                ..
            }
        ));
        assert_eq!(err.code(), "too_large");
        assert_eq!(node, before);
        // the other side, under its cap, still takes reports
        assert!(
            node.apply(&update(json!({"reported": {"t": 21}})), 41)
                .unwrap()
        );
        // a removal shrinks the desired side: taken
        assert!(
            node.apply(&update(json!({"desired": {"a": null}})), 42)
                .unwrap()
        );
        assert!(node.side_size(Side::Desired) <= MAX_SIDE_BYTES);
        assert!(
            node.apply(&update(json!({"desired": {"c": 1}})), 43)
                .unwrap()
        );
        // a report that would pass the reported cap is refused
        let err = node
            .apply(&update(json!({"reported": {"big": blob("x")}})), 44)
            .unwrap_err();
        assert!(matches!(
            err,
            ShadowError::TooLarge {
                side: Side::Reported,
                ..
            }
        ));
    }

    #[test]
    fn one_side_full_on_each_copy_merges_within_the_total() {
        let fill = MAX_SIDE_BYTES - 64;
        let mut node = Shadow::default();
        node.apply(&update(json!({"reported": {"r": "r".repeat(fill)}})), 1)
            .unwrap();
        let mut cloud = Shadow::default();
        cloud
            .apply(&update(json!({"desired": {"d": "d".repeat(fill)}})), 2)
            .unwrap();
        node.merge_from_cloud(&cloud, 3);
        node.version = u64::MAX;
        node.timestamp = u64::MAX;
        assert!(node.side_size(Side::Desired) <= MAX_SIDE_BYTES);
        assert!(node.size() <= MAX_SHADOW_BYTES, "{}", node.size());
    }

    #[test]
    fn old_tombstones_are_pruned_young_ones_and_values_kept() {
        let day = 24 * 60 * 60 * 1000;
        let mut s = Shadow::default();
        s.apply(&update(json!({"desired": {"a": 1, "b": 2, "c": 3}})), day)
            .unwrap();
        s.apply(&update(json!({"desired": {"a": null}})), 2 * day)
            .unwrap();
        s.apply(&update(json!({"desired": {"b": null}})), 20 * day)
            .unwrap();
        let v = s.version;
        assert_eq!(s.prune_tombstones(31 * day, TOMBSTONE_MAX_AGE_MS), 0);
        assert_eq!(s.prune_tombstones(33 * day, TOMBSTONE_MAX_AGE_MS), 1);
        assert_eq!(s.version, v + 1);
        assert!(!s.metadata.desired.contains_key("a"));
        assert!(s.metadata.desired["b"].deleted, "younger tombstone kept");
        assert!(
            s.metadata.desired.contains_key("c"),
            "values keep their metadata"
        );
        assert_eq!(s.metadata.pruned_until.desired, 2 * day);
        assert_eq!(s.metadata.pruned_until.reported, 0);
        let back: Shadow = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        // a change drops tombstones past the age by itself
        s.apply(&update(json!({"desired": {"c": 4}})), 60 * day)
            .unwrap();
        assert!(!s.metadata.desired.contains_key("b"));
        assert_eq!(s.metadata.pruned_until.desired, 20 * day);
    }

    #[test]
    fn regression_a_pruned_tombstone_does_not_resurrect_the_other_copys_value() {
        let day = 24 * 60 * 60 * 1000;
        let mut node = Shadow::default();
        node.apply(
            &update(json!({"desired": {"k": "v", "keep": 1}, "reported": {"k": "v"}})),
            day,
        )
        .unwrap();
        let mut cloud = Shadow::default();
        cloud.merge_from_node(&node, day + 1);
        // the link goes down; the node removes k on both sides, and forgets
        // the removals a month later
        node.apply(
            &update(json!({"desired": {"k": null}, "reported": {"k": null}})),
            2 * day,
        )
        .unwrap();
        assert_eq!(node.prune_tombstones(40 * day, TOMBSTONE_MAX_AGE_MS), 2);
        assert!(!node.metadata.desired.contains_key("k"));
        // the cloud's older copy comes back: k stays removed on the node...
        assert!(!node.clone().merge_from_cloud(&cloud, 41 * day));
        node.merge_from_cloud(&cloud, 41 * day);
        assert!(!node.desired.contains_key("k") && !node.reported.contains_key("k"));
        assert_eq!(node.desired["keep"], json!(1));
        // ...and the cloud, merging the node's copy, removes it too
        assert!(!cloud.covered_by(&Shadow::default()));
        cloud.merge_from_node(&node, 41 * day);
        assert!(!cloud.desired.contains_key("k") && !cloud.reported.contains_key("k"));
        assert_eq!(cloud.desired["keep"], json!(1));
        assert_eq!(cloud.metadata, node.metadata, "the copies converge");
        assert!(cloud.covered_by(&node) && node.covered_by(&cloud));
        // a later edit of k is a new value, taken by both
        cloud
            .apply(&update(json!({"desired": {"k": "new"}})), 42 * day)
            .unwrap();
        node.merge_from_cloud(&cloud, 42 * day);
        assert_eq!(node.desired["k"], json!("new"));
    }

    #[test]
    fn a_tombstone_pruned_on_one_copy_only_is_still_covered() {
        let day = 24 * 60 * 60 * 1000;
        let mut cloud = Shadow::default();
        cloud
            .apply(&update(json!({"desired": {"k": 1}})), day)
            .unwrap();
        cloud
            .apply(&update(json!({"desired": {"k": null}})), 2 * day)
            .unwrap();
        let mut node = Shadow::default();
        node.merge_from_cloud(&cloud, 2 * day);
        assert!(cloud.covered_by(&node));
        // the node forgets the removal, the cloud still has its tombstone
        node.prune_tombstones(40 * day, TOMBSTONE_MAX_AGE_MS);
        assert!(node.metadata.desired.is_empty());
        assert!(cloud.covered_by(&node), "the node's horizon covers it");
        // the cloud's tombstone does not come back to the node
        assert!(!node.merge_from_cloud(&cloud, 41 * day));
        // the other way: the cloud pruned, the node did not: the node's
        // copy lacks the cloud's horizon until it merges the cloud's copy
        let mut cloud2 = cloud.clone();
        let mut node2 = Shadow::default();
        node2.merge_from_cloud(&cloud2, 3 * day);
        cloud2.prune_tombstones(40 * day, TOMBSTONE_MAX_AGE_MS);
        assert!(!cloud2.covered_by(&node2));
        assert!(node2.merge_from_cloud(&cloud2, 41 * day));
        assert!(node2.metadata.desired.is_empty());
        assert!(cloud2.covered_by(&node2));
    }

    #[test]
    fn wire_types_round_trip() {
        let req = CommandRequest {
            id: "c1".into(),
            device: "d1".into(),
            name: "reboot".into(),
            payload: json!({"delay": 5}),
            created_ms: 1,
            expires_ms: 2,
        };
        let back: CommandRequest =
            serde_json::from_slice(&serde_json::to_vec(&req).unwrap()).unwrap();
        assert_eq!(back, req);
        let st: CommandStatus = serde_json::from_value(
            json!({"id": "c1", "device": "d1", "state": "replied", "at_ms": 3, "reply": {"ok": true}}),
        )
        .unwrap();
        assert_eq!(st.state, CommandState::Replied);
        assert!(st.state.is_final() && st.state.rank() > CommandState::Delivered.rank());
        let alarm: AlarmEvent = serde_json::from_value(json!({
            "device": "d1", "type": "overheat", "action": "raise", "severity": "critical",
            "message": "hot", "at_ms": 4
        }))
        .unwrap();
        assert_eq!(alarm.severity.as_str(), "critical");
        assert!(serde_json::from_value::<AlarmEvent>(json!({"device": "d1"})).is_err());
    }

    #[test]
    fn store_query_and_reply_round_trip() {
        assert_eq!(
            DeviceChannel::StoreQuery.topic("d1"),
            "$verge/store-query/d1"
        );
        assert_eq!(
            parse_device_channel("$verge/store-reply/d1"),
            Some((DeviceChannel::StoreReply, "d1"))
        );
        assert_eq!(DeviceChannel::StoreQuery.filter(), "$verge/store-query/+");
        let q = StoreQuery {
            id: "q1".into(),
            device: "d1".into(),
            metric: Some("temp".into()),
            from_ms: 10,
            to_ms: 20,
            bucket_ms: None,
            limit: 100,
        };
        let v = serde_json::to_value(&q).unwrap();
        assert!(v.get("bucket_ms").is_none());
        assert_eq!(serde_json::from_value::<StoreQuery>(v).unwrap(), q);
        assert!(serde_json::from_value::<StoreQuery>(json!({"id": "q"})).is_err());
        let r = StoreReply {
            id: "q1".into(),
            device: "d1".into(),
            series: vec![StoreSeries {
                metric: "temp".into(),
                points: vec![(10, 21.5), (20, 22.0)],
            }],
            error: None,
            truncated: true,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["series"][0]["points"], json!([[10, 21.5], [20, 22.0]]));
        assert_eq!(serde_json::from_value::<StoreReply>(v).unwrap(), r);
        let err: StoreReply =
            serde_json::from_value(json!({"id": "q2", "device": "d1", "error": "no store"}))
                .unwrap();
        assert_eq!(err.error.as_deref(), Some("no store"));
        assert!(err.series.is_empty() && !err.truncated);
    }
}

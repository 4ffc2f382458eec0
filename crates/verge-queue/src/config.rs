//! The queue's config: lanes, sync policy and limits, with their defaults
//! (this is the one place they are written down) and validation.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::QueueError;

/// The cache queue's config (`queue` in the node config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Directory of the queue; required by [`crate::Queue::open`]. Empty by
    /// default: the node then uses `<node.data_dir>/queue`.
    #[serde(skip_serializing_if = "is_empty")]
    pub dir: PathBuf,
    /// When an append counts as durable.
    pub sync: SyncPolicy,
    /// Longest an append waits for the group's fdatasync under
    /// [`SyncPolicy::Group`] while more appends keep arriving.
    #[serde(with = "crate::duration")]
    pub group_commit: Duration,
    /// Largest segment file; a lane uses `min(segment_bytes, max_bytes / 4)`.
    pub segment_bytes: u64,
    /// Most append calls waiting in the channel to the writer thread; an
    /// append beyond it waits for room (counted in `writer_waits`), never
    /// dropped.
    pub max_pending_appends: usize,
    /// The lanes, drained highest priority first.
    pub lanes: Vec<LaneConfig>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            dir: PathBuf::new(),
            sync: SyncPolicy::Group,
            group_commit: Duration::from_millis(5),
            segment_bytes: 8 * MIB,
            max_pending_appends: 1024,
            lanes: vec![
                LaneConfig {
                    name: "alarms".into(),
                    priority: 10,
                    max_bytes: 256 * MIB,
                    max_age: None,
                    when_full: WhenFull::Reject,
                },
                LaneConfig {
                    name: "telemetry".into(),
                    priority: 0,
                    max_bytes: 512 * MIB,
                    max_age: Some(Duration::from_secs(7 * 86_400)),
                    when_full: WhenFull::DropOldest,
                },
            ],
        }
    }
}

const MIB: u64 = 1024 * 1024;

fn is_empty(p: &std::path::Path) -> bool {
    p.as_os_str().is_empty()
}

/// When an append is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncPolicy {
    /// One fdatasync per append call.
    Always,
    /// Concurrent appends share one fdatasync.
    Group,
    /// write(2) only: survives a process crash, not a power loss.
    Buffered,
}

/// One lane of the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaneConfig {
    /// `[a-z0-9_-]+`, unique; also the lane's directory name.
    pub name: String,
    /// Higher drains first.
    pub priority: u8,
    /// Bound on the lane's disk use, in bytes.
    pub max_bytes: u64,
    /// Records older than this are dropped unsent (`dropped_ttl`).
    #[serde(default, with = "crate::duration::option")]
    pub max_age: Option<Duration>,
    /// What an append to a full lane does.
    pub when_full: WhenFull,
}

/// What an append to a full lane does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Refuse the append (`rejected`).
    Reject,
    /// Drop the oldest records (`dropped_full`).
    DropOldest,
}

/// Smallest `max_bytes` of a lane.
pub const MIN_LANE_BYTES: u64 = 4096;
/// Smallest `segment_bytes`.
pub const MIN_SEGMENT_BYTES: u64 = 4096;
/// Largest `segment_bytes`.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;
/// Largest `max_pending_appends`.
pub const MAX_PENDING_APPENDS: usize = 1 << 20;

impl QueueConfig {
    /// Check the config; the error names the key.
    pub fn validate(&self) -> Result<(), QueueError> {
        let bad = |key: String, msg: String| Err(QueueError::Config(format!("queue.{key}: {msg}")));
        if self.dir.as_os_str().is_empty() {
            return bad("dir".into(), "must not be empty".into());
        }
        if self.group_commit > Duration::from_secs(1) {
            return bad("group_commit".into(), "must be at most 1s".into());
        }
        if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&self.segment_bytes) {
            return bad(
                "segment_bytes".into(),
                format!("must be between {MIN_SEGMENT_BYTES} and {MAX_SEGMENT_BYTES}"),
            );
        }
        if !(1..=MAX_PENDING_APPENDS).contains(&self.max_pending_appends) {
            return bad(
                "max_pending_appends".into(),
                format!("must be between 1 and {MAX_PENDING_APPENDS}"),
            );
        }
        if self.lanes.is_empty() {
            return bad("lanes".into(), "at least one lane is needed".into());
        }
        for (i, lane) in self.lanes.iter().enumerate() {
            let valid = lane
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
            if lane.name.is_empty() || lane.name.len() > 64 || !valid {
                return bad(
                    format!("lanes[{i}].name"),
                    format!("`{}` must be 1 to 64 of [a-z0-9_-]", lane.name),
                );
            }
            if self.lanes[..i].iter().any(|l| l.name == lane.name) {
                return bad(
                    format!("lanes[{i}].name"),
                    format!("lane `{}` is defined twice", lane.name),
                );
            }
            if lane.max_bytes < MIN_LANE_BYTES {
                return bad(
                    format!("lanes[{i}].max_bytes"),
                    format!("must be at least {MIN_LANE_BYTES}"),
                );
            }
            if lane.max_age.is_some_and(|a| a.is_zero()) {
                return bad(
                    format!("lanes[{i}].max_age"),
                    "must be positive (leave it out for no limit)".into(),
                );
            }
        }
        Ok(())
    }

    /// Segment size of lane `i`: small enough that deleting whole segments
    /// keeps the lane within `max_bytes`.
    pub(crate) fn lane_segment_bytes(&self, i: usize) -> u64 {
        self.segment_bytes
            .min(self.lanes[i].max_bytes / 4)
            .max(1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_dir() -> QueueConfig {
        QueueConfig {
            dir: PathBuf::from("/var/lib/verge/queue"),
            ..QueueConfig::default()
        }
    }

    fn err(cfg: &QueueConfig) -> String {
        cfg.validate().expect_err("invalid").to_string()
    }

    #[test]
    fn default_is_valid_and_round_trips() {
        let mut cfg = QueueConfig::default();
        assert!(err(&cfg).contains("queue.dir"), "the directory is required");
        cfg.dir = PathBuf::from("/var/lib/verge/queue");
        cfg.validate().expect("valid");
        let json = serde_json::to_string(&cfg).expect("ser");
        assert!(json.contains("\"group_commit\":\"5ms\""), "{json}");
        assert!(json.contains("\"max_age\":\"7d\""), "{json}");
        let back: QueueConfig = serde_json::from_str(&json).expect("de");
        assert_eq!(back, cfg);
    }

    #[test]
    fn parses_toml_with_human_durations() {
        let cfg: QueueConfig = toml::from_str(
            r#"
            dir = "/var/verge/queue"
            sync = "always"
            group_commit = "500us"
            [[lanes]]
            name = "a"
            priority = 3
            max_bytes = 100000
            max_age = "2h"
            when_full = "drop_oldest"
            "#,
        )
        .expect("parses");
        assert_eq!(cfg.sync, SyncPolicy::Always);
        assert_eq!(cfg.group_commit, Duration::from_micros(500));
        assert_eq!(cfg.segment_bytes, 8 * MIB);
        assert_eq!(cfg.lanes[0].max_age, Some(Duration::from_secs(7200)));
        assert_eq!(cfg.lanes[0].when_full, WhenFull::DropOldest);
        assert!(toml::from_str::<QueueConfig>("syncc = \"always\"").is_err());
        assert!(toml::from_str::<QueueConfig>("group_commit = \"5 parsecs\"").is_err());
    }

    #[test]
    fn errors_name_the_key() {
        let mut cfg = with_dir();
        cfg.lanes[1].name = "alarms".into();
        assert_eq!(
            err(&cfg),
            "invalid config: queue.lanes[1].name: lane `alarms` is defined twice"
        );
        cfg.lanes[1].name = "Tele metry".into();
        assert!(err(&cfg).contains("queue.lanes[1].name: `Tele metry`"));
        cfg.lanes[1].name = String::new();
        assert!(err(&cfg).contains("queue.lanes[1].name"));
        cfg = with_dir();
        cfg.lanes[1].max_bytes = 10;
        assert!(err(&cfg).contains("queue.lanes[1].max_bytes: must be at least"));
        cfg = with_dir();
        cfg.lanes[0].max_age = Some(Duration::ZERO);
        assert!(err(&cfg).contains("queue.lanes[0].max_age"));
        cfg = with_dir();
        cfg.lanes.clear();
        assert!(err(&cfg).contains("queue.lanes: at least one lane"));
        cfg = with_dir();
        cfg.segment_bytes = 1;
        assert!(err(&cfg).contains("queue.segment_bytes"));
        cfg = with_dir();
        cfg.group_commit = Duration::from_secs(5);
        assert!(err(&cfg).contains("queue.group_commit"));
        cfg = with_dir();
        cfg.max_pending_appends = 0;
        assert!(err(&cfg).contains("queue.max_pending_appends: must be between 1"));
    }

    #[test]
    fn lane_segments_fit_the_lane() {
        let mut cfg = QueueConfig::default();
        assert_eq!(cfg.lane_segment_bytes(0), 8 * MIB);
        cfg.lanes[0].max_bytes = 10_000;
        assert_eq!(cfg.lane_segment_bytes(0), 2_500);
    }
}

//! The shadow document: per-key edit times, updates with a version check
//! and per-side caps, the merge of two copies by the conflict rule, and
//! tombstone pruning (see the parent module for the rule and its bounds).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{MAX_SIDE_BYTES, TOMBSTONE_MAX_AGE_MS};

/// When a key of one side of a shadow was last set or removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMeta {
    /// The edit's time, ms since the Unix epoch.
    pub ts: u64,
    /// The edit removed the key (a tombstone, so the removal wins over an
    /// older value on the other side).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

/// Per-key edit times of both sides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShadowMetadata {
    /// Keys of `desired`.
    pub desired: BTreeMap<String, KeyMeta>,
    /// Keys of `reported`.
    pub reported: BTreeMap<String, KeyMeta>,
    /// Per side, the time of the newest removal this copy forgot
    /// ([`Shadow::prune_tombstones`]).
    #[serde(skip_serializing_if = "PrunedUntil::is_zero")]
    pub pruned_until: PrunedUntil,
}

/// Per side, the time (ms since the Unix epoch) up to which this copy
/// dropped its tombstones: a key of that side with no metadata here counts
/// as removed at that time, so a value older than a forgotten removal,
/// still held by the other copy, does not come back. 0: nothing dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PrunedUntil {
    /// Of `desired`.
    #[serde(skip_serializing_if = "is_zero")]
    pub desired: u64,
    /// Of `reported`.
    #[serde(skip_serializing_if = "is_zero")]
    pub reported: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl PrunedUntil {
    fn is_zero(&self) -> bool {
        self.desired == 0 && self.reported == 0
    }

    fn get(&self, side: Side) -> u64 {
        match side {
            Side::Desired => self.desired,
            Side::Reported => self.reported,
        }
    }

    fn get_mut(&mut self, side: Side) -> &mut u64 {
        match side {
            Side::Desired => &mut self.desired,
            Side::Reported => &mut self.reported,
        }
    }
}

/// Which half of a shadow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// What the cloud (or an operator) wants.
    Desired,
    /// What the device says it is.
    Reported,
}

impl Side {
    /// `desired` or `reported`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Desired => "desired",
            Side::Reported => "reported",
        }
    }
}

/// One device's shadow.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Shadow {
    /// What the device should be.
    pub desired: Map<String, Value>,
    /// What the device says it is.
    pub reported: Map<String, Value>,
    /// Per-key edit times (and removals).
    pub metadata: ShadowMetadata,
    /// Counts every change of this copy; an update naming another version
    /// is refused.
    pub version: u64,
    /// Time of the last change, ms since the Unix epoch.
    pub timestamp: u64,
}

/// An update of a shadow (from a device on `$shadow/{d}/update`, or the
/// cloud's `PATCH /api/devices/{id}/shadow`). Top-level keys are set; a
/// `null` removes the key; an object value is merged into an object
/// already there (JSON merge patch, RFC 7396).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShadowUpdate {
    /// Changes of `desired`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desired: Option<Map<String, Value>>,
    /// Changes of `reported`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reported: Option<Map<String, Value>>,
    /// The version the update was made against; when given and not the
    /// shadow's, the update is refused ([`ShadowError::VersionConflict`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Echoed in the answer, so a device can match answers to requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
}

/// The delta a device is told about: desired keys whose value differs
/// from the reported one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShadowDelta {
    /// The differing keys with their desired values.
    pub state: Map<String, Value>,
    /// The shadow's version.
    pub version: u64,
    /// Time of the shadow's last change.
    pub timestamp: u64,
}

/// Why a shadow update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShadowError {
    /// The update named another version than the shadow's.
    #[error(
        "version conflict: the update was made against version {given}, the shadow is at {current}"
    )]
    VersionConflict {
        /// The version in the update.
        given: u64,
        /// The shadow's version.
        current: u64,
    },
    /// The update is not a JSON object of the documented shape.
    #[error("invalid shadow update: {0}")]
    Invalid(String),
    /// The update would make a side larger than it is and larger than
    /// [`MAX_SIDE_BYTES`].
    #[error("the shadow's {} would be {size} bytes; at most {max} are kept", side.as_str())]
    TooLarge {
        /// The side that would grow past its cap.
        side: Side,
        /// The size it would have (its values and metadata as JSON).
        size: usize,
        /// [`MAX_SIDE_BYTES`].
        max: usize,
    },
}

impl ShadowError {
    /// A short code for rejected answers and API errors
    /// (`version_conflict`, `invalid_update`, `too_large`).
    pub fn code(&self) -> &'static str {
        match self {
            ShadowError::VersionConflict { .. } => "version_conflict",
            ShadowError::Invalid(_) => "invalid_update",
            ShadowError::TooLarge { .. } => "too_large",
        }
    }
}

/// The body of a `…/rejected` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowRejection {
    /// [`ShadowError::code`].
    pub code: String,
    /// The error, for people.
    pub message: String,
    /// The shadow's version now.
    pub version: u64,
    /// The request's `client_token`, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
}

impl ShadowUpdate {
    /// Parse a device's update payload.
    pub fn parse(payload: &[u8]) -> Result<ShadowUpdate, ShadowError> {
        serde_json::from_slice(payload).map_err(|e| ShadowError::Invalid(e.to_string()))
    }
}

impl Shadow {
    /// The desired keys whose value differs from the reported one.
    pub fn delta(&self) -> Map<String, Value> {
        self.desired
            .iter()
            .filter(|(k, v)| self.reported.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The delta as a device is told it.
    pub fn delta_message(&self) -> ShadowDelta {
        ShadowDelta {
            state: self.delta(),
            version: self.version,
            timestamp: self.timestamp,
        }
    }

    /// Apply an update made at `now_ms`: checks the version, sets and
    /// removes keys, bumps the version. Returns whether anything changed
    /// (an update that sets every key to its current value changes
    /// nothing and keeps the version). An update that leaves a side larger
    /// than it was and larger than [`MAX_SIDE_BYTES`] is refused; one that
    /// shrinks an over-cap side (after a merge) is taken. A change also
    /// drops tombstones older than [`TOMBSTONE_MAX_AGE_MS`]. On error the
    /// shadow is unchanged.
    pub fn apply(&mut self, update: &ShadowUpdate, now_ms: u64) -> Result<bool, ShadowError> {
        if let Some(given) = update.version
            && given != self.version
        {
            return Err(ShadowError::VersionConflict {
                given,
                current: self.version,
            });
        }
        let mut next = self.clone();
        let mut changed = false;
        for (side, patch) in [
            (Side::Desired, &update.desired),
            (Side::Reported, &update.reported),
        ] {
            let Some(patch) = patch else { continue };
            for (key, value) in patch {
                if key.is_empty() {
                    return Err(ShadowError::Invalid("an empty key".into()));
                }
                changed |= next.set_key(side, key, value, now_ms);
            }
        }
        if !changed {
            return Ok(false);
        }
        next.drop_tombstones(now_ms, TOMBSTONE_MAX_AGE_MS);
        for side in [Side::Desired, Side::Reported] {
            let size = next.side_size(side);
            if size > MAX_SIDE_BYTES && size > self.side_size(side) {
                return Err(ShadowError::TooLarge {
                    side,
                    size,
                    max: MAX_SIDE_BYTES,
                });
            }
        }
        next.version += 1;
        next.timestamp = now_ms;
        *self = next;
        Ok(true)
    }

    /// Drop the tombstones (removed keys' metadata) of both sides whose
    /// edit is older than `max_age_ms` at `now_ms`; returns how many. Each
    /// side's [`PrunedUntil`] moves to the newest one dropped, so a key
    /// this copy has no metadata for counts as removed at that time: the
    /// other copy's older value of a key whose removal was forgotten here
    /// does not come back on a merge, and is removed there when it merges
    /// this copy. The cost: an edit made before that time that never
    /// reached this copy (a node offline longer than `max_age_ms`) counts
    /// as removed too. Bumps the version when anything was dropped.
    pub fn prune_tombstones(&mut self, now_ms: u64, max_age_ms: u64) -> usize {
        let dropped = self.drop_tombstones(now_ms, max_age_ms);
        if dropped > 0 {
            self.version += 1;
            self.timestamp = self.timestamp.max(now_ms);
        }
        dropped
    }

    /// [`Shadow::prune_tombstones`] without the version bump.
    fn drop_tombstones(&mut self, now_ms: u64, max_age_ms: u64) -> usize {
        let cutoff = now_ms.saturating_sub(max_age_ms);
        let mut dropped = 0;
        for side in [Side::Desired, Side::Reported] {
            let mut newest = self.metadata.pruned_until.get(side);
            let (_, meta) = self.half(side);
            meta.retain(|_, m| {
                let old = m.deleted && m.ts < cutoff;
                if old {
                    newest = newest.max(m.ts);
                    dropped += 1;
                }
                !old
            });
            *self.metadata.pruned_until.get_mut(side) = newest;
        }
        dropped
    }

    fn half(&mut self, side: Side) -> (&mut Map<String, Value>, &mut BTreeMap<String, KeyMeta>) {
        match side {
            Side::Desired => (&mut self.desired, &mut self.metadata.desired),
            Side::Reported => (&mut self.reported, &mut self.metadata.reported),
        }
    }

    /// Set (merge) or remove one key; whether it changed.
    fn set_key(&mut self, side: Side, key: &str, value: &Value, now_ms: u64) -> bool {
        let (values, meta) = self.half(side);
        let old = values.get(key).cloned();
        let new = match (&old, value) {
            (_, Value::Null) => None,
            (Some(Value::Object(old)), Value::Object(patch)) => {
                let mut merged = Value::Object(old.clone());
                merge_patch(&mut merged, &Value::Object(patch.clone()));
                Some(merged)
            }
            (_, v) => {
                let mut fresh = Value::Null;
                merge_patch(&mut fresh, v);
                Some(fresh)
            }
        };
        if new == old {
            return false;
        }
        match new {
            Some(v) => {
                values.insert(key.to_owned(), v);
                meta.insert(
                    key.to_owned(),
                    KeyMeta {
                        ts: now_ms,
                        deleted: false,
                    },
                );
            }
            None => {
                values.remove(key);
                meta.insert(
                    key.to_owned(),
                    KeyMeta {
                        ts: now_ms,
                        deleted: true,
                    },
                );
            }
        }
        true
    }

    /// Merge the other copy's `side` into this one by the conflict rule
    /// (per key, the later edit wins; on equal times the `ties_to_remote`
    /// side wins; a key a copy has no metadata for counts as removed at
    /// its [`PrunedUntil`]). This copy's `PrunedUntil` of the side becomes
    /// the later of both, and tombstones at or before it are dropped. The
    /// merge is never refused for size: it may leave the side over
    /// [`MAX_SIDE_BYTES`] (see there). Returns whether this copy changed;
    /// the version is bumped once when it did.
    pub fn merge_side(
        &mut self,
        side: Side,
        remote: &Shadow,
        ties_to_remote: bool,
        now_ms: u64,
    ) -> bool {
        let (remote_values, remote_meta) = match side {
            Side::Desired => (&remote.desired, &remote.metadata.desired),
            Side::Reported => (&remote.reported, &remote.metadata.reported),
        };
        let remote_pruned = remote.metadata.pruned_until.get(side);
        let local_pruned = self.metadata.pruned_until.get(side);
        let pruned = local_pruned.max(remote_pruned);
        let mut changed = pruned != local_pruned;
        *self.metadata.pruned_until.get_mut(side) = pruned;
        let (values, meta) = self.half(side);
        let forgotten = |at: u64| KeyMeta {
            ts: at,
            deleted: true,
        };
        let keys: BTreeSet<String> = meta.keys().chain(remote_meta.keys()).cloned().collect();
        for key in keys {
            let ours = meta.get(&key).copied();
            let theirs = remote_meta
                .get(&key)
                .copied()
                .unwrap_or(forgotten(remote_pruned));
            let ours_eff = ours.unwrap_or(forgotten(local_pruned));
            let take = theirs.ts > ours_eff.ts || (theirs.ts == ours_eff.ts && ties_to_remote);
            let (winner, value) = if take {
                let value = if theirs.deleted {
                    None
                } else {
                    remote_values.get(&key).cloned()
                };
                (theirs, value)
            } else {
                (ours_eff, values.get(&key).cloned())
            };
            // a removal at or before the horizon is implied by it
            let keep_meta = !(winner.deleted && winner.ts <= pruned);
            let new_meta = keep_meta.then_some(winner);
            if value.as_ref() != values.get(&key) || new_meta != ours {
                changed = true;
                match value {
                    Some(v) => values.insert(key.clone(), v),
                    None => values.remove(&key),
                };
                match new_meta {
                    Some(m) => meta.insert(key, m),
                    None => meta.remove(&key),
                };
            }
        }
        if changed {
            self.version += 1;
            self.timestamp = now_ms;
        }
        changed
    }

    /// The node's merge of the cloud's copy: the cloud wins desired ties,
    /// the node keeps reported ties.
    pub fn merge_from_cloud(&mut self, cloud: &Shadow, now_ms: u64) -> bool {
        let d = self.merge_side(Side::Desired, cloud, true, now_ms);
        let r = self.merge_side(Side::Reported, cloud, false, now_ms);
        d || r
    }

    /// The cloud's merge of the node's copy: the cloud keeps desired ties,
    /// the node wins reported ties.
    pub fn merge_from_node(&mut self, node: &Shadow, now_ms: u64) -> bool {
        let d = self.merge_side(Side::Desired, node, false, now_ms);
        let r = self.merge_side(Side::Reported, node, true, now_ms);
        d || r
    }

    /// Whether `other` has every edit of this copy (each key's edit time
    /// there is at least this copy's, a key `other` has no metadata for
    /// counting as removed at its [`PrunedUntil`], which must be at least
    /// this copy's): the cloud stops resending its copy once the node's
    /// copy covers it.
    pub fn covered_by(&self, other: &Shadow) -> bool {
        [Side::Desired, Side::Reported].into_iter().all(|side| {
            let (mine, theirs) = match side {
                Side::Desired => (&self.metadata.desired, &other.metadata.desired),
                Side::Reported => (&self.metadata.reported, &other.metadata.reported),
            };
            let their_pruned = other.metadata.pruned_until.get(side);
            their_pruned >= self.metadata.pruned_until.get(side)
                && mine
                    .iter()
                    .all(|(k, m)| theirs.get(k).map_or(their_pruned >= m.ts, |t| t.ts >= m.ts))
        })
    }

    /// The document's size as JSON.
    pub fn size(&self) -> usize {
        json_len(self)
    }

    /// The size of one side: its values and its metadata, as JSON (what
    /// [`MAX_SIDE_BYTES`] bounds).
    pub fn side_size(&self, side: Side) -> usize {
        match side {
            Side::Desired => json_len(&self.desired) + json_len(&self.metadata.desired),
            Side::Reported => json_len(&self.reported) + json_len(&self.metadata.reported),
        }
    }
}

fn json_len<T: Serialize>(v: &T) -> usize {
    serde_json::to_vec(v).map_or(usize::MAX, |v| v.len())
}

/// RFC 7396 merge patch of `patch` into `target` (nulls inside objects
/// remove members).
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(map) = target else { return };
    for (k, v) in patch {
        if v.is_null() {
            map.remove(k);
        } else {
            merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

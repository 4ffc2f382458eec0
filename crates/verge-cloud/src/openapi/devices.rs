//! The component schemas of device shadows, commands and alarms, a
//! device's history from its node's store, and of a device's session as
//! its node reports it.

use serde_json::{Value, json};

use super::shapes::{ms, nullable_ms, obj, object, r, string, uint};

/// A device's connection as its node last reported it (or null).
pub(super) fn session() -> Value {
    json!({
        "allOf": [obj(&["connected", "since_ms", "client_id", "transport"], true, json!({
            "connected": {"type": "boolean"},
            "since_ms": {"type": "integer", "format": "int64", "description": "connected (or disconnected) since, ms since the Unix epoch"},
            "client_id": string(),
            "transport": {"type": "string", "description": "`mqtt`, `mqtts`, `ws`, `wss` or `coap` (empty when not known)"},
        }))],
        "nullable": true,
        "description": "the device's connection from its node's heartbeat; null until the node reported it",
    })
}

/// A device session in a node's heartbeat.
pub(super) fn reported_session() -> Value {
    obj(
        &[],
        false,
        json!({"device": string(), "connected": {"type": "boolean"}, "since_ms": uint(),
               "client_id": string(), "transport": string()}),
    )
}

pub(super) fn schemas() -> Vec<(&'static str, Value)> {
    let meta = json!({"type": "object", "additionalProperties": obj(&["ts"], false, json!({
        "ts": uint(), "deleted": {"type": "boolean"}})),
        "description": "per key: the time of the edit that set or removed it"});
    let state = json!({"type": "string", "enum": ["queued", "sent", "delivered", "replied", "failed", "expired"]});
    vec![
        (
            "Shadow",
            obj(
                &[
                    "device_id",
                    "node_id",
                    "desired",
                    "reported",
                    "delta",
                    "metadata",
                    "version",
                    "timestamp",
                    "synced",
                ],
                true,
                json!({
                    "device_id": string(), "node_id": string(),
                    "desired": object(), "reported": object(),
                    "delta": {"type": "object", "description": "desired keys whose value differs from reported"},
                    "metadata": obj(&[], false, json!({"desired": meta, "reported": meta})),
                    "version": uint(), "timestamp": ms(),
                    "synced": {"type": "boolean", "description": "the node's last reported copy has every edit of this one"},
                }),
            ),
        ),
        (
            "ShadowPatch",
            obj(
                &["desired"],
                true,
                json!({
                    "desired": {"type": "object", "description": "keys to set; null removes a key; an object is merged into an object (RFC 7396)"},
                    "version": {"type": "integer", "format": "int64", "minimum": 0,
                                "description": "the version the change was made against; another one is 409 version_conflict"},
                }),
            ),
        ),
        (
            "Command",
            obj(
                &[
                    "id",
                    "device_id",
                    "node_id",
                    "name",
                    "payload",
                    "status",
                    "created_ms",
                    "expires_ms",
                    "updated_ms",
                    "attempts",
                    "reply",
                    "error",
                ],
                true,
                json!({
                    "id": string(), "device_id": string(), "node_id": string(), "name": string(),
                    "payload": {"description": "the JSON payload the device gets"},
                    "status": state,
                    "created_ms": ms(), "expires_ms": ms(), "updated_ms": ms(),
                    "attempts": {"type": "integer", "format": "int64", "description": "how often the cloud published it to the node"},
                    "reply": {"description": "the device's reply (JSON when it was JSON, else text) or null", "nullable": true},
                    "error": {"type": "string", "nullable": true},
                }),
            ),
        ),
        (
            "History",
            obj(
                &[
                    "device_id",
                    "node_id",
                    "from_ms",
                    "to_ms",
                    "bucket_ms",
                    "series",
                    "truncated",
                ],
                true,
                json!({
                    "device_id": string(), "node_id": string(),
                    "from_ms": ms(), "to_ms": ms(),
                    "bucket_ms": {"type": "integer", "format": "int64", "nullable": true,
                                  "description": "the bucket width the points are averaged over; null: raw points"},
                    "series": {"type": "array", "maxItems": 16, "items": obj(&["metric", "points"], true, json!({
                        "metric": string(),
                        "points": {"type": "array", "maxItems": 2000,
                                   "description": "`[ts_ms, value]` pairs, oldest first (bucketed: the bucket's start and mean)",
                                   "items": {"type": "array", "minItems": 2, "maxItems": 2, "items": {"type": "number"}}},
                    }))},
                    "truncated": {"type": "boolean", "description": "series or points were left out (at most 16 series of 2,000 points and 512 KiB; raw points: the oldest come first)"},
                }),
            ),
        ),
        (
            "CommandQueued",
            obj(&["command"], true, json!({"command": r("Command")})),
        ),
        (
            "Alarm",
            obj(
                &[
                    "id",
                    "device_id",
                    "node_id",
                    "type",
                    "severity",
                    "message",
                    "status",
                    "acknowledged",
                    "count",
                    "rule",
                    "created_ms",
                    "updated_ms",
                    "cleared_ms",
                    "acknowledged_ms",
                    "details",
                ],
                true,
                json!({
                    "id": string(), "device_id": string(), "node_id": string(), "type": string(),
                    "severity": {"type": "string", "enum": ["critical", "major", "minor", "warning", "indeterminate"]},
                    "message": string(),
                    "status": {"type": "string", "enum": ["active", "cleared"]},
                    "acknowledged": {"type": "boolean"},
                    "count": {"type": "integer", "format": "int64", "description": "raises while open"},
                    "rule": string(),
                    "created_ms": ms(), "updated_ms": ms(),
                    "cleared_ms": nullable_ms(), "acknowledged_ms": nullable_ms(),
                    "details": {"description": "the row of the last raise, or null", "nullable": true},
                }),
            ),
        ),
    ]
}

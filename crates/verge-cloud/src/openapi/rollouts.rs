//! The component schemas of node labels and staged rollouts: the body that
//! starts one and the rollout with its stages and their nodes.

use serde_json::{Value, json};

use super::shapes::{array, int, ms, name_schema, obj, string};

/// A node's labels (also a rollout's selector).
pub(super) fn labels() -> Value {
    json!({"type": "object", "maxProperties": 32,
           "additionalProperties": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,63}$"},
           "description": "labels: keys and values of 1 to 63 letters, digits, `_`, `-` or `.`; at most 32"})
}

pub(super) fn schemas() -> Vec<(&'static str, Value)> {
    let version = json!({"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"});
    let node = obj(
        &["node_id", "revision", "result", "error"],
        true,
        json!({
            "node_id": string(),
            "revision": {"type": "integer", "format": "int64", "nullable": true,
                         "description": "the node's revision that carries the version (null until its stage starts)"},
            "result": {"type": "string", "enum": ["pending", "applied", "rolled_back", "timed_out", "failed"],
                       "description": "failed: the version could not be assigned (the node was deleted, or its components could not run together)"},
            "error": {"type": "string", "nullable": true},
        }),
    );
    let stage = obj(
        &["stage", "state", "nodes"],
        true,
        json!({"stage": int(),
               "state": {"type": "string", "enum": ["pending", "running", "succeeded", "failed"]},
               "nodes": array(node)}),
    );
    vec![
        (
            "RolloutCreate",
            obj(
                &["component", "version", "selector"],
                true,
                json!({
                    "component": name_schema(),
                    "version": version,
                    "selector": labels(),
                    "canary": {"type": "integer", "format": "int64", "minimum": 1,
                               "description": "the first stage's nodes (default 1)"},
                    "canary_percent": {"type": "number", "minimum": 0, "exclusiveMinimum": true, "maximum": 100,
                                       "description": "the first stage as a share of the matched nodes, rounded up (instead of canary)"},
                    "max_failure_rate": {"type": "number", "minimum": 0, "maximum": 1, "default": 0},
                    "stage_timeout": {"type": "string", "default": "10m",
                                      "description": "a node without a result this long after its stage started failed (1s to 7d)"},
                }),
            ),
        ),
        (
            "Rollout",
            obj(
                &[
                    "id",
                    "component",
                    "version",
                    "selector",
                    "selector_text",
                    "max_failure_rate",
                    "stage_timeout",
                    "state",
                    "reason",
                    "stage",
                    "created_ms",
                    "author",
                    "stages",
                ],
                true,
                json!({
                    "id": int(), "component": string(), "version": string(),
                    "selector": labels(), "selector_text": string(),
                    "max_failure_rate": {"type": "number"}, "stage_timeout": string(),
                    "state": {"type": "string", "enum": ["running", "paused", "completed", "cancelled"]},
                    "reason": {"type": "string", "nullable": true, "description": "why it paused or was cancelled"},
                    "stage": {"type": "integer", "format": "int64", "description": "the current stage"},
                    "created_ms": ms(), "author": string(),
                    "stages": array(stage),
                }),
            ),
        ),
    ]
}

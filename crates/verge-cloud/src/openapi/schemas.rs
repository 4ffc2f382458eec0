//! The component schemas of the OpenAPI document: errors, tokens, nodes,
//! their metrics and messages, deployments, desired states and the agent's
//! join; devices, rules and functions are in [`super::resources`],
//! revisions in [`super::revisions`].

use serde_json::{Map, Value, json};

use super::resources;
use super::shapes::{
    array, int, ms, name_schema, nullable_ms, nullable_ref, obj, object, r, string, uint,
};

/// Every component schema.
pub fn schemas() -> Map<String, Value> {
    let status_report = obj(
        &[],
        false,
        json!({
            "applied_version": int(),
            "apply_errors": array(string()),
            "attempt": r("ApplyAttempt"),
            "drift": array(string()),
            "agent_version": string(),
            "uptime_s": uint(),
            "cpu_percent": {"type": "number"},
            "memory_bytes": uint(),
            "disk_total_bytes": uint(),
            "disk_free_bytes": uint(),
            "connections": uint(),
            "messages_in": uint(),
            "messages_out": uint(),
            "messages_in_rate": {"type": "number"},
            "messages_out_rate": {"type": "number"},
            "backlog_messages": uint(),
            "backlog_bytes": uint(),
            "link_up": {"type": "boolean"},
            "rules": array(object()),
            "functions": array(object()),
            "components": array(super::components::component_status()),
            "drivers": array(object()),
            "local": array(object()),
            "devices": {"type": "array", "items": super::devices::reported_session(),
                        "description": "the sessions of the node's devices seen since it started"},
            "endpoints": {"type": "array", "items": string(), "description": "the node's broker addresses for devices"},
        }),
    );
    let action = resources::rule_action();
    let nodes = [
        (
            "Error",
            obj(
                &["error"],
                true,
                json!({"error": obj(&["code", "message"], true, json!({
                    "code": {"type": "string", "enum": ["unauthorized", "forbidden", "not_found",
                        "conflict", "version_conflict", "invalid_update", "too_large", "invalid_request", "invalid_rule", "invalid_function", "invalid_component", "invalid_driver",
                        "payload_too_large", "method_not_allowed", "internal"]},
                    "message": string(),
                    "line": {"type": "integer", "minimum": 0},
                    "column": {"type": "integer", "minimum": 0},
                }))}),
            ),
        ),
        ("Any", json!({"description": "any JSON value"})),
        (
            "TokenCreate",
            obj(
                &["name"],
                true,
                json!({"name": name_schema(),
                       "scope": {"type": "string", "enum": ["admin", "read", "broker"], "default": "admin"}}),
            ),
        ),
        (
            "Token",
            obj(
                &["id", "name", "created_ms", "scope"],
                true,
                json!({"id": string(), "name": string(), "created_ms": ms(),
                       "scope": {"type": "string", "enum": ["admin", "read", "broker"]}}),
            ),
        ),
        (
            "NewToken",
            obj(
                &["id", "name", "created_ms", "scope", "token"],
                true,
                json!({"id": string(), "name": string(), "created_ms": ms(),
                       "scope": {"type": "string", "enum": ["admin", "read", "broker"]},
                       "token": {"type": "string", "description": "shown once"}}),
            ),
        ),
        ("StatusReport", status_report),
        (
            "Node",
            obj(
                &[
                    "id",
                    "name",
                    "description",
                    "status",
                    "created_ms",
                    "joined_ms",
                    "last_seen_ms",
                    "desired_version",
                    "applied_version",
                    "deployment",
                    "last_attempt",
                    "apply_errors",
                    "config",
                    "labels",
                    "report",
                ],
                true,
                json!({
                    "id": string(), "name": string(), "description": string(),
                    "status": {"type": "string", "enum": ["pending", "online", "offline"]},
                    "created_ms": ms(), "joined_ms": nullable_ms(), "last_seen_ms": nullable_ms(),
                    "desired_version": int(), "applied_version": int(),
                    "deployment": r("NodeDeployment"),
                    "last_attempt": nullable_ref("ApplyAttempt"),
                    "apply_errors": {"type": "array", "items": string(), "nullable": true},
                    "config": {"type": "object", "nullable": true},
                    "labels": super::rollouts::labels(),
                    "report": nullable_ref("StatusReport"),
                }),
            ),
        ),
        (
            "NodeCreate",
            obj(
                &["name"],
                true,
                json!({"name": name_schema(), "description": string(),
                       "labels": super::rollouts::labels()}),
            ),
        ),
        (
            "NodePatch",
            obj(
                &[],
                true,
                json!({"description": string(),
                       "labels": super::rollouts::labels(),
                       "config": {"type": "object", "description": "the node settings changed at run time, one object per section of the node config: {\"log\": {\"level\": \"debug\"}, \"store\": {\"retention\": \"3d\"}, \"bridge\": {\"forwards\": [{\"filter\": \"alarms/#\", \"lane\": \"alarms\"}]}} (at most 64 forwards; lane defaults to telemetry); any other key is a 400. A changed config makes a new revision"}}),
            ),
        ),
        (
            "NewNode",
            obj(
                &["node", "join_token", "join_command"],
                true,
                json!({"node": r("Node"), "join_token": string(), "join_command": string()}),
            ),
        ),
        (
            "JoinToken",
            obj(
                &["join_token", "join_command"],
                true,
                json!({"join_token": string(), "join_command": string()}),
            ),
        ),
        (
            "NodeMetrics",
            obj(
                &[
                    "ts_ms",
                    "cpu_percent",
                    "memory_bytes",
                    "connections",
                    "messages_in_rate",
                    "messages_out_rate",
                    "backlog_messages",
                ],
                true,
                json!({"ts_ms": ms(), "cpu_percent": {"type": "number"}, "memory_bytes": int(),
                       "connections": int(), "messages_in_rate": {"type": "number"},
                       "messages_out_rate": {"type": "number"}, "backlog_messages": int()}),
            ),
        ),
        (
            "Message",
            obj(
                &["id", "node_id", "topic", "payload", "received_ms"],
                true,
                json!({"id": int(), "node_id": string(), "topic": string(),
                       "payload": {"description": "JSON if it parses, else a string; null when not UTF-8", "nullable": true},
                       "payload_base64": {"type": "string", "description": "only when the payload is not UTF-8"},
                       "received_ms": ms()}),
            ),
        ),
        (
            "Deployment",
            obj(
                &[
                    "node_id",
                    "desired_version",
                    "applied_version",
                    "state",
                    "errors",
                    "drift",
                    "local",
                    "differs",
                ],
                true,
                json!({"node_id": string(), "desired_version": int(), "applied_version": int(),
                       "state": {"type": "string", "enum": ["in_sync", "pending", "applying", "failed", "offline"]},
                       "error": {"type": "string", "nullable": true,
                                 "description": "why the desired revision failed (state `failed`)"},
                       "errors": {"type": "array", "items": string(), "nullable": true},
                       "drift": {"type": "array", "items": string(),
                                 "description": "cloud-managed items the node found changed locally and restored at its last reconciliation"},
                       "local": array(obj(&["kind", "name", "source"], true, json!({
                           "kind": {"type": "string", "enum": ["rule", "function", "driver", "component"]},
                           "name": string(),
                           "source": {"type": "string", "enum": ["api", "config"]},
                           "local_only": {"type": "boolean"}}))),
                       "differs": {"type": "boolean",
                                   "description": "the node runs items made through its own API or kept local-only, or put cloud items back (its config file's items are its baseline)"}}),
            ),
        ),
        (
            "DesiredState",
            obj(
                &[
                    "node_id",
                    "version",
                    "devices",
                    "rules",
                    "functions",
                    "config",
                ],
                true,
                json!({
                    "node_id": string(), "version": int(),
                    "devices": array(obj(&["id", "password_hash"], true,
                        json!({"id": string(), "password_hash": {"type": "string", "description": "argon2 PHC"}}))),
                    "rules": array(obj(&["id", "sql", "actions", "enabled", "description"], true, json!({
                        "id": string(), "sql": string(), "actions": {"type": "array", "items": action, "nullable": true},
                        "enabled": {"type": "boolean"}, "description": string()}))),
                    "functions": array(obj(&["name", "version", "sha256", "spec", "module_base64"], true, json!({
                        "name": string(), "version": int(), "sha256": string(),
                        "spec": {"type": "object", "nullable": true},
                        "module_base64": {"type": "string", "description": "empty in the admin view (`/api/nodes/{id}/desired`)"}}))),
                    "drivers": {"type": "array", "items": obj(&["name"], false, json!({"name": string()})),
                        "description": "protocol drivers with their point tables (the driver's keys as given, see `DriverConfig`); left out when empty"},
                    "components": {"type": "array", "items": r("DesiredComponent"),
                        "description": "left out when empty; a process component's archive is at /api/agent/components/{name}/{version}/artifact"},
                    "release": {"allOf": [r("ReleaseRef")],
                        "description": "the release of the verge binary the node should run; left out when none is assigned. Its binary is at /api/agent/releases/{version}/binary"},
                    "config": {"type": "object", "nullable": true},
                }),
            ),
        ),
    ];
    let agent = [
        (
            "JoinRequest",
            obj(
                &["token"],
                true,
                json!({"token": string(), "hostname": string(), "agent_version": string()}),
            ),
        ),
        (
            "JoinResponse",
            obj(
                &["node_id", "secret", "mqtt_url"],
                true,
                json!({"node_id": string(), "secret": string(), "mqtt_url": string()}),
            ),
        ),
        (
            "BrokerAuthn",
            obj(
                &["username", "password"],
                false,
                json!({"username": {"type": "string", "description": "a node id, or `mqtt.external.username`"},
                       "password": {"type": "string", "description": "the node's secret, or that user's password"},
                       "clientid": string()}),
            ),
        ),
        (
            "BrokerAuthz",
            obj(
                &["username", "action", "topic"],
                false,
                json!({"username": string(), "clientid": string(),
                       "action": {"type": "string", "enum": ["publish", "subscribe"], "description": "anything else is denied"},
                       "topic": {"type": "string", "description": "the topic published, or the filter subscribed"}}),
            ),
        ),
        (
            "BrokerResult",
            obj(
                &["result"],
                true,
                json!({"result": {"type": "string", "enum": ["allow", "deny"]},
                       "is_superuser": {"type": "boolean", "description": "always false, sent with `allow` of authn"}}),
            ),
        ),
    ];
    nodes
        .into_iter()
        .chain(resources::schemas())
        .chain(super::devices::schemas())
        .chain(super::components::schemas())
        .chain(super::drivers::schemas())
        .chain(super::revisions::schemas())
        .chain(super::rollouts::schemas())
        .chain(super::releases::schemas())
        .chain([("Replica", replica())])
        .chain(agent)
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

/// A cloud replica as `GET /api/cloud/replicas` lists it.
fn replica() -> Value {
    obj(
        &[
            "id",
            "http_url",
            "version",
            "started_ms",
            "seen_ms",
            "alive",
            "leader",
            "this",
        ],
        true,
        json!({
            "id": {"type": "string", "description": "`cloud.replica_id`, or the id kept in `<data_dir>/replica-id`"},
            "http_url": {"type": "string", "description": "the replica's public HTTP URL (`cloud.public_url`)"},
            "version": {"type": "string", "description": "the replica's Verge version"},
            "started_ms": ms(),
            "seen_ms": {"type": "integer", "format": "int64", "description": "its last heartbeat (every 2 s), ms since the Unix epoch"},
            "alive": {"type": "boolean", "description": "a heartbeat in the last 10 s (a replica that stops cleanly leaves the list)"},
            "leader": {"type": "boolean", "description": "alive and leading: runs retention pruning and the rollout driver"},
            "this": {"type": "boolean", "description": "the replica that answered"},
        }),
    )
}

//! The OpenAPI 3.0 document (`GET /api/openapi.json`), built from the route
//! table in `crate::routes`: paths, query parameters, responses per status,
//! and the component schemas of every request and response body.
//!
//! The schemas are written by hand next to each other here rather than
//! derived from the handlers' types: most answers are assembled as JSON in
//! the handlers, so there is no Rust type to derive from. The unit tests and
//! the schemathesis run (tests/interop/test_openapi.py) keep them honest.

use serde_json::{Map, Value, json};

use crate::routes::{Route, routes};

/// Names and ids: 1–64 letters, digits, `-` or `_`.
const NAME: &str = "^[A-Za-z0-9_-]{1,64}$";

fn name_schema() -> Value {
    json!({"type": "string", "pattern": NAME, "minLength": 1, "maxLength": 64})
}

fn int() -> Value {
    json!({"type": "integer", "format": "int64"})
}

fn ms() -> Value {
    json!({"type": "integer", "format": "int64", "description": "ms since the Unix epoch"})
}

fn nullable_ms() -> Value {
    json!({"type": "integer", "format": "int64", "nullable": true})
}

fn uint() -> Value {
    json!({"type": "integer", "format": "int64", "minimum": 0})
}

fn string() -> Value {
    json!({"type": "string"})
}

fn object() -> Value {
    json!({"type": "object"})
}

fn r(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn nullable_ref(name: &str) -> Value {
    json!({"allOf": [r(name)], "nullable": true})
}

fn array(items: Value) -> Value {
    json!({"type": "array", "items": items})
}

/// An object with exactly these `properties`, of which `required` must be
/// there; `closed` = no others (`deny_unknown_fields`, or an answer built
/// with exactly these keys).
fn obj(required: &[&str], closed: bool, properties: Value) -> Value {
    let mut o = json!({"type": "object", "properties": properties});
    if !required.is_empty() {
        o["required"] = json!(required);
    }
    if closed {
        o["additionalProperties"] = json!(false);
    }
    o
}

/// A query parameter by name, as listed in a route's `query`.
pub fn query_param(name: &str) -> Option<Value> {
    let (schema, description) = match name {
        "limit" => (
            json!({"type": "integer", "format": "int64", "minimum": 1, "maximum": 1000, "default": 100}),
            "at most this many messages",
        ),
        "after_id" => (int(), "only messages with a greater id, oldest first"),
        "topic" => (
            json!({"type": "string", "default": "#"}),
            "MQTT topic filter (wildcards allowed) over the node's local topics",
        ),
        "node_id" => (name_schema(), "only those bound to this node"),
        "since_ms" => (
            json!({"type": "integer", "format": "int64", "default": 0}),
            "only heartbeats at or after this time (ms)",
        ),
        "version" => (
            json!({"type": "integer", "format": "int64", "default": 0}),
            "the desired version the node has; answered at once when it differs",
        ),
        "wait_ms" => (
            json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": 60000, "default": 0}),
            "how long to wait for a change (larger values are cut to 60000)",
        ),
        _ => return None,
    };
    Some(json!({"name": name, "in": "query", "required": false,
                "description": description, "schema": schema}))
}

/// Every component schema.
pub fn schemas() -> Map<String, Value> {
    let status_report = obj(
        &[],
        false,
        json!({
            "applied_version": int(),
            "apply_errors": array(string()),
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
        }),
    );
    let function_spec = json!({
        "type": "object",
        "description": "a wasm function spec as the node's functions API takes it, without `name`, `path`, `command` or `workdir`",
        "properties": {
            "runtime": {"type": "string", "enum": ["wasm"]},
            "config": object(),
            "subscribe": array(string()),
            "limits": obj(&[], true, json!({
                "memory": uint(), "fuel": uint(), "concurrency": uint(),
                "timeout": {"type": "string", "description": "a duration, e.g. `5s`"},
                "state_bytes": uint(),
            })),
            "description": string(),
        },
        "additionalProperties": false,
    });
    let action = json!({
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"type": "string"}},
        "description": "a rule action; `type` names the kind (e.g. `republish`, `function`), the other keys are its settings (docs/rules.md)",
    });
    let rule_props = |id_required: bool| {
        let required: &[&str] = if id_required {
            &["id", "node_id", "sql"]
        } else {
            &["node_id", "sql"]
        };
        obj(
            required,
            true,
            json!({
                "id": name_schema(), "node_id": name_schema(), "sql": string(),
                "actions": array(action.clone()),
                "enabled": {"type": "boolean", "default": true},
                "description": string(),
            }),
        )
    };
    let list = [
        (
            "Error",
            obj(
                &["error"],
                true,
                json!({"error": obj(&["code", "message"], true, json!({
                    "code": {"type": "string", "enum": ["unauthorized", "forbidden", "not_found",
                        "conflict", "invalid_request", "invalid_rule", "invalid_function",
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
            obj(&["name"], true, json!({"name": name_schema()})),
        ),
        (
            "Token",
            obj(
                &["id", "name", "created_ms"],
                true,
                json!({"id": string(), "name": string(), "created_ms": ms()}),
            ),
        ),
        (
            "NewToken",
            obj(
                &["id", "name", "created_ms", "token"],
                true,
                json!({"id": string(), "name": string(), "created_ms": ms(),
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
                    "apply_errors",
                    "config",
                    "report",
                ],
                true,
                json!({
                    "id": string(), "name": string(), "description": string(),
                    "status": {"type": "string", "enum": ["pending", "online", "offline"]},
                    "created_ms": ms(), "joined_ms": nullable_ms(), "last_seen_ms": nullable_ms(),
                    "desired_version": int(), "applied_version": int(),
                    "apply_errors": {"type": "array", "items": string(), "nullable": true},
                    "config": {"type": "object", "nullable": true},
                    "report": nullable_ref("StatusReport"),
                }),
            ),
        ),
        (
            "NodeCreate",
            obj(
                &["name"],
                true,
                json!({"name": name_schema(), "description": string()}),
            ),
        ),
        (
            "NodePatch",
            obj(
                &[],
                true,
                json!({"description": string(),
                       "config": {"type": "object", "description": "a changed config bumps the desired version"}}),
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
                ],
                true,
                json!({"node_id": string(), "desired_version": int(), "applied_version": int(),
                       "state": {"type": "string", "enum": ["in_sync", "pending", "failed"]},
                       "errors": {"type": "array", "items": string(), "nullable": true}}),
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
                    "config": {"type": "object", "nullable": true},
                }),
            ),
        ),
        (
            "Device",
            obj(
                &[
                    "id",
                    "node_id",
                    "description",
                    "created_ms",
                    "last_telemetry",
                    "last_telemetry_ms",
                ],
                true,
                json!({"id": string(), "node_id": string(), "description": string(), "created_ms": ms(),
                       "last_telemetry": {"description": "the last telemetry payload (JSON) or null", "nullable": true},
                       "last_telemetry_ms": nullable_ms()}),
            ),
        ),
        (
            "DeviceCreate",
            obj(
                &["name", "node_id"],
                true,
                json!({"name": name_schema(), "node_id": name_schema(), "description": string()}),
            ),
        ),
        (
            "NewDevice",
            obj(
                &["device", "secret"],
                true,
                json!({"device": r("Device"), "secret": {"type": "string", "description": "shown once"}}),
            ),
        ),
        (
            "CommandSent",
            obj(
                &["topic", "node_id"],
                true,
                json!({"topic": string(), "node_id": string()}),
            ),
        ),
        ("RuleBody", rule_props(true)),
        ("RuleReplace", rule_props(false)),
        (
            "Rule",
            obj(
                &[
                    "id",
                    "node_id",
                    "sql",
                    "actions",
                    "enabled",
                    "description",
                    "created_ms",
                    "updated_ms",
                    "status",
                ],
                true,
                json!({"id": string(), "node_id": string(), "sql": string(),
                       "actions": {"type": "array", "items": object(), "nullable": true},
                       "enabled": {"type": "boolean"}, "description": string(),
                       "created_ms": ms(), "updated_ms": ms(),
                       "status": {"type": "object", "nullable": true, "description": "the node's report of the rule"}}),
            ),
        ),
        (
            "RuleTestRequest",
            obj(
                &["sql"],
                true,
                json!({"sql": string(), "samples": array(obj(&[], true, json!({
                    "topic": string(), "payload": {"description": "JSON payload"},
                    "payload_raw": {"type": "string", "description": "a payload as text instead"},
                    "clientid": string(),
                    "qos": {"type": "integer", "minimum": 0, "maximum": 2},
                    "time": int(), "advance": int(),
                })))}),
            ),
        ),
        (
            "RuleTestOutput",
            obj(
                &["rows", "errors", "truncated"],
                true,
                json!({"rows": array(object()),
                       "errors": array(obj(&["sample", "error"], true, json!({"sample": uint(), "error": string()}))),
                       "truncated": {"type": "boolean"}}),
            ),
        ),
        ("FunctionSpec", function_spec),
        (
            "FunctionUpload",
            obj(
                &["spec", "module_base64"],
                true,
                json!({"spec": r("FunctionSpec"),
                       "module_base64": {"type": "string", "description": "WebAssembly binary or text, standard base64, at most `cloud.max_upload_bytes` (16 MiB) decoded"}}),
            ),
        ),
        (
            "Function",
            obj(
                &[
                    "name",
                    "version",
                    "sha256",
                    "size",
                    "spec",
                    "created_ms",
                    "updated_ms",
                    "nodes",
                    "stats",
                ],
                true,
                json!({"name": string(), "version": int(), "sha256": string(), "size": int(),
                       "spec": {"type": "object", "nullable": true}, "created_ms": ms(), "updated_ms": ms(),
                       "nodes": array(string()),
                       "stats": array(obj(&["node_id"], false, json!({"node_id": string()})))}),
            ),
        ),
        (
            "InvokeRequest",
            obj(
                &["topic"],
                true,
                json!({"topic": string(), "payload": {"description": "a JSON string is passed as its text, anything else as JSON"}}),
            ),
        ),
        (
            "InvokeOutput",
            obj(
                &["outputs", "duration_us"],
                true,
                json!({"outputs": array(obj(&["topic", "payload"], true, json!({"topic": string(), "payload": {}}))),
                       "duration_us": uint()}),
            ),
        ),
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
    ];
    list.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// The schema of a body named in the route table: `Text`, `Object`, a
/// component name, or `X[]`.
fn schema_ref(name: &str) -> Value {
    match name {
        "Text" => string(),
        "Object" => object(),
        _ => match name.strip_suffix("[]") {
            Some(item) => array(schema_ref(item)),
            None => r(name),
        },
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "success",
        201 => "created",
        202 => "accepted",
        204 => "no content",
        400 => {
            "invalid_request (bad JSON, a bad field or query parameter), invalid_rule or invalid_function"
        }
        401 => "unauthorized: missing, unknown or revoked credentials",
        404 => "not_found",
        409 => "conflict: the name is taken or the resource is in use",
        413 => "payload_too_large",
        _ => "error",
    }
}

/// Every status a route answers with, success first.
pub fn statuses(route: &Route) -> Vec<u16> {
    let mut out = vec![route.status];
    out.extend(route.also);
    if route.request.is_some() || !route.query.is_empty() {
        out.push(400);
    }
    if route.auth != "none" {
        out.push(401);
    }
    out.extend(route.errors);
    if route.request.is_some() {
        out.push(413);
    }
    let (ok, mut errors): (Vec<u16>, Vec<u16>) = out.into_iter().partition(|s| *s < 300);
    errors.sort_unstable();
    errors.dedup();
    ok.into_iter().chain(errors).collect()
}

fn operation(route: &Route) -> Value {
    let mut op = Map::new();
    op.insert("summary".into(), json!(route.summary));
    // `get_api_nodes_id`: method and path, for code generators.
    let id: String = format!("{} {}", route.method, route.path)
        .to_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join("_");
    op.insert("operationId".into(), json!(id));
    let mut params: Vec<Value> = route
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|p| json!({"name": p, "in": "path", "required": true, "schema": name_schema()}))
        .collect();
    params.extend(route.query.iter().filter_map(|q| query_param(q)));
    if !params.is_empty() {
        op.insert("parameters".into(), Value::Array(params));
    }
    let security = match route.auth {
        "api" => json!([{"apiToken": []}]),
        "node" => json!([{"nodeCredentials": []}]),
        _ => json!([]),
    };
    op.insert("security".into(), security);
    if let Some(body) = route.request {
        op.insert(
            "requestBody".into(),
            json!({"required": true, "content": {"application/json": {"schema": schema_ref(body)}}}),
        );
    }
    let mut responses = Map::new();
    for status in statuses(route) {
        let mut resp = json!({"description": reason(status)});
        if status >= 400 {
            resp["content"] = json!({"application/json": {"schema": r("Error")}});
        } else if let Some(body) = route.response.filter(|_| status != 204) {
            let ct = if body == "Text" {
                "text/plain"
            } else {
                "application/json"
            };
            resp["content"] = json!({ ct: {"schema": schema_ref(body)} });
        }
        responses.insert(status.to_string(), resp);
    }
    op.insert("responses".into(), Value::Object(responses));
    Value::Object(op)
}

/// The OpenAPI 3.0 document built from [`routes`].
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in routes() {
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = entry {
            m.insert(route.method.to_lowercase(), operation(&route));
        }
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Verge cloud API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The cloud center's open API (docs/cloud.md). Every error is `{\"error\": {\"code\", \"message\"}}` with its HTTP status.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
                "apiToken": {"type": "http", "scheme": "bearer",
                    "description": "the admin token printed at the first start, or one made with `POST /api/tokens`"},
                "nodeCredentials": {"type": "http", "scheme": "bearer",
                    "description": "a node's credentials from `POST /api/agent/join`: `Bearer {node_id}.{secret}`"}
            }
        }
    })
}

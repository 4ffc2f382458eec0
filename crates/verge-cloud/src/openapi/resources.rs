//! The component schemas of devices, rules and functions (see
//! [`super::schemas`] for the others).

use serde_json::{Value, json};

use super::shapes::{array, int, ms, name_schema, nullable_ms, obj, object, r, string, uint};

/// A rule action: `type` and the settings of that kind.
pub(super) fn rule_action() -> Value {
    json!({
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"type": "string"}},
        "description": "a rule action; `type` names the kind (e.g. `republish`, `function`), the other keys are its settings (docs/rules.md)",
    })
}

/// The device, rule and function schemas, by name.
pub(super) fn schemas() -> Vec<(&'static str, Value)> {
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
    let action = rule_action();
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
    vec![
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
                    "session",
                    "endpoints",
                ],
                true,
                json!({"id": string(), "node_id": string(), "description": string(), "created_ms": ms(),
                       "last_telemetry": {"description": "the last telemetry payload (JSON) or null", "nullable": true},
                       "last_telemetry_ms": nullable_ms(),
                       "session": super::devices::session(),
                       "endpoints": {"type": "array", "items": string(),
                                     "description": "the node's broker addresses devices connect to (from its heartbeat)"}}),
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
    ]
}

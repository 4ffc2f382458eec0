//! The component schemas of user components: their spec, versions,
//! assignments to nodes and the archive (see [`super::schemas`] for the
//! others).

use serde_json::{Value, json};

use super::shapes::{array, ms, name_schema, obj, r, string, uint};

/// Component names and version labels: 1–64 of `A-Z a-z 0-9 _ - .`, a
/// letter or digit first.
pub(super) fn component_name_schema() -> Value {
    json!({"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", "minLength": 1, "maxLength": 64})
}

fn duration() -> Value {
    json!({"type": "string", "description": "a duration, e.g. `500ms`, `10s`"})
}

/// The keys of `ComponentSpec` (crates/verge-protocol/src/component.rs),
/// with `artifact` when `with_artifact`.
fn spec_properties(with_artifact: bool) -> Value {
    let filters = array(string());
    let mut p = json!({
        "name": component_name_schema(),
        "version": component_name_schema(),
        "kind": {"type": "string", "enum": ["process", "container"], "default": "process"},
        "command": {"type": "string", "description": "process: the program (required); container: replaces the image's command"},
        "args": array(string()),
        "image": {"type": "string", "description": "container: the OCI image reference (required)"},
        "network": {"type": "string", "enum": ["host", "none", "bridge"]},
        "limits": obj(&[], true, json!({
            "memory": {"description": "bytes: an integer or text such as `256MiB`"},
            "cpu_shares": {"type": "integer", "minimum": 2, "maximum": 262_144},
        })),
        "mqtt": obj(&[], true, json!({"publish": filters.clone(), "subscribe": filters})),
        "update_grace": duration(),
        "workdir": string(),
        "env": {"type": "object", "additionalProperties": string()},
        "config": {"description": "any JSON, handed over as VERGE_COMPONENT_CONFIG"},
        "restart": {"type": "string", "enum": ["always", "on-failure", "never"]},
        "backoff_min": duration(),
        "backoff_max": duration(),
        "max_restarts": uint(),
        "restart_window": duration(),
        "stop_timeout": duration(),
        "depends_on": array(component_name_schema()),
        "health": obj(&[], true, json!({
            "kind": {"type": "string", "enum": ["alive", "tcp", "http", "mqtt"]},
            "address": string(), "url": string(), "topic": string(),
            "status": {"type": "integer", "description": "the status an `http` check expects (100-599)"},
            "interval": duration(), "timeout": duration(),
            "failures": uint(), "start_grace": duration(),
        })),
    });
    if with_artifact {
        p["artifact"] = artifact();
    }
    p
}

fn artifact() -> Value {
    json!({
        "type": "object", "nullable": true, "additionalProperties": false,
        "required": ["sha256", "size"],
        "properties": {"sha256": {"type": "string", "description": "SHA-256 of the .tar.gz, lower-case hex"}, "size": uint()},
        "description": "a process version's uploaded archive; null when none was uploaded",
    })
}

/// A node's report of one component, as the node sends it: any object
/// (the cloud stores the report as it came), so no key is promised.
pub(super) fn component_status() -> Value {
    json!({
        "type": "object", "nullable": true,
        "description": "the node's last report of the component, as its components API shows it: usually `name`, `version`, `kind`, `state`, `healthy`, `restarts`, `uptime_seconds`, `last_error`, `history` (its last 16 state changes: `{at_ms, state, reason?}`, oldest first) and `log_tail` (recent output lines) when the node sends it; any key may be missing. Null when the node reported none",
    })
}

/// The component schemas, by name.
pub(super) fn schemas() -> Vec<(&'static str, Value)> {
    let mut spec = obj(&["name", "version"], true, spec_properties(false));
    spec["description"] = json!(
        "a component version's spec (docs/components.md) without `artifact`: process components need `command`, container components `image`"
    );
    let mut node_spec = obj(&["name", "version"], true, spec_properties(true));
    node_spec["description"] =
        json!("a component the node keeps running, with its archive's digest when it has one");
    vec![
        ("ComponentSpec", spec),
        ("DesiredComponent", node_spec),
        (
            "ComponentVersion",
            obj(
                &["name", "version", "kind", "spec", "artifact", "created_ms"],
                true,
                json!({"name": string(), "version": string(),
                       "kind": {"type": "string", "enum": ["process", "container"]},
                       "spec": r("ComponentSpec"), "artifact": artifact(), "created_ms": ms()}),
            ),
        ),
        (
            "Component",
            obj(
                &[
                    "name",
                    "latest",
                    "kind",
                    "created_ms",
                    "updated_ms",
                    "versions",
                    "nodes",
                ],
                true,
                json!({
                    "name": string(),
                    "latest": {"type": "string", "description": "the version added last"},
                    "kind": {"type": "string", "enum": ["process", "container"], "description": "of the latest version"},
                    "created_ms": ms(), "updated_ms": ms(),
                    "versions": array(obj(&["version", "kind", "created_ms", "artifact"], true, json!({
                        "version": string(), "kind": {"type": "string", "enum": ["process", "container"]},
                        "created_ms": ms(), "artifact": artifact()}))),
                    "nodes": array(obj(&["node_id", "version", "assigned_ms", "status"], true, json!({
                        "node_id": string(), "version": string(), "assigned_ms": ms(),
                        "status": component_status()}))),
                }),
            ),
        ),
        (
            "ComponentAssign",
            obj(
                &["version"],
                true,
                json!({"version": component_name_schema()}),
            ),
        ),
        (
            "NodeComponent",
            obj(
                &[
                    "node_id",
                    "name",
                    "version",
                    "kind",
                    "assigned_ms",
                    "artifact",
                    "status",
                ],
                true,
                json!({
                    "node_id": name_schema(), "name": string(),
                    "version": {"type": "string", "nullable": true, "description": "the assigned version; null for a component the node runs from its own config"},
                    "kind": {"nullable": true, "description": "`process` or `container` for an assigned one; as the node reports it otherwise"},
                    "assigned_ms": {"type": "integer", "format": "int64", "nullable": true},
                    "artifact": artifact(),
                    "status": component_status(),
                }),
            ),
        ),
        (
            "Gzip",
            json!({"type": "string", "format": "binary",
                   "description": "a gzipped tar archive (`application/gzip`)"}),
        ),
    ]
}

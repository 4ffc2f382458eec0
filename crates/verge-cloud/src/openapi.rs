//! The OpenAPI 3.0 document (`GET /api/openapi.json`), built from the route
//! table in `crate::routes`: paths, query parameters, responses per status,
//! and the component schemas of every request and response body.
//!
//! The component schemas (`openapi/schemas.rs`, `openapi/resources.rs`) are
//! written by hand rather than derived from the handlers' types: most
//! answers are assembled as JSON in the handlers, so there is no Rust type
//! to derive from. The unit tests and
//! the schemathesis run (tests/interop/test_openapi.py) keep them honest.

use serde_json::{Map, Value, json};

use crate::routes::{Route, routes};

mod components;
mod devices;
mod drivers;
mod releases;
mod resources;
mod revisions;
mod rollouts;
mod schemas;
mod shapes;

pub use schemas::schemas;
use shapes::{array, int, name_schema, object, r, string};

/// A query parameter by name, as listed in a route's `query`.
pub fn query_param(name: &str) -> Option<Value> {
    let (schema, description) = match name {
        "limit" => (
            json!({"type": "integer", "format": "int64", "minimum": 1, "maximum": 1000, "default": 100}),
            "at most this many (messages; revisions, commands and alarms: newest first)",
        ),
        "ttl" => (
            json!({"type": "string", "default": "1h"}),
            "how long the command is kept for its node, a duration (`60s`, `10m`, `2h`; 1s to 7d)",
        ),
        "device_id" => (name_schema(), "only those of this device"),
        "status" => (
            json!({"type": "string", "enum": ["active", "cleared"]}),
            "only alarms in this status",
        ),
        "acknowledged" => (
            json!({"type": "boolean"}),
            "only acknowledged (true) or unacknowledged (false) alarms",
        ),
        "after_id" => (int(), "only messages with a greater id, oldest first"),
        "from_ms" => (
            json!({"type": "integer", "format": "int64", "minimum": 0}),
            "start of the range, ms since the Unix epoch (default: 24 h before `to_ms`)",
        ),
        "to_ms" => (
            json!({"type": "integer", "format": "int64", "minimum": 0}),
            "end of the range, ms since the Unix epoch (default: now)",
        ),
        "metric" => (
            json!({"type": "string", "minLength": 1, "maxLength": 1024}),
            "only this metric (default: every numeric metric of the device, at most 16)",
        ),
        "bucket" => (
            json!({"type": "string"}),
            "average over buckets this long, a duration (`10s`, `5m`, `1h`; at most 10,000 buckets in the range); raw points when absent",
        ),
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
        "selector" => (
            json!({"type": "string", "pattern": "^([A-Za-z0-9_.-]{1,63}=[A-Za-z0-9_.-]{1,63})?(,[A-Za-z0-9_.-]{1,63}=[A-Za-z0-9_.-]{1,63})*$"}),
            "a label selector `key=value,key=value`: only nodes with every label",
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
/// The schema of a body named in the route table: `Text`, `Object`, a
/// component name, or `X[]`.
fn schema_ref(name: &str) -> Value {
    // Component schemas are named in the route table; a body named `Gzip`
    // travels as `application/gzip` (see `content_type`).
    match name {
        "Text" => string(),
        "Object" => object(),
        _ => match name.strip_suffix("[]") {
            Some(item) => array(schema_ref(item)),
            None => r(name),
        },
    }
}

/// The media type of a body named `name` in the route table.
fn content_type(name: &str) -> &'static str {
    match name {
        "Text" => "text/plain",
        "Gzip" => "application/gzip",
        "Binary" => "application/octet-stream",
        _ => "application/json",
    }
}

/// The schema of a path parameter: component names and versions allow
/// `.`; every other name or id is a [`name_schema`].
fn path_param_schema(path: &str, param: &str) -> Value {
    let component = path.starts_with("/api/components")
        || path.starts_with("/api/agent/components")
        || (path.starts_with("/api/nodes/{id}/components") && param == "name");
    let release = path.starts_with("/api/releases") || path.starts_with("/api/agent/releases");
    if release && param == "version" {
        releases::release_version_schema()
    } else if component && matches!(param, "name" | "version") {
        components::component_name_schema()
    } else if (path.contains("/revisions/") && matches!(param, "n" | "a" | "b"))
        || path.starts_with("/api/rollouts/")
    {
        revisions::revision_number()
    } else {
        name_schema()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "success",
        201 => "created",
        202 => "accepted",
        204 => "no content",
        400 => {
            "invalid_request (bad JSON, a bad field, query parameter or path segment), invalid_rule, invalid_function, invalid_component, invalid_driver or invalid_update (a shadow change that is not `{\"desired\": {…}}`)"
        }
        401 => "unauthorized: missing, unknown or revoked credentials",
        403 => {
            "forbidden: a read-only token on a route that changes state, a token that may not manage tokens, a `broker` token outside `/api/broker/*`, or another token on `/api/broker/*`"
        }
        404 => "not_found",
        409 => {
            "conflict: the name is taken, the resource is in use, a component version exists with another spec or artifact, a node's components could not run together, no node matches a rollout's selector, a rollout is not paused or has ended, or a release exists with another digest or signature, is assigned or has no binary yet, or a device has too many open commands; version_conflict: a shadow change made against another version"
        }
        413 => {
            "payload_too_large (a body over the limit, or a command payload over 64 KiB), or too_large: the shadow would pass 64 KiB"
        }
        502 => "node_error: the node answered with an error (e.g. it has no local store)",
        503 => {
            "node_offline: the device's node is not online; busy: too many queries waiting; broker_unavailable: the external MQTT broker did not take a node's credentials (retry later)"
        }
        504 => "node_timeout: the node did not answer in time",
        _ => "error",
    }
}

/// Every status a route answers with, success first.
pub fn statuses(route: &Route) -> Vec<u16> {
    let mut out = vec![route.status];
    out.extend(route.also);
    // A path segment that does not decode (not UTF-8) is a 400 too.
    if route.request.is_some() || !route.query.is_empty() || route.path.contains('{') {
        out.push(400);
    }
    if route.auth != "none" {
        out.push(401);
    }
    if route.auth == "api" || route.auth == "broker" {
        out.push(403);
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
        .map(|p| json!({"name": p, "in": "path", "required": true, "schema": path_param_schema(route.path, p)}))
        .collect();
    params.extend(route.query.iter().filter_map(|q| query_param(q)));
    if !params.is_empty() {
        op.insert("parameters".into(), Value::Array(params));
    }
    let security = match route.auth {
        "api" => json!([{"apiToken": []}]),
        "node" => json!([{"nodeCredentials": []}]),
        "broker" => json!([{"brokerToken": []}]),
        _ => json!([]),
    };
    op.insert("security".into(), security);
    if let Some(body) = route.request {
        op.insert(
            "requestBody".into(),
            json!({"required": true, "content": {content_type(body): {"schema": schema_ref(body)}}}),
        );
    }
    let mut responses = Map::new();
    for status in statuses(route) {
        let mut resp = json!({"description": reason(status)});
        if status >= 400 {
            resp["content"] = json!({"application/json": {"schema": r("Error")}});
        } else if let Some(body) = route.response.filter(|_| status != 204) {
            resp["content"] = json!({ content_type(body): {"schema": schema_ref(body)} });
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
                    "description": "a node's credentials from `POST /api/agent/join`: `Bearer {node_id}.{secret}`"},
                "brokerToken": {"type": "http", "scheme": "bearer",
                    "description": "an API token of the `broker` scope (`POST /api/tokens` `{\"name\", \"scope\": \"broker\"}`), set in the external broker's HTTP authenticator and authorizer"}
            }
        }
    })
}

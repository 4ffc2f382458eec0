//! The one route table: every HTTP endpoint with its method, path, summary
//! and schema names. The router is built from it and so is the OpenAPI
//! document, so the two cannot disagree.

use axum::Router;
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::routing::{MethodFilter, MethodRouter, on};
use serde_json::{Map, Value, json};

use crate::Cloud;
use crate::api::{agent, devices, functions, nodes, rules, tokens};
use crate::error::AppError;

/// One endpoint.
pub struct Route {
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: &'static str,
    /// Path with `{param}` segments.
    pub path: &'static str,
    /// One line for people.
    pub summary: &'static str,
    /// Which credentials it takes: `api`, `node` or `none`.
    pub auth: &'static str,
    /// Schema name of the JSON body, if it takes one.
    pub request: Option<&'static str>,
    /// Success status.
    pub status: u16,
    /// Schema name of the success body (`X[]` = array of X), if any.
    pub response: Option<&'static str>,
    handler: MethodRouter<Cloud>,
}

struct Op {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    auth: &'static str,
    request: Option<&'static str>,
    status: u16,
    response: Option<&'static str>,
}

fn op(method: &'static str, path: &'static str, summary: &'static str) -> Op {
    Op {
        method,
        path,
        summary,
        auth: "api",
        request: None,
        status: 200,
        response: None,
    }
}

impl Op {
    fn body(mut self, schema: &'static str) -> Op {
        self.request = Some(schema);
        self
    }
    fn ok(mut self, status: u16, schema: &'static str) -> Op {
        self.status = status;
        self.response = Some(schema);
        self
    }
    fn empty(mut self, status: u16) -> Op {
        self.status = status;
        self
    }
    fn auth(mut self, auth: &'static str) -> Op {
        self.auth = auth;
        self
    }
    fn to<H, T>(self, handler: H) -> Route
    where
        H: Handler<T, Cloud>,
        T: 'static,
    {
        let filter = match self.method {
            "GET" => MethodFilter::GET,
            "POST" => MethodFilter::POST,
            "PUT" => MethodFilter::PUT,
            "PATCH" => MethodFilter::PATCH,
            _ => MethodFilter::DELETE,
        };
        Route {
            method: self.method,
            path: self.path,
            summary: self.summary,
            auth: self.auth,
            request: self.request,
            status: self.status,
            response: self.response,
            handler: on(filter, handler),
        }
    }
}

/// Every endpoint, in the order the document lists them.
pub fn routes() -> Vec<Route> {
    vec![
        op("GET", "/healthz", "liveness")
            .auth("none")
            .ok(200, "Text")
            .to(healthz),
        op("GET", "/metrics", "Prometheus metrics")
            .auth("none")
            .ok(200, "Text")
            .to(crate::metrics::render),
        op("GET", "/api/openapi.json", "this document")
            .auth("none")
            .ok(200, "Object")
            .to(openapi_handler),
        // tokens
        op("POST", "/api/tokens", "create an API token (shown once)")
            .body("CreateToken")
            .ok(201, "NewToken")
            .to(tokens::create),
        op("GET", "/api/tokens", "list API tokens")
            .ok(200, "Token[]")
            .to(tokens::list),
        op("DELETE", "/api/tokens/{id}", "revoke an API token")
            .empty(204)
            .to(tokens::delete),
        // nodes
        op("POST", "/api/nodes", "create a node and its join token")
            .body("CreateNode")
            .ok(201, "NewNode")
            .to(nodes::create),
        op("GET", "/api/nodes", "list nodes")
            .ok(200, "Node[]")
            .to(nodes::list),
        op("GET", "/api/nodes/{id}", "one node")
            .ok(200, "Node")
            .to(nodes::get),
        op(
            "PATCH",
            "/api/nodes/{id}",
            "change a node's description or config",
        )
        .body("PatchNode")
        .ok(200, "Node")
        .to(nodes::patch),
        op(
            "DELETE",
            "/api/nodes/{id}",
            "delete a node (409 while devices or rules are bound)",
        )
        .empty(204)
        .to(nodes::delete),
        op(
            "POST",
            "/api/nodes/{id}/join-token",
            "a new one-time join token",
        )
        .ok(200, "JoinToken")
        .to(nodes::join_token),
        op(
            "GET",
            "/api/nodes/{id}/desired",
            "the node's desired state (without modules)",
        )
        .ok(200, "DesiredState")
        .to(nodes::desired),
        op(
            "GET",
            "/api/nodes/{id}/metrics",
            "the node's heartbeat metrics",
        )
        .ok(200, "NodeMetrics[]")
        .to(nodes::metrics),
        op(
            "GET",
            "/api/nodes/{id}/messages",
            "the node's upstream messages",
        )
        .ok(200, "Message[]")
        .to(nodes::messages),
        op(
            "GET",
            "/api/deployments",
            "desired vs applied version per node",
        )
        .ok(200, "Deployment[]")
        .to(nodes::deployments),
        // devices
        op(
            "POST",
            "/api/devices",
            "create a device (secret shown once)",
        )
        .body("CreateDevice")
        .ok(201, "NewDevice")
        .to(devices::create),
        op("GET", "/api/devices", "list devices")
            .ok(200, "Device[]")
            .to(devices::list),
        op("GET", "/api/devices/{id}", "one device")
            .ok(200, "Device")
            .to(devices::get),
        op("DELETE", "/api/devices/{id}", "delete a device")
            .empty(204)
            .to(devices::delete),
        op(
            "POST",
            "/api/devices/{id}/secret",
            "a new device secret (shown once)",
        )
        .ok(200, "NewDevice")
        .to(devices::new_secret),
        op(
            "POST",
            "/api/devices/{id}/commands/{name}",
            "send a command to a device through its node",
        )
        .body("Object")
        .ok(202, "CommandSent")
        .to(devices::command),
        op(
            "GET",
            "/api/devices/{id}/messages",
            "the device's upstream messages",
        )
        .ok(200, "Message[]")
        .to(devices::messages),
        // rules
        op("POST", "/api/rules", "create a rule")
            .body("RuleBody")
            .ok(201, "Rule")
            .to(rules::create),
        op("GET", "/api/rules", "list rules")
            .ok(200, "Rule[]")
            .to(rules::list),
        op("POST", "/api/rules/test", "dry-run SQL over samples")
            .body("RuleTest")
            .ok(200, "RuleTestOutput")
            .to(rules::test),
        op("GET", "/api/rules/{id}", "one rule")
            .ok(200, "Rule")
            .to(rules::get),
        op("PUT", "/api/rules/{id}", "replace a rule")
            .body("RuleBody")
            .ok(200, "Rule")
            .to(rules::update),
        op("DELETE", "/api/rules/{id}", "delete a rule")
            .empty(204)
            .to(rules::delete),
        // functions
        op(
            "PUT",
            "/api/functions/{name}",
            "upload a function (new version)",
        )
        .body("FunctionUpload")
        .ok(200, "Function")
        .to(functions::put),
        op("GET", "/api/functions", "list functions")
            .ok(200, "Function[]")
            .to(functions::list),
        op("GET", "/api/functions/{name}", "one function")
            .ok(200, "Function")
            .to(functions::get),
        op(
            "DELETE",
            "/api/functions/{name}",
            "delete a function (409 while a rule uses it)",
        )
        .empty(204)
        .to(functions::delete),
        op(
            "POST",
            "/api/functions/{name}/invoke",
            "run a function in the cloud's sandbox",
        )
        .body("InvokeRequest")
        .ok(200, "InvokeOutput")
        .to(functions::invoke),
        // node protocol
        op(
            "POST",
            "/api/agent/join",
            "a node joins with its one-time token",
        )
        .auth("none")
        .body("JoinRequest")
        .ok(200, "JoinResponse")
        .to(agent::join),
        op(
            "GET",
            "/api/agent/desired",
            "long-poll the desired state (204 when unchanged)",
        )
        .auth("node")
        .ok(200, "DesiredState")
        .to(agent::desired),
        op("POST", "/api/agent/status", "a node's heartbeat")
            .auth("node")
            .body("StatusReport")
            .empty(204)
            .to(agent::status),
    ]
}

/// The router over every route in the table (state not yet given).
pub fn api_router() -> Router<Cloud> {
    routes()
        .into_iter()
        .fold(Router::new(), |r, route| r.route(route.path, route.handler))
}

async fn healthz() -> &'static str {
    "ok"
}

async fn openapi_handler() -> axum::Json<Value> {
    axum::Json(openapi())
}

/// Fallback: 404 as JSON.
pub async fn not_found() -> AppError {
    AppError::not_found("no such route")
}

/// 405 as JSON.
pub async fn method_not_allowed() -> AppError {
    AppError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

fn schema_ref(name: &str) -> Value {
    match name {
        "Text" => json!({"type": "string"}),
        _ => match name.strip_suffix("[]") {
            Some(item) => json!({"type": "array", "items": schema_ref(item)}),
            None => json!({"$ref": format!("#/components/schemas/{name}")}),
        },
    }
}

/// The OpenAPI 3.0 document built from [`routes`].
pub fn openapi() -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for r in routes() {
        let mut operation = Map::new();
        operation.insert("summary".into(), json!(r.summary));
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if !params.is_empty() {
            operation.insert("parameters".into(), Value::Array(params));
        }
        match r.auth {
            "api" => operation.insert("security".into(), json!([{"apiToken": []}])),
            "node" => operation.insert("security".into(), json!([{"nodeCredentials": []}])),
            _ => operation.insert("security".into(), json!([])),
        };
        if let Some(body) = r.request {
            operation.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"application/json": {"schema": schema_ref(body)}}}),
            );
        }
        let mut ok = json!({"description": "success"});
        if let Some(resp) = r.response {
            let ct = if resp == "Text" {
                "text/plain"
            } else {
                "application/json"
            };
            ok["content"] = json!({ ct: {"schema": schema_ref(resp)} });
        }
        for name in [r.request, r.response].into_iter().flatten() {
            let base = name.trim_end_matches("[]");
            if base != "Text" {
                schemas.insert(
                    base.to_owned(),
                    json!({"type": "object", "description": format!("see docs/cloud.md: {base}")}),
                );
            }
        }
        let mut responses = Map::new();
        responses.insert(r.status.to_string(), ok);
        responses.insert(
            "default".into(),
            json!({"description": "error", "content": {"application/json": {"schema": schema_ref("Error")}}}),
        );
        operation.insert("responses".into(), Value::Object(responses));
        let entry = paths
            .entry(r.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = entry {
            m.insert(r.method.to_lowercase(), Value::Object(operation));
        }
    }
    schemas.insert(
        "Error".into(),
        json!({"type": "object", "required": ["error"], "properties": {"error": {"type": "object",
            "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"},
            "line": {"type": "integer"}, "column": {"type": "integer"}}}}}),
    );
    json!({
        "openapi": "3.0.3",
        "info": {"title": "Verge cloud API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiToken": {"type": "http", "scheme": "bearer"},
                "nodeCredentials": {"type": "http", "scheme": "bearer", "description": "{node_id}.{secret}"}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn document_lists_every_route_once() {
        let doc = openapi();
        let mut in_doc = BTreeSet::new();
        if let Some(paths) = doc["paths"].as_object() {
            for (p, ops) in paths {
                for m in ops.as_object().into_iter().flat_map(|o| o.keys()) {
                    in_doc.insert((m.to_uppercase(), p.clone()));
                }
            }
        }
        let table: BTreeSet<(String, String)> = routes()
            .iter()
            .map(|r| (r.method.to_owned(), r.path.to_owned()))
            .collect();
        assert_eq!(table.len(), routes().len(), "a route is listed twice");
        assert_eq!(in_doc, table);
    }
}

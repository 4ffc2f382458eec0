//! The one route table: every HTTP endpoint with its method, path, summary,
//! schema names, query parameters and error statuses. The router is built
//! from it and so is the OpenAPI document (`crate::openapi`), so the two
//! cannot disagree.

use axum::Router;
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::routing::{MethodFilter, MethodRouter, on};
use serde_json::Value;

use crate::Cloud;
use crate::api::{
    agent, alarms, assignments, broker, commands, components, devices, drivers, functions, history,
    nodes, releases, revisions, rollouts, rules, shadows, tokens,
};
use crate::error::AppError;

pub use crate::openapi::document as openapi;

/// One endpoint.
pub struct Route {
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: &'static str,
    /// Path with `{param}` segments.
    pub path: &'static str,
    /// One line for people.
    pub summary: &'static str,
    /// Which credentials it takes: `api`, `node`, `broker` (a token of
    /// the `broker` scope) or `none`.
    pub auth: &'static str,
    /// Schema name of the JSON body, if it takes one.
    pub request: Option<&'static str>,
    /// Success status.
    pub status: u16,
    /// Schema name of the success body (`X[]` = array of X), if any.
    pub response: Option<&'static str>,
    /// A second success status with the same body (`PUT` creating: 201;
    /// long poll: 204 without a body).
    pub also: Option<u16>,
    /// Query parameter names (defined in `crate::openapi::query_param`).
    pub query: &'static [&'static str],
    /// Error statuses besides the ones implied: 401 when `auth` is not
    /// `none`, 400 and 413 with a JSON body, 400 with query parameters.
    pub errors: &'static [u16],
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
    also: Option<u16>,
    query: &'static [&'static str],
    errors: &'static [u16],
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
        also: None,
        query: &[],
        errors: &[],
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
    fn also(mut self, status: u16) -> Op {
        self.also = Some(status);
        self
    }
    fn query(mut self, names: &'static [&'static str]) -> Op {
        self.query = names;
        self
    }
    fn errors(mut self, statuses: &'static [u16]) -> Op {
        self.errors = statuses;
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
            also: self.also,
            query: self.query,
            errors: self.errors,
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
            .body("TokenCreate")
            .ok(201, "NewToken")
            .to(tokens::create),
        op("GET", "/api/tokens", "list API tokens")
            .ok(200, "Token[]")
            .to(tokens::list),
        op(
            "DELETE",
            "/api/tokens/{id}",
            "revoke an API token (409 for `admin`)",
        )
        .empty(204)
        .errors(&[404, 409])
        .to(tokens::delete),
        // nodes
        op("POST", "/api/nodes", "create a node and its join token")
            .body("NodeCreate")
            .ok(201, "NewNode")
            .errors(&[409])
            .to(nodes::create),
        op("GET", "/api/nodes", "list nodes (`?selector=k=v,…`: those with every label)")
            .query(&["selector"])
            .ok(200, "Node[]")
            .to(nodes::list),
        op("GET", "/api/nodes/{id}", "one node")
            .ok(200, "Node")
            .errors(&[404])
            .to(nodes::get),
        op(
            "PATCH",
            "/api/nodes/{id}",
            "change a node's description, config or labels",
        )
        .body("NodePatch")
        .ok(200, "Node")
        .errors(&[404])
        .to(nodes::patch),
        op(
            "DELETE",
            "/api/nodes/{id}",
            "delete a node (409 while devices or rules are bound; 503 when the broker's credentials cannot be removed)",
        )
        .empty(204)
        .errors(&[404, 409, 503])
        .to(nodes::delete),
        op(
            "POST",
            "/api/nodes/{id}/join-token",
            "a new one-time join token",
        )
        .ok(200, "JoinToken")
        .errors(&[404])
        .to(nodes::join_token),
        op(
            "GET",
            "/api/nodes/{id}/desired",
            "the node's desired state (without modules)",
        )
        .ok(200, "DesiredState")
        .errors(&[404])
        .to(nodes::desired),
        op(
            "GET",
            "/api/nodes/{id}/metrics",
            "the node's heartbeat metrics",
        )
        .query(&["since_ms"])
        .ok(200, "NodeMetrics[]")
        .errors(&[404])
        .to(nodes::metrics),
        op(
            "GET",
            "/api/nodes/{id}/messages",
            "the node's upstream messages",
        )
        .query(&["after_id", "topic", "limit"])
        .ok(200, "Message[]")
        .errors(&[404])
        .to(nodes::messages),
        op(
            "GET",
            "/api/nodes/{id}/revisions",
            "the node's revisions, newest first, with what the node made of each",
        )
        .query(&["limit"])
        .ok(200, "Revision[]")
        .errors(&[404])
        .to(revisions::list),
        op(
            "GET",
            "/api/nodes/{id}/revisions/{n}",
            "one revision: its state (without modules) and the node's attempt",
        )
        .ok(200, "RevisionDetail")
        .errors(&[404])
        .to(revisions::get),
        op(
            "GET",
            "/api/nodes/{id}/revisions/{a}/diff/{b}",
            "what changed from revision a to revision b, per kind",
        )
        .ok(200, "RevisionDiff")
        .errors(&[404])
        .to(revisions::diff),
        op(
            "POST",
            "/api/nodes/{id}/rollback",
            "a new revision with an older one's content (404 unknown revision, 409 no longer kept)",
        )
        .body("Rollback")
        .ok(201, "Revision")
        .errors(&[404, 409])
        .to(revisions::rollback),
        op(
            "POST",
            "/api/nodes/{id}/cancel",
            "a new revision with the content the node runs (409 nothing to cancel)",
        )
        .ok(201, "Revision")
        .errors(&[404, 409])
        .to(revisions::cancel),
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
        .body("DeviceCreate")
        .ok(201, "NewDevice")
        .errors(&[409])
        .to(devices::create),
        op("GET", "/api/devices", "list devices")
            .query(&["node_id"])
            .ok(200, "Device[]")
            .to(devices::list),
        op("GET", "/api/devices/{id}", "one device")
            .ok(200, "Device")
            .errors(&[404])
            .to(devices::get),
        op("DELETE", "/api/devices/{id}", "delete a device")
            .empty(204)
            .errors(&[404])
            .to(devices::delete),
        op(
            "POST",
            "/api/devices/{id}/secret",
            "a new device secret (shown once)",
        )
        .ok(200, "NewDevice")
        .errors(&[404])
        .to(devices::new_secret),
        op(
            "GET",
            "/api/devices/{id}/shadow",
            "the cloud's copy of the device's shadow (empty, version 0, before any)",
        )
        .ok(200, "Shadow")
        .errors(&[404])
        .to(shadows::get),
        op(
            "PATCH",
            "/api/devices/{id}/shadow",
            "change `desired` (409 version_conflict for a stale `version`); the node gets it when online",
        )
        .body("ShadowPatch")
        .ok(200, "Shadow")
        .errors(&[404, 409])
        .to(shadows::patch),
        op(
            "POST",
            "/api/devices/{id}/commands/{name}",
            "queue a command (any JSON payload) for the device; sent when its node is online, until `?ttl=` (default 1h, at most 7d)",
        )
        .body("Any")
        .query(&["ttl"])
        .ok(202, "CommandQueued")
        .errors(&[404, 409])
        .to(commands::create),
        op(
            "GET",
            "/api/devices/{id}/commands",
            "the device's commands, newest first",
        )
        .query(&["limit"])
        .ok(200, "Command[]")
        .errors(&[404])
        .to(commands::list),
        op(
            "GET",
            "/api/devices/{id}/alarms",
            "the device's alarms, newest first",
        )
        .query(&["status", "acknowledged", "limit"])
        .ok(200, "Alarm[]")
        .errors(&[404])
        .to(alarms::of_device),
        op(
            "GET",
            "/api/devices/{id}/messages",
            "the device's upstream messages",
        )
        .query(&["after_id", "limit"])
        .ok(200, "Message[]")
        .errors(&[404])
        .to(devices::messages),
        op(
            "GET",
            "/api/devices/{id}/history",
            "numeric readings from the node's local store, asked of the node (503 node_offline, 504 node_timeout after 10s, 502 node_error)",
        )
        .query(&["from_ms", "to_ms", "metric", "bucket"])
        .ok(200, "History")
        .errors(&[404, 502, 503, 504])
        .to(history::get),
        // commands and alarms
        op("GET", "/api/commands/{id}", "one command")
            .ok(200, "Command")
            .errors(&[404])
            .to(commands::get),
        op(
            "GET",
            "/api/alarms",
            "alarms, newest first, filtered by device, status and acknowledgement",
        )
        .query(&["device_id", "status", "acknowledged", "limit"])
        .ok(200, "Alarm[]")
        .to(alarms::list),
        op("POST", "/api/alarms/{id}/ack", "acknowledge an alarm")
            .ok(200, "Alarm")
            .errors(&[404])
            .to(alarms::ack),
        op(
            "POST",
            "/api/alarms/{id}/clear",
            "clear an alarm (the next raise of its type opens a new one)",
        )
        .ok(200, "Alarm")
        .errors(&[404])
        .to(alarms::clear),
        // rules
        op("POST", "/api/rules", "create a rule")
            .body("RuleBody")
            .ok(201, "Rule")
            .errors(&[409])
            .to(rules::create),
        op("GET", "/api/rules", "list rules")
            .query(&["node_id"])
            .ok(200, "Rule[]")
            .to(rules::list),
        op("POST", "/api/rules/test", "dry-run SQL over samples")
            .body("RuleTestRequest")
            .ok(200, "RuleTestOutput")
            .to(rules::test),
        op("GET", "/api/rules/{id}", "one rule")
            .ok(200, "Rule")
            .errors(&[404])
            .to(rules::get),
        op("PUT", "/api/rules/{id}", "replace a rule")
            .body("RuleReplace")
            .ok(200, "Rule")
            .errors(&[404])
            .to(rules::update),
        op("DELETE", "/api/rules/{id}", "delete a rule")
            .empty(204)
            .errors(&[404])
            .to(rules::delete),
        // functions
        op(
            "PUT",
            "/api/functions/{name}",
            "upload a function (201 new, 200 a new version)",
        )
        .body("FunctionUpload")
        .ok(200, "Function")
        .also(201)
        .to(functions::put),
        op("GET", "/api/functions", "list functions")
            .ok(200, "Function[]")
            .to(functions::list),
        op("GET", "/api/functions/{name}", "one function")
            .ok(200, "Function")
            .errors(&[404])
            .to(functions::get),
        op(
            "DELETE",
            "/api/functions/{name}",
            "delete a function (409 while a rule uses it)",
        )
        .empty(204)
        .errors(&[404, 409])
        .to(functions::delete),
        op(
            "POST",
            "/api/functions/{name}/invoke",
            "run a function in the cloud's sandbox",
        )
        .body("InvokeRequest")
        .ok(200, "InvokeOutput")
        .errors(&[404])
        .to(functions::invoke),
        // components
        op(
            "POST",
            "/api/components",
            "add a component version (201 new, 200 the same spec again; 409 another spec: versions are immutable)",
        )
        .body("ComponentSpec")
        .ok(201, "ComponentVersion")
        .also(200)
        .errors(&[409])
        .to(components::create),
        op(
            "GET",
            "/api/components",
            "list components with their versions and nodes",
        )
        .ok(200, "Component[]")
        .to(components::list),
        op(
            "GET",
            "/api/components/{name}",
            "one component: versions, nodes and their reports",
        )
        .ok(200, "Component")
        .errors(&[404])
        .to(components::get),
        op(
            "DELETE",
            "/api/components/{name}",
            "delete a component and all its versions (409 while assigned)",
        )
        .empty(204)
        .errors(&[404, 409])
        .to(components::delete),
        op(
            "GET",
            "/api/components/{name}/versions",
            "a component's versions with their specs, oldest first",
        )
        .ok(200, "ComponentVersion[]")
        .errors(&[404])
        .to(components::versions),
        op(
            "GET",
            "/api/components/{name}/versions/{version}",
            "one version with its spec",
        )
        .ok(200, "ComponentVersion")
        .errors(&[404])
        .to(components::version),
        op(
            "DELETE",
            "/api/components/{name}/versions/{version}",
            "delete a version (409 while assigned)",
        )
        .empty(204)
        .errors(&[404, 409])
        .to(components::delete_version),
        op(
            "PUT",
            "/api/components/{name}/versions/{version}/artifact",
            "upload a process version's files as a .tar.gz (set once; 409 for other bytes)",
        )
        .body("Gzip")
        .ok(200, "ComponentVersion")
        .errors(&[404, 409])
        .to(components::put_artifact),
        op(
            "GET",
            "/api/nodes/{id}/components",
            "the node's components: assigned ones and those it reports",
        )
        .ok(200, "NodeComponent[]")
        .errors(&[404])
        .to(assignments::of_node),
        op(
            "PUT",
            "/api/nodes/{id}/components/{name}",
            "run a component version on the node (201 new, 200 changed or the same; 409 missing dependency or cycle)",
        )
        .body("ComponentAssign")
        .ok(200, "NodeComponent")
        .also(201)
        .errors(&[404, 409])
        .to(assignments::assign),
        op(
            "DELETE",
            "/api/nodes/{id}/components/{name}",
            "stop running a component on the node (409 while another depends on it)",
        )
        .empty(204)
        .errors(&[404, 409])
        .to(assignments::unassign),
        // protocol drivers of a node
        op(
            "GET",
            "/api/nodes/{id}/drivers",
            "the node's protocol drivers, by name",
        )
        .ok(200, "NodeDriver[]")
        .errors(&[404])
        .to(drivers::list),
        op("GET", "/api/nodes/{id}/drivers/{name}", "one driver of the node")
            .ok(200, "NodeDriver")
            .errors(&[404])
            .to(drivers::get),
        op(
            "PUT",
            "/api/nodes/{id}/drivers/{name}",
            "run a protocol driver on the node (201 new, 200 replaced or the same; 400 invalid_driver)",
        )
        .body("DriverConfig")
        .ok(200, "NodeDriver")
        .also(201)
        .errors(&[404])
        .to(drivers::put),
        op(
            "DELETE",
            "/api/nodes/{id}/drivers/{name}",
            "stop running a driver on the node",
        )
        .empty(204)
        .errors(&[404])
        .to(drivers::delete),
        // staged rollouts
        op(
            "POST",
            "/api/rollouts",
            "roll a component version out to the nodes a label selector matches, canary stage first (409: no node matches)",
        )
        .body("RolloutCreate")
        .ok(201, "Rollout")
        .errors(&[404, 409])
        .to(rollouts::create),
        op("GET", "/api/rollouts", "the newest 100 rollouts, newest first")
            .ok(200, "Rollout[]")
            .to(rollouts::list),
        op(
            "GET",
            "/api/rollouts/{id}",
            "one rollout with its stages and nodes",
        )
        .ok(200, "Rollout")
        .errors(&[404])
        .to(rollouts::get),
        op(
            "POST",
            "/api/rollouts/{id}/resume",
            "go on with the next stage of a paused rollout (409 unless paused)",
        )
        .ok(200, "Rollout")
        .errors(&[404, 409])
        .to(rollouts::resume),
        op(
            "POST",
            "/api/rollouts/{id}/cancel",
            "start no more stages; changed nodes keep what they got (409 once ended)",
        )
        .ok(200, "Rollout")
        .errors(&[404, 409])
        .to(rollouts::cancel),
        // releases of the verge binary (self-update of nodes)
        op(
            "POST",
            "/api/releases",
            "add a release of the verge binary as `verge release sign` prints it (201 new, 200 the same again; 409 another digest or signature)",
        )
        .body("ReleaseRef")
        .ok(201, "Release")
        .also(200)
        .errors(&[409])
        .to(releases::create),
        op("GET", "/api/releases", "list releases with the nodes assigned each")
            .ok(200, "Release[]")
            .to(releases::list),
        op(
            "DELETE",
            "/api/releases/{version}",
            "delete a release (409 while a node is assigned it)",
        )
        .empty(204)
        .errors(&[404, 409])
        .to(releases::delete),
        op(
            "PUT",
            "/api/releases/{version}/binary",
            "upload a release's binary (400 unless its size and SHA-256 are the release's)",
        )
        .body("Binary")
        .ok(200, "Release")
        .errors(&[404])
        .to(releases::put_binary),
        op(
            "PUT",
            "/api/nodes/{id}/release",
            "run a release of the verge binary on the node (201 new, 200 changed or the same; 409 without its binary)",
        )
        .body("ReleaseAssign")
        .ok(200, "NodeRelease")
        .also(201)
        .errors(&[404, 409])
        .to(releases::assign),
        op(
            "DELETE",
            "/api/nodes/{id}/release",
            "stop deploying a release to the node (it keeps the binary it runs)",
        )
        .empty(204)
        .errors(&[404])
        .to(releases::unassign),
        // node protocol
        op(
            "POST",
            verge_protocol::paths::JOIN,
            "a node joins with its one-time token (401: unknown, used or expired; 503: the MQTT broker did not take its credentials, the token is not spent)",
        )
        .auth("none")
        .body("JoinRequest")
        .ok(200, "JoinResponse")
        .errors(&[401, 503])
        .to(agent::join),
        op(
            "GET",
            verge_protocol::paths::DESIRED,
            "long-poll the desired state (204 when unchanged)",
        )
        .auth("node")
        .query(&["version", "wait_ms"])
        .ok(200, "DesiredState")
        .also(204)
        .errors(&[404])
        .to(agent::desired),
        op(
            "GET",
            verge_protocol::paths::COMPONENT_ARTIFACT,
            "a process component's .tar.gz, for a node it is assigned to",
        )
        .auth("node")
        .ok(200, "Gzip")
        .errors(&[404])
        .to(assignments::artifact_for_node),
        op(
            "GET",
            verge_protocol::paths::RELEASE_BINARY,
            "a release's binary, for a node assigned it",
        )
        .auth("node")
        .ok(200, "Binary")
        .errors(&[404])
        .to(releases::binary_for_node),
        op(
            "GET",
            "/api/cloud/replicas",
            "the cloud replicas on this database and which one leads",
        )
        .ok(200, "Replica[]")
        .to(crate::replicas::list),
        op("POST", verge_protocol::paths::STATUS, "a node's heartbeat")
            .auth("node")
            .body("StatusReport")
            .empty(204)
            .to(agent::status),
        // external broker hooks
        op(
            "POST",
            "/api/broker/authn",
            "an external broker asks whether a client may connect (node id + secret, or the cloud's user): `allow` or `deny`",
        )
        .auth("broker")
        .body("BrokerAuthn")
        .ok(200, "BrokerResult")
        .to(broker::authn),
        op(
            "POST",
            "/api/broker/authz",
            "an external broker asks whether a client may publish or subscribe a topic: `allow` or `deny`",
        )
        .auth("broker")
        .body("BrokerAuthz")
        .ok(200, "BrokerResult")
        .to(broker::authz),
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

    #[test]
    fn every_operation_documents_a_success_and_401_where_auth_applies() {
        let doc = openapi();
        for r in routes() {
            let op = &doc["paths"][r.path][r.method.to_lowercase()];
            let responses = op["responses"].as_object().expect("responses");
            let codes: Vec<&String> = responses.keys().collect();
            assert!(
                codes.iter().any(|c| c.starts_with('2')),
                "{} {}: no 2xx in {codes:?}",
                r.method,
                r.path
            );
            assert!(!responses.contains_key("default"), "{}", r.path);
            if r.auth != "none" {
                assert!(responses.contains_key("401"), "{} {}", r.method, r.path);
                assert!(!op["security"].as_array().expect("security").is_empty());
            }
            if r.request.is_some() {
                for s in ["400", "413"] {
                    assert!(responses.contains_key(s), "{} {}: {s}", r.method, r.path);
                }
            }
            for (code, resp) in responses {
                let json = &resp["content"]["application/json"]["schema"];
                if code.starts_with('4') {
                    assert_eq!(json["$ref"], "#/components/schemas/Error", "{code}");
                }
                if code == "204" {
                    assert!(resp.get("content").is_none(), "{} {}", r.method, r.path);
                }
            }
            for q in r.query {
                assert!(
                    crate::openapi::query_param(q).is_some(),
                    "{} {}: query parameter `{q}` is not defined",
                    r.method,
                    r.path
                );
            }
        }
    }

    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(s)) = m.get("$ref") {
                    out.push(s);
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn every_ref_resolves_and_every_schema_is_used() {
        let doc = openapi();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.len() > 40, "{}", found.len());
        let mut used = BTreeSet::new();
        for r in &found {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{r} is not a component schema"));
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "{r} does not resolve"
            );
            used.insert(name.to_owned());
        }
        let defined: BTreeSet<String> = doc["components"]["schemas"]
            .as_object()
            .expect("schemas")
            .keys()
            .cloned()
            .collect();
        assert_eq!(defined, used, "defined but never used (or the reverse)");
        for op in doc["paths"]
            .as_object()
            .expect("paths")
            .values()
            .flat_map(|o| o.as_object().expect("ops").values())
        {
            for s in op["security"].as_array().expect("security") {
                for scheme in s.as_object().expect("requirement").keys() {
                    assert!(
                        doc["components"]["securitySchemes"][scheme].is_object(),
                        "{scheme}"
                    );
                }
            }
        }
    }

    #[test]
    fn closed_request_bodies_match_deny_unknown_fields() {
        let doc = openapi();
        let schemas = &doc["components"]["schemas"];
        for name in [
            "TokenCreate",
            "NodeCreate",
            "NodePatch",
            "DeviceCreate",
            "RuleBody",
            "RuleReplace",
            "RuleTestRequest",
            "FunctionUpload",
            "InvokeRequest",
            "JoinRequest",
            "ComponentAssign",
            "Rollback",
            "RolloutCreate",
            "DriverConfig",
            "ShadowPatch",
        ] {
            assert_eq!(schemas[name]["additionalProperties"], false, "{name}");
        }
        // serde(default) without deny_unknown_fields: extra keys are ignored.
        assert!(
            schemas["StatusReport"]
                .get("additionalProperties")
                .is_none()
        );
        assert_eq!(
            schemas["NodeCreate"]["properties"]["name"]["pattern"],
            "^[A-Za-z0-9_-]{1,64}$"
        );
    }
}

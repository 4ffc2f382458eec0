//! The node API through its router (no socket): rules CRUD and lifecycle,
//! `test`, errors as JSON with codes, the token, and Prometheus metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;
use verge_broker::{Broker, BrokerConfig};
use verge_node::http::auth::ApiTokens;
use verge_node::http::{ApiState, router};
use verge_rules::{Engine, RuleEngineConfig, Services};

fn state(broker: &Broker, token: Option<&str>) -> ApiState {
    ApiState {
        name: Arc::from("test-node"),
        started: Instant::now(),
        broker: broker.handle(),
        rules: Arc::new(Engine::new(
            Services::new(broker.handle()),
            RuleEngineConfig::default(),
        )),
        auth: token.map(|t| {
            let dir = tempfile::tempdir().expect("dir").keep();
            Arc::new(ApiTokens::open(&dir, Some(t)).expect("tokens"))
        }),
        guard: Default::default(),
        store: None,
        bridge: None,
        functions: None,
        drivers: None,
        components: None,
        coap: None,
        cloud: None,
        local: None,
        devices: None,
    }
}

fn broker() -> Broker {
    let cfg = BrokerConfig::default();
    let auth = Broker::authenticator(&cfg).expect("auth");
    Broker::start(cfg, auth)
}

async fn call(
    s: &ApiState,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri(path);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .expect("request");
    let resp = router(s.clone()).oneshot(req).await.expect("response");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, String::from_utf8(bytes.to_vec()).expect("utf-8"))
}

async fn json_call(
    s: &ApiState,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let text = body.map(|b| b.to_string());
    let (st, out) = call(s, method, path, text.as_deref(), None).await;
    let v = if out.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {out}"))
    };
    (st, v)
}

#[tokio::test]
async fn rules_crud_and_lifecycle() {
    let b = broker();
    let s = state(&b, None);
    let rule = json!({
        "id": "hot",
        "sql": "SELECT temperature FROM \"devices/+/telemetry\" WHERE temperature > 30",
        "actions": [{"type": "republish", "topic": "alerts/x", "qos": 1}]
    });
    let (st, v) = json_call(&s, "POST", "/api/rules", Some(rule.clone())).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["status"], "running");
    assert_eq!(v["columns"], json!(["temperature"]));
    assert_eq!(v["actions"][0]["delivery"]["queue"], 1024, "defaults shown");

    let (st, v) = json_call(&s, "POST", "/api/rules", Some(rule)).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("exists"))
    );

    let (st, v) = json_call(&s, "GET", "/api/rules", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v.as_array().map(Vec::len), Some(1));

    let (st, v) = json_call(&s, "POST", "/api/rules/hot/stop", None).await;
    assert_eq!(
        (st, v["status"].as_str()),
        (StatusCode::OK, Some("stopped"))
    );
    let (st, v) = json_call(&s, "POST", "/api/rules/hot/start", None).await;
    assert_eq!(
        (st, v["status"].as_str()),
        (StatusCode::OK, Some("running"))
    );

    let (st, v) = json_call(
        &s,
        "PUT",
        "/api/rules/hot",
        Some(json!({"sql": "SELECT humidity FROM \"x\""})),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        (v["id"].as_str(), v["columns"].clone()),
        (Some("hot"), json!(["humidity"]))
    );

    let (st, v) = json_call(
        &s,
        "PUT",
        "/api/rules/hot",
        Some(json!({"id": "other", "sql": "SELECT 1 FROM \"x\""})),
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );

    let (st, _) = json_call(&s, "DELETE", "/api/rules/hot", None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, v) = json_call(&s, "GET", "/api/rules/hot", None).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
}

#[tokio::test]
async fn bad_requests_get_json_errors_and_change_nothing() {
    let b = broker();
    let s = state(&b, None);
    let (st, v) = json_call(
        &s,
        "POST",
        "/api/rules",
        Some(json!({"id": "r", "sql": "SELECT a,\n  FROM \"x\""})),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["code"], "invalid_sql");
    assert_eq!(v["error"]["line"], 2, "{v}");
    assert!(v["error"]["column"].as_u64().is_some(), "{v}");

    let (st, v) = json_call(
        &s,
        "POST",
        "/api/rules",
        Some(json!({"id": "r", "sql": "SELECT * FROM \"x\"", "actions": [{"type": "nope"}]})),
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("nope"),
        "{v}"
    );

    let (st, v) = json_call(
        &s,
        "POST",
        "/api/rules",
        Some(json!({"id": "r", "sql": "SELECT * FROM \"x\"", "extra": 1})),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("extra"),
        "{v}"
    );

    let (st, out) = call(&s, "POST", "/api/rules", Some("{not json"), None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{out}");
    assert!(out.contains("\"code\":\"invalid_request\""), "{out}");

    let (st, v) = json_call(&s, "GET", "/api/nothing/here", None).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    let (st, v) = json_call(&s, "PATCH", "/api/rules", None).await;
    assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(v["error"]["code"], "method_not_allowed", "{v}");

    let many: Vec<Value> = (0..10_001).map(|_| json!({"topic": "x"})).collect();
    let (st, v) = json_call(
        &s,
        "POST",
        "/api/rules/test",
        Some(json!({"sql": "SELECT * FROM \"x\"", "samples": many})),
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_sample"))
    );

    let (_, v) = json_call(&s, "GET", "/api/rules", None).await;
    assert_eq!(v, json!([]), "nothing was created");
}

#[tokio::test]
async fn test_endpoint_returns_rows() {
    let b = broker();
    let s = state(&b, None);
    let (st, v) = json_call(
        &s,
        "POST",
        "/api/rules/test",
        Some(json!({
            "sql": "SELECT topic(2) AS device, t * 2 AS double FROM \"devices/+/telemetry\" WHERE t > 1",
            "samples": [
                {"topic": "devices/a/telemetry", "payload": {"t": 1}},
                {"topic": "devices/b/telemetry", "payload": {"t": 4}},
                {"topic": "devices/c/telemetry", "payload_raw": "not json"}
            ]
        })),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["rows"], json!([{"device": "b", "double": 8}]));
    assert_eq!(v["truncated"], false);

    // A window that would emit millions of rows is cut, not run to the end.
    let samples: Vec<Value> = (0..2000)
        .map(|i| json!({"topic": "t/1", "payload": {"v": i % 500}, "time": i * 10}))
        .collect();
    let (st, v) = json_call(
        &s,
        "POST",
        "/api/rules/test",
        Some(json!({
            "sql": "SELECT v, count(*) AS n FROM \"t/#\" GROUP BY v, HOPPING(1000s, 1s)",
            "samples": samples
        })),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["truncated"], true);
    assert_eq!(
        v["rows"].as_array().map(Vec::len),
        Some(verge_rules::MAX_TEST_ROWS)
    );

    let (st, v) = json_call(
        &s,
        "POST",
        "/api/rules/test",
        Some(json!({"sql": "SELEKT 1"})),
    )
    .await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_sql"))
    );
}

#[tokio::test]
async fn token_guards_the_api_but_not_probes() {
    let b = broker();
    let s = state(&b, Some("s3cret"));
    let (st, out) = call(&s, "GET", "/api/rules", None, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{out}");
    assert!(out.contains("unauthorized"));
    let (st, _) = call(&s, "GET", "/api/rules", None, Some("wrong")).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = call(&s, "GET", "/api/rules", None, Some("s3cret")).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = call(&s, "GET", "/api/rules", None, Some("s3cre")).await;
    assert_eq!(
        st,
        StatusCode::UNAUTHORIZED,
        "a prefix of the token is not the token"
    );
    let (st, out) = call(&s, "GET", "/healthz", None, None).await;
    assert_eq!((st, out.as_str()), (StatusCode::OK, "ok\n"));
    let (st, _) = call(&s, "GET", "/metrics", None, None).await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test]
async fn status_and_metrics() {
    let b = broker();
    let s = state(&b, None);
    json_call(
        &s,
        "POST",
        "/api/rules",
        Some(json!({"id": "r1", "sql": "SELECT * FROM \"a/#\""})),
    )
    .await;
    let (st, v) = json_call(&s, "GET", "/api/status", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["name"], "test-node");
    assert_eq!(v["rules"], 1);
    assert!(v["broker"]["clients_connected"].is_u64(), "{v}");
    let (st, text) = call(&s, "GET", "/metrics", None, None).await;
    assert_eq!(st, StatusCode::OK);
    for want in [
        "# TYPE verge_broker_clients_connected gauge",
        "verge_broker_messages_received_total 0",
        "verge_broker_connections_total 0",
        "verge_rule_running{rule=\"r1\"} 1",
    ] {
        assert!(text.contains(want), "missing `{want}`:\n{text}");
    }
}

#[tokio::test]
async fn cloud_status_of_an_unmanaged_node_is_a_json_404() {
    let b = broker();
    let s = state(&b, None);
    let (st, v) = json_call(&s, "GET", "/api/cloud", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["error"]["code"], "not_managed");
}

/// A state whose API asks for the admin token kept in `dir` (made there
/// on first use), as a node started with the default config does.
fn state_with_token_file(
    broker: &Broker,
    dir: &std::path::Path,
    engine: RuleEngineConfig,
) -> ApiState {
    let mut s = state(broker, None);
    s.rules = Arc::new(Engine::new(Services::new(broker.handle()), engine));
    s.auth = Some(Arc::new(ApiTokens::open(dir, None).expect("tokens")));
    s
}

async fn send(s: &ApiState, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let resp = router(s.clone()).oneshot(req).await.expect("response");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    (
        status,
        headers,
        String::from_utf8(bytes.to_vec()).expect("utf-8"),
    )
}

/// Finding 1 of the security review: the node's API answered anonymous
/// callers on every route. By default it asks for the admin token, made
/// at the first start in `<data_dir>/api-token` (0600) and kept.
#[tokio::test]
async fn finding_1_the_node_api_needs_a_token_by_default() {
    use std::os::unix::fs::PermissionsExt;
    assert!(verge_node::config::HttpSection::default().auth);
    let dir = tempfile::tempdir().expect("dir");
    let b = broker();
    let s = state_with_token_file(&b, dir.path(), RuleEngineConfig::default());
    let file = dir.path().join("api-token");
    let mode = std::fs::metadata(&file)
        .expect("token file")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let token = std::fs::read_to_string(&file)
        .expect("read")
        .trim()
        .to_owned();
    assert_eq!(token.len(), 64, "{token}");
    // The same token at the next start.
    let again = ApiTokens::open(dir.path(), None).expect("reopen");
    assert_eq!(again.admin_file(), Some(file.as_path()));
    assert_eq!(std::fs::read_to_string(&file).expect("read").trim(), token);
    for path in [
        "/api/status",
        "/api/rules",
        "/api/functions",
        "/api/store/series",
        "/api/bridge",
        "/api/cloud",
        "/api/drivers",
        "/api/tokens",
    ] {
        let (st, out) = call(&s, "GET", path, None, None).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{path}: {out}");
    }
    let (st, out) = call(
        &s,
        "POST",
        "/api/rules",
        Some(r#"{"id":"r","sql":"SELECT * FROM \"a\""}"#),
        None,
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{out}");
    assert!(s.rules.list().await.is_empty());
    let (st, _) = call(&s, "GET", "/api/rules", None, Some(&token)).await;
    assert_eq!(st, StatusCode::OK);
    // The scheme in any case (RFC 9110).
    let req = Request::get("/api/rules")
        .header("authorization", format!("bearer {token}"))
        .body(Body::empty())
        .expect("request");
    assert_eq!(send(&s, req).await.0, StatusCode::OK);
    let (st, out) = call(&s, "GET", "/healthz", None, None).await;
    assert_eq!((st, out.as_str()), (StatusCode::OK, "ok\n"));
}

/// Read-only and admin tokens: made by the admin token only, shown once,
/// stored hashed (0600); a read token may only GET; revoked tokens stop.
#[tokio::test]
async fn scoped_tokens_read_only_and_admin() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("dir");
    let b = broker();
    let s = state_with_token_file(&b, dir.path(), RuleEngineConfig::default());
    let admin = std::fs::read_to_string(dir.path().join("api-token"))
        .expect("read")
        .trim()
        .to_owned();
    let make = |scope: &'static str| {
        let s = s.clone();
        let admin = admin.clone();
        async move {
            let body = format!(r#"{{"name":"{scope}-tool","scope":"{scope}"}}"#);
            let (st, out) = call(&s, "POST", "/api/tokens", Some(&body), Some(&admin)).await;
            assert_eq!(st, StatusCode::CREATED, "{out}");
            let v: Value = serde_json::from_str(&out).expect("json");
            (
                v["id"].as_str().expect("id").to_owned(),
                v["token"].as_str().expect("token").to_owned(),
            )
        }
    };
    let (read_id, read) = make("read").await;
    let (_, ops) = make("admin").await;
    let rule = r#"{"id":"r","sql":"SELECT * FROM \"a\""}"#;
    let (st, _) = call(&s, "GET", "/api/rules", None, Some(&read)).await;
    assert_eq!(st, StatusCode::OK);
    let (st, out) = call(&s, "POST", "/api/rules", Some(rule), Some(&read)).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{out}");
    assert!(out.contains("read-only"), "{out}");
    assert!(s.rules.list().await.is_empty());
    let (st, out) = call(&s, "POST", "/api/rules", Some(rule), Some(&ops)).await;
    assert_eq!(st, StatusCode::CREATED, "{out}");
    // Only the admin token manages tokens.
    let (st, _) = call(&s, "GET", "/api/tokens", None, Some(&ops)).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let body = r#"{"name":"x","scope":"admin"}"#;
    let (st, _) = call(&s, "POST", "/api/tokens", Some(body), Some(&read)).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, out) = call(&s, "GET", "/api/tokens", None, Some(&admin)).await;
    assert_eq!(st, StatusCode::OK);
    assert!(!out.contains(&read) && out.contains("read-tool"), "{out}");
    // Stored as hashes, privately.
    let file = dir.path().join("api-tokens.json");
    let stored = std::fs::read_to_string(&file).expect("tokens file");
    assert!(
        !stored.contains(&read) && !stored.contains(&ops),
        "{stored}"
    );
    let mode = std::fs::metadata(&file).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Kept across a restart, and revoked for good.
    let restarted = ApiTokens::open(dir.path(), None).expect("reopen");
    let mut s2 = s.clone();
    s2.auth = Some(Arc::new(restarted));
    let (st, _) = call(&s2, "GET", "/api/rules", None, Some(&read)).await;
    assert_eq!(st, StatusCode::OK);
    let path = format!("/api/tokens/{read_id}");
    let (st, _) = call(&s2, "DELETE", &path, None, Some(&admin)).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = call(&s2, "GET", "/api/rules", None, Some(&read)).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let body = r#"{"name":"bad","scope":"root"}"#;
    let (st, _) = call(&s2, "POST", "/api/tokens", Some(body), Some(&admin)).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
}

/// Finding 4: a cross-site POST with `Content-Type: text/plain` reached
/// the API, and without a Host check a DNS-rebinding page could too.
/// Both are refused even with authentication off, and nothing changes.
#[tokio::test]
async fn finding_4_cross_site_posts_and_dns_rebinding_are_refused() {
    let b = broker();
    let s = state(&b, None);
    let rule = r##"{"id":"r","sql":"SELECT * FROM \"#\""}"##;
    let req = Request::post("/api/rules")
        .header("content-type", "text/plain")
        .header("content-length", rule.len())
        .body(Body::from(rule))
        .expect("request");
    let (st, _, out) = send(&s, req).await;
    assert_eq!(st, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{out}");
    let req = Request::post("/api/rules")
        .header("content-type", "application/json")
        .header("host", "rebind.attacker.example:8081")
        .body(Body::from(rule))
        .expect("request");
    let (st, _, out) = send(&s, req).await;
    assert_eq!(st, StatusCode::MISDIRECTED_REQUEST, "{out}");
    let req = Request::get("/api/rules")
        .header("host", "rebind.attacker.example:8081")
        .body(Body::empty())
        .expect("request");
    assert_eq!(send(&s, req).await.0, StatusCode::MISDIRECTED_REQUEST);
    let req = Request::post("/api/rules/r/stop")
        .header("host", "127.0.0.1:8081")
        .header("origin", "http://attacker.example")
        .body(Body::empty())
        .expect("request");
    let (st, _, out) = send(&s, req).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{out}");
    assert!(s.rules.list().await.is_empty());
    // The same request from a tool (no Origin) on a loopback Host works,
    // and every answer carries the browser hardening headers.
    let req = Request::post("/api/rules")
        .header("content-type", "application/json")
        .header("host", "127.0.0.1:8081")
        .body(Body::from(rule))
        .expect("request");
    let (st, headers, out) = send(&s, req).await;
    assert_eq!(st, StatusCode::CREATED, "{out}");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .expect("csp")
            .contains("frame-ancestors 'none'")
    );
}

/// Finding 3: a webhook rule could send all device telemetry anywhere,
/// unseen. `rule_engine.webhook_hosts` restricts the targets, and
/// /api/status lists every target.
#[tokio::test]
async fn finding_3_webhook_targets_are_restricted_and_listed() {
    let b = broker();
    let mut s = state(&b, None);
    let engine = RuleEngineConfig {
        webhook_hosts: vec!["hooks.example.com".into(), "*.corp.example".into()],
        ..RuleEngineConfig::default()
    };
    s.rules = Arc::new(Engine::new(Services::new(b.handle()), engine));
    let rule = |id: &str, url: &str| {
        json!({"id": id, "sql": "SELECT * FROM \"devices/#\"",
               "actions": [{"type": "log"}, {"type": "webhook", "url": url}]})
    };
    let (st, v) = json_call(
        &s,
        "POST",
        "/api/rules",
        Some(rule("leak", "https://attacker.example/x")),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "invalid_action", "{v}");
    let msg = v["error"]["message"].as_str().expect("message");
    assert!(
        msg.contains("attacker.example") && msg.contains("webhook_hosts"),
        "{msg}"
    );
    assert!(
        msg.contains("action 1") || msg.contains("[1]") || msg.contains("#1"),
        "{msg}"
    );
    for (id, url) in [
        ("ok1", "https://HOOKS.example.com/in"),
        ("ok2", "http://a.corp.example:8080/in"),
    ] {
        let (st, v) = json_call(&s, "POST", "/api/rules", Some(rule(id, url))).await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
    }
    let (st, v) = json_call(
        &s,
        "POST",
        "/api/rules",
        Some(rule("no", "http://corp.example/")),
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let (_, v) = json_call(&s, "GET", "/api/status", None).await;
    assert_eq!(
        v["webhooks"]["targets"],
        json!([{"rule": "ok1", "url": "https://HOOKS.example.com/in"},
               {"rule": "ok2", "url": "http://a.corp.example:8080/in"}]),
        "{v}"
    );
    assert_eq!(v["auth"], false);
}

/// Finding 7 (node side): free-text fields are bounded and hold no control
/// characters.
#[tokio::test]
async fn finding_7_rule_descriptions_are_bounded() {
    let b = broker();
    let s = state(&b, None);
    for description in ["x".repeat(2000), "nul\u{0}byte".into()] {
        let body = json!({"id": "r", "sql": "SELECT * FROM \"a\"", "description": description});
        let (st, v) = json_call(&s, "POST", "/api/rules", Some(body)).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .expect("m")
                .contains("description"),
            "{v}"
        );
    }
    assert!(s.rules.list().await.is_empty());
}

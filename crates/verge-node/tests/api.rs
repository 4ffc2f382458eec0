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
        token: token.map(Arc::from),
        store: None,
        bridge: None,
        functions: None,
        drivers: None,
        coap: None,
        cloud: None,
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

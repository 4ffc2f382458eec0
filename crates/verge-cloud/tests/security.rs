//! The security review's findings on the cloud center (2026-12-07), each
//! pinned by a test named after it: scoped tokens, the `Bearer` scheme in
//! any case, bounded free text, browser guards and private files. Each
//! test runs on SQLite, and on PostgreSQL when `VERGE_TEST_POSTGRES_URL`
//! is set.

#[macro_use]
mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::{Harness, harness_on};
use serde_json::{Value, json};

both!(
    scoped_tokens_read_only_and_admin,
    finding_8_bearer_in_lower_case_is_accepted,
    finding_7_descriptions_are_bounded_and_change_nothing,
    finding_4_cross_site_posts_and_dns_rebinding_are_refused,
);

async fn token(h: &Harness, name: &str, scope: &str) -> (String, String) {
    let (s, v) = h
        .call(
            Method::POST,
            "/api/tokens",
            Some(json!({"name": name, "scope": scope})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["scope"], scope, "{v}");
    (
        v["id"].as_str().expect("id").to_owned(),
        v["token"].as_str().expect("token").to_owned(),
    )
}

/// A `read` token may only GET; only `admin` tokens manage tokens; the
/// default scope stays `admin` (tokens made before scopes existed too).
async fn scoped_tokens_read_only_and_admin(h: Harness) {
    let (_, read) = token(&h, "dashboard", "read").await;
    let bearer = format!("Bearer {read}");
    let (s, v) = h
        .call_as(Method::GET, "/api/nodes", Some(&bearer), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = h
        .call_as(
            Method::POST,
            "/api/nodes",
            Some(&bearer),
            Some(json!({"name": "by-reader"})),
        )
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden")),
        "{v}"
    );
    let (_, nodes) = h.call(Method::GET, "/api/nodes", None).await;
    assert_eq!(nodes, json!([]), "nothing was created");
    let (s, _) = h
        .call_as(Method::GET, "/api/tokens", Some(&bearer), None)
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = h
        .call_as(
            Method::POST,
            "/api/tokens",
            Some(&bearer),
            Some(json!({"name": "escalate", "scope": "admin"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // A token without a scope is an admin token, as before.
    let (s, v) = h
        .call(Method::POST, "/api/tokens", Some(json!({"name": "ops"})))
        .await;
    assert_eq!(
        (s, v["scope"].as_str()),
        (StatusCode::CREATED, Some("admin")),
        "{v}"
    );
    let ops = format!("Bearer {}", v["token"].as_str().expect("token"));
    let (s, _) = h
        .call_as(
            Method::POST,
            "/api/nodes",
            Some(&ops),
            Some(json!({"name": "by-ops"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = h
        .call(
            Method::POST,
            "/api/tokens",
            Some(json!({"name": "x", "scope": "root"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (_, list) = h.call(Method::GET, "/api/tokens", None).await;
    let scopes: Vec<(&str, &str)> = list
        .as_array()
        .expect("list")
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap_or(""),
                t["scope"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        scopes,
        vec![("admin", "admin"), ("dashboard", "read"), ("ops", "admin")]
    );
}

/// Finding 8: the cloud refused `bearer` in lower case while the node took
/// it; the scheme is case-insensitive (RFC 9110 §11.1), for API tokens and
/// node credentials alike.
async fn finding_8_bearer_in_lower_case_is_accepted(h: Harness) {
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let auth = format!("{scheme} {}", h.admin);
        let (s, v) = h
            .call_as(Method::GET, "/api/nodes", Some(&auth), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{scheme}: {v}");
    }
    let (s, _) = h
        .call_as(Method::GET, "/api/nodes", Some("Basic abc"), None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

/// Finding 7: a 20 MiB node description was accepted (and `GET /api/nodes`
/// grew to 22.5 MB); descriptions of 500 KiB or holding NUL broke the
/// device table. Free text is at most 1 KiB without control characters,
/// on every resource, and a refused request changes nothing.
async fn finding_7_descriptions_are_bounded_and_change_nothing(h: Harness) {
    let long = "x".repeat(20 << 20);
    let bad: [&str; 3] = [&long, &"y".repeat(500 << 10), "nul\u{0}here"];
    for d in bad {
        let (s, v) = h
            .call(
                Method::POST,
                "/api/nodes",
                Some(json!({"name": "n1", "description": d})),
            )
            .await;
        assert_eq!(
            s,
            StatusCode::BAD_REQUEST,
            "{}",
            &v.to_string()[..200.min(v.to_string().len())]
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("description"),
            "{v}"
        );
        assert!(
            v.to_string().len() < 1024,
            "the answer does not echo the text"
        );
    }
    let (_, nodes) = h.call(Method::GET, "/api/nodes", None).await;
    assert_eq!(nodes, json!([]));
    let (s, _) = h
        .call(
            Method::POST,
            "/api/nodes",
            Some(json!({"name": "n1", "description": "line one\nline two"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = h
        .call(
            Method::PATCH,
            "/api/nodes/n1",
            Some(json!({"description": "z".repeat(2048)})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = h
        .call(
            Method::PATCH,
            "/api/nodes/n1",
            Some(json!({"config": {"blob": "q".repeat(100 << 10)}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (_, node) = h.call(Method::GET, "/api/nodes/n1", None).await;
    assert_eq!(node["description"], "line one\nline two");
    let (s, _) = h
        .call(
            Method::POST,
            "/api/devices",
            Some(json!({"name": "d1", "node_id": "n1", "description": "a\u{1b}[31m"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = h
        .call(
            Method::POST,
            "/api/rules",
            Some(
                json!({"id": "r1", "node_id": "n1", "sql": "SELECT * FROM \"a\"",
                        "description": "d".repeat(1025)}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

async fn send(h: &Harness, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let res = h.cloud.router().oneshot(req).await.expect("response");
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, v)
}

/// Finding 4 (cloud side): a text/plain POST from another site, a Host of
/// a DNS-rebinding domain and a foreign Origin are refused before any
/// handler; the console and every answer carry CSP and framing headers.
async fn finding_4_cross_site_posts_and_dns_rebinding_are_refused(h: Harness) {
    let auth = format!("Bearer {}", h.admin);
    let body = r#"{"name":"from-a-form"}"#;
    let req = Request::post("/api/nodes")
        .header("authorization", &auth)
        .header("content-type", "text/plain")
        .header("content-length", body.len())
        .body(Body::from(body))
        .expect("request");
    assert_eq!(send(&h, req).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let req = Request::get("/api/nodes")
        .header("authorization", &auth)
        .header("host", "rebound.attacker.example:8080")
        .body(Body::empty())
        .expect("request");
    assert_eq!(send(&h, req).await.0, StatusCode::MISDIRECTED_REQUEST);
    let req = Request::post("/api/nodes")
        .header("authorization", &auth)
        .header("host", "127.0.0.1:8080")
        .header("origin", "https://attacker.example")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("request");
    assert_eq!(send(&h, req).await.0, StatusCode::FORBIDDEN);
    let (_, nodes) = h.call(Method::GET, "/api/nodes", None).await;
    assert_eq!(nodes, json!([]), "nothing was created");
    // The console's own origin may.
    let req = Request::post("/api/nodes")
        .header("authorization", &auth)
        .header("host", "127.0.0.1:8080")
        .header("origin", "http://127.0.0.1:8080")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .expect("request");
    assert_eq!(send(&h, req).await.0, StatusCode::CREATED);
    let (s, headers, _) = send(&h, Request::get("/").body(Body::empty()).expect("request")).await;
    assert_eq!(s, StatusCode::OK);
    let csp = headers["content-security-policy"].to_str().expect("csp");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(headers["x-frame-options"], "DENY");
}

/// Finding 8: `cloud.db` (password hashes, all telemetry) was written
/// 0644. It is 0600 in a 0700 data dir, and one an older version left
/// readable is made private at the next start.
#[tokio::test]
async fn finding_8_the_database_and_data_dir_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let h = harness_on(false).await.expect("sqlite");
    let data = h.dir.path().join("data");
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    let db = data.join("cloud.db");
    assert_eq!(mode(&db), 0o600);
    let wal = data.join("cloud.db-wal");
    if wal.exists() {
        assert_eq!(mode(&wal), 0o600);
    }
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut cfg = verge_cloud::CloudConfig::default();
    cfg.cloud.data_dir = data.clone();
    let (again, _) = verge_cloud::Cloud::open(cfg).await.expect("reopen");
    assert_eq!(mode(&db), 0o600);
    drop(again);
}

//! Releases of the `verge` binary in the cloud: kept by version with their
//! digest and signature (immutable), a binary that must be the one the
//! release names, assignment to a node that bumps its desired state with
//! the release in it, and the binary served only to a node assigned it.
//! Each test runs on SQLite, and on PostgreSQL when
//! `VERGE_TEST_POSTGRES_URL` is set.

#[macro_use]
mod common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::Engine as _;
use common::{Harness, desired_as, harness_on, harness_with};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

both!(
    releases_are_kept_listed_and_deleted,
    bad_releases_are_refused_with_the_reason,
    the_binary_must_be_the_release,
    assignment_puts_the_release_in_the_desired_state,
    the_binary_is_only_for_nodes_assigned_it,
);

/// A release of `binary` as `version`. The cloud does not verify the
/// signature (nodes do), only its shape: 64 bytes of base64.
fn release(version: &str, binary: &[u8]) -> Value {
    json!({
        "version": version,
        "sha256": hex::encode(Sha256::digest(binary)),
        "size": binary.len(),
        "signature": base64::engine::general_purpose::STANDARD.encode([7u8; 64]),
    })
}

async fn raw(
    h: &Harness,
    method: Method,
    path: &str,
    auth: &str,
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", auth)
        .header("content-type", "application/octet-stream")
        .header("content-length", body.len())
        .body(Body::from(body))
        .expect("request");
    let res = h.cloud.router().oneshot(req).await.expect("response");
    let status = res.status();
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    (status, bytes.to_vec())
}

async fn upload(h: &Harness, version: &str, binary: &[u8]) -> (StatusCode, Value) {
    let (s, body) = raw(
        h,
        Method::PUT,
        &format!("/api/releases/{version}/binary"),
        &format!("Bearer {}", h.admin),
        binary.to_vec(),
    )
    .await;
    (s, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn post(h: &Harness, body: Value) -> (StatusCode, Value) {
    h.call(Method::POST, "/api/releases", Some(body)).await
}

async fn releases_are_kept_listed_and_deleted(h: Harness) {
    let (s, v) = post(&h, release("0.1.0+b2", b"two")).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["uploaded"], false);
    assert_eq!(v["nodes"], json!([]));
    // The same again: 200; another digest under the same version: 409.
    let (s, _) = post(&h, release("0.1.0+b2", b"two")).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = post(&h, release("0.1.0+b2", b"other")).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("immutable"),
        "{v}"
    );
    post(&h, release("0.2.0", b"three")).await;
    let (s, v) = h.call(Method::GET, "/api/releases", None).await;
    assert_eq!(s, StatusCode::OK);
    let versions: Vec<&str> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["version"].as_str())
        .collect();
    assert_eq!(versions, ["0.1.0+b2", "0.2.0"]);
    let (s, _) = h.call(Method::DELETE, "/api/releases/0.2.0", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = h.call(Method::DELETE, "/api/releases/0.2.0", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
}

async fn bad_releases_are_refused_with_the_reason(h: Harness) {
    let good = release("1.0.0", b"x");
    let with = |key: &str, value: Value| {
        let mut r = good.clone();
        r[key] = value;
        r
    };
    for (body, says) in [
        (with("version", json!("../x")), "`version`"),
        (with("version", json!("")), "`version`"),
        (with("sha256", json!("ABC")), "`sha256`"),
        (with("sha256", json!("A".repeat(64))), "`sha256`"),
        (with("size", json!(0)), "`size`"),
        (with("size", json!(1u64 << 40)), "`size`"),
        (with("signature", json!("%%%")), "`signature`"),
        (with("signature", json!("AAAA")), "`signature`"),
        (json!({"version": "1.0.0"}), ""),
        (with("extra", json!(1)), ""),
    ] {
        let (s, v) = post(&h, body.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(says),
            "{body}: {v}"
        );
    }
    let (s, v) = h.call(Method::GET, "/api/releases", None).await;
    assert_eq!((s, v), (StatusCode::OK, json!([])));
}

async fn the_binary_must_be_the_release(h: Harness) {
    let binary = vec![5u8; 4096];
    post(&h, release("1.0.0", &binary)).await;
    let (s, v) = upload(&h, "1.0.0", &[5u8; 4095]).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let mut other = binary.clone();
    other[0] = 6;
    let (s, v) = upload(&h, "1.0.0", &other).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("SHA-256"),
        "{v}"
    );
    let (s, v) = upload(&h, "2.0.0", &binary).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = upload(&h, "1.0.0", &binary).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["uploaded"], true);
    let (s, _) = upload(&h, "1.0.0", &binary).await;
    assert_eq!(s, StatusCode::OK, "the same bytes again");
}

async fn the_binary_is_over_the_limit(postgres: bool) {
    let Some(h) = harness_with(postgres, |c| c.cloud.max_release_bytes = 1000).await else {
        return;
    };
    // A release that declares more than the limit is refused at once.
    let (s, v) = post(&h, release("1.0.0", &[1u8; 1001])).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _) = post(&h, release("1.0.0", &[1u8; 1000])).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = upload(&h, "1.0.0", &[1u8; 1001]).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(v["error"]["code"], "payload_too_large", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("cloud.max_release_bytes"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_over_the_limit_is_413_sqlite() {
    the_binary_is_over_the_limit(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_over_the_limit_is_413_postgres() {
    the_binary_is_over_the_limit(true).await;
}

async fn assignment_puts_the_release_in_the_desired_state(h: Harness) {
    let (node, secret) = h.joined_node("edge-1").await;
    let binary = b"the new verge".to_vec();
    let r = release("0.1.0+b2", &binary);
    post(&h, r.clone()).await;
    // Without its binary a release cannot be assigned.
    let (s, v) = h
        .call(
            Method::PUT,
            &format!("/api/nodes/{node}/release"),
            Some(json!({"version": "0.1.0+b2"})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    upload(&h, "0.1.0+b2", &binary).await;
    let (_, before) = desired_as(&h, &node, &secret, 0, 0).await;
    let v0 = before["version"].as_i64().expect("version");
    assert!(before.get("release").is_none(), "{before}");
    for (body, status) in [
        (json!({"version": "9.9.9"}), StatusCode::NOT_FOUND),
        (json!({"version": "../x"}), StatusCode::BAD_REQUEST),
        (json!({"v": "1"}), StatusCode::BAD_REQUEST),
    ] {
        let (s, v) = h
            .call(
                Method::PUT,
                &format!("/api/nodes/{node}/release"),
                Some(body),
            )
            .await;
        assert_eq!(s, status, "{v}");
    }
    let (s, v) = h
        .call(
            Method::PUT,
            "/api/nodes/nope/release",
            Some(json!({"version": "0.1.0+b2"})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = h
        .call(
            Method::PUT,
            &format!("/api/nodes/{node}/release"),
            Some(json!({"version": "0.1.0+b2"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v, json!({"node_id": node, "version": "0.1.0+b2"}));
    let (_, d) = desired_as(&h, &node, &secret, v0, 0).await;
    assert_eq!(d["version"].as_i64(), Some(v0 + 1), "{d}");
    assert_eq!(d["release"], r, "{d}");
    let (_, revs) = h
        .call(Method::GET, &format!("/api/nodes/{node}/revisions"), None)
        .await;
    assert_eq!(revs[0]["summary"], "release 0.1.0+b2 assigned", "{revs}");
    let (s, diff) = h
        .call(
            Method::GET,
            &format!("/api/nodes/{node}/revisions/{v0}/diff/{}", v0 + 1),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{diff}");
    assert_eq!(diff["release"]["added"], json!(["verge"]), "{diff}");
    // The same again changes nothing.
    let (s, _) = h
        .call(
            Method::PUT,
            &format!("/api/nodes/{node}/release"),
            Some(json!({"version": "0.1.0+b2"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = desired_as(&h, &node, &secret, v0 + 1, 0).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    // In use: not deleted.
    let (s, v) = h.call(Method::DELETE, "/api/releases/0.1.0+b2", None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (_, list) = h.call(Method::GET, "/api/releases", None).await;
    assert_eq!(list[0]["nodes"], json!([node]));
    let (s, _) = h
        .call(Method::DELETE, &format!("/api/nodes/{node}/release"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = h
        .call(Method::DELETE, &format!("/api/nodes/{node}/release"), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, d) = desired_as(&h, &node, &secret, v0 + 1, 0).await;
    assert_eq!(d["version"].as_i64(), Some(v0 + 2), "{d}");
    assert!(d.get("release").is_none(), "{d}");
    let (s, _) = h.call(Method::DELETE, "/api/releases/0.1.0+b2", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
}

async fn the_binary_is_only_for_nodes_assigned_it(h: Harness) {
    let (n1, s1) = h.joined_node("edge-1").await;
    let (n2, s2) = h.joined_node("edge-2").await;
    let binary = vec![3u8; 777];
    post(&h, release("1.0.0", &binary)).await;
    upload(&h, "1.0.0", &binary).await;
    let (s, _) = h
        .call(
            Method::PUT,
            &format!("/api/nodes/{n1}/release"),
            Some(json!({"version": "1.0.0"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let path = verge_protocol::paths::release_binary("", "1.0.0");
    let as_node = |n: &str, s: &str| verge_protocol::node_bearer(n, s);
    let (s, body) = raw(&h, Method::GET, &path, &as_node(&n1, &s1), vec![]).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, binary);
    let (s, _) = raw(&h, Method::GET, &path, &as_node(&n2, &s2), vec![]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let other = verge_protocol::paths::release_binary("", "2.0.0");
    let (s, _) = raw(&h, Method::GET, &other, &as_node(&n1, &s1), vec![]).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    for cred in [as_node(&n1, &s2), format!("Bearer {}", h.admin)] {
        let (s, _) = raw(&h, Method::GET, &path, &cred, vec![]).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{cred}");
    }
    // Deleting the node ends its assignment: the release can go.
    let (s, v) = h
        .call(Method::DELETE, &format!("/api/nodes/{n1}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (s, v) = h.call(Method::DELETE, "/api/releases/1.0.0", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
}

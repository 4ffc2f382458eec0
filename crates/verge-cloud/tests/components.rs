//! Components in the cloud: versions kept and immutable, specs checked as
//! the node checks them, `.tar.gz` artifacts stored with their digest and
//! served only to nodes that run that version, assignments that bump the
//! node's desired state and must form a runnable set, and the node's
//! reports of its components. Each test runs on SQLite, and on PostgreSQL
//! when `VERGE_TEST_POSTGRES_URL` is set.

#[macro_use]
mod common;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use common::{Harness, desired_as, harness_on, harness_with};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

both!(
    versions_are_kept_listed_and_deleted,
    bad_specs_are_refused_with_the_reason,
    artifact_upload_stores_digest_and_refuses_other_bytes,
    assignment_bumps_the_desired_state_and_carries_the_artifact,
    assignments_must_form_a_runnable_set,
    artifact_download_is_only_for_nodes_that_run_the_version,
    node_reports_of_components_appear_in_the_api,
);

fn process(name: &str, version: &str) -> Value {
    json!({"name": name, "version": version, "command": "bin/reader", "args": ["--port", "9100"]})
}

/// Bytes that start like a gzip stream (the cloud checks the magic, it
/// does not unpack).
fn archive(fill: u8, len: usize) -> Vec<u8> {
    let mut a = vec![0x1f, 0x8b, 0x08, 0x00];
    a.resize(len, fill);
    a
}

/// A raw request with an admin or node credential; the body as bytes with
/// the headers.
async fn raw(
    h: &Harness,
    method: Method,
    path: &str,
    auth: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", auth);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    // As an HTTP client sends it (the browser guard looks for it).
    if !body.is_empty() {
        req = req.header("content-length", body.len());
    }
    let req = req.body(Body::from(body)).expect("request");
    let res = h.cloud.router().oneshot(req).await.expect("response");
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    (status, headers, bytes.to_vec())
}

async fn upload(h: &Harness, name: &str, version: &str, data: Vec<u8>) -> (StatusCode, Value) {
    let (s, _, body) = raw(
        h,
        Method::PUT,
        &format!("/api/components/{name}/versions/{version}/artifact"),
        &format!("Bearer {}", h.admin),
        Some("application/gzip"),
        data,
    )
    .await;
    (s, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn create(h: &Harness, spec: Value) -> (StatusCode, Value) {
    h.call(Method::POST, "/api/components", Some(spec)).await
}

async fn assign(h: &Harness, node: &str, name: &str, version: &str) -> (StatusCode, Value) {
    h.call(
        Method::PUT,
        &format!("/api/nodes/{node}/components/{name}"),
        Some(json!({"version": version})),
    )
    .await
}

async fn unassign(h: &Harness, node: &str, name: &str) -> (StatusCode, Value) {
    h.call(
        Method::DELETE,
        &format!("/api/nodes/{node}/components/{name}"),
        None,
    )
    .await
}

async fn desired_version(h: &Harness, node: &str) -> i64 {
    let (s, v) = h
        .call(Method::GET, &format!("/api/nodes/{node}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["desired_version"].as_i64().expect("desired_version")
}

async fn versions_are_kept_listed_and_deleted(h: Harness) {
    let (s, v) = create(&h, process("reader", "1.0.0")).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["name"], "reader");
    assert_eq!(v["version"], "1.0.0");
    assert_eq!(v["kind"], "process");
    assert_eq!(v["artifact"], Value::Null);
    assert_eq!(v["spec"]["command"], "bin/reader");
    // The stored spec is the full spec, defaults filled in.
    assert_eq!(v["spec"]["restart"], "always");
    // The same version again, unchanged: fine. Changed: refused.
    let (s, _) = create(&h, process("reader", "1.0.0")).await;
    assert_eq!(s, StatusCode::OK);
    let mut changed = process("reader", "1.0.0");
    changed["args"] = json!([]);
    let (s, v) = create(&h, changed).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("immutable"),
        "{v}"
    );
    let (s, _) = create(
        &h,
        json!({"name": "reader", "version": "1.1.0", "kind": "container", "image": "localhost/reader:1.1"}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = create(&h, process("other", "0.1")).await;
    assert_eq!(s, StatusCode::CREATED);

    let (s, list) = h.call(Method::GET, "/api/components", None).await;
    assert_eq!(s, StatusCode::OK);
    let names: Vec<&str> = list
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["other", "reader"]);
    let (s, c) = h.call(Method::GET, "/api/components/reader", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(c["latest"], "1.1.0");
    assert_eq!(c["kind"], "container");
    assert_eq!(c["versions"].as_array().map(Vec::len), Some(2));
    assert_eq!(c["versions"][0]["version"], "1.0.0");
    assert_eq!(c["nodes"], json!([]));

    let (s, vs) = h
        .call(Method::GET, "/api/components/reader/versions", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(vs[0]["spec"]["args"], json!(["--port", "9100"]));
    assert_eq!(vs[1]["spec"]["image"], "localhost/reader:1.1");
    let (s, one) = h
        .call(Method::GET, "/api/components/reader/versions/1.1.0", None)
        .await;
    assert_eq!((s, &one["kind"]), (StatusCode::OK, &json!("container")));

    let (s, _) = h
        .call(
            Method::DELETE,
            "/api/components/reader/versions/1.0.0",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = h
        .call(Method::GET, "/api/components/reader/versions/1.0.0", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = h.call(Method::DELETE, "/api/components/reader", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    for path in ["/api/components/reader", "/api/components/reader/versions"] {
        let (s, v) = h.call(Method::GET, path, None).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}: {v}");
    }
    let (s, _) = h.call(Method::DELETE, "/api/components/reader", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

async fn bad_specs_are_refused_with_the_reason(h: Harness) {
    let cases = [
        (
            json!({"name": "r", "version": "1", "command": "x", "colour": "blue"}),
            "unknown field `colour`",
        ),
        (
            json!({"name": "-r", "version": "1", "command": "x"}),
            "`name` must be 1 to 64",
        ),
        (
            json!({"name": "r", "version": "1 0", "command": "x"}),
            "`version` must be 1 to 64",
        ),
        (
            json!({"version": "1", "command": "x"}),
            "`name` is required",
        ),
        (json!({"name": "r", "version": "1"}), "command"),
        (
            json!({"name": "r", "version": "1", "kind": "container"}),
            "a container needs an image reference",
        ),
        (
            json!({"name": "r", "version": "1", "kind": "container", "image": "i", "command": "", "network": "wifi"}),
            "network",
        ),
        (
            json!({"name": "r", "version": "1", "command": "x",
                   "artifact": {"sha256": "00".repeat(32), "size": 1}}),
            "`artifact` is not accepted",
        ),
        (
            json!({"name": "r", "version": "1", "command": "x", "workdir": "/etc"}),
            "`workdir` is not accepted",
        ),
        (
            json!({"name": "r", "version": "1", "command": "x", "depends_on": ["r"]}),
            "dependency cycle",
        ),
        (
            json!({"name": "r", "version": "1", "command": "x", "env": {"VERGE_COMPONENT_NAME": "x"}}),
            "set by the node",
        ),
        (json!(["not", "an", "object"]), "JSON object"),
    ];
    for (spec, reason) in cases {
        let (s, v) = create(&h, spec.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{spec}: {v}");
        assert_eq!(v["error"]["code"], "invalid_component", "{spec}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(reason),
            "{spec}: `{message}` lacks `{reason}`"
        );
    }
    let (_, list) = h.call(Method::GET, "/api/components", None).await;
    assert_eq!(list, json!([]));
}

async fn artifact_upload_stores_digest_and_refuses_other_bytes(h: Harness) {
    let (s, _) = upload(&h, "reader", "1.0.0", archive(1, 100)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    create(&h, process("reader", "1.0.0")).await;
    let (s, v) = upload(&h, "reader", "1.0.0", b"PK\x03\x04 a zip".to_vec()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("gzip")
    );
    let (s, _) = upload(&h, "reader", "1.0.0", Vec::new()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    // Not a declared binary type: refused before the handler.
    let (s, _, _) = raw(
        &h,
        Method::PUT,
        "/api/components/reader/versions/1.0.0/artifact",
        &format!("Bearer {}", h.admin),
        Some("text/plain"),
        archive(1, 100),
    )
    .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let data = archive(7, 5000);
    let sha = hex::encode(Sha256::digest(&data));
    let (s, v) = upload(&h, "reader", "1.0.0", data.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["artifact"], json!({"sha256": sha, "size": 5000}));
    let (_, c) = h.call(Method::GET, "/api/components/reader", None).await;
    assert_eq!(c["versions"][0]["artifact"]["sha256"], sha.as_str());
    // The same bytes again: fine; other bytes: the version is immutable.
    let (s, _) = upload(&h, "reader", "1.0.0", data).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = upload(&h, "reader", "1.0.0", archive(8, 5000)).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    // A container's files are its image.
    create(
        &h,
        json!({"name": "box", "version": "1", "kind": "container", "image": "localhost/box:1"}),
    )
    .await;
    let (s, v) = upload(&h, "box", "1", archive(1, 100)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("image")
    );
}

/// The size limit is `cloud.max_artifact_bytes`; its own harness (SQLite).
#[tokio::test]
async fn artifact_over_the_size_limit_is_a_json_413() {
    let h = harness_with(false, |c| c.cloud.max_artifact_bytes = 1000)
        .await
        .expect("harness");
    create(&h, process("reader", "1")).await;
    let (s, v) = upload(&h, "reader", "1", archive(1, 1001)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(v["error"]["code"], "payload_too_large");
    let (s, v) = upload(&h, "reader", "1", archive(1, 1000)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    // Without a Content-Length (chunked), the limit holds while reading.
    create(&h, process("reader", "2")).await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(archive(1, 600)), Ok(vec![1; 600])];
    let req = Request::builder()
        .method(Method::PUT)
        .uri("/api/components/reader/versions/2/artifact")
        .header("authorization", format!("Bearer {}", h.admin))
        .header("content-type", "application/gzip")
        .header("transfer-encoding", "chunked")
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .expect("request");
    let (s, v) = h.send(req).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
}

async fn assignment_bumps_the_desired_state_and_carries_the_artifact(h: Harness) {
    let (node, secret) = h.joined_node("edge-1").await;
    create(&h, process("reader", "1.0.0")).await;
    create(
        &h,
        json!({"name": "box", "version": "2", "kind": "container", "image": "localhost/box:2"}),
    )
    .await;
    let data = archive(3, 300);
    upload(&h, "reader", "1.0.0", data.clone()).await;
    let before = desired_version(&h, &node).await;

    let (s, v) = assign(&h, &node, "reader", "1.0.0").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["version"], "1.0.0");
    assert_eq!(v["kind"], "process");
    let after = desired_version(&h, &node).await;
    assert_eq!(after, before + 1);
    // The same assignment again changes nothing.
    let (s, _) = assign(&h, &node, "reader", "1.0.0").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(desired_version(&h, &node).await, after);
    let (s, _) = assign(&h, &node, "box", "2").await;
    assert_eq!(s, StatusCode::CREATED);

    // The node's long poll returns the components, with the archive's
    // digest for the process one.
    let (s, d) = desired_as(&h, &node, &secret, 0, 0).await;
    assert_eq!(s, StatusCode::OK, "{d}");
    let state: verge_protocol::DesiredState = serde_json::from_value(d).expect("desired state");
    assert_eq!(state.version, after + 1);
    let names: Vec<&str> = state.components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["box", "reader"]);
    let reader = &state.components[1];
    assert_eq!(reader.version, "1.0.0");
    assert_eq!(reader.command, "bin/reader");
    assert_eq!(
        reader.artifact,
        Some(verge_protocol::ArtifactRef {
            sha256: hex::encode(Sha256::digest(&data)),
            size: 300,
        })
    );
    assert_eq!(state.components[0].artifact, None);
    assert_eq!(
        state.components[0].image.as_deref(),
        Some("localhost/box:2")
    );
    verge_protocol::component_start_order(&state.components).expect("a runnable set");
    // The admin view too.
    let (_, d) = h
        .call(Method::GET, &format!("/api/nodes/{node}/desired"), None)
        .await;
    assert_eq!(d["components"][1]["artifact"]["size"], 300);

    // A version's archive uploaded after it was assigned bumps the node.
    create(&h, process("reader", "1.1.0")).await;
    let (s, _) = assign(&h, &node, "reader", "1.1.0").await;
    assert_eq!(s, StatusCode::OK);
    let v1 = desired_version(&h, &node).await;
    upload(&h, "reader", "1.1.0", archive(4, 400)).await;
    assert_eq!(desired_version(&h, &node).await, v1 + 1);
    // An archive for a version no node runs bumps nobody.
    create(&h, process("reader", "9")).await;
    upload(&h, "reader", "9", archive(5, 50)).await;
    assert_eq!(desired_version(&h, &node).await, v1 + 1);

    // A waiting long poll is woken by an unassignment.
    let current = desired_version(&h, &node).await;
    let h2 = std::sync::Arc::new(h);
    let poll = {
        let h = h2.clone();
        let (node, secret) = (node.clone(), secret.clone());
        tokio::spawn(async move { desired_as(&h, &node, &secret, current, 20_000).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (s, _) = unassign(&h2, &node, "box").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, d) = tokio::time::timeout(std::time::Duration::from_secs(10), poll)
        .await
        .expect("the long poll returns")
        .expect("task");
    assert_eq!(s, StatusCode::OK);
    assert_eq!(d["components"].as_array().map(Vec::len), Some(1));
    // Unknown node, component or version: 404.
    for (n, c, v) in [
        ("nope", "reader", "1.0.0"),
        (node.as_str(), "nope", "1"),
        (node.as_str(), "reader", "7"),
    ] {
        let (s, body) = assign(&h2, n, c, v).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{n} {c} {v}: {body}");
    }
    // A component assigned somewhere cannot be deleted, nor its version.
    let (s, _) = h2
        .call(Method::DELETE, "/api/components/reader", None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, _) = h2
        .call(
            Method::DELETE,
            "/api/components/reader/versions/1.1.0",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    // Deleting the node takes its assignments with it.
    let (s, _) = h2
        .call(Method::DELETE, &format!("/api/nodes/{node}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, c) = h2.call(Method::GET, "/api/components/reader", None).await;
    assert_eq!((s, &c["nodes"]), (StatusCode::OK, &json!([])));
}

async fn assignments_must_form_a_runnable_set(h: Harness) {
    let (node, _) = h.joined_node("edge-1").await;
    create(&h, process("db", "1")).await;
    let mut app = process("app", "1");
    app["depends_on"] = json!(["db"]);
    create(&h, app).await;
    let mut db2 = process("db", "2");
    db2["depends_on"] = json!(["app"]);
    create(&h, db2).await;

    // `app` without `db` on the node: a missing dependency.
    let before = desired_version(&h, &node).await;
    let (s, v) = assign(&h, &node, "app", "1").await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("depends_on names `db`"), "{message}");
    assert_eq!(desired_version(&h, &node).await, before, "refused: no bump");
    let (_, list) = h
        .call(Method::GET, &format!("/api/nodes/{node}/components"), None)
        .await;
    assert_eq!(list, json!([]), "refused: nothing assigned");

    assert_eq!(assign(&h, &node, "db", "1").await.0, StatusCode::CREATED);
    assert_eq!(assign(&h, &node, "app", "1").await.0, StatusCode::CREATED);
    // db 2 depends on app, which depends on db: a cycle.
    let (s, v) = assign(&h, &node, "db", "2").await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("dependency cycle"), "{message}");
    // `db` is still at 1.
    let (_, list) = h
        .call(Method::GET, &format!("/api/nodes/{node}/components"), None)
        .await;
    let db = list
        .as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == "db"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(db["version"], "1");
    // Unassigning `db` would leave `app` without its dependency.
    let (s, v) = unassign(&h, &node, "db").await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, _) = unassign(&h, &node, "app").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = unassign(&h, &node, "db").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = unassign(&h, &node, "db").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

async fn artifact_download_is_only_for_nodes_that_run_the_version(h: Harness) {
    let (n1, s1) = h.joined_node("edge-1").await;
    let (n2, s2) = h.joined_node("edge-2").await;
    create(&h, process("reader", "1")).await;
    create(&h, process("reader", "2")).await;
    create(&h, process("bare", "1")).await;
    let data = archive(9, 2048);
    upload(&h, "reader", "1", data.clone()).await;
    upload(&h, "reader", "2", archive(2, 10)).await;
    assign(&h, &n1, "reader", "1").await;
    assign(&h, &n1, "bare", "1").await;
    let path =
        |name: &str, version: &str| verge_protocol::paths::component_artifact("", name, version);
    let as_node = |n: &str, s: &str| verge_protocol::node_bearer(n, s);

    let (s, headers, body) = raw(
        &h,
        Method::GET,
        &path("reader", "1"),
        &as_node(&n1, &s1),
        None,
        vec![],
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, data);
    assert_eq!(headers["content-type"], "application/gzip");
    let sha = hex::encode(Sha256::digest(&data));
    assert_eq!(headers["etag"], format!("\"{sha}\"").as_str());
    assert_eq!(headers["x-verge-sha256"], sha.as_str());

    // Another node, a version the node does not run, a version without
    // an archive: 404. Wrong or admin credentials: 401.
    for (p, cred) in [
        (path("reader", "1"), as_node(&n2, &s2)),
        (path("reader", "2"), as_node(&n1, &s1)),
        (path("bare", "1"), as_node(&n1, &s1)),
        (path("nope", "1"), as_node(&n1, &s1)),
    ] {
        let (s, _, body) = raw(&h, Method::GET, &p, &cred, None, vec![]).await;
        assert_eq!(
            s,
            StatusCode::NOT_FOUND,
            "{p}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    for cred in [
        as_node(&n1, &s2),
        format!("Bearer {}", h.admin),
        "Bearer nope".to_owned(),
    ] {
        let (s, _, _) = raw(&h, Method::GET, &path("reader", "1"), &cred, None, vec![]).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{cred}");
    }
}

async fn node_reports_of_components_appear_in_the_api(h: Harness) {
    let (node, secret) = h.joined_node("edge-1").await;
    create(&h, process("reader", "1")).await;
    assign(&h, &node, "reader", "1").await;
    let (_, list) = h
        .call(Method::GET, &format!("/api/nodes/{node}/components"), None)
        .await;
    assert_eq!(list[0]["status"], Value::Null, "no report yet");

    let report = json!({
        "applied_version": 1,
        "components": [
            {"name": "reader", "version": "1", "kind": "process", "state": "backoff",
             "healthy": false, "restarts": 3, "uptime_seconds": null,
             "last_error": "exited with status 3", "log_tail": ["starting", "boom"]},
            {"name": "local-tap", "version": "0.1", "kind": "process", "state": "healthy",
             "healthy": true, "restarts": 0},
        ],
    });
    let (s, v) = h.status_as(&node, &secret, report).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");

    let (s, list) = h
        .call(Method::GET, &format!("/api/nodes/{node}/components"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list[0]["name"], "reader");
    assert_eq!(list[0]["version"], "1");
    assert_eq!(list[0]["status"]["state"], "backoff");
    assert_eq!(list[0]["status"]["restarts"], 3);
    assert_eq!(list[0]["status"]["last_error"], "exited with status 3");
    assert_eq!(list[0]["status"]["log_tail"][1], "boom");
    // A component the node runs from its own config: reported, not assigned.
    assert_eq!(list[1]["name"], "local-tap");
    assert_eq!(list[1]["version"], Value::Null);
    assert_eq!(list[1]["status"]["state"], "healthy");

    let (_, c) = h.call(Method::GET, "/api/components/reader", None).await;
    assert_eq!(c["nodes"][0]["node_id"], node.as_str());
    assert_eq!(c["nodes"][0]["status"]["state"], "backoff");
    let (_, n) = h
        .call(Method::GET, &format!("/api/nodes/{node}"), None)
        .await;
    assert_eq!(n["report"]["components"][0]["name"], "reader");
    let (s, _) = h
        .call(Method::GET, "/api/nodes/nope/components", None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

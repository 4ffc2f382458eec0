//! Bad input, credentials in the wrong place and concurrent load: every
//! error is JSON with its status, nothing changes on a refused request, and
//! concurrent requests on the one SQLite connection all complete. Each test
//! runs on SQLite, and on PostgreSQL when `VERGE_TEST_POSTGRES_URL` is set.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::Engine as _;
use common::{DEMO_WAT, Harness, desired_as, harness_on, harness_with};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

both!(
    concurrent_requests_with_a_long_poll_all_complete,
    two_first_uploads_of_one_function_at_once_create_then_update,
    credentials_are_not_interchangeable,
    bad_query_values_and_bodies_are_json_errors_and_change_nothing,
    oversized_function_upload_is_a_json_413,
    path_segment_not_utf8_is_a_json_400_on_every_route,
    messages_older_than_50_000_rows_of_other_topics_are_found,
    command_to_a_node_not_online_is_queued,
);

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn assert_error(s: StatusCode, v: &Value, want: StatusCode, code: &str, what: &str) {
    assert_eq!(s, want, "{what}: {v}");
    assert_eq!(v["error"]["code"], code, "{what}: {v}");
    assert!(v["error"]["message"].is_string(), "{what}: {v}");
}

/// SQLite runs on one pooled connection: a handler that held it across
/// slow work (argon2, a function compile, a long-poll wait) would stall
/// every other request until the acquire timeout. Many writers at once
/// with a long-poll in progress must all succeed.
async fn concurrent_requests_with_a_long_poll_all_complete(h: Harness) {
    let h = Arc::new(h);
    let (node, secret) = h.joined_node("edge-c").await;
    let (_, d) = desired_as(&h, &node, &secret, 0, 0).await;
    let version = d["version"].as_i64().unwrap_or_default();
    let poll = {
        let (h, node, secret) = (h.clone(), node.clone(), secret.clone());
        tokio::spawn(async move { desired_as(&h, &node, &secret, version, 30_000).await })
    };
    // Other nodes long-polling with nothing to change keep waiting
    // throughout, holding no connection.
    let (idle, idle_secret) = h.joined_node("edge-idle").await;
    let (_, d) = desired_as(&h, &idle, &idle_secret, 0, 0).await;
    let idle_version = d["version"].as_i64().unwrap_or_default();
    let mut idle_polls = Vec::new();
    for _ in 0..4 {
        let (h, idle, s) = (h.clone(), idle.clone(), idle_secret.clone());
        idle_polls.push(tokio::spawn(async move {
            desired_as(&h, &idle, &s, idle_version, 2_000).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (h, node) = (h.clone(), node.clone());
        tasks.spawn(async move {
            let (s, v) = h
                .call(
                    Method::POST,
                    "/api/devices",
                    Some(json!({"name": format!("d{i}"), "node_id": node})),
                )
                .await;
            (StatusCode::CREATED, s, format!("device d{i}: {v}"))
        });
    }
    for i in 0..20 {
        let (h, node, secret) = (h.clone(), node.clone(), secret.clone());
        tasks.spawn(async move {
            let (s, v) = h
                .status_as(
                    &node,
                    &secret,
                    json!({"applied_version": version, "cpu_percent": f64::from(i)}),
                )
                .await;
            (StatusCode::NO_CONTENT, s, format!("heartbeat {i}: {v}"))
        });
    }
    for i in 0..5 {
        let h = h.clone();
        tasks.spawn(async move {
            let (s, v) = h
                .call(
                    Method::POST,
                    "/api/nodes",
                    Some(json!({"name": format!("n{i}")})),
                )
                .await;
            (StatusCode::CREATED, s, format!("node n{i}: {v}"))
        });
    }
    for i in 0..3 {
        let h = h.clone();
        tasks.spawn(async move {
            let (s, v) = h
                .call(
                    Method::PUT,
                    &format!("/api/functions/f{i}"),
                    Some(json!({"spec": {"runtime": "wasm"}, "module_base64": b64(DEMO_WAT.as_bytes())})),
                )
                .await;
            (StatusCode::CREATED, s, format!("function f{i}: {v}"))
        });
    }
    let done = timeout(Duration::from_secs(120), async {
        let mut n = 0;
        while let Some(r) = tasks.join_next().await {
            let (want, got, what) = r.expect("task");
            assert_eq!(got, want, "{what}");
            n += 1;
        }
        n
    })
    .await
    .expect("all requests answered (none stuck behind the one connection)");
    assert_eq!(done, 48);
    let (s, d) = timeout(Duration::from_secs(60), poll)
        .await
        .expect("long-poll answered")
        .expect("poll task");
    assert_eq!(s, StatusCode::OK);
    assert!(d["version"].as_i64().unwrap_or_default() > version);
    for p in idle_polls {
        let (s, _) = timeout(Duration::from_secs(60), p)
            .await
            .expect("idle long-poll answered")
            .expect("poll task");
        assert_eq!(s, StatusCode::NO_CONTENT);
    }
    let (_, devices) = h
        .call(Method::GET, &format!("/api/devices?node_id={node}"), None)
        .await;
    assert_eq!(devices.as_array().map(Vec::len), Some(20));
    let (_, m) = h
        .call(Method::GET, &format!("/api/nodes/{node}/metrics"), None)
        .await;
    assert_eq!(m.as_array().map(Vec::len), Some(20));
}

/// Regression (PostgreSQL): two first uploads of one function name at
/// once both read "no such function" and both inserted; the second failed
/// on the primary key with a 500. Now one creates and the other updates.
async fn two_first_uploads_of_one_function_at_once_create_then_update(h: Harness) {
    let h = Arc::new(h);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let h = h.clone();
        tasks.spawn(async move {
            h.call(
                Method::PUT,
                "/api/functions/same",
                Some(
                    json!({"spec": {"runtime": "wasm"}, "module_base64": b64(DEMO_WAT.as_bytes())}),
                ),
            )
            .await
        });
    }
    let mut statuses = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (s, v) = r.expect("task");
        assert!(s == StatusCode::CREATED || s == StatusCode::OK, "{s}: {v}");
        statuses.push(s);
    }
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::OK, StatusCode::CREATED]
    );
    let (_, same) = h.call(Method::GET, "/api/functions/same", None).await;
    assert_eq!(same["version"], 3, "{same}");
}

async fn credentials_are_not_interchangeable(h: Harness) {
    // Every /api route but the document and join wants a token.
    let doc = verge_cloud::openapi();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        if !path.starts_with("/api/") || path == "/api/openapi.json" || path == "/api/agent/join" {
            continue;
        }
        let concrete = path.replace('{', "x").replace('}', "");
        for method in ops.as_object().expect("ops").keys() {
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let (s, v) = h.call_as(m, &concrete, None, Some(json!({}))).await;
            assert_error(
                s,
                &v,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                &format!("{method} {path}"),
            );
        }
    }
    let (node, secret) = h.joined_node("edge-a").await;
    let node_bearer = verge_protocol::node_bearer(&node, &secret);
    let admin = format!("Bearer {}", h.admin);
    // Node credentials are no API token.
    let (s, v) = h
        .call_as(Method::GET, "/api/nodes", Some(&node_bearer), None)
        .await;
    assert_error(
        s,
        &v,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "node as api",
    );
    // An API token is no node credential, in any shape.
    for bad in [
        admin.clone(),
        format!("Bearer {node}.{}", h.admin),
        format!("Bearer admin.{}", h.admin),
        format!("Bearer {node}."),
        format!("Bearer .{secret}"),
        format!("Basic {secret}"),
        "Bearer ".to_owned(),
    ] {
        let (s, v) = h
            .call_as(Method::GET, "/api/agent/desired", Some(&bad), None)
            .await;
        assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthorized", &bad);
        let (s, v) = h
            .call_as(
                Method::POST,
                "/api/agent/status",
                Some(&bad),
                Some(json!({"applied_version": 0})),
            )
            .await;
        assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthorized", &bad);
    }
    let (s, _) = desired_as(&h, &node, &secret, 0, 0).await;
    assert_eq!(s, StatusCode::OK);

    // An expired join token is refused, and spends nothing.
    let (s, v) = h
        .call(Method::POST, "/api/nodes", Some(json!({"name": "edge-e"})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let token = v["join_token"].as_str().unwrap_or_default().to_owned();
    let pool = sqlx::AnyPool::connect(&h.db_url).await.expect("db");
    sqlx::query("UPDATE nodes SET join_expires_ms = 1 WHERE id = 'edge-e'")
        .execute(&pool)
        .await
        .expect("expire");
    pool.close().await;
    let (s, v) = h
        .call_as(
            Method::POST,
            "/api/agent/join",
            None,
            Some(json!({"token": token})),
        )
        .await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthorized", "expired");
    let (_, n) = h.call(Method::GET, "/api/nodes/edge-e", None).await;
    assert_eq!(n["status"], "pending");

    // A new join token: the old credentials work until it is used, then
    // only the new ones do.
    let (s, v) = h
        .call(Method::POST, &format!("/api/nodes/{node}/join-token"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let token = v["join_token"].as_str().unwrap_or_default().to_owned();
    let (s, _) = desired_as(&h, &node, &secret, 0, 0).await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = h
        .call_as(
            Method::POST,
            "/api/agent/join",
            None,
            Some(json!({"token": token})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let new_secret = v["secret"].as_str().unwrap_or_default().to_owned();
    let (s, _) = desired_as(&h, &node, &secret, 0, 0).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = desired_as(&h, &node, &new_secret, 0, 0).await;
    assert_eq!(s, StatusCode::OK);

    // A deleted node's credentials stop working.
    let (s, _) = h
        .call(Method::DELETE, &format!("/api/nodes/{node}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = desired_as(&h, &node, &new_secret, 0, 0).await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthorized", "deleted");
    let (s, v) = h
        .status_as(&node, &new_secret, json!({"applied_version": 0}))
        .await;
    assert_error(s, &v, StatusCode::UNAUTHORIZED, "unauthorized", "deleted");
}

async fn bad_query_values_and_bodies_are_json_errors_and_change_nothing(h: Harness) {
    let (node, secret) = h.joined_node("edge-q").await;
    let bad = StatusCode::BAD_REQUEST;
    for q in [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=99999999999999999999999",
        "after_id=x",
        "topic=a/%23/b",
        "surprise=1",
    ] {
        let (s, v) = h
            .call(
                Method::GET,
                &format!("/api/nodes/{node}/messages?{q}"),
                None,
            )
            .await;
        assert_error(s, &v, bad, "invalid_request", q);
    }
    for q in ["limit=0", "limit=-7", "limit=abc"] {
        let (s, v) = h
            .call(Method::GET, &format!("/api/devices/d/messages?{q}"), None)
            .await;
        // No such device, or a bad value: either way a JSON error.
        assert!(s == bad || s == StatusCode::NOT_FOUND, "{q}: {s} {v}");
        assert!(v["error"]["code"].is_string(), "{q}: {v}");
    }
    let (s, v) = h
        .call(
            Method::GET,
            &format!("/api/nodes/{node}/messages?after_id=-5&limit=1000"),
            None,
        )
        .await;
    assert_eq!((s, v), (StatusCode::OK, json!([])));
    let (s, _) = h
        .call(
            Method::GET,
            &format!("/api/nodes/{node}/metrics?since_ms=-999999999999999"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let cred = verge_protocol::node_bearer(&node, &secret);
    for q in ["wait_ms=-1", "version=abc", "wait_ms=1e3"] {
        let (s, v) = h
            .call_as(
                Method::GET,
                &format!("/api/agent/desired?{q}"),
                Some(&cred),
                None,
            )
            .await;
        assert_error(s, &v, bad, "invalid_request", q);
    }
    // A huge wait is capped, and a different version answers at once.
    let (s, _) = timeout(
        Duration::from_secs(10),
        h.call_as(
            Method::GET,
            "/api/agent/desired?version=-1&wait_ms=18446744073709551615",
            Some(&cred),
            None,
        ),
    )
    .await
    .expect("answered at once");
    assert_eq!(s, StatusCode::OK);

    // Bodies of the wrong shape.
    for body in [
        json!({}),
        json!([]),
        json!([{"name": "x"}]),
        json!("edge"),
        json!(null),
        json!(42),
        json!({"name": 7}),
        json!({"name": "节点"}),
        json!({"name": "😀"}),
        json!({"name": "a/b"}),
        json!({"name": ""}),
        json!({"name": "x".repeat(65)}),
        json!({"name": "x".repeat(1 << 20)}),
    ] {
        let (s, v) = h.call(Method::POST, "/api/nodes", Some(body.clone())).await;
        let what: String = body.to_string().chars().take(60).collect();
        assert_error(s, &v, bad, "invalid_request", &what);
        assert!(v.to_string().len() < 1000, "{what}: error echoes the input");
    }
    for raw in ["", "{", "\u{0}", "{\"name\": \"a\"} trailing"] {
        let req = Request::post("/api/nodes")
            .header("authorization", format!("Bearer {}", h.admin))
            .header("content-type", "application/json")
            .body(Body::from(raw))
            .expect("request");
        let (s, v) = h.send(req).await;
        assert_error(s, &v, bad, "invalid_request", raw);
    }
    let req = Request::post("/api/nodes")
        .header("authorization", format!("Bearer {}", h.admin))
        .body(Body::from(r#"{"name": "no-content-type"}"#))
        .expect("request");
    let (s, v) = h.send(req).await;
    assert_eq!(s.as_u16() / 100, 4, "{v}");
    assert!(v["error"]["code"].is_string(), "{v}");
    let (s, v) = h
        .call(
            Method::PATCH,
            &format!("/api/nodes/{node}"),
            Some(json!({"config": [1, 2]})),
        )
        .await;
    assert_error(s, &v, bad, "invalid_request", "config array");
    let (s, v) = h
        .call(
            Method::POST,
            "/api/devices",
            Some(json!({"name": "ok", "node_id": "节点"})),
        )
        .await;
    assert_error(s, &v, bad, "invalid_request", "unicode node_id");
    let (s, v) = h
        .call(
            Method::POST,
            "/api/devices/nope/commands/re%20boot",
            Some(json!({})),
        )
        .await;
    assert_error(s, &v, bad, "invalid_request", "command name");

    // A command too large for one MQTT packet to the node.
    let (s, v) = h
        .call(
            Method::POST,
            "/api/devices",
            Some(json!({"name": "cmd", "node_id": node})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = h
        .call(
            Method::POST,
            "/api/devices/cmd/commands/flash",
            Some(json!({"image": "x".repeat(2 << 20)})),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "command",
    );
    let (s, _) = h.call(Method::DELETE, "/api/devices/cmd", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    // Rules: huge and deeply nested SQL, actions of the wrong shape.
    let long = format!(
        "SELECT {} FROM \"t\"",
        (0..50_000)
            .map(|i| format!("a{i}"))
            .collect::<Vec<_>>()
            .join(" + ")
    );
    let deep = format!(
        "SELECT {}1{} FROM \"t\"",
        "(".repeat(100_000),
        ")".repeat(100_000)
    );
    for sql in [
        long,
        deep,
        "SELECT".to_owned(),
        String::new(),
        "\u{0}".to_owned(),
    ] {
        let (s, v) = h
            .call(
                Method::POST,
                "/api/rules",
                Some(json!({"id": "r", "node_id": node, "sql": sql})),
            )
            .await;
        let what: String = sql.chars().take(40).collect();
        assert_eq!(s, bad, "{what}: {v}");
        assert!(v["error"]["code"].is_string(), "{what}: {v}");
        let (s, v) = h
            .call(
                Method::POST,
                "/api/rules/test",
                Some(json!({"sql": sql, "samples": []})),
            )
            .await;
        assert_eq!(s, bad, "test {what}: {v}");
        assert!(v["error"]["code"].is_string(), "test {what}: {v}");
    }
    for actions in [
        json!({}),
        json!("x"),
        json!([1]),
        json!([{"type": "function"}]),
    ] {
        let (s, v) = h
            .call(
                Method::POST,
                "/api/rules",
                Some(json!({"id": "r", "node_id": node, "sql": "SELECT * FROM \"t\"", "actions": actions})),
            )
            .await;
        assert_eq!(s, bad, "{actions}: {v}");
        assert!(v["error"]["code"].is_string(), "{actions}: {v}");
    }
    // Functions: bad names, specs and modules.
    for (path, body, code) in [
        (
            "/api/functions/b%20ad",
            json!({"spec": {"runtime": "wasm"}, "module_base64": b64(DEMO_WAT.as_bytes())}),
            "invalid_request",
        ),
        (
            "/api/functions/f",
            json!({"spec": {"runtime": "wasm"}, "module_base64": "***"}),
            "invalid_request",
        ),
        (
            "/api/functions/f",
            json!({"spec": [], "module_base64": b64(DEMO_WAT.as_bytes())}),
            "invalid_function",
        ),
        (
            "/api/functions/f",
            json!({"spec": {"runtime": "process", "command": ["sh"]}, "module_base64": b64(b"x")}),
            "invalid_function",
        ),
        (
            "/api/functions/f",
            json!({"spec": {"runtime": "wasm"}, "module_base64": ""}),
            "invalid_function",
        ),
        (
            "/api/functions/f",
            json!({"spec": {"runtime": "wasm"}, "module_base64": b64(&[0, 97, 115, 109, 1, 0, 0, 0, 0xff])}),
            "invalid_function",
        ),
    ] {
        let (s, v) = h.call(Method::PUT, path, Some(body)).await;
        assert_error(s, &v, bad, code, path);
    }

    // Nothing of the above was stored, and the node is where it was.
    let (_, nodes) = h.call(Method::GET, "/api/nodes", None).await;
    assert_eq!(nodes.as_array().map(Vec::len), Some(1), "{nodes}");
    assert_eq!(nodes[0]["config"], json!({}));
    // (3 = the device made and deleted above for the command.)
    assert_eq!(nodes[0]["desired_version"], 3);
    for path in ["/api/devices", "/api/rules", "/api/functions"] {
        let (_, list) = h.call(Method::GET, path, None).await;
        assert_eq!(list, json!([]), "{path}");
    }
}

/// The body limit answers in JSON; through a real socket it answers
/// without waiting for the rest of the body.
async fn oversized_function_upload_is_a_json_413(h: Harness) {
    let module = vec![0u8; 20 << 20];
    let body = json!({"spec": {"runtime": "wasm"}, "module_base64": b64(&module)});
    let (s, v) = h
        .call(Method::PUT, "/api/functions/big", Some(body.clone()))
        .await;
    assert_error(
        s,
        &v,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "20 MiB module",
    );
    let (s, _) = h.call(Method::GET, "/api/functions/big", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = http.local_addr().expect("addr");
    let app = h.cloud.router();
    let server = tokio::spawn(async move { axum::serve(http, app).await });
    let text = body.to_string().into_bytes();
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "PUT /api/functions/big HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        h.admin,
        text.len()
    );
    let (mut rd, mut wr) = conn.split();
    let answer = timeout(Duration::from_secs(60), async {
        let send = async {
            // The server may answer and close before all of it is read.
            let _ = wr.write_all(head.as_bytes()).await;
            let _ = wr.write_all(&text).await;
        };
        let mut got = Vec::new();
        let read = async {
            let mut buf = [0u8; 4096];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        if got.windows(4).any(|w| w == b"\r\n\r\n")
                            && String::from_utf8_lossy(&got).contains("payload_too_large")
                        {
                            break;
                        }
                    }
                }
            }
        };
        tokio::join!(send, read);
        got
    })
    .await
    .expect("answered, not hung");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("application/json"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    server.abort();
}

/// Under the body limit but over `max_upload_bytes`: still a JSON 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn module_over_max_upload_bytes_is_a_json_413() {
    let h = harness_with(false, |c| c.cloud.max_upload_bytes = 1000)
        .await
        .expect("harness");
    let module = vec![b' '; 2000];
    let (s, v) = h
        .call(
            Method::PUT,
            "/api/functions/big",
            Some(json!({"spec": {"runtime": "wasm"}, "module_base64": b64(&module)})),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "module",
    );
}

/// Regression: the body limit was computed as `max_upload_bytes / 3 * 4 +
/// 1 MiB`, which overflowed (a panic in debug builds, a tiny limit in
/// release) for a large setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_max_upload_bytes_does_not_overflow() {
    let h = harness_with(false, |c| c.cloud.max_upload_bytes = usize::MAX)
        .await
        .expect("harness");
    let (s, v) = h
        .call(Method::POST, "/api/nodes", Some(json!({"name": "n"})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

/// Regression: `/api/nodes/%FF` answered 400 text/plain "Invalid URL:
/// Invalid UTF-8 in `id`" (axum's own `Path` rejection).
async fn path_segment_not_utf8_is_a_json_400_on_every_route(h: Harness) {
    let doc = verge_cloud::openapi();
    let mut n = 0;
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        let params: Vec<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        for bad in &params {
            let concrete: String = path
                .split('/')
                .map(
                    |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                        Some(p) if p == *bad => "%FF",
                        Some(_) => "x",
                        None => seg,
                    },
                )
                .collect::<Vec<_>>()
                .join("/");
            for (method, op) in ops.as_object().expect("ops") {
                let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
                let body = op.get("requestBody").map(|_| json!({}));
                let (s, v) = h.call(m, &concrete, body).await;
                let what = format!("{method} {concrete}");
                assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_request", &what);
                let message = v["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains(&format!("`{bad}`")), "{what}: {v}");
                assert!(
                    op["responses"]["400"].is_object(),
                    "{what}: 400 not documented"
                );
                n += 1;
            }
        }
    }
    assert!(n >= 20, "{n}");
    let (s, v) = h.call(Method::GET, "/api/nodes/%FF", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(
        v["error"]["message"], "path segment `id` is not valid UTF-8",
        "{v}"
    );
}

/// Regression: the topic filter was checked in Rust over the newest 50
/// pages of 1,000 rows only, so a device whose messages were older than
/// the node's last 50,000 rows had none. `_` in the id also checks that the
/// prefix is escaped in `LIKE` (unescaped, `d_1` would match `dx1`).
async fn messages_older_than_50_000_rows_of_other_topics_are_found(h: Harness) {
    let (s, v) = h
        .call(
            Method::POST,
            "/api/nodes",
            Some(json!({"name": "edge-many"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = h
        .call(
            Method::POST,
            "/api/devices",
            Some(json!({"name": "d_1", "node_id": "edge-many"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let pool = sqlx::AnyPool::connect(&h.db_url).await.expect("db");
    sqlx::query(
        "INSERT INTO messages (node_id, topic, payload, received_ms, queued_ms) VALUES ($1, $2, $3, $4, $4)",
    )
    .bind("edge-many")
    .bind("devices/d_1/telemetry")
    .bind(br#"{"t":1}"#.to_vec())
    .bind(1_i64)
    .execute(&pool)
    .await
    .expect("the one row");
    sqlx::query(
        "INSERT INTO messages (node_id, topic, payload, received_ms, queued_ms) \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60000) \
         SELECT $1, $2, $3, i + 1, i + 1 FROM n",
    )
    .bind("edge-many")
    .bind("devices/dx1/telemetry")
    .bind(br#"{"t":2}"#.to_vec())
    .execute(&pool)
    .await
    .expect("60,000 rows");
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM messages")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(count, 60_001);
    pool.close().await;

    for path in [
        "/api/devices/d_1/messages",
        "/api/devices/d_1/messages?after_id=0",
        "/api/nodes/edge-many/messages?topic=devices/d_1/%23",
        "/api/nodes/edge-many/messages?topic=devices/d_1/%2B",
        "/api/nodes/edge-many/messages?topic=devices/d_1/telemetry",
        "/api/nodes/edge-many/messages?topic=devices/d_1/telemetry&after_id=0",
    ] {
        let (s, v) = h.call(Method::GET, path, None).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
        assert_eq!(v.as_array().map(Vec::len), Some(1), "{path}: {v}");
        assert_eq!(v[0]["topic"], "devices/d_1/telemetry", "{path}");
        assert_eq!(v[0]["payload"]["t"], 1, "{path}");
    }
    // The other topic is still all there, newest last.
    let (s, v) = h
        .call(
            Method::GET,
            "/api/nodes/edge-many/messages?topic=devices/dx1/%23&limit=2",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v[1]["received_ms"], 60_001, "{v}");
}

async fn command(h: &Harness, device: &str) -> (StatusCode, Value) {
    let path = format!("/api/devices/{device}/commands/reboot");
    h.call(Method::POST, &path, Some(json!({"delay": 1}))).await
}

/// A command to a node without a session (never joined, or no heartbeat
/// for `offline_after`) was first answered 202 and dropped by the cloud's
/// broker, then refused with 409 `node_offline`; now it is queued until
/// the node is online or it expires (issue 20).
async fn command_to_a_node_not_online_is_queued(h: Harness) {
    let (s, v) = h
        .call(
            Method::POST,
            "/api/nodes",
            Some(json!({"name": "edge-new"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (node, _) = h.joined_node("edge-cmd").await;
    for (name, on) in [("dev-new", "edge-new"), ("dev-cmd", node.as_str())] {
        let (s, v) = h
            .call(
                Method::POST,
                "/api/devices",
                Some(json!({"name": name, "node_id": on})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    for device in ["dev-new", "dev-cmd"] {
        let (s, v) = command(&h, device).await;
        assert_eq!(s, StatusCode::ACCEPTED, "{device}: {v}");
        assert_eq!(v["command"]["status"], "queued", "{v}");
        assert_eq!(v["command"]["device_id"], device, "{v}");
        assert_eq!(v["command"]["payload"], json!({"delay": 1}), "{v}");
        assert_eq!(v["command"]["attempts"], 0, "{v}");
        let id = v["command"]["id"].as_str().expect("id").to_owned();
        let (s, one) = h
            .call(Method::GET, &format!("/api/commands/{id}"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{one}");
        assert_eq!(one["status"], "queued");
    }
    // Bad `ttl`s are refused; a good one sets the expiry.
    for ttl in ["0s", "8d", "soon"] {
        let path = format!("/api/devices/dev-cmd/commands/reboot?ttl={ttl}");
        let (s, v) = h.call(Method::POST, &path, Some(json!({}))).await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_request", ttl);
    }
    let (s, v) = h
        .call(
            Method::POST,
            "/api/devices/dev-cmd/commands/reboot?ttl=90s",
            Some(json!(null)),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let c = &v["command"];
    assert_eq!(
        c["expires_ms"].as_i64().expect("expires") - c["created_ms"].as_i64().expect("created"),
        90_000
    );
    let (s, v) = command(&h, "nope").await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found", "no device");
}

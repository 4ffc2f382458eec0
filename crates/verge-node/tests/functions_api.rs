//! Edge functions through the node's `/api/functions` routes, driven
//! through the router (no socket): deploy by path, by `module_base64` and by
//! raw upload, versions, list/get, invoke in every payload form, errors as
//! JSON with their statuses, delete, state and `/metrics`, the token rule
//! for process functions, and a process function running the Python
//! example.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/functions.rs"]
mod support;

use support::*;

#[tokio::test]
async fn deploy_by_path_makes_versions_only_when_something_changed() {
    let n = node().await;
    let s = &n.state;
    let spec = json!({"name": "echo", "module_base64": wat_b64("echo"), "description": "as is"});
    let (st, v) = call(s, "POST", "/api/functions", Some(spec.clone())).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["name"], "echo");
    assert_eq!(v["version"], 1);
    assert_eq!(v["runtime"], "wasm");
    assert_eq!(v["metrics"]["invocations"], 0);
    assert_eq!(v["spec"]["description"], "as is");
    assert_eq!(v["spec"]["config"], json!({}));
    assert_eq!(
        v["size"].as_u64(),
        Some(std::fs::metadata(wat("echo")).unwrap().len())
    );
    assert_eq!(v["sha256"].as_str().map(str::len), Some(64), "{v}");

    // The same again: nothing new.
    let (st, v) = call(s, "POST", "/api/functions", Some(spec.clone())).await;
    assert_eq!(
        (st, v["version"].as_u64()),
        (StatusCode::OK, Some(1)),
        "{v}"
    );

    // A changed config is a new version.
    let mut changed = spec.clone();
    changed["config"] = json!({"above": 30});
    let (st, v) = call(s, "POST", "/api/functions", Some(changed.clone())).await;
    assert_eq!(
        (st, v["version"].as_u64()),
        (StatusCode::OK, Some(2)),
        "{v}"
    );
    assert_eq!(v["spec"]["config"], json!({"above": 30}));

    // PUT with the name from the path: the same spec, the same version.
    let mut body = changed.clone();
    body.as_object_mut().unwrap().remove("name");
    let (st, v) = call(s, "PUT", "/api/functions/echo", Some(body)).await;
    assert_eq!(
        (st, v["version"].as_u64()),
        (StatusCode::OK, Some(2)),
        "{v}"
    );
    // PUT a new name: created.
    let (st, v) = call(
        s,
        "PUT",
        "/api/functions/echo2",
        Some(json!({"module_base64": wat_b64("echo")})),
    )
    .await;
    assert_eq!(
        (st, v["name"].as_str()),
        (StatusCode::CREATED, Some("echo2")),
        "{v}"
    );
    // A body naming the path's function is fine; naming another is not.
    let (st, v) = call(s, "PUT", "/api/functions/echo", Some(changed)).await;
    assert_eq!(
        (st, v["version"].as_u64()),
        (StatusCode::OK, Some(2)),
        "{v}"
    );
    let got = call(
        s,
        "PUT",
        "/api/functions/echo",
        Some(json!({"name": "other", "module_base64": wat_b64("echo")})),
    )
    .await;
    let msg = error(&got, StatusCode::BAD_REQUEST, "invalid_function");
    assert!(msg.contains("other"), "{msg}");

    let (st, v) = call(s, "GET", "/api/functions", None).await;
    assert_eq!(st, StatusCode::OK);
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "echo2"]);
    assert_eq!(v[0]["version"], 2);

    let (st, v) = call(s, "GET", "/api/functions/echo", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        (
            v["name"].as_str(),
            v["version"].as_u64(),
            v["runtime"].as_str()
        ),
        (Some("echo"), Some(2), Some("wasm"))
    );
    for field in ["deployed_ms", "memory_bytes", "state_keys", "state_bytes"] {
        assert!(v[field].is_u64(), "{field}: {v}");
    }
    for field in ["invocations", "errors", "timeouts", "outputs", "in_flight"] {
        assert_eq!(v["metrics"][field], 0, "{field}: {v}");
    }
    assert_eq!(v["metrics"]["last_error"], Value::Null);

    let (st, v) = call(s, "DELETE", "/api/functions/echo", None).await;
    assert_eq!((st, v), (StatusCode::NO_CONTENT, Value::Null));
    error(
        &call(s, "GET", "/api/functions/echo", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    error(
        &call(s, "DELETE", "/api/functions/echo", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let got = invoke(s, "echo", json!({"payload": "x"})).await;
    error(&got, StatusCode::NOT_FOUND, "not_found");
    // Deployed again after a delete, it starts over at version 1.
    let v = deploy_wasm(s, "echo", "echo", json!({})).await;
    assert_eq!(v["version"], 1);
}

#[tokio::test]
async fn modules_uploaded_as_base64_and_as_raw_bodies() {
    let n = node().await;
    let s = &n.state;
    let echo = std::fs::read(wat("echo")).unwrap();
    let (st, v) = call(
        s,
        "POST",
        "/api/functions",
        Some(json!({"name": "b64", "module_base64": B64.encode(&echo)})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["size"].as_u64(), Some(echo.len() as u64));
    assert!(v["spec"].get("path").is_none(), "{v}");
    assert!(v["spec"].get("module_base64").is_none(), "{v}");
    let (st, v) = invoke(s, "b64", json!({"payload": "hi"})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["messages"][0]["payload"], "hi");

    // A configured function gets a new module by raw upload and keeps its
    // spec (config included).
    deploy_wasm(s, "up", "config", json!({"config": {"above": 30}})).await;
    let (st, v) = invoke(s, "up", json!({})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["messages"][0]["topic"], "cfg");
    assert_eq!(
        v["messages"][0]["payload"],
        json!({"above": 30}).to_string()
    );
    let (st, text) = raw(
        s,
        "PUT",
        "/api/functions/up",
        Some("application/wasm"),
        echo.clone(),
    )
    .await;
    let v = parse("PUT", "up", &text);
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["version"], 2);
    assert_eq!(v["spec"]["config"], json!({"above": 30}));
    assert!(v["spec"].get("path").is_none(), "{v}");
    let (st, v) = invoke(s, "up", json!({"topic": "t/1", "payload": "again"})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        (
            v["messages"][0]["topic"].as_str(),
            v["messages"][0]["payload"].as_str()
        ),
        (Some("t/1"), Some("again"))
    );
    // The same bytes again: the same version.
    let (st, text) = raw(
        s,
        "PUT",
        "/api/functions/up",
        Some("application/wasm"),
        echo,
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{text}");
    assert_eq!(parse("PUT", "up", &text)["version"], 2);

    // A real binary module, uploaded raw to a new name.
    let bin = binary_module();
    let (st, text) = raw(
        s,
        "PUT",
        "/api/functions/bin",
        Some("application/wasm"),
        bin.clone(),
    )
    .await;
    let v = parse("PUT", "bin", &text);
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(
        (v["version"].as_u64(), v["size"].as_u64()),
        (Some(1), Some(bin.len() as u64))
    );
    let (st, v) = invoke(s, "bin", json!({"payload": "anything"})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["messages"], json!([]));
    // …and as base64 in JSON, replacing the echo.
    let (st, v) = call(
        s,
        "POST",
        "/api/functions",
        Some(json!({"name": "b64", "module_base64": B64.encode(&bin)})),
    )
    .await;
    assert_eq!(
        (st, v["version"].as_u64()),
        (StatusCode::OK, Some(2)),
        "{v}"
    );
    let (_, v) = invoke(s, "b64", json!({"payload": "hi"})).await;
    assert_eq!(v["messages"], json!([]));

    // Garbage is not a module: refused, nothing changes.
    let (st, text) = raw(
        s,
        "PUT",
        "/api/functions/up",
        Some("application/octet-stream"),
        b"\0asm garbage".to_vec(),
    )
    .await;
    let got = (st, parse("PUT", "up", &text));
    error(&got, StatusCode::UNPROCESSABLE_ENTITY, "unusable_function");
    // Bodies past axum's default 2 MB limit reach the registry.
    let (st, text) = raw(
        s,
        "PUT",
        "/api/functions/up",
        Some("application/wasm"),
        vec![0; 3 << 20],
    )
    .await;
    let got = (st, parse("PUT", "up", &text));
    let msg = error(&got, StatusCode::UNPROCESSABLE_ENTITY, "unusable_function");
    // Regression: the parse error quoted the whole upload (18 MB of JSON).
    assert!(msg.len() < 5000, "{} bytes", msg.len());
    let got = call(
        s,
        "POST",
        "/api/functions",
        Some(json!({"name": "up", "module_base64": B64.encode(vec![0; 3 << 20])})),
    )
    .await;
    let msg = error(&got, StatusCode::UNPROCESSABLE_ENTITY, "unusable_function");
    assert!(msg.ends_with("… (cut)"), "{msg}");
    let (_, v) = call(s, "GET", "/api/functions/up", None).await;
    assert_eq!(v["version"], 2);
    // A bad name in the path.
    let (st, text) = raw(
        s,
        "PUT",
        "/api/functions/bad.name",
        Some("application/wasm"),
        binary_module(),
    )
    .await;
    error(
        &(st, parse("PUT", "bad.name", &text)),
        StatusCode::BAD_REQUEST,
        "invalid_function",
    );
}

#[tokio::test]
async fn invoke_takes_every_payload_form_and_can_publish() {
    let n = node().await;
    let s = &n.state;
    deploy_wasm(s, "echo", "echo", json!({})).await;

    let (st, v) = invoke(s, "echo", json!({"payload": "hello"})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["published"], false);
    assert!(v["duration_us"].is_u64(), "{v}");
    assert_eq!(
        v["messages"],
        json!([{"topic": "api/invoke", "payload": "hello", "user_properties": [], "qos": 1, "retain": false}])
    );

    // Any other JSON value goes in as its JSON text.
    let (st, v) = invoke(
        s,
        "echo",
        json!({"topic": "devices/d1/telemetry", "payload": {"temperature": 21.5}}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let m = &v["messages"][0];
    assert_eq!(m["topic"], "devices/d1/telemetry");
    let doc: Value = serde_json::from_str(m["payload"].as_str().unwrap()).unwrap();
    assert_eq!(doc, json!({"temperature": 21.5}));
    let (_, v) = invoke(s, "echo", json!({"payload": 42})).await;
    assert_eq!(v["messages"][0]["payload"], "42");

    // Binary in, binary out; content type and properties pass through.
    let (st, v) = invoke(
        s,
        "echo",
        json!({
            "payload_base64": B64.encode([0xff, 0, 0xfe]),
            "content_type": "application/octet-stream",
            "user_properties": [["k", "v"], ["k", "w"]],
        }),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let m = &v["messages"][0];
    assert_eq!(m["payload_base64"], B64.encode([0xff, 0, 0xfe]));
    assert!(m.get("payload").is_none(), "{m}");
    assert_eq!(m["content_type"], "application/octet-stream");
    assert_eq!(m["user_properties"], json!([["k", "v"], ["k", "w"]]));
    // No payload at all is an empty one.
    let (_, v) = invoke(s, "echo", json!({})).await;
    assert_eq!(v["messages"][0]["payload"], "");

    // Published: the outputs reach a subscriber as coming from the function.
    let mut sub = s.broker.subscribe("out/#", 16).await.unwrap();
    let (st, v) = invoke(
        s,
        "echo",
        json!({"topic": "out/quiet", "payload": "not published"}),
    )
    .await;
    assert_eq!(
        (st, v["published"].as_bool()),
        (StatusCode::OK, Some(false))
    );
    let (st, v) = invoke(
        s,
        "echo",
        json!({"topic": "out/loud", "payload": "published", "publish": true}),
    )
    .await;
    assert_eq!(
        (st, v["published"].as_bool()),
        (StatusCode::OK, Some(true)),
        "{v}"
    );
    let m = recv(&mut sub).await;
    assert_eq!(&*m.topic, "out/loud", "the unpublished call went nowhere");
    assert_eq!(&m.payload[..], b"published");
    assert_eq!(&*m.origin, "$function/echo");
    assert_eq!(m.hops, 1);
    // A message cannot come from a wildcard topic: refused before any call.
    let before = n.functions.get("echo").expect("echo").metrics.invocations;
    let got = invoke(
        s,
        "echo",
        json!({"topic": "out/#", "payload": "x", "publish": true}),
    )
    .await;
    error(&got, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(
        n.functions.get("echo").expect("echo").metrics.invocations,
        before
    );

    // Bad requests.
    let got = invoke(s, "echo", json!({"payload": "a", "payload_base64": "YQ=="})).await;
    let msg = error(&got, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(msg.contains("payload_base64"), "{msg}");
    let got = invoke(s, "echo", json!({"payload_base64": "not base64!"})).await;
    error(&got, StatusCode::BAD_REQUEST, "invalid_request");
    let got = invoke(s, "echo", json!({"payload": "a", "colour": "red"})).await;
    let msg = error(&got, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(msg.contains("colour"), "{msg}");
    let (st, text) = raw(
        s,
        "POST",
        "/api/functions/echo/invoke",
        Some("application/json"),
        b"{not json".to_vec(),
    )
    .await;
    error(
        &(st, parse("POST", "invoke", &text)),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    let (st, text) = raw(
        s,
        "POST",
        "/api/functions/echo/invoke",
        None,
        b"{}".to_vec(),
    )
    .await;
    error(
        &(st, parse("POST", "invoke", &text)),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid_request",
    );

    // 7 calls ran: the wildcard-topic request was refused before calling.
    let (_, v) = call(s, "GET", "/api/functions/echo", None).await;
    assert_eq!(v["metrics"]["invocations"], 7, "{v}");
    assert_eq!(v["metrics"]["outputs"], 7, "{v}");
    assert_eq!(v["metrics"]["errors"], 0, "{v}");
}

#[tokio::test]
async fn bad_specs_and_modules_are_refused_with_their_codes() {
    let n = node().await;
    let s = &n.state;
    let echo = wat_b64("echo");
    let cases = [
        (json!({"name": "bad name", "module_base64": echo}), "name"),
        (json!({"name": "", "module_base64": echo}), "name"),
        (
            json!({"name": "x".repeat(65), "module_base64": echo}),
            "name",
        ),
        (json!({"name": "p", "runtime": "process"}), "command"),
        (
            json!({"name": "p", "runtime": "process", "command": [""]}),
            "command",
        ),
        (json!({"name": "w", "command": ["python3"]}), "command"),
        (
            json!({"name": "w", "module_base64": echo, "colour": "red"}),
            "colour",
        ),
        (
            json!({"name": "w", "runtime": "java", "module_base64": echo}),
            "java",
        ),
        (json!({"name": "w"}), "path"),
        (json!({"name": "w", "path": "/nonexistent/f.wasm"}), "path"),
        (
            json!({"name": "w", "module_base64": echo, "limits": {"fuel": 1}}),
            "limits.fuel",
        ),
        (
            json!({"name": "w", "module_base64": echo, "limits": {"memory": 1}}),
            "limits.memory",
        ),
        (
            json!({"name": "w", "module_base64": echo, "limits": {"timeout": "forever"}}),
            "limits.timeout: ",
        ),
        (
            json!({"name": "p", "runtime": "process", "command": "python3 h.py"}),
            "command: ",
        ),
        (
            json!({"name": "w", "module_base64": echo, "subscribe": [""]}),
            "subscribe",
        ),
        (
            json!({"name": "w", "module_base64": "%%%"}),
            "module_base64",
        ),
        (json!({"name": "w", "module_base64": 7}), "module_base64"),
        (json!(["not", "an", "object"]), "object"),
    ];
    for (spec, word) in cases {
        let got = call(s, "POST", "/api/functions", Some(spec.clone())).await;
        let msg = error(&got, StatusCode::BAD_REQUEST, "invalid_function");
        assert!(msg.contains(word), "{spec}: {msg:?} should name {word:?}");
        assert!(!msg.contains("at line"), "{spec}: {msg:?}");
    }
    let (st, text) = raw(
        s,
        "POST",
        "/api/functions",
        Some("application/json"),
        b"{not json".to_vec(),
    )
    .await;
    error(
        &(st, parse("POST", "/api/functions", &text)),
        StatusCode::BAD_REQUEST,
        "invalid_function",
    );

    // Read, but cannot run.
    let unusable = [
        json!({"name": "u", "module_base64": B64.encode(b"garbage, not a module")}),
        json!({"name": "u", "module_base64": wat_b64("noexport")}),
        json!({"name": "u", "module_base64": wat_b64("version2")}),
        json!({"name": "u", "module_base64": wat_b64("wasi")}),
    ];
    for spec in unusable {
        let got = call(s, "POST", "/api/functions", Some(spec.clone())).await;
        error(&got, StatusCode::UNPROCESSABLE_ENTITY, "unusable_function");
    }
    // Nothing was deployed by any of it.
    let (st, v) = call(s, "GET", "/api/functions", None).await;
    assert_eq!((st, v), (StatusCode::OK, json!([])));
    assert!(n.functions.list().is_empty());

    // A failed redeploy leaves the running version alone.
    deploy_wasm(s, "keep", "echo", json!({})).await;
    let got = call(
        s,
        "POST",
        "/api/functions",
        Some(json!({"name": "keep", "module_base64": wat_b64("noexport")})),
    )
    .await;
    error(&got, StatusCode::UNPROCESSABLE_ENTITY, "unusable_function");
    let (_, v) = call(s, "GET", "/api/functions/keep", None).await;
    assert_eq!(v["version"], 1);
    let (st, v) = invoke(s, "keep", json!({"payload": "still here"})).await;
    assert_eq!(
        (st, v["messages"][0]["payload"].as_str()),
        (StatusCode::OK, Some("still here"))
    );
}

#[tokio::test]
async fn failed_calls_answer_with_their_code_and_are_counted() {
    let n = node().await;
    let s = &n.state;
    deploy_wasm(
        s,
        "bad",
        "bad",
        json!({"limits": {"fuel": 1_000_000, "memory": 1 << 20}}),
    )
    .await;
    deploy_wasm(s, "echo", "echo", json!({})).await;
    for (payload, status, code) in [
        ("t", StatusCode::UNPROCESSABLE_ENTITY, "trap"),
        ("l", StatusCode::GATEWAY_TIMEOUT, "out_of_fuel"),
        ("m", StatusCode::UNPROCESSABLE_ENTITY, "trap"),
        ("e", StatusCode::UNPROCESSABLE_ENTITY, "function_error"),
        ("o", StatusCode::UNPROCESSABLE_ENTITY, "bad_output"),
        ("k", StatusCode::UNPROCESSABLE_ENTITY, "trap"),
    ] {
        let got = invoke(s, "bad", json!({"payload": payload})).await;
        let msg = error(&got, status, code);
        assert!(!msg.is_empty(), "{payload}");
        if payload == "e" {
            assert!(msg.contains("bad input"), "{msg}");
        }
    }
    // The function and its neighbour still serve.
    let (st, v) = invoke(s, "bad", json!({"payload": "fine"})).await;
    assert_eq!((st, v["messages"].clone()), (StatusCode::OK, json!([])));
    let (st, v) = invoke(s, "echo", json!({"payload": "ok"})).await;
    assert_eq!(
        (st, v["messages"][0]["payload"].as_str()),
        (StatusCode::OK, Some("ok"))
    );

    let (_, v) = call(s, "GET", "/api/functions/bad", None).await;
    let m = &v["metrics"];
    assert_eq!(
        (
            m["invocations"].as_u64(),
            m["errors"].as_u64(),
            m["timeouts"].as_u64()
        ),
        (Some(7), Some(5), Some(1)),
        "{v}"
    );
    assert_eq!(m["last_error"]["code"], "trap", "{v}");
    assert!(m["last_error"]["time_ms"].is_i64(), "{v}");
    assert!(m["p50_us"].is_u64() && m["p99_us"].is_u64(), "{v}");

    let (st, text) = raw(s, "GET", "/metrics", None, Vec::new()).await;
    assert_eq!(st, StatusCode::OK);
    for line in [
        "# TYPE verge_function_invocations_total counter",
        "verge_function_invocations_total{function=\"bad\"} 7",
        "verge_function_invocations_total{function=\"echo\"} 1",
        "verge_function_errors_total{function=\"bad\"} 5",
        "verge_function_timeouts_total{function=\"bad\"} 1",
        "verge_function_outputs_total{function=\"echo\"} 1",
        "verge_function_version{function=\"bad\"} 1",
        "verge_function_in_flight{function=\"bad\"} 0",
        "# TYPE verge_function_duration_seconds histogram",
        "verge_function_duration_seconds_bucket{function=\"bad\",le=\"+Inf\"} 7",
        "verge_function_duration_seconds_count{function=\"echo\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    assert!(
        text.contains("verge_function_memory_bytes{function=\"echo\"}"),
        "{text}"
    );
    assert!(
        text.contains("verge_function_duration_seconds_sum{function=\"bad\"}"),
        "{text}"
    );

    // Deleted, it leaves /metrics.
    call(s, "DELETE", "/api/functions/bad", None).await;
    let (_, text) = raw(s, "GET", "/metrics", None, Vec::new()).await;
    assert!(!text.contains("function=\"bad\""), "{text}");
    assert!(text.contains("function=\"echo\""), "{text}");
}

#[tokio::test]
async fn state_shows_text_and_binary_values() {
    let n = node().await;
    let s = &n.state;
    deploy_wasm(s, "echo", "echo", json!({})).await;
    let (st, v) = call(s, "GET", "/api/functions/echo/state", None).await;
    assert_eq!((st, v), (StatusCode::OK, json!({})));

    let (st, v) = call(
        s,
        "POST",
        "/api/functions",
        Some(json!({"name": "kv", "module_base64": B64.encode(STATE_WAT)})),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let (st, v) = invoke(s, "kv", json!({})).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = call(s, "GET", "/api/functions/kv/state", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v, json!({"t": "hello", "b": {"base64": "//4="}}));
    let (_, v) = call(s, "GET", "/api/functions/kv", None).await;
    assert_eq!(
        (v["state_keys"].as_u64(), v["state_bytes"].as_u64()),
        (Some(2), Some(9)),
        "{v}"
    );

    error(
        &call(s, "GET", "/api/functions/nobody/state", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    // Deleting the function deletes its state.
    call(s, "DELETE", "/api/functions/kv", None).await;
    error(
        &call(s, "GET", "/api/functions/kv/state", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    call(
        s,
        "POST",
        "/api/functions",
        Some(json!({"name": "kv", "module_base64": B64.encode(STATE_WAT)})),
    )
    .await;
    let (_, v) = call(s, "GET", "/api/functions/kv/state", None).await;
    assert_eq!(v, json!({}));
}

#[tokio::test]
async fn without_a_function_runtime_the_routes_say_so() {
    let b = broker();
    let s = state(&b, None);
    for (method, path) in [
        ("GET", "/api/functions"),
        ("GET", "/api/functions/x"),
        ("DELETE", "/api/functions/x"),
        ("GET", "/api/functions/x/state"),
    ] {
        let got = call(&s, method, path, None).await;
        error(&got, StatusCode::NOT_FOUND, "functions_disabled");
    }
    let got = call(&s, "POST", "/api/functions", Some(json!({"name": "x"}))).await;
    error(&got, StatusCode::NOT_FOUND, "functions_disabled");
    let got = invoke(&s, "x", json!({})).await;
    error(&got, StatusCode::NOT_FOUND, "functions_disabled");
    let (_, text) = raw(&s, "GET", "/metrics", None, Vec::new()).await;
    assert!(!text.contains("verge_function_"), "{text}");
}

/// A process function from the config file (deployed into the registry
/// here) is invoked through the API.
#[tokio::test]
async fn python_process_function_invoked_through_the_api() {
    let n = node().await;
    let s = &n.state;
    deploy_process(
        &n,
        json!({
            "name": "py",
            "runtime": "process",
            "command": ["python3", path_str(&python_example())],
            "config": {"above": 30},
        }),
    )
    .await;
    let (st, v) = call(s, "GET", "/api/functions/py", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["runtime"], "process");
    assert!(v.get("sha256").is_none(), "{v}");

    let (st, v) = invoke(
        s,
        "py",
        json!({"topic": "devices/d1/telemetry", "payload": {"temperature": 35.5}}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let m = &v["messages"][0];
    assert_eq!(m["topic"], "alerts/devices/d1/telemetry");
    assert_eq!(m["content_type"], "application/json");
    let alert: Value = serde_json::from_str(m["payload"].as_str().unwrap()).unwrap();
    assert_eq!(
        alert,
        json!({"source": "devices/d1/telemetry", "temperature": 35.5, "above": 30.0})
    );

    let (st, v) = invoke(
        s,
        "py",
        json!({"topic": "devices/d1/telemetry", "payload": {"temperature": 20}}),
    )
    .await;
    assert_eq!((st, v["messages"].clone()), (StatusCode::OK, json!([])));
    let got = invoke(s, "py", json!({"payload": "not json"})).await;
    let msg = error(&got, StatusCode::UNPROCESSABLE_ENTITY, "function_error");
    assert!(msg.contains("not JSON"), "{msg}");
    let got = invoke(s, "py", json!({"payload": {"humidity": 40}})).await;
    let msg = error(&got, StatusCode::UNPROCESSABLE_ENTITY, "function_error");
    assert!(msg.contains("temperature missing"), "{msg}");

    // The worker survived its errors; published outputs reach the broker.
    let mut sub = s.broker.subscribe("alerts/#", 16).await.unwrap();
    let (st, v) = invoke(
        s,
        "py",
        json!({"topic": "devices/d2/telemetry", "payload": {"temperature": 99}, "publish": true}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let m = recv(&mut sub).await;
    assert_eq!(&*m.topic, "alerts/devices/d2/telemetry");
    assert_eq!(
        m.properties.content_type.as_deref(),
        Some("application/json")
    );

    let (_, v) = call(s, "GET", "/api/functions/py", None).await;
    let m = &v["metrics"];
    assert_eq!(
        (
            m["invocations"].as_u64(),
            m["errors"].as_u64(),
            m["outputs"].as_u64()
        ),
        (Some(5), Some(2), Some(2)),
        "{v}"
    );
    // A module cannot be uploaded to a process function.
    let (st, text) = raw(
        s,
        "PUT",
        "/api/functions/py",
        Some("application/wasm"),
        binary_module(),
    )
    .await;
    error(
        &(st, parse("PUT", "py", &text)),
        StatusCode::BAD_REQUEST,
        "invalid_function",
    );
    let (st, _) = call(s, "DELETE", "/api/functions/py", None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    n.functions.shutdown().await;
}

/// The spec type the API takes is the registry's: a spec serialized from
/// Rust deploys as is (with its module uploaded beside it).
#[tokio::test]
async fn a_serialized_spec_deploys_unchanged() {
    let n = node().await;
    let s = &n.state;
    let mut spec = FunctionSpec::wasm("echo");
    spec.limits.concurrency = 2;
    spec.description = "from rust".into();
    let mut body = serde_json::to_value(&spec).unwrap();
    body["module_base64"] = wat_b64("echo").into();
    let (st, v) = call(s, "POST", "/api/functions", Some(body)).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(n.functions.get("echo").unwrap().spec, spec);
    assert_eq!(v["spec"]["limits"]["timeout"], "5s", "{v}");
}

/// Finding 2 of the security review: a function created with `"path":
/// "/etc/shadow"` answered an error quoting the file's first line, and
/// told which files exist. The API reads no file: a `path` is refused
/// before anything is opened, with the same answer for a file that exists
/// and one that does not, and nothing of the file in it.
#[tokio::test]
async fn a_function_path_is_refused_and_no_file_is_read_through_the_api() {
    let n = node().await;
    let s = &n.state;
    let secret = n._dir.path().join("secret.txt");
    std::fs::write(&secret, "the-first-line-of-a-secret\n").unwrap();
    let mut answers = Vec::new();
    for path in [path_str(&secret), "/nonexistent/secret.txt".into()] {
        let body = json!({"name": "peek", "path": path});
        let (st, v) = call(s, "POST", "/api/functions", Some(body)).await;
        let msg = error(&(st, v), StatusCode::BAD_REQUEST, "invalid_function");
        assert!(!msg.contains("the-first-line"), "{msg}");
        assert!(msg.contains("config file"), "{msg}");
        answers.push(msg);
    }
    assert_eq!(
        answers[0], answers[1],
        "an answer tells whether the file exists"
    );
    let body = json!({"path": path_str(&secret)});
    let got = call(s, "PUT", "/api/functions/peek", Some(body)).await;
    error(&got, StatusCode::BAD_REQUEST, "invalid_function");
    assert!(n.functions.get("peek").is_none());
}

/// A process function (a command run on the node) cannot be deployed
/// through the API, whoever asks; nothing is deployed. wasm uploads are
/// fine.
#[tokio::test]
async fn process_functions_are_refused_through_the_api() {
    let n = node().await;
    let body = json!({"name": "py", "runtime": "process",
                      "command": ["python3", path_str(&python_example())]});
    let got = call(&n.state, "POST", "/api/functions", Some(body)).await;
    let msg = error(&got, StatusCode::FORBIDDEN, "forbidden");
    assert!(msg.contains("config file"), "{msg}");
    assert!(n.functions.get("py").is_none());
    let body = json!({"name": "echo", "module_base64": wat_b64("echo"), "workdir": "/"});
    let got = call(&n.state, "POST", "/api/functions", Some(body)).await;
    error(&got, StatusCode::FORBIDDEN, "forbidden");
    let body = json!({"name": "echo", "module_base64": wat_b64("echo")});
    let (st, _) = call(&n.state, "POST", "/api/functions", Some(body)).await;
    assert_eq!(st, StatusCode::CREATED);
}

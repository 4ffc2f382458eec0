//! Edge functions through the node: the `/api/functions` routes driven
//! through the router (no socket) — deploy by path, by `module_base64` and
//! by raw upload, versions, list/get, invoke in every payload form, errors
//! as JSON with their statuses, delete, state and `/metrics`, a process
//! function running the Python example — and the broker wiring: a rule's
//! `function` action and `subscribe` triggers, in-process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use tower::ServiceExt;
use verge_broker::{Broker, BrokerConfig, BrokerHandle, LocalSubscription, Message};
use verge_functions::{FunctionSpec, Functions, FunctionsConfig};
use verge_mqtt::QoS;
use verge_node::{FunctionsInvoker, NodeState, Triggers, router};
use verge_rules::{Engine, FunctionInvoker, RuleConfig, RuleEngineConfig, Services};

/// Longest wait for anything that should happen; only there so a broken
/// build fails instead of hanging.
const WAIT: Duration = Duration::from_secs(10);

fn wat(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../verge-functions/tests/wat")
        .join(format!("{name}.wat"))
}

fn python_example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/functions/python/handler.py")
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_owned()
}

fn broker() -> Broker {
    let cfg = BrokerConfig::default();
    let auth = Broker::authenticator(&cfg).expect("auth");
    Broker::start(cfg, auth)
}

/// A node's API state with a function registry in a temporary directory.
struct Node {
    _dir: tempfile::TempDir,
    _broker: Broker,
    functions: Functions,
    state: NodeState,
}

async fn node() -> Node {
    let dir = tempfile::tempdir().expect("tmp");
    let broker = broker();
    let functions = Functions::open(FunctionsConfig {
        dir: dir.path().join("functions"),
    })
    .await
    .expect("open registry");
    let state = state(&broker, Some(functions.clone()));
    Node {
        _dir: dir,
        _broker: broker,
        functions,
        state,
    }
}

const TOKEN: &str = "functions-test-token";

fn state(broker: &Broker, functions: Option<Functions>) -> NodeState {
    let mut services = Services::new(broker.handle());
    services.functions = functions
        .clone()
        .map(|f| Arc::new(FunctionsInvoker::new(f)) as Arc<dyn FunctionInvoker>);
    NodeState {
        name: Arc::from("test-node"),
        started: Instant::now(),
        broker: broker.handle(),
        rules: Arc::new(Engine::new(services, RuleEngineConfig::default())),
        // With a token, as process functions need one through the API.
        token: Some(Arc::from(TOKEN)),
        store: None,
        bridge: None,
        functions,
        drivers: None,
        coap: None,
    }
}

/// One request; the body is sent with `content_type` when given.
async fn raw(
    s: &NodeState,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = &s.token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let req = req.body(Body::from(body)).expect("request");
    let resp = router(s.clone()).oneshot(req).await.expect("response");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .expect("body");
    (status, String::from_utf8(bytes.to_vec()).expect("utf-8"))
}

fn parse(method: &str, path: &str, text: &str) -> Value {
    if text.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"))
}

/// A request with an optional JSON body; the answer parsed as JSON.
async fn call(s: &NodeState, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let (st, text) = match body {
        Some(b) => {
            raw(
                s,
                method,
                path,
                Some("application/json"),
                b.to_string().into_bytes(),
            )
            .await
        }
        None => raw(s, method, path, None, Vec::new()).await,
    };
    (st, parse(method, path, &text))
}

/// Assert a JSON error with this status and code; returns its message.
fn error(got: &(StatusCode, Value), status: StatusCode, code: &str) -> String {
    let (st, v) = got;
    assert_eq!(
        (*st, v["error"]["code"].as_str()),
        (status, Some(code)),
        "{v}"
    );
    v["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message: {v}"))
        .to_owned()
}

async fn deploy_wasm(s: &NodeState, name: &str, module: &str, extra: Value) -> Value {
    let mut spec = json!({"name": name, "path": path_str(&wat(module))});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    let (st, v) = call(s, "POST", "/api/functions", Some(spec)).await;
    assert!(
        st == StatusCode::CREATED || st == StatusCode::OK,
        "{st}: {v}"
    );
    v
}

async fn invoke(s: &NodeState, name: &str, body: Value) -> (StatusCode, Value) {
    call(
        s,
        "POST",
        &format!("/api/functions/{name}/invoke"),
        Some(body),
    )
    .await
}

async fn recv(sub: &mut LocalSubscription) -> Arc<Message> {
    tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("a message within the wait")
        .expect("broker running")
}

/// A WebAssembly *binary* module, built by hand: ABI version 1, and every
/// call returns no messages (status 0 and a count of 0: the five zero bytes
/// at offset 2048).
fn binary_module() -> Vec<u8> {
    fn section(m: &mut Vec<u8>, id: u8, body: &[u8]) {
        m.push(id);
        m.push(u8::try_from(body.len()).expect("short section"));
        m.extend_from_slice(body);
    }
    fn export(e: &mut Vec<u8>, name: &str, kind: u8, index: u8) {
        e.push(u8::try_from(name.len()).expect("short name"));
        e.extend_from_slice(name.as_bytes());
        e.extend_from_slice(&[kind, index]);
    }
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    // Types: () -> i32, (i32) -> i32, (i32, i32) -> i64.
    section(
        &mut m,
        1,
        &[
            3, 0x60, 0, 1, 0x7f, 0x60, 1, 0x7f, 1, 0x7f, 0x60, 2, 0x7f, 0x7f, 1, 0x7e,
        ],
    );
    // Three functions, one of each type.
    section(&mut m, 3, &[3, 0, 1, 2]);
    // One memory of one page.
    section(&mut m, 5, &[1, 0, 1]);
    let mut exports = vec![4];
    export(&mut exports, "memory", 2, 0);
    export(&mut exports, "verge_abi_version", 0, 0);
    export(&mut exports, "verge_alloc", 0, 1);
    export(&mut exports, "verge_handle", 0, 2);
    section(&mut m, 7, &exports);
    let bodies: [&[u8]; 3] = [
        // i32.const 1
        &[0x41, 1, 0x0b],
        // i32.const 1024
        &[0x41, 0x80, 0x08, 0x0b],
        // (i64.const 2048 << i64.const 32) | i64.const 5
        &[0x42, 0x80, 0x10, 0x42, 0x20, 0x86, 0x42, 0x05, 0x84, 0x0b],
    ];
    let mut code = vec![3];
    for b in bodies {
        code.push(u8::try_from(b.len() + 1).expect("short body"));
        code.push(0); // no locals
        code.extend_from_slice(b);
    }
    section(&mut m, 10, &code);
    m
}

/// Stores `t` = "hello" and `b` = the bytes ff fe in its state; returns
/// no messages.
const STATE_WAT: &str = r#"
(module
  (import "verge" "kv_set" (func $set (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 3000) "thello")
  (data (i32.const 3010) "b\ff\fe")
  (func (export "verge_abi_version") (result i32) i32.const 1)
  (func (export "verge_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "verge_handle") (param i32 i32) (result i64)
    (drop (call $set (i32.const 3000) (i32.const 1) (i32.const 3001) (i32.const 5)))
    (drop (call $set (i32.const 3010) (i32.const 1) (i32.const 3011) (i32.const 2)))
    ;; (2048 << 32) | 5: status 0, no messages
    i64.const 8796093022213))
"#;

#[tokio::test]
async fn deploy_by_path_makes_versions_only_when_something_changed() {
    let n = node().await;
    let s = &n.state;
    let spec = json!({"name": "echo", "path": path_str(&wat("echo")), "description": "as is"});
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
        Some(json!({"path": path_str(&wat("echo"))})),
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
        Some(json!({"name": "other", "path": path_str(&wat("echo"))})),
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
    let echo = path_str(&wat("echo"));
    let cases = [
        (json!({"name": "bad name", "path": echo}), "name"),
        (json!({"name": "", "path": echo}), "name"),
        (json!({"name": "x".repeat(65), "path": echo}), "name"),
        (json!({"name": "p", "runtime": "process"}), "command"),
        (
            json!({"name": "p", "runtime": "process", "command": [""]}),
            "command",
        ),
        (json!({"name": "w", "command": ["python3"]}), "command"),
        (
            json!({"name": "w", "path": echo, "colour": "red"}),
            "colour",
        ),
        (
            json!({"name": "w", "runtime": "java", "path": echo}),
            "java",
        ),
        (json!({"name": "w"}), "path"),
        (json!({"name": "w", "path": "/nonexistent/f.wasm"}), "path"),
        (
            json!({"name": "w", "path": echo, "limits": {"fuel": 1}}),
            "limits.fuel",
        ),
        (
            json!({"name": "w", "path": echo, "limits": {"memory": 1}}),
            "limits.memory",
        ),
        (
            json!({"name": "w", "path": echo, "limits": {"timeout": "forever"}}),
            "limits.timeout: ",
        ),
        (
            json!({"name": "p", "runtime": "process", "command": "python3 h.py"}),
            "command: ",
        ),
        (
            json!({"name": "w", "path": echo, "subscribe": [""]}),
            "subscribe",
        ),
        (
            json!({"name": "w", "module_base64": "%%%"}),
            "module_base64",
        ),
        (json!({"name": "w", "module_base64": 7}), "module_base64"),
        (
            json!({"name": "p", "runtime": "process", "command": ["python3"], "module_base64": "AA=="}),
            "module",
        ),
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
        json!({"name": "u", "path": path_str(&wat("noexport"))}),
        json!({"name": "u", "path": path_str(&wat("version2"))}),
        json!({"name": "u", "path": path_str(&wat("wasi"))}),
        json!({"name": "u", "runtime": "process", "command": ["/nonexistent/verge-worker"]}),
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
        Some(json!({"name": "keep", "path": path_str(&wat("noexport"))})),
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

#[tokio::test]
async fn python_process_function_through_the_api() {
    let n = node().await;
    let s = &n.state;
    let spec = json!({
        "name": "py",
        "runtime": "process",
        "command": ["python3", path_str(&python_example())],
        "config": {"above": 30},
    });
    let (st, v) = call(s, "POST", "/api/functions", Some(spec)).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
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

/// A rule's `function` action: a reading published into the broker goes
/// through the rule into the function, whose output a subscriber gets.
#[tokio::test]
async fn rule_function_action_publishes_the_function_output() {
    let n = node().await;
    let s = &n.state;
    deploy_wasm(
        s,
        "cfg",
        "config",
        json!({"config": {"tag": "from-config"}}),
    )
    .await;
    let rule: RuleConfig = serde_json::from_value(json!({
        "id": "to-fn",
        "sql": "SELECT * FROM \"devices/+/telemetry\"",
        "actions": [{"type": "function", "name": "cfg"}]
    }))
    .unwrap();
    s.rules.create(rule).await.expect("rule");
    let mut sub = s.broker.subscribe("cfg", 16).await.unwrap();
    publish(&s.broker, "devices/d1/telemetry", r#"{"temperature":21.5}"#).await;
    let m = recv(&mut sub).await;
    let got: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(got, json!({"tag": "from-config"}));
    assert_eq!(&*m.origin, "$function/cfg");
    assert_eq!(m.hops, 1);
    assert_eq!(n.functions.get("cfg").unwrap().metrics.invocations, 1);

    // A rule naming a function that is not deployed is accepted; its calls
    // fail until it is, and the rule keeps running.
    let rule: RuleConfig = serde_json::from_value(json!({
        "id": "later",
        "sql": "SELECT * FROM \"later/in\"",
        "actions": [{"type": "function", "name": "later", "delivery": {"max_attempts": 1}}]
    }))
    .unwrap();
    s.rules
        .create(rule)
        .await
        .expect("rule for a function not there yet");
    deploy_wasm(s, "later", "config", json!({"config": {"late": true}})).await;
    publish(&s.broker, "later/in", "{}").await;
    let m = recv(&mut sub).await;
    assert_eq!(&*m.origin, "$function/later");
    assert_eq!(
        serde_json::from_slice::<Value>(&m.payload).unwrap(),
        json!({"late": true})
    );
}

/// A function whose output lands on its rule's own source topic feeds the
/// rule again: the hop bound ends it after 8 steps.
#[tokio::test]
async fn rule_and_function_feeding_each_other_stop_at_the_hop_bound() {
    let n = node().await;
    let s = &n.state;
    deploy_wasm(s, "echo", "echo", json!({})).await;
    let rule: RuleConfig = serde_json::from_value(json!({
        "id": "loop",
        "sql": "SELECT * FROM \"devices/+/telemetry\"",
        "actions": [{"type": "function", "name": "echo"}]
    }))
    .unwrap();
    s.rules.create(rule).await.expect("rule");
    let mut sub = s.broker.subscribe("devices/#", 64).await.unwrap();
    publish(&s.broker, "devices/d1/telemetry", r#"{"t":1}"#).await;
    let first = recv(&mut sub).await;
    assert_eq!((&*first.origin, first.hops), ("$local", 0));
    for hop in 1..=8u8 {
        let m = recv(&mut sub).await;
        assert_eq!((&*m.origin, m.hops), ("$function/echo", hop));
        assert_eq!(
            serde_json::from_slice::<Value>(&m.payload).unwrap(),
            json!({"t": 1})
        );
    }
    let more = tokio::time::timeout(Duration::from_millis(500), sub.recv()).await;
    assert!(more.is_err(), "a ninth step: {more:?}");
    assert_eq!(n.functions.get("echo").unwrap().metrics.invocations, 8);
}

async fn publish(b: &BrokerHandle, topic: &str, payload: &str) {
    b.publish(Message::local(
        topic,
        payload.as_bytes().to_vec(),
        QoS::AtLeastOnce,
        false,
    ))
    .await
    .expect("publish");
}

/// Publish `topic` until the function's trigger answers (its subscription
/// is made in the background after a deploy), then take everything up to
/// the answer to a last marker, so the subscriber starts clean.
async fn until_triggered(
    b: &BrokerHandle,
    sub: &mut LocalSubscription,
    topic: &str,
    function: &str,
) {
    let origin = format!("$function/{function}");
    let deadline = Instant::now() + WAIT;
    'probe: loop {
        assert!(
            Instant::now() < deadline,
            "{function} never triggered by {topic}"
        );
        publish(b, topic, "probe").await;
        let tick = tokio::time::sleep(Duration::from_millis(50));
        tokio::pin!(tick);
        loop {
            tokio::select! {
                m = sub.recv() => {
                    if m.expect("broker running").origin.as_ref() == origin {
                        break 'probe;
                    }
                }
                () = &mut tick => continue 'probe,
            }
        }
    }
    publish(b, topic, "marker").await;
    loop {
        let m = recv(sub).await;
        if m.origin.as_ref() == origin && &m.payload[..] == b"marker" {
            return;
        }
    }
}

#[tokio::test]
async fn subscription_triggers_publish_outputs_without_retriggering() {
    let n = node().await;
    let s = &n.state;
    let triggers = Triggers::start(n.functions.clone(), s.broker.clone());
    deploy_wasm(s, "echo", "echo", json!({"subscribe": ["in/#"]})).await;
    let mut sub = s
        .broker
        .subscribe_many(&["in/#".into(), "other/#".into()], 256)
        .await
        .unwrap();
    until_triggered(&s.broker, &mut sub, "in/probe", "echo").await;

    let before = n.functions.get("echo").unwrap().metrics.invocations;
    publish(&s.broker, "in/a", "one").await;
    let m = recv(&mut sub).await;
    assert_eq!((&*m.topic, &*m.origin, m.hops), ("in/a", "$local", 0));
    let m = recv(&mut sub).await;
    assert_eq!(
        (&*m.topic, &*m.origin, m.hops),
        ("in/a", "$function/echo", 1)
    );
    assert_eq!(&m.payload[..], b"one");
    // Its output matched its own filter but did not call it again: the
    // next thing the subscriber sees is the next input, then its output
    // (the trigger answers in order).
    publish(&s.broker, "in/b", "two").await;
    let m = recv(&mut sub).await;
    assert_eq!((&*m.topic, &*m.origin), ("in/b", "$local"));
    let m = recv(&mut sub).await;
    assert_eq!(
        (&*m.topic, &*m.origin, &m.payload[..]),
        ("in/b", "$function/echo", &b"two"[..])
    );
    assert_eq!(
        n.functions.get("echo").unwrap().metrics.invocations,
        before + 2
    );

    // Messages that already passed 8 in-node steps are not handed over.
    let mut tired = Message::local("in/tired", b"x".to_vec(), QoS::AtLeastOnce, false);
    tired.hops = 8;
    s.broker.publish(tired).await.unwrap();
    publish(&s.broker, "in/c", "three").await;
    let seen: Vec<(String, String)> = [
        recv(&mut sub).await,
        recv(&mut sub).await,
        recv(&mut sub).await,
    ]
    .iter()
    .map(|m| (m.topic.to_string(), m.origin.to_string()))
    .collect();
    assert_eq!(
        seen,
        [
            ("in/tired".into(), "$local".into()),
            ("in/c".into(), "$local".into()),
            ("in/c".into(), "$function/echo".into())
        ]
    );

    // A redeploy with other filters moves the trigger.
    deploy_wasm(s, "echo", "echo", json!({"subscribe": ["other/#"]})).await;
    until_triggered(&s.broker, &mut sub, "other/probe", "echo").await;
    publish(&s.broker, "in/d", "old filter").await;
    publish(&s.broker, "other/e", "new filter").await;
    let seen: Vec<(String, String)> = [
        recv(&mut sub).await,
        recv(&mut sub).await,
        recv(&mut sub).await,
    ]
    .iter()
    .map(|m| (m.topic.to_string(), m.origin.to_string()))
    .collect();
    assert_eq!(
        seen,
        [
            ("in/d".into(), "$local".into()),
            ("other/e".into(), "$local".into()),
            ("other/e".into(), "$function/echo".into())
        ]
    );
    triggers.stop();
}

/// A function that fails on some inputs keeps being triggered for the next.
#[tokio::test]
async fn a_failing_triggered_call_does_not_stop_the_trigger() {
    let n = node().await;
    let s = &n.state;
    let triggers = Triggers::start(n.functions.clone(), s.broker.clone());
    let (st, v) = call(
        s,
        "POST",
        "/api/functions",
        Some(json!({
            "name": "py",
            "runtime": "process",
            "command": ["python3", path_str(&python_example())],
            "config": {"above": 30, "topic": "alerts/py"},
            "subscribe": ["sensors/+"],
        })),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let mut alerts = s.broker.subscribe("alerts/py", 16).await.unwrap();
    // Until the trigger is subscribed, readings go nowhere: keep sending.
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "never triggered");
        publish(&s.broker, "sensors/probe", r#"{"temperature":50}"#).await;
        if tokio::time::timeout(Duration::from_millis(100), alerts.recv())
            .await
            .is_ok()
        {
            break;
        }
    }
    publish(&s.broker, "sensors/s1", "not json").await;
    publish(&s.broker, "sensors/s1", r#"{"temperature":10}"#).await;
    publish(&s.broker, "sensors/s1", r#"{"temperature":31}"#).await;
    loop {
        let m = recv(&mut alerts).await;
        let doc: Value = serde_json::from_slice(&m.payload).unwrap();
        if doc["source"] == "sensors/s1" {
            assert_eq!(doc["temperature"], 31);
            break;
        }
    }
    let m = n.functions.get("py").unwrap().metrics;
    assert!(m.errors >= 1, "{m:?}");
    assert_eq!(
        m.last_error.as_ref().map(|e| e.code),
        Some("function_error")
    );
    triggers.stop();
    n.functions.shutdown().await;
}

/// The spec type the API takes is the registry's: a spec serialized from
/// Rust deploys as is.
#[tokio::test]
async fn a_serialized_spec_deploys_unchanged() {
    let n = node().await;
    let s = &n.state;
    let mut spec = FunctionSpec::wasm("echo");
    spec.path = Some(wat("echo"));
    spec.limits.concurrency = 2;
    spec.description = "from rust".into();
    let (st, v) = call(
        s,
        "POST",
        "/api/functions",
        Some(serde_json::to_value(&spec).unwrap()),
    )
    .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(n.functions.get("echo").unwrap().spec, spec);
    assert_eq!(v["spec"]["limits"]["timeout"], "5s", "{v}");
}

/// Regression: `Triggers::stop` aborted only the watcher; the per-function
/// tasks it had spawned kept calling their functions.
#[tokio::test]
async fn stopped_triggers_call_nothing_more() {
    let n = node().await;
    let s = &n.state;
    let triggers = Triggers::start(n.functions.clone(), s.broker.clone());
    deploy_wasm(s, "echo", "echo", json!({"subscribe": ["in/#"]})).await;
    let mut sub = s.broker.subscribe("in/#", 256).await.unwrap();
    until_triggered(&s.broker, &mut sub, "in/probe", "echo").await;
    triggers.stop();
    // Let the aborted tasks be dropped.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = n.functions.get("echo").unwrap().metrics.invocations;
    publish(&s.broker, "in/after", "x").await;
    let m = recv(&mut sub).await;
    assert_eq!((&*m.topic, &*m.origin), ("in/after", "$local"));
    let more = tokio::time::timeout(Duration::from_millis(500), sub.recv()).await;
    assert!(more.is_err(), "called after stop: {more:?}");
    assert_eq!(n.functions.get("echo").unwrap().metrics.invocations, before);
}

/// A new version with another concurrency gets a new trigger task, and
/// one deleted and deployed again keeps being triggered.
#[tokio::test]
async fn triggers_follow_redeploys_and_deletes() {
    let n = node().await;
    let s = &n.state;
    let triggers = Triggers::start(n.functions.clone(), s.broker.clone());
    deploy_wasm(s, "echo", "echo", json!({"subscribe": ["in/#"]})).await;
    let mut sub = s.broker.subscribe("in/#", 256).await.unwrap();
    until_triggered(&s.broker, &mut sub, "in/probe", "echo").await;
    deploy_wasm(
        s,
        "echo",
        "echo",
        json!({"subscribe": ["in/#"], "limits": {"concurrency": 2}}),
    )
    .await;
    until_triggered(&s.broker, &mut sub, "in/probe", "echo").await;
    let (st, _) = call(s, "DELETE", "/api/functions/echo", None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    deploy_wasm(s, "echo", "echo", json!({"subscribe": ["in/#"]})).await;
    until_triggered(&s.broker, &mut sub, "in/probe", "echo").await;
    publish(&s.broker, "in/x", "last").await;
    let m = recv(&mut sub).await;
    assert_eq!((&*m.topic, &*m.origin), ("in/x", "$local"));
    let m = recv(&mut sub).await;
    assert_eq!((&*m.topic, &*m.origin), ("in/x", "$function/echo"));
    triggers.stop();
}

/// Without an API token, a process function (a command run on the node)
/// cannot be deployed through the API; nothing is deployed.
#[tokio::test]
async fn process_functions_need_an_api_token() {
    let mut n = node().await;
    n.state.token = None;
    let body = json!({"name": "py", "runtime": "process",
                      "command": ["python3", path_str(&python_example())]});
    let got = call(&n.state, "POST", "/api/functions", Some(body)).await;
    error(&got, StatusCode::FORBIDDEN, "forbidden");
    assert!(n.functions.get("py").is_none());
    // wasm functions are still fine without a token.
    let body = json!({"name": "echo", "path": path_str(&wat("echo"))});
    let (st, _) = call(&n.state, "POST", "/api/functions", Some(body)).await;
    assert_eq!(st, StatusCode::CREATED);
}

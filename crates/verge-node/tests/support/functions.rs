//! Helpers shared by the node's function tests: a node with a function
//! registry, requests through the router, test modules.

#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

pub use std::path::{Path, PathBuf};
pub use std::sync::Arc;
pub use std::time::{Duration, Instant};

pub use axum::body::Body;
pub use axum::http::{Request, StatusCode};
pub use base64::Engine as _;
pub use base64::engine::general_purpose::STANDARD as B64;
pub use serde_json::{Value, json};
pub use tower::ServiceExt;
pub use verge_broker::{Broker, BrokerConfig, BrokerHandle, LocalSubscription, Message};
pub use verge_functions::{FunctionSpec, Functions, FunctionsConfig};
pub use verge_mqtt::QoS;
pub use verge_node::http::{ApiState, router};
pub use verge_node::services::{FunctionsInvoker, Triggers};
pub use verge_rules::{Engine, FunctionInvoker, RuleConfig, RuleEngineConfig, Services};

/// Longest wait for anything that should happen; only there so a broken
/// build fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn wat(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../verge-functions/tests/wat")
        .join(format!("{name}.wat"))
}

pub fn python_example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/functions/python/handler.py")
}

/// A test module's text as `module_base64` takes it (the API reads no
/// file on the node).
pub fn wat_b64(name: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(wat(name)).expect("module"))
}

/// Deploy a process function straight into the registry: the API refuses
/// them (they come from the config file).
pub async fn deploy_process(n: &Node, spec: Value) {
    let spec: verge_functions::FunctionSpec = serde_json::from_value(spec).expect("spec");
    n.functions.deploy(spec, None).await.expect("deploy");
}

pub fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_owned()
}

pub fn broker() -> Broker {
    let cfg = BrokerConfig::default();
    let auth = Broker::authenticator(&cfg).expect("auth");
    Broker::start(cfg, auth)
}

/// A node's API state with a function registry in a temporary directory.
pub struct Node {
    pub _dir: tempfile::TempDir,
    pub _broker: Broker,
    pub functions: Functions,
    pub state: ApiState,
}

pub async fn node() -> Node {
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

pub const TOKEN: &str = "functions-test-token";

pub fn state(broker: &Broker, functions: Option<Functions>) -> ApiState {
    let mut services = Services::new(broker.handle());
    services.functions = functions
        .clone()
        .map(|f| Arc::new(FunctionsInvoker::new(f)) as Arc<dyn FunctionInvoker>);
    ApiState {
        name: Arc::from("test-node"),
        started: Instant::now(),
        broker: broker.handle(),
        rules: Arc::new(Engine::new(services, RuleEngineConfig::default())),
        // With a token, as the node's API has by default.
        auth: Some(Arc::new(
            verge_node::http::auth::ApiTokens::open(
                &tempfile::tempdir().expect("dir").keep(),
                Some(TOKEN),
            )
            .expect("tokens"),
        )),
        guard: Default::default(),
        store: None,
        bridge: None,
        functions,
        drivers: None,
        components: None,
        coap: None,
        cloud: None,
        local: None,
        devices: None,
    }
}

/// One request; the body is sent with `content_type` when given.
pub async fn raw(
    s: &ApiState,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri(path);
    if s.auth.is_some() {
        req = req.header("authorization", format!("Bearer {TOKEN}"));
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

pub fn parse(method: &str, path: &str, text: &str) -> Value {
    if text.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text}"))
}

/// A request with an optional JSON body; the answer parsed as JSON.
pub async fn call(
    s: &ApiState,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
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
pub fn error(got: &(StatusCode, Value), status: StatusCode, code: &str) -> String {
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

pub async fn deploy_wasm(s: &ApiState, name: &str, module: &str, extra: Value) -> Value {
    let mut spec = json!({"name": name, "module_base64": wat_b64(module)});
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

pub async fn invoke(s: &ApiState, name: &str, body: Value) -> (StatusCode, Value) {
    call(
        s,
        "POST",
        &format!("/api/functions/{name}/invoke"),
        Some(body),
    )
    .await
}

pub async fn recv(sub: &mut LocalSubscription) -> Arc<Message> {
    tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("a message within the wait")
        .expect("broker running")
}

/// A WebAssembly *binary* module, built by hand: ABI version 1, and every
/// call returns no messages (status 0 and a count of 0: the five zero bytes
/// at offset 2048).
pub fn binary_module() -> Vec<u8> {
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
pub const STATE_WAT: &str = r#"
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

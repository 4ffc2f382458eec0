//! Test helpers: a fake cloud (join, desired-state long poll, status) on
//! 127.0.0.1:0 with in-memory state, and a node made of real parts
//! (broker, authenticator, rule engine, function registry).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use verge_agent::{Agent, Credentials, NodeParts};
use verge_broker::config::AclPolicy;
use verge_broker::{Authenticator, Broker, BrokerConfig, Registry};
use verge_functions::{Functions, FunctionsConfig};
use verge_net::BoxFuture;
use verge_protocol::{
    DesiredState, DeviceEntry, FunctionArtifact, JoinRequest, JoinResponse, RuleSpec, StatusReport,
    node_bearer,
};
use verge_rules::{
    Engine, FunctionInvoker, FunctionMessage, InvokeError, RuleEngineConfig, Services,
};

/// Longest wait for anything that should happen; only there so that a
/// broken build fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(10);

pub const NODE: &str = "edge-1";
pub const SECRET: &str = "node-secret";
pub const JOIN_TOKEN: &str = "join-token-1";

/// The fake cloud's state.
pub struct CloudState {
    /// The join token, until used.
    join_token: Mutex<Option<String>>,
    /// The node's desired state; every change wakes the long polls.
    desired: watch::Sender<DesiredState>,
    /// Heartbeats received.
    pub reports: Mutex<Vec<StatusReport>>,
    /// Join requests received.
    pub joins: Mutex<Vec<JoinRequest>>,
    /// When set, node credentials are refused (401).
    pub refuse: AtomicBool,
    /// Desired-state polls received.
    pub polls: AtomicU64,
    /// Longest a poll is held without a change, ms (the node asks for
    /// 25 s; a test of what happens between quiet polls shortens it).
    pub hold_ms: AtomicU64,
    /// Polls now waiting for a change.
    pub waiting: AtomicU64,
    /// Component archives by (name, version).
    pub artifacts: Mutex<std::collections::HashMap<(String, String), Vec<u8>>>,
    /// Archive downloads served.
    pub downloads: AtomicU64,
    /// Release binaries by version.
    pub releases: Mutex<std::collections::HashMap<String, Vec<u8>>>,
}

pub struct FakeCloud {
    pub url: String,
    pub state: Arc<CloudState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeCloud {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TLS listener for `axum::serve`: accepts TCP, then the handshake;
/// connections whose handshake fails are dropped.
pub struct TlsListener {
    pub tcp: tokio::net::TcpListener,
    pub acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, peer)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, peer);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// A self-signed certificate for `localhost` and `127.0.0.1`: the server
/// config, and the certificate in PEM (the CA file a client trusts).
pub fn self_signed() -> (Arc<tokio_rustls::rustls::ServerConfig>, String) {
    use tokio_rustls::rustls;
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![made.cert.der().clone()], key)
    .expect("server config");
    (Arc::new(config), made.cert.pem())
}

impl FakeCloud {
    pub async fn start() -> FakeCloud {
        FakeCloud::start_on(None).await
    }

    /// The fake cloud over HTTPS with `tls`; its URL is `https://127.0.0.1:…`.
    pub async fn start_tls(tls: Arc<tokio_rustls::rustls::ServerConfig>) -> FakeCloud {
        FakeCloud::start_on(Some(tls)).await
    }

    async fn start_on(tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>) -> FakeCloud {
        let (desired, _) = watch::channel(DesiredState {
            node_id: NODE.into(),
            version: 0,
            devices: vec![],
            rules: vec![],
            functions: vec![],
            drivers: vec![],
            components: vec![],
            release: None,
            config: json!({}),
        });
        let state = Arc::new(CloudState {
            join_token: Mutex::new(Some(JOIN_TOKEN.into())),
            desired,
            reports: Mutex::new(Vec::new()),
            joins: Mutex::new(Vec::new()),
            refuse: AtomicBool::new(false),
            polls: AtomicU64::new(0),
            hold_ms: AtomicU64::new(60_000),
            waiting: AtomicU64::new(0),
            artifacts: Mutex::new(std::collections::HashMap::new()),
            downloads: AtomicU64::new(0),
            releases: Mutex::new(std::collections::HashMap::new()),
        });
        let app = Router::new()
            .route("/api/agent/join", post(join))
            .route("/api/agent/desired", get(desired_state))
            .route("/api/agent/status", post(status))
            .route(
                verge_protocol::paths::COMPONENT_ARTIFACT,
                get(component_archive),
            )
            .route(verge_protocol::paths::RELEASE_BINARY, get(release_binary))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = match tls {
            None => tokio::spawn(async move {
                axum::serve(listener, app).await.expect("serve");
            }),
            Some(config) => {
                let listener = TlsListener {
                    tcp: listener,
                    acceptor: tokio_rustls::TlsAcceptor::from(config),
                };
                tokio::spawn(async move {
                    axum::serve(listener, app).await.expect("serve");
                })
            }
        };
        FakeCloud {
            url: format!("{scheme}://{addr}"),
            state,
            task,
        }
    }

    /// Change the desired state; its version grows by one. Returns it.
    pub fn publish(&self, change: impl FnOnce(&mut DesiredState)) -> i64 {
        let mut version = 0;
        self.state.desired.send_modify(|d| {
            change(d);
            d.version += 1;
            version = d.version;
        });
        version
    }

    pub fn version(&self) -> i64 {
        self.state.desired.borrow().version
    }

    pub fn creds(&self) -> Credentials {
        Credentials {
            cloud_url: self.url.clone(),
            node_id: NODE.into(),
            secret: SECRET.into(),
            mqtt_url: "mqtt://127.0.0.1:1884".into(),
            ca_file: None,
            release_key: None,
        }
    }

    pub fn reports(&self) -> Vec<StatusReport> {
        self.state.reports.lock().unwrap().clone()
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

fn node_authorized(s: &CloudState, headers: &HeaderMap) -> bool {
    let expected = node_bearer(NODE, SECRET);
    !s.refuse.load(Ordering::SeqCst)
        && headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v == expected)
}

async fn component_archive(
    State(s): State<Arc<CloudState>>,
    headers: HeaderMap,
    axum::extract::Path((name, version)): axum::extract::Path<(String, String)>,
) -> Response {
    if !node_authorized(&s, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "bad node credentials",
        );
    }
    let body = s.artifacts.lock().unwrap().get(&(name, version)).cloned();
    match body {
        Some(b) => {
            s.downloads.fetch_add(1, Ordering::SeqCst);
            b.into_response()
        }
        None => error(StatusCode::NOT_FOUND, "not_found", "no such artifact"),
    }
}

async fn release_binary(
    State(s): State<Arc<CloudState>>,
    headers: HeaderMap,
    axum::extract::Path(version): axum::extract::Path<String>,
) -> Response {
    if !node_authorized(&s, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "bad node credentials",
        );
    }
    let body = s.releases.lock().unwrap().get(&version).cloned();
    match body {
        Some(b) => b.into_response(),
        None => error(StatusCode::NOT_FOUND, "not_found", "no such release"),
    }
}

/// A component supervisor that records what it is asked to run.
#[derive(Default)]
pub struct RecordingHost {
    /// Every apply's specs.
    pub applies: Mutex<Vec<Vec<verge_protocol::ComponentSpec>>>,
    /// The state every component reports (`healthy` when unset).
    pub state: Mutex<Option<String>>,
    /// Bumped by [`RecordingHost::set_state`].
    pub transitions: watch::Sender<u64>,
}

impl verge_agent::ComponentHost for RecordingHost {
    fn apply<'a>(
        &'a self,
        specs: &'a [verge_protocol::ComponentSpec],
    ) -> verge_agent::ApplyFuture<'a> {
        self.applies.lock().unwrap().push(specs.to_vec());
        Box::pin(async { Vec::new() })
    }

    fn report(&self) -> Vec<Value> {
        let last = self
            .applies
            .lock()
            .unwrap()
            .last()
            .cloned()
            .unwrap_or_default();
        let state = self
            .state
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| "healthy".into());
        last.iter()
            .map(|s| json!({"name": s.name, "version": s.version, "state": state}))
            .collect()
    }

    fn transitions(&self) -> Option<watch::Receiver<u64>> {
        Some(self.transitions.subscribe())
    }

    /// Like a supervisor within an update's grace: every version asked
    /// for so far may still be gone back to.
    fn versions_in_use(&self) -> Vec<(String, String)> {
        self.applies
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .map(|s| (s.name.clone(), s.version.clone()))
            .collect()
    }
}

impl RecordingHost {
    /// Every component is now in `state`.
    pub fn set_state(&self, state: &str) {
        *self.state.lock().unwrap() = Some(state.into());
        self.transitions.send_modify(|v| *v += 1);
    }

    /// The specs of the last apply.
    pub fn last(&self) -> Option<Vec<verge_protocol::ComponentSpec>> {
        self.applies.lock().unwrap().last().cloned()
    }
}

/// A gzipped tar archive of `files` (path, contents, mode).
pub fn tar_gz(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (path, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_cksum();
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

async fn join(State(s): State<Arc<CloudState>>, Json(req): Json<JoinRequest>) -> Response {
    s.joins.lock().unwrap().push(req.clone());
    let mut token = s.join_token.lock().unwrap();
    if token.as_deref() != Some(req.token.as_str()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown, used or expired join token",
        );
    }
    *token = None;
    Json(JoinResponse {
        node_id: NODE.into(),
        secret: SECRET.into(),
        mqtt_url: "mqtt://127.0.0.1:1884".into(),
    })
    .into_response()
}

#[derive(Deserialize)]
struct PollQuery {
    version: i64,
    #[serde(default)]
    wait_ms: u64,
}

async fn desired_state(
    State(s): State<Arc<CloudState>>,
    headers: HeaderMap,
    Query(q): Query<PollQuery>,
) -> Response {
    s.polls.fetch_add(1, Ordering::SeqCst);
    if !node_authorized(&s, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown node credentials",
        );
    }
    let mut rx = s.desired.subscribe();
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(q.wait_ms.min(s.hold_ms.load(Ordering::SeqCst)));
    s.waiting.fetch_add(1, Ordering::SeqCst);
    let answer = loop {
        {
            let d = rx.borrow_and_update();
            if d.version != q.version {
                break Json(d.clone()).into_response();
            }
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => continue,
            _ => break StatusCode::NO_CONTENT.into_response(),
        }
    };
    s.waiting.fetch_sub(1, Ordering::SeqCst);
    answer
}

async fn status(
    State(s): State<Arc<CloudState>>,
    headers: HeaderMap,
    Json(report): Json<StatusReport>,
) -> Response {
    if !node_authorized(&s, &headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown node credentials",
        );
    }
    s.reports.lock().unwrap().push(report);
    StatusCode::NO_CONTENT.into_response()
}

/// A URL where nothing listens.
pub async fn closed_url() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    format!("http://{addr}")
}

/// Lets rules call the registry's functions.
struct Invoker(Functions);

impl FunctionInvoker for Invoker {
    fn exists(&self, name: &str) -> bool {
        self.0.exists(name)
    }

    fn invoke<'a>(
        &'a self,
        _name: &'a str,
        _msg: FunctionMessage,
    ) -> BoxFuture<'a, Result<Vec<FunctionMessage>, InvokeError>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// A node's parts, built fresh in `dir`.
pub struct TestNode {
    pub dir: PathBuf,
    pub broker: Broker,
    pub auth: Authenticator,
    pub base: Registry,
    pub rules: Arc<Engine>,
    pub functions: Functions,
    pub drivers: Arc<verge_drivers::Drivers>,
}

impl TestNode {
    pub async fn new(dir: &Path) -> TestNode {
        TestNode::with_registry(dir, Registry::default()).await
    }

    pub async fn with_registry(dir: &Path, base: Registry) -> TestNode {
        let auth = Authenticator::new(base.clone(), false, AclPolicy::Deny).expect("auth");
        let broker = Broker::start(BrokerConfig::default(), auth.clone());
        let functions = Functions::open(FunctionsConfig {
            dir: dir.join("functions"),
        })
        .await
        .expect("functions");
        let mut services = Services::new(broker.handle());
        services.functions = Some(Arc::new(Invoker(functions.clone())));
        let rules = Arc::new(Engine::new(services, RuleEngineConfig::default()));
        let drivers = Arc::new(
            verge_drivers::Drivers::new(broker.handle()).with_pki_root(dir.join("opcua-pki")),
        );
        TestNode {
            dir: dir.to_path_buf(),
            broker,
            auth,
            base,
            rules,
            functions,
            drivers,
        }
    }

    pub fn parts(&self) -> NodeParts {
        NodeParts {
            auth: self.auth.clone(),
            base_registry: self.base.clone(),
            rules: self.rules.clone(),
            functions: self.functions.clone(),
            drivers: Some(self.drivers.clone()),
            broker: self.broker.handle(),
            bridge: None,
            components: None,
            store: None,
            local: None,
            devices: None,
            data_dir: self.dir.clone(),
            started: Instant::now(),
        }
    }

    /// The agent's directory.
    pub fn cloud_dir(&self) -> PathBuf {
        self.dir.join("cloud")
    }

    /// An agent with `options` (the executable a release replaces, the
    /// grace of a new binary).
    pub async fn agent_opts(
        &self,
        creds: Credentials,
        options: verge_agent::AgentOptions,
    ) -> Agent {
        Agent::start_with(creds, self.cloud_dir(), self.parts(), options)
            .await
            .expect("agent")
    }

    pub async fn agent(&self, creds: Credentials) -> Agent {
        Agent::start(creds, self.cloud_dir(), self.parts())
            .await
            .expect("agent")
    }

    /// An agent whose node runs `host` as its component supervisor.
    pub async fn agent_with(&self, creds: Credentials, host: Arc<RecordingHost>) -> Agent {
        let mut parts = self.parts();
        parts.components = Some(host);
        Agent::start(creds, self.cloud_dir(), parts)
            .await
            .expect("agent")
    }

    pub fn device_logs_in(&self, id: &str, secret: &str) -> bool {
        self.auth
            .authenticate("client-1", Some(id), Some(secret.as_bytes()), None)
            .is_ok()
    }

    pub async fn has_rule(&self, id: &str) -> bool {
        self.rules.get(id).await.is_ok()
    }
}

/// Wait until `check` holds, at most [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until the agent's last attempt is of revision `version` in
/// `state`; that attempt.
pub async fn eventually_attempt(
    agent: &verge_agent::Agent,
    version: i64,
    state: verge_protocol::AttemptState,
) -> verge_protocol::ApplyAttempt {
    let start = Instant::now();
    loop {
        let attempt = agent.status().attempt;
        if let Some(a) = &attempt
            && a.version == version
            && a.state == state
        {
            return a.clone();
        }
        assert!(
            start.elapsed() < WAIT,
            "revision {version} not {state:?}: {attempt:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait until a heartbeat the cloud took satisfies `check`; that report.
pub async fn eventually_report(
    cloud: &FakeCloud,
    check: impl Fn(&StatusReport) -> bool,
) -> StatusReport {
    let start = Instant::now();
    loop {
        if let Some(r) = cloud.reports().into_iter().rev().find(|r| check(r)) {
            return r;
        }
        assert!(start.elapsed() < WAIT, "no such report");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A function module: answers every call with no messages (status 0 and a
/// count of 0, the five zero bytes at offset 2048).
pub const MODULE_WAT: &str = r#"
(module
  (memory (export "memory") 1)
  (func (export "verge_abi_version") (result i32) i32.const 1)
  (func (export "verge_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "verge_handle") (param i32 i32) (result i64)
    i64.const 8796093022213))
"#;

pub fn artifact(name: &str, module: &str, version: i64) -> FunctionArtifact {
    FunctionArtifact {
        name: name.into(),
        version,
        sha256: hex::encode(Sha256::digest(module.as_bytes())),
        spec: serde_json::from_value(json!({"runtime": "wasm", "config": {}})).expect("spec"),
        module_base64: B64.encode(module.as_bytes()),
    }
}

pub fn device(id: &str, secret: &str) -> DeviceEntry {
    DeviceEntry {
        id: id.into(),
        password_hash: verge_broker::auth::hash_password(secret).expect("hash"),
    }
}

pub fn rule(id: &str, function: &str) -> RuleSpec {
    rule_spec(json!({
        "id": id,
        "sql": "SELECT * FROM \"devices/+/telemetry\"",
        "actions": [{"type": "function", "name": function}],
    }))
}

/// A rule spec from its JSON object.
pub fn rule_spec(v: Value) -> RuleSpec {
    serde_json::from_value(v).expect("rule spec")
}

/// Device d1 + function `tag` + rule r1 calling it.
pub fn full_state(d: &mut DesiredState) {
    d.devices = vec![device("d1", "d1-secret")];
    d.functions = vec![artifact("tag", MODULE_WAT, 1)];
    d.rules = vec![rule("r1", "tag")];
}

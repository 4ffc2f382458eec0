//! A whole node for tests: started from a config over a temp data dir,
//! served on loopback ports, called over HTTP; and a cloud serving its
//! desired state (changed with `Cloud::publish` or `Cloud::send`) and
//! keeping its heartbeats.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::watch;
use verge_agent::Credentials;
use verge_node::{CloudLink, Listeners, Node, NodeConfig};
use verge_protocol::{DesiredState, StatusReport};

/// Longest wait for anything that should happen.
pub const WAIT: Duration = Duration::from_secs(15);
pub const TOKEN: &str = "local-test-token";

/// A node serving its listeners until stopped.
pub struct Running {
    /// `http://127.0.0.1:<port>` of its API.
    pub url: String,
    /// Its first MQTT listener.
    pub mqtt: Option<std::net::SocketAddr>,
    /// Its CoAP socket, when `[coap] enabled`.
    pub coap: Option<std::net::SocketAddr>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), verge_node::StartError>>,
}

impl Running {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the node stops")
            .expect("task")
            .expect("serve");
    }

    /// A request to the API; the answer's status and JSON body (`null`
    /// when empty).
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, bytes) = verge_agent::http::request(
            method,
            &format!("{}{path}", self.url),
            Some(TOKEN),
            body.as_ref(),
            WAIT,
        )
        .await
        .expect("request");
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON")
        };
        (status, v)
    }

    /// The ids (names) of `GET path`'s list.
    pub async fn names(&self, path: &str, key: &str) -> Vec<String> {
        let (st, v) = self.call("GET", path, None).await;
        assert_eq!(st, 200, "{v}");
        let mut names: Vec<String> = v
            .as_array()
            .expect("a list")
            .iter()
            .map(|i| i[key].as_str().expect("name").to_owned())
            .collect();
        names.sort();
        names
    }
}

/// A node's config over `data`, with `extra` appended.
pub fn config(data: &Path, extra: &str) -> NodeConfig {
    let toml = format!(
        r#"
[node]
data_dir = {data:?}
[broker.listeners.tcp]
enabled = true
bind = "127.0.0.1:0"
[broker.listeners.ws]
enabled = false
bind = "127.0.0.1:0"
path = "/mqtt"
[http]
enabled = true
bind = "127.0.0.1:0"
token = "{TOKEN}"
[store]
enabled = false
{extra}
"#,
        data = data.to_str().expect("utf-8"),
    );
    let cfg: NodeConfig = toml::from_str(&toml).expect("config");
    cfg.validate().expect("valid");
    cfg
}

pub async fn start(cfg: NodeConfig, cloud: Option<CloudLink>) -> Running {
    let listeners = Listeners::bind(&cfg).await.expect("bind");
    let addr = listeners
        .http
        .as_ref()
        .expect("http")
        .local_addr()
        .expect("addr");
    let mqtt = listeners.mqtt.first().and_then(|l| l.local_addr().ok());
    let coap = listeners.coap.as_ref().and_then(|s| s.local_addr().ok());
    let node = Node::start(cfg, cloud).await.expect("start");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(node.serve(listeners, async {
        let _ = stopped.await;
    }));
    Running {
        url: format!("http://{addr}"),
        mqtt,
        coap,
        stop,
        task,
    }
}

/// A port on loopback where nothing listens.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

pub fn module_b64() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../verge-functions/tests/wat/echo.wat");
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).expect("module"))
}

pub const NODE_ID: &str = "edge-local";
pub const SECRET: &str = "edge-local-secret";

/// A cloud that serves one desired state (changed with `publish`) and
/// keeps the heartbeats.
pub struct Cloud {
    pub url: String,
    pub desired: watch::Sender<DesiredState>,
    pub reports: Arc<Mutex<Vec<StatusReport>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct CloudState {
    desired: watch::Sender<DesiredState>,
    reports: Arc<Mutex<Vec<StatusReport>>>,
}

#[derive(serde::Deserialize)]
struct Poll {
    version: i64,
}

async fn serve_desired(State(s): State<CloudState>, Query(q): Query<Poll>) -> Response {
    let mut rx = s.desired.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    loop {
        {
            let d = rx.borrow_and_update();
            if d.version != q.version {
                return Json(d.clone()).into_response();
            }
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            return StatusCode::NO_CONTENT.into_response();
        }
    }
}

async fn status(State(s): State<CloudState>, Json(r): Json<StatusReport>) -> StatusCode {
    s.reports.lock().unwrap().push(r);
    StatusCode::NO_CONTENT
}

impl Cloud {
    pub async fn start() -> Cloud {
        let (desired, _) = watch::channel(DesiredState {
            node_id: NODE_ID.into(),
            version: 0,
            devices: vec![],
            rules: vec![],
            functions: vec![],
            drivers: vec![],
            components: vec![],
            config: json!({}),
            release: None,
        });
        let reports = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route(verge_protocol::paths::DESIRED, get(serve_desired))
            .route(verge_protocol::paths::STATUS, post(status))
            .with_state(CloudState {
                desired: desired.clone(),
                reports: reports.clone(),
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Cloud {
            url,
            desired,
            reports,
            task,
        }
    }

    /// The next revision: its rules are `rules`, and it has the function
    /// `cloud-fn`.
    pub fn publish(&self, rules: &[Value]) -> i64 {
        let module = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../verge-functions/tests/wat/echo.wat"),
        )
        .expect("module");
        let function = verge_protocol::FunctionArtifact {
            name: "cloud-fn".into(),
            version: 1,
            sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&module)),
            spec: serde_json::from_value(json!({"runtime": "wasm"})).expect("spec"),
            module_base64: base64::engine::general_purpose::STANDARD.encode(&module),
        };
        let mut version = 0;
        self.desired.send_modify(|d| {
            d.functions = vec![function];
            d.rules = rules
                .iter()
                .map(|r| serde_json::from_value(r.clone()).expect("rule spec"))
                .collect();
            d.version += 1;
            version = d.version;
        });
        version
    }

    /// The next revision: the current one changed by `change`.
    pub fn send(&self, change: impl FnOnce(&mut DesiredState)) -> i64 {
        let mut version = 0;
        self.desired.send_modify(|d| {
            change(d);
            d.version += 1;
            version = d.version;
        });
        version
    }

    /// The newest heartbeat, once one satisfies `check`.
    pub async fn report(&self, check: impl Fn(&StatusReport) -> bool) -> StatusReport {
        let start = Instant::now();
        loop {
            let newest = self.reports.lock().unwrap().last().cloned();
            if let Some(r) = newest.filter(|r| check(r)) {
                return r;
            }
            assert!(start.elapsed() < WAIT, "no such heartbeat");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn link(&self, data: &Path) -> CloudLink {
        CloudLink {
            creds: Credentials {
                cloud_url: self.url.clone(),
                node_id: NODE_ID.into(),
                secret: SECRET.into(),
                mqtt_url: format!("mqtt://127.0.0.1:{}", closed_port()),
                ca_file: None,
                release_key: None,
            },
            dir: data.join("cloud"),
        }
    }

    /// The node's own items, as `kind/name/source`, of the newest
    /// heartbeat once it satisfies `check`.
    pub async fn local_items(&self, check: impl Fn(&[String]) -> bool) -> Vec<String> {
        let start = Instant::now();
        loop {
            let newest = self.reports.lock().unwrap().last().cloned();
            if let Some(r) = newest {
                let mut items: Vec<String> = r
                    .local
                    .iter()
                    .map(|i| format!("{}/{}/{}", i.kind, i.name, i.source))
                    .collect();
                items.sort();
                if check(&items) {
                    return items;
                }
            }
            assert!(start.elapsed() < WAIT, "no such heartbeat");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub async fn wait_for_rule(node: &Running, id: &str) {
    let start = Instant::now();
    while node.call("GET", &format!("/api/rules/{id}"), None).await.0 != 200 {
        assert!(start.elapsed() < WAIT, "rule {id} never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

//! Shared test helpers: a cloud on a temporary SQLite file, or on a fresh
//! PostgreSQL database when `VERGE_TEST_POSTGRES_URL` is set.
#![allow(dead_code)]

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Duration, timeout};
use tower::ServiceExt;
use verge_cloud::{Cloud, CloudConfig};

/// `both!(a, b)`: tests `sqlite::a`, `postgres::a`, … that run the async
/// fns `a(h: Harness)`, `b(h)` of the including file against a fresh cloud
/// on each database (the PostgreSQL ones return at once, saying why, unless
/// `VERGE_TEST_POSTGRES_URL` is set). The including file imports
/// `harness_on`.
#[allow(unused_macros)]
macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(h) = super::harness_on(false).await {
                    super::$name(h).await;
                }
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(h) = super::harness_on(true).await {
                    super::$name(h).await;
                }
            })*
        }
    };
}

pub struct Harness {
    pub cloud: Cloud,
    pub admin: String,
    pub db_url: String,
    pub dir: tempfile::TempDir,
    /// The PostgreSQL database made for this test, dropped with the last
    /// clone (so a run does not leave hundreds of databases on the disk).
    pub scratch: Option<std::sync::Arc<ScratchDb>>,
}

/// A test's own PostgreSQL database, dropped (with `FORCE`, closing what
/// is still connected) when this is dropped.
pub use verge_cloud::testing::ScratchDb;

/// The database the API tests run on: `postgres` when the env var is set
/// and `want_postgres`, else SQLite.
pub async fn harness_on(postgres: bool) -> Option<Harness> {
    harness_with(postgres, |_| {}).await
}

/// As [`harness_on`], with `tweak` applied to the configuration.
pub async fn harness_with(postgres: bool, tweak: impl FnOnce(&mut CloudConfig)) -> Option<Harness> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = CloudConfig::default();
    cfg.cloud.data_dir = dir.path().join("data");
    tweak(&mut cfg);
    let mut scratch = None;
    if postgres {
        let db = ScratchDb::from_env("verge_test").await?;
        cfg.cloud.database = db.url().to_owned();
        scratch = Some(std::sync::Arc::new(db));
    }
    let db_url = cfg.database_url();
    let (cloud, admin) = Cloud::open(cfg).await.expect("open cloud");
    let admin = admin.expect("first start makes an admin token");
    Some(Harness {
        cloud,
        admin,
        db_url,
        dir,
        scratch,
    })
}

/// Give `what` up to 60 s to become true (a guard against a hang, not a
/// timing assertion), checking every 100 ms.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never happened: {what}");
}

pub async fn harness() -> Harness {
    harness_on(false).await.expect("sqlite harness")
}

impl Harness {
    /// A second cloud on this harness's database (a replica), with a data
    /// directory of its own (so its own replica id) and `tweak` applied to
    /// its configuration; it shares the admin token and keeps the test's
    /// PostgreSQL database alive. PostgreSQL only: SQLite has one process.
    pub async fn replica(&self, tweak: impl FnOnce(&mut CloudConfig)) -> Harness {
        assert!(self.scratch.is_some(), "replicas need PostgreSQL");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = CloudConfig::default();
        cfg.cloud.data_dir = dir.path().join("data");
        cfg.cloud.database = self.db_url.clone();
        tweak(&mut cfg);
        let (cloud, admin) = Cloud::open(cfg).await.expect("open replica");
        assert!(admin.is_none(), "the admin token exists already");
        Harness {
            cloud,
            admin: self.admin.clone(),
            db_url: self.db_url.clone(),
            dir,
            scratch: self.scratch.clone(),
        }
    }

    /// A connection pool of the test's own to this harness's database
    /// (close it when done).
    pub async fn db(&self) -> sqlx::AnyPool {
        sqlx::AnyPool::connect(&self.db_url).await.expect("db")
    }

    /// The number `sql` (a `SELECT COUNT(*) …`) answers.
    pub async fn count(&self, sql: &str) -> i64 {
        let pool = self.db().await;
        let (n,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&pool)
            .await
            .expect("count");
        pool.close().await;
        n
    }

    /// Create device `name` on node `node` (201 expected).
    pub async fn device(&self, node: &str, name: &str) {
        let (s, v) = self
            .call(
                Method::POST,
                "/api/devices",
                Some(serde_json::json!({"name": name, "node_id": node})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }

    /// The value of the unlabelled Prometheus sample `name` at `/metrics`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let (_, v) = self.call_as(Method::GET, "/metrics", None, None).await;
        v.as_str()?.lines().find_map(|l| {
            let (n, value) = l.split_once(' ')?;
            (n == name).then(|| value.trim().parse().ok())?
        })
    }

    /// Call the API as admin.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let token = self.admin.clone();
        self.call_as(method, path, Some(&format!("Bearer {token}")), body)
            .await
    }

    /// Call with an explicit `Authorization` header value.
    pub async fn call_as(
        &self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .expect("request");
        self.send(req).await
    }

    pub async fn send(&self, req: Request<Body>) -> (StatusCode, Value) {
        let res = self.cloud.router().oneshot(req).await.expect("response");
        let status = res.status();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        (status, value)
    }

    /// A node's heartbeat (`POST /api/agent/status`) with its credentials.
    pub async fn status_as(&self, node: &str, secret: &str, body: Value) -> (StatusCode, Value) {
        self.call_as(
            Method::POST,
            "/api/agent/status",
            Some(&verge_protocol::node_bearer(node, secret)),
            Some(body),
        )
        .await
    }

    /// Create node `name` and join it; returns (node id, secret).
    pub async fn joined_node(&self, name: &str) -> (String, String) {
        let (s, v) = self
            .call(
                Method::POST,
                "/api/nodes",
                Some(serde_json::json!({"name": name})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let token = v["join_token"].as_str().expect("join token").to_owned();
        let (s, v) = self
            .call_as(
                Method::POST,
                "/api/agent/join",
                None,
                Some(serde_json::json!({"token": token, "hostname": "h"})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        (
            v["node_id"].as_str().expect("node id").to_owned(),
            v["secret"].as_str().expect("secret").to_owned(),
        )
    }
}

/// `GET /api/agent/desired` as a node.
pub async fn desired_as(
    h: &Harness,
    node: &str,
    secret: &str,
    version: i64,
    wait_ms: u64,
) -> (StatusCode, Value) {
    h.call_as(
        Method::GET,
        &format!("/api/agent/desired?version={version}&wait_ms={wait_ms}"),
        Some(&verge_protocol::node_bearer(node, secret)),
        None,
    )
    .await
}

/// The cloud serving HTTP and MQTT on ephemeral local ports.
pub struct Served {
    stop: oneshot::Sender<()>,
    server: JoinHandle<Result<(), verge_cloud::CloudError>>,
    pub mqtt: std::net::SocketAddr,
}

pub async fn serve(h: &Harness) -> Served {
    let http = TcpListener::bind("127.0.0.1:0").await.expect("bind http");
    let mqtt = TcpListener::bind("127.0.0.1:0").await.expect("bind mqtt");
    let addr = mqtt.local_addr().expect("addr");
    let (stop, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(h.cloud.clone().serve(http, mqtt, async {
        let _ = rx.await;
    }));
    Served {
        stop,
        server,
        mqtt: addr,
    }
}

impl Served {
    /// What `serve` returned when the cloud stopped by itself (no stop
    /// asked for), waiting at most `within`.
    pub async fn ended(self, within: Duration) -> Result<(), verge_cloud::CloudError> {
        timeout(within, self.server)
            .await
            .expect("the cloud stopped by itself")
            .expect("task")
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        timeout(Duration::from_secs(10), self.server)
            .await
            .expect("serve stops")
            .expect("task")
            .expect("serve ok");
    }
}

/// The demo function in WebAssembly text.
pub const DEMO_WAT: &str = include_str!("../../../verge/src/demo/demo-tag.wat");

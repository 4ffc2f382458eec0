//! The cloud management center: the open HTTP API (`/api`, described by
//! `/api/openapi.json`), the web console, the node protocol
//! (`verge-protocol` over HTTP) and an MQTT endpoint for nodes run by the
//! workspace broker.
//!
//! Design: all state lives in the database (SQLite by default, PostgreSQL
//! for replicas); the process keeps only caches (the broker's device
//! registry, refreshed from the database every 10 s, and the function
//! sandbox, redeployed from the database when its copy differs). Every
//! change to what a node should run bumps that node's desired version and
//! makes its revision of that number (a snapshot the node is served from,
//! `revisions`) in the same transaction, and wakes long-polling nodes in
//! this process;
//! other replicas notice within a second by re-reading the version.
//!
//! Upstream messages reach the database through a durable broker
//! subscription: a node's QoS 1 PUBLISH is acknowledged only after the
//! batch holding it committed, so an acknowledged message is never lost.
//!
//! Rejected alternative: an in-memory cache of nodes and rules as the
//! source of truth with write-behind to the database. It would be faster,
//! but replicas would disagree and a crash would lose acknowledged changes.

mod api;
mod auth;
pub mod config;
mod console;
mod db;
mod desired;
mod devices;
mod error;
mod ingest;
mod listeners;
mod metrics;
mod openapi;
mod revisions;
mod rollouts;
mod routes;
pub mod telemetry;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use sqlx::AnyPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use verge_broker::auth::{AclAction, AclRule, Device};
use verge_broker::config::{AclPolicy, ClientIdBinding};
use verge_broker::{
    Authenticator, BoundListener, Broker, BrokerConfig, BrokerHandle, Registry, Transport,
};
use verge_duration::HumanDuration;
use verge_protocol::topics;

pub use config::CloudConfig;
pub use error::CloudError;
pub use listeners::{BindError, Listeners};
pub use routes::openapi;

use metrics::Metrics;

/// The running cloud. Cheap to clone.
#[derive(Clone)]
pub struct Cloud {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// The configuration.
    pub(crate) cfg: CloudConfig,
    /// The database.
    pub(crate) pool: AnyPool,
    /// On PostgreSQL, a second pool for the telemetry path, which binds
    /// arrays (`crate::telemetry`).
    pub(crate) pg: Option<sqlx::PgPool>,
    /// The broker, until `serve` takes it.
    broker: Mutex<Option<Broker>>,
    /// The broker's in-process API.
    pub(crate) handle: BrokerHandle,
    /// The broker's authenticator (its registry is swapped on changes).
    auth: Authenticator,
    /// The TLS endpoint's transport, when `mqtt.tls.enabled`.
    mqtt_tls: Option<Transport>,
    /// The function sandbox.
    pub(crate) functions: verge_functions::Functions,
    /// Bumped whenever this process bumps a desired version.
    pub(crate) changes: watch::Sender<u64>,
    /// Set once the cloud shuts down.
    pub(crate) stop: watch::Sender<bool>,
    /// Counters.
    pub(crate) metrics: Metrics,
    /// Wakes the rollout driver (a node reported its status).
    pub(crate) rollouts_wake: tokio::sync::Notify,
    /// Wakes the device dispatcher (a command queued, a shadow changed, a
    /// node's heartbeat).
    pub(crate) dispatch_wake: tokio::sync::Notify,
    /// Store queries waiting for their node's reply (this process only).
    pub(crate) history: devices::history::Pending,
    /// Background tasks (ingest, registry refresh, pruning, the rollout
    /// driver, the device dispatcher).
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Cloud {
    /// Open/create the database, apply migrations, ensure an admin token
    /// exists and start the MQTT endpoint's broker (not yet listening).
    /// Returns the new admin token (plain) when one was just generated
    /// (first start), else `None`.
    pub async fn open(cfg: CloudConfig) -> Result<(Cloud, Option<String>), CloudError> {
        verge_net::fs::create_private_dir(&cfg.cloud.data_dir).map_err(|error| CloudError::Io {
            what: format!("cloud.data_dir {}", cfg.cloud.data_dir.display()),
            error,
        })?;
        // Check the TLS files first: a bad path fails the start before
        // anything is created, with the key named.
        let mqtt_tls = mqtt_tls(&cfg)?;
        let sqlite_file = cfg
            .cloud
            .database
            .is_empty()
            .then(|| cfg.cloud.data_dir.join("cloud.db"));
        if let Some(file) = &sqlite_file {
            db::create_private(file).map_err(|error| CloudError::Io {
                what: format!("{}", file.display()),
                error,
            })?;
        }
        let pool = db::open(&cfg.database_url()).await?;
        if let Some(file) = &sqlite_file {
            db::make_private(file).map_err(|error| CloudError::Io {
                what: format!("{}", file.display()),
                error,
            })?;
        }
        let url = cfg.database_url();
        let pg = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pg = telemetry::open_postgres(&url).await?;
            let retention =
                i64::try_from(cfg.cloud.message_retention.get().as_millis()).unwrap_or(i64::MAX);
            telemetry::maintain(&pg, db::now_ms(), retention).await?;
            Some(pg)
        } else {
            None
        };
        let admin = ensure_admin(&pool).await?;
        let auth = Authenticator::new(Registry::default(), false, AclPolicy::Deny)?;
        let broker_cfg = BrokerConfig {
            sys_interval: HumanDuration(Duration::ZERO),
            allow_anonymous: false,
            acl_default: AclPolicy::Deny,
            // Nodes log in as their id with the bridge's client id
            // (`verge-node-{id}` unless configured); each may only use its
            // own topics, and a session still belongs to the node that made
            // it, so one node cannot take over another's.
            client_id_binding: ClientIdBinding::Off,
            ..BrokerConfig::default()
        };
        let broker = Broker::start(broker_cfg, auth.clone());
        let handle = broker.handle();
        let functions = verge_functions::Functions::open(verge_functions::FunctionsConfig {
            dir: cfg.cloud.data_dir.join("function-sandbox"),
        })
        .await
        .map_err(CloudError::Other)?;
        let subscription = handle
            .subscribe_durable(&[topics::up_filter_all()], 4096)
            .await?;
        let cloud = Cloud {
            inner: Arc::new(Inner {
                cfg,
                pool,
                pg,
                broker: Mutex::new(Some(broker)),
                handle,
                auth,
                mqtt_tls,
                functions,
                changes: watch::channel(0).0,
                stop: watch::channel(false).0,
                metrics: Metrics::default(),
                rollouts_wake: tokio::sync::Notify::new(),
                dispatch_wake: tokio::sync::Notify::new(),
                history: devices::history::Pending::default(),
                tasks: Mutex::new(Vec::new()),
            }),
        };
        cloud.refresh_registry().await?;
        let tasks = vec![
            tokio::spawn(ingest::run(cloud.clone(), subscription)),
            tokio::spawn(ingest::prune_loop(cloud.clone())),
            tokio::spawn(registry_loop(cloud.clone())),
            tokio::spawn(rollouts::run(cloud.clone())),
            tokio::spawn(devices::dispatch::run(cloud.clone())),
        ];
        if let Ok(mut t) = cloud.inner.tasks.lock() {
            t.extend(tasks);
        }
        Ok((cloud, admin))
    }

    /// Store upstream messages (topics `nodes/{id}/up/…` of joined nodes)
    /// in one transaction exactly as the ingest path does once the broker
    /// has handed them over (`verge bench ingest` measures this).
    pub async fn store_upstream(&self, msgs: &[&verge_broker::Message]) -> Result<(), CloudError> {
        ingest::store_messages(self, msgs).await?;
        Ok(())
    }

    /// How many upstream messages are stored.
    pub async fn stored_messages(&self) -> Result<u64, CloudError> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM messages")
            .fetch_one(&self.inner.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Replace the admin token; returns the new one (plain, shown once).
    pub async fn reset_admin_token(&self) -> Result<String, CloudError> {
        let token = db::random_secret();
        let mut tx = self.inner.pool.begin().await?;
        sqlx::query("DELETE FROM tokens WHERE id = 'admin'")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO tokens (id, name, hash, created_ms) VALUES ('admin', 'admin', $1, $2)",
        )
        .bind(db::sha256_hex(token.as_bytes()))
        .bind(db::now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(token)
    }

    /// The HTTP app (API + console + `/healthz` + `/metrics`).
    pub fn router(&self) -> Router {
        // A module travels as base64 (4 bytes per 3) inside JSON, plus room
        // for the spec; saturating, since the setting may be any `usize`.
        let body_limit = (self.inner.cfg.cloud.max_upload_bytes / 3)
            .saturating_mul(4)
            .saturating_add(1 << 20);
        let cfg = &self.inner.cfg;
        let mut hosts = cfg.http.allowed_hosts.clone();
        hosts.push(cfg.http_url());
        let guard = verge_net::http::guard::Guard::new(&hosts, &cfg.http.allowed_origins);
        routes::api_router()
            .with_state(self.clone())
            .merge(console::router())
            .fallback(routes::not_found)
            .method_not_allowed_fallback(routes::method_not_allowed)
            .layer(DefaultBodyLimit::max(body_limit))
            .layer(axum::middleware::from_fn_with_state(
                std::sync::Arc::new(guard),
                verge_net::http::guard::guard,
            ))
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                metrics::count_requests,
            ))
    }

    /// Serve HTTP on `http` and the node MQTT endpoint on `mqtt` until
    /// `shutdown` resolves; then stop cleanly (broker shut down, background
    /// tasks ended, database pool closed). With `mqtt.tls.enabled` the TLS
    /// endpoint is bound at `mqtt.tls.bind`; see [`Cloud::serve_with`] to
    /// pass it already bound.
    pub async fn serve(
        self,
        http: tokio::net::TcpListener,
        mqtt: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), CloudError> {
        self.serve_with(http, mqtt, None, shutdown).await
    }

    /// As [`Cloud::serve`], with the TLS endpoint's socket already bound
    /// (`mqtt_tls`; tests bind port 0). `Some` needs `mqtt.tls.enabled`;
    /// `None` with TLS enabled binds `mqtt.tls.bind`.
    pub async fn serve_with(
        self,
        http: tokio::net::TcpListener,
        mqtt: tokio::net::TcpListener,
        mqtt_tls: Option<tokio::net::TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), CloudError> {
        let tls = match (&self.inner.mqtt_tls, mqtt_tls) {
            (Some(transport), Some(listener)) => Some((transport.clone(), listener)),
            (Some(transport), None) => {
                let addr = self.inner.cfg.mqtt.tls.bind;
                let listener =
                    tokio::net::TcpListener::bind(addr)
                        .await
                        .map_err(|error| CloudError::Io {
                            what: format!("mqtt.tls.bind {addr}: cannot listen"),
                            error,
                        })?;
                Some((transport.clone(), listener))
            }
            (None, Some(_)) => {
                return Err(CloudError::Other(
                    "mqtt.tls.enabled: a TLS listener was given but TLS is off".into(),
                ));
            }
            (None, None) => None,
        };
        let mut broker = self
            .inner
            .broker
            .lock()
            .ok()
            .and_then(|mut b| b.take())
            .ok_or_else(|| CloudError::Other("the cloud is served already".into()))?;
        broker.serve(BoundListener {
            listener: mqtt,
            transport: Transport::Tcp,
        });
        if let Some((transport, listener)) = tls {
            broker.serve(BoundListener {
                listener,
                transport,
            });
        }
        let stop = self.inner.stop.clone();
        let signal = async move {
            shutdown.await;
            let _ = stop.send(true);
        };
        let served = axum::serve(http, self.router())
            .with_graceful_shutdown(signal)
            .await
            .map_err(|error| CloudError::Io {
                what: "http server".into(),
                error,
            });
        let _ = self.inner.stop.send(true);
        broker.shutdown().await;
        let tasks = self
            .inner
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        for t in tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        self.inner.functions.shutdown().await;
        self.inner.pool.close().await;
        if let Some(pg) = &self.inner.pg {
            pg.close().await;
        }
        served
    }

    /// Rebuild the broker's registry from the database: one device per
    /// joined node, allowed to publish `nodes/{id}/up/#` and subscribe
    /// `nodes/{id}/down/#` only.
    pub(crate) async fn refresh_registry(&self) -> Result<(), CloudError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT id, secret_phc FROM nodes WHERE secret_phc IS NOT NULL ORDER BY id",
        )
        .fetch_all(&self.inner.pool)
        .await?;
        let devices = rows
            .into_iter()
            .map(|(id, phc)| Device {
                acl: vec![
                    acl(
                        AclPolicy::Allow,
                        AclAction::Publish,
                        &topics::up_filter(&id),
                    ),
                    acl(
                        AclPolicy::Allow,
                        AclAction::Subscribe,
                        &topics::down_filter(&id),
                    ),
                    acl(AclPolicy::Deny, AclAction::All, "#"),
                ],
                username: id,
                password_hash: Some(phc),
                client_id: None,
            })
            .collect();
        self.inner.auth.replace(Registry {
            acl: vec![acl(AclPolicy::Deny, AclAction::All, "#")],
            devices,
        })?;
        Ok(())
    }

    /// Tell long-polling nodes in this process that a version changed.
    pub(crate) fn notify_change(&self) {
        self.inner.changes.send_modify(|v| *v += 1);
    }

    pub(crate) fn inner(&self) -> &Inner {
        &self.inner
    }
}

/// The TLS endpoint's server config, when `mqtt.tls.enabled`; errors name
/// `mqtt.tls.cert` / `mqtt.tls.key`.
fn mqtt_tls(cfg: &CloudConfig) -> Result<Option<Transport>, CloudError> {
    let t = &cfg.mqtt.tls;
    if !t.enabled {
        return Ok(None);
    }
    let tls = verge_broker::config::TlsConfig {
        cert: t.cert.clone(),
        key: t.key.clone(),
        client_ca: None,
        require_client_cert: false,
    };
    let server = verge_broker::listener::server_tls(&tls, "mqtt.tls")?;
    Ok(Some(Transport::Tls(server)))
}

fn acl(permission: AclPolicy, action: AclAction, topic: &str) -> AclRule {
    AclRule {
        permission,
        action,
        topic: topic.to_owned(),
    }
}

async fn ensure_admin(pool: &AnyPool) -> Result<Option<String>, CloudError> {
    let have: Option<(String,)> = sqlx::query_as("SELECT id FROM tokens WHERE id = 'admin'")
        .fetch_optional(pool)
        .await?;
    if have.is_some() {
        return Ok(None);
    }
    let token = db::random_secret();
    let inserted = sqlx::query(
        "INSERT INTO tokens (id, name, hash, created_ms) VALUES ('admin', 'admin', $1, $2) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(db::sha256_hex(token.as_bytes()))
    .bind(db::now_ms())
    .execute(pool)
    .await?;
    // Another replica may have won the race.
    Ok((inserted.rows_affected() == 1).then_some(token))
}

/// Refresh the broker's registry every 10 s (other replicas' joins).
async fn registry_loop(cloud: Cloud) {
    let mut stop = cloud.inner.stop.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = cloud.refresh_registry().await {
            tracing::warn!("device registry not refreshed: {e}");
            cloud
                .inner
                .metrics
                .registry_failures
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

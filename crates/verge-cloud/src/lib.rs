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
//! `revisions`) in the same transaction, and wakes that node's long polls
//! in this process; on PostgreSQL a trigger notifies every replica at
//! commit, which wakes the polls it holds (`replicas`).
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
mod broker_auth;
pub mod config;
mod console;
mod db;
mod desired;
mod devices;
mod downlink;
mod error;
mod external;
mod heartbeats;
mod ingest;
mod listeners;
mod metrics;
mod openapi;
mod replicas;
mod revisions;
mod rollouts;
mod routes;
pub mod telemetry;
#[doc(hidden)]
pub mod testing;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Where commands, shadows and store queries go down to nodes.
    pub(crate) downlink: downlink::Downlink,
    /// The external broker, in external mode.
    external: Option<Arc<external::Plan>>,
    /// The broker's authenticator (its registry is swapped on changes).
    auth: Authenticator,
    /// The TLS endpoint's transport, when `mqtt.tls.enabled`.
    mqtt_tls: Option<Transport>,
    /// The function sandbox.
    pub(crate) functions: verge_functions::Functions,
    /// This process as a replica (its id and start).
    pub(crate) replica: replicas::Replica,
    /// Whether this replica leads: the gate of the singleton jobs
    /// (pruning, the rollout driver).
    pub(crate) leader: replicas::leader::Leadership,
    /// Per-node wake-ups of the held desired-state long polls.
    pub(crate) wake: replicas::wake::WakeHub,
    /// Set once the cloud shuts down.
    pub(crate) stop: watch::Sender<bool>,
    /// Why the cloud stopped by itself (`Cloud::fail`): `serve` returns it.
    failed: Mutex<Option<CloudError>>,
    /// Counters.
    pub(crate) metrics: Metrics,
    /// Wakes the rollout driver (a node reported its status).
    pub(crate) rollouts_wake: tokio::sync::Notify,
    /// Wakes the device dispatcher (a command queued, a shadow changed, a
    /// node's heartbeat).
    pub(crate) dispatch_wake: tokio::sync::Notify,
    /// Wakes the registry loop: another replica's joins or deletes.
    pub(crate) registry_wake: tokio::sync::Notify,
    /// Heartbeats written in batches (PostgreSQL).
    pub(crate) heartbeats: Option<heartbeats::Heartbeats>,
    /// Store queries waiting for their node's reply (this process only).
    pub(crate) history: devices::history::Pending,
    /// Node secrets `/api/broker/authn` verified lately.
    pub(crate) broker_secrets: broker_auth::SecretCache,
    /// The password of `mqtt.external.username` (from its
    /// `password_file`), when that user is set.
    pub(crate) broker_cloud_password: Option<String>,
    /// Node credentials in Mosquitto's dynamic-security plugin, when
    /// `mqtt.external.provision = "mosquitto-dynsec"`.
    pub(crate) dynsec: Option<broker_auth::dynsec::Dynsec>,
    /// Joins in flight (`api::agent::join`).
    pub(crate) joins: tokio::sync::Semaphore,
    /// Coalesces rebuilds of the broker's registry (`refresh_registry`).
    registry: RegistryRefresh,
    /// Background tasks (ingest, registry refresh, pruning, the rollout
    /// driver, the device dispatcher, the replica heartbeat, leadership,
    /// the desired-state listener).
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// Joins served at once; the others wait their turn.
const JOINS_IN_FLIGHT: usize = 16;

/// The state of `Cloud::refresh_registry`'s coalescing.
#[derive(Default)]
struct RegistryRefresh {
    /// Calls made so far.
    asked: AtomicU64,
    /// Every call up to this number is covered by a finished rebuild.
    covered: AtomicU64,
    /// One rebuild at a time.
    turn: tokio::sync::Mutex<()>,
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
        if cfg.cloud.database_connections == 0 {
            return Err(CloudError::Other(
                "cloud.database_connections must be at least 1".into(),
            ));
        }
        let replica_id = replicas::resolve_id(&cfg.cloud.replica_id, &cfg.cloud.data_dir)?;
        let external = external::Plan::resolve(&cfg)?.map(Arc::new);
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
        let pool = db::open(&cfg.database_url(), cfg.cloud.database_connections).await?;
        let replica = replicas::Replica::new(replica_id, db::is_postgres(&cfg.database_url()));
        replicas::check_unique(&pool, &replica).await?;
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
        let postgres = db::is_postgres(&cfg.database_url());
        let external_cfg = &cfg.mqtt.external;
        let broker_cloud_password = if external_cfg.username.is_empty() {
            None
        } else {
            Some(broker_auth::dynsec::read_password(
                "mqtt.external.password_file",
                external_cfg.password_file.as_deref(),
            )?)
        };
        let stop = watch::channel(false).0;
        let mut tasks = Vec::new();
        let dynsec = match external_cfg.provision {
            config::Provision::None => None,
            config::Provision::MosquittoDynsec => {
                let (d, task) = broker_auth::dynsec::Dynsec::start(external_cfg, stop.subscribe())?;
                tasks.push(task);
                Some(d)
            }
        };
        // Upstream: the in-process endpoint's durable subscription, or
        // the external broker's consumer (and adopter) feeding a channel.
        let (source, upstream_tx) = match &external {
            None => {
                let sub = handle
                    .subscribe_durable(&[topics::up_filter_all()], 4096)
                    .await?;
                (ingest::Source::Broker(sub), None)
            }
            Some(_) => {
                let (tx, rx) = tokio::sync::mpsc::channel(
                    usize::from(external::consumer::RECEIVE_MAXIMUM) * 4,
                );
                (ingest::Source::External(rx), Some(tx))
            }
        };
        let downlink = downlink::Downlink::new(handle.clone(), external.as_deref());
        let mut beats = pg.is_some().then(heartbeats::Heartbeats::new);
        let cloud = Cloud {
            inner: Arc::new(Inner {
                cfg,
                pool,
                pg,
                broker: Mutex::new(Some(broker)),
                handle,
                downlink,
                external: external.clone(),
                auth,
                mqtt_tls,
                functions,
                replica,
                leader: replicas::leader::Leadership::new(!postgres),
                wake: replicas::wake::WakeHub::new(!postgres),
                stop,
                failed: Mutex::new(None),
                metrics: Metrics::default(),
                rollouts_wake: tokio::sync::Notify::new(),
                dispatch_wake: tokio::sync::Notify::new(),
                registry_wake: tokio::sync::Notify::new(),
                heartbeats: beats.as_ref().map(|(h, _)| h.clone()),
                history: devices::history::Pending::default(),
                broker_secrets: broker_auth::SecretCache::default(),
                broker_cloud_password,
                dynsec,
                joins: tokio::sync::Semaphore::new(JOINS_IN_FLIGHT),
                registry: RegistryRefresh::default(),
                tasks: Mutex::new(Vec::new()),
            }),
        };
        // Listed at once (`GET /api/cloud/replicas`), then every 2 s.
        let inner = &cloud.inner;
        replicas::beat(
            &inner.pool,
            &inner.replica,
            &inner.cfg.http_url(),
            inner.leader.is_leader(),
            replicas::Claim::Take,
        )
        .await?;
        if cloud.inner.dynsec.is_some() {
            tasks.push(tokio::spawn(broker_auth::reconcile(cloud.clone())));
        }
        if let Some((_, rx)) = beats.take() {
            tasks.push(tokio::spawn(heartbeats::run(cloud.clone(), rx)));
        }
        tasks.extend([
            tokio::spawn(ingest::run(cloud.clone(), source)),
            tokio::spawn(ingest::prune_loop(cloud.clone())),
            tokio::spawn(rollouts::run(cloud.clone())),
            tokio::spawn(devices::dispatch::run(cloud.clone())),
            tokio::spawn(replicas::leader::run(cloud.clone())),
            tokio::spawn(replicas::heartbeat_loop(cloud.clone())),
        ]);
        if postgres {
            tasks.push(tokio::spawn(replicas::wake::listen(cloud.clone())));
        }
        match (&external, upstream_tx) {
            (Some(plan), Some(tx)) => {
                // The external broker authenticates nodes itself: no
                // registry for the in-process endpoint.
                tracing::info!(
                    "external broker mode: consuming {} on {}:{} as {}",
                    plan.shared_filter(),
                    plan.host,
                    plan.port,
                    plan.consumer_client_id()
                );
                tasks.push(tokio::spawn(external::consumer::run(
                    cloud.clone(),
                    plan.clone(),
                    tx.clone(),
                )));
                tasks.push(tokio::spawn(external::adopt::run(
                    cloud.clone(),
                    plan.clone(),
                    tx,
                )));
                tasks.extend(cloud.inner.downlink.start(&cloud));
            }
            _ => {
                cloud.refresh_registry().await?;
                tasks.push(tokio::spawn(registry_loop(cloud.clone())));
            }
        }
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
        self.serve_with(http, Some(mqtt), None, shutdown).await
    }

    /// As [`Cloud::serve`], with the TLS endpoint's socket already bound
    /// (`mqtt_tls`; tests bind port 0). `Some` needs `mqtt.tls.enabled`;
    /// `None` with TLS enabled binds `mqtt.tls.bind`. `mqtt` is the node
    /// endpoint's socket: required in embedded mode, refused in external
    /// mode (nodes connect to the external broker).
    pub async fn serve_with(
        self,
        http: tokio::net::TcpListener,
        mqtt: Option<tokio::net::TcpListener>,
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
        let mqtt = match (&self.inner.external, mqtt) {
            (None, Some(l)) => Some(l),
            (None, None) => {
                return Err(CloudError::Other(
                    "mqtt.bind: the node endpoint's socket is required in embedded mode".into(),
                ));
            }
            (Some(_), Some(_)) => {
                return Err(CloudError::Other(
                    "mqtt.mode: the in-process node endpoint is not served in external mode".into(),
                ));
            }
            (Some(_), None) => None,
        };
        let mut broker = self
            .inner
            .broker
            .lock()
            .ok()
            .and_then(|mut b| b.take())
            .ok_or_else(|| CloudError::Other("the cloud is served already".into()))?;
        if let Some(listener) = mqtt {
            broker.serve(BoundListener {
                listener,
                transport: Transport::Tcp,
            });
        }
        if let Some((transport, listener)) = tls {
            broker.serve(BoundListener {
                listener,
                transport,
            });
        }
        let stop = self.inner.stop.clone();
        let mut stopped = stop.subscribe();
        let signal = async move {
            // A shutdown asked for, or the cloud stopping by itself
            // (`Cloud::fail`).
            tokio::select! {
                () = shutdown => {}
                _ = stopped.wait_for(|s| *s) => {}
            }
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
        self.close().await;
        let failed = self.inner.failed.lock().ok().and_then(|mut f| f.take());
        match failed {
            Some(e) => Err(e),
            None => served,
        }
    }

    /// Stop the background tasks (ingest, pruning, the replica heartbeat,
    /// which deletes this replica's row, the `LISTEN` connection, …) and
    /// close the database: the end of `serve`, and the way to stop a cloud
    /// that was opened but never served (`verge bench ingest` does, before
    /// it drops its scratch database).
    pub async fn close(&self) {
        let _ = self.inner.stop.send(true);
        // Not served: the broker was never taken by `serve`.
        let broker = self.inner.broker.lock().ok().and_then(|mut b| b.take());
        if let Some(broker) = broker {
            broker.shutdown().await;
        }
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
    }

    /// Stop the cloud because of `error` (a background task found it
    /// cannot go on): `serve` shuts down as on a signal and returns it.
    pub(crate) fn fail(&self, error: CloudError) {
        if let Ok(mut f) = self.inner.failed.lock() {
            f.get_or_insert(error);
        }
        let _ = self.inner.stop.send(true);
    }

    /// Rebuild the broker's registry from the database: one device per
    /// joined node, allowed to publish `nodes/{id}/up/#` and subscribe
    /// `nodes/{id}/down/#` only. Nothing in external mode (the in-process
    /// endpoint is not served).
    ///
    /// Calls coalesce: a call returns once a rebuild that read the
    /// database after the call began has finished, and one rebuild runs at
    /// a time, so a storm of N joins makes a few rebuilds, not N (each
    /// reads every joined node).
    pub(crate) async fn refresh_registry(&self) -> Result<(), CloudError> {
        if self.inner.external.is_some() {
            // The external broker authenticates nodes itself.
            return Ok(());
        }
        let reg = &self.inner.registry;
        let mine = reg.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let _turn = reg.turn.lock().await;
        if reg.covered.load(Ordering::SeqCst) >= mine {
            // A rebuild that began after this call read the database.
            return Ok(());
        }
        // Every call counted so far began before the read below.
        let covers = reg.asked.load(Ordering::SeqCst);
        self.rebuild_registry().await?;
        reg.covered.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }

    /// Node `node` joined (again) or was deleted through this replica:
    /// rebuild the registry, and on PostgreSQL tell the other replicas
    /// (`NOTIFY verge_registry`, "{replica} {node}"), whose registry loops
    /// rebuild at once rather than at their next tick (a node that moves
    /// to another replica's endpoint is known there) and which end the
    /// node's connections to their endpoints (an old secret's, or a
    /// deleted node's). The notification goes even if the local rebuild
    /// failed.
    pub(crate) async fn nodes_changed(&self, node: &str) -> Result<(), CloudError> {
        let rebuilt = self.refresh_registry().await;
        if self.inner.pg.is_some()
            && self.inner.external.is_none()
            && let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                .bind(replicas::wake::REGISTRY_CHANNEL)
                .bind(format!("{} {node}", self.inner.replica.id))
                .execute(&self.inner.pool)
                .await
        {
            tracing::warn!(node = %node, "other replicas not told of the node change: {e}");
        }
        rebuilt
    }

    async fn rebuild_registry(&self) -> Result<(), CloudError> {
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

    /// Wake the long polls this process holds for `nodes` (their desired
    /// version changed, or they were deleted). Other replicas learn of it
    /// from the database (PostgreSQL `NOTIFY`).
    pub(crate) fn notify_nodes(&self, nodes: &[String]) {
        for n in nodes {
            self.inner.wake.wake(n);
        }
    }

    /// This replica's id (`cloud.replica_id`, or the one kept in
    /// `<data_dir>/replica-id`).
    pub fn replica_id(&self) -> &str {
        &self.inner.replica.id
    }

    /// Whether this replica leads (runs the singleton jobs) now.
    pub fn is_leader(&self) -> bool {
        self.inner.leader.is_leader()
    }

    /// Changes of [`Cloud::is_leader`].
    pub fn leader_watch(&self) -> watch::Receiver<bool> {
        self.inner.leader.watch()
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

/// Refresh the broker's registry when another replica says its nodes
/// changed (PostgreSQL `NOTIFY`, at most 4 rebuilds a second), and every
/// 10 s in case a notification was missed.
async fn registry_loop(cloud: Cloud) {
    let mut stop = cloud.inner.stop.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        let told = tokio::select! {
            _ = tick.tick() => false,
            () = cloud.inner.registry_wake.notified() => true,
            _ = stop.wait_for(|s| *s) => return,
        };
        if told {
            // A join storm elsewhere: one rebuild for what arrives meanwhile.
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
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

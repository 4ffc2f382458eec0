//! The edge node as one value: [`Node::start`] opens and wires its parts in
//! order (store, cache queue, functions, broker, drivers, rules, cloud link,
//! agent) and [`Node::serve`] serves already-bound [`Listeners`] until a
//! shutdown future resolves, then stops the parts in the reverse order of
//! what depends on what.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info};
use verge_agent::Agent;
use verge_bridge::Bridge;
use verge_broker::{Authenticator, Broker};
use verge_drivers::Drivers;
use verge_functions::{Functions, FunctionsConfig};
use verge_queue::Queue;
use verge_rules::{Engine, FunctionInvoker, Services, TelemetryStore, Upstream};
use verge_tsdb::{Tsdb, TsdbError};

use crate::cloud::CloudLink;
use crate::http::ApiState;
use crate::services::{FunctionsInvoker, QueueUpstream, Triggers, TsdbStore};
use crate::{Listeners, NodeConfig};

/// Why a node did not start; every message names the key or part to look
/// at.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A socket could not be bound.
    #[error("{what}: {error} ({hint})")]
    Bind {
        /// The listener, e.g. `broker.listeners.tcp.bind 127.0.0.1:1883`.
        what: String,
        /// Why.
        error: String,
        /// Which key to change.
        hint: &'static str,
    },
    /// A part of the node did not start.
    #[error("{part}: {message}")]
    Part {
        /// The part or config key, e.g. `rules[0] (`hot`)`.
        part: String,
        /// Why.
        message: String,
    },
}

fn part(part: impl Into<String>, message: impl ToString) -> StartError {
    StartError::Part {
        part: part.into(),
        message: message.to_string(),
    }
}

/// A started node: every part running, its listeners not yet served.
pub struct Node {
    cfg: NodeConfig,
    started: Instant,
    auth: Authenticator,
    broker: Broker,
    store: Option<Arc<Tsdb>>,
    queue: Option<Queue>,
    functions: Functions,
    triggers: Triggers,
    drivers: Arc<Drivers>,
    engine: Arc<Engine>,
    bridge: Option<Bridge>,
    agent: Option<Agent>,
}

impl Node {
    /// Open and wire the node's parts per `cfg` (checked first with
    /// [`NodeConfig::validate`]); with `cloud`, the node is managed by that
    /// cloud center (`cfg` should have been completed with
    /// [`CloudLink::configure`]). Creates `node.data_dir` if missing.
    /// Call inside a tokio runtime; what started before a failure is
    /// stopped again.
    pub async fn start(cfg: NodeConfig, cloud: Option<CloudLink>) -> Result<Node, StartError> {
        cfg.validate()?;
        std::fs::create_dir_all(&cfg.node.data_dir).map_err(|e| {
            part(
                format!(
                    "node.data_dir: cannot create {}",
                    cfg.node.data_dir.display()
                ),
                e,
            )
        })?;
        let auth = Broker::authenticator(&cfg.broker).map_err(|e| part("broker", e))?;
        let bridge_plan = match cfg.bridge.enabled {
            true => Some(
                cfg.bridge
                    .plan(&cfg.node.name)
                    .map_err(|e| part("bridge", e))?,
            ),
            false => None,
        };
        let store = open_store(&cfg).await?;
        let queue = match bridge_plan {
            Some(_) => Some(open_queue(&cfg).await?),
            None => None,
        };
        let functions = open_functions(&cfg).await?;
        let broker = Broker::start(cfg.broker.clone(), auth.clone());
        let triggers = Triggers::start(functions.clone(), broker.handle());
        let drivers = Arc::new(
            Drivers::new(broker.handle()).with_pki_root(cfg.node.data_dir.join("opcua-pki")),
        );
        for (i, d) in cfg.drivers.iter().enumerate() {
            if !d.enabled {
                continue;
            }
            if let Err(e) = drivers.create(d.clone()).await {
                drivers.shutdown().await;
                broker.shutdown().await;
                return Err(part(format!("drivers[{i}] (`{}`)", d.name), e));
            }
        }
        let mut services = Services::new(broker.handle());
        services.functions =
            Some(Arc::new(FunctionsInvoker::new(functions.clone())) as Arc<dyn FunctionInvoker>);
        services.store = store
            .clone()
            .map(|db| Arc::new(TsdbStore::new(db)) as Arc<dyn TelemetryStore>);
        services.upstream = queue
            .clone()
            .map(|q| Arc::new(QueueUpstream::new(q)) as Arc<dyn Upstream>);
        let engine = Arc::new(Engine::new(services, cfg.rule_engine.clone()));
        for (i, rule) in cfg.rules.iter().enumerate() {
            if let Err(e) = engine.create(rule.clone()).await {
                drivers.shutdown().await;
                broker.shutdown().await;
                return Err(part(format!("rules[{i}] (`{}`)", rule.id), e));
            }
        }
        let bridge = match (bridge_plan, &queue) {
            (Some(plan), Some(q)) => match Bridge::start(plan, q.clone(), broker.handle()).await {
                Ok(b) => Some(b),
                Err(e) => {
                    drivers.shutdown().await;
                    engine.shutdown().await;
                    broker.shutdown().await;
                    return Err(part("bridge", e));
                }
            },
            _ => None,
        };
        let started = Instant::now();
        let agent = match cloud {
            Some(link) => {
                let parts = verge_agent::NodeParts {
                    base_registry: auth.registry(),
                    auth: auth.clone(),
                    rules: engine.clone(),
                    functions: functions.clone(),
                    broker: broker.handle(),
                    bridge: bridge.as_ref().map(Bridge::handle),
                    data_dir: cfg.node.data_dir.clone(),
                    started,
                };
                match Agent::start(link.creds, link.dir, parts).await {
                    Ok(a) => Some(a),
                    Err(e) => {
                        tracing::error!("the cloud agent did not start: {e}");
                        None
                    }
                }
            }
            None => None,
        };
        Ok(Node {
            cfg,
            started,
            auth,
            broker,
            store,
            queue,
            functions,
            triggers,
            drivers,
            engine,
            bridge,
            agent,
        })
    }

    /// The configuration the node runs.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// Serve `listeners` (MQTT, CoAP, HTTP API) until `shutdown` resolves,
    /// then stop every part: the agent, the HTTP API, CoAP, drivers, rules,
    /// functions, the cloud link, the cache queue, the store, the broker.
    pub async fn serve(
        mut self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), StartError> {
        for l in listeners.mqtt {
            self.broker.serve(l);
        }
        let coap = match listeners.coap {
            Some(sock) => Some(
                verge_coap::Gateway::new(
                    self.cfg.coap.clone(),
                    self.broker.handle(),
                    self.auth.clone(),
                )
                .map_err(|e| part("coap", e))?
                .spawn(sock),
            ),
            None => None,
        };
        let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let http_task = listeners.http.map(|listener| {
            let state = ApiState {
                name: Arc::from(self.cfg.node.name.as_str()),
                started: self.started,
                broker: self.broker.handle(),
                rules: self.engine.clone(),
                token: self.cfg.http.token.as_deref().map(Arc::from),
                store: self.store.clone(),
                bridge: self.bridge.as_ref().map(Bridge::handle),
                functions: Some(self.functions.clone()),
                drivers: Some(self.drivers.clone()),
                coap: coap.as_ref().map(|c| c.stats_handle()),
                cloud: self.agent.as_ref().map(Agent::status_handle),
            };
            tokio::spawn(async move {
                let shutdown = async {
                    let _ = http_stopped.await;
                };
                if let Err(e) = crate::http::serve(listener, state, shutdown).await {
                    tracing::error!("http api stopped: {e}");
                }
            })
        });
        info!(node = %self.cfg.node.name, rules = self.cfg.rules.len(), "node started");
        shutdown.await;
        info!("shutting down");
        if let Some(a) = self.agent {
            a.shutdown().await;
        }
        let _ = stop_http.send(());
        if let Some(t) = http_task {
            let _ = t.await;
        }
        if let Some(c) = coap {
            let _ = c.shutdown().await;
        }
        self.drivers.shutdown().await;
        self.engine.shutdown().await;
        self.triggers.stop();
        // Finishes calls in progress, stops workers, saves functions' state.
        self.functions.shutdown().await;
        if let Some(b) = self.bridge {
            // The forwards queue what they hold; the link says goodbye.
            b.shutdown().await;
        }
        if let Some(q) = self.queue {
            // Persists the acknowledged-up-to cursors.
            q.close().await;
        }
        if let Some(db) = self.store {
            // Writes the last buffered points.
            let _ = tokio::task::spawn_blocking(move || db.close()).await;
        }
        self.broker.shutdown().await;
        debug!("stopped");
        Ok(())
    }
}

/// The function registry under `<data_dir>/functions`, with the
/// configured `[[functions]]` deployed (a changed one becomes a new
/// version; an unchanged one keeps its version).
async fn open_functions(cfg: &NodeConfig) -> Result<Functions, StartError> {
    let dir = cfg.node.data_dir.join("functions");
    let functions = Functions::open(FunctionsConfig { dir: dir.clone() })
        .await
        .map_err(|e| part("functions", e))?;
    for (i, spec) in cfg.functions.iter().enumerate() {
        let name = spec.name.clone();
        functions
            .deploy(spec.clone(), None)
            .await
            .map_err(|e| part(format!("functions[{i}] (`{name}`)"), e))?;
    }
    Ok(functions)
}

/// The local time-series store, when `[store] enabled`.
async fn open_store(cfg: &NodeConfig) -> Result<Option<Arc<Tsdb>>, StartError> {
    if !cfg.store.enabled {
        return Ok(None);
    }
    let tsdb = cfg.store.resolve(&cfg.node.data_dir);
    let dir = tsdb.dir.clone();
    let db = tokio::task::spawn_blocking(move || Tsdb::open(tsdb))
        .await
        .map_err(|e| part("opening the store", e))?
        .map_err(|e| match e {
            TsdbError::Config { .. } => {
                StartError::Config(crate::config::ConfigError::Named(format!("store.{e}")))
            }
            other => part(
                format!(
                    "store: opening {} (set store.dir, or store.enabled = false)",
                    dir.display()
                ),
                other,
            ),
        })?;
    Ok(Some(Arc::new(db)))
}

/// The cache queue in front of the cloud link, when `[bridge] enabled`.
async fn open_queue(cfg: &NodeConfig) -> Result<Queue, StartError> {
    let qcfg = cfg.queue_config();
    let dir = qcfg.dir.clone();
    let (queue, recovery) = tokio::task::spawn_blocking(move || Queue::open(qcfg))
        .await
        .map_err(|e| part("opening the cache queue", e))?
        .map_err(|e| {
            part(
                format!("queue: opening {} (set queue.dir)", dir.display()),
                e,
            )
        })?;
    for lane in &recovery.lanes {
        if lane.truncated_bytes > 0 || lane.corrupt || lane.unreadable_bytes > 0 {
            tracing::warn!(
                lane = %lane.name,
                truncated_bytes = lane.truncated_bytes,
                unreadable_bytes = lane.unreadable_bytes,
                "cache queue: a torn or corrupt tail was cut off at start"
            );
        }
    }
    let backlog: u64 = recovery.lanes.iter().map(|l| l.records).sum();
    if backlog > 0 {
        info!(
            messages = backlog,
            "cache queue: backlog from the previous run will be sent"
        );
    }
    Ok(queue)
}

//! The edge node as one value: [`Node::start`] opens and wires its parts in
//! order (store, cache queue, functions, broker, function triggers, CoAP
//! gateway, drivers, rules, cloud link, user components, agent) and [`Node::serve`] serves
//! already-bound [`Listeners`] until a shutdown future resolves, then stops
//! the parts, producers before consumers (`Parts::stop`).

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
use verge_rules::{Alarms, Engine, FunctionInvoker, Services, TelemetryStore, Upstream};
use verge_tsdb::{Tsdb, TsdbError};

use crate::cloud::CloudLink;
use crate::components::bus::{Bus, NodeIdent};
use crate::components::{Components, ComponentsOptions};
use crate::devices::{Devices, DevicesOptions};
use crate::http::ApiState;
use crate::http::auth::ApiTokens;
use crate::local::{ConfigNames, LocalParts, LocalStore, Saved};
use crate::services::{FunctionsInvoker, NodeAlarms, QueueUpstream, Triggers, TsdbStore};
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
    /// The CoAP gateway, made at start, spawned on its socket by `serve`.
    coap: Option<verge_coap::Gateway>,
    /// The HTTP API's credentials; none when it asks for none.
    api_tokens: Option<Arc<ApiTokens>>,
    parts: Parts,
}

/// The node's running parts, each present once started, so that a start
/// that fails halfway and a finished `serve` stop them the same way.
#[derive(Default)]
struct Parts {
    broker: Option<Broker>,
    store: Option<Arc<Tsdb>>,
    queue: Option<Queue>,
    functions: Option<Functions>,
    triggers: Option<Triggers>,
    drivers: Option<Arc<Drivers>>,
    engine: Option<Arc<Engine>>,
    bridge: Option<Bridge>,
    devices: Option<Devices>,
    components: Option<Components>,
    local: Option<Arc<LocalStore>>,
    agent: Option<Agent>,
}

impl Parts {
    /// Stop what runs, producers before consumers: the agent, user
    /// components (each within its stop timeout), the broker's clients
    /// (devices: their last publishes routed, no new connection), drivers,
    /// rules, triggers and functions, the cloud link (which queues what its
    /// forwards hold), the cache queue (cursors), the store (last points),
    /// the broker last.
    async fn stop(self) {
        if let Some(l) = &self.local {
            // The agent holds the store: let go of the agent's handle.
            l.set_cloud(None);
        }
        if let Some(a) = self.agent {
            a.shutdown().await;
        }
        if let Some(c) = self.components {
            c.shutdown().await;
        }
        if let Some(b) = &self.broker {
            // Devices go before anything that consumes what they publish:
            // once the cloud link's durable forwards stop, a PUBLISH would
            // be acknowledged without being queued (and lost).
            b.close_clients().await;
        }
        if let Some(d) = self.drivers {
            d.shutdown().await;
        }
        if let Some(e) = self.engine {
            e.shutdown().await;
        }
        if let Some(t) = self.triggers {
            t.stop();
        }
        if let Some(f) = self.functions {
            // Finishes calls in progress, stops workers, saves state.
            f.shutdown().await;
        }
        if let Some(d) = self.devices {
            // Before the cloud link and the queue it appends to.
            d.stop().await;
        }
        if let Some(b) = self.bridge {
            b.shutdown().await;
        }
        if let Some(q) = self.queue {
            q.close().await;
        }
        if let Some(db) = self.store {
            let _ = tokio::task::spawn_blocking(move || db.close()).await;
        }
        if let Some(b) = self.broker {
            b.shutdown().await;
        }
    }
}

impl Node {
    /// Open and wire the node's parts per `cfg`; with `cloud`, the node is
    /// managed by that cloud center and `cfg` is completed from its
    /// credentials first ([`CloudLink::configure`]). The config is checked
    /// ([`NodeConfig::validate`]) before anything is opened, and
    /// `node.data_dir` is created if missing. Call inside a tokio runtime;
    /// when a part fails, what started before it is stopped again.
    pub async fn start(mut cfg: NodeConfig, cloud: Option<CloudLink>) -> Result<Node, StartError> {
        if let Some(link) = &cloud {
            link.configure(&mut cfg).map_err(|e| part("cloud", e))?;
        }
        cfg.validate()?;
        verge_net::fs::create_private_dir(&cfg.node.data_dir).map_err(|e| {
            part(
                format!(
                    "node.data_dir: cannot create {}",
                    cfg.node.data_dir.display()
                ),
                e,
            )
        })?;
        let api_tokens = match cfg.http.enabled && cfg.http.auth {
            true => Some(Arc::new(
                ApiTokens::open(&cfg.node.data_dir, cfg.http.token.as_deref())
                    .map_err(|e| part("http", e))?,
            )),
            false => None,
        };
        let auth = Broker::authenticator(&cfg.broker).map_err(|e| part("broker", e))?;
        let mut parts = Parts::default();
        match Node::open(&cfg, &auth, cloud, &mut parts).await {
            Ok(coap) => Ok(Node {
                cfg,
                started: Instant::now(),
                coap,
                api_tokens,
                parts,
            }),
            Err(e) => {
                parts.stop().await;
                Err(e)
            }
        }
    }

    /// Start the parts in dependency order into `parts`; returns the CoAP
    /// gateway when `[coap] enabled` or `[coap.dtls] enabled`.
    async fn open(
        cfg: &NodeConfig,
        auth: &Authenticator,
        cloud: Option<CloudLink>,
        parts: &mut Parts,
    ) -> Result<Option<verge_coap::Gateway>, StartError> {
        let bridge_plan = match cfg.bridge.enabled {
            true => Some(
                cfg.bridge
                    .plan(&cfg.node.name)
                    .map_err(|e| part("bridge", e))?,
            ),
            false => None,
        };
        parts.store = open_store(cfg).await?;
        if bridge_plan.is_some() {
            parts.queue = Some(open_queue(cfg).await?);
        }
        let functions = open_functions(cfg).await?;
        parts.functions = Some(functions.clone());
        let broker = Broker::start(cfg.broker.clone(), auth.clone());
        let handle = broker.handle();
        parts.broker = Some(broker);
        // Before the cloud link, so the downstream `$verge/…` messages it
        // publishes find their subscriber.
        let devices = Devices::start(
            handle.clone(),
            DevicesOptions {
                data_dir: cfg.node.data_dir.clone(),
                queue: parts.queue.clone(),
                auth: auth.clone(),
                store: parts.store.clone(),
            },
        )
        .await
        .map_err(|e| part("devices", e))?;
        parts.devices = Some(devices.clone());
        parts.triggers = Some(Triggers::start(functions.clone(), handle.clone()));
        let coap = match cfg.coap.enabled || cfg.coap.dtls.enabled {
            true => Some(
                verge_coap::Gateway::new(cfg.coap.clone(), handle.clone(), auth.clone())
                    .map_err(|e| part("coap", e))?,
            ),
            false => None,
        };
        let drivers = Arc::new(
            Drivers::new(handle.clone()).with_pki_root(cfg.node.data_dir.join("opcua-pki")),
        );
        parts.drivers = Some(drivers.clone());
        {
            let drivers = drivers.clone();
            devices.set_driver_devices(move |d| drivers.owns_device(d));
        }
        for (i, d) in cfg.drivers.iter().enumerate() {
            if d.enabled {
                drivers
                    .create(d.clone())
                    .await
                    .map_err(|e| part(format!("drivers[{i}] (`{}`)", d.name), e))?;
            }
        }
        // What the API changed before the last stop, after the config
        // file's items (which win a clash).
        let names = ConfigNames::of(cfg);
        let mut saved = Saved::load(&cfg.node.data_dir.join(crate::local::DIR));
        let mut dropped = saved.restore_drivers(&drivers, &names).await;
        let mut services = Services::new(handle.clone());
        services.functions =
            Some(Arc::new(FunctionsInvoker::new(functions.clone())) as Arc<dyn FunctionInvoker>);
        services.store = parts
            .store
            .clone()
            .map(|db| Arc::new(TsdbStore::new(db)) as Arc<dyn TelemetryStore>);
        services.upstream = parts
            .queue
            .clone()
            .map(|q| Arc::new(QueueUpstream::new(q)) as Arc<dyn Upstream>);
        // Alarms go up only on a cloud-managed node (a bridge to another
        // broker has no use for them); always to the local broker.
        let alarm_queue = parts.queue.clone().filter(|_| cloud.is_some());
        services.alarms =
            Some(Arc::new(NodeAlarms::new(alarm_queue, handle.clone())) as Arc<dyn Alarms>);
        let engine = Arc::new(Engine::new(services, cfg.rule_engine.clone()));
        parts.engine = Some(engine.clone());
        for (i, rule) in cfg.rules.iter().enumerate() {
            engine
                .create(rule.clone())
                .await
                .map_err(|e| part(format!("rules[{i}] (`{}`)", rule.id), e))?;
        }
        dropped |= saved.restore_rules(&engine, &names).await;
        dropped |= saved.check_functions(&functions, &names);
        if let (Some(plan), Some(q)) = (bridge_plan, &parts.queue) {
            let bridge = Bridge::start(plan, q.clone(), handle.clone())
                .await
                .map_err(|e| part("bridge", e))?;
            parts.bridge = Some(bridge);
        }
        // Always, so a cloud-managed node can be given components (the bus
        // is one in-process subscription).
        let bus = Bus::start(
            auth.clone(),
            handle.clone(),
            NodeIdent {
                name: cfg.node.name.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            },
            parts.store.clone(),
        )
        .await
        .map_err(|e| part("components (mqtt rpc)", e))?;
        let options = ComponentsOptions {
            // Checked by `NodeConfig::validate`.
            engine: crate::components::engine_socket(&cfg.containers.engine)
                .map_err(|e| part("containers.engine", e))?,
            pull: cfg.containers.pull,
            node: cfg.node.name.clone(),
        };
        let components =
            Components::start_with(&cfg.components, &cfg.node.data_dir, &options, Some(bus))
                .map_err(|e| part("components", e))?;
        parts.components = Some(components.clone());
        let local = Arc::new(LocalStore::new(
            &cfg.node.data_dir,
            names,
            saved,
            LocalParts {
                rules: engine.clone(),
                drivers,
                functions: functions.clone(),
                components: Some(components.clone()),
            },
            cloud.is_some(),
        ));
        if dropped && let Err(e) = local.save_all().await {
            tracing::error!("local items not saved: {e}");
        }
        parts.local = Some(local.clone());
        if let Some(link) = cloud {
            let node_parts = verge_agent::NodeParts {
                base_registry: auth.registry(),
                auth: auth.clone(),
                rules: engine,
                functions,
                drivers: parts.drivers.clone(),
                broker: handle,
                bridge: parts.bridge.as_ref().map(Bridge::handle),
                components: Some(Arc::new(components)),
                store: parts.store.clone(),
                local: Some(local.clone() as Arc<dyn verge_agent::LocalItems>),
                devices: Some(Arc::new(devices) as Arc<dyn verge_agent::DeviceHost>),
                data_dir: cfg.node.data_dir.clone(),
                started: Instant::now(),
            };
            match Agent::start(link.creds, link.dir, node_parts).await {
                Ok(a) => {
                    local.set_cloud(Some(a.status_handle()));
                    parts.agent = Some(a);
                }
                // The node runs on without its cloud; the agent's status
                // in the API says why.
                Err(e) => tracing::error!("the cloud agent did not start: {e}"),
            }
        }
        Ok(coap)
    }

    /// Where the HTTP API's admin token is kept: `None` when the API asks
    /// for no token or the config sets it.
    pub fn api_token_file(&self) -> Option<&std::path::Path> {
        self.api_tokens.as_ref().and_then(|t| t.admin_file())
    }

    /// Resolves when the node's cloud agent asks for a restart of the
    /// executable (a self-update, or its revert); never for a node without
    /// a cloud. Pass it into [`Node::serve`]'s shutdown and execute the
    /// binary again once `serve` returns.
    pub fn restart_requested(&self) -> impl Future<Output = ()> + Send + 'static {
        let agent = self.parts.agent.as_ref().map(Agent::restart_requested);
        async move {
            match agent {
                Some(f) => f.await,
                None => std::future::pending().await,
            }
        }
    }

    /// The configuration the node runs.
    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    /// Serve `listeners` (MQTT, CoAP, HTTP API) until `shutdown` resolves,
    /// then stop the HTTP API and CoAP, and every part (see `Parts::stop`).
    pub async fn serve(
        mut self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), StartError> {
        let node = self.cfg.node.clone();
        let p = &mut self.parts;
        let (Some(broker), Some(engine), Some(functions), Some(drivers)) = (
            p.broker.as_mut(),
            p.engine.clone(),
            p.functions.clone(),
            p.drivers.clone(),
        ) else {
            return Err(part("node", "not started"));
        };
        let mqtt_addrs: Vec<_> = listeners
            .mqtt
            .iter()
            .filter_map(|l| {
                let path = match &l.transport {
                    verge_broker::listener::Transport::Ws(p)
                    | verge_broker::listener::Transport::Wss(_, p) => p.clone(),
                    _ => String::new(),
                };
                l.local_addr().ok().map(|a| (l.kind(), a, path))
            })
            .collect();
        let mut endpoints: Vec<String> = listeners
            .mqtt
            .iter()
            .filter_map(|l| {
                let addr = l.local_addr().ok()?;
                let path = match &l.transport {
                    verge_broker::listener::Transport::Ws(p)
                    | verge_broker::listener::Transport::Wss(_, p) => p.as_str(),
                    _ => "",
                };
                Some(node.endpoint(l.transport.scheme(), addr, path))
            })
            .collect();
        for (scheme, sock) in [("coap", &listeners.coap), ("coaps", &listeners.coap_dtls)] {
            if let Some(addr) = sock.as_ref().and_then(|s| s.local_addr().ok()) {
                endpoints.push(node.endpoint(scheme, addr, ""));
            }
        }
        if let Some(d) = &p.devices {
            d.set_endpoints(endpoints);
        }
        for l in listeners.mqtt {
            broker.serve(l);
        }
        // Components start once the broker serves: they learn where.
        if let Some(bus) = p.components.as_ref().and_then(Components::bus) {
            bus.set_url(crate::components::bus::listener_url(&mqtt_addrs));
        }
        let handle = broker.handle();
        let mut coap = Vec::new();
        if let Some(gateway) = self.coap.take() {
            if let Some(sock) = listeners.coap {
                coap.push(gateway.clone().spawn(sock));
            }
            if let Some(sock) = listeners.coap_dtls {
                #[cfg(feature = "coap-dtls")]
                coap.push(gateway.spawn_dtls(sock));
                #[cfg(not(feature = "coap-dtls"))]
                {
                    drop(sock);
                    return Err(part("coap.dtls", "this build has no DTLS"));
                }
            }
        }
        let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
        let http_task = listeners.http.map(|listener| {
            let state = ApiState {
                name: Arc::from(self.cfg.node.name.as_str()),
                started: self.started,
                broker: handle,
                rules: engine,
                auth: self.api_tokens.clone(),
                guard: Arc::new(verge_net::http::guard::Guard::new(
                    &self.cfg.http.allowed_hosts,
                    &self.cfg.http.allowed_origins,
                )),
                store: p.store.clone(),
                bridge: p.bridge.as_ref().map(Bridge::handle),
                functions: Some(functions),
                drivers: Some(drivers),
                components: p.components.clone(),
                coap: coap.first().map(|c| c.stats_handle()),
                cloud: p.agent.as_ref().map(Agent::status_handle),
                local: p.local.clone(),
                devices: p.devices.clone(),
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
        if let Some(l) = &self.parts.local {
            l.set_cloud(None);
        }
        if let Some(a) = self.parts.agent.take() {
            a.shutdown().await;
        }
        if let Some(c) = &self.parts.components {
            c.end_follows();
        }
        let _ = stop_http.send(());
        if let Some(t) = http_task {
            let _ = t.await;
        }
        for c in coap {
            let _ = c.shutdown().await;
        }
        self.parts.stop().await;
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

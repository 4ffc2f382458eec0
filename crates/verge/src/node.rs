//! `verge node` (and the node of `verge up`): wire the configured node
//! together (the broker and its listeners, the rule engine with the
//! configured rules, functions, drivers, the cloud link and, when joined to a
//! cloud center, its agent), print where it listens and run until Ctrl-C or
//! SIGTERM.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use tracing::{debug, info};
use verge_bridge::Bridge;
use verge_broker::{BoundListener, Broker, BrokerError};
use verge_drivers::Drivers;
use verge_functions::{Functions, FunctionsConfig};
use verge_node::{FunctionsInvoker, NodeState, QueueUpstream, Triggers, TsdbStore};
use verge_queue::Queue;
use verge_rules::{Engine, FunctionInvoker, Services, TelemetryStore, Upstream};
use verge_tsdb::{Tsdb, TsdbError};

use crate::config::NodeConfig;

/// Which banner to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `verge up`: the demo, with client examples.
    Demo,
    /// `verge node`.
    Node,
}

/// A node managed by a cloud center: its credentials and the folder where
/// the agent keeps them and the last desired state (`<data_dir>/cloud`).
pub struct CloudLink {
    /// From the join.
    pub creds: verge_agent::Credentials,
    /// `<data_dir>/cloud`.
    pub dir: PathBuf,
}

/// The credentials of a node managed by the cloud at `url`: a join with
/// `join` (then stored in `<data_dir>/cloud`), else the stored ones.
/// `ca` (`--cloud-ca`) is the CA file the cloud's certificates are verified
/// against; it is stored with the credentials, and a stored one is used
/// when none is given.
pub fn cloud_link(
    data_dir: &std::path::Path,
    url: &str,
    join: Option<&str>,
    ca: Option<&std::path::Path>,
) -> anyhow::Result<CloudLink> {
    let dir = data_dir.join("cloud");
    let url = url.trim_end_matches('/');
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        anyhow::bail!("--cloud `{url}`: expected the cloud center's http(s)://host:port");
    }
    // Absolute: the node may be restarted from another directory.
    let ca = ca
        .map(std::path::absolute)
        .transpose()
        .context("--cloud-ca")?;
    if let Some(ca) = &ca {
        verge_agent::http::set_ca_file(Some(ca)).context("--cloud-ca")?;
    }
    let stored = verge_agent::load_credentials(&dir)
        .with_context(|| format!("reading the node's credentials in {}", dir.display()))?;
    let creds = match (join, stored) {
        (Some(token), stored) => match runtime()?.block_on(verge_agent::join(url, token)) {
            Ok(creds) => {
                verge_agent::save_credentials(&dir, &creds).with_context(|| {
                    format!("storing the node's credentials in {}", dir.display())
                })?;
                eprintln!(
                    "joined {url} as node `{}`; credentials stored in {}",
                    creds.node_id,
                    dir.display()
                );
                creds
            }
            // The join command run again (the token is spent) or the cloud
            // down: a node that already joined this cloud runs as before.
            Err(e) => match stored {
                Some(creds) if creds.cloud_url == url => {
                    eprintln!(
                        "note: joining again failed ({e}); this node joined {url} before as \
                         `{}`: using its stored credentials",
                        creds.node_id
                    );
                    creds
                }
                _ => {
                    return Err(anyhow::Error::new(e))
                        .with_context(|| format!("joining the cloud center at {url}"));
                }
            },
        },
        (None, Some(mut creds)) => {
            if creds.cloud_url != url {
                tracing::warn!(
                    stored = %creds.cloud_url,
                    given = %url,
                    "the node joined another cloud URL; using the one given"
                );
                creds.cloud_url = url.to_owned();
            }
            match (&ca, &creds.ca_file) {
                (Some(given), stored) if stored.as_ref() != Some(given) => {
                    creds.ca_file = Some(given.clone());
                    verge_agent::save_credentials(&dir, &creds).with_context(|| {
                        format!("storing the node's credentials in {}", dir.display())
                    })?;
                }
                (None, Some(stored)) => {
                    verge_agent::http::set_ca_file(Some(stored)).with_context(|| {
                        format!(
                            "the CA file stored with the node's credentials in {}",
                            dir.display()
                        )
                    })?;
                }
                _ => {}
            }
            creds
        }
        (None, None) => anyhow::bail!(
            "this node has not joined a cloud center yet (no credentials in {}): \
             run `verge node --cloud {url} --join <token>` with the token the console \
             or `verge ctl nodes create` gave",
            dir.display()
        ),
    };
    Ok(CloudLink { creds, dir })
}

/// Upstream forwards of a cloud-managed node whose config names none:
/// device telemetry, device events (alarms lane) and what functions
/// publish under `processed/`.
pub const CLOUD_FORWARDS: &[(&str, &str)] = &[
    ("devices/+/telemetry", "telemetry"),
    ("devices/+/events/#", "alarms"),
    ("processed/#", "telemetry"),
];

/// Run a node until Ctrl-C or SIGTERM. Call outside any runtime.
pub fn run(mut cfg: NodeConfig, mode: Mode, cloud: Option<CloudLink>) -> anyhow::Result<()> {
    prepare(&mut cfg, mode, cloud.as_ref())?;
    runtime()?.block_on(async {
        let signals = Signals::install()?;
        serve(cfg, mode, cloud, signals.wait()).await
    })
}

/// The multi-threaded runtime every long-running command uses.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("verge")
        .build()
        .context("starting the runtime")
}

/// Make the data dir, the demo's TLS material, and point the cloud link at
/// the cloud a managed node joined.
pub fn prepare(cfg: &mut NodeConfig, mode: Mode, cloud: Option<&CloudLink>) -> anyhow::Result<()> {
    raise_nofile();
    std::fs::create_dir_all(&cfg.node.data_dir).with_context(|| {
        format!(
            "node.data_dir: cannot create {}",
            cfg.node.data_dir.display()
        )
    })?;
    if mode == Mode::Demo {
        demo_tls(cfg)?;
    }
    if let Some(link) = cloud {
        let c = &link.creds;
        // A managed node is known by its cloud id unless named in its config.
        if cfg.node.name == crate::config::NodeConfig::default().node.name {
            cfg.node.name = c.node_id.clone();
        }
        let b = &mut cfg.bridge;
        b.enabled = true;
        b.url = c.mqtt_url.clone();
        // The CA given at join verifies the cloud's MQTT endpoint too,
        // unless the node's config names one.
        if b.ca_file.is_none() && c.mqtt_url.starts_with("mqtts://") {
            b.ca_file = c.ca_file.clone();
        }
        b.node = c.node_id.clone();
        b.username = Some(c.node_id.clone());
        b.password = Some(c.secret.clone());
        if b.forwards.is_empty() {
            b.forwards = CLOUD_FORWARDS
                .iter()
                .map(|(filter, lane)| verge_bridge::Forward {
                    filter: (*filter).to_owned(),
                    lane: (*lane).to_owned(),
                })
                .collect();
        }
        b.plan(&cfg.node.name)
            .context("the cloud link made from the node's credentials")?;
    }
    Ok(())
}

/// Run a prepared node until `shutdown` resolves.
pub async fn serve(
    cfg: NodeConfig,
    mode: Mode,
    cloud: Option<CloudLink>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let auth = Broker::authenticator(&cfg.broker).context("broker")?;
    let listeners = verge_broker::bind_all(&cfg.broker.listeners)
        .await
        .map_err(|e| match e {
            BrokerError::Listener { what, error } => anyhow::anyhow!(
                "{what}: {error} (set another `bind` address for this listener, \
             or `enabled = false`)"
            ),
            other => anyhow::Error::new(other).context("starting the broker's listeners"),
        })?;
    let endpoints: Vec<String> = listeners
        .iter()
        .map(|l| endpoint(l, &cfg))
        .collect::<anyhow::Result<_>>()?;
    let tcp = listeners
        .iter()
        .find(|l| l.kind() == "tcp")
        .and_then(|l| l.local_addr().ok());
    let http_listener = if cfg.http.enabled {
        Some(
            tokio::net::TcpListener::bind(cfg.http.bind)
                .await
                .with_context(|| {
                    format!(
                        "http.bind {}: cannot listen (set another address, or \
                         http.enabled = false)",
                        cfg.http.bind
                    )
                })?,
        )
    } else {
        None
    };
    let bridge_plan = if cfg.bridge.enabled {
        Some(cfg.bridge.plan(&cfg.node.name)?)
    } else {
        None
    };
    let coap_socket = if cfg.coap.enabled {
        Some(verge_coap::bind(&cfg.coap).await.map_err(|e| {
            anyhow::anyhow!("coap: {e} (set another coap.bind, or coap.enabled = false)")
        })?)
    } else {
        None
    };
    let mut endpoints = endpoints;
    if let Some(a) = coap_socket.as_ref().and_then(|s| s.local_addr().ok()) {
        endpoints.push(format!("CoAP over UDP        coap://{a}/ps/<topic>"));
    }
    let store = open_store(&cfg).await?;
    let queue = match bridge_plan {
        Some(_) => Some(open_queue(&cfg).await?),
        None => None,
    };
    let functions = open_functions(&cfg).await?;
    let mut broker = Broker::start(cfg.broker.clone(), auth.clone());
    for l in listeners {
        broker.serve(l);
    }
    let triggers = Triggers::start(functions.clone(), broker.handle());
    let coap = match coap_socket {
        Some(sock) => Some(
            verge_coap::Gateway::new(cfg.coap.clone(), broker.handle(), auth.clone())
                .context("coap")?
                .spawn(sock),
        ),
        None => None,
    };
    let drivers =
        Arc::new(Drivers::new(broker.handle()).with_pki_root(cfg.node.data_dir.join("opcua-pki")));
    for (i, d) in cfg.drivers.iter().enumerate() {
        if !d.enabled {
            continue;
        }
        if let Err(e) = drivers.create(d.clone()).await {
            drivers.shutdown().await;
            broker.shutdown().await;
            anyhow::bail!("drivers[{i}] (`{}`): {e}", d.name);
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
            broker.shutdown().await;
            anyhow::bail!("rules[{i}] (`{}`): {e}", rule.id);
        }
    }
    let bridge = match (bridge_plan, &queue) {
        (Some(plan), Some(q)) => match Bridge::start(plan, q.clone(), broker.handle()).await {
            Ok(b) => Some(b),
            Err(e) => {
                engine.shutdown().await;
                broker.shutdown().await;
                return Err(anyhow::Error::new(e));
            }
        },
        _ => None,
    };
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
                started: Instant::now(),
            };
            match verge_agent::Agent::start(link.creds, link.dir, parts).await {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::error!("the cloud agent did not start: {e}");
                    None
                }
            }
        }
        None => None,
    };
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut http_addr = None;
    let http_task = http_listener.map(|listener| {
        http_addr = listener.local_addr().ok();
        let state = NodeState {
            name: Arc::from(cfg.node.name.as_str()),
            started: Instant::now(),
            broker: broker.handle(),
            rules: engine.clone(),
            token: cfg.http.token.as_deref().map(Arc::from),
            store: store.clone(),
            bridge: bridge.as_ref().map(Bridge::handle),
            functions: Some(functions.clone()),
            drivers: Some(drivers.clone()),
            coap: coap.as_ref().map(|c| c.stats_handle()),
            cloud: agent.as_ref().map(verge_agent::Agent::status_handle),
        };
        tokio::spawn(async move {
            let shutdown = async {
                let _ = http_stopped.await;
            };
            if let Err(e) = verge_node::serve(listener, state, shutdown).await {
                tracing::error!("http api stopped: {e}");
            }
        })
    });
    info!(node = %cfg.node.name, rules = cfg.rules.len(), "node started");
    println!("{}", banner(&cfg, mode, &endpoints, tcp, http_addr));
    shutdown.await;
    info!("shutting down");
    if let Some(a) = agent {
        a.shutdown().await;
    }
    let _ = stop_http.send(());
    if let Some(t) = http_task {
        let _ = t.await;
    }
    if let Some(c) = coap {
        let _ = c.shutdown().await;
    }
    drivers.shutdown().await;
    engine.shutdown().await;
    triggers.stop();
    // Finishes calls in progress, stops workers, saves functions' state.
    functions.shutdown().await;
    if let Some(b) = bridge {
        // The forwards queue what they hold; the link says goodbye.
        b.shutdown().await;
    }
    if let Some(q) = queue {
        // Persists the acknowledged-up-to cursors.
        q.close().await;
    }
    if let Some(db) = store {
        // Writes the last buffered points.
        let _ = tokio::task::spawn_blocking(move || db.close()).await;
    }
    broker.shutdown().await;
    debug!("stopped");
    Ok(())
}

/// The function registry under `<data_dir>/functions`, with the
/// configured `[[functions]]` deployed (a changed one becomes a new
/// version; an unchanged one keeps its version).
async fn open_functions(cfg: &NodeConfig) -> anyhow::Result<Functions> {
    let dir = cfg.node.data_dir.join("functions");
    let functions = Functions::open(FunctionsConfig { dir: dir.clone() })
        .await
        .map_err(|e| anyhow::anyhow!("functions: {e}"))?;
    for (i, spec) in cfg.functions.iter().enumerate() {
        let name = spec.name.clone();
        functions
            .deploy(spec.clone(), None)
            .await
            .map_err(|e| anyhow::anyhow!("functions[{i}] (`{name}`): {e}"))?;
    }
    Ok(functions)
}

/// The local time-series store, when `[store] enabled`.
async fn open_store(cfg: &NodeConfig) -> anyhow::Result<Option<Arc<Tsdb>>> {
    if !cfg.store.enabled {
        return Ok(None);
    }
    let tsdb = cfg.store.resolve(&cfg.node.data_dir);
    let dir = tsdb.dir.clone();
    let db = tokio::task::spawn_blocking(move || Tsdb::open(tsdb))
        .await
        .context("opening the store")?
        .map_err(|e| match e {
            TsdbError::Config { .. } => anyhow::anyhow!("store.{e}"),
            other => anyhow::Error::new(other).context(format!(
                "store: opening {} (set store.dir, or store.enabled = false)",
                dir.display()
            )),
        })?;
    Ok(Some(Arc::new(db)))
}

/// The cache queue in front of the cloud link, when `[bridge] enabled`.
async fn open_queue(cfg: &NodeConfig) -> anyhow::Result<Queue> {
    let qcfg = cfg.queue_config();
    let dir = qcfg.dir.clone();
    let (queue, recovery) = tokio::task::spawn_blocking(move || Queue::open(qcfg))
        .await
        .context("opening the cache queue")?
        .with_context(|| format!("queue: opening {} (set queue.dir)", dir.display()))?;
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

/// The demo also serves TLS (8883) and WSS (8084), with a self-signed
/// certificate made in the data dir unless certificates are configured.
fn demo_tls(cfg: &mut NodeConfig) -> anyhow::Result<()> {
    let ls = &mut cfg.broker.listeners;
    if ls.tls.tls.cert.is_some() && ls.wss.tls.cert.is_some() {
        return Ok(());
    }
    let dir = cfg.node.data_dir.join("tls");
    let generated = verge_broker::listener::self_signed(&dir).context("demo tls certificate")?;
    for tls in [&mut ls.tls.tls, &mut ls.wss.tls] {
        if tls.cert.is_none() {
            *tls = generated.clone();
        }
    }
    ls.tls.enabled = true;
    ls.wss.enabled = true;
    Ok(())
}

/// `tcp  mqtt://127.0.0.1:1883` for one listener.
fn endpoint(l: &BoundListener, cfg: &NodeConfig) -> anyhow::Result<String> {
    let addr = l
        .local_addr()
        .with_context(|| format!("address of the {} listener", l.kind()))?;
    let ls = &cfg.broker.listeners;
    Ok(match l.kind() {
        "tcp" => format!("MQTT over TCP        mqtt://{addr}"),
        "tls" => format!("MQTT over TLS        mqtts://{addr}"),
        "ws" => format!("MQTT over WebSocket  ws://{addr}{}", ls.ws.path),
        "wss" => format!("MQTT over WSS        wss://{addr}{}", ls.wss.path),
        other => format!("{other:<20} {addr}"),
    })
}

fn banner(
    cfg: &NodeConfig,
    mode: Mode,
    endpoints: &[String],
    tcp: Option<SocketAddr>,
    http: Option<SocketAddr>,
) -> String {
    let mut out = format!("verge node `{}` is running\n", cfg.node.name);
    for e in endpoints {
        out.push_str(&format!("  {e}\n"));
    }
    if endpoints.is_empty() {
        out.push_str("  (no listener is enabled)\n");
    }
    if let Some(a) = http {
        out.push_str(&format!(
            "  HTTP API             http://{a}/api/rules  (metrics: http://{a}/metrics)\n"
        ));
    }
    if cfg.bridge.enabled {
        let node = if cfg.bridge.node.is_empty() {
            &cfg.node.name
        } else {
            &cfg.bridge.node
        };
        out.push_str(&format!(
            "  cloud link           {} as nodes/{node}/up|down/…{}\n",
            cfg.bridge.url,
            http.map(|a| format!("  (status: http://{a}/api/bridge)"))
                .unwrap_or_default()
        ));
    }
    if !cfg.rules.is_empty() {
        let ids: Vec<&str> = cfg.rules.iter().map(|r| r.id.as_str()).collect();
        out.push_str(&format!("rules: {}\n", ids.join(", ")));
    }
    if mode == Mode::Demo {
        out.push_str("demo config: anonymous clients are allowed; do not expose these ports\n");
        if let Some(a) = tcp {
            let (h, p) = (a.ip(), a.port());
            let http_hint = http.map_or_else(|| "127.0.0.1:8081".to_owned(), |a| a.to_string());
            out.push_str(&format!(
                "try it:\n  mosquitto_sub -h {h} -p {p} -t 'devices/#' -t 'alerts/#' -v\n  \
                 mosquitto_pub -h {h} -p {p} -t devices/d1/telemetry -m '{{\"temperature\":35.5}}'\n\
                 (the demo rule `demo-hot` republishes readings over 30 to alerts/<device>;\n\
                  `demo-store` keeps every temperature: curl 'http://{http_hint}/api/store/query?device=d1&metric=temperature';\n\
                  `demo-function`, set in the cloud, hands every reading to the WebAssembly function\n\
                  demo-tag, whose output appears on processed/<topic>: mosquitto_sub -h {h} -p {p} -t 'processed/#' -v;\n\
                  its metrics: curl http://{http_hint}/api/functions/demo-tag)\n"
            ));
        }
        let ls = &cfg.broker.listeners;
        if let Some(cert) = ls.tls.tls.cert.as_ref().filter(|_| ls.tls.enabled) {
            out.push_str(&format!(
                "TLS certificate: {} (add `--cafile` with it to the mosquitto commands for port {})\n",
                cert.display(),
                ls.tls.bind.port()
            ));
        }
    } else if !cfg.broker.allow_anonymous && cfg.broker.devices_file.is_none() {
        out.push_str("note: anonymous clients are refused and no broker.devices_file is set, so no client can connect\n");
    }
    out.push_str("press Ctrl-C to stop");
    out
}

/// Ctrl-C and SIGTERM handlers, installed before the banner is printed so a
/// stop that comes right after start-up is a clean one.
pub struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    /// Install both handlers (inside a runtime).
    pub fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("installing the Ctrl-C handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    /// Wait for Ctrl-C or SIGTERM.
    pub async fn wait(mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

/// A broker holds one descriptor per client: use the whole hard limit.
fn raise_nofile() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => debug!(limit = n, "open file limit"),
        Err(e) => debug!("cannot raise the open file limit: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_banner_shows_examples_for_the_tcp_port() {
        let cfg = NodeConfig::default();
        let b = banner(
            &cfg,
            Mode::Demo,
            &["MQTT over TCP        mqtt://127.0.0.1:1999".into()],
            Some(([127, 0, 0, 1], 1999).into()),
            Some(([127, 0, 0, 1], 8081).into()),
        );
        assert!(b.contains("http://127.0.0.1:8081/api/rules"), "{b}");
        assert!(b.contains("mosquitto_sub -h 127.0.0.1 -p 1999"), "{b}");
        assert!(b.contains("mosquitto_pub -h 127.0.0.1 -p 1999"), "{b}");
        assert!(b.contains("anonymous"), "{b}");
    }

    #[test]
    fn node_banner_warns_when_nobody_can_connect() {
        let b = banner(&NodeConfig::default(), Mode::Node, &[], None, None);
        assert!(b.contains("no client can connect"), "{b}");
        assert!(!b.contains("mosquitto"), "{b}");
    }
}

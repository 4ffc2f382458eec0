//! `verge up` and `verge node`: wire the configured node together (the
//! broker and its listeners, the rule engine with the configured rules, the
//! local HTTP API), print where it listens and run until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
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

/// Run a node until a shutdown signal. Call outside any runtime.
pub fn run(mut cfg: NodeConfig, mode: Mode) -> anyhow::Result<()> {
    raise_nofile();
    std::fs::create_dir_all(&cfg.node.data_dir).with_context(|| {
        format!(
            "node.data_dir: cannot create {}",
            cfg.node.data_dir.display()
        )
    })?;
    if mode == Mode::Demo {
        demo_tls(&mut cfg)?;
        demo_function(&mut cfg)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("verge")
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(cfg, mode))
}

async fn serve(cfg: NodeConfig, mode: Mode) -> anyhow::Result<()> {
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
    let signals = Signals::install()?;
    info!(node = %cfg.node.name, rules = cfg.rules.len(), "node started");
    println!("{}", banner(&cfg, mode, &endpoints, tcp, http_addr));
    signals.wait().await;
    info!("shutting down");
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

/// The demo function's module, written where the demo config's
/// `demo-tag` function (which has no `path`) finds it.
fn demo_function(cfg: &mut NodeConfig) -> anyhow::Result<()> {
    const WAT: &str = include_str!("demo/demo-tag.wat");
    let Some(f) = cfg
        .functions
        .iter_mut()
        .find(|f| f.name == "demo-tag" && f.path.is_none())
    else {
        return Ok(());
    };
    let dir = cfg.node.data_dir.join("demo");
    let path = dir.join("demo-tag.wat");
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, WAT))
        .with_context(|| format!("writing the demo function to {}", path.display()))?;
    f.path = Some(path);
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
                  `demo-function` hands every reading to the WebAssembly function demo-tag, whose output\n\
                  appears on processed/<topic>: mosquitto_sub -h {h} -p {p} -t 'processed/#' -v;\n\
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
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("installing the Ctrl-C handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    /// Wait for Ctrl-C or SIGTERM.
    async fn wait(mut self) {
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

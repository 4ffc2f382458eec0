//! `verge up` and `verge node`: wire the configured node together (for now:
//! the broker and its listeners), print where it listens and run until
//! Ctrl-C or SIGTERM.

use std::net::SocketAddr;

use anyhow::Context;
use tracing::{debug, info};
use verge_broker::{BoundListener, Broker, BrokerError};

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
    let mut broker = Broker::start(cfg.broker.clone(), auth);
    for l in listeners {
        broker.serve(l);
    }
    info!(node = %cfg.node.name, "node started");
    println!("{}", banner(&cfg, mode, &endpoints, tcp));
    shutdown_signal().await?;
    info!("shutting down");
    broker.shutdown().await;
    debug!("stopped");
    Ok(())
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

fn banner(cfg: &NodeConfig, mode: Mode, endpoints: &[String], tcp: Option<SocketAddr>) -> String {
    let mut out = format!("verge node `{}` is running\n", cfg.node.name);
    for e in endpoints {
        out.push_str(&format!("  {e}\n"));
    }
    if endpoints.is_empty() {
        out.push_str("  (no listener is enabled)\n");
    }
    if mode == Mode::Demo {
        out.push_str("demo config: anonymous clients are allowed; do not expose these ports\n");
        if let Some(a) = tcp {
            let (h, p) = (a.ip(), a.port());
            out.push_str(&format!(
                "try it:\n  mosquitto_sub -h {h} -p {p} -t 'devices/#' -v\n  \
                 mosquitto_pub -h {h} -p {p} -t devices/d1/telemetry -m '{{\"temperature\":21.5}}'\n"
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

/// Wait for Ctrl-C or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
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
        );
        assert!(b.contains("mosquitto_sub -h 127.0.0.1 -p 1999"), "{b}");
        assert!(b.contains("mosquitto_pub -h 127.0.0.1 -p 1999"), "{b}");
        assert!(b.contains("anonymous"), "{b}");
    }

    #[test]
    fn node_banner_warns_when_nobody_can_connect() {
        let b = banner(&NodeConfig::default(), Mode::Node, &[], None);
        assert!(b.contains("no client can connect"), "{b}");
        assert!(!b.contains("mosquitto"), "{b}");
    }
}

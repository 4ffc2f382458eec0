//! `verge node` (and the node of `verge up`): complete the config (the
//! demo's TLS material, a managed node's cloud link), bind the listeners,
//! start the node (`verge_node::Node`), print where it listens and serve
//! until Ctrl-C or SIGTERM. The node itself, its start and shutdown order,
//! lives in `verge-node`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use tracing::debug;
use verge_node::{CloudLink, Endpoint, Listeners, Node};

use crate::config::NodeConfig;

/// Which banner to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `verge up`: the demo, with client examples.
    Demo,
    /// `verge node`.
    Node,
}

/// The credentials of a node managed by the cloud at `url` (see
/// [`CloudLink::establish`]); `release_key` (`--release-key`) is checked
/// and stored with them.
pub fn cloud_link(
    data_dir: &Path,
    url: &str,
    join: Option<&str>,
    ca: Option<&Path>,
    release_key: Option<&str>,
) -> anyhow::Result<CloudLink> {
    let key = release_key
        .map(|k| {
            verge_agent::release::parse_public_key(k)
                .map(|_| k.trim().to_ascii_lowercase())
                .map_err(|e| anyhow::anyhow!("--release-key: {e}"))
        })
        .transpose()?;
    let mut link = runtime()?.block_on(CloudLink::establish(data_dir, url, join, ca))?;
    if let Some(key) = key
        && link.creds.release_key.as_deref() != Some(key.as_str())
    {
        link.creds.release_key = Some(key);
        verge_agent::save_credentials(&link.dir, &link.creds)
            .context("storing the release key with the node's credentials")?;
    }
    Ok(link)
}

/// Run a node until Ctrl-C or SIGTERM. Call outside any runtime. When the
/// cloud agent asks for a restart (a self-update or its revert), the node
/// stops as on SIGTERM and the process executes its binary again, with
/// the same arguments (the same process id, so a service manager sees one
/// process).
pub fn run(mut cfg: NodeConfig, mode: Mode, cloud: Option<CloudLink>) -> anyhow::Result<()> {
    // Read before anything can replace the file (then the link names a
    // deleted file).
    let exe = std::env::current_exe().context("the running executable")?;
    prepare(&mut cfg, mode)?;
    let restart = runtime()?.block_on(async {
        let signals = Signals::install()?;
        serve(cfg, mode, cloud, signals.wait()).await
    })?;
    if restart {
        return Err(exec_self(&exe));
    }
    Ok(())
}

/// Count this start of a new binary on trial (`<data_dir>/release`)
/// before anything can fail, so that one which never gets to its agent is
/// still put back; when it is put back, execute the previous binary (this
/// returns only if that fails). Call it first, right after the config is
/// read.
pub fn guard_trial(data_dir: &Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("the running executable")?;
    let release_dir = data_dir.join(verge_agent::release::RELEASE_DIR);
    if release_dir.join(verge_agent::update::UPDATE_FILE).exists()
        && verge_agent::update::guard_start(&release_dir, &exe)
    {
        return Err(exec_self(&exe));
    }
    Ok(())
}

/// Execute `exe` with this process's arguments (same process id); returns
/// only when that fails.
fn exec_self(exe: &Path) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    eprintln!("restarting {}", exe.display());
    let e = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .exec();
    anyhow::Error::new(e).context(format!("restarting {}", exe.display()))
}

/// The multi-threaded runtime every long-running command uses.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("verge")
        .build()
        .context("starting the runtime")
}

/// Raise the open-file limit; for the demo, make the data dir (`verge up`
/// keeps its own files there before the node starts) and its TLS
/// material. `Node::start` makes the data dir of every node and completes
/// a managed node's cloud link.
pub fn prepare(cfg: &mut NodeConfig, mode: Mode) -> anyhow::Result<()> {
    raise_nofile();
    if mode == Mode::Demo {
        verge_net::fs::create_private_dir(&cfg.node.data_dir).with_context(|| {
            format!(
                "node.data_dir: cannot create {}",
                cfg.node.data_dir.display()
            )
        })?;
        demo_tls(cfg)?;
    }
    Ok(())
}

/// Run a prepared node until `shutdown` resolves or its cloud agent asks
/// for a restart (then `true`).
pub async fn serve(
    cfg: NodeConfig,
    mode: Mode,
    cloud: Option<CloudLink>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<bool> {
    let listeners = Listeners::bind(&cfg).await?;
    let endpoints = listeners.endpoints();
    let node = Node::start(cfg, cloud).await?;
    println!(
        "{}",
        banner(node.config(), mode, &endpoints, node.api_token_file())
    );
    let restart = node.restart_requested();
    let restarting = std::sync::atomic::AtomicBool::new(false);
    let stop = async {
        tokio::select! {
            () = shutdown => {}
            () = restart => {
                tracing::info!("restarting the node's binary");
                restarting.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    };
    node.serve(listeners, stop).await?;
    debug!("stopped");
    Ok(restarting.load(std::sync::atomic::Ordering::SeqCst))
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

/// `MQTT over TCP        mqtt://127.0.0.1:1883` for one endpoint; the HTTP
/// API has lines of its own.
fn endpoint(e: &Endpoint, cfg: &NodeConfig) -> Option<String> {
    let (addr, ls) = (e.addr, &cfg.broker.listeners);
    Some(match e.kind {
        "tcp" => format!("MQTT over TCP        mqtt://{addr}"),
        "tls" => format!("MQTT over TLS        mqtts://{addr}"),
        "ws" => format!("MQTT over WebSocket  ws://{addr}{}", ls.ws.path),
        "wss" => format!("MQTT over WSS        wss://{addr}{}", ls.wss.path),
        "coap" => format!("CoAP over UDP        coap://{addr}/ps/<topic>"),
        "coaps" => format!("CoAP over DTLS       coaps://{addr}/ps/<topic>"),
        "http" => return None,
        other => format!("{other:<20} {addr}"),
    })
}

fn banner(
    cfg: &NodeConfig,
    mode: Mode,
    listening: &[Endpoint],
    token_file: Option<&std::path::Path>,
) -> String {
    let endpoints: Vec<String> = listening.iter().filter_map(|e| endpoint(e, cfg)).collect();
    let at = |kind: &str| listening.iter().find(|e| e.kind == kind).map(|e| e.addr);
    let (tcp, http): (Option<SocketAddr>, Option<SocketAddr>) = (at("tcp"), at("http"));
    let mut out = format!("verge node `{}` is running\n", cfg.node.name);
    for e in &endpoints {
        out.push_str(&format!("  {e}\n"));
    }
    if endpoints.is_empty() {
        out.push_str("  (no listener is enabled)\n");
    }
    // How a curl command authenticates to the API.
    let auth = match token_file {
        Some(f) => format!("-H \"Authorization: Bearer $(cat {})\" ", f.display()),
        None if cfg.http.auth => "-H 'Authorization: Bearer <[http] token>' ".to_owned(),
        None => String::new(),
    };
    if let Some(a) = http {
        out.push_str(&format!(
            "  HTTP API             http://{a}/api/rules  (metrics: http://{a}/metrics)\n"
        ));
        match token_file {
            Some(f) => out.push_str(&format!(
                "  API token            in {} (send it as Authorization: Bearer <token>)\n",
                f.display()
            )),
            None if cfg.http.auth => out.push_str(
                "  API token            [http] token of the config (Authorization: Bearer <token>)\n",
            ),
            None => out.push_str(
                "warning: [http] auth = false: every local process and web page may use the API\n",
            ),
        }
    }
    if cfg.bridge.enabled {
        let node = if cfg.bridge.node.is_empty() {
            &cfg.node.name
        } else {
            &cfg.bridge.node
        };
        out.push_str(&format!(
            "  cloud link           {} as {}…, {}…{}\n",
            cfg.bridge.url,
            verge_protocol::topics::up_prefix(node),
            verge_protocol::topics::down_prefix(node),
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
                  `demo-store` keeps every temperature: curl {auth}'http://{http_hint}/api/store/query?device=d1&metric=temperature';\n\
                  `demo-function`, set in the cloud, hands every reading to the WebAssembly function\n\
                  demo-tag, whose output appears on processed/<topic>: mosquitto_sub -h {h} -p {p} -t 'processed/#' -v;\n\
                  its metrics: curl {auth}http://{http_hint}/api/functions/demo-tag)\n"
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
            &[
                Endpoint {
                    kind: "tcp",
                    addr: ([127, 0, 0, 1], 1999).into(),
                },
                Endpoint {
                    kind: "http",
                    addr: ([127, 0, 0, 1], 8081).into(),
                },
            ],
            Some(std::path::Path::new("/var/lib/verge/api-token")),
        );
        assert!(b.contains("http://127.0.0.1:8081/api/rules"), "{b}");
        assert!(
            b.contains("curl -H \"Authorization: Bearer $(cat /var/lib/verge/api-token)\" "),
            "{b}"
        );
        assert!(
            b.contains("API token            in /var/lib/verge/api-token"),
            "{b}"
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

    #[test]
    fn node_banner_warns_when_the_api_has_no_auth() {
        let mut cfg = NodeConfig::default();
        cfg.http.auth = false;
        let http = Endpoint {
            kind: "http",
            addr: ([127, 0, 0, 1], 8081).into(),
        };
        let b = banner(&cfg, Mode::Node, &[http], None);
        assert!(b.contains("[http] auth = false"), "{b}");
    }
}

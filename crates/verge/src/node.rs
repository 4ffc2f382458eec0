//! `verge node` (and the node of `verge up`): complete the config (the
//! demo's TLS material, a managed node's cloud link), bind the listeners,
//! start the node (`verge_node::Node`), print where it listens and serve
//! until Ctrl-C or SIGTERM. The node itself, its start and shutdown order,
//! lives in `verge-node`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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

/// What `verge node --cloud` was given: the cloud center to join (or, with
/// stored credentials, to rejoin).
#[derive(Debug, Clone, Copy)]
pub struct CloudArgs<'a> {
    /// `--cloud`.
    pub url: &'a str,
    /// `--join`: the one-time token.
    pub join: Option<&'a str>,
    /// `--cloud-ca`.
    pub ca: Option<&'a Path>,
    /// `--release-key`.
    pub release_key: Option<&'a str>,
}

/// The credentials of a node managed by the cloud (see
/// [`CloudLink::establish`]); `--release-key` is checked and stored with
/// them.
pub async fn cloud_link(data_dir: &Path, args: CloudArgs<'_>) -> anyhow::Result<CloudLink> {
    let key = args
        .release_key
        .map(|k| {
            verge_agent::release::parse_public_key(k)
                .map(|_| k.trim().to_ascii_lowercase())
                .map_err(|e| anyhow::anyhow!("--release-key: {e}"))
        })
        .transpose()?;
    let mut link = CloudLink::establish(data_dir, args.url, args.join, args.ca).await?;
    if let Some(key) = key
        && link.creds.release_key.as_deref() != Some(key.as_str())
    {
        link.creds.release_key = Some(key);
        verge_agent::save_credentials(&link.dir, &link.creds)
            .context("storing the release key with the node's credentials")?;
    }
    Ok(link)
}

/// Run a node until Ctrl-C or SIGTERM. Call outside any runtime. Its
/// listeners are bound and its data dir checked before a managed node
/// joins its cloud, so a taken port or a data dir it cannot write costs
/// no join token. When the cloud agent asks for a restart (a self-update
/// or its revert), the node stops as on SIGTERM and the process executes
/// its binary again, with the same arguments (the same process id, so a
/// service manager sees one process).
pub fn run(mut cfg: NodeConfig, mode: Mode, cloud: Option<CloudArgs<'_>>) -> anyhow::Result<()> {
    // Read before anything can replace the file (then the link names a
    // deleted file).
    let exe = std::env::current_exe().context("the running executable")?;
    prepare(&mut cfg, mode)?;
    let restart = runtime()?.block_on(async {
        let signals = Signals::install()?;
        let listeners = bind(&cfg, mode).await?;
        let link = match cloud {
            Some(args) => {
                check_data_dir(&cfg.node.data_dir)?;
                eprintln!(
                    "{}",
                    before_join(&listeners.endpoints(), &cfg.node.data_dir, args.url)
                );
                Some(cloud_link(&cfg.node.data_dir, args).await?)
            }
            None => None,
        };
        serve_bound(cfg, mode, link, listeners, signals.wait()).await
    })?;
    if restart {
        return Err(exec_self(&exe));
    }
    Ok(())
}

/// `verge node: ports … and data dir …` before a join: what it will use.
fn before_join(endpoints: &[Endpoint], data_dir: &Path, url: &str) -> String {
    let ports: Vec<String> = endpoints
        .iter()
        .map(|e| format!("{} {}", e.kind, e.addr))
        .collect();
    format!(
        "verge node: listening on {} (bound), data dir {}; connecting to {url}",
        if ports.is_empty() {
            "no port".to_owned()
        } else {
            ports.join(", ")
        },
        data_dir.display()
    )
}

/// Bind the node's listeners; for `verge node`, a taken port's error also
/// names the flags that pick other ports and another data dir.
async fn bind(cfg: &NodeConfig, mode: Mode) -> anyhow::Result<Listeners> {
    match Listeners::bind(cfg).await {
        Ok(l) => Ok(l),
        Err(e @ verge_node::StartError::Bind { .. }) if mode == Mode::Node => Err(anyhow::anyhow!(
            "{e}\nto run this node beside another one on this machine (e.g. `verge up`), \
             shift all its ports with --port-offset N (e.g. --port-offset 10: MQTT 1893, \
             WebSocket 8093, HTTP API 8091) and give it its own --data-dir DIR, or move \
             one listener with --set KEY=ADDR:PORT (or VERGE__SECTION__KEY); \
             a --join token was not used"
        )),
        Err(e) => Err(e.into()),
    }
}

/// Make the data dir if needed and check that this user may write in it
/// (the join stores the node's credentials there).
pub fn check_data_dir(dir: &Path) -> anyhow::Result<()> {
    writable(dir).map_err(|e| {
        anyhow::anyhow!(
            "node.data_dir {}: not writable by this user ({e}); choose another with \
             --data-dir DIR (or VERGE__NODE__DATA_DIR); a --join token was not used",
            dir.display()
        )
    })
}

/// Create `dir` (0700) and write and remove a file in it.
fn writable(dir: &Path) -> std::io::Result<()> {
    verge_net::fs::create_private_dir(dir)?;
    let probe = dir.join(format!(".verge-write-check-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

/// The data dir of a `verge node` whose config names none (still the
/// built-in `/var/lib/verge`): that one when this user may write there
/// (a service running as root, or a prepared directory), else
/// `$XDG_DATA_HOME/verge/node` (`$HOME/.local/share/verge/node`; without
/// either, `./verge-node-data`). Returns the directory chosen when it
/// changed.
pub fn default_data_dir(cfg: &mut NodeConfig) -> Option<PathBuf> {
    if cfg.node.data_dir != NodeConfig::default().node.data_dir
        || writable(&cfg.node.data_dir).is_ok()
    {
        return None;
    }
    let dir = user_data_dir(std::env::var_os("XDG_DATA_HOME"), std::env::var_os("HOME"));
    cfg.node.data_dir = dir.clone();
    Some(dir)
}

/// `$XDG_DATA_HOME/verge/node`, else `$HOME/.local/share/verge/node`
/// (each only when absolute, as the XDG spec says), else
/// `./verge-node-data`.
fn user_data_dir(xdg: Option<std::ffi::OsString>, home: Option<std::ffi::OsString>) -> PathBuf {
    let absolute = |v: Option<std::ffi::OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    absolute(xdg)
        .or_else(|| absolute(home).map(|h| h.join(".local/share")))
        .map_or_else(
            || PathBuf::from("./verge-node-data"),
            |d| d.join("verge/node"),
        )
}

/// `--port-offset N`: add `n` to the port of every listener (ports 0,
/// "any free port", stay 0).
pub fn shift_ports(cfg: &mut NodeConfig, n: u16) -> anyhow::Result<()> {
    if n == 0 {
        return Ok(());
    }
    let ls = &mut cfg.broker.listeners;
    let addrs: [(&str, &mut SocketAddr); 7] = [
        ("broker.listeners.tcp.bind", &mut ls.tcp.bind),
        ("broker.listeners.tls.bind", &mut ls.tls.bind),
        ("broker.listeners.ws.bind", &mut ls.ws.bind),
        ("broker.listeners.wss.bind", &mut ls.wss.bind),
        ("coap.bind", &mut cfg.coap.bind),
        ("coap.dtls.bind", &mut cfg.coap.dtls.bind),
        ("http.bind", &mut cfg.http.bind),
    ];
    for (key, addr) in addrs {
        if addr.port() == 0 {
            continue;
        }
        let port = addr.port().checked_add(n).ok_or_else(|| {
            anyhow::anyhow!(
                "--port-offset {n}: {key} port {} goes past 65535",
                addr.port()
            )
        })?;
        addr.set_port(port);
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
/// for a restart (then `true`). `verge up`'s node.
#[cfg(feature = "cloud")]
pub async fn serve(
    cfg: NodeConfig,
    mode: Mode,
    cloud: Option<CloudLink>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<bool> {
    let listeners = bind(&cfg, mode).await?;
    serve_bound(cfg, mode, cloud, listeners, shutdown).await
}

/// [`serve`] on listeners already bound.
async fn serve_bound(
    cfg: NodeConfig,
    mode: Mode,
    cloud: Option<CloudLink>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<bool> {
    let endpoints = listeners.endpoints();
    let managed = cloud.is_some();
    let node = Node::start(cfg, cloud).await?;
    let shown = Shown {
        mode,
        managed,
        listening: &endpoints,
        token_file: node.api_token_file(),
    };
    println!("{}", banner(node.config(), &shown));
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

/// What the banner tells besides the config.
struct Shown<'a> {
    /// Which banner.
    mode: Mode,
    /// Whether a cloud center manages the node (it supplies the devices).
    managed: bool,
    /// Where the node listens.
    listening: &'a [Endpoint],
    /// The HTTP API's token file, when it has one.
    token_file: Option<&'a Path>,
}

fn banner(cfg: &NodeConfig, shown: &Shown<'_>) -> String {
    let (mode, listening, token_file) = (shown.mode, shown.listening, shown.token_file);
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
    out.push_str(&format!(
        "  data dir             {}\n",
        cfg.node.data_dir.display()
    ));
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
    } else if shown.managed {
        out.push_str("devices: the cloud center supplies this node's devices and their credentials (create them in its console or with `verge ctl devices create`)\n");
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
        let listening = [
            Endpoint {
                kind: "tcp",
                addr: ([127, 0, 0, 1], 1999).into(),
            },
            Endpoint {
                kind: "http",
                addr: ([127, 0, 0, 1], 8081).into(),
            },
        ];
        let b = banner(
            &cfg,
            &Shown {
                mode: Mode::Demo,
                managed: true,
                listening: &listening,
                token_file: Some(Path::new("/var/lib/verge/api-token")),
            },
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

    fn node(managed: bool, listening: &[Endpoint]) -> Shown<'_> {
        Shown {
            mode: Mode::Node,
            managed,
            listening,
            token_file: None,
        }
    }

    #[test]
    fn node_banner_warns_when_nobody_can_connect() {
        let b = banner(&NodeConfig::default(), &node(false, &[]));
        assert!(b.contains("no client can connect"), "{b}");
        assert!(!b.contains("mosquitto"), "{b}");
        assert!(b.contains("data dir             /var/lib/verge\n"), "{b}");
    }

    #[test]
    fn managed_node_banner_says_the_cloud_supplies_the_devices() {
        let b = banner(&NodeConfig::default(), &node(true, &[]));
        assert!(!b.contains("no client can connect"), "{b}");
        assert!(
            b.contains("the cloud center supplies this node's devices"),
            "{b}"
        );
    }

    #[test]
    fn port_offset_shifts_every_listener_but_any_port() {
        let mut cfg = NodeConfig::default();
        cfg.coap.bind = ([127, 0, 0, 1], 0).into();
        shift_ports(&mut cfg, 10).expect("shifts");
        let ls = &cfg.broker.listeners;
        assert_eq!(
            [
                ls.tcp.bind.port(),
                ls.tls.bind.port(),
                ls.ws.bind.port(),
                ls.wss.bind.port()
            ],
            [1893, 8893, 8093, 8094]
        );
        assert_eq!((cfg.http.bind.port(), cfg.coap.bind.port()), (8091, 0));
        assert_eq!(cfg.coap.dtls.bind.port(), 5694);
        let e = shift_ports(&mut cfg, 65000).expect_err("past 65535");
        assert!(e.to_string().contains("--port-offset 65000"), "{e}");
    }

    #[test]
    fn a_data_dir_that_cannot_be_written_is_refused_before_the_join() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        let e = check_data_dir(&file.join("sub")).expect_err("a file is in the way");
        assert!(e.to_string().contains("--data-dir DIR"), "{e}");
        check_data_dir(&dir.path().join("ok")).expect("writable");
    }

    #[test]
    fn a_user_data_dir_follows_xdg_then_home() {
        let os = |s: &str| Some(std::ffi::OsString::from(s));
        assert_eq!(
            user_data_dir(os("/x/data"), os("/home/u")),
            PathBuf::from("/x/data/verge/node")
        );
        assert_eq!(
            user_data_dir(os(""), os("/home/u")),
            PathBuf::from("/home/u/.local/share/verge/node"),
            "an empty or relative XDG_DATA_HOME is ignored"
        );
        assert_eq!(
            user_data_dir(os("rel"), None),
            PathBuf::from("./verge-node-data")
        );
    }

    #[test]
    fn an_explicit_data_dir_is_kept() {
        let mut cfg = NodeConfig::default();
        cfg.node.data_dir = PathBuf::from("/nonexistent/explicit");
        assert_eq!(default_data_dir(&mut cfg), None);
        assert_eq!(cfg.node.data_dir, PathBuf::from("/nonexistent/explicit"));
    }

    #[test]
    fn node_banner_warns_when_the_api_has_no_auth() {
        let mut cfg = NodeConfig::default();
        cfg.http.auth = false;
        let http = Endpoint {
            kind: "http",
            addr: ([127, 0, 0, 1], 8081).into(),
        };
        let b = banner(&cfg, &node(false, &[http]));
        assert!(b.contains("[http] auth = false"), "{b}");
    }
}

//! Dispatch of the subcommands: resolve the config layers, set up logging,
//! and call the command's module.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::Context;
use tracing_subscriber::EnvFilter;

use crate::cli::{BenchCommand, Cli, Command, ConfigCommand, DeviceCommand, ReleaseCommand};
use crate::config::{self, Layers, NodeConfig};
use crate::node::Mode;

/// Run one parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let log = cli.log.as_deref();
    match cli.command {
        #[cfg(feature = "cloud")]
        Command::Up(up) => {
            let cfg = load_node(Some(config::DEMO_TOML), None, &up.run.set, log)?;
            init_logging(log, &cfg.log.level)?;
            let cloud = load_cloud(None, &up.cloud_set, false)?;
            crate::up::run(cfg, cloud, usize::from(up.devices))
        }
        #[cfg(not(feature = "cloud"))]
        Command::Up(_) => Err(no_cloud(
            "`verge up` (it runs a cloud center next to the node; \
             `verge node` runs a node alone)",
        )),
        Command::Node(n) => {
            let mut set = n.run.set.clone();
            if let Some(dir) = &n.data_dir {
                // Absolute, so the banner says where it is.
                let dir = std::path::absolute(dir)
                    .with_context(|| format!("--data-dir {}", dir.display()))?;
                set.push(("node.data_dir".into(), dir.display().to_string()));
            }
            let mut cfg = load_node(None, n.config.as_deref(), &set, log)?;
            init_logging(log, &cfg.log.level)?;
            crate::node::shift_ports(&mut cfg, n.port_offset)?;
            if let Some(dir) = crate::node::default_data_dir(&mut cfg) {
                eprintln!(
                    "note: /var/lib/verge is not writable by this user: data dir {} \
                     (choose one with --data-dir DIR)",
                    dir.display()
                );
            }
            crate::node::guard_trial(&cfg.node.data_dir)?;
            let cloud = n.cloud.as_deref().map(|url| crate::node::CloudArgs {
                url,
                join: n.join.as_deref(),
                ca: n.cloud_ca.as_deref(),
                release_key: n.release_key.as_deref(),
            });
            crate::node::run(cfg, Mode::Node, cloud)
        }
        #[cfg(feature = "cloud")]
        Command::Cloud(c) => {
            let cfg = load_cloud(c.config.as_deref(), &c.set, true)?;
            init_logging(log, "info")?;
            crate::cloud::run(cfg, c.reset_admin_token)
        }
        #[cfg(not(feature = "cloud"))]
        Command::Cloud(_) => Err(no_cloud("`verge cloud`")),
        Command::Ctl(args) => {
            init_logging(log, "warn")?;
            crate::ctl::run(args)
        }
        Command::Config(ConfigCommand::Default { cloud: false }) => {
            print!("{}", config::DEFAULT_TOML);
            Ok(())
        }
        #[cfg(feature = "cloud")]
        Command::Config(ConfigCommand::Default { cloud: true }) => {
            print!("{}", config::CLOUD_DEFAULT_TOML);
            Ok(())
        }
        #[cfg(not(feature = "cloud"))]
        Command::Config(ConfigCommand::Default { cloud: true }) => {
            Err(no_cloud("`verge config default --cloud`"))
        }
        Command::Config(ConfigCommand::Check { file, cloud: false }) => {
            let cfg = load_node(None, Some(&file), &[], None)?;
            check(&cfg).with_context(|| format!("invalid config ({})", file.display()))?;
            println!("{}: ok", file.display());
            Ok(())
        }
        #[cfg(feature = "cloud")]
        Command::Config(ConfigCommand::Check { file, cloud: true }) => {
            load_cloud(Some(&file), &[], true)?;
            println!("{}: ok", file.display());
            Ok(())
        }
        #[cfg(not(feature = "cloud"))]
        Command::Config(ConfigCommand::Check { cloud: true, .. }) => {
            Err(no_cloud("`verge config check --cloud`"))
        }
        Command::Device(d) => {
            init_logging(log, "warn")?;
            match d {
                DeviceCommand::Add {
                    registry,
                    username,
                    password,
                    client_id,
                } => crate::device::add(&registry, &username, password, client_id),
                DeviceCommand::HashPassword { password } => crate::device::hash(password),
                DeviceCommand::Simulate(args) => crate::simulate::run(&args),
            }
        }
        Command::Release(r) => {
            init_logging(log, "warn")?;
            match r {
                ReleaseCommand::Keygen { out } => crate::release::keygen(&out),
                ReleaseCommand::Sign { key, version, file } => {
                    crate::release::sign(&key, &version, &file)
                }
            }
        }
        Command::Bench(b) => {
            init_logging(log, "warn")?;
            match b {
                BenchCommand::Broker(args) => verge_bench::broker::run(&args),
                BenchCommand::Connections(args) => verge_bench::connections::run(&args),
                BenchCommand::Rules(args) => verge_bench::rules::run(&args),
                BenchCommand::Queue(args) => verge_bench::queue::run(&args),
                BenchCommand::Functions(args) => verge_bench::functions::run(&args),
                BenchCommand::Drivers(args) => verge_bench::drivers::run(&args),
                BenchCommand::Startup(args) => verge_bench::startup::run(&args),
                #[cfg(feature = "cloud")]
                BenchCommand::Ingest(args) => verge_bench::ingest::run(&args),
                #[cfg(feature = "cloud")]
                BenchCommand::Fleet(args) => verge_bench::fleet::run(&args),
                #[cfg(not(feature = "cloud"))]
                BenchCommand::Ingest(_) => Err(no_cloud("`verge bench ingest`")),
                #[cfg(not(feature = "cloud"))]
                BenchCommand::Fleet(_) => Err(no_cloud("`verge bench fleet`")),
            }
        }
    }
}

/// Defaults → `base` → `file` → `VERGE__*` → `--set` / `--log`.
fn load_node(
    base: Option<&str>,
    file: Option<&Path>,
    set: &[(String, String)],
    log: Option<&str>,
) -> anyhow::Result<NodeConfig> {
    let mut flags: Vec<(String, String, &'static str)> = set
        .iter()
        .map(|(k, v)| (k.clone(), v.clone(), "--set"))
        .collect();
    if let Some(level) = log {
        flags.push(("log.level".into(), level.into(), "--log"));
    }
    let layers = Layers {
        base,
        file,
        env: config::load::process_env()?,
        flags,
    };
    let what = match file {
        Some(f) => format!("invalid config ({})", f.display()),
        None => "invalid config".to_owned(),
    };
    config::load(&layers).context(what)
}

/// The answer of a command that needs the cloud center on a build without
/// it (`--no-default-features --features edge`).
#[cfg(not(feature = "cloud"))]
fn no_cloud(what: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{what}: this build has no cloud center (an edge-only build); \
         rebuild with `--features cloud`, or use the default build"
    )
}

/// The cloud center's config: defaults → `file` → `VERGE__*` (when `env`)
/// → `--set`.
#[cfg(feature = "cloud")]
fn load_cloud(
    file: Option<&Path>,
    set: &[(String, String)],
    env: bool,
) -> anyhow::Result<verge_cloud::CloudConfig> {
    let layers = Layers {
        base: None,
        file,
        env: if env {
            config::load::process_env()?
        } else {
            Vec::new()
        },
        flags: set
            .iter()
            .map(|(k, v)| (k.clone(), v.clone(), "--set"))
            .collect(),
    };
    let what = match file {
        Some(f) => format!("invalid cloud config ({})", f.display()),
        None => "invalid cloud config".to_owned(),
    };
    let (cfg, _) = config::load::load_as(&layers).context(what)?;
    Ok(cfg)
}

/// Checks beyond the types that need no network: the device registry and
/// the TLS material of enabled listeners load.
fn check(cfg: &NodeConfig) -> anyhow::Result<()> {
    verge_broker::Broker::authenticator(&cfg.broker).context("broker")?;
    let ls = &cfg.broker.listeners;
    if ls.tls.enabled {
        verge_broker::listener::server_tls(&ls.tls.tls, "broker.listeners.tls")?;
    }
    if ls.wss.enabled {
        verge_broker::listener::server_tls(&ls.wss.tls, "broker.listeners.wss")?;
    }
    Ok(())
}

/// Logging to stderr. Precedence: `--log`, then RUST_LOG, then `fallback`
/// (the config's `log.level`).
fn init_logging(flag: Option<&str>, fallback: &str) -> anyhow::Result<()> {
    let env = std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty());
    let (text, origin) = match (flag, env.as_deref()) {
        (Some(f), _) => (f.to_owned(), "--log"),
        (None, Some(env)) => (env.to_owned(), "RUST_LOG"),
        (None, None) => (fallback.to_owned(), "log.level"),
    };
    let filter = EnvFilter::builder()
        .parse(&text)
        .with_context(|| format!("{origin} `{text}`"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_filter_reloading();
    let handle = builder.reload_handle();
    builder
        .try_init()
        .map_err(|e| anyhow::anyhow!("setting up logging: {e}"))?;
    // A cloud-managed node's deployed config may change it (`log.level`).
    verge_net::log_filter::register(&text, move |f| {
        let filter = EnvFilter::builder()
            .parse(f)
            .map_err(|e| format!("`{f}` is not a log filter: {e}"))?;
        handle.reload(filter).map_err(|e| e.to_string())
    });
    Ok(())
}

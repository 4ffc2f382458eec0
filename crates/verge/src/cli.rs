//! The command line: raw parsed arguments (clap derive), no I/O.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Verge: an IoT edge platform in one binary.
#[derive(Debug, Parser)]
#[command(
    name = "verge",
    version = crate::BUILD_VERSION.as_str(),
    propagate_version = true
)]
pub struct Cli {
    /// Log filter (e.g. `debug`, `info,verge_broker=trace`); overrides RUST_LOG
    /// and the config's `log.level`.
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole walkthrough on 127.0.0.1: a cloud center (console and
    /// API on 8080, SQLite), one node joined to it (MQTT 1883), demo
    /// devices sending telemetry, a rule and a WebAssembly function; demo
    /// only.
    #[cfg_attr(
        not(feature = "cloud"),
        command(
            about = "Not in this build (it has no cloud center): the walkthrough with a cloud center",
            long_about = None
        )
    )]
    Up(UpArgs),
    /// Run an edge node from a config file; with --cloud, managed by a
    /// cloud center.
    Node(NodeArgs),
    /// Run the cloud management center (open API, console, MQTT endpoint
    /// for nodes).
    #[cfg_attr(
        not(feature = "cloud"),
        command(
            about = "Not in this build (it has no cloud center): the cloud management center",
            long_about = None
        )
    )]
    Cloud(CloudArgs),
    /// A command-line client of the cloud's open API.
    Ctl(crate::ctl::CtlArgs),
    /// Print or check configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage the device registry file.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Load generators for the broker and the rule engine.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Keys and signatures of releases of the `verge` binary (self-update
    /// of nodes).
    #[command(subcommand)]
    Release(ReleaseCommand),
}

/// `verge release ...`.
#[derive(Debug, Subcommand)]
pub enum ReleaseCommand {
    /// Make an ed25519 release key: write the private key (PKCS#8, mode
    /// 0600, never overwritten) and print the public key (hex) that nodes
    /// are given with `verge node --release-key`.
    Keygen {
        /// Where the private key goes.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Sign a `verge` binary as a release: print the JSON to POST to the
    /// cloud's /api/releases (`{version, sha256, size, signature}`).
    // `--version` is the release's here, not the program's.
    #[command(disable_version_flag = true)]
    Sign {
        /// The private key `verge release keygen` wrote.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The version the binary reports (`verge --version`).
        #[arg(long)]
        version: String,
        /// The binary.
        file: PathBuf,
    },
}

/// Options shared by the commands that run a node.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Override a config key, e.g. `--set broker.listeners.tcp.bind=127.0.0.1:1999`
    /// (applied after the file and the VERGE__* environment).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub set: Vec<(String, String)>,
}

/// `verge up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Overrides of the node's config.
    #[command(flatten)]
    pub run: RunArgs,
    /// Override a key of the cloud center's config, e.g.
    /// `--cloud-set http.bind=127.0.0.1:18080`.
    #[arg(long = "cloud-set", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub cloud_set: Vec<(String, String)>,
    /// Simulated devices to run (d1, d2, …).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(0..=100))]
    pub devices: u16,
}

/// `verge node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Config file (TOML); without it the defaults and environment apply.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The cloud center's URL, e.g. `http://127.0.0.1:8080` or
    /// `https://cloud.example.com`: the node
    /// joins it (with --join, once) and runs the state set there.
    #[arg(long, value_name = "URL")]
    pub cloud: Option<String>,
    /// The one-time join token the cloud gave when the node was created.
    #[arg(long, value_name = "TOKEN", requires = "cloud")]
    pub join: Option<String>,
    /// PEM CA file the cloud's certificates (https://, mqtts://) are
    /// verified against instead of Mozilla's roots; remembered with the
    /// node's credentials.
    #[arg(long, value_name = "FILE", requires = "cloud")]
    pub cloud_ca: Option<PathBuf>,
    /// The ed25519 public key (64 hex digits, from `verge release keygen`)
    /// releases of `verge` must be signed with; stored with the node's
    /// credentials. Without one the node takes no release.
    #[arg(long, value_name = "HEX", requires = "cloud")]
    pub release_key: Option<String>,
    /// Where the node keeps its state (its cloud credentials, queue, store,
    /// API token): sets `node.data_dir`. Without it and without one in the
    /// config, `/var/lib/verge` when this user may write there, else
    /// `$XDG_DATA_HOME/verge/node` (`~/.local/share/verge/node`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Add N to the port of every listener (MQTT TCP/TLS/WS/WSS, CoAP,
    /// CoAPs, HTTP API), e.g. `--port-offset 10` serves MQTT on 1893 and
    /// the API on 8091: a second node on a machine that already runs one
    /// (or `verge up`).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub port_offset: u16,
    /// Overrides.
    #[command(flatten)]
    pub run: RunArgs,
}

/// `verge cloud`.
#[derive(Debug, Args)]
pub struct CloudArgs {
    /// Config file (TOML); without it the defaults and environment apply.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. `--set http.bind=127.0.0.1:18080`.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub set: Vec<(String, String)>,
    /// Replace the admin token with a new one, print it and exit.
    #[arg(long)]
    pub reset_admin_token: bool,
}

/// `verge config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the full default config, every key documented (the node's;
    /// with --cloud the cloud center's).
    Default {
        /// The cloud center's config (`verge cloud`).
        #[arg(long)]
        cloud: bool,
    },
    /// Validate a config file (with the VERGE__* environment applied).
    Check {
        /// The file to check.
        file: PathBuf,
        /// A cloud center's config (`verge cloud`).
        #[arg(long)]
        cloud: bool,
    },
}

/// `verge device ...`.
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Add a device with an argon2-hashed password to a registry file
    /// (created if missing).
    Add {
        /// Registry file (the broker's `devices_file`).
        #[arg(long, value_name = "FILE")]
        registry: PathBuf,
        /// The device's username.
        #[arg(long)]
        username: String,
        /// The password; read from standard input when left out.
        #[arg(long)]
        password: Option<String>,
        /// Pin the device to this client id.
        #[arg(long, value_name = "ID")]
        client_id: Option<String>,
    },
    /// Print the argon2 hash of a password (read from standard input when
    /// --password is left out).
    HashPassword {
        /// The password.
        #[arg(long)]
        password: Option<String>,
    },
    /// A simulated device: connects to a node's broker with its
    /// credentials, publishes JSON telemetry and prints the commands it
    /// gets.
    Simulate(crate::simulate::SimulateArgs),
}

/// `verge bench ...`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Publish/subscribe throughput and end-to-end latency.
    Broker(verge_bench::broker::BrokerBenchArgs),
    /// Memory per idle connection.
    Connections(verge_bench::connections::ConnectionsArgs),
    /// Rule engine throughput and latency, in-process or through the broker.
    Rules(verge_bench::rules::RulesBenchArgs),
    /// Cache queue durable appends/s per sync policy and read-back rate.
    Queue(verge_bench::queue::QueueBenchArgs),
    /// Edge function calls/s and latency, WebAssembly and process runtimes.
    Functions(verge_bench::functions::FunctionsBenchArgs),
    /// Modbus driver points/s, CPU and memory against an in-process simulator.
    Drivers(verge_bench::drivers::DriversBenchArgs),
    /// Start-up time of `verge node`: from spawning the process until its
    /// broker answers an MQTT CONNECT.
    Startup(verge_bench::startup::StartupArgs),
    /// Stored upstream messages/s through the cloud's ingest path, SQLite
    /// and PostgreSQL.
    #[cfg(feature = "cloud")]
    Ingest(verge_bench::ingest::IngestBenchArgs),
    /// Simulated nodes against `verge cloud` replicas it starts: join rate,
    /// heartbeat, long-poll and command latency, ingest, cloud CPU and RSS.
    #[cfg(feature = "cloud")]
    Fleet(verge_bench::fleet::FleetArgs),
    /// Not in this build (it has no cloud center): the cloud's ingest path.
    #[cfg(not(feature = "cloud"))]
    Ingest(NotBuilt),
    /// Not in this build (it has no cloud center): simulated nodes against
    /// `verge cloud` replicas.
    #[cfg(not(feature = "cloud"))]
    Fleet(NotBuilt),
}

/// The arguments of a command this build leaves out (the edge-only build
/// has no cloud center): taken as they come, so that the command answers
/// with why it is missing rather than with a usage error.
#[cfg(not(feature = "cloud"))]
#[derive(Debug, Args)]
pub struct NotBuilt {
    /// Whatever was given.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub args: Vec<String>,
}

/// `KEY=VALUE`.
fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got `{s}`")),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("verge").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn release_commands_and_the_release_key() {
        let cli = parse(&[
            "release",
            "sign",
            "--key",
            "k",
            "--version",
            "0.1.0+b2",
            "verge",
        ])
        .expect("sign");
        match cli.command {
            Command::Release(ReleaseCommand::Sign { key, version, file }) => {
                assert_eq!(key, Path::new("k"));
                assert_eq!(version, "0.1.0+b2");
                assert_eq!(file, Path::new("verge"));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["release", "keygen", "--out", "k"]).is_ok());
        let cli = parse(&["node", "--cloud", "http://c", "--release-key", "ab"]).expect("node");
        match cli.command {
            Command::Node(n) => assert_eq!(n.release_key.as_deref(), Some("ab")),
            other => panic!("{other:?}"),
        }
        assert!(
            parse(&["node", "--release-key", "ab"]).is_err(),
            "needs --cloud"
        );
    }

    #[test]
    fn node_with_config_and_overrides() {
        let cli = parse(&[
            "--log",
            "debug",
            "node",
            "--config",
            "n.toml",
            "--set",
            "broker.max_inflight=5",
        ])
        .expect("parses");
        assert_eq!(cli.log.as_deref(), Some("debug"));
        let Command::Node(n) = cli.command else {
            panic!("not node")
        };
        assert_eq!(n.config, Some(PathBuf::from("n.toml")));
        assert_eq!(
            n.run.set,
            vec![("broker.max_inflight".to_owned(), "5".to_owned())]
        );
    }

    #[test]
    fn global_log_after_subcommand() {
        let cli = parse(&["up", "--log", "warn"]).expect("parses");
        assert_eq!(cli.log.as_deref(), Some("warn"));
        assert!(matches!(cli.command, Command::Up(_)));
    }

    #[test]
    fn set_needs_key_value() {
        assert!(parse(&["up", "--set", "nokey"]).is_err());
        assert!(parse(&["up", "--set", "=v"]).is_err());
    }

    #[test]
    fn config_and_device_commands() {
        assert!(matches!(
            parse(&["config", "default"]).expect("ok").command,
            Command::Config(ConfigCommand::Default { cloud: false })
        ));
        assert!(matches!(
            parse(&["config", "default", "--cloud"])
                .expect("ok")
                .command,
            Command::Config(ConfigCommand::Default { cloud: true })
        ));
        let cli = parse(&["config", "check", "x.toml"]).expect("ok");
        assert!(
            matches!(cli.command, Command::Config(ConfigCommand::Check { file, cloud: false }) if file == Path::new("x.toml"))
        );
        assert!(parse(&["config", "check"]).is_err());
        let cli = parse(&[
            "device",
            "add",
            "--registry",
            "r.toml",
            "--username",
            "u",
            "--client-id",
            "c",
        ])
        .expect("ok");
        let Command::Device(DeviceCommand::Add {
            username,
            password,
            client_id,
            ..
        }) = cli.command
        else {
            panic!("not device add")
        };
        assert_eq!(
            (username.as_str(), password, client_id.as_deref()),
            ("u", None, Some("c"))
        );
        assert!(
            parse(&["device", "add", "--username", "u"]).is_err(),
            "registry is required"
        );
        assert!(parse(&["device", "hash-password", "--password", "p"]).is_ok());
    }

    #[test]
    fn node_data_dir_and_port_offset() {
        let cli = parse(&[
            "node",
            "--cloud",
            "http://c",
            "--join",
            "t",
            "--data-dir",
            "./edge2",
            "--port-offset",
            "10",
        ])
        .expect("ok");
        let Command::Node(n) = cli.command else {
            panic!("not node")
        };
        assert_eq!(n.data_dir.as_deref(), Some(Path::new("./edge2")));
        assert_eq!(n.port_offset, 10);
        let Command::Node(n) = parse(&["node"]).expect("ok").command else {
            panic!("not node")
        };
        assert_eq!((n.data_dir, n.port_offset), (None, 0));
        assert!(parse(&["node", "--port-offset", "70000"]).is_err());
    }

    #[test]
    fn cloud_commands() {
        let cli = parse(&["node", "--cloud", "http://c:8080", "--join", "t0k"]).expect("ok");
        let Command::Node(n) = cli.command else {
            panic!("not node")
        };
        assert_eq!(
            (n.cloud.as_deref(), n.join.as_deref()),
            (Some("http://c:8080"), Some("t0k"))
        );
        assert!(
            parse(&["node", "--join", "t0k"]).is_err(),
            "--join needs --cloud"
        );
        let cli = parse(&[
            "cloud",
            "--set",
            "http.bind=127.0.0.1:1",
            "--reset-admin-token",
        ])
        .expect("ok");
        assert!(
            matches!(cli.command, Command::Cloud(c) if c.reset_admin_token && c.set.len() == 1)
        );
        let cli = parse(&[
            "up",
            "--cloud-set",
            "mqtt.bind=127.0.0.1:2",
            "--devices",
            "0",
        ])
        .expect("ok");
        assert!(matches!(cli.command, Command::Up(u) if u.devices == 0 && u.cloud_set.len() == 1));
        assert!(parse(&["up", "--devices", "101"]).is_err());
        let cli = parse(&[
            "device",
            "simulate",
            "--device",
            "d1",
            "--secret",
            "s",
            "--interval",
            "250ms",
        ])
        .expect("ok");
        let Command::Device(DeviceCommand::Simulate(s)) = cli.command else {
            panic!("not simulate")
        };
        assert_eq!(s.node, "127.0.0.1:1883");
        assert_eq!(s.interval.get(), std::time::Duration::from_millis(250));
        assert!(
            parse(&[
                "device",
                "simulate",
                "--device",
                "d1",
                "--secret",
                "s",
                "--interval",
                "soon"
            ])
            .is_err()
        );
        let cli = parse(&[
            "ctl", "--token", "t", "rules", "create", "--id", "r", "--node", "n", "--sql",
            "SELECT 1", "--action", "{}",
        ])
        .expect("ok");
        assert!(matches!(cli.command, Command::Ctl(_)));
        assert!(
            parse(&["ctl", "nodes", "create"]).is_err(),
            "a name is needed"
        );
    }

    /// The `CtlCommand` of `verge ctl ARGS…`.
    fn ctl(args: &[&str]) -> Result<crate::ctl::CtlCommand, clap::Error> {
        let all: Vec<&str> = std::iter::once("ctl").chain(args.iter().copied()).collect();
        match parse(&all)?.command {
            Command::Ctl(c) => Ok(c.command),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ctl_release_commands() {
        use crate::ctl::{CtlCommand, ReleasesCmd};
        let c = ctl(&[
            "releases",
            "add",
            "--metadata",
            "r.json",
            "--binary",
            "verge",
        ])
        .expect("add");
        let CtlCommand::Releases(ReleasesCmd::Add { metadata, binary }) = c else {
            panic!("{c:?}")
        };
        assert_eq!(
            (metadata.as_path(), binary.as_path()),
            (Path::new("r.json"), Path::new("verge"))
        );
        assert!(
            ctl(&["releases", "add", "--metadata", "r.json"]).is_err(),
            "the binary is needed"
        );
        let c = ctl(&["releases", "assign", "--node", "edge-1", "0.2.0+b1"]).expect("assign");
        assert!(
            matches!(&c, CtlCommand::Releases(ReleasesCmd::Assign { node, release }) if node == "edge-1" && release == "0.2.0+b1"),
            "{c:?}"
        );
        assert!(
            ctl(&["releases", "assign", "0.2.0"]).is_err(),
            "a node is needed"
        );
        let c = ctl(&["releases", "unassign", "--node", "edge-1"]).expect("unassign");
        assert!(
            matches!(&c, CtlCommand::Releases(ReleasesCmd::Unassign { node }) if node == "edge-1")
        );
        let c = ctl(&["releases", "get", "0.2.0"]).expect("get");
        assert!(
            matches!(&c, CtlCommand::Releases(ReleasesCmd::Get { release }) if release == "0.2.0")
        );
        let c = ctl(&["releases", "delete", "0.2.0"]).expect("delete");
        assert!(
            matches!(&c, CtlCommand::Releases(ReleasesCmd::Delete { release }) if release == "0.2.0")
        );
        assert!(matches!(
            ctl(&["releases", "list"]).expect("list"),
            CtlCommand::Releases(ReleasesCmd::List)
        ));
    }

    #[test]
    fn ctl_revision_commands() {
        use crate::ctl::{CtlCommand, RevisionsCmd};
        let c = ctl(&["revisions", "list", "--node", "n", "--limit", "5"]).expect("list");
        assert!(
            matches!(&c, CtlCommand::Revisions(RevisionsCmd::List { node, limit: Some(5) }) if node == "n"),
            "{c:?}"
        );
        let c = ctl(&["revisions", "diff", "--node", "n", "2", "4"]).expect("diff");
        assert!(
            matches!(&c, CtlCommand::Revisions(RevisionsCmd::Diff { node, a: 2, b: 4 }) if node == "n")
        );
        let c = ctl(&["revisions", "get", "--node", "n", "3"]).expect("get");
        assert!(matches!(
            &c,
            CtlCommand::Revisions(RevisionsCmd::Get { revision: 3, .. })
        ));
        let c = ctl(&["revisions", "rollback", "--node", "n", "2"]).expect("rollback");
        assert!(matches!(
            &c,
            CtlCommand::Revisions(RevisionsCmd::Rollback { revision: 2, .. })
        ));
        let c = ctl(&["revisions", "cancel", "--node", "n"]).expect("cancel");
        assert!(matches!(&c, CtlCommand::Revisions(RevisionsCmd::Cancel { node }) if node == "n"));
        assert!(
            ctl(&["revisions", "rollback", "2"]).is_err(),
            "a node is needed"
        );
        assert!(ctl(&["revisions", "rollback", "--node", "n", "two"]).is_err());
        assert!(
            ctl(&["revisions", "diff", "--node", "n", "2"]).is_err(),
            "two revisions"
        );
    }

    #[test]
    fn ctl_rollout_commands() {
        use crate::ctl::{CtlCommand, RolloutsCmd};
        let c = ctl(&[
            "rollouts",
            "start",
            "--component",
            "app",
            "--version",
            "2.0.0",
            "--selector",
            "site=a,tier=edge",
            "--canary-percent",
            "10",
            "--max-failure-rate",
            "0.2",
        ])
        .expect("start");
        let CtlCommand::Rollouts(RolloutsCmd::Start {
            component,
            release,
            selector,
            canary,
            canary_percent,
            max_failure_rate,
            stage_timeout,
        }) = c
        else {
            panic!("{c:?}")
        };
        assert_eq!((component.as_str(), release.as_str()), ("app", "2.0.0"));
        assert_eq!(
            serde_json::Value::Object(selector),
            serde_json::json!({"site": "a", "tier": "edge"})
        );
        assert_eq!(
            (canary, canary_percent, max_failure_rate),
            (None, Some(10.0), Some(0.2))
        );
        assert_eq!(stage_timeout, None);
        assert!(
            ctl(&[
                "rollouts",
                "start",
                "--component",
                "app",
                "--version",
                "2",
                "--selector",
                "site=a",
                "--canary",
                "1",
                "--canary-percent",
                "10"
            ])
            .is_err(),
            "a count or a percent"
        );
        assert!(
            ctl(&[
                "rollouts",
                "start",
                "--component",
                "app",
                "--version",
                "2",
                "--selector",
                "site"
            ])
            .is_err(),
            "a selector is key=value"
        );
        assert!(
            ctl(&[
                "rollouts",
                "start",
                "--component",
                "app",
                "--selector",
                "site=a"
            ])
            .is_err(),
            "a version is needed"
        );
        assert!(matches!(
            ctl(&["rollouts", "resume", "7"]).expect("resume"),
            CtlCommand::Rollouts(RolloutsCmd::Resume { id: 7 })
        ));
        assert!(matches!(
            ctl(&["rollouts", "cancel", "7"]).expect("cancel"),
            CtlCommand::Rollouts(RolloutsCmd::Cancel { id: 7 })
        ));
        assert!(matches!(
            ctl(&["rollouts", "get", "7"]).expect("get"),
            CtlCommand::Rollouts(RolloutsCmd::Get { id: 7 })
        ));
        assert!(matches!(
            ctl(&["rollouts", "list"]).expect("list"),
            CtlCommand::Rollouts(RolloutsCmd::List)
        ));
        // `--version` is the component version on `start` only.
        let shown = ctl(&["rollouts", "list", "--version"]).expect_err("prints the version");
        assert_eq!(shown.kind(), clap::error::ErrorKind::DisplayVersion);
    }

    #[test]
    fn bench_broker_options() {
        let cli = parse(&[
            "bench",
            "broker",
            "--spawn",
            "verge",
            "--publishers",
            "4",
            "--subscribers",
            "2",
            "--qos",
            "1",
            "--payload",
            "64",
            "--duration",
            "3",
            "--protocol",
            "5",
            "--json",
        ])
        .expect("parses");
        let Command::Bench(BenchCommand::Broker(b)) = cli.command else {
            panic!("not bench broker")
        };
        assert_eq!(
            (b.publishers, b.subscribers, b.qos, b.payload, b.duration),
            (4, 2, 1, 64, 3.0)
        );
        assert!(b.json);
        assert!(
            parse(&["bench", "broker", "--qos", "2"]).is_err(),
            "qos 2 is not offered"
        );
        assert!(
            parse(&["bench", "broker", "--payload", "4"]).is_err(),
            "payload holds a timestamp"
        );
        assert!(parse(&["bench", "broker", "--protocol", "4"]).is_err());
        assert!(
            parse(&["bench", "broker", "--spawn", "verge", "--port", "1883"]).is_err(),
            "spawn or port"
        );
        assert!(
            parse(&["bench", "broker", "--spawn", "mosquitto"]).is_err(),
            "only verge can be spawned"
        );
    }

    #[test]
    fn bench_rules_options() {
        let cli = parse(&["bench", "rules"]).expect("parses");
        let Command::Bench(BenchCommand::Rules(r)) = cli.command else {
            panic!("not bench rules")
        };
        assert_eq!(r.mode, verge_bench::rules::Mode::Engine);
        assert_eq!(
            (
                r.devices,
                r.messages,
                r.publishers,
                r.publish_rate,
                r.duration
            ),
            (1000, 2_000_000, 4, 0, 10.0)
        );
        assert!(r.sql.is_none() && r.query.is_none() && !r.json);

        let cli = parse(&[
            "bench",
            "rules",
            "--mode",
            "broker",
            "--query",
            "tumbling",
            "--publishers",
            "2",
            "--publish-rate",
            "50000",
            "--duration",
            "3",
            "--json",
        ])
        .expect("parses");
        let Command::Bench(BenchCommand::Rules(r)) = cli.command else {
            panic!("not bench rules")
        };
        assert_eq!(r.mode, verge_bench::rules::Mode::Broker);
        assert_eq!(r.query, Some(verge_bench::rules::QueryArg::Tumbling));
        assert_eq!((r.publishers, r.publish_rate, r.duration), (2, 50_000, 3.0));
        assert!(r.json);

        let cli = parse(&[
            "bench",
            "rules",
            "--sql",
            "SELECT * FROM \"a/#\"",
            "--messages",
            "10",
        ])
        .expect("parses");
        let Command::Bench(BenchCommand::Rules(r)) = cli.command else {
            panic!("not bench rules")
        };
        assert_eq!(
            (r.sql.as_deref(), r.messages),
            (Some("SELECT * FROM \"a/#\""), 10)
        );
        assert!(
            parse(&["bench", "rules", "--sql", "SELECT 1", "--query", "tumbling"]).is_err(),
            "sql or query"
        );
        assert!(parse(&["bench", "rules", "--mode", "cloud"]).is_err());
        assert!(parse(&["bench", "rules", "--messages", "0"]).is_err());
        assert!(parse(&["bench", "rules", "--devices", "0"]).is_err());
        assert!(parse(&["bench", "rules", "--publishers", "0"]).is_err());
    }

    #[test]
    fn bench_connections_options() {
        let cli = parse(&[
            "bench",
            "connections",
            "--port",
            "1883",
            "--count",
            "100",
            "--pid",
            "42",
        ])
        .expect("parses");
        let Command::Bench(BenchCommand::Connections(c)) = cli.command else {
            panic!("not bench connections")
        };
        assert_eq!((c.target.port, c.count, c.pid), (Some(1883), 100, Some(42)));
        assert!(
            parse(&["bench", "connections", "--spawn", "verge", "--pid", "1"]).is_err(),
            "pid is for external brokers"
        );
    }

    #[cfg(feature = "cloud")]
    #[test]
    fn bench_fleet_options() {
        let cli = parse(&[
            "bench",
            "fleet",
            "--nodes",
            "1000",
            "--duration",
            "30s",
            "--replicas",
            "2",
            "--kill-one-at",
            "10s",
            "--cloud-arg",
            "mqtt.mode=external",
        ])
        .expect("parses");
        let Command::Bench(BenchCommand::Fleet(f)) = cli.command else {
            panic!("not bench fleet")
        };
        assert_eq!((f.nodes, f.replicas), (1000, 2));
        assert_eq!(f.duration, std::time::Duration::from_secs(30));
        assert_eq!(f.heartbeat, std::time::Duration::from_secs(5));
        assert_eq!(f.kill_one_at, Some(std::time::Duration::from_secs(10)));
        assert_eq!(f.cloud_args, ["mqtt.mode=external"]);
        assert!(parse(&["bench", "fleet", "--nodes", "0"]).is_err());
        assert!(parse(&["bench", "fleet", "--duration", "soon"]).is_err());
    }

    #[test]
    fn bench_queue_options() {
        use verge_bench::queue::PolicyArg;
        let cli = parse(&["bench", "queue"]).expect("parses");
        let Command::Bench(BenchCommand::Queue(q)) = cli.command else {
            panic!("not bench queue")
        };
        assert_eq!(
            q.policies,
            vec![PolicyArg::Always, PolicyArg::Group, PolicyArg::Buffered]
        );
        assert_eq!((q.appenders, q.batch, q.payload), (64, 1, 256));
        assert_eq!((q.backlog, q.dir, q.json), (1_000_000, None, false));
        let cli = parse(&[
            "bench",
            "queue",
            "--policies",
            "group",
            "--appenders",
            "512",
            "--dir",
            "/var/tmp",
            "--backlog",
            "0",
            "--json",
        ])
        .expect("parses");
        let Command::Bench(BenchCommand::Queue(q)) = cli.command else {
            panic!("not bench queue")
        };
        assert_eq!(q.policies, vec![PolicyArg::Group]);
        assert_eq!(q.appenders, 512);
        assert_eq!(q.dir.as_deref(), Some(std::path::Path::new("/var/tmp")));
        assert!(q.json && q.backlog == 0);
        assert!(parse(&["bench", "queue", "--policies", "fsync"]).is_err());
        assert!(parse(&["bench", "queue", "--appenders", "0"]).is_err());
    }
}

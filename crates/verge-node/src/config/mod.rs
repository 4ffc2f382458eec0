//! The node's configuration: typed sections and the embedded documented
//! defaults.
//!
//! The documented defaults live in one place, `default.toml`, which is what
//! `verge config default` prints; a unit test keeps it equal to
//! [`NodeConfig::default`]. Loading the layers (file → environment → flags)
//! is the binary's; [`NodeConfig::validate`] holds the checks serde cannot
//! express, each error naming its key.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use verge_bridge::BridgeConfig;
use verge_broker::BrokerConfig;
use verge_drivers::DriverConfig;
use verge_functions::FunctionSpec;
use verge_queue::QueueConfig;
use verge_rules::{RuleConfig, RuleEngineConfig};
use verge_tsdb::TsdbConfig;

/// The full default configuration with a comment on every key.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// One node process's configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// `[node]`: identity and state directory.
    pub node: NodeSection,
    /// `[log]`: logging.
    pub log: LogSection,
    /// `[broker]`: the MQTT broker, its limits and listeners.
    pub broker: BrokerConfig,
    /// `[coap]`: the CoAP gateway (RFC 7252) over UDP and DTLS.
    pub coap: verge_coap::CoapConfig,
    /// `[http]`: the node's local HTTP API and metrics.
    pub http: HttpSection,
    /// `[rule_engine]`: bounds shared by all rules.
    pub rule_engine: RuleEngineConfig,
    /// `[store]`: the local time-series store.
    pub store: StoreSection,
    /// `[queue]`: the cache queue in front of the cloud link.
    pub queue: QueueConfig,
    /// `[bridge]`: the link to the cloud.
    pub bridge: BridgeConfig,
    /// `[[rules]]`: rules created at start (more through the HTTP API).
    pub rules: Vec<RuleConfig>,
    /// `[[functions]]`: edge functions deployed at start (more through the
    /// HTTP API); see docs/functions.md.
    pub functions: Vec<FunctionSpec>,
    /// `[[drivers]]`: protocol drivers (Modbus, DL/T 645, OPC UA) started
    /// with the node (more through the HTTP API).
    pub drivers: Vec<DriverConfig>,
    /// `[[components]]`: user process and container components the node
    /// supervises; they come from this file only (see docs/components.md).
    pub components: Vec<verge_protocol::ComponentSpec>,
    /// `[containers]`: the container engine that runs container
    /// components (`components` is taken by the array above).
    pub containers: ContainersSection,
}

/// The `[containers]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContainersSection {
    /// The engine's Docker Engine API socket: `unix:///path` or a plain
    /// absolute path.
    pub engine: String,
    /// Pull an image that is not on the engine.
    pub pull: bool,
}

impl Default for ContainersSection {
    fn default() -> Self {
        ContainersSection {
            engine: "unix:///var/run/docker.sock".into(),
            pull: true,
        }
    }
}

/// The `[http]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// Serve the API at all.
    pub enabled: bool,
    /// Address to listen on.
    pub bind: SocketAddr,
    /// Ask for a bearer token on `/api/*` (turning it off is for a node
    /// nobody else can reach).
    pub auth: bool,
    /// The admin token; unset: the one in `<data_dir>/api-token`, made at
    /// the first start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Host names (besides IP literals and `localhost`) the API answers
    /// for; `*`: any.
    pub allowed_hosts: Vec<String>,
    /// Origins (`https://name[:port]`) whose browser pages may call the
    /// API, besides its own.
    pub allowed_origins: Vec<String>,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            enabled: true,
            bind: SocketAddr::from(([127, 0, 0, 1], 8081)),
            auth: true,
            token: None,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
        }
    }
}

/// The `[store]` section: the local time-series store that rules' `store`
/// actions write to (the keys of [`TsdbConfig`] plus `enabled`; `dir`
/// defaults to `<node.data_dir>/store`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// Open the store at all.
    pub enabled: bool,
    /// Directory of the store; `<node.data_dir>/store` when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Time span of one chunk file.
    #[serde(with = "verge_tsdb::duration")]
    pub chunk: Duration,
    /// How long points are kept.
    #[serde(with = "verge_tsdb::duration")]
    pub retention: Duration,
    /// Disk use bound in bytes.
    pub max_bytes: u64,
    /// How often buffered points are written to disk.
    #[serde(with = "verge_tsdb::duration")]
    pub flush_interval: Duration,
    /// Most series (device, metric pairs).
    pub max_series: usize,
}

impl Default for StoreSection {
    fn default() -> Self {
        let d = TsdbConfig::default();
        StoreSection {
            enabled: true,
            dir: None,
            chunk: d.chunk,
            retention: d.retention,
            max_bytes: d.max_bytes,
            flush_interval: d.flush_interval,
            max_series: d.max_series,
        }
    }
}

impl StoreSection {
    /// The store's configuration, with `dir` resolved against the node's
    /// data directory.
    pub fn resolve(&self, data_dir: &Path) -> TsdbConfig {
        TsdbConfig {
            dir: self.dir.clone().unwrap_or_else(|| data_dir.join("store")),
            chunk: self.chunk,
            retention: self.retention,
            max_bytes: self.max_bytes,
            flush_interval: self.flush_interval,
            max_series: self.max_series,
        }
    }
}

impl NodeConfig {
    /// The cache queue's config, its directory `<node.data_dir>/queue`
    /// unless `queue.dir` is set.
    pub fn queue_config(&self) -> QueueConfig {
        let mut q = self.queue.clone();
        if q.dir.as_os_str().is_empty() {
            q.dir = self.node.data_dir.join("queue");
        }
        q
    }
}

/// A configuration the node cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The value of `key` is wrong.
    #[error("{key}: {message}")]
    Key {
        /// The key's path, e.g. `node.name`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// An error whose message already names its key.
    #[error("{0}")]
    Named(String),
}

impl NodeConfig {
    /// Checks serde cannot express (names, cross-references, each part's
    /// own validation), run before anything is opened or bound; every
    /// error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let named = |m: String| Err(ConfigError::Named(m));
        if self.node.name.trim().is_empty() {
            return Err(ConfigError::Key {
                key: "node.name".into(),
                message: "must not be empty".into(),
            });
        }
        match self.queue_config().validate() {
            Ok(()) => {}
            // Already `queue.<key>: …`.
            Err(verge_queue::QueueError::Config(msg)) => return named(msg),
            Err(e) => return named(e.to_string()),
        }
        if self.bridge.enabled
            && let Err(e) = self.bridge.plan(&self.node.name)
        {
            return named(e.to_string());
        }
        if let Err(e) = self.coap.validate() {
            return named(e.to_string());
        }
        let mut drivers = HashSet::new();
        let mut devices = HashSet::new();
        for (i, d) in self.drivers.iter().enumerate() {
            if let Err(e) = d.validate() {
                return named(format!("drivers[{i}] (`{}`).{e}", d.name));
            }
            if !drivers.insert(d.name.as_str()) {
                return named(format!(
                    "drivers[{i}]: a driver named `{}` is already configured",
                    d.name
                ));
            }
            for (j, dev) in d.devices.iter().enumerate() {
                if !devices.insert(dev.name.as_str()) {
                    return named(format!(
                        "drivers[{i}].devices[{j}].name: device `{}` is already read by another driver",
                        dev.name
                    ));
                }
            }
        }
        let mut names = HashSet::new();
        for (i, f) in self.functions.iter().enumerate() {
            if let Err(e) = f.validate() {
                return named(format!("functions[{i}] (`{}`): {e}", f.name));
            }
            if !names.insert(f.name.as_str()) {
                return named(format!(
                    "functions[{i}]: a function named `{}` is already configured",
                    f.name
                ));
            }
        }
        if let Err(e) = verge_protocol::component_start_order(&self.components) {
            let at = self
                .components
                .iter()
                .position(|c| {
                    e.to_string()
                        .starts_with(&format!("component `{}`", c.name))
                })
                .map(|i| format!("components[{i}]"))
                .unwrap_or_else(|| "components".to_owned());
            return named(format!("{at}: {e}"));
        }
        if let Err(e) = crate::components::engine_socket(&self.containers.engine) {
            return Err(ConfigError::Key {
                key: "containers.engine".into(),
                message: e,
            });
        }
        if self.store.enabled
            && let Err(e) = self.store.resolve(&self.node.data_dir).validate()
        {
            return named(format!("store.{e}"));
        }
        let host = &self.node.advertise_host;
        if !host.is_empty() && !valid_advertise_host(host) {
            return Err(ConfigError::Key {
                key: "node.advertise_host".into(),
                message: format!(
                    "`{host}`: expected a host name or IP address (no scheme, port or path), \
                     e.g. `edge-7.plant.example` or `192.0.2.10`"
                ),
            });
        }
        Ok(())
    }
}

/// The `[node]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// Name of this node in logs (and, later, towards the cloud).
    pub name: String,
    /// Directory for the node's state; created at start if missing.
    pub data_dir: PathBuf,
    /// The host name or IP address devices reach this node at, reported
    /// to the cloud in place of the listeners' bound host (which may be
    /// `0.0.0.0` or a loopback address); empty: the bound addresses.
    pub advertise_host: String,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            name: "verge-node".into(),
            data_dir: PathBuf::from("/var/lib/verge"),
            advertise_host: String::new(),
        }
    }
}

impl NodeSection {
    /// `scheme://host:port{path}` of a bound listener, with
    /// `advertise_host` in place of the bound host when it is set.
    pub fn endpoint(&self, scheme: &str, addr: std::net::SocketAddr, path: &str) -> String {
        if self.advertise_host.is_empty() {
            return format!("{scheme}://{addr}{path}");
        }
        let host = &self.advertise_host;
        if host.contains(':') {
            format!("{scheme}://[{host}]:{}{path}", addr.port())
        } else {
            format!("{scheme}://{host}:{}{path}", addr.port())
        }
    }
}

/// Whether `host` is a plain host name or IP address (no scheme, port,
/// path, user or spaces).
fn valid_advertise_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// The `[log]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// A tracing filter directive: a level or e.g. `info,verge_broker=debug`.
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            level: "info".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn advertise_host_names_the_reported_endpoints_and_is_checked() {
        let addr: std::net::SocketAddr = "0.0.0.0:1883".parse().expect("addr");
        let mut node = NodeSection::default();
        assert_eq!(node.endpoint("mqtt", addr, ""), "mqtt://0.0.0.0:1883");
        node.advertise_host = "edge-7.plant.example".into();
        assert_eq!(
            node.endpoint("ws", addr, "/mqtt"),
            "ws://edge-7.plant.example:1883/mqtt"
        );
        node.advertise_host = "2001:db8::7".into();
        assert_eq!(node.endpoint("mqtt", addr, ""), "mqtt://[2001:db8::7]:1883");
        for bad in ["mqtt://x", "x:1883", "a b", "x/y", "-x", "a..b"] {
            let mut cfg = NodeConfig::default();
            cfg.node.advertise_host = bad.into();
            let err = cfg.validate().expect_err(bad).to_string();
            assert!(err.contains("node.advertise_host"), "{bad}: {err}");
        }
        let mut cfg = NodeConfig::default();
        cfg.node.advertise_host = "192.0.2.10".into();
        cfg.validate().expect("an IP address");
    }

    #[test]
    fn embedded_default_equals_code_default() {
        let parsed: NodeConfig = toml::from_str(DEFAULT_TOML).expect("default.toml parses");
        assert_eq!(parsed, NodeConfig::default());
    }

    #[test]
    fn embedded_default_documents_every_key() {
        // Every key the defaults serialize must appear in default.toml (the
        // optional paths are documented as commented-out lines).
        let code = toml::Value::try_from(NodeConfig::default()).expect("serializes");
        let text: toml::Value = toml::from_str(DEFAULT_TOML).expect("parses");
        fn keys(v: &toml::Value, prefix: &str, out: &mut Vec<String>) {
            if let toml::Value::Table(t) = v {
                for (k, v) in t {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    keys(v, &p, out);
                    out.push(p);
                }
            }
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        keys(&code, "", &mut a);
        keys(&text, "", &mut b);
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    /// Every key of `cfg` as serialized, as (table path, key): arrays of
    /// tables by their own path (`drivers.devices.points`).
    fn serialized_keys(v: &toml::Value, table: &str, out: &mut BTreeSet<(String, String)>) {
        let toml::Value::Table(t) = v else { return };
        for (k, v) in t {
            out.insert((table.to_owned(), k.clone()));
            let path = if table.is_empty() {
                k.clone()
            } else {
                format!("{table}.{k}")
            };
            match v {
                toml::Value::Table(_) => serialized_keys(v, &path, out),
                toml::Value::Array(items) => {
                    for item in items {
                        serialized_keys(item, &path, out);
                    }
                }
                _ => {}
            }
        }
    }

    /// Every key `default.toml` shows, set or in a commented-out example,
    /// as (table path, key): comment marks are stripped, `[x]` and `[[x]]`
    /// headers (also commented) set the table, and a line that parses as
    /// TOML names its keys (inline tables' keys under the key's path).
    fn documented_keys(text: &str) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        let mut table = String::new();
        for line in text.lines() {
            let line = line.trim_start_matches(|c: char| c == '#' || c.is_whitespace());
            let head = line.split(" #").next().unwrap_or_default().trim();
            if let Some(name) = head
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .map(|h| h.trim_matches(|c| c == '[' || c == ']'))
                .filter(|h| {
                    h.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
                })
            {
                table = name.to_owned();
                // `[a.b.c]` shows `a`, `a.b` and `a.b.c`.
                let mut parent = String::new();
                for part in name.split('.') {
                    out.insert((parent.clone(), part.to_owned()));
                    if !parent.is_empty() {
                        parent.push('.');
                    }
                    parent.push_str(part);
                }
                continue;
            }
            let Ok(kv) = toml::from_str::<toml::Table>(line) else {
                continue;
            };
            for (k, v) in kv {
                if let toml::Value::Table(inner) = &v {
                    let path = if table.is_empty() {
                        k.clone()
                    } else {
                        format!("{table}.{k}")
                    };
                    for ik in inner.keys() {
                        out.insert((path.clone(), ik.clone()));
                    }
                }
                out.insert((table.clone(), k));
            }
        }
        out
    }

    /// A driver with every key set to a value that is serialized (not its
    /// default where defaults are skipped): a key added to the driver
    /// types must be set here, which makes
    /// `embedded_default_documents_every_driver_key` ask for its
    /// documentation. (Not a valid driver: it is only serialized.)
    fn every_driver_key() -> DriverConfig {
        use verge_drivers::{
            Access, ByteOrder, DataType, DeviceConfig, PointConfig, ProtocolKind, Retry,
            SerialConfig,
        };
        DriverConfig {
            name: "d".into(),
            protocol: ProtocolKind::ModbusTcp,
            host: Some("h".into()),
            port: Some(502),
            serial: Some(SerialConfig {
                device: "/dev/ttyS0".into(),
                baud: 9600,
                parity: "even".into(),
                data_bits: 8,
                stop_bits: 1,
            }),
            endpoint: Some("opc.tcp://h:4840/".into()),
            security: Some("none".into()),
            pki_dir: Some("pki".into()),
            trust_server_certs: true,
            timeout: Duration::from_secs(1),
            retry: Retry::default(),
            devices: vec![DeviceConfig {
                name: "dev".into(),
                unit: Some(1),
                meter: Some("000000000001".into()),
                poll: Duration::from_secs(1),
                changes_only: true,
                points: vec![PointConfig {
                    name: "p".into(),
                    address: "hr:0".into(),
                    data_type: Some(DataType::String),
                    byte_order: ByteOrder::Little,
                    word_order: ByteOrder::Little,
                    length: Some(2),
                    scale: Some(2.0),
                    offset: Some(1.0),
                    unit: Some("V".into()),
                    access: Access::Rw,
                    deadband: Some(0.5),
                }],
            }],
            enabled: true,
        }
    }

    /// Issue 17, drivers 6: `verge config default` claimed to document
    /// every key but left out byte_order, word_order, length, offset,
    /// deadband, security, pki_dir, trust_server_certs and the serial
    /// parity, data_bits and stop_bits.
    #[test]
    fn embedded_default_documents_every_driver_key() {
        let cfg = NodeConfig {
            drivers: vec![every_driver_key()],
            ..NodeConfig::default()
        };
        let mut keys = BTreeSet::new();
        serialized_keys(
            &toml::Value::try_from(&cfg).expect("serializes"),
            "",
            &mut keys,
        );
        assert!(keys.contains(&("drivers.devices.points".into(), "deadband".into())));
        let documented = documented_keys(DEFAULT_TOML);
        let missing: Vec<String> = keys
            .difference(&documented)
            .map(|(t, k)| {
                if t.is_empty() {
                    k.clone()
                } else {
                    format!("{t}.{k}")
                }
            })
            .collect();
        assert!(missing.is_empty(), "not in default.toml: {missing:?}");
    }

    /// The commented `[[components]]` example parses, sets every key, and
    /// every key it serializes is documented; a cycle is refused naming
    /// the component.
    #[test]
    fn components_example_parses_and_documents_every_key() {
        let example: String = DEFAULT_TOML
            .lines()
            .skip_while(|l| !l.starts_with("#   [[components]]"))
            .take_while(|l| l.starts_with("#   "))
            .map(|l| format!("{}\n", &l[4..]))
            .collect();
        let cfg: NodeConfig = toml::from_str(&example).expect("the example parses");
        let c = &cfg.components[0];
        assert_eq!(c.health.kind, verge_protocol::HealthKind::Http);
        assert_eq!(c.stop_timeout, Duration::from_secs(10));
        let mut keys = BTreeSet::new();
        serialized_keys(
            &toml::Value::try_from(&cfg).expect("serializes"),
            "",
            &mut keys,
        );
        assert!(keys.contains(&("components.health".into(), "start_grace".into())));
        let documented = documented_keys(DEFAULT_TOML);
        let missing: Vec<_> = keys.difference(&documented).collect();
        assert!(missing.is_empty(), "not in default.toml: {missing:?}");

        let cyclic: NodeConfig = toml::from_str(
            "[[components]]\nname = \"a\"\nversion = \"1\"\ncommand = \"true\"\ndepends_on = [\"b\"]\n\
             [[components]]\nname = \"b\"\nversion = \"1\"\ncommand = \"true\"\ndepends_on = [\"a\"]\n",
        )
        .expect("parses");
        let e = cyclic
            .validate()
            .expect_err("a cycle is refused")
            .to_string();
        assert_eq!(
            e,
            "components[0]: component `a`: dependency cycle a -> b -> a"
        );
        let unknown = toml::from_str::<NodeConfig>(
            "[[components]]\nname = \"a\"\nversion = \"1\"\ncommand = \"true\"\ncolour = \"x\"\n",
        );
        assert!(unknown.is_err());
        // A process with an image parses, and is refused naming the key.
        let process_image: NodeConfig = toml::from_str(
            "[[components]]\nname = \"a\"\nversion = \"1\"\ncommand = \"true\"\nimage = \"x\"\n",
        )
        .expect("parses");
        let e = process_image
            .validate()
            .expect_err("an image on a process is refused")
            .to_string();
        assert!(
            e.contains("image and network are for containers only"),
            "{e}"
        );
    }

    #[test]
    fn containers_engine_is_a_unix_socket() {
        let cfg: NodeConfig =
            toml::from_str("[containers]\nengine = \"/run/podman/podman.sock\"\npull = false")
                .expect("parses");
        cfg.validate().expect("a plain path is a socket");
        assert!(!cfg.containers.pull);
        let tcp: NodeConfig =
            toml::from_str("[containers]\nengine = \"tcp://127.0.0.1:2375\"").expect("parses");
        let e = tcp.validate().expect_err("tcp is refused").to_string();
        assert!(
            e.starts_with("containers.engine: `tcp://127.0.0.1:2375` is not a unix socket"),
            "{e}"
        );
    }

    #[test]
    fn store_dir_defaults_to_the_data_dir() {
        let cfg = NodeConfig::default();
        let t = cfg.store.resolve(&cfg.node.data_dir);
        assert_eq!(t.dir, PathBuf::from("/var/lib/verge/store"));
        assert_eq!(t.retention, TsdbConfig::default().retention);
        t.validate().expect("the defaults are valid");
        let set: NodeConfig =
            toml::from_str("[store]\ndir = \"/data/ts\"\nretention = \"2d\"").expect("parses");
        let t = set.store.resolve(&cfg.node.data_dir);
        assert_eq!(t.dir, PathBuf::from("/data/ts"));
        assert_eq!(t.retention, Duration::from_secs(2 * 86_400));
    }
}

//! The node's configuration: typed sections, the embedded documented defaults
//! and the `verge up` demo overlay.
//!
//! The documented defaults live in one place, `default.toml`, which is what
//! `verge config default` prints; a unit test keeps it equal to
//! [`NodeConfig::default`]. Loading (file → environment → flags → typed) is in
//! [`load`].

pub mod load;

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

pub use load::{Layers, load};

/// The full default configuration with a comment on every key.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// The cloud center's documented defaults (`verge config default --cloud`).
pub const CLOUD_DEFAULT_TOML: &str = include_str!("cloud-default.toml");

/// The overlay that `verge up` applies over the defaults (demo only).
pub const DEMO_TOML: &str = include_str!("demo.toml");

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
    /// `[coap]`: the CoAP gateway (RFC 7252) over UDP.
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
}

/// The `[http]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// Serve the API at all.
    pub enabled: bool,
    /// Address to listen on.
    pub bind: SocketAddr,
    /// Bearer token required on `/api/*`; none when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            enabled: true,
            bind: SocketAddr::from(([127, 0, 0, 1], 8081)),
            token: None,
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

/// The `[node]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// Name of this node in logs (and, later, towards the cloud).
    pub name: String,
    /// Directory for the node's state; created at start if missing.
    pub data_dir: PathBuf,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            name: "verge-node".into(),
            data_dir: PathBuf::from("/var/lib/verge"),
        }
    }
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
    use super::*;

    #[test]
    fn embedded_default_equals_code_default() {
        let parsed: NodeConfig = toml::from_str(DEFAULT_TOML).expect("default.toml parses");
        assert_eq!(parsed, NodeConfig::default());
    }

    #[test]
    fn embedded_cloud_default_equals_code_default_and_documents_every_key() {
        let parsed: verge_cloud::CloudConfig =
            toml::from_str(CLOUD_DEFAULT_TOML).expect("cloud-default.toml parses");
        let code = toml::Value::try_from(verge_cloud::CloudConfig::default()).expect("serializes");
        assert_eq!(toml::Value::try_from(parsed).expect("serializes"), code);
        let text: toml::Value = toml::from_str(CLOUD_DEFAULT_TOML).expect("parses");
        assert_eq!(text, code, "every key written out, with its default");
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

    #[test]
    fn demo_overlay_allows_anonymous() {
        let cfg = load(&Layers {
            base: Some(DEMO_TOML),
            ..Layers::default()
        })
        .expect("demo loads");
        assert!(cfg.broker.allow_anonymous);
        assert_eq!(cfg.node.data_dir, PathBuf::from("./verge-data"));
        assert_eq!(cfg.broker.listeners, NodeConfig::default().broker.listeners);
    }
}

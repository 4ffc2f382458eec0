//! The node's configuration: typed sections, the embedded documented defaults
//! and the `verge up` demo overlay.
//!
//! The documented defaults live in one place, `default.toml`, which is what
//! `verge config default` prints; a unit test keeps it equal to
//! [`NodeConfig::default`]. Loading (file → environment → flags → typed) is in
//! [`load`].

pub mod load;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use verge_broker::BrokerConfig;
use verge_rules::{RuleConfig, RuleEngineConfig};

pub use load::{Layers, load};

/// The full default configuration with a comment on every key.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

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
    /// `[http]`: the node's local HTTP API and metrics.
    pub http: HttpSection,
    /// `[rule_engine]`: bounds shared by all rules.
    pub rule_engine: RuleEngineConfig,
    /// `[[rules]]`: rules created at start (more through the HTTP API).
    pub rules: Vec<RuleConfig>,
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

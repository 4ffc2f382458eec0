//! Loading the node's and the cloud center's configuration (file →
//! environment → flags → typed), the cloud's documented defaults and the
//! `verge up` demo overlay. The node's typed sections and documented
//! defaults live with the node (`verge_node::config`).

pub mod load;

pub use load::{Layers, load};
pub use verge_node::NodeConfig;
pub use verge_node::config::DEFAULT_TOML;

/// The cloud center's documented defaults (`verge config default --cloud`).
#[cfg(feature = "cloud")]
pub const CLOUD_DEFAULT_TOML: &str = include_str!("cloud-default.toml");

/// The overlay that `verge up` applies over the defaults (demo only).
#[cfg(feature = "cloud")]
pub const DEMO_TOML: &str = include_str!("demo.toml");

// The embedded cloud defaults and `verge up`'s overlay.
#[cfg(all(test, feature = "cloud"))]
mod tests {
    use std::path::PathBuf;

    use super::*;

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

    #[test]
    fn plain_coap_is_on_in_the_demo_only() {
        let demo = load(&Layers {
            base: Some(DEMO_TOML),
            ..Layers::default()
        })
        .expect("demo loads");
        assert!(demo.coap.enabled, "verge up serves plain CoAP");
        let node = load(&Layers::default()).expect("defaults load");
        assert!(!node.coap.enabled, "a real node does not");
        assert!(!node.coap.dtls.enabled, "DTLS waits for keys");
    }
}

//! The parts of the running node the agent manages, handed over by the
//! node at start; the agent changes the node only through their public
//! APIs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// The parts of the running node the agent manages.
pub struct NodeParts {
    /// The node broker's authenticator; the agent replaces its registry.
    pub auth: verge_broker::Authenticator,
    /// The node's own devices (from its config); cloud devices are added to
    /// them, and win no clash.
    pub base_registry: verge_broker::Registry,
    /// The rule engine.
    pub rules: Arc<verge_rules::Engine>,
    /// The function registry.
    pub functions: verge_functions::Functions,
    /// The broker, for its counters.
    pub broker: verge_broker::BrokerHandle,
    /// The cloud link, for its state and backlog, if the node has one.
    pub bridge: Option<verge_bridge::BridgeHandle>,
    /// The node's data dir, for disk usage.
    pub data_dir: PathBuf,
    /// When the node process started.
    pub started: Instant,
}

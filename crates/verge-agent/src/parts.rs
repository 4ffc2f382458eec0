//! The parts of the running node the agent manages, handed over by the
//! node at start; the agent changes the node only through their public
//! APIs.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use verge_protocol::{ComponentSpec, LocalItem};

/// What [`ComponentHost::apply`] returns: one line per component that
/// could not be applied.
pub type ApplyFuture<'a> = Pin<Box<dyn Future<Output = Vec<String>> + Send + 'a>>;

/// What [`LocalItems::items`] returns.
pub type LocalFuture<'a> = Pin<Box<dyn Future<Output = Vec<LocalItem>> + Send + 'a>>;

/// The node's own items as the agent reports them in the heartbeat's
/// `local`: what the node runs from its config file (source `config`) or
/// was given through its own HTTP API (source `api`). The node keeps that
/// account (it alone knows where an item came from), so the agent sees it
/// through this trait.
pub trait LocalItems: Send + Sync {
    /// Every rule, function, driver and component the node runs of its
    /// own. Never an item the cloud manages now: the node asks the
    /// agent's [`StatusHandle::manages`](crate::StatusHandle::manages).
    fn items(&self) -> LocalFuture<'_>;
    /// Whether the node keeps its own `kind` (`rule`, `function`,
    /// `driver`) `name` even when a revision names one: the agent leaves
    /// it alone ([`crate::local_only`]).
    fn local_only(&self, _kind: &str, _name: &str) -> bool {
        false
    }
}

/// The node's component supervisor as the agent drives it. The supervisor
/// lives in the node (which depends on this crate), so the agent sees it
/// through this trait.
pub trait ComponentHost: Send + Sync {
    /// Run exactly `specs` as the cloud's components: start new ones,
    /// replace changed ones (a new version that does not become healthy
    /// within its `update_grace` is replaced by the old one again), stop
    /// and remove dropped ones. A process component's artifact is already
    /// in its directory. Returns at once with what could not be applied;
    /// the rest applies.
    fn apply<'a>(&'a self, specs: &'a [ComponentSpec]) -> ApplyFuture<'a>;
    /// Each component's status object, as the node's components API shows
    /// it.
    fn report(&self) -> Vec<serde_json::Value>;
    /// A value that changes whenever a component's state changes, so the
    /// agent reports it without waiting for the next heartbeat.
    fn transitions(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    /// The `(name, version)` whose files must stay on disk: what runs, and
    /// the versions an update or a rollback may go back to.
    fn versions_in_use(&self) -> Vec<(String, String)> {
        self.report()
            .iter()
            .filter_map(|c| {
                Some((
                    c["name"].as_str()?.to_owned(),
                    c["version"].as_str()?.to_owned(),
                ))
            })
            .collect()
    }
}

/// The node's device service as the agent sees it (it lives in the node,
/// which depends on this crate).
pub trait DeviceHost: Send + Sync {
    /// The devices the cloud manages now (each applied desired state's
    /// `devices`): only their shadows sync with the cloud; a node-local
    /// device's shadow stays on the node.
    fn set_cloud_devices(&self, devices: Vec<String>);
    /// The cloud devices' sessions, for the heartbeat's `devices`.
    fn sessions(&self) -> Vec<verge_protocol::device::DeviceSession>;
    /// The node's broker addresses (`mqtt://`, `mqtts://`, `ws://`,
    /// `wss://`, `coap://`), for the heartbeat's `endpoints`.
    fn endpoints(&self) -> Vec<String>;
    /// A value that changes whenever a cloud device connects or
    /// disconnects, so the agent reports it without waiting for the next
    /// heartbeat.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

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
    /// The node's protocol drivers (the node's own and the cloud's share
    /// the one set), if the node runs them; none: a revision with drivers
    /// fails those items.
    pub drivers: Option<Arc<verge_drivers::Drivers>>,
    /// The broker, for its counters.
    pub broker: verge_broker::BrokerHandle,
    /// The cloud link, for its state and backlog, if the node has one.
    pub bridge: Option<verge_bridge::BridgeHandle>,
    /// The local time-series store, if the node runs one (its retention
    /// is a run-time setting of the deployed config).
    pub store: Option<Arc<verge_tsdb::Tsdb>>,
    /// The component supervisor, if the node runs one.
    pub components: Option<Arc<dyn ComponentHost>>,
    /// The node's own items (config file, local API), for the heartbeat's
    /// `local`; none: the heartbeat lists none.
    pub local: Option<Arc<dyn LocalItems>>,
    /// The node's device service (shadows, commands, sessions), if the
    /// node runs one; none: the heartbeat lists no devices or endpoints.
    pub devices: Option<Arc<dyn DeviceHost>>,
    /// The node's data dir, for disk usage and component artifacts.
    pub data_dir: PathBuf,
    /// When the node process started.
    pub started: Instant,
}

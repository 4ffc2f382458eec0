//! The edge node's local HTTP API (default 127.0.0.1:8081): rules
//! (create, list, get, update, delete, start, stop, test), broker status,
//! edge functions (`/api/functions/*`), protocol drivers (`/api/drivers`), the local time-series store
//! (`/api/store/*`), the cloud agent's status (`/api/cloud`) and Prometheus metrics at
//! `/metrics`. Errors are JSON with a code and a
//! message (see [`AppError`]). When a token is configured, `/api/*` needs
//! `Authorization: Bearer <token>`; `/healthz` and `/metrics` stay open for
//! probes and scrapers.
//!
//! Handlers only translate HTTP to calls on the node's parts; the rules
//! themselves live in `verge-rules`.

mod api;
mod bridge_api;
mod drivers_api;
mod error;
mod functions;
mod functions_api;
mod metrics;
mod store;
mod store_api;
mod upstream;

use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use verge_broker::BrokerHandle;
use verge_rules::Engine;
use verge_tsdb::Tsdb;

pub use api::router;
pub use error::AppError;
pub use functions::{FunctionsInvoker, Triggers};
pub use store::TsdbStore;
pub use upstream::QueueUpstream;

/// What the API serves.
#[derive(Clone)]
pub struct NodeState {
    /// Node name, for `/api/status`.
    pub name: Arc<str>,
    /// When the node started.
    pub started: Instant,
    /// The broker.
    pub broker: BrokerHandle,
    /// The rule engine.
    pub rules: Arc<Engine>,
    /// Bearer token required on `/api/*`; none when `None`.
    pub token: Option<Arc<str>>,
    /// The local time-series store (`/api/store/*`); none when disabled.
    pub store: Option<Arc<Tsdb>>,
    /// The cloud link and its cache queue (`/api/bridge`); none when the
    /// node has no cloud link.
    pub bridge: Option<verge_bridge::BridgeHandle>,
    /// The edge functions (`/api/functions`); none when the node has no
    /// function runtime.
    pub functions: Option<verge_functions::Functions>,
    /// The protocol drivers (`/api/drivers`); none when the node has none.
    pub drivers: Option<Arc<verge_drivers::Drivers>>,
    /// The CoAP gateway's counters (`/metrics`); none when it is off.
    pub coap: Option<Arc<verge_coap::Stats>>,
    /// The cloud agent's status (`/api/cloud`); none unless the node is
    /// managed by a cloud center.
    pub cloud: Option<verge_agent::StatusHandle>,
}

/// Serve the API on an already-bound listener until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: NodeState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

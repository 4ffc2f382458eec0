//! The edge node's local HTTP API (default 127.0.0.1:8081): rules
//! (create, list, get, update, delete, start, stop, test), broker status
//! and Prometheus metrics at `/metrics`. Errors are JSON with a code and a
//! message (see [`AppError`]). When a token is configured, `/api/*` needs
//! `Authorization: Bearer <token>`; `/healthz` and `/metrics` stay open for
//! probes and scrapers.
//!
//! Handlers only translate HTTP to calls on the node's parts; the rules
//! themselves live in `verge-rules`.

mod api;
mod error;
mod metrics;

use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use verge_broker::BrokerHandle;
use verge_rules::Engine;

pub use api::router;
pub use error::AppError;

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

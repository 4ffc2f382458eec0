//! The node's cloud agent: it joins the cloud with a one-time token, keeps
//! the node's credentials on disk, long-polls the cloud for the node's
//! desired state, applies it to the running node (devices, functions,
//! rules, drivers, components), caches it so that the node runs its last state after a restart
//! without the cloud (offline autonomy), and sends a heartbeat
//! [`StatusReport`](verge_protocol::StatusReport) every few seconds.
//!
//! Only `verge-protocol` types cross the wire (`docs/cloud.md`, "Node
//! protocol"). The agent reaches into the node only through the parts'
//! own public APIs ([`NodeParts`]); the broker, rules and functions know
//! nothing of the cloud.
//!
//! Design notes:
//! - Pull, not push: the node asks (`GET /api/agent/desired`, a long poll
//!   answered within a second of a change), so it needs no open port and
//!   works behind NAT. A WebSocket or MQTT push channel was rejected: the
//!   long poll gives the same latency with plain HTTP and no session state
//!   in the cloud.
//! - Whole states, not diffs: every answer is the complete desired state and
//!   applying it is idempotent, so a lost answer, a restart or a crash in the
//!   middle of an apply is repaired by the next apply.
//! - Self-update: a revision may name a release of the `verge` binary;
//!   the agent checks its signature with the key given at join, swaps it
//!   in (keeping the previous binary), asks the node to restart into it
//!   ([`Agent::restart_requested`]) and, in the new process, confirms it
//!   or reverts ([`release`], [`update`]).
//! - The previous desired state (the cached `desired.json`) tells what the
//!   cloud manages: only what it listed before is removed when it is gone,
//!   so rules, functions and drivers from the node's own config are never
//!   touched (unless the cloud deploys one of the same name, which then
//!   replaces it).

mod agent;
mod apply;
pub mod artifact;
mod config;
mod deploy;
mod drivers;
pub mod http;
mod join;
pub mod local_only;
mod parts;
pub mod release;
mod report;
mod store;
pub mod update;

pub use store::write_atomic;

pub use agent::{Agent, AgentOptions, AgentStatus, StatusHandle};
pub use join::{Credentials, join, load_credentials, save_credentials};
pub use parts::{ApplyFuture, ComponentHost, DeviceHost, LocalFuture, LocalItems, NodeParts};

/// Why a join, a credentials file or the agent's start failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The cloud did not answer as expected.
    #[error("cloud request failed: {0}")]
    Http(#[from] http::HttpError),
    /// The cloud refused the join token.
    #[error("the cloud refused the join token (unknown, already used or expired): {0}")]
    JoinRefused(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A file or an answer holds something unexpected.
    #[error("{0}")]
    Invalid(String),
}

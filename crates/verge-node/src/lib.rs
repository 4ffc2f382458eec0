//! The edge node: its configuration ([`NodeConfig`]), the wiring of its
//! parts ([`Node::start`] / [`Node::serve`] over already-bound
//! [`Listeners`], in the style of a server's `run(listener, shutdown)`),
//! the adapters through which rule actions reach the node's services
//! ([`services`]), the supervisor of user components ([`components`]),
//! the link to a cloud center ([`cloud`]), the node's
//! local HTTP API ([`http`]) and what that API changes, kept across
//! restarts and reported to the cloud as the node's own items ([`local`]).
//!
//! The parts themselves live in their own crates — the broker
//! (`verge-broker`), rules (`verge-rules`), functions (`verge-functions`),
//! the local store (`verge-tsdb`), the cache queue (`verge-queue`), the
//! cloud link (`verge-bridge`), drivers (`verge-drivers`), CoAP
//! (`verge-coap`) and the cloud agent (`verge-agent`); this crate owns the
//! order in which they start and stop and how they are connected. The
//! `verge` binary only parses flags, loads the config, prints and calls
//! [`Node::start`] and [`Node::serve`].
//!
//! Design notes:
//! - Listeners are bound before anything is opened ([`Listeners::bind`]),
//!   so a port in use is reported before a data directory is touched, and
//!   served only once every part runs, so a client never meets a node whose
//!   rules are not there yet.
//! - Shutdown stops what produces before what consumes: the agent and the
//!   APIs first, then user components ([`components`]), the broker's
//!   clients (devices: ended once what they published is routed, so none
//!   is acknowledged after the cloud link stopped queuing), drivers, rules
//!   and functions, then the cloud link
//!   (which queues what its forwards hold), the cache queue (cursors) and
//!   the store (last points), the broker last.

pub mod cloud;
pub mod components;
pub mod config;
pub mod devices;
pub mod http;
mod listeners;
pub mod local;
mod node;
pub mod services;

pub use cloud::CloudLink;
pub use config::NodeConfig;
pub use listeners::{Endpoint, Listeners};
pub use node::{Node, StartError};

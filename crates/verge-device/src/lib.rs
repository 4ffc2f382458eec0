//! The Rust device SDK: what a device program uses to talk to its Verge
//! node over MQTT 5 — telemetry and events, commands with replies, its
//! shadow — with reconnects, a bounded offline buffer and typed errors.
//!
//! ```no_run
//! # async fn run() -> Result<(), verge_device::Error> {
//! use verge_device::{Device, DeviceConfig};
//! let device = Device::connect(DeviceConfig::new("mqtt://127.0.0.1:1883", "d1", "secret")).await?;
//! device.on_command("reboot", |cmd| async move { Ok(serde_json::json!({"rebooting": cmd.id})) }).await?;
//! device.send_telemetry(&serde_json::json!({"temperature": 21.5})).await?;
//! device.close().await
//! # }
//! ```
//!
//! Design:
//! - One task per device owns the connection and every piece of state
//!   (in-flight QoS 1 messages, the offline buffer, subscriptions, shadow
//!   requests, recent command ids); [`Device`] handles talk to it through
//!   a bounded channel. Reconnects (exponential backoff with jitter,
//!   `verge_net::Backoff`) run in a spawned task so calls are served
//!   while the node is away.
//! - Packets are Verge's own codec (`verge_mqtt`), the one the node's
//!   broker uses, rather than rumqttc: no second MQTT implementation in
//!   the workspace, MQTT 5 properties (response topic, correlation data,
//!   user properties) as plain fields, and the client's state is ours to
//!   bound and count. The price is a client to maintain (keep alive,
//!   reconnects, TLS: what rumqttc would have given), tested against the
//!   real broker; see ARCHITECTURE.md.
//! - Topics and payload types come from `verge_protocol::device`; no
//!   topic is spelled here.
//! - Every bound has a counter ([`DeviceStats`]); bad input from the node
//!   (a malformed packet, a payload that is not the documented JSON) is
//!   logged and dropped or ends the connection, never a panic.

mod command;
mod config;
mod conn;
mod device;
mod engine;
mod error;

pub use command::{Command, HandlerFuture};
pub use config::{CLIENT_ID_SEPARATOR, DeviceConfig, client_id_allowed};
pub use device::{Device, DeviceStats};
pub use engine::Connection;
pub use error::Error;
pub use verge_protocol::device::{Shadow, ShadowDelta};

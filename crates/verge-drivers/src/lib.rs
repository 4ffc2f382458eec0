//! Verge's protocol drivers: each driver instance owns one connection (a
//! TCP socket or a serial port) to one or more devices, polls their points
//! by a point table, and publishes one JSON telemetry message per device per
//! cycle to `devices/{device}/telemetry`:
//!
//! ```json
//! {"ts": 1764390000000, "values": {"temperature": 21.5}, "quality": {"temperature": "good"}}
//! ```
//!
//! A device that cannot be read (its connection is down, from the first
//! failed connect on, or it stopped answering) publishes on its cadence a
//! message with every point bad and the reason:
//!
//! ```json
//! {"ts": 1764390000000, "values": {}, "quality": {"temperature": "bad"}, "error": "connection: …"}
//! ```
//!
//! Writes arrive on `devices/{device}/commands/write` (`{"point": …,
//! "value": …}`) and are answered on `devices/{device}/commands/write/reply`
//! with the value the device was given (`{"point", "ok": true, "value"}`),
//! or the reason it was refused; the node's device service hands a
//! command from the cloud on `devices/{device}/commands/write/{id}`, answered
//! on `devices/{device}/replies/{id}` (or `…/replies/{id}/failed` with the
//! reason; another command name is refused there); a value the point cannot hold as given (a
//! fraction for an integer, a bool for a number, a number out of the
//! type's range) is refused before anything is sent.
//!
//! The protocol is behind [`Protocol`] (connect, read a device's points,
//! write one point); [`runner`] is the protocol-independent part: reconnect
//! with backoff, per-device cadence and backoff, deadband, publishing,
//! commands, status and metrics. Protocols are registered in one list,
//! [`protocol::build`].

pub mod config;
pub mod dlt645;
pub mod modbus;
#[cfg(feature = "opcua")]
pub mod opcua;
pub mod protocol;
#[cfg(feature = "runner")]
pub mod runner;
pub mod serial;
pub mod status;

pub use config::{
    Access, ByteOrder, DataType, DeviceConfig, DriverConfig, PointConfig, ProtocolKind, Retry,
    SerialConfig,
};
pub use protocol::{DriverError, PointError, Protocol};
#[cfg(feature = "runner")]
pub use runner::{Driver, Drivers};
pub use status::{DeviceStatus, DriverStatus};

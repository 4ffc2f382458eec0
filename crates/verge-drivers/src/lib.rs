//! Verge's protocol drivers: each driver instance owns one connection (a
//! TCP socket or a serial port) to one or more devices, polls their points
//! by a point table, and publishes one JSON telemetry message per device per
//! cycle to `devices/{device}/telemetry`:
//!
//! ```json
//! {"ts": 1764390000000, "values": {"temperature": 21.5}, "quality": {"temperature": "good"}}
//! ```
//!
//! Writes arrive on `devices/{device}/commands/write` (`{"point": …,
//! "value": …}`) and are answered on `devices/{device}/commands/write/reply`.
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

//! The boundary every protocol implements, its errors, and the one list of
//! protocols ([`build`]).

use serde_json::Value;

use crate::config::{DeviceConfig, DriverConfig, PointConfig, ProtocolKind};

/// A boxed, sendable future (the workspace's one alias).
pub(crate) use verge_net::BoxFuture;

/// Why a request to a device failed as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// The connection could not be made or broke: reconnect.
    #[error("connection: {0}")]
    Connection(String),
    /// The device did not answer within the timeout.
    #[error("timeout after {0} ms")]
    Timeout(u64),
    /// The device answered with something that is not a valid frame.
    #[error("bad response: {0}")]
    BadResponse(String),
    /// The device refused the request (e.g. a Modbus exception, a DL/T 645
    /// error answer), named.
    #[error("refused: {0}")]
    Refused(String),
    /// The request itself is wrong (unknown point, read-only point, value
    /// of the wrong type); nothing was sent.
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl DriverError {
    /// Whether the connection must be made again.
    pub fn is_connection(&self) -> bool {
        matches!(self, DriverError::Connection(_))
    }
}

/// Why one point could not be read while others of its device could.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointError {
    /// What happened, e.g. `illegal data address`.
    pub message: String,
}

impl PointError {
    /// A point error.
    pub fn new(message: impl Into<String>) -> PointError {
        PointError {
            message: message.into(),
        }
    }
}

/// One point's raw value (before scale and offset) or its error.
pub type PointResult = Result<Value, PointError>;

/// A protocol client over one connection. Implementations coalesce a
/// device's points into as few requests as the protocol allows, bound every
/// request by the driver's `timeout`, and never panic on any bytes from the
/// device.
pub trait Protocol: Send {
    /// Open (or open again) the connection.
    fn connect(&mut self) -> BoxFuture<'_, Result<(), DriverError>>;

    /// Read every point of `device` (index `index` in the driver's
    /// devices): one result per point, in point-table order. `Err` means the
    /// device did not answer usefully at all.
    fn read<'a>(
        &'a mut self,
        index: usize,
        device: &'a DeviceConfig,
    ) -> BoxFuture<'a, Result<Vec<PointResult>, DriverError>>;

    /// Write one point's raw value (already converted from the published
    /// value by the inverse of scale and offset). A value the point cannot
    /// hold exactly as given (a fraction for an integer, a number beyond
    /// the type's range, a bool for a number) is refused with
    /// [`DriverError::Invalid`] before anything is sent; the answer is the
    /// raw value the device now holds, as a read would return it (e.g. an
    /// f32's value).
    fn write<'a>(
        &'a mut self,
        index: usize,
        device: &'a DeviceConfig,
        point: &'a PointConfig,
        raw: Value,
    ) -> BoxFuture<'a, Result<Value, DriverError>>;
}

/// The protocol's own checks of `cfg` (addresses, types, meter addresses,
/// node ids, security), without opening anything: building the client
/// opens no connection and touches no file, so this is [`build`] with the
/// client dropped. Part of [`DriverConfig::validate`].
pub fn check(cfg: &DriverConfig) -> Result<(), String> {
    build(cfg).map(drop)
}

/// Whether this build has the client of `kind` (OPC UA is the cargo
/// feature `opcua`), so that [`check`] can check its config.
pub fn built_in(kind: ProtocolKind) -> bool {
    kind != ProtocolKind::Opcua || cfg!(feature = "opcua")
}

/// Build the protocol client for `cfg`, checking its point addresses and
/// types; the error names the field. The one list of protocols.
pub fn build(cfg: &DriverConfig) -> Result<Box<dyn Protocol>, String> {
    match cfg.protocol {
        ProtocolKind::ModbusTcp | ProtocolKind::ModbusRtu => crate::modbus::build(cfg),
        ProtocolKind::Dlt645Tcp | ProtocolKind::Dlt645Serial => crate::dlt645::build(cfg),
        #[cfg(feature = "opcua")]
        ProtocolKind::Opcua => crate::opcua::build(cfg),
        #[cfg(not(feature = "opcua"))]
        ProtocolKind::Opcua => {
            Err("this build has no OPC UA support (cargo feature `opcua`)".into())
        }
    }
}

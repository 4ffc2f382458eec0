//! OPC UA client driver (cargo feature `opcua`), over the `async-opcua`
//! stack (MPL-2.0, used unmodified as a dependency).
//!
//! One driver is one session to one server endpoint, with security policy
//! `none` or `basic256sha256` (sign and encrypt; `basic256sha256-sign`
//! signs only). The client's application instance certificate and key are
//! generated into `pki_dir` on first start when missing; a server's
//! certificate must be in `pki_dir/trusted/` (an unknown one is stored in
//! `pki_dir/rejected/` for an operator to move) unless `trust_server_certs`.
//!
//! Points are node ids (`ns=2;s=Temperature`, `ns=2;i=1001`, `i=2258`). On
//! connect the driver reads every point once and then keeps them current
//! with one subscription whose monitored items sample each point at its
//! device's `poll` interval; a device "read" returns the latest values the
//! subscription delivered, so the runner's cadence publishes them without a
//! request to the server. Writes are Write service calls, converted to the
//! variable's type (the point's `type` if set, else the type of its last
//! value). [`browse`] lists a node's children for building point tables.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use opcua::client::{Client, Session};
use opcua::crypto::SecurityPolicy;
use opcua::types::{AttributeId, DataValue, MessageSecurityMode, NodeId, WriteValue};
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::config::{DeviceConfig, DriverConfig, PointConfig};
use crate::protocol::{BoxFuture, DriverError, PointError, PointResult, Protocol};

/// The PKI directory when the config names none.
pub const DEFAULT_PKI_DIR: &str = "opcua-pki";

mod browse;
mod session;
mod subscribe;
mod values;

pub use browse::{BrowseEntry, browse};
use session::bounded;
use values::point_value;
pub use values::to_json;

/// Most nodes in one Read or CreateMonitoredItems request.
const CHUNK: usize = 500;

/// Build the OPC UA client for `cfg`: checks the endpoint, security policy
/// and every point's node id; the error names the field.
pub fn build(cfg: &DriverConfig) -> Result<Box<dyn Protocol>, String> {
    Ok(Box::new(OpcuaClient::new(cfg)?))
}

/// The security a config asks for.
fn security(cfg: &DriverConfig) -> Result<(SecurityPolicy, MessageSecurityMode), String> {
    match cfg
        .security
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("none") => Ok((SecurityPolicy::None, MessageSecurityMode::None)),
        Some("basic256sha256") => Ok((
            SecurityPolicy::Basic256Sha256,
            MessageSecurityMode::SignAndEncrypt,
        )),
        Some("basic256sha256-sign") => {
            Ok((SecurityPolicy::Basic256Sha256, MessageSecurityMode::Sign))
        }
        Some(other) => Err(format!(
            "security: {other:?} is not one of none, basic256sha256, basic256sha256-sign"
        )),
    }
}

/// Parse a point address as a node id.
fn node_id(address: &str) -> Result<NodeId, String> {
    NodeId::from_str(address.trim()).map_err(|_| {
        format!(
            "{address:?} is not an OPC UA node id (e.g. ns=2;s=Temperature, ns=2;i=1001, i=2258)"
        )
    })
}

/// The latest value of one point.
#[derive(Clone, Default)]
struct Slot {
    /// Last data value from the server (initial read or subscription).
    value: Option<DataValue>,
    /// Why the point has no value (e.g. its monitored item was refused).
    error: Option<String>,
}

/// Shared between the driver, the session's event loop and the
/// subscription callback.
struct State {
    slots: Mutex<Vec<Slot>>,
    /// Set when the session is gone (connection lost, subscription dead).
    lost: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One session and the task driving it.
struct Conn {
    session: Arc<Session>,
    task: JoinHandle<()>,
    state: Arc<State>,
    /// Subscription made and values seeded: reads may be answered.
    ready: bool,
}

impl Conn {
    fn lost(&self) -> Option<String> {
        lock(&self.state.lost).clone()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An OPC UA client for one driver.
pub struct OpcuaClient {
    cfg: DriverConfig,
    endpoint: String,
    policy: SecurityPolicy,
    mode: MessageSecurityMode,
    pki_dir: PathBuf,
    /// Node id of every point, `[device][point]`.
    nodes: Vec<Vec<NodeId>>,
    /// First flat slot index of each device.
    offsets: Vec<usize>,
    client: Option<Client>,
    conn: Option<Conn>,
}

impl Protocol for OpcuaClient {
    fn connect(&mut self) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(async move {
            self.open().await?;
            self.subscribe().await
        })
    }

    fn read<'a>(
        &'a mut self,
        index: usize,
        device: &'a DeviceConfig,
    ) -> BoxFuture<'a, Result<Vec<PointResult>, DriverError>> {
        Box::pin(async move {
            let conn = self.live()?;
            let start = *self
                .offsets
                .get(index)
                .ok_or_else(|| DriverError::Invalid(format!("no device {index}")))?;
            let slots = lock(&conn.state.slots);
            Ok((0..device.points.len())
                .map(|j| match slots.get(start + j) {
                    Some(Slot { error: Some(e), .. }) => Err(PointError::new(e.clone())),
                    Some(Slot {
                        value: Some(dv), ..
                    }) => point_value(dv),
                    _ => Err(PointError::new("no value received yet")),
                })
                .collect())
        })
    }

    fn write<'a>(
        &'a mut self,
        index: usize,
        device: &'a DeviceConfig,
        point: &'a PointConfig,
        raw: Value,
    ) -> BoxFuture<'a, Result<Value, DriverError>> {
        Box::pin(async move {
            let j = device
                .points
                .iter()
                .position(|p| p.name == point.name)
                .filter(|_| index < self.nodes.len())
                .ok_or_else(|| DriverError::Invalid(format!("no point {:?}", point.name)))?;
            let conn = self.live()?;
            let kind = self.write_kind(conn, index, j, point).await?;
            let variant = kind
                .variant(&raw)
                .map_err(|e| DriverError::Invalid(format!("point {:?}: {e}", point.name)))?;
            // What a read of the variable gives back.
            let written = to_json(&variant).unwrap_or_else(|_| raw.clone());
            let write = WriteValue {
                node_id: self.nodes[index][j].clone(),
                attribute_id: AttributeId::Value as u32,
                value: DataValue {
                    value: Some(variant),
                    ..Default::default()
                },
                ..Default::default()
            };
            let codes = bounded(self.cfg.timeout, conn.session.write(&[write])).await?;
            match codes.first() {
                Some(c) if c.is_good() => Ok(written),
                Some(c) => Err(DriverError::Refused(c.to_string())),
                None => Err(DriverError::BadResponse("empty write result".into())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::types::Variant;
    use serde_json::Value;
    use values::Kind;

    #[test]
    fn conversions() {
        assert_eq!(Kind::U16.variant(&Value::from(7)), Ok(Variant::UInt16(7)));
        assert!(Kind::U16.variant(&Value::from(70000)).is_err());
        assert!(Kind::I16.variant(&Value::from(1.5)).is_err());
        assert_eq!(
            Kind::I32.variant(&Value::from(-3.0)),
            Ok(Variant::Int32(-3))
        );
        assert_eq!(
            Kind::Bool.variant(&Value::from(1)),
            Ok(Variant::Boolean(true))
        );
        assert!(Kind::Bool.variant(&Value::from("x")).is_err());
        assert_eq!(
            Kind::F64.variant(&Value::from(2.5)),
            Ok(Variant::Double(2.5))
        );
        assert!(Kind::Str.variant(&Value::from(2)).is_err());
        assert!(Kind::F32.variant(&Value::from(1e300)).is_err());
        assert_eq!(to_json(&Variant::Double(f64::NAN)), Ok(Value::Null));
        assert_eq!(
            to_json(&Variant::UInt64(u64::MAX)),
            Ok(Value::from(u64::MAX))
        );
        assert_eq!(to_json(&Variant::from("hi")), Ok(Value::from("hi")));
    }

    #[test]
    fn node_ids_and_security() {
        assert!(node_id("ns=2;s=Temperature").is_ok());
        assert!(node_id("ns=2;i=1001").is_ok());
        assert!(node_id("i=2258").is_ok());
        assert!(node_id("Temperature").is_err());
        let mut cfg: DriverConfig = serde_json::from_value(serde_json::json!({
            "name": "ua", "protocol": "opcua", "endpoint": "opc.tcp://127.0.0.1:4840/",
            "devices": [{"name": "d", "points": [{"name": "t", "address": "ns=2;s=T"}]}]
        }))
        .map_err(|e| e.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(build(&cfg).is_ok());
        cfg.security = Some("basic128".into());
        assert!(
            build(&cfg)
                .err()
                .is_some_and(|e| e.starts_with("security:"))
        );
        cfg.security = None;
        cfg.devices[0].points[0].address = "nope".into();
        assert!(
            build(&cfg)
                .err()
                .is_some_and(|e| e.starts_with("devices[0].points[0].address:"))
        );
    }
}

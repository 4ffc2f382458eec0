//! A driver instance as configured (`[[drivers]]` in the node's config and
//! the node's HTTP API): its connection, timeouts, retry and the point
//! table of each device.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which protocol a driver speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProtocolKind {
    /// Modbus TCP (`host`, `port`, default 502).
    ModbusTcp,
    /// Modbus RTU over a serial line (`serial`).
    ModbusRtu,
    /// DL/T 645-2007 over a TCP transparent gateway (`host`, `port`).
    Dlt645Tcp,
    /// DL/T 645-2007 over a serial line (`serial`).
    Dlt645Serial,
    /// OPC UA client (`endpoint`).
    Opcua,
}

impl ProtocolKind {
    /// Its name in config and API.
    pub fn as_str(self) -> &'static str {
        match self {
            ProtocolKind::ModbusTcp => "modbus-tcp",
            ProtocolKind::ModbusRtu => "modbus-rtu",
            ProtocolKind::Dlt645Tcp => "dlt645-tcp",
            ProtocolKind::Dlt645Serial => "dlt645-serial",
            ProtocolKind::Opcua => "opcua",
        }
    }

    fn serial(self) -> bool {
        matches!(self, ProtocolKind::ModbusRtu | ProtocolKind::Dlt645Serial)
    }
}

/// One driver instance: one connection, one or more devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriverConfig {
    /// Unique name (letters, digits, `-`, `_`).
    pub name: String,
    /// The protocol.
    pub protocol: ProtocolKind,
    /// TCP host (Modbus TCP, DL/T 645 over TCP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// TCP port [default: 502 for Modbus, 8899 for DL/T 645 gateways].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Serial line (Modbus RTU, DL/T 645 serial).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialConfig>,
    /// OPC UA endpoint URL, `opc.tcp://host:4840/path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// OPC UA security policy: `none` or `basic256sha256` (sign and
    /// encrypt; `basic256sha256-sign` signs only) [default: `none`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<String>,
    /// OPC UA: the client's PKI directory: its certificate and key
    /// (`own/cert.der`, `private/private.pem`, generated on first start when
    /// missing) and the servers' certificates in `trusted/` and `rejected/`
    /// [default: `opcua-pki`, relative to the working directory].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pki_dir: Option<String>,
    /// OPC UA: trust a server certificate not yet in `trusted/` (and store
    /// it there) instead of rejecting it into `rejected/` for an operator to
    /// move [default: false].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub trust_server_certs: bool,
    /// Longest wait for one request's answer.
    #[serde(default = "default_timeout", with = "verge_duration")]
    pub timeout: Duration,
    /// Reconnect and bad-device backoff.
    #[serde(default)]
    pub retry: Retry,
    /// Devices behind this connection.
    pub devices: Vec<DeviceConfig>,
    /// Start it (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn default_timeout() -> Duration {
    Duration::from_secs(1)
}

fn yes() -> bool {
    true
}

/// Backoff after a failure: `initial`, doubling up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    /// First wait.
    #[serde(with = "verge_duration")]
    pub initial: Duration,
    /// Longest wait.
    #[serde(with = "verge_duration")]
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

/// A serial line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// Device path, e.g. `/dev/ttyUSB0`.
    pub device: String,
    /// Baud rate [default: 9600].
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// `none`, `even` or `odd` [default: `none` for Modbus; DL/T 645 meters
    /// usually want `even`].
    #[serde(default = "default_parity")]
    pub parity: String,
    /// 7 or 8 [default: 8].
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// 1 or 2 [default: 1].
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
}

fn default_baud() -> u32 {
    9600
}
fn default_parity() -> String {
    "none".into()
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}

/// One device behind a driver's connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Device id: telemetry goes to `devices/{name}/telemetry`.
    pub name: String,
    /// Modbus unit (slave) id [default: 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<u8>,
    /// DL/T 645 meter address: 12 decimal digits as printed on the meter
    /// (`"000000000001"`), or `"AAAAAAAAAAAA"` for the broadcast address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meter: Option<String>,
    /// How often to read the points.
    #[serde(default = "default_poll", with = "verge_duration")]
    pub poll: Duration,
    /// Publish only points whose value changed (past their deadband) since
    /// the last publication; a cycle with no change publishes nothing.
    #[serde(default)]
    pub changes_only: bool,
    /// The point table.
    pub points: Vec<PointConfig>,
}

fn default_poll() -> Duration {
    Duration::from_secs(1)
}

/// The type of a point's raw value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// A coil, discrete input or boolean variable.
    Bool,
    /// 16-bit unsigned.
    U16,
    /// 16-bit signed.
    I16,
    /// 32-bit unsigned (two registers).
    U32,
    /// 32-bit signed (two registers).
    I32,
    /// IEEE 754 single (two registers).
    F32,
    /// IEEE 754 double (four registers).
    F64,
    /// Text (`length` registers, two bytes each).
    String,
}

impl DataType {
    /// Registers the type takes in Modbus (strings: `length`).
    pub fn registers(self, length: u16) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::F64 => 4,
            DataType::String => length.max(1),
        }
    }
}

/// Order of bytes in a register or of registers in a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ByteOrder {
    /// Most significant first (Modbus's own order).
    #[default]
    Big,
    /// Least significant first.
    Little,
}

/// Whether a point may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Read only.
    #[default]
    R,
    /// Read and write.
    Rw,
}

/// One point of a device's point table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointConfig {
    /// Key in the telemetry's `values`.
    pub name: String,
    /// Where the point is, in the protocol's terms:
    /// - Modbus: `coil:N`, `di:N` (discrete input), `ir:N` (input
    ///   register), `hr:N` (holding register), N from 0;
    /// - DL/T 645: the data identifier as 8 hex digits, e.g. `00000000`
    ///   (combined active energy) or `02010100` (phase A voltage);
    /// - OPC UA: a node id, e.g. `ns=2;s=Temperature` or `ns=2;i=1001`.
    pub address: String,
    /// Raw type [default: `u16`; DL/T 645 and OPC UA points may leave it
    /// out, their values carry their type].
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub data_type: Option<DataType>,
    /// Bytes within a register.
    #[serde(default)]
    pub byte_order: ByteOrder,
    /// Registers within a multi-register value.
    #[serde(default)]
    pub word_order: ByteOrder,
    /// Registers of a `string` point.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u16>,
    /// Published value = raw × scale + offset (numbers only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<f64>,
    /// See `scale`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<f64>,
    /// Unit, for people and the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// `r` (default) or `rw`.
    #[serde(default)]
    pub access: Access,
    /// With `changes_only`: a number counts as changed only when it moved
    /// more than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadband: Option<f64>,
}

impl PointConfig {
    /// Raw value → published value: scale and offset applied to numbers.
    pub fn scaled(&self, raw: serde_json::Value) -> serde_json::Value {
        match (&raw, self.scale, self.offset) {
            (serde_json::Value::Number(n), s, o) if s.is_some() || o.is_some() => {
                let v = n.as_f64().unwrap_or(0.0) * s.unwrap_or(1.0) + o.unwrap_or(0.0);
                serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into)
            }
            _ => raw,
        }
    }

    /// Published value → raw value for a write: the inverse of
    /// [`scaled`](Self::scaled).
    pub fn unscaled(&self, v: &serde_json::Value) -> serde_json::Value {
        match (v, self.scale, self.offset) {
            (serde_json::Value::Number(n), s, o) if s.is_some() || o.is_some() => {
                let s = s.unwrap_or(1.0);
                let raw = (n.as_f64().unwrap_or(0.0) - o.unwrap_or(0.0)) / s;
                serde_json::Number::from_f64(raw).map_or(serde_json::Value::Null, Into::into)
            }
            _ => v.clone(),
        }
    }
}

/// Most devices per driver and points per device.
pub const MAX_DEVICES: usize = 10_000;
/// See [`MAX_DEVICES`].
pub const MAX_POINTS: usize = 100_000;

impl DriverConfig {
    /// Check everything a driver can be refused for without opening
    /// anything: what serde cannot express, keys the protocol does not use,
    /// and the protocol's own checks of addresses, types, meter addresses,
    /// node ids and security ([`crate::protocol::check`]). The one
    /// validation path: `verge config check`, the node's config before it
    /// binds a socket, `Drivers::create` and the HTTP API all call this.
    /// The error names the field (`devices[2].points[0].address: …`).
    pub fn validate(&self) -> Result<(), String> {
        self.validate_keys()?;
        crate::protocol::check(self)
    }

    /// [`validate`](Self::validate) without the protocol's own checks:
    /// for a build without the protocol's client (see
    /// [`crate::protocol::built_in`]), which checks the rest and leaves
    /// the addresses to the node that runs the driver.
    pub fn validate_keys(&self) -> Result<(), String> {
        self.validate_common()?;
        self.validate_applicable()
    }

    /// Keys that the protocol would ignore are refused rather than
    /// silently dropped (e.g. `host` on an OPC UA driver).
    fn validate_applicable(&self) -> Result<(), String> {
        let p = self.protocol;
        let proto = p.as_str();
        let tcp = matches!(p, ProtocolKind::ModbusTcp | ProtocolKind::Dlt645Tcp);
        let opcua = p == ProtocolKind::Opcua;
        let unused = |key: &str, instead: &str| {
            Err(format!(
                "{key}: not used by protocol {proto} ({instead}); remove it"
            ))
        };
        let instead = if opcua {
            "it connects to `endpoint`"
        } else if p.serial() {
            "it uses the `serial` line"
        } else {
            "it connects to `host` and `port`"
        };
        if !tcp && self.host.is_some() {
            return unused("host", instead);
        }
        if !tcp && self.port.is_some() {
            return unused("port", instead);
        }
        if !p.serial() && self.serial.is_some() {
            return unused("serial", instead);
        }
        if !opcua {
            let opcua_only = "it is an OPC UA key";
            if self.endpoint.is_some() {
                return unused("endpoint", instead);
            }
            if self.security.is_some() {
                return unused("security", opcua_only);
            }
            if self.pki_dir.is_some() {
                return unused("pki_dir", opcua_only);
            }
            if self.trust_server_certs {
                return unused("trust_server_certs", opcua_only);
            }
        }
        let modbus = matches!(p, ProtocolKind::ModbusTcp | ProtocolKind::ModbusRtu);
        let dlt645 = matches!(p, ProtocolKind::Dlt645Tcp | ProtocolKind::Dlt645Serial);
        for (i, d) in self.devices.iter().enumerate() {
            if !modbus && d.unit.is_some() {
                return Err(format!(
                    "devices[{i}].unit: a Modbus unit id, not used by protocol {proto}; remove it"
                ));
            }
            if !dlt645 && d.meter.is_some() {
                return Err(format!(
                    "devices[{i}].meter: a DL/T 645 meter address, not used by protocol {proto}; remove it"
                ));
            }
            if modbus {
                continue;
            }
            for (j, pt) in d.points.iter().enumerate() {
                let at = |f: &str| format!("devices[{i}].points[{j}].{f}");
                if pt.length.is_some() {
                    return Err(format!(
                        "{}: the registers of a Modbus string, not used by protocol {proto}; remove it",
                        at("length")
                    ));
                }
                if pt.byte_order != ByteOrder::Big || pt.word_order != ByteOrder::Big {
                    return Err(format!(
                        "{}: Modbus register layout, not used by protocol {proto}; remove it",
                        at(if pt.byte_order != ByteOrder::Big {
                            "byte_order"
                        } else {
                            "word_order"
                        })
                    ));
                }
            }
        }
        Ok(())
    }

    /// The checks that do not depend on the protocol.
    fn validate_common(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(format!(
                "name: {:?} must be 1 to 64 letters, digits, `-` or `_`",
                self.name
            ));
        }
        if self.protocol.serial() {
            if self.serial.is_none() {
                return Err(format!(
                    "serial: protocol {} needs a serial line",
                    self.protocol.as_str()
                ));
            }
        } else if self.protocol == ProtocolKind::Opcua {
            if self
                .endpoint
                .as_deref()
                .is_none_or(|e| !e.starts_with("opc.tcp://"))
            {
                return Err(
                    "endpoint: an OPC UA driver needs `endpoint = \"opc.tcp://host:port/...\"`"
                        .into(),
                );
            }
        } else if self.host.as_deref().is_none_or(str::is_empty) {
            return Err(format!(
                "host: protocol {} needs a host",
                self.protocol.as_str()
            ));
        }
        if let Some(s) = &self.serial {
            if !["none", "even", "odd"].contains(&s.parity.as_str()) {
                return Err("serial.parity: must be none, even or odd".into());
            }
            if !(7..=8).contains(&s.data_bits) || !(1..=2).contains(&s.stop_bits) || s.baud == 0 {
                return Err(
                    "serial: data_bits must be 7 or 8, stop_bits 1 or 2, baud above 0".into(),
                );
            }
        }
        if self.timeout < Duration::from_millis(10) || self.timeout > Duration::from_secs(60) {
            return Err("timeout: must be between 10ms and 60s".into());
        }
        if self.retry.initial.is_zero() || self.retry.max < self.retry.initial {
            return Err("retry: initial must be above 0 and at most max".into());
        }
        if self.devices.is_empty() || self.devices.len() > MAX_DEVICES {
            return Err(format!("devices: between 1 and {MAX_DEVICES} devices"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, d) in self.devices.iter().enumerate() {
            let at = |f: &str| format!("devices[{i}].{f}");
            if d.name.is_empty() || d.name.contains(['/', '+', '#']) {
                return Err(format!(
                    "{}: {:?} is not usable as a topic level",
                    at("name"),
                    d.name
                ));
            }
            if !names.insert(d.name.as_str()) {
                return Err(format!("{}: device {:?} appears twice", at("name"), d.name));
            }
            if d.poll < Duration::from_millis(10) {
                return Err(format!("{}: at least 10ms", at("poll")));
            }
            if d.points.is_empty() || d.points.len() > MAX_POINTS {
                return Err(format!(
                    "{}: between 1 and {MAX_POINTS} points",
                    at("points")
                ));
            }
            let mut points = std::collections::HashSet::new();
            for (j, p) in d.points.iter().enumerate() {
                let at = |f: &str| format!("devices[{i}].points[{j}].{f}");
                if p.name.is_empty() {
                    return Err(format!("{}: empty", at("name")));
                }
                if !points.insert(p.name.as_str()) {
                    return Err(format!("{}: point {:?} appears twice", at("name"), p.name));
                }
                if p.address.trim().is_empty() {
                    return Err(format!("{}: empty", at("address")));
                }
                if p.scale == Some(0.0) {
                    return Err(format!("{}: must not be 0", at("scale")));
                }
                if p.deadband.is_some_and(|d| d.is_nan() || d < 0.0) {
                    return Err(format!("{}: must be 0 or more", at("deadband")));
                }
            }
        }
        Ok(())
    }
}

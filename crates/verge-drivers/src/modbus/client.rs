//! The Modbus master: implements [`Protocol`] over a TCP connection
//! (`modbus-tcp`) or a serial line (`modbus-rtu`) with `tokio-modbus`,
//! running each device's planned reads and mapping every answer back to
//! its points.
//!
//! Requests go through `Client::call` and every answer is checked here
//! (table, register count) rather than through tokio-modbus's typed
//! helpers, which assert on a wrong count: no answer from a device can
//! panic the driver.

use std::borrow::Cow;
use std::io::ErrorKind;
use std::time::Duration;

use serde_json::Value;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::slave::SlaveContext;
use tokio_modbus::{ExceptionCode, Request, Response, Slave};

use super::codec;
use super::plan::{self, Area, DevicePlan, Read};
use crate::config::{DeviceConfig, DriverConfig, PointConfig, ProtocolKind, SerialConfig};
use crate::protocol::{BoxFuture, DriverError, PointError, PointResult, Protocol};

/// Default Modbus TCP port.
pub const DEFAULT_PORT: u16 = 502;

/// Where the devices are.
enum Target {
    Tcp { host: String, port: u16 },
    Rtu(SerialConfig),
}

/// A Modbus client over one connection, with each device's read plan.
pub struct Modbus {
    target: Target,
    timeout: Duration,
    plans: Vec<DevicePlan>,
    /// The open connection; `None` after an error that may leave a stale
    /// answer on the line, so the next request connects again.
    ctx: Option<Context>,
}

/// Build the client for `cfg`, checking every point; the error names the
/// field (`devices[0].points[2].address: …`).
pub fn build(cfg: &DriverConfig) -> Result<Box<dyn Protocol>, String> {
    Ok(Box::new(Modbus::new(cfg)?))
}

impl Modbus {
    /// Check `cfg`'s points and plan each device's reads.
    pub fn new(cfg: &DriverConfig) -> Result<Modbus, String> {
        let target = match cfg.protocol {
            ProtocolKind::ModbusRtu => Target::Rtu(
                cfg.serial
                    .clone()
                    .ok_or("serial: protocol modbus-rtu needs a serial line")?,
            ),
            ProtocolKind::ModbusTcp => Target::Tcp {
                host: cfg
                    .host
                    .clone()
                    .filter(|h| !h.is_empty())
                    .ok_or("host: protocol modbus-tcp needs a host")?,
                port: cfg.port.unwrap_or(DEFAULT_PORT),
            },
            other => return Err(format!("protocol: {} is not Modbus", other.as_str())),
        };
        let plans = cfg
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| plan::device(d).map_err(|e| format!("devices[{i}].{e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Modbus {
            target,
            timeout: cfg.timeout,
            plans,
            ctx: None,
        })
    }

    /// Device `index`'s plan: its points and reads.
    pub fn plan(&self, index: usize) -> Option<&DevicePlan> {
        self.plans.get(index)
    }

    fn timeout_ms(&self) -> u64 {
        u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX)
    }

    /// Open the connection, bounded by the timeout.
    async fn open(&mut self) -> Result<(), DriverError> {
        self.ctx = None;
        let ctx = match &self.target {
            Target::Tcp { host, port } => {
                let connect = tokio::net::TcpStream::connect((host.as_str(), *port));
                let s = tokio::time::timeout(self.timeout, connect)
                    .await
                    .map_err(|_| {
                        DriverError::Connection(format!(
                            "{host}:{port}: no connection within {:?}",
                            self.timeout
                        ))
                    })?
                    .map_err(|e| DriverError::Connection(format!("{host}:{port}: {e}")))?;
                let _ = s.set_nodelay(true);
                tokio_modbus::client::tcp::attach_slave(s, Slave(1))
            }
            Target::Rtu(line) => {
                tokio_modbus::client::rtu::attach_slave(crate::serial::open(line)?, Slave(1))
            }
        };
        self.ctx = Some(ctx);
        Ok(())
    }

    /// One request to `unit`: the answer or its exception; connects first
    /// when needed. A timeout or a bad frame drops the connection.
    async fn call(
        &mut self,
        unit: u8,
        req: Request<'_>,
    ) -> Result<Result<Response, ExceptionCode>, DriverError> {
        if self.ctx.is_none() {
            self.open().await?;
        }
        let ms = self.timeout_ms();
        let Some(ctx) = self.ctx.as_mut() else {
            return Err(DriverError::Connection("not connected".into()));
        };
        ctx.set_slave(Slave(unit));
        let r = tokio::time::timeout(self.timeout, ctx.call(req)).await;
        let e = match r {
            Ok(Ok(answer)) => return Ok(answer),
            Err(_) => DriverError::Timeout(ms),
            Ok(Err(tokio_modbus::Error::Transport(e))) => {
                transport_error(unit, &e, matches!(self.target, Target::Tcp { .. }))
            }
            Ok(Err(tokio_modbus::Error::Protocol(p))) => {
                let what = match p {
                    tokio_modbus::ProtocolError::HeaderMismatch { message, .. } => message,
                    tokio_modbus::ProtocolError::FunctionCodeMismatch { request, .. } => {
                        format!("the answer is not to function {request}")
                    }
                };
                DriverError::BadResponse(format!("unit {unit}: {what}"))
            }
        };
        self.ctx = None;
        Err(e)
    }

    /// Run device `index`'s reads.
    async fn read_device(&mut self, index: usize) -> Result<Vec<PointResult>, DriverError> {
        let Some(p) = self.plans.get(index) else {
            return Err(DriverError::Invalid(format!("no device {index}")));
        };
        let (unit, n) = (p.unit, p.specs.len());
        let mut out: Vec<PointResult> = vec![Err(PointError::new("not read")); n];
        let mut k = 0;
        while let Some(read) = self.plans[index].reads.get(k) {
            let (area, address, count) = (read.area, read.address, read.count);
            let req = match area {
                Area::Coil => Request::ReadCoils(address, count),
                Area::DiscreteInput => Request::ReadDiscreteInputs(address, count),
                Area::InputRegister => Request::ReadInputRegisters(address, count),
                Area::HoldingRegister => Request::ReadHoldingRegisters(address, count),
            };
            let answer = self.call(unit, req).await?;
            let plan = &mut self.plans[index];
            let read = &plan.reads[k];
            match answer {
                Ok(resp) => fill(&plan.specs, read, resp, &mut out)?,
                Err(ExceptionCode::IllegalDataAddress) if read.points.len() > 1 => {
                    // A hole in the device's map inside a joined read: read
                    // these points one by one from now on.
                    tracing::info!(
                        unit,
                        address,
                        count,
                        "illegal data address for a joined read; splitting it"
                    );
                    let parts = plan::split(read, &plan.specs);
                    plan.reads.splice(k..=k, parts);
                    continue;
                }
                Err(e) => {
                    let name = codec::exception_name(e);
                    for &(i, _) in &read.points {
                        out[i] = Err(PointError::new(name.clone()));
                    }
                }
            }
            k += 1;
        }
        Ok(out)
    }

    /// Write one point; the value written, as a read would decode it.
    async fn write_point(
        &mut self,
        index: usize,
        device: &DeviceConfig,
        point: &PointConfig,
        raw: &Value,
    ) -> Result<Value, DriverError> {
        let plan = self
            .plans
            .get(index)
            .ok_or_else(|| DriverError::Invalid(format!("no device {index}")))?;
        let unit = plan.unit;
        // Plans keep the point table's order.
        let spec = device
            .points
            .iter()
            .position(|p| p.name == point.name)
            .and_then(|j| plan.specs.get(j))
            .cloned()
            .ok_or_else(|| DriverError::Invalid(format!("no point {:?}", point.name)))?;
        if !spec.area.writable() || spec.bit.is_some() {
            return Err(DriverError::Invalid(format!(
                "point {:?} is read-only",
                point.name
            )));
        }
        let (single, multiple, written) = if spec.area == Area::Coil {
            let b = codec::encode_bool(raw).map_err(DriverError::Invalid)?;
            (
                Some(Request::WriteSingleCoil(spec.address, b)),
                Request::WriteMultipleCoils(spec.address, Cow::Owned(vec![b])),
                Value::Bool(b),
            )
        } else {
            let words = codec::encode(&spec, raw).map_err(DriverError::Invalid)?;
            let single = match words.as_slice() {
                [w] => Some(Request::WriteSingleRegister(spec.address, *w)),
                _ => None,
            };
            // What a read of these registers gives back.
            let written = codec::decode(&spec, &words).unwrap_or_else(|_| raw.clone());
            (
                single,
                Request::WriteMultipleRegisters(spec.address, Cow::Owned(words)),
                written,
            )
        };
        let answer = match single {
            Some(req) => match self.call(unit, req).await? {
                // Some devices only know the "multiple" functions.
                Err(ExceptionCode::IllegalFunction) => self.call(unit, multiple).await?,
                other => other,
            },
            None => self.call(unit, multiple).await?,
        };
        match answer {
            Ok(
                Response::WriteSingleCoil(..)
                | Response::WriteMultipleCoils(..)
                | Response::WriteSingleRegister(..)
                | Response::WriteMultipleRegisters(..),
            ) => Ok(written),
            Ok(other) => Err(DriverError::BadResponse(format!(
                "unexpected answer to a write: {:?}",
                other.function_code()
            ))),
            Err(e) => Err(DriverError::Refused(codec::exception_name(e))),
        }
    }
}

/// A transport error as the driver reports it. tokio-modbus reports the
/// end of a TCP stream (the device closed the connection) as the thread's
/// last OS error, a stale errno such as "No such file or directory (os
/// error 2)" or "Operation now in progress (os error 115)"; so on TCP every
/// error but the few a live socket reports for itself (timeouts,
/// unreachable hosts) is the device closing or resetting the connection.
pub fn transport_error(unit: u8, e: &std::io::Error, tcp: bool) -> DriverError {
    match e.kind() {
        ErrorKind::InvalidData | ErrorKind::InvalidInput => {
            DriverError::BadResponse(format!("unit {unit}: {e}"))
        }
        ErrorKind::TimedOut
        | ErrorKind::HostUnreachable
        | ErrorKind::NetworkUnreachable
        | ErrorKind::NetworkDown => DriverError::Connection(format!("unit {unit}: {e}")),
        _ if !tcp => DriverError::Connection(format!("unit {unit}: {e}")),
        ErrorKind::ConnectionReset => {
            DriverError::Connection(format!("unit {unit}: connection reset by the device"))
        }
        _ => DriverError::Connection(format!("unit {unit}: connection closed by the device")),
    }
}

/// Map one read's answer (as tokio-modbus parsed it from the device's
/// bytes) onto its points: `out[i]` becomes point `i`'s value or error for
/// every point the read serves. A response of the wrong function or size
/// fails the whole read; nothing in `resp` can make it panic. Public for
/// the fuzz target (`fuzz/fuzz_targets/fuzz_modbus.rs`).
pub fn fill(
    specs: &[plan::Spec],
    read: &Read,
    resp: Response,
    out: &mut [PointResult],
) -> Result<(), DriverError> {
    let count = usize::from(read.count);
    match (read.area, resp) {
        (Area::Coil, Response::ReadCoils(bits))
        | (Area::DiscreteInput, Response::ReadDiscreteInputs(bits)) => {
            if bits.len() != count.div_ceil(8) * 8 {
                return Err(DriverError::BadResponse(format!(
                    "asked for {count} bits, got {} bytes",
                    bits.len() / 8
                )));
            }
            for &(i, off) in &read.points {
                out[i] = Ok(Value::Bool(bits[usize::from(off)]));
            }
        }
        (Area::HoldingRegister, Response::ReadHoldingRegisters(words))
        | (Area::InputRegister, Response::ReadInputRegisters(words)) => {
            if words.len() != count {
                return Err(DriverError::BadResponse(format!(
                    "asked for {count} registers, got {}",
                    words.len()
                )));
            }
            for &(i, off) in &read.points {
                let s = &specs[i];
                let from = usize::from(off);
                out[i] = match words.get(from..from + usize::from(s.count)) {
                    Some(regs) => codec::decode(s, regs),
                    None => Err(PointError::new("outside the answer")),
                };
            }
        }
        (_, other) => {
            return Err(DriverError::BadResponse(format!(
                "answer of function {} to a read of {:?}",
                other.function_code(),
                read.area
            )));
        }
    }
    Ok(())
}

impl Protocol for Modbus {
    fn connect(&mut self) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(self.open())
    }

    fn read<'a>(
        &'a mut self,
        index: usize,
        _device: &'a DeviceConfig,
    ) -> BoxFuture<'a, Result<Vec<PointResult>, DriverError>> {
        Box::pin(self.read_device(index))
    }

    fn write<'a>(
        &'a mut self,
        index: usize,
        device: &'a DeviceConfig,
        point: &'a PointConfig,
        raw: Value,
    ) -> BoxFuture<'a, Result<Value, DriverError>> {
        Box::pin(async move { self.write_point(index, device, point, &raw).await })
    }
}

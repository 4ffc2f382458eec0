//! The DL/T 645-2007 master: implements [`Protocol`] over a TCP transparent
//! gateway (`dlt645-tcp`) or a serial line (`dlt645-serial`). One read
//! request (control 11h) per data identifier — the protocol has no
//! multi-read — a device's points read in turn, each exchange bounded by the
//! driver's timeout. Follow-up frames (B1h, then 12h requests) are joined.
//!
//! Writes are not supported: DL/T 645 writes need the meter's password and
//! operator code and are out of scope, so every point is read-only here.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::codec::{self, Address, DecodeError, Frame, control};
use super::ids::{self, DataId, Format, ValueError};
use crate::config::{DeviceConfig, DriverConfig, PointConfig, ProtocolKind, SerialConfig};
use crate::protocol::{BoxFuture, DriverError, PointError, PointResult, Protocol};

/// Default TCP port of DL/T 645 transparent gateways.
pub const DEFAULT_PORT: u16 = 8899;
/// FEh bytes sent before each request to wake the meter up.
const PREAMBLE: usize = 4;
/// Most bytes kept while waiting for one answer: a frame is at most
/// 12 + 255 bytes, the rest is room for preamble and noise.
const MAX_BUFFER: usize = 1024;
/// Most follow-up frames joined into one answer.
const MAX_FOLLOW_UPS: u8 = 16;
/// Most data bytes of one answer, follow-ups included.
const MAX_ANSWER: usize = 1024;

/// A byte stream to the meters: a TCP socket or a serial port.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Where the meters are.
enum Target {
    Tcp { host: String, port: u16 },
    Serial(SerialConfig),
}

/// A DL/T 645 client over one connection.
pub struct Dlt645 {
    target: Target,
    timeout: Duration,
    /// Each device's meter address, by device index.
    meters: Vec<Address>,
    /// Each device's points: identifier and value format, in table order.
    points: Vec<Vec<(DataId, Format)>>,
    io: Option<Box<dyn Io>>,
    buf: Vec<u8>,
}

/// Build the client for `cfg`, checking every meter address and data
/// identifier; the error names the field.
pub fn build(cfg: &DriverConfig) -> Result<Box<dyn Protocol>, String> {
    let target = match cfg.protocol {
        ProtocolKind::Dlt645Serial => Target::Serial(
            cfg.serial
                .clone()
                .ok_or("serial: protocol dlt645-serial needs a serial line")?,
        ),
        _ => Target::Tcp {
            host: cfg
                .host
                .clone()
                .ok_or("host: protocol dlt645-tcp needs a host")?,
            port: cfg.port.unwrap_or(DEFAULT_PORT),
        },
    };
    let mut meters = Vec::with_capacity(cfg.devices.len());
    let mut points = Vec::with_capacity(cfg.devices.len());
    for (i, d) in cfg.devices.iter().enumerate() {
        let meter = d.meter.as_deref().ok_or_else(|| {
            format!("devices[{i}].meter: a DL/T 645 device needs its 12-digit meter address")
        })?;
        meters.push(Address::parse(meter).map_err(|e| format!("devices[{i}].meter: {e}"))?);
        let mut ps = Vec::with_capacity(d.points.len());
        for (j, p) in d.points.iter().enumerate() {
            ps.push(point(p).map_err(|e| format!("devices[{i}].points[{j}].{e}"))?);
        }
        points.push(ps);
    }
    Ok(Box::new(Dlt645 {
        target,
        timeout: cfg.timeout,
        meters,
        points,
        io: None,
        buf: Vec::with_capacity(MAX_BUFFER),
    }))
}

/// A point's identifier and format; the error starts with the key.
fn point(p: &PointConfig) -> Result<(DataId, Format), String> {
    let id = DataId::parse(p.address.trim()).map_err(|e| format!("address: {e}"))?;
    let info = ids::lookup(id).ok_or_else(|| {
        format!(
            "address: data identifier {id} is not one Verge knows (see verge_drivers::dlt645::ids)"
        )
    })?;
    if let Some(t) = p.data_type {
        return Err(format!(
            "type: {t:?} given, but DL/T 645 values carry their own type ({}); leave `type` out",
            info.what
        ));
    }
    Ok((id, info.format))
}

impl Protocol for Dlt645 {
    fn connect(&mut self) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(async move {
            self.io = None;
            self.buf.clear();
            let io: Box<dyn Io> = match &self.target {
                Target::Tcp { host, port } => {
                    let s = tokio::net::TcpStream::connect((host.as_str(), *port))
                        .await
                        .map_err(|e| DriverError::Connection(format!("{host}:{port}: {e}")))?;
                    let _ = s.set_nodelay(true);
                    Box::new(s)
                }
                Target::Serial(s) => open_serial(s)?,
            };
            self.io = Some(io);
            Ok(())
        })
    }

    fn read<'a>(
        &'a mut self,
        index: usize,
        _device: &'a DeviceConfig,
    ) -> BoxFuture<'a, Result<Vec<PointResult>, DriverError>> {
        Box::pin(async move {
            let meter = *self
                .meters
                .get(index)
                .ok_or_else(|| DriverError::Invalid(format!("no device {index}")))?;
            let count = self.points.get(index).map_or(0, Vec::len);
            let mut out = Vec::with_capacity(count);
            for k in 0..count {
                let (id, format) = self.points[index][k];
                let r = match self.read_id(meter, id).await? {
                    Ok(bytes) => match ids::decode(format, &bytes) {
                        Ok(v) => Ok(v),
                        Err(e @ ValueError::Length { .. }) => {
                            return Err(DriverError::BadResponse(format!("{id}: {e}")));
                        }
                        Err(e) => Err(PointError::new(format!("bad value: {e}"))),
                    },
                    Err(e) => Err(e),
                };
                out.push(r);
            }
            Ok(out)
        })
    }

    fn write<'a>(
        &'a mut self,
        _index: usize,
        _device: &'a DeviceConfig,
        _point: &'a PointConfig,
        _raw: Value,
    ) -> BoxFuture<'a, Result<Value, DriverError>> {
        Box::pin(async {
            Err(DriverError::Invalid(
                "DL/T 645 points are read-only here".into(),
            ))
        })
    }
}

fn open_serial(s: &SerialConfig) -> Result<Box<dyn Io>, DriverError> {
    Ok(Box::new(crate::serial::open(s)?))
}

impl Dlt645 {
    /// Read one identifier: the value's bytes, or the meter's named refusal.
    async fn read_id(
        &mut self,
        meter: Address,
        id: DataId,
    ) -> Result<Result<Vec<u8>, PointError>, DriverError> {
        let first = self
            .exchange(meter, control::READ, id.wire().to_vec(), id)
            .await?;
        let (mut more, mut data) = match first {
            Answer::Refused(e) => return Ok(Err(PointError::new(codec::error_names(e)))),
            Answer::Data { more, data } => (more, data),
        };
        let mut seq: u8 = 0;
        while more {
            seq += 1;
            if seq > MAX_FOLLOW_UPS || data.len() > MAX_ANSWER {
                return Err(DriverError::BadResponse(format!(
                    "{id}: more than {MAX_FOLLOW_UPS} follow-up frames or {MAX_ANSWER} bytes"
                )));
            }
            let mut req = id.wire().to_vec();
            req.push(seq);
            match self.exchange(meter, control::READ_FOLLOW, req, id).await? {
                Answer::Refused(e) => return Ok(Err(PointError::new(codec::error_names(e)))),
                Answer::Data { more: m, data: d } => {
                    // a follow-up answer ends with its sequence number
                    let Some((_, part)) = d.split_last() else {
                        return Err(DriverError::BadResponse(format!(
                            "{id}: follow-up without a sequence number"
                        )));
                    };
                    data.extend_from_slice(part);
                    more = m;
                }
            }
        }
        Ok(Ok(data))
    }

    /// Send one request and wait (at most the timeout) for its answer.
    async fn exchange(
        &mut self,
        meter: Address,
        function: u8,
        data: Vec<u8>,
        id: DataId,
    ) -> Result<Answer, DriverError> {
        let timeout = self.timeout;
        let req = codec::encode(
            &Frame {
                address: meter,
                control: function,
                data,
            },
            PREAMBLE,
        )
        .map_err(|e| DriverError::Invalid(e.to_string()))?;
        // After a timeout or a garbled answer the connection was dropped:
        // open it again, so a late answer can never be taken for this one.
        if self.io.is_none() {
            tokio::time::timeout(timeout, self.connect())
                .await
                .map_err(|_| DriverError::Connection("reconnecting timed out".into()))??;
        }
        let r = tokio::time::timeout(timeout, self.exchange_inner(meter, function, &req, id)).await;
        let r = r.unwrap_or_else(|_| {
            Err(DriverError::Timeout(
                u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            ))
        });
        if let Err(
            DriverError::Connection(_) | DriverError::Timeout(_) | DriverError::BadResponse(_),
        ) = &r
        {
            self.io = None;
        }
        r
    }

    async fn exchange_inner(
        &mut self,
        meter: Address,
        function: u8,
        req: &[u8],
        id: DataId,
    ) -> Result<Answer, DriverError> {
        let io = self
            .io
            .as_mut()
            .ok_or_else(|| DriverError::Connection("not connected".into()))?;
        self.buf.clear();
        io.write_all(req)
            .await
            .map_err(|e| DriverError::Connection(e.to_string()))?;
        io.flush()
            .await
            .map_err(|e| DriverError::Connection(e.to_string()))?;
        loop {
            match codec::decode(&self.buf) {
                Ok((frame, used)) => {
                    self.buf.drain(..used);
                    if let Some(a) = answer(&frame, meter, function, id)? {
                        return Ok(a);
                    }
                    // an echo, another meter's or a stale answer: keep reading
                }
                Err(DecodeError::Incomplete) => {
                    if self.buf.len() >= MAX_BUFFER {
                        return Err(DriverError::BadResponse(format!(
                            "no frame in {} bytes",
                            self.buf.len()
                        )));
                    }
                    let mut chunk = [0u8; 512];
                    let room = (MAX_BUFFER - self.buf.len()).min(chunk.len());
                    let n = io
                        .read(&mut chunk[..room])
                        .await
                        .map_err(|e| DriverError::Connection(e.to_string()))?;
                    if n == 0 {
                        return Err(DriverError::Connection("closed by the gateway".into()));
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) => return Err(DriverError::BadResponse(e.to_string())),
            }
        }
    }
}

/// A meter's answer to one request.
#[derive(Debug)]
enum Answer {
    /// The data after the identifier; `more`: follow-up frames exist.
    Data { more: bool, data: Vec<u8> },
    /// The error byte of an error answer.
    Refused(u8),
}

/// What `frame` answers to a `function` request for `id` from `meter`;
/// `None` when it is not that answer (so it is skipped).
fn answer(
    frame: &Frame,
    meter: Address,
    function: u8,
    id: DataId,
) -> Result<Option<Answer>, DriverError> {
    let c = frame.control;
    if c & control::FROM_METER == 0
        || c & control::FUNCTION != function
        || !meter.matches(&frame.address)
    {
        return Ok(None);
    }
    if c & control::ERROR != 0 {
        return match frame.data.first() {
            Some(&e) => Ok(Some(Answer::Refused(e))),
            None => Err(DriverError::BadResponse(
                "error answer without its error byte".into(),
            )),
        };
    }
    let Some((di, rest)) = frame.data.split_first_chunk::<4>() else {
        return Err(DriverError::BadResponse(format!(
            "answer of {} bytes has no data identifier",
            frame.data.len()
        )));
    };
    if DataId::from_wire(*di) != id {
        return Ok(None);
    }
    Ok(Some(Answer::Data {
        more: c & control::MORE != 0,
        data: rest.to_vec(),
    }))
}

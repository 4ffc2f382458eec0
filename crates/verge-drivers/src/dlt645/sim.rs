//! A DL/T 645-2007 meter simulator, for tests and benches: meters at
//! configurable addresses answer read requests (11h, and 12h follow-ups)
//! with values that change over time, over TCP (like a transparent gateway)
//! or any byte stream. Knobs make it misbehave: stay silent, answer
//! garbage, refuse with an error frame, split answers into follow-ups.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use super::codec::{self, Address, DecodeError, Frame, control};
use super::ids::{self, DataId, Format};

/// How the meters answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answer properly.
    Normal,
    /// Answer nothing (requests are still counted).
    Silent,
    /// Answer bytes that are not a valid answer (noise, bad checksums,
    /// cut frames, frames too short), a different kind each time.
    Garbage,
    /// Refuse every read with this error byte.
    Error(u8),
}

struct State {
    meters: Vec<Address>,
    mode: Mode,
    split: bool,
    fixed: HashMap<(Address, DataId), Value>,
    refused: HashMap<DataId, u8>,
    requests: u64,
    started: Instant,
}

/// The simulated meters and their knobs; cheap to clone, shared by every
/// connection serving them.
#[derive(Clone)]
pub struct Meters {
    state: Arc<Mutex<State>>,
}

impl Meters {
    /// Meters at `addresses` (12 digits each, as printed).
    pub fn new(addresses: &[&str]) -> Result<Meters, String> {
        let meters = addresses
            .iter()
            .map(|a| Address::parse(a))
            .collect::<Result<_, _>>()?;
        Ok(Meters {
            state: Arc::new(Mutex::new(State {
                meters,
                mode: Mode::Normal,
                split: false,
                fixed: HashMap::new(),
                refused: HashMap::new(),
                requests: 0,
                started: Instant::now(),
            })),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Change how the meters answer.
    pub fn set_mode(&self, mode: Mode) {
        self.lock().mode = mode;
    }

    /// Split every answer of two value bytes or more into a first frame
    /// (B1h) and a follow-up (92h).
    pub fn set_split(&self, split: bool) {
        self.lock().split = split;
    }

    /// Make `meter`'s identifier `id` (8 hex digits) answer `v` (a number,
    /// or text for dates, times and numbers) instead of its moving value.
    pub fn set_value(&self, meter: &str, id: &str, v: Value) -> Result<(), String> {
        let key = (Address::parse(meter)?, DataId::parse(id)?);
        self.lock().fixed.insert(key, v);
        Ok(())
    }

    /// Refuse reads of `id` with the error byte `err` (e.g. 02h, no data
    /// requested); `None` answers it again.
    pub fn refuse(&self, id: &str, err: Option<u8>) -> Result<(), String> {
        let id = DataId::parse(id)?;
        let mut s = self.lock();
        match err {
            Some(e) => s.refused.insert(id, e),
            None => s.refused.remove(&id),
        };
        Ok(())
    }

    /// Requests received so far.
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    /// Answer requests on `io` until it closes or fails.
    pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&self, mut io: S) {
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 512];
        // the rest of a split answer, waiting for its 12h request
        let mut pending: Option<Vec<u8>> = None;
        loop {
            match codec::decode(&buf) {
                Ok((frame, used)) => {
                    buf.drain(..used);
                    let out = self.answer(&frame, &mut pending);
                    if !out.is_empty() && io.write_all(&out).await.is_err() {
                        return;
                    }
                    continue;
                }
                Err(DecodeError::Incomplete) => {
                    if buf.len() > 1024 {
                        buf.clear();
                    }
                }
                Err(_) => {
                    buf.clear();
                }
            }
            match io.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The bytes to send back for `req` (nothing for no answer).
    fn answer(&self, req: &Frame, pending: &mut Option<Vec<u8>>) -> Vec<u8> {
        let mut s = self.lock();
        s.requests += 1;
        let Some(&meter) = s.meters.iter().find(|m| req.address.matches(m)) else {
            return Vec::new();
        };
        let function = req.control & control::FUNCTION;
        let reply = |c: u8, data: Vec<u8>| {
            codec::encode(
                &Frame {
                    address: meter,
                    control: c,
                    data,
                },
                4,
            )
            .unwrap_or_default()
        };
        let refuse = |err: u8| reply(control::FROM_METER | control::ERROR | function, vec![err]);
        if req.control & control::FROM_METER != 0 {
            return Vec::new();
        }
        match s.mode {
            Mode::Silent => return Vec::new(),
            Mode::Garbage => return garbage(s.requests, meter),
            Mode::Error(e) => return refuse(e),
            Mode::Normal => {}
        }
        let Some(di) = req.data.first_chunk::<4>().map(|d| DataId::from_wire(*d)) else {
            return refuse(0x01);
        };
        if let Some(&e) = s.refused.get(&di) {
            return refuse(e);
        }
        match function {
            control::READ => {
                let Some(value) = value(&s, meter, di) else {
                    return refuse(0x02);
                };
                let mut data = di.wire().to_vec();
                if s.split && value.len() >= 2 {
                    let (a, b) = value.split_at(value.len() / 2);
                    data.extend_from_slice(a);
                    *pending = Some(b.to_vec());
                    return reply(control::READ_OK_MORE, data);
                }
                data.extend_from_slice(&value);
                reply(control::READ_OK, data)
            }
            control::READ_FOLLOW => match (pending.take(), req.data.get(4)) {
                (Some(rest), Some(&seq)) => {
                    let mut data = di.wire().to_vec();
                    data.extend_from_slice(&rest);
                    data.push(seq);
                    reply(control::FROM_METER | control::READ_FOLLOW, data)
                }
                _ => refuse(0x02),
            },
            _ => refuse(0x01),
        }
    }
}

/// `meter`'s value for `di` now: fixed, or moving with time.
fn value(s: &State, meter: Address, di: DataId) -> Option<Vec<u8>> {
    let info = ids::lookup(di)?;
    let v = match s.fixed.get(&(meter, di)) {
        Some(v) => v.clone(),
        None => moving(info, meter, s.started.elapsed().as_secs_f64()),
    };
    ids::encode(info.format, &v).ok()
}

/// A plausible value that changes over time.
fn moving(info: ids::Info, meter: Address, t: f64) -> Value {
    let wave = (t / 5.0).sin();
    let n = f64::from(meter.0[0] & 0x0F);
    let v = match (info.format, info.unit) {
        (Format::Date | Format::Time, _) => return Value::from(clock(info.format)),
        (Format::Digits, _) => return Value::from(meter.to_string()),
        (_, "kWh" | "kvarh" | "kVAh") => 1000.0 * (n + 1.0) + t / 36.0,
        (_, "V") if info.what == "voltage" => 220.0 + 2.0 * wave,
        (_, "V") => 3.6,
        (_, "A") => 5.0 + wave,
        (_, "kW" | "kvar" | "kVA") => 1.1 + 0.1 * wave,
        (_, "Hz") => 50.0 + 0.02 * wave,
        (_, "°C") => 25.0 + wave,
        (_, "min") => (t / 60.0).floor(),
        (_, "") => 0.95 + 0.01 * wave,
        _ => 10.0 + wave,
    };
    Value::from(v)
}

/// Today (`20YY-MM-DD`) or now (`hh:mm:ss`), UTC.
fn clock(format: Format) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (mut days, rem) = (secs / 86_400, secs % 86_400);
    if format == Format::Time {
        return format!("{:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60);
    }
    let leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let mut year = 1970;
    while days >= if leap(year) { 366 } else { 365 } {
        days -= if leap(year) { 366 } else { 365 };
        year += 1;
    }
    let months = [
        31,
        if leap(year) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let mut month = 1;
    for m in months {
        if days < m {
            break;
        }
        days -= m;
        month += 1;
    }
    format!("{year}-{month:02}-{:02}", days + 1)
}

/// Not an answer: a different kind of bad bytes for each request number.
fn garbage(n: u64, meter: Address) -> Vec<u8> {
    let good = codec::encode(
        &Frame {
            address: meter,
            control: control::READ_OK,
            data: vec![0, 0, 1, 2, 0x34, 0x12],
        },
        2,
    )
    .unwrap_or_default();
    match n % 4 {
        // noise with frame starts in it
        0 => (0..40u64)
            .map(|i| (i.wrapping_mul(n | 1).wrapping_mul(37) % 251) as u8 | 0x40)
            .collect(),
        // a bad checksum
        1 => {
            let mut g = good;
            let cs = g.len() - 2;
            g[cs] ^= 0x5A;
            g
        }
        // a frame cut short
        2 => good[..good.len() / 2].to_vec(),
        // a well-formed answer too short to hold a data identifier
        _ => codec::encode(
            &Frame {
                address: meter,
                control: control::READ_OK,
                data: vec![7],
            },
            0,
        )
        .unwrap_or_default(),
    }
}

/// Meters served over TCP, as behind a transparent gateway.
pub struct Simulator {
    meters: Meters,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Simulator {
    /// Serve `meters` on an already-bound listener (bind `127.0.0.1:0` in
    /// tests).
    pub fn start(listener: TcpListener, meters: Meters) -> std::io::Result<Simulator> {
        let addr = listener.local_addr()?;
        let (stop, mut stopped) = watch::channel(false);
        let m = meters.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    accepted = listener.accept() => {
                        if let Ok((sock, _)) = accepted {
                            let m = m.clone();
                            conns.spawn(async move { m.serve(sock).await });
                        }
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
            // dropping the set aborts every connection
        });
        Ok(Simulator {
            meters,
            addr,
            stop,
            task,
        })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its meters' knobs.
    pub fn meters(&self) -> &Meters {
        &self.meters
    }

    /// Stop listening and close every connection.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

//! Registers ↔ values: a point's registers decoded into its JSON value by
//! type, byte order and word order, a value to write encoded back, and
//! exception codes named. Pure: no I/O.
//!
//! A value's bytes are laid out most significant first after two steps:
//! registers are taken in order (`word_order = "big"`, Modbus's usual) or
//! reversed (`"little"`), and each register's two bytes as sent (`byte_order
//! = "big"`) or swapped (`"little"`). Strings use `byte_order` only, are
//! read as UTF-8 (invalid bytes replaced) and lose trailing NULs and spaces.

use serde_json::{Number, Value};
use tokio_modbus::ExceptionCode;

use super::plan::Spec;
use crate::config::{ByteOrder, DataType};
use crate::protocol::PointError;

/// The bytes of `words`, most significant first, by the point's orders.
fn bytes(spec: &Spec, words: &[u16]) -> Vec<u8> {
    let ordered: Box<dyn Iterator<Item = &u16>> =
        if spec.word_order == ByteOrder::Little && spec.data_type != DataType::String {
            Box::new(words.iter().rev())
        } else {
            Box::new(words.iter())
        };
    let mut out = Vec::with_capacity(words.len() * 2);
    for w in ordered {
        let b = w.to_be_bytes();
        match spec.byte_order {
            ByteOrder::Big => out.extend_from_slice(&b),
            ByteOrder::Little => out.extend_from_slice(&[b[1], b[0]]),
        }
    }
    out
}

/// The registers for `bytes` (most significant first): the inverse of
/// [`bytes`].
fn words(spec: &Spec, bytes: &[u8]) -> Vec<u16> {
    let mut out: Vec<u16> = bytes
        .chunks(2)
        .map(|c| {
            let (hi, lo) = (c[0], c.get(1).copied().unwrap_or(0));
            match spec.byte_order {
                ByteOrder::Big => u16::from_be_bytes([hi, lo]),
                ByteOrder::Little => u16::from_be_bytes([lo, hi]),
            }
        })
        .collect();
    if spec.word_order == ByteOrder::Little && spec.data_type != DataType::String {
        out.reverse();
    }
    out
}

/// A float as JSON, keeping an f32's short decimal form (`0.1`, not
/// `0.10000000149011612`).
fn float(v: f64, short: Option<f32>) -> Result<Value, PointError> {
    let v = match short {
        Some(f) => f.to_string().parse::<f64>().unwrap_or(v),
        None => v,
    };
    Number::from_f64(v)
        .map(Value::Number)
        .ok_or_else(|| PointError::new("not a finite number (NaN or infinity)"))
}

/// Decode a register point from exactly its registers.
pub fn decode(spec: &Spec, regs: &[u16]) -> Result<Value, PointError> {
    if regs.len() != usize::from(spec.count) {
        return Err(PointError::new(format!(
            "{} registers for a {}-register value",
            regs.len(),
            spec.count
        )));
    }
    if let Some(bit) = spec.bit {
        let w = regs[0];
        let w = match spec.byte_order {
            ByteOrder::Big => w,
            ByteOrder::Little => w.swap_bytes(),
        };
        return Ok(Value::Bool(w >> bit & 1 == 1));
    }
    let b = bytes(spec, regs);
    let arr = |n: usize| -> [u8; 8] {
        let mut a = [0u8; 8];
        a[..n].copy_from_slice(&b[..n]);
        a
    };
    match spec.data_type {
        DataType::Bool => Ok(Value::Bool(regs[0] != 0)),
        DataType::U16 => Ok(u16::from_be_bytes([b[0], b[1]]).into()),
        DataType::I16 => Ok(i16::from_be_bytes([b[0], b[1]]).into()),
        DataType::U32 => Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]).into()),
        DataType::I32 => Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]).into()),
        DataType::F32 => {
            let f = f32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            float(f64::from(f), Some(f))
        }
        DataType::F64 => float(f64::from_be_bytes(arr(8)), None),
        DataType::String => {
            let text = String::from_utf8_lossy(&b);
            Ok(Value::String(
                text.trim_end_matches(|c: char| c == '\0' || c.is_whitespace())
                    .to_owned(),
            ))
        }
    }
}

/// An integer to write: a JSON integer, or a float that is a whole number
/// (up to the rounding noise scale and offset leave, e.g.
/// 1233.9999999999998 for 123.4 with scale 0.1); within `lo..=hi`. A
/// fraction or a bool is refused, never rounded or converted: the device
/// would hold another value than the one asked for.
fn integer(v: &Value, lo: i64, hi: i64, ty: &str) -> Result<i64, String> {
    let n = match v {
        Value::Number(n) => match n.as_i64() {
            Some(i) => i,
            None => {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if !f.is_finite() || f < lo as f64 - 0.5 || f > hi as f64 + 0.5 {
                    return Err(format!("{v} is out of range ({lo} to {hi})"));
                }
                whole(f).ok_or_else(|| {
                    format!("{v} is not a whole number; a {ty} point takes whole numbers only")
                })?
            }
        },
        Value::Bool(_) => {
            return Err(format!(
                "{v} is not a number; a {ty} point takes numbers only"
            ));
        }
        _ => return Err(format!("{v} is not a number")),
    };
    if n < lo || n > hi {
        return Err(format!("{n} is out of range ({lo} to {hi})"));
    }
    Ok(n)
}

/// `f` as an integer when it is one, allowing for the floating-point noise
/// that scale and offset leave (relative 1e-9, an offset's cancellation
/// included), but never more than 1e-6 or less than 8 units in the last
/// place: a real fraction is refused at any magnitude (1000000000.5 too).
fn whole(f: f64) -> Option<i64> {
    let r = f.round();
    (f.is_finite() && (f - r).abs() <= noise(f) && r.abs() < 9.2e18).then_some(r as i64)
}

/// How far from a whole number `f` may be and still count as one (see
/// [`whole`]).
pub(crate) fn noise(f: f64) -> f64 {
    (1e-9 * f.abs().max(1.0))
        .min(1e-6)
        .max(8.0 * f64::EPSILON * f.abs())
}

fn number(v: &Value) -> Result<f64, String> {
    v.as_f64()
        .filter(|f| f.is_finite())
        .ok_or_else(|| format!("{v} is not a finite number"))
}

/// A number to write to an f32 point: refused beyond f32's range (it
/// would become infinity on the device), rounded to the nearest f32
/// within it.
fn single(v: &Value) -> Result<f32, String> {
    let f = number(v)?;
    let g = f as f32;
    if !g.is_finite() {
        return Err(format!(
            "{v} is out of range for f32 (magnitude at most {:e})",
            f32::MAX
        ));
    }
    Ok(g)
}

/// Encode a value for a register point: its registers, in wire order.
pub fn encode(spec: &Spec, v: &Value) -> Result<Vec<u16>, String> {
    let be: Vec<u8> = match spec.data_type {
        DataType::Bool => return Err("register bits cannot be written".into()),
        DataType::U16 => (integer(v, 0, 0xFFFF, "u16")? as u16)
            .to_be_bytes()
            .to_vec(),
        DataType::I16 => (integer(v, -0x8000, 0x7FFF, "i16")? as i16)
            .to_be_bytes()
            .to_vec(),
        DataType::U32 => (integer(v, 0, 0xFFFF_FFFF, "u32")? as u32)
            .to_be_bytes()
            .to_vec(),
        DataType::I32 => (integer(v, -0x8000_0000, 0x7FFF_FFFF, "i32")? as i32)
            .to_be_bytes()
            .to_vec(),
        DataType::F32 => single(v)?.to_be_bytes().to_vec(),
        DataType::F64 => number(v)?.to_be_bytes().to_vec(),
        DataType::String => {
            let s = v.as_str().ok_or_else(|| format!("{v} is not a string"))?;
            let room = usize::from(spec.count) * 2;
            if s.len() > room {
                return Err(format!(
                    "{} bytes do not fit in {} registers",
                    s.len(),
                    spec.count
                ));
            }
            let mut b = s.as_bytes().to_vec();
            b.resize(room, 0);
            b
        }
    };
    Ok(words(spec, &be))
}

/// A value to write to a coil: `true`/`false`, or 1/0.
pub fn encode_bool(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) if n.as_f64() == Some(1.0) => Ok(true),
        Value::Number(n) if n.as_f64() == Some(0.0) => Ok(false),
        _ => Err(format!("{v} is not a bool (true, false, 1 or 0)")),
    }
}

/// An exception code's name, as the Modbus specification words it.
pub fn exception_name(e: ExceptionCode) -> String {
    match e {
        ExceptionCode::IllegalFunction => "illegal function".into(),
        ExceptionCode::IllegalDataAddress => "illegal data address".into(),
        ExceptionCode::IllegalDataValue => "illegal data value".into(),
        ExceptionCode::ServerDeviceFailure => "server device failure".into(),
        ExceptionCode::Acknowledge => "acknowledge".into(),
        ExceptionCode::ServerDeviceBusy => "server device busy".into(),
        ExceptionCode::MemoryParityError => "memory parity error".into(),
        ExceptionCode::GatewayPathUnavailable => "gateway path unavailable".into(),
        ExceptionCode::GatewayTargetDevice => "gateway target device failed to respond".into(),
        ExceptionCode::Custom(c) => format!("exception code {c:#04x}"),
    }
}

//! Conversions between OPC UA variants and the driver's JSON values.

use opcua::types::{DataValue, Variant};
use serde_json::Value;

use crate::config::DataType;
use crate::protocol::{PointError, PointResult};

/// One point's published raw value from its last data value.
pub(super) fn point_value(dv: &DataValue) -> PointResult {
    if let Some(s) = dv.status.filter(|s| s.is_bad()) {
        return Err(PointError::new(s.to_string()));
    }
    match &dv.value {
        None => Ok(Value::Null),
        Some(v) => to_json(v).map_err(PointError::new),
    }
}

pub(super) fn float(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// A variant as JSON: numbers, booleans and strings as themselves, times as
/// RFC 3339, byte strings as base64, arrays as arrays.
pub fn to_json(v: &Variant) -> Result<Value, String> {
    Ok(match v {
        Variant::Empty => Value::Null,
        Variant::Boolean(b) => Value::Bool(*b),
        Variant::SByte(n) => (*n).into(),
        Variant::Byte(n) => (*n).into(),
        Variant::Int16(n) => (*n).into(),
        Variant::UInt16(n) => (*n).into(),
        Variant::Int32(n) => (*n).into(),
        Variant::UInt32(n) => (*n).into(),
        Variant::Int64(n) => (*n).into(),
        Variant::UInt64(n) => (*n).into(),
        Variant::Float(f) => float(f64::from(*f)),
        Variant::Double(f) => float(*f),
        Variant::String(s) => s.value().clone().map_or(Value::Null, Value::String),
        Variant::DateTime(t) => Value::String(t.to_rfc3339()),
        Variant::Guid(g) => Value::String(g.to_string()),
        Variant::StatusCode(c) => Value::String(c.to_string()),
        Variant::ByteString(b) => {
            if b.is_null() {
                Value::Null
            } else {
                Value::String(b.as_base64())
            }
        }
        Variant::QualifiedName(q) => Value::String(q.name.as_ref().to_string()),
        Variant::LocalizedText(t) => Value::String(t.text.as_ref().to_string()),
        Variant::NodeId(n) => Value::String(n.to_string()),
        Variant::ExpandedNodeId(n) => Value::String(n.to_string()),
        Variant::Variant(inner) => to_json(inner)?,
        Variant::Array(a) => Value::Array(a.values.iter().map(to_json).collect::<Result<_, _>>()?),
        other => {
            return Err(format!(
                "values of type {} are not supported",
                type_name(other)
            ));
        }
    })
}

pub(super) fn type_name(v: &Variant) -> String {
    let s = format!("{v:?}");
    s.split(['(', ' ', '{'])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The scalar type of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Bool,
    SByte,
    Byte,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    F32,
    F64,
    Str,
}

impl From<DataType> for Kind {
    fn from(t: DataType) -> Kind {
        match t {
            DataType::Bool => Kind::Bool,
            DataType::U16 => Kind::U16,
            DataType::I16 => Kind::I16,
            DataType::U32 => Kind::U32,
            DataType::I32 => Kind::I32,
            DataType::F32 => Kind::F32,
            DataType::F64 => Kind::F64,
            DataType::String => Kind::Str,
        }
    }
}

impl Kind {
    pub(super) fn of(v: &Variant) -> Option<Kind> {
        Some(match v {
            Variant::Boolean(_) => Kind::Bool,
            Variant::SByte(_) => Kind::SByte,
            Variant::Byte(_) => Kind::Byte,
            Variant::Int16(_) => Kind::I16,
            Variant::UInt16(_) => Kind::U16,
            Variant::Int32(_) => Kind::I32,
            Variant::UInt32(_) => Kind::U32,
            Variant::Int64(_) => Kind::I64,
            Variant::UInt64(_) => Kind::U64,
            Variant::Float(_) => Kind::F32,
            Variant::Double(_) => Kind::F64,
            Variant::String(_) => Kind::Str,
            _ => return None,
        })
    }

    /// `v` as a variant of this type, or why not.
    pub(super) fn variant(self, v: &Value) -> Result<Variant, String> {
        let int = || -> Result<i128, String> {
            let n = v
                .as_number()
                .ok_or_else(|| format!("{v} is not a number"))?;
            if let Some(i) = n.as_i64() {
                Ok(i128::from(i))
            } else if let Some(u) = n.as_u64() {
                Ok(i128::from(u))
            } else {
                // A whole number, up to the rounding noise that scale
                // and offset leave (as for Modbus); a fraction is
                // refused, never rounded.
                let f = n.as_f64().unwrap_or(f64::NAN);
                let r = f.round();
                if f.is_finite()
                    && (f - r).abs() <= crate::modbus::codec::noise(f)
                    && r.abs() < 1.9e19
                {
                    Ok(r as i128)
                } else {
                    Err(format!("{v} is not an integer"))
                }
            }
        };
        let range = |name: &str| format!("{v} is out of range for {name}");
        Ok(match self {
            Kind::Bool => match v {
                Value::Bool(b) => Variant::Boolean(*b),
                Value::Number(n) if n.as_u64() == Some(0) => Variant::Boolean(false),
                Value::Number(n) if n.as_u64() == Some(1) => Variant::Boolean(true),
                _ => return Err(format!("{v} is not a boolean")),
            },
            Kind::SByte => Variant::SByte(i8::try_from(int()?).map_err(|_| range("SByte"))?),
            Kind::Byte => Variant::Byte(u8::try_from(int()?).map_err(|_| range("Byte"))?),
            Kind::I16 => Variant::Int16(i16::try_from(int()?).map_err(|_| range("Int16"))?),
            Kind::U16 => Variant::UInt16(u16::try_from(int()?).map_err(|_| range("UInt16"))?),
            Kind::I32 => Variant::Int32(i32::try_from(int()?).map_err(|_| range("Int32"))?),
            Kind::U32 => Variant::UInt32(u32::try_from(int()?).map_err(|_| range("UInt32"))?),
            Kind::I64 => Variant::Int64(i64::try_from(int()?).map_err(|_| range("Int64"))?),
            Kind::U64 => Variant::UInt64(u64::try_from(int()?).map_err(|_| range("UInt64"))?),
            Kind::F32 => {
                let f = v.as_f64().ok_or_else(|| format!("{v} is not a number"))?;
                let g = f as f32;
                if f.is_finite() && !g.is_finite() {
                    return Err(range("Float"));
                }
                Variant::Float(g)
            }
            Kind::F64 => Variant::Double(v.as_f64().ok_or_else(|| format!("{v} is not a number"))?),
            Kind::Str => match v {
                Value::String(s) => Variant::String(s.as_str().into()),
                _ => return Err(format!("{v} is not a string")),
            },
        })
    }
}

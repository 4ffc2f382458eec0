//! Values: what fields, expressions and aggregates produce; serialised as JSON.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// A dynamically typed SQL value.
///
/// Equality and hashing are structural (used for GROUP BY keys): `Int(1)` and
/// `Float(1.0)` are different values, floats compare by value with `-0.0 == 0.0`.
/// SQL comparison (`=`, `<`) is a different, type-aware operation.
#[derive(Debug, Clone, Default)]
pub enum Value {
    /// SQL NULL / JSON null; also a missing field.
    #[default]
    Null,
    /// A boolean.
    Bool(bool),
    /// A 64-bit signed integer.
    Int(i64),
    /// A finite 64-bit float.
    Float(f64),
    /// A UTF-8 string.
    Str(Arc<str>),
    /// Raw bytes (e.g. `payload()`); serialised as a base64 string.
    Bytes(Arc<[u8]>),
    /// A JSON array.
    Array(Vec<Value>),
    /// A JSON object, fields in their original order.
    Object(Vec<(Arc<str>, Value)>),
}

impl Value {
    /// The type's name as used in error messages (`int`, `string`...).
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "string",
            Value::Bytes(_) => "bytes",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    /// Whether this is NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The string, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The number as a float, if this is an int or a float.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// A string value.
    pub fn str(s: &str) -> Value {
        Value::Str(Arc::from(s))
    }

    /// A float, or NULL when it is not finite (JSON cannot carry NaN or infinity).
    pub(crate) fn float_or_null(f: f64) -> Value {
        if f.is_finite() {
            Value::Float(f)
        } else {
            Value::Null
        }
    }

    /// Looks up a field of an object.
    pub fn field(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Object(fields) => fields
                .iter()
                .rev()
                .find(|(k, _)| &**k == name)
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Element `i` of an array; negative indexes count from the end.
    pub fn index(&self, i: i64) -> Option<&Value> {
        match self {
            Value::Array(items) => {
                let len = items.len() as i64;
                let i = if i < 0 { len + i } else { i };
                usize::try_from(i).ok().and_then(|i| items.get(i))
            }
            _ => None,
        }
    }

    /// Parses JSON text into a value.
    pub fn from_json(text: &[u8]) -> Option<Value> {
        serde_json::from_slice(text).ok()
    }

    /// The value as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// SQL ordering of two values of comparable types (numbers with numbers,
    /// strings with strings, bools with bools, bytes with bytes); `None` otherwise.
    pub(crate) fn sql_cmp(&self, other: &Value) -> Option<Ordering> {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) => Some(a.cmp(b)),
            (Value::Int(a), Value::Float(b)) => cmp_int_float(*a, *b),
            (Value::Float(a), Value::Int(b)) => cmp_int_float(*b, *a).map(Ordering::reverse),
            (Value::Float(a), Value::Float(b)) => a.partial_cmp(b),
            (Value::Str(a), Value::Str(b)) => Some(a.cmp(b)),
            (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
            (Value::Bytes(a), Value::Bytes(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }

    /// SQL equality of two non-NULL values: numbers by value, arrays and
    /// objects structurally, values of different types are unequal.
    pub(crate) fn sql_eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Array(a), Value::Array(b)) => {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.sql_eq(y))
            }
            (Value::Object(_), Value::Object(_)) => self == other,
            _ => self.sql_cmp(other) == Some(Ordering::Equal),
        }
    }
}

/// Orders an INT and a FLOAT by their exact values (converting the INT to a
/// FLOAT would round it above 2^53); `None` for NaN.
fn cmp_int_float(i: i64, f: f64) -> Option<Ordering> {
    // ±2^63 are exact doubles; every i64 is in [-2^63, 2^63).
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if f.is_nan() {
        return None;
    }
    if f >= TWO_63 {
        return Some(Ordering::Less);
    }
    if f < -TWO_63 {
        return Some(Ordering::Greater);
    }
    // In range, the whole part of `f` is an exact i64.
    let whole = f.trunc();
    Some(i.cmp(&(whole as i64)).then_with(|| {
        let frac = f - whole;
        if frac > 0.0 {
            Ordering::Less
        } else if frac < 0.0 {
            Ordering::Greater
        } else {
            Ordering::Equal
        }
    }))
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a == b || (a.is_nan() && b.is_nan()),
            (Value::Str(a), Value::Str(b)) => a == b,
            (Value::Bytes(a), Value::Bytes(b)) => a == b,
            (Value::Array(a), Value::Array(b)) => a == b,
            (Value::Object(a), Value::Object(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Value {}

impl Hash for Value {
    fn hash<H: Hasher>(&self, h: &mut H) {
        std::mem::discriminant(self).hash(h);
        match self {
            Value::Null => {}
            Value::Bool(b) => b.hash(h),
            Value::Int(i) => i.hash(h),
            Value::Float(f) => (if *f == 0.0 { 0.0f64 } else { *f }).to_bits().hash(h),
            Value::Str(s) => s.hash(h),
            Value::Bytes(b) => b.hash(h),
            Value::Array(a) => a.hash(h),
            Value::Object(o) => o.hash(h),
        }
    }
}

impl fmt::Display for Value {
    /// Strings without quotes, bytes as base64, everything else as JSON.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => f.write_str(s),
            Value::Bytes(b) => f.write_str(&crate::codec::base64_encode(b)),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => f.write_str(&format_float(*x)),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Null => f.write_str("null"),
            other => f.write_str(&other.to_json()),
        }
    }
}

/// A float as JSON writes it (`22.0`, `71.6`, `1e21`).
pub(crate) fn format_float(x: f64) -> String {
    serde_json::to_string(&x).unwrap_or_else(|_| "null".to_string())
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(f) if f.is_finite() => s.serialize_f64(*f),
            Value::Float(_) => s.serialize_unit(),
            Value::Str(t) => s.serialize_str(t),
            Value::Bytes(b) => s.serialize_str(&crate::codec::base64_encode(b)),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(v)?;
                }
                seq.end()
            }
            Value::Object(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(&**k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E: de::Error>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Int(i))
    }
    fn visit_u64<E: de::Error>(self, u: u64) -> Result<Value, E> {
        Ok(i64::try_from(u).map_or(Value::Float(u as f64), Value::Int))
    }
    fn visit_f64<E: de::Error>(self, f: f64) -> Result<Value, E> {
        Ok(Value::float_or_null(f))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Value, E> {
        Ok(Value::Str(Arc::from(s)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields: Vec<(Arc<str>, Value)> = Vec::new();
        while let Some(k) = map.next_key::<KeyStr>()? {
            let v = map.next_value()?;
            fields.push((k.0, v));
        }
        Ok(Value::Object(fields))
    }
}

/// An object key, read without an intermediate `String`.
pub(crate) struct KeyStr(pub Arc<str>);

impl<'de> Deserialize<'de> for KeyStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KeyStr, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = KeyStr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<KeyStr, E> {
                Ok(KeyStr(Arc::from(s)))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_keeps_order_and_types() {
        let v =
            Value::from_json(br#"{"b":1,"a":[1.5,"x",null,true],"c":{"d":18446744073709551615}}"#)
                .expect("json");
        assert_eq!(
            v.to_json(),
            r#"{"b":1,"a":[1.5,"x",null,true],"c":{"d":1.8446744073709552e+19}}"#
        );
        assert_eq!(Value::Bytes(Arc::from(&b"hi"[..])).to_json(), r#""aGk=""#);
        assert_eq!(Value::Float(22.0).to_string(), "22.0");
    }

    #[test]
    fn sql_comparison() {
        assert!(Value::Int(1).sql_eq(&Value::Float(1.0)));
        assert_ne!(Value::Int(1), Value::Float(1.0));
        assert_eq!(Value::str("a").sql_cmp(&Value::Int(1)), None);
        assert_eq!(Value::Float(-0.0), Value::Float(0.0));
    }

    #[test]
    fn int_and_float_compare_by_exact_value() {
        use Ordering::*;
        let c = |i: i64, f: f64| Value::Int(i).sql_cmp(&Value::Float(f));
        assert_eq!(
            c(9_007_199_254_740_993, 9_007_199_254_740_992.0),
            Some(Greater)
        );
        assert_eq!(
            c(9_007_199_254_740_992, 9_007_199_254_740_992.0),
            Some(Equal)
        );
        assert_eq!(c(i64::MAX, 9_223_372_036_854_775_807.0), Some(Less));
        assert_eq!(c(i64::MIN, -9_223_372_036_854_775_808.0), Some(Equal));
        assert_eq!(c(i64::MIN, -9.3e18), Some(Greater));
        assert_eq!(c(2, 2.5), Some(Less));
        assert_eq!(c(-2, -2.5), Some(Greater));
        assert_eq!(c(-3, -2.5), Some(Less));
        assert_eq!(c(0, -0.0), Some(Equal));
        assert_eq!(c(1, f64::NAN), None);
        assert_eq!(Value::Float(2.5).sql_cmp(&Value::Int(2)), Some(Greater));
    }
}

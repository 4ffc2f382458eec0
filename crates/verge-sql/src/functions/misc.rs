//! Time, JSON, hashing, byte-encoding and NULL-helper functions.

use std::sync::Arc;

use md5::Digest;

use super::{Func, want_data, want_str};
use crate::codec;
use crate::time;
use crate::value::Value;

pub(super) fn call(func: Func, name: &str, args: &[Value]) -> Result<Value, String> {
    let a = &args[0];
    Ok(match func {
        Func::FormatTime => Value::str(&time::format(
            want_time(name, a)?,
            want_str(name, &args[1])?,
        )),
        Func::ParseTime => {
            let s = want_str(name, a)?;
            Value::Int(
                time::parse(s)
                    .ok_or_else(|| format!("parse_time() cannot read '{s}' as an RFC 3339 time"))?,
            )
        }
        Func::Year
        | Func::Month
        | Func::Day
        | Func::Hour
        | Func::Minute
        | Func::Second
        | Func::DayOfWeek => {
            let c = time::civil(want_time(name, a)?);
            Value::Int(match func {
                Func::Year => c.year,
                Func::Month => i64::from(c.month),
                Func::Day => i64::from(c.day),
                Func::Hour => i64::from(c.hour),
                Func::Minute => i64::from(c.minute),
                Func::Second => i64::from(c.second),
                _ => i64::from(c.weekday),
            })
        }
        Func::ToJson => Value::str(&a.to_json()),
        Func::ParseJson => {
            let s = want_str(name, a)?;
            Value::from_json(s.as_bytes()).ok_or("parse_json() got invalid JSON")?
        }
        Func::JsonGet => {
            let path = want_str(name, &args[1])?;
            let segs =
                parse_path(path).ok_or_else(|| format!("json_get() path '{path}' is not valid"))?;
            let parsed;
            let root = match a {
                Value::Str(s) => {
                    parsed = Value::from_json(s.as_bytes()).ok_or("json_get() got invalid JSON")?;
                    &parsed
                }
                other => other,
            };
            let mut cur = Some(root);
            for seg in &segs {
                cur = match seg {
                    Seg::Field(f) => cur.and_then(|v| v.field(f)),
                    Seg::Index(i) => cur.and_then(|v| v.index(*i)),
                };
            }
            cur.cloned().unwrap_or(Value::Null)
        }
        Func::ArrayLength => match a {
            Value::Array(items) => Value::Int(items.len() as i64),
            other => {
                return Err(format!(
                    "array_length() expects an array, found {}",
                    other.type_name()
                ));
            }
        },
        Func::ObjectKeys => match a {
            Value::Object(fields) => {
                Value::Array(fields.iter().map(|(k, _)| Value::Str(k.clone())).collect())
            }
            other => {
                return Err(format!(
                    "object_keys() expects an object, found {}",
                    other.type_name()
                ));
            }
        },
        Func::Md5 => Value::str(&codec::hex(&md5::Md5::digest(want_data(name, a)?))),
        Func::Sha1 => Value::str(&codec::hex(&sha1::Sha1::digest(want_data(name, a)?))),
        Func::Sha256 => Value::str(&codec::hex(&sha2::Sha256::digest(want_data(name, a)?))),
        Func::Crc32 => Value::str(&format!("{:08x}", codec::crc32(want_data(name, a)?))),
        Func::Base64Encode => Value::str(&codec::base64_encode(want_data(name, a)?)),
        Func::Base64Decode => {
            let bytes = codec::base64_decode(want_str(name, a)?)
                .ok_or("base64_decode() got invalid base64")?;
            Value::Bytes(Arc::from(bytes))
        }
        Func::Hex => Value::str(&codec::hex(want_data(name, a)?)),
        Func::Coalesce | Func::Ifnull => args
            .iter()
            .find(|v| !v.is_null())
            .cloned()
            .unwrap_or(Value::Null),
        Func::Nullif => {
            if !a.is_null() && !args[1].is_null() && a.sql_eq(&args[1]) {
                Value::Null
            } else {
                a.clone()
            }
        }
        _ => Value::Null,
    })
}

/// Checks a json_get() path.
pub(super) fn check_path(path: &str) -> Result<(), String> {
    parse_path(path)
        .map(drop)
        .ok_or_else(|| format!("json_get() path '{path}' is not valid"))
}

/// A time argument: INT milliseconds, or FLOAT milliseconds rounded down to
/// a whole millisecond (an error outside the INT range).
fn want_time(name: &str, v: &Value) -> Result<i64, String> {
    match v {
        Value::Int(i) => Ok(*i),
        Value::Float(f) => time::float_ms(*f).ok_or_else(|| {
            format!(
                "{name}() expects milliseconds within the INT range, found {}",
                crate::value::format_float(*f)
            )
        }),
        other => Err(format!(
            "{name}() expects milliseconds (a number), found {}",
            other.type_name()
        )),
    }
}

enum Seg {
    Field(String),
    Index(i64),
}

/// Parses `a.b[0].c` (an optional leading `$.` or `$` is allowed).
fn parse_path(p: &str) -> Option<Vec<Seg>> {
    let p = p.strip_prefix('$').unwrap_or(p);
    let p = p.strip_prefix('.').unwrap_or(p);
    let mut out = Vec::new();
    let b = p.as_bytes();
    let mut i = 0;
    let mut need_name = true;
    while i < b.len() {
        match b[i] {
            b'[' => {
                let close = p[i..].find(']')? + i;
                out.push(Seg::Index(p[i + 1..close].trim().parse().ok()?));
                i = close + 1;
                need_name = false;
            }
            b'.' if !need_name => {
                i += 1;
                need_name = true;
            }
            _ if need_name => {
                let end = p[i..].find(['.', '[']).map_or(p.len(), |e| e + i);
                if end == i {
                    return None;
                }
                out.push(Seg::Field(p[i..end].to_string()));
                i = end;
                need_name = false;
            }
            _ => return None,
        }
    }
    if need_name && !out.is_empty() {
        return None;
    }
    Some(out)
}

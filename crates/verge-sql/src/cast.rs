//! CAST(x AS INT | FLOAT | STRING | BOOL | JSON).

use std::sync::Arc;

use crate::ast::CastTy;
use crate::functions::math::float_to_int;
use crate::value::Value;

/// Converts `v` to `ty`; NULL stays NULL.
pub(crate) fn cast(v: Value, ty: CastTy) -> Result<Value, String> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    let fail = |v: &Value, to: &str| format!("cannot cast {} {} to {to}", v.type_name(), short(v));
    Ok(match ty {
        CastTy::Int => match &v {
            Value::Int(_) => v,
            Value::Float(f) => Value::Int(float_to_int(f.trunc())?),
            Value::Bool(b) => Value::Int(i64::from(*b)),
            Value::Str(s) => {
                let t = s.trim();
                match t.parse::<i64>() {
                    Ok(i) => Value::Int(i),
                    Err(_) => match t.parse::<f64>() {
                        Ok(f) if f.is_finite() => Value::Int(float_to_int(f.trunc())?),
                        _ => return Err(fail(&v, "INT")),
                    },
                }
            }
            _ => return Err(fail(&v, "INT")),
        },
        CastTy::Float => match &v {
            Value::Int(i) => Value::Float(*i as f64),
            Value::Float(_) => v,
            Value::Bool(b) => Value::Float(if *b { 1.0 } else { 0.0 }),
            Value::Str(s) => match s.trim().parse::<f64>() {
                Ok(f) if f.is_finite() => Value::Float(f),
                _ => return Err(fail(&v, "FLOAT")),
            },
            _ => return Err(fail(&v, "FLOAT")),
        },
        CastTy::String => match &v {
            Value::Str(_) => v,
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => Value::str(s),
                Err(_) => return Err("cannot cast bytes to STRING: not valid UTF-8".into()),
            },
            other => Value::Str(Arc::from(other.to_string())),
        },
        CastTy::Bool => match &v {
            Value::Bool(_) => v,
            Value::Int(i) => Value::Bool(*i != 0),
            Value::Float(f) => Value::Bool(*f != 0.0),
            Value::Str(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "t" | "yes" | "1" => Value::Bool(true),
                "false" | "f" | "no" | "0" => Value::Bool(false),
                _ => return Err(fail(&v, "BOOL")),
            },
            _ => return Err(fail(&v, "BOOL")),
        },
        CastTy::Json => match &v {
            Value::Str(s) => Value::from_json(s.as_bytes()).ok_or_else(|| fail(&v, "JSON"))?,
            Value::Bytes(b) => Value::from_json(b)
                .ok_or_else(|| "cannot cast bytes to JSON: not valid JSON".to_string())?,
            _ => v,
        },
    })
}

/// A short rendering of a value for error messages.
fn short(v: &Value) -> String {
    let s = v.to_json();
    if s.chars().count() > 40 {
        format!("{}...", s.chars().take(40).collect::<String>())
    } else {
        s
    }
}

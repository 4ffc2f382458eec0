//! String functions: lower, upper, trim, length, substring, concat, replace, split, starts_with, ends_with, contains, lpad, rpad.

use std::sync::Arc;

use super::{Func, want_int, want_str};
use crate::value::Value;

/// Longest string lpad/rpad may produce, in characters.
const MAX_PAD: i64 = 65_536;

/// The length argument of lpad/rpad, checked.
pub(super) fn pad_len(name: &str, n: i64) -> Result<usize, String> {
    if (0..=MAX_PAD).contains(&n) {
        Ok(n as usize)
    } else {
        Err(format!("{name}() length must be between 0 and {MAX_PAD}"))
    }
}

pub(super) fn call(func: Func, name: &str, args: &[Value]) -> Result<Value, String> {
    if func == Func::Concat {
        let mut s = String::new();
        for v in args.iter().filter(|v| !v.is_null()) {
            s.push_str(&v.to_string());
        }
        return Ok(Value::Str(Arc::from(s)));
    }
    let a = want_str(name, &args[0])?;
    let arg = |i: usize| want_str(name, &args[i]);
    Ok(match func {
        Func::Lower => Value::str(&a.to_lowercase()),
        Func::Upper => Value::str(&a.to_uppercase()),
        Func::Trim => Value::str(a.trim()),
        Func::Ltrim => Value::str(a.trim_start()),
        Func::Rtrim => Value::str(a.trim_end()),
        Func::Length => Value::Int(a.chars().count() as i64),
        Func::Substring => {
            // 1-based start; a start before 1 eats into the length like SQL does.
            let start = want_int(name, &args[1])?;
            let len = match args.get(2) {
                Some(l) => want_int(name, l)?,
                None => i64::MAX,
            };
            if len < 0 {
                return Err("substring() length must not be negative".into());
            }
            let end = start.saturating_add(len);
            let from = start.max(1) - 1;
            let take = end.saturating_sub(1).saturating_sub(from).max(0);
            let out: String = a
                .chars()
                .skip(usize::try_from(from).unwrap_or(usize::MAX))
                .take(usize::try_from(take).unwrap_or(usize::MAX))
                .collect();
            Value::str(&out)
        }
        Func::Replace => {
            let from = arg(1)?;
            if from.is_empty() {
                args[0].clone()
            } else {
                Value::str(&a.replace(from, arg(2)?))
            }
        }
        Func::Split => {
            let sep = arg(1)?;
            let parts: Vec<Value> = if sep.is_empty() {
                a.chars()
                    .map(|c| Value::str(c.encode_utf8(&mut [0; 4])))
                    .collect()
            } else {
                a.split(sep).map(Value::str).collect()
            };
            Value::Array(parts)
        }
        Func::StartsWith => Value::Bool(a.starts_with(arg(1)?)),
        Func::EndsWith => Value::Bool(a.ends_with(arg(1)?)),
        Func::Contains => Value::Bool(a.contains(arg(1)?)),
        Func::Lpad | Func::Rpad => {
            let n = pad_len(name, want_int(name, &args[1])?)?;
            let pad = if args.len() > 2 { arg(2)? } else { " " };
            let have = a.chars().count();
            if have >= n {
                return Ok(Value::str(&a.chars().take(n).collect::<String>()));
            }
            if pad.is_empty() {
                return Ok(args[0].clone());
            }
            let fill: String = pad.chars().cycle().take(n - have).collect();
            if func == Func::Lpad {
                Value::str(&(fill + a))
            } else {
                Value::str(&(a.to_string() + &fill))
            }
        }
        _ => Value::Null,
    })
}

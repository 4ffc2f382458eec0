//! Math functions: abs, ceil, floor, round, sqrt, pow, exp, ln, log10, mod, sign, greatest, least.

use std::cmp::Ordering;

use super::{Func, want_f64, want_int};
use crate::ast::BinOp;
use crate::value::Value;

pub(super) fn call(func: Func, name: &str, args: &[Value]) -> Result<Value, String> {
    let a = &args[0];
    Ok(match func {
        Func::Abs => match a {
            Value::Int(i) => Value::Int(i.checked_abs().ok_or("integer overflow")?),
            _ => Value::Float(want_f64(name, a)?.abs()),
        },
        Func::Ceil => to_int(a, name, f64::ceil)?,
        Func::Floor => to_int(a, name, f64::floor)?,
        Func::Round => match args.get(1) {
            None => to_int(a, name, f64::round)?,
            Some(n) => {
                want_f64(name, a)?;
                round_digits(a, round_n(want_int(name, n)?)?)?
            }
        },
        Func::Sqrt => finite(name, args, want_f64(name, a)?.sqrt())?,
        Func::Pow => finite(
            name,
            args,
            want_f64(name, a)?.powf(want_f64(name, &args[1])?),
        )?,
        Func::Exp => finite(name, args, want_f64(name, a)?.exp())?,
        Func::Ln => finite(name, args, want_f64(name, a)?.ln())?,
        Func::Log10 => finite(name, args, want_f64(name, a)?.log10())?,
        Func::Mod => {
            want_f64(name, a)?;
            want_f64(name, &args[1])?;
            arith(BinOp::Mod, a, &args[1])?
        }
        Func::Sign => {
            let x = want_f64(name, a)?;
            Value::Int(if x > 0.0 {
                1
            } else if x < 0.0 {
                -1
            } else {
                0
            })
        }
        Func::Greatest => extreme(name, args, Ordering::Greater)?,
        Func::Least => extreme(name, args, Ordering::Less)?,
        _ => Value::Null,
    })
}

/// A function's FLOAT result, or an error when it is not a finite number:
/// overflow (`exp(710)`, `pow(2, 1024)`) and undefined results (`sqrt(-1)`,
/// `ln(0)`, `pow(0, -1)`) are errors, like division by zero, never NULL.
fn finite(name: &str, args: &[Value], r: f64) -> Result<Value, String> {
    if r.is_finite() {
        return Ok(Value::Float(r));
    }
    let args: Vec<String> = args.iter().map(Value::to_string).collect();
    Err(format!(
        "{name}({}) is not a finite number",
        args.join(", ")
    ))
}

/// The digits argument of `round(x, n)`, checked.
pub(crate) fn round_n(n: i64) -> Result<i32, String> {
    if (-18..=18).contains(&n) {
        Ok(n as i32)
    } else {
        Err("round() digits must be between -18 and 18".into())
    }
}

/// `round(x, n)`: rounds the decimal number `x` is written as (for a FLOAT its
/// shortest form, which reads back as the same double) half away from zero to
/// `n` decimals, in decimal arithmetic, and returns the FLOAT nearest to the
/// result. An INT with `n < 0` is rounded in integer arithmetic.
fn round_digits(x: &Value, n: i32) -> Result<Value, String> {
    let f = match *x {
        Value::Int(i) if n >= 0 => return Ok(Value::Float(i as f64)),
        Value::Int(i) => {
            // 10^18 at most, so this fits; the rounded value may not fit an i64.
            let p = 10i128.pow(n.unsigned_abs());
            let (q, r) = (i128::from(i) / p, i128::from(i) % p);
            let q = if 2 * r.abs() >= p { q + r.signum() } else { q };
            return Ok(Value::Float((q * p) as f64));
        }
        Value::Float(f) => f,
        _ => return Err("round() expects a number".into()),
    };
    // `{:e}` writes the shortest digits that read back as `f`: d.ddde±x.
    let text = format!("{:e}", f.abs());
    let (mantissa, exp) = text.split_once('e').unwrap_or((&text, "0"));
    let exp: i64 = exp
        .parse()
        .map_err(|_| "round() cannot read its argument")?;
    let digits: Vec<u8> = mantissa.bytes().filter(u8::is_ascii_digit).collect();
    // Digits kept: those at or above the position of 10^-n.
    let keep = exp + 1 + i64::from(n);
    if keep >= digits.len() as i64 {
        return Ok(Value::Float(f));
    }
    let mut kept: u64 = 0;
    for d in digits.iter().take(usize::try_from(keep).unwrap_or(0)) {
        kept = kept * 10 + u64::from(d - b'0');
    }
    let next = usize::try_from(keep).ok().and_then(|k| digits.get(k));
    if next.is_some_and(|d| *d >= b'5') {
        kept += 1;
    }
    if kept == 0 {
        return Ok(Value::Float(0.0));
    }
    let r: f64 = format!("{kept}e{}", -n)
        .parse()
        .map_err(|_| "round() cannot read its result")?;
    let r = if f < 0.0 { -r } else { r };
    if r.is_finite() {
        Ok(Value::Float(r))
    } else {
        Err("round() result is out of the float range".into())
    }
}

/// Applies a rounding function and returns an int.
fn to_int(a: &Value, name: &str, f: fn(f64) -> f64) -> Result<Value, String> {
    match a {
        Value::Int(i) => Ok(Value::Int(*i)),
        _ => float_to_int(f(want_f64(name, a)?)).map(Value::Int),
    }
}

/// A whole float as an int, or an error when it is out of range.
pub(crate) fn float_to_int(f: f64) -> Result<i64, String> {
    // ±2^63 are exact in f64; the range excludes +2^63, which does not fit.
    if (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f) {
        Ok(f as i64)
    } else {
        Err(format!(
            "{} is out of the integer range",
            crate::value::format_float(f)
        ))
    }
}

/// The greatest/least non-NULL argument.
fn extreme(name: &str, args: &[Value], want: Ordering) -> Result<Value, String> {
    let mut best: Option<&Value> = None;
    for v in args.iter().filter(|v| !v.is_null()) {
        best = Some(match best {
            None => v,
            Some(b) => match v.sql_cmp(b) {
                Some(o) if o == want => v,
                Some(_) => b,
                None => {
                    return Err(format!(
                        "{name}() cannot compare {} and {}",
                        b.type_name(),
                        v.type_name()
                    ));
                }
            },
        });
    }
    Ok(best.cloned().unwrap_or(Value::Null))
}

/// Arithmetic on two non-NULL values: ints stay ints (checked), anything with a float is float.
pub(crate) fn arith(op: BinOp, a: &Value, b: &Value) -> Result<Value, String> {
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => {
            let (x, y) = (*x, *y);
            let r = match op {
                BinOp::Add => x.checked_add(y),
                BinOp::Sub => x.checked_sub(y),
                BinOp::Mul => x.checked_mul(y),
                BinOp::Div | BinOp::Mod if y == 0 => return Err("division by zero".into()),
                BinOp::Div => x.checked_div(y),
                // i64::MIN % -1 is 0; only the quotient overflows.
                _ => Some(x.wrapping_rem(y)),
            };
            r.map(Value::Int).ok_or_else(|| "integer overflow".into())
        }
        (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
            let (x, y) = (a.as_f64().unwrap_or(0.0), b.as_f64().unwrap_or(0.0));
            let r = match op {
                BinOp::Add => x + y,
                BinOp::Sub => x - y,
                BinOp::Mul => x * y,
                BinOp::Div | BinOp::Mod if y == 0.0 => return Err("division by zero".into()),
                BinOp::Div => x / y,
                _ => x % y,
            };
            if r.is_finite() {
                Ok(Value::Float(r))
            } else {
                Err("float overflow".into())
            }
        }
        _ => {
            let verb = match op {
                BinOp::Add => "add",
                BinOp::Sub => "subtract",
                BinOp::Mul => "multiply",
                BinOp::Div => "divide",
                _ => "take the remainder of",
            };
            Err(format!(
                "cannot {verb} {} and {}",
                a.type_name(),
                b.type_name()
            ))
        }
    }
}

//! Aggregate functions: specs compiled from the SQL and the accumulators that fold values.

use std::cmp::Ordering;

use crate::expr::CExpr;
use crate::value::Value;

/// Which aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AggKind {
    CountStar,
    Count,
    Sum,
    Avg,
    Min,
    Max,
    First,
    Last,
    Stddev,
    /// percentile(x, p) and median(x) (p = 0.5).
    Percentile,
    Collect,
}

/// One aggregate call of a query.
#[derive(Debug)]
pub(crate) struct AggSpec {
    pub kind: AggKind,
    /// The argument (None for count(*)).
    pub arg: Option<CExpr>,
    /// The percentile, 0–1.
    pub p: f64,
    /// The call as written, for error messages.
    pub text: String,
}

/// The running state of one aggregate in one group.
#[derive(Debug, Clone)]
pub(crate) enum Acc {
    Count(i64),
    Sum {
        int: i64,
        float: f64,
        is_float: bool,
        any: bool,
    },
    Avg {
        sum: f64,
        n: i64,
    },
    Pick(Value),
    Stddev {
        n: i64,
        mean: f64,
        m2: f64,
    },
    Values(Vec<Value>),
}

impl Acc {
    /// A fresh accumulator.
    pub fn new(kind: AggKind) -> Acc {
        match kind {
            AggKind::CountStar | AggKind::Count => Acc::Count(0),
            AggKind::Sum => Acc::Sum {
                int: 0,
                float: 0.0,
                is_float: false,
                any: false,
            },
            AggKind::Avg => Acc::Avg { sum: 0.0, n: 0 },
            AggKind::Min | AggKind::Max | AggKind::First | AggKind::Last => Acc::Pick(Value::Null),
            AggKind::Stddev => Acc::Stddev {
                n: 0,
                mean: 0.0,
                m2: 0.0,
            },
            AggKind::Percentile | AggKind::Collect => Acc::Values(Vec::new()),
        }
    }

    /// The error [`update`](Self::update) would return for `v`, without changing anything.
    /// Windows check every accumulator a message touches before updating any,
    /// so a message that fails changes nothing.
    pub fn check(&self, kind: AggKind, v: &Value) -> Result<(), String> {
        if kind == AggKind::CountStar || v.is_null() {
            return Ok(());
        }
        let num = |name: &str| {
            v.as_f64()
                .ok_or_else(|| format!("{name}() expects a number, found {}", v.type_name()))
        };
        match self {
            Acc::Count(_) => Ok(()),
            Acc::Sum {
                int,
                float,
                is_float,
                ..
            } => match v {
                Value::Int(i) if !*is_float => int
                    .checked_add(*i)
                    .map(|_| ())
                    .ok_or_else(|| "integer overflow".to_string()),
                _ => float_sum(*int, *float, num("sum")?).map(drop),
            },
            Acc::Avg { sum, .. } => float_sum(0, *sum, num("avg")?).map(drop),
            Acc::Stddev { n, mean, m2 } => welford(*n, *mean, *m2, num("stddev")?).map(drop),
            Acc::Pick(cur) => {
                if matches!(kind, AggKind::Min | AggKind::Max)
                    && !cur.is_null()
                    && v.sql_cmp(cur).is_none()
                {
                    let name = if kind == AggKind::Min { "min" } else { "max" };
                    return Err(format!(
                        "{name}() cannot compare {} and {}",
                        cur.type_name(),
                        v.type_name()
                    ));
                }
                Ok(())
            }
            Acc::Values(_) if kind == AggKind::Percentile => num("percentile").map(drop),
            Acc::Values(_) => Ok(()),
        }
    }

    /// Folds one value in. NULLs are skipped (count(*) counts every row).
    /// Returns `Ok(false)` when a bounded buffer was full and the value was dropped.
    pub fn update(&mut self, kind: AggKind, v: &Value, max_values: usize) -> Result<bool, String> {
        if kind == AggKind::CountStar {
            if let Acc::Count(n) = self {
                *n = n.saturating_add(1);
            }
            return Ok(true);
        }
        if v.is_null() {
            return Ok(true);
        }
        let num = |name: &str| {
            v.as_f64()
                .ok_or_else(|| format!("{name}() expects a number, found {}", v.type_name()))
        };
        match self {
            Acc::Count(n) => *n = n.saturating_add(1),
            Acc::Sum {
                int,
                float,
                is_float,
                any,
            } => {
                *any = true;
                match v {
                    Value::Int(i) if !*is_float => match int.checked_add(*i) {
                        Some(s) => *int = s,
                        None => return Err("integer overflow".into()),
                    },
                    _ => {
                        *float = float_sum(*int, *float, num("sum")?)?;
                        *is_float = true;
                    }
                }
            }
            Acc::Avg { sum, n } => {
                *sum = float_sum(0, *sum, num("avg")?)?;
                *n = n.saturating_add(1);
            }
            Acc::Stddev { n, mean, m2 } => {
                (*n, *mean, *m2) = welford(*n, *mean, *m2, num("stddev")?)?;
            }
            Acc::Pick(cur) => {
                let replace = match kind {
                    AggKind::First => cur.is_null(),
                    AggKind::Last => true,
                    _ if cur.is_null() => true,
                    _ => {
                        let want = if kind == AggKind::Min {
                            Ordering::Less
                        } else {
                            Ordering::Greater
                        };
                        match v.sql_cmp(cur) {
                            Some(o) => o == want,
                            None => {
                                let name = if kind == AggKind::Min { "min" } else { "max" };
                                return Err(format!(
                                    "{name}() cannot compare {} and {}",
                                    cur.type_name(),
                                    v.type_name()
                                ));
                            }
                        }
                    }
                };
                if replace {
                    *cur = v.clone();
                }
            }
            Acc::Values(vals) => {
                if kind == AggKind::Percentile {
                    num("percentile")?;
                }
                if vals.len() >= max_values {
                    return Ok(false);
                }
                vals.push(v.clone());
            }
        }
        Ok(true)
    }

    /// The aggregate's result.
    pub fn finish(&self, spec: &AggSpec) -> Value {
        match self {
            Acc::Count(n) => Value::Int(*n),
            Acc::Sum { any: false, .. } => Value::Null,
            Acc::Sum {
                int,
                float,
                is_float,
                ..
            } => {
                if *is_float {
                    Value::Float(*int as f64 + *float)
                } else {
                    Value::Int(*int)
                }
            }
            Acc::Avg { n: 0, .. } => Value::Null,
            Acc::Avg { sum, n } => Value::Float(*sum / *n as f64),
            Acc::Stddev { n, m2, .. } if *n >= 2 => Value::Float((*m2 / (*n - 1) as f64).sqrt()),
            Acc::Stddev { .. } => Value::Null,
            Acc::Pick(v) => v.clone(),
            Acc::Values(vals) if spec.kind == AggKind::Collect => Value::Array(vals.clone()),
            Acc::Values(vals) => percentile(vals, spec.p),
        }
    }

    /// Number of values held (for memory statistics).
    pub fn entries(&self) -> usize {
        match self {
            Acc::Values(v) => v.len(),
            _ => 1,
        }
    }
}

/// Linear interpolation between closest ranks (rank = p × (n − 1)), always a float.
/// The FLOAT part of a sum after adding `x`, or an error when the sum
/// (with its INT part `int`) leaves the FLOAT range: overflow is an error,
/// as for `+`, so every finished sum and average is finite.
fn float_sum(int: i64, float: f64, x: f64) -> Result<f64, String> {
    let next = float + x;
    if (int as f64 + next).is_finite() {
        Ok(next)
    } else {
        Err("float overflow".into())
    }
}

/// One step of Welford's online algorithm for the standard deviation, or an
/// error when its sums leave the FLOAT range.
fn welford(n: i64, mean: f64, m2: f64, x: f64) -> Result<(i64, f64, f64), String> {
    let n = n + 1;
    let d = x - mean;
    let mean = mean + d / n as f64;
    let m2 = m2 + d * (x - mean);
    if mean.is_finite() && m2.is_finite() {
        Ok((n, mean, m2))
    } else {
        Err("float overflow".into())
    }
}

fn percentile(vals: &[Value], p: f64) -> Value {
    let mut xs: Vec<f64> = vals.iter().filter_map(Value::as_f64).collect();
    if xs.is_empty() {
        return Value::Null;
    }
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap_or(Ordering::Equal));
    let rank = p * (xs.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let (a, b) = (xs[lo], xs[hi.min(xs.len() - 1)]);
    let f = rank - lo as f64;
    let d = b - a;
    // b − a overflows for values of opposite sign near ±f64::MAX; a·(1−f) + b·f does not.
    Value::float_or_null(if d.is_finite() {
        a + d * f
    } else {
        a * (1.0 - f) + b * f
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(kind: AggKind, p: f64, vals: &[Value]) -> Value {
        let spec = AggSpec {
            kind,
            arg: None,
            p,
            text: String::new(),
        };
        let mut acc = Acc::new(kind);
        for v in vals {
            acc.update(kind, v, 100).expect("update");
        }
        acc.finish(&spec)
    }

    #[test]
    fn median_of_opposite_extremes_does_not_overflow() {
        let vals = [Value::Float(1e308), Value::Float(-1e308)];
        assert_eq!(run(AggKind::Percentile, 0.5, &vals), Value::Float(0.0));
        assert_eq!(run(AggKind::Percentile, 0.75, &vals), Value::Float(5e307));
        assert_eq!(run(AggKind::Percentile, 1.0, &vals), Value::Float(1e308));
        let max = [Value::Float(f64::MAX), Value::Float(f64::MAX)];
        assert_eq!(run(AggKind::Percentile, 0.3, &max), Value::Float(f64::MAX));
    }

    #[test]
    fn aggregates_skip_nulls() {
        let vals = [Value::Int(1), Value::Null, Value::Int(3), Value::Int(4)];
        assert_eq!(run(AggKind::Count, 0.0, &vals), Value::Int(3));
        assert_eq!(run(AggKind::CountStar, 0.0, &vals), Value::Int(4));
        assert_eq!(run(AggKind::Sum, 0.0, &vals), Value::Int(8));
        assert_eq!(run(AggKind::Percentile, 0.5, &vals), Value::Float(3.0));
        assert_eq!(run(AggKind::Percentile, 0.25, &vals), Value::Float(2.0));
        assert_eq!(run(AggKind::Sum, 0.0, &[Value::Null]), Value::Null);
        assert_eq!(
            run(
                AggKind::Stddev,
                0.0,
                &[
                    Value::Int(2),
                    Value::Int(4),
                    Value::Int(4),
                    Value::Int(4),
                    Value::Int(5),
                    Value::Int(5),
                    Value::Int(7),
                    Value::Int(9)
                ]
            ),
            Value::Float((32.0f64 / 7.0).sqrt())
        );
    }
}

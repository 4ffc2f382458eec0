//! Compiled expressions and their evaluation: names resolved to slots, functions to enum values.

use std::sync::Arc;

use crate::Event;
use crate::ast::{BinOp, CastTy, PathSeg};
use crate::error::{EvalError, EvalResult};
use crate::functions::{self, Func, math};
use crate::value::Value;

/// A compiled expression and its span in the SQL (for error messages).
#[derive(Debug, Clone)]
pub(crate) struct CExpr {
    pub kind: CKind,
    pub start: u32,
    pub end: u32,
}

/// Compiled expression kinds.
#[derive(Debug, Clone)]
pub(crate) enum CKind {
    Const(Value),
    /// Top-level payload field by slot.
    Field(usize),
    /// Nested path below a top-level field.
    Path(usize, Box<[PathSeg]>),
    Topic,
    TopicLevel(usize),
    ClientId,
    Timestamp,
    Qos,
    Payload,
    UserProp(Box<str>),
    Now,
    /// GROUP BY key `i` (after aggregation).
    Key(usize),
    /// Aggregate result `i`.
    Agg(usize),
    /// SELECT output column `i` (HAVING may name aliases).
    Out(usize),
    WindowStart,
    WindowEnd,
    Neg(Box<CExpr>),
    Not(Box<CExpr>),
    Bin(BinOp, Box<CExpr>, Box<CExpr>),
    IsNull(Box<CExpr>, bool),
    In(Box<CExpr>, Vec<CExpr>, bool),
    Between(Box<CExpr>, Box<CExpr>, Box<CExpr>, bool),
    Like(Box<CExpr>, Box<CExpr>, bool),
    Case(Option<Box<CExpr>>, Vec<(CExpr, CExpr)>, Option<Box<CExpr>>),
    Cast(Box<CExpr>, CastTy),
    Call(Func, Vec<CExpr>),
}

/// What an expression can see while it is evaluated.
pub(crate) struct Ctx<'a> {
    pub sql: &'a str,
    pub fields: &'a [Value],
    pub ev: Option<&'a Event<'a>>,
    pub now: i64,
    pub keys: &'a [Value],
    pub aggs: &'a [Value],
    pub outs: &'a [Value],
    pub window: (i64, i64),
}

impl Ctx<'_> {
    fn err(&self, e: &CExpr, msg: impl std::fmt::Display) -> EvalError {
        let text = self
            .sql
            .get(e.start as usize..e.end as usize)
            .unwrap_or("?");
        EvalError::new(format!("{msg} in '{text}'"))
    }
}

/// A condition's truth value (NULL is `None`); anything but BOOL or NULL is an
/// error naming `what` (WHERE, HAVING, NOT, AND, OR, WHEN), so every condition
/// follows one rule.
pub(crate) fn truth(ctx: &Ctx<'_>, e: &CExpr, what: &str) -> EvalResult<Option<bool>> {
    match e.eval(ctx)? {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(b)),
        other => Err(ctx.err(
            e,
            format_args!("{what} expects a boolean, found {}", other.type_name()),
        )),
    }
}

impl CExpr {
    /// Evaluates the expression.
    pub fn eval(&self, ctx: &Ctx<'_>) -> EvalResult<Value> {
        Ok(match &self.kind {
            CKind::Const(v) => v.clone(),
            CKind::Field(i) => ctx.fields[*i].clone(),
            CKind::Path(..) => self.e_path(ctx)?,
            CKind::Topic => ctx.ev.map_or(Value::Null, |ev| Value::str(ev.topic)),
            CKind::TopicLevel(n) => ctx
                .ev
                .and_then(|ev| ev.topic.split('/').nth(n - 1))
                .map_or(Value::Null, Value::str),
            CKind::ClientId => ctx.ev.map_or(Value::Null, |ev| Value::str(ev.client_id)),
            CKind::Timestamp => ctx.ev.map_or(Value::Null, |ev| Value::Int(ev.timestamp_ms)),
            CKind::Qos => ctx
                .ev
                .map_or(Value::Null, |ev| Value::Int(i64::from(ev.qos))),
            CKind::Payload => ctx
                .ev
                .map_or(Value::Null, |ev| Value::Bytes(Arc::from(ev.payload))),
            CKind::UserProp(k) => ctx
                .ev
                .and_then(|ev| ev.user_properties.iter().find(|(n, _)| **n == **k))
                .map_or(Value::Null, |(_, v)| Value::str(v)),
            CKind::Now => Value::Int(ctx.now),
            CKind::Key(i) => ctx.keys[*i].clone(),
            CKind::Agg(i) => ctx.aggs[*i].clone(),
            CKind::Out(i) => ctx.outs.get(*i).cloned().unwrap_or(Value::Null),
            CKind::WindowStart => Value::Int(ctx.window.0),
            CKind::WindowEnd => Value::Int(ctx.window.1),
            CKind::Neg(..) => self.e_neg(ctx)?,
            CKind::Not(..) => self.e_not(ctx)?,
            CKind::Bin(op, l, r) => self.binary(*op, l, r, ctx)?,
            CKind::IsNull(x, neg) => Value::Bool(x.eval(ctx)?.is_null() != *neg),
            CKind::In(..) => self.e_in(ctx)?,
            CKind::Between(..) => self.e_between(ctx)?,
            CKind::Like(..) => self.e_like(ctx)?,
            CKind::Case(..) => self.e_case(ctx)?,
            CKind::Cast(..) => self.e_cast(ctx)?,
            CKind::Call(..) => self.e_call(ctx)?,
        })
    }

    fn e_path(&self, ctx: &Ctx<'_>) -> EvalResult<Value> {
        let CKind::Path(i, path) = &self.kind else {
            return Ok(Value::Null);
        };
        Ok({
            let mut cur = Some(&ctx.fields[*i]);
            for seg in path.iter() {
                cur = match seg {
                    PathSeg::Field(f) => cur.and_then(|v| v.field(f)),
                    PathSeg::Index(n) => cur.and_then(|v| v.index(*n)),
                };
            }
            cur.cloned().unwrap_or(Value::Null)
        })
    }

    fn e_neg(&self, ctx: &Ctx<'_>) -> EvalResult<Value> {
        let CKind::Neg(x) = &self.kind else {
            return Ok(Value::Null);
        };
        Ok(match x.eval(ctx)? {
            Value::Null => Value::Null,
            Value::Int(i) => Value::Int(
                i.checked_neg()
                    .ok_or_else(|| ctx.err(self, "integer overflow"))?,
            ),
            Value::Float(f) => Value::Float(-f),
            other => {
                return Err(ctx.err(self, format_args!("cannot negate {}", other.type_name())));
            }
        })
    }

    fn e_not(&self, ctx: &Ctx<'_>) -> EvalResult<Value> {
        let CKind::Not(x) = &self.kind else {
            return Ok(Value::Null);
        };
        Ok(match truth(ctx, x, "NOT")? {
            None => Value::Null,
            Some(b) => Value::Bool(!b),
        })
    }

    fn e_in(&self, ctx: &Ctx<'_>) -> EvalResult<Value> {
        let CKind::In(x, list, neg) = &self.kind else {
            return Ok(Value::Null);
        };
        Ok({
            let v = x.eval(ctx)?;
            if v.is_null() {
                return Ok(Value::Null);
            }
            let mut saw_null = false;
            for item in list {
                let w = item.eval(ctx)?;
                if w.is_null() {
                    saw_null = true;
                } else if v.sql_eq(&w) {
                    return Ok(Value::Bool(!neg));
                }
            }
            if saw_null {
                Value::Null
            } else {
                Value::Bool(*neg)
            }
        })
    }

    fn e_between(&self, ctx: &Ctx<'_>) -> EvalResult<Value> {
        let CKind::Between(x, lo, hi, neg) = &self.kind else {
            return Ok(Value::Null);
        };
        Ok({
            let (v, lo_v, hi_v) = (x.eval(ctx)?, lo.eval(ctx)?, hi.eval(ctx)?);
            let ge = self.cmp3(&v, &lo_v, ctx, |o| o.is_ge())?;
            let le = self.cmp3(&v, &hi_v, ctx, |o| o.is_le())?;
            match and3(ge, le) {
                None => Value::Null,
                Some(b) => Value::Bool(b != *neg),
            }
        })
    }

    fn e_like(&self, ctx: &Ctx<'_>) -> EvalResult<Value> {
        let CKind::Like(x, pat, neg) = &self.kind else {
            return Ok(Value::Null);
        };
        Ok({
            let (v, p) = (x.eval(ctx)?, pat.eval(ctx)?);
            match (&v, &p) {
                (Value::Null, _) | (_, Value::Null) => Value::Null,
                (Value::Str(s), Value::Str(p)) => Value::Bool(like(s, p) != *neg),
                _ => {
                    return Err(ctx.err(
                        self,
                        format_args!(
                            "LIKE expects strings, found {} and {}",
                            v.type_name(),
                            p.type_name()
                        ),
                    ));
                }
            }
        })
    }

    fn e_case(&self, ctx: &Ctx<'_>) -> EvalResult<Value> {
        let CKind::Case(operand, whens, else_) = &self.kind else {
            return Ok(Value::Null);
        };
        Ok({
            let op = match operand {
                Some(o) => Some(o.eval(ctx)?),
                None => None,
            };
            for (w, t) in whens {
                let hit = match &op {
                    Some(v) => {
                        let w = w.eval(ctx)?;
                        !v.is_null() && !w.is_null() && v.sql_eq(&w)
                    }
                    None => truth(ctx, w, "WHEN")? == Some(true),
                };
                if hit {
                    return t.eval(ctx);
                }
            }
            match else_ {
                Some(e) => e.eval(ctx)?,
                None => Value::Null,
            }
        })
    }

    fn e_cast(&self, ctx: &Ctx<'_>) -> EvalResult<Value> {
        let CKind::Cast(x, ty) = &self.kind else {
            return Ok(Value::Null);
        };
        crate::cast::cast(x.eval(ctx)?, *ty).map_err(|m| ctx.err(self, m))
    }

    fn e_call(&self, ctx: &Ctx<'_>) -> EvalResult<Value> {
        let CKind::Call(f, args) = &self.kind else {
            return Ok(Value::Null);
        };
        if matches!(f, Func::Coalesce | Func::Ifnull) {
            // Short-circuit: arguments after the first non-NULL one are not evaluated.
            for a in args {
                let v = a.eval(ctx)?;
                if !v.is_null() {
                    return Ok(v);
                }
            }
            return Ok(Value::Null);
        }
        Ok({
            if args.len() <= 4 {
                let mut buf: [Value; 4] = Default::default();
                for (slot, a) in buf.iter_mut().zip(args) {
                    *slot = a.eval(ctx)?;
                }
                functions::call(*f, &buf[..args.len()]).map_err(|m| ctx.err(self, m))?
            } else {
                let vals = args
                    .iter()
                    .map(|a| a.eval(ctx))
                    .collect::<EvalResult<Vec<_>>>()?;
                functions::call(*f, &vals).map_err(|m| ctx.err(self, m))?
            }
        })
    }

    fn binary(&self, op: BinOp, l: &CExpr, r: &CExpr, ctx: &Ctx<'_>) -> EvalResult<Value> {
        match op {
            BinOp::And => {
                let a = truth(ctx, l, "AND")?;
                if a == Some(false) {
                    return Ok(Value::Bool(false));
                }
                let b = truth(ctx, r, "AND")?;
                return Ok(and3(a, b).map_or(Value::Null, Value::Bool));
            }
            BinOp::Or => {
                let a = truth(ctx, l, "OR")?;
                if a == Some(true) {
                    return Ok(Value::Bool(true));
                }
                let b = truth(ctx, r, "OR")?;
                return Ok(match (a, b) {
                    (_, Some(true)) => Value::Bool(true),
                    (Some(false), Some(false)) => Value::Bool(false),
                    _ => Value::Null,
                });
            }
            _ => {}
        }
        let (a, b) = (l.eval(ctx)?, r.eval(ctx)?);
        if a.is_null() || b.is_null() {
            return Ok(Value::Null);
        }
        Ok(match op {
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Mod => {
                math::arith(op, &a, &b).map_err(|m| ctx.err(self, m))?
            }
            BinOp::Concat => {
                let mut s = a.to_string();
                s.push_str(&b.to_string());
                Value::Str(Arc::from(s))
            }
            BinOp::Eq => Value::Bool(a.sql_eq(&b)),
            BinOp::Ne => Value::Bool(!a.sql_eq(&b)),
            BinOp::Lt => Value::Bool(self.cmp(&a, &b, ctx)?.is_lt()),
            BinOp::Le => Value::Bool(self.cmp(&a, &b, ctx)?.is_le()),
            BinOp::Gt => Value::Bool(self.cmp(&a, &b, ctx)?.is_gt()),
            _ => Value::Bool(self.cmp(&a, &b, ctx)?.is_ge()),
        })
    }

    fn cmp(&self, a: &Value, b: &Value, ctx: &Ctx<'_>) -> EvalResult<std::cmp::Ordering> {
        a.sql_cmp(b).ok_or_else(|| {
            ctx.err(
                self,
                format_args!("cannot compare {} and {}", a.type_name(), b.type_name()),
            )
        })
    }

    fn cmp3(
        &self,
        a: &Value,
        b: &Value,
        ctx: &Ctx<'_>,
        f: fn(std::cmp::Ordering) -> bool,
    ) -> EvalResult<Option<bool>> {
        if a.is_null() || b.is_null() {
            return Ok(None);
        }
        Ok(Some(f(self.cmp(a, b, ctx)?)))
    }
}

fn and3(a: Option<bool>, b: Option<bool>) -> Option<bool> {
    match (a, b) {
        (Some(false), _) | (_, Some(false)) => Some(false),
        (Some(true), Some(true)) => Some(true),
        _ => None,
    }
}

/// SQL LIKE: `%` any run of characters, `_` one character, `\` escapes the next character.
pub(crate) fn like(s: &str, pattern: &str) -> bool {
    let s: Vec<char> = s.chars().collect();
    let mut p: Vec<(char, bool)> = Vec::new(); // (char, is_literal)
    let mut it = pattern.chars();
    while let Some(c) = it.next() {
        match c {
            '\\' => p.push((it.next().unwrap_or('\\'), true)),
            c => p.push((c, false)),
        }
    }
    // Iterative matching with a single backtrack point for the last '%'.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if j < p.len() && !p[j].1 && p[j].0 == '%' {
            star = Some((j, i));
            j += 1;
        } else if j < p.len() && ((!p[j].1 && p[j].0 == '_') || p[j].0 == s[i]) {
            i += 1;
            j += 1;
        } else if let Some((sj, si)) = star {
            j = sj + 1;
            i = si + 1;
            star = Some((sj, si + 1));
        } else {
            return false;
        }
    }
    while j < p.len() && !p[j].1 && p[j].0 == '%' {
        j += 1;
    }
    j == p.len()
}

#[cfg(test)]
mod tests {
    use super::like;

    #[test]
    fn like_patterns() {
        assert!(like("sensor-12", "sensor-%"));
        assert!(like("sensor-12", "%-1_"));
        assert!(!like("sensor-12", "%-1"));
        assert!(like("", "%"));
        assert!(like("100%", "100\\%"));
        assert!(!like("1000", "100\\%"));
        assert!(like("aXbXc", "a%b%c"));
        assert!(like("ünï", "_n_"));
    }
}

//! Compiling function calls: meta columns, scalar functions (checked against their signatures) and aggregates.

use super::{AGGREGATES, Compiler, Scope};
use crate::agg::{AggKind, AggSpec};
use crate::ast::*;
use crate::error::SqlError;
use crate::expr::{CExpr, CKind};
use crate::functions::{self, Ty};

/// Plural helper for arity messages.
pub(crate) fn args_word(n: usize) -> String {
    if n == 1 {
        "1 argument".to_string()
    } else {
        format!("{n} arguments")
    }
}

pub(crate) fn arity_text(min: usize, max: usize) -> String {
    if min == max {
        args_word(min)
    } else if max == usize::MAX {
        format!("at least {}", args_word(min))
    } else {
        format!("{min} to {max} arguments")
    }
}

impl Compiler<'_> {
    pub(super) fn call(
        &mut self,
        e: &Expr,
        name: &str,
        args: &[Expr],
        star: bool,
        scope: Scope,
    ) -> Result<(CExpr, Ty), SqlError> {
        let lname = name.to_ascii_lowercase();
        let arity = |min: usize, max: usize| -> Result<(), SqlError> {
            if args.len() < min || args.len() > max || (star && lname != "count") {
                return Err(SqlError::at(
                    self.src,
                    e.start,
                    format!(
                        "{lname}() takes {}, found {}",
                        arity_text(min, max),
                        if star {
                            "*".to_string()
                        } else {
                            args.len().to_string()
                        }
                    ),
                ));
            }
            Ok(())
        };
        if AGGREGATES.contains(&lname.as_str()) {
            return self.aggregate(e, &lname, args, star, scope);
        }
        let per_message = |s: &Self, kind: CKind, ty: Ty| -> Result<(CExpr, Ty), SqlError> {
            if matches!(scope, Scope::Group { .. }) {
                return Err(s.not_grouped(e, &format!("{lname}()")));
            }
            Ok((s.mk(kind, e), ty))
        };
        match lname.as_str() {
            "topic" => {
                arity(0, 1)?;
                match args.first().map(|a| &a.kind) {
                    None => per_message(self, CKind::Topic, Ty::Str),
                    Some(ExprKind::Lit(Lit::Int(n))) if *n >= 1 => per_message(
                        self,
                        CKind::TopicLevel(usize::try_from(*n).unwrap_or(usize::MAX)),
                        Ty::Str,
                    ),
                    Some(_) => {
                        Err(self.at(&args[0], "topic(n) expects a level number of 1 or more"))
                    }
                }
            }
            "clientid" => {
                arity(0, 0)?;
                per_message(self, CKind::ClientId, Ty::Str)
            }
            "timestamp" => {
                arity(0, 0)?;
                per_message(self, CKind::Timestamp, Ty::Int)
            }
            "qos" => {
                arity(0, 0)?;
                per_message(self, CKind::Qos, Ty::Int)
            }
            "payload" => {
                arity(0, 0)?;
                per_message(self, CKind::Payload, Ty::Bytes)
            }
            "user_property" => {
                arity(1, 1)?;
                match &args[0].kind {
                    ExprKind::Lit(Lit::Str(k)) => {
                        per_message(self, CKind::UserProp(k.clone().into_boxed_str()), Ty::Str)
                    }
                    _ => Err(self.at(
                        &args[0],
                        "user_property() expects a string literal such as 'unit'",
                    )),
                }
            }
            "now" => {
                arity(0, 0)?;
                Ok((self.mk(CKind::Now, e), Ty::Int))
            }
            "window_start" | "window_end" => {
                arity(0, 0)?;
                if !matches!(scope, Scope::Group { .. }) {
                    return Err(self.at(
                        e,
                        format!(
                            "{lname}() is only allowed in the SELECT or HAVING of a windowed query"
                        ),
                    ));
                }
                let k = if lname == "window_start" {
                    CKind::WindowStart
                } else {
                    CKind::WindowEnd
                };
                Ok((self.mk(k, e), Ty::Int))
            }
            _ => self.scalar_call(e, &lname, name, args, scope, arity),
        }
    }

    /// A call of a function from the registration list, its arguments checked against its signature.
    fn scalar_call(
        &mut self,
        e: &Expr,
        lname: &str,
        name: &str,
        args: &[Expr],
        scope: Scope,
        arity: impl Fn(usize, usize) -> Result<(), SqlError>,
    ) -> Result<(CExpr, Ty), SqlError> {
        let Some(spec) = functions::lookup(lname) else {
            return Err(self.at(e, format!("unknown function '{name}'")));
        };
        arity(spec.min, spec.max)?;
        let mut cargs = Vec::with_capacity(args.len());
        for (i, a) in args.iter().enumerate() {
            let (c, t) = self.expr(a, scope)?;
            let p = spec.params[i.min(spec.params.len() - 1)];
            if !p.accepts(t) {
                return Err(self.at(
                    a,
                    format!(
                        "{lname}() expects {} as argument {}, found {}",
                        p.describe(),
                        i + 1,
                        t.name()
                    ),
                ));
            }
            // A constant argument that fails on every call (`round(x, 19)`,
            // `lpad(s, 70000)`) is refused now.
            if let CKind::Const(v) = &c.kind
                && !v.is_null()
            {
                functions::check_const_arg(spec.func, lname, i, v).map_err(|m| self.at(a, m))?;
            }
            cargs.push(c);
        }
        Ok((self.mk(CKind::Call(spec.func, cargs), e), spec.ret))
    }

    fn aggregate(
        &mut self,
        e: &Expr,
        lname: &str,
        args: &[Expr],
        star: bool,
        scope: Scope,
    ) -> Result<(CExpr, Ty), SqlError> {
        if let Scope::Row(place) = scope {
            let place = if place == "SELECT" {
                "an aggregate argument"
            } else {
                place
            };
            let msg = if place == "an aggregate argument" {
                "aggregate functions cannot be nested".to_string()
            } else {
                format!("aggregate function {lname}() is not allowed in {place}")
            };
            return Err(self.at(e, msg));
        }
        let (min, max) = if lname == "percentile" {
            (2, 2)
        } else {
            (1, 1)
        };
        let bad_star = star && lname != "count";
        if bad_star || (!star && (args.len() < min || args.len() > max)) {
            let found = if star {
                "*".to_string()
            } else {
                args.len().to_string()
            };
            return Err(self.at(
                e,
                format!("{lname}() takes {}, found {found}", arity_text(min, max)),
            ));
        }
        let key = canon(e);
        if let Some(i) = self.agg_canon.iter().position(|k| *k == key) {
            return Ok((self.mk(CKind::Agg(i), e), agg_type(lname)));
        }
        let kind = match lname {
            "count" if star => AggKind::CountStar,
            "count" => AggKind::Count,
            "sum" => AggKind::Sum,
            "avg" => AggKind::Avg,
            "min" => AggKind::Min,
            "max" => AggKind::Max,
            "first" => AggKind::First,
            "last" => AggKind::Last,
            "stddev" => AggKind::Stddev,
            "median" => AggKind::Percentile,
            "percentile" => AggKind::Percentile,
            _ => AggKind::Collect,
        };
        let mut p = 0.5;
        if lname == "percentile" {
            p = match &args[1].kind {
                ExprKind::Lit(Lit::Float(f)) => *f,
                ExprKind::Lit(Lit::Int(i)) => *i as f64,
                _ => -1.0,
            };
            if !(0.0..=1.0).contains(&p) {
                return Err(self.at(
                    &args[1],
                    "percentile() expects a constant between 0 and 1 as argument 2, e.g. 0.95",
                ));
            }
        }
        let arg = match args.first() {
            Some(a) if !star => {
                let (c, t) = self.expr(a, Scope::Row("an aggregate argument"))?;
                let numeric = matches!(lname, "sum" | "avg" | "stddev" | "percentile" | "median");
                if numeric && !(t.is_dynamic() || t.is_num()) {
                    return Err(
                        self.at(a, format!("{lname}() expects a number, found {}", t.name()))
                    );
                }
                Some(c)
            }
            _ => None,
        };
        self.aggs.push(AggSpec {
            kind,
            arg,
            p,
            text: self.text(e).to_string(),
        });
        self.agg_canon.push(key);
        Ok((self.mk(CKind::Agg(self.aggs.len() - 1), e), agg_type(lname)))
    }
}

fn agg_type(name: &str) -> Ty {
    match name {
        "count" => Ty::Int,
        "avg" | "stddev" => Ty::Float,
        "sum" | "percentile" | "median" => Ty::Num,
        "collect" => Ty::Array,
        _ => Ty::Any,
    }
}

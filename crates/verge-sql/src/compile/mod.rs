//! The validator and planner: checks a parsed statement completely and compiles it to a [`Plan`].

mod call;

use std::sync::Arc;

use crate::agg::AggSpec;
use crate::ast::*;
use crate::error::SqlError;
use crate::expr::{CExpr, CKind};
use crate::functions::Ty;
use crate::plan::{AggPlan, Item, Plan};
use crate::value::Value;

const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "first",
    "last",
    "stddev",
    "percentile",
    "median",
    "collect",
];

/// Where an expression is being compiled.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Per message; the string names the clause for error messages.
    Row(&'static str),
    /// After aggregation (SELECT or HAVING of an aggregate query).
    Group { having: bool },
}

struct Compiler<'a> {
    src: &'a str,
    fields: Vec<Arc<str>>,
    key_canon: Vec<String>,
    aggs: Vec<AggSpec>,
    agg_canon: Vec<String>,
    aliases: Vec<String>,
}

/// Compiles `st` (parsed from `src`).
pub(crate) fn compile(src: &str, st: Statement) -> Result<Plan, SqlError> {
    let mut c = Compiler {
        src,
        fields: Vec::new(),
        key_canon: Vec::new(),
        aggs: Vec::new(),
        agg_canon: Vec::new(),
        aliases: Vec::new(),
    };
    let mut sources = Vec::new();
    for (f, pos) in st.from {
        if !verge_mqtt::topic::valid_topic_filter(&f) {
            return Err(SqlError::at(
                src,
                pos,
                format!("invalid topic filter \"{f}\""),
            ));
        }
        sources.push(f);
    }
    let has_agg_call = st
        .items
        .iter()
        .any(|i| matches!(i, SelectItem::Expr { expr, .. } if contains_agg(expr)))
        || st.having.as_ref().is_some_and(contains_agg);
    let is_agg = has_agg_call || !st.group_by.is_empty();

    let where_ = match &st.where_ {
        Some(w) => Some(c.condition(w, Scope::Row("WHERE"), "WHERE")?),
        None => None,
    };
    let event_time = match &st.timestamp {
        Some(t) => {
            let (e, ty) = c.expr(&t.expr, Scope::Row("TIMESTAMP BY"))?;
            if !(ty.is_dynamic() || ty.is_num() || ty == Ty::Str) {
                return Err(c.at(
                    &t.expr,
                    format!(
                        "TIMESTAMP BY expects a number of milliseconds or a time string, found {}",
                        ty.name()
                    ),
                ));
            }
            Some((e, t.lateness_ms))
        }
        None => None,
    };

    // Output names, checked for duplicates.
    let mut names: Vec<Arc<str>> = Vec::new();
    let mut star = false;
    for item in &st.items {
        match item {
            SelectItem::Star(pos) => {
                if is_agg {
                    return Err(SqlError::at(
                        src,
                        *pos,
                        "'*' is not allowed in an aggregate query; name the group keys and aggregates",
                    ));
                }
                star = true;
            }
            SelectItem::Expr { expr, alias } => {
                let name: Arc<str> = Arc::from(
                    alias
                        .clone()
                        .unwrap_or_else(|| c.default_name(expr))
                        .as_str(),
                );
                if names.contains(&name) {
                    return Err(c.at(
                        expr,
                        format!("duplicate column name '{name}'; rename one with AS"),
                    ));
                }
                names.push(name);
            }
        }
    }
    c.aliases = names.iter().map(|n| n.to_string()).collect();

    let mut items = Vec::new();
    let mut agg = None;
    if !is_agg {
        if st.having.is_some() {
            return Err(SqlError::at(
                src,
                st.having_pos,
                "HAVING needs GROUP BY or an aggregate function",
            ));
        }
        if let Some(t) = &st.timestamp {
            return Err(c.at(&t.expr, "TIMESTAMP BY needs a window in GROUP BY"));
        }
        let mut n = names.iter();
        for item in &st.items {
            match item {
                SelectItem::Star(_) => items.push(Item::Star),
                SelectItem::Expr { expr, .. } => {
                    let (e, _) = c.expr(expr, Scope::Row("SELECT"))?;
                    items.push(Item::Col(
                        n.next().cloned().unwrap_or_else(|| Arc::from("?")),
                        e,
                    ));
                }
            }
        }
    } else {
        let mut keys = Vec::new();
        let mut window = None;
        for g in &st.group_by {
            match g {
                GroupItem::Expr(e) => {
                    let (ce, _) = c.expr(e, Scope::Row("GROUP BY"))?;
                    c.key_canon.push(canon(e));
                    keys.push(ce);
                }
                GroupItem::Window { kind, pos } => {
                    if window.is_some() {
                        return Err(SqlError::at(
                            src,
                            *pos,
                            "only one window is allowed in GROUP BY",
                        ));
                    }
                    window = Some(*kind);
                }
            }
        }
        let Some(window) = window else {
            let pos = st
                .group_pos
                .unwrap_or_else(|| first_agg_pos(&st.items).unwrap_or(0));
            return Err(SqlError::at(
                src,
                pos,
                "an aggregate query needs a window in GROUP BY, e.g. GROUP BY device, TUMBLING(10s)",
            ));
        };
        let mut n = names.iter();
        for item in &st.items {
            if let SelectItem::Expr { expr, .. } = item {
                let (e, _) = c.expr(expr, Scope::Group { having: false })?;
                items.push(Item::Col(
                    n.next().cloned().unwrap_or_else(|| Arc::from("?")),
                    e,
                ));
            }
        }
        let having = match &st.having {
            Some(h) => Some(c.condition(h, Scope::Group { having: true }, "HAVING")?),
            None => None,
        };
        agg = Some(AggPlan {
            keys,
            aggs: std::mem::take(&mut c.aggs),
            window,
            having,
            event_time,
        });
    }
    Ok(Plan {
        sql: src.to_string(),
        sources,
        field_names: c.fields,
        star,
        explicit_names: names,
        where_,
        items,
        agg,
    })
}

/// Offset of the first aggregate call in the SELECT list.
fn first_agg_pos(items: &[SelectItem]) -> Option<usize> {
    let mut pos = None;
    for item in items {
        if let SelectItem::Expr { expr, .. } = item {
            walk(expr, &mut |x| {
                if let ExprKind::Call { name, .. } = &x.kind
                    && pos.is_none()
                    && AGGREGATES.iter().any(|a| a.eq_ignore_ascii_case(name))
                {
                    pos = Some(x.start);
                }
            });
        }
    }
    pos
}

fn contains_agg(e: &Expr) -> bool {
    let mut found = false;
    walk(e, &mut |x| {
        if let ExprKind::Call { name, .. } = &x.kind
            && AGGREGATES.iter().any(|a| a.eq_ignore_ascii_case(name))
        {
            found = true;
        }
    });
    found
}

fn walk(e: &Expr, f: &mut impl FnMut(&Expr)) {
    f(e);
    match &e.kind {
        ExprKind::Lit(_) | ExprKind::Column(_) => {}
        ExprKind::Call { args, .. } => args.iter().for_each(|a| walk(a, f)),
        ExprKind::Neg(x)
        | ExprKind::Not(x)
        | ExprKind::IsNull { expr: x, .. }
        | ExprKind::Cast { expr: x, .. } => walk(x, f),
        ExprKind::Binary { l, r, .. }
        | ExprKind::Like {
            expr: l,
            pattern: r,
            ..
        } => {
            walk(l, f);
            walk(r, f);
        }
        ExprKind::In { expr, list, .. } => {
            walk(expr, f);
            list.iter().for_each(|a| walk(a, f));
        }
        ExprKind::Between { expr, lo, hi, .. } => {
            walk(expr, f);
            walk(lo, f);
            walk(hi, f);
        }
        ExprKind::Case {
            operand,
            whens,
            else_,
        } => {
            if let Some(o) = operand {
                walk(o, f);
            }
            for (w, t) in whens {
                walk(w, f);
                walk(t, f);
            }
            if let Some(x) = else_ {
                walk(x, f);
            }
        }
    }
}

impl Compiler<'_> {
    fn at(&self, e: &Expr, msg: impl Into<String>) -> SqlError {
        SqlError::at(self.src, e.start, msg)
    }

    fn text(&self, e: &Expr) -> &str {
        self.src.get(e.start..e.end).unwrap_or("?").trim()
    }

    fn default_name(&self, e: &Expr) -> String {
        if let ExprKind::Column(path) = &e.kind
            && let Some(PathSeg::Field(f)) = path.last()
        {
            return f.clone();
        }
        self.text(e).to_string()
    }

    fn mk(&self, kind: CKind, e: &Expr) -> CExpr {
        CExpr {
            kind,
            start: e.start as u32,
            end: e.end as u32,
        }
    }

    fn condition(&mut self, e: &Expr, scope: Scope, clause: &str) -> Result<CExpr, SqlError> {
        let (ce, ty) = self.expr(e, scope)?;
        if !(ty.is_dynamic() || ty == Ty::Bool) {
            return Err(self.at(
                e,
                format!("{clause} expects a boolean condition, found {}", ty.name()),
            ));
        }
        Ok(ce)
    }

    fn boxed(&mut self, e: &Expr, scope: Scope) -> Result<(Box<CExpr>, Ty), SqlError> {
        let (c, t) = self.expr(e, scope)?;
        Ok((Box::new(c), t))
    }

    fn field_slot(&mut self, name: &str) -> usize {
        match self.fields.iter().position(|f| &**f == name) {
            Some(i) => i,
            None => {
                self.fields.push(Arc::from(name));
                self.fields.len() - 1
            }
        }
    }

    fn not_grouped(&self, e: &Expr, what: &str) -> SqlError {
        self.at(
            e,
            format!("{what} must appear in GROUP BY or be inside an aggregate function"),
        )
    }

    /// Compiles an expression and infers its static type; a constant
    /// sub-expression is evaluated now (see [`fold`]).
    fn expr(&mut self, e: &Expr, scope: Scope) -> Result<(CExpr, Ty), SqlError> {
        let (c, ty) = self.expr_inner(e, scope)?;
        Ok((fold(self.src, c)?, ty))
    }

    fn expr_inner(&mut self, e: &Expr, scope: Scope) -> Result<(CExpr, Ty), SqlError> {
        if let Scope::Group { having } = scope
            && let Some(r) = self.group_ref(e, having)
        {
            return Ok(r);
        }
        let (kind, ty) = match &e.kind {
            ExprKind::Lit(l) => lit(l),
            ExprKind::Call { name, args, star } => return self.call(e, name, args, *star, scope),
            ExprKind::Column(path) => self.c_column(e, scope, path)?,
            ExprKind::Neg(x) => self.c_neg(e, scope, x)?,
            ExprKind::Not(x) => self.c_not(scope, x)?,
            ExprKind::Binary { op, l, r } => self.c_binary(e, scope, *op, l, r)?,
            ExprKind::IsNull { expr, negated } => self.c_is_null(scope, expr, *negated)?,
            ExprKind::In {
                expr,
                list,
                negated,
            } => self.c_in(scope, expr, list, *negated)?,
            ExprKind::Between {
                expr,
                lo,
                hi,
                negated,
            } => self.c_between(scope, expr, lo, hi, *negated)?,
            ExprKind::Like {
                expr,
                pattern,
                negated,
            } => self.c_like(scope, expr, pattern, *negated)?,
            ExprKind::Case {
                operand,
                whens,
                else_,
            } => self.c_case(scope, operand.as_deref(), whens, else_.as_deref())?,
            ExprKind::Cast { expr, ty } => self.c_cast(scope, expr, *ty)?,
        };
        Ok((self.mk(kind, e), ty))
    }

    /// In SELECT/HAVING of an aggregate query: a group key, or (in HAVING) an output alias.
    fn group_ref(&self, e: &Expr, having: bool) -> Option<(CExpr, Ty)> {
        if !self.key_canon.is_empty() {
            let c = canon(e);
            if let Some(i) = self.key_canon.iter().position(|k| *k == c) {
                return Some((self.mk(CKind::Key(i), e), Ty::Any));
            }
        }
        if having
            && let ExprKind::Column(path) = &e.kind
            && let [PathSeg::Field(name)] = path.as_slice()
            && let Some(i) = self.aliases.iter().position(|a| a == name)
        {
            return Some((self.mk(CKind::Out(i), e), Ty::Any));
        }
        None
    }

    fn c_column(
        &mut self,
        e: &Expr,
        scope: Scope,
        path: &[PathSeg],
    ) -> Result<(CKind, Ty), SqlError> {
        Ok({
            if matches!(scope, Scope::Group { .. }) {
                return Err(self.not_grouped(e, &format!("column '{}'", self.text(e))));
            }
            let PathSeg::Field(first) = &path[0] else {
                return Err(self.at(e, "a column path must start with a field name"));
            };
            let slot = self.field_slot(first);
            if path.len() == 1 {
                (CKind::Field(slot), Ty::Any)
            } else {
                (
                    CKind::Path(slot, path[1..].to_vec().into_boxed_slice()),
                    Ty::Any,
                )
            }
        })
    }

    fn c_neg(&mut self, e: &Expr, scope: Scope, x: &Expr) -> Result<(CKind, Ty), SqlError> {
        Ok({
            let (c, t) = self.boxed(x, scope)?;
            if !(t.is_dynamic() || t.is_num()) {
                return Err(self.at(e, format!("cannot negate {}", t.name())));
            }
            (CKind::Neg(c), t)
        })
    }

    fn c_not(&mut self, scope: Scope, x: &Expr) -> Result<(CKind, Ty), SqlError> {
        Ok({
            let (c, t) = self.boxed(x, scope)?;
            if !(t.is_dynamic() || t == Ty::Bool) {
                return Err(self.at(x, format!("NOT expects a boolean, found {}", t.name())));
            }
            (CKind::Not(c), Ty::Bool)
        })
    }

    fn c_binary(
        &mut self,
        e: &Expr,
        scope: Scope,
        op: BinOp,
        l: &Expr,
        r: &Expr,
    ) -> Result<(CKind, Ty), SqlError> {
        Ok({
            let (lc, lt) = self.boxed(l, scope)?;
            let (rc, rt) = self.boxed(r, scope)?;
            let ty = self.binary_type(e, op, lt, rt, l, r)?;
            // `x / 0` fails for every x that is not NULL.
            if matches!(op, BinOp::Div | BinOp::Mod) && is_zero(&rc) {
                return Err(self.at(e, format!("division by zero in '{}'", self.text(e))));
            }
            (CKind::Bin(op, lc, rc), ty)
        })
    }

    fn c_is_null(
        &mut self,
        scope: Scope,
        expr: &Expr,
        negated: bool,
    ) -> Result<(CKind, Ty), SqlError> {
        Ok((CKind::IsNull(self.boxed(expr, scope)?.0, negated), Ty::Bool))
    }

    fn c_in(
        &mut self,
        scope: Scope,
        expr: &Expr,
        list: &[Expr],
        negated: bool,
    ) -> Result<(CKind, Ty), SqlError> {
        Ok({
            let (x, xt) = self.boxed(expr, scope)?;
            let mut items = Vec::new();
            for it in list {
                let (c, t) = self.expr(it, scope)?;
                if !comparable(xt, t) {
                    return Err(self.at(
                        it,
                        format!("cannot compare {} and {} in IN", xt.name(), t.name()),
                    ));
                }
                items.push(c);
            }
            (CKind::In(x, items, negated), Ty::Bool)
        })
    }

    fn c_between(
        &mut self,
        scope: Scope,
        expr: &Expr,
        lo: &Expr,
        hi: &Expr,
        negated: bool,
    ) -> Result<(CKind, Ty), SqlError> {
        Ok({
            let (x, xt) = self.boxed(expr, scope)?;
            let (l, lt) = self.boxed(lo, scope)?;
            let (h, ht) = self.boxed(hi, scope)?;
            for (t, at) in [(lt, lo), (ht, hi)] {
                if !comparable(xt, t) {
                    return Err(self.at(
                        at,
                        format!("cannot compare {} and {} in BETWEEN", xt.name(), t.name()),
                    ));
                }
            }
            (CKind::Between(x, l, h, negated), Ty::Bool)
        })
    }

    fn c_like(
        &mut self,
        scope: Scope,
        expr: &Expr,
        pattern: &Expr,
        negated: bool,
    ) -> Result<(CKind, Ty), SqlError> {
        Ok({
            let (x, xt) = self.boxed(expr, scope)?;
            let (p, pt) = self.boxed(pattern, scope)?;
            for (t, at) in [(xt, expr), (pt, pattern)] {
                if !(t.is_dynamic() || t == Ty::Str) {
                    return Err(self.at(at, format!("LIKE expects a string, found {}", t.name())));
                }
            }
            (CKind::Like(x, p, negated), Ty::Bool)
        })
    }

    fn c_case(
        &mut self,
        scope: Scope,
        operand: Option<&Expr>,
        whens: &[(Expr, Expr)],
        else_: Option<&Expr>,
    ) -> Result<(CKind, Ty), SqlError> {
        Ok({
            let op = match operand {
                Some(o) => Some(self.boxed(o, scope)?.0),
                None => None,
            };
            let mut out_ty: Option<Ty> = None;
            let mut merge = |t: Ty| {
                out_ty = Some(match out_ty {
                    None => t,
                    Some(Ty::Null) => t,
                    Some(p) if p == t || t == Ty::Null => p,
                    Some(p) if p.is_num() && t.is_num() => Ty::Num,
                    _ => Ty::Any,
                })
            };
            let mut arms = Vec::new();
            for (w, t) in whens {
                let (wc, wt) = self.expr(w, scope)?;
                if op.is_none() && !(wt.is_dynamic() || wt == Ty::Bool) {
                    return Err(self.at(
                        w,
                        format!("WHEN expects a boolean condition, found {}", wt.name()),
                    ));
                }
                let (tc, tt) = self.expr(t, scope)?;
                merge(tt);
                arms.push((wc, tc));
            }
            let els = match else_ {
                Some(x) => {
                    let (c, t) = self.boxed(x, scope)?;
                    merge(t);
                    Some(c)
                }
                None => None,
            };
            (CKind::Case(op, arms, els), out_ty.unwrap_or(Ty::Any))
        })
    }

    fn c_cast(&mut self, scope: Scope, expr: &Expr, ty: CastTy) -> Result<(CKind, Ty), SqlError> {
        Ok({
            let (x, _) = self.boxed(expr, scope)?;
            let t = match ty {
                CastTy::Int => Ty::Int,
                CastTy::Float => Ty::Float,
                CastTy::String => Ty::Str,
                CastTy::Bool => Ty::Bool,
                CastTy::Json => Ty::Any,
            };
            (CKind::Cast(x, ty), t)
        })
    }

    fn binary_type(
        &self,
        e: &Expr,
        op: BinOp,
        lt: Ty,
        rt: Ty,
        l: &Expr,
        r: &Expr,
    ) -> Result<Ty, SqlError> {
        let dynamic = lt.is_dynamic() || rt.is_dynamic();
        Ok(match op {
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Mod => {
                for t in [lt, rt] {
                    if !(t.is_dynamic() || t.is_num()) {
                        let verb = match op {
                            BinOp::Add => "add",
                            BinOp::Sub => "subtract",
                            BinOp::Mul => "multiply",
                            BinOp::Div => "divide",
                            _ => "take the remainder of",
                        };
                        return Err(self.at(
                            e,
                            format!("cannot {verb} {} and {}", describe(lt, l), describe(rt, r)),
                        ));
                    }
                }
                if dynamic {
                    Ty::Any
                } else if lt == Ty::Int && rt == Ty::Int {
                    Ty::Int
                } else if lt == Ty::Float || rt == Ty::Float {
                    Ty::Float
                } else {
                    Ty::Num
                }
            }
            BinOp::Concat => Ty::Str,
            BinOp::And | BinOp::Or => {
                for (t, x) in [(lt, l), (rt, r)] {
                    if !(t.is_dynamic() || t == Ty::Bool) {
                        return Err(self.at(
                            x,
                            format!("{} expects a boolean, found {}", op.symbol(), t.name()),
                        ));
                    }
                }
                Ty::Bool
            }
            BinOp::Eq | BinOp::Ne => Ty::Bool,
            _ => {
                if !comparable(lt, rt) {
                    return Err(
                        self.at(e, format!("cannot compare {} and {}", lt.name(), rt.name()))
                    );
                }
                Ty::Bool
            }
        })
    }
}

/// An operand's type for messages: its static type, or what is known about a
/// value whose type is only known at run time (never the internal "any").
fn describe(t: Ty, e: &Expr) -> &'static str {
    match (t, &e.kind) {
        (Ty::Any, ExprKind::Column(_)) => "a payload field",
        (Ty::Any, _) => "a value of unknown type",
        _ => t.name(),
    }
}

/// Whether `c` is the constant 0 (INT or FLOAT).
fn is_zero(c: &CExpr) -> bool {
    matches!(&c.kind, CKind::Const(Value::Int(0)))
        || matches!(&c.kind, CKind::Const(Value::Float(f)) if *f == 0.0)
}

/// Constant folding: an operator, CAST, CASE or scalar function whose
/// operands are all constants is evaluated once, now. If that fails, the
/// expression would fail on every message that reaches it, so the rule is
/// refused with the evaluation error at the expression (`SELECT 1/0`:
/// `division by zero in '1/0'`). Meta columns (`topic()`, `now()`...), fields
/// and aggregates are never constant.
fn fold(src: &str, c: CExpr) -> Result<CExpr, SqlError> {
    let konst = |x: &CExpr| matches!(x.kind, CKind::Const(_));
    let foldable = match &c.kind {
        CKind::Neg(x) | CKind::Not(x) | CKind::IsNull(x, _) | CKind::Cast(x, _) => konst(x),
        CKind::Bin(_, l, r) | CKind::Like(l, r, _) => konst(l) && konst(r),
        CKind::In(x, list, _) => konst(x) && list.iter().all(konst),
        CKind::Between(x, lo, hi, _) => konst(x) && konst(lo) && konst(hi),
        CKind::Case(op, arms, els) => {
            op.as_deref().is_none_or(konst)
                && arms.iter().all(|(w, t)| konst(w) && konst(t))
                && els.as_deref().is_none_or(konst)
        }
        CKind::Call(_, args) => args.iter().all(konst),
        _ => false,
    };
    if !foldable {
        return Ok(c);
    }
    let ctx = crate::expr::Ctx {
        sql: src,
        fields: &[],
        ev: None,
        now: 0,
        keys: &[],
        aggs: &[],
        outs: &[],
        window: (0, 0),
    };
    match c.eval(&ctx) {
        Ok(v) => Ok(CExpr {
            kind: CKind::Const(v),
            ..c
        }),
        Err(e) => Err(SqlError::at(src, c.start as usize, e.message)),
    }
}

/// A literal's value and type.
fn lit(l: &Lit) -> (CKind, Ty) {
    let (v, t) = match l {
        Lit::Null => (Value::Null, Ty::Null),
        Lit::Bool(b) => (Value::Bool(*b), Ty::Bool),
        Lit::Int(i) => (Value::Int(*i), Ty::Int),
        Lit::Float(f) => (Value::Float(*f), Ty::Float),
        Lit::Str(s) => (Value::str(s), Ty::Str),
    };
    (CKind::Const(v), t)
}

/// Whether values of the two static types can be ordered.
fn comparable(a: Ty, b: Ty) -> bool {
    a.is_dynamic() || b.is_dynamic() || a == b || (a.is_num() && b.is_num())
}

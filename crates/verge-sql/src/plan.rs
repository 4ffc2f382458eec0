//! The compiled form of a rule: what the executor runs.

use std::sync::Arc;

use crate::agg::AggSpec;
use crate::ast::WindowKind;
use crate::expr::CExpr;

/// A validated, compiled rule.
#[derive(Debug)]
pub(crate) struct Plan {
    pub sql: String,
    pub sources: Vec<String>,
    /// Top-level payload fields the query reads, by slot.
    pub field_names: Vec<Arc<str>>,
    /// Whether `SELECT *` needs every top-level field.
    pub star: bool,
    /// Explicit output names; `*` skips payload fields with these names.
    pub explicit_names: Vec<Arc<str>>,
    pub where_: Option<CExpr>,
    pub items: Vec<Item>,
    pub agg: Option<AggPlan>,
}

/// A SELECT output.
#[derive(Debug)]
pub(crate) enum Item {
    /// All top-level payload fields.
    Star,
    /// One named column.
    Col(Arc<str>, CExpr),
}

/// The aggregation part of a plan.
#[derive(Debug)]
pub(crate) struct AggPlan {
    /// GROUP BY key expressions (per message).
    pub keys: Vec<CExpr>,
    /// Aggregates computed per group.
    pub aggs: Vec<AggSpec>,
    pub window: WindowKind,
    pub having: Option<CExpr>,
    /// `TIMESTAMP BY` expression and lateness (ms).
    pub event_time: Option<(CExpr, i64)>,
}

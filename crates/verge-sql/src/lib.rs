//! Verge's streaming SQL core: parser, validator/planner, evaluator, functions, aggregates and windows.
//!
//! A rule is compiled once with [`Query::parse`], which parses *and* validates
//! it completely (types where they are known, functions and arity, aggregate
//! placement, GROUP BY rules, window arguments, topic filters) and resolves
//! every column and function to a slot or an enum, so the hot loop does no
//! lookups by name. Each running rule owns an [`Executor`] from
//! [`Query::start`]: the runtime [`push`](Executor::push)es every matching
//! message, calls [`advance`](Executor::advance) when
//! [`next_deadline`](Executor::next_deadline) is due, and gets [`Row`]s back;
//! [`flush`](Executor::flush) closes every open window at once (the end of a
//! dry run).
//!
//! **Architecture invariant:** no I/O, no clock (time comes from
//! [`Event::timestamp_ms`] and `advance`), no async runtime, no panics on any
//! input, and every buffer is bounded by [`Limits`] with a counter in
//! [`ExecStats`].
//!
//! Why our own parser rather than `sqlparser`: it costs minutes of release
//! build, changes its API about monthly, cannot lex durations such as `10s`,
//! and cannot give our "expected X, found Y" messages with line and column.
//! The language is documented in `docs/rules.md`.

mod agg;
mod ast;
mod cast;
mod codec;
mod compile;
mod error;
mod exec;
mod expr;
mod functions;
mod lexer;
mod limits;
mod parser;
mod payload;
mod plan;
mod row;
mod time;
mod value;
mod window;

use std::sync::Arc;

pub use error::{EvalError, SqlError};
pub use exec::Executor;
pub use limits::{ExecStats, Limits};
pub use row::Row;
pub use value::Value;

/// One message as the rule engine sees it.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// The topic it was published to.
    pub topic: &'a str,
    /// The raw payload (JSON for field access; anything for `payload()`).
    pub payload: &'a [u8],
    /// The publishing client's id.
    pub client_id: &'a str,
    /// QoS it was published with.
    pub qos: u8,
    /// Processing time (ms since the Unix epoch) at which the node received it.
    pub timestamp_ms: i64,
    /// MQTT 5 user properties, in order.
    pub user_properties: &'a [(String, String)],
}

/// A compiled and validated rule. Immutable, `Send + Sync`; cloning is cheap.
#[derive(Debug, Clone)]
pub struct Query {
    plan: Arc<plan::Plan>,
}

impl Query {
    /// Parses and validates `sql` completely; errors carry line and column.
    pub fn parse(sql: &str) -> Result<Query, SqlError> {
        let st = parser::parse(sql)?;
        let plan = compile::compile(sql, st)?;
        Ok(Query {
            plan: Arc::new(plan),
        })
    }

    /// The FROM topic filters (valid MQTT topic filters).
    pub fn sources(&self) -> &[String] {
        &self.plan.sources
    }

    /// The SQL text the query was compiled from.
    pub fn sql(&self) -> &str {
        &self.plan.sql
    }

    /// Whether the query aggregates (GROUP BY, aggregate functions, a window).
    pub fn is_aggregate(&self) -> bool {
        self.plan.agg.is_some()
    }

    /// Whether the query uses event time (`TIMESTAMP BY`).
    pub fn is_event_time(&self) -> bool {
        self.plan
            .agg
            .as_ref()
            .is_some_and(|a| a.event_time.is_some())
    }

    /// The output column names in SELECT order (`*` contributes none, its columns vary per message).
    pub fn columns(&self) -> Vec<&str> {
        self.plan
            .items
            .iter()
            .filter_map(|i| match i {
                plan::Item::Col(n, _) => Some(&**n),
                plan::Item::Star => None,
            })
            .collect()
    }

    /// Whether SELECT has `*` (so rows may hold payload fields beyond
    /// [`Query::columns`]).
    pub fn has_star(&self) -> bool {
        self.plan
            .items
            .iter()
            .any(|i| matches!(i, plan::Item::Star))
    }

    /// Fresh state for one running rule.
    pub fn start(&self, limits: Limits) -> Executor {
        Executor::new(Arc::clone(&self.plan), limits)
    }
}

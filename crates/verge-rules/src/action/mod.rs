//! Actions: what a rule does with its output rows. Each kind is a small
//! component with its own config (`config.rs` of this module) and is built
//! in one explicit list ([`build`]).

mod alarm;
mod alarm_memory;
mod function;
mod log;
mod republish;
mod runner;
mod sinks;
mod webhook;

use std::sync::Arc;

use bytes::Bytes;
use verge_sql::Row;

pub use alarm::Alarms;
pub use alarm_memory::{AlarmMemory, MAX_ALARM_KEYS, RAISE_REFRESH_MS};
pub use function::{FunctionInvoker, FunctionMessage, InvokeError};
pub use republish::rule_origin;
pub use runner::{ActionInlet, ActionMetrics, ActionRunner, ActionStatus};
pub use sinks::{TelemetryPoint, TelemetryStore, Upstream};

use crate::ServiceError;
use crate::Services;
use crate::config::ActionKind;
use crate::error::RuleError;

/// A boxed future, so actions can be trait objects (the workspace's one
/// alias, re-exported for the services' implementations).
pub(crate) use verge_net::BoxFuture;

/// One row a rule produced, as every action of the rule sees it.
#[derive(Debug)]
pub struct Output {
    /// Id of the rule that produced it.
    pub rule: Arc<str>,
    /// The row, columns in SELECT order.
    pub row: Row,
    /// The row as a JSON object, serialised once for all actions.
    pub json: Bytes,
    /// Topic of the message that produced the row (for windowed rules, the
    /// last message of the window's group).
    pub topic: Arc<str>,
    /// When the row was produced (ms since the Unix epoch).
    pub time_ms: i64,
    /// In-node steps behind this row (the input message's `hops` + 1);
    /// what an action publishes carries it on.
    pub hops: u8,
}

/// Why an action failed to handle one row.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ActionError {
    /// Whether trying again may succeed (network down, 5xx) or not (bad
    /// request, topic the template made invalid).
    pub retry: bool,
    /// What went wrong, in lower case.
    pub message: String,
}

impl ActionError {
    /// A failure worth retrying.
    pub fn transient(message: impl Into<String>) -> ActionError {
        ActionError {
            retry: true,
            message: message.into(),
        }
    }

    /// A failure that will not go away by retrying.
    pub fn permanent(message: impl Into<String>) -> ActionError {
        ActionError {
            retry: false,
            message: message.into(),
        }
    }

    /// A service's failure, retried only if the service says it may help;
    /// `context` (the action or function) goes in front of the message.
    pub fn service(context: &str, e: ServiceError) -> ActionError {
        ActionError {
            retry: e.retry,
            message: format!("{context}: {e}"),
        }
    }
}

/// Something a rule does with each of its rows.
pub trait Action: Send + Sync + 'static {
    /// Handle one row. Called by the action's own task, one row at a time,
    /// so a slow action holds up nothing but its own queue.
    fn deliver<'a>(&'a self, out: &'a Output) -> BoxFuture<'a, Result<(), ActionError>>;

    /// Handle the rows waiting in the queue together, one result per row
    /// in order. The runner retries a failed row alone through
    /// [`Action::deliver`]. Actions whose cost is per call rather than per
    /// row (a durable append, a disk write) override this; the default
    /// delivers one row after the other.
    fn deliver_batch<'a>(
        &'a self,
        outs: &'a [Arc<Output>],
    ) -> BoxFuture<'a, Vec<Result<(), ActionError>>> {
        Box::pin(async move {
            let mut results = Vec::with_capacity(outs.len());
            for out in outs {
                results.push(self.deliver(out).await);
            }
            results
        })
    }
}

/// The columns an `alarm` action's templates use (for the rule's check
/// that they exist).
pub(crate) fn alarm_columns(c: &crate::config::AlarmConfig) -> Vec<String> {
    alarm::Settings::new(c)
        .map(|s| s.columns().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Check an action's settings without a node: the checks [`build`] makes,
/// minus whether the node has the service the action needs (a function
/// runtime, a local store, a cloud link and its lane).
pub fn check(kind: &ActionKind) -> Result<(), RuleError> {
    match kind {
        ActionKind::Republish(c) => republish::Republish::settings(c).map(drop),
        ActionKind::Function(c) => function::Function::settings(c),
        ActionKind::Store(_) => Ok(()),
        ActionKind::Upstream(c) => sinks::UpstreamAction::settings(c).map(drop),
        ActionKind::Webhook(c) => webhook::Webhook::new(c).map(drop),
        ActionKind::Log(c) => log::Log::new(c).map(drop),
        ActionKind::Alarm(c) => alarm::Settings::new(c).map(drop),
    }
}

/// Build an action from its config: the one list of action kinds.
pub fn build(kind: &ActionKind, services: &Services) -> Result<Arc<dyn Action>, RuleError> {
    Ok(match kind {
        ActionKind::Republish(c) => Arc::new(republish::Republish::new(c, services)?),
        ActionKind::Function(c) => Arc::new(function::Function::new(c, services)?),
        ActionKind::Store(c) => Arc::new(sinks::Store::new(c, services)?),
        ActionKind::Upstream(c) => Arc::new(sinks::UpstreamAction::new(c, services)?),
        ActionKind::Webhook(c) => Arc::new(webhook::Webhook::new(c)?),
        ActionKind::Log(c) => Arc::new(log::Log::new(c)?),
        ActionKind::Alarm(c) => Arc::new(alarm::Alarm::new(c, services)?),
    })
}

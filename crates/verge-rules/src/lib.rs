//! Verge's rule engine runtime: it runs each rule's compiled SQL
//! (`verge-sql`) over the broker's topic streams and hands the rows to the
//! rule's actions.
//!
//! A running rule is one task that reads a single in-process broker
//! subscription for all of its `FROM` filters in batches, feeds the
//! executor, closes windows when their deadline passes and offers every row
//! to each action's bounded queue. Every action runs in a task of its own
//! with retries and counters, so a slow or failing action only fills (and
//! then drops from) its own queue: it never stalls the rule, other rules or
//! the router. A rule's own republished rows are not fed back into it.
//!
//! Two entry points need no node: [`validate`] checks a rule (id, SQL,
//! action settings) the way [`Engine::create`] does before it changes
//! anything, and [`dry_run`] runs SQL over sample messages; the cloud uses
//! both.

pub mod action;
pub mod config;
mod dry_run;
mod engine;
mod error;
mod rule;
mod service;
mod template;
mod validate;

use std::sync::Arc;

pub use action::{
    Action, ActionError, ActionStatus, AlarmMemory, Alarms, FunctionInvoker, FunctionMessage,
    InvokeError, Output, TelemetryPoint, TelemetryStore, Upstream,
};
pub use config::{ActionKind, RuleConfig, RuleEngineConfig};
pub use dry_run::{MAX_TEST_ROWS, MAX_TEST_SAMPLES, Sample, SampleError, TestOutput, dry_run};
pub use engine::{Engine, RuleInfo, RuleMetrics};
pub use error::RuleError;
pub use service::{Domain, ServiceError};
pub use template::Template;
pub use validate::validate;

/// What actions may use on this node. Services a node does not have are
/// `None`; a rule whose action needs one is refused when it is created.
#[derive(Clone)]
pub struct Services {
    /// The broker, for subscriptions and republishing.
    pub broker: verge_broker::BrokerHandle,
    /// The function runtime.
    pub functions: Option<Arc<dyn FunctionInvoker>>,
    /// The local time-series store.
    pub store: Option<Arc<dyn TelemetryStore>>,
    /// The cache queue towards the cloud.
    pub upstream: Option<Arc<dyn Upstream>>,
    /// Where `alarm` actions' events go (the cloud link and the local broker).
    pub alarms: Option<Arc<dyn Alarms>>,
    /// The last alarm event sent per (device, alarm type), shared by every
    /// `alarm` action, so only changes are sent (see [`AlarmMemory`]).
    pub alarm_memory: Arc<AlarmMemory>,
}

impl Services {
    /// Only the broker.
    pub fn new(broker: verge_broker::BrokerHandle) -> Services {
        Services {
            broker,
            functions: None,
            store: None,
            upstream: None,
            alarms: None,
            alarm_memory: Arc::new(AlarmMemory::new()),
        }
    }
}

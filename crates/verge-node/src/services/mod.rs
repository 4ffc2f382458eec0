//! The node's services behind the rule engine's service traits — the
//! `store` action onto the local time-series store, the `upstream` action
//! onto the cache queue, the `alarm` action onto the cache queue and the
//! local broker, the `function` action onto the function registry —
//! and the subscriptions that trigger functions directly.

mod alarms;
mod functions;
mod store;
mod upstream;

pub use alarms::{ALARM_LANE, NodeAlarms};
pub use functions::{FunctionsInvoker, Triggers, publish_outputs};
pub use store::TsdbStore;
pub use upstream::QueueUpstream;

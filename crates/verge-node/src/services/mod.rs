//! The node's services behind the rule engine's service traits — the
//! `store` action onto the local time-series store, the `upstream` action
//! onto the cache queue, the `function` action onto the function registry —
//! and the subscriptions that trigger functions directly.

mod functions;
mod store;
mod upstream;

pub use functions::{FunctionsInvoker, Triggers, publish_outputs};
pub use store::TsdbStore;
pub use upstream::QueueUpstream;

//! The boundary every function runtime implements.

use std::sync::Arc;

use crate::message::{CallError, Message};
use crate::spec::Limits;
use crate::state::State;

/// A boxed, sendable future (the workspace's one alias).
pub(crate) use verge_net::BoxFuture;

/// What a runtime is given about the function it runs.
#[derive(Clone)]
pub struct HostContext {
    /// Function name (for logs and the worker's environment).
    pub name: Arc<str>,
    /// Version number being run.
    pub version: u64,
    /// The function's config as a JSON document.
    pub config: Arc<str>,
    /// The function's key-value state.
    pub state: Arc<State>,
    /// Its limits.
    pub limits: Limits,
}

/// One prepared version of one function. Preparation (validation,
/// compilation, starting workers) happens when the runtime is built, at
/// deploy; `call` only runs.
pub trait Runtime: Send + Sync + 'static {
    /// Run the function on one message.
    fn call(&self, msg: Message) -> BoxFuture<'_, Result<Vec<Message>, CallError>>;
    /// Memory the function holds now, in bytes (wasm linear memories; for
    /// processes, their resident set).
    fn memory_bytes(&self) -> u64;
    /// Stop: no new calls; finish the ones in progress (up to a grace
    /// period), then release instances or end worker processes.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

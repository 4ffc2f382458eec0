//! Verge's edge functions: user code run per message in a sandbox.
//!
//! Two runtimes sit behind one boundary, [`Runtime`]:
//! - [`wasm`]: WebAssembly core modules built against the Verge ABI
//!   (`docs/functions.md`), run by the `wasmi` interpreter with a memory
//!   limit, fuel per call and a bounded pool of reused instances;
//! - [`process`]: long-lived local worker processes speaking
//!   line-delimited JSON over stdin/stdout, restarted with backoff.
//!
//! [`Functions`] is the node's registry: deploy (versioned, artifacts kept
//! on disk), list, get, delete, invoke, per-function metrics and state.
//!
//! Both need the default `wasm` feature; without it the crate is the
//! process runtime and its wire format alone, as the fuzz target
//! (`fuzz/fuzz_targets/fuzz_function_wire.rs`) builds it.

pub mod abi;
mod message;
mod metrics;
pub mod process;
#[cfg(feature = "wasm")]
mod registry;
mod runtime;
mod spec;
mod state;
#[cfg(feature = "wasm")]
pub mod wasm;

pub use message::{CallError, Message};
pub use metrics::{FunctionMetrics, MetricsSnapshot};
#[cfg(feature = "wasm")]
pub use registry::{DeployError, FunctionInfo, Functions, FunctionsConfig, MAX_MODULE_BYTES};
pub use runtime::{HostContext, Runtime};
pub use spec::{FunctionSpec, Limits, MAX_NAME, RuntimeKind, validate_name};
pub use state::{MAX_KEY, SetError, State};

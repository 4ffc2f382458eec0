//! What goes into and comes out of a function, and how a call fails.

use bytes::Bytes;

/// One message into or out of a function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The source topic going in; the topic to publish to coming out.
    pub topic: String,
    /// Payload bytes.
    pub payload: Bytes,
    /// Content type, e.g. `application/json`.
    pub content_type: Option<String>,
    /// MQTT 5 user properties, in order.
    pub user_properties: Vec<(String, String)>,
    /// Message time in ms since the Unix epoch.
    pub time_ms: i64,
    /// QoS (0, 1 or 2).
    pub qos: u8,
    /// Retain flag (outputs only).
    pub retain: bool,
}

impl Message {
    /// A QoS 1 message with no content type or properties, timed now.
    pub fn new(topic: impl Into<String>, payload: impl Into<Bytes>) -> Message {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            content_type: None,
            user_properties: Vec::new(),
            time_ms: now_ms(),
            qos: 1,
            retain: false,
        }
    }
}

/// Milliseconds since the Unix epoch (re-exported for the runtimes and
/// the node).
pub(crate) use verge_net::now_ms;

/// Why one call failed. Every variant is recorded against the function; none
/// of them stops the node or other functions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No function of that name is deployed.
    #[error("no function named `{0}`")]
    NotFound(String),
    /// The function ran and returned an error of its own.
    #[error("function returned an error: {0}")]
    Returned(String),
    /// The wasm module trapped (unreachable, out-of-bounds access, stack
    /// overflow, a memory grow over the limit that the module turned into a
    /// trap…).
    #[error("trap: {0}")]
    Trap(String),
    /// The wasm call used up its fuel (an endless or too long loop).
    #[error("out of fuel: the call ran more than {0} instructions")]
    OutOfFuel(u64),
    /// The process call took longer than the function's timeout.
    #[error("timeout after {0} ms")]
    Timeout(u64),
    /// The worker process died during the call or is not running.
    #[error("worker exited: {0}")]
    WorkerExited(String),
    /// The function's answer could not be understood.
    #[error("bad output: {0}")]
    BadOutput(String),
    /// The runtime could not run the call (instance creation failed,
    /// function shutting down…).
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl CallError {
    /// Whether this failure counts as a timeout (CPU or wall clock) rather
    /// than an error in the metrics.
    pub fn is_timeout(&self) -> bool {
        matches!(self, CallError::OutOfFuel(_) | CallError::Timeout(_))
    }

    /// Whether trying the same message again may succeed (a worker
    /// restarting, an instance that could not be created yet).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            CallError::WorkerExited(_) | CallError::Unavailable(_) | CallError::Timeout(_)
        )
    }

    /// A short machine-readable code for APIs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            CallError::NotFound(_) => "not_found",
            CallError::Returned(_) => "function_error",
            CallError::Trap(_) => "trap",
            CallError::OutOfFuel(_) => "out_of_fuel",
            CallError::Timeout(_) => "timeout",
            CallError::WorkerExited(_) => "worker_exited",
            CallError::BadOutput(_) => "bad_output",
            CallError::Unavailable(_) => "unavailable",
        }
    }
}

//! `log`: write each row to the node's log (for debugging rules).

use super::{Action, ActionError, BoxFuture, Output};
use crate::config::LogConfig;

/// Logs rows at a fixed level.
pub struct Log {
    level: tracing::Level,
}

impl Log {
    /// Build from settings; an unknown level is `info`.
    pub fn new(c: &LogConfig) -> Log {
        let level = match c.level.to_ascii_lowercase().as_str() {
            "error" => tracing::Level::ERROR,
            "warn" => tracing::Level::WARN,
            "debug" => tracing::Level::DEBUG,
            "trace" => tracing::Level::TRACE,
            _ => tracing::Level::INFO,
        };
        Log { level }
    }
}

impl Action for Log {
    fn deliver<'a>(&'a self, out: &'a Output) -> BoxFuture<'a, Result<(), ActionError>> {
        let row = String::from_utf8_lossy(&out.json);
        let (rule, topic) = (&*out.rule, &*out.topic);
        match self.level {
            tracing::Level::ERROR => tracing::error!(rule, topic, %row, "rule row"),
            tracing::Level::WARN => tracing::warn!(rule, topic, %row, "rule row"),
            tracing::Level::DEBUG => tracing::debug!(rule, topic, %row, "rule row"),
            tracing::Level::TRACE => tracing::trace!(rule, topic, %row, "rule row"),
            _ => tracing::info!(rule, topic, %row, "rule row"),
        }
        Box::pin(async { Ok(()) })
    }
}

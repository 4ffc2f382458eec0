//! `log`: write each row to the node's log (for debugging rules).

use super::{Action, ActionError, BoxFuture, Output};
use crate::config::LogConfig;
use crate::error::RuleError;

/// Logs rows at a fixed level.
pub struct Log {
    level: tracing::Level,
}

impl Log {
    /// Build from settings; the level must be one of error, warn, info,
    /// debug, trace.
    pub fn new(c: &LogConfig) -> Result<Log, RuleError> {
        let level = match c.level.to_ascii_lowercase().as_str() {
            "error" => tracing::Level::ERROR,
            "warn" => tracing::Level::WARN,
            "info" => tracing::Level::INFO,
            "debug" => tracing::Level::DEBUG,
            "trace" => tracing::Level::TRACE,
            other => {
                return Err(RuleError::action(
                    "log",
                    format!("level `{other}` is not one of error, warn, info, debug, trace"),
                ));
            }
        };
        Ok(Log { level })
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

//! Lines in the node's log, under the function's name. The node cuts lines
//! at 4 KiB.
//!
//! ```
//! use verge_function::log;
//!
//! log::info("started");
//! log::warn(&format!("sensor {} is silent", "d1"));
//! ```

use crate::sys;

/// A log level, as the `log` import numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Something failed.
    Error = 0,
    /// Something looks wrong.
    Warn = 1,
    /// Something worth knowing happened.
    Info = 2,
    /// Detail for whoever debugs the function.
    Debug = 3,
    /// Even more detail.
    Trace = 4,
}

/// Write `line` at `level`.
pub fn write(level: Level, line: &str) {
    sys::log(level as i32, line);
}

/// Write `line` at level error.
pub fn error(line: &str) {
    write(Level::Error, line);
}

/// Write `line` at level warn.
pub fn warn(line: &str) {
    write(Level::Warn, line);
}

/// Write `line` at level info.
pub fn info(line: &str) {
    write(Level::Info, line);
}

/// Write `line` at level debug.
pub fn debug(line: &str) {
    write(Level::Debug, line);
}

/// Write `line` at level trace.
pub fn trace(line: &str) {
    write(Level::Trace, line);
}

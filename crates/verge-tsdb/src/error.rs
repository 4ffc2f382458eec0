//! The store's errors.

use std::path::PathBuf;

/// What can go wrong opening, writing or querying the store.
#[derive(Debug, thiserror::Error)]
pub enum TsdbError {
    /// A file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done (`open`, `read`, `write`...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The configuration is unusable; names the key.
    #[error("{key}: {message}")]
    Config {
        /// The config key.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A query parameter is out of range; names the parameter.
    #[error("{param}: {message}")]
    InvalidQuery {
        /// The query parameter (`from`, `to`, `limit`, `bucket`).
        param: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The write buffer is full because flushing keeps failing; retry later.
    #[error("write buffer full ({0} bytes unflushed); the last flush failed")]
    Backlog(usize),
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
}

impl TsdbError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TsdbError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn query(param: &'static str, message: impl Into<String>) -> Self {
        TsdbError::InvalidQuery {
            param,
            message: message.into(),
        }
    }
}

//! Errors of the broker library.

use std::io;

/// What went wrong starting or using the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A configuration value is wrong; the message names the key.
    #[error("config: {0}")]
    Config(String),
    /// A listener could not be bound or set up.
    #[error("listener {what}: {error}")]
    Listener {
        /// Which listener and address.
        what: String,
        /// The I/O error.
        error: io::Error,
    },
    /// TLS material could not be loaded.
    #[error("tls: {0}")]
    Tls(String),
    /// A topic or filter given to the in-process API is invalid.
    #[error("invalid topic `{0}`")]
    InvalidTopic(String),
    /// The broker has stopped.
    #[error("broker is shut down")]
    Closed,
}

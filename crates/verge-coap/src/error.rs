//! Errors of the gateway's setup and run loop (request-level problems are
//! CoAP response codes, never errors).

use thiserror::Error;

/// What can stop the gateway.
#[derive(Debug, Error)]
pub enum CoapError {
    /// A config value is invalid; the message names the key.
    #[error("{0}")]
    Config(String),
    /// Setting up DTLS failed (the TLS library's error).
    #[error("coap.dtls: {0}")]
    Dtls(String),
    /// Binding or using the UDP socket failed.
    #[error("coap socket {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

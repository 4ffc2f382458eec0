//! The SDK's one error type: what went wrong and whether trying again
//! can help ([`Error::is_retryable`]).

/// Why a call of the SDK failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The [`DeviceConfig`](crate::DeviceConfig) is not usable; `key` names
    /// the field.
    #[error("config `{key}`: {message}")]
    Config {
        /// The field (`url`, `device`, `ca_file`, ...).
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The node refused the connection for good: bad device name or
    /// secret, not authorized, client id not allowed, banned.
    #[error("the node refused the connection: {message} (reason code 0x{reason_code:02x})")]
    Refused {
        /// The MQTT 5 CONNACK reason code.
        reason_code: u8,
        /// The reason code in words.
        message: String,
    },
    /// The node refused the connection for now, or ended it (a DISCONNECT
    /// with "server unavailable", "server busy" or "server shutting down",
    /// as a stopping node sends).
    #[error("the node is not available: reason code 0x{reason_code:02x}")]
    Unavailable {
        /// The MQTT 5 CONNACK or DISCONNECT reason code.
        reason_code: u8,
    },
    /// Connecting or talking to the node failed at the socket.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake or settings failed.
    #[error("tls: {0}")]
    Tls(String),
    /// The node sent something that is not valid MQTT or not expected.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Nothing came in time (`what` says what was awaited).
    #[error("timed out waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: &'static str,
    },
    /// The node refused a shadow request (`$shadow/{d}/…/rejected`).
    #[error("shadow request rejected: {message} ({code})")]
    ShadowRejected {
        /// `version_conflict`, `invalid_update`, `too_large`, or another
        /// code the node gives.
        code: String,
        /// The node's message.
        message: String,
    },
    /// The node refused a subscription (its ACL or limits).
    #[error("the node refused the subscription to `{filter}` (reason code 0x{reason_code:02x})")]
    SubscribeRefused {
        /// The topic filter.
        filter: String,
        /// The SUBACK reason code.
        reason_code: u8,
    },
    /// A payload could not be turned into JSON.
    #[error("payload: {0}")]
    Payload(#[from] serde_json::Error),
    /// Too many shadow requests wait for answers already.
    #[error("too many shadow requests waiting for the node")]
    Busy,
    /// The device was closed ([`Device::close`](crate::Device::close)).
    #[error("the device is closed")]
    Closed,
    /// [`Device::close`](crate::Device::close) gave up with messages the
    /// node had not acknowledged.
    #[error("closed with {count} messages not acknowledged by the node")]
    Unflushed {
        /// Messages sent but not acknowledged, plus messages never sent.
        count: usize,
    },
}

impl Error {
    /// Whether the same call may succeed later (the node or the network
    /// may come back); `false` for bad config, refused credentials,
    /// rejected requests and a closed device.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. }
                | Error::Io { .. }
                | Error::Tls(_)
                | Error::Protocol(_)
                | Error::Timeout { .. }
                | Error::Busy
        )
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The error for a CONNACK reason code of 0x80 or more.
    pub(crate) fn from_connack(reason_code: u8) -> Error {
        use verge_mqtt::reason::*;
        let message = match reason_code {
            BAD_USERNAME_OR_PASSWORD => "bad device name or secret",
            NOT_AUTHORIZED => "not authorized",
            CLIENT_IDENTIFIER_NOT_VALID => "client id not allowed for this device",
            BANNED => "banned",
            UNSUPPORTED_PROTOCOL_VERSION => "mqtt 5 not supported",
            BAD_AUTHENTICATION_METHOD => "bad authentication method",
            _ => return Error::Unavailable { reason_code },
        };
        Error::Refused {
            reason_code,
            message: message.to_owned(),
        }
    }
}

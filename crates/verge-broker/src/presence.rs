//! Who is connected: the list of connected sessions
//! ([`BrokerHandle::sessions`](crate::BrokerHandle::sessions)) and a stream
//! of connects and disconnects
//! ([`BrokerHandle::session_events`](crate::BrokerHandle::session_events)),
//! for the parts of the node that act on a device's presence (the device
//! service delivers held commands when a device connects; the heartbeat
//! reports sessions).
//!
//! The stream is a bounded `tokio::sync::broadcast` channel of
//! [`SESSION_EVENTS`] events. The router sends an event only while a
//! receiver exists (one atomic load otherwise) and never waits: a receiver
//! that falls behind gets `Lagged` and should read `sessions()` again.

use std::sync::Arc;

/// How many connect/disconnect events a receiver may fall behind before it
/// lags (and must read the session list again).
pub const SESSION_EVENTS: usize = 1024;

/// A connected session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The client id.
    pub client_id: Arc<str>,
    /// The authenticated username (or certificate name); `None` for an
    /// anonymous client.
    pub username: Option<Arc<str>>,
    /// When the connection attached, ms since the Unix epoch.
    pub since_ms: u64,
    /// The listener it came through: `mqtt`, `mqtts`, `ws` or `wss`.
    pub transport: &'static str,
}

/// A session gained or lost its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEvent {
    /// The client id.
    pub client_id: Arc<str>,
    /// The authenticated username, if any.
    pub username: Option<Arc<str>>,
    /// `true` when it connected, `false` when its connection ended.
    pub connected: bool,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// The listener of the connection: `mqtt`, `mqtts`, `ws` or `wss`.
    pub transport: &'static str,
}

/// Wall-clock time in ms since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

//! Why an HTTP exchange got no answer, with messages that name the failure
//! plainly ("connection refused", "tls: invalid peer certificate …") and a
//! hint whether trying again can help.

use std::error::Error as StdError;
use std::io;

/// Why no response head arrived.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The host name could not be resolved.
    #[error("dns lookup of `{host}` failed: {}", lower(.error))]
    Resolve {
        /// The name.
        host: String,
        /// The resolver's error.
        error: io::Error,
    },
    /// The host name resolved to no address.
    #[error("dns lookup of `{host}` found no addresses")]
    NoAddress {
        /// The name.
        host: String,
    },
    /// No TCP connection to any address.
    #[error("{}", io_message(.0))]
    Connect(io::Error),
    /// The TLS handshake failed (a certificate the roots do not trust, a
    /// refused handshake, or the network).
    #[error("{}", tls_message(.0))]
    Tls(io::Error),
    /// HTTP failed: the request could not be sent, or the answer was not
    /// HTTP or was cut.
    #[error("{}", http_message(.0))]
    Http(hyper::Error),
    /// No response head before the deadline.
    #[error("timed out")]
    TimedOut,
}

impl ClientError {
    /// Whether the same request may succeed later: network failures and
    /// time-outs may pass; certificate errors and answers that are not
    /// HTTP will not.
    pub fn retry(&self) -> bool {
        match self {
            ClientError::Tls(e) => rustls_error(e).is_none(),
            ClientError::Http(e) => !e.is_parse() && find_io(e).and_then(rustls_error).is_none(),
            _ => true,
        }
    }
}

fn rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
}

fn tls_message(e: &io::Error) -> String {
    match rustls_error(e) {
        Some(tls) => format!("tls: {tls}"),
        None => io_message(e),
    }
}

fn http_message(e: &hyper::Error) -> String {
    if e.is_parse() {
        return format!("invalid response: {}", lower(e));
    }
    if let Some(io) = find_io(e) {
        return tls_message(io);
    }
    if e.is_incomplete_message() {
        return "connection closed before the response was complete".into();
    }
    if e.is_canceled() {
        return "connection closed before the request was sent".into();
    }
    lower(e)
}

/// Whether a request on a reused connection failed because the server had
/// closed that connection, before any answer came.
pub(super) fn closed_before_answer(e: &hyper::Error) -> bool {
    if e.is_canceled() || e.is_incomplete_message() {
        return true;
    }
    find_io(e).is_some_and(|io| {
        matches!(
            io.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
        )
    })
}

/// A network error in few words.
pub fn io_message(e: &io::Error) -> String {
    use io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".into(),
        K::ConnectionReset => "connection reset".into(),
        K::ConnectionAborted => "connection aborted".into(),
        K::BrokenPipe => "connection closed while sending".into(),
        K::UnexpectedEof => "connection closed unexpectedly".into(),
        K::TimedOut => "connect timed out".into(),
        K::HostUnreachable => "host unreachable".into(),
        K::NetworkUnreachable => "network unreachable".into(),
        _ => lower(e),
    }
}

/// The first `io::Error` in an error's source chain.
fn find_io<'e>(e: &'e (dyn StdError + 'static)) -> Option<&'e io::Error> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        next = err.source();
    }
    None
}

/// An error's text with a lower-case first letter.
pub fn lower(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

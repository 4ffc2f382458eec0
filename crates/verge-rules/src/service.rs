//! The error of the services a node lends to actions (function runtime,
//! local store, cache queue): whose side the failure is on and whether
//! another attempt can help, so the action runner retries only what may
//! succeed later.

use std::fmt;

/// Whose side a service failure is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// What was asked for is wrong and stays wrong: a record too large for
    /// its lane, an unknown lane, a function that traps on this input.
    User,
    /// Something outside the service that may change: the disk, a worker
    /// process restarting, a lane full until the cloud drains it.
    External,
    /// The service itself: stopped, closed, or a bug.
    Internal,
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Domain::User => "user",
            Domain::External => "external",
            Domain::Internal => "internal",
        })
    }
}

/// Why a service call failed. The service decides `retry`, because only it
/// knows whether the same call can succeed later; the action runner retries
/// only when it is `true`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ServiceError {
    /// Whose side the failure is on.
    pub domain: Domain,
    /// Whether the same call may succeed later.
    pub retry: bool,
    /// What happened, in lower case.
    pub message: String,
}

impl ServiceError {
    /// A failure worth another attempt.
    pub fn transient(domain: Domain, message: impl Into<String>) -> ServiceError {
        ServiceError {
            domain,
            retry: true,
            message: message.into(),
        }
    }

    /// A failure no retry can fix.
    pub fn permanent(domain: Domain, message: impl Into<String>) -> ServiceError {
        ServiceError {
            domain,
            retry: false,
            message: message.into(),
        }
    }
}

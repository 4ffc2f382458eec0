//! Errors of the rule engine's management operations.

use verge_sql::SqlError;

/// Why a rule could not be created, changed or found. Messages are for
/// people and name what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// No rule with this id.
    #[error("no rule with id `{0}`")]
    NotFound(String),
    /// A rule with this id exists already.
    #[error("a rule with id `{0}` exists already")]
    Exists(String),
    /// The id is empty or has characters other than letters, digits, `-`, `_`.
    #[error("invalid rule id `{0}`: use 1 to 64 letters, digits, `-` or `_`")]
    InvalidId(String),
    /// The SQL does not parse or validate.
    #[error("invalid sql: {0}")]
    Sql(#[from] SqlError),
    /// An action's settings are wrong.
    #[error("actions[{index}] ({kind}): {message}")]
    Action {
        /// Position of the action in the rule's list.
        index: usize,
        /// Its `type`.
        kind: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A test sample is malformed.
    #[error("samples[{index}]: {message}")]
    Sample {
        /// Position of the sample.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// The broker stopped.
    #[error("the broker is not running")]
    BrokerClosed,
    /// A failure of the engine itself (a bug); details are in the log.
    #[error("internal error: {0}")]
    Internal(String),
}

impl RuleError {
    /// An error in action settings; the index is filled in by the caller.
    pub fn action(kind: &'static str, message: impl Into<String>) -> RuleError {
        RuleError::Action {
            index: 0,
            kind,
            message: message.into(),
        }
    }
}

//! Errors: [`CloudError`] for starting and running the cloud, and the API's
//! one [`AppError`], answered as `{"error": {"code", "message"}}` (the type,
//! the body and the `ApiJson` extractor are `verge_net`'s `app_error!`; a
//! JSON body that cannot be taken is 400 `invalid_request`, or 413
//! `payload_too_large` over the limit); plus the query and path
//! extractors whose rejections become an [`AppError`].

use axum::extract::FromRequestParts;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use verge_rules::RuleError;

/// Why the cloud could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A file or socket failed.
    #[error("{what}: {error}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        error: std::io::Error,
    },
    /// The broker failed.
    #[error("mqtt endpoint: {0}")]
    Broker(#[from] verge_broker::BrokerError),
    /// Something else (function sandbox, config).
    #[error("{0}")]
    Other(String),
}

verge_net::app_error!(verge_net::http::JsonRejections::TOO_LARGE_CODE);

impl AppError {
    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> AppError {
        AppError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409 `conflict`.
    pub fn conflict(message: impl Into<String>) -> AppError {
        AppError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 400 `invalid_request`.
    pub fn invalid(message: impl Into<String>) -> AppError {
        AppError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> AppError {
        AppError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> AppError {
        AppError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 400 `invalid_function`.
    pub fn invalid_function(message: impl Into<String>) -> AppError {
        AppError::new(StatusCode::BAD_REQUEST, "invalid_function", message)
    }

    /// 400 `invalid_component`.
    pub fn invalid_component(message: impl Into<String>) -> AppError {
        AppError::new(StatusCode::BAD_REQUEST, "invalid_component", message)
    }

    /// 500 `internal` (details go to the log, not the client).
    pub fn internal(message: impl std::fmt::Display) -> AppError {
        tracing::error!("internal error: {message}");
        AppError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error (see the cloud's log)",
        )
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> AppError {
        AppError::internal(format!("database: {e}"))
    }
}

impl From<RuleError> for AppError {
    fn from(e: RuleError) -> AppError {
        let position = match &e {
            RuleError::Sql(s) => Some((s.line, s.column)),
            _ => None,
        };
        let (status, code) = match &e {
            RuleError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            RuleError::Exists(_) => (StatusCode::CONFLICT, "conflict"),
            RuleError::InvalidId(_) | RuleError::Sample { .. } => {
                (StatusCode::BAD_REQUEST, "invalid_request")
            }
            RuleError::Sql(_) | RuleError::Action { .. } => {
                (StatusCode::BAD_REQUEST, "invalid_rule")
            }
            RuleError::BrokerClosed | RuleError::Internal(_) => {
                return AppError::internal(e);
            }
        };
        AppError {
            status,
            code,
            message: e.to_string(),
            position,
        }
    }
}

impl From<QueryRejection> for AppError {
    fn from(e: QueryRejection) -> AppError {
        AppError::invalid(e.body_text())
    }
}

/// `axum::extract::Query` whose rejection is an [`AppError`].
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Query(v) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(v))
    }
}

impl From<PathRejection> for AppError {
    fn from(e: PathRejection) -> AppError {
        let PathRejection::FailedToDeserializePathParams(failed) = &e else {
            // The route and the handler disagree: a bug, not the client's.
            return AppError::internal(e.body_text());
        };
        let message = match failed.kind() {
            ErrorKind::InvalidUtf8InPathParam { key } => {
                format!("path segment `{key}` is not valid UTF-8")
            }
            ErrorKind::ParseErrorAtKey {
                key, expected_type, ..
            } => format!("path segment `{key}` is not a valid {expected_type}"),
            ErrorKind::DeserializeError { key, message, .. } => {
                format!("path segment `{key}`: {message}")
            }
            other => format!("path: {other}"),
        };
        AppError::invalid(message)
    }
}

/// `axum::extract::Path` whose rejection is an [`AppError`] (400
/// `invalid_request` naming the segment, e.g. one that is not UTF-8).
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(v) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(ApiPath(v))
    }
}

/// Check a name or id: 1–64 letters, digits, `-` or `_`; the error names
/// the field.
/// 400 unless `value` (a description or other free text) is at most
/// `verge_net::http::guard::MAX_DESCRIPTION` bytes without control
/// characters (but tabs and line breaks).
pub fn check_text(field: &str, value: &str) -> Result<(), AppError> {
    verge_net::http::guard::check_text(field, value, verge_net::http::guard::MAX_DESCRIPTION)
        .map_err(AppError::invalid)
}

/// 400 unless the JSON text of `value` is at most `max` bytes.
pub fn check_json_size(field: &str, value: &serde_json::Value, max: usize) -> Result<(), AppError> {
    let len = serde_json::to_vec(value).map_or(usize::MAX, |b| b.len());
    if len > max {
        return Err(AppError::invalid(format!(
            "`{field}` is {len} bytes of JSON; at most {max} are accepted"
        )));
    }
    Ok(())
}

pub fn check_name(field: &str, value: &str) -> Result<(), AppError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        // Quote at most 64 characters back: the value may be megabytes.
        let shown: String = value.chars().take(64).collect();
        let more = if shown.len() < value.len() { "…" } else { "" };
        Err(AppError::invalid(format!(
            "`{field}` must be 1 to 64 letters, digits, `-` or `_` (got `{shown}{more}`)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("name", "edge-1_A").is_ok());
        assert!(check_name("name", "").is_err());
        assert!(check_name("name", "a/b").is_err());
        assert!(check_name("name", &"x".repeat(65)).is_err());
        let e = check_name("node_id", "a b").err().map(|e| e.message);
        assert!(e.unwrap_or_default().contains("node_id"));
        // A huge value is not echoed back whole; multi-byte characters
        // are cut at a character boundary.
        let long = "é".repeat(100_000);
        let e = check_name("name", &long).err().map(|e| e.message);
        let e = e.unwrap_or_default();
        assert!(e.len() < 300, "{} bytes", e.len());
        assert!(e.ends_with("…`)"), "{e}");
    }
}

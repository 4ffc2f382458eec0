//! The API's one error type: every failure is a JSON body
//! `{"error": {"code": …, "message": …}}` with a fitting HTTP status.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use verge_rules::RuleError;

/// An error answered to an API client.
#[derive(Debug)]
pub struct AppError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `not_found`, `invalid_sql`.
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// Where in the SQL, for `invalid_sql`.
    pub position: Option<(u32, u32)>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    column: Option<u32>,
}

impl AppError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> AppError {
        AppError {
            status,
            code,
            message: message.into(),
            position: None,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (line, column) = self.position.unzip();
        let body = Body {
            error: Detail {
                code: self.code,
                message: &self.message,
                line,
                column,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<RuleError> for AppError {
    fn from(e: RuleError) -> AppError {
        let (status, code) = match &e {
            RuleError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            RuleError::Exists(_) => (StatusCode::CONFLICT, "exists"),
            RuleError::InvalidId(_) => (StatusCode::BAD_REQUEST, "invalid_id"),
            RuleError::Sql(_) => (StatusCode::BAD_REQUEST, "invalid_sql"),
            RuleError::Action { .. } => (StatusCode::BAD_REQUEST, "invalid_action"),
            RuleError::Sample { .. } => (StatusCode::BAD_REQUEST, "invalid_sample"),
            RuleError::BrokerClosed => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            RuleError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let position = match &e {
            RuleError::Sql(s) => Some((s.line, s.column)),
            _ => None,
        };
        AppError {
            status,
            code,
            message: e.to_string(),
            position,
        }
    }
}

impl From<JsonRejection> for AppError {
    fn from(e: JsonRejection) -> AppError {
        let status = match &e {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JsonRejection::BytesRejection(_) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        };
        AppError::new(status, "invalid_request", e.body_text())
    }
}

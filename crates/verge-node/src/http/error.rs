//! The API's one error type: every failure is a JSON body
//! `{"error": {"code": …, "message": …}}` with a fitting HTTP status. The
//! type and the body are `verge_net`'s (`app_error!`); a JSON body that
//! cannot be taken is answered 415 without `content-type`, 413 over the
//! limit, else 400, all `invalid_request`.

use axum::http::StatusCode;
use verge_rules::RuleError;

verge_net::app_error!(verge_net::http::JsonRejections::MEDIA_TYPE_415);

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

//! The HTTP APIs' error answers (the node's and the cloud's): one JSON body
//! `{"error": {"code", "message", "line"?, "column"?}}`, one `AppError`
//! type and one `ApiJson` extractor whose rejections become that body.
//!
//! Design note: the `AppError` type is defined once, in [`app_error!`],
//! and instantiated in each API crate rather than exported from here:
//! each API turns its own domain errors (`RuleError`, `sqlx::Error`, …)
//! into an `AppError` with `From`, so that handlers can use `?`, and
//! Rust's orphan rule allows those `From` impls only for a type of the
//! API's own crate. Everything the two instances share (the body, the
//! answers to a bad JSON body) lives here as functions.

pub mod guard;

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[doc(hidden)]
pub use axum as __axum;
#[doc(hidden)]
pub use serde as __serde;

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

/// The answer `{"error": {"code", "message", "line"?, "column"?}}` with
/// `status`; `position` is a line and column (in SQL, for instance).
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    position: Option<(u32, u32)>,
) -> Response {
    let (line, column) = position.unzip();
    let body = Body {
        error: Detail {
            code,
            message,
            line,
            column,
        },
    };
    (status, axum::Json(body)).into_response()
}

/// How an API answers a JSON body it cannot take. The two APIs were built
/// with different answers and keep them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonRejections {
    /// Status for a request without `content-type: application/json`.
    pub missing_content_type: StatusCode,
    /// Code for a body over the size limit (413).
    pub too_large_code: &'static str,
}

impl JsonRejections {
    /// 415 for a missing content type, and `invalid_request` for every
    /// rejection, a body over the limit included (the node's API).
    pub const MEDIA_TYPE_415: JsonRejections = JsonRejections {
        missing_content_type: StatusCode::UNSUPPORTED_MEDIA_TYPE,
        too_large_code: "invalid_request",
    };

    /// 400 `invalid_request` for everything but a body over the limit,
    /// which is 413 `payload_too_large` (the cloud's API).
    pub const TOO_LARGE_CODE: JsonRejections = JsonRejections {
        missing_content_type: StatusCode::BAD_REQUEST,
        too_large_code: "payload_too_large",
    };

    /// The status and code for `e`; the message is `e.body_text()`.
    pub fn answer(&self, e: &JsonRejection) -> (StatusCode, &'static str) {
        match e {
            JsonRejection::MissingJsonContentType(_) => {
                (self.missing_content_type, "invalid_request")
            }
            JsonRejection::BytesRejection(_) => {
                (StatusCode::PAYLOAD_TOO_LARGE, self.too_large_code)
            }
            _ => (StatusCode::BAD_REQUEST, "invalid_request"),
        }
    }
}

/// Defines the API's `AppError` (status, code, message, position;
/// answered by [`error_response`]; built from a `JsonRejection` as the
/// given [`JsonRejections`] say) and `ApiJson<T>`, `axum::Json` whose
/// rejection is that `AppError`. Use once per API crate, in its error
/// module, and add the API's own `From` conversions beside it.
#[macro_export]
macro_rules! app_error {
    ($rejections:expr) => {
        /// An error answered to an API client as
        /// `{"error": {"code", "message", "line"?, "column"?}}`.
        #[derive(Debug)]
        pub struct AppError {
            /// HTTP status.
            pub status: $crate::http::__axum::http::StatusCode,
            /// Stable machine-readable code, e.g. `not_found`.
            pub code: &'static str,
            /// What went wrong, for people.
            pub message: String,
            /// Line and column, for an error in SQL.
            pub position: Option<(u32, u32)>,
        }

        impl AppError {
            /// An error with a status, code and message.
            pub fn new(
                status: $crate::http::__axum::http::StatusCode,
                code: &'static str,
                message: impl Into<String>,
            ) -> AppError {
                AppError {
                    status,
                    code,
                    message: message.into(),
                    position: None,
                }
            }
        }

        impl $crate::http::__axum::response::IntoResponse for AppError {
            fn into_response(self) -> $crate::http::__axum::response::Response {
                $crate::http::error_response(self.status, self.code, &self.message, self.position)
            }
        }

        impl From<$crate::http::__axum::extract::rejection::JsonRejection> for AppError {
            fn from(e: $crate::http::__axum::extract::rejection::JsonRejection) -> AppError {
                let rejections: $crate::http::JsonRejections = $rejections;
                let (status, code) = rejections.answer(&e);
                AppError::new(status, code, e.body_text())
            }
        }

        /// `axum::Json` whose rejection is an [`AppError`].
        pub struct ApiJson<T>(pub T);

        impl<T, S> $crate::http::__axum::extract::FromRequest<S> for ApiJson<T>
        where
            T: $crate::http::__serde::de::DeserializeOwned,
            S: Send + Sync,
        {
            type Rejection = AppError;

            async fn from_request(
                req: $crate::http::__axum::extract::Request,
                state: &S,
            ) -> Result<Self, Self::Rejection> {
                let $crate::http::__axum::Json(v) =
                    $crate::http::__axum::Json::<T>::from_request(req, state).await?;
                Ok(ApiJson(v))
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::extract::Request;
    use axum::routing::post;
    use axum::{Router, http};
    use tower::ServiceExt;

    mod api {
        crate::app_error!(crate::http::JsonRejections::MEDIA_TYPE_415);
    }
    use api::{ApiJson, AppError};

    async fn answer(req: Request) -> (u16, serde_json::Value) {
        async fn echo(ApiJson(v): ApiJson<serde_json::Value>) -> Result<String, AppError> {
            Err(AppError {
                position: Some((1, 7)),
                ..AppError::new(http::StatusCode::BAD_REQUEST, "invalid_sql", v.to_string())
            })
        }
        let app = Router::new().route("/", post(echo));
        let res = app.oneshot(req).await.expect("answer");
        let status = res.status().as_u16();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, serde_json::from_slice(&bytes).expect("json"))
    }

    #[tokio::test]
    async fn errors_and_rejections_are_one_json_body() {
        let req = Request::post("/")
            .header("content-type", "application/json")
            .body(Body::from("{\"a\":1}"))
            .expect("request");
        let (status, body) = answer(req).await;
        assert_eq!(status, 400);
        assert_eq!(
            body,
            serde_json::json!({"error": {"code": "invalid_sql", "message": "{\"a\":1}", "line": 1, "column": 7}})
        );
        let req = Request::post("/").body(Body::from("{}")).expect("request");
        let (status, body) = answer(req).await;
        assert_eq!(status, 415);
        assert_eq!(body["error"]["code"], "invalid_request");
        assert!(body["error"].get("line").is_none());
    }

    #[test]
    fn the_two_rejection_styles() {
        use super::JsonRejections;
        assert_eq!(
            JsonRejections::TOO_LARGE_CODE.missing_content_type,
            http::StatusCode::BAD_REQUEST
        );
        assert_eq!(
            JsonRejections::MEDIA_TYPE_415.too_large_code,
            "invalid_request"
        );
    }
}

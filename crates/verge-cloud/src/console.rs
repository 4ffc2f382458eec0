//! The web console: static HTML, JS and CSS embedded in the binary and served at `/`.
//!
//! Every page goes through the open API. The console has no build step and
//! makes no external requests: plain HTML, CSS and vanilla JavaScript under
//! `crates/verge-cloud/console/`, served with `cache-control: no-cache` so
//! that a new binary's console is picked up at the next load.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX_HTML: &str = include_str!("../console/index.html");
const APP_JS: &str = include_str!("../console/app.js");
const STYLE_CSS: &str = include_str!("../console/style.css");

/// The console's routes: `/`, `/console/app.js`, `/console/style.css`.
pub fn router() -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { file("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/console/app.js",
            get(|| async { file("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/console/style.css",
            get(|| async { file("text/css; charset=utf-8", STYLE_CSS) }),
        )
}

/// One embedded file with its content type; never cached without revalidation.
fn file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get_path(path: &str) -> (StatusCode, String, String, String) {
        let response = router()
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = response.status();
        let header_of = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let content_type = header_of(header::CONTENT_TYPE);
        let cache = header_of(header::CACHE_CONTROL);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (
            status,
            content_type,
            cache,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    #[tokio::test]
    async fn console_routes_serve_each_file_with_its_content_type() {
        for (path, content_type, marker) in [
            ("/", "text/html; charset=utf-8", "<!doctype html>"),
            (
                "/console/app.js",
                "text/javascript; charset=utf-8",
                "\"use strict\"",
            ),
            ("/console/style.css", "text/css; charset=utf-8", "--accent"),
        ] {
            let (status, ct, cache, body) = get_path(path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(ct, content_type, "{path}");
            assert_eq!(cache, "no-cache", "{path}");
            assert!(body.contains(marker), "{path} lacks {marker}");
        }
    }

    #[tokio::test]
    async fn index_loads_only_local_assets() {
        let (_, _, _, body) = get_path("/").await;
        assert!(body.contains("/console/app.js"));
        assert!(body.contains("/console/style.css"));
        assert!(!body.contains("http://") && !body.contains("https://"));
    }

    #[tokio::test]
    async fn unknown_console_file_is_not_found() {
        let (status, ..) = get_path("/console/nope.js").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}

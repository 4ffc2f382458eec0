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
const STYLE_CSS: &str = include_str!("../console/style.css");
const JS: &str = "text/javascript; charset=utf-8";

/// The console's scripts, in the order `index.html` loads them: the shared
/// core and pieces, one per page, then the route table and start.
const SCRIPTS: &[(&str, &str)] = &[
    ("core.js", include_str!("../console/core.js")),
    ("widgets.js", include_str!("../console/widgets.js")),
    ("nodes.js", include_str!("../console/nodes.js")),
    ("revisions.js", include_str!("../console/revisions.js")),
    ("drivers.js", include_str!("../console/drivers.js")),
    ("devices.js", include_str!("../console/devices.js")),
    ("device.js", include_str!("../console/device.js")),
    ("alarms.js", include_str!("../console/alarms.js")),
    ("rules.js", include_str!("../console/rules.js")),
    ("functions.js", include_str!("../console/functions.js")),
    ("components.js", include_str!("../console/components.js")),
    ("rollouts.js", include_str!("../console/rollouts.js")),
    ("deployments.js", include_str!("../console/deployments.js")),
    ("releases.js", include_str!("../console/releases.js")),
    ("messages.js", include_str!("../console/messages.js")),
    ("tokens.js", include_str!("../console/tokens.js")),
    ("cloud.js", include_str!("../console/cloud.js")),
    ("main.js", include_str!("../console/main.js")),
];

/// The console's routes: `/`, `/console/{script}.js` for each of
/// [`SCRIPTS`], `/console/style.css`.
pub fn router() -> Router {
    let mut router = Router::new()
        .route(
            "/",
            get(|| async { file("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/console/style.css",
            get(|| async { file("text/css; charset=utf-8", STYLE_CSS) }),
        );
    for &(name, body) in SCRIPTS {
        router = router.route(
            &format!("/console/{name}"),
            get(move || async move { file(JS, body) }),
        );
    }
    router
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
        let mut files = vec![
            (
                "/".to_owned(),
                "text/html; charset=utf-8",
                "<!doctype html>",
            ),
            (
                "/console/style.css".to_owned(),
                "text/css; charset=utf-8",
                "--accent",
            ),
        ];
        for (name, _) in SCRIPTS {
            files.push((format!("/console/{name}"), JS, "\"use strict\""));
        }
        for (path, content_type, marker) in files {
            let (status, ct, cache, body) = get_path(&path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(ct, content_type, "{path}");
            assert_eq!(cache, "no-cache", "{path}");
            assert!(body.contains(marker), "{path} lacks {marker}");
        }
    }

    #[tokio::test]
    async fn index_loads_only_local_assets() {
        let (_, _, _, body) = get_path("/").await;
        assert!(body.contains("/console/style.css"));
        assert!(!body.contains("http://") && !body.contains("https://"));
    }

    #[tokio::test]
    async fn index_loads_every_script_in_order() {
        let (_, _, _, body) = get_path("/").await;
        let mut from = 0;
        for (name, _) in SCRIPTS {
            let tag = format!("<script src=\"/console/{name}\" defer></script>");
            let at = body[from..]
                .find(&tag)
                .unwrap_or_else(|| panic!("index.html lacks {tag} after byte {from}"));
            from += at + tag.len();
        }
        assert_eq!(body.matches("<script").count(), SCRIPTS.len());
    }

    #[tokio::test]
    async fn unknown_console_file_is_not_found() {
        for path in ["/console/nope.js", "/console/app.js"] {
            let (status, ..) = get_path(path).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        }
    }
}

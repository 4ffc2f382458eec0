//! `/api/components`: the node's user components (list, one, start, stop,
//! restart, output tail). Components are defined in the node's config file
//! only; the API cannot add one or change its command.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{ApiState, AppError};
use crate::components::log::{Follow, Followed, LogLine};
use crate::components::{ComponentInfo, Components, ComponentsError, LOG_LINES};

/// The routes, to nest under `/api`.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/components", get(list))
        .route("/components/{name}", get(one))
        .route("/components/{name}/start", post(start))
        .route("/components/{name}/stop", post(stop))
        .route("/components/{name}/restart", post(restart))
        .route("/components/{name}/logs", get(logs))
}

impl From<ComponentsError> for AppError {
    fn from(e: ComponentsError) -> AppError {
        match e {
            ComponentsError::NotFound(_) => {
                AppError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
        }
    }
}

fn components(s: &ApiState, name: &str) -> Result<Components, AppError> {
    s.components
        .clone()
        .ok_or_else(|| ComponentsError::NotFound(name.to_owned()).into())
}

async fn list(State(s): State<ApiState>) -> Json<Vec<ComponentInfo>> {
    Json(s.components.as_ref().map(|c| c.list()).unwrap_or_default())
}

async fn one(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<ComponentInfo>, AppError> {
    Ok(Json(components(&s, &name)?.get(&name)?))
}

async fn start(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<ComponentInfo>, AppError> {
    Ok(Json(components(&s, &name)?.start_one(&name)?))
}

async fn stop(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<ComponentInfo>, AppError> {
    Ok(Json(components(&s, &name)?.stop_one(&name)?))
}

async fn restart(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<ComponentInfo>, AppError> {
    Ok(Json(components(&s, &name)?.restart_one(&name)?))
}

/// `?tail=N`: the last N lines (default 100, at most the ring's size);
/// `&follow=true`: then new lines as they come.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    tail: Option<usize>,
    follow: Option<bool>,
}

#[derive(Serialize)]
struct Logs {
    lines: Vec<LogLine>,
    /// Lines dropped from the ring since the node started.
    dropped: u64,
}

async fn logs(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    q: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, AppError> {
    let Query(q) =
        q.map_err(|e| AppError::new(StatusCode::BAD_REQUEST, "invalid_request", e.body_text()))?;
    let tail = q.tail.unwrap_or(100).min(LOG_LINES);
    let c = components(&s, &name)?;
    if q.follow == Some(true) {
        return Ok(follow(c.follow(&name, tail)?));
    }
    let (lines, dropped) = c.logs(&name, tail)?;
    Ok(Json(Logs { lines, dropped }).into_response())
}

/// A chunked stream of newline-delimited JSON: `{"stream","line"}` per
/// line, `{"missed":N}` where the follower fell behind the ring and lost N
/// lines. It ends when the client goes away or the node stops.
fn follow(f: Follow) -> Response {
    let body = futures_util::stream::unfold(f, |mut f| async move {
        let mut out = Vec::new();
        match f.next().await? {
            Followed::Lines(lines) => {
                for l in lines {
                    let _ = serde_json::to_writer(&mut out, &l);
                    out.push(b'\n');
                }
            }
            Followed::Missed(n) => {
                let _ = serde_json::to_writer(&mut out, &serde_json::json!({ "missed": n }));
                out.push(b'\n');
            }
        }
        Some((
            Ok::<_, std::convert::Infallible>(bytes::Bytes::from(out)),
            f,
        ))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response()
}

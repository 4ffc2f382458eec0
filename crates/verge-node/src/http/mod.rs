//! Routes and handlers of the node's HTTP API.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use verge_rules::{RuleConfig, RuleInfo, Sample, TestOutput};

use crate::NodeState;
use crate::error::AppError;
use crate::metrics::render_broker;

/// The API's routes over `state`.
pub fn router(state: NodeState) -> Router {
    let api = Router::new()
        .route("/status", get(status))
        .route("/bridge", get(crate::bridge_api::status))
        .route("/cloud", get(crate::bridge_api::cloud))
        .route("/rules", get(list_rules).post(create_rule))
        .route("/rules/test", post(test_rule))
        .route(
            "/rules/{id}",
            get(get_rule).put(update_rule).delete(delete_rule),
        )
        .route("/rules/{id}/start", post(start_rule))
        .route("/rules/{id}/stop", post(stop_rule))
        .merge(crate::store_api::routes())
        .merge(crate::functions_api::routes())
        .merge(crate::drivers_api::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .nest("/api", api)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn require_token(State(state): State<NodeState>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        if !given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
            return AppError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing or wrong `Authorization: Bearer` token",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Compare secrets in time that depends only on their lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn method_not_allowed(req: Request) -> AppError {
    AppError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

async fn not_found(req: Request) -> AppError {
    AppError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such endpoint: {} {}", req.method(), req.uri().path()),
    )
}

#[derive(Serialize)]
struct Status {
    name: String,
    version: &'static str,
    uptime_seconds: u64,
    broker: serde_json::Map<String, serde_json::Value>,
    rules: usize,
}

async fn status(State(s): State<NodeState>) -> Json<Status> {
    let broker = s
        .broker
        .stats()
        .snapshot()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into()))
        .collect();
    Json(Status {
        name: s.name.to_string(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: s.started.elapsed().as_secs(),
        broker,
        rules: s.rules.list().await.len(),
    })
}

async fn metrics(State(s): State<NodeState>) -> impl IntoResponse {
    let mut out = String::with_capacity(4096);
    render_broker(s.broker.stats(), &mut out);
    s.rules.render_metrics(&mut out).await;
    if let Some(b) = &s.bridge {
        crate::bridge_api::render_metrics(&b.link(), &b.queue(), &mut out);
    }
    if let Some(db) = &s.store {
        crate::store_api::render_metrics(&db.stats(), &mut out);
    }
    if let Some(f) = &s.functions {
        crate::functions_api::render_metrics(f, &mut out);
    }
    if let Some(d) = &s.drivers {
        d.render_prometheus(&mut out);
    }
    if let Some(c) = &s.coap {
        crate::metrics::render_coap(&c.snapshot(), &mut out);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}

async fn list_rules(State(s): State<NodeState>) -> Json<Vec<RuleInfo>> {
    Json(s.rules.list().await)
}

async fn create_rule(
    State(s): State<NodeState>,
    body: Result<Json<RuleConfig>, JsonRejection>,
) -> Result<(StatusCode, Json<RuleInfo>), AppError> {
    let Json(cfg) = body?;
    Ok((StatusCode::CREATED, Json(s.rules.create(cfg).await?)))
}

async fn get_rule(
    State(s): State<NodeState>,
    Path(id): Path<String>,
) -> Result<Json<RuleInfo>, AppError> {
    Ok(Json(s.rules.get(&id).await?))
}

/// `PUT /api/rules/{id}`: a whole rule; its `id` may be left out, and
/// must match the path when given.
async fn update_rule(
    State(s): State<NodeState>,
    Path(id): Path<String>,
    body: Result<Json<RuleConfig>, JsonRejection>,
) -> Result<Json<RuleInfo>, AppError> {
    let Json(mut cfg) = body?;
    if !cfg.id.is_empty() && cfg.id != id {
        return Err(AppError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!(
                "the body's id `{}` does not match the path's `{id}`",
                cfg.id
            ),
        ));
    }
    cfg.id = id.clone();
    Ok(Json(s.rules.update(&id, cfg).await?))
}

async fn delete_rule(
    State(s): State<NodeState>,
    Path(id): Path<String>,
) -> Result<StatusCode, AppError> {
    s.rules.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn start_rule(
    State(s): State<NodeState>,
    Path(id): Path<String>,
) -> Result<Json<RuleInfo>, AppError> {
    Ok(Json(s.rules.start(&id).await?))
}

async fn stop_rule(
    State(s): State<NodeState>,
    Path(id): Path<String>,
) -> Result<Json<RuleInfo>, AppError> {
    Ok(Json(s.rules.stop(&id).await?))
}

/// The body of `POST /api/rules/test`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestRequest {
    sql: String,
    #[serde(default)]
    samples: Vec<Sample>,
}

async fn test_rule(
    State(s): State<NodeState>,
    body: Result<Json<TestRequest>, JsonRejection>,
) -> Result<Json<TestOutput>, AppError> {
    let Json(req) = body?;
    Ok(Json(s.rules.test(req.sql, req.samples).await?))
}

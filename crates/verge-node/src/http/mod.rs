//! The edge node's local HTTP API (default 127.0.0.1:8081): rules
//! (create, list, get, update, delete, start, stop, test), broker status,
//! edge functions (`/api/functions/*`), protocol drivers (`/api/drivers`),
//! user components (`/api/components`),
//! the local time-series store (`/api/store/*`), the cloud link
//! (`/api/bridge`), the cloud agent's status (`/api/cloud`) and Prometheus
//! metrics at `/metrics`. Errors are JSON with a code and a message (see
//! [`AppError`]). `/api/*` needs `Authorization: Bearer <token>` unless
//! `[http] auth = false` (see [`auth`]); `/healthz` and `/metrics` stay
//! open for probes and scrapers. Every request passes the browser guard
//! (`verge_net::http::guard`: Host, Origin, content type, security
//! headers).
//!
//! Rules, drivers and functions created, changed or deleted through the
//! API are saved under `<data_dir>/local` and restored at the next start
//! ([`crate::local`]).
//!
//! Handlers only translate HTTP to calls on the node's parts; the parts
//! themselves live in their own crates. This file holds the route table,
//! status, metrics and the rules' handlers; each other
//! resource has a file of its own.

pub mod auth;
mod bridge;
mod components;
mod devices;
mod drivers;
mod error;
mod functions;
mod local;
mod metrics;
mod store;

use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use verge_broker::BrokerHandle;
use verge_rules::Engine;
use verge_tsdb::Tsdb;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use verge_rules::{RuleConfig, RuleInfo, Sample, TestOutput};

pub use error::{ApiJson, AppError};
use metrics::render_broker;

/// What the API serves: handles on the node's running parts.
#[derive(Clone)]
pub struct ApiState {
    /// Node name, for `/api/status`.
    pub name: Arc<str>,
    /// When the node started.
    pub started: Instant,
    /// The broker.
    pub broker: BrokerHandle,
    /// The rule engine.
    pub rules: Arc<Engine>,
    /// The credentials `/api/*` asks for; none when `[http] auth = false`.
    pub auth: Option<Arc<auth::ApiTokens>>,
    /// The Host, Origin and content-type checks on every request.
    pub guard: Arc<verge_net::http::guard::Guard>,
    /// The local time-series store (`/api/store/*`); none when disabled.
    pub store: Option<Arc<Tsdb>>,
    /// The cloud link and its cache queue (`/api/bridge`); none when the
    /// node has no cloud link.
    pub bridge: Option<verge_bridge::BridgeHandle>,
    /// The edge functions (`/api/functions`); none when the node has no
    /// function runtime.
    pub functions: Option<verge_functions::Functions>,
    /// The protocol drivers (`/api/drivers`); none when the node has none.
    pub drivers: Option<Arc<verge_drivers::Drivers>>,
    /// The user components (`/api/components`); none when the node has
    /// none.
    pub components: Option<crate::components::Components>,
    /// The CoAP gateway's counters (`/metrics`); none when it is off.
    pub coap: Option<Arc<verge_coap::Stats>>,
    /// The cloud agent's status (`/api/cloud`); none unless the node is
    /// managed by a cloud center.
    pub cloud: Option<verge_agent::StatusHandle>,
    /// Where changes made through the API are saved (`<data_dir>/local`);
    /// none: they last until the node stops.
    pub local: Option<Arc<crate::local::LocalStore>>,
    /// The device service (`/api/devices/{d}/shadow`); none: 404.
    pub devices: Option<crate::devices::Devices>,
}

/// Serve the API on an already-bound listener until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The API's routes over `state`.
pub fn router(state: ApiState) -> Router {
    let api = Router::new()
        .route("/status", get(status))
        .route("/bridge", get(bridge::status))
        .route("/cloud", get(bridge::cloud))
        .route("/rules", get(list_rules).post(create_rule))
        .route("/rules/test", post(test_rule))
        .route(
            "/rules/{id}",
            get(get_rule).put(update_rule).delete(delete_rule),
        )
        .route("/rules/{id}/start", post(start_rule))
        .route("/rules/{id}/stop", post(stop_rule))
        .merge(store::routes())
        .merge(functions::routes())
        .merge(drivers::routes())
        .merge(local::routes())
        .merge(components::routes())
        .merge(devices::routes())
        .merge(auth::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    let guard = state.guard.clone();
    Router::new()
        .nest("/api", api)
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(middleware::from_fn_with_state(
            guard,
            verge_net::http::guard::guard,
        ))
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
    /// Where rules' webhook actions send rows, and the hosts allowed.
    webhooks: Webhooks,
    /// Whether `/api/*` asks for a token.
    auth: bool,
}

#[derive(Serialize)]
struct Webhooks {
    allowed_hosts: Vec<String>,
    targets: Vec<WebhookTarget>,
}

#[derive(Serialize)]
struct WebhookTarget {
    rule: String,
    url: String,
}

async fn status(State(s): State<ApiState>) -> Json<Status> {
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
        webhooks: Webhooks {
            allowed_hosts: s.rules.webhook_hosts().to_vec(),
            targets: s
                .rules
                .webhook_targets()
                .await
                .into_iter()
                .map(|(rule, url)| WebhookTarget { rule, url })
                .collect(),
        },
        auth: s.auth.is_some(),
    })
}

async fn metrics(State(s): State<ApiState>) -> impl IntoResponse {
    let mut out = String::with_capacity(4096);
    render_broker(s.broker.stats(), &mut out);
    s.rules.render_metrics(&mut out).await;
    if let Some(b) = &s.bridge {
        bridge::render_metrics(&b.link(), &b.queue(), &mut out);
    }
    if let Some(db) = &s.store {
        store::render_metrics(&db.stats(), &mut out);
    }
    if let Some(f) = &s.functions {
        functions::render_metrics(f, &mut out);
    }
    if let Some(d) = &s.drivers {
        d.render_prometheus(&mut out);
    }
    if let Some(c) = &s.components {
        c.render_metrics(&mut out);
    }
    if let Some(c) = &s.coap {
        metrics::render_coap(&c.snapshot(), &mut out);
    }
    if let Some(d) = &s.devices {
        d.stats().render(&mut out);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}

async fn list_rules(State(s): State<ApiState>) -> Json<Vec<RuleInfo>> {
    Json(s.rules.list().await)
}

/// 409 when the cloud manages the `kind` (`rule`, `function`, `driver`) `name`,
/// as `manages` tells of the agent: it is changed there, or the node's
/// next sync would undo the change.
fn refuse_managed(
    s: &ApiState,
    kind: &str,
    name: &str,
    manages: fn(&verge_agent::StatusHandle, &str) -> bool,
) -> Result<(), AppError> {
    match &s.cloud {
        Some(c) if manages(c, name) => Err(AppError::new(
            StatusCode::CONFLICT,
            "managed_by_cloud",
            format!(
                "the {kind} `{name}` is deployed by the cloud center; change it there \
                 (a local change would be undone at the next sync)"
            ),
        )),
        _ => Ok(()),
    }
}

/// [`refuse_managed`] for the rule `id`.
fn refuse_managed_rule(s: &ApiState, id: &str) -> Result<(), AppError> {
    refuse_managed(s, "rule", id, verge_agent::StatusHandle::manages_rule)
}

/// Save the rule `id` as it now runs (or its absence) in the node's
/// data dir, so the change survives a restart.
async fn rule_changed(s: &ApiState, id: &str) -> Result<(), AppError> {
    match &s.local {
        Some(l) => l.rule_changed(id).await,
        None => Ok(()),
    }
}

/// 400 for a description too long or holding control characters.
fn check_description(description: &str) -> Result<(), AppError> {
    verge_net::http::guard::check_text(
        "description",
        description,
        verge_net::http::guard::MAX_DESCRIPTION,
    )
    .map_err(|m| AppError::new(StatusCode::BAD_REQUEST, "invalid_request", m))
}

async fn create_rule(
    State(s): State<ApiState>,
    body: Result<Json<RuleConfig>, JsonRejection>,
) -> Result<(StatusCode, Json<RuleInfo>), AppError> {
    let Json(cfg) = body?;
    check_description(&cfg.description)?;
    refuse_managed_rule(&s, &cfg.id)?;
    let info = s.rules.create(cfg).await?;
    rule_changed(&s, &info.config.id).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

async fn get_rule(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<RuleInfo>, AppError> {
    Ok(Json(s.rules.get(&id).await?))
}

/// `PUT /api/rules/{id}`: a whole rule; its `id` may be left out, and
/// must match the path when given.
async fn update_rule(
    State(s): State<ApiState>,
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
    check_description(&cfg.description)?;
    refuse_managed_rule(&s, &id)?;
    cfg.id = id.clone();
    let info = s.rules.update(&id, cfg).await?;
    rule_changed(&s, &id).await?;
    Ok(Json(info))
}

async fn delete_rule(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, AppError> {
    refuse_managed_rule(&s, &id)?;
    s.rules.delete(&id).await?;
    rule_changed(&s, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn start_rule(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<RuleInfo>, AppError> {
    refuse_managed_rule(&s, &id)?;
    let info = s.rules.start(&id).await?;
    rule_changed(&s, &id).await?;
    Ok(Json(info))
}

async fn stop_rule(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<RuleInfo>, AppError> {
    refuse_managed_rule(&s, &id)?;
    let info = s.rules.stop(&id).await?;
    rule_changed(&s, &id).await?;
    Ok(Json(info))
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
    State(s): State<ApiState>,
    body: Result<Json<TestRequest>, JsonRejection>,
) -> Result<Json<TestOutput>, AppError> {
    let Json(req) = body?;
    Ok(Json(s.rules.test(req.sql, req.samples).await?))
}

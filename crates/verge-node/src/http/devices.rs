//! `/api/devices/{d}/shadow`: a device's shadow on this node, read and
//! changed by local apps (`desired` only: `reported` belongs to the
//! device). Through the device service, so the device is told the delta
//! and a cloud device's copy goes upstream like a device's own update.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use verge_protocol::device::{Shadow, ShadowError, ShadowUpdate};

use super::ApiState;
use super::AppError;
use crate::devices::{Devices, UpdateError};

/// The routes, to nest under `/api`.
pub fn routes() -> Router<ApiState> {
    Router::new().route(
        "/devices/{device}/shadow",
        get(get_shadow).patch(patch_shadow),
    )
}

fn devices(s: &ApiState) -> Result<&Devices, AppError> {
    s.devices.as_ref().ok_or_else(|| {
        AppError::new(
            StatusCode::NOT_FOUND,
            "devices_disabled",
            "this node runs no device service",
        )
    })
}

fn shadow_error(e: ShadowError) -> AppError {
    let status = match e {
        ShadowError::VersionConflict { .. } => StatusCode::CONFLICT,
        ShadowError::Invalid(_) => StatusCode::BAD_REQUEST,
        ShadowError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
    };
    AppError::new(status, e.code(), e.to_string())
}

fn update_error(e: UpdateError) -> AppError {
    match e {
        UpdateError::Shadow(e) => shadow_error(e),
        e @ UpdateError::Storage(_) => {
            AppError::new(StatusCode::INTERNAL_SERVER_ERROR, e.code(), e.to_string())
        }
    }
}

fn body(device: &str, doc: &Shadow) -> Json<Value> {
    Json(json!({
        "device": device,
        "desired": doc.desired,
        "reported": doc.reported,
        "delta": doc.delta(),
        "metadata": doc.metadata,
        "version": doc.version,
        "timestamp": doc.timestamp,
    }))
}

/// `GET /api/devices/{d}/shadow`: the document (empty, version 0, when the
/// device has none).
async fn get_shadow(
    State(s): State<ApiState>,
    Path(device): Path<String>,
) -> Result<Json<Value>, AppError> {
    let doc = devices(&s)?.shadow(&device).await.map_err(shadow_error)?;
    Ok(body(&device, &doc))
}

/// The body of `PATCH /api/devices/{d}/shadow`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    /// Changes of `desired` (a `null` removes a key).
    desired: Option<Map<String, Value>>,
    /// Refused: `reported` belongs to the device.
    reported: Option<Value>,
    /// The version the change was made against (409 when stale).
    version: Option<u64>,
}

/// `PATCH /api/devices/{d}/shadow` `{"desired": {...}, "version"?: n}`.
async fn patch_shadow(
    State(s): State<ApiState>,
    Path(device): Path<String>,
    body_in: Result<Json<Patch>, JsonRejection>,
) -> Result<Json<Value>, AppError> {
    let d = devices(&s)?;
    let Json(p) = body_in?;
    if p.reported.is_some() {
        return Err(shadow_error(ShadowError::Invalid(
            "`reported` belongs to the device; a local app changes `desired` only".into(),
        )));
    }
    let Some(desired) = p.desired else {
        return Err(shadow_error(ShadowError::Invalid(
            "`desired` is required (an object of the keys to change)".into(),
        )));
    };
    let update = ShadowUpdate {
        desired: Some(desired),
        reported: None,
        version: p.version,
        client_token: None,
    };
    let doc = d
        .update_shadow(&device, &update)
        .await
        .map_err(update_error)?;
    Ok(body(&device, &doc))
}

//! `/api/devices/{id}/shadow`: the cloud's copy of a device's shadow.
//! A change sets `desired` only (reported belongs to the device), checks
//! the version in the same transaction as the write, marks the copy
//! pending and wakes the dispatcher, which sends it to the node.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::Value;
use verge_protocol::device::{Shadow, ShadowError, ShadowUpdate};

use super::rows::one_or_404;
use crate::Cloud;
use crate::auth::ApiAuth;
use crate::db::now_ms;
use crate::devices::shadows;
use crate::error::{ApiJson, ApiPath, AppError};

/// The node of device `id`, or 404.
async fn node_of(conn: &mut sqlx::AnyConnection, id: &str) -> Result<String, AppError> {
    let (node,): (String,) = one_or_404(
        &mut *conn,
        "SELECT node_id FROM devices WHERE id = $1",
        id,
        "device",
    )
    .await?;
    Ok(node)
}

fn shadow_error(e: &ShadowError) -> AppError {
    let status = match e {
        ShadowError::VersionConflict { .. } => StatusCode::CONFLICT,
        ShadowError::Invalid(_) => StatusCode::BAD_REQUEST,
        ShadowError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
    };
    AppError::new(status, e.code(), e.to_string())
}

fn invalid(message: impl Into<String>) -> AppError {
    AppError::new(StatusCode::BAD_REQUEST, "invalid_update", message)
}

pub async fn get(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, AppError> {
    let mut conn = cloud.inner().pool.acquire().await?;
    let node = node_of(&mut conn, &id).await?;
    let stored = shadows::load(&mut conn, &id).await?;
    Ok(Json(shadows::to_json(&id, &node, &stored)))
}

/// The body as a [`ShadowUpdate`] with `desired` only; 400
/// `invalid_update` otherwise.
fn parse_patch(body: Value) -> Result<ShadowUpdate, AppError> {
    if !body.is_object() {
        return Err(invalid(
            "the body must be an object `{\"desired\": {…}, \"version\": n}`",
        ));
    }
    let update: ShadowUpdate =
        serde_json::from_value(body).map_err(|e| invalid(format!("invalid shadow update: {e}")))?;
    if update.reported.is_some() {
        return Err(invalid(
            "`reported` belongs to the device; the API sets `desired` only",
        ));
    }
    // The node refuses these in a cloud update as well: one contract.
    if update.client_token.is_some() {
        return Err(invalid(
            "`client_token` belongs to device requests over MQTT; the API takes `desired` and `version` only",
        ));
    }
    if update.desired.is_none() {
        return Err(invalid("`desired` is missing"));
    }
    Ok(update)
}

/// The time an API edit is stamped with: the cloud's now, or just after
/// the latest stored edit of a key it changes when that one is later (a
/// node clock a little ahead, within `devices::MAX_SKEW_MS`): an edit
/// made after the value was seen must win the per-key "later edit wins"
/// rule, on the node too.
fn edit_time(shadow: &Shadow, update: &ShadowUpdate, now: u64) -> u64 {
    let keys = update.desired.iter().flat_map(|d| d.keys());
    keys.filter_map(|k| shadow.metadata.desired.get(k))
        .map(|m| m.ts.saturating_add(1))
        .fold(now, u64::max)
        .min(now.saturating_add(edit_slack()))
}

/// How far past now an API edit may be stamped.
fn edit_slack() -> u64 {
    u64::try_from(crate::devices::MAX_SKEW_MS).unwrap_or(0) + 1
}

pub async fn patch(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Json<Value>, AppError> {
    let update = parse_patch(body)?;
    let now = now_ms();
    let mut tx = cloud.inner().pool.begin().await?;
    let node = node_of(&mut tx, &id).await?;
    let cur = shadows::load(&mut tx, &id).await?;
    let mut copy = cur.shadow.clone();
    let at = edit_time(&cur.shadow, &update, u64::try_from(now).unwrap_or(0));
    let changed = copy.apply(&update, at).map_err(|e| shadow_error(&e))?;
    if !changed {
        return Ok(Json(shadows::to_json(&id, &node, &cur)));
    }
    let read_at = cur.exists.then_some(cur.shadow.version);
    if !shadows::store(&mut tx, &id, &copy, read_at, true, now).await? {
        // Changed between the read and the write (a node's copy merged).
        return Err(AppError::new(
            StatusCode::CONFLICT,
            "version_conflict",
            "the shadow changed meanwhile; read it again and retry",
        ));
    }
    tx.commit().await?;
    cloud.inner().dispatch_wake.notify_one();
    let stored = shadows::Stored {
        shadow: copy,
        pending: true,
        exists: true,
    };
    Ok(Json(shadows::to_json(&id, &node, &stored)))
}

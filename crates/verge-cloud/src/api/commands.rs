//! Commands: `POST /api/devices/{id}/commands/{name}` queues one (kept
//! until its node takes it or it expires; the dispatcher sends it),
//! `GET /api/devices/{id}/commands` lists a device's, newest first, and
//! `GET /api/commands/{id}` shows one.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::rows::one_or_404;
use crate::Cloud;
use crate::auth::ApiAuth;
use crate::db::{self, now_ms};
use crate::devices::commands::{COLS, Command};
use crate::error::{ApiJson, ApiPath, ApiQuery, AppError, check_name};

/// A command's time to live unless `?ttl=` says otherwise.
const DEFAULT_TTL_MS: i64 = 3600 * 1000;

/// The longest time to live.
const MAX_TTL_MS: i64 = 7 * 24 * 3600 * 1000;

/// Most commands of one device not yet final (queued, sent or
/// delivered); more are refused with 409 until some finish or expire.
pub const MAX_OPEN_PER_DEVICE: i64 = 1000;

/// Largest command payload (as JSON text) taken: it must fit one
/// message to the node and one to the device with room to spare, and a
/// node keeps up to 100 of a device's commands.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// `?ttl=`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateQuery {
    #[serde(default)]
    ttl: Option<String>,
}

/// The time to live in ms; 400 naming `ttl` when bad.
fn ttl_ms(text: Option<&str>) -> Result<i64, AppError> {
    let Some(text) = text else {
        return Ok(DEFAULT_TTL_MS);
    };
    let d = verge_duration::parse(text).map_err(|e| AppError::invalid(format!("`ttl`: {e}")))?;
    let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    if !(1000..=MAX_TTL_MS).contains(&ms) {
        return Err(AppError::invalid("`ttl` must be from 1s to 7d"));
    }
    Ok(ms)
}

pub async fn create(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath((id, name)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<CreateQuery>,
    ApiJson(body): ApiJson<Value>,
) -> Result<impl IntoResponse, AppError> {
    check_name("name", &name)?;
    let ttl = ttl_ms(q.ttl.as_deref())?;
    let payload = body.to_string();
    if payload.len() > MAX_PAYLOAD {
        return Err(AppError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the command's payload is {} bytes as JSON; at most {MAX_PAYLOAD} are taken",
                payload.len()
            ),
        ));
    }
    let now = now_ms();
    let mut tx = cloud.inner().pool.begin().await?;
    let (node,): (String,) = one_or_404(
        &mut *tx,
        "SELECT node_id FROM devices WHERE id = $1",
        &id,
        "device",
    )
    .await?;
    let (open,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM commands WHERE device_id = $1 AND status IN ('queued', 'sent', 'delivered')",
    )
    .bind(&id)
    .fetch_one(&mut *tx)
    .await?;
    if open >= MAX_OPEN_PER_DEVICE {
        return Err(AppError::conflict(format!(
            "device `{id}` has {open} commands not yet answered or expired; at most {MAX_OPEN_PER_DEVICE} are kept"
        )));
    }
    let cmd = Command {
        id: db::random_id(),
        device_id: id,
        node_id: node,
        name,
        payload,
        status: "queued".into(),
        created_ms: now,
        expires_ms: now.saturating_add(ttl),
        updated_ms: now,
        attempts: 0,
        reply: None,
        error: None,
    };
    sqlx::query(
        "INSERT INTO commands (id, device_id, node_id, name, payload, status, created_ms, expires_ms, updated_ms, attempts) \
         VALUES ($1, $2, $3, $4, $5, 'queued', $6, $7, $6, 0)",
    )
    .bind(&cmd.id)
    .bind(&cmd.device_id)
    .bind(&cmd.node_id)
    .bind(&cmd.name)
    .bind(&cmd.payload)
    .bind(cmd.created_ms)
    .bind(cmd.expires_ms)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    cloud.inner().dispatch_wake.notify_one();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"command": cmd.to_json()})),
    ))
}

/// `?limit=`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    limit: Option<i64>,
}

/// `limit` checked: 1 to 1000, default 100.
pub fn limit(limit: Option<i64>) -> Result<i64, AppError> {
    let limit = limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(AppError::invalid("`limit` must be 1 to 1000"));
    }
    Ok(limit)
}

pub async fn list(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<Value>>, AppError> {
    let limit = limit(q.limit)?;
    let pool = &cloud.inner().pool;
    let _: (String,) =
        one_or_404(pool, "SELECT id FROM devices WHERE id = $1", &id, "device").await?;
    let rows: Vec<Command> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM commands WHERE device_id = $1 ORDER BY created_ms DESC, id DESC LIMIT $2"
    )))
    .bind(&id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(Json(rows.iter().map(Command::to_json).collect()))
}

pub async fn get(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, AppError> {
    let sql = sqlx::AssertSqlSafe(format!("SELECT {COLS} FROM commands WHERE id = $1"));
    let cmd: Command = one_or_404(&cloud.inner().pool, sql, &id, "command").await?;
    Ok(Json(cmd.to_json()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(ttl_ms(None).ok(), Some(3_600_000));
        assert_eq!(ttl_ms(Some("60s")).ok(), Some(60_000));
        assert_eq!(ttl_ms(Some("7d")).ok(), Some(MAX_TTL_MS));
        assert!(ttl_ms(Some("8d")).is_err());
        assert!(ttl_ms(Some("0s")).is_err());
        assert!(ttl_ms(Some("soon")).is_err());
    }
}

//! `/api/alarms`: alarms raised by the rules of nodes (`crate::devices::alarms`):
//! listed and filtered, acknowledged and cleared by people.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::Value;

use super::commands::limit;
use super::rows::one_or_404;
use crate::Cloud;
use crate::auth::ApiAuth;
use crate::db::now_ms;
use crate::devices::alarms::{Alarm, COLS};
use crate::error::{ApiPath, ApiQuery, AppError};

/// `?device_id=&status=&acknowledged=&limit=`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    acknowledged: Option<bool>,
    #[serde(default)]
    limit: Option<i64>,
}

/// Alarms matching `q` (and of `device` when given), newest first.
async fn select(
    cloud: &Cloud,
    q: ListQuery,
    device: Option<String>,
) -> Result<Vec<Value>, AppError> {
    let limit = limit(q.limit)?;
    let mut filters: Vec<String> = Vec::new();
    let mut texts: Vec<String> = Vec::new();
    if let Some(d) = device.or(q.device_id) {
        texts.push(d);
        filters.push(format!("device_id = ${}", texts.len()));
    }
    if let Some(s) = q.status {
        if !matches!(s.as_str(), "active" | "cleared") {
            return Err(AppError::invalid("`status` must be `active` or `cleared`"));
        }
        texts.push(s);
        filters.push(format!("status = ${}", texts.len()));
    }
    if let Some(a) = q.acknowledged {
        filters.push(format!("acknowledged = {}", i64::from(a)));
    }
    let filter = if filters.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", filters.join(" AND "))
    };
    let sql = format!(
        "SELECT {COLS} FROM alarms{filter} ORDER BY created_ms DESC, id DESC LIMIT ${}",
        texts.len() + 1
    );
    let mut query = sqlx::query_as::<_, Alarm>(sqlx::AssertSqlSafe(sql));
    for t in texts {
        query = query.bind(t);
    }
    let rows = query.bind(limit).fetch_all(&cloud.inner().pool).await?;
    Ok(rows.iter().map(Alarm::to_json).collect())
}

pub async fn list(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<Value>>, AppError> {
    Ok(Json(select(&cloud, q, None).await?))
}

pub async fn of_device(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<Value>>, AppError> {
    let _: (String,) = one_or_404(
        &cloud.inner().pool,
        "SELECT id FROM devices WHERE id = $1",
        &id,
        "device",
    )
    .await?;
    Ok(Json(select(&cloud, q, Some(id)).await?))
}

async fn load(cloud: &Cloud, id: &str) -> Result<Alarm, AppError> {
    let sql = sqlx::AssertSqlSafe(format!("SELECT {COLS} FROM alarms WHERE id = $1"));
    one_or_404(&cloud.inner().pool, sql, id, "alarm").await
}

/// Acknowledge (once: a second ack keeps the first time).
pub async fn ack(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, AppError> {
    sqlx::query(
        "UPDATE alarms SET acknowledged = 1, acknowledged_ms = $1 WHERE id = $2 AND acknowledged = 0",
    )
    .bind(now_ms())
    .bind(&id)
    .execute(&cloud.inner().pool)
    .await?;
    Ok(Json(load(&cloud, &id).await?.to_json()))
}

/// Clear (once: clearing a cleared alarm keeps it as it is). The next
/// raise of its type opens a new alarm.
pub async fn clear(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, AppError> {
    let now = now_ms();
    sqlx::query(
        "UPDATE alarms SET status = 'cleared', cleared_ms = $1, updated_ms = $1 WHERE id = $2 AND status = 'active'",
    )
    .bind(now)
    .bind(&id)
    .execute(&cloud.inner().pool)
    .await?;
    Ok(Json(load(&cloud, &id).await?.to_json()))
}

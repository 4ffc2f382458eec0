//! `/api/devices`: devices bound to nodes, their secrets, sessions and
//! stored messages (shadows, commands and alarms: `shadows`, `commands`,
//! `alarms`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::rows::{NodeFilter, commit_bumped, one_or_404};
use crate::Cloud;
use crate::auth::ApiAuth;
use crate::db::{self, json_col, now_ms};
use crate::error::{ApiJson, ApiPath, ApiQuery, AppError, check_name, check_text};
use crate::revisions::Reason;

/// One device with its session (from its node's heartbeat) and its
/// node's broker endpoints.
struct DeviceRow {
    id: String,
    node_id: String,
    description: String,
    created_ms: i64,
    last_telemetry: Option<String>,
    last_telemetry_ms: Option<i64>,
    connected: Option<i64>,
    since_ms: Option<i64>,
    client_id: Option<String>,
    transport: Option<String>,
    endpoints: Option<String>,
}

impl<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> for DeviceRow {
    fn from_row(row: &'r sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(DeviceRow {
            id: row.try_get("id")?,
            node_id: row.try_get("node_id")?,
            description: row.try_get("description")?,
            created_ms: row.try_get("created_ms")?,
            last_telemetry: row.try_get("last_telemetry")?,
            last_telemetry_ms: row.try_get("last_telemetry_ms")?,
            connected: row.try_get("connected")?,
            since_ms: row.try_get("since_ms")?,
            client_id: row.try_get("client_id")?,
            transport: row.try_get("transport")?,
            endpoints: row.try_get("endpoints")?,
        })
    }
}

/// The device columns, with its node's endpoints (`LEFT JOIN nodes n`).
const SELECT: &str = "SELECT d.id, d.node_id, d.description, d.created_ms, d.last_telemetry, d.last_telemetry_ms, \
     d.connected, d.since_ms, d.client_id, d.transport, n.endpoints \
     FROM devices d LEFT JOIN nodes n ON n.id = d.node_id";

fn device_json(d: DeviceRow) -> Value {
    let session = match d.connected {
        None => Value::Null,
        Some(c) => json!({
            "connected": c != 0,
            "since_ms": d.since_ms.unwrap_or(0),
            "client_id": d.client_id.unwrap_or_default(),
            "transport": d.transport.unwrap_or_default(),
        }),
    };
    let endpoints = d
        .endpoints
        .as_deref()
        .map(json_col)
        .filter(Value::is_array)
        .unwrap_or_else(|| json!([]));
    json!({
        "id": d.id,
        "node_id": d.node_id,
        "description": d.description,
        "created_ms": d.created_ms,
        "last_telemetry": d.last_telemetry.as_deref().map_or(Value::Null, json_col),
        "last_telemetry_ms": d.last_telemetry_ms,
        "session": session,
        "endpoints": endpoints,
    })
}

async fn load(cloud: &Cloud, id: &str) -> Result<Value, AppError> {
    let sql = sqlx::AssertSqlSafe(format!("{SELECT} WHERE d.id = $1"));
    let row: DeviceRow = one_or_404(&cloud.inner().pool, sql, id, "device").await?;
    Ok(device_json(row))
}

/// The node the device `id` is bound to, or 404.
async fn node_of<'c>(
    executor: impl sqlx::Executor<'c, Database = sqlx::Any>,
    id: &str,
) -> Result<String, AppError> {
    let (node,): (String,) = one_or_404(
        executor,
        "SELECT node_id FROM devices WHERE id = $1",
        id,
        "device",
    )
    .await?;
    Ok(node)
}

/// Argon2 hash of a new secret, off the async threads.
async fn hash(secret: String) -> Result<String, AppError> {
    tokio::task::spawn_blocking(move || verge_broker::auth::hash_password(&secret))
        .await
        .map_err(AppError::internal)?
        .map_err(AppError::internal)
}

/// `POST /api/devices` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateDevice {
    name: String,
    node_id: String,
    #[serde(default)]
    description: String,
}

pub async fn create(
    auth: ApiAuth,
    State(cloud): State<Cloud>,
    ApiJson(body): ApiJson<CreateDevice>,
) -> Result<impl IntoResponse, AppError> {
    check_name("name", &body.name)?;
    check_name("node_id", &body.node_id)?;
    check_text("description", &body.description)?;
    let secret = db::random_secret();
    let phc = hash(secret.clone()).await?;
    let mut tx = cloud.inner().pool.begin().await?;
    let node: Option<(String,)> = sqlx::query_as("SELECT id FROM nodes WHERE id = $1")
        .bind(&body.node_id)
        .fetch_optional(&mut *tx)
        .await?;
    if node.is_none() {
        return Err(AppError::invalid(format!(
            "`node_id`: no node `{}`",
            body.node_id
        )));
    }
    let done = sqlx::query(
        "INSERT INTO devices (id, node_id, description, secret_phc, created_ms) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&body.name)
    .bind(&body.node_id)
    .bind(&body.description)
    .bind(&phc)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(AppError::conflict(format!(
            "a device named `{}` exists already",
            body.name
        )));
    }
    let reason = Reason::new(&auth.caller, format!("device `{}` added", body.name));
    commit_bumped(&cloud, tx, std::slice::from_ref(&body.node_id), &reason).await?;
    let device = load(&cloud, &body.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"device": device, "secret": secret})),
    ))
}

pub async fn list(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiQuery(q): ApiQuery<NodeFilter>,
) -> Result<Json<Vec<Value>>, AppError> {
    let filter = if q.node_id.is_some() {
        " WHERE d.node_id = $1"
    } else {
        ""
    };
    let mut query = sqlx::query_as::<_, DeviceRow>(sqlx::AssertSqlSafe(format!(
        "{SELECT}{filter} ORDER BY d.id"
    )));
    if let Some(node) = q.node_id {
        query = query.bind(node);
    }
    let rows = query.fetch_all(&cloud.inner().pool).await?;
    Ok(Json(rows.into_iter().map(device_json).collect()))
}

pub async fn get(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, AppError> {
    Ok(Json(load(&cloud, &id).await?))
}

pub async fn delete(
    auth: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, AppError> {
    let mut tx = cloud.inner().pool.begin().await?;
    let node = node_of(&mut *tx, &id).await?;
    // Its shadow, commands and alarms go with it (a device made again
    // under the name starts empty).
    for table in [
        "DELETE FROM devices WHERE id = $1",
        "DELETE FROM device_shadows WHERE device_id = $1",
        "DELETE FROM commands WHERE device_id = $1",
        "DELETE FROM alarms WHERE device_id = $1",
    ] {
        sqlx::query(table).bind(&id).execute(&mut *tx).await?;
    }
    let reason = Reason::new(&auth.caller, format!("device `{id}` removed"));
    commit_bumped(&cloud, tx, &[node], &reason).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn new_secret(
    auth: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, AppError> {
    let node = node_of(&cloud.inner().pool, &id).await?;
    let secret = db::random_secret();
    let phc = hash(secret.clone()).await?;
    let mut tx = cloud.inner().pool.begin().await?;
    let done = sqlx::query("UPDATE devices SET secret_phc = $1 WHERE id = $2")
        .bind(&phc)
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(AppError::not_found(format!("no device `{id}`")));
    }
    let reason = Reason::new(&auth.caller, format!("device `{id}` secret changed"));
    commit_bumped(&cloud, tx, &[node], &reason).await?;
    Ok(Json(
        json!({"device": load(&cloud, &id).await?, "secret": secret}),
    ))
}

/// `?after_id=&limit=`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagesQuery {
    #[serde(default)]
    after_id: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
}

pub async fn messages(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<MessagesQuery>,
) -> Result<Json<Vec<Value>>, AppError> {
    let node = node_of(&cloud.inner().pool, &id).await?;
    let filter = format!("devices/{id}/#");
    Ok(Json(
        super::messages(&cloud, &node, &filter, q.after_id, q.limit.unwrap_or(100)).await?,
    ))
}

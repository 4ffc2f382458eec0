//! `/api/devices`: devices bound to nodes, their secrets and commands.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};
use verge_broker::Message;
use verge_mqtt::QoS;

use super::rows::{NodeFilter, commit_bumped, list_by_node, one_or_404};
use crate::Cloud;
use crate::auth::ApiAuth;
use crate::db::{self, json_col, now_ms};
use crate::error::{ApiJson, ApiPath, ApiQuery, AppError, check_name, check_text};
use crate::revisions::Reason;

type DeviceRow = (String, String, String, i64, Option<String>, Option<i64>);

const COLS: &str = "id, node_id, description, created_ms, last_telemetry, last_telemetry_ms";

fn device_json(
    (id, node_id, description, created_ms, telemetry, telemetry_ms): DeviceRow,
) -> Value {
    json!({
        "id": id,
        "node_id": node_id,
        "description": description,
        "created_ms": created_ms,
        "last_telemetry": telemetry.as_deref().map_or(Value::Null, json_col),
        "last_telemetry_ms": telemetry_ms,
    })
}

async fn load(cloud: &Cloud, id: &str) -> Result<Value, AppError> {
    let sql = sqlx::AssertSqlSafe(format!("SELECT {COLS} FROM devices WHERE id = $1"));
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
    let rows: Vec<DeviceRow> = list_by_node(&cloud, "devices", COLS, q.node_id.as_deref()).await?;
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
    sqlx::query("DELETE FROM devices WHERE id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?;
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

pub async fn command(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath((id, name)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<Value>,
) -> Result<impl IntoResponse, AppError> {
    check_name("name", &name)?;
    let node = node_of(&cloud.inner().pool, &id).await?;
    let topic = verge_protocol::topics::device_command(&node, &id, &name);
    let payload = body.to_string().into_bytes();
    // It must fit one MQTT packet on the way down (the node's broker takes
    // no larger), else it would be accepted here and dropped on the way.
    let max = usize::try_from(verge_broker::BrokerConfig::default().max_packet_size)
        .unwrap_or(usize::MAX)
        .saturating_sub(topic.len() + 1024);
    if payload.len() > max {
        return Err(AppError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the command is {} bytes; at most {max} fit one message to the node",
                payload.len()
            ),
        ));
    }
    // Only a connected node takes it: the cloud's broker keeps no message
    // for a node without a session, so a command to a node that is not
    // online would be accepted and dropped.
    let (joined, last_seen): (Option<i64>, Option<i64>) = one_or_404(
        &cloud.inner().pool,
        "SELECT joined_ms, last_seen_ms FROM nodes WHERE id = $1",
        &node,
        "node",
    )
    .await?;
    match super::nodes::status(&cloud, joined, last_seen) {
        "online" => {}
        status => {
            let why = match (status, last_seen) {
                ("pending", _) => format!("node `{node}` has not joined yet"),
                (_, Some(seen)) => format!(
                    "node `{node}` is offline (last seen {} s ago)",
                    (now_ms() - seen).max(0) / 1000
                ),
                (_, None) => format!("node `{node}` is offline (never seen since it joined)"),
            };
            return Err(AppError::new(
                StatusCode::CONFLICT,
                "node_offline",
                format!("{why}; the command was not sent"),
            ));
        }
    }
    let msg = Message::local(topic.as_str(), payload, QoS::AtLeastOnce, false);
    cloud
        .inner()
        .handle
        .publish(msg)
        .await
        .map_err(AppError::internal)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"topic": topic, "node_id": node})),
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

//! `/api/nodes` and `/api/deployments`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::rows::{commit_bumped, one_or_404};
use crate::Cloud;
use crate::auth::ApiAuth;
use crate::db::{self, json_col, now_ms};
use crate::error::{ApiJson, ApiPath, ApiQuery, AppError, check_json_size, check_name, check_text};

/// Largest node config (`PATCH /api/nodes/{id}`), bytes of JSON.
const MAX_NODE_CONFIG: usize = 64 << 10;

/// How long a join token is valid.
const JOIN_TOKEN_MS: i64 = 24 * 3600 * 1000;

const COLS: &str = "id, description, config, created_ms, joined_ms, last_seen_ms, desired_version, applied_version, apply_errors, report, labels";

/// `offline_after` in ms.
pub fn offline_ms(cloud: &Cloud) -> i64 {
    i64::try_from(cloud.inner().cfg.cloud.offline_after.get().as_millis()).unwrap_or(i64::MAX)
}

/// A node's `status` from its join and last heartbeat times: `pending`
/// (never joined), `online` (a heartbeat within `offline_after`) or
/// `offline`.
pub fn status(cloud: &Cloud, joined_ms: Option<i64>, last_seen_ms: Option<i64>) -> &'static str {
    match (joined_ms, last_seen_ms) {
        (None, _) => "pending",
        (_, Some(seen)) if now_ms() - seen <= offline_ms(cloud) => "online",
        _ => "offline",
    }
}

fn node_json(cloud: &Cloud, row: &AnyRow) -> Result<Value, sqlx::Error> {
    let id: String = row.try_get("id")?;
    let joined: Option<i64> = row.try_get("joined_ms")?;
    let last_seen: Option<i64> = row.try_get("last_seen_ms")?;
    let status = status(cloud, joined, last_seen);
    let report: Option<String> = row.try_get("report")?;
    let report = report.as_deref().map_or(Value::Null, json_col);
    let attempt: Option<verge_protocol::ApplyAttempt> =
        serde_json::from_value(report["attempt"].clone()).unwrap_or(None);
    let desired: i64 = row.try_get("desired_version")?;
    let applied: i64 = row.try_get("applied_version")?;
    Ok(json!({
        "id": id,
        "name": id,
        "description": row.try_get::<String, _>("description")?,
        "status": status,
        "created_ms": row.try_get::<i64, _>("created_ms")?,
        "joined_ms": joined,
        "last_seen_ms": last_seen,
        "desired_version": desired,
        "applied_version": applied,
        "deployment": crate::revisions::deployment(desired, applied, attempt.as_ref(), status),
        "last_attempt": attempt,
        "apply_errors": json_col(&row.try_get::<String, _>("apply_errors")?),
        "config": json_col(&row.try_get::<String, _>("config")?),
        "labels": json_col(&row.try_get::<String, _>("labels")?),
        "report": report,
    }))
}

/// The node `id` as JSON, or 404.
pub async fn load(cloud: &Cloud, id: &str) -> Result<Value, AppError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM nodes WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&cloud.inner().pool)
    .await?
    .ok_or_else(|| AppError::not_found(format!("no node `{id}`")))?;
    Ok(node_json(cloud, &row)?)
}

/// `POST /api/nodes` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateNode {
    name: String,
    #[serde(default)]
    description: String,
    /// Labels (`super::labels`); none when absent.
    #[serde(default)]
    labels: Option<Value>,
}

fn join_command(cloud: &Cloud, token: &str) -> String {
    format!(
        "verge node --cloud {} --join {token}",
        cloud.inner().cfg.http_url()
    )
}

pub async fn create(
    auth: ApiAuth,
    State(cloud): State<Cloud>,
    ApiJson(body): ApiJson<CreateNode>,
) -> Result<impl IntoResponse, AppError> {
    check_name("name", &body.name)?;
    check_text("description", &body.description)?;
    if body.name == cloud.inner().cfg.mqtt.external.username {
        return Err(AppError::conflict(format!(
            "`{}` is the cloud's own user on the MQTT broker (`mqtt.external.username`)",
            body.name
        )));
    }
    let admin = &cloud.inner().cfg.mqtt.external.admin_username;
    if !admin.is_empty() && body.name == *admin {
        return Err(AppError::conflict(format!(
            "`{}` is the dynamic-security admin user on the MQTT broker (`mqtt.external.admin_username`)",
            body.name
        )));
    }
    let labels = match &body.labels {
        Some(l) => super::labels::parse("labels", l)?,
        None => super::labels::Labels::new(),
    };
    let labels = serde_json::to_string(&labels).map_err(AppError::internal)?;
    let token = db::random_secret();
    let now = now_ms();
    let mut tx = cloud.inner().pool.begin().await?;
    let done = sqlx::query(
        "INSERT INTO nodes (id, description, config, created_ms, desired_version, applied_version, apply_errors, join_token_hash, join_expires_ms, labels) \
         VALUES ($1, $2, '{}', $3, 1, 0, '[]', $4, $5, $6) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&body.name)
    .bind(&body.description)
    .bind(now)
    .bind(db::sha256_hex(token.as_bytes()))
    .bind(now + JOIN_TOKEN_MS)
    .bind(labels)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(AppError::conflict(format!(
            "a node named `{}` exists already",
            body.name
        )));
    }
    // Revision 1: what the new node should run (its empty config).
    let reason = crate::revisions::Reason::new(&auth.caller, "node created");
    crate::revisions::record(&mut tx, &body.name, &reason).await?;
    tx.commit().await?;
    let node = load(&cloud, &body.name).await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"node": node, "join_token": token, "join_command": join_command(&cloud, &token)}),
        ),
    ))
}

/// `?selector=key=value,…` of the node list.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    selector: Option<String>,
}

pub async fn list(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<Value>>, AppError> {
    let selector = super::labels::parse_selector(q.selector.as_deref().unwrap_or(""))?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM nodes ORDER BY id"
    )))
    .fetch_all(&cloud.inner().pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let labels: String = r.try_get("labels")?;
        if super::labels::matches(&selector, &super::labels::from_column(&labels)) {
            out.push(node_json(&cloud, r)?);
        }
    }
    Ok(Json(out))
}

pub async fn get(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, AppError> {
    Ok(Json(load(&cloud, &id).await?))
}

/// `PATCH /api/nodes/{id}` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchNode {
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    config: Option<Value>,
    /// Replaces the node's labels (no revision: labels do not change what
    /// the node runs).
    #[serde(default)]
    labels: Option<Value>,
}

pub async fn patch(
    auth: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<PatchNode>,
) -> Result<Json<Value>, AppError> {
    if body.config.as_ref().is_some_and(|c| !c.is_object()) {
        return Err(AppError::invalid("`config` must be a JSON object"));
    }
    if let Some(d) = &body.description {
        check_text("description", d)?;
    }
    if let Some(c) = &body.config {
        check_json_size("config", c, MAX_NODE_CONFIG)?;
        // Only settings the node changes while it runs: anything else
        // would fail every revision on the node.
        verge_protocol::check_node_config(c).map_err(AppError::invalid)?;
    }
    let labels = match &body.labels {
        Some(l) => Some(super::labels::parse("labels", l)?),
        None => None,
    };
    let mut tx = cloud.inner().pool.begin().await?;
    let (config,): (String,) = one_or_404(
        &mut *tx,
        "SELECT config FROM nodes WHERE id = $1",
        &id,
        "node",
    )
    .await?;
    if let Some(d) = &body.description {
        sqlx::query("UPDATE nodes SET description = $1 WHERE id = $2")
            .bind(d)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
    }
    if let Some(l) = &labels {
        sqlx::query("UPDATE nodes SET labels = $1 WHERE id = $2")
            .bind(serde_json::to_string(l).map_err(AppError::internal)?)
            .bind(&id)
            .execute(&mut *tx)
            .await?;
    }
    if let Some(c) = &body.config
        && json_col(&config) != *c
    {
        sqlx::query("UPDATE nodes SET config = $1 WHERE id = $2")
            .bind(c.to_string())
            .bind(&id)
            .execute(&mut *tx)
            .await?;
        let reason = crate::revisions::Reason::new(&auth.caller, "config changed");
        commit_bumped(&cloud, tx, std::slice::from_ref(&id), &reason).await?;
    } else {
        tx.commit().await?;
    }
    Ok(Json(load(&cloud, &id).await?))
}

pub async fn delete(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, AppError> {
    if let Some(dynsec) = &cloud.inner().dynsec
        && !dynsec.is_up()
    {
        return Err(super::agent::broker_unavailable(
            &crate::broker_auth::dynsec::DynsecError::Down,
        ));
    }
    let mut tx = cloud.inner().pool.begin().await?;
    let (devices,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM devices WHERE node_id = $1")
        .bind(&id)
        .fetch_one(&mut *tx)
        .await?;
    let (rules,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM rules WHERE node_id = $1")
        .bind(&id)
        .fetch_one(&mut *tx)
        .await?;
    if devices + rules > 0 {
        return Err(AppError::conflict(format!(
            "node `{id}` still has {devices} device(s) and {rules} rule(s)"
        )));
    }
    let done = sqlx::query("DELETE FROM nodes WHERE id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(AppError::not_found(format!("no node `{id}`")));
    }
    sqlx::query("DELETE FROM node_metrics WHERE node_id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    // Its component assignments go with it (the versions stay), its
    // drivers and its revisions.
    for table in ["node_components", "node_drivers"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE node_id = $1"
        )))
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("DELETE FROM node_releases WHERE node_id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    crate::revisions::forget_node(&mut tx, &id).await?;
    // Its credentials leave the external broker before the node leaves
    // the database: if the broker cannot be told, nothing is deleted.
    if let Some(dynsec) = &cloud.inner().dynsec
        && let Err(e) = dynsec.remove_node(&id).await
    {
        tracing::warn!(node = %id, "delete refused: removing the node's broker credentials: {e}");
        return Err(super::agent::broker_unavailable(&e));
    }
    tx.commit().await?;
    // Its held long polls end (404).
    cloud.notify_nodes(std::slice::from_ref(&id));
    cloud.nodes_changed(&id).await.map_err(AppError::internal)?;
    // Its MQTT connection goes with it.
    if let Err(e) = cloud.inner().handle.disconnect_user(&id).await {
        tracing::warn!(node = %id, "closing the deleted node's connection: {e}");
    }
    Ok(StatusCode::NO_CONTENT)
}

pub async fn join_token(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, AppError> {
    let token = db::random_secret();
    let done =
        sqlx::query("UPDATE nodes SET join_token_hash = $1, join_expires_ms = $2 WHERE id = $3")
            .bind(db::sha256_hex(token.as_bytes()))
            .bind(now_ms() + JOIN_TOKEN_MS)
            .bind(&id)
            .execute(&cloud.inner().pool)
            .await?;
    if done.rows_affected() == 0 {
        return Err(AppError::not_found(format!("no node `{id}`")));
    }
    Ok(Json(
        json!({"join_token": token, "join_command": join_command(&cloud, &token)}),
    ))
}

pub async fn desired(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<verge_protocol::DesiredState>, AppError> {
    crate::revisions::serve(&cloud.inner().pool, &id, false)
        .await?
        .map(Json)
        .ok_or_else(|| AppError::not_found(format!("no node `{id}`")))
}

/// `?since_ms=`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinceQuery {
    #[serde(default)]
    since_ms: i64,
}

pub async fn metrics(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<SinceQuery>,
) -> Result<Json<Vec<Value>>, AppError> {
    load(&cloud, &id).await?;
    let rows: Vec<(i64, f64, i64, i64, f64, f64, i64)> = sqlx::query_as(
        "SELECT ts_ms, cpu_percent, memory_bytes, connections, messages_in_rate, messages_out_rate, backlog_messages \
         FROM node_metrics WHERE node_id = $1 AND ts_ms >= $2 ORDER BY ts_ms ASC, id ASC LIMIT 20000",
    )
    .bind(&id)
    .bind(q.since_ms)
    .fetch_all(&cloud.inner().pool)
    .await?;
    Ok(Json(
        rows.into_iter()
            .map(|(ts, cpu, mem, conns, rin, rout, backlog)| {
                json!({"ts_ms": ts, "cpu_percent": cpu, "memory_bytes": mem, "connections": conns,
                       "messages_in_rate": rin, "messages_out_rate": rout, "backlog_messages": backlog})
            })
            .collect(),
    ))
}

/// `?after_id=&topic=&limit=`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagesQuery {
    #[serde(default)]
    after_id: Option<i64>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    limit: Option<i64>,
}

pub async fn messages(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<MessagesQuery>,
) -> Result<Json<Vec<Value>>, AppError> {
    load(&cloud, &id).await?;
    let filter = q.topic.unwrap_or_else(|| "#".into());
    Ok(Json(
        super::messages(&cloud, &id, &filter, q.after_id, q.limit.unwrap_or(100)).await?,
    ))
}

/// `GET /api/deployments`: each node's deployment as its node object
/// says it (`deployment`), with what its last report says of how it
/// differs from its revision: items it runs of its own (`local`) and
/// cloud items it found changed and put back (`drift`).
pub async fn deployments(
    _: ApiAuth,
    State(cloud): State<Cloud>,
) -> Result<Json<Vec<Value>>, AppError> {
    type Row = (
        String,
        i64,
        i64,
        String,
        Option<String>,
        Option<i64>,
        Option<i64>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, desired_version, applied_version, apply_errors, report, joined_ms, \
         last_seen_ms FROM nodes ORDER BY id",
    )
    .fetch_all(&cloud.inner().pool)
    .await?;
    Ok(Json(
        rows.into_iter()
            .map(|(id, desired, applied, errors, report, joined, seen)| {
                let report = report.as_deref().map_or(Value::Null, json_col);
                let list = |key: &str| {
                    Some(report[key].clone())
                        .filter(Value::is_array)
                        .unwrap_or_else(|| json!([]))
                };
                let (drift, local) = (list("drift"), list("local"));
                let attempt: Option<verge_protocol::ApplyAttempt> =
                    serde_json::from_value(report["attempt"].clone()).unwrap_or(None);
                let d = crate::revisions::deployment(
                    desired,
                    applied,
                    attempt.as_ref(),
                    status(&cloud, joined, seen),
                );
                // The config file's items are the node's baseline; what
                // its API made, what it keeps local-only and what it put
                // back are the drift.
                let differs = drift.as_array().is_some_and(|a| !a.is_empty())
                    || local.as_array().is_some_and(|a| {
                        a.iter()
                            .any(|i| i["source"] == "api" || i["local_only"] == true)
                    });
                json!({"node_id": id, "desired_version": desired, "applied_version": applied,
                       "state": d["state"], "error": d["error"],
                       "errors": json_col(&errors), "drift": drift, "local": local,
                       "differs": differs})
            })
            .collect(),
    ))
}

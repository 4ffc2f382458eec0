//! `/api/nodes/{id}/revisions`, `/rollback` and `/cancel`: a node's
//! revision history with what the node made of each, the diff between two
//! revisions, and the two ways back (`crate::revisions` keeps them).
//!
//! A rollback or a cancel makes a new revision holding an older one's
//! content: it pins the node to that content without rewriting its
//! devices, rules, functions or assignments, so the next change of those
//! builds the next revision from the tables again.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{Any, Transaction};

use crate::Cloud;
use crate::auth::ApiAuth;
use crate::db::json_col;
use crate::error::{ApiJson, ApiPath, ApiQuery, AppError};
use crate::revisions::{self, Reason};

/// `?limit=` of the history.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    limit: Option<i64>,
}

/// One revision row: number, time, author, summary, stored result and
/// the node's attempt (JSON).
type RevisionRow = (i64, i64, String, String, Option<String>, Option<String>);

const COLS: &str = "revision, created_ms, author, summary, result, result_json";

/// 400 unless `n` can name a revision.
fn check_revision(field: &str, n: i64) -> Result<(), AppError> {
    if n < 1 {
        return Err(AppError::invalid(format!(
            "`{field}` must be a revision number (1 or more)"
        )));
    }
    Ok(())
}

/// The node's desired and applied revisions, or 404.
async fn versions<'c, E>(executor: E, node: &str) -> Result<(i64, i64), AppError>
where
    E: sqlx::Executor<'c, Database = Any>,
{
    sqlx::query_as("SELECT desired_version, applied_version FROM nodes WHERE id = $1")
        .bind(node)
        .fetch_optional(executor)
        .await?
        .ok_or_else(|| AppError::not_found(format!("no node `{node}`")))
}

fn entry(row: &RevisionRow, desired: i64) -> Value {
    let (revision, created_ms, author, summary, result, _) = row;
    json!({
        "revision": revision, "created_ms": created_ms, "author": author, "summary": summary,
        "result": revisions::result_of(result.as_deref(), *revision, desired),
    })
}

pub async fn list(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Vec<Value>>, AppError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(AppError::invalid("`limit` must be 1 to 1000"));
    }
    let pool = &cloud.inner().pool;
    // The desired revision of an older node gets its snapshot first.
    let mut tx = pool.begin().await?;
    revisions::current(&mut tx, &id).await?;
    tx.commit().await?;
    let (desired, _) = versions(pool, &id).await?;
    let rows: Vec<RevisionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM node_revisions WHERE node_id = $1 ORDER BY revision DESC LIMIT $2"
    )))
    .bind(&id)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(Json(rows.iter().map(|r| entry(r, desired)).collect()))
}

/// Revision `n` of `node` (its row and state), 404 when the node or the
/// revision is unknown or no longer kept.
async fn one(
    tx: &mut Transaction<'_, Any>,
    node: &str,
    n: i64,
) -> Result<(RevisionRow, verge_protocol::DesiredState), AppError> {
    let row: Option<RevisionRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM node_revisions WHERE node_id = $1 AND revision = $2"
    )))
    .bind(node)
    .bind(n)
    .fetch_optional(&mut **tx)
    .await?;
    let state = revisions::state_of(tx, node, n).await?;
    match (row, state) {
        (Some(row), Some(state)) => Ok((row, state)),
        _ => Err(AppError::not_found(format!(
            "node `{node}` has no revision {n} (unknown, or no longer kept)"
        ))),
    }
}

/// `GET` of one revision, or of two for a diff: the node must exist and
/// its desired revision have a snapshot first.
async fn reading(cloud: &Cloud, node: &str) -> Result<(Transaction<'static, Any>, i64), AppError> {
    let mut tx = cloud.inner().pool.begin().await?;
    revisions::current(&mut tx, node)
        .await?
        .ok_or_else(|| AppError::not_found(format!("no node `{node}`")))?;
    let (desired, _) = versions(&mut *tx, node).await?;
    Ok((tx, desired))
}

pub async fn get(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath((id, n)): ApiPath<(String, i64)>,
) -> Result<Json<Value>, AppError> {
    check_revision("n", n)?;
    let (mut tx, desired) = reading(&cloud, &id).await?;
    let (row, state) = one(&mut tx, &id, n).await?;
    tx.commit().await?;
    let mut out = entry(&row, desired);
    out["state"] = serde_json::to_value(&state).map_err(AppError::internal)?;
    out["attempt"] = row.5.as_deref().map_or(Value::Null, json_col);
    Ok(Json(out))
}

pub async fn diff(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath((id, a, b)): ApiPath<(String, i64, i64)>,
) -> Result<Json<Value>, AppError> {
    check_revision("a", a)?;
    check_revision("b", b)?;
    let (mut tx, _) = reading(&cloud, &id).await?;
    let (_, from) = one(&mut tx, &id, a).await?;
    let (_, to) = one(&mut tx, &id, b).await?;
    tx.commit().await?;
    Ok(Json(revisions::diff::diff(&from, &to)))
}

/// `POST /api/nodes/{id}/rollback` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    revision: i64,
}

/// Lock the node's row for the rest of `tx` (PostgreSQL; SQLite has one
/// writer anyway) and return its desired and applied revisions, or 404.
async fn lock(tx: &mut Transaction<'_, Any>, node: &str) -> Result<(i64, i64), AppError> {
    crate::db::lock_node(tx, node).await?;
    versions(&mut **tx, node).await
}

/// Make the node's next revision hold `state`, commit, wake the long polls
/// and answer 201 with the new revision.
async fn pin(
    cloud: &Cloud,
    mut tx: Transaction<'_, Any>,
    node: &str,
    state: verge_protocol::DesiredState,
    reason: Reason,
) -> Result<(StatusCode, Json<Value>), AppError> {
    let n = revisions::pin(&mut tx, node, state, &reason).await?;
    let (row, _) = one(&mut tx, node, n).await?;
    tx.commit().await?;
    cloud.notify_nodes(&[node.to_owned()]);
    Ok((StatusCode::CREATED, Json(entry(&row, n))))
}

pub async fn rollback(
    auth: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Rollback>,
) -> Result<impl IntoResponse, AppError> {
    check_revision("revision", body.revision)?;
    let n = body.revision;
    let mut tx = cloud.inner().pool.begin().await?;
    let (desired, _) = lock(&mut tx, &id).await?;
    // The desired revision of an older node gets its snapshot first.
    revisions::current(&mut tx, &id).await?;
    if n > desired {
        return Err(AppError::not_found(format!(
            "node `{id}` has no revision {n} (its newest is {desired})"
        )));
    }
    let state = revisions::state_of(&mut tx, &id, n).await?.ok_or_else(|| {
        AppError::conflict(format!(
            "revision {n} of node `{id}` is no longer kept (history keeps the newest {})",
            revisions::KEEP_REVISIONS
        ))
    })?;
    pin(
        &cloud,
        tx,
        &id,
        state,
        Reason::new(&auth.caller, format!("rollback to {n}")),
    )
    .await
}

pub async fn cancel(
    auth: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(id): ApiPath<String>,
) -> Result<impl IntoResponse, AppError> {
    let mut tx = cloud.inner().pool.begin().await?;
    let (desired, applied) = lock(&mut tx, &id).await?;
    if desired <= applied {
        return Err(AppError::conflict(format!(
            "node `{id}` runs its desired revision {desired}: nothing to cancel"
        )));
    }
    if applied < 1 {
        return Err(AppError::conflict(format!(
            "node `{id}` has applied no revision yet: there is none to stay on"
        )));
    }
    let state = revisions::state_of(&mut tx, &id, applied)
        .await?
        .ok_or_else(|| {
            AppError::conflict(format!(
                "revision {applied} that node `{id}` runs is not kept: roll back to a kept one instead"
            ))
        })?;
    pin(
        &cloud,
        tx,
        &id,
        state,
        Reason::new(
            &auth.caller,
            format!("cancel revision {desired}: stay on {applied}"),
        ),
    )
    .await
}

//! `/api/releases`: releases of the `verge` binary for the self-update of
//! nodes (a version's signature and digest immutable once stored, its
//! binary set once), which release each node should run, and the binary
//! route for nodes. The cloud does not hold the release key and does not
//! verify signatures: each node does, with the key it was given at join.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{Any, Transaction};
use verge_protocol::{ReleaseRef, valid_release_version, valid_sha256};

use super::components::read_limited;
use super::rows::commit_bumped;
use crate::Cloud;
use crate::auth::{ApiAuth, NodeAuth};
use crate::db::{self, now_ms};
use crate::error::{ApiJson, ApiPath, AppError};
use crate::revisions::Reason;

/// `PUT /api/nodes/{id}/release` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assign {
    version: String,
}

/// 400 unless `version` is a release version.
fn check_version(version: &str) -> Result<(), AppError> {
    if valid_release_version(version) {
        return Ok(());
    }
    let shown: String = version.chars().take(64).collect();
    Err(AppError::invalid(format!(
        "`version` must be 1 to 64 of a-z A-Z 0-9 _ - . + starting with a letter or digit (got `{shown}`)"
    )))
}

/// 400 unless `r` is a well-formed release of at most `max` bytes.
fn check_release(r: &ReleaseRef, max: usize) -> Result<(), AppError> {
    check_version(&r.version)?;
    if !valid_sha256(&r.sha256) {
        return Err(AppError::invalid(
            "`sha256` must be the binary's SHA-256: 64 lower-case hex digits",
        ));
    }
    if r.size == 0 || r.size > u64::try_from(max).unwrap_or(u64::MAX) {
        return Err(AppError::invalid(format!(
            "`size` must be 1 to {max} bytes (`cloud.max_release_bytes`)"
        )));
    }
    let signature = base64::engine::general_purpose::STANDARD.decode(r.signature.trim());
    if !signature.is_ok_and(|s| s.len() == 64) {
        return Err(AppError::invalid(
            "`signature` must be an ed25519 signature (64 bytes) in standard base64, as `verge release sign` prints it",
        ));
    }
    Ok(())
}

/// A stored release: version, sha256, size, signature, created_ms,
/// whether its binary was uploaded.
type Row = (String, String, i64, String, i64, i64);
const COLS: &str = "version, sha256, size, signature, created_ms, \
                    CASE WHEN data IS NULL THEN 0 ELSE 1 END";

/// `Release`: the stored release with the nodes assigned it.
async fn release_json(cloud: &Cloud, row: &Row) -> Result<Value, AppError> {
    let (version, sha256, size, signature, created_ms, uploaded) = row;
    let nodes: Vec<(String,)> =
        sqlx::query_as("SELECT node_id FROM node_releases WHERE version = $1 ORDER BY node_id")
            .bind(version)
            .fetch_all(&cloud.inner().pool)
            .await?;
    Ok(json!({
        "version": version, "sha256": sha256, "size": size, "signature": signature,
        "created_ms": created_ms, "uploaded": *uploaded != 0,
        "nodes": nodes.into_iter().map(|n| n.0).collect::<Vec<_>>(),
    }))
}

async fn load(cloud: &Cloud, version: &str) -> Result<Row, AppError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM releases WHERE version = $1"
    )))
    .bind(version)
    .fetch_optional(&cloud.inner().pool)
    .await?
    .ok_or_else(|| AppError::not_found(format!("no release `{version}`")))
}

pub async fn create(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiJson(body): ApiJson<ReleaseRef>,
) -> Result<impl IntoResponse, AppError> {
    check_release(&body, cloud.inner().cfg.cloud.max_release_bytes)?;
    let sha256 = body.sha256.to_ascii_lowercase();
    let done = sqlx::query(
        "INSERT INTO releases (version, sha256, size, signature, created_ms) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (version) DO NOTHING",
    )
    .bind(&body.version)
    .bind(&sha256)
    .bind(i64::try_from(body.size).unwrap_or(i64::MAX))
    .bind(body.signature.trim())
    .bind(now_ms())
    .execute(&cloud.inner().pool)
    .await?;
    let row = load(&cloud, &body.version).await?;
    if done.rows_affected() == 1 {
        return Ok((StatusCode::CREATED, Json(release_json(&cloud, &row).await?)));
    }
    let same = row.1 == sha256
        && u64::try_from(row.2).ok() == Some(body.size)
        && row.3 == body.signature.trim();
    if !same {
        return Err(AppError::conflict(format!(
            "release `{}` exists already with another binary or signature; releases are immutable, post a new version",
            body.version
        )));
    }
    Ok((StatusCode::OK, Json(release_json(&cloud, &row).await?)))
}

pub async fn list(_: ApiAuth, State(cloud): State<Cloud>) -> Result<Json<Vec<Value>>, AppError> {
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM releases ORDER BY created_ms, version"
    )))
    .fetch_all(&cloud.inner().pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        out.push(release_json(&cloud, row).await?);
    }
    Ok(Json(out))
}

pub async fn delete(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(version): ApiPath<String>,
) -> Result<StatusCode, AppError> {
    let mut tx = cloud.inner().pool.begin().await?;
    let nodes: Vec<(String,)> =
        sqlx::query_as("SELECT node_id FROM node_releases WHERE version = $1 ORDER BY node_id")
            .bind(&version)
            .fetch_all(&mut *tx)
            .await?;
    if !nodes.is_empty() {
        let nodes: Vec<String> = nodes.into_iter().map(|n| n.0).collect();
        return Err(AppError::conflict(format!(
            "release `{version}` is assigned to node(s) {}; unassign it first",
            nodes.join(", ")
        )));
    }
    let done = sqlx::query("DELETE FROM releases WHERE version = $1")
        .bind(&version)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(AppError::not_found(format!("no release `{version}`")));
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn put_binary(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(version): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, AppError> {
    let row = load(&cloud, &version).await?;
    let max = cloud.inner().cfg.cloud.max_release_bytes;
    let data = read_limited(&headers, body, max, "cloud.max_release_bytes").await?;
    let sha = db::sha256_hex(&data);
    if i64::try_from(data.len()).ok() != Some(row.2) || sha != row.1 {
        return Err(AppError::invalid(format!(
            "the binary ({} bytes, SHA-256 {sha}) is not the one release `{version}` names ({} bytes, SHA-256 {})",
            data.len(),
            row.2,
            row.1
        )));
    }
    // The digest is the release's, so a second upload holds the same bytes.
    sqlx::query("UPDATE releases SET data = $1 WHERE version = $2 AND data IS NULL")
        .bind(data)
        .bind(&version)
        .execute(&cloud.inner().pool)
        .await?;
    Ok(Json(
        release_json(&cloud, &load(&cloud, &version).await?).await?,
    ))
}

/// The release assigned to `node`, for its desired state.
pub(crate) async fn assigned_release(
    tx: &mut Transaction<'_, Any>,
    node: &str,
) -> Result<Option<ReleaseRef>, AppError> {
    let row: Option<(String, String, i64, String)> = sqlx::query_as(
        "SELECT r.version, r.sha256, r.size, r.signature FROM node_releases a \
         JOIN releases r ON r.version = a.version WHERE a.node_id = $1",
    )
    .bind(node)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|(version, sha256, size, signature)| ReleaseRef {
        version,
        sha256,
        size: u64::try_from(size).unwrap_or(0),
        signature,
    }))
}

pub async fn assign(
    auth: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(node): ApiPath<String>,
    ApiJson(body): ApiJson<Assign>,
) -> Result<impl IntoResponse, AppError> {
    check_version(&body.version)?;
    let mut tx = cloud.inner().pool.begin().await?;
    crate::db::lock_node(&mut tx, &node).await?;
    let found: Option<(i64,)> = sqlx::query_as(
        "SELECT CASE WHEN data IS NULL THEN 0 ELSE 1 END FROM releases WHERE version = $1",
    )
    .bind(&body.version)
    .fetch_optional(&mut *tx)
    .await?;
    match found {
        None => {
            return Err(AppError::not_found(format!(
                "no release `{}`",
                body.version
            )));
        }
        Some((0,)) => {
            return Err(AppError::conflict(format!(
                "release `{}` has no binary yet: upload it with PUT /api/releases/{}/binary",
                body.version, body.version
            )));
        }
        Some(_) => {}
    }
    let before: Option<(String,)> =
        sqlx::query_as("SELECT version FROM node_releases WHERE node_id = $1")
            .bind(&node)
            .fetch_optional(&mut *tx)
            .await?;
    let assigned_ms = now_ms();
    if before.as_ref().map(|b| b.0.as_str()) != Some(body.version.as_str()) {
        sqlx::query("DELETE FROM node_releases WHERE node_id = $1")
            .bind(&node)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO node_releases (node_id, version, assigned_ms) VALUES ($1, $2, $3)",
        )
        .bind(&node)
        .bind(&body.version)
        .bind(assigned_ms)
        .execute(&mut *tx)
        .await?;
        let reason = Reason::new(&auth.caller, format!("release {} assigned", body.version));
        commit_bumped(&cloud, tx, std::slice::from_ref(&node), &reason).await?;
    } else {
        tx.commit().await?;
    }
    let status = if before.is_none() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({"node_id": node, "version": body.version})),
    ))
}

pub async fn unassign(
    auth: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(node): ApiPath<String>,
) -> Result<StatusCode, AppError> {
    let mut tx = cloud.inner().pool.begin().await?;
    crate::db::lock_node(&mut tx, &node).await?;
    let done = sqlx::query("DELETE FROM node_releases WHERE node_id = $1")
        .bind(&node)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(AppError::not_found(format!(
            "no release is assigned to node `{node}`"
        )));
    }
    let reason = Reason::new(&auth.caller, "release unassigned");
    commit_bumped(&cloud, tx, std::slice::from_ref(&node), &reason).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/agent/releases/{version}/binary`: the binary, for a node
/// assigned this release.
pub async fn binary_for_node(
    ApiPath(version): ApiPath<String>,
    NodeAuth(node): NodeAuth,
    State(cloud): State<Cloud>,
) -> Result<Response, AppError> {
    let found: Option<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT r.sha256, r.data FROM node_releases a JOIN releases r ON r.version = a.version \
         WHERE a.node_id = $1 AND a.version = $2 AND r.data IS NOT NULL",
    )
    .bind(&node)
    .bind(&version)
    .fetch_optional(&cloud.inner().pool)
    .await?;
    let Some((sha, data)) = found else {
        return Err(AppError::not_found(format!(
            "no binary of release `{version}` assigned to node `{node}`"
        )));
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::ETAG, format!("\"{sha}\"")),
        ],
        data,
    )
        .into_response())
}

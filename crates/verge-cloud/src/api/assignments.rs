//! `/api/nodes/{id}/components`: which version of which component each
//! node runs, and the archive route for nodes. A node's assigned set must
//! pass the node's own checks (`component_start_order`: known
//! dependencies, no cycle).

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{Any, Transaction};
use verge_protocol::{ArtifactRef, ComponentSpec, component_start_order};

use super::components::{artifact_json, check_component_name, reported};
use super::rows::{commit_bumped, one_or_404};
use crate::Cloud;
use crate::auth::{ApiAuth, NodeAuth};
use crate::db::{json_col, now_ms};
use crate::error::{ApiJson, ApiPath, AppError};
use crate::revisions::Reason;

/// `PUT /api/nodes/{id}/components/{name}` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assign {
    version: String,
}

/// The specs assigned to `node`, by name.
pub(crate) async fn assigned_specs(
    tx: &mut Transaction<'_, Any>,
    node: &str,
) -> Result<Vec<ComponentSpec>, AppError> {
    let rows: Vec<(String, String, Option<String>, Option<i64>)> = sqlx::query_as(
        "SELECT c.name, c.spec, c.artifact_sha256, c.artifact_size FROM node_components a \
         JOIN component_versions c ON c.name = a.name AND c.version = a.version \
         WHERE a.node_id = $1 ORDER BY c.name",
    )
    .bind(node)
    .fetch_all(&mut **tx)
    .await?;
    rows.into_iter()
        .map(|(name, spec, sha, size)| {
            let mut spec: ComponentSpec = serde_json::from_str(&spec).map_err(|e| {
                AppError::internal(format!(
                    "stored spec of component `{name}` is not valid: {e}"
                ))
            })?;
            spec.artifact = match (sha, size) {
                (Some(sha256), Some(size)) => Some(ArtifactRef {
                    sha256,
                    size: u64::try_from(size).unwrap_or(0),
                }),
                _ => None,
            };
            Ok(spec)
        })
        .collect()
}

/// 409 unless the node can run `specs` together.
fn check_set(node: &str, specs: &[ComponentSpec]) -> Result<(), AppError> {
    component_start_order(specs).map(|_| ()).map_err(|e| {
        AppError::conflict(format!(
            "node `{node}` could not run its assigned components: {e}"
        ))
    })
}

/// Assign `version` of component `name` to `node` in `tx` (the node's row
/// locked): 404 for an unknown node or version, 409 when the node could
/// not run its set then. Returns `(changed, created)`: whether the
/// assignment changed (the caller bumps the node's revision) and whether
/// the node had no version of `name` before.
pub(crate) async fn assign_in(
    tx: &mut Transaction<'_, Any>,
    node: &str,
    name: &str,
    version: &str,
) -> Result<(bool, bool), AppError> {
    check_component_name("version", version)?;
    crate::db::lock_node(tx, node).await?;
    let found: Option<(String,)> =
        sqlx::query_as("SELECT kind FROM component_versions WHERE name = $1 AND version = $2")
            .bind(name)
            .bind(version)
            .fetch_optional(&mut **tx)
            .await?;
    if found.is_none() {
        return Err(AppError::not_found(format!(
            "no version `{version}` of component `{name}`"
        )));
    }
    let before: Option<(String,)> =
        sqlx::query_as("SELECT version FROM node_components WHERE node_id = $1 AND name = $2")
            .bind(node)
            .bind(name)
            .fetch_optional(&mut **tx)
            .await?;
    let created = before.is_none();
    if before.as_ref().map(|b| b.0.as_str()) == Some(version) {
        return Ok((false, created));
    }
    sqlx::query("DELETE FROM node_components WHERE node_id = $1 AND name = $2")
        .bind(node)
        .bind(name)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO node_components (node_id, name, version, assigned_ms) VALUES ($1, $2, $3, $4)",
    )
    .bind(node)
    .bind(name)
    .bind(version)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    check_set(node, &assigned_specs(tx, node).await?)?;
    Ok((true, created))
}

pub async fn assign(
    auth: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath((node, name)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<Assign>,
) -> Result<impl IntoResponse, AppError> {
    let mut tx = cloud.inner().pool.begin().await?;
    let (changed, created) = assign_in(&mut tx, &node, &name, &body.version).await?;
    if changed {
        let reason = Reason::new(
            &auth.caller,
            format!("component `{name}` assigned {}", body.version),
        );
        commit_bumped(&cloud, tx, std::slice::from_ref(&node), &reason).await?;
    } else {
        tx.commit().await?;
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let one = node_components_json(&cloud, &node)
        .await?
        .into_iter()
        .find(|c| c["name"].as_str() == Some(name.as_str()))
        .ok_or_else(|| {
            AppError::not_found(format!("component `{name}` was unassigned meanwhile"))
        })?;
    Ok((status, Json(one)))
}

pub async fn unassign(
    auth: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath((node, name)): ApiPath<(String, String)>,
) -> Result<StatusCode, AppError> {
    let mut tx = cloud.inner().pool.begin().await?;
    crate::db::lock_node(&mut tx, &node).await?;
    let done = sqlx::query("DELETE FROM node_components WHERE node_id = $1 AND name = $2")
        .bind(&node)
        .bind(&name)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(AppError::not_found(format!(
            "component `{name}` is not assigned to node `{node}`"
        )));
    }
    check_set(&node, &assigned_specs(&mut tx, &node).await?)?;
    let reason = Reason::new(&auth.caller, format!("component `{name}` unassigned"));
    commit_bumped(&cloud, tx, std::slice::from_ref(&node), &reason).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One assignment of a node: name, version, assigned_ms, kind and the
/// version's artifact digest and size.
type AssignedRow = (String, String, i64, String, Option<String>, Option<i64>);

/// `NodeComponent`s of `node`: each assigned component with the node's
/// report of it, then the components the node reports that the cloud did
/// not assign (its own, from its config file) with `version` null.
async fn node_components_json(cloud: &Cloud, node: &str) -> Result<Vec<Value>, AppError> {
    let (report,): (Option<String>,) = one_or_404(
        &cloud.inner().pool,
        "SELECT report FROM nodes WHERE id = $1",
        node,
        "node",
    )
    .await?;
    let rows: Vec<AssignedRow> = sqlx::query_as(
        "SELECT a.name, a.version, a.assigned_ms, c.kind, c.artifact_sha256, c.artifact_size \
         FROM node_components a JOIN component_versions c ON c.name = a.name AND c.version = a.version \
         WHERE a.node_id = $1 ORDER BY a.name",
    )
    .bind(node)
    .fetch_all(&cloud.inner().pool)
    .await?;
    let mut out: Vec<Value> = rows
        .iter()
        .map(|(name, version, assigned_ms, kind, sha, size)| {
            json!({
                "node_id": node, "name": name, "version": version, "kind": kind,
                "assigned_ms": assigned_ms, "artifact": artifact_json(sha.as_ref(), *size),
                "status": reported(report.as_deref(), name),
            })
        })
        .collect();
    let local = report
        .as_deref()
        .map(json_col)
        .and_then(|r| r["components"].as_array().cloned())
        .unwrap_or_default();
    for c in local {
        let Some(name) = c["name"].as_str() else {
            continue;
        };
        if rows.iter().any(|r| r.0 == name) {
            continue;
        }
        out.push(json!({
            "node_id": node, "name": name, "version": Value::Null,
            "kind": c.get("kind").cloned().unwrap_or(Value::Null),
            "assigned_ms": Value::Null, "artifact": Value::Null, "status": c,
        }));
    }
    Ok(out)
}

pub async fn of_node(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(node): ApiPath<String>,
) -> Result<Json<Vec<Value>>, AppError> {
    Ok(Json(node_components_json(&cloud, &node).await?))
}

/// `GET /api/agent/components/{name}/{version}/artifact`: the archive, for
/// a node that has this version assigned.
pub async fn artifact_for_node(
    // The path first: a segment that does not decode is 400 whoever asks,
    // as on every other route.
    ApiPath((name, version)): ApiPath<(String, String)>,
    NodeAuth(node): NodeAuth,
    State(cloud): State<Cloud>,
) -> Result<Response, AppError> {
    let found: Option<(String, Vec<u8>)> = sqlx::query_as(
        "SELECT c.artifact_sha256, c.artifact FROM node_components a \
         JOIN component_versions c ON c.name = a.name AND c.version = a.version \
         WHERE a.node_id = $1 AND a.name = $2 AND a.version = $3 \
         AND c.artifact_sha256 IS NOT NULL AND c.artifact IS NOT NULL",
    )
    .bind(&node)
    .bind(&name)
    .bind(&version)
    .fetch_optional(&cloud.inner().pool)
    .await?;
    let Some((sha, data)) = found else {
        return Err(AppError::not_found(format!(
            "no artifact of component `{name}` version `{version}` assigned to node `{node}`"
        )));
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/gzip".to_owned()),
            (header::ETAG, format!("\"{sha}\"")),
            (
                header::HeaderName::from_static("x-verge-sha256"),
                sha.clone(),
            ),
        ],
        data,
    )
        .into_response())
}

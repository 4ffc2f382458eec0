//! `/api/components`: user components kept by version (a version's spec
//! is immutable once stored; a process version's `.tar.gz` artifact is set
//! once). Which node runs which version is `super::assignments`.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{Value, json};
use sqlx::{Any, Transaction};
use verge_protocol::{ComponentKind, ComponentSpec, valid_component_name};

use super::rows::commit_bumped;
use crate::Cloud;
use crate::auth::ApiAuth;
use crate::db::{self, json_col, now_ms};
use crate::error::{ApiJson, ApiPath, AppError, check_json_size};

/// Largest component spec accepted, bytes of JSON.
const MAX_SPEC: usize = 64 << 10;

/// The first bytes of a gzip stream: magic `1f 8b`, method 8 (deflate).
const GZIP_MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];

/// 400 unless `value` is a component name or version label.
pub(super) fn check_component_name(field: &str, value: &str) -> Result<(), AppError> {
    if valid_component_name(value) {
        return Ok(());
    }
    let shown: String = value.chars().take(64).collect();
    Err(AppError::invalid_component(format!(
        "`{field}` must be 1 to 64 of a-z A-Z 0-9 _ - . starting with a letter or digit (got `{shown}`)"
    )))
}

/// The spec of a new version, as posted: every key of [`ComponentSpec`]
/// but `artifact` (set by uploading the archive) and `workdir` (the node
/// picks it), checked alone.
fn parse_spec(body: &Value) -> Result<ComponentSpec, AppError> {
    let Value::Object(map) = body else {
        return Err(AppError::invalid_component(
            "the body must be a component spec (a JSON object)",
        ));
    };
    if map.contains_key("artifact") {
        return Err(AppError::invalid_component(
            "`artifact` is not accepted: upload the archive with \
             PUT /api/components/{name}/versions/{version}/artifact",
        ));
    }
    if map.contains_key("workdir") {
        return Err(AppError::invalid_component(
            "`workdir` is not accepted: a component from the cloud runs in its own \
             directory on the node (<data_dir>/components/<name>/<version>)",
        ));
    }
    check_json_size("spec", body, MAX_SPEC)?;
    for key in ["name", "version"] {
        match map.get(key) {
            Some(Value::String(s)) => check_component_name(key, s)?,
            _ => {
                return Err(AppError::invalid_component(format!(
                    "`{key}` is required (a string)"
                )));
            }
        }
    }
    let spec: ComponentSpec = serde_json::from_value(body.clone())
        .map_err(|e| AppError::invalid_component(format!("spec: {e}")))?;
    spec.validate()
        .map_err(|e| AppError::invalid_component(e.to_string()))?;
    if let Some(d) = spec.depends_on.iter().find(|d| !valid_component_name(d)) {
        return Err(AppError::invalid_component(format!(
            "component `{}`: depends_on: `{d}` is not a component name",
            spec.name
        )));
    }
    Ok(spec)
}

/// The stored columns of one version (without the archive).
type VersionRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<i64>,
    i64,
);
const VCOLS: &str = "name, version, kind, spec, artifact_sha256, artifact_size, created_ms";

pub(super) fn artifact_json(sha256: Option<&String>, size: Option<i64>) -> Value {
    match (sha256, size) {
        (Some(s), Some(n)) => json!({"sha256": s, "size": n}),
        _ => Value::Null,
    }
}

/// `ComponentVersion`: a version with its spec.
fn version_json(row: &VersionRow) -> Value {
    let (name, version, kind, spec, sha, size, created_ms) = row;
    json!({
        "name": name, "version": version, "kind": kind, "spec": json_col(spec),
        "artifact": artifact_json(sha.as_ref(), *size), "created_ms": created_ms,
    })
}

async fn versions_of(cloud: &Cloud, name: &str) -> Result<Vec<VersionRow>, AppError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {VCOLS} FROM component_versions WHERE name = $1 ORDER BY created_ms, version"
    )))
    .bind(name)
    .fetch_all(&cloud.inner().pool)
    .await?)
}

async fn load_version(cloud: &Cloud, name: &str, version: &str) -> Result<VersionRow, AppError> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {VCOLS} FROM component_versions WHERE name = $1 AND version = $2"
    )))
    .bind(name)
    .bind(version)
    .fetch_optional(&cloud.inner().pool)
    .await?
    .ok_or_else(|| AppError::not_found(format!("no version `{version}` of component `{name}`")))
}

/// A node's report of the component `name`, if it sent one.
pub(super) fn reported(report: Option<&str>, name: &str) -> Value {
    report
        .map(json_col)
        .and_then(|r| {
            r["components"]
                .as_array()?
                .iter()
                .find(|c| c["name"].as_str() == Some(name))
                .cloned()
        })
        .unwrap_or(Value::Null)
}

/// `Component`: its versions (oldest first, without specs) and the nodes
/// it is assigned to with their reports of it.
async fn component_json(cloud: &Cloud, name: &str) -> Result<Value, AppError> {
    let versions = versions_of(cloud, name).await?;
    let (Some(first), Some(latest)) = (versions.first(), versions.last()) else {
        return Err(AppError::not_found(format!("no component `{name}`")));
    };
    let nodes: Vec<(String, String, i64, Option<String>)> = sqlx::query_as(
        "SELECT a.node_id, a.version, a.assigned_ms, n.report FROM node_components a \
         JOIN nodes n ON n.id = a.node_id WHERE a.name = $1 ORDER BY a.node_id",
    )
    .bind(name)
    .fetch_all(&cloud.inner().pool)
    .await?;
    Ok(json!({
        "name": name,
        "latest": latest.1,
        "kind": latest.2,
        "created_ms": first.6,
        "updated_ms": latest.6,
        "versions": versions.iter().map(|(_, version, kind, _, sha, size, created_ms)| json!({
            "version": version, "kind": kind, "created_ms": created_ms,
            "artifact": artifact_json(sha.as_ref(), *size),
        })).collect::<Vec<_>>(),
        "nodes": nodes.iter().map(|(node, version, assigned_ms, report)| json!({
            "node_id": node, "version": version, "assigned_ms": assigned_ms,
            "status": reported(report.as_deref(), name),
        })).collect::<Vec<_>>(),
    }))
}

/// Nodes that run `name` (at `version`, when given).
async fn nodes_running(
    tx: &mut Transaction<'_, Any>,
    name: &str,
    version: Option<&str>,
) -> sqlx::Result<Vec<String>> {
    let rows: Vec<(String,)> = match version {
        Some(v) => sqlx::query_as(
            "SELECT node_id FROM node_components WHERE name = $1 AND version = $2 ORDER BY node_id",
        )
        .bind(name)
        .bind(v)
        .fetch_all(&mut **tx)
        .await?,
        None => {
            sqlx::query_as("SELECT node_id FROM node_components WHERE name = $1 ORDER BY node_id")
                .bind(name)
                .fetch_all(&mut **tx)
                .await?
        }
    };
    Ok(rows.into_iter().map(|r| r.0).collect())
}

pub async fn create(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiJson(body): ApiJson<Value>,
) -> Result<impl IntoResponse, AppError> {
    let spec = parse_spec(&body)?;
    let stored = serde_json::to_string(&spec).map_err(AppError::internal)?;
    let done = sqlx::query(
        "INSERT INTO component_versions (name, version, kind, spec, created_ms) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name, version) DO NOTHING",
    )
    .bind(&spec.name)
    .bind(&spec.version)
    .bind(spec.kind.as_str())
    .bind(&stored)
    .bind(now_ms())
    .execute(&cloud.inner().pool)
    .await?;
    let row = load_version(&cloud, &spec.name, &spec.version).await?;
    if done.rows_affected() == 1 {
        return Ok((StatusCode::CREATED, Json(version_json(&row))));
    }
    // Versions are immutable: posting one again is fine only unchanged.
    let same = serde_json::from_str::<ComponentSpec>(&row.3).is_ok_and(|s| s == spec);
    if !same {
        return Err(AppError::conflict(format!(
            "version `{}` of component `{}` exists already with another spec; versions are immutable, post a new version",
            spec.version, spec.name
        )));
    }
    Ok((StatusCode::OK, Json(version_json(&row))))
}

pub async fn list(_: ApiAuth, State(cloud): State<Cloud>) -> Result<Json<Vec<Value>>, AppError> {
    let names: Vec<(String,)> =
        sqlx::query_as("SELECT DISTINCT name FROM component_versions ORDER BY name")
            .fetch_all(&cloud.inner().pool)
            .await?;
    let mut out = Vec::with_capacity(names.len());
    for (name,) in names {
        match component_json(&cloud, &name).await {
            Ok(c) => out.push(c),
            // Deleted between the two queries.
            Err(e) if e.status == StatusCode::NOT_FOUND => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Json(out))
}

pub async fn get(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, AppError> {
    Ok(Json(component_json(&cloud, &name).await?))
}

pub async fn delete(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, AppError> {
    let mut tx = cloud.inner().pool.begin().await?;
    let nodes = nodes_running(&mut tx, &name, None).await?;
    if !nodes.is_empty() {
        return Err(AppError::conflict(format!(
            "component `{name}` is assigned to node(s) {}; unassign it first",
            nodes.join(", ")
        )));
    }
    let done = sqlx::query("DELETE FROM component_versions WHERE name = $1")
        .bind(&name)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(AppError::not_found(format!("no component `{name}`")));
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn versions(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Vec<Value>>, AppError> {
    let rows = versions_of(&cloud, &name).await?;
    if rows.is_empty() {
        return Err(AppError::not_found(format!("no component `{name}`")));
    }
    Ok(Json(rows.iter().map(version_json).collect()))
}

pub async fn version(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath((name, version)): ApiPath<(String, String)>,
) -> Result<Json<Value>, AppError> {
    Ok(Json(version_json(
        &load_version(&cloud, &name, &version).await?,
    )))
}

pub async fn delete_version(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath((name, version)): ApiPath<(String, String)>,
) -> Result<StatusCode, AppError> {
    let mut tx = cloud.inner().pool.begin().await?;
    let nodes = nodes_running(&mut tx, &name, Some(&version)).await?;
    if !nodes.is_empty() {
        return Err(AppError::conflict(format!(
            "version `{version}` of component `{name}` is assigned to node(s) {}",
            nodes.join(", ")
        )));
    }
    let done = sqlx::query("DELETE FROM component_versions WHERE name = $1 AND version = $2")
        .bind(&name)
        .bind(&version)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(AppError::not_found(format!(
            "no version `{version}` of component `{name}`"
        )));
    }
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

fn too_large(max: usize, key: &str) -> AppError {
    AppError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the body is larger than {max} bytes (`{key}`)"),
    )
}

/// The request body, at most `max` bytes (413 beyond, naming the config
/// `key` that sets it).
pub(super) async fn read_limited(
    headers: &HeaderMap,
    body: Body,
    max: usize,
    key: &str,
) -> Result<Vec<u8>, AppError> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > u64::try_from(max).unwrap_or(u64::MAX)) {
        return Err(too_large(max, key));
    }
    match Limited::new(body, max).collect().await {
        Ok(b) => Ok(b.to_bytes().to_vec()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(max, key)),
        Err(e) => Err(AppError::invalid(format!("reading the body: {e}"))),
    }
}

pub async fn put_artifact(
    auth: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath((name, version)): ApiPath<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, AppError> {
    let row = load_version(&cloud, &name, &version).await?;
    if row.2 != ComponentKind::Process.as_str() {
        return Err(AppError::invalid_component(format!(
            "component `{name}` version `{version}` is a {}; its files are its image",
            row.2
        )));
    }
    let max = cloud.inner().cfg.cloud.max_artifact_bytes;
    let data = read_limited(&headers, body, max, "cloud.max_artifact_bytes").await?;
    if data.is_empty() {
        return Err(AppError::invalid_component("the artifact is empty"));
    }
    if !data.starts_with(&GZIP_MAGIC) {
        return Err(AppError::invalid_component(
            "the artifact is not a gzip stream (a .tar.gz is expected)",
        ));
    }
    let sha = db::sha256_hex(&data);
    let size = i64::try_from(data.len()).unwrap_or(i64::MAX);
    let mut tx = cloud.inner().pool.begin().await?;
    let done = sqlx::query(
        "UPDATE component_versions SET artifact_sha256 = $1, artifact_size = $2, artifact = $3 \
         WHERE name = $4 AND version = $5 AND artifact_sha256 IS NULL",
    )
    .bind(&sha)
    .bind(size)
    .bind(data)
    .bind(&name)
    .bind(&version)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        let (existing,): (Option<String>,) = sqlx::query_as(
            "SELECT artifact_sha256 FROM component_versions WHERE name = $1 AND version = $2",
        )
        .bind(&name)
        .bind(&version)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| {
            AppError::not_found(format!("no version `{version}` of component `{name}`"))
        })?;
        if existing.as_deref() != Some(sha.as_str()) {
            return Err(AppError::conflict(format!(
                "version `{version}` of component `{name}` has another artifact already; versions are immutable, post a new version"
            )));
        }
        tx.commit().await?;
    } else {
        // Nodes that run this version now get its ArtifactRef.
        let nodes = nodes_running(&mut tx, &name, Some(&version)).await?;
        let reason = crate::revisions::Reason::new(
            &auth.caller,
            format!("component `{name}` {version}: artifact uploaded"),
        );
        commit_bumped(&cloud, tx, &nodes, &reason).await?;
    }
    Ok(Json(version_json(
        &load_version(&cloud, &name, &version).await?,
    )))
}

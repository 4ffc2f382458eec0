//! `/api/functions`: uploads compiled in the cloud's sandbox before they
//! are stored, and test calls run there.

use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use verge_functions::{DeployError, FunctionSpec, RuntimeKind};

use super::rows::{commit_bumped, one_or_404};
use crate::Cloud;
use crate::auth::ApiAuth;
use crate::db::{self, json_col, now_ms};
use crate::error::{ApiJson, ApiPath, AppError, check_name, check_text};
use crate::revisions::Reason;

/// `PUT /api/functions/{name}` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upload {
    spec: Value,
    module_base64: String,
}

fn spec_for(name: &str, spec: &Value) -> Result<FunctionSpec, AppError> {
    let Value::Object(map) = spec else {
        return Err(AppError::invalid_function("`spec` must be a JSON object"));
    };
    for key in ["name", "path", "command", "workdir"] {
        if map.contains_key(key) {
            return Err(AppError::invalid_function(format!(
                "`spec.{key}` is not accepted by the cloud"
            )));
        }
    }
    let mut map = map.clone();
    map.insert("name".into(), Value::String(name.to_owned()));
    let spec: FunctionSpec = serde_json::from_value(Value::Object(map))
        .map_err(|e| AppError::invalid_function(format!("spec: {e}")))?;
    check_text("spec.description", &spec.description)?;
    if spec.runtime != RuntimeKind::Wasm {
        return Err(AppError::invalid_function(
            "`spec.runtime`: the cloud takes only `wasm` functions",
        ));
    }
    Ok(spec)
}

fn deploy_error(e: DeployError) -> AppError {
    match e {
        DeployError::Storage(m) => AppError::internal(m),
        other => AppError::invalid_function(other.to_string()),
    }
}

type FnRow = (String, i64, String, i64, String, i64, i64);
const COLS: &str = "name, version, sha256, size, spec, created_ms, updated_ms";

async fn function_json(cloud: &Cloud, row: FnRow) -> Result<Value, AppError> {
    let (name, version, sha256, size, spec, created_ms, updated_ms) = row;
    let pool = &cloud.inner().pool;
    let nodes: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT n.id, n.report FROM nodes n WHERE n.id IN (SELECT r.node_id FROM rules r \
         JOIN rule_functions f ON f.rule_id = r.id WHERE f.function_name = $1) ORDER BY n.id",
    )
    .bind(&name)
    .fetch_all(pool)
    .await?;
    let mut stats = Vec::new();
    for (node, report) in &nodes {
        let report = report.as_deref().map_or(Value::Null, json_col);
        let found = report["functions"].as_array().and_then(|fs| {
            fs.iter()
                .find(|f| f["name"].as_str() == Some(name.as_str()))
        });
        if let Some(Value::Object(f)) = found {
            let mut f = f.clone();
            f.insert("node_id".into(), Value::String(node.clone()));
            stats.push(Value::Object(f));
        }
    }
    Ok(json!({
        "name": name, "version": version, "sha256": sha256, "size": size,
        "spec": json_col(&spec), "created_ms": created_ms, "updated_ms": updated_ms,
        "nodes": nodes.iter().map(|n| n.0.clone()).collect::<Vec<_>>(), "stats": stats,
    }))
}

async fn load(cloud: &Cloud, name: &str) -> Result<Value, AppError> {
    let sql = sqlx::AssertSqlSafe(format!("SELECT {COLS} FROM functions WHERE name = $1"));
    let row: FnRow = one_or_404(&cloud.inner().pool, sql, name, "function").await?;
    function_json(cloud, row).await
}

pub async fn put(
    auth: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<Upload>,
) -> Result<impl IntoResponse, AppError> {
    check_name("name", &name)?;
    let spec = spec_for(&name, &body.spec)?;
    let module = base64::engine::general_purpose::STANDARD
        .decode(body.module_base64.trim())
        .map_err(|e| AppError::invalid(format!("`module_base64`: {e}")))?;
    let max = cloud.inner().cfg.cloud.max_upload_bytes;
    if module.len() > max {
        return Err(AppError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the module is {} bytes; at most {max} are accepted",
                module.len()
            ),
        ));
    }
    if module.is_empty() {
        return Err(AppError::invalid_function("the module is empty"));
    }
    cloud
        .inner()
        .functions
        .deploy(spec.clone(), Some(module.clone()))
        .await
        .map_err(deploy_error)?;
    // What nodes get: the spec as uploaded, without the name.
    let mut stored = serde_json::to_value(&spec).map_err(AppError::internal)?;
    if let Value::Object(m) = &mut stored {
        m.remove("name");
    }
    let sha = db::sha256_hex(&module);
    let size = i64::try_from(module.len()).unwrap_or(i64::MAX);
    let now = now_ms();
    let mut tx = cloud.inner().pool.begin().await?;
    // Insert-or-update without a read first: two first uploads of one name
    // at once (replicas on PostgreSQL) must not fail on the primary key.
    let created = sqlx::query(
        "INSERT INTO functions (name, version, sha256, size, spec, module, created_ms, updated_ms) \
         VALUES ($1, 1, $2, $3, $4, $5, $6, $6) ON CONFLICT (name) DO NOTHING",
    )
    .bind(&name)
    .bind(&sha)
    .bind(size)
    .bind(stored.to_string())
    .bind(&module)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !created {
        sqlx::query(
            "UPDATE functions SET version = version + 1, sha256 = $1, size = $2, spec = $3, module = $4, updated_ms = $5 \
             WHERE name = $6",
        )
        .bind(&sha)
        .bind(size)
        .bind(stored.to_string())
        .bind(&module)
        .bind(now)
        .bind(&name)
        .execute(&mut *tx)
        .await?;
    }
    crate::revisions::keep_module(&mut tx, &sha, &module).await?;
    let (version,): (i64,) = sqlx::query_as("SELECT version FROM functions WHERE name = $1")
        .bind(&name)
        .fetch_one(&mut *tx)
        .await?;
    let nodes = db::nodes_using_function(&mut tx, &name).await?;
    let reason = Reason::new(
        &auth.caller,
        format!("function `{name}` uploaded as version {version}"),
    );
    commit_bumped(&cloud, tx, &nodes, &reason).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(load(&cloud, &name).await?)))
}

pub async fn list(_: ApiAuth, State(cloud): State<Cloud>) -> Result<Json<Vec<Value>>, AppError> {
    let rows: Vec<FnRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM functions ORDER BY name"
    )))
    .fetch_all(&cloud.inner().pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(function_json(&cloud, r).await?);
    }
    Ok(Json(out))
}

pub async fn get(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, AppError> {
    Ok(Json(load(&cloud, &name).await?))
}

pub async fn delete(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, AppError> {
    let mut tx = cloud.inner().pool.begin().await?;
    let users: Vec<(String,)> = sqlx::query_as(
        "SELECT rule_id FROM rule_functions WHERE function_name = $1 ORDER BY rule_id",
    )
    .bind(&name)
    .fetch_all(&mut *tx)
    .await?;
    if !users.is_empty() {
        let rules: Vec<String> = users.into_iter().map(|r| r.0).collect();
        return Err(AppError::conflict(format!(
            "function `{name}` is used by rule(s) {}",
            rules.join(", ")
        )));
    }
    let done = sqlx::query("DELETE FROM functions WHERE name = $1")
        .bind(&name)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(AppError::not_found(format!("no function `{name}`")));
    }
    // Its module stays while a kept revision names it.
    crate::revisions::prune_modules(&mut tx).await?;
    tx.commit().await?;
    match cloud.inner().functions.delete(&name).await {
        Ok(()) | Err(DeployError::NotFound(_)) => {}
        Err(e) => tracing::warn!(function = %name, "sandbox copy not deleted: {e}"),
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/functions/{name}/invoke` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invoke {
    topic: String,
    #[serde(default)]
    payload: Value,
}

pub async fn invoke(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<Invoke>,
) -> Result<Json<Value>, AppError> {
    let (sha, spec, module): (String, String, Vec<u8>) = one_or_404(
        &cloud.inner().pool,
        "SELECT sha256, spec, module FROM functions WHERE name = $1",
        &name,
        "function",
    )
    .await?;
    let sandbox = &cloud.inner().functions;
    let current = sandbox.get(&name).and_then(|i| i.sha256);
    if current.as_deref() != Some(sha.as_str()) {
        // Another replica took the upload, or this sandbox lost it.
        let spec = spec_for(&name, &json_col(&spec))?;
        sandbox
            .deploy(spec, Some(module))
            .await
            .map_err(deploy_error)?;
    }
    // A JSON string is sent as its text; anything else as JSON.
    let payload = match body.payload {
        Value::String(s) => s.into_bytes(),
        other => other.to_string().into_bytes(),
    };
    let started = Instant::now();
    let outputs = sandbox
        .invoke(&name, verge_functions::Message::new(body.topic, payload))
        .await
        .map_err(|e| AppError::invalid_function(format!("the call failed: {e}")))?;
    let duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let outputs: Vec<Value> = outputs
        .into_iter()
        .map(|m| {
            let text = String::from_utf8_lossy(&m.payload).into_owned();
            let payload = serde_json::from_str(&text).unwrap_or(Value::String(text));
            json!({"topic": m.topic, "payload": payload})
        })
        .collect();
    Ok(Json(
        json!({"outputs": outputs, "duration_us": duration_us}),
    ))
}

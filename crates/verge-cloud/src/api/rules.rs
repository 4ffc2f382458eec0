//! `/api/rules`: rules checked with the node's own rule checks (no node
//! runtime) before they are stored, and dry runs of SQL.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};
use verge_rules::{ActionKind, RuleConfig, RuleError, Sample};

use super::rows::{NodeFilter, commit_bumped, list_by_node, one_or_404};
use crate::Cloud;
use crate::auth::ApiAuth;
use crate::db::{json_col, now_ms};
use crate::error::{ApiJson, ApiPath, ApiQuery, AppError, check_name, check_text};
use crate::revisions::Reason;

/// Check a rule as a node would (the rule engine's pure check: id, SQL,
/// action settings) and that the functions it names exist here; returns
/// them.
async fn validate(cloud: &Cloud, rule: &RuleConfig) -> Result<Vec<String>, AppError> {
    verge_rules::validate(rule)?;
    let mut names = Vec::new();
    for (i, a) in rule.actions.iter().enumerate() {
        if let ActionKind::Function(f) = a {
            let found: Option<(String,)> =
                sqlx::query_as("SELECT name FROM functions WHERE name = $1")
                    .bind(&f.name)
                    .fetch_optional(&cloud.inner().pool)
                    .await?;
            if found.is_none() {
                return Err(AppError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_rule",
                    format!("actions[{i}] (function): no function named `{}`", f.name),
                ));
            }
            if !names.contains(&f.name) {
                names.push(f.name.clone());
            }
        }
    }
    Ok(names)
}

/// `POST /api/rules` and `PUT /api/rules/{id}` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleBody {
    #[serde(default)]
    id: String,
    node_id: String,
    sql: String,
    #[serde(default)]
    actions: Vec<Value>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    description: String,
}

fn yes() -> bool {
    true
}

/// Longest rule SQL accepted, in bytes.
const MAX_SQL: usize = 64 << 10;

fn parse(body: &RuleBody) -> Result<RuleConfig, AppError> {
    check_text("description", &body.description)?;
    if body.sql.len() > MAX_SQL {
        return Err(AppError::invalid(format!(
            "`sql` is {} bytes; at most {MAX_SQL} are accepted",
            body.sql.len()
        )));
    }
    let raw = json!({
        "id": body.id, "sql": body.sql, "actions": body.actions,
        "enabled": body.enabled, "description": body.description,
    });
    serde_json::from_value(raw).map_err(|e| {
        AppError::new(
            StatusCode::BAD_REQUEST,
            "invalid_rule",
            format!("actions: {e}"),
        )
    })
}

type RuleRow = (String, String, String, String, i64, String, i64, i64);
const COLS: &str = "id, node_id, sql, actions, enabled, description, created_ms, updated_ms";

async fn rule_json(cloud: &Cloud, row: RuleRow) -> Result<Value, AppError> {
    let (id, node_id, sql, actions, enabled, description, created_ms, updated_ms) = row;
    let report: Option<(Option<String>,)> =
        sqlx::query_as("SELECT report FROM nodes WHERE id = $1")
            .bind(&node_id)
            .fetch_optional(&cloud.inner().pool)
            .await?;
    let status = report
        .and_then(|r| r.0)
        .map(|r| json_col(&r))
        .and_then(|r| {
            r["rules"]
                .as_array()?
                .iter()
                .find(|s| s["id"].as_str() == Some(id.as_str()))
                .cloned()
        })
        .unwrap_or(Value::Null);
    Ok(json!({
        "id": id, "node_id": node_id, "sql": sql, "actions": json_col(&actions),
        "enabled": enabled != 0, "description": description, "created_ms": created_ms,
        "updated_ms": updated_ms, "status": status,
    }))
}

async fn load(cloud: &Cloud, id: &str) -> Result<Value, AppError> {
    let sql = sqlx::AssertSqlSafe(format!("SELECT {COLS} FROM rules WHERE id = $1"));
    let row: RuleRow = one_or_404(&cloud.inner().pool, sql, id, "rule").await?;
    rule_json(cloud, row).await
}

/// The node the rule `id` runs on, or 404.
async fn node_of(tx: &mut sqlx::Transaction<'_, sqlx::Any>, id: &str) -> Result<String, AppError> {
    let (node,): (String,) = one_or_404(
        &mut **tx,
        "SELECT node_id FROM rules WHERE id = $1",
        id,
        "rule",
    )
    .await?;
    Ok(node)
}

async fn node_exists(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    node: &str,
) -> Result<(), AppError> {
    let found: Option<(String,)> = sqlx::query_as("SELECT id FROM nodes WHERE id = $1")
        .bind(node)
        .fetch_optional(&mut **tx)
        .await?;
    match found {
        Some(_) => Ok(()),
        None => Err(AppError::invalid(format!("`node_id`: no node `{node}`"))),
    }
}

async fn set_functions(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    rule: &str,
    names: &[String],
) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM rule_functions WHERE rule_id = $1")
        .bind(rule)
        .execute(&mut **tx)
        .await?;
    for n in names {
        sqlx::query("INSERT INTO rule_functions (rule_id, function_name) VALUES ($1, $2)")
            .bind(rule)
            .bind(n)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

pub async fn create(
    auth: ApiAuth,
    State(cloud): State<Cloud>,
    ApiJson(body): ApiJson<RuleBody>,
) -> Result<impl IntoResponse, AppError> {
    check_name("id", &body.id)?;
    check_name("node_id", &body.node_id)?;
    let config = parse(&body)?;
    let functions = validate(&cloud, &config).await?;
    let now = now_ms();
    let mut tx = cloud.inner().pool.begin().await?;
    node_exists(&mut tx, &body.node_id).await?;
    let done = sqlx::query(
        "INSERT INTO rules (id, node_id, sql, actions, enabled, description, created_ms, updated_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&body.id)
    .bind(&body.node_id)
    .bind(&body.sql)
    .bind(Value::Array(body.actions.clone()).to_string())
    .bind(i64::from(body.enabled))
    .bind(&body.description)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Err(AppError::conflict(format!(
            "a rule with id `{}` exists already",
            body.id
        )));
    }
    set_functions(&mut tx, &body.id, &functions).await?;
    let reason = Reason::new(&auth.caller, format!("rule `{}` added", body.id));
    commit_bumped(&cloud, tx, std::slice::from_ref(&body.node_id), &reason).await?;
    Ok((StatusCode::CREATED, Json(load(&cloud, &body.id).await?)))
}

pub async fn update(
    auth: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(id): ApiPath<String>,
    ApiJson(mut body): ApiJson<RuleBody>,
) -> Result<Json<Value>, AppError> {
    if !body.id.is_empty() && body.id != id {
        return Err(AppError::invalid("`id` differs from the rule in the path"));
    }
    body.id = id.clone();
    check_name("node_id", &body.node_id)?;
    let config = parse(&body)?;
    let functions = validate(&cloud, &config).await?;
    let mut tx = cloud.inner().pool.begin().await?;
    let old_node = node_of(&mut tx, &id).await?;
    node_exists(&mut tx, &body.node_id).await?;
    sqlx::query(
        "UPDATE rules SET node_id = $1, sql = $2, actions = $3, enabled = $4, description = $5, updated_ms = $6 WHERE id = $7",
    )
    .bind(&body.node_id)
    .bind(&body.sql)
    .bind(Value::Array(body.actions.clone()).to_string())
    .bind(i64::from(body.enabled))
    .bind(&body.description)
    .bind(now_ms())
    .bind(&id)
    .execute(&mut *tx)
    .await?;
    set_functions(&mut tx, &id, &functions).await?;
    let summary = if old_node == body.node_id {
        format!("rule `{id}` updated")
    } else {
        format!(
            "rule `{id}` moved from node `{old_node}` to `{}`",
            body.node_id
        )
    };
    let mut nodes = vec![old_node];
    if nodes[0] != body.node_id {
        nodes.push(body.node_id.clone());
    }
    commit_bumped(&cloud, tx, &nodes, &Reason::new(&auth.caller, summary)).await?;
    Ok(Json(load(&cloud, &id).await?))
}

pub async fn list(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiQuery(q): ApiQuery<NodeFilter>,
) -> Result<Json<Vec<Value>>, AppError> {
    let rows: Vec<RuleRow> = list_by_node(&cloud, "rules", COLS, q.node_id.as_deref()).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push(rule_json(&cloud, r).await?);
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

pub async fn delete(
    auth: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, AppError> {
    let mut tx = cloud.inner().pool.begin().await?;
    let node = node_of(&mut tx, &id).await?;
    sqlx::query("DELETE FROM rules WHERE id = $1")
        .bind(&id)
        .execute(&mut *tx)
        .await?;
    set_functions(&mut tx, &id, &[]).await?;
    let reason = Reason::new(&auth.caller, format!("rule `{id}` removed"));
    commit_bumped(&cloud, tx, &[node], &reason).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/rules/test` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestBody {
    sql: String,
    #[serde(default)]
    samples: Vec<Sample>,
}

pub async fn test(
    _: ApiAuth,
    ApiJson(body): ApiJson<TestBody>,
) -> Result<Json<verge_rules::TestOutput>, AppError> {
    let TestBody { sql, samples } = body;
    // On the blocking pool, as the node's engine runs it.
    let out = tokio::task::spawn_blocking(move || verge_rules::dry_run(&sql, &samples))
        .await
        .map_err(|e| RuleError::Internal(format!("dry run failed: {e}")))??;
    Ok(Json(out))
}

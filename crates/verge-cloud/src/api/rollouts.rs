//! `/api/rollouts`: start a staged rollout of a component version to the
//! nodes a label selector matches, follow it, resume a paused one, cancel
//! one. The stages are driven by `crate::rollouts`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::Value;

use super::components::check_component_name;
use super::labels;
use crate::Cloud;
use crate::auth::ApiAuth;
use crate::db::now_ms;
use crate::error::{ApiJson, ApiPath, AppError};
use crate::rollouts::{self, Rollout};

/// The stage timeout when none is given.
const DEFAULT_STAGE_TIMEOUT: &str = "10m";

/// Stage timeouts accepted: 1 s to 7 days.
const MAX_STAGE_TIMEOUT_MS: i64 = 7 * 24 * 3600 * 1000;

/// Rollouts listed, newest first.
const LIST_LIMIT: i64 = 100;

/// `POST /api/rollouts` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRollout {
    component: String,
    version: String,
    selector: Value,
    #[serde(default)]
    canary: Option<i64>,
    #[serde(default)]
    canary_percent: Option<f64>,
    #[serde(default)]
    max_failure_rate: Option<f64>,
    #[serde(default)]
    stage_timeout: Option<String>,
}

/// How many of `matched` nodes the first stage takes; 400 for bad numbers.
fn canary_count(body: &CreateRollout, matched: usize) -> Result<usize, AppError> {
    let n = match (body.canary, body.canary_percent) {
        (Some(_), Some(_)) => {
            return Err(AppError::invalid(
                "give `canary` or `canary_percent`, not both",
            ));
        }
        (Some(c), None) => {
            if c < 1 {
                return Err(AppError::invalid("`canary` must be 1 or more nodes"));
            }
            usize::try_from(c).unwrap_or(usize::MAX)
        }
        (None, Some(p)) => {
            if !(p > 0.0 && p <= 100.0) {
                return Err(AppError::invalid(
                    "`canary_percent` must be above 0 and at most 100",
                ));
            }
            // p % of the matched nodes rounded up (at least one: clamped
            // below); p ≤ 100, so never more than `matched`.
            (p * matched as f64 / 100.0).ceil() as usize
        }
        (None, None) => 1,
    };
    Ok(n.clamp(1, matched.max(1)))
}

/// The stage timeout in ms; 400 naming `stage_timeout` when bad.
fn stage_timeout_ms(text: Option<&str>) -> Result<i64, AppError> {
    let text = text.unwrap_or(DEFAULT_STAGE_TIMEOUT);
    let d = verge_duration::parse(text)
        .map_err(|e| AppError::invalid(format!("`stage_timeout`: {e}")))?;
    let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    if !(1000..=MAX_STAGE_TIMEOUT_MS).contains(&ms) {
        return Err(AppError::invalid("`stage_timeout` must be from 1s to 7d"));
    }
    Ok(ms)
}

pub async fn create(
    auth: ApiAuth,
    State(cloud): State<Cloud>,
    ApiJson(body): ApiJson<CreateRollout>,
) -> Result<impl IntoResponse, AppError> {
    check_component_name("component", &body.component)?;
    check_component_name("version", &body.version)?;
    let selector = labels::parse("selector", &body.selector)?;
    let max_failure_rate = body.max_failure_rate.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&max_failure_rate) {
        return Err(AppError::invalid("`max_failure_rate` must be from 0 to 1"));
    }
    let timeout = stage_timeout_ms(body.stage_timeout.as_deref())?;
    // Numbers are checked before anything is looked up.
    canary_count(&body, 1)?;
    let pool = &cloud.inner().pool;
    let mut tx = pool.begin().await?;
    let found: Option<(String,)> =
        sqlx::query_as("SELECT kind FROM component_versions WHERE name = $1 AND version = $2")
            .bind(&body.component)
            .bind(&body.version)
            .fetch_optional(&mut *tx)
            .await?;
    if found.is_none() {
        return Err(AppError::not_found(format!(
            "no version `{}` of component `{}`",
            body.version, body.component
        )));
    }
    let all: Vec<(String, String)> = sqlx::query_as("SELECT id, labels FROM nodes ORDER BY id")
        .fetch_all(&mut *tx)
        .await?;
    let matched: Vec<String> = all
        .into_iter()
        .filter(|(_, l)| labels::matches(&selector, &labels::from_column(l)))
        .map(|(id, _)| id)
        .collect();
    if matched.is_empty() {
        return Err(AppError::conflict(format!(
            "no node matches the selector `{}`",
            labels::selector_text(&selector)
        )));
    }
    let canary = canary_count(&body, matched.len())?;
    let stages: i64 = if canary < matched.len() { 2 } else { 1 };
    let now = now_ms();
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO rollouts (component, version, selector, max_failure_rate, stage_timeout_ms, stages, stage, stage_started_ms, state, reason, created_ms, author) \
         VALUES ($1, $2, $3, $4, $5, $6, 1, $7, 'running', NULL, $7, $8) RETURNING id",
    )
    .bind(&body.component)
    .bind(&body.version)
    .bind(serde_json::to_string(&selector).map_err(AppError::internal)?)
    .bind(max_failure_rate)
    .bind(timeout)
    .bind(stages)
    .bind(now)
    .bind(&auth.caller)
    .fetch_one(&mut *tx)
    .await?;
    for (i, node) in matched.iter().enumerate() {
        let stage: i64 = if i < canary { 1 } else { 2 };
        sqlx::query(
            "INSERT INTO rollout_nodes (rollout_id, node_id, stage, revision, result, error) \
             VALUES ($1, $2, $3, NULL, 'pending', NULL)",
        )
        .bind(id)
        .bind(node)
        .bind(stage)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    // Stage 1 starts now; the driver does the rest.
    rollouts::advance(&cloud, id).await?;
    Ok((StatusCode::CREATED, Json(one_json(&cloud, id).await?)))
}

/// The rollout `id`, or 404.
async fn load_or_404(cloud: &Cloud, id: i64) -> Result<Rollout, AppError> {
    rollouts::load(&cloud.inner().pool, id)
        .await?
        .ok_or_else(|| AppError::not_found(format!("no rollout {id}")))
}

async fn one_json(cloud: &Cloud, id: i64) -> Result<Value, AppError> {
    let r = load_or_404(cloud, id).await?;
    rollouts::to_json(&cloud.inner().pool, &r).await
}

/// 400 unless `id` is a rollout number (1 or more).
fn check_id(id: i64) -> Result<i64, AppError> {
    if id < 1 {
        return Err(AppError::invalid("a rollout id is an integer of 1 or more"));
    }
    Ok(id)
}

pub async fn list(_: ApiAuth, State(cloud): State<Cloud>) -> Result<Json<Vec<Value>>, AppError> {
    let pool = &cloud.inner().pool;
    let ids: Vec<(i64,)> = sqlx::query_as("SELECT id FROM rollouts ORDER BY id DESC LIMIT $1")
        .bind(LIST_LIMIT)
        .fetch_all(pool)
        .await?;
    let mut out = Vec::with_capacity(ids.len());
    for (id,) in ids {
        if let Some(r) = rollouts::load(pool, id).await? {
            out.push(rollouts::to_json(pool, &r).await?);
        }
    }
    Ok(Json(out))
}

pub async fn get(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Value>, AppError> {
    Ok(Json(one_json(&cloud, check_id(id)?).await?))
}

/// `POST /api/rollouts/{id}/resume`: a paused rollout goes on with its
/// next stage despite the failures (completed when there is none).
pub async fn resume(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Value>, AppError> {
    let r = load_or_404(&cloud, check_id(id)?).await?;
    if r.state != "paused" {
        return Err(AppError::conflict(format!(
            "rollout {id} is {}, not paused",
            r.state
        )));
    }
    let pool = &cloud.inner().pool;
    let done = if r.stage < r.stages {
        sqlx::query(
            "UPDATE rollouts SET state = 'running', reason = NULL, stage = stage + 1, stage_started_ms = $1 \
             WHERE id = $2 AND state = 'paused' AND stage = $3",
        )
        .bind(now_ms())
        .bind(id)
        .bind(r.stage)
        .execute(pool)
        .await?
    } else {
        sqlx::query(
            "UPDATE rollouts SET state = 'completed' WHERE id = $1 AND state = 'paused' AND stage = $2",
        )
        .bind(id)
        .bind(r.stage)
        .execute(pool)
        .await?
    };
    if done.rows_affected() == 0 {
        return Err(AppError::conflict(format!(
            "rollout {id} changed meanwhile; look again"
        )));
    }
    rollouts::advance(&cloud, id).await?;
    Ok(Json(one_json(&cloud, id).await?))
}

/// `POST /api/rollouts/{id}/cancel`: no more stages. Nodes the rollout
/// changed keep what they got (roll one back with its revisions).
pub async fn cancel(
    auth: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<Value>, AppError> {
    let r = load_or_404(&cloud, check_id(id)?).await?;
    if r.state != "running" && r.state != "paused" {
        return Err(AppError::conflict(format!(
            "rollout {id} is {} already",
            r.state
        )));
    }
    let reason = format!(
        "cancelled by {} in stage {}; nodes it changed keep the version they got (roll a node back with POST /api/nodes/{{id}}/rollback)",
        auth.caller, r.stage
    );
    let done = sqlx::query(
        "UPDATE rollouts SET state = 'cancelled', reason = $1 WHERE id = $2 AND state IN ('running', 'paused')",
    )
    .bind(reason)
    .bind(id)
    .execute(&cloud.inner().pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(AppError::conflict(format!("rollout {id} ended meanwhile")));
    }
    Ok(Json(one_json(&cloud, id).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(canary: Option<i64>, percent: Option<f64>) -> CreateRollout {
        CreateRollout {
            component: "app".into(),
            version: "1".into(),
            selector: serde_json::json!({}),
            canary,
            canary_percent: percent,
            max_failure_rate: None,
            stage_timeout: None,
        }
    }

    #[test]
    fn canary_sizes() {
        assert_eq!(canary_count(&body(None, None), 3).ok(), Some(1));
        assert_eq!(canary_count(&body(Some(2), None), 3).ok(), Some(2));
        assert_eq!(canary_count(&body(Some(9), None), 3).ok(), Some(3));
        assert_eq!(canary_count(&body(None, Some(10.0)), 3).ok(), Some(1));
        assert_eq!(canary_count(&body(None, Some(50.0)), 3).ok(), Some(2));
        assert_eq!(canary_count(&body(None, Some(100.0)), 3).ok(), Some(3));
        assert_eq!(canary_count(&body(None, Some(10.0)), 20).ok(), Some(2));
        assert!(canary_count(&body(Some(0), None), 3).is_err());
        assert!(canary_count(&body(None, Some(0.0)), 3).is_err());
        assert!(canary_count(&body(None, Some(101.0)), 3).is_err());
        assert!(canary_count(&body(Some(1), Some(5.0)), 3).is_err());
    }

    #[test]
    fn stage_timeouts() {
        assert_eq!(stage_timeout_ms(None).ok(), Some(600_000));
        assert_eq!(stage_timeout_ms(Some("2s")).ok(), Some(2000));
        assert!(stage_timeout_ms(Some("0s")).is_err());
        assert!(stage_timeout_ms(Some("8d")).is_err());
        assert!(stage_timeout_ms(Some("soon")).is_err());
    }
}

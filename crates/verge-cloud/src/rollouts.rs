//! Staged rollouts: one component version deployed to the nodes a label
//! selector matched, stage by stage (the canary nodes, then the rest). The
//! driver ([`run`]) advances every `running` rollout each second and right
//! after a status report: it assigns the version to the nodes of the
//! current stage (the path `PUT /api/nodes/{id}/components/{name}` takes,
//! so each change is a revision of that node), reads what each node made
//! of that revision, and when the stage is done pauses the rollout (too
//! many failures), starts the next stage or completes it.
//!
//! All state is in the database (`rollouts`, `rollout_nodes`) and every
//! step is a conditional update, so a step done twice (two replicas, a
//! restart in the middle) changes nothing more: assigning the same version
//! again makes no revision, a node's result is written only while it is
//! `pending`, and a stage moves on only from the stage it was in.
//!
//! Rejected alternative: one task per rollout holding its progress in
//! memory. A restart would lose it, and replicas would run it twice.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::AnyPool;

use crate::Cloud;
use crate::api::assignments::assign_in;
use crate::api::labels;
use crate::db::{self, now_ms};
use crate::error::AppError;
use crate::revisions::Reason;

/// How often the driver looks at running rollouts (besides right after a
/// status report).
const TICK: Duration = Duration::from_secs(1);

/// Columns of `rollouts` that [`Rollout`] holds, in its order.
const COLS: &str = "id, component, version, selector, max_failure_rate, stage_timeout_ms, stages, stage, stage_started_ms, state, reason, created_ms, author";

/// One stored rollout.
pub struct Rollout {
    /// Its number.
    pub id: i64,
    /// The component deployed.
    pub component: String,
    /// The version deployed.
    pub version: String,
    /// The selector as JSON text (`{"site": "a"}`).
    pub selector: String,
    /// A stage whose share of failed nodes is above this pauses the rollout.
    pub max_failure_rate: f64,
    /// A node without a result this long after its stage started failed.
    pub stage_timeout_ms: i64,
    /// How many stages (1 when the canary is every node, else 2).
    pub stages: i64,
    /// The current stage (1-based).
    pub stage: i64,
    /// When the current stage started.
    pub stage_started_ms: i64,
    /// `running`, `paused`, `completed` or `cancelled`.
    pub state: String,
    /// Why it paused or was cancelled.
    pub reason: Option<String>,
    /// When it was made.
    pub created_ms: i64,
    /// Who made it (the author of the revisions it makes).
    pub author: String,
}

impl<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> for Rollout {
    fn from_row(row: &'r sqlx::any::AnyRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(Rollout {
            id: row.try_get("id")?,
            component: row.try_get("component")?,
            version: row.try_get("version")?,
            selector: row.try_get("selector")?,
            max_failure_rate: row.try_get("max_failure_rate")?,
            stage_timeout_ms: row.try_get("stage_timeout_ms")?,
            stages: row.try_get("stages")?,
            stage: row.try_get("stage")?,
            stage_started_ms: row.try_get("stage_started_ms")?,
            state: row.try_get("state")?,
            reason: row.try_get("reason")?,
            created_ms: row.try_get("created_ms")?,
            author: row.try_get("author")?,
        })
    }
}

/// The rollout `id`, if any.
pub async fn load(pool: &AnyPool, id: i64) -> Result<Option<Rollout>, AppError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM rollouts WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// Advance every running rollout each [`TICK`], and when woken (a status
/// report), until the cloud stops.
pub async fn run(cloud: Cloud) {
    let mut stop = cloud.inner().stop.subscribe();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cloud.inner().rollouts_wake.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        // One replica drives rollouts: the leader.
        if !cloud.inner().leader.is_leader() {
            continue;
        }
        let running: Result<Vec<(i64,)>, _> =
            sqlx::query_as("SELECT id FROM rollouts WHERE state = 'running' ORDER BY id")
                .fetch_all(&cloud.inner().pool)
                .await;
        let ids = match running {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!("rollouts not advanced: {e}");
                continue;
            }
        };
        for (id,) in ids {
            // Leadership may be lost meanwhile (its lock connection
            // failed): the next leader goes on from here.
            if !cloud.inner().leader.is_leader() {
                break;
            }
            if let Err(e) = advance(&cloud, id).await {
                tracing::warn!(rollout = id, "rollout not advanced: {}", e.message);
            }
        }
    }
}

/// Advance rollout `id` as far as it can go now: a stage whose nodes all
/// run the version already is done at once and the next one starts.
pub async fn advance(cloud: &Cloud, id: i64) -> Result<(), AppError> {
    for _ in 0..4 {
        if !step(cloud, id).await? {
            break;
        }
    }
    Ok(())
}

/// One step of a running rollout; true when it moved to its next stage.
async fn step(cloud: &Cloud, id: i64) -> Result<bool, AppError> {
    let pool = &cloud.inner().pool;
    let Some(r) = load(pool, id).await? else {
        return Ok(false);
    };
    if r.state != "running" {
        return Ok(false);
    }
    let todo: Vec<(String,)> = sqlx::query_as(
        "SELECT node_id FROM rollout_nodes WHERE rollout_id = $1 AND stage = $2 \
         AND revision IS NULL AND result = 'pending' ORDER BY node_id",
    )
    .bind(id)
    .bind(r.stage)
    .fetch_all(pool)
    .await?;
    for (node,) in todo {
        assign_node(cloud, &r, &node).await?;
    }
    let waiting: Vec<(String, i64)> = sqlx::query_as(
        "SELECT node_id, revision FROM rollout_nodes WHERE rollout_id = $1 AND stage = $2 \
         AND revision IS NOT NULL AND result = 'pending' ORDER BY node_id",
    )
    .bind(id)
    .bind(r.stage)
    .fetch_all(pool)
    .await?;
    let late = now_ms() - r.stage_started_ms >= r.stage_timeout_ms;
    for (node, revision) in waiting {
        let outcome = match outcome(pool, &node, revision).await? {
            Some(o) => o,
            None if late => (
                "timed_out",
                Some(format!(
                    "no result within {}",
                    verge_duration::format(Duration::from_millis(
                        u64::try_from(r.stage_timeout_ms).unwrap_or(0)
                    ))
                )),
            ),
            None => continue,
        };
        sqlx::query(
            "UPDATE rollout_nodes SET result = $1, error = $2 \
             WHERE rollout_id = $3 AND node_id = $4 AND result = 'pending'",
        )
        .bind(outcome.0)
        .bind(outcome.1)
        .bind(id)
        .bind(&node)
        .execute(pool)
        .await?;
    }
    finish_stage(pool, &r).await
}

/// When every node of the current stage has its result: pause the rollout
/// (failure rate above the maximum), complete it (last stage) or start the
/// next stage (true).
async fn finish_stage(pool: &AnyPool, r: &Rollout) -> Result<bool, AppError> {
    let results: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT node_id, result, error FROM rollout_nodes WHERE rollout_id = $1 AND stage = $2 ORDER BY node_id",
    )
    .bind(r.id)
    .bind(r.stage)
    .fetch_all(pool)
    .await?;
    if results.iter().any(|(_, result, _)| result == "pending") {
        return Ok(false);
    }
    let failed: Vec<String> = results
        .iter()
        .filter(|(_, result, _)| result != "applied")
        .map(|(node, result, error)| {
            format!(
                "node `{node}` {result}: {}",
                error.as_deref().unwrap_or("no error given")
            )
        })
        .collect();
    let rate = failure_rate(failed.len(), results.len());
    let moved = if rate > r.max_failure_rate {
        let reason = format!(
            "stage {}: {} of {} node(s) failed, a failure rate of {rate:.2} above the maximum {:.2}; {}",
            r.stage,
            failed.len(),
            results.len(),
            r.max_failure_rate,
            failed.join("; ")
        );
        sqlx::query(
            "UPDATE rollouts SET state = 'paused', reason = $1 WHERE id = $2 AND state = 'running' AND stage = $3",
        )
        .bind(reason)
        .bind(r.id)
        .bind(r.stage)
        .execute(pool)
        .await?;
        false
    } else if r.stage >= r.stages {
        sqlx::query(
            "UPDATE rollouts SET state = 'completed' WHERE id = $1 AND state = 'running' AND stage = $2",
        )
        .bind(r.id)
        .bind(r.stage)
        .execute(pool)
        .await?;
        false
    } else {
        let done = sqlx::query(
            "UPDATE rollouts SET stage = stage + 1, stage_started_ms = $1 \
             WHERE id = $2 AND state = 'running' AND stage = $3",
        )
        .bind(now_ms())
        .bind(r.id)
        .bind(r.stage)
        .execute(pool)
        .await?;
        done.rows_affected() == 1
    };
    Ok(moved)
}

/// Failed nodes over all nodes of a stage (0 for an empty stage).
fn failure_rate(failed: usize, nodes: usize) -> f64 {
    if nodes == 0 {
        return 0.0;
    }
    failed as f64 / nodes as f64
}

/// Assign the rollout's version to `node` (a revision when that changes
/// what it runs) and record the node's desired revision; a node that
/// cannot take it (deleted, or its components could not run together)
/// failed with the reason.
async fn assign_node(cloud: &Cloud, r: &Rollout, node: &str) -> Result<(), AppError> {
    let pool = &cloud.inner().pool;
    let mut tx = pool.begin().await?;
    // Still this stage of a running rollout (another replica, a cancel)?
    // This also holds the rollout's row for the transaction.
    let current = sqlx::query(
        "UPDATE rollouts SET stage = stage WHERE id = $1 AND state = 'running' AND stage = $2",
    )
    .bind(r.id)
    .bind(r.stage)
    .execute(&mut *tx)
    .await?;
    if current.rows_affected() == 0 {
        return Ok(());
    }
    match assign_in(&mut tx, node, &r.component, &r.version).await {
        Ok((changed, _)) => {
            if changed {
                let reason = Reason::new(
                    &r.author,
                    format!(
                        "rollout {} stage {}: component `{}` assigned {}",
                        r.id, r.stage, r.component, r.version
                    ),
                );
                db::bump_nodes(&mut tx, &[node.to_owned()], &reason).await?;
            }
            let (desired,): (i64,) =
                sqlx::query_as("SELECT desired_version FROM nodes WHERE id = $1")
                    .bind(node)
                    .fetch_one(&mut *tx)
                    .await?;
            sqlx::query(
                "UPDATE rollout_nodes SET revision = $1 \
                 WHERE rollout_id = $2 AND node_id = $3 AND revision IS NULL",
            )
            .bind(desired)
            .bind(r.id)
            .bind(node)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            if changed {
                cloud.notify_nodes(&[node.to_owned()]);
            }
        }
        Err(e) if e.status.is_client_error() => {
            tx.rollback().await?;
            sqlx::query(
                "UPDATE rollout_nodes SET result = 'failed', error = $1 \
                 WHERE rollout_id = $2 AND node_id = $3 AND result = 'pending'",
            )
            .bind(e.message)
            .bind(r.id)
            .bind(node)
            .execute(pool)
            .await?;
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// What `node` made of its revision `revision`: the first revision from it
/// on that the node applied or rolled back (a later one counts when the
/// node skipped this one), else `applied` once the node's applied version
/// reached it; `None` while there is no word yet. A deleted node failed.
async fn outcome(
    pool: &AnyPool,
    node: &str,
    revision: i64,
) -> Result<Option<(&'static str, Option<String>)>, AppError> {
    let found: Option<(String, Option<String>)> = sqlx::query_as(
        "SELECT result, result_json FROM node_revisions WHERE node_id = $1 AND revision >= $2 \
         AND result IN ('applied', 'rolled_back') ORDER BY revision LIMIT 1",
    )
    .bind(node)
    .bind(revision)
    .fetch_optional(pool)
    .await?;
    if let Some((result, attempt)) = found {
        if result == "applied" {
            return Ok(Some(("applied", None)));
        }
        let why = attempt
            .and_then(|a| serde_json::from_str::<verge_protocol::ApplyAttempt>(&a).ok())
            .map_or_else(
                || "the revision was rolled back".to_owned(),
                |a| crate::revisions::failure(&a),
            );
        return Ok(Some(("rolled_back", Some(why))));
    }
    let applied: Option<(i64,)> = sqlx::query_as("SELECT applied_version FROM nodes WHERE id = $1")
        .bind(node)
        .fetch_optional(pool)
        .await?;
    Ok(match applied {
        None => Some(("failed", Some(format!("node `{node}` was deleted")))),
        Some((a,)) if a >= revision => Some(("applied", None)),
        Some(_) => None,
    })
}

/// One node of a rollout: id, stage, revision, result, error.
type NodeRow = (String, i64, Option<i64>, String, Option<String>);

/// The rollout as the API shows it, with its stages and their nodes.
pub async fn to_json(pool: &AnyPool, r: &Rollout) -> Result<Value, AppError> {
    // The driver records the nodes' results before it moves the rollout
    // on. Nodes read between two reads of an unchanged rollout are at
    // least as new as the rollout, so a stage never shows pending with its
    // nodes assigned, nor a completed rollout with a result missing; a
    // rollout that moved meanwhile is read again (a few times at most).
    let mut fresh = load(pool, r.id).await?;
    let mut nodes: Vec<NodeRow>;
    let mut tries = 0;
    loop {
        nodes = sqlx::query_as(
            "SELECT node_id, stage, revision, result, error FROM rollout_nodes WHERE rollout_id = $1 ORDER BY stage, node_id",
        )
        .bind(r.id)
        .fetch_all(pool)
        .await?;
        let after = load(pool, r.id).await?;
        let same = match (&fresh, &after) {
            (Some(a), Some(b)) => a.stage == b.stage && a.state == b.state,
            _ => true,
        };
        fresh = after;
        tries += 1;
        if same || tries >= 5 {
            break;
        }
    }
    let r = fresh.as_ref().unwrap_or(r);
    let stages: Vec<Value> = (1..=r.stages)
        .map(|stage| {
            let of: Vec<_> = nodes.iter().filter(|n| n.1 == stage).collect();
            let done = of.iter().all(|n| n.3 != "pending");
            let failed = of
                .iter()
                .filter(|n| !matches!(n.3.as_str(), "applied" | "pending"))
                .count();
            // A stage before the current one has ended, even when its
            // nodes were read just before their last result came in.
            let state = if (done && stage <= r.stage) || stage < r.stage {
                if failure_rate(failed, of.len()) > r.max_failure_rate {
                    "failed"
                } else {
                    "succeeded"
                }
            } else if stage == r.stage && r.state == "running" {
                "running"
            } else {
                "pending"
            };
            let list: Vec<Value> = of
                .iter()
                .map(|(node, _, revision, result, error)| {
                    json!({"node_id": node, "revision": revision, "result": result, "error": error})
                })
                .collect();
            json!({"stage": stage, "state": state, "nodes": list})
        })
        .collect();
    let timeout = Duration::from_millis(u64::try_from(r.stage_timeout_ms).unwrap_or(0));
    Ok(json!({
        "id": r.id,
        "component": r.component,
        "version": r.version,
        "selector": db::json_col(&r.selector),
        "selector_text": labels::selector_text(&labels::from_column(&r.selector)),
        "max_failure_rate": r.max_failure_rate,
        "stage_timeout": verge_duration::format(timeout),
        "state": r.state,
        "reason": r.reason,
        "stage": r.stage,
        "created_ms": r.created_ms,
        "author": r.author,
        "stages": stages,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_rates() {
        assert!((failure_rate(0, 0)).abs() < f64::EPSILON);
        assert!((failure_rate(1, 4) - 0.25).abs() < f64::EPSILON);
        assert!(failure_rate(1, 1) > 0.99);
    }
}

//! Revisions: every change of what a node should run is an immutable,
//! numbered snapshot of its desired state (`node_revisions`), made in the
//! transaction of the change, with who made it and what changed. Nodes are
//! served the snapshot of their desired revision, with the function
//! modules it names attached from `function_modules` (kept by content),
//! so what a node gets is exactly what the revision says, however the
//! tables changed since. The node's reports of its attempts are stored
//! beside the revision they tried.
//!
//! Revision numbers are the node's `desired_version`: bumping it makes the
//! revision of the same number. History is bounded ([`KEEP_REVISIONS`]).
//!
//! Rejected alternative: serving the tables and keeping only a log of
//! changes. An older revision could then not be re-applied exactly (a
//! function's module is replaced at upload), and a rollback would have to
//! rewrite devices, rules and assignments.

pub mod diff;
mod results;

pub use results::{deployment, failure, record_report, result_of};

use base64::Engine as _;
use sqlx::{Any, Transaction};
use verge_protocol::DesiredState;

use crate::db::now_ms;
use crate::error::AppError;

/// Revisions kept per node: the newest this many, plus always the node's
/// desired revision and its last applied (good) one, whatever their age.
/// Older ones are deleted when a newer one is made (their modules go when
/// no kept revision and no function names them).
pub const KEEP_REVISIONS: i64 = 100;

/// Who made a revision and why.
#[derive(Debug, Clone)]
pub struct Reason {
    /// The API token's name (its id when it has none), or `system`.
    pub author: String,
    /// What changed, in words: "rule `hot` updated".
    pub summary: String,
}

impl Reason {
    /// A change made by `author`.
    pub fn new(author: &str, summary: impl Into<String>) -> Reason {
        Reason {
            author: author.to_owned(),
            summary: summary.into(),
        }
    }

    /// A change made by the cloud itself.
    pub fn system(summary: impl Into<String>) -> Reason {
        Reason::new("system", summary)
    }
}

/// Record the revision of `node` numbered its current `desired_version`,
/// holding the state the tables describe now. The caller bumped the
/// version in `tx`.
pub async fn record(
    tx: &mut Transaction<'_, Any>,
    node: &str,
    reason: &Reason,
) -> Result<i64, AppError> {
    let state = crate::desired::from_tables(tx, node)
        .await?
        .ok_or_else(|| AppError::not_found(format!("no node `{node}`")))?;
    insert(tx, &state, reason).await?;
    prune(tx, node).await?;
    Ok(state.version)
}

/// Store `state` as revision `state.version` of `state.node_id` (nothing
/// when that revision exists already: a concurrent first snapshot).
async fn insert(
    tx: &mut Transaction<'_, Any>,
    state: &DesiredState,
    reason: &Reason,
) -> Result<(), AppError> {
    let text = serde_json::to_string(state).map_err(AppError::internal)?;
    let done = sqlx::query(
        "INSERT INTO node_revisions (node_id, revision, created_ms, author, summary, state) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (node_id, revision) DO NOTHING",
    )
    .bind(&state.node_id)
    .bind(state.version)
    .bind(now_ms())
    .bind(&reason.author)
    .bind(&reason.summary)
    .bind(text)
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(());
    }
    for f in &state.functions {
        sqlx::query(
            "INSERT INTO revision_modules (node_id, revision, sha256) VALUES ($1, $2, $3) \
             ON CONFLICT (node_id, revision, sha256) DO NOTHING",
        )
        .bind(&state.node_id)
        .bind(state.version)
        .bind(&f.sha256)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Delete the revisions of `node` beyond the newest [`KEEP_REVISIONS`],
/// but never its desired nor its applied one; then the modules nothing
/// names any more.
async fn prune(tx: &mut Transaction<'_, Any>, node: &str) -> Result<(), AppError> {
    let (desired, applied): (i64, i64) =
        sqlx::query_as("SELECT desired_version, applied_version FROM nodes WHERE id = $1")
            .bind(node)
            .fetch_one(&mut **tx)
            .await?;
    let below = desired - KEEP_REVISIONS;
    if below < 1 {
        return Ok(());
    }
    let done = sqlx::query(
        "DELETE FROM node_revisions WHERE node_id = $1 AND revision <= $2 \
         AND revision <> $3 AND revision <> $4",
    )
    .bind(node)
    .bind(below)
    .bind(desired)
    .bind(applied)
    .execute(&mut **tx)
    .await?;
    if done.rows_affected() > 0 {
        sqlx::query(
            "DELETE FROM revision_modules WHERE node_id = $1 AND revision NOT IN \
             (SELECT revision FROM node_revisions WHERE node_id = $1)",
        )
        .bind(node)
        .execute(&mut **tx)
        .await?;
        prune_modules(tx).await?;
    }
    Ok(())
}

/// Delete every revision of `node` (the node is being deleted).
pub async fn forget_node(tx: &mut Transaction<'_, Any>, node: &str) -> Result<(), AppError> {
    for table in ["node_revisions", "revision_modules"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE node_id = $1"
        )))
        .bind(node)
        .execute(&mut **tx)
        .await?;
    }
    prune_modules(tx).await
}

/// Keep the module `module` (a function upload) by its SHA-256 `sha`.
pub async fn keep_module(
    tx: &mut Transaction<'_, Any>,
    sha: &str,
    module: &[u8],
) -> Result<(), AppError> {
    sqlx::query(
        "INSERT INTO function_modules (sha256, module) VALUES ($1, $2) ON CONFLICT (sha256) DO NOTHING",
    )
    .bind(sha)
    .bind(module)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Delete the modules that no kept revision and no current function name.
pub async fn prune_modules(tx: &mut Transaction<'_, Any>) -> Result<(), AppError> {
    sqlx::query(
        "DELETE FROM function_modules WHERE sha256 NOT IN (SELECT sha256 FROM revision_modules) \
         AND sha256 NOT IN (SELECT sha256 FROM functions)",
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The stored state of revision `revision` of `node`, if kept.
pub async fn state_of(
    tx: &mut Transaction<'_, Any>,
    node: &str,
    revision: i64,
) -> Result<Option<DesiredState>, AppError> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT state FROM node_revisions WHERE node_id = $1 AND revision = $2")
            .bind(node)
            .bind(revision)
            .fetch_optional(&mut **tx)
            .await?;
    row.map(|(text,)| {
        serde_json::from_str(&text).map_err(|e| {
            AppError::internal(format!(
                "stored revision {revision} of node `{node}` is not valid: {e}"
            ))
        })
    })
    .transpose()
}

/// The snapshot of the node's desired revision; `None` when there is no
/// such node. A node whose desired revision has no snapshot (one that
/// existed before revisions did) gets one now from the tables, by
/// `system`.
pub async fn current(
    tx: &mut Transaction<'_, Any>,
    node: &str,
) -> Result<Option<DesiredState>, AppError> {
    let found: Option<(i64,)> = sqlx::query_as("SELECT desired_version FROM nodes WHERE id = $1")
        .bind(node)
        .fetch_optional(&mut **tx)
        .await?;
    let Some((desired,)) = found else {
        return Ok(None);
    };
    if let Some(state) = state_of(tx, node, desired).await? {
        return Ok(Some(state));
    }
    let Some(state) = crate::desired::from_tables(tx, node).await? else {
        return Ok(None);
    };
    insert(
        tx,
        &state,
        &Reason::system("state when revisions were introduced"),
    )
    .await?;
    // A concurrent request may have stored it first: serve what is stored.
    state_of(tx, node, desired).await
}

/// The node's desired state as its desired revision holds it, with the
/// function modules attached when `modules` is set (the node's own
/// request); `None` when there is no such node.
pub async fn serve(
    pool: &sqlx::AnyPool,
    node: &str,
    modules: bool,
) -> Result<Option<DesiredState>, AppError> {
    let mut tx = pool.begin().await?;
    let Some(mut state) = current(&mut tx, node).await? else {
        return Ok(None);
    };
    if modules {
        let b64 = base64::engine::general_purpose::STANDARD;
        for f in &mut state.functions {
            let (module,): (Vec<u8>,) =
                sqlx::query_as("SELECT module FROM function_modules WHERE sha256 = $1")
                    .bind(&f.sha256)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or_else(|| {
                        AppError::internal(format!(
                            "module {} of function `{}` is not kept",
                            f.sha256, f.name
                        ))
                    })?;
            f.module_base64 = b64.encode(module);
        }
    }
    tx.commit().await?;
    Ok(Some(state))
}

/// Make revision `desired + 1` of `node` holding `state` (another
/// revision's content), move the node's desired version to it, and return
/// its number. The caller holds the node's row (it read `desired` in
/// `tx` after locking it).
pub async fn pin(
    tx: &mut Transaction<'_, Any>,
    node: &str,
    mut state: DesiredState,
    reason: &Reason,
) -> Result<i64, AppError> {
    sqlx::query("UPDATE nodes SET desired_version = desired_version + 1 WHERE id = $1")
        .bind(node)
        .execute(&mut **tx)
        .await?;
    let (desired,): (i64,) = sqlx::query_as("SELECT desired_version FROM nodes WHERE id = $1")
        .bind(node)
        .fetch_one(&mut **tx)
        .await?;
    state.version = desired;
    insert(tx, &state, reason).await?;
    prune(tx, node).await?;
    Ok(desired)
}

//! Database steps the resource handlers share: a row or 404, a list
//! filtered by `?node_id=`, and "bump the nodes' desired version (a new
//! revision each), commit, wake the long polls".

use serde::Deserialize;
use sqlx::any::AnyRow;
use sqlx::{Any, AssertSqlSafe, Executor, FromRow, SqlSafeStr, Transaction};

use crate::Cloud;
use crate::db;
use crate::error::AppError;

/// The row that `sql` (one `$1` placeholder) finds for `key`, or a 404
/// `no {what} `{key}``.
pub async fn one_or_404<'c, T, E>(
    executor: E,
    sql: impl SqlSafeStr,
    key: &str,
    what: &str,
) -> Result<T, AppError>
where
    T: for<'r> FromRow<'r, AnyRow> + Send + Unpin,
    E: Executor<'c, Database = Any>,
{
    sqlx::query_as(sql)
        .bind(key)
        .fetch_optional(executor)
        .await?
        .ok_or_else(|| AppError::not_found(format!("no {what} `{key}`")))
}

/// `?node_id=` of the device and rule lists.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFilter {
    #[serde(default)]
    pub node_id: Option<String>,
}

/// `cols` of every row of `table` (bound to the node `node_id` when given),
/// by id.
pub async fn list_by_node<T>(
    cloud: &Cloud,
    table: &str,
    cols: &str,
    node_id: Option<&str>,
) -> Result<Vec<T>, AppError>
where
    T: for<'r> FromRow<'r, AnyRow> + Send + Unpin,
{
    let filter = if node_id.is_some() {
        " WHERE node_id = $1"
    } else {
        ""
    };
    let mut query = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT {cols} FROM {table}{filter} ORDER BY id"
    )));
    if let Some(node) = node_id {
        query = query.bind(node.to_owned());
    }
    Ok(query.fetch_all(&cloud.inner().pool).await?)
}

/// Bump the desired version of `nodes` (a new revision of each, made for
/// `reason`), commit `tx`, then tell the long polls that something
/// changed.
pub async fn commit_bumped(
    cloud: &Cloud,
    mut tx: Transaction<'_, Any>,
    nodes: &[String],
    reason: &crate::revisions::Reason,
) -> Result<(), AppError> {
    db::bump_nodes(&mut tx, nodes, reason).await?;
    tx.commit().await?;
    cloud.notify_nodes(nodes);
    Ok(())
}

//! Cloud replicas: several `verge cloud` processes on one PostgreSQL
//! database. Each has an id (`cloud.replica_id`, else a random one kept
//! in `<data_dir>/replica-id`) and a row in `cloud_replicas` it refreshes
//! every [`HEARTBEAT`] (`GET /api/cloud/replicas`); one of them leads
//! ([`leader`]) and runs the singleton jobs; held long polls are woken
//! per node across replicas ([`wake`]).
//!
//! On SQLite there is one process: it is always the leader and every
//! change reaches its long polls in process.

pub mod leader;
pub mod wake;

use std::path::Path;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use sqlx::AnyPool;

use crate::error::{AppError, CloudError};
use crate::{Cloud, db};

/// A replica refreshes its row this often.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A replica whose row is older than this is shown dead.
pub const ALIVE_MS: i64 = 10_000;
/// Rows of replicas not seen for this long are deleted (by the leader).
const FORGET_MS: i64 = 24 * 3600 * 1000;

/// This process as a replica.
pub struct Replica {
    /// Its id.
    pub id: String,
    /// When it started (ms).
    pub started_ms: i64,
}

/// The replica id: `configured` when set (checked), else the one kept in
/// `<data_dir>/replica-id`, made (random, mode 0600) when missing.
pub fn resolve_id(configured: &str, data_dir: &Path) -> Result<String, CloudError> {
    if !configured.is_empty() {
        return check_id(configured)
            .map(|()| configured.to_owned())
            .map_err(|e| CloudError::Other(format!("cloud.replica_id: {e}")));
    }
    let file = data_dir.join("replica-id");
    let io = |error| CloudError::Io {
        what: format!("{} (cloud.replica_id)", file.display()),
        error,
    };
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let id = text.trim().to_owned();
            check_id(&id).map_err(|e| {
                CloudError::Other(format!(
                    "{}: {e} (delete the file to get a new id)",
                    file.display()
                ))
            })?;
            Ok(id)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = db::random_id()[..12].to_owned();
            verge_net::fs::write_atomic(
                &file,
                format!("{id}\n").as_bytes(),
                verge_net::fs::PRIVATE_FILE,
            )
            .map_err(io)?;
            Ok(id)
        }
        Err(e) => Err(io(e)),
    }
}

/// 1–64 letters, digits, `.`, `_` or `-`.
fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err(format!("`{id}` must be 1 to 64 characters"));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "`{id}` may hold only letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(())
}

/// Write this replica's row (made or refreshed).
pub async fn beat(
    pool: &AnyPool,
    me: &Replica,
    http_url: &str,
    leader: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO cloud_replicas (id, http_url, version, started_ms, seen_ms, leader) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (id) DO UPDATE SET http_url = excluded.http_url, version = excluded.version, \
         started_ms = excluded.started_ms, seen_ms = excluded.seen_ms, leader = excluded.leader",
    )
    .bind(&me.id)
    .bind(http_url)
    .bind(env!("CARGO_PKG_VERSION"))
    .bind(me.started_ms)
    .bind(db::now_ms())
    .bind(i64::from(leader))
    .execute(pool)
    .await?;
    Ok(())
}

/// Refresh this replica's row every [`HEARTBEAT`] (at once when its
/// leadership changes); the leader also forgets replicas gone for a day.
/// At a clean stop the row is deleted: a listed replica that is not
/// alive died without stopping.
pub async fn heartbeat_loop(cloud: Cloud) {
    let inner = cloud.inner();
    let mut stop = inner.stop.subscribe();
    let mut leads = inner.leader.watch();
    let url = inner.cfg.http_url();
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = leads.changed() => { if r.is_err() { return; } }
            _ = stop.wait_for(|s| *s) => break,
        }
        let leader = inner.leader.is_leader();
        if let Err(e) = beat(&inner.pool, &inner.replica, &url, leader).await {
            tracing::warn!("replica heartbeat not written: {e}");
            continue;
        }
        if leader {
            let gone = sqlx::query("DELETE FROM cloud_replicas WHERE seen_ms < $1")
                .bind(db::now_ms() - FORGET_MS)
                .execute(&inner.pool)
                .await;
            if let Err(e) = gone {
                tracing::warn!("old replica rows not deleted: {e}");
            }
        }
    }
    let left = sqlx::query("DELETE FROM cloud_replicas WHERE id = $1")
        .bind(&inner.replica.id)
        .execute(&inner.pool)
        .await;
    if let Err(e) = left {
        tracing::warn!("replica row not deleted at stop: {e}");
    }
}

/// `GET /api/cloud/replicas`: every replica with a row, oldest first.
pub async fn list(
    _auth: crate::auth::ApiAuth,
    State(cloud): State<Cloud>,
) -> Result<Json<Value>, AppError> {
    let rows: Vec<(String, String, String, i64, i64, i64)> = sqlx::query_as(
        "SELECT id, http_url, version, started_ms, seen_ms, leader FROM cloud_replicas \
         ORDER BY started_ms, id",
    )
    .fetch_all(&cloud.inner().pool)
    .await?;
    let now = db::now_ms();
    let me = &cloud.inner().replica.id;
    let list: Vec<Value> = rows
        .into_iter()
        .map(|(id, http_url, version, started_ms, seen_ms, leader)| {
            let alive = seen_ms >= now - ALIVE_MS;
            json!({
                "this": &id == me,
                "id": id,
                "http_url": http_url,
                "version": version,
                "started_ms": started_ms,
                "seen_ms": seen_ms,
                "alive": alive,
                "leader": alive && leader != 0,
            })
        })
        .collect();
    Ok(Json(Value::Array(list)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_ids() {
        assert!(check_id("cloud-1.eu_west").is_ok());
        assert!(check_id("").is_err());
        assert!(check_id("a b").is_err());
        assert!(check_id(&"x".repeat(65)).is_err());
        let dir = tempfile::tempdir().unwrap();
        let made = resolve_id("", dir.path()).unwrap();
        assert_eq!(made.len(), 12);
        assert_eq!(resolve_id("", dir.path()).unwrap(), made, "kept");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("replica-id"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(resolve_id("r2", dir.path()).unwrap(), "r2");
        let e = resolve_id("no way", dir.path()).unwrap_err().to_string();
        assert!(e.contains("cloud.replica_id"), "{e}");
    }
}

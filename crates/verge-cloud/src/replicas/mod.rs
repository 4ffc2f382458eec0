//! Cloud replicas: several `verge cloud` processes on one PostgreSQL
//! database. Each has an id (`cloud.replica_id`, else a random one kept
//! in `<data_dir>/replica-id`) and a row in `cloud_replicas` it refreshes
//! every [`HEARTBEAT`] (`GET /api/cloud/replicas`); one of them leads
//! ([`leader`]) and runs the singleton jobs; held long polls are woken
//! per node across replicas ([`wake`]).
//!
//! On SQLite there is one process: it is always the leader and every
//! change reaches its long polls in process.
//!
//! Two live processes given the same id would take each other's broker
//! session and look like one replica, so on PostgreSQL each start has a
//! random instance nonce written into the row: a start that finds the row
//! refreshed by another live instance refuses ([`check_unique`]), and a
//! running replica whose row was taken by another instance stops
//! ([`heartbeat_loop`]).

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

/// A start that finds its id's row refreshed by another instance within
/// [`ALIVE_MS`] watches the row this long: a live process refreshes it
/// every [`HEARTBEAT`]; a process that died (this replica before a crash
/// and restart) does not.
const START_WATCH: Duration = Duration::from_secs(5);

/// This process as a replica.
pub struct Replica {
    /// Its id.
    pub id: String,
    /// When it started (ms).
    pub started_ms: i64,
    /// A random nonce of this start, written in its row: another process
    /// with the same id writes another one.
    pub instance: String,
    /// Whether two processes can share the database (PostgreSQL): only
    /// then are duplicate ids looked for.
    pub shared: bool,
}

impl Replica {
    /// This process as replica `id`, started now.
    pub fn new(id: String, shared: bool) -> Replica {
        Replica {
            id,
            started_ms: db::now_ms(),
            instance: db::random_id(),
            shared,
        }
    }
}

/// The error of a second live process with this replica's id.
fn duplicate(id: &str, age_ms: i64) -> CloudError {
    CloudError::Other(format!(
        "cloud.replica_id: another live process runs as replica `{id}` on this database \
         (it refreshed the replica's row {age_ms} ms ago); give every replica its own \
         cloud.replica_id (or, when it is not set, its own cloud.data_dir)"
    ))
}

/// Refuse to start as a replica whose row another live process refreshes
/// (PostgreSQL). A row refreshed within [`ALIVE_MS`] by another instance
/// is watched for [`START_WATCH`]: refreshed again, it is a live
/// duplicate (an error naming `cloud.replica_id`); not refreshed, it was
/// left by a process that died (this replica restarting after a crash),
/// and this start takes it over.
pub async fn check_unique(pool: &AnyPool, me: &Replica) -> Result<(), CloudError> {
    if !me.shared {
        return Ok(());
    }
    let row = || async {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT instance, seen_ms FROM cloud_replicas WHERE id = $1",
        )
        .bind(&me.id)
        .fetch_optional(pool)
        .await
    };
    let Some(first) = row().await? else {
        return Ok(());
    };
    if first.0 == me.instance || db::now_ms() - first.1 > ALIVE_MS {
        return Ok(());
    }
    tracing::info!(
        replica = %me.id,
        "another process refreshed this replica's row {} ms ago: watching it for {}s \
         (a live duplicate refreshes it; a crashed earlier start does not)",
        db::now_ms() - first.1,
        START_WATCH.as_secs()
    );
    let until = tokio::time::Instant::now() + START_WATCH;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(250)).await;
        match row().await? {
            None => return Ok(()), // it stopped cleanly
            Some(now) if now != first => {
                return Err(duplicate(&me.id, (db::now_ms() - now.1).max(0)));
            }
            Some(_) => {}
        }
    }
    tracing::warn!(
        replica = %me.id,
        "this replica's row was not refreshed for {}s: taking it over from a process that died",
        START_WATCH.as_secs()
    );
    Ok(())
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

/// Whose row [`beat`] may write.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Take the row whoever wrote it (the first write of a start, after
    /// [`check_unique`]; always on SQLite).
    Take,
    /// Refresh it only while it is this start's (made anew when missing).
    Keep,
}

/// Write this replica's row (made or refreshed); false when `claim` is
/// [`Claim::Keep`] and another instance holds the row.
pub async fn beat(
    pool: &AnyPool,
    me: &Replica,
    http_url: &str,
    leader: bool,
    claim: Claim,
) -> Result<bool, sqlx::Error> {
    let keep = claim == Claim::Keep && me.shared;
    let sql = if keep {
        "INSERT INTO cloud_replicas (id, http_url, version, started_ms, seen_ms, leader, instance) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (id) DO UPDATE SET http_url = excluded.http_url, version = excluded.version, \
         started_ms = excluded.started_ms, seen_ms = excluded.seen_ms, leader = excluded.leader \
         WHERE cloud_replicas.instance = excluded.instance"
    } else {
        "INSERT INTO cloud_replicas (id, http_url, version, started_ms, seen_ms, leader, instance) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (id) DO UPDATE SET http_url = excluded.http_url, version = excluded.version, \
         started_ms = excluded.started_ms, seen_ms = excluded.seen_ms, leader = excluded.leader, \
         instance = excluded.instance"
    };
    let done = sqlx::query(sql)
        .bind(&me.id)
        .bind(http_url)
        .bind(env!("CARGO_PKG_VERSION"))
        .bind(me.started_ms)
        .bind(db::now_ms())
        .bind(i64::from(leader))
        .bind(&me.instance)
        .execute(pool)
        .await?;
    Ok(!keep || done.rows_affected() == 1)
}

/// Refresh this replica's row every [`HEARTBEAT`] (at once when its
/// leadership changes); the leader also forgets replicas gone for a day.
/// At a clean stop the row is deleted: a listed replica that is not
/// alive died without stopping. When another process took the row (a
/// second live process with this replica id, PostgreSQL), this one logs
/// an error and stops the cloud (`Cloud::serve` returns the error): of
/// two processes with one id, the one that started last keeps running.
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
        match beat(&inner.pool, &inner.replica, &url, leader, Claim::Keep).await {
            Ok(true) => {}
            Ok(false) => {
                let e = CloudError::Other(format!(
                    "cloud.replica_id: another process took over the row of replica `{}` \
                     (two live processes with one replica id); this one stops",
                    inner.replica.id
                ));
                tracing::error!("{e}");
                cloud.fail(e);
                return; // the row is the other process's: not deleted
            }
            Err(e) => {
                tracing::warn!("replica heartbeat not written: {e}");
                continue;
            }
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
    let left = sqlx::query("DELETE FROM cloud_replicas WHERE id = $1 AND instance = $2")
        .bind(&inner.replica.id)
        .bind(&inner.replica.instance)
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

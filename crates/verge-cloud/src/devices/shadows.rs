//! The cloud's copy of each device's shadow (`device_shadows`): read it,
//! write it only over the version it was read at (so an API change and a
//! node's copy merged at the same time cannot overwrite each other), and
//! its JSON in the API.

use serde_json::{Value, json};
use sqlx::AnyConnection;
use verge_protocol::device::{Shadow, ShadowSync};

/// The stored copy of one device's shadow.
pub struct Stored {
    /// The document (empty, version 0, when there is none yet).
    pub shadow: Shadow,
    /// The node's last reported copy does not cover it yet.
    pub pending: bool,
    /// A row exists.
    pub exists: bool,
}

fn db_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The copy of `device`, or an empty one.
pub async fn load(conn: &mut AnyConnection, device: &str) -> sqlx::Result<Stored> {
    let row: Option<(String, i64)> =
        sqlx::query_as("SELECT doc, pending FROM device_shadows WHERE device_id = $1")
            .bind(device)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((doc, pending)) = row else {
        return Ok(Stored {
            shadow: Shadow::default(),
            pending: false,
            exists: false,
        });
    };
    let shadow = serde_json::from_str(&doc).map_err(|e| {
        sqlx::Error::Protocol(format!(
            "the stored shadow of `{device}` does not parse: {e}"
        ))
    })?;
    Ok(Stored {
        shadow,
        pending: pending != 0,
        exists: true,
    })
}

/// Write `shadow` as the copy of `device` if the stored one is still at
/// version `read_at` (`None`: there was none); false when another writer
/// came first (the caller reads again).
pub async fn store(
    conn: &mut AnyConnection,
    device: &str,
    shadow: &Shadow,
    read_at: Option<u64>,
    pending: bool,
    now: i64,
) -> sqlx::Result<bool> {
    let doc = serde_json::to_string(shadow).map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
    let done = match read_at {
        Some(old) => {
            sqlx::query(
                "UPDATE device_shadows SET doc = $1, version = $2, pending = $3, updated_ms = $4 \
                 WHERE device_id = $5 AND version = $6",
            )
            .bind(doc)
            .bind(db_int(shadow.version))
            .bind(i64::from(pending))
            .bind(now)
            .bind(device)
            .bind(db_int(old))
            .execute(&mut *conn)
            .await?
        }
        None => sqlx::query(
            "INSERT INTO device_shadows (device_id, doc, version, pending, updated_ms, sent_ms) \
                 VALUES ($1, $2, $3, $4, $5, 0) ON CONFLICT (device_id) DO NOTHING",
        )
        .bind(device)
        .bind(doc)
        .bind(db_int(shadow.version))
        .bind(i64::from(pending))
        .bind(now)
        .execute(&mut *conn)
        .await?,
    };
    Ok(done.rows_affected() == 1)
}

/// Merge a node's copy into the cloud's (created if absent) by the
/// conflict rule (`Shadow::merge_from_node`); the cloud's copy stays
/// pending while the node's does not cover it. Returns whether it is
/// pending.
pub async fn merge_from_node(
    conn: &mut AnyConnection,
    sync: &ShadowSync,
    now: i64,
) -> sqlx::Result<bool> {
    let now_u = u64::try_from(now).unwrap_or(0);
    // Another writer (an API change on another connection) makes the
    // conditional write miss; read again.
    for _ in 0..8 {
        let cur = load(conn, &sync.device).await?;
        let mut copy = cur.shadow.clone();
        let changed = copy.merge_from_node(&sync.shadow, now_u);
        let pending = !copy.covered_by(&sync.shadow);
        if cur.exists && !changed && pending == cur.pending {
            return Ok(pending);
        }
        let read_at = cur.exists.then_some(cur.shadow.version);
        if store(conn, &sync.device, &copy, read_at, pending, now).await? {
            return Ok(pending);
        }
    }
    Err(sqlx::Error::Protocol(format!(
        "the shadow of `{}` kept changing while a node's copy was merged",
        sync.device
    )))
}

/// The API's JSON of a device's shadow.
pub fn to_json(device: &str, node: &str, stored: &Stored) -> Value {
    let s = &stored.shadow;
    json!({
        "device_id": device,
        "node_id": node,
        "desired": s.desired,
        "reported": s.reported,
        "delta": s.delta(),
        "metadata": s.metadata,
        "version": s.version,
        "timestamp": s.timestamp,
        "synced": !stored.pending,
    })
}

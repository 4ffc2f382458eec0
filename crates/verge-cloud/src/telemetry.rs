//! Upstream messages as rows: the batch INSERTs of the ingest path and,
//! on PostgreSQL, the time-partitioned `messages` table's upkeep.
//!
//! Every message keeps the time it was queued on its node (`queued_ms`,
//! the `verge-time` user property the bridge copies from its queue
//! record; the time it was received when absent or not a number).
//!
//! On PostgreSQL `messages` is range-partitioned by `queued_ms`
//! (migration 12): one partition per UTC day ([`PARTITION_MS`]) from the
//! retention horizon (at most [`BACKFILL_MS`] back) to
//! [`PARTITIONS_AHEAD`] days ahead, made at start and by every pruning
//! pass ([`maintain`]), plus a DEFAULT partition for any other time (a
//! node clock far off, a backlog older than the days made). Retention
//! drops whole partitions whose upper bound is past the horizon (so a
//! message may outlive `message_retention` by up to a day) and deletes
//! the expired rows of the DEFAULT partition; `max_messages` drops the
//! oldest partitions all of whose rows are beyond the cap, then deletes
//! the remaining excess rows by id ([`prune_postgres`]). The insert binds
//! one array per column and `UNNEST`s them, a statement per batch, on a
//! `PgPool` opened beside the `AnyPool` (which cannot bind arrays).
//! De-duplication stays in the database: the unique key
//! (node, `verge-id`, `queued_ms`) includes the partition key as
//! PostgreSQL requires, and a resend repeats `verge-time`, so the
//! duplicate is in the same partition and skipped.
//!
//! SQLite keeps the plain table: multi-row INSERTs and the row pruner in
//! `crate::ingest`.

use std::collections::HashSet;

use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Any, Postgres, Transaction};
use verge_mqtt::Properties;
use verge_protocol::topics::{VERGE_ID_PROPERTY, VERGE_TIME_PROPERTY};

/// The span of one partition: a UTC day.
pub const PARTITION_MS: i64 = 24 * 3600 * 1000;

/// Partitions made ahead of today.
pub const PARTITIONS_AHEAD: i64 = 3;

/// Partitions are made back to the retention horizon, but at most this
/// far (a week: a node's backlog after a week offline still lands in its
/// day's partition; anything older goes to the DEFAULT partition).
pub const BACKFILL_MS: i64 = 7 * PARTITION_MS;

/// Rows per multi-row INSERT on SQLite (6 parameters each, far below its
/// parameter limit).
const ROWS_PER_INSERT: usize = 128;

/// One upstream message to store.
#[derive(Debug, Clone, Copy)]
pub struct NewMessage<'a> {
    /// The node it came from.
    pub node: &'a str,
    /// Its node-local topic (`{rest}` of `nodes/{id}/up/{rest}`).
    pub topic: &'a str,
    /// Its `verge-id`, when it has one.
    pub verge_id: Option<&'a str>,
    /// The payload.
    pub payload: &'a [u8],
    /// When it was queued on the node (ms); the partition key.
    pub queued_ms: i64,
}

/// The `verge-id` of a message with `props`.
pub fn verge_id(props: &Properties) -> Option<&str> {
    props
        .user_properties
        .iter()
        .find(|(k, _)| k == VERGE_ID_PROPERTY)
        .map(|(_, v)| v.as_str())
}

/// When a message with `props` was queued on its node: its `verge-time`,
/// else `received_ms`.
pub fn queued_ms(props: &Properties, received_ms: i64) -> i64 {
    props
        .user_properties
        .iter()
        .find(|(k, _)| k == VERGE_TIME_PROPERTY)
        .and_then(|(_, v)| v.parse::<i64>().ok())
        .unwrap_or(received_ms)
}

/// The (node, `verge-id`) of each row a batch INSERT stored (a duplicate
/// of a stored one is skipped, and absent here).
pub type Inserted = HashSet<(String, String)>;

/// Store `rows` received at `received_ms` in `tx` (SQLite, or PostgreSQL
/// through the `AnyPool` in tests): multi-row INSERTs skipping a (node,
/// `verge-id`) already stored.
pub async fn insert_any(
    tx: &mut Transaction<'_, Any>,
    rows: &[NewMessage<'_>],
    received_ms: i64,
) -> sqlx::Result<Inserted> {
    let mut inserted = Inserted::new();
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut sql = String::with_capacity(112 + chunk.len() * 40);
        sql.push_str(
            "INSERT INTO messages (verge_id, node_id, topic, payload, received_ms, queued_ms) VALUES ",
        );
        for i in 0..chunk.len() {
            let b = i * 6;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6
            ));
        }
        sql.push_str(" ON CONFLICT (node_id, verge_id) DO NOTHING RETURNING node_id, verge_id");
        let mut q = sqlx::query_as::<_, (String, Option<String>)>(sqlx::AssertSqlSafe(sql));
        for r in chunk {
            q = q
                .bind(r.verge_id.map(str::to_owned))
                .bind(r.node)
                .bind(r.topic)
                .bind(r.payload.to_vec())
                .bind(received_ms)
                .bind(r.queued_ms);
        }
        for (node, verge_id) in q.fetch_all(&mut **tx).await? {
            if let Some(v) = verge_id {
                inserted.insert((node, v));
            }
        }
    }
    Ok(inserted)
}

/// Store `rows` received at `received_ms` in `tx` on PostgreSQL: one
/// statement, an array per column `UNNEST`ed into the partitioned table,
/// skipping a (node, `verge-id`, `queued_ms`) already stored.
pub async fn insert_postgres(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[NewMessage<'_>],
    received_ms: i64,
) -> sqlx::Result<Inserted> {
    let mut inserted = Inserted::new();
    if rows.is_empty() {
        return Ok(inserted);
    }
    // A row with a `verge-id` but no valid `verge-time` has the receive
    // time as its `queued_ms` (see [`queued_ms`]), so its resend would
    // not meet the stored copy on the unique index: look for its (node,
    // `verge-id`) in every partition first (the index's prefix). A
    // `verge-time` that happens to equal the receive time is looked up
    // too, which costs a lookup and is still right.
    let untimed: Vec<(&str, &str)> = rows
        .iter()
        .filter(|r| r.queued_ms == received_ms)
        .filter_map(|r| Some((r.node, r.verge_id?)))
        .collect();
    let known: HashSet<(String, String)> = if untimed.is_empty() {
        HashSet::new()
    } else {
        let nodes: Vec<&str> = untimed.iter().map(|u| u.0).collect();
        let ids: Vec<&str> = untimed.iter().map(|u| u.1).collect();
        let found: Vec<(String, String)> = sqlx::query_as(
            "SELECT m.node_id, m.verge_id FROM messages m \
             JOIN UNNEST($1::text[], $2::text[]) AS u(n, v) ON m.node_id = u.n AND m.verge_id = u.v",
        )
        .bind(&nodes)
        .bind(&ids)
        .fetch_all(&mut **tx)
        .await?;
        found.into_iter().collect()
    };
    let rows: Vec<&NewMessage<'_>> = rows
        .iter()
        .filter(|r| {
            r.queued_ms != received_ms
                || r.verge_id
                    .is_none_or(|v| !known.contains(&(r.node.to_owned(), v.to_owned())))
        })
        .collect();
    if rows.is_empty() {
        return Ok(inserted);
    }
    let ids: Vec<Option<&str>> = rows.iter().map(|r| r.verge_id).collect();
    let nodes: Vec<&str> = rows.iter().map(|r| r.node).collect();
    let topics: Vec<&str> = rows.iter().map(|r| r.topic).collect();
    let payloads: Vec<&[u8]> = rows.iter().map(|r| r.payload).collect();
    let queued: Vec<i64> = rows.iter().map(|r| r.queued_ms).collect();
    let stored: Vec<(String, Option<String>)> = sqlx::query_as(
        "INSERT INTO messages (verge_id, node_id, topic, payload, received_ms, queued_ms) \
         SELECT v, n, t, p, $5, q FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bytea[], $6::int8[]) AS u(v, n, t, p, q) \
         ON CONFLICT (node_id, verge_id, queued_ms) DO NOTHING RETURNING node_id, verge_id",
    )
    .bind(&ids)
    .bind(&nodes)
    .bind(&topics)
    .bind(&payloads)
    .bind(received_ms)
    .bind(&queued)
    .fetch_all(&mut **tx)
    .await?;
    for (node, verge_id) in stored {
        if let Some(v) = verge_id {
            inserted.insert((node, v));
        }
    }
    Ok(inserted)
}

/// Set each device's `last_telemetry` to its reading in `latest`
/// ((node, device, JSON text)) in one statement on PostgreSQL (arrays
/// `UNNEST`ed, so a batch over a thousand devices is one round trip).
pub async fn set_last_telemetry_postgres(
    tx: &mut Transaction<'_, Postgres>,
    latest: &[(&str, &str, String)],
    now: i64,
) -> sqlx::Result<()> {
    if latest.is_empty() {
        return Ok(());
    }
    let nodes: Vec<&str> = latest.iter().map(|l| l.0).collect();
    let devices: Vec<&str> = latest.iter().map(|l| l.1).collect();
    let values: Vec<&str> = latest.iter().map(|l| l.2.as_str()).collect();
    sqlx::query(
        "UPDATE devices d SET last_telemetry = u.v, last_telemetry_ms = $4 \
         FROM UNNEST($1::text[], $2::text[], $3::text[]) AS u(n, dev, v) \
         WHERE d.id = u.dev AND d.node_id = u.n",
    )
    .bind(&nodes)
    .bind(&devices)
    .bind(&values)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Open the PostgreSQL pool of the telemetry path beside the `AnyPool`.
pub async fn open_postgres(url: &str) -> sqlx::Result<PgPool> {
    PgPoolOptions::new().max_connections(8).connect(url).await
}

/// The start (inclusive) of the partition holding time `ms`.
pub fn partition_start(ms: i64) -> i64 {
    ms.div_euclid(PARTITION_MS) * PARTITION_MS
}

/// The name of the partition starting at `start`: `messages_pYYYYMMDD`
/// (its UTC day).
pub fn partition_name(start: i64) -> String {
    let (y, m, d) = civil_from_days(start.div_euclid(PARTITION_MS));
    format!("messages_p{y:04}{m:02}{d:02}")
}

/// Year, month, day of `days` since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// One partition of `messages` (not the DEFAULT one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Table name.
    pub name: String,
    /// Lower bound of `queued_ms` (inclusive).
    pub from: i64,
    /// Upper bound (exclusive).
    pub to: i64,
}

/// The range partitions of `messages`, oldest first (the DEFAULT one is
/// not listed).
pub async fn partitions(pg: &PgPool) -> sqlx::Result<Vec<Partition>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i \
         JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'messages'::regclass",
    )
    .fetch_all(pg)
    .await?;
    let mut out: Vec<Partition> = rows
        .into_iter()
        .filter_map(|(name, bound)| {
            let (from, to) = parse_bound(&bound)?;
            Some(Partition { name, from, to })
        })
        .collect();
    out.sort_by_key(|p| p.from);
    Ok(out)
}

/// `FOR VALUES FROM ('a') TO ('b')` → (a, b); `None` for DEFAULT.
fn parse_bound(bound: &str) -> Option<(i64, i64)> {
    let rest = bound.strip_prefix("FOR VALUES FROM (")?;
    let (from, rest) = rest.split_once(") TO (")?;
    let to = rest.strip_suffix(')')?;
    let num = |s: &str| s.trim().trim_matches('\'').parse::<i64>().ok();
    Some((num(from)?, num(to)?))
}

/// What one [`maintain`] pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Maintained {
    /// Partitions made.
    pub created: Vec<String>,
    /// Rows moved out of the DEFAULT partition into them.
    pub moved: u64,
}

/// Lock id serialising partition changes across replicas (a transaction
/// advisory lock; "verge-pt").
const PARTITION_LOCK: i64 = 0x7665_7267_652d_7074;

/// Make the partitions from the retention horizon (at most
/// [`BACKFILL_MS`] back from `now`) to [`PARTITIONS_AHEAD`] days ahead
/// that are missing. Rows of a new partition's range already in the
/// DEFAULT partition are moved into it (a partition cannot be attached
/// while the DEFAULT one holds rows of its range).
pub async fn maintain(pg: &PgPool, now: i64, retention_ms: i64) -> sqlx::Result<Maintained> {
    let mut done = Maintained::default();
    let have = partitions(pg).await?;
    let first = partition_start(now.saturating_sub(retention_ms.min(BACKFILL_MS)));
    let last = partition_start(now) + PARTITIONS_AHEAD * PARTITION_MS;
    let mut start = first;
    while start <= last {
        let end = start + PARTITION_MS;
        if !have.iter().any(|p| p.from < end && start < p.to) {
            let moved = create_partition(pg, start, end).await?;
            done.created.push(partition_name(start));
            done.moved += moved;
        }
        start = end;
    }
    Ok(done)
}

/// Make the partition `[from, to)`, moving its rows out of the DEFAULT
/// partition; returns how many were moved.
async fn create_partition(pg: &PgPool, from: i64, to: i64) -> sqlx::Result<u64> {
    let name = partition_name(from);
    let mut tx = pg.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(PARTITION_LOCK)
        .execute(&mut *tx)
        .await?;
    // Another replica may have made it while this one waited.
    let exists: Option<(i32,)> = sqlx::query_as(
        "SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'messages'::regclass AND c.relname = $1",
    )
    .bind(&name)
    .fetch_optional(&mut *tx)
    .await?;
    if exists.is_some() {
        tx.commit().await?;
        return Ok(0);
    }
    let stray: Option<(i32,)> = sqlx::query_as(
        "SELECT 1 FROM messages_default WHERE queued_ms >= $1 AND queued_ms < $2 LIMIT 1",
    )
    .bind(from)
    .bind(to)
    .fetch_optional(&mut *tx)
    .await?;
    let mut moved = 0;
    if stray.is_none() {
        let sql =
            format!("CREATE TABLE {name} PARTITION OF messages FOR VALUES FROM ({from}) TO ({to})");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await?;
    } else {
        // Build it beside, fill it from DEFAULT, then attach (which makes
        // its indexes and checks DEFAULT no longer holds its range).
        let create =
            format!("CREATE TABLE {name} (LIKE messages INCLUDING DEFAULTS INCLUDING CONSTRAINTS)");
        sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&mut *tx)
            .await?;
        let fill = format!(
            "WITH moved AS (DELETE FROM messages_default WHERE queued_ms >= $1 AND queued_ms < $2 RETURNING *) \
             INSERT INTO {name} SELECT * FROM moved"
        );
        moved = sqlx::query(sqlx::AssertSqlSafe(fill))
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let attach = format!(
            "ALTER TABLE messages ATTACH PARTITION {name} FOR VALUES FROM ({from}) TO ({to})"
        );
        sqlx::query(sqlx::AssertSqlSafe(attach))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    tracing::info!(partition = %name, moved, "messages partition made");
    Ok(moved)
}

/// Rows one DELETE of the DEFAULT partition or of the excess removes at
/// most (so other statements get their turn between them).
const DELETE_CHUNK: i64 = 10_000;

/// One pruning pass of `messages` on PostgreSQL at `now`; returns how many
/// messages went.
///
/// 1. Retention: partitions whose upper bound is at or before
///    `now - retention_ms` are dropped whole; expired rows of the DEFAULT
///    partition are deleted.
/// 2. `max_messages`: the newest `keep` rows by id stay. Partitions,
///    oldest first, all of whose ids are at or below the cut are dropped
///    whole; then the rows left at or below the cut are deleted by id.
pub async fn prune_postgres(
    pg: &PgPool,
    now: i64,
    retention_ms: i64,
    keep: i64,
) -> sqlx::Result<u64> {
    let horizon = now.saturating_sub(retention_ms);
    let mut total = 0;
    let parts = partitions(pg).await?;
    let mut left = Vec::new();
    for p in parts {
        if p.to <= horizon {
            total += drop_partition(pg, &p).await?;
        } else {
            left.push(p);
        }
    }
    total += delete_chunked(
        pg,
        "DELETE FROM messages_default WHERE ctid IN \
         (SELECT ctid FROM messages_default WHERE queued_ms < $1 LIMIT $2)",
        horizon,
    )
    .await?;
    let cut: Option<(i64,)> =
        sqlx::query_as("SELECT id FROM messages ORDER BY id DESC LIMIT 1 OFFSET $1")
            .bind(keep)
            .fetch_optional(pg)
            .await?;
    let Some((cut,)) = cut else {
        return Ok(total);
    };
    for p in &left {
        let sql = format!("SELECT MAX(id) FROM {}", p.name);
        let (max,): (Option<i64>,) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_one(pg)
            .await?;
        match max {
            Some(max) if max <= cut => total += drop_partition(pg, p).await?,
            // An empty partition is kept (it is for times to come).
            None => {}
            Some(_) => break,
        }
    }
    total += delete_chunked(
        pg,
        "DELETE FROM messages WHERE (id, queued_ms) IN \
         (SELECT id, queued_ms FROM messages WHERE id <= $1 ORDER BY id LIMIT $2)",
        cut,
    )
    .await?;
    Ok(total)
}

/// Drop partition `p`; returns how many rows it held.
async fn drop_partition(pg: &PgPool, p: &Partition) -> sqlx::Result<u64> {
    let mut tx = pg.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(PARTITION_LOCK)
        .execute(&mut *tx)
        .await?;
    let count = format!("SELECT COUNT(*) FROM {}", p.name);
    let n = match sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(count))
        .fetch_one(&mut *tx)
        .await
    {
        Ok((n,)) => n,
        // Another replica dropped it meanwhile.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => return Ok(0),
        Err(e) => return Err(e),
    };
    let drop = format!("DROP TABLE {}", p.name);
    sqlx::query(sqlx::AssertSqlSafe(drop))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(partition = %p.name, rows = n, "messages partition dropped");
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Run `sql` (binding `bound` and [`DELETE_CHUNK`]) until it deletes less
/// than a chunk; the total deleted.
async fn delete_chunked(pg: &PgPool, sql: &'static str, bound: i64) -> sqlx::Result<u64> {
    let mut total = 0;
    loop {
        let n = sqlx::query(sql)
            .bind(bound)
            .bind(DELETE_CHUNK)
            .execute(pg)
            .await?
            .rows_affected();
        total += n;
        if n < DELETE_CHUNK as u64 {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_are_utc_days() {
        assert_eq!(partition_name(0), "messages_p19700101");
        // 2026-12-07T19:46:21Z
        let t = 1_796_672_781_000;
        assert_eq!(partition_name(partition_start(t)), "messages_p20261207");
        assert_eq!(partition_start(t) % PARTITION_MS, 0);
        assert_eq!(
            partition_name(partition_start(951_782_400_000)),
            "messages_p20000229"
        );
        assert_eq!(partition_name(partition_start(-1)), "messages_p19691231");
    }

    #[test]
    fn bounds_parse_and_default_is_none() {
        assert_eq!(
            parse_bound("FOR VALUES FROM ('86400000') TO ('172800000')"),
            Some((86_400_000, 172_800_000))
        );
        assert_eq!(parse_bound("FOR VALUES FROM (0) TO (5)"), Some((0, 5)));
        assert_eq!(parse_bound("DEFAULT"), None);
    }

    #[test]
    fn queued_time_is_verge_time_else_received() {
        let mut p = Properties::default();
        assert_eq!(queued_ms(&p, 7), 7);
        p.user_properties
            .push((VERGE_TIME_PROPERTY.into(), "not a number".into()));
        assert_eq!(queued_ms(&p, 7), 7);
        p.user_properties.clear();
        p.user_properties
            .push((VERGE_TIME_PROPERTY.into(), "1234".into()));
        p.user_properties
            .push((VERGE_ID_PROPERTY.into(), "q/l/1".into()));
        assert_eq!(queued_ms(&p, 7), 1234);
        assert_eq!(verge_id(&p), Some("q/l/1"));
    }
}

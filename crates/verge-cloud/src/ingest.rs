//! Upstream ingest: node messages from the durable broker subscription are
//! written to the database a batch per transaction, and only then
//! confirmed (so the node's PUBACK follows the commit). Plus the pruner
//! that bounds the `messages` and `node_metrics` tables.

use std::sync::atomic::Ordering;
use std::time::Duration;

use verge_broker::{DurableMessage, DurableSubscription};

use crate::Cloud;
use crate::db::now_ms;

/// Most messages written in one transaction.
const BATCH: usize = 256;

/// Split `nodes/{n}/up/{rest}` into `(n, rest)`.
fn split_topic(topic: &str) -> Option<(&str, &str)> {
    let rest = topic.strip_prefix("nodes/")?;
    let (node, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("up/")?;
    (!node.is_empty() && !rest.is_empty()).then_some((node, rest))
}

/// `devices/{d}/telemetry` → `d`.
fn telemetry_device(rest: &str) -> Option<&str> {
    rest.strip_prefix("devices/")?
        .strip_suffix("/telemetry")
        .filter(|d| !d.is_empty() && !d.contains('/'))
}

/// Receive, store, confirm; until the broker stops.
pub async fn run(cloud: Cloud, mut sub: DurableSubscription) {
    let mut buf: Vec<DurableMessage> = Vec::with_capacity(BATCH);
    loop {
        buf.clear();
        if sub.recv_many(&mut buf, BATCH).await == 0 {
            return;
        }
        let m = &cloud.inner().metrics;
        m.ingest_messages
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        match store(&cloud, &buf).await {
            Ok(()) => {
                m.ingest_batches.fetch_add(1, Ordering::Relaxed);
                for d in buf.drain(..) {
                    d.confirm.ok();
                }
            }
            Err(e) => {
                tracing::warn!("upstream batch of {} not stored: {e}", buf.len());
                m.ingest_failures.fetch_add(1, Ordering::Relaxed);
                for d in buf.drain(..) {
                    d.confirm.fail();
                }
            }
        }
    }
}

async fn store(cloud: &Cloud, batch: &[DurableMessage]) -> sqlx::Result<()> {
    let now = now_ms();
    let mut tx = cloud.inner().pool.begin().await?;
    for d in batch {
        let Some((node, rest)) = split_topic(&d.msg.topic) else {
            continue;
        };
        let verge_id = d
            .msg
            .properties
            .user_properties
            .iter()
            .find(|(k, _)| k == "verge-id")
            .map(|(_, v)| v.clone());
        let inserted = sqlx::query(
            "INSERT INTO messages (verge_id, node_id, topic, payload, received_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (verge_id) DO NOTHING",
        )
        .bind(verge_id)
        .bind(node)
        .bind(rest)
        .bind(d.msg.payload.to_vec())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 1
            && let Some(device) = telemetry_device(rest)
        {
            let text = String::from_utf8_lossy(&d.msg.payload);
            let value = serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or_else(|_| serde_json::Value::String(text.into_owned()));
            sqlx::query(
                "UPDATE devices SET last_telemetry = $1, last_telemetry_ms = $2 WHERE id = $3 AND node_id = $4",
            )
            .bind(value.to_string())
            .bind(now)
            .bind(device)
            .bind(node)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await
}

/// Every 30 s: delete messages past retention and beyond `max_messages`,
/// and heartbeat metrics older than a day.
pub async fn prune_loop(cloud: Cloud) {
    let mut stop = cloud.inner().stop.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match prune(&cloud).await {
            Ok(n) => {
                cloud
                    .inner()
                    .metrics
                    .pruned_messages
                    .fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!("pruning failed: {e}"),
        }
    }
}

/// One pruning pass; returns how many messages it deleted.
pub async fn prune(cloud: &Cloud) -> sqlx::Result<u64> {
    let inner = cloud.inner();
    let pool = &inner.pool;
    let retention =
        i64::try_from(inner.cfg.cloud.message_retention.get().as_millis()).unwrap_or(i64::MAX);
    let now = now_ms();
    let old = sqlx::query("DELETE FROM messages WHERE received_ms < $1")
        .bind(now.saturating_sub(retention))
        .execute(pool)
        .await?
        .rows_affected();
    let keep = i64::try_from(inner.cfg.cloud.max_messages).unwrap_or(i64::MAX);
    let cut: Option<(i64,)> =
        sqlx::query_as("SELECT id FROM messages ORDER BY id DESC LIMIT 1 OFFSET $1")
            .bind(keep)
            .fetch_optional(pool)
            .await?;
    let over = match cut {
        Some((id,)) => sqlx::query("DELETE FROM messages WHERE id <= $1")
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected(),
        None => 0,
    };
    sqlx::query("DELETE FROM node_metrics WHERE ts_ms < $1")
        .bind(now - crate::api::agent::METRICS_KEEP_MS)
        .execute(pool)
        .await?;
    Ok(old + over)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        assert_eq!(
            split_topic("nodes/e1/up/devices/d1/telemetry"),
            Some(("e1", "devices/d1/telemetry"))
        );
        assert_eq!(split_topic("nodes/e1/down/x"), None);
        assert_eq!(split_topic("nodes/e1/up/"), None);
        assert_eq!(telemetry_device("devices/d1/telemetry"), Some("d1"));
        assert_eq!(telemetry_device("devices/d1/x/telemetry"), None);
        assert_eq!(telemetry_device("devices//telemetry"), None);
    }
}

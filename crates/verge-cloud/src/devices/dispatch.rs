//! The dispatcher: once a second, and at once when woken (a command
//! queued, a shadow changed, a node's heartbeat), it expires commands
//! past their time, and for every online node (a heartbeat within
//! `offline_after`, as `api::nodes::status` decides) publishes its queued
//! commands as `CommandRequest`s and its devices' pending shadows as
//! `ShadowSync`s, QoS 1, on `nodes/{n}/down/$verge/…` through the
//! cloud's downlink (`crate::downlink`: the in-process broker, or the
//! external broker in external mode). In embedded mode a node not
//! connected to this process's endpoint is skipped (another replica's).
//!
//! At most [`IN_FLIGHT_PER_DEVICE`] commands of a device, and
//! [`IN_FLIGHT_PER_NODE`] of a node, are handed to the node at once; the
//! rest wait `queued` until earlier ones finish.
//! A command is resent every [`RESEND_MS`] until the node reports it
//! `sent` (the node keeps one copy per id); a pending shadow at most
//! every [`RESEND_MS`] until the node's answer covers it. Each send is
//! claimed by a conditional UPDATE (`last_sent_ms`, `sent_ms` older than
//! the resend time), so two replicas, or a restarted one, do not send
//! twice in a window; expiry is a conditional UPDATE too.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use verge_protocol::device::{CommandRequest, DeviceChannel, ShadowSync};
use verge_protocol::topics;

use crate::Cloud;
use crate::db::{json_col, now_ms};

/// How often the dispatcher looks when nothing wakes it.
const TICK: Duration = Duration::from_secs(1);

/// A command or shadow is sent again after this long without an answer.
pub const RESEND_MS: i64 = 5_000;

/// Most commands (and shadows) one pass sends.
const PER_PASS: i64 = 500;

/// Most commands of one device handed to its node and not yet final
/// (`sent`, `delivered`, or `queued` and published at least once): the
/// others stay `queued` in the cloud until earlier ones finish. Well
/// below what a node keeps per device (100), so a full hand-over is never
/// refused.
pub const IN_FLIGHT_PER_DEVICE: i64 = 50;

/// Most commands of one node handed over and not yet final, all its
/// devices together: half of what a node keeps in all (1,000).
pub const IN_FLIGHT_PER_NODE: i64 = 500;

/// A queued command as the dispatcher reads it: id, device, node, name,
/// payload, created, expires, attempts, and how many of its device's are
/// handed over.
type Queued = (String, String, String, String, String, i64, i64, i64, i64);

/// Run until the cloud stops.
pub async fn run(cloud: Cloud) {
    let mut stop = cloud.inner().stop.subscribe();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = cloud.inner().dispatch_wake.notified() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = pass(&cloud).await {
            tracing::warn!("device dispatch failed: {e}");
        }
    }
}

/// One pass: expire, then send what online nodes lack.
pub async fn pass(cloud: &Cloud) -> sqlx::Result<()> {
    let inner = cloud.inner();
    let pool = &inner.pool;
    let now = now_ms();
    let expired = sqlx::query(
        "UPDATE commands SET status = 'expired', updated_ms = $1 \
         WHERE status IN ('queued', 'sent', 'delivered') AND expires_ms <= $1",
    )
    .bind(now)
    .execute(pool)
    .await?
    .rows_affected();
    inner
        .metrics
        .commands_expired
        .fetch_add(expired, Ordering::Relaxed);
    let online_since = now - crate::api::nodes::offline_ms(cloud);
    let resend_before = now - RESEND_MS;
    // In embedded mode only the nodes connected to this process's
    // endpoint can be reached from here: the others are left to the
    // replica they are connected to (a claim here would be a lost send).
    // Asked of the broker once per pass, and only when there is something
    // to send.
    let mut reach = Reach::default();
    // A command not yet published (attempts 0) goes only while its device
    // has fewer than IN_FLIGHT_PER_DEVICE handed over; `handed` is counted
    // before the pass, `more` counts the pass's own.
    let queued: Vec<Queued> = sqlx::query_as(
        "SELECT c.id, c.device_id, c.node_id, c.name, c.payload, c.created_ms, c.expires_ms, \
         c.attempts, (SELECT COUNT(*) FROM commands o WHERE o.device_id = c.device_id \
         AND (o.status IN ('sent', 'delivered') OR (o.status = 'queued' AND o.attempts > 0))) \
         FROM commands c JOIN nodes n ON n.id = c.node_id \
         WHERE c.status = 'queued' AND (c.last_sent_ms IS NULL OR c.last_sent_ms <= $1) \
         AND n.joined_ms IS NOT NULL AND n.last_seen_ms >= $2 \
         AND (c.attempts > 0 OR (SELECT COUNT(*) FROM commands o WHERE o.device_id = c.device_id \
         AND (o.status IN ('sent', 'delivered') OR (o.status = 'queued' AND o.attempts > 0))) < $4) \
         ORDER BY c.created_ms LIMIT $3",
    )
    .bind(resend_before)
    .bind(online_since)
    .bind(PER_PASS)
    .bind(IN_FLIGHT_PER_DEVICE)
    .fetch_all(pool)
    .await?;
    let mut by_node: HashMap<String, i64> = if queued.iter().any(|q| q.7 == 0) {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT node_id, COUNT(*) FROM commands \
             WHERE status IN ('sent', 'delivered') OR (status = 'queued' AND attempts > 0) \
             GROUP BY node_id",
        )
        .fetch_all(pool)
        .await?
        .into_iter()
        .collect()
    } else {
        HashMap::new()
    };
    let mut more: HashMap<String, i64> = HashMap::new();
    for (id, device, node, name, payload, created_ms, expires_ms, attempts, handed) in queued {
        if !reach.here(cloud, &node).await {
            continue;
        }
        if attempts == 0 {
            let mine = more.entry(device.clone()).or_default();
            let of_node = by_node.entry(node.clone()).or_default();
            if handed + *mine >= IN_FLIGHT_PER_DEVICE || *of_node >= IN_FLIGHT_PER_NODE {
                continue;
            }
            *mine += 1;
            *of_node += 1;
        }
        let claimed = sqlx::query(
            "UPDATE commands SET attempts = attempts + 1, last_sent_ms = $1 \
             WHERE id = $2 AND status = 'queued' AND (last_sent_ms IS NULL OR last_sent_ms <= $3)",
        )
        .bind(now)
        .bind(&id)
        .bind(resend_before)
        .execute(pool)
        .await?;
        if claimed.rows_affected() != 1 {
            continue;
        }
        let req = CommandRequest {
            id,
            device: device.clone(),
            name,
            payload: json_col(&payload),
            created_ms: u64::try_from(created_ms).unwrap_or(0),
            expires_ms: u64::try_from(expires_ms).unwrap_or(0),
        };
        let topic = topics::down(&node, &DeviceChannel::Command.topic(&device));
        send(cloud, topic, &req).await;
        inner.metrics.commands_sent.fetch_add(1, Ordering::Relaxed);
    }
    let pending: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT s.device_id, d.node_id, s.doc FROM device_shadows s \
         JOIN devices d ON d.id = s.device_id JOIN nodes n ON n.id = d.node_id \
         WHERE s.pending = 1 AND s.sent_ms <= $1 \
         AND n.joined_ms IS NOT NULL AND n.last_seen_ms >= $2 \
         ORDER BY s.updated_ms LIMIT $3",
    )
    .bind(resend_before)
    .bind(online_since)
    .bind(PER_PASS)
    .fetch_all(pool)
    .await?;
    for (device, node, doc) in pending {
        if !reach.here(cloud, &node).await {
            continue;
        }
        let claimed = sqlx::query(
            "UPDATE device_shadows SET sent_ms = $1 \
             WHERE device_id = $2 AND pending = 1 AND sent_ms <= $3",
        )
        .bind(now)
        .bind(&device)
        .bind(resend_before)
        .execute(pool)
        .await?;
        if claimed.rows_affected() != 1 {
            continue;
        }
        let shadow = match serde_json::from_str(&doc) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(device = %device, "stored shadow does not parse: {e}");
                continue;
            }
        };
        let sync = ShadowSync {
            device: device.clone(),
            shadow,
        };
        let topic = topics::down(&node, &DeviceChannel::Shadow.topic(&device));
        send(cloud, topic, &sync).await;
        inner.metrics.shadows_sent.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// The nodes this process can send to, asked of the downlink on first
/// use (`None` inside: any node).
#[derive(Default)]
struct Reach(Option<Option<HashSet<String>>>);

impl Reach {
    async fn here(&mut self, cloud: &Cloud, node: &str) -> bool {
        if self.0.is_none() {
            self.0 = Some(cloud.inner().downlink.reachable().await);
        }
        match &self.0 {
            Some(Some(nodes)) => nodes.contains(node),
            _ => true,
        }
    }
}

/// Publish `body` as JSON on `topic`, QoS 1 (a failure is logged; the
/// next resend tries again).
async fn send(cloud: &Cloud, topic: String, body: &impl serde::Serialize) {
    let payload = match serde_json::to_vec(body) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(%topic, "not sent: {e}");
            return;
        }
    };
    if let Err(e) = cloud.inner().downlink.publish(&topic, payload).await {
        tracing::warn!(%topic, "not sent: {e}");
    }
}

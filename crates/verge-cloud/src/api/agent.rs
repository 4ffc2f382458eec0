//! `/api/agent/*`: the node protocol (`verge-protocol`): join, long-poll
//! of the desired state, heartbeats.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use verge_protocol::{JoinRequest, JoinResponse, StatusReport};

use crate::Cloud;
use crate::auth::NodeAuth;
use crate::db::{self, now_ms};
use crate::error::{ApiJson, ApiQuery, AppError};

/// Heartbeat metrics are kept this long.
pub const METRICS_KEEP_MS: i64 = 24 * 3600 * 1000;

pub async fn join(
    State(cloud): State<Cloud>,
    ApiJson(req): ApiJson<JoinRequest>,
) -> Result<Json<JoinResponse>, AppError> {
    // Joins in flight are bounded: a join storm queues here (an idle
    // future each) rather than holding hashes and transactions at once.
    let _permit = cloud
        .inner()
        .joins
        .acquire()
        .await
        .map_err(AppError::internal)?;
    let secret = db::random_secret();
    // Cheap on purpose: the secret is random (`db::hash_node_secret`).
    let phc = {
        let s = secret.clone();
        tokio::task::spawn_blocking(move || db::hash_node_secret(&s))
            .await
            .map_err(AppError::internal)?
            .map_err(AppError::internal)?
    };
    if let Some(dynsec) = &cloud.inner().dynsec
        && !dynsec.is_up()
    {
        return Err(broker_unavailable(
            &crate::broker_auth::dynsec::DynsecError::Down,
        ));
    }
    let now = now_ms();
    let mut tx = cloud.inner().pool.begin().await?;
    let node: Option<(String,)> =
        sqlx::query_as("SELECT id FROM nodes WHERE join_token_hash = $1 AND join_expires_ms > $2")
            .bind(db::sha256_hex(req.token.as_bytes()))
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((node_id,)) = node else {
        return Err(AppError::unauthorized(
            "unknown, used or expired join token",
        ));
    };
    // The token is spent in the same statement that checks it, so two
    // joins with one token cannot both succeed.
    let done = sqlx::query(
        "UPDATE nodes SET join_token_hash = NULL, join_expires_ms = NULL, secret_sha256 = $1, secret_phc = $2, joined_ms = $3 \
         WHERE id = $4 AND join_token_hash = $5",
    )
    .bind(db::sha256_hex(secret.as_bytes()))
    .bind(&phc)
    .bind(now)
    .bind(&node_id)
    .bind(db::sha256_hex(req.token.as_bytes()))
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() != 1 {
        return Err(AppError::unauthorized(
            "unknown, used or expired join token",
        ));
    }
    // The broker learns the secret before the token is spent: if it
    // cannot, the join fails (the transaction rolls back) and can be
    // retried with the same token.
    if let Some(dynsec) = &cloud.inner().dynsec
        && let Err(e) = dynsec.provision_node(&node_id, &secret).await
    {
        tracing::warn!(node = %node_id, "join refused: the node's broker credentials: {e}");
        return Err(broker_unavailable(&e));
    }
    tx.commit().await?;
    tracing::info!(node = %node_id, hostname = %req.hostname, agent = %req.agent_version, "node joined");
    cloud
        .nodes_changed(&node_id)
        .await
        .map_err(AppError::internal)?;
    // A connection made with the old secret (a reinstalled node) ends.
    if let Err(e) = cloud.inner().handle.disconnect_user(&node_id).await {
        tracing::warn!(node = %node_id, "closing the old connection: {e}");
    }
    Ok(Json(JoinResponse {
        node_id,
        secret,
        mqtt_url: cloud.inner().cfg.mqtt_url(),
    }))
}

/// 503 `broker_unavailable`: the external broker did not take a node's
/// credentials (retry later).
pub fn broker_unavailable(e: &crate::broker_auth::dynsec::DynsecError) -> AppError {
    AppError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "broker_unavailable",
        format!(
            "the node's credentials could not be written to the MQTT broker ({e}); try again later"
        ),
    )
}

pub async fn desired(
    NodeAuth(node): NodeAuth,
    State(cloud): State<Cloud>,
    ApiQuery(q): ApiQuery<verge_protocol::paths::DesiredQuery>,
) -> Result<Response, AppError> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(q.wait_ms.min(60_000));
    let inner = cloud.inner();
    let mut waiter = inner.wake.waiter(&node);
    let mut stop = inner.stop.subscribe();
    loop {
        waiter.mark_seen();
        let current: Option<(i64,)> =
            sqlx::query_as("SELECT desired_version FROM nodes WHERE id = $1")
                .bind(&node)
                .fetch_optional(&inner.pool)
                .await?;
        let Some((version,)) = current else {
            return Err(AppError::not_found(format!("no node `{node}`")));
        };
        if version != q.version {
            let state = crate::revisions::serve(&inner.pool, &node, true)
                .await?
                .ok_or_else(|| AppError::not_found(format!("no node `{node}`")))?;
            return Ok(Json(state).into_response());
        }
        let now = tokio::time::Instant::now();
        if now >= deadline || *stop.borrow() {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
        // Woken when this node's version changes (in this process, or on
        // PostgreSQL through any replica), with a slow safety re-check;
        // every second while changes made elsewhere cannot reach the hub
        // (the listener is down).
        let recheck = if inner.wake.listening() {
            inner.cfg.cloud.long_poll_recheck.get()
        } else {
            Duration::from_secs(1)
        };
        let wake = now.checked_add(recheck).unwrap_or(deadline).min(deadline);
        tokio::select! {
            () = waiter.woken() => {}
            _ = tokio::time::sleep_until(wake) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
    }
}

pub async fn status(
    NodeAuth(node): NodeAuth,
    State(cloud): State<Cloud>,
    ApiJson(report): ApiJson<StatusReport>,
) -> Result<StatusCode, AppError> {
    let now = now_ms();
    let text = serde_json::to_string(&report).map_err(AppError::internal)?;
    let errors = serde_json::to_string(&report.apply_errors).map_err(AppError::internal)?;
    // On PostgreSQL most heartbeats are written in batches; what the
    // batch does not take is written here.
    if let Some(beats) = &cloud.inner().heartbeats {
        let beat = crate::heartbeats::Beat {
            node: node.clone(),
            text: text.clone(),
            errors: errors.clone(),
            endpoints: endpoints_json(&report)?,
            report: report.clone(),
        };
        if let crate::heartbeats::Outcome::Written { came_online } = beats.write(beat).await {
            if came_online {
                cloud.inner().rollouts_wake.notify_one();
                cloud.inner().dispatch_wake.notify_one();
            }
            return Ok(StatusCode::NO_CONTENT);
        }
    }
    let mut tx = cloud.inner().pool.begin().await?;
    // What the last report left, to skip the writes this one would not
    // change (a node reports every few seconds; nearly all reports repeat
    // the last one's revisions and devices).
    let before: Option<Before> = sqlx::query_as(
        "SELECT applied_version, report, last_seen_ms, \
         (SELECT COUNT(*) FROM devices WHERE node_id = $1 AND connected = 1), \
         (SELECT COUNT(*) FROM node_revisions r WHERE r.node_id = $1 \
          AND r.revision = nodes.applied_version AND r.result IS NULL) \
         FROM nodes WHERE id = $1",
    )
    .bind(&node)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((applied_before, report_before, seen_before, connected_before, unrecorded)) = before
    else {
        return Err(AppError::not_found(format!("no node `{node}`")));
    };
    // Back from offline (or the first report): what is queued for it can
    // go now.
    let came_online = seen_before.is_none_or(|t| t < now - crate::api::nodes::offline_ms(&cloud));
    let endpoints = endpoints_json(&report)?;
    // Replicas stamp with their own clocks: the last heartbeat time never
    // goes back, so a replica whose clock is a little behind cannot make
    // an online node look offline.
    sqlx::query(
        "UPDATE nodes SET report = $1, \
         last_seen_ms = CASE WHEN last_seen_ms IS NULL OR last_seen_ms < $2 THEN $2 ELSE last_seen_ms END, \
         applied_version = $3, apply_errors = $4, endpoints = $5 WHERE id = $6",
    )
    .bind(text)
    .bind(now)
    .bind(report.applied_version)
    .bind(errors)
    .bind(endpoints)
    .bind(&node)
    .execute(&mut *tx)
    .await?;
    let revisions_changed = revisions_moved(
        applied_before,
        report_before.as_deref(),
        unrecorded,
        &report,
    );
    if revisions_changed {
        crate::revisions::record_report(
            &mut tx,
            &node,
            report.applied_version,
            report.attempt.as_ref(),
        )
        .await?;
    }
    sqlx::query(
        "INSERT INTO node_metrics (node_id, ts_ms, cpu_percent, memory_bytes, connections, messages_in_rate, messages_out_rate, backlog_messages) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&node)
    .bind(now)
    .bind(finite(report.cpu_percent))
    .bind(count(report.memory_bytes))
    .bind(count(report.connections))
    .bind(finite(report.messages_in_rate))
    .bind(finite(report.messages_out_rate))
    .bind(count(report.backlog_messages))
    .execute(&mut *tx)
    .await?;
    if !report.devices.is_empty() || connected_before > 0 {
        store_sessions(&mut tx, &node, &report).await?;
    }
    tx.commit().await?;
    // A report that moved its revisions may finish a rollout's stage; a
    // node back online can take what is queued for it. Otherwise the
    // rollout driver's and dispatcher's own one-second passes suffice (a
    // wake-up per heartbeat kept both passes running back to back at
    // thousands of nodes).
    if revisions_changed || came_online {
        cloud.inner().rollouts_wake.notify_one();
    }
    if came_online {
        cloud.inner().dispatch_wake.notify_one();
    }
    Ok(StatusCode::NO_CONTENT)
}

/// What a heartbeat reads first: the applied revision, report and last
/// heartbeat time stored, how many of the node's devices are marked
/// connected, and whether the applied revision's result is unrecorded.
type Before = (Option<i64>, Option<String>, Option<i64>, i64, i64);

/// Most broker endpoints kept per node.
const MAX_ENDPOINTS: usize = 16;

/// The node's broker endpoints from its report, as stored: at most
/// [`MAX_ENDPOINTS`], each at most 256 bytes and without NUL.
fn endpoints_json(report: &StatusReport) -> Result<String, AppError> {
    let endpoints: Vec<&String> = report
        .endpoints
        .iter()
        .filter(|e| e.len() <= 256 && !e.contains('\0'))
        .take(MAX_ENDPOINTS)
        .collect();
    serde_json::to_string(&endpoints).map_err(AppError::internal)
}

/// Whether `report` has revision results to record, given what the node's
/// row holds: another applied revision, another attempt (`stored_report`
/// is the last report's JSON), or an applied revision whose result is not
/// recorded yet (`unrecorded` > 0: a snapshot made after the node applied
/// it, `revisions::current`).
pub(crate) fn revisions_moved(
    applied: Option<i64>,
    stored_report: Option<&str>,
    unrecorded: i64,
    report: &StatusReport,
) -> bool {
    applied != Some(report.applied_version)
        || unrecorded > 0
        || attempt_of(stored_report) != attempt_value(report)
}

/// The `attempt` of a stored report (JSON text), if any.
fn attempt_of(stored: Option<&str>) -> Option<serde_json::Value> {
    let mut v: serde_json::Value = serde_json::from_str(stored?).ok()?;
    v.get_mut("attempt").map(serde_json::Value::take)
}

/// The `attempt` of `report` as [`attempt_of`] reads it back.
fn attempt_value(report: &StatusReport) -> Option<serde_json::Value> {
    serde_json::to_value(report.attempt.as_ref()?).ok()
}

/// The node's devices' sessions from its report: a session is stored only for a device bound to this node; a
/// device the report leaves out that was connected is marked
/// disconnected (the node reports every device seen since it started).
async fn store_sessions(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    node: &str,
    report: &StatusReport,
) -> Result<(), AppError> {
    let cut = |s: &str| db::clean_text(&s.chars().take(256).collect::<String>());
    // The stored sessions first: only a changed one is written (a
    // heartbeat comes on every device connect and disconnect, and lists
    // every device seen).
    let stored: Vec<Session> = sqlx::query_as(
        "SELECT id, connected, since_ms, client_id, transport FROM devices WHERE node_id = $1",
    )
    .bind(node)
    .fetch_all(&mut **tx)
    .await?;
    let mut stored: std::collections::HashMap<String, Session> =
        stored.into_iter().map(|s| (s.0.clone(), s)).collect();
    for s in &report.devices {
        // Not a device name (and PostgreSQL refuses NUL in text).
        if s.device.is_empty() || s.device.len() > 64 || s.device.contains('\0') {
            continue;
        }
        let Some(old) = stored.remove(&s.device) else {
            continue; // not a device of this node
        };
        let new: Session = (
            s.device.clone(),
            Some(i64::from(s.connected)),
            Some(i64::try_from(s.since_ms).unwrap_or(i64::MAX)),
            Some(cut(&s.client_id)),
            Some(cut(&s.transport)),
        );
        if new == old {
            continue;
        }
        sqlx::query(
            "UPDATE devices SET connected = $1, since_ms = $2, client_id = $3, transport = $4 \
             WHERE id = $5 AND node_id = $6",
        )
        .bind(new.1)
        .bind(new.2)
        .bind(new.3)
        .bind(new.4)
        .bind(&s.device)
        .bind(node)
        .execute(&mut **tx)
        .await?;
    }
    // Left out of the report (what remains of `stored`): no longer
    // connected.
    for (id, (_, connected, ..)) in stored {
        if connected == Some(1) {
            sqlx::query("UPDATE devices SET connected = 0 WHERE id = $1 AND node_id = $2")
                .bind(&id)
                .bind(node)
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

/// A device's stored session: id, connected, since, client id, transport.
type Session = (
    String,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

/// A metric as stored: a non-finite number as 0.
pub(crate) fn finite(v: f64) -> f64 {
    if v.is_finite() { v } else { 0.0 }
}

/// A count as stored (saturating at `i64::MAX`).
pub(crate) fn count(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

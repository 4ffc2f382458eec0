//! Adoption of a dead replica's broker session.
//!
//! A broker does not hand the messages in flight to a shared-subscription
//! member that went away to another member (Mosquitto keeps them, and the
//! ones it goes on queueing for the member, in that member's persistent
//! session until the session expires). So every replica records its
//! consumer's session in `mqtt_consumer_sessions` and refreshes the
//! record every second; a live replica that finds a record not refreshed
//! for `mqtt.external.adopt_after` claims it with a conditional UPDATE,
//! connects with that client id (clean start off), unsubscribes the
//! shared filter (no new messages go there), stores and acknowledges what
//! the broker resends until nothing arrived and nothing was acknowledged
//! for a quiet time, then leaves the session with a short expiry
//! ([`SESSION_END_EXPIRY_SECS`], set by a second connect that resumes it:
//! never a clean start, which would wipe a session its owner resumed in
//! between) and marks the record done; the broker drops the session when
//! it expires. A dead replica that comes back simply resumes its session
//! (it may take it over from its adopter: de-duplication by `verge-id`
//! makes a double delivery harmless).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Plan;
use super::consumer::{Conn, Ended, Role, pump};
use crate::Cloud;
use crate::db::now_ms;
use crate::ingest::Upstream;

/// The session expiry an adopter leaves a drained session with. Longer
/// than the consumer's reconnect backoff (30 s at most): an owner that
/// came back between the claim and the end resumes its session before
/// it expires. (Tests shorten it: `Plan::adopted_expiry_secs`.)
pub const SESSION_END_EXPIRY_SECS: u32 = 60;

/// How often the record is refreshed and records are looked at.
const TICK: Duration = Duration::from_secs(1);

/// An adoption ends once nothing arrived for this long and every message
/// received was acknowledged.
const DRAIN_QUIET: Duration = Duration::from_secs(3);

/// Refresh this replica's record and adopt unseen sessions, until the
/// cloud stops.
pub async fn run(cloud: Cloud, plan: Arc<Plan>, tx: mpsc::Sender<Upstream>) {
    let mine = plan.consumer_client_id();
    let mut stop = cloud.inner().stop.subscribe();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = refresh(&cloud, &plan, &mine).await {
            tracing::warn!("external broker: consumer record not refreshed: {e}");
            continue;
        }
        match claim(&cloud, &plan, &mine).await {
            Ok(Some(dead)) => adopt(&cloud, &plan, &dead, &tx).await,
            Ok(None) => {}
            Err(e) => tracing::warn!("external broker: unseen sessions not checked: {e}"),
        }
    }
}

/// Record (or re-record) this replica's session as alive; a record this
/// replica's earlier run left adopted or done is taken back.
async fn refresh(cloud: &Cloud, plan: &Plan, mine: &str) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO mqtt_consumer_sessions (client_id, replica, seen_ms) VALUES ($1, $2, $3) \
         ON CONFLICT (client_id) DO UPDATE SET replica = $2, seen_ms = $3, \
         adopted_by = NULL, adopted_ms = NULL, done_ms = NULL",
    )
    .bind(mine)
    .bind(&plan.replica)
    .bind(now_ms())
    .execute(&cloud.inner().pool)
    .await?;
    Ok(())
}

/// Claim one session unseen for `adopt_after` and not ended, whose
/// adopter (if any) has not refreshed its claim for as long.
async fn claim(cloud: &Cloud, plan: &Plan, mine: &str) -> sqlx::Result<Option<String>> {
    let now = now_ms();
    let before = now - i64::try_from(plan.adopt_after.as_millis()).unwrap_or(i64::MAX);
    let pool = &cloud.inner().pool;
    let candidates: Vec<(String,)> = sqlx::query_as(
        "SELECT client_id FROM mqtt_consumer_sessions \
         WHERE client_id <> $1 AND seen_ms < $2 AND done_ms IS NULL \
         AND (adopted_ms IS NULL OR adopted_ms < $2) ORDER BY seen_ms LIMIT 8",
    )
    .bind(mine)
    .bind(before)
    .fetch_all(pool)
    .await?;
    for (client_id,) in candidates {
        let won = sqlx::query(
            "UPDATE mqtt_consumer_sessions SET adopted_by = $1, adopted_ms = $2 \
             WHERE client_id = $3 AND seen_ms < $4 AND done_ms IS NULL \
             AND (adopted_ms IS NULL OR adopted_ms < $4)",
        )
        .bind(&plan.replica)
        .bind(now)
        .bind(&client_id)
        .bind(before)
        .execute(pool)
        .await?;
        if won.rows_affected() == 1 {
            return Ok(Some(client_id));
        }
    }
    Ok(None)
}

/// Keep the claim on `dead` (false once it is lost: its owner came back
/// or another replica took it after this one stalled).
async fn keep_claim(cloud: &Cloud, plan: &Plan, dead: &str) -> sqlx::Result<bool> {
    let r = sqlx::query(
        "UPDATE mqtt_consumer_sessions SET adopted_ms = $1 \
         WHERE client_id = $2 AND adopted_by = $3 AND done_ms IS NULL",
    )
    .bind(now_ms())
    .bind(dead)
    .bind(&plan.replica)
    .execute(&cloud.inner().pool)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Drain and end the session `dead`.
async fn adopt(cloud: &Cloud, plan: &Plan, dead: &str, tx: &mpsc::Sender<Upstream>) {
    tracing::info!(client_id = %dead, "external broker: adopting the session of a replica not seen for {}s", plan.adopt_after.as_secs());
    let m = &cloud.inner().metrics;
    let mut conn = Conn::new(plan, dead, false, plan.session_expiry_secs);
    if let Err(e) = conn.client.unsubscribe(plan.shared_filter()).await {
        tracing::warn!(client_id = %dead, "external broker: unsubscribe not queued: {e}");
        return;
    }
    // Drain, refreshing the claim meanwhile.
    let refresher = {
        let (cloud, plan, dead) = (cloud.clone(), plan.clone(), dead.to_owned());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(TICK).await;
                if let Err(e) = keep_claim(&cloud, &plan, &dead).await {
                    tracing::warn!(client_id = %dead, "external broker: adoption claim not refreshed: {e}");
                }
            }
        })
    };
    let ended = pump(cloud, &mut conn, tx, Role::Adopting, Some(DRAIN_QUIET)).await;
    refresher.abort();
    match ended {
        Ended::Quiet => {}
        Ended::Stopped => return,
        Ended::Lost(why) => {
            tracing::warn!(client_id = %dead, "external broker: adoption stopped: {why}; tried again later");
            release(cloud, plan, dead).await;
            return;
        }
    }
    if !matches!(keep_claim(cloud, plan, dead).await, Ok(true)) {
        tracing::info!(client_id = %dead, "external broker: adoption given up (the claim was lost)");
        return;
    }
    // Nothing new enters the session since the unsubscribe and nothing is
    // left in it: leave it (DISCONNECT after the queued PUBACKs) and let
    // it expire soon. rumqttc's DISCONNECT carries no Session Expiry
    // Interval, so a second connect resuming the session (never a clean
    // start: an owner that came back in between keeps its session) sets
    // the short expiry.
    let _ = conn.client.try_disconnect();
    let late = tokio::time::timeout(Duration::from_secs(1), conn.events_until_closed())
        .await
        .unwrap_or(0);
    drop(conn);
    if late > 0 {
        tracing::info!(client_id = %dead, "external broker: {late} message(s) arrived while the adopted session was left; tried again later");
        release(cloud, plan, dead).await;
        return;
    }
    if !matches!(keep_claim(cloud, plan, dead).await, Ok(true)) {
        tracing::info!(client_id = %dead, "external broker: adoption given up (the claim was lost)");
        return;
    }
    let mut end = Conn::new(plan, dead, false, plan.adopted_expiry_secs);
    let ended = tokio::time::timeout(Duration::from_secs(10), end.connected()).await;
    if !matches!(ended, Ok(true)) {
        tracing::warn!(client_id = %dead, "external broker: the adopted session's expiry could not be shortened; tried again later");
        release(cloud, plan, dead).await;
        return;
    }
    let _ = end.client.try_disconnect();
    // Whatever arrives here (an owner's session resumed in between) is
    // not acknowledged: it stays in the session for the owner.
    let _ = tokio::time::timeout(Duration::from_secs(1), end.events_until_closed()).await;
    let done = sqlx::query(
        "UPDATE mqtt_consumer_sessions SET done_ms = $1 WHERE client_id = $2 AND adopted_by = $3",
    )
    .bind(now_ms())
    .bind(dead)
    .bind(&plan.replica)
    .execute(&cloud.inner().pool)
    .await;
    if let Err(e) = done {
        tracing::warn!(client_id = %dead, "external broker: adopted session not marked done: {e}");
    }
    m.external_sessions_adopted.fetch_add(1, Ordering::Relaxed);
    tracing::info!(client_id = %dead, "external broker: adopted session drained, left to expire");
}

/// Records of finished adoptions are kept this long (for a look at what
/// was adopted, and by whom), then deleted by the leader's pruning pass.
pub const DONE_KEEP_MS: i64 = 24 * 3600 * 1000;

/// Delete the records of adoptions finished more than [`DONE_KEEP_MS`]
/// before `now` (the leader's pruning pass, `crate::ingest::prune`); how
/// many went. A replica that comes back later records its session anew.
pub async fn prune_done(pool: &sqlx::AnyPool, now: i64) -> sqlx::Result<u64> {
    let r = sqlx::query(
        "DELETE FROM mqtt_consumer_sessions WHERE done_ms IS NOT NULL AND done_ms < $1",
    )
    .bind(now.saturating_sub(DONE_KEEP_MS))
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// Give up a claim so that it is tried again (by any replica).
async fn release(cloud: &Cloud, plan: &Plan, dead: &str) {
    let r = sqlx::query(
        "UPDATE mqtt_consumer_sessions SET adopted_by = NULL, adopted_ms = NULL \
         WHERE client_id = $1 AND adopted_by = $2",
    )
    .bind(dead)
    .bind(&plan.replica)
    .execute(&cloud.inner().pool)
    .await;
    if let Err(e) = r {
        tracing::warn!(client_id = %dead, "external broker: claim not released: {e}");
    }
}

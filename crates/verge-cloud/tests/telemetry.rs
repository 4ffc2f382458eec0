//! Telemetry at scale: upstream messages in the time-partitioned table on
//! PostgreSQL (partitions made ahead, rows routed by the node's
//! `verge-time`, a DEFAULT partition for other times, retention and
//! `max_messages` by dropping partitions) and de-duplication of resends
//! on both databases.

#[macro_use]
mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use verge_broker::Message;
use verge_cloud::telemetry::{self, PARTITION_MS};
use verge_mqtt::QoS;
use verge_protocol::topics::{VERGE_ID_PROPERTY, VERGE_TIME_PROPERTY};

use common::{Harness, harness_on};

both!(
    a_resend_with_the_same_id_and_time_is_stored_once,
    a_resend_without_a_valid_verge_time_is_stored_once
);

/// A message as the bridge sends it: `verge-id` and `verge-time`.
fn upstream(node: &str, rest: &str, id: &str, time_ms: i64, payload: &str) -> Message {
    let mut m = Message::local(
        format!("nodes/{node}/up/{rest}"),
        payload.as_bytes().to_vec(),
        QoS::AtLeastOnce,
        false,
    );
    m.properties.user_properties = vec![
        (VERGE_ID_PROPERTY.into(), id.into()),
        (VERGE_TIME_PROPERTY.into(), time_ms.to_string()),
    ];
    m
}

/// Store `msgs` in one batch, as the ingest does.
async fn store(h: &Harness, msgs: &[Message]) {
    let refs: Vec<&Message> = msgs.iter().collect();
    h.cloud.store_upstream(&refs).await.expect("store");
}

async fn a_resend_with_the_same_id_and_time_is_stored_once(h: Harness) {
    let (node, _) = h.joined_node("edge-t").await;
    h.device(&node, "dt").await;
    let t = verge_net::now_ms() - 5000;
    let first = upstream(
        &node,
        "devices/dt/telemetry",
        "q/telemetry/1",
        t,
        r#"{"v":1}"#,
    );
    let other = upstream(
        &node,
        "devices/dt/telemetry",
        "q/telemetry/2",
        t + 1,
        r#"{"v":2}"#,
    );
    h.cloud
        .store_upstream(&[&first, &other])
        .await
        .expect("store");
    // The resend comes later, in a batch of its own and in one with a new
    // message: a different receive time, the same verge-time.
    tokio::time::sleep(Duration::from_millis(5)).await;
    h.cloud.store_upstream(&[&first]).await.expect("resend");
    let third = upstream(
        &node,
        "devices/dt/telemetry",
        "q/telemetry/3",
        t + 2,
        r#"{"v":3}"#,
    );
    h.cloud
        .store_upstream(&[&other, &third])
        .await
        .expect("resend and new");
    assert_eq!(h.count("SELECT COUNT(*) FROM messages").await, 3);
    let (s, v) = h
        .call(Method::GET, &format!("/api/nodes/{node}/messages"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let got: Vec<i64> = v
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|m| m["payload"]["v"].as_i64())
        .collect();
    assert_eq!(got, [1, 2, 3], "{v}");
    let (_, dev) = h.call(Method::GET, "/api/devices/dt", None).await;
    assert_eq!(dev["last_telemetry"], serde_json::json!({"v": 3}), "{dev}");
}

/// A `verge-id` without a `verge-time`, or with one that is no number:
/// the receive time stands in, which differs on the resend; it is still
/// stored once (on PostgreSQL the unique index includes the time).
async fn a_resend_without_a_valid_verge_time_is_stored_once(h: Harness) {
    let (node, _) = h.joined_node("edge-u").await;
    let mut missing = upstream(&node, "devices/du/telemetry", "u/1", 0, r#"{"v":1}"#);
    missing
        .properties
        .user_properties
        .retain(|(k, _)| k != VERGE_TIME_PROPERTY);
    let mut invalid = upstream(&node, "devices/du/telemetry", "u/2", 0, r#"{"v":2}"#);
    invalid.properties.user_properties = vec![
        (VERGE_ID_PROPERTY.into(), "u/2".into()),
        (VERGE_TIME_PROPERTY.into(), "soon".into()),
    ];
    h.cloud
        .store_upstream(&[&missing, &invalid])
        .await
        .expect("store");
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        h.cloud
            .store_upstream(&[&missing, &invalid])
            .await
            .expect("resend");
    }
    assert_eq!(h.count("SELECT COUNT(*) FROM messages").await, 2);
}

/// A PostgreSQL harness, or `None` (the harness said why it skipped).
/// `long`: a retention of 30 days, so the cloud's own pruning pass drops
/// nothing the test made.
async fn postgres(long: bool) -> Option<(Harness, sqlx::PgPool)> {
    let h = common::harness_with(true, |c| {
        if long {
            c.cloud.message_retention =
                verge_duration::HumanDuration(Duration::from_secs(30 * 24 * 3600));
        }
    })
    .await?;
    let pg = sqlx::PgPool::connect(&h.db_url).await.expect("pg");
    Some((h, pg))
}

/// The partition each message (by topic) is in.
async fn placement(pg: &sqlx::PgPool) -> Vec<(String, String)> {
    sqlx::query_as("SELECT topic, tableoid::regclass::text FROM messages ORDER BY topic")
        .fetch_all(pg)
        .await
        .expect("placement")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_are_made_ahead_and_rows_routed_by_verge_time_on_postgres() {
    let Some((h, pg)) = postgres(false).await else {
        return;
    };
    let now = verge_net::now_ms();
    let today = telemetry::partition_start(now);
    let names: Vec<String> = telemetry::partitions(&pg)
        .await
        .expect("partitions")
        .into_iter()
        .map(|p| p.name)
        .collect();
    // The default retention is a day: yesterday to 3 days ahead.
    let want: Vec<String> = (-1..=3)
        .map(|d| telemetry::partition_name(today + d * PARTITION_MS))
        .collect();
    assert_eq!(names, want);
    let (node, _) = h.joined_node("edge-p").await;
    let a = upstream(&node, "a/now", "q/l/1", now, "1");
    let b = upstream(&node, "b/ahead", "q/l/2", today + 2 * PARTITION_MS + 1, "2");
    let c = upstream(&node, "c/epoch", "q/l/3", 0, "3");
    let d = upstream(&node, "d/future", "q/l/4", now + 400 * PARTITION_MS, "4");
    // No verge-time: the receive time, so today's partition.
    let mut e = Message::local(
        format!("nodes/{node}/up/e/untimed"),
        b"5".to_vec(),
        QoS::AtLeastOnce,
        false,
    );
    e.properties.user_properties = vec![(VERGE_ID_PROPERTY.into(), "q/l/5".into())];
    h.cloud
        .store_upstream(&[&a, &b, &c, &d, &e])
        .await
        .expect("store");
    let day = |d: i64| telemetry::partition_name(today + d * PARTITION_MS);
    // A receive time just after midnight may be tomorrow's.
    let untimed = telemetry::partition_name(telemetry::partition_start(verge_net::now_ms()));
    let got = placement(&pg).await;
    let want: Vec<(String, String)> = [
        ("a/now", day(0)),
        ("b/ahead", day(2)),
        ("c/epoch", "messages_default".into()),
        ("d/future", "messages_default".into()),
    ]
    .into_iter()
    .map(|(t, p)| (t.to_owned(), p))
    .collect();
    assert_eq!(got[..4], want[..]);
    assert_eq!(got[4].0, "e/untimed");
    assert!(got[4].1 == day(0) || got[4].1 == untimed, "{got:?}");
    let (queued, received): (i64, i64) =
        sqlx::query_as("SELECT queued_ms, received_ms FROM messages WHERE topic = 'c/epoch'")
            .fetch_one(&pg)
            .await
            .expect("row");
    assert_eq!(queued, 0);
    assert!(received >= now, "received_ms is kept: {received}");
    // A maintenance pass at a later time makes that day's partition and
    // moves its rows out of DEFAULT.
    let later = now + 400 * PARTITION_MS;
    let done = telemetry::maintain(&pg, later, PARTITION_MS)
        .await
        .expect("maintain");
    let far = telemetry::partition_name(telemetry::partition_start(later));
    assert!(done.created.contains(&far), "{done:?}");
    assert_eq!(done.moved, 1);
    let got = placement(&pg).await;
    assert_eq!(got[3], ("d/future".to_owned(), far));
    // A second pass has nothing to do.
    let again = telemetry::maintain(&pg, later, PARTITION_MS)
        .await
        .expect("maintain");
    assert_eq!(again, telemetry::Maintained::default());
    pg.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_whole_partitions_on_postgres() {
    let Some((h, pg)) = postgres(true).await else {
        return;
    };
    let now = verge_net::now_ms();
    // Days made as if it were 5 days ago (fake time), filled, then pruned
    // now with a retention of a day.
    let then = now - 5 * PARTITION_MS;
    telemetry::maintain(&pg, then, PARTITION_MS)
        .await
        .expect("maintain");
    let old_day = telemetry::partition_name(telemetry::partition_start(then));
    let (node, _) = h.joined_node("edge-r").await;
    let mut msgs = Vec::new();
    for i in 0..4 {
        msgs.push(upstream(&node, "old", &format!("q/l/{i}"), then + i, "{}"));
    }
    msgs.push(upstream(&node, "new", "q/l/9", now, "{}"));
    // An old time in DEFAULT (no partition that far back): deleted by row.
    msgs.push(upstream(&node, "ancient", "q/l/10", 1000, "{}"));
    store(&h, &msgs).await;
    let before = telemetry::partitions(&pg).await.expect("partitions");
    assert!(before.iter().any(|p| p.name == old_day));
    let pruned = telemetry::prune_postgres(&pg, now, PARTITION_MS, 1_000_000)
        .await
        .expect("prune");
    assert_eq!(pruned, 5);
    let after = telemetry::partitions(&pg).await.expect("partitions");
    let horizon = now - PARTITION_MS;
    assert!(after.iter().all(|p| p.to > horizon), "{after:?}");
    assert!(!after.iter().any(|p| p.name == old_day));
    // The partition holding the horizon and those after it stay.
    let today = telemetry::partition_name(telemetry::partition_start(now));
    assert!(after.iter().any(|p| p.name == today), "{after:?}");
    let topics: Vec<(String,)> = sqlx::query_as("SELECT topic FROM messages")
        .fetch_all(&pg)
        .await
        .expect("select");
    assert_eq!(topics, [("new".to_owned(),)]);
    pg.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_messages_drops_the_oldest_partitions_then_rows_on_postgres() {
    let Some((h, pg)) = postgres(true).await else {
        return;
    };
    let now = verge_net::now_ms();
    let today = telemetry::partition_start(now);
    let (node, _) = h.joined_node("edge-m").await;
    // Yesterday 3 rows, today 3 rows (stored in that order, so by id).
    let mut msgs = Vec::new();
    for i in 0..3 {
        msgs.push(upstream(
            &node,
            &format!("y/{i}"),
            &format!("q/y/{i}"),
            today - 1000 + i,
            "{}",
        ));
    }
    for i in 0..3 {
        msgs.push(upstream(
            &node,
            &format!("t/{i}"),
            &format!("q/t/{i}"),
            now + i,
            "{}",
        ));
    }
    store(&h, &msgs).await;
    // Keep 2: yesterday's partition goes whole, then one row of today's.
    let pruned = telemetry::prune_postgres(&pg, now, 7 * PARTITION_MS, 2)
        .await
        .expect("prune");
    assert_eq!(pruned, 4);
    let names: Vec<String> = telemetry::partitions(&pg)
        .await
        .expect("partitions")
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert!(
        !names.contains(&telemetry::partition_name(today - PARTITION_MS)),
        "{names:?}"
    );
    let topics: Vec<(String,)> = sqlx::query_as("SELECT topic FROM messages ORDER BY id")
        .fetch_all(&pg)
        .await
        .expect("select");
    assert_eq!(topics, [("t/1".to_owned(),), ("t/2".to_owned(),)]);
    // Empty partitions ahead are kept.
    assert!(names.contains(&telemetry::partition_name(today + PARTITION_MS)));
    pg.close().await;
}

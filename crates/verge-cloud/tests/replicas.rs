//! Cloud replicas: two `Cloud`s on one PostgreSQL database (the replica
//! list, leadership, long polls woken across replicas, one replica id
//! refused to a second live process), and the one SQLite process as its
//! own leader.

#[macro_use]
mod common;

use axum::http::{Method, StatusCode};
use common::{Harness, desired_as, eventually, harness_on, harness_with, serve};
use serde_json::{Value, json};
use tokio::time::Duration;

both!(
    the_replica_list_shows_this_process,
    a_heartbeat_never_moves_last_seen_back,
);

/// The answer of a held poll (60 s wait, re-checked every 10 min), which
/// must come well before its wait ends: at the end of the wait the poll
/// re-reads the version anyway, so an answer then would not show that the
/// change woke it.
async fn woken(poll: tokio::task::JoinHandle<(StatusCode, Value)>) -> (StatusCode, Value) {
    tokio::time::timeout(Duration::from_secs(40), poll)
        .await
        .expect("the change wakes the poll before its 60 s wait ends")
        .expect("poll task")
}

async fn replicas(h: &Harness) -> Vec<Value> {
    let (s, v) = h.call(Method::GET, "/api/cloud/replicas", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v.as_array().cloned().unwrap_or_default()
}

async fn the_replica_list_shows_this_process(h: Harness) {
    let list = replicas(&h).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let me = &list[0];
    assert_eq!(me["id"], h.cloud.replica_id());
    assert_eq!(me["this"], true);
    assert_eq!(me["alive"], true);
    // The id is kept in the data directory, private.
    let kept = std::fs::read_to_string(h.dir.path().join("data/replica-id")).expect("replica-id");
    assert_eq!(kept.trim(), h.cloud.replica_id());
    if h.scratch.is_none() {
        // SQLite: the one process leads from the start.
        assert!(h.cloud.is_leader());
        assert_eq!(me["leader"], true);
        assert_eq!(h.metric("verge_cloud_leader").await, Some(1.0));
    }
    // Read tokens may list; no token may not.
    let (s, _) = h
        .call_as(Method::GET, "/api/cloud/replicas", None, None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

/// Two replicas on a fresh PostgreSQL database, or `None` (saying why)
/// without `VERGE_TEST_POSTGRES_URL`. Held polls re-check every 10 min,
/// so only a wake-up can answer them within a test.
async fn two_replicas() -> Option<(Harness, Harness)> {
    let slow = |c: &mut verge_cloud::CloudConfig| {
        c.cloud.long_poll_recheck = "10m".parse().expect("duration");
    };
    let a = harness_with(true, slow).await?;
    let b = a.replica(slow).await;
    Some((a, b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replica_list_shows_both_replicas_and_one_leader() {
    let Some((a, b)) = two_replicas().await else {
        return;
    };
    assert_ne!(a.cloud.replica_id(), b.cloud.replica_id());
    eventually("one replica leads", || async {
        a.cloud.is_leader() || b.cloud.is_leader()
    })
    .await;
    assert!(!(a.cloud.is_leader() && b.cloud.is_leader()), "both lead");
    // The list says the same once the leader's heartbeat says so.
    let leader = if a.cloud.is_leader() { &a } else { &b };
    let leader_id = leader.cloud.replica_id().to_owned();
    eventually("the list names the leader", || async {
        replicas(&b)
            .await
            .iter()
            .any(|r| r["id"] == leader_id.as_str() && r["leader"] == true)
    })
    .await;
    let list = replicas(&b).await;
    assert_eq!(list.len(), 2, "{list:?}");
    for r in &list {
        assert_eq!(r["alive"], true, "{r}");
        assert_eq!(r["this"], r["id"] == b.cloud.replica_id(), "{r}");
    }
    let leaders = list.iter().filter(|r| r["leader"] == true).count();
    assert_eq!(leaders, 1, "{list:?}");
    assert_eq!(leader.metric("verge_cloud_leader").await, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_leader_hands_leadership_to_the_other_replica() {
    let Some((a, b)) = two_replicas().await else {
        return;
    };
    let served_a = serve(&a).await;
    let served_b = serve(&b).await;
    eventually("one replica leads", || async {
        a.cloud.is_leader() || b.cloud.is_leader()
    })
    .await;
    assert!(!(a.cloud.is_leader() && b.cloud.is_leader()), "both lead");
    let (stopped, other, served_other) = if a.cloud.is_leader() {
        served_a.stop().await;
        (a, b, served_b)
    } else {
        served_b.stop().await;
        (b, a, served_a)
    };
    assert!(
        !stopped.cloud.is_leader(),
        "a stopped replica does not lead"
    );
    eventually("the other replica leads", || async {
        other.cloud.is_leader()
    })
    .await;
    // The stopped replica left the list.
    let list = replicas(&other).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["id"], other.cloud.replica_id());
    served_other.stop().await;
}

/// A long poll held on replica B for a node joined through A.
struct HeldPoll {
    b: std::sync::Arc<Harness>,
    node: String,
    /// The node's desired version the poll waits to change.
    version: i64,
    poll: tokio::task::JoinHandle<(StatusCode, Value)>,
}

/// Join node `name` through `a` and hold its long poll (60 s) on `b`, once
/// B's listener is up (so only a wake-up answers it in time).
async fn held_on_b(a: &Harness, b: Harness, name: &str) -> HeldPoll {
    let (node, secret) = a.joined_node(name).await;
    let (_, d) = desired_as(&b, &node, &secret, 0, 0).await;
    let version = d["version"].as_i64().expect("version");
    // B's listener is up: its polls wait for wake-ups only.
    eventually("replica B listens", || async {
        b.metric("verge_cloud_wake_listening").await == Some(1.0)
    })
    .await;
    let b = std::sync::Arc::new(b);
    let poll = {
        let (b, node) = (b.clone(), node.clone());
        tokio::spawn(async move { desired_as(&b, &node, &secret, version, 60_000).await })
    };
    eventually("the poll is held on B", || async {
        b.metric("verge_cloud_long_poll_nodes").await == Some(1.0)
    })
    .await;
    HeldPoll {
        b,
        node,
        version,
        poll,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_held_on_one_replica_is_woken_by_a_change_on_the_other() {
    let Some((a, b)) = two_replicas().await else {
        return;
    };
    let held = held_on_b(&a, b, "edge-wake").await;
    let (b, node, version, poll) = (held.b, held.node, held.version, held.poll);
    let (s, v) = a
        .call(
            Method::PATCH,
            &format!("/api/nodes/{node}"),
            Some(json!({"config": {"store": {"retention": "3d"}}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, d) = woken(poll).await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["version"], version + 1);
    assert_eq!(d["config"]["store"]["retention"], "3d");
    assert!(b.metric("verge_cloud_wake_notifications_total").await >= Some(1.0));
    // A poll for another node is not woken by this node's change: its
    // node's polls only (the hub holds one entry per waiting node).
    assert_eq!(b.metric("verge_cloud_long_poll_nodes").await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_node_on_one_replica_ends_its_poll_on_the_other() {
    let Some((a, b)) = two_replicas().await else {
        return;
    };
    let held = held_on_b(&a, b, "edge-gone").await;
    let (node, poll) = (held.node, held.poll);
    let (s, v) = a
        .call(Method::DELETE, &format!("/api/nodes/{node}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (s, d) = woken(poll).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{d}");
}

/// Replicas stamp heartbeats with their own clocks: one a little behind
/// must not move a node's last heartbeat back (it would flap offline).
async fn a_heartbeat_never_moves_last_seen_back(h: Harness) {
    let (node, secret) = h.joined_node("edge-clock").await;
    let ahead = verge_net::now_ms() + 5_000;
    let pool = h.db().await;
    sqlx::query("UPDATE nodes SET last_seen_ms = $1 WHERE id = $2")
        .bind(ahead)
        .bind(&node)
        .execute(&pool)
        .await
        .expect("stamp");
    pool.close().await;
    let (s, v) = h
        .status_as(&node, &secret, json!({"applied_version": 0}))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (_, n) = h
        .call(Method::GET, &format!("/api/nodes/{node}"), None)
        .await;
    assert_eq!(n["last_seen_ms"], ahead, "{n}");
    assert_eq!(n["status"], "online", "{n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lock_connection_dies_stops_leading_and_one_replica_takes_over() {
    let Some((a, b)) = two_replicas().await else {
        return;
    };
    eventually("one replica leads", || async {
        a.cloud.is_leader() || b.cloud.is_leader()
    })
    .await;
    let leader = if a.cloud.is_leader() { &a } else { &b };
    let mut leads = leader.cloud.leader_watch();
    // The server ends the leader's lock session (as when its connection
    // breaks): the lock is released.
    let pool = a.db().await;
    let (ended,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = $1) AS t",
    )
    .bind(format!("verge-cloud-leader {}", leader.cloud.replica_id()))
    .fetch_one(&pool)
    .await
    .expect("terminate");
    pool.close().await;
    assert_eq!(ended, 1, "one lock connection per replica");
    // The leader notices and stops leading (its jobs pause) …
    tokio::time::timeout(Duration::from_secs(60), leads.wait_for(|l| !*l))
        .await
        .expect("the leader notices the lost connection")
        .expect("watch");
    // … and one replica leads again (either: both try for the lock).
    eventually("a replica leads again", || async {
        a.cloud.is_leader() || b.cloud.is_leader()
    })
    .await;
    assert!(!(a.cloud.is_leader() && b.cloud.is_leader()), "both lead");
}

/// A node joined through replica A can connect at once to replica B's
/// MQTT endpoint (as after a failover behind a load balancer): A's join
/// tells B (`NOTIFY verge_registry`), which rebuilds its broker registry
/// instead of waiting for its 10 s tick. Without the notification B
/// refuses the node until that tick. Deleted through A, the node's
/// connection to B ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joined_on_one_replica_connects_at_once_to_the_other() {
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet};
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let Some((a, b)) = two_replicas().await else {
        return;
    };
    let served_b = serve(&b).await;
    // B's registry loop has made its start-up rebuild; its next tick is
    // 10 s away.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (node, secret) = a.joined_node("edge-moved").await;
    let started = tokio::time::Instant::now();
    let connected = loop {
        let mut opts = MqttOptions::new(
            format!("verge-node-{node}"),
            "127.0.0.1",
            served_b.mqtt.port(),
        );
        opts.set_credentials(node.clone(), secret.clone());
        let (client, mut el) = AsyncClient::new(opts, 10);
        let code = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(c))) => return Some(c.code),
                    Ok(_) => {}
                    Err(_) => return None,
                }
            }
        })
        .await
        .ok()
        .flatten();
        if code == Some(ConnectReturnCode::Success) {
            break Some((client, el));
        }
        if started.elapsed() > Duration::from_secs(4) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let Some((_client, mut el)) = connected else {
        panic!(
            "replica B refused node {node} joined on A for 4 s (its periodic registry rebuild is 10 s)"
        );
    };
    // Deleted through A: its connection to B ends too (B is told which
    // node; its registry alone would let the connection go on).
    let (s, v) = a
        .call(Method::DELETE, &format!("/api/nodes/{node}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Disconnect(_))) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the deleted node's connection to replica B was still open 5 s after the delete on A"
    );
    served_b.stop().await;
}

/// A configuration on `h`'s database with replica id `id` and a data
/// directory of its own in `dir`.
fn config_as(h: &Harness, id: &str, dir: &tempfile::TempDir) -> verge_cloud::CloudConfig {
    let mut cfg = verge_cloud::CloudConfig::default();
    cfg.cloud.data_dir = dir.path().join("data");
    cfg.cloud.database = h.db_url.clone();
    cfg.cloud.replica_id = id.to_owned();
    cfg
}

/// The instance nonce and last refresh of replica `id`'s row.
async fn replica_row(h: &Harness, id: &str) -> Option<(String, i64)> {
    let pool = h.db().await;
    let row = sqlx::query_as("SELECT instance, seen_ms FROM cloud_replicas WHERE id = $1")
        .bind(id)
        .fetch_optional(&pool)
        .await
        .expect("row");
    pool.close().await;
    row
}

/// Two live processes given one `cloud.replica_id` took each other's
/// broker session and looked like one replica: the second now refuses
/// to start, naming the key, and the first goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_live_process_with_the_same_replica_id_refuses_to_start() {
    let Some(a) = harness_with(true, |c| c.cloud.replica_id = "twin".into()).await else {
        return;
    };
    let before = replica_row(&a, "twin").await.expect("a's row");
    let dir = tempfile::tempdir().expect("tempdir");
    let e = match verge_cloud::Cloud::open(config_as(&a, "twin", &dir)).await {
        Ok(_) => panic!("a second process with the replica id `twin` started"),
        Err(e) => e.to_string(),
    };
    assert!(e.starts_with("cloud.replica_id:"), "{e}");
    assert!(e.contains("`twin`"), "{e}");
    // The first keeps its row and goes on refreshing it.
    let after = replica_row(&a, "twin").await.expect("a's row");
    assert_eq!(after.0, before.0, "the row is still the first process's");
    assert!(after.1 > before.1, "refreshed meanwhile");
    let list = replicas(&a).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["alive"], true);
}

/// A replica restarting after a crash finds the row its dead process
/// refreshed a moment ago: nobody refreshes it again, so it is taken
/// over (after a short watch) instead of refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_a_crash_takes_over_the_row_its_dead_process_left() {
    let Some(a) = harness_on(true).await else {
        return;
    };
    let pool = a.db().await;
    sqlx::query(
        "INSERT INTO cloud_replicas (id, http_url, version, started_ms, seen_ms, leader, instance) \
         VALUES ('phoenix', 'http://x', '0', $1, $1, 0, 'before-the-crash')",
    )
    .bind(verge_net::now_ms() - 1_000)
    .execute(&pool)
    .await
    .expect("a dead process's row");
    pool.close().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (b, _) = verge_cloud::Cloud::open(config_as(&a, "phoenix", &dir))
        .await
        .expect("the restart starts");
    assert_eq!(b.replica_id(), "phoenix");
    let (instance, _) = replica_row(&a, "phoenix").await.expect("row");
    assert_ne!(instance, "before-the-crash", "taken over");
}

/// Two processes that started with one id anyway (together, or the
/// first stalled past the liveness window): the one whose row was taken
/// stops, `serve` returning an error naming `cloud.replica_id`, and
/// leaves the row to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_row_another_process_took_stops_with_an_error() {
    let Some(a) = harness_with(true, |c| c.cloud.replica_id = "usurped".into()).await else {
        return;
    };
    let served = serve(&a).await;
    let pool = a.db().await;
    sqlx::query("UPDATE cloud_replicas SET instance = 'the-other' WHERE id = 'usurped'")
        .execute(&pool)
        .await
        .expect("take the row");
    pool.close().await;
    let e = served
        .ended(Duration::from_secs(30))
        .await
        .expect_err("the replica stops with an error");
    let e = e.to_string();
    assert!(e.starts_with("cloud.replica_id:"), "{e}");
    let (instance, _) = replica_row(&a, "usurped").await.expect("row kept");
    assert_eq!(instance, "the-other", "the other process's row is left");
}

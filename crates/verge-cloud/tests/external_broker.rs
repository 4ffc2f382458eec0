//! External broker mode (`mqtt.mode = "external"`) against a real
//! Mosquitto (Debian's `mosquitto`, started on a free loopback port; the
//! tests say so and return when it is not installed), on SQLite and
//! PostgreSQL: upstream stored once through the shared subscription, a
//! message of a node that is not joined acknowledged and dropped, a
//! message that could not be stored not acknowledged and stored when the
//! broker resends it, a command published down on the broker, a store
//! query answered through the broker, a dead replica's session (its
//! unacknowledged messages) adopted, drained and ended, and no MQTT port
//! in external mode. Plus embedded mode with two replicas: a replica
//! sends only to the nodes connected to its own endpoint.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use serde_json::{Value, json};
use tokio::time::timeout;
use verge_cloud::config::MqttMode;
use verge_cloud::{CloudConfig, Listeners};

use common::{Harness, harness_with};

const WAIT: Duration = Duration::from_secs(30);

/// The expiry an adopter leaves a drained session with here (60 s
/// outside tests).
const ADOPTED_EXPIRY: Duration = Duration::from_secs(3);

/// Each test on SQLite and PostgreSQL (`pg`): the harness is made inside,
/// after Mosquitto is up.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(false).await;
            })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(true).await;
            })*
        }
    };
}

on_both!(
    upstream_is_stored_once_and_strangers_are_acknowledged,
    a_message_not_stored_is_not_acknowledged_and_comes_again,
    a_command_goes_down_on_the_external_broker,
    a_store_query_is_answered_through_the_external_broker,
    a_dead_replicas_session_is_adopted_drained_and_ended,
    a_large_upstream_message_is_stored,
);

/// Mosquitto on a free port (anonymous: the cloud's user and the nodes'
/// credentials on the broker are not this test's subject), stopped on
/// drop.
struct Mosquitto {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mosquitto() -> Option<Mosquitto> {
    if Command::new("mosquitto")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!("skipped: mosquitto is not installed (apt-get install mosquitto)");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_inflight_messages 100\nmax_queued_messages 10000\n"
        ),
    )
    .expect("conf");
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mosquitto");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "mosquitto did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Mosquitto {
        child,
        port,
        _dir: dir,
    })
}

/// A cloud in external mode on `broker`.
async fn external(postgres: bool, broker: &Mosquitto) -> Option<Harness> {
    let port = broker.port;
    let h = harness_with(postgres, |c| {
        c.mqtt.mode = MqttMode::External;
        c.mqtt.external.url = format!("mqtt://127.0.0.1:{port}");
        c.mqtt.external.adopt_after = verge_duration::HumanDuration(Duration::from_secs(3));
        c.mqtt.external.adopted_session_expiry = ADOPTED_EXPIRY;
    })
    .await?;
    until(&h, "the consumer connected", |m| {
        metric(m, "verge_cloud_external_connected") == Some(1)
    })
    .await;
    Some(h)
}

async fn metrics(h: &Harness) -> String {
    let (s, v) = h.call(Method::GET, "/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    v.as_str().unwrap_or_default().to_owned()
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Wait (up to [`WAIT`]) until `done` holds of the cloud's metrics.
async fn until(h: &Harness, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = metrics(h).await;
        if done(&m) {
            return m;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}:\n{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stored(h: &Harness, node: &str) -> (i64, i64) {
    let pool = h.db().await;
    let n: (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COUNT(DISTINCT verge_id) FROM messages WHERE node_id = $1",
    )
    .bind(node)
    .fetch_one(&pool)
    .await
    .expect("count");
    pool.close().await;
    n
}

async fn until_stored(h: &Harness, node: &str, want: i64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n = stored(h, node).await;
        if n.0 >= want {
            assert_eq!(n, (want, want), "stored exactly once");
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {n:?} of {want} stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An MQTT 5 client on the broker; its event loop is polled by a task
/// that forwards incoming publishes.
struct Client {
    client: AsyncClient,
    rx: tokio::sync::mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Publish>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn client(broker: &Mosquitto, o: impl FnOnce(&mut MqttOptions), id: &str) -> Client {
    let mut opts = MqttOptions::new(id, "127.0.0.1", broker.port);
    o(&mut opts);
    let (client, el) = AsyncClient::new(opts, 1000);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(pump(el, tx));
    Client { client, rx, task }
}

async fn pump(
    mut el: EventLoop,
    tx: tokio::sync::mpsc::UnboundedSender<rumqttc::v5::mqttbytes::v5::Publish>,
) {
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if tx.send(p).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Publish upstream as a node's bridge does: a `verge-id` and the
/// `verge-time` it queued the message at, both repeated by a resend (on
/// PostgreSQL the duplicate key includes that time: crate `telemetry`).
async fn up(c: &Client, node: &str, verge_id: &str, body: &str) {
    static QUEUED_MS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let queued = QUEUED_MS.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64
    });
    let props = PublishProperties {
        user_properties: vec![
            ("verge-id".into(), verge_id.into()),
            ("verge-time".into(), queued.to_string()),
        ],
        ..Default::default()
    };
    c.client
        .publish_with_properties(
            format!("nodes/{node}/up/devices/d1/telemetry"),
            QoS::AtLeastOnce,
            false,
            body.to_owned(),
            props,
        )
        .await
        .expect("publish");
}

async fn upstream_is_stored_once_and_strangers_are_acknowledged(pg: bool) {
    let Some(broker) = mosquitto() else { return };
    let Some(h) = external(pg, &broker).await else {
        return;
    };
    let (node, _secret) = h.joined_node("edge-x").await;
    let n = client(&broker, |_| {}, &format!("verge-node-{node}"));
    for i in 0..50 {
        up(&n, &node, &format!("v{i}"), &format!("{{\"i\":{i}}}")).await;
    }
    // A resend of one of them, and a node the cloud does not know.
    up(&n, &node, "v7", "{\"i\":7}").await;
    up(&n, "ghost", "g1", "{}").await;
    until_stored(&h, &node, 50).await;
    let m = until(&h, "the stranger's message was refused", |m| {
        metric(m, "verge_cloud_ingest_refused_total") == Some(1)
    })
    .await;
    // Refused and acknowledged: no reconnect to have it resent forever.
    assert_eq!(
        metric(&m, "verge_cloud_external_connection_losses_total"),
        Some(0),
        "{m}"
    );
    assert_eq!(
        h.count("SELECT COUNT(*) FROM messages WHERE node_id = 'ghost'")
            .await,
        0
    );
}

async fn a_large_upstream_message_is_stored(pg: bool) {
    let Some(broker) = mosquitto() else { return };
    let Some(h) = external(pg, &broker).await else {
        return;
    };
    let (node, _secret) = h.joined_node("edge-big").await;
    let n = client(&broker, |_| {}, &format!("verge-node-{node}"));
    // 64 KiB: over rumqttc's default limit of 10 KiB for incoming packets.
    let body = format!("{{\"blob\":\"{}\"}}", "x".repeat(64 * 1024));
    up(&n, &node, "big1", &body).await;
    up(&n, &node, "small1", "{\"i\":1}").await;
    until_stored(&h, &node, 2).await;
    let m = metrics(&h).await;
    assert_eq!(
        metric(&m, "verge_cloud_external_connection_losses_total"),
        Some(0),
        "{m}"
    );
}

async fn a_message_not_stored_is_not_acknowledged_and_comes_again(pg: bool) {
    let Some(broker) = mosquitto() else { return };
    let Some(h) = external(pg, &broker).await else {
        return;
    };
    let (node, _secret) = h.joined_node("edge-r").await;
    let n = client(&broker, |_| {}, &format!("verge-node-{node}"));
    up(&n, &node, "r0", "{}").await;
    until_stored(&h, &node, 1).await;
    // The table is away: the next message cannot be stored.
    let pool = h.db().await;
    sqlx::query("ALTER TABLE messages RENAME TO messages_away")
        .execute(&pool)
        .await
        .expect("rename");
    up(&n, &node, "r1", "{}").await;
    // (`/metrics` counts the table too: the window is a plain wait.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    sqlx::query("ALTER TABLE messages_away RENAME TO messages")
        .execute(&pool)
        .await
        .expect("rename back");
    pool.close().await;
    // Not acknowledged, so the broker sends it again on the resumed
    // session, and it is stored then.
    until_stored(&h, &node, 2).await;
    let m = until(&h, "the consumer is connected again", |m| {
        metric(m, "verge_cloud_external_connected") == Some(1)
    })
    .await;
    // It got there by dropping the connection, not by acknowledging.
    assert!(
        metric(&m, "verge_cloud_external_connection_losses_total").unwrap_or(0) >= 1,
        "{m}"
    );
    assert!(
        metric(&m, "verge_cloud_ingest_refused_total").unwrap_or(0) >= 1,
        "{m}"
    );
}

/// Embedded mode, two replicas on one PostgreSQL: a node connected to
/// replica A's endpoint is not sent to by replica B (B cannot reach it),
/// and A delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_replicas_send_only_to_nodes_connected_to_them() {
    let Some(b) = common::harness_on(true).await else {
        return;
    };
    let served_b = common::serve(&b).await;
    let (node, secret) = b.joined_node("edge-e").await;
    b.device(&node, "d1").await;
    let (s, v) = b
        .status_as(&node, &secret, json!({"applied_version": 0}))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (s, v) = b
        .call(
            Method::POST,
            "/api/devices/d1/commands/reboot",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["command"]["id"].as_str().expect("id").to_owned();
    // B's dispatcher runs every second: the node is online but not
    // connected to B, so B claims nothing.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, c) = b
        .call(Method::GET, &format!("/api/commands/{id}"), None)
        .await;
    assert_eq!(
        c["attempts"], 0,
        "claimed by a replica the node is not connected to: {c}"
    );

    // Replica A on the same database; the node connects to A's endpoint.
    let a = b.replica(|_| {}).await;
    let served_a = common::serve(&a).await;
    let mut o = MqttOptions::new(
        format!("verge-node-{node}"),
        served_a.mqtt.ip().to_string(),
        served_a.mqtt.port(),
    );
    o.set_credentials(node.clone(), secret.clone());
    let (c, mut el) = AsyncClient::new(o, 64);
    c.subscribe(format!("nodes/{node}/down/#"), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let want = format!("nodes/{node}/down/$verge/commands/d1");
    let p = timeout(WAIT, async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == want.as_bytes() => {
                    return p;
                }
                Ok(_) => {}
                Err(e) => panic!("node link: {e:?}"),
            }
        }
    })
    .await
    .expect("replica A sent the command");
    let req: Value = serde_json::from_slice(&p.payload).expect("json");
    assert_eq!(req["id"], id.as_str());
    served_a.stop().await;
    served_b.stop().await;
}

/// A joined node with device `d1`, online (a heartbeat), whose client on
/// `broker` is subscribed to its downstream topics.
async fn listening_node(h: &Harness, broker: &Mosquitto, name: &str) -> (String, Client) {
    let (node, secret) = h.joined_node(name).await;
    h.device(&node, "d1").await;
    let n = client(broker, |_| {}, &format!("verge-node-{node}"));
    n.client
        .subscribe(format!("nodes/{node}/down/#"), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (s, v) = h
        .status_as(&node, &secret, json!({"applied_version": 0}))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    (node, n)
}

/// The next publish on `topic` `n` receives within [`WAIT`] (others are
/// skipped).
async fn next_on(
    n: &mut Client,
    topic: &str,
) -> Result<rumqttc::v5::mqttbytes::v5::Publish, tokio::time::error::Elapsed> {
    timeout(WAIT, async {
        loop {
            let p = n.rx.recv().await.expect("client running");
            if p.topic == topic.as_bytes() {
                return p;
            }
        }
    })
    .await
}

async fn a_store_query_is_answered_through_the_external_broker(pg: bool) {
    let Some(broker) = mosquitto() else { return };
    let Some(h) = external(pg, &broker).await else {
        return;
    };
    let (node, mut n) = listening_node(&h, &broker, "edge-q").await;
    let want = format!("nodes/{node}/down/$verge/store-query/d1");
    let node_side = async {
        let p = next_on(&mut n, &want)
            .await
            .expect("the store query came down through the broker");
        let q: Value = serde_json::from_slice(&p.payload).expect("json");
        let reply = json!({"id": q["id"], "device": "d1",
            "series": [{"metric": "temp", "points": [[1000, 20.5]]}]});
        let props = PublishProperties {
            user_properties: vec![("verge-id".into(), "reply-1".into())],
            ..Default::default()
        };
        n.client
            .publish_with_properties(
                format!("nodes/{node}/up/$verge/store-reply/d1"),
                QoS::AtLeastOnce,
                false,
                reply.to_string(),
                props,
            )
            .await
            .expect("publish");
    };
    let ((s, v), ()) = tokio::join!(
        h.call(
            Method::GET,
            "/api/devices/d1/history?metric=temp&from_ms=0&to_ms=2000",
            None
        ),
        node_side
    );
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["series"],
        json!([{"metric": "temp", "points": [[1000, 20.5]]}])
    );
    // Answered from this replica's plain subscription; the shared
    // consumer acknowledged and skipped it (it never reached the ingest).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = metrics(&h).await;
    assert_eq!(
        metric(&m, "verge_cloud_ingest_messages_total"),
        Some(0),
        "{m}"
    );
    assert_eq!(stored(&h, &node).await, (0, 0));
}

async fn a_command_goes_down_on_the_external_broker(pg: bool) {
    let Some(broker) = mosquitto() else { return };
    let Some(h) = external(pg, &broker).await else {
        return;
    };
    let (node, mut n) = listening_node(&h, &broker, "edge-c").await;
    let (s, v) = h
        .call(
            Method::POST,
            "/api/devices/d1/commands/reboot",
            Some(json!({"delay": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["command"]["id"].as_str().expect("id").to_owned();
    let want = format!("nodes/{node}/down/$verge/commands/d1");
    let p = next_on(&mut n, &want)
        .await
        .expect("the command came down through the broker");
    let req: Value = serde_json::from_slice(&p.payload).expect("json");
    assert_eq!(req["id"], id.as_str(), "{req}");
    assert_eq!(req["payload"], json!({"delay": 1}));
}

async fn a_dead_replicas_session_is_adopted_drained_and_ended(pg: bool) {
    let Some(broker) = mosquitto() else { return };
    let Some(h) = external(pg, &broker).await else {
        return;
    };
    let (node, _secret) = h.joined_node("edge-a").await;
    // Another "replica" in the share group that takes messages and dies
    // without acknowledging them: they stay in its session.
    let dead_id = "verge-cloud-deadbeef";
    let mut dead = client(
        &broker,
        |o| {
            o.set_clean_start(false);
            o.set_session_expiry_interval(Some(3600));
            o.set_manual_acks(true);
        },
        dead_id,
    );
    dead.client
        .subscribe("$share/verge-cloud/nodes/+/up/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = client(&broker, |_| {}, &format!("verge-node-{node}"));
    for i in 0..40 {
        up(&n, &node, &format!("a{i}"), &format!("{{\"i\":{i}}}")).await;
    }
    // The dead member got its share (round robin) and acknowledged none.
    let mut held = 0;
    loop {
        let wait = if held == 0 {
            WAIT
        } else {
            Duration::from_millis(500)
        };
        match timeout(wait, dead.rx.recv()).await {
            Ok(Some(_)) => held += 1,
            _ => break,
        }
    }
    assert!(held > 0, "the second member got no share");
    drop(dead);
    // Messages published while it is gone may be queued in its session too.
    for i in 40..60 {
        up(&n, &node, &format!("a{i}"), &format!("{{\"i\":{i}}}")).await;
    }
    let (stored_now, _) = stored(&h, &node).await;
    assert!(stored_now < 60, "the dead member's share is not stored yet");
    // Its record, as a replica that died a minute ago leaves it.
    let pool = h.db().await;
    let stale = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis(),
    )
    .expect("ms")
        - 60_000;
    sqlx::query(
        "INSERT INTO mqtt_consumer_sessions (client_id, replica, seen_ms) VALUES ($1, 'deadbeef', $2)",
    )
    .bind(dead_id)
    .bind(stale)
    .execute(&pool)
    .await
    .expect("record");
    until_stored(&h, &node, 60).await;
    let m = until(&h, "the session was adopted", |m| {
        metric(m, "verge_cloud_external_sessions_adopted_total") == Some(1)
    })
    .await;
    assert!(
        metric(&m, "verge_cloud_external_adopted_messages_total").unwrap_or(0) >= held,
        "{held} held:\n{m}"
    );
    let (done,): (Option<i64>,) =
        sqlx::query_as("SELECT done_ms FROM mqtt_consumer_sessions WHERE client_id = $1")
            .bind(dead_id)
            .fetch_one(&pool)
            .await
            .expect("record");
    assert!(done.is_some(), "the adopted session is marked done");
    pool.close().await;
    // Left with a short expiry (never wiped by a clean start): once it
    // has passed, the session is gone from the broker (the session's own
    // expiry, an hour, would keep it).
    tokio::time::sleep(ADOPTED_EXPIRY + Duration::from_secs(3)).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut o = MqttOptions::new(dead_id, "127.0.0.1", broker.port);
    o.set_clean_start(false);
    o.set_session_expiry_interval(Some(60));
    let (_c, mut el) = AsyncClient::new(o, 10);
    let probe = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a))) => {
                    let _ = tx.send(a.session_present);
                    return;
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    let present = timeout(WAIT, rx.recv()).await.expect("connack");
    probe.abort();
    assert_eq!(present, Some(false), "the adopted session was ended");
}

#[tokio::test]
async fn external_mode_opens_no_mqtt_port_and_serve_refuses_one() {
    let mut cfg = CloudConfig::default();
    cfg.http.bind = "127.0.0.1:0".parse().expect("addr");
    cfg.mqtt.mode = MqttMode::External;
    cfg.mqtt.external.url = "mqtt://127.0.0.1:1".into();
    let l = Listeners::bind(&cfg).await.expect("bind");
    let (_, mqtt, tls) = l.addrs().expect("addrs");
    assert_eq!((mqtt, tls), (None, None));
    l.complete(&mut cfg).expect("complete");
    // Nodes are told the external broker.
    assert_eq!(cfg.mqtt.public_url, "mqtt://127.0.0.1:1");

    let dir = tempfile::tempdir().expect("tempdir");
    cfg.cloud.data_dir = dir.path().join("data");
    let (cloud, _) = verge_cloud::Cloud::open(cfg).await.expect("open");
    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let mqtt = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let e = cloud
        .serve_with(http, Some(mqtt), None, async {})
        .await
        .expect_err("an MQTT socket in external mode");
    assert!(e.to_string().starts_with("mqtt.mode:"), "{e}");
}

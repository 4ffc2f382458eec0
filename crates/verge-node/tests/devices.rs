//! The node's device service against a real broker with rumqttc 5.0
//! devices: shadow get/update/delta/rejected and the retained document,
//! cloud shadows merged and answered, commands held, delivered with their
//! MQTT 5 properties, de-duplicated, replied, failed and expired (the
//! statuses read from the cache queue, as the bridge would send them), a
//! CoAP POST onto the shadow update topic, and the shadow kept across a
//! node restart with the HTTP API on it; and commands and shadows end to
//! end through a real cloud link.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/node.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS as Q;
use rumqttc::v5::mqttbytes::v5 as m5;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use verge_broker::auth::{Registry, hash_password};
use verge_broker::config::AclPolicy;
use verge_broker::listener::{BoundListener, Transport};
use verge_broker::{Authenticator, Broker, BrokerConfig, Message};
use verge_mqtt::QoS;
use verge_node::devices::{Devices, DevicesOptions};
use verge_protocol::device::{
    COMMAND_ID_PROPERTY, CommandRequest, Shadow, ShadowSync, ShadowUpdate, StoreQuery, StoreReply,
};
use verge_queue::{Entry, LaneConfig, Queue, QueueConfig, Record, WhenFull};

const WAIT: Duration = Duration::from_secs(10);
const PASSWORD: &str = "pw";

fn registry() -> Registry {
    let hash = hash_password(PASSWORD).expect("hash");
    let mut toml = String::new();
    for d in ["d1", "d2"] {
        toml.push_str(&format!(
            r##"
[[devices]]
username = "{d}"
password_hash = "{hash}"
[[devices.acl]]
permission = "allow"
action = "all"
topic = "devices/%u/#"
[[devices.acl]]
permission = "allow"
action = "all"
topic = "$shadow/%u/#"
[[devices.acl]]
permission = "deny"
action = "all"
topic = "#"
"##
        ));
    }
    toml::from_str(&toml).expect("registry")
}

/// A broker on loopback, a cache queue and the device service.
struct Rig {
    _dir: tempfile::TempDir,
    broker: Broker,
    addr: SocketAddr,
    queue: Queue,
    devices: Devices,
    /// The node's local store.
    store: Arc<verge_tsdb::Tsdb>,
    /// Everything read from the queue so far.
    up: Vec<(String, Value)>,
}

impl Rig {
    async fn start() -> Rig {
        Rig::start_with(QueueConfig::default()).await
    }

    /// With the cache queue `cfg` (its `dir` set here).
    async fn start_with(cfg: QueueConfig) -> Rig {
        let dir = tempfile::tempdir().expect("tmp");
        let auth = Authenticator::new(registry(), false, AclPolicy::Deny).expect("auth");
        let mut broker = Broker::start(BrokerConfig::default(), auth.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        broker.serve(BoundListener {
            listener,
            transport: Transport::Tcp,
        });
        let queue = Queue::open(QueueConfig {
            dir: dir.path().join("queue"),
            ..cfg
        })
        .expect("queue")
        .0;
        let store = Arc::new(
            verge_tsdb::Tsdb::open(verge_tsdb::TsdbConfig {
                dir: dir.path().join("store"),
                ..verge_tsdb::TsdbConfig::default()
            })
            .expect("store"),
        );
        let devices = Devices::start(
            broker.handle(),
            DevicesOptions {
                data_dir: dir.path().to_path_buf(),
                queue: Some(queue.clone()),
                auth,
                store: Some(store.clone()),
            },
        )
        .await
        .expect("devices");
        devices.set_cloud_devices(["d1".to_owned(), "d2".to_owned()]);
        Rig {
            _dir: dir,
            broker,
            addr,
            queue,
            devices,
            store,
            up: Vec::new(),
        }
    }

    /// Publish on the broker as the bridge does with a downstream message.
    async fn down(&self, topic: String, payload: Vec<u8>) {
        let mut m = Message::local(topic, payload, QoS::AtLeastOnce, false);
        m.origin = Arc::from(verge_bridge::ORIGIN);
        self.broker.handle().publish(m).await.expect("publish");
    }

    fn drain(&mut self) {
        let mut out: Vec<Entry> = Vec::new();
        while self.queue.try_next_batch(100, &mut out) > 0 {}
        for e in out {
            self.queue.ack(e.lane, e.seq);
            let v = serde_json::from_slice(&e.record.payload).expect("json upstream");
            self.up.push((e.record.topic.clone(), v));
        }
    }

    /// The upstream messages on `topic` so far, once `check` holds.
    async fn upstream(&mut self, topic: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.drain();
            let got: Vec<Value> = self
                .up
                .iter()
                .filter(|(t, _)| t == topic)
                .map(|(_, v)| v.clone())
                .collect();
            if check(&got) {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "upstream on {topic}: {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The states reported upstream for command `id`, once `n` are there.
    async fn states(&mut self, device: &str, id: &str, n: usize) -> Vec<String> {
        let topic = format!("$verge/command-status/{device}");
        let v = self
            .upstream(&topic, |v| v.iter().filter(|s| s["id"] == id).count() >= n)
            .await;
        v.iter()
            .filter(|s| s["id"] == id)
            .map(|s| s["state"].as_str().expect("state").to_owned())
            .collect()
    }
}

/// A rumqttc 5.0 device with its publishes in a channel.
struct Dev {
    client: rumqttc::v5::AsyncClient,
    pubs: mpsc::UnboundedReceiver<m5::Publish>,
    subacks: mpsc::UnboundedReceiver<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn device(addr: SocketAddr, user: &str, client_id: &str) -> Dev {
    let mut opts = rumqttc::v5::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    opts.set_credentials(user, PASSWORD);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = rumqttc::v5::AsyncClient::new(opts, 64);
    let (ptx, pubs) = mpsc::unbounded_channel();
    let (stx, subacks) = mpsc::unbounded_channel();
    let (ctx, mut connected) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(rumqttc::v5::Event::Incoming(m5::Packet::Publish(p))) => {
                    let _ = ptx.send(p);
                }
                Ok(rumqttc::v5::Event::Incoming(m5::Packet::ConnAck(_))) => {
                    let _ = ctx.send(());
                }
                Ok(rumqttc::v5::Event::Incoming(m5::Packet::SubAck(_))) => {
                    let _ = stx.send(());
                }
                Ok(_) => {}
                Err(e) => panic!("device connection: {e:?}"),
            }
        }
    });
    tokio::time::timeout(WAIT, connected.recv())
        .await
        .expect("connack in time");
    Dev {
        client,
        pubs,
        subacks,
        task,
    }
}

impl Dev {
    async fn sub(&mut self, filter: &str) {
        self.client
            .subscribe(filter, Q::AtLeastOnce)
            .await
            .expect("subscribe");
        tokio::time::timeout(WAIT, self.subacks.recv())
            .await
            .expect("suback in time");
    }

    async fn send(&self, topic: &str, payload: Value) {
        self.client
            .publish(topic, Q::AtLeastOnce, false, payload.to_string())
            .await
            .expect("publish");
    }

    /// The next publish on `topic` (others are skipped).
    async fn next_on(&mut self, topic: &str) -> (m5::Publish, Value) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let p = tokio::time::timeout_at(deadline, self.pubs.recv())
                .await
                .unwrap_or_else(|_| panic!("nothing on {topic} in time"))
                .expect("connection");
            if p.topic == topic.as_bytes() {
                let v = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                return (p, v);
            }
        }
    }

    /// The next publish on a topic starting with `prefix`.
    async fn next_on_prefix(&mut self, prefix: &str) -> (m5::Publish, Value) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let p = tokio::time::timeout_at(deadline, self.pubs.recv())
                .await
                .unwrap_or_else(|_| panic!("nothing on {prefix}… in time"))
                .expect("connection");
            if p.topic.starts_with(prefix.as_bytes()) {
                let v = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                return (p, v);
            }
        }
    }

    /// No publish on a topic starting with `prefix` for `d`.
    async fn nothing_on(&mut self, prefix: &str, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(p)) = tokio::time::timeout_at(deadline, self.pubs.recv()).await {
            assert!(
                !p.topic.starts_with(prefix.as_bytes()),
                "unexpected {:?}",
                String::from_utf8_lossy(&p.topic)
            );
        }
    }
}

fn now_ms() -> u64 {
    u64::try_from(verge_net::now_ms()).expect("time")
}

fn command(id: &str, device: &str, ttl_ms: u64) -> Vec<u8> {
    serde_json::to_vec(&CommandRequest {
        id: id.into(),
        device: device.into(),
        name: "blink".into(),
        payload: json!({"times": 3}),
        created_ms: now_ms(),
        expires_ms: now_ms() + ttl_ms,
    })
    .expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_get_update_delta_rejected_and_the_retained_document() {
    let mut rig = Rig::start().await;
    let mut d1 = device(rig.addr, "d1", "d1").await;
    d1.sub("$shadow/d1/#").await;

    d1.send("$shadow/d1/get", json!({"client_token": "g"}))
        .await;
    let (_, doc) = d1.next_on("$shadow/d1/get/accepted").await;
    assert_eq!(
        (doc["version"].clone(), doc["client_token"].clone()),
        (json!(0), json!("g"))
    );

    // an app's desired change: accepted, the delta, the retained document
    d1.send(
        "$shadow/d1/update",
        json!({"desired": {"led": "on", "rate": 5}, "client_token": "t1"}),
    )
    .await;
    let (_, acc) = d1.next_on("$shadow/d1/update/accepted").await;
    assert_eq!(acc["version"], json!(1));
    assert_eq!(acc["client_token"], json!("t1"));
    assert_eq!(acc["desired"], json!({"led": "on", "rate": 5}));
    let (_, delta) = d1.next_on("$shadow/d1/update/delta").await;
    assert_eq!(delta["state"], json!({"led": "on", "rate": 5}));
    assert_eq!(delta["version"], json!(1));
    let (_, document) = d1.next_on("$shadow/d1/document").await;
    assert_eq!(document["version"], json!(1));

    // a stale version is refused and changes nothing
    d1.send(
        "$shadow/d1/update",
        json!({"reported": {"led": "on"}, "version": 0, "client_token": "t2"}),
    )
    .await;
    let (_, rej) = d1.next_on("$shadow/d1/update/rejected").await;
    assert_eq!(rej["code"], json!("version_conflict"));
    assert_eq!(rej["version"], json!(1));
    assert_eq!(rej["client_token"], json!("t2"));
    // not an update at all
    d1.send("$shadow/d1/update", json!({"desire": {}})).await;
    let (_, rej) = d1.next_on("$shadow/d1/update/rejected").await;
    assert_eq!(rej["code"], json!("invalid_update"));

    // the device reports: accepted, no delta for led any more, and no
    // delta message (desired did not change)
    d1.send(
        "$shadow/d1/update",
        json!({"reported": {"led": "on"}, "version": 1}),
    )
    .await;
    let (_, acc) = d1.next_on("$shadow/d1/update/accepted").await;
    assert_eq!(acc["version"], json!(2));
    assert_eq!(acc["delta"], json!({"rate": 5}));
    let (_, document) = d1.next_on("$shadow/d1/document").await;
    assert_eq!(document["reported"], json!({"led": "on"}));
    d1.nothing_on("$shadow/d1/update/delta", Duration::from_millis(300))
        .await;

    // a late subscriber gets the retained document
    let mut d1b = device(rig.addr, "d1", "d1:viewer").await;
    d1b.sub("$shadow/d1/document").await;
    let (p, document) = d1b.next_on("$shadow/d1/document").await;
    assert!(p.retain, "the document is retained");
    assert_eq!(document["version"], json!(2));

    // each change went upstream as the node's whole copy
    let syncs = rig.upstream("$verge/shadow/d1", |v| v.len() >= 2).await;
    let last: ShadowSync = serde_json::from_value(syncs[1].clone()).expect("sync");
    assert_eq!(last.device, "d1");
    assert_eq!(last.shadow.version, 2);
    assert_eq!(last.shadow.reported["led"], json!("on"));
    assert_eq!(syncs.len(), 2, "refused updates send nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_shadow_is_merged_told_as_a_delta_and_answered_with_the_node_copy() {
    let mut rig = Rig::start().await;
    let mut d1 = device(rig.addr, "d1", "d1").await;
    d1.sub("$shadow/d1/#").await;
    d1.send("$shadow/d1/update", json!({"reported": {"rate": 1}}))
        .await;
    d1.next_on("$shadow/d1/update/accepted").await;

    let mut cloud = Shadow::default();
    cloud
        .apply(
            &serde_json::from_value::<ShadowUpdate>(json!({"desired": {"rate": 9}})).unwrap(),
            now_ms() + 1,
        )
        .unwrap();
    let sync = ShadowSync {
        device: "d1".into(),
        shadow: cloud.clone(),
    };
    // the same message from anyone but the bridge is ignored
    let mut fake = Message::local(
        "$verge/shadow/d1",
        serde_json::to_vec(&sync).unwrap(),
        QoS::AtLeastOnce,
        false,
    );
    fake.origin = Arc::from("$local");
    rig.broker.handle().publish(fake).await.unwrap();
    rig.down(
        "$verge/shadow/d1".into(),
        serde_json::to_vec(&sync).unwrap(),
    )
    .await;
    let (_, delta) = d1.next_on("$shadow/d1/update/delta").await;
    assert_eq!(delta["state"], json!({"rate": 9}));
    let syncs = rig.upstream("$verge/shadow/d1", |v| v.len() >= 2).await;
    let answer: ShadowSync = serde_json::from_value(syncs[1].clone()).unwrap();
    assert_eq!(answer.shadow.desired["rate"], json!(9));
    assert_eq!(answer.shadow.reported["rate"], json!(1));
    assert!(cloud.covered_by(&answer.shadow));
    // the same copy again changes nothing but is answered again
    rig.down(
        "$verge/shadow/d1".into(),
        serde_json::to_vec(&sync).unwrap(),
    )
    .await;
    let syncs = rig.upstream("$verge/shadow/d1", |v| v.len() >= 3).await;
    assert_eq!(syncs[2], syncs[1]);
    d1.nothing_on("$shadow/d1/update/delta", Duration::from_millis(300))
        .await;
    assert_eq!(
        rig.upstream("$verge/shadow/d1", |_| true).await.len(),
        3,
        "the fake was ignored"
    );
    assert!(
        rig.devices
            .stats()
            .ignored
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_delivered_with_properties_deduplicated_and_replied() {
    let mut rig = Rig::start().await;
    let mut d1 = device(rig.addr, "d1", "d1").await;
    d1.sub("devices/d1/commands/#").await;
    rig.down("$verge/commands/d1".into(), command("c1", "d1", 60_000))
        .await;
    let (p, payload) = d1.next_on("devices/d1/commands/blink/c1").await;
    assert_eq!(payload, json!({"times": 3}));
    let props = p.properties.expect("5.0 properties");
    assert_eq!(
        props.response_topic.as_deref(),
        Some("devices/d1/replies/c1")
    );
    assert_eq!(props.correlation_data, Some(Bytes::from_static(b"c1")));
    assert!(
        props
            .user_properties
            .contains(&(COMMAND_ID_PROPERTY.to_owned(), "c1".to_owned()))
    );
    assert_eq!(rig.states("d1", "c1", 2).await, ["sent", "delivered"]);

    // the cloud resends it (it had not seen `sent`): acknowledged, not run again
    rig.down("$verge/commands/d1".into(), command("c1", "d1", 60_000))
        .await;
    assert_eq!(
        rig.states("d1", "c1", 3).await,
        ["sent", "delivered", "sent"]
    );
    d1.nothing_on("devices/d1/commands/", Duration::from_millis(500))
        .await;

    // a new command is handed over alone (c1, unanswered, is not sent again)
    rig.down("$verge/commands/d1".into(), command("c1b", "d1", 60_000))
        .await;
    let (p, _) = d1.next_on_prefix("devices/d1/commands/").await;
    assert_eq!(p.topic, "devices/d1/commands/blink/c1b".as_bytes());
    d1.nothing_on("devices/d1/commands/", Duration::from_millis(300))
        .await;

    // the reply, on the response topic
    d1.send("devices/d1/replies/c1", json!({"ok": true})).await;
    let states = rig.states("d1", "c1", 4).await;
    assert_eq!(states[3], "replied");
    let all = rig.upstream("$verge/command-status/d1", |_| true).await;
    let replied = all.iter().find(|s| s["state"] == "replied").unwrap();
    assert_eq!(replied["reply"], json!({"ok": true}));
    assert_eq!(
        rig.devices.counts().await.1,
        1,
        "c1 dropped from the store, c1b still held"
    );

    // a failure, with its reason; a text reply stays text
    rig.down("$verge/commands/d1".into(), command("c2", "d1", 60_000))
        .await;
    d1.next_on("devices/d1/commands/blink/c2").await;
    d1.client
        .publish(
            "devices/d1/replies/c2/failed",
            Q::AtLeastOnce,
            false,
            "no led",
        )
        .await
        .unwrap();
    let states = rig.states("d1", "c2", 3).await;
    assert_eq!(states, ["sent", "delivered", "failed"]);
    let all = rig.upstream("$verge/command-status/d1", |_| true).await;
    let failed = all.iter().find(|s| s["state"] == "failed").unwrap();
    assert_eq!(failed["error"], json!("no led"));

    // an unknown device's command fails; a reply for no held command is ignored
    rig.down("$verge/commands/d9".into(), command("c3", "d9", 60_000))
        .await;
    let states = rig.states("d9", "c3", 1).await;
    assert_eq!(states, ["failed"]);
    d1.send("devices/d1/replies/nope", json!(1)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        rig.upstream("$verge/command-status/d1", |_| true)
            .await
            .iter()
            .all(|s| s["id"] != "nope")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_for_an_offline_device_wait_for_it_and_expire() {
    let mut rig = Rig::start().await;
    rig.down("$verge/commands/d2".into(), command("late", "d2", 60_000))
        .await;
    rig.down("$verge/commands/d2".into(), command("short", "d2", 300))
        .await;
    assert_eq!(rig.states("d2", "late", 1).await, ["sent"]);
    assert_eq!(rig.states("d2", "short", 2).await, ["sent", "expired"]);
    assert_eq!(rig.devices.counts().await.1, 1);

    // it connects (clean session) and subscribes: it gets what waits
    let mut d2 = device(rig.addr, "d2", "d2").await;
    d2.sub("devices/d2/commands/#").await;
    let (p, _) = d2.next_on("devices/d2/commands/blink/late").await;
    assert_eq!(
        p.properties.and_then(|p| p.response_topic).as_deref(),
        Some("devices/d2/replies/late")
    );
    assert_eq!(rig.states("d2", "late", 2).await, ["sent", "delivered"]);
    d2.nothing_on(
        "devices/d2/commands/blink/short",
        Duration::from_millis(300),
    )
    .await;
    // unanswered, it comes again at the next connection (at least once)
    drop(d2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut d2 = device(rig.addr, "d2", "d2").await;
    d2.sub("devices/d2/commands/#").await;
    d2.next_on("devices/d2/commands/blink/late").await;
    d2.send("devices/d2/replies/late", json!("done")).await;
    assert_eq!(rig.states("d2", "late", 3).await[2], "replied");
    assert_eq!(
        rig.states("d2", "late", 3).await.len(),
        3,
        "the second hand-over is not a second `delivered`"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_holds_commands_across_a_restart_of_the_service() {
    let mut rig = Rig::start().await;
    rig.down("$verge/commands/d1".into(), command("kept", "d1", 60_000))
        .await;
    assert_eq!(rig.states("d1", "kept", 1).await, ["sent"]);
    rig.devices.stop().await;
    let auth = Authenticator::new(registry(), false, AclPolicy::Deny).unwrap();
    let devices = Devices::start(
        rig.broker.handle(),
        DevicesOptions {
            data_dir: rig._dir.path().to_path_buf(),
            queue: Some(rig.queue.clone()),
            auth,
            store: None,
        },
    )
    .await
    .unwrap();
    devices.set_cloud_devices(["d1".to_owned()]);
    rig.devices = devices;
    assert_eq!(rig.devices.counts().await.1, 1);
    let mut d1 = device(rig.addr, "d1", "d1").await;
    d1.sub("devices/d1/commands/#").await;
    d1.next_on("devices/d1/commands/blink/kept").await;
    // a resend after the restart is still known
    rig.down("$verge/commands/d1".into(), command("kept", "d1", 60_000))
        .await;
    assert_eq!(
        rig.states("d1", "kept", 3).await,
        ["sent", "delivered", "sent"]
    );
}

/// A store query published as the bridge would is answered upstream with
/// the stored numeric points; one not from the bridge is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_query_from_the_cloud_is_answered_with_the_stored_points() {
    let mut rig = Rig::start().await;
    let t0 = verge_net::now_ms() - 10_000;
    let points: Vec<verge_tsdb::Point> = (0..4)
        .map(|i| verge_tsdb::Point {
            device: "d1".into(),
            metric: "temp".into(),
            time_ms: t0 + i * 1000,
            value: verge_tsdb::Value::Number(20.0 + i as f64),
        })
        .collect();
    rig.store.write(&points).unwrap();
    let query = |id: &str| {
        serde_json::to_vec(&StoreQuery {
            id: id.into(),
            device: "d1".into(),
            metric: None,
            from_ms: u64::try_from(t0).unwrap(),
            to_ms: u64::try_from(t0 + 60_000).unwrap(),
            bucket_ms: None,
            limit: 100,
        })
        .unwrap()
    };
    // not from the bridge: ignored
    rig_publish(&rig.broker, "$verge/store-query/d1", query("forged")).await;
    rig.down("$verge/store-query/d1".into(), query("q1")).await;
    let replies = rig
        .upstream("$verge/store-reply/d1", |v| !v.is_empty())
        .await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    let reply: StoreReply = serde_json::from_value(replies[0].clone()).unwrap();
    assert_eq!(reply.id, "q1");
    assert_eq!(reply.error, None);
    assert!(!reply.truncated);
    assert_eq!(reply.series.len(), 1);
    assert_eq!(reply.series[0].metric, "temp");
    let t0 = u64::try_from(t0).unwrap();
    assert_eq!(
        reply.series[0].points,
        [
            (t0, 20.0),
            (t0 + 1000, 21.0),
            (t0 + 2000, 22.0),
            (t0 + 3000, 23.0)
        ]
    );
    assert!(
        rig.devices
            .stats()
            .ignored
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

/// A CoAP request (confirmable, token = message id) and its answer.
async fn coap(
    addr: SocketAddr,
    code: verge_coap::Code,
    path: &str,
    payload: &[u8],
    mid: u16,
) -> verge_coap::CoapMessage {
    use verge_coap::{CoapMessage, MsgType, option};
    let mut m = CoapMessage::new(MsgType::Con, code, mid, mid.to_be_bytes().to_vec());
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        m.push_option(option::URI_PATH, seg.as_bytes().to_vec());
    }
    for q in query.split('&').filter(|s| !s.is_empty()) {
        m.push_option(option::URI_QUERY, q.as_bytes().to_vec());
    }
    m.payload = payload.to_vec();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&m.encode(), addr).await.unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, _) = tokio::time::timeout(WAIT, sock.recv_from(&mut buf))
        .await
        .expect("a coap answer")
        .unwrap();
    CoapMessage::decode(&buf[..n]).expect("coap")
}

fn devices_file(dir: &std::path::Path) -> std::path::PathBuf {
    let hash = hash_password(PASSWORD).expect("hash");
    let path = dir.join("devices.toml");
    std::fs::write(
        &path,
        format!(
            r##"
[[devices]]
username = "d1"
password_hash = "{hash}"
[[devices.acl]]
permission = "allow"
action = "all"
topic = "devices/%u/#"
[[devices.acl]]
permission = "allow"
action = "all"
topic = "$shadow/%u/#"
[[devices.acl]]
permission = "deny"
action = "all"
topic = "#"
"##
        ),
    )
    .unwrap();
    path
}

/// A whole node: a shadow changed over CoAP (POST onto the update topic)
/// and over the node's HTTP API (version checked, `reported` refused),
/// the device told the delta, and all of it kept across a restart (the
/// document retained again for MQTT and CoAP readers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_keeps_shadows_across_a_restart_over_coap_mqtt_and_http() {
    use verge_coap::Code;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = devices_file(dir.path());
    let extra = format!(
        "[broker]\ndevices_file = {:?}\n[coap]\nenabled = true\nbind = \"127.0.0.1:0\"\n",
        file.to_str().unwrap()
    );
    let node = support::start(support::config(&data, &extra), None).await;
    let coap_addr = node.coap.expect("coap");
    let creds = format!("u=d1&p={PASSWORD}");
    let r = coap(
        coap_addr,
        Code::POST,
        &format!("/ps/$shadow/d1/update?{creds}"),
        br#"{"desired": {"mode": "eco"}}"#,
        1,
    )
    .await;
    assert_eq!(r.code, Code::CHANGED);
    let deadline = tokio::time::Instant::now() + WAIT;
    let doc = loop {
        let r = coap(
            coap_addr,
            Code::GET,
            &format!("/ps/$shadow/d1/document?{creds}"),
            b"",
            2,
        )
        .await;
        if r.code == Code::CONTENT {
            break serde_json::from_slice::<Value>(&r.payload).unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no document: {:?}",
            r.code
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(doc["desired"], json!({"mode": "eco"}));
    assert_eq!(doc["version"], json!(1));

    let mut d1 = device(node.mqtt.unwrap(), "d1", "d1").await;
    d1.sub("$shadow/d1/update/delta").await;
    let (st, v) = node.call("GET", "/api/devices/d1/shadow", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["version"].clone(), v["delta"].clone()),
        (json!(1), json!({"mode": "eco"}))
    );
    let (st, v) = node
        .call(
            "PATCH",
            "/api/devices/d1/shadow",
            Some(json!({"desired": {"mode": "boost"}, "version": 0})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].clone()),
        (409, json!("version_conflict")),
        "{v}"
    );
    let (st, v) = node
        .call(
            "PATCH",
            "/api/devices/d1/shadow",
            Some(json!({"reported": {"mode": "x"}})),
        )
        .await;
    assert_eq!(
        (st, v["error"]["code"].clone()),
        (400, json!("invalid_update")),
        "{v}"
    );
    let (st, v) = node.call("GET", "/api/devices/..%2Fx/shadow", None).await;
    assert_eq!(st, 400, "{v}");
    let (st, v) = node
        .call(
            "PATCH",
            "/api/devices/d1/shadow",
            Some(json!({"desired": {"mode": "boost"}, "version": 1})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["version"], json!(2));
    let (_, delta) = d1.next_on("$shadow/d1/update/delta").await;
    assert_eq!(delta["state"], json!({"mode": "boost"}));
    drop(d1);
    node.stop().await;

    let node = support::start(support::config(&data, &extra), None).await;
    let (st, v) = node.call("GET", "/api/devices/d1/shadow", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["version"].clone(), v["desired"].clone()),
        (json!(2), json!({"mode": "boost"}))
    );
    let mut d1 = device(node.mqtt.unwrap(), "d1", "d1").await;
    d1.sub("$shadow/d1/document").await;
    let (p, doc) = d1.next_on("$shadow/d1/document").await;
    assert!(p.retain);
    assert_eq!(doc["version"], json!(2));
    let r = coap(
        node.coap.unwrap(),
        Code::GET,
        &format!("/ps/$shadow/d1/document?{creds}"),
        b"",
        3,
    )
    .await;
    assert_eq!(r.code, Code::CONTENT);

    // the service's counters on /metrics
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (st, body) =
            verge_agent::http::request("GET", &format!("{}/metrics", node.url), None, None, WAIT)
                .await
                .unwrap();
        let text = String::from_utf8_lossy(&body).into_owned();
        if st == 200 && text.contains("verge_devices_shadows 1\n") {
            assert!(
                text.contains("verge_devices_shadow_requests_total"),
                "{text}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no device metrics: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(d1);
    node.stop().await;
}

/// A cloud-managed node reports its cloud devices' sessions and its
/// broker addresses in the heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_lists_cloud_device_sessions_and_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cloud = support::Cloud::start().await;
    let node = support::start(support::config(&data, ""), Some(cloud.link(&data))).await;
    let hash = hash_password(PASSWORD).unwrap();
    cloud.send(|d| {
        d.devices = vec![verge_protocol::DeviceEntry {
            id: "d1".into(),
            password_hash: hash.clone(),
        }];
    });
    let mqtt = node.mqtt.unwrap();
    let endpoint = format!("mqtt://{mqtt}");
    cloud.report(|r| r.endpoints.contains(&endpoint)).await;
    // the device can connect once the revision is applied
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, v) = node.call("GET", "/api/cloud", None).await;
        if v["applied_version"] == json!(1) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not applied: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let d1 = device(mqtt, "d1", "d1:sensor").await;
    let r = cloud
        .report(|r| r.devices.iter().any(|s| s.device == "d1" && s.connected))
        .await;
    let s = r.devices.iter().find(|s| s.device == "d1").unwrap();
    assert_eq!(
        (s.client_id.as_str(), s.transport.as_str()),
        ("d1:sensor", "mqtt")
    );
    assert!(s.since_ms > 0);
    drop(d1);
    cloud
        .report(|r| r.devices.iter().any(|s| s.device == "d1" && !s.connected))
        .await;
    node.stop().await;
}

/// A device's shadow changed before the cloud listed it stays local, and
/// goes up once, when the cloud lists the device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_newly_listed_by_the_cloud_has_its_shadow_sent_up_once() {
    let mut rig = Rig::start().await;
    let up: ShadowUpdate = serde_json::from_value(json!({"desired": {"x": 1}})).unwrap();
    let doc = rig.devices.update_shadow("d3", &up).await.unwrap();
    assert_eq!(doc.version, 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rig.upstream("$verge/shadow/d3", |_| true).await.is_empty());
    let listed = ["d1", "d2", "d3"].map(String::from);
    rig.devices.set_cloud_devices(listed.clone());
    let syncs = rig.upstream("$verge/shadow/d3", |v| !v.is_empty()).await;
    assert_eq!(syncs[0]["shadow"]["desired"], json!({"x": 1}));
    rig.devices.set_cloud_devices(listed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rig.upstream("$verge/shadow/d3", |_| true).await.len(), 1);
    assert!(
        rig.upstream("$verge/shadow/d1", |_| true).await.is_empty(),
        "d1 has no shadow"
    );
}

/// End to end through a real cloud link: the cloud (a broker standing in
/// for the cloud's MQTT endpoint) sends a command down on
/// `nodes/{n}/down/$verge/commands/{d}`; the device gets it and replies;
/// the statuses and the device's shadow come up on
/// `nodes/{n}/up/$verge/…` with a `verge-id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_shadows_travel_through_the_cloud_link() {
    use verge_broker::config::ClientIdBinding;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // the cloud's MQTT endpoint, knowing the node by its credentials
    let hash = hash_password(support::SECRET).unwrap();
    let registry: Registry = toml::from_str(&format!(
        "[[devices]]\nusername = {:?}\npassword_hash = {hash:?}\n",
        support::NODE_ID
    ))
    .unwrap();
    let auth = Authenticator::new(registry, false, AclPolicy::Allow).unwrap();
    let mut cloud_mqtt = Broker::start(
        BrokerConfig {
            client_id_binding: ClientIdBinding::Off,
            ..BrokerConfig::default()
        },
        auth,
    );
    let mut up = cloud_mqtt
        .handle()
        .subscribe("nodes/+/up/#", 1024)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    cloud_mqtt.serve(BoundListener {
        listener,
        transport: Transport::Tcp,
    });
    let cloud = support::Cloud::start().await;
    let mut link = cloud.link(&data);
    link.creds.mqtt_url = format!("mqtt://127.0.0.1:{port}");
    let node = support::start(support::config(&data, ""), Some(link)).await;
    let device_hash = hash_password(PASSWORD).unwrap();
    cloud.send(|d| {
        d.devices = vec![verge_protocol::DeviceEntry {
            id: "d1".into(),
            password_hash: device_hash.clone(),
        }];
    });
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, v) = node.call("GET", "/api/cloud", None).await;
        if v["applied_version"] == json!(1) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not applied: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut d1 = device(node.mqtt.unwrap(), "d1", "d1").await;
    d1.sub("devices/d1/commands/#").await;
    d1.sub("$shadow/d1/#").await;

    // the cloud resends until the node has it (the link may still be
    // subscribing); the node de-duplicates by id
    let down = format!("nodes/{}/down/$verge/commands/d1", support::NODE_ID);
    let deadline = tokio::time::Instant::now() + WAIT;
    let got = loop {
        rig_publish(&cloud_mqtt, &down, command("e2e", "d1", 60_000)).await;
        if let Ok(Some(p)) = tokio::time::timeout(Duration::from_millis(300), d1.pubs.recv()).await
            && p.topic.starts_with(b"devices/d1/commands/")
        {
            break p;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no command came down"
        );
    };
    assert_eq!(got.topic, "devices/d1/commands/blink/e2e".as_bytes());
    let reply_to = got.properties.and_then(|p| p.response_topic).unwrap();
    d1.send(&reply_to, json!({"blinked": 3})).await;
    d1.send("$shadow/d1/update", json!({"reported": {"led": "off"}}))
        .await;

    // what came up
    let status_topic = format!("nodes/{}/up/$verge/command-status/d1", support::NODE_ID);
    let shadow_topic = format!("nodes/{}/up/$verge/shadow/d1", support::NODE_ID);
    let (mut states, mut shadow) = (Vec::<String>::new(), None::<ShadowSync>);
    let deadline = tokio::time::Instant::now() + WAIT;
    while !(states.contains(&"replied".to_owned()) && shadow.is_some()) {
        let m = tokio::time::timeout_at(deadline, up.recv())
            .await
            .unwrap_or_else(|_| panic!("upstream so far: {states:?} {shadow:?}"))
            .unwrap();
        assert!(
            m.properties
                .user_properties
                .iter()
                .any(|(k, _)| k == verge_protocol::topics::VERGE_ID_PROPERTY),
            "every upstream message has a verge-id"
        );
        if *m.topic == *status_topic {
            let v: Value = serde_json::from_slice(&m.payload).unwrap();
            if v["state"] == "replied" {
                assert_eq!(v["reply"], json!({"blinked": 3}));
            }
            states.push(v["state"].as_str().unwrap().to_owned());
        } else if *m.topic == *shadow_topic {
            shadow = Some(serde_json::from_slice(&m.payload).unwrap());
        }
    }
    assert_eq!(&states[..2], ["sent", "delivered"]);
    assert!(
        states[2..states.len() - 1].iter().all(|s| s == "sent"),
        "resends are only re-acknowledged: {states:?}"
    );
    assert_eq!(shadow.unwrap().shadow.reported["led"], json!("off"));
    drop(d1);
    node.stop().await;
    cloud_mqtt.shutdown().await;
}

async fn rig_publish(b: &Broker, topic: &str, payload: Vec<u8>) {
    b.handle()
        .publish(Message::local(topic, payload, QoS::AtLeastOnce, false))
        .await
        .unwrap();
}

fn request(id: &str, device: &str, name: &str, payload: Value) -> Vec<u8> {
    serde_json::to_vec(&CommandRequest {
        id: id.into(),
        device: device.into(),
        name: name.into(),
        payload,
        created_ms: now_ms(),
        expires_ms: now_ms() + 60_000,
    })
    .expect("json")
}

/// The status of command `id` in state `state`.
async fn status_of(rig: &mut Rig, device: &str, id: &str, state: &str) -> Value {
    let topic = format!("$verge/command-status/{device}");
    let all = rig
        .upstream(&topic, |v| {
            v.iter().any(|s| s["id"] == id && s["state"] == state)
        })
        .await;
    all.into_iter()
        .find(|s| s["id"] == id && s["state"] == state)
        .expect("status")
}

/// A device a protocol driver reads has no MQTT session: its commands are
/// handed to the driver in process (`write` only), and the driver's answer
/// on the reply topics ends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_for_a_driver_device_are_answered_by_its_driver() {
    let mut rig = Rig::start().await;
    let sim = verge_drivers::modbus::sim::Sim::start().await.expect("sim");
    let drivers = Arc::new(verge_drivers::Drivers::new(rig.broker.handle()));
    let cfg: verge_drivers::DriverConfig = serde_json::from_value(json!({
        "name": "plc", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": sim.addr().port(),
        "timeout": "300ms", "retry": {"initial": "50ms", "max": "200ms"},
        "devices": [{"name": "plc1", "poll": "100ms", "points": [
            {"name": "set", "address": "hr:1", "access": "rw"},
            {"name": "ro", "address": "hr:2"}]}],
    }))
    .expect("driver config");
    let mut telemetry = rig
        .broker
        .handle()
        .subscribe("devices/plc1/telemetry", 256)
        .await
        .expect("sub");
    drivers.create(cfg).await.expect("driver");
    let d = drivers.clone();
    rig.devices.set_driver_devices(move |x| d.owns_device(x));
    rig.devices
        .set_cloud_devices(["d1", "d2", "plc1"].map(String::from));
    loop {
        let m = tokio::time::timeout(WAIT, telemetry.recv())
            .await
            .expect("telemetry in time")
            .expect("broker");
        let v: Value = serde_json::from_slice(&m.payload).expect("json");
        if v["quality"]["set"] == "good" {
            break;
        }
    }

    let down = |id: &str, name: &str, payload: Value| {
        (
            "$verge/commands/plc1".to_owned(),
            request(id, "plc1", name, payload),
        )
    };
    let (t, p) = down("w1", "write", json!({"point": "set", "value": 42}));
    rig.down(t, p).await;
    assert_eq!(
        rig.states("plc1", "w1", 3).await,
        ["sent", "delivered", "replied"]
    );
    let replied = status_of(&mut rig, "plc1", "w1", "replied").await;
    assert_eq!(replied["reply"]["ok"], json!(true), "{replied}");
    assert_eq!(replied["reply"]["value"].as_f64(), Some(42.0), "{replied}");
    assert_eq!(sim.holding(1, 1), [42]);

    // the driver's refusal, and a command a driver does not take
    let (t, p) = down("w2", "write", json!({"point": "ro", "value": 1}));
    rig.down(t, p).await;
    let failed = status_of(&mut rig, "plc1", "w2", "failed").await;
    assert!(
        failed["error"].as_str().unwrap().contains("read-only"),
        "{failed}"
    );
    let (t, p) = down("r1", "reboot", json!({}));
    rig.down(t, p).await;
    let failed = status_of(&mut rig, "plc1", "r1", "failed").await;
    assert!(
        failed["error"].as_str().unwrap().contains("`write`"),
        "{failed}"
    );
    assert_eq!(rig.devices.counts().await.1, 0);
    drivers.shutdown().await;
}

/// A device the cloud no longer lists is forgotten: its held commands end
/// `failed`, its shadow (file and retained document) is gone, and a device
/// created again with its name starts clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_the_cloud_removes_is_forgotten_with_its_commands_and_shadow() {
    let mut rig = Rig::start().await;
    rig.down("$verge/commands/d2".into(), command("held", "d2", 60_000))
        .await;
    assert_eq!(rig.states("d2", "held", 1).await, ["sent"]);
    let up: ShadowUpdate = serde_json::from_value(json!({"desired": {"x": 1}})).unwrap();
    rig.devices.update_shadow("d2", &up).await.unwrap();
    let file = rig._dir.path().join("devices/shadows/d2.json");
    assert!(file.exists());
    {
        let mut d2 = device(rig.addr, "d2", "d2").await;
        d2.sub("$shadow/d2/document").await;
        d2.next_on("$shadow/d2/document").await;
    }

    rig.devices.set_cloud_devices(["d1".to_owned()]);
    let failed = status_of(&mut rig, "d2", "held", "failed").await;
    assert_eq!(failed["error"], json!("device removed"));
    let deadline = tokio::time::Instant::now() + WAIT;
    while file.exists() {
        assert!(tokio::time::Instant::now() < deadline, "shadow file kept");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rig.devices.counts().await, (0, 0));
    assert_eq!(rig.devices.shadow("d2").await.unwrap().version, 0);

    // created again: no retained document, no command, an empty shadow
    rig.devices
        .set_cloud_devices(["d1", "d2"].map(String::from));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut d2 = device(rig.addr, "d2", "d2").await;
    d2.sub("$shadow/d2/document").await;
    d2.sub("devices/d2/commands/#").await;
    d2.nothing_on("", Duration::from_millis(1500)).await;
}

/// What the cache queue refused (a full lane that rejects) is not lost: the
/// reply's status and the device's shadow leave once the lane has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_and_shadows_the_queue_refused_leave_when_it_has_room() {
    let mut rig = Rig::start_with(QueueConfig {
        segment_bytes: 4096,
        lanes: vec![LaneConfig {
            name: "alarms".into(),
            priority: 1,
            max_bytes: 4096,
            max_age: None,
            when_full: WhenFull::Reject,
        }],
        ..QueueConfig::default()
    })
    .await;
    let mut d1 = device(rig.addr, "d1", "d1").await;
    d1.sub("devices/d1/commands/#").await;
    d1.sub("$shadow/d1/update/accepted").await;
    rig.down("$verge/commands/d1".into(), command("c1", "d1", 60_000))
        .await;
    d1.next_on("devices/d1/commands/blink/c1").await;
    assert_eq!(rig.states("d1", "c1", 2).await, ["sent", "delivered"]);

    // the lane is full
    let filler = Record {
        topic: "filler".into(),
        payload: Bytes::from(serde_json::to_vec(&"x".repeat(700)).unwrap()),
        time_ms: 0,
    };
    let mut n = 0;
    while rig
        .queue
        .append("alarms", vec![filler.clone()])
        .await
        .is_ok()
    {
        n += 1;
        assert!(n < 100, "the lane never filled");
    }
    let failed = || {
        rig.devices
            .stats()
            .upstream_failed
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = failed();
    d1.send("devices/d1/replies/c1", json!({"ok": true})).await;
    d1.send("$shadow/d1/update", json!({"reported": {"t": 21}}))
        .await;
    d1.next_on("$shadow/d1/update/accepted").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while failed() < before + 2 {
        assert!(tokio::time::Instant::now() < deadline, "no refusal");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // room again (the fillers read and acknowledged): both leave
    assert_eq!(rig.states("d1", "c1", 3).await[2], "replied");
    rig.upstream("$verge/shadow/d1", |v| {
        v.iter().any(|s| s["shadow"]["reported"]["t"] == 21)
    })
    .await;
}

/// A store that cannot be written does not acknowledge: a command is not
/// reported `sent` (the cloud resends it), a shadow update is answered
/// `rejected` with `storage_error` and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_cannot_be_written_refuses_instead_of_acknowledging() {
    let mut rig = Rig::start().await;
    let dir = rig._dir.path().join("devices");
    // A directory where the file goes: no write replaces it (root's
    // neither).
    std::fs::create_dir_all(dir.join("commands.json/x")).unwrap();
    rig.down("$verge/commands/d2".into(), command("c1", "d2", 60_000))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        rig.upstream("$verge/command-status/d2", |_| true)
            .await
            .is_empty(),
        "nothing reported for a command not stored"
    );
    assert_eq!(rig.devices.counts().await.1, 0);
    std::fs::remove_dir_all(dir.join("commands.json")).unwrap();
    rig.down("$verge/commands/d2".into(), command("c1", "d2", 60_000))
        .await;
    assert_eq!(rig.states("d2", "c1", 1).await, ["sent"]);

    // the shadows' directory is a file now
    std::fs::remove_dir_all(dir.join("shadows")).unwrap();
    std::fs::write(dir.join("shadows"), b"").unwrap();
    let mut d1 = device(rig.addr, "d1", "d1").await;
    d1.sub("$shadow/d1/#").await;
    d1.send(
        "$shadow/d1/update",
        json!({"reported": {"t": 1}, "client_token": "s"}),
    )
    .await;
    let (_, rej) = d1.next_on("$shadow/d1/update/rejected").await;
    assert_eq!(rej["code"], json!("storage_error"), "{rej}");
    assert_eq!(rej["client_token"], json!("s"));
    assert_eq!(rig.devices.shadow("d1").await.unwrap().version, 0);
    let up: ShadowUpdate = serde_json::from_value(json!({"desired": {"x": 1}})).unwrap();
    let e = rig.devices.update_shadow("d1", &up).await.unwrap_err();
    assert_eq!(e.code(), "storage_error");
}

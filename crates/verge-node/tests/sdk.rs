//! The Rust device SDK (`verge-device`) end to end against a whole
//! cloud-managed node and its own device service: the cloud (an HTTP
//! desired state naming the devices, and a broker standing in for the
//! cloud's MQTT endpoint) sends commands down through the node's real
//! cloud link, and the statuses, shadows and telemetry are read where the
//! cache queue delivers them, `nodes/{n}/up/…` on that broker. Covered:
//! the shadow (get, reported kept by the node, a stale version refused, a
//! desired change made through the node's HTTP API reaching `on_delta`
//! with exactly the differing keys), commands (run once, replied, failed,
//! held for an offline device and delivered when it connects), and a node
//! restart on the same data dir and port (the offline buffer's bound and
//! drop counter, subscriptions made again, no reading the stopping node
//! acknowledged lost).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/node.rs"]
mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use verge_broker::auth::{Registry, hash_password};
use verge_broker::config::{AclPolicy, ClientIdBinding};
use verge_broker::listener::{BoundListener, Transport};
use verge_broker::{Authenticator, Broker, BrokerConfig, LocalSubscription, Message};
use verge_device::{Command, Connection, Device, DeviceConfig, Error};
use verge_mqtt::QoS;
use verge_protocol::device::CommandRequest;

const WAIT: Duration = support::WAIT;
/// The devices' secret.
const SECRET: &str = "device-secret";

/// A cloud (desired state over HTTP, MQTT endpoint as a broker) and a
/// node managed by it, which can be stopped and started again on the
/// same data dir and MQTT port.
struct Env {
    _dir: tempfile::TempDir,
    data: PathBuf,
    cloud: support::Cloud,
    cloud_mqtt: Broker,
    cloud_port: u16,
    /// Everything the node sends up (`nodes/+/up/#`).
    up: LocalSubscription,
    /// What was read from `up` so far: local topic and JSON payload.
    seen: Vec<(String, Value)>,
    node: Option<support::Running>,
    /// The node's MQTT address (kept across restarts).
    mqtt: SocketAddr,
}

impl Env {
    /// The cloud lists `devices` (secret [`SECRET`]); the node started
    /// and its devices applied.
    async fn start(devices: &[&str]) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
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
        let up = cloud_mqtt
            .handle()
            .subscribe("nodes/+/up/#", 4096)
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cloud_port = listener.local_addr().unwrap().port();
        cloud_mqtt.serve(BoundListener {
            listener,
            transport: Transport::Tcp,
        });
        let cloud = support::Cloud::start().await;
        let device_hash = hash_password(SECRET).unwrap();
        cloud.send(|d| {
            d.devices = devices
                .iter()
                .map(|id| verge_protocol::DeviceEntry {
                    id: (*id).to_owned(),
                    password_hash: device_hash.clone(),
                })
                .collect();
        });
        let mut env = Env {
            _dir: dir,
            data,
            cloud,
            cloud_mqtt,
            cloud_port,
            up,
            seen: Vec::new(),
            node: None,
            mqtt: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        env.start_node().await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (_, v) = env.node().call("GET", "/api/cloud", None).await;
            if v["applied_version"] == json!(1) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "not applied: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        env
    }

    fn node(&self) -> &support::Running {
        self.node.as_ref().expect("the node runs")
    }

    /// Start the node: on any MQTT port the first time, on the same one
    /// after.
    async fn start_node(&mut self) {
        assert!(self.node.is_none(), "the node runs already");
        let mut cfg = support::config(&self.data, "");
        cfg.broker.listeners.tcp.bind = self.mqtt;
        let mut link = self.cloud.link(&self.data);
        link.creds.mqtt_url = format!("mqtt://127.0.0.1:{}", self.cloud_port);
        let node = support::start(cfg, Some(link)).await;
        self.mqtt = node.mqtt.expect("mqtt");
        self.node = Some(node);
    }

    async fn stop_node(&mut self) {
        self.node.take().expect("the node runs").stop().await;
    }

    fn sdk_config(&self, device: &str) -> DeviceConfig {
        let mut c = DeviceConfig::new(format!("mqtt://{}", self.mqtt), device, SECRET);
        c.reconnect_min = Duration::from_millis(100);
        c.reconnect_max = Duration::from_millis(500);
        c.request_timeout = Duration::from_secs(5);
        c
    }

    async fn connect(&self, device: &str) -> Device {
        Device::connect(self.sdk_config(device))
            .await
            .expect("the SDK connects")
    }

    /// Read what came up so far (waiting up to `wait` for the first).
    async fn drain(&mut self, wait: Duration) {
        let prefix = format!("nodes/{}/up/", support::NODE_ID);
        let mut wait = wait;
        while let Ok(Some(m)) = tokio::time::timeout(wait, self.up.recv()).await {
            wait = Duration::ZERO;
            let topic = m.topic.strip_prefix(&prefix).expect("nodes/{n}/up/…");
            let v = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
            self.seen.push((topic.to_owned(), v));
        }
    }

    /// The upstream messages on the local `topic` so far, once `check`
    /// holds.
    async fn upstream(&mut self, topic: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.drain(Duration::from_millis(50)).await;
            let got: Vec<Value> = self
                .seen
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
        }
    }

    /// The statuses of command `id` the node reported so far, once one is
    /// `state`.
    async fn statuses(&mut self, device: &str, id: &str, state: &str) -> Vec<Value> {
        let topic = format!("$verge/command-status/{device}");
        let of =
            |v: &[Value]| -> Vec<Value> { v.iter().filter(|s| s["id"] == id).cloned().collect() };
        let all = self
            .upstream(&topic, |v| of(v).iter().any(|s| s["state"] == state))
            .await;
        of(&all)
    }

    /// The states of command `id` reported so far, in order.
    async fn states(&mut self, device: &str, id: &str, state: &str) -> Vec<String> {
        self.statuses(device, id, state)
            .await
            .iter()
            .map(|s| s["state"].as_str().expect("state").to_owned())
            .collect()
    }

    /// Send a command down as the cloud does (on
    /// `nodes/{n}/down/$verge/commands/{d}`, QoS 1), again every half
    /// second until the node reports it `sent` (once more than before).
    async fn command(&mut self, device: &str, id: &str, name: &str, payload: Value) {
        let now = u64::try_from(verge_net::now_ms()).unwrap();
        let body = serde_json::to_vec(&CommandRequest {
            id: id.into(),
            device: device.into(),
            name: name.into(),
            payload,
            created_ms: now,
            expires_ms: now + 600_000,
        })
        .unwrap();
        let down = format!("nodes/{}/down/$verge/commands/{device}", support::NODE_ID);
        let topic = format!("$verge/command-status/{device}");
        let sent = |seen: &[(String, Value)]| {
            seen.iter()
                .filter(|(t, s)| *t == topic && s["id"] == id && s["state"] == "sent")
                .count()
        };
        self.drain(Duration::ZERO).await;
        let before = sent(&self.seen);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            self.cloud_mqtt
                .handle()
                .publish(Message::local(
                    down.clone(),
                    body.clone(),
                    QoS::AtLeastOnce,
                    false,
                ))
                .await
                .unwrap();
            let until = tokio::time::Instant::now() + Duration::from_millis(500);
            while tokio::time::Instant::now() < until {
                self.drain(Duration::from_millis(50)).await;
                if sent(&self.seen) > before {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the node never took command {id}"
            );
        }
    }
}

fn map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Shadow: a fresh device's document, `reported` accepted and kept by
/// the node, a stale `desired` refused, a desired change made through the
/// node's HTTP API told to `on_delta` with exactly the differing keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_reads_and_updates_its_shadow_on_the_node_and_is_told_deltas() {
    let mut env = Env::start(&["d1"]).await;
    let d1 = env.connect("d1").await;
    let (delta_tx, mut deltas) = mpsc::unbounded_channel();
    d1.on_delta(move |d| {
        let tx = delta_tx.clone();
        async move {
            let _ = tx.send(d);
        }
    })
    .await
    .unwrap();

    let fresh = d1.get_shadow().await.unwrap();
    assert_eq!(fresh.version, 0);
    assert!(fresh.desired.is_empty() && fresh.reported.is_empty());

    let doc = d1
        .update_reported(map(json!({"temp": 21.5, "fw": "1.0"})))
        .await
        .unwrap();
    assert_eq!(doc.version, 1);
    assert_eq!(
        Value::Object(doc.reported.clone()),
        json!({"temp": 21.5, "fw": "1.0"})
    );
    let (st, v) = env.node().call("GET", "/api/devices/d1/shadow", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["version"], json!(1));
    assert_eq!(v["reported"], json!({"temp": 21.5, "fw": "1.0"}));
    // a device the cloud manages: the node's copy went up
    let syncs = env.upstream("$verge/shadow/d1", |v| !v.is_empty()).await;
    assert_eq!(
        syncs.last().unwrap()["shadow"]["reported"],
        json!({"temp": 21.5, "fw": "1.0"})
    );

    match d1.update_desired(map(json!({"led": "on"})), Some(0)).await {
        Err(Error::ShadowRejected { code, .. }) => assert_eq!(code, "version_conflict"),
        other => panic!("a stale version: {other:?}"),
    }
    let (_, v) = env.node().call("GET", "/api/devices/d1/shadow", None).await;
    assert_eq!(
        (v["version"].clone(), v["desired"].clone()),
        (json!(1), json!({})),
        "the refused update changed nothing"
    );
    let doc = d1
        .update_desired(map(json!({"mode": "eco"})), Some(1))
        .await
        .unwrap();
    assert_eq!(doc.version, 2);
    let delta = tokio::time::timeout(WAIT, deltas.recv())
        .await
        .expect("the SDK's own desired change is a delta too")
        .unwrap();
    assert_eq!(Value::Object(delta.state), json!({"mode": "eco"}));

    // a local app's change: `temp` is already reported, `led` and `fw`
    // differ
    let (st, v) = env
        .node()
        .call(
            "PATCH",
            "/api/devices/d1/shadow",
            Some(json!({"desired": {"temp": 21.5, "led": "on", "fw": "1.1"}, "version": 2})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let delta = tokio::time::timeout(WAIT, deltas.recv())
        .await
        .expect("the delta reaches on_delta")
        .unwrap();
    assert_eq!(
        Value::Object(delta.state),
        json!({"led": "on", "fw": "1.1", "mode": "eco"}),
        "exactly the desired keys that differ from reported"
    );
    assert_eq!(delta.version, 3);
    let shadow = d1.get_shadow().await.unwrap();
    assert_eq!(shadow.version, 3);
    assert_eq!(shadow.desired["led"], json!("on"));
    d1.close().await.unwrap();
    env.stop_node().await;
}

/// What a command handler saw.
type Seen = mpsc::UnboundedSender<Command>;

async fn handlers(device: &Device, seen: Seen, runs: Arc<AtomicUsize>) {
    let (s, r) = (seen.clone(), runs.clone());
    device
        .on_command("blink", move |cmd| {
            let (seen, runs) = (s.clone(), r.clone());
            async move {
                runs.fetch_add(1, SeqCst);
                let times = cmd.payload["times"].clone();
                let _ = seen.send(cmd);
                Ok(json!({"blinked": times}))
            }
        })
        .await
        .unwrap();
    device
        .on_command("explode", move |cmd| {
            let (seen, runs) = (seen.clone(), runs.clone());
            async move {
                runs.fetch_add(1, SeqCst);
                let _ = seen.send(cmd);
                Err("no fuse".to_owned())
            }
        })
        .await
        .unwrap();
}

/// Commands from the cloud through the node: run once by the SDK's
/// handler and reported `replied` with the reply, a handler's error
/// reported `failed` with its text, and a command for a device that is
/// not connected held by the node and run when the SDK connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_through_the_node_are_run_once_replied_failed_and_held_for_the_sdk() {
    let mut env = Env::start(&["d1", "d2"]).await;
    let d1 = env.connect("d1").await;
    let (tx, mut seen) = mpsc::unbounded_channel();
    let runs = Arc::new(AtomicUsize::new(0));
    handlers(&d1, tx.clone(), runs.clone()).await;

    env.command("d1", "c1", "blink", json!({"times": 3})).await;
    let statuses = env.statuses("d1", "c1", "replied").await;
    let replied = statuses.iter().find(|s| s["state"] == "replied").unwrap();
    assert_eq!(replied["reply"], json!({"blinked": 3}));
    let cmd = seen.try_recv().expect("the handler ran");
    assert_eq!(
        (cmd.id.as_str(), cmd.name.as_str(), cmd.payload.clone()),
        ("c1", "blink", json!({"times": 3}))
    );
    // besides `sent` (once more for each resend that crossed the node's
    // answer): delivered once, then replied
    let states: Vec<&str> = statuses
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(states[0], "sent", "{states:?}");
    let moves: Vec<&str> = states.iter().copied().filter(|s| *s != "sent").collect();
    assert_eq!(moves, ["delivered", "replied"], "{states:?}");

    env.command("d1", "c2", "explode", json!(null)).await;
    let statuses = env.statuses("d1", "c2", "failed").await;
    let failed = statuses.iter().find(|s| s["state"] == "failed").unwrap();
    assert_eq!(failed["error"], json!("no fuse"));
    assert_eq!(seen.try_recv().expect("the handler ran").id, "c2");

    // the cloud resending c1 after its reply: the node knows the id (it
    // answers `sent` again), the handler does not run again
    env.command("d1", "c1", "blink", json!({"times": 3})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(runs.load(SeqCst), 2, "c1 and c2, each once");
    assert!(seen.try_recv().is_err());
    assert_eq!(d1.stats().commands, 2);

    // d2 is not connected: the node holds its command
    env.command("d2", "c3", "blink", json!({"times": 1})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.drain(Duration::from_millis(50)).await;
    assert!(
        !env.seen
            .iter()
            .any(|(_, s)| s["id"] == "c3" && s["state"] != "sent"),
        "held, not delivered: {:?}",
        env.seen
    );
    let d2 = env.connect("d2").await;
    let (tx2, mut seen2) = mpsc::unbounded_channel();
    let runs2 = Arc::new(AtomicUsize::new(0));
    handlers(&d2, tx2, runs2.clone()).await;
    let states = env.states("d2", "c3", "replied").await;
    let moves: Vec<&String> = states.iter().filter(|s| *s != "sent").collect();
    assert_eq!(moves, ["delivered", "replied"], "{states:?}");
    let cmd = seen2.try_recv().expect("d2's handler ran");
    assert_eq!(
        (cmd.id.as_str(), cmd.payload.clone()),
        ("c3", json!({"times": 1}))
    );
    assert_eq!(runs2.load(SeqCst), 1);
    assert_eq!(runs.load(SeqCst), 2, "not d1's");
    d1.close().await.unwrap();
    d2.close().await.unwrap();
    env.stop_node().await;
}

/// The node stops and starts again on the same data dir and port. While
/// it is down the SDK buffers what it sends: a command's reply, readings,
/// a shadow update; the buffer keeps the newest `offline_buffer` of them,
/// the older ones dropped and counted. Once the node is back: the kept
/// readings arrive, the update is applied and answered, the dropped reply
/// is made again from the SDK's memory when the node hands the unanswered
/// command over again (its handler does not run twice), and the SDK's
/// subscriptions are made again (a new command is run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_rides_out_a_node_restart_with_a_bounded_offline_buffer() {
    const BUFFER: usize = 5;
    const WHILE_DOWN: u64 = 8;
    let mut env = Env::start(&["d1"]).await;
    let mut cfg = env.sdk_config("d1");
    cfg.offline_buffer = BUFFER;
    cfg.request_timeout = WAIT;
    let d1 = Device::connect(cfg).await.unwrap();
    let (tx, mut seen) = mpsc::unbounded_channel();
    let runs = Arc::new(AtomicUsize::new(0));
    handlers(&d1, tx, runs.clone()).await;
    // a handler that finishes when told
    let release = Arc::new(tokio::sync::Notify::new());
    let slow_runs = Arc::new(AtomicUsize::new(0));
    let (r, n) = (release.clone(), slow_runs.clone());
    d1.on_command("slow", move |_| {
        let (release, runs) = (r.clone(), n.clone());
        async move {
            runs.fetch_add(1, SeqCst);
            release.notified().await;
            Ok(json!("done late"))
        }
    })
    .await
    .unwrap();
    d1.update_reported(map(json!({"phase": "before"})))
        .await
        .unwrap();
    d1.send_telemetry(&json!({"n": 0})).await.unwrap();
    env.upstream("devices/d1/telemetry", |v| v.iter().any(|t| t["n"] == 0))
        .await;
    env.command("d1", "slow1", "slow", json!(null)).await;
    env.states("d1", "slow1", "delivered").await;
    wait_until("the slow handler runs", || slow_runs.load(SeqCst) == 1).await;
    wait_until("everything acknowledged", || d1.stats().waiting == 0).await;

    env.stop_node().await;
    let mut state = d1.connection();
    tokio::time::timeout(WAIT, state.wait_for(|c| *c != Connection::Connected))
        .await
        .expect("the SDK sees the node go")
        .unwrap();
    // the reply first (the oldest in the buffer), then the readings, then
    // a shadow update (the newest)
    release.notify_one();
    wait_until("the reply buffered", || d1.stats().waiting == 1).await;
    for n in 1..=WHILE_DOWN {
        d1.send_telemetry(&json!({"n": n})).await.unwrap();
    }
    let updater = d1.clone();
    let update = tokio::spawn(async move {
        updater
            .update_reported(map(json!({"phase": "after"})))
            .await
    });
    let sent = 1 + WHILE_DOWN + 1;
    let dropped = sent - BUFFER as u64;
    wait_until("the buffer's bound", || {
        let s = d1.stats();
        s.dropped == dropped && s.waiting == BUFFER
    })
    .await;
    assert!(!d1.is_connected());
    // the readings kept: the newest, less the update's place
    let kept: BTreeSet<u64> = (WHILE_DOWN - BUFFER as u64 + 2..=WHILE_DOWN).collect();
    assert_eq!(kept.len(), BUFFER - 1);

    env.start_node().await;
    tokio::time::timeout(WAIT, state.wait_for(|c| *c == Connection::Connected))
        .await
        .expect("the SDK reconnects")
        .unwrap();
    let doc = tokio::time::timeout(WAIT, update)
        .await
        .expect("the update answered")
        .unwrap()
        .expect("the update made while the node was down is applied");
    assert_eq!(doc.version, 2);
    assert_eq!(doc.reported["phase"], json!("after"));
    env.upstream("devices/d1/telemetry", |v| {
        kept.iter().all(|n| v.iter().any(|t| t["n"] == *n))
    })
    .await;
    wait_until("the buffer flushed", || d1.stats().waiting == 0).await;
    env.drain(Duration::from_millis(300)).await;
    let got: BTreeSet<u64> = env
        .seen
        .iter()
        .filter(|(t, _)| t == "devices/d1/telemetry")
        .filter_map(|(_, v)| v["n"].as_u64())
        .filter(|n| *n >= 1)
        .collect();
    assert_eq!(got, kept, "the newest readings, the oldest dropped");

    // the dropped reply: the node hands the command over again at the new
    // connection and the SDK answers from memory
    let statuses = env.statuses("d1", "slow1", "replied").await;
    let replied = statuses.iter().find(|s| s["state"] == "replied").unwrap();
    assert_eq!(replied["reply"], json!("done late"));
    assert_eq!(slow_runs.load(SeqCst), 1, "the handler ran once");
    let stats = d1.stats();
    assert_eq!(stats.dropped, dropped);
    assert!(stats.duplicate_commands >= 1, "{stats:?}");
    assert!(stats.connects >= 2, "{stats:?}");

    // subscriptions made again: a command after the restart is run
    env.command("d1", "after", "blink", json!({"times": 2}))
        .await;
    let statuses = env.statuses("d1", "after", "replied").await;
    let replied = statuses.iter().find(|s| s["state"] == "replied").unwrap();
    assert_eq!(replied["reply"], json!({"blinked": 2}));
    assert_eq!(seen.try_recv().expect("the handler ran").id, "after");
    assert_eq!(runs.load(SeqCst), 1);
    // and the node kept the shadow
    let shadow = d1.get_shadow().await.unwrap();
    assert_eq!(shadow.reported["phase"], json!("after"));
    assert_eq!(shadow.version, 2);
    d1.close().await.unwrap();
    env.stop_node().await;
}

/// Regression: a node stopping kept acknowledging its devices' publishes
/// after its cloud link's forwards had stopped (the broker was closed
/// last), so readings the SDK was told were taken were never queued and
/// lost. Now the node ends its clients' connections first: every reading
/// of a burst the node was stopped in the middle of arrives, the
/// acknowledged ones queued, the others sent again by the SDK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reading_acknowledged_while_the_node_stops_is_lost() {
    const N: u64 = 300;
    let mut env = Env::start(&["d1"]).await;
    let d1 = env.connect("d1").await;
    for n in 1..=N {
        d1.send_telemetry(&json!({"n": n})).await.unwrap();
    }
    // mid-burst
    wait_until("some acknowledged", || d1.stats().acked > 0).await;
    env.stop_node().await;
    let at_stop = d1.stats();
    env.start_node().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        env.drain(Duration::from_millis(100)).await;
        let got: BTreeSet<u64> = env
            .seen
            .iter()
            .filter(|(t, _)| t == "devices/d1/telemetry")
            .filter_map(|(_, v)| v["n"].as_u64())
            .collect();
        if got.len() as u64 == N {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let missing: Vec<u64> = (1..=N).filter(|n| !got.contains(n)).collect();
            panic!(
                "lost {missing:?}; at the stop {at_stop:?}, now {:?}",
                d1.stats()
            );
        }
    }
    wait_until("every reading acknowledged", || d1.stats().acked == N).await;
    d1.close().await.unwrap();
    env.stop_node().await;
}

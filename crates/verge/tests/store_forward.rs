//! Store-and-forward end to end with the real `verge` binary: a node whose
//! cloud is down takes 100,000 QoS 1 messages from an MQTT client and
//! queues them; the cloud (a Verge broker in this test process) comes up,
//! the node is killed with SIGKILL in the middle of the drain and started
//! again on the same data directory; every message arrives, exactly once
//! after de-duplication by `verge-id`, in order per lane.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use support::verge;
use tokio::net::TcpListener;
use verge_broker::{BoundListener, Broker, BrokerConfig, LocalSubscription, Transport};
use verge_mqtt::{Connect, Packet, Properties, Protocol, Publish, QoS, decode, encode};

const TELEMETRY: usize = 100_000;
const ALARMS: usize = 1_000;
const WAIT: Duration = Duration::from_secs(120);

/// A running node and the addresses its banner printed.
struct Node {
    child: Child,
    mqtt: String,
    http: String,
    /// The API's admin token, from the line of the banner naming its file.
    token: String,
}

fn start_node(config: &Path) -> Node {
    let mut child = verge()
        .args(["node", "--config", config.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (mut mqtt, mut http, mut token) = (None, None, None);
    while mqtt.is_none() || http.is_none() || token.is_none() {
        let line = lines.next().expect("banner line").expect("read");
        if let Some(file) = line.split("API token            in ").nth(1) {
            let file = file.split(" (").next().expect("file");
            token = Some(
                std::fs::read_to_string(file)
                    .expect("token file")
                    .trim()
                    .to_owned(),
            );
        }
        if let Some(a) = line.split("mqtt://").nth(1) {
            mqtt = Some(a.trim().to_owned());
        }
        if let Some(a) = line.split("http://").nth(1)
            && http.is_none()
        {
            http = Some(a.split('/').next().unwrap().to_owned());
        }
    }
    // Keep reading stdout so the node never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Node {
        child,
        mqtt: mqtt.unwrap(),
        http: http.unwrap(),
        token: token.unwrap(),
    }
}

/// `GET path` on the node's HTTP API, body as JSON.
fn get_json(node: &Node, path: &str) -> serde_json::Value {
    let mut s = TcpStream::connect(&node.http).expect("http connect");
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
        node.http, node.token
    )
    .expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read");
    let json = body.split("\r\n\r\n").nth(1).expect("body");
    serde_json::from_str(json).expect("json")
}

fn queue_depth(node: &Node) -> u64 {
    get_json(node, "/api/bridge")["queue"]["depth"]
        .as_u64()
        .expect("depth")
}

/// Publish `(topic, payload)` at QoS 1 over one MQTT 5 connection and wait
/// for every PUBACK.
fn publish_all(addr: &str, messages: &[(String, String)]) {
    let mut s = TcpStream::connect(addr).expect("mqtt connect");
    s.set_nodelay(true).expect("nodelay");
    let mut buf = BytesMut::new();
    let connect = Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 0,
        client_id: "loader".into(),
        username: None,
        password: None,
        will: None,
        properties: Properties::default(),
    };
    encode(&Packet::Connect(connect), Protocol::V5, &mut buf).expect("encode");
    s.write_all(&buf).expect("write");
    let mut rbuf = BytesMut::new();
    let next = |s: &mut TcpStream, rbuf: &mut BytesMut| loop {
        if let Some(p) = decode(rbuf, Protocol::V5, 1 << 20).expect("decode") {
            return p;
        }
        let mut chunk = [0u8; 65536];
        let n = s.read(&mut chunk).expect("read");
        assert!(n > 0, "node closed the connection");
        rbuf.extend_from_slice(&chunk[..n]);
    };
    assert!(matches!(next(&mut s, &mut rbuf), Packet::ConnAck(a) if a.reason_code == 0));
    for chunk in messages.chunks(500) {
        buf.clear();
        for (i, (topic, payload)) in chunk.iter().enumerate() {
            let p = Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: topic.clone(),
                packet_id: i as u16 + 1,
                properties: Properties::default(),
                payload: payload.clone().into(),
            };
            encode(&Packet::Publish(p), Protocol::V5, &mut buf).expect("encode");
        }
        s.write_all(&buf).expect("write");
        for _ in 0..chunk.len() {
            match next(&mut s, &mut rbuf) {
                Packet::PubAck(a) => assert!(a.reason_code < 0x80, "refused: {a:?}"),
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
    }
}

/// The cloud: a broker on `port` with an in-process subscriber attached
/// before the listener opens.
async fn cloud(port: u16) -> (Broker, LocalSubscription) {
    let cfg = BrokerConfig {
        allow_anonymous: true,
        ..BrokerConfig::default()
    };
    let mut b = Broker::start(cfg.clone(), Broker::authenticator(&cfg).expect("auth"));
    let sub = b
        .handle()
        .subscribe("nodes/+/up/#", 1 << 20)
        .await
        .expect("sub");
    let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
    b.serve(BoundListener {
        listener,
        transport: Transport::Tcp,
    });
    (b, sub)
}

#[derive(Default)]
struct Received {
    seen: HashSet<String>,
    lanes: HashMap<String, Vec<String>>,
    duplicates: usize,
}

impl Received {
    async fn collect(&mut self, sub: &mut LocalSubscription, n: usize) {
        let deadline = Instant::now() + WAIT;
        let mut buf = Vec::new();
        while self.seen.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = tokio::time::timeout(left, sub.recv_many(&mut buf, 4096))
                .await
                .unwrap_or_else(|_| panic!("only {} of {n} arrived", self.seen.len()));
            assert!(got > 0);
            for m in buf.drain(..) {
                let id = m
                    .properties
                    .user_properties
                    .iter()
                    .find(|(k, _)| k == "verge-id")
                    .map(|(_, v)| v.clone())
                    .expect("verge-id");
                if !self.seen.insert(id.clone()) {
                    self.duplicates += 1;
                    continue;
                }
                let lane = id.rsplit('/').nth(1).unwrap().to_owned();
                self.lanes
                    .entry(lane)
                    .or_default()
                    .push(String::from_utf8(m.payload.to_vec()).unwrap());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_the_drain_loses_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[node]
name = "edge-1"
data_dir = "{data}"

[broker]
allow_anonymous = true

[broker.listeners.tcp]
bind = "127.0.0.1:0"

[broker.listeners.ws]
enabled = false

[http]
bind = "127.0.0.1:0"

[coap]
bind = "127.0.0.1:0"

[store]
enabled = false

[bridge]
enabled = true
url = "mqtt://127.0.0.1:{port}"
reconnect_min = "50ms"
reconnect_max = "200ms"

[[bridge.forwards]]
filter = "devices/#"
lane = "telemetry"

[[bridge.forwards]]
filter = "alarms/#"
lane = "alarms"
"#,
            data = dir.path().join("data").display()
        ),
    )
    .expect("config");

    let mut node = start_node(&config);
    let mut messages: Vec<(String, String)> = Vec::with_capacity(TELEMETRY + ALARMS);
    for i in 0..TELEMETRY {
        messages.push((format!("devices/d{}/telemetry", i % 50), format!("t-{i}")));
        if i % 100 == 0 && i / 100 < ALARMS {
            messages.push((format!("alarms/d{}", i % 7), format!("a-{}", i / 100)));
        }
    }
    let mqtt = node.mqtt.clone();
    tokio::task::spawn_blocking(move || publish_all(&mqtt, &messages))
        .await
        .expect("publisher");
    // Every message is acknowledged by the node; wait until all are in
    // the queue (the forwards append them in batches).
    let deadline = Instant::now() + WAIT;
    while queue_depth(&node) < (TELEMETRY + ALARMS) as u64 {
        assert!(Instant::now() < deadline, "not everything was queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The cloud comes up; kill -9 the node a third of the way through.
    let (cloud, mut sub) = cloud(port).await;
    let mut got = Received::default();
    got.collect(&mut sub, (TELEMETRY + ALARMS) / 3).await;
    node.child.kill().expect("SIGKILL");
    node.child.wait().expect("reaped");
    let at_kill = got.seen.len();

    let node2 = start_node(&config);
    got.collect(&mut sub, TELEMETRY + ALARMS).await;
    eprintln!(
        "at kill: {at_kill} unique; duplicates after restart: {}",
        got.duplicates
    );
    let want: Vec<String> = (0..TELEMETRY).map(|i| format!("t-{i}")).collect();
    assert!(
        got.lanes["telemetry"] == want,
        "telemetry incomplete or out of order"
    );
    let want: Vec<String> = (0..ALARMS).map(|i| format!("a-{i}")).collect();
    assert!(
        got.lanes["alarms"] == want,
        "alarms incomplete or out of order"
    );

    let deadline = Instant::now() + WAIT;
    while queue_depth(&node2) > 0 {
        assert!(Instant::now() < deadline, "the queue did not empty");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut node2 = node2;
    let _ = Command::new("kill")
        .args(["-TERM", &node2.child.id().to_string()])
        .status();
    let _ = node2.child.wait();
    cloud.shutdown().await;
}

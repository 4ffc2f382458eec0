//! The SDK against the node's real broker, in-process on 127.0.0.1 with a
//! device registry: credentials, telemetry seen by a third-party client
//! (rumqttc), commands with replies and de-duplication, shadow requests
//! answered by a small in-test responder that follows the contract
//! (`$shadow/{d}/update` → `…/accepted|rejected` with the client token),
//! reconnects across a broker restart with the offline buffer, clean
//! close, and a fake node sending garbage. The end-to-end test with the
//! node's own device service is `crates/verge-node/tests/sdk.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5 as m5;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use verge_broker::auth::{Device as RegDevice, Registry, hash_password};
use verge_broker::config::AclPolicy;
use verge_broker::duration::HumanDuration;
use verge_broker::{
    Authenticator, BoundListener, Broker, BrokerConfig, LocalSubscription, Message, Transport,
};
use verge_device::{Connection, Device, DeviceConfig, Error};
use verge_protocol::device::{
    Shadow, ShadowError, ShadowRejection, ShadowTopic, ShadowUpdate, command_topic, reply_topic,
};

const WAIT: Duration = Duration::from_secs(10);
const SECRET: &str = "s3cret";

fn hash() -> String {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash_password(SECRET).expect("hash"))
        .clone()
}

/// A node broker with devices `d1` and `d2` (secret [`SECRET`]); anonymous
/// clients (the test's own observers) allowed; not serving yet.
fn start_broker() -> Broker {
    start_broker_with(&["d1", "d2"])
}

/// A node broker knowing only `devices`.
fn start_broker_with(devices: &[&str]) -> Broker {
    let cfg = BrokerConfig {
        allow_anonymous: true,
        sys_interval: HumanDuration(Duration::from_secs(0)),
        ..BrokerConfig::default()
    };
    let registry = Registry {
        acl: vec![],
        devices: devices
            .iter()
            .map(|d| RegDevice {
                username: (*d).into(),
                password_hash: Some(hash()),
                client_id: None,
                acl: vec![],
            })
            .collect(),
    };
    let auth = Authenticator::new(registry, true, AclPolicy::Allow).expect("auth");
    Broker::start(cfg, auth)
}

/// Serve MQTT over TCP on `addr` (port 0: any).
async fn serve(broker: &mut Broker, addr: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind(addr).await.expect("bind");
    let l = BoundListener {
        listener,
        transport: Transport::Tcp,
    };
    let addr = l.local_addr().expect("addr");
    broker.serve(l);
    addr
}

async fn broker() -> (Broker, SocketAddr) {
    let mut broker = start_broker();
    let addr = serve(&mut broker, "127.0.0.1:0".parse().expect("addr")).await;
    (broker, addr)
}

fn config(addr: SocketAddr, device: &str) -> DeviceConfig {
    let mut c = DeviceConfig::new(format!("mqtt://{addr}"), device, SECRET);
    c.reconnect_min = Duration::from_millis(50);
    c.reconnect_max = Duration::from_millis(200);
    c.request_timeout = Duration::from_secs(5);
    c
}

async fn next(sub: &mut LocalSubscription) -> Arc<Message> {
    timeout(WAIT, sub.recv())
        .await
        .expect("nothing within WAIT")
        .expect("broker gone")
}

fn json_of(b: &[u8]) -> Value {
    serde_json::from_slice(b).expect("json payload")
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A rumqttc 5.0 client whose event loop forwards publishes.
async fn rumqttc5(
    addr: SocketAddr,
    id: &str,
) -> (
    rumqttc::v5::AsyncClient,
    mpsc::UnboundedReceiver<m5::Publish>,
) {
    let opts = rumqttc::v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    let (client, mut el) = rumqttc::v5::AsyncClient::new(opts, 64);
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, mut ready) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(rumqttc::v5::Event::Incoming(m5::Packet::Publish(p))) => {
                    let _ = tx.send(p);
                }
                Ok(rumqttc::v5::Event::Incoming(m5::Packet::SubAck(_))) => {
                    let _ = ready_tx.send(());
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    client
        .subscribe("devices/#", Q5::AtLeastOnce)
        .await
        .expect("subscribe");
    timeout(WAIT, ready.recv())
        .await
        .expect("suback")
        .expect("loop");
    (client, rx)
}

async fn recv5(rx: &mut mpsc::UnboundedReceiver<m5::Publish>) -> m5::Publish {
    timeout(WAIT, rx.recv())
        .await
        .expect("nothing within WAIT")
        .expect("loop gone")
}

#[tokio::test]
async fn telemetry_and_events_reach_a_third_party_subscriber() {
    let (_broker, addr) = broker().await;
    let (_watcher, mut seen) = rumqttc5(addr, "watcher").await;
    let device = Device::connect(config(addr, "d1")).await.expect("connect");
    assert!(device.is_connected());
    assert_eq!(device.client_id(), "d1");
    device
        .send_telemetry(&json!({"temperature": 21.5}))
        .await
        .expect("telemetry");
    device
        .send_event("door", &json!({"open": true}))
        .await
        .expect("event");
    let t = recv5(&mut seen).await;
    assert_eq!(t.topic, "devices/d1/telemetry");
    assert_eq!(json_of(&t.payload), json!({"temperature": 21.5}));
    let e = recv5(&mut seen).await;
    assert_eq!(e.topic, "devices/d1/events/door");
    assert_eq!(json_of(&e.payload), json!({"open": true}));
    assert!(matches!(
        device.send_event("a/b", &json!(1)).await,
        Err(Error::Config { key: "kind", .. })
    ));
    eventually("both acknowledged", || device.stats().acked == 2).await;
    device.close().await.expect("close");
}

#[tokio::test]
async fn refused_credentials_and_an_unreachable_node_are_typed_errors() {
    let (_broker, addr) = broker().await;
    let mut wrong = config(addr, "d1");
    wrong.secret = "nope".into();
    match Device::connect(wrong).await {
        Err(
            e @ Error::Refused {
                reason_code: 0x86, ..
            },
        ) => assert!(!e.is_retryable()),
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("connected with a wrong secret"),
    }
    let mut other = config(addr, "d1");
    other.client_id = Some("d1:sim".into());
    let d = Device::connect(other)
        .await
        .expect("a client id under the device name");
    d.close().await.expect("close");
    // nothing listens there any more
    let free = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let free_addr = free.local_addr().expect("addr");
    drop(free);
    match Device::connect(config(free_addr, "d1")).await {
        Err(e @ Error::Io { .. }) => assert!(e.is_retryable()),
        Err(e) => panic!("expected an i/o error, got {e}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

#[tokio::test]
async fn commands_are_answered_with_correlation_and_duplicates_once() {
    let (_broker, addr) = broker().await;
    let (operator, mut seen) = rumqttc5(addr, "operator").await;
    let device = Device::connect(config(addr, "d1")).await.expect("connect");
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    device
        .on_command("reboot", move |cmd| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                Ok(json!({"rebooting": cmd.payload["delay"], "id": cmd.id}))
            }
        })
        .await
        .expect("handler");
    device
        .on_command("explode", |_| async { Err("not today".to_owned()) })
        .await
        .expect("handler");
    let send = |name: &str, id: &str, v5_reply: bool| {
        let props = m5::PublishProperties {
            response_topic: v5_reply.then(|| reply_topic("d1", id)),
            correlation_data: v5_reply.then(|| Bytes::from(id.to_owned())),
            ..Default::default()
        };
        let topic = command_topic("d1", name, id);
        let operator = operator.clone();
        async move {
            operator
                .publish_with_properties(topic, Q5::AtLeastOnce, false, r#"{"delay": 5}"#, props)
                .await
                .expect("publish");
        }
    };
    // the command itself comes back to the observer too: skip it
    let reply = async |seen: &mut mpsc::UnboundedReceiver<m5::Publish>| loop {
        let p = recv5(seen).await;
        if p.topic.starts_with(b"devices/d1/replies/") {
            return p;
        }
    };
    send("reboot", "c1", true).await;
    let first = reply(&mut seen).await;
    assert_eq!(first.topic, "devices/d1/replies/c1");
    assert_eq!(json_of(&first.payload), json!({"rebooting": 5, "id": "c1"}));
    let props = first.properties.clone().expect("5.0 properties");
    assert_eq!(props.correlation_data.as_deref(), Some(&b"c1"[..]));
    // delivered again (at least once): the same reply, the handler not run again
    send("reboot", "c1", true).await;
    let again = reply(&mut seen).await;
    assert_eq!(again.topic, first.topic);
    assert_eq!(again.payload, first.payload);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(device.stats().duplicate_commands, 1);
    // a 3.1.1-style command (no response topic): the reply topic convention
    send("reboot", "c2", false).await;
    let p = reply(&mut seen).await;
    assert_eq!(p.topic, "devices/d1/replies/c2");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    // a handler's error and a command without a handler: the failed topic
    send("explode", "c3", true).await;
    let p = reply(&mut seen).await;
    assert_eq!(p.topic, "devices/d1/replies/c3/failed");
    assert_eq!(&p.payload[..], b"not today");
    send("dance", "c4", false).await;
    let p = reply(&mut seen).await;
    assert_eq!(p.topic, "devices/d1/replies/c4/failed");
    assert_eq!(&p.payload[..], b"no handler for command `dance`");
    device.close().await.expect("close");
}

/// Answers `$shadow/d1/get` and `$shadow/d1/update` as the contract says,
/// echoing the client token; publishes a delta after a desired change.
async fn shadow_responder(broker: &Broker) {
    let h = broker.handle();
    let mut sub = h
        .subscribe_many(
            &[
                ShadowTopic::Get.topic("d1"),
                ShadowTopic::Update.topic("d1"),
            ],
            100,
        )
        .await
        .expect("subscribe");
    tokio::spawn(async move {
        let mut shadow = Shadow::default();
        let mut now = 1000;
        while let Some(m) = sub.recv().await {
            now += 1;
            let token = serde_json::from_slice::<Value>(&m.payload)
                .ok()
                .and_then(|v| v.get("client_token").cloned());
            let with_token = |mut v: Value| {
                if let (Some(t), Some(o)) = (&token, v.as_object_mut()) {
                    o.insert("client_token".into(), t.clone());
                }
                Bytes::from(serde_json::to_vec(&v).expect("json"))
            };
            let (topic, body) = if *m.topic == ShadowTopic::Get.topic("d1") {
                (
                    ShadowTopic::GetAccepted,
                    with_token(serde_json::to_value(&shadow).expect("json")),
                )
            } else {
                let applied = ShadowUpdate::parse(&m.payload).and_then(|u| {
                    shadow.apply(&u, now)?;
                    Ok(u)
                });
                match applied {
                    Ok(u) => {
                        if u.desired.is_some() && !shadow.delta().is_empty() {
                            let delta = serde_json::to_vec(&shadow.delta_message()).expect("json");
                            let _ = h
                                .publish(Message::local(
                                    ShadowTopic::Delta.topic("d1"),
                                    delta,
                                    verge_mqtt_qos1(),
                                    false,
                                ))
                                .await;
                        }
                        (
                            ShadowTopic::UpdateAccepted,
                            with_token(serde_json::to_value(&shadow).expect("json")),
                        )
                    }
                    Err(e) => (
                        ShadowTopic::UpdateRejected,
                        with_token(
                            serde_json::to_value(rejection(&e, shadow.version)).expect("json"),
                        ),
                    ),
                }
            };
            let _ = h
                .publish(Message::local(
                    topic.topic("d1"),
                    body,
                    verge_mqtt_qos1(),
                    false,
                ))
                .await;
        }
    });
}

fn rejection(e: &ShadowError, version: u64) -> ShadowRejection {
    ShadowRejection {
        code: e.code().into(),
        message: e.to_string(),
        version,
        client_token: None,
    }
}

fn verge_mqtt_qos1() -> verge_mqtt::QoS {
    verge_mqtt::QoS::AtLeastOnce
}

#[tokio::test]
async fn shadow_get_update_reject_and_delta() {
    let (broker, addr) = broker().await;
    shadow_responder(&broker).await;
    let device = Device::connect(config(addr, "d1")).await.expect("connect");
    let (delta_tx, mut deltas) = mpsc::unbounded_channel();
    device
        .on_delta(move |d| {
            let tx = delta_tx.clone();
            async move {
                let _ = tx.send(d);
            }
        })
        .await
        .expect("on_delta");
    let s = device.get_shadow().await.expect("get");
    assert_eq!(s.version, 0);
    let s = device
        .update_reported(
            json!({"interval_ms": 1000})
                .as_object()
                .expect("obj")
                .clone(),
        )
        .await
        .expect("report");
    assert_eq!(s.reported["interval_ms"], json!(1000));
    assert_eq!(s.version, 1);
    let s = device
        .update_desired(
            json!({"interval_ms": 250})
                .as_object()
                .expect("obj")
                .clone(),
            Some(1),
        )
        .await
        .expect("desire");
    assert_eq!(s.version, 2);
    let d = timeout(WAIT, deltas.recv())
        .await
        .expect("delta")
        .expect("open");
    assert_eq!(d.state["interval_ms"], json!(250));
    match device
        .update_desired(
            json!({"interval_ms": 9}).as_object().expect("obj").clone(),
            Some(1),
        )
        .await
    {
        Err(Error::ShadowRejected { code, message }) => {
            assert_eq!(code, "version_conflict");
            assert!(message.contains("version 1"), "{message}");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    let s = device.get_shadow().await.expect("get");
    assert_eq!(s.desired["interval_ms"], json!(250));
    device.close().await.expect("close");
}

#[tokio::test]
async fn a_shadow_request_without_an_answer_times_out() {
    let (_broker, addr) = broker().await;
    let mut c = config(addr, "d1");
    c.request_timeout = Duration::from_millis(300);
    let device = Device::connect(c).await.expect("connect");
    assert!(matches!(
        device.get_shadow().await,
        Err(Error::Timeout { .. })
    ));
    device.close().await.expect("close");
}

#[tokio::test]
async fn reconnects_across_a_broker_restart_with_the_offline_buffer_bounded() {
    let (broker, addr) = broker().await;
    let mut c = config(addr, "d1");
    c.offline_buffer = 5;
    let device = Device::connect(c).await.expect("connect");
    device
        .on_command("ping", |_| async { Ok(json!("pong")) })
        .await
        .expect("handler");
    broker.shutdown().await;
    eventually("the device sees the node gone", || !device.is_connected()).await;
    for seq in 0..8 {
        device
            .send_telemetry(&json!({"seq": seq}))
            .await
            .expect("buffered");
    }
    // the oldest beyond the bound are dropped
    eventually("3 dropped, 5 waiting", || {
        let s = device.stats();
        s.dropped == 3 && s.waiting == 5
    })
    .await;
    // the node comes back on the same port; watch before it serves anyone
    let mut broker = start_broker();
    let mut telemetry = broker
        .handle()
        .subscribe("devices/d1/telemetry", 100)
        .await
        .expect("subscribe");
    serve(&mut broker, addr).await;
    let mut got = Vec::new();
    while got.len() < 5 {
        got.push(json_of(&next(&mut telemetry).await.payload)["seq"].clone());
    }
    assert_eq!(got, [json!(3), json!(4), json!(5), json!(6), json!(7)]);
    eventually("the buffer delivered", || device.stats().acked == 5).await;
    assert_eq!(device.stats().connects, 2);
    // the command subscription was made again
    let mut replies = broker
        .handle()
        .subscribe("devices/d1/replies/#", 10)
        .await
        .expect("subscribe");
    broker
        .handle()
        .publish(Message::local(
            command_topic("d1", "ping", "p1"),
            "{}",
            verge_mqtt_qos1(),
            false,
        ))
        .await
        .expect("publish");
    let r = next(&mut replies).await;
    assert_eq!(&*r.topic, "devices/d1/replies/p1");
    assert_eq!(json_of(&r.payload), json!("pong"));
    device.close().await.expect("close");
}

#[tokio::test]
async fn close_waits_for_acknowledgements_then_refuses_calls() {
    let (broker, addr) = broker().await;
    let mut seen = broker
        .handle()
        .subscribe("devices/d1/telemetry", 100)
        .await
        .expect("subscribe");
    let device = Device::connect(config(addr, "d1")).await.expect("connect");
    for seq in 0..20 {
        device
            .send_telemetry(&json!({"seq": seq}))
            .await
            .expect("send");
    }
    device.close().await.expect("every message acknowledged");
    assert_eq!(device.stats().acked, 20);
    let stats = broker.handle().stats().clone();
    eventually("the node sees the device gone", || {
        stats.clients_connected.load(Ordering::Relaxed) == 0
    })
    .await;
    assert_eq!(stats.protocol_errors.load(Ordering::Relaxed), 0);
    assert!(!device.is_connected());
    for seq in 0..20 {
        assert_eq!(json_of(&next(&mut seen).await.payload)["seq"], json!(seq));
    }
    assert!(matches!(
        device.send_telemetry(&json!({})).await,
        Err(Error::Closed)
    ));
    assert!(matches!(device.get_shadow().await, Err(Error::Closed)));
    // closing while the node is away gives up after the close timeout
    let mut c = config(addr, "d2");
    c.close_timeout = Duration::from_millis(200);
    let d2 = Device::connect(c).await.expect("connect");
    broker.shutdown().await;
    eventually("the device sees the node gone", || !d2.is_connected()).await;
    d2.send_telemetry(&json!({"late": true}))
        .await
        .expect("buffered");
    assert!(matches!(
        d2.close().await,
        Err(Error::Unflushed { count: 1 })
    ));
}

#[tokio::test]
async fn garbage_from_the_node_drops_the_connection_and_the_device_reconnects() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = fake.local_addr().expect("addr");
    let connack = verge_mqtt::to_bytes(
        &verge_mqtt::Packet::ConnAck(verge_mqtt::ConnAck::default()),
        verge_mqtt::Protocol::V5,
    )
    .expect("encode");
    let (accepted_tx, mut accepted) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((mut s, _)) = fake.accept().await {
            n += 1;
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await; // CONNECT
            let _ = s.write_all(&connack).await;
            let _ = s.read(&mut buf).await; // SUBSCRIBE
            match n {
                // a command whose payload is not JSON on a bad topic, a
                // delta that is not JSON, then a reserved packet type
                1 => {
                    let junk = [
                        verge_mqtt::Packet::Publish(verge_mqtt::Publish {
                            dup: false,
                            qos: verge_mqtt::QoS::AtMostOnce,
                            retain: false,
                            topic: "$shadow/d1/update/accepted".into(),
                            packet_id: 0,
                            properties: Default::default(),
                            payload: Bytes::from_static(b"\xff not json"),
                        }),
                        verge_mqtt::Packet::Publish(verge_mqtt::Publish {
                            dup: false,
                            qos: verge_mqtt::QoS::AtLeastOnce,
                            retain: false,
                            topic: "devices/d1/commands/x".into(),
                            packet_id: 7,
                            properties: Default::default(),
                            payload: Bytes::from_static(b"{"),
                        }),
                    ];
                    for p in &junk {
                        let b = verge_mqtt::to_bytes(p, verge_mqtt::Protocol::V5).expect("encode");
                        let _ = s.write_all(&b).await;
                    }
                    let _ = s.write_all(&[0x00, 0x02, 0xde, 0xad]).await;
                }
                // a length that never ends
                _ => {
                    let _ = s.write_all(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]).await;
                }
            }
            let _ = accepted_tx.send(n);
            let _ = s.read(&mut buf).await;
        }
    });
    let mut c = config(addr, "d1");
    c.request_timeout = Duration::from_millis(500);
    let device = Device::connect(c).await.expect("connect to the fake node");
    for want in 1..=3 {
        let n = timeout(WAIT, accepted.recv())
            .await
            .expect("a connection")
            .expect("open");
        assert_eq!(n, want);
    }
    assert!(device.stats().connects >= 2, "{:?}", device.stats());
    device
        .send_telemetry(&json!({"still": "working"}))
        .await
        .expect("send");
}

/// Regression: a node shutting down (DISCONNECT 0x8B) was reported as a
/// protocol error in `connection()`; it is the node being unavailable.
#[tokio::test]
async fn a_node_shutting_down_is_unavailable_not_a_protocol_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fake = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = fake.local_addr().expect("addr");
    let encode =
        |p: verge_mqtt::Packet| verge_mqtt::to_bytes(&p, verge_mqtt::Protocol::V5).expect("encode");
    let connack = encode(verge_mqtt::Packet::ConnAck(verge_mqtt::ConnAck::default()));
    let bye = encode(verge_mqtt::Packet::Disconnect(verge_mqtt::Disconnect {
        reason_code: verge_mqtt::reason::SERVER_SHUTTING_DOWN,
        properties: verge_mqtt::Properties {
            reason_string: Some("server shutting down".into()),
            ..Default::default()
        },
    }));
    let (go_tx, mut go) = mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        let mut held = Vec::new();
        let mut first = true;
        while let Ok((mut s, _)) = fake.accept().await {
            if first {
                first = false;
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await; // CONNECT
                let _ = s.write_all(&connack).await;
                let _ = go.recv().await;
                let _ = s.write_all(&bye).await;
            }
            // later attempts wait: the state stays what the DISCONNECT made
            held.push(s);
        }
    });
    let mut c = config(addr, "d1");
    c.request_timeout = Duration::from_millis(200);
    let device = Device::connect(c).await.expect("connect to the fake node");
    let mut state = device.connection();
    go_tx.send(()).expect("fake node");
    let s = timeout(WAIT, state.wait_for(|s| *s != Connection::Connected))
        .await
        .expect("the DISCONNECT seen")
        .expect("open")
        .clone();
    assert_eq!(
        s,
        Connection::Reconnecting {
            error: Error::Unavailable { reason_code: 0x8b }.to_string()
        }
    );
    assert!(Error::Unavailable { reason_code: 0x8b }.is_retryable());
}

/// Read packets from a raw socket until `want` matches one.
async fn read_until(
    s: &mut tokio::net::TcpStream,
    buf: &mut bytes::BytesMut,
    want: impl Fn(&verge_mqtt::Packet) -> bool,
) -> verge_mqtt::Packet {
    use tokio::io::AsyncReadExt;
    loop {
        while let Some(p) =
            verge_mqtt::decode(buf, verge_mqtt::Protocol::V5, 1 << 20).expect("a valid packet")
        {
            if want(&p) {
                return p;
            }
        }
        let n = timeout(WAIT, s.read_buf(buf))
            .await
            .expect("a packet")
            .expect("read");
        assert!(n > 0, "the device closed the connection");
    }
}

#[tokio::test]
async fn an_unacknowledged_message_is_sent_again_after_a_reconnect() {
    use tokio::io::AsyncWriteExt;
    use verge_mqtt::{Ack, ConnAck, Packet, Protocol};
    let fake = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = fake.local_addr().expect("addr");
    let encode = |p: &Packet| verge_mqtt::to_bytes(p, Protocol::V5).expect("encode");
    let is_publish = |p: &Packet| matches!(p, Packet::Publish(_));
    let device_task = tokio::spawn(async move {
        // the fake node never answers SUBSCRIBE: do not wait long for it
        let mut c = config(addr, "d1");
        c.request_timeout = Duration::from_millis(200);
        let device = Device::connect(c).await.expect("connect");
        device.send_telemetry(&json!({"n": 1})).await.expect("send");
        device
    });
    // first connection: take the reading, never acknowledge it, hang up
    let (mut s, _) = timeout(WAIT, fake.accept())
        .await
        .expect("accept")
        .expect("ok");
    let mut buf = bytes::BytesMut::new();
    read_until(&mut s, &mut buf, |p| matches!(p, Packet::Connect(_))).await;
    s.write_all(&encode(&Packet::ConnAck(ConnAck::default())))
        .await
        .expect("write");
    let Packet::Publish(first) = read_until(&mut s, &mut buf, is_publish).await else {
        unreachable!()
    };
    assert!(!first.dup);
    drop(s);
    // second connection: the same reading again, marked as a resend
    let (mut s, _) = timeout(WAIT, fake.accept())
        .await
        .expect("accept")
        .expect("ok");
    let mut buf = bytes::BytesMut::new();
    read_until(&mut s, &mut buf, |p| matches!(p, Packet::Connect(_))).await;
    s.write_all(&encode(&Packet::ConnAck(ConnAck::default())))
        .await
        .expect("write");
    let Packet::Publish(again) = read_until(&mut s, &mut buf, is_publish).await else {
        unreachable!()
    };
    assert!(again.dup);
    assert_eq!(again.topic, first.topic);
    assert_eq!(again.payload, first.payload);
    let ack = Packet::PubAck(Ack {
        packet_id: again.packet_id,
        ..Ack::default()
    });
    s.write_all(&encode(&ack)).await.expect("write");
    let device = device_task.await.expect("device");
    eventually("acknowledged", || device.stats().acked == 1).await;
    assert_eq!(device.stats().waiting, 0);
    assert_eq!(device.stats().connects, 2);
    // close: a normal DISCONNECT, then the socket closes
    let closing = tokio::spawn(async move { device.close().await });
    let Packet::Disconnect(d) =
        read_until(&mut s, &mut buf, |p| matches!(p, Packet::Disconnect(_))).await
    else {
        unreachable!()
    };
    assert_eq!(d.reason_code, 0);
    closing
        .await
        .expect("task")
        .expect("nothing unacknowledged");
}

#[tokio::test]
async fn a_device_the_node_no_longer_knows_is_told_refused() {
    let (broker, addr) = broker().await;
    let device = Device::connect(config(addr, "d2")).await.expect("connect");
    let mut state = device.connection();
    assert_eq!(*state.borrow(), Connection::Connected);
    broker.shutdown().await;
    // the node comes back without the device (deleted in the cloud)
    let mut broker = start_broker_with(&["d1"]);
    serve(&mut broker, addr).await;
    let refused = timeout(
        WAIT,
        state.wait_for(|s| matches!(s, Connection::Refused { .. })),
    )
    .await
    .expect("refused within WAIT")
    .expect("open")
    .clone();
    assert_eq!(
        refused,
        Connection::Refused {
            reason_code: 0x86,
            message: "bad device name or secret".into()
        }
    );
    device.close().await.expect("nothing waited");
    assert_eq!(*device.connection().borrow(), Connection::Closed);
}

#[tokio::test]
async fn a_command_without_an_id_from_an_older_node_runs_its_handler() {
    let (broker, addr) = broker().await;
    let device = Device::connect(config(addr, "d1")).await.expect("connect");
    let (tx, mut got) = mpsc::unbounded_channel();
    device
        .on_any_command(move |cmd| {
            let _ = tx.send(cmd.clone());
            async move { Ok(json!({"name": cmd.name})) }
        })
        .await
        .expect("handler");
    let mut replies = broker
        .handle()
        .subscribe("devices/d1/replies/#", 10)
        .await
        .expect("subscribe");
    let h = broker.handle();
    h.publish(Message::local(
        "devices/d1/commands/reboot",
        r#"{"delay_s": 1}"#,
        verge_mqtt_qos1(),
        false,
    ))
    .await
    .expect("publish");
    let cmd = timeout(WAIT, got.recv())
        .await
        .expect("a command")
        .expect("open");
    assert_eq!((cmd.name.as_str(), cmd.id.as_str()), ("reboot", ""));
    assert_eq!(cmd.payload, json!({"delay_s": 1}));
    // with the id as a user property it is answered on the reply topic
    let mut m = Message::local("devices/d1/commands/reboot", "{}", verge_mqtt_qos1(), false);
    m.properties.user_properties = vec![("verge-command-id".into(), "k9".into())];
    h.publish(m).await.expect("publish");
    let r = next(&mut replies).await;
    assert_eq!(&*r.topic, "devices/d1/replies/k9");
    assert_eq!(json_of(&r.payload), json!({"name": "reboot"}));
    device.close().await.expect("close");
}

#[tokio::test]
async fn mqtts_with_a_ca_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let cert_file = dir.path().join("node.pem");
    let key_file = dir.path().join("node.key");
    std::fs::write(&cert_file, key.cert.pem()).expect("write");
    std::fs::write(&key_file, key.signing_key.serialize_pem()).expect("write");
    let tls = verge_broker::listener::server_tls(
        &verge_broker::config::TlsConfig {
            cert: Some(cert_file.clone()),
            key: Some(key_file),
            client_ca: None,
            require_client_cert: false,
        },
        "test",
    )
    .expect("server tls");
    let mut broker = start_broker();
    let mut seen = broker
        .handle()
        .subscribe("devices/d1/telemetry", 10)
        .await
        .expect("subscribe");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    broker.serve(BoundListener {
        listener,
        transport: Transport::Tls(tls),
    });
    let mut c = DeviceConfig::new(format!("mqtts://localhost:{port}"), "d1", SECRET);
    c.ca_file = Some(cert_file);
    let device = Device::connect(c).await.expect("mqtts with the node's CA");
    device
        .send_telemetry(&json!({"tls": true}))
        .await
        .expect("send");
    assert_eq!(
        json_of(&next(&mut seen).await.payload),
        json!({"tls": true})
    );
    device.close().await.expect("close");
    // Mozilla's roots do not trust the node's own certificate
    let c = DeviceConfig::new(format!("mqtts://localhost:{port}"), "d1", SECRET);
    match Device::connect(c).await {
        Err(e @ Error::Tls(_)) => assert!(e.to_string().contains("certificate"), "{e}"),
        Err(e) => panic!("expected a tls error, got {e}"),
        Ok(_) => panic!("trusted an unknown certificate"),
    }
}

#[tokio::test]
async fn a_node_that_stops_answering_pings_is_left_and_reconnected() {
    use tokio::io::AsyncWriteExt;
    use verge_mqtt::{ConnAck, Packet, Protocol};
    let fake = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = fake.local_addr().expect("addr");
    let connack =
        verge_mqtt::to_bytes(&Packet::ConnAck(ConnAck::default()), Protocol::V5).expect("encode");
    let mut c = config(addr, "d1");
    c.keep_alive = Duration::from_secs(1);
    c.request_timeout = Duration::from_millis(200);
    let device_task = tokio::spawn(Device::connect(c));
    let (mut s, _) = timeout(WAIT, fake.accept())
        .await
        .expect("accept")
        .expect("ok");
    let mut buf = bytes::BytesMut::new();
    read_until(&mut s, &mut buf, |p| matches!(p, Packet::Connect(_))).await;
    s.write_all(&connack).await.expect("write");
    let device = device_task.await.expect("task").expect("connect");
    let started = Instant::now();
    // a PINGREQ after a second of silence, never answered
    read_until(&mut s, &mut buf, |p| matches!(p, Packet::PingReq)).await;
    let (_s2, _) = timeout(WAIT, fake.accept())
        .await
        .expect("a reconnect")
        .expect("ok");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "left only after the PINGRESP was a keep alive late: {:?}",
        started.elapsed()
    );
    assert!(matches!(
        *device.connection().borrow(),
        Connection::Reconnecting { .. } | Connection::Connected
    ));
    drop(s);
}

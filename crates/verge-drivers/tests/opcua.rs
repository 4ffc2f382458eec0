//! OPC UA end to end, in process: an `async-opcua` server with a changing
//! variable and a writable one; a driver (with a real broker) subscribes,
//! publishes telemetry, writes on command, browses, uses Basic256Sha256 with
//! a certificate generated on first start, and survives the server going
//! away and coming back.

#![cfg(feature = "opcua")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use opcua::crypto::SecurityPolicy;
use opcua::server::address_space::{AccessLevel, VariableBuilder};
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{SimpleNodeManager, simple_node_manager};
use opcua::server::{ANONYMOUS_USER_TOKEN_ID, ServerBuilder, ServerHandle};
use opcua::types::{DataTypeId, DataValue, MessageSecurityMode, NodeId, ObjectId};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use verge_broker::{Broker, BrokerConfig, LocalSubscription, Message};
use verge_drivers::{Driver, DriverConfig};
use verge_mqtt::QoS;

/// Guards against a hang only; no test asserts on timing.
const PATIENCE: Duration = Duration::from_secs(60);

fn broker() -> Broker {
    let cfg = BrokerConfig::default();
    let auth = Broker::authenticator(&cfg).expect("auth");
    Broker::start(cfg, auth)
}

/// A running test server: `ns=N;s=Temperature` (Double, moving),
/// `ns=N;s=Setpoint` (Int32, writable), `ns=N;s=Label` (String, read
/// only).
struct Server {
    handle: ServerHandle,
    addr: SocketAddr,
    ns: u16,
    ticker: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(pki: &Path, addr: Option<SocketAddr>) -> Server {
        let listener = TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let tokens = [ANONYMOUS_USER_TOKEN_ID];
        let (server, handle) = ServerBuilder::new()
            .application_name("Verge test server")
            .application_uri("urn:verge:test-server")
            .product_uri("urn:verge:test")
            .host("127.0.0.1")
            .port(addr.port())
            .discovery_urls(vec!["/".to_owned()])
            .pki_dir(pki)
            .create_sample_keypair(true)
            .trust_client_certs(true)
            .add_endpoint(
                "none",
                (
                    "/",
                    SecurityPolicy::None,
                    MessageSecurityMode::None,
                    &tokens as &[&str],
                ),
            )
            .add_endpoint(
                "basic256sha256",
                (
                    "/",
                    SecurityPolicy::Basic256Sha256,
                    MessageSecurityMode::SignAndEncrypt,
                    &tokens as &[&str],
                ),
            )
            .with_node_manager(simple_node_manager(
                NamespaceMetadata {
                    namespace_uri: "urn:verge:test".into(),
                    ..Default::default()
                },
                "test",
            ))
            .build()
            .unwrap();
        let nm = handle
            .node_managers()
            .get_of_type::<SimpleNodeManager>()
            .unwrap();
        let ns = handle.get_namespace_index("urn:verge:test").unwrap();
        {
            let mut space = nm.address_space().write();
            let rw = AccessLevel::CURRENT_READ | AccessLevel::CURRENT_WRITE;
            VariableBuilder::new(
                &NodeId::new(ns, "Temperature"),
                "Temperature",
                "Temperature",
            )
            .data_type(DataTypeId::Double)
            .value(20.0)
            .organized_by(ObjectId::ObjectsFolder)
            .insert(&mut *space);
            VariableBuilder::new(&NodeId::new(ns, "Setpoint"), "Setpoint", "Setpoint")
                .data_type(DataTypeId::Int32)
                .value(7i32)
                .access_level(rw)
                .user_access_level(rw)
                .organized_by(ObjectId::ObjectsFolder)
                .insert(&mut *space);
            VariableBuilder::new(&NodeId::new(ns, "Label"), "Label", "Label")
                .data_type(DataTypeId::String)
                .value("boiler")
                .organized_by(ObjectId::ObjectsFolder)
                .insert(&mut *space);
        }
        tokio::spawn(server.run_with(listener));
        let subs = handle.subscriptions().clone();
        let ticker = tokio::spawn(async move {
            let id = NodeId::new(ns, "Temperature");
            let mut t = 20.0;
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                t += 0.5;
                let _ = nm.set_value(&subs, &id, None, DataValue::new_now(t));
            }
        });
        Server {
            handle,
            addr,
            ns,
            ticker,
        }
    }

    fn stop(self) {
        self.ticker.abort();
        self.handle.cancel();
    }
}

fn config(server: &Server, security: &str, pki: &Path, trust: bool) -> DriverConfig {
    let ns = server.ns;
    serde_json::from_value(json!({
        "name": "ua",
        "protocol": "opcua",
        "endpoint": format!("opc.tcp://127.0.0.1:{}/", server.addr.port()),
        "security": security,
        "pki_dir": pki.to_str().unwrap(),
        "trust_server_certs": trust,
        "timeout": "2s",
        "retry": {"initial": "100ms", "max": "500ms"},
        "devices": [
            {"name": "boiler", "poll": "100ms", "points": [
                {"name": "temperature", "address": format!("ns={ns};s=Temperature")},
                {"name": "setpoint", "address": format!("ns={ns};s=Setpoint"), "access": "rw"},
                {"name": "label", "address": format!("ns={ns};s=Label"), "access": "rw"},
                {"name": "missing", "address": format!("ns={ns};s=Nope")}
            ]},
            {"name": "server", "poll": "200ms", "points": [
                {"name": "state", "address": "i=2259"}
            ]}
        ]
    }))
    .unwrap()
}

/// The next telemetry of `device` for which `pred` holds.
async fn wait_for(
    sub: &mut LocalSubscription,
    device: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let topic = format!("devices/{device}/telemetry");
    tokio::time::timeout(PATIENCE, async {
        loop {
            let m = sub.recv().await.expect("broker running");
            if *m.topic == *topic {
                let v: Value = serde_json::from_slice(&m.payload).unwrap();
                if pred(&v) {
                    return v;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no matching telemetry from {device}"))
}

fn good(v: &Value, point: &str) -> bool {
    v["quality"][point] == "good"
}

/// Send a write command and wait for its reply.
async fn command(broker: &Broker, device: &str, body: Value) -> Value {
    let reply_topic = format!("devices/{device}/commands/write/reply");
    let mut replies = broker.handle().subscribe(&reply_topic, 16).await.unwrap();
    let m = Message::local(
        format!("devices/{device}/commands/write").as_str(),
        body.to_string(),
        QoS::AtLeastOnce,
        false,
    );
    broker.handle().publish(m).await.unwrap();
    let r = tokio::time::timeout(PATIENCE, replies.recv())
        .await
        .expect("a reply")
        .expect("broker running");
    serde_json::from_slice(&r.payload).unwrap()
}

#[tokio::test]
async fn subscribes_writes_and_browses_without_security() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), None).await;
    let broker = broker();
    let mut sub = broker
        .handle()
        .subscribe("devices/+/telemetry", 1024)
        .await
        .unwrap();
    let cfg = config(&server, "none", &dir.path().join("client"), false);
    let driver = Driver::start(cfg.clone(), broker.handle()).unwrap();

    let t = wait_for(&mut sub, "boiler", |v| good(v, "temperature")).await;
    assert!(t["values"]["temperature"].as_f64().unwrap() >= 20.0, "{t}");
    assert_eq!(t["values"]["setpoint"], json!(7));
    assert_eq!(t["values"]["label"], json!("boiler"));
    assert_eq!(t["quality"]["missing"], "bad");
    assert!(
        t["errors"]["missing"]
            .as_str()
            .unwrap()
            .contains("BadNodeIdUnknown"),
        "{t}"
    );
    // the subscription keeps the value moving
    let first = t["values"]["temperature"].clone();
    wait_for(&mut sub, "boiler", |v| {
        good(v, "temperature") && v["values"]["temperature"] != first
    })
    .await;
    // a standard node: ServerStatus.State = Running (0)
    let s = wait_for(&mut sub, "server", |v| good(v, "state")).await;
    assert_eq!(s["values"]["state"], json!(0));

    // write, converted to the variable's type (Int32)
    let r = command(&broker, "boiler", json!({"point": "setpoint", "value": 42})).await;
    assert_eq!(r["ok"], json!(true), "{r}");
    wait_for(&mut sub, "boiler", |v| v["values"]["setpoint"] == json!(42)).await;
    // a value that does not fit the type is refused before sending
    let r = command(
        &broker,
        "boiler",
        json!({"point": "setpoint", "value": 1.5}),
    )
    .await;
    assert_eq!(r["ok"], json!(false), "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("not an integer"),
        "{r}"
    );
    // the server refuses a write to a read-only variable, by status name
    // (BadUserAccessDenied or BadNotWritable)
    let r = command(&broker, "boiler", json!({"point": "label", "value": "x"})).await;
    assert_eq!(r["ok"], json!(false), "{r}");
    assert!(
        r["error"].as_str().unwrap().starts_with("refused: Bad"),
        "{r}"
    );

    // browse the Objects folder
    let found = verge_drivers::opcua::browse(&cfg, None).await.unwrap();
    let names: Vec<&str> = found.iter().map(|e| e.browse_name.as_str()).collect();
    for n in ["Server", "Temperature", "Setpoint", "Label"] {
        assert!(names.contains(&n), "{names:?}");
    }
    let temp = found
        .iter()
        .find(|e| e.browse_name == "Temperature")
        .unwrap();
    assert_eq!(temp.node_id, format!("ns={};s=Temperature", server.ns));
    assert_eq!(temp.node_class, "Variable");

    let status = driver.status();
    assert!(status.connected);
    assert!(status.writes >= 1);
    driver.stop().await;
    server.stop();
}

#[tokio::test]
async fn basic256sha256_with_a_generated_certificate_and_an_operator_trusted_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), None).await;
    let broker = broker();
    let mut sub = broker
        .handle()
        .subscribe("devices/+/telemetry", 1024)
        .await
        .unwrap();
    let pki = dir.path().join("client");
    let driver = Driver::start(
        config(&server, "basic256sha256", &pki, false),
        broker.handle(),
    )
    .unwrap();

    // the server's certificate is unknown: rejected, with a hint
    let rejected = pki.join("rejected");
    let cert = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(e) = std::fs::read_dir(&rejected)
                .ok()
                .and_then(|mut d| d.next())
                .and_then(Result::ok)
            {
                return e.path();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the server certificate is rejected");
    assert!(pki.join("own/cert.der").exists(), "client certificate made");
    assert!(pki.join("private/private.pem").exists(), "client key made");
    let why = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(e) = driver.status().last_error {
                return e;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert!(why.contains("trusted"), "{why}");
    assert!(!driver.status().connected);

    // the operator trusts it
    std::fs::rename(&cert, pki.join("trusted").join(cert.file_name().unwrap())).unwrap();
    let t = wait_for(&mut sub, "boiler", |v| good(v, "temperature")).await;
    assert_eq!(t["values"]["setpoint"], json!(7));
    let r = command(&broker, "boiler", json!({"point": "setpoint", "value": -5})).await;
    assert_eq!(r["ok"], json!(true), "{r}");
    wait_for(&mut sub, "boiler", |v| v["values"]["setpoint"] == json!(-5)).await;
    driver.stop().await;

    // the second start reuses the certificate
    let before = std::fs::read(pki.join("own/cert.der")).unwrap();
    let driver = Driver::start(
        config(&server, "basic256sha256", &pki, false),
        broker.handle(),
    )
    .unwrap();
    wait_for(&mut sub, "boiler", |v| good(v, "temperature")).await;
    assert_eq!(std::fs::read(pki.join("own/cert.der")).unwrap(), before);
    driver.stop().await;
    server.stop();
}

#[tokio::test]
async fn a_stopped_server_marks_devices_bad_until_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), None).await;
    let addr = server.addr;
    let broker = broker();
    let mut sub = broker
        .handle()
        .subscribe("devices/+/telemetry", 1024)
        .await
        .unwrap();
    let cfg = config(&server, "none", &dir.path().join("client"), false);
    let driver = Driver::start(cfg, broker.handle()).unwrap();
    wait_for(&mut sub, "boiler", |v| good(v, "temperature")).await;

    server.stop();
    let b = wait_for(&mut sub, "boiler", |v| v.get("error").is_some()).await;
    assert!(
        b["error"].as_str().unwrap().starts_with("connection: "),
        "{b}"
    );
    assert!(!driver.status().connected);

    // back on the same port
    tokio::time::sleep(Duration::from_millis(200)).await;
    let server = Server::start(&dir.path().join("server"), Some(addr)).await;
    wait_for(&mut sub, "boiler", |v| good(v, "temperature")).await;
    assert!(driver.status().connected);
    assert!(driver.status().connects >= 2);
    driver.stop().await;
    server.stop();
}

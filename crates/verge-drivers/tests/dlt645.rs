//! DL/T 645-2007 end to end: a driver (with a real broker) reads meters
//! from the project's simulator over TCP and publishes telemetry; the
//! simulator stops, answers garbage or refuses, and the driver copes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::{Value, json};
use tokio::net::TcpListener;
use verge_broker::{Broker, BrokerConfig, LocalSubscription, Message};
use verge_drivers::dlt645::sim::{Meters, Mode, Simulator};
use verge_drivers::{Driver, DriverConfig};
use verge_mqtt::QoS;

/// Guards against a hang only; no test asserts on timing.
const PATIENCE: Duration = Duration::from_secs(20);

fn broker() -> Broker {
    let cfg = BrokerConfig::default();
    let auth = Broker::authenticator(&cfg).expect("auth");
    Broker::start(cfg, auth)
}

async fn simulator(meters: &Meters) -> Simulator {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Simulator::start(listener, meters.clone()).unwrap()
}

/// A subscription to every device's telemetry.
async fn telemetry(broker: &Broker) -> LocalSubscription {
    broker
        .handle()
        .subscribe("devices/+/telemetry", 256)
        .await
        .unwrap()
}

/// Starts a simulator for `meters` and a driver (with [`config`]) reading it.
async fn start(broker: &Broker, meters: &Meters) -> (Simulator, Driver) {
    let sim = simulator(meters).await;
    let driver = Driver::start(config(sim.local_addr().port()), broker.handle()).unwrap();
    (sim, driver)
}

/// Two meters: `m1` (000000000001) and `m2` (000000000002).
fn config(port: u16) -> DriverConfig {
    serde_json::from_value(json!({
        "name": "meters",
        "protocol": "dlt645-tcp",
        "host": "127.0.0.1",
        "port": port,
        "timeout": "300ms",
        "retry": {"initial": "50ms", "max": "200ms"},
        "devices": [
            {"name": "m1", "meter": "000000000001", "poll": "50ms", "points": [
                {"name": "energy", "address": "00000000", "unit": "kWh"},
                {"name": "ua", "address": "02010100"},
                {"name": "ub", "address": "02010200"},
                {"name": "ia", "address": "02020100"},
                {"name": "p", "address": "02030000"}
            ]},
            {"name": "m2", "meter": "000000000002", "poll": "50ms", "points": [
                {"name": "forward_wh", "address": "00010000", "scale": 1000.0},
                {"name": "hz", "address": "02800002"},
                {"name": "pf", "address": "02060000"},
                {"name": "date", "address": "04000101"}
            ]}
        ]
    }))
    .unwrap()
}

fn meters() -> Meters {
    let m = Meters::new(&["000000000001", "000000000002"]).unwrap();
    m.set_value("000000000001", "00000000", json!(12345.67))
        .unwrap();
    m.set_value("000000000001", "02010100", json!(220.1))
        .unwrap();
    m.set_value("000000000001", "02020100", json!(-1.234))
        .unwrap();
    m.set_value("000000000002", "00010000", json!(1.5)).unwrap();
    m.set_value("000000000002", "02800002", json!(50.01))
        .unwrap();
    m.set_value("000000000002", "02060000", json!(-0.987))
        .unwrap();
    m
}

/// The next telemetry of `device` (`*`: any) for which `pred` holds.
async fn wait_for(
    sub: &mut LocalSubscription,
    device: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let topic = format!("devices/{device}/telemetry");
    tokio::time::timeout(PATIENCE, async {
        loop {
            let m = sub.recv().await.expect("broker running");
            if device == "*" || *m.topic == *topic {
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

fn good(v: &Value) -> bool {
    v["quality"]
        .as_object()
        .is_some_and(|q| !q.is_empty() && q.values().all(|x| x == "good"))
}

fn bad(v: &Value) -> bool {
    v.get("error").is_some()
}

#[tokio::test]
async fn reads_two_meters_with_scaled_values() {
    let broker = broker();
    let mut sub = telemetry(&broker).await;
    let meters = meters();
    let (sim, driver) = start(&broker, &meters).await;

    let m1 = wait_for(&mut sub, "m1", good).await;
    assert_eq!(m1["values"]["energy"], json!(12345.67));
    assert_eq!(m1["values"]["ua"], json!(220.1));
    assert_eq!(m1["values"]["ia"], json!(-1.234));
    let ub = m1["values"]["ub"].as_f64().unwrap();
    assert!((200.0..240.0).contains(&ub), "moving voltage {ub}");
    assert!(m1["values"]["p"].is_number());

    let m2 = wait_for(&mut sub, "m2", good).await;
    assert_eq!(m2["values"]["forward_wh"], json!(1500.0));
    assert_eq!(m2["values"]["hz"], json!(50.01));
    assert_eq!(m2["values"]["pf"], json!(-0.987));
    assert!(m2["values"]["date"].as_str().unwrap().starts_with("20"));

    // the moving value does move
    let first = m1["values"]["ub"].clone();
    wait_for(&mut sub, "m1", |v| good(v) && v["values"]["ub"] != first).await;

    let status = driver.status();
    assert!(status.connected);
    assert!(status.devices.iter().all(|d| d.state == "good"));
    driver.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn follow_up_frames_are_joined() {
    let broker = broker();
    let mut sub = telemetry(&broker).await;
    let meters = meters();
    meters.set_split(true);
    let (sim, driver) = start(&broker, &meters).await;
    let m1 = wait_for(&mut sub, "m1", good).await;
    assert_eq!(m1["values"]["energy"], json!(12345.67));
    assert_eq!(m1["values"]["ia"], json!(-1.234));
    driver.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn a_stopped_simulator_marks_the_device_bad_until_it_returns() {
    let broker = broker();
    let mut sub = telemetry(&broker).await;
    let meters = meters();
    let (sim, driver) = start(&broker, &meters).await;
    let addr = sim.local_addr();
    wait_for(&mut sub, "m1", good).await;

    sim.stop().await;
    // the device being read when the connection broke is published bad (the
    // others are not read while the driver reconnects)
    let b = wait_for(&mut sub, "*", bad).await;
    assert!(
        b["quality"]
            .as_object()
            .unwrap()
            .values()
            .all(|q| q == "bad")
    );
    assert!(
        b["error"].as_str().unwrap().starts_with("connection: "),
        "{b}"
    );
    tokio::time::timeout(PATIENCE, async {
        while driver.status().connected {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the driver notices the connection is gone");
    assert!(driver.status().devices.iter().any(|d| d.state == "bad"));

    let sim = Simulator::start(TcpListener::bind(addr).await.unwrap(), meters.clone()).unwrap();
    let again = wait_for(&mut sub, "m1", good).await;
    assert_eq!(again["values"]["ua"], json!(220.1));
    wait_for(&mut sub, "m2", good).await;
    let status = driver.status();
    assert!(status.connected && status.connects >= 2);
    driver.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn silence_then_garbage_mark_the_device_bad_without_panicking() {
    let broker = broker();
    let mut sub = telemetry(&broker).await;
    let meters = meters();
    let (sim, driver) = start(&broker, &meters).await;
    wait_for(&mut sub, "m1", good).await;

    meters.set_mode(Mode::Silent);
    let b = wait_for(&mut sub, "m1", bad).await;
    assert!(b["error"].as_str().unwrap().contains("timeout"), "{b}");

    meters.set_mode(Mode::Garbage);
    let before = meters.requests();
    // every kind of garbage, several times over
    let mut errors = Vec::new();
    while meters.requests() < before + 12 {
        let b = wait_for(&mut sub, "m1", bad).await;
        errors.push(b["error"].as_str().unwrap().to_owned());
    }
    assert!(
        errors.iter().any(|e| e.starts_with("bad response")),
        "{errors:?}"
    );
    assert_eq!(driver.status().devices[0].state, "bad");

    meters.set_mode(Mode::Normal);
    let again = wait_for(&mut sub, "m1", good).await;
    assert_eq!(again["values"]["energy"], json!(12345.67));
    driver.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn error_frames_name_the_point_error() {
    let broker = broker();
    let mut sub = telemetry(&broker).await;
    let meters = meters();
    meters.refuse("02010200", Some(0x02)).unwrap();
    let (sim, driver) = start(&broker, &meters).await;

    let m1 = wait_for(&mut sub, "m1", |v| v.get("errors").is_some()).await;
    assert_eq!(m1["quality"]["ub"], "bad");
    assert_eq!(m1["errors"]["ub"], "no data requested");
    assert_eq!(m1["quality"]["ua"], "good");
    assert_eq!(m1["values"]["ua"], json!(220.1));

    meters.set_mode(Mode::Error(0x04));
    let m2 = wait_for(&mut sub, "m2", |v| v["errors"]["hz"].is_string()).await;
    assert_eq!(m2["errors"]["hz"], "password error or unauthorized");
    assert!(
        m2["quality"]
            .as_object()
            .unwrap()
            .values()
            .all(|q| q == "bad")
    );
    driver.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn writes_are_refused_as_read_only() {
    let broker = broker();
    let mut replies = broker
        .handle()
        .subscribe("devices/+/commands/write/reply", 16)
        .await
        .unwrap();
    let meters = meters();
    let sim = simulator(&meters).await;
    let mut cfg = config(sim.local_addr().port());
    cfg.devices[0].points[1].access = verge_drivers::Access::Rw;
    let driver = Driver::start(cfg, broker.handle()).unwrap();
    let mut sub = broker
        .handle()
        .subscribe("devices/+/telemetry", 16)
        .await
        .unwrap();
    wait_for(&mut sub, "m1", good).await;
    let cmd = Message::local(
        "devices/m1/commands/write",
        r#"{"point":"ua","value":230}"#,
        QoS::AtLeastOnce,
        false,
    );
    broker.handle().publish(cmd).await.unwrap();
    let reply = tokio::time::timeout(PATIENCE, replies.recv())
        .await
        .unwrap()
        .unwrap();
    let reply: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["ok"], false);
    assert_eq!(
        reply["error"],
        "invalid request: DL/T 645 points are read-only here"
    );
    driver.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn build_refuses_unknown_identifiers_and_bad_addresses() {
    let broker = broker();
    let err = |f: &dyn Fn(&mut DriverConfig)| {
        let mut cfg = config(1);
        f(&mut cfg);
        Driver::start(cfg, broker.handle()).err().expect("refused")
    };
    let e = err(&|c| c.devices[0].points[2].address = "0201FF00".into());
    assert!(
        e.starts_with("devices[0].points[2].address: data identifier 0201FF00 is not one"),
        "{e}"
    );
    let e = err(&|c| c.devices[1].points[0].address = "0201".into());
    assert!(
        e.starts_with("devices[1].points[0].address: \"0201\" is not a DL/T 645 data identifier"),
        "{e}"
    );
    let e = err(&|c| c.devices[1].meter = Some("12345".into()));
    assert!(e.starts_with("devices[1].meter: "), "{e}");
    let e = err(&|c| c.devices[0].meter = None);
    assert!(e.contains("needs its 12-digit meter address"), "{e}");
    let e = err(&|c| c.devices[0].points[0].data_type = Some(verge_drivers::DataType::F32));
    assert!(e.starts_with("devices[0].points[0].type: "), "{e}");
}

//! The protocol-independent runner over a scripted fake protocol: telemetry
//! shape and scaling, bad points, a device that stops answering while its
//! neighbour keeps its cadence, reconnects, deadband, and write commands.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use verge_broker::{Broker, BrokerConfig, LocalSubscription, Message};
use verge_drivers::protocol::PointResult;
use verge_drivers::{
    DeviceConfig, Driver, DriverConfig, DriverError, PointConfig, PointError, Protocol,
};
use verge_mqtt::QoS;
use verge_net::BoxFuture;

/// What the fake device does, shared with the test.
#[derive(Default)]
struct Script {
    /// Values by (device index, point name).
    values: HashMap<(usize, String), Value>,
    /// Devices that time out.
    silent: Vec<usize>,
    /// Points that fail on their own.
    bad_points: Vec<String>,
    /// Connection attempts fail while true.
    down: bool,
    /// Reads break the connection while true.
    broken: bool,
    connects: u32,
    writes: Vec<(usize, String, Value)>,
    /// Each write takes this long.
    write_delay: Duration,
}

struct Fake(Arc<Mutex<Script>>);

impl Protocol for Fake {
    fn connect(&mut self) -> BoxFuture<'_, Result<(), DriverError>> {
        Box::pin(async move {
            let mut s = self.0.lock().expect("script");
            s.connects += 1;
            if s.down {
                return Err(DriverError::Connection("refused".into()));
            }
            s.broken = false;
            Ok(())
        })
    }

    fn read<'a>(
        &'a mut self,
        index: usize,
        device: &'a DeviceConfig,
    ) -> BoxFuture<'a, Result<Vec<PointResult>, DriverError>> {
        Box::pin(async move {
            let s = self.0.lock().expect("script");
            if s.broken {
                return Err(DriverError::Connection("reset by peer".into()));
            }
            if s.silent.contains(&index) {
                return Err(DriverError::Timeout(100));
            }
            Ok(device
                .points
                .iter()
                .map(|p| {
                    if s.bad_points.contains(&p.name) {
                        return Err(PointError::new("illegal data address"));
                    }
                    Ok(s.values
                        .get(&(index, p.name.clone()))
                        .cloned()
                        .unwrap_or(json!(0)))
                })
                .collect())
        })
    }

    fn write<'a>(
        &'a mut self,
        index: usize,
        _device: &'a DeviceConfig,
        point: &'a PointConfig,
        raw: Value,
    ) -> BoxFuture<'a, Result<Value, DriverError>> {
        Box::pin(async move {
            let delay = self.0.lock().expect("script").write_delay;
            tokio::time::sleep(delay).await;
            let mut s = self.0.lock().expect("script");
            s.writes.push((index, point.name.clone(), raw.clone()));
            s.values.insert((index, point.name.clone()), raw.clone());
            Ok(raw)
        })
    }
}

fn config(devices: Value) -> DriverConfig {
    let c: DriverConfig = serde_json::from_value(json!({
        "name": "fake", "protocol": "modbus-tcp", "host": "127.0.0.1",
        "timeout": "100ms", "retry": {"initial": "50ms", "max": "200ms"},
        "devices": devices,
    }))
    .expect("config");
    c.validate().expect("valid");
    c
}

fn broker() -> Broker {
    let cfg = BrokerConfig::default();
    let auth = Broker::authenticator(&cfg).expect("auth");
    Broker::start(cfg, auth)
}

fn script() -> Arc<Mutex<Script>> {
    Arc::new(Mutex::new(Script::default()))
}

/// Starts a driver over the fake protocol, scripted by `script`.
fn start(cfg: DriverConfig, script: &Arc<Mutex<Script>>, b: &Broker) -> Driver {
    Driver::start_with(cfg, Box::new(Fake(script.clone())), b.handle())
}

async fn subscribe(b: &Broker, filter: &str, capacity: usize) -> LocalSubscription {
    b.handle().subscribe(filter, capacity).await.expect("sub")
}

async fn next(sub: &mut LocalSubscription) -> (String, Value) {
    let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .expect("a message in time")
        .expect("broker running");
    (
        m.topic.to_string(),
        serde_json::from_slice(&m.payload).expect("json"),
    )
}

#[tokio::test]
async fn telemetry_is_scaled_and_bad_points_are_marked() {
    let b = broker();
    let script = script();
    {
        let mut s = script.lock().expect("script");
        s.values.insert((0, "t".into()), json!(215));
        s.values.insert((0, "on".into()), json!(true));
        s.bad_points.push("gone".into());
    }
    let cfg = config(json!([{"name": "boiler", "poll": "20ms", "points": [
        {"name": "t", "address": "hr:1", "scale": 0.1, "offset": 1},
        {"name": "on", "address": "coil:1"},
        {"name": "gone", "address": "hr:9"}]}]));
    let mut sub = subscribe(&b, "devices/+/telemetry", 64).await;
    let d = start(cfg, &script, &b);
    let (topic, doc) = next(&mut sub).await;
    assert_eq!(topic, "devices/boiler/telemetry");
    assert_eq!(doc["values"]["t"], json!(22.5));
    assert_eq!(doc["values"]["on"], json!(true));
    assert_eq!(
        doc["quality"],
        json!({"t": "good", "on": "good", "gone": "bad"})
    );
    assert_eq!(doc["errors"]["gone"], "illegal data address");
    assert!(doc["ts"].as_i64().is_some());
    let st = d.status();
    assert!(st.connected);
    assert_eq!(st.devices[0].state, "good");
    d.stop().await;
}

#[tokio::test]
async fn a_silent_device_goes_bad_and_back_while_its_neighbour_keeps_going() {
    let b = broker();
    let script = script();
    script.lock().expect("script").silent.push(0);
    let cfg = config(json!([
        {"name": "a", "poll": "20ms", "points": [{"name": "v", "address": "hr:1"}]},
        {"name": "b", "poll": "20ms", "points": [{"name": "v", "address": "hr:1"}]}]));
    let mut sub_a = subscribe(&b, "devices/a/telemetry", 256).await;
    let mut sub_b = subscribe(&b, "devices/b/telemetry", 256).await;
    let d = start(cfg, &script, &b);
    let (_, doc) = next(&mut sub_a).await;
    assert_eq!(doc["quality"]["v"], "bad");
    assert!(
        doc["error"].as_str().expect("error").contains("timeout"),
        "{doc}"
    );
    for _ in 0..5 {
        let (_, doc) = next(&mut sub_b).await;
        assert_eq!(doc["quality"]["v"], "good");
    }
    let st = d.status();
    assert_eq!(st.devices[0].state, "bad");
    assert_eq!(st.devices[1].state, "good");
    assert!(st.devices[1].reads >= 5);
    // It answers again: back to good.
    script.lock().expect("script").silent.clear();
    loop {
        let (_, doc) = next(&mut sub_a).await;
        if doc["quality"]["v"] == "good" {
            break;
        }
    }
    assert_eq!(d.status().devices[0].state, "good");
    d.stop().await;
}

#[tokio::test]
async fn a_broken_connection_is_made_again() {
    let b = broker();
    let script = script();
    script.lock().expect("script").down = true;
    let cfg = config(
        json!([{"name": "a", "poll": "20ms", "points": [{"name": "v", "address": "hr:1"}]}]),
    );
    let mut sub = subscribe(&b, "devices/a/telemetry", 256).await;
    let d = start(cfg, &script, &b);
    // Refused a few times (with backoff), then up.
    while script.lock().expect("script").connects < 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!d.status().connected);
    assert!(d.status().last_error.expect("error").contains("refused"));
    // Meanwhile the device says it is bad, on its cadence.
    let (_, doc) = next(&mut sub).await;
    assert_eq!(doc["quality"]["v"], "bad");
    script.lock().expect("script").down = false;
    loop {
        let (_, doc) = next(&mut sub).await;
        if doc["quality"]["v"] == "good" {
            break;
        }
    }
    // Recovered: the status no longer shows the old error.
    let st = d.status();
    assert!(st.connected && st.last_error.is_none(), "{st:?}");
    assert_eq!(st.devices[0].last_error, None, "{st:?}");
    // The connection breaks during a read: reconnected, reads go on.
    let before = script.lock().expect("script").connects;
    script.lock().expect("script").broken = true;
    loop {
        let (_, doc) = next(&mut sub).await;
        if doc["quality"]["v"] == "good" && script.lock().expect("script").connects > before {
            break;
        }
    }
    assert!(d.status().connects >= 2);
    d.stop().await;
}

#[tokio::test]
async fn changes_only_publishes_moves_past_the_deadband() {
    let b = broker();
    let script = script();
    script
        .lock()
        .expect("script")
        .values
        .insert((0, "v".into()), json!(10.0));
    let cfg = config(json!([{"name": "a", "poll": "20ms", "changes_only": true,
        "points": [{"name": "v", "address": "hr:1", "deadband": 0.5}]}]));
    let mut sub = subscribe(&b, "devices/a/telemetry", 256).await;
    let d = start(cfg, &script, &b);
    let (_, doc) = next(&mut sub).await;
    assert_eq!(doc["values"]["v"], json!(10.0));
    // Within the deadband: nothing. Past it: published.
    script
        .lock()
        .expect("script")
        .values
        .insert((0, "v".into()), json!(10.3));
    while d.status().devices[0].reads < 5 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    script
        .lock()
        .expect("script")
        .values
        .insert((0, "v".into()), json!(11.0));
    let (_, doc) = next(&mut sub).await;
    assert_eq!(doc["values"]["v"], json!(11.0));
    d.stop().await;
}

async fn command(b: &Broker, device: &str, body: Value) -> Value {
    let mut sub = subscribe(b, &format!("devices/{device}/commands/write/reply"), 8).await;
    let m = Message::local(
        format!("devices/{device}/commands/write"),
        body.to_string(),
        QoS::AtLeastOnce,
        false,
    );
    b.handle().publish(m).await.expect("publish");
    next(&mut sub).await.1
}

#[tokio::test]
async fn write_commands_are_checked_carried_out_and_answered() {
    let b = broker();
    let script = script();
    let cfg = config(json!([{"name": "a", "poll": "50ms", "points": [
        {"name": "set", "address": "hr:1", "access": "rw", "scale": 0.1},
        {"name": "ro", "address": "hr:2"}]}]));
    let mut sub = subscribe(&b, "devices/a/telemetry", 256).await;
    let d = start(cfg, &script, &b);
    next(&mut sub).await;
    let r = command(&b, "a", json!({"point": "set", "value": 21.5, "id": 7})).await;
    assert_eq!(
        r,
        json!({"point": "set", "id": 7, "ok": true, "value": 21.5})
    );
    // The device got the raw value (scale undone).
    let w = script.lock().expect("script").writes.clone();
    assert_eq!(w.len(), 1);
    assert!(
        (w[0].2.as_f64().expect("number") - 215.0).abs() < 1e-9,
        "{w:?}"
    );
    for (body, why) in [
        (json!({"point": "ro", "value": 1}), "read-only"),
        (json!({"point": "nope", "value": 1}), "no point"),
        (json!({"value": 1}), "`point`"),
        (json!({"point": "set"}), "`value`"),
    ] {
        let r = command(&b, "a", body).await;
        assert_eq!(r["ok"], false, "{r}");
        assert!(r["error"].as_str().expect("error").contains(why), "{r}");
    }
    let st = d.status();
    assert_eq!((st.writes, st.write_errors), (1, 4));
    assert_eq!(script.lock().expect("script").writes.len(), 1);
    d.stop().await;
}

/// Regression: with commands ahead of the poll timer, a flood of writes
/// stopped every read until the queue was empty.
#[tokio::test]
async fn a_flood_of_writes_does_not_stop_polling() {
    let b = broker();
    let script = script();
    script.lock().expect("script").write_delay = Duration::from_millis(20);
    let cfg = config(json!([{"name": "a", "poll": "20ms", "points": [
        {"name": "set", "address": "hr:1", "access": "rw"}]}]));
    let mut telemetry = subscribe(&b, "devices/a/telemetry", 1024).await;
    let mut replies = subscribe(&b, "devices/a/commands/write/reply", 1024).await;
    let d = start(cfg, &script, &b);
    next(&mut telemetry).await;
    let reads_before = d.status().devices[0].reads;
    for i in 0..50 {
        let m = Message::local(
            "devices/a/commands/write",
            json!({"point": "set", "value": i}).to_string(),
            QoS::AtLeastOnce,
            false,
        );
        b.handle().publish(m).await.expect("publish");
    }
    for _ in 0..50 {
        let (_, r) = next(&mut replies).await;
        assert_eq!(r["ok"], true, "{r}");
    }
    // About a second of writes: reads went on between them.
    let reads_during = d.status().devices[0].reads - reads_before;
    assert!(
        reads_during >= 10,
        "only {reads_during} reads during 50 writes"
    );
    d.stop().await;
}

#[tokio::test]
async fn writes_to_a_device_that_does_not_answer_are_refused_at_once() {
    let b = broker();
    let script = script();
    script.lock().expect("script").silent.push(0);
    let cfg = config(json!([{"name": "a", "poll": "20ms", "points": [
        {"name": "set", "address": "hr:1", "access": "rw"}]}]));
    let mut telemetry = subscribe(&b, "devices/a/telemetry", 64).await;
    let d = start(cfg, &script, &b);
    next(&mut telemetry).await;
    let r = command(&b, "a", json!({"point": "set", "value": 1})).await;
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["error"]
            .as_str()
            .expect("error")
            .contains("not answering"),
        "{r}"
    );
    assert!(script.lock().expect("script").writes.is_empty());
    d.stop().await;
}

#[test]
fn bad_configs_name_the_field() {
    let bad = |devices: Value, needle: &str| {
        let c: DriverConfig = serde_json::from_value(json!({
            "name": "x", "protocol": "modbus-tcp", "host": "h", "devices": devices}))
        .expect("parses");
        let e = c.validate().expect_err("invalid");
        assert!(e.contains(needle), "{e:?} should mention {needle:?}");
    };
    bad(json!([]), "devices");
    bad(
        json!([{"name": "a/b", "points": [{"name": "v", "address": "hr:1"}]}]),
        "devices[0].name",
    );
    bad(json!([{"name": "a", "points": []}]), "devices[0].points");
    bad(
        json!([{"name": "a", "points": [{"name": "v", "address": "hr:1"}, {"name": "v", "address": "hr:2"}]}]),
        "devices[0].points[1].name",
    );
    bad(
        json!([{"name": "a", "points": [{"name": "v", "address": " "}]}]),
        "points[0].address",
    );
    bad(
        json!([{"name": "a", "points": [{"name": "v", "address": "hr:1", "scale": 0}]}]),
        "scale",
    );
    bad(
        json!([{"name": "a", "poll": "1ms", "points": [{"name": "v", "address": "hr:1"}]}]),
        "poll",
    );
    let c: DriverConfig = serde_json::from_value(json!({
        "name": "x", "protocol": "modbus-rtu", "devices": [{"name": "a", "points": [{"name": "v", "address": "hr:1"}]}]}))
    .expect("parses");
    assert!(c.validate().expect_err("no serial").contains("serial"));
    let unknown: Result<DriverConfig, _> = serde_json::from_value(json!({
        "name": "x", "protocol": "modbus-tcp", "host": "h", "colour": 1, "devices": []}));
    assert!(unknown.is_err());
}

/// Issue 17, drivers 1: when the connection dropped only the device whose
/// read hit the failure published `bad`, the others on the connection
/// published nothing, and a driver that never connected published nothing
/// at all. Now every device publishes `bad` on its cadence from the first
/// failed connect on.
#[tokio::test]
async fn every_device_publishes_bad_on_its_cadence_while_the_connection_is_down() {
    let b = broker();
    let script = script();
    script.lock().expect("script").down = true;
    let cfg = config(json!([
        {"name": "a", "poll": "30ms", "points": [{"name": "v", "address": "hr:1"}]},
        {"name": "b", "poll": "30ms", "points": [{"name": "v", "address": "hr:2"}, {"name": "w", "address": "hr:3"}]}]));
    let mut sub_a = subscribe(&b, "devices/a/telemetry", 1024).await;
    let mut sub_b = subscribe(&b, "devices/b/telemetry", 1024).await;
    let d = start(cfg, &script, &b);
    // Never connected: both say so, again and again (the reconnect backoff
    // is up to 200 ms, the cadence 30 ms).
    for sub in [&mut sub_a, &mut sub_b] {
        for _ in 0..5 {
            let (_, doc) = next(sub).await;
            assert!(
                doc["quality"]
                    .as_object()
                    .expect("quality")
                    .values()
                    .all(|q| q == "bad"),
                "{doc}"
            );
            assert!(
                doc["error"].as_str().expect("error").contains("refused"),
                "{doc}"
            );
        }
    }
    assert_eq!(d.status().connects, 0);
    // Up: both good.
    script.lock().expect("script").down = false;
    for sub in [&mut sub_a, &mut sub_b] {
        loop {
            let (_, doc) = next(sub).await;
            if doc["quality"]["v"] == "good" {
                break;
            }
        }
    }
    // The connection breaks (and cannot be made again): the device whose
    // read hit it and its neighbour both go on publishing `bad`.
    {
        let mut s = script.lock().expect("script");
        s.broken = true;
        s.down = true;
    }
    for sub in [&mut sub_a, &mut sub_b] {
        let mut bad = 0;
        while bad < 5 {
            let (_, doc) = next(sub).await;
            if doc["quality"]["v"] == "bad" {
                bad += 1;
            }
        }
    }
    let st = d.status();
    assert!(!st.connected);
    assert!(st.devices.iter().all(|d| d.state == "bad"), "{st:?}");
    d.stop().await;
}

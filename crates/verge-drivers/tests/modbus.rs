//! The Modbus driver end to end against the in-process tokio-modbus server
//! (`modbus::sim`) through a real broker: every type and order, coalescing
//! counted at the server, scale/offset, write commands and their replies,
//! exception names, a server that goes away and comes back, and a hostile
//! server sending garbage that must never panic the driver.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_modbus::ExceptionCode;
use verge_broker::{Broker, BrokerConfig, LocalSubscription, Message};
use verge_drivers::modbus::plan::Area;
use verge_drivers::modbus::sim::Sim;
use verge_drivers::{Driver, DriverConfig};
use verge_mqtt::QoS;

fn broker() -> Broker {
    let cfg = BrokerConfig::default();
    let auth = Broker::authenticator(&cfg).expect("auth");
    Broker::start(cfg, auth)
}

fn config(port: u16, devices: Value) -> DriverConfig {
    serde_json::from_value(json!({
        "name": "plc", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": port,
        "timeout": "300ms", "retry": {"initial": "50ms", "max": "200ms"},
        "devices": devices,
    }))
    .expect("config")
}

async fn next(sub: &mut LocalSubscription) -> Value {
    let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .expect("a message in time")
        .expect("broker running");
    serde_json::from_slice(&m.payload).expect("json")
}

async fn telemetry(b: &Broker, device: &str) -> LocalSubscription {
    b.handle()
        .subscribe(&format!("devices/{device}/telemetry"), 256)
        .await
        .expect("sub")
}

/// Wait for a telemetry message that satisfies `f`.
async fn until(sub: &mut LocalSubscription, f: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..500 {
        let doc = next(sub).await;
        if f(&doc) {
            return doc;
        }
    }
    panic!("no telemetry matched")
}

async fn command(b: &Broker, device: &str, body: Value) -> Value {
    let mut sub = b
        .handle()
        .subscribe(&format!("devices/{device}/commands/write/reply"), 8)
        .await
        .expect("sub");
    let m = Message::local(
        format!("devices/{device}/commands/write"),
        body.to_string(),
        QoS::AtLeastOnce,
        false,
    );
    b.handle().publish(m).await.expect("publish");
    next(&mut sub).await
}

#[tokio::test]
async fn every_type_and_order_is_read_in_few_requests() {
    let b = broker();
    let sim = Sim::start().await.expect("sim");
    sim.set_holding(0, &[0xFFFE, 0xFFFE, 0x0001, 0x0002, 0xFFFF, 0xFFFF]);
    sim.set_holding(6, &[0x41AC, 0x0000, 0x4035, 0x8000, 0, 0, 0x6869, 0x2100]);
    sim.set_holding(20, &[0x0002, 0x0001, 0x3412, 0x0000, 0x41AC, 0b1000]);
    sim.set_input(5, &[215]);
    sim.set_coil(3, true);
    sim.set_discrete(9, true);
    let cfg = config(
        sim.addr().port(),
        json!([{"name": "m1", "unit": 7, "poll": "1h", "points": [
        {"name": "u16", "address": "hr:0"},
        {"name": "i16", "address": "hr:1", "type": "i16"},
        {"name": "u32", "address": "hr:2", "type": "u32"},
        {"name": "i32", "address": "hr:4", "type": "i32"},
        {"name": "f32", "address": "hr:6", "type": "f32"},
        {"name": "f64", "address": "hr:8", "type": "f64"},
        {"name": "text", "address": "hr:12", "type": "string", "length": 2},
        {"name": "u32_lw", "address": "hr:20", "type": "u32", "word_order": "little"},
        {"name": "u16_lb", "address": "hr:22", "byte_order": "little"},
        {"name": "f32_lw", "address": "hr:23", "type": "f32", "word_order": "little"},
        {"name": "bit3", "address": "hr:25.3"},
        {"name": "temp", "address": "ir:5", "scale": 0.1, "offset": -1.5},
        {"name": "run", "address": "coil:3"},
        {"name": "door", "address": "di:9"},
        {"name": "idle", "address": "coil:4"}]}]),
    );
    let mut sub = telemetry(&b, "m1").await;
    let d = Driver::start(cfg, b.handle()).expect("driver");
    let doc = next(&mut sub).await;
    assert_eq!(
        doc["values"],
        json!({"u16": 65534, "i16": -2, "u32": 65538, "i32": -1, "f32": 21.5, "f64": 21.5,
               "text": "hi!", "u32_lw": 65538, "u16_lb": 0x1234, "f32_lw": 21.5, "bit3": true,
               "temp": 20.0, "run": true, "door": true, "idle": false}),
        "{doc}"
    );
    assert!(doc.get("errors").is_none(), "{doc}");
    // hr:0..26 in one read (gaps of at most 8), then ir, coils and inputs.
    let log = sim.take_log();
    let shape: Vec<(u8, u8, u16, u16)> = log
        .iter()
        .map(|l| (l.unit, l.function, l.address, l.count))
        .collect();
    assert_eq!(
        shape,
        vec![(7, 1, 3, 2), (7, 2, 9, 1), (7, 4, 5, 1), (7, 3, 0, 26)]
    );
    let st = d.status();
    assert!(st.connected);
    assert_eq!(st.devices[0].state, "good");
    assert_eq!(st.devices[0].points_read, 15);
    d.stop().await;
}

#[tokio::test]
async fn a_large_table_is_read_in_full_size_requests() {
    let b = broker();
    let sim = Sim::start().await.expect("sim");
    let points: Vec<Value> = (0..1000)
        .map(|i| json!({"name": format!("p{i}"), "address": format!("hr:{i}")}))
        .collect();
    let cfg = config(
        sim.addr().port(),
        json!([{"name": "big", "poll": "1h", "points": points}]),
    );
    let mut sub = telemetry(&b, "big").await;
    let d = Driver::start(cfg, b.handle()).expect("driver");
    let doc = next(&mut sub).await;
    assert_eq!(doc["values"].as_object().map(|o| o.len()), Some(1000));
    // 1,000 registers, 125 per request.
    assert_eq!(sim.requests(), 8);
    d.stop().await;
}

#[tokio::test]
async fn write_commands_reach_the_device_and_are_answered() {
    let b = broker();
    let sim = Sim::start().await.expect("sim");
    let cfg = config(
        sim.addr().port(),
        json!([{"name": "w", "poll": "50ms", "points": [
        {"name": "set", "address": "hr:1", "access": "rw", "scale": 0.1},
        {"name": "flow", "address": "hr:2", "type": "f32", "access": "rw"},
        {"name": "big", "address": "hr:10", "type": "i32", "word_order": "little", "access": "rw"},
        {"name": "pump", "address": "coil:5", "access": "rw"},
        {"name": "ro", "address": "hr:4"}]}]),
    );
    let mut sub = telemetry(&b, "w").await;
    let d = Driver::start(cfg, b.handle()).expect("driver");
    next(&mut sub).await;
    sim.take_log();
    let r = command(&b, "w", json!({"point": "set", "value": 21.5, "id": 1})).await;
    assert_eq!(
        r,
        json!({"point": "set", "id": 1, "ok": true, "value": 21.5})
    );
    assert_eq!(sim.holding(1, 1), vec![215]);
    let r = command(&b, "w", json!({"point": "flow", "value": 21.5})).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(sim.holding(2, 2), vec![0x41AC, 0]);
    let r = command(&b, "w", json!({"point": "big", "value": -2})).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(sim.holding(10, 2), vec![0xFFFE, 0xFFFF]);
    let r = command(&b, "w", json!({"point": "pump", "value": true})).await;
    assert_eq!(r["ok"], true, "{r}");
    assert!(sim.coil(5));
    let writes: Vec<u8> = sim
        .take_log()
        .iter()
        .map(|l| l.function)
        .filter(|f| [5, 6, 15, 16].contains(f))
        .collect();
    assert_eq!(writes, vec![6, 16, 16, 5]);
    // A device without FC 5/6: the driver falls back to 15/16.
    sim.only_multiple_writes(true);
    let r = command(&b, "w", json!({"point": "pump", "value": false})).await;
    assert_eq!(r["ok"], true, "{r}");
    assert!(!sim.coil(5));
    let r = command(&b, "w", json!({"point": "set", "value": 1})).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(sim.holding(1, 1), vec![10]);
    let writes: Vec<u8> = sim
        .take_log()
        .iter()
        .map(|l| l.function)
        .filter(|f| [5, 6, 15, 16].contains(f))
        .collect();
    assert_eq!(writes, vec![5, 15, 6, 16]);
    // Refused before anything is sent.
    let r = command(&b, "w", json!({"point": "ro", "value": 1})).await;
    assert_eq!(r["ok"], false);
    assert!(
        r["error"].as_str().expect("error").contains("read-only"),
        "{r}"
    );
    let r = command(&b, "w", json!({"point": "set", "value": 1e9})).await;
    assert_eq!(r["ok"], false);
    assert!(
        r["error"].as_str().expect("error").contains("out of range"),
        "{r}"
    );
    let r = command(&b, "w", json!({"point": "pump", "value": "on"})).await;
    assert!(
        r["error"].as_str().expect("error").contains("not a bool"),
        "{r}"
    );
    // The device's refusal, named.
    sim.add_hole(Area::HoldingRegister, 2);
    let r = command(&b, "w", json!({"point": "flow", "value": 1.5})).await;
    assert_eq!(r["ok"], false);
    assert_eq!(r["error"], "refused: illegal data address", "{r}");
    let st = d.status();
    assert_eq!((st.writes, st.write_errors), (6, 4));
    d.stop().await;
}

#[tokio::test]
async fn exceptions_are_named_per_point_and_holes_split_the_read() {
    let b = broker();
    let sim = Sim::start().await.expect("sim");
    sim.set_holding(0, &[1, 2, 3, 4, 5]);
    sim.add_hole(Area::HoldingRegister, 2);
    let cfg = config(
        sim.addr().port(),
        json!([
        {"name": "holey", "poll": "30ms", "points": [
            {"name": "a", "address": "hr:0"},
            {"name": "b", "address": "hr:2"},
            {"name": "c", "address": "hr:4"}]},
        {"name": "broken", "unit": 9, "poll": "30ms", "points": [
            {"name": "x", "address": "hr:0"},
            {"name": "y", "address": "coil:0"}]}]),
    );
    sim.fail_unit(9, Some(ExceptionCode::ServerDeviceFailure));
    let mut holey = telemetry(&b, "holey").await;
    let mut broken = telemetry(&b, "broken").await;
    let d = Driver::start(cfg, b.handle()).expect("driver");
    let doc = next(&mut holey).await;
    assert_eq!(doc["values"], json!({"a": 1, "c": 5}), "{doc}");
    assert_eq!(
        doc["quality"],
        json!({"a": "good", "b": "bad", "c": "good"})
    );
    assert_eq!(doc["errors"], json!({"b": "illegal data address"}));
    let doc = next(&mut broken).await;
    assert_eq!(doc["quality"], json!({"x": "bad", "y": "bad"}), "{doc}");
    assert_eq!(
        doc["errors"],
        json!({"x": "server device failure", "y": "server device failure"})
    );
    // The split is kept: the next cycles read the points one by one.
    next(&mut holey).await;
    sim.take_log();
    next(&mut holey).await;
    let holey_reads = sim.take_log().iter().filter(|l| l.unit == 1).count();
    assert!(holey_reads <= 3 * 2, "{holey_reads}");
    // An exception is an answer: the device is still good.
    let st = d.status();
    assert_eq!(st.devices[1].state, "good");
    assert_eq!(st.devices[1].bad_points, 2);
    assert!(st.connected);
    sim.fail_unit(9, None);
    until(&mut broken, |d| d["quality"]["x"] == "good").await;
    d.stop().await;
}

#[tokio::test]
async fn a_server_that_goes_away_makes_the_device_bad_until_it_returns() {
    let b = broker();
    let mut sim = Sim::start().await.expect("sim");
    sim.set_holding(0, &[42]);
    let cfg = config(
        sim.addr().port(),
        json!([{"name": "m", "poll": "20ms", "points": [{"name": "v", "address": "hr:0"}]}]),
    );
    let mut sub = telemetry(&b, "m").await;
    let d = Driver::start(cfg, b.handle()).expect("driver");
    until(&mut sub, |d| d["values"]["v"] == 42).await;
    sim.stop();
    let doc = until(&mut sub, |d| d["quality"]["v"] == "bad").await;
    assert!(doc["error"].is_string(), "{doc}");
    let st = d.status();
    assert_eq!(st.devices[0].state, "bad");
    assert!(st.devices[0].last_error.is_some());
    sim.set_holding(0, &[43]);
    sim.resume().await.expect("resume");
    until(&mut sub, |d| d["values"]["v"] == 43).await;
    let st = d.status();
    assert_eq!(st.devices[0].state, "good");
    assert!(st.connected && st.connects >= 2, "{st:?}");
    d.stop().await;
}

/// Answers to send to a driver: each connection gets the next one after
/// reading a request (raw MBAP frames; none is a valid answer).
fn hostile_answers() -> Vec<Vec<u8>> {
    let mut v = vec![
        vec![],                                            // close at once
        vec![0x00],                                        // short header
        vec![0, 0, 0, 0, 0, 0, 1],                         // length 0
        vec![0, 0, 0, 7, 0, 3, 1, 3, 0],                   // protocol id 7
        vec![0, 0, 0, 0, 0, 2, 1, 3],                      // no byte count
        vec![0, 0, 0, 0, 0, 4, 1, 3, 3, 0],                // odd byte count
        vec![0, 0, 0, 0, 0, 5, 1, 3, 2, 0, 7],             // 1 register for 2
        vec![0, 0, 0, 0, 0, 9, 1, 3, 6, 0, 1, 0, 2, 0, 3], // 3 registers for 2
        vec![0, 0, 0, 0, 0, 3, 1, 0x83, 0x99],             // unknown exception code
        vec![0, 0, 0, 0, 0, 3, 1, 0x81, 2],                // exception for another function
        vec![0, 9, 0, 0, 0, 7, 1, 3, 4, 0, 1, 0, 2],       // wrong transaction id
        vec![0, 0, 0, 0, 0, 7, 2, 3, 4, 0, 1, 0, 2],       // wrong unit
        vec![0, 0, 0, 0, 0, 3, 1, 1, 1],                   // coils for a register read
        vec![0, 0, 0, 0, 0xFF, 0xFF, 1, 3],                // promises 64 KiB, sends 1
        vec![0, 0, 0, 0, 0, 2, 1, 0x2B],                   // MEI without body
    ];
    // Some noise.
    let mut x: u32 = 0x1234_5678;
    for len in [7usize, 13, 64, 300] {
        v.push(
            (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x.to_le_bytes()[0]
                })
                .collect(),
        );
    }
    v
}

#[tokio::test]
async fn garbage_from_a_hostile_server_never_panics_the_driver() {
    let b = broker();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let answers = hostile_answers();
    let n = answers.len();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let k = counter.fetch_add(1, Ordering::SeqCst);
            let answer = answers[k % answers.len()].clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 260];
                // Reply to each request with the same bad answer.
                while let Ok(read) = s.read(&mut buf).await {
                    if read == 0 || answer.is_empty() || s.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let mut cfg = config(
        port,
        json!([{"name": "m", "poll": "10ms", "points": [
            {"name": "v", "address": "hr:0", "type": "u32"}]}]),
    );
    cfg.timeout = Duration::from_millis(50);
    let mut sub = telemetry(&b, "m").await;
    let d = Driver::start(cfg, b.handle()).expect("driver");
    // Go through every answer at least twice (each bad answer drops the
    // connection, so each connection gets the next one).
    loop {
        let doc = next(&mut sub).await;
        assert_eq!(doc["quality"]["v"], "bad", "{doc}");
        if accepted.load(Ordering::SeqCst) > 2 * n {
            break;
        }
    }
    let st = d.status();
    assert_eq!(st.devices[0].state, "bad");
    assert_eq!(st.devices[0].points_read, 0);
    assert!(st.errors > 0);
    // Still alive: it keeps trying.
    let before = d.status().devices[0].errors;
    next(&mut sub).await;
    next(&mut sub).await;
    assert!(d.status().devices[0].errors > before);
    d.stop().await;
    server.abort();
}

#[tokio::test]
async fn bad_point_tables_are_refused_naming_the_field() {
    let b = broker();
    for (points, want) in [
        (
            json!([{"name": "a", "address": "hr:x"}]),
            "devices[0].points[0].address",
        ),
        (
            json!([{"name": "a", "address": "q:1"}]),
            "unknown Modbus table",
        ),
        (
            json!([{"name": "a", "address": "hr:1", "type": "string"}]),
            "devices[0].points[0].length",
        ),
        (
            json!([{"name": "a", "address": "hr:1"}, {"name": "b", "address": "hr:2", "type": "bool"}]),
            "devices[0].points[1].type",
        ),
    ] {
        let cfg = config(502, json!([{"name": "d", "points": points}]));
        let e = Driver::start(cfg, b.handle()).err().expect("refused");
        assert!(e.contains(want), "{e}");
    }
}

/// Issue 17, drivers 4: a Modbus TCP connection the device closes was
/// reported as a stale errno (`unit 1: No such file or directory (os
/// error 2)`, `Operation now in progress (os error 115)`).
#[tokio::test]
async fn tcp_connection_closed_by_the_peer_is_named() {
    let b = broker();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // Every connection: read the request, then close without answering.
    let server = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 260];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    let cfg = config(
        port,
        json!([{"name": "closing", "poll": "20ms", "points": [{"name": "v", "address": "hr:0"}]}]),
    );
    let mut sub = telemetry(&b, "closing").await;
    let d = Driver::start(cfg, b.handle()).expect("driver");
    let doc = until(&mut sub, |d| d["quality"]["v"] == "bad").await;
    let error = doc["error"].as_str().expect("error");
    assert!(error.contains("connection closed by the device"), "{error}");
    assert!(!error.contains("os error"), "{error}");
    let st = d.status();
    let last = st.devices[0].last_error.clone().unwrap_or_default();
    assert!(last.contains("connection closed by the device"), "{st:?}");
    d.stop().await;
    server.abort();
}

//! DL/T 645 over a real serial line: a pseudo-terminal pair, the driver
//! opening the `/dev/pts/N` end by path (`dlt645-serial`), the project's
//! meter simulator serving the other end.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use serial2_tokio::SerialPort;
use verge_broker::{Broker, BrokerConfig};
use verge_drivers::dlt645::sim::Meters;
use verge_drivers::{Driver, DriverConfig};

/// The `/dev/pts/N` paths this process has open.
fn open_pts() -> HashSet<PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|p| p.starts_with("/dev/pts/"))
        .collect()
}

#[tokio::test]
async fn a_meter_is_read_over_a_serial_line() {
    let before = open_pts();
    let (master, line) = SerialPort::pair().expect("pseudo-terminal pair");
    let path = open_pts()
        .difference(&before)
        .next()
        .cloned()
        .expect("the pair's /dev/pts path");
    let meters = Meters::new(&["000000000042"]).expect("meters");
    tokio::spawn(async move { meters.serve(master).await });

    let cfg = BrokerConfig::default();
    let auth = Broker::authenticator(&cfg).expect("auth");
    let b = Broker::start(cfg, auth);
    let cfg: DriverConfig = serde_json::from_value(json!({
        "name": "meters", "protocol": "dlt645-serial",
        // A pseudo-terminal refuses parity (serial2 checks the settings took).
        "serial": {"device": path.to_string_lossy(), "baud": 2400, "parity": "none"},
        "timeout": "500ms", "retry": {"initial": "50ms", "max": "200ms"},
        "devices": [{"name": "m42", "meter": "000000000042", "poll": "50ms", "points": [
            {"name": "voltage", "address": "02010100"},
            {"name": "energy", "address": "00000000"}]}],
    }))
    .expect("config");
    let mut sub = b
        .handle()
        .subscribe("devices/m42/telemetry", 64)
        .await
        .expect("sub");
    let d = Driver::start(cfg, b.handle()).expect("driver");
    let m = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .unwrap_or_else(|_| panic!("no telemetry: {:?}", d.status()))
        .expect("broker running");
    let doc: serde_json::Value = serde_json::from_slice(&m.payload).expect("json");
    assert_eq!(
        doc["quality"],
        json!({"voltage": "good", "energy": "good"}),
        "{doc}"
    );
    assert!(
        doc["values"]["voltage"].as_f64().is_some_and(|v| v > 0.0),
        "{doc}"
    );
    assert!(doc["values"]["energy"].as_f64().is_some(), "{doc}");
    assert_eq!(d.status().devices[0].state, "good");
    d.stop().await;
    drop(line);
}

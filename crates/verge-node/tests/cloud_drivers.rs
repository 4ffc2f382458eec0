//! A whole node given a protocol driver by its cloud: the driver polls a
//! Modbus TCP simulator; the node's API refuses to create, replace or
//! delete it (409 `managed_by_cloud`) and leaves the node's own drivers
//! alone; a copy saved through the API before the cloud took the name
//! over is dropped; after a restart without the cloud the driver runs
//! again from the cached revision.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/node.rs"]
mod node;

use std::time::Instant;

use node::*;
use serde_json::{Value, json};
use verge_drivers::modbus::sim::Sim;

/// A Modbus TCP driver `plc` on the simulator at `port`, device `m1`,
/// with `points`.
fn plc(port: u16, points: Value) -> Value {
    json!({"name": "plc", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": port,
           "timeout": "300ms", "retry": {"initial": "50ms", "max": "200ms"},
           "devices": [{"name": "m1", "poll": "100ms", "points": points}]})
}

/// A DL/T 645 driver on a port where nothing listens.
fn meter(name: &str) -> Value {
    json!({"name": name, "protocol": "dlt645-tcp", "host": "127.0.0.1", "port": closed_port(),
           "timeout": "100ms", "retry": {"initial": "50ms", "max": "100ms"},
           "devices": [{"name": format!("{name}-dev"), "meter": "000000000001", "poll": "100ms",
                        "points": [{"name": "voltage", "address": "02010100"}]}]})
}

/// Wait until the driver `name` runs with the point names `points` and has
/// read its device; its `GET /api/drivers/{name}`.
async fn runs(node: &Running, name: &str, points: &[&str]) -> Value {
    let start = Instant::now();
    loop {
        let (st, v) = node
            .call("GET", &format!("/api/drivers/{name}"), None)
            .await;
        let names: Vec<&str> = v["config"]["devices"][0]["points"]
            .as_array()
            .map(|ps| ps.iter().filter_map(|p| p["name"].as_str()).collect())
            .unwrap_or_default();
        if st == 200 && names == points && v["status"]["reads"].as_u64() > Some(0) {
            return v;
        }
        assert!(
            start.elapsed() < WAIT,
            "driver {name} does not run {points:?}: {st} {v}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn code(v: &Value) -> Option<&str> {
    v["error"]["code"].as_str()
}

#[tokio::test]
async fn a_cloud_driver_runs_is_refused_to_the_local_api_and_comes_back_after_a_restart() {
    let sim = Sim::start().await.expect("sim");
    sim.set_holding(0, &[215, 7]);
    let port = sim.addr().port();
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");

    // Before the node is the cloud's, its API made a driver `plc`.
    let node = start(config(&data, ""), None).await;
    let own_plc = plc(port, json!([{"name": "mine", "address": "hr:1"}]));
    let (st, v) = node.call("POST", "/api/drivers", Some(own_plc)).await;
    assert_eq!(st, 201, "{v}");
    node.stop().await;

    // The cloud deploys `plc`: it replaces the node's own.
    let cloud = Cloud::start().await;
    let spec = |points| serde_json::from_value(plc(port, points)).expect("spec");
    cloud.send(|d| d.drivers = vec![spec(json!([{"name": "temp", "address": "hr:0"}]))]);
    let node = start(config(&data, ""), Some(cloud.link(&data))).await;
    runs(&node, "plc", &["temp"]).await;
    let (st, v) = node.call("POST", "/api/drivers", Some(meter("own"))).await;
    assert_eq!(st, 201, "{v}");
    let own = node.call("GET", "/api/drivers/own", None).await.1["config"].clone();

    // The node's API does not change it.
    let mine = plc(port, json!([{"name": "mine", "address": "hr:1"}]));
    for (method, path, body) in [
        ("POST", "/api/drivers", Some(mine.clone())),
        ("PUT", "/api/drivers/plc", Some(mine)),
        ("DELETE", "/api/drivers/plc", None),
    ] {
        let (st, v) = node.call(method, path, body).await;
        assert_eq!(
            (st, code(&v)),
            (409, Some("managed_by_cloud")),
            "{method} {v}"
        );
    }
    runs(&node, "plc", &["temp"]).await;

    // A new table from the cloud; the node's own driver is untouched and
    // stays the node's own in the heartbeat, `plc` is not.
    cloud.send(|d| {
        d.drivers = vec![spec(json!([
            {"name": "temp", "address": "hr:0"}, {"name": "pressure", "address": "hr:1"}
        ]))]
    });
    let v = runs(&node, "plc", &["temp", "pressure"]).await;
    assert_eq!(v["config"]["devices"][0]["name"], "m1");
    let (st, v) = node.call("GET", "/api/drivers/own", None).await;
    assert_eq!((st, &v["config"]), (200, &own));
    let items = cloud
        .local_items(|i| i.iter().any(|x| x == "driver/own/api"))
        .await;
    assert!(!items.iter().any(|x| x.contains("plc")), "{items:?}");
    node.stop().await;
    let saved = std::fs::read_to_string(data.join("local/drivers.json")).expect("saved");
    assert!(
        saved.contains("own-dev") && !saved.contains("\"plc\""),
        "the cloud's revision wins: {saved}"
    );

    // Restarted without its cloud: the cached revision's driver runs again,
    // still the cloud's.
    let mut link = cloud.link(&data);
    link.creds.cloud_url = format!("http://127.0.0.1:{}", closed_port());
    drop(cloud);
    let node = start(config(&data, ""), Some(link)).await;
    runs(&node, "plc", &["temp", "pressure"]).await;
    let (st, v) = node.call("DELETE", "/api/drivers/plc", None).await;
    assert_eq!((st, code(&v)), (409, Some("managed_by_cloud")), "{v}");
    let (st, v) = node.call("GET", "/api/drivers/own", None).await;
    assert_eq!((st, &v["config"]), (200, &own));
    node.stop().await;
}

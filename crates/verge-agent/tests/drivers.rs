//! Protocol drivers as a kind of the desired state: a node polls a Modbus
//! TCP simulator with the driver the cloud deployed and publishes to its
//! broker; a changed point table takes effect, an unchanged driver is not
//! restarted, a removed one stops; an invalid driver fails its item and
//! the node returns to its last good revision whole; a cloud driver
//! replaces the node's own of its name and leaves the others alone; a
//! cloud driver changed on the node is put back; the cached revision's
//! drivers run again after a restart without the cloud.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use verge_broker::LocalSubscription;
use verge_drivers::modbus::sim::Sim;
use verge_protocol::{ApplyAttempt, AttemptState, DriverSpec, ItemOutcome};

/// A Modbus TCP driver `name` on the simulator at `port` with one device
/// `device` polled every 100 ms; `points` its point table.
fn modbus(name: &str, port: u16, device: &str, points: Value) -> DriverSpec {
    serde_json::from_value(json!({
        "name": name, "protocol": "modbus-tcp", "host": "127.0.0.1", "port": port,
        "timeout": "300ms", "retry": {"initial": "50ms", "max": "200ms"},
        "devices": [{"name": device, "poll": "100ms", "points": points}],
    }))
    .expect("driver spec")
}

/// A port on loopback where nothing listens.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn temp_only(port: u16) -> DriverSpec {
    modbus(
        "plc",
        port,
        "m1",
        json!([{"name": "temp", "address": "hr:0"}]),
    )
}

async fn telemetry(node: &TestNode, device: &str) -> LocalSubscription {
    node.broker
        .handle()
        .subscribe(&format!("devices/{device}/telemetry"), 1024)
        .await
        .expect("subscribe")
}

/// The next telemetry message whose values satisfy `f`.
async fn reading(sub: &mut LocalSubscription, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let m = tokio::time::timeout_at(deadline, sub.recv())
            .await
            .expect("a matching reading in time")
            .expect("broker running");
        let doc: Value = serde_json::from_slice(&m.payload).expect("JSON");
        if f(&doc["values"]) {
            return doc;
        }
    }
}

/// Whether no message arrives on `sub` within `quiet` (after what was
/// queued or still on its way through the broker is drained).
async fn silent(sub: &mut LocalSubscription, quiet: Duration) -> bool {
    while tokio::time::timeout(Duration::from_millis(50), sub.recv())
        .await
        .is_ok()
    {}
    tokio::time::timeout(quiet, sub.recv()).await.is_err()
}

/// The outcome and error of the item `driver`/`name` of `a`, if listed.
fn item(a: &ApplyAttempt, name: &str) -> Option<(ItemOutcome, Option<String>)> {
    a.items
        .iter()
        .find(|i| i.kind == "driver" && i.name == name)
        .map(|i| (i.result, i.error.clone()))
}

/// The point names of the running driver `name`'s first device.
fn points(node: &TestNode, name: &str) -> Option<Vec<String>> {
    let (config, _) = node.drivers.get(name)?;
    Some(
        config.devices[0]
            .points
            .iter()
            .map(|p| p.name.clone())
            .collect(),
    )
}

#[tokio::test]
async fn a_deployed_driver_polls_publishes_follows_its_table_and_stops_when_removed() {
    let sim = Sim::start().await.expect("sim");
    sim.set_holding(0, &[215, 7]);
    let port = sim.addr().port();
    let cloud = FakeCloud::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let node = TestNode::new(dir.path()).await;
    let mut sub = telemetry(&node, "m1").await;

    let v1 = cloud.publish(|d| d.drivers = vec![temp_only(port)]);
    let agent = node.agent(cloud.creds()).await;
    let a = eventually_attempt(&agent, v1, AttemptState::Applied).await;
    assert_eq!(item(&a, "plc"), Some((ItemOutcome::Applied, None)));
    assert!(agent.status_handle().manages("driver", "plc"));
    let doc = reading(&mut sub, |v| v["temp"] == 215).await;
    assert!(doc["values"].get("pressure").is_none(), "{doc}");
    // The heartbeat carries the driver's status.
    eventually_report(&cloud, |r| {
        r.drivers
            .iter()
            .any(|d| d["name"] == "plc" && d["connected"] == true && d["reads"].as_u64() > Some(0))
    })
    .await;

    // A changed point table takes effect.
    let v2 = cloud.publish(|d| {
        d.drivers = vec![modbus(
            "plc",
            port,
            "m1",
            json!([{"name": "temp", "address": "hr:0"}, {"name": "pressure", "address": "hr:1"}]),
        )]
    });
    let a = eventually_attempt(&agent, v2, AttemptState::Applied).await;
    assert_eq!(item(&a, "plc"), Some((ItemOutcome::Applied, None)));
    reading(&mut sub, |v| v["temp"] == 215 && v["pressure"] == 7).await;

    // A revision that leaves the driver as it is does not restart it: its
    // reads go on counting, and it is no item of the attempt.
    eventually("some reads", || async {
        node.drivers.get("plc").is_some_and(|(_, s)| s.reads >= 5)
    })
    .await;
    let reads = node.drivers.get("plc").expect("runs").1.reads;
    let v3 = cloud.publish(|_| {});
    let a = eventually_attempt(&agent, v3, AttemptState::Applied).await;
    assert_eq!(item(&a, "plc"), None, "{a:?}");
    let (_, status) = node.drivers.get("plc").expect("runs");
    assert!(status.reads >= reads && status.connects == 1, "{status:?}");

    // Removed from the state: it stops.
    let v4 = cloud.publish(|d| d.drivers.clear());
    let a = eventually_attempt(&agent, v4, AttemptState::Applied).await;
    assert_eq!(item(&a, "plc"), Some((ItemOutcome::Removed, None)));
    assert!(node.drivers.get("plc").is_none());
    assert!(!agent.status_handle().manages("driver", "plc"));
    assert!(silent(&mut sub, Duration::from_millis(500)).await);
    agent.shutdown().await;
}

#[tokio::test]
async fn an_invalid_driver_fails_and_the_node_returns_to_its_last_good_drivers() {
    let sim = Sim::start().await.expect("sim");
    sim.set_holding(0, &[215, 7]);
    sim.set_holding(10, &[42]);
    let port = sim.addr().port();
    let cloud = FakeCloud::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let node = TestNode::new(dir.path()).await;
    let mut sub = telemetry(&node, "m1").await;
    let v1 = cloud.publish(|d| d.drivers = vec![temp_only(port)]);
    let agent = node.agent(cloud.creds()).await;
    eventually_attempt(&agent, v1, AttemptState::Applied).await;
    reading(&mut sub, |v| v["temp"] == 215).await;

    // v2 changes `plc`, adds `plc2` (both fine) and `bad`, whose protocol
    // the node does not know: the whole revision goes.
    let v2 = cloud.publish(|d| {
        let mut bad = modbus("bad", port, "m3", json!([]));
        bad.settings
            .insert("protocol".into(), json!("profibus-over-carrier-pigeon"));
        d.drivers = vec![
            modbus(
                "plc",
                port,
                "m1",
                json!([{"name": "temp", "address": "hr:0"}, {"name": "pressure", "address": "hr:1"}]),
            ),
            modbus(
                "plc2",
                port,
                "m2",
                json!([{"name": "level", "address": "hr:10"}]),
            ),
            bad,
        ];
    });
    let a = eventually_attempt(&agent, v2, AttemptState::RolledBack).await;
    let (outcome, error) = item(&a, "bad").expect("the bad driver's item");
    assert_eq!(outcome, ItemOutcome::Failed);
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("unknown variant")),
        "{error:?}"
    );
    assert_eq!(a.rolled_back_to, Some(v1));
    assert_eq!(agent.status().applied_version, v1);
    assert_eq!(points(&node, "plc"), Some(vec!["temp".to_owned()]));
    assert!(
        node.drivers.get("plc2").is_none(),
        "v2's new driver is gone"
    );
    assert!(node.drivers.get("bad").is_none());
    assert!(!agent.status_handle().manages("driver", "plc2"));
    reading(&mut sub, |v| {
        v["temp"] == 215 && v.get("pressure").is_none()
    })
    .await;

    // A driver that names a file of the node fails alone; the one that ran
    // keeps its config.
    let v3 = cloud.publish(|d| {
        let mut plc = modbus(
            "plc",
            port,
            "m1",
            json!([{"name": "pressure", "address": "hr:1"}]),
        );
        plc.settings.insert("pki_dir".into(), json!("/etc"));
        d.drivers = vec![plc];
    });
    let a = eventually_attempt(&agent, v3, AttemptState::RolledBack).await;
    let (outcome, error) = item(&a, "plc").expect("the driver's item");
    assert_eq!(outcome, ItemOutcome::Failed);
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.starts_with("`pki_dir` is the node's own")),
        "{error:?}"
    );
    assert_eq!(points(&node, "plc"), Some(vec!["temp".to_owned()]));
    assert_eq!(
        agent.status().apply_errors,
        [format!("driver `plc`: {}", error.unwrap_or_default())]
    );
    reading(&mut sub, |v| v["temp"] == 215).await;
    agent.shutdown().await;
}

#[tokio::test]
async fn a_cloud_driver_replaces_the_nodes_own_of_its_name_and_leaves_the_others() {
    let sim = Sim::start().await.expect("sim");
    sim.set_holding(0, &[215]);
    sim.set_holding(5, &[99]);
    let port = sim.addr().port();
    let cloud = FakeCloud::start().await;
    cloud.state.hold_ms.store(200, Ordering::SeqCst);
    let dir = tempfile::tempdir().expect("tmp");
    let node = TestNode::new(dir.path()).await;
    // The node's own drivers: `plc` (the cloud deploys one of that name)
    // and `own`.
    let config = |spec: DriverSpec| {
        serde_json::to_value(spec)
            .and_then(serde_json::from_value)
            .expect("driver config")
    };
    node.drivers
        .create(config(modbus(
            "plc",
            port,
            "m1",
            json!([{"name": "mine", "address": "hr:5"}]),
        )))
        .await
        .expect("own plc");
    let own = modbus("own", port, "o1", json!([{"name": "x", "address": "hr:5"}]));
    node.drivers
        .create(config(own.clone()))
        .await
        .expect("own driver");
    let own_config = node.drivers.get("own").expect("own").0;
    let mut sub = telemetry(&node, "m1").await;

    let v1 = cloud.publish(|d| d.drivers = vec![temp_only(port)]);
    let agent = node.agent(cloud.creds()).await;
    let a = eventually_attempt(&agent, v1, AttemptState::Applied).await;
    assert_eq!(item(&a, "plc"), Some((ItemOutcome::Applied, None)));
    assert_eq!(item(&a, "own"), None);
    assert_eq!(points(&node, "plc"), Some(vec!["temp".to_owned()]));
    reading(&mut sub, |v| v["temp"] == 215).await;
    let (config_now, status) = node.drivers.get("own").expect("own runs");
    assert_eq!((config_now, status.connects), (own_config.clone(), 1));
    let handle = agent.status_handle();
    assert!(handle.manages_driver("plc") && !handle.manages_driver("own"));

    // Deleted or changed on the node behind the cloud's back: put back at
    // the next quiet poll and reported as drift.
    node.drivers.delete("plc").await;
    eventually("the driver restored", || async {
        points(&node, "plc") == Some(vec!["temp".to_owned()])
    })
    .await;
    eventually("the drift reported", || async {
        cloud
            .reports()
            .iter()
            .any(|r| r.drift.contains(&"driver `plc` restored".to_owned()))
    })
    .await;
    node.drivers
        .create(config(modbus(
            "plc",
            port,
            "m1",
            json!([{"name": "mine", "address": "hr:5"}]),
        )))
        .await
        .expect("changed");
    eventually("the driver's table put back", || async {
        points(&node, "plc") == Some(vec!["temp".to_owned()])
    })
    .await;

    // The cloud lets go of `plc`: removed (the node's own does not come
    // back); `own` runs on untouched.
    let v2 = cloud.publish(|d| d.drivers.clear());
    let a = eventually_attempt(&agent, v2, AttemptState::Applied).await;
    assert_eq!(item(&a, "plc"), Some((ItemOutcome::Removed, None)));
    assert!(node.drivers.get("plc").is_none());
    let (config_now, status) = node.drivers.get("own").expect("own runs");
    assert_eq!((config_now, status.connects), (own_config, 1));
    agent.shutdown().await;
}

#[tokio::test]
async fn the_cached_revisions_drivers_run_again_after_a_restart_without_the_cloud() {
    let sim = Sim::start().await.expect("sim");
    sim.set_holding(0, &[215]);
    let port = sim.addr().port();
    let cloud = FakeCloud::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let v1 = cloud.publish(|d| d.drivers = vec![temp_only(port)]);
    {
        let node = TestNode::new(dir.path()).await;
        let agent = node.agent(cloud.creds()).await;
        eventually_attempt(&agent, v1, AttemptState::Applied).await;
        agent.shutdown().await;
        node.drivers.shutdown().await;
        node.broker.shutdown().await;
    }
    // A new process: fresh parts on the same data dir, the cloud gone.
    let node = TestNode::new(dir.path()).await;
    let mut sub = telemetry(&node, "m1").await;
    let mut creds = cloud.creds();
    creds.cloud_url = closed_url().await;
    let agent = node.agent(creds).await;
    assert_eq!(agent.status().applied_version, v1);
    assert_eq!(points(&node, "plc"), Some(vec!["temp".to_owned()]));
    assert!(agent.status_handle().manages_driver("plc"));
    reading(&mut sub, |v| v["temp"] == 215).await;
    agent.shutdown().await;
}

/// A node that runs no drivers fails a revision that has some.
#[tokio::test]
async fn a_node_without_drivers_fails_a_revision_with_one() {
    let cloud = FakeCloud::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let node = TestNode::new(dir.path()).await;
    let v1 = cloud.publish(|d| d.drivers = vec![temp_only(1)]);
    let mut parts = node.parts();
    parts.drivers = None;
    let agent = verge_agent::Agent::start(cloud.creds(), node.cloud_dir(), parts)
        .await
        .expect("agent");
    let a = eventually_attempt(&agent, v1, AttemptState::RolledBack).await;
    let (outcome, error) = item(&a, "plc").expect("item");
    assert_eq!(outcome, ItemOutcome::Failed);
    assert_eq!(error.as_deref(), Some("this node runs no protocol drivers"));
    agent.shutdown().await;
}

/// An OPC UA driver from the cloud names no `pki_dir`: it gets the node's
/// default, and what runs is compared with the spec as the node runs it,
/// so the next revision does not restart it.
#[tokio::test]
async fn an_opcua_driver_gets_the_nodes_pki_dir_and_is_not_restarted_for_it() {
    let cloud = FakeCloud::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let node = TestNode::new(dir.path()).await;
    let ua: DriverSpec = serde_json::from_value(json!({
        "name": "ua", "protocol": "opcua",
        "endpoint": format!("opc.tcp://127.0.0.1:{}/", closed_port()),
        "timeout": "100ms", "retry": {"initial": "50ms", "max": "100ms"},
        "devices": [{"name": "u1", "points": [{"name": "t", "address": "ns=2;s=T"}]}],
    }))
    .expect("spec");
    let v1 = cloud.publish(|d| d.drivers = vec![ua]);
    let agent = node.agent(cloud.creds()).await;
    let a = eventually_attempt(&agent, v1, AttemptState::Applied).await;
    assert_eq!(item(&a, "ua"), Some((ItemOutcome::Applied, None)));
    let (config, _) = node.drivers.get("ua").expect("runs");
    // Its own folder, never that of a node-own driver of the same name.
    let pki = dir.path().join("opcua-pki/cloud/ua");
    assert_eq!(config.pki_dir.as_deref(), pki.to_str());
    let v2 = cloud.publish(|_| {});
    let a = eventually_attempt(&agent, v2, AttemptState::Applied).await;
    assert_eq!(item(&a, "ua"), None, "{a:?}");
    agent.shutdown().await;
}

/// A device belongs to one driver; a revision may move a device from one
/// driver to another, kept or removed.
#[tokio::test]
async fn a_device_moves_between_the_drivers_of_a_revision() {
    let sim = Sim::start().await.expect("sim");
    sim.set_holding(0, &[215]);
    let port = sim.addr().port();
    let cloud = FakeCloud::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let node = TestNode::new(dir.path()).await;
    let temp = || json!([{"name": "temp", "address": "hr:0"}]);
    let devices = |name: &str| {
        node.drivers
            .get(name)
            .map(|(c, _)| c.devices.iter().map(|d| d.name.clone()).collect::<Vec<_>>())
    };
    let v1 = cloud.publish(|d| {
        d.drivers = vec![
            modbus("a", port, "m1", temp()),
            modbus("b", port, "m2", temp()),
        ]
    });
    let agent = node.agent(cloud.creds()).await;
    eventually_attempt(&agent, v1, AttemptState::Applied).await;

    // `b` takes m1 from `a`, which is listed after it and reads m3 now.
    let v2 = cloud.publish(|d| {
        d.drivers = vec![
            modbus("b", port, "m1", temp()),
            modbus("a", port, "m3", temp()),
        ]
    });
    let a = eventually_attempt(&agent, v2, AttemptState::Applied).await;
    assert_eq!(item(&a, "b"), Some((ItemOutcome::Applied, None)), "{a:?}");
    assert_eq!(devices("a"), Some(vec!["m3".to_owned()]));
    assert_eq!(devices("b"), Some(vec!["m1".to_owned()]));

    // `a` goes and the new `c` takes its m3.
    let v3 = cloud.publish(|d| {
        d.drivers = vec![
            modbus("b", port, "m1", temp()),
            modbus("c", port, "m3", temp()),
        ]
    });
    let a = eventually_attempt(&agent, v3, AttemptState::Applied).await;
    assert_eq!(item(&a, "a"), Some((ItemOutcome::Removed, None)), "{a:?}");
    assert_eq!(item(&a, "c"), Some((ItemOutcome::Applied, None)), "{a:?}");
    assert_eq!(devices("a"), None);
    assert_eq!(devices("c"), Some(vec!["m3".to_owned()]));

    // A device of the node's own driver is not taken: that item fails.
    let own = serde_json::to_value(modbus("own", port, "o1", temp()))
        .and_then(serde_json::from_value)
        .expect("config");
    node.drivers.create(own).await.expect("own driver");
    let v4 = cloud.publish(|d| d.drivers.push(modbus("d", port, "o1", temp())));
    let a = eventually_attempt(&agent, v4, AttemptState::RolledBack).await;
    let (outcome, error) = item(&a, "d").expect("item");
    assert_eq!(outcome, ItemOutcome::Failed);
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("already read by driver `own`")),
        "{error:?}"
    );
    assert_eq!(devices("own"), Some(vec!["o1".to_owned()]));
    agent.shutdown().await;
}

/// A driver the revision marks `"enabled": false` does not run; enabled
/// again, it starts.
#[tokio::test]
async fn a_disabled_driver_does_not_run() {
    let sim = Sim::start().await.expect("sim");
    sim.set_holding(0, &[215]);
    let port = sim.addr().port();
    let cloud = FakeCloud::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let node = TestNode::new(dir.path()).await;
    let mut sub = telemetry(&node, "m1").await;
    let v1 = cloud.publish(|d| d.drivers = vec![temp_only(port)]);
    let agent = node.agent(cloud.creds()).await;
    eventually_attempt(&agent, v1, AttemptState::Applied).await;
    reading(&mut sub, |v| v["temp"] == 215).await;

    let v2 = cloud.publish(|d| {
        d.drivers[0].settings.insert("enabled".into(), json!(false));
    });
    let a = eventually_attempt(&agent, v2, AttemptState::Applied).await;
    assert_eq!(item(&a, "plc"), Some((ItemOutcome::Applied, None)));
    assert!(node.drivers.get("plc").is_none());
    assert!(silent(&mut sub, Duration::from_millis(500)).await);
    // Still the cloud's, and no item while it stays disabled.
    assert!(agent.status_handle().manages_driver("plc"));
    let v3 = cloud.publish(|_| {});
    let a = eventually_attempt(&agent, v3, AttemptState::Applied).await;
    assert_eq!(item(&a, "plc"), None);

    let v4 = cloud.publish(|d| d.drivers = vec![temp_only(port)]);
    let a = eventually_attempt(&agent, v4, AttemptState::Applied).await;
    assert_eq!(item(&a, "plc"), Some((ItemOutcome::Applied, None)));
    reading(&mut sub, |v| v["temp"] == 215).await;
    agent.shutdown().await;
}

/// A revision whose driver replaces the node's own driver of that name
/// fails on another item: going back removes the cloud's driver and the
/// node's own runs again with its own point table.
#[tokio::test]
async fn a_failed_revision_gives_back_the_nodes_own_driver_it_replaced() {
    let sim = Sim::start().await.expect("sim");
    sim.set_holding(0, &[215]);
    sim.set_holding(5, &[99]);
    let port = sim.addr().port();
    let cloud = FakeCloud::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let node = TestNode::new(dir.path()).await;
    let own: verge_drivers::DriverConfig = serde_json::to_value(modbus(
        "plc",
        port,
        "m1",
        json!([{"name": "mine", "address": "hr:5"}]),
    ))
    .and_then(serde_json::from_value)
    .expect("driver config");
    node.drivers.create(own).await.expect("own plc");
    let v1 = cloud.publish(|d| {
        d.drivers = vec![temp_only(port)];
        d.rules = vec![rule_spec(json!({"id": "bad", "sql": "SELEC nothing"}))];
    });
    let agent = node.agent(cloud.creds()).await;
    eventually_attempt(&agent, v1, AttemptState::RolledBack).await;
    assert_eq!(points(&node, "plc"), Some(vec!["mine".to_owned()]));
    agent.shutdown().await;
}

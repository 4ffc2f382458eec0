//! Changes made through the node's own HTTP API survive a restart: whole
//! nodes started from a config file, changed over HTTP, stopped and
//! started again on the same data dir; the config file wins a clash; a
//! corrupt file is moved aside and the node starts; concurrent updates
//! leave the file as the node runs; a cloud-managed node
//! reports its own items (and never the cloud's) in the heartbeat.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/node.rs"]
mod node;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use node::*;
use serde_json::{Value, json};
use verge_protocol::StatusReport;

/// The config file's rule.
const CONFIG_RULE: &str = r#"
[[rules]]
id = "from-config"
sql = "SELECT * FROM \"devices/+/telemetry\""
actions = [{ type = "republish", topic = "config/out" }]
"#;

fn rule(id: &str, topic: &str) -> Value {
    json!({"id": id, "sql": "SELECT temperature FROM \"devices/+/telemetry\"",
           "actions": [{"type": "republish", "topic": topic}]})
}

fn driver(name: &str, port: u16) -> Value {
    json!({"name": name, "protocol": "dlt645-tcp", "host": "127.0.0.1", "port": port,
           "timeout": "100ms", "retry": {"initial": "50ms", "max": "100ms"},
           "devices": [{"name": format!("{name}-dev"), "meter": "000000000001", "poll": "100ms",
                        "points": [{"name": "voltage", "address": "02010100"},
                                   {"name": "current", "address": "02020100"}]}]})
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test]
async fn api_changes_survive_a_restart_and_deleted_ones_stay_deleted() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let port = closed_port();
    let node = start(config(&data, CONFIG_RULE), None).await;
    assert_eq!(
        node.call("POST", "/api/rules", Some(rule("own", "own/out")))
            .await
            .0,
        201
    );
    assert_eq!(
        node.call("POST", "/api/rules", Some(rule("paused", "paused/out")))
            .await
            .0,
        201
    );
    let (st, v) = node.call("POST", "/api/rules/paused/stop", None).await;
    assert_eq!((st, v["status"].as_str()), (200, Some("stopped")));
    // Updated after it was created: the new version is the one kept.
    assert_eq!(
        node.call("PUT", "/api/rules/own", Some(rule("own", "own/v2")))
            .await
            .0,
        200
    );
    assert_eq!(
        node.call("POST", "/api/rules", Some(rule("gone", "gone/out")))
            .await
            .0,
        201
    );
    assert_eq!(node.call("DELETE", "/api/rules/gone", None).await.0, 204);
    // The config file's rule deleted through the API: gone until restart.
    assert_eq!(
        node.call("DELETE", "/api/rules/from-config", None).await.0,
        204
    );
    let (st, v) = node
        .call("POST", "/api/drivers", Some(driver("meter", port)))
        .await;
    assert_eq!(st, 201, "{v}");
    assert_eq!(
        node.call("POST", "/api/drivers", Some(driver("old-meter", port)))
            .await
            .0,
        201
    );
    assert_eq!(
        node.call("DELETE", "/api/drivers/old-meter", None).await.0,
        204
    );
    let (st, v) = node
        .call(
            "POST",
            "/api/functions",
            Some(json!({"name": "echo", "module_base64": module_b64()})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, _) = node
        .call(
            "POST",
            "/api/functions",
            Some(json!({"name": "dropped", "module_base64": module_b64()})),
        )
        .await;
    assert_eq!(st, 201);
    assert_eq!(
        node.call("DELETE", "/api/functions/dropped", None).await.0,
        204
    );
    assert_eq!(
        node.names("/api/rules", "id").await,
        ["own", "paused"],
        "from-config deleted"
    );
    let (_, meter) = node.call("GET", "/api/drivers/meter", None).await;
    node.stop().await;

    // Kept private, in the data dir.
    let local = data.join("local");
    assert_eq!(mode(&local), 0o700);
    for f in ["rules.json", "drivers.json", "functions.json"] {
        assert_eq!(mode(&local.join(f)), 0o600, "{f}");
    }

    let node = start(config(&data, CONFIG_RULE), None).await;
    assert_eq!(
        node.names("/api/rules", "id").await,
        ["from-config", "own", "paused"],
        "the config's rule is back; the deleted API rule stays deleted"
    );
    let (_, own) = node.call("GET", "/api/rules/own", None).await;
    assert_eq!(own["actions"][0]["topic"], "own/v2", "the updated version");
    assert_eq!(own["status"], "running");
    let (_, paused) = node.call("GET", "/api/rules/paused", None).await;
    assert_eq!(paused["status"], "stopped", "stopped stays stopped");
    assert_eq!(node.names("/api/drivers", "name").await, ["meter"]);
    let (_, again) = node.call("GET", "/api/drivers/meter", None).await;
    assert_eq!(again["config"], meter["config"], "the same point table");
    assert_eq!(
        again["config"]["devices"][0]["points"][1]["name"],
        "current"
    );
    assert_eq!(node.names("/api/functions", "name").await, ["echo"]);
    let (st, v) = node
        .call(
            "POST",
            "/api/functions/echo/invoke",
            Some(json!({"payload": "hi"})),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    node.stop().await;
}

#[tokio::test]
async fn the_config_file_wins_a_clash_at_start_and_drops_the_saved_copy() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let node = start(config(&data, ""), None).await;
    assert_eq!(
        node.call("POST", "/api/rules", Some(rule("from-config", "api/out")))
            .await
            .0,
        201
    );
    assert_eq!(
        node.call("POST", "/api/rules", Some(rule("mine", "mine/out")))
            .await
            .0,
        201
    );
    node.stop().await;
    let saved = std::fs::read_to_string(data.join("local/rules.json")).expect("saved");
    assert!(saved.contains("api/out"), "{saved}");

    // The config file now declares a rule of the same id.
    let node = start(config(&data, CONFIG_RULE), None).await;
    let (_, r) = node.call("GET", "/api/rules/from-config", None).await;
    assert_eq!(r["actions"][0]["topic"], "config/out", "the config's runs");
    assert_eq!(
        node.names("/api/rules", "id").await,
        ["from-config", "mine"]
    );
    node.stop().await;
    let saved = std::fs::read_to_string(data.join("local/rules.json")).expect("saved");
    assert!(
        !saved.contains("api/out") && saved.contains("mine/out"),
        "{saved}"
    );
}

#[tokio::test]
async fn a_corrupt_file_is_moved_aside_and_the_node_starts_with_the_rest() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let node = start(config(&data, ""), None).await;
    assert_eq!(
        node.call("POST", "/api/rules", Some(rule("kept", "kept/out")))
            .await
            .0,
        201
    );
    let (st, v) = node
        .call("POST", "/api/drivers", Some(driver("meter", closed_port())))
        .await;
    assert_eq!(st, 201, "{v}");
    node.stop().await;
    let drivers = data.join("local/drivers.json");
    std::fs::write(&drivers, b"[{\"name\": \"meter\", \"protocol\": tr").expect("corrupt");

    let node = start(config(&data, CONFIG_RULE), None).await;
    assert_eq!(
        node.names("/api/rules", "id").await,
        ["from-config", "kept"],
        "the readable file's items run"
    );
    assert!(node.names("/api/drivers", "name").await.is_empty());
    let aside = data.join("local/drivers.json.corrupt");
    assert_eq!(
        std::fs::read(&aside).expect("moved aside"),
        b"[{\"name\": \"meter\", \"protocol\": tr"
    );
    assert!(!drivers.exists());
    // A new change writes a fresh file.
    assert_eq!(
        node.call("POST", "/api/drivers", Some(driver("new", closed_port())))
            .await
            .0,
        201
    );
    node.stop().await;
    let node = start(config(&data, CONFIG_RULE), None).await;
    assert_eq!(node.names("/api/drivers", "name").await, ["new"]);
    node.stop().await;
}

// --- A cloud-managed node ---------------------------------------------

#[tokio::test]
async fn the_heartbeat_lists_the_nodes_own_items_and_never_the_clouds() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let cloud = Cloud::start().await;
    cloud.publish(&[rule("cloud-rule", "cloud/out")]);
    let component = r#"
[[components]]
name = "sleeper"
version = "1"
command = "sleep"
args = ["1000"]
"#;
    let cfg = config(&data, &format!("{CONFIG_RULE}{component}"));
    let node = start(cfg, Some(cloud.link(&data))).await;
    wait_for_rule(&node, "cloud-rule").await;
    assert_eq!(
        node.call("GET", "/api/functions/cloud-fn", None).await.0,
        200
    );
    assert_eq!(
        node.call("POST", "/api/rules", Some(rule("own", "own/out")))
            .await
            .0,
        201
    );
    assert_eq!(
        node.call("POST", "/api/rules", Some(rule("taken", "taken/out")))
            .await
            .0,
        201
    );
    let (st, v) = node
        .call("POST", "/api/drivers", Some(driver("meter", closed_port())))
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = node
        .call(
            "POST",
            "/api/functions",
            Some(json!({"name": "echo", "module_base64": module_b64()})),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let items = cloud.local_items(|i| i.len() == 6).await;
    assert_eq!(
        items,
        [
            "component/sleeper/config",
            "driver/meter/api",
            "function/echo/api",
            "rule/from-config/config",
            "rule/own/api",
            "rule/taken/api"
        ]
    );
    // The cloud takes over `taken` (and replaces the config file's rule):
    // neither is the node's own any more.
    cloud.publish(&[
        rule("cloud-rule", "cloud/out"),
        rule("taken", "cloud/taken"),
        rule("from-config", "cloud/config"),
    ]);
    let items = cloud
        .local_items(|i| !i.iter().any(|x| x.contains("taken")))
        .await;
    assert_eq!(
        items,
        [
            "component/sleeper/config",
            "driver/meter/api",
            "function/echo/api",
            "rule/own/api"
        ]
    );
    let (st, v) = node.call("DELETE", "/api/rules/taken", None).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("managed_by_cloud"))
    );
    node.stop().await;
    let saved = std::fs::read_to_string(data.join("local/rules.json")).expect("saved");
    assert!(
        saved.contains("own/out") && !saved.contains("taken"),
        "the cloud's revision wins: {saved}"
    );
}

/// The heartbeat's items marked local-only, as `kind/name`.
fn kept(r: &StatusReport) -> Vec<String> {
    r.local
        .iter()
        .filter(|i| i.local_only)
        .map(|i| format!("{}/{}", i.kind, i.name))
        .collect()
}

#[tokio::test]
async fn a_rule_marked_local_only_stays_the_nodes_across_revisions_and_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("data");
    let cloud = Cloud::start().await;
    let v1 = cloud.publish(&[rule("cloud-rule", "cloud/out")]);
    let node = start(config(&data, ""), Some(cloud.link(&data))).await;
    wait_for_rule(&node, "cloud-rule").await;
    // Bad requests change nothing.
    let (st, v) = node.call("PUT", "/api/local-only/device/x", None).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("invalid_kind"))
    );
    let (st, _) = node.call("PUT", "/api/local-only/rule/nope", None).await;
    assert_eq!(st, 404, "nothing of that name runs");
    let (st, _) = node.call("DELETE", "/api/local-only/rule/nope", None).await;
    assert_eq!(st, 404, "not marked");
    // The cloud's rule, marked local-only, becomes the node's own: its API
    // may change it now.
    let (st, v) = node
        .call("PUT", "/api/local-only/rule/cloud-rule", None)
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = node
        .call(
            "PUT",
            "/api/rules/cloud-rule",
            Some(rule("cloud-rule", "mine/out")),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    // A revision with another version of it leaves the node's in place and
    // still applies.
    let v2 = cloud.publish(&[rule("cloud-rule", "cloud/changed")]);
    let report = cloud
        .report(|r| r.applied_version == v2 && !kept(r).is_empty())
        .await;
    assert!(v2 > v1);
    assert_eq!(kept(&report), ["rule/cloud-rule"]);
    let attempt = report.attempt.expect("attempt");
    assert!(
        attempt
            .items
            .iter()
            .any(|i| i.name == "cloud-rule" && i.result == verge_protocol::ItemOutcome::KeptLocal),
        "{:?}",
        attempt.items
    );
    let (_, r) = node.call("GET", "/api/rules/cloud-rule", None).await;
    assert_eq!(r["actions"][0]["topic"], "mine/out");
    let (_, marks) = node.call("GET", "/api/local-only", None).await;
    assert_eq!(marks, json!([{"kind": "rule", "name": "cloud-rule"}]));
    let (_, local) = node.call("GET", "/api/local", None).await;
    assert_eq!(
        local,
        json!([{"kind": "rule", "name": "cloud-rule", "source": "api", "local_only": true}])
    );

    // After a restart: the mark and the node's own version are still there,
    // and the cached revision does not replace it.
    node.stop().await;
    cloud.reports.lock().unwrap().clear();
    let node = start(config(&data, ""), Some(cloud.link(&data))).await;
    wait_for_rule(&node, "cloud-rule").await;
    cloud
        .report(|r| r.applied_version == v2 && !kept(r).is_empty())
        .await;
    let (_, r) = node.call("GET", "/api/rules/cloud-rule", None).await;
    assert_eq!(r["actions"][0]["topic"], "mine/out");

    // Unmarked, the cloud's version comes back at the next quiet poll.
    let (st, _) = node
        .call("DELETE", "/api/local-only/rule/cloud-rule", None)
        .await;
    assert_eq!(st, 204);
    let start_wait = Instant::now();
    loop {
        let (_, r) = node.call("GET", "/api/rules/cloud-rule", None).await;
        if r["actions"][0]["topic"] == "cloud/changed" {
            break;
        }
        assert!(
            start_wait.elapsed() < WAIT,
            "the cloud's rule never came back: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (st, v) = node.call("DELETE", "/api/rules/cloud-rule", None).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (409, Some("managed_by_cloud"))
    );
    // A marked item deleted through the API takes its mark with it.
    let (st, _) = node
        .call("POST", "/api/rules", Some(rule("own", "own/out")))
        .await;
    assert_eq!(st, 201);
    let (st, _) = node.call("PUT", "/api/local-only/rule/own", None).await;
    assert_eq!(st, 200);
    let (_, marks) = node.call("GET", "/api/local-only", None).await;
    assert_eq!(marks, json!([{"kind": "rule", "name": "own"}]));
    let (st, _) = node.call("DELETE", "/api/rules/own", None).await;
    assert_eq!(st, 204);
    let (_, marks) = node.call("GET", "/api/local-only", None).await;
    assert_eq!(marks, json!([]));
    node.stop().await;
    let marks = std::fs::read_to_string(data.join("local/local-only.json")).expect("saved");
    assert_eq!(
        serde_json::from_str::<Value>(&marks).expect("json"),
        json!([])
    );
}

// --- Concurrent changes ----------------------------------------------

/// The API over a node's parts in `data`, saving into `<data>/local`.
async fn api_over(data: &Path, broker: &verge_broker::Broker) -> verge_node::http::ApiState {
    use verge_node::local::{ConfigNames, LocalParts, LocalStore, Saved};
    let rules = Arc::new(verge_rules::Engine::new(
        verge_rules::Services::new(broker.handle()),
        verge_rules::RuleEngineConfig::default(),
    ));
    let drivers = Arc::new(verge_drivers::Drivers::new(broker.handle()));
    let functions = verge_functions::Functions::open(verge_functions::FunctionsConfig {
        dir: data.join("functions"),
    })
    .await
    .expect("functions");
    let local = LocalStore::new(
        data,
        ConfigNames::default(),
        Saved::default(),
        LocalParts {
            rules: rules.clone(),
            drivers: drivers.clone(),
            functions: functions.clone(),
            components: None,
        },
        false,
    );
    verge_node::http::ApiState {
        name: Arc::from("concurrent"),
        started: Instant::now(),
        broker: broker.handle(),
        rules,
        auth: None,
        guard: Default::default(),
        store: None,
        bridge: None,
        functions: Some(functions),
        drivers: Some(drivers),
        components: None,
        coap: None,
        cloud: None,
        local: Some(Arc::new(local)),
        devices: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_leave_the_file_as_the_rule_runs() {
    use tower::ServiceExt;
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = verge_broker::BrokerConfig::default();
    let auth = verge_broker::Broker::authenticator(&cfg).expect("auth");
    let broker = verge_broker::Broker::start(cfg, auth);
    let s = api_over(dir.path(), &broker).await;
    let send = |method: &'static str, path: String, body: Value| {
        let app = verge_node::http::router(s.clone());
        async move {
            let req = axum::http::Request::builder()
                .method(method)
                .uri(path)
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body.to_string()))
                .expect("request");
            app.oneshot(req).await.expect("answer").status()
        }
    };
    assert_eq!(
        send("POST", "/api/rules".into(), rule("hot", "t/0")).await,
        StatusCode::CREATED
    );
    for round in 0..5 {
        let puts: Vec<_> = (0..16)
            .map(|i| {
                tokio::spawn(send(
                    "PUT",
                    "/api/rules/hot".into(),
                    rule("hot", &format!("t/{round}/{i}")),
                ))
            })
            .collect();
        for p in puts {
            assert_eq!(p.await.expect("task"), StatusCode::OK);
        }
        let runs = s.rules.get("hot").await.expect("rule").config;
        let saved: Vec<verge_rules::RuleConfig> = serde_json::from_slice(
            &std::fs::read(dir.path().join("local/rules.json")).expect("saved"),
        )
        .expect("a list of rules");
        assert_eq!(saved, [runs], "round {round}");
    }
    broker.shutdown().await;
}

//! The walkthrough of SPEC.md, end to end across separate processes: a
//! `verge cloud`, a `verge node --cloud … --join …` and a
//! `verge device simulate`, driven only through the cloud's open API.
//!
//! 1. create a node → join token;
//! 2. start the node with it;
//! 3. create a device bound to it;
//! 4. the simulated device sends telemetry with its credentials;
//! 5. upload a function and create a rule forwarding the device's data to it;
//! 6. the function's output is visible through the API.
//!
//! Then: a command reaches the device, wrong credentials are refused, the
//! cloud marks a stopped node offline, and a node restarted while the cloud
//! is down runs its last desired state.

#![cfg(feature = "cloud")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use serde_json::{Value, json};
use support::{Proc, eventually, free_port, http, verge};

/// The cloud under test: its address and admin token.
struct Cloud {
    _proc: Proc,
    addr: String,
    token: String,
}

impl Cloud {
    fn start(dir: &Path, http: &str, mqtt: &str, database: Option<&str>) -> Cloud {
        let mut cmd = verge();
        cmd.arg("cloud");
        // A shared database has its admin token already: make a new one.
        let mut reset_token = None;
        if let Some(url) = database {
            cmd.args(["--set", &format!("cloud.database={url}")]);
            let out = verge()
                .args(["cloud", "--reset-admin-token", "--set"])
                .arg(format!("cloud.database={url}"))
                .args(["--set", &format!("cloud.data_dir={}", dir.display())])
                .output()
                .expect("reset the admin token");
            assert!(out.status.success(), "{out:?}");
            reset_token = String::from_utf8_lossy(&out.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("admin token: ").map(str::to_owned));
        }
        let proc = Proc::spawn(cmd.args([
            "--set",
            &format!("http.bind={http}"),
            "--set",
            &format!("mqtt.bind={mqtt}"),
            "--set",
            &format!("cloud.data_dir={}", dir.display()),
            "--set",
            "cloud.offline_after=3s",
        ]));
        let console = proc.wait_line("console");
        let addr = console
            .split("http://")
            .nth(1)
            .expect("console url")
            .trim()
            .trim_end_matches('/')
            .to_owned();
        let token_line = proc.wait_line("admin token");
        let token = reset_token.unwrap_or_else(|| {
            token_line
                .split_once("admin token: ")
                .map(|(_, t)| t.trim().to_owned())
                .unwrap_or_default()
        });
        Cloud {
            _proc: proc,
            addr,
            token,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        http(&self.addr, method, path, &self.token, body.as_ref())
    }

    /// A 2xx answer's body.
    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }
}

fn node_args(dir: &Path, mqtt_port: u16) -> Vec<String> {
    [
        format!("node.data_dir={}", dir.display()),
        format!("broker.listeners.tcp.bind=127.0.0.1:{mqtt_port}"),
        "broker.listeners.ws.enabled=false".to_owned(),
        "coap.enabled=false".to_owned(),
        "http.bind=127.0.0.1:0".to_owned(),
    ]
    .into_iter()
    .flat_map(|kv| ["--set".to_owned(), kv])
    .collect()
}

fn simulate(mqtt_port: u16, device: &str, secret: &str) -> Command {
    let mut c = verge();
    c.args([
        "device",
        "simulate",
        "--node",
        &format!("127.0.0.1:{mqtt_port}"),
        "--device",
        device,
        "--secret",
        secret,
        "--interval",
        "200ms",
    ]);
    c
}

#[test]
fn walkthrough_across_processes() {
    walkthrough(None, "");
}

/// The same against PostgreSQL when `VERGE_TEST_POSTGRES_URL` names a
/// database (`.ci/run` starts one); names get a suffix so that runs can
/// share the database.
#[test]
fn walkthrough_with_postgresql() {
    let Ok(url) = std::env::var("VERGE_TEST_POSTGRES_URL") else {
        eprintln!("VERGE_TEST_POSTGRES_URL is not set: the PostgreSQL walkthrough is skipped");
        return;
    };
    let suffix = format!(
        "-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    walkthrough(Some(&url), &suffix);
}

fn walkthrough(database: Option<&str>, suffix: &str) {
    let node_id = format!("edge-1{suffix}");
    let dev = format!("d1{suffix}");
    let rule = format!("to-function{suffix}");
    let tmp = tempfile::tempdir().unwrap();
    let cloud_dir = tmp.path().join("cloud");
    let node_dir = tmp.path().join("node");
    let (cloud_http, cloud_mqtt) = (free_port(), free_port());
    let cloud = Cloud::start(
        &cloud_dir,
        &format!("127.0.0.1:{cloud_http}"),
        &format!("127.0.0.1:{cloud_mqtt}"),
        database,
    );
    assert!(
        !cloud.token.is_empty(),
        "the first start prints the admin token"
    );
    let (status, err) = http(&cloud.addr, "GET", "/api/nodes", "wrong-token", None);
    assert_eq!(status, 401, "{err}");
    assert_eq!(err["error"]["code"], "unauthorized");

    // 1. Create an edge node: a one-time join token and the command.
    let created = cloud.ok(
        "POST",
        "/api/nodes",
        Some(json!({ "name": node_id, "description": "walkthrough" })),
    );
    let join_token = created["join_token"]
        .as_str()
        .expect("join token")
        .to_owned();
    let command = created["join_command"].as_str().expect("join command");
    assert!(command.contains("verge node --cloud"), "{command}");
    assert!(command.contains(&join_token), "{command}");
    assert_eq!(created["node"]["status"], "pending");

    // 2. Start the node core suite with the join token.
    let mqtt_port = free_port();
    let node = Proc::spawn(
        verge()
            .args([
                "node",
                "--cloud",
                &format!("http://{}", cloud.addr),
                "--join",
                &join_token,
            ])
            .args(node_args(&node_dir, mqtt_port)),
    );
    let banner = node.wait_line("HTTP API");
    let first_http = banner
        .split("http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .expect("node http address")
        .to_owned();
    eventually("the node to be online", || {
        let n = cloud.ok("GET", &format!("/api/nodes/{node_id}"), None);
        (n["status"] == "online").then_some(())
    });
    // The token was for one join only.
    let (status, _) = http(
        &cloud.addr,
        "POST",
        "/api/agent/join",
        "",
        Some(&json!({ "token": join_token })),
    );
    assert_eq!(status, 401, "a join token works once");

    // 3. A device bound to the node, with credentials shown once.
    let made = cloud.ok(
        "POST",
        "/api/devices",
        Some(json!({ "name": dev, "node_id": node_id })),
    );
    let secret = made["secret"].as_str().expect("secret").to_owned();
    let shown = cloud.ok("GET", &format!("/api/devices/{dev}"), None);
    assert!(
        !shown.to_string().contains(&secret),
        "the secret is not shown again"
    );

    // 5 (before 4, so no reading is missed). A function and a rule.
    let wat = include_str!("../src/demo/demo-tag.wat");
    cloud.ok(
        "PUT",
        "/api/functions/demo-tag",
        Some(json!({
            "spec": { "runtime": "wasm" },
            "module_base64": base64::engine::general_purpose::STANDARD.encode(wat),
        })),
    );
    let (status, bad) = cloud.call(
        "POST",
        "/api/rules",
        Some(json!({
            "id": format!("broken{suffix}"), "node_id": node_id,
            "sql": "SELEC temperature FROM \"devices/+/telemetry\"",
            "actions": [],
        })),
    );
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["error"]["code"], "invalid_rule");
    cloud.ok(
        "POST",
        "/api/rules",
        Some(json!({
            "id": rule, "node_id": node_id,
            "sql": "SELECT topic(2) AS device, temperature FROM \"devices/+/telemetry\"",
            "actions": [{ "type": "function", "name": "demo-tag" }],
        })),
    );
    let desired = cloud.ok("GET", &format!("/api/nodes/{node_id}/desired"), None)["version"]
        .as_i64()
        .expect("desired version");
    eventually("the node to apply the desired state", || {
        let n = cloud.ok("GET", &format!("/api/nodes/{node_id}"), None);
        (n["applied_version"].as_i64() == Some(desired)).then_some(n)
    });
    // The node's own API says the same.
    let first_token = std::fs::read_to_string(node_dir.join("api-token")).expect("node api token");
    let (status, agent) = http(&first_http, "GET", "/api/cloud", first_token.trim(), None);
    assert_eq!(status, 200, "{agent}");
    assert_eq!(agent["node_id"], node_id.as_str(), "{agent}");
    assert_eq!(agent["applied_version"].as_i64(), Some(desired), "{agent}");
    assert_eq!(agent["cloud_reachable"], true, "{agent}");
    // Finding 6: what the cloud deployed is changed in the cloud, not
    // through the node's API (which would be undone at the next sync).
    let stop = format!("/api/rules/{rule}/stop");
    let (status, refused) = http(&first_http, "POST", &stop, first_token.trim(), None);
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["error"]["code"], "managed_by_cloud", "{refused}");
    let (status, refused) = http(
        &first_http,
        "DELETE",
        "/api/functions/demo-tag",
        first_token.trim(),
        None,
    );
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (409, Some("managed_by_cloud")),
        "{refused}"
    );

    // 4. The device program connects to the node with its credentials.
    let device = Proc::spawn(&mut simulate(mqtt_port, &dev, &secret));
    device.wait_line("connected");

    // 6. The function ran on the node and its output reached the cloud.
    let out = eventually("the function's output in the cloud", || {
        let v = cloud.ok(
            "GET",
            &format!("/api/nodes/{node_id}/messages?topic=processed%2F%23&limit=10"),
            None,
        );
        v.as_array().and_then(|a| a.last().cloned())
    });
    assert_eq!(
        out["topic"],
        format!("processed/devices/{dev}/telemetry"),
        "{out}"
    );
    assert_eq!(out["payload"]["tagged_by"], "demo-tag", "{out}");
    assert_eq!(out["payload"]["row"]["device"], dev.as_str(), "{out}");
    assert!(out["payload"]["row"]["temperature"].is_number(), "{out}");
    let telemetry = eventually("the device's last telemetry", || {
        let d = cloud.ok("GET", &format!("/api/devices/{dev}"), None);
        (!d["last_telemetry"].is_null()).then_some(d)
    });
    assert!(telemetry["last_telemetry"]["temperature"].is_number());
    eventually("the function's calls in the node's report", || {
        let n = cloud.ok("GET", &format!("/api/nodes/{node_id}"), None);
        let fns = n["report"]["functions"].as_array()?.clone();
        let f = fns.iter().find(|f| f["name"] == "demo-tag")?;
        (f["metrics"]["invocations"].as_u64().unwrap_or(0) > 0).then_some(())
    });

    // A command reaches the device through its node.
    cloud.ok(
        "POST",
        &format!("/api/devices/{dev}/commands/reboot"),
        Some(json!({ "delay_s": 1 })),
    );
    let line = device.wait_line("command reboot");
    assert!(line.contains("delay_s"), "{line}");

    // Wrong credentials are refused, clearly, and end the program.
    let out = simulate(mqtt_port, &dev, "not-the-secret")
        .output()
        .expect("run simulate");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused its credentials"), "{err}");

    // Revocation: a device deleted in the cloud is disconnected by its node
    // and cannot log in again; the simulator ends with a clear error.
    let gone = format!("gone{suffix}");
    let made = cloud.ok(
        "POST",
        "/api/devices",
        Some(json!({ "name": gone, "node_id": node_id })),
    );
    let gone_secret = made["secret"].as_str().expect("secret").to_owned();
    eventually("the node to know the new device", || {
        let n = cloud.ok("GET", &format!("/api/nodes/{node_id}"), None);
        (n["applied_version"] == n["desired_version"]).then_some(())
    });
    let sim = Proc::spawn(&mut simulate(mqtt_port, &gone, &gone_secret));
    sim.wait_line("connected");
    cloud.ok("DELETE", &format!("/api/devices/{gone}"), None);
    let deadline = std::time::Instant::now() + support::WAIT;
    let mut sim = sim;
    let status = loop {
        if let Some(s) = sim.child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a deleted device's simulator kept running"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(!status.success(), "refused credentials end the simulator");

    // `verge ctl` over the same API: the deployment is in sync; a wrong
    // token ends the command with the API's error.
    let out = verge()
        .args(["ctl", "--cloud", &format!("http://{}", cloud.addr)])
        .args(["--token", &cloud.token, "deployments"])
        .output()
        .expect("verge ctl");
    assert!(out.status.success(), "{out:?}");
    let deployments: Value = serde_json::from_slice(&out.stdout).expect("ctl prints JSON");
    let mine = deployments
        .as_array()
        .and_then(|a| a.iter().find(|d| d["node_id"] == node_id.as_str()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(mine["state"], "in_sync", "{deployments}");
    let out = verge()
        .args(["ctl", "--cloud", &format!("http://{}", cloud.addr)])
        .args(["--token", "wrong", "nodes", "list"])
        .output()
        .expect("verge ctl");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401 unauthorized"), "{err}");

    // 5c. A component through `verge ctl`: a version with its files,
    //     assigned to the node, which fetches and runs it.
    let component = format!("ticker{suffix}");
    let files = tmp.path().join("ticker");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(
        files.join("run.sh"),
        "#!/bin/sh\nwhile true; do echo tick; sleep 1; done\n",
    )
    .unwrap();
    let archive = tmp.path().join("ticker.tar.gz");
    let tarred = Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(&files)
        .arg("run.sh")
        .status()
        .expect("tar");
    assert!(tarred.success());
    let spec = tmp.path().join("ticker.json");
    std::fs::write(
        &spec,
        json!({"name": component, "version": "1.0.0", "command": "sh", "args": ["run.sh"]})
            .to_string(),
    )
    .unwrap();
    let ctl = |args: &[&str]| -> Value {
        let out = verge()
            .args(["ctl", "--cloud", &format!("http://{}", cloud.addr)])
            .args(["--token", &cloud.token])
            .args(args)
            .output()
            .expect("verge ctl");
        assert!(out.status.success(), "verge ctl {args:?}: {out:?}");
        serde_json::from_slice(&out.stdout).expect("ctl prints JSON")
    };
    let added = ctl(&[
        "components",
        "add",
        spec.to_str().unwrap(),
        "--archive",
        archive.to_str().unwrap(),
    ]);
    assert_eq!(
        added["artifact"]["size"].as_u64(),
        Some(std::fs::metadata(&archive).unwrap().len()),
        "{added}"
    );
    ctl(&[
        "components",
        "assign",
        &component,
        "1.0.0",
        "--node",
        &node_id,
    ]);
    eventually("the node to run the component and report it", || {
        let rows = ctl(&["components", "node", &node_id]);
        rows.as_array()?
            .iter()
            .find(|r| {
                r["name"] == component.as_str()
                    && r["status"]["state"] == "healthy"
                    && r["status"]["log_tail"].to_string().contains("tick")
            })
            .map(drop)
    });
    assert!(
        node_dir
            .join(format!("components/{component}/1.0.0/run.sh"))
            .is_file()
    );
    ctl(&["components", "unassign", &component, "--node", &node_id]);
    eventually("the node to stop reporting the component", || {
        let rows = ctl(&["components", "node", &node_id]);
        (!rows.to_string().contains(&component)).then_some(())
    });

    // A stopped node is marked offline.
    drop(device);
    assert!(node.stop().success(), "the node stops cleanly on SIGTERM");
    eventually("the node to be offline", || {
        let n = cloud.ok("GET", &format!("/api/nodes/{node_id}"), None);
        (n["status"] == "offline").then_some(())
    });

    // Offline autonomy: the cloud is gone; the node restarts from its last
    // desired state. The user runs the same join command again: the token
    // is spent and the cloud unreachable, so the stored credentials are
    // used.
    drop(cloud);
    let node = Proc::spawn(
        verge()
            .args(["node", "--cloud", &format!("http://127.0.0.1:{cloud_http}")])
            .args(["--join", &join_token])
            .args(node_args(&node_dir, mqtt_port)),
    );
    let banner = node.wait_line("HTTP API");
    let node_http = banner
        .split("http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .expect("node http address")
        .to_owned();
    let device = Proc::spawn(&mut simulate(mqtt_port, &dev, &secret));
    device.wait_line("connected");
    // The node's API asks for the token it made in its data dir.
    let node_token = std::fs::read_to_string(node_dir.join("api-token")).expect("node api token");
    let node_token = node_token.trim();
    let (status, _) = http(&node_http, "GET", "/api/rules", "", None);
    assert_eq!(status, 401, "the node's API answers without a token");
    eventually("the cached rule to call the function", || {
        let (status, f) = http(
            &node_http,
            "GET",
            "/api/functions/demo-tag",
            node_token,
            None,
        );
        (status == 200 && f["metrics"]["invocations"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    let (status, rule) = http(
        &node_http,
        "GET",
        &format!("/api/rules/{rule}"),
        node_token,
        None,
    );
    assert_eq!(status, 200, "{rule}");
    drop(device);
    assert!(node.stop().success());
}

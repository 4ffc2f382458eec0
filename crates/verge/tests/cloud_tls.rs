//! The cloud's MQTT endpoint over TLS across processes: a `verge cloud`
//! with `[mqtt.tls]` on a self-signed certificate, a node joined over plain
//! HTTP with `--cloud-ca` whose bridge connects over `mqtts://`, and a
//! simulated device's telemetry arriving in the cloud.
//!
//! The process and HTTP helpers are copied from `walkthrough.rs` (a shared
//! `tests/support` module is the next step).

#![cfg(feature = "cloud")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{Value, json};
use support::{Proc, eventually, free_port, http, verge};

fn sets(kvs: &[String]) -> Vec<String> {
    kvs.iter()
        .flat_map(|kv| ["--set".to_owned(), kv.clone()])
        .collect()
}

#[test]
fn bad_tls_files_fail_the_cloud_start_naming_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let out = verge()
        .arg("cloud")
        .args(sets(&[
            "http.bind=127.0.0.1:0".into(),
            "mqtt.bind=127.0.0.1:0".into(),
            "mqtt.tls.enabled=true".into(),
            "mqtt.tls.bind=127.0.0.1:0".into(),
            format!("mqtt.tls.cert={}", tmp.path().join("nope.pem").display()),
            format!("mqtt.tls.key={}", tmp.path().join("nope-key.pem").display()),
            format!("cloud.data_dir={}", tmp.path().join("cloud").display()),
        ]))
        .output()
        .expect("run verge cloud");
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mqtt.tls.cert") && err.contains("nope.pem"),
        "{err}"
    );

    let out = verge()
        .args(["ctl", "--ca"])
        .arg(tmp.path().join("no-ca.pem"))
        .args(["nodes", "list"])
        .output()
        .expect("run verge ctl");
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--ca") && err.contains("no-ca.pem"), "{err}");
}

#[test]
fn a_node_joined_with_cloud_ca_sends_upstream_over_mqtts() {
    let tmp = tempfile::tempdir().unwrap();
    let tls = verge_broker::listener::self_signed(&tmp.path().join("tls")).expect("certificate");
    let (cert, key) = (tls.cert.expect("cert"), tls.key.expect("key"));
    let (http_port, mqtt_port, tls_port) = (free_port(), free_port(), free_port());
    let cloud = Proc::spawn(verge().arg("cloud").args(sets(&[
        format!("http.bind=127.0.0.1:{http_port}"),
        format!("mqtt.bind=127.0.0.1:{mqtt_port}"),
        "mqtt.tls.enabled=true".into(),
        format!("mqtt.tls.bind=127.0.0.1:{tls_port}"),
        format!("mqtt.tls.cert={}", cert.display()),
        format!("mqtt.tls.key={}", key.display()),
        format!("cloud.data_dir={}", tmp.path().join("cloud").display()),
    ])));
    let banner = cloud.wait_line("MQTT over TLS");
    assert!(
        banner.contains(&format!("mqtts://127.0.0.1:{tls_port}")),
        "{banner}"
    );
    let token = cloud
        .wait_line("admin token: ")
        .split_once("admin token: ")
        .map(|(_, t)| t.trim().to_owned())
        .expect("admin token");
    let addr = format!("127.0.0.1:{http_port}");
    let ok = |method: &str, path: &str, body: Option<Value>| {
        let (status, v) = http(&addr, method, path, &token, body.as_ref());
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    };

    let created = ok("POST", "/api/nodes", Some(json!({ "name": "edge-tls" })));
    let join = created["join_token"]
        .as_str()
        .expect("join token")
        .to_owned();
    let node_dir = tmp.path().join("node");
    let node_mqtt = free_port();
    let node = Proc::spawn(
        verge()
            .args([
                "node",
                "--cloud",
                &format!("http://{addr}"),
                "--join",
                &join,
            ])
            .arg("--cloud-ca")
            .arg(&cert)
            .args(sets(&[
                format!("node.data_dir={}", node_dir.display()),
                format!("broker.listeners.tcp.bind=127.0.0.1:{node_mqtt}"),
                "broker.listeners.ws.enabled=false".into(),
                "coap.enabled=false".into(),
                "http.bind=127.0.0.1:0".into(),
            ])),
    );
    node.wait_line("is running");
    let creds: Value = serde_json::from_slice(
        &std::fs::read(node_dir.join("cloud/credentials.json")).expect("credentials"),
    )
    .expect("json");
    assert_eq!(
        creds["mqtt_url"],
        format!("mqtts://127.0.0.1:{tls_port}"),
        "{creds}"
    );
    assert_eq!(creds["ca_file"], cert.display().to_string(), "{creds}");

    let made = ok(
        "POST",
        "/api/devices",
        Some(json!({ "name": "d1", "node_id": "edge-tls" })),
    );
    let secret = made["secret"].as_str().expect("secret").to_owned();
    let desired = ok("GET", "/api/nodes/edge-tls/desired", None)["version"]
        .as_i64()
        .expect("version");
    eventually("the node to apply the device", || {
        let n = ok("GET", "/api/nodes/edge-tls", None);
        (n["applied_version"].as_i64() == Some(desired)).then_some(())
    });

    let device = Proc::spawn(verge().args([
        "device",
        "simulate",
        "--node",
        &format!("127.0.0.1:{node_mqtt}"),
        "--device",
        "d1",
        "--secret",
        &secret,
        "--interval",
        "200ms",
    ]));
    device.wait_line("connected");
    let got = eventually("telemetry in the cloud over mqtts", || {
        let v = ok(
            "GET",
            "/api/nodes/edge-tls/messages?topic=devices%2F%2B%2Ftelemetry&limit=5",
            None,
        );
        v.as_array().and_then(|a| a.last().cloned())
    });
    assert_eq!(got["topic"], "devices/d1/telemetry", "{got}");
    let n = ok("GET", "/api/nodes/edge-tls", None);
    assert_eq!(n["status"], "online", "{n}");
}

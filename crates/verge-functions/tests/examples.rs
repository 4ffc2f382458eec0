//! The example functions in `examples/functions`, built to WebAssembly by
//! `examples/functions/build.sh`, run through the registry: their outputs,
//! the counter's state across a restart, and the C example.
//!
//! CI builds the modules first and sets `VERGE_REQUIRE_EXAMPLES=1`, so a
//! missing module fails there; elsewhere these tests say what to run and
//! pass without them.

use std::path::{Path, PathBuf};

use verge_functions::{FunctionSpec, Functions, FunctionsConfig, Message};

fn module(rel: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/wasm-examples")
        .join(rel);
    if p.is_file() {
        return Some(p);
    }
    if std::env::var_os("VERGE_REQUIRE_EXAMPLES").is_some() {
        panic!(
            "{} is missing: run examples/functions/build.sh",
            p.display()
        );
    }
    eprintln!(
        "skipping: {} not built (run examples/functions/build.sh)",
        p.display()
    );
    None
}

fn rust(name: &str) -> Option<PathBuf> {
    module(&format!("wasm32-unknown-unknown/release/{name}.wasm"))
}

async fn open(dir: &Path) -> Functions {
    Functions::open(FunctionsConfig {
        dir: dir.join("functions"),
    })
    .await
    .expect("open")
}

async fn deploy(f: &Functions, name: &str, path: PathBuf, config: serde_json::Value) {
    let mut s = FunctionSpec::wasm(name);
    s.path = Some(path);
    s.config = config;
    f.deploy(s, None).await.expect("deploy");
}

fn telemetry(device: &str, payload: serde_json::Value) -> Message {
    let mut m = Message::new(format!("devices/{device}/telemetry"), payload.to_string());
    m.content_type = Some("application/json".into());
    m
}

fn json(m: &Message) -> serde_json::Value {
    serde_json::from_slice(&m.payload).expect("json output")
}

async fn check_threshold(f: &Functions, name: &str) {
    let out = f
        .invoke(
            name,
            telemetry("d7", serde_json::json!({"temperature": 31.5})),
        )
        .await
        .expect("hot");
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].topic, "alerts/d7");
    let alert = json(&out[0]);
    assert_eq!(alert["device"], "d7");
    assert_eq!(alert["value"], 31.5);
    let out = f
        .invoke(
            name,
            telemetry("d7", serde_json::json!({"temperature": 20})),
        )
        .await
        .expect("cool");
    assert!(out.is_empty(), "{out:?}");
}

#[tokio::test]
async fn threshold_alerts_only_above() {
    let Some(p) = rust("threshold") else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let f = open(tmp.path()).await;
    deploy(&f, "threshold", p.clone(), serde_json::json!({})).await;
    check_threshold(&f, "threshold").await;
    // A missing field is the function's error, recorded.
    let e = f
        .invoke(
            "threshold",
            telemetry("d7", serde_json::json!({"humidity": 3})),
        )
        .await
        .expect_err("no field");
    assert_eq!(e.code(), "function_error");
    // Config changes the field, threshold and topic.
    deploy(
        &f,
        "threshold",
        p,
        serde_json::json!({"field": "env.hum", "above": 80, "topic": "humid/{device}"}),
    )
    .await;
    let out = f
        .invoke(
            "threshold",
            telemetry("d8", serde_json::json!({"env": {"hum": 90}})),
        )
        .await
        .expect("humid");
    assert_eq!(out[0].topic, "humid/d8");
}

#[tokio::test]
async fn c_threshold_behaves_like_the_rust_one() {
    let Some(p) = module("c/threshold.wasm") else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let f = open(tmp.path()).await;
    deploy(&f, "c-threshold", p, serde_json::json!({})).await;
    check_threshold(&f, "c-threshold").await;
}

#[tokio::test]
async fn unit_convert_and_reshape() {
    let (Some(conv), Some(reshape)) = (rust("unit_convert"), rust("json_reshape")) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let f = open(tmp.path()).await;
    deploy(&f, "conv", conv, serde_json::json!({})).await;
    deploy(&f, "reshape", reshape, serde_json::json!({})).await;
    let out = f
        .invoke(
            "conv",
            telemetry("d1", serde_json::json!({"temperature": 21.5, "id": "x"})),
        )
        .await
        .expect("convert");
    assert_eq!(out[0].topic, "devices/d1/telemetry/converted");
    assert_eq!(
        json(&out[0]),
        serde_json::json!({"temperature": 70.7, "id": "x"})
    );
    let input = serde_json::json!({
        "device": {"id": "d1", "battery": 87},
        "timestamp": 1_764_390_000_000_i64,
        "readings": {"env": {"temperature": 21.5}, "power": {"on": true}},
        "cells": [3.3, 3.4],
        "status": "ok"
    });
    let out = f
        .invoke("reshape", telemetry("d1", input))
        .await
        .expect("reshape");
    assert_eq!(out[0].topic, "devices/d1/telemetry/flat");
    assert_eq!(
        json(&out[0]),
        serde_json::json!({"device": "d1", "ts": 1_764_390_000_000_i64, "metrics": {
            "cells.0": 3.3, "cells.1": 3.4, "device.battery": 87,
            "readings.env.temperature": 21.5, "readings.power.on": true}})
    );
}

#[tokio::test]
async fn counter_keeps_its_state_across_a_restart() {
    let Some(p) = rust("counter") else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    {
        let f = open(tmp.path()).await;
        let mut s = FunctionSpec::wasm("counter");
        s.path = Some(p.clone());
        s.limits.concurrency = 1;
        f.deploy(s, None).await.expect("deploy");
        for i in 1..=3 {
            let out = f
                .invoke("counter", telemetry("d1", serde_json::json!({})))
                .await
                .expect("count");
            assert_eq!(out[0].topic, "counts/devices/d1/telemetry");
            assert_eq!(json(&out[0])["count"], i);
        }
        f.invoke("counter", telemetry("d2", serde_json::json!({})))
            .await
            .expect("other topic");
        let state = f.state("counter").expect("state");
        assert_eq!(
            state.get("devices/d1/telemetry").map(Vec::as_slice),
            Some(&b"3"[..])
        );
        f.shutdown().await;
    }
    let f = open(tmp.path()).await;
    let out = f
        .invoke("counter", telemetry("d1", serde_json::json!({})))
        .await
        .expect("after restart");
    assert_eq!(json(&out[0])["count"], 4);
    assert_eq!(f.get("counter").expect("info").state_keys, 2);
}

#[tokio::test]
async fn echo_is_exact() {
    let Some(p) = rust("echo") else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let f = open(tmp.path()).await;
    deploy(&f, "echo", p, serde_json::json!({})).await;
    let mut m = Message::new("a/b", vec![0u8, 159, 146, 150, 255]);
    m.user_properties = vec![("k".into(), "v".into())];
    m.qos = 0;
    let out = f.invoke("echo", m.clone()).await.expect("echo");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].payload, m.payload);
    assert_eq!(out[0].user_properties, m.user_properties);
    assert_eq!(out[0].qos, 0);
}

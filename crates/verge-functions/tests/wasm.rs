//! The wasm runtime through the registry, with test modules written in WAT:
//! outputs, config, every kind of misbehaviour recorded while the function
//! (and its neighbours) keep serving, deploy checks, versions, reloads.

use std::path::{Path, PathBuf};

use verge_functions::{
    CallError, DeployError, FunctionSpec, Functions, FunctionsConfig, Message, RuntimeKind,
};

fn wat(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/wat")
        .join(format!("{name}.wat"))
}

fn spec(name: &str, module: &str) -> FunctionSpec {
    let mut s = FunctionSpec::wasm(name);
    s.path = Some(wat(module));
    s
}

async fn open(dir: &Path) -> Functions {
    Functions::open(FunctionsConfig {
        dir: dir.join("functions"),
    })
    .await
    .expect("open registry")
}

fn msg(topic: &str, payload: &str) -> Message {
    let mut m = Message::new(topic, payload.as_bytes().to_vec());
    m.content_type = Some("text/plain".into());
    m.user_properties = vec![("k".into(), "v".into()), ("k2".into(), "".into())];
    m.qos = 2;
    m
}

#[tokio::test]
async fn echo_returns_the_message() {
    let tmp = tempfile::tempdir().expect("tmp");
    let f = open(tmp.path()).await;
    let info = f.deploy(spec("echo", "echo"), None).await.expect("deploy");
    assert_eq!(info.version, 1);
    assert_eq!(info.runtime, RuntimeKind::Wasm);
    for payload in ["", "x", "{\"temperature\":21.5}", &"p".repeat(200_000)] {
        let out = f
            .invoke("echo", msg("devices/d1/telemetry", payload))
            .await
            .expect("call");
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, "devices/d1/telemetry");
        assert_eq!(&out[0].payload[..], payload.as_bytes());
        assert_eq!(out[0].content_type.as_deref(), Some("text/plain"));
        assert_eq!(out[0].user_properties.len(), 2);
        assert_eq!(out[0].qos, 2);
        assert!(!out[0].retain);
    }
    let m = f.get("echo").expect("info").metrics;
    assert_eq!((m.invocations, m.errors, m.outputs), (4, 0, 4));
    assert!(m.p50_us.is_some());
}

#[tokio::test]
async fn config_reaches_the_function() {
    let tmp = tempfile::tempdir().expect("tmp");
    let f = open(tmp.path()).await;
    let mut s = spec("cfg", "config");
    s.config = serde_json::json!({"above": 30, "unit": "°C"});
    f.deploy(s, None).await.expect("deploy");
    let out = f.invoke("cfg", msg("a", "")).await.expect("call");
    let got: serde_json::Value = serde_json::from_slice(&out[0].payload).expect("json");
    assert_eq!(got, serde_json::json!({"above": 30, "unit": "°C"}));
    assert_eq!(out[0].topic, "cfg");
}

#[tokio::test]
async fn misbehaviour_is_recorded_and_the_function_keeps_serving() {
    let tmp = tempfile::tempdir().expect("tmp");
    let f = open(tmp.path()).await;
    let mut s = spec("bad", "bad");
    s.limits.fuel = 2_000_000;
    s.limits.memory = 1 << 20;
    f.deploy(s, None).await.expect("deploy");
    f.deploy(spec("echo", "echo"), None)
        .await
        .expect("deploy echo");

    let call = |p: &'static str| {
        let f = f.clone();
        async move { f.invoke("bad", msg("t", p)).await }
    };
    assert!(matches!(call("t").await, Err(CallError::Trap(_))));
    assert_eq!(call("l").await, Err(CallError::OutOfFuel(2_000_000)));
    match call("m").await {
        Err(CallError::Trap(why)) => assert!(why.contains("memory limit"), "{why}"),
        other => panic!("memory hog: {other:?}"),
    }
    // Host calls are charged fuel too: a loop of them ends like any loop.
    assert_eq!(call("h").await, Err(CallError::OutOfFuel(2_000_000)));
    assert_eq!(
        call("e").await,
        Err(CallError::Returned("bad input".into()))
    );
    assert!(matches!(call("o").await, Err(CallError::BadOutput(_))));
    match call("k").await {
        Err(CallError::Trap(why)) => assert!(why.contains("outside the memory"), "{why}"),
        other => panic!("bad host range: {other:?}"),
    }
    // After all that, the same function and its neighbour still answer.
    assert_eq!(call("fine").await, Ok(vec![]));
    assert_eq!(
        f.invoke("echo", msg("x", "y")).await.map(|o| o.len()),
        Ok(1)
    );

    let m = f.get("bad").expect("info").metrics;
    assert_eq!(m.invocations, 8);
    assert_eq!(m.timeouts, 2);
    assert_eq!(m.errors, 5);
    assert!(m.last_error.is_some());
    // The memory hog's instance was discarded, not kept at 1 MiB.
    assert!(f.get("bad").expect("info").memory_bytes <= 2 * 65536);
}

#[tokio::test]
async fn many_concurrent_calls_with_a_looping_neighbour() {
    let tmp = tempfile::tempdir().expect("tmp");
    let f = open(tmp.path()).await;
    let mut s = spec("bad", "bad");
    s.limits.fuel = 5_000_000;
    f.deploy(s, None).await.expect("deploy");
    let mut e = spec("echo", "echo");
    e.limits.concurrency = 2;
    f.deploy(e, None).await.expect("deploy echo");
    let mut tasks = Vec::new();
    for i in 0..200 {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            if i % 10 == 0 {
                f.invoke("bad", msg("t", "l")).await.map(|_| 0)
            } else {
                f.invoke("echo", msg("t", &i.to_string()))
                    .await
                    .map(|o| o.len())
            }
        }));
    }
    let mut ok = 0;
    let mut fuel = 0;
    for t in tasks {
        match t.await.expect("join") {
            Ok(1) => ok += 1,
            Err(CallError::OutOfFuel(_)) => fuel += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((ok, fuel), (180, 20));
}

#[tokio::test]
async fn deploy_refuses_unusable_modules_and_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let f = open(tmp.path()).await;
    f.deploy(spec("f", "echo"), None).await.expect("deploy");
    let refused = |e: &DeployError, needle: &str| {
        let s = e.to_string();
        assert!(s.contains(needle), "{s:?} should mention {needle:?}");
    };
    let e = f.deploy(spec("f", "wasi"), None).await.expect_err("wasi");
    refused(&e, "wasi_snapshot_preview1::fd_write");
    let e = f.deploy(spec("f", "version2"), None).await.expect_err("v2");
    refused(&e, "ABI version 2");
    let e = f
        .deploy(spec("f", "noexport"), None)
        .await
        .expect_err("export");
    refused(&e, "verge_handle");
    let e = f
        .deploy(FunctionSpec::wasm("f"), Some(b"\0asm garbage".to_vec()))
        .await
        .expect_err("garbage");
    assert!(matches!(e, DeployError::Unusable(_)), "{e:?}");
    let e = f
        .deploy(FunctionSpec::wasm("f"), None)
        .await
        .expect_err("no module");
    assert!(matches!(e, DeployError::Invalid(_)), "{e:?}");
    let e = f
        .deploy(spec("no/slash", "echo"), None)
        .await
        .expect_err("name");
    refused(&e, "may only contain");
    let mut s = spec("f", "echo");
    s.limits.memory = 1;
    refused(
        &f.deploy(s, None).await.expect_err("limits"),
        "limits.memory",
    );
    let e = f
        .deploy(spec("f", "missing-file"), None)
        .await
        .expect_err("path");
    refused(&e, "missing-file.wat");
    // Still version 1, still serving.
    assert_eq!(f.get("f").expect("info").version, 1);
    assert_eq!(f.invoke("f", msg("a", "b")).await.map(|o| o.len()), Ok(1));
    assert_eq!(f.list().len(), 1);
}

#[tokio::test]
async fn versions_reload_and_delete() {
    let tmp = tempfile::tempdir().expect("tmp");
    {
        let f = open(tmp.path()).await;
        assert_eq!(
            f.deploy(spec("f", "echo"), None).await.expect("v1").version,
            1
        );
        // The same spec and module again: no new version.
        assert_eq!(
            f.deploy(spec("f", "echo"), None)
                .await
                .expect("same")
                .version,
            1
        );
        let mut s = spec("f", "config");
        s.config = serde_json::json!({"v": 2});
        assert_eq!(f.deploy(s, None).await.expect("v2").version, 2);
        f.shutdown().await;
    }
    // A restarted node runs version 2 from its own copy of the module.
    let f = open(tmp.path()).await;
    let info = f.get("f").expect("reloaded");
    assert_eq!(info.version, 2);
    let out = f.invoke("f", msg("a", "")).await.expect("call");
    assert_eq!(&out[0].payload[..], b"{\"v\":2}");
    f.delete("f").await.expect("delete");
    assert!(f.get("f").is_none());
    assert!(matches!(
        f.invoke("f", msg("a", "")).await,
        Err(CallError::NotFound(_))
    ));
    assert!(matches!(f.delete("f").await, Err(DeployError::NotFound(_))));
    assert!(!tmp.path().join("functions/f").exists());
}

#[tokio::test]
async fn a_new_version_does_not_lose_calls_in_flight() {
    let tmp = tempfile::tempdir().expect("tmp");
    let f = open(tmp.path()).await;
    f.deploy(spec("f", "echo"), None).await.expect("v1");
    let mut calls = Vec::new();
    for i in 0..2000 {
        let g = f.clone();
        calls.push(tokio::spawn(async move {
            g.invoke("f", msg("a", &i.to_string())).await
        }));
        if i == 1000 {
            let mut s = spec("f", "echo");
            s.description = "v2".into();
            let v = f.deploy(s, None).await.expect("v2").version;
            assert_eq!(v, 2);
        }
    }
    for c in calls {
        let out = c.await.expect("join").expect("no call lost to the swap");
        assert_eq!(out.len(), 1);
    }
    assert_eq!(f.get("f").expect("info").metrics.invocations, 2000);
}

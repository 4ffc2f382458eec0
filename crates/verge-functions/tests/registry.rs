//! Registry behaviour across runtimes: no call lost when a process
//! function is replaced while calls wait for its worker, and the in-flight
//! count coming back down when a caller gives up.

use std::time::Duration;

use verge_functions::{FunctionSpec, Functions, FunctionsConfig, Limits, Message, RuntimeKind};

const SLOW_ECHO: &str = r#"
import json, sys, time
for line in sys.stdin:
    req = json.loads(line)
    time.sleep(0.05)
    sys.stdout.write(json.dumps({"id": req["id"], "messages": [
        {"topic": req["topic"], "payload": req.get("payload", "")}]}) + "\n")
    sys.stdout.flush()
"#;

fn slow_echo(dir: &std::path::Path, description: &str) -> FunctionSpec {
    let script = dir.join("slow.py");
    std::fs::write(&script, SLOW_ECHO).expect("script");
    FunctionSpec {
        runtime: RuntimeKind::Process,
        command: vec!["python3".into(), script.display().to_string()],
        limits: Limits {
            concurrency: 1,
            ..Limits::default()
        },
        description: description.into(),
        ..FunctionSpec::wasm("slow")
    }
}

#[tokio::test]
async fn calls_waiting_on_a_replaced_process_version_run_on_the_new_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    let f = Functions::open(FunctionsConfig {
        dir: tmp.path().join("functions"),
    })
    .await
    .expect("open");
    f.deploy(slow_echo(tmp.path(), "v1"), None)
        .await
        .expect("v1");
    let mut calls = Vec::new();
    for i in 0..10 {
        let f = f.clone();
        calls.push(tokio::spawn(async move {
            f.invoke("slow", Message::new("t", i.to_string())).await
        }));
    }
    // Let the calls queue on the single worker, then replace the version.
    tokio::time::sleep(Duration::from_millis(120)).await;
    let v = f
        .deploy(slow_echo(tmp.path(), "v2"), None)
        .await
        .expect("v2")
        .version;
    assert_eq!(v, 2);
    for (i, c) in calls.into_iter().enumerate() {
        let out = c.await.expect("join").expect("no call lost in the swap");
        assert_eq!(&out[0].payload[..], i.to_string().as_bytes());
    }
    let m = f.get("slow").expect("info").metrics;
    assert_eq!((m.invocations, m.errors, m.in_flight), (10, 0, 0));
    f.shutdown().await;
}

#[tokio::test]
async fn a_caller_that_gives_up_does_not_leave_a_call_in_flight() {
    let tmp = tempfile::tempdir().expect("tmp");
    let f = Functions::open(FunctionsConfig {
        dir: tmp.path().join("functions"),
    })
    .await
    .expect("open");
    f.deploy(slow_echo(tmp.path(), ""), None)
        .await
        .expect("deploy");
    let gave_up = tokio::time::timeout(
        Duration::from_millis(10),
        f.invoke("slow", Message::new("t", "x")),
    )
    .await;
    assert!(gave_up.is_err(), "the call should still have been running");
    let m = f.get("slow").expect("info").metrics;
    assert_eq!((m.invocations, m.in_flight), (1, 0));
    assert_eq!(m.errors, 1);
    f.shutdown().await;
}

//! The process runtime against real `python3` workers: answers, errors,
//! binary payloads, crashes, hangs, garbage output, parallel workers and
//! shutdown. No test asserts on timing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use verge_functions::process::ProcessRuntime;
use verge_functions::{CallError, HostContext, Limits, Message, Runtime, State};

/// A worker whose behaviour is chosen by the request's topic.
const WORKER: &str = r#"
import base64, json, os, sys, time

def answer(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()

def one(rid, topic, payload):
    answer({"id": rid, "messages": [{"topic": topic, "payload": payload}]})

print("test worker up", file=sys.stderr, flush=True)
for line in sys.stdin:
    req = json.loads(line)
    rid, cmd = req["id"], req["topic"]
    key = "payload" if "payload" in req else "payload_base64"
    if cmd == "echo":
        info = {
            "name": os.environ["VERGE_FUNCTION"],
            "version": os.environ["VERGE_FUNCTION_VERSION"],
            "config": json.loads(os.environ["VERGE_FUNCTION_CONFIG"]),
            "cwd": os.getcwd(),
            "key": key,
            "time_ms": req["time_ms"],
            "qos": req["qos"],
        }
        answer({"id": rid, "messages": [
            {"topic": "out/echo", key: req[key], "content_type": req.get("content_type"),
             "user_properties": req["user_properties"], "qos": 2, "retain": True},
            {"topic": "out/info", "payload": json.dumps(info)},
        ]})
    elif cmd == "pid":
        one(rid, "pid", str(os.getpid()))
    elif cmd == "error":
        answer({"id": rid, "error": "boom: " + req["payload"]})
    elif cmd == "crash":
        print("crashing", file=sys.stderr, flush=True)
        sys.exit(3)
    elif cmd == "hang":
        time.sleep(3600)
    elif cmd == "garbage":
        print("hello from print")
        print("[1, 2, 3]")
        print('{"no_id": true}')
        print("")
        sys.stderr.write("e" * (1 << 20) + "\n")
        sys.stderr.flush()
        one(rid - 1, "stale", "old")
        one(rid, "fresh", "new")
    elif cmd == "bad":
        answer({"id": rid, "messages": [json.loads(req["payload"])]})
    elif cmd == "huge":
        sys.stdout.write("x" * (17 << 20) + "\n")
        one(rid, "after", "huge")
    elif cmd == "rendezvous":
        folder = req["payload"]
        open(os.path.join(folder, str(os.getpid())), "w").close()
        give_up = time.time() + 20
        while len(os.listdir(folder)) < 2 and time.time() < give_up:
            time.sleep(0.01)
        if len(os.listdir(folder)) < 2:
            answer({"id": rid, "error": "no other worker arrived"})
        else:
            one(rid, "pid", str(os.getpid()))
    elif cmd == "wait":
        folder = req["payload"]
        open(os.path.join(folder, "started"), "w").close()
        while not os.path.exists(os.path.join(folder, "go")):
            time.sleep(0.01)
        one(rid, "done", str(os.getpid()))
    else:
        answer({"id": rid, "error": "unknown command " + cmd})
"#;

fn ctx(concurrency: u32, timeout: Duration, config: &str) -> HostContext {
    HostContext {
        name: "fn-test".into(),
        version: 3,
        config: config.into(),
        state: Arc::new(State::in_memory(1 << 20)),
        limits: Limits {
            concurrency,
            timeout,
            ..Limits::default()
        },
    }
}

/// The test worker in a fresh folder (also its working directory).
fn start(concurrency: u32, timeout: Duration) -> (tempfile::TempDir, ProcessRuntime) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("worker.py"), WORKER).expect("write worker");
    let command = vec!["python3".to_owned(), "worker.py".to_owned()];
    let rt = ProcessRuntime::start(
        command,
        Some(dir.path().to_path_buf()),
        ctx(concurrency, timeout, r#"{"k": [1, 2]}"#),
    )
    .expect("start");
    (dir, rt)
}

async fn call(rt: &ProcessRuntime, topic: &str, payload: &str) -> Result<Vec<Message>, CallError> {
    rt.call(Message::new(topic, payload.to_owned())).await
}

/// The pid the worker that served a `pid` call reported.
async fn pid(rt: &ProcessRuntime) -> u32 {
    let out = call(rt, "pid", "").await.expect("pid call");
    std::str::from_utf8(&out[0].payload)
        .expect("utf-8")
        .parse()
        .expect("a pid")
}

const SECS_5: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_worker_answers_with_messages_and_sees_its_environment() {
    let (dir, rt) = start(1, SECS_5);
    let mut msg = Message::new("echo", "{\"t\": 21.5}");
    msg.content_type = Some("application/json".into());
    msg.user_properties = vec![("rule".into(), "r1".into()), ("a".into(), "b".into())];
    msg.qos = 0;
    msg.time_ms = 1_764_390_000_000;
    let out = rt.call(msg).await.expect("call");
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].topic, "out/echo");
    assert_eq!(&out[0].payload[..], b"{\"t\": 21.5}");
    assert_eq!(out[0].content_type.as_deref(), Some("application/json"));
    assert_eq!(
        out[0].user_properties,
        vec![("rule".into(), "r1".into()), ("a".into(), "b".into())]
    );
    assert_eq!((out[0].qos, out[0].retain), (2, true));
    assert_eq!(
        (out[1].qos, out[1].retain, &out[1].content_type),
        (1, false, &None)
    );

    let info: serde_json::Value = serde_json::from_slice(&out[1].payload).expect("json");
    assert_eq!(info["name"], "fn-test");
    assert_eq!(info["version"], "3");
    assert_eq!(info["config"], serde_json::json!({"k": [1, 2]}));
    assert_eq!(info["key"], "payload");
    assert_eq!(info["time_ms"], 1_764_390_000_000_i64);
    assert_eq!(info["qos"], 0);
    let cwd = PathBuf::from(info["cwd"].as_str().expect("cwd"));
    assert_eq!(
        cwd.canonicalize().expect("cwd"),
        dir.path().canonicalize().expect("dir")
    );

    // The worker is reused: the same process serves the next calls.
    let first = pid(&rt).await;
    assert_eq!(pid(&rt).await, first);
    assert!(rt.memory_bytes() > 0);
    rt.shutdown().await;
}

#[tokio::test]
async fn an_error_answer_fails_the_call_with_the_functions_message() {
    let (_dir, rt) = start(1, SECS_5);
    let err = call(&rt, "error", "too hot").await.expect_err("error");
    assert_eq!(err, CallError::Returned("boom: too hot".into()));
    // The worker carries on.
    assert!(call(&rt, "pid", "").await.is_ok());
    rt.shutdown().await;
}

#[tokio::test]
async fn binary_payloads_travel_as_base64_both_ways() {
    let (_dir, rt) = start(1, SECS_5);
    let bytes = vec![0xff_u8, 0x00, 0x01, b'\n', 0xc3];
    let out = rt
        .call(Message::new("echo", bytes.clone()))
        .await
        .expect("call");
    assert_eq!(&out[0].payload[..], &bytes[..]);
    let info: serde_json::Value = serde_json::from_slice(&out[1].payload).expect("json");
    assert_eq!(info["key"], "payload_base64");
    rt.shutdown().await;
}

#[tokio::test]
async fn a_worker_that_exits_mid_call_fails_the_call_and_is_restarted() {
    let (_dir, rt) = start(1, SECS_5);
    let before = pid(&rt).await;
    let err = call(&rt, "crash", "").await.expect_err("crash");
    let CallError::WorkerExited(why) = &err else {
        panic!("expected worker exited, got {err:?}");
    };
    assert!(why.contains("exit status: 3"), "{why}");
    let after = pid(&rt).await;
    assert_ne!(after, before);
    rt.shutdown().await;
}

#[tokio::test]
async fn a_worker_that_hangs_times_out_and_is_replaced() {
    let (_dir, rt) = start(1, Duration::from_secs(2));
    let before = pid(&rt).await;
    let err = call(&rt, "hang", "").await.expect_err("hang");
    assert_eq!(err, CallError::Timeout(2000));
    let after = pid(&rt).await;
    assert_ne!(after, before);
    // The hung process was killed.
    assert!(!Path::new(&format!("/proc/{before}")).exists());
    rt.shutdown().await;
}

#[tokio::test]
async fn stdout_lines_that_are_not_the_answer_are_skipped() {
    let (_dir, rt) = start(1, SECS_5);
    let before = pid(&rt).await;
    let out = call(&rt, "garbage", "").await.expect("call");
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].topic.as_str(), &out[0].payload[..]),
        ("fresh", &b"new"[..])
    );
    assert_eq!(pid(&rt).await, before);
    rt.shutdown().await;
}

#[tokio::test]
async fn malformed_messages_fail_with_bad_output_naming_the_problem() {
    let (_dir, rt) = start(1, SECS_5);
    let before = pid(&rt).await;
    let cases = [
        (r#"{"payload": "x"}"#, "`topic` is missing"),
        (
            r#"{"topic": "t", "payload_base64": "%%%"}"#,
            "not valid base64",
        ),
        (
            r#"{"topic": "t"}"#,
            "`payload` or `payload_base64` is missing",
        ),
        (
            r#"{"topic": "t", "payload": "x", "qos": 5}"#,
            "`qos` must be 0, 1 or 2",
        ),
    ];
    for (message, expected) in cases {
        match call(&rt, "bad", message).await {
            Err(CallError::BadOutput(why)) => assert!(why.contains(expected), "{message}: {why}"),
            other => panic!("{message}: expected bad output, got {other:?}"),
        }
    }
    // A malformed answer is no reason to restart the worker.
    assert_eq!(pid(&rt).await, before);
    rt.shutdown().await;
}

#[tokio::test]
async fn an_overlong_answer_line_fails_the_call_and_restarts_the_worker() {
    let (_dir, rt) = start(1, Duration::from_secs(30));
    let before = pid(&rt).await;
    match call(&rt, "huge", "").await {
        Err(CallError::BadOutput(why)) => assert!(why.contains("longer than"), "{why}"),
        other => panic!("expected bad output, got {other:?}"),
    }
    assert_ne!(pid(&rt).await, before);
    rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_serve_two_calls_at_once() {
    // Each call waits in its worker until two workers have arrived: the
    // calls only both succeed if they run at the same time.
    let (_dir, rt) = start(2, Duration::from_secs(30));
    let meeting = tempfile::tempdir().expect("tempdir");
    let folder = meeting.path().to_str().expect("utf-8 path");
    let (a, b) = tokio::join!(
        call(&rt, "rendezvous", folder),
        call(&rt, "rendezvous", folder)
    );
    let (a, b) = (a.expect("first call"), b.expect("second call"));
    assert_ne!(a[0].payload, b[0].payload, "served by two processes");
    rt.shutdown().await;
}

#[tokio::test]
async fn shutdown_lets_a_call_in_progress_finish_then_stops_the_worker() {
    let (_dir, rt) = start(1, Duration::from_secs(30));
    let rt = Arc::new(rt);
    let sync = tempfile::tempdir().expect("tempdir");
    let folder = sync.path().to_str().expect("utf-8 path").to_owned();
    let in_flight = tokio::spawn({
        let rt = rt.clone();
        async move { rt.call(Message::new("wait", folder)).await }
    });
    // Wait until the worker has the request.
    for _ in 0..3000 {
        if sync.path().join("started").exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        sync.path().join("started").exists(),
        "the worker got the request"
    );

    let go = sync.path().join("go");
    let ((), refused) = tokio::join!(rt.shutdown(), async {
        // `shutdown` was polled first, so it has begun: new calls are refused.
        let refused = call(&rt, "pid", "").await;
        std::fs::write(&go, b"").expect("write go");
        refused
    });
    assert!(
        matches!(refused, Err(CallError::Unavailable(_))),
        "{refused:?}"
    );

    let out = in_flight
        .await
        .expect("task")
        .expect("the call in progress");
    assert_eq!(out[0].topic, "done");
    let pid = std::str::from_utf8(&out[0].payload).expect("utf-8");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the worker is gone"
    );
    assert_eq!(rt.memory_bytes(), 0);
    assert!(matches!(
        call(&rt, "pid", "").await,
        Err(CallError::Unavailable(_))
    ));
}

#[tokio::test]
async fn a_worker_that_cannot_stay_up_fails_calls_with_worker_exited() {
    let command = vec![
        "python3".to_owned(),
        "-c".to_owned(),
        "import sys; sys.exit(1)".to_owned(),
    ];
    let rt =
        ProcessRuntime::start(command, None, ctx(1, Duration::from_secs(1), "{}")).expect("start");
    let err = call(&rt, "pid", "").await.expect_err("no worker");
    assert!(matches!(err, CallError::WorkerExited(_)), "{err:?}");
    rt.shutdown().await;
}

#[tokio::test]
async fn a_program_that_cannot_be_started_is_named() {
    let command = vec!["verge-no-such-program".to_owned(), "x".to_owned()];
    let err = ProcessRuntime::start(command, None, ctx(1, SECS_5, "{}"))
        .err()
        .expect("start fails");
    assert!(err.contains("verge-no-such-program"), "{err}");
    let err = ProcessRuntime::start(Vec::new(), None, ctx(1, SECS_5, "{}"))
        .err()
        .expect("empty command");
    assert!(err.contains("empty"), "{err}");
}

#[tokio::test]
async fn the_python_example_alerts_above_its_threshold() {
    let handler =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/functions/python/handler.py");
    let command = vec![
        "python3".to_owned(),
        handler.to_str().expect("utf-8 path").to_owned(),
    ];
    let rt =
        ProcessRuntime::start(command, None, ctx(1, SECS_5, r#"{"above": 30}"#)).expect("start");

    let out = call(&rt, "devices/d1/telemetry", r#"{"temperature": 35}"#)
        .await
        .expect("hot");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].topic, "alerts/devices/d1/telemetry");
    assert_eq!(out[0].content_type.as_deref(), Some("application/json"));
    let alert: serde_json::Value = serde_json::from_slice(&out[0].payload).expect("json");
    assert_eq!(alert["temperature"], 35);
    assert_eq!(alert["source"], "devices/d1/telemetry");

    let out = call(&rt, "devices/d1/telemetry", r#"{"temperature": 20.5}"#)
        .await
        .expect("cool");
    assert!(out.is_empty());

    let err = call(&rt, "devices/d1/telemetry", r#"{"humidity": 40}"#)
        .await
        .expect_err("no temperature");
    assert_eq!(err, CallError::Returned("temperature missing".into()));

    let err = rt
        .call(Message::new("devices/d1/telemetry", vec![0xff_u8]))
        .await
        .expect_err("binary");
    assert!(
        matches!(&err, CallError::Returned(why) if why.contains("not JSON")),
        "{err:?}"
    );
    rt.shutdown().await;
}

//! Resource limits, CPU and memory figures, and log follow of process
//! components, with real `sh` and `python3` processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/components.rs"]
mod comp;
use std::time::{Duration, Instant};

#[path = "support/functions.rs"]
mod support;

use futures_util::StreamExt;
use tower::ServiceExt;

use comp::{spec_from, wait_for};
use serde_json::{Value, json};
use verge_node::components::{Components, State};
use verge_protocol::ComponentSpec;

const WAIT: Duration = Duration::from_secs(20);

fn spec(v: Value) -> ComponentSpec {
    spec_from(
        json!({
            "version": "1", "command": "sh", "restart": "never",
            "backoff_min": "50ms", "backoff_max": "200ms", "stop_timeout": "1s",
        }),
        v,
    )
}

#[tokio::test]
async fn memory_limit_fails_a_large_allocation_and_nice_follows_cpu_shares() {
    let dir = tempfile::tempdir().expect("tmp");
    let alloc = "python3 -c 'b = bytearray(200 * 1024 * 1024); print(len(b))'";
    let c = Components::start(
        &[
            spec(json!({"name": "limited", "args": ["-c", alloc], "limits": {"memory": "64MiB"}})),
            spec(json!({"name": "free", "args": ["-c", alloc]})),
            spec(json!({
                "name": "niced",
                "args": ["-c", "cut -d' ' -f19 /proc/self/stat; exec sleep 1000"],
                "limits": {"cpu_shares": 256},
            })),
        ],
        dir.path(),
    )
    .expect("start");
    let limited = wait_for(&c, "limited", "ended", |i| i.state == State::Failed).await;
    assert!(
        limited
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("status 1"),
        "{limited:?}"
    );
    let (lines, _) = c.logs("limited", 50).expect("logs");
    assert!(
        lines.iter().any(|l| l.line.contains("MemoryError")),
        "{lines:?}"
    );
    wait_for(&c, "free", "done", |i| i.state == State::Stopped).await;
    let (lines, _) = c.logs("free", 50).expect("logs");
    assert!(lines.iter().any(|l| l.line == "209715200"), "{lines:?}");
    // The nice value is field 19 of /proc/<pid>/stat.
    let t = Instant::now();
    loop {
        let (lines, _) = c.logs("niced", 50).expect("logs");
        if let Some(l) = lines.first() {
            assert_eq!(l.line, "6");
            break;
        }
        assert!(t.elapsed() < WAIT, "no output");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    c.shutdown().await;
}

#[tokio::test]
async fn cpu_and_memory_of_a_running_component() {
    let dir = tempfile::tempdir().expect("tmp");
    let busy = "exec python3 -c 'b = bytearray(50 * 1024 * 1024)\nfor i in range(len(b) // 4096): b[i * 4096] = 1\nwhile True: pass'";
    let c = Components::start(
        &[spec(json!({"name": "busy", "args": ["-c", busy]}))],
        dir.path(),
    )
    .expect("start");
    let info = wait_for(&c, "busy", "using 50 MiB", |i| {
        i.memory_bytes.is_some_and(|m| m > 50 * 1024 * 1024)
    })
    .await;
    assert!(info.cpu_percent.is_some());
    // A busy loop uses CPU time.
    wait_for(&c, "busy", "using CPU", |i| {
        i.cpu_seconds.is_some_and(|s| s > 0.1)
    })
    .await;
    let mut m = String::new();
    c.render_metrics(&mut m);
    assert!(
        m.contains("verge_component_memory_bytes{component=\"busy\"} "),
        "{m}"
    );
    assert!(
        m.contains("verge_component_cpu_seconds_total{component=\"busy\"} "),
        "{m}"
    );
    c.stop_one("busy").expect("stop");
    let info = wait_for(&c, "busy", "stopped", |i| i.state == State::Stopped).await;
    assert_eq!((info.cpu_percent, info.memory_bytes), (None, None));
    c.shutdown().await;
}

#[tokio::test]
async fn log_follow_streams_new_lines_until_the_node_ends_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let c = Components::start(
        &[spec(json!({
            "name": "ticker",
            "args": ["-c", "echo old; read x < fifo; i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.05; done"],
            "workdir": dir.path().to_str().expect("utf-8"),
        }))],
        dir.path(),
    )
    .expect("start");
    while c.logs("ticker", 1).expect("logs").0.is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let broker = support::broker();
    let mut st = support::state(&broker, None);
    st.components = Some(c.clone());
    let req = axum::http::Request::builder()
        .uri("/api/components/ticker/logs?tail=1&follow=true")
        .header("authorization", format!("Bearer {}", support::TOKEN))
        .body(axum::body::Body::empty())
        .expect("request");
    let resp = verge_node::http::router(st)
        .oneshot(req)
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let mut body = resp.into_body().into_data_stream();
    let mut text = String::new();
    // Release the ticker once the follower has the old line.
    let first = next(&mut body).await.expect("chunk").expect("ok");
    text.push_str(std::str::from_utf8(&first).expect("utf-8"));
    std::fs::write(&fifo, "go\n").expect("fifo");
    while text.lines().count() < 4 {
        let chunk = next(&mut body).await.expect("chunk").expect("ok");
        text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
    }
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines[0], json!({"stream": "stdout", "line": "old"}));
    assert_eq!(lines[1]["line"], "tick 1");
    assert_eq!(lines[2]["line"], "tick 2");
    // The node stops: the stream ends (a graceful HTTP shutdown would
    // otherwise wait for it forever).
    c.end_follows();
    loop {
        match next(&mut body).await {
            None => break,
            Some(_) => continue,
        }
    }
    c.shutdown().await;
}

async fn next(body: &mut axum::body::BodyDataStream) -> Option<Result<bytes::Bytes, axum::Error>> {
    tokio::time::timeout(WAIT, body.next())
        .await
        .expect("a chunk in time")
}

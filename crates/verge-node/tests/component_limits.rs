//! Resource limits, CPU and memory figures, and log follow of process
//! components, with real `sh` and `python3` processes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use verge_node::components::{ComponentInfo, Components, State};
use verge_protocol::ComponentSpec;

const WAIT: Duration = Duration::from_secs(20);

fn spec(v: Value) -> ComponentSpec {
    let mut base = json!({
        "version": "1", "command": "sh", "restart": "never",
        "backoff_min": "50ms", "backoff_max": "200ms", "stop_timeout": "1s",
    });
    base.as_object_mut()
        .expect("object")
        .extend(v.as_object().expect("object").clone());
    serde_json::from_value(base).expect("spec")
}

async fn wait_for(
    c: &Components,
    name: &str,
    what: &str,
    ok: impl Fn(&ComponentInfo) -> bool,
) -> ComponentInfo {
    let t = Instant::now();
    loop {
        let info = c.get(name).expect("component");
        if ok(&info) {
            return info;
        }
        assert!(t.elapsed() < WAIT, "{name}: not {what}: {info:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
        limited.last_error.as_deref().unwrap_or("").contains("status 1"),
        "{limited:?}"
    );
    let (lines, _) = c.logs("limited", 50).expect("logs");
    assert!(lines.iter().any(|l| l.line.contains("MemoryError")), "{lines:?}");
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
    wait_for(&c, "busy", "using CPU", |i| i.cpu_seconds.is_some_and(|s| s > 0.1)).await;
    let mut m = String::new();
    c.render_metrics(&mut m);
    assert!(m.contains("verge_component_memory_bytes{component=\"busy\"} "), "{m}");
    assert!(m.contains("verge_component_cpu_seconds_total{component=\"busy\"} "), "{m}");
    c.stop_one("busy").expect("stop");
    let info = wait_for(&c, "busy", "stopped", |i| i.state == State::Stopped).await;
    assert_eq!((info.cpu_percent, info.memory_bytes), (None, None));
    c.shutdown().await;
}

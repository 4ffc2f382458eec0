//! User components with real processes: small `sh` and `python3` scripts
//! in a temporary directory, supervised by `Components` and reached through
//! the node's API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/functions.rs"]
mod support;

#[path = "support/components.rs"]
mod comp;
use std::path::Path;
use std::time::{Duration, Instant};

use comp::{free_port, spec_from, wait_for};
use serde_json::{Value, json};
use support::{StatusCode, TOKEN, broker, call, raw, state};
use verge_node::components::{Components, LOG_LINES, State};
use verge_protocol::{ComponentError, ComponentSpec};

/// Longest wait for anything that should happen; only there so a broken
/// build fails instead of hanging.
const WAIT: Duration = Duration::from_secs(20);

fn spec(name: &str, script: &str, extra: Value) -> ComponentSpec {
    spec_from(
        json!({
            "name": name, "version": "1.0.0",
            "command": "sh", "args": ["-c", script],
            "backoff_min": "50ms", "backoff_max": "200ms",
            "stop_timeout": "2s",
        }),
        extra,
    )
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn crash_is_restarted_with_backoff_and_counted() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = Components::start(
        &[spec(
            "crash",
            "echo started; exit 3",
            json!({"backoff_min": "100ms", "backoff_max": "400ms", "max_restarts": 100}),
        )],
        dir.path(),
    )
    .expect("start");
    let t = Instant::now();
    let info = wait_for(&c, "crash", "restarted 3 times", |i| i.restarts >= 3).await;
    // Waits of 100, 200 and 400 ms come before the fourth run.
    wait_for(&c, "crash", "restarted 4 times", |i| i.restarts >= 4).await;
    assert!(
        t.elapsed() >= Duration::from_millis(700),
        "backoff did not grow: {:?}",
        t.elapsed()
    );
    assert_eq!(info.last_error.as_deref(), Some("exited with status 3"));
    let (lines, _) = c.logs("crash", 10).expect("logs");
    assert!(lines.iter().filter(|l| l.line == "started").count() >= 3);
    // Every state change is kept (the last 16), with the reason of each
    // backoff, oldest first.
    let history = &c.get("crash").expect("crash").history;
    assert_eq!(
        history.len(),
        verge_node::components::HISTORY,
        "{history:?}"
    );
    assert!(history.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
    let backoffs: Vec<_> = history
        .iter()
        .filter(|t| t.state == State::Backoff)
        .collect();
    assert!(backoffs.len() >= 3, "{history:?}");
    assert!(
        backoffs
            .iter()
            .all(|t| t.reason.as_deref() == Some("exited with status 3")),
        "{history:?}"
    );
    let json = serde_json::to_value(c.get("crash").expect("crash")).expect("json");
    assert_eq!(
        json["history"].as_array().map(Vec::len),
        Some(verge_node::components::HISTORY)
    );
    c.shutdown().await;
}

#[tokio::test]
async fn exits_at_once_in_a_loop_ends_failed_after_the_limit() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = Components::start(
        &[spec(
            "flap",
            "exit 1",
            json!({"max_restarts": 3, "restart_window": "60s", "backoff_min": "10ms", "backoff_max": "20ms"}),
        )],
        dir.path(),
    )
    .expect("start");
    let info = wait_for(&c, "flap", "failed", |i| i.state == State::Failed).await;
    assert_eq!(info.restarts, 3);
    let reason = info.last_error.expect("reason");
    assert!(
        reason.contains("gave up after 3 restarts within 60 s")
            && reason.contains("exited with status 1"),
        "{reason}"
    );
    // It stays failed: no more restarts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(c.get("flap").expect("flap").restarts, 3);
    // Starting it again gives it a fresh restart history.
    c.start_one("flap").expect("start");
    wait_for(&c, "flap", "restarted", |i| i.restarts > 3).await;
    c.shutdown().await;
}

#[tokio::test]
async fn command_not_found_fails_and_others_keep_running() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut ghost = spec(
        "ghost",
        "",
        json!({"max_restarts": 2, "backoff_min": "10ms", "backoff_max": "20ms"}),
    );
    ghost.command = "/nonexistent/verge-component".into();
    let steady = spec("steady", "exec sleep 30", json!({}));
    let nowhere = spec(
        "nowhere",
        "true",
        json!({"restart": "never", "workdir": "/nonexistent/verge-dir"}),
    );
    let c = Components::start(&[steady, ghost, nowhere], dir.path()).expect("start");
    let before = wait_for(&c, "steady", "healthy", |i| i.state == State::Healthy).await;
    let info = wait_for(&c, "ghost", "failed", |i| i.state == State::Failed).await;
    let reason = info.last_error.expect("reason");
    assert!(
        reason.contains("cannot start `/nonexistent/verge-component`")
            && reason.contains("No such file"),
        "{reason}"
    );
    let t = Instant::now();
    let nowhere = loop {
        let i = c.get("nowhere").expect("nowhere");
        if i.state == State::Failed {
            break i;
        }
        assert!(t.elapsed() < WAIT, "{i:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        nowhere
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("workdir /nonexistent/verge-dir is not a directory")),
        "{nowhere:?}"
    );
    let after = c.get("steady").expect("steady");
    assert_eq!(
        (after.state, after.pid, after.restarts),
        (State::Healthy, before.pid, 0)
    );
    c.shutdown().await;
}

#[tokio::test]
async fn a_hung_http_service_becomes_unhealthy_and_is_restarted() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    // Accepts connections and never answers.
    let script = dir.path().join("hang.py");
    std::fs::write(
        &script,
        format!(
            "import socket, time\n\
             s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('127.0.0.1', {port})); s.listen(16)\n\
             conns = []\n\
             while True:\n    c, _ = s.accept(); conns.append(c)\n"
        ),
    )
    .expect("script");
    let mut hang = spec(
        "hang",
        "",
        json!({
            // The grace covers python's start (over 200 ms on a loaded
            // machine), when the probe is refused rather than timed out.
            "health": {"kind": "http", "url": format!("http://127.0.0.1:{port}/health"),
                       "interval": "100ms", "timeout": "200ms", "failures": 2, "start_grace": "2s"},
            "max_restarts": 100,
        }),
    );
    hang.command = "python3".into();
    hang.args = vec![script.to_str().expect("utf-8").into()];
    // Nothing listens on its port at all.
    let tcp = spec(
        "deaf",
        "exec sleep 30",
        json!({
            "health": {"kind": "tcp", "address": format!("127.0.0.1:{}", free_port()),
                       "interval": "100ms", "timeout": "200ms", "failures": 2, "start_grace": "0s"},
            "max_restarts": 100,
        }),
    );
    let c = Components::start(&[hang, tcp], dir.path()).expect("start");
    for name in ["hang", "deaf"] {
        let info = wait_for(&c, name, "restarted", |i| i.restarts >= 1).await;
        let reason = info.last_error.expect("reason");
        assert!(
            reason.starts_with("unhealthy after 2 failed health checks"),
            "{name}: {reason}"
        );
    }
    // On a loaded machine python may not listen yet at the first probes
    // (connection refused); once it does, the probe times out.
    wait_for(&c, "hang", "unhealthy by a timeout", |i| {
        i.last_error
            .as_deref()
            .is_some_and(|r| r.contains("timed out"))
    })
    .await;
    let deaf = c.get("deaf").expect("deaf").last_error.expect("reason");
    assert!(deaf.contains("tcp connect"), "{deaf}");
    c.shutdown().await;
}

#[tokio::test]
async fn stop_timeout_kills_a_process_that_ignores_sigterm() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = Components::start(
        &[spec(
            "stubborn",
            "trap '' TERM; (while true; do sleep 0.05; done) & echo $! > child.pid; echo ready; while true; do sleep 0.05; done",
            json!({"stop_timeout": "300ms", "workdir": dir.path().to_str().expect("utf-8")}),
        )],
        dir.path(),
    )
    .expect("start");
    let info = wait_for(&c, "stubborn", "healthy", |i| i.state == State::Healthy).await;
    let pid = info.pid.expect("pid");
    // Its trap is set once it printed.
    let t0 = Instant::now();
    while c.logs("stubborn", 1).expect("logs").0.is_empty() {
        assert!(t0.elapsed() < WAIT, "no output");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = Instant::now();
    c.stop_one("stubborn").expect("stop");
    let info = wait_for(&c, "stubborn", "stopped", |i| i.state == State::Stopped).await;
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert!(
        info.last_error
            .as_deref()
            .is_some_and(|e| e.contains("did not stop within 300 ms of SIGTERM")),
        "{info:?}"
    );
    assert!(!alive(pid), "pid {pid} still runs");
    // What it started went with it (the whole process group).
    let child: u32 = std::fs::read_to_string(dir.path().join("child.pid"))
        .expect("child pid")
        .trim()
        .parse()
        .expect("a pid");
    let t0 = Instant::now();
    while alive(child) {
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "its child {child} still runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(info.pid, None);

    // The node's shutdown also stops it within its timeout.
    c.start_one("stubborn").expect("start");
    let pid = wait_for(&c, "stubborn", "running again", |i| i.pid.is_some())
        .await
        .pid
        .expect("pid");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    c.shutdown().await;
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(!alive(pid), "pid {pid} still runs after shutdown");
}

#[tokio::test]
async fn a_component_starts_only_once_its_dependency_is_healthy() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let script = dir.path().join("a.py");
    let ready = dir.path().join("a-ready");
    let seen = dir.path().join("b-saw");
    // Listens only after a while, then answers 200.
    std::fs::write(
        &script,
        format!(
            "import http.server, time, pathlib\n\
             time.sleep(0.8)\n\
             class H(http.server.BaseHTTPRequestHandler):\n\
             \x20   def do_GET(self):\n\
             \x20       self.send_response(200); self.end_headers()\n\
             \x20   def log_message(self, *a): pass\n\
             srv = http.server.HTTPServer(('127.0.0.1', {port}), H)\n\
             pathlib.Path({ready:?}).write_text('up')\n\
             srv.serve_forever()\n",
            ready = ready.to_str().expect("utf-8"),
        ),
    )
    .expect("script");
    let mut a = spec(
        "a",
        "",
        json!({"health": {"kind": "http", "url": format!("http://127.0.0.1:{port}/"),
                          "interval": "100ms", "timeout": "500ms", "start_grace": "5s"}}),
    );
    a.command = "python3".into();
    a.args = vec![script.to_str().expect("utf-8").into()];
    let b = spec(
        "b",
        &format!(
            "if [ -f {r} ]; then echo after > {s}; else echo before > {s}; fi; exec sleep 30",
            r = ready.display(),
            s = seen.display()
        ),
        json!({"depends_on": ["a"]}),
    );
    // Listed dependent first: the order comes from depends_on.
    let c = Components::start(&[b, a], dir.path()).expect("start");
    let waiting = wait_for(&c, "b", "waiting", |i| !i.waiting_for.is_empty()).await;
    assert_eq!(
        (waiting.state, waiting.waiting_for),
        (State::Starting, vec!["a".to_owned()])
    );
    wait_for(&c, "b", "healthy", |i| i.state == State::Healthy).await;
    assert_eq!(c.get("a").expect("a").state, State::Healthy);
    let t = Instant::now();
    while !seen.exists() {
        assert!(t.elapsed() < WAIT, "b wrote nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        std::fs::read_to_string(&seen).expect("read").trim(),
        "after"
    );
    assert_eq!(
        c.list().iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    c.shutdown().await;
}

#[tokio::test]
async fn a_dependency_cycle_is_refused() {
    let dir = tempfile::tempdir().expect("tmp");
    let a = spec("a", "true", json!({"depends_on": ["c"]}));
    let b = spec("b", "true", json!({"depends_on": ["a"]}));
    let cc = spec("c", "true", json!({"depends_on": ["b"]}));
    let Err(e) = Components::start(&[a, b, cc], dir.path()) else {
        panic!("a cycle was accepted");
    };
    assert!(matches!(e, ComponentError::Cycle { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "component `a`: dependency cycle a -> c -> b -> a"
    );
    let x = spec("x", "true", json!({"depends_on": ["nope"]}));
    let Err(e) = Components::start(&[x], dir.path()) else {
        panic!("an unknown dependency was accepted");
    };
    assert_eq!(
        e.to_string(),
        "component `x`: depends_on names `nope`, which is not a component"
    );
}

#[tokio::test]
async fn output_is_captured_in_a_bounded_ring() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = Components::start(
        &[spec(
            "chatty",
            "i=0; while [ $i -lt 1500 ]; do echo \"line $i\"; i=$((i+1)); done; echo oops >&2; exec sleep 30",
            json!({}),
        )],
        dir.path(),
    )
    .expect("start");
    wait_for(&c, "chatty", "done printing", |i| {
        i.log_lines_dropped >= 500
    })
    .await;
    let t = Instant::now();
    loop {
        let (lines, _) = c.logs("chatty", LOG_LINES).expect("logs");
        if lines
            .iter()
            .any(|l| l.stream == "stderr" && l.line == "oops")
        {
            break;
        }
        assert!(t.elapsed() < WAIT, "no stderr line");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (lines, dropped) = c.logs("chatty", usize::MAX).expect("logs");
    assert_eq!(lines.len(), LOG_LINES);
    assert_eq!(dropped, 501);
    let (tail, _) = c.logs("chatty", 2).expect("logs");
    let out: Vec<_> = tail
        .iter()
        .filter(|l| l.stream == "stdout")
        .map(|l| l.line.as_str())
        .collect();
    assert!(!out.is_empty(), "{tail:?}");
    assert!(out.iter().all(|l| l.starts_with("line 14")), "{out:?}");
    c.shutdown().await;
}

/// A process component does not inherit the node's environment (which
/// may hold its secrets), only PATH and a few like it, plus its own.
#[tokio::test]
async fn a_process_gets_its_own_environment_not_the_nodes() {
    let inherited = "CARGO_MANIFEST_DIR";
    assert!(std::env::var_os(inherited).is_some(), "cargo sets it");
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("env");
    let c = Components::start(
        &[spec(
            "envy",
            &format!("env > {}.tmp; mv {0}.tmp {0}; exec sleep 30", out.display()),
            json!({"env": {"MINE": "yes"}}),
        )],
        dir.path(),
    )
    .expect("start");
    let t = Instant::now();
    while !out.exists() {
        assert!(t.elapsed() < WAIT, "the component did not write its env");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let env = std::fs::read_to_string(&out).expect("env");
    let keys: Vec<&str> = env.lines().filter_map(|l| l.split('=').next()).collect();
    assert!(!keys.contains(&inherited), "{env}");
    for k in [
        "PATH",
        "MINE",
        "VERGE_COMPONENT_NAME",
        "VERGE_COMPONENT_DIR",
    ] {
        assert!(keys.contains(&k), "{k} missing: {env}");
    }
    c.shutdown().await;
}

#[tokio::test]
async fn api_lists_controls_and_tails_components() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = Components::start(
        &[spec(
            "svc",
            "echo hello; echo world; exec sleep 30",
            json!({"config": {"k": 1}}),
        )],
        dir.path(),
    )
    .expect("start");
    let b = broker();
    let mut s = state(&b, None);
    s.components = Some(c.clone());
    wait_for(&c, "svc", "healthy", |i| i.state == State::Healthy).await;

    let (st, v) = call(&s, "GET", "/api/components", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v[0]["name"], "svc");
    assert_eq!(v[0]["state"], "healthy");
    assert_eq!(v[0]["restarts"], 0);
    assert!(v[0]["pid"].as_u64().is_some(), "{v}");
    assert!(v[0]["uptime_seconds"].as_u64().is_some(), "{v}");

    let (st, v) = call(&s, "GET", "/api/components/svc", None).await;
    assert_eq!((st, v["version"].as_str()), (StatusCode::OK, Some("1.0.0")));

    let t = Instant::now();
    loop {
        let (st, v) = call(&s, "GET", "/api/components/svc/logs?tail=1", None).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        if v["lines"][0]["line"] == "world" {
            assert_eq!(v["lines"].as_array().map(Vec::len), Some(1));
            assert_eq!(v["dropped"], 0);
            break;
        }
        assert!(t.elapsed() < WAIT, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (st, v) = call(&s, "POST", "/api/components/svc/stop", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    wait_for(&c, "svc", "stopped", |i| i.state == State::Stopped).await;
    let (st, _) = call(&s, "POST", "/api/components/svc/start", None).await;
    assert_eq!(st, StatusCode::OK);
    let first = wait_for(&c, "svc", "healthy", |i| i.state == State::Healthy).await;
    let (st, _) = call(&s, "POST", "/api/components/svc/restart", None).await;
    assert_eq!(st, StatusCode::OK);
    wait_for(&c, "svc", "restarted", |i| {
        i.state == State::Healthy && i.pid.is_some() && i.pid != first.pid
    })
    .await;

    for path in ["/api/components/nope", "/api/components/nope/logs"] {
        let (st, v) = call(&s, "GET", path, None).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{path}: {v}");
        assert_eq!(v["error"]["message"], "no component named `nope`");
    }
    let (st, _) = call(&s, "POST", "/api/components/nope/restart", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = call(&s, "GET", "/api/components/svc/logs?tail=x", None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // Without the token: refused.
    let mut anon = s.clone();
    let req = axum::http::Request::builder()
        .uri("/api/components")
        .body(axum::body::Body::empty())
        .expect("request");
    use tower::ServiceExt;
    let resp = verge_node::http::router(anon.clone())
        .oneshot(req)
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    anon.components = None;
    let (st, v) = call(&anon, "GET", "/api/components", None).await;
    assert_eq!((st, v), (StatusCode::OK, json!([])));

    let (st, text) = raw(&s, "GET", "/metrics", None, Vec::new()).await;
    assert_eq!(st, StatusCode::OK);
    for line in [
        "verge_component_restarts_total{component=\"svc\"} 0",
        "verge_component_state{component=\"svc\",state=\"healthy\"} 1",
        "verge_component_state{component=\"svc\",state=\"failed\"} 0",
        "verge_component_up{component=\"svc\"} 1",
        "verge_component_log_lines_dropped_total{component=\"svc\"} 0",
    ] {
        assert!(text.contains(line), "no `{line}` in:\n{text}");
    }
    let _ = TOKEN;
    c.shutdown().await;
}

/// The node starts its `[[components]]` with its parts (in the default
/// working directory, with their config in the environment) and stops
/// them when it stops, within their stop timeouts.
#[tokio::test]
async fn the_node_runs_its_configured_components_and_stops_them() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("out");
    let toml = format!(
        r#"
[node]
data_dir = {data:?}
[broker.listeners.tcp]
enabled = true
bind = "127.0.0.1:0"
[broker.listeners.ws]
enabled = false
bind = "127.0.0.1:0"
path = "/mqtt"
[http]
enabled = false
[store]
enabled = false

[[components]]
name = "stubborn"
version = "2.1"
command = "sh"
args = ["-c", "trap '' TERM; echo $$ > pid; pwd > {out}; echo \"$VERGE_COMPONENT_CONFIG\" >> {out}; while true; do sleep 0.05; done"]
config = {{ answer = 42 }}
stop_timeout = "300ms"
"#,
        data = dir.path().join("data").to_str().expect("utf-8"),
        out = out.display(),
    );
    let cfg: verge_node::NodeConfig = toml::from_str(&toml).expect("config");
    cfg.validate().expect("valid");
    let listeners = verge_node::Listeners::bind(&cfg).await.expect("bind");
    let node = verge_node::Node::start(cfg, None).await.expect("start");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(node.serve(listeners, async {
        let _ = stopped.await;
    }));
    let workdir = dir.path().join("data/components/stubborn/2.1");
    let t = Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if text.lines().count() >= 2 {
            break text;
        }
        assert!(t.elapsed() < WAIT, "the component did not run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        text.lines().collect::<Vec<_>>(),
        [workdir.to_str().expect("utf-8"), r#"{"answer":42}"#]
    );
    let pid: u32 = std::fs::read_to_string(workdir.join("pid"))
        .expect("pid")
        .trim()
        .parse()
        .expect("a pid");
    assert!(alive(pid));
    let t = Instant::now();
    let _ = stop.send(());
    tokio::time::timeout(WAIT, serving)
        .await
        .expect("the node stops")
        .expect("task")
        .expect("serve");
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(!alive(pid), "pid {pid} outlived the node");
}

/// A cloud spec: `spec` at `version`.
fn cloud(name: &str, version: &str, script: &str, extra: Value) -> ComponentSpec {
    let mut s = spec(name, script, extra);
    s.version = version.into();
    s
}

#[tokio::test]
async fn apply_adds_replaces_and_removes_cloud_components_and_leaves_config_ones() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = Components::start(&[spec("local", "exec sleep 1000", json!({}))], dir.path())
        .expect("start");
    let local = wait_for(&c, "local", "healthy", |i| i.state == State::Healthy).await;
    // A relative command with a slash is the component's own file.
    let own = dir.path().join("components/a/1.0.0");
    std::fs::create_dir_all(&own).expect("dir");
    std::fs::write(own.join("run.sh"), "#!/bin/sh\nexec sleep 1000\n").expect("script");
    std::fs::set_permissions(
        own.join("run.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("mode");
    let mut a = cloud("a", "1.0.0", "", json!({}));
    a.command = "./run.sh".into();
    a.args.clear();
    let errors = c
        .apply(&[
            a,
            // A cloud component may depend on a config one.
            cloud(
                "b",
                "1.0.0",
                "exec sleep 1000",
                json!({"depends_on": ["local"]}),
            ),
        ])
        .await;
    assert!(errors.is_empty(), "{errors:?}");
    let a1 = wait_for(&c, "a", "healthy", |i| i.state == State::Healthy).await;
    wait_for(&c, "b", "healthy", |i| i.state == State::Healthy).await;
    let a1_pid = a1.pid.expect("pid");
    let v = serde_json::to_value(&a1).expect("json");
    assert_eq!(v["source"], "cloud");
    assert_eq!(v["kind"], "process");

    // A new version replaces the old process.
    let errors = c
        .apply(&[
            cloud("a", "2.0.0", "exec sleep 1000", json!({})),
            cloud(
                "b",
                "1.0.0",
                "exec sleep 1000",
                json!({"depends_on": ["local"]}),
            ),
        ])
        .await;
    assert!(errors.is_empty(), "{errors:?}");
    let a2 = wait_for(&c, "a", "version 2 healthy", |i| {
        i.version == "2.0.0" && i.state == State::Healthy
    })
    .await;
    assert_ne!(a2.pid, Some(a1_pid));
    assert!(!alive(a1_pid), "the old version's process is gone");

    // Left out: stopped and removed; the config component runs on. A
    // follower of its output ends.
    let b_pid = c.get("b").expect("b").pid.expect("pid");
    let mut follow = c.follow("b", 0).expect("follow");
    let following = tokio::spawn(async move { while follow.next().await.is_some() {} });
    let errors = c
        .apply(&[cloud("a", "2.0.0", "exec sleep 1000", json!({}))])
        .await;
    assert!(errors.is_empty(), "{errors:?}");
    tokio::time::timeout(WAIT, following)
        .await
        .expect("the follower of a removed component ends")
        .expect("task");
    assert!(c.get("b").is_err(), "b is removed");
    assert!(!alive(b_pid), "b's process is stopped before apply returns");
    let names: Vec<String> = c.list().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["local", "a"]);
    assert_eq!(c.get("local").expect("local").pid, local.pid);
    c.shutdown().await;
    assert!(!alive(a2.pid.expect("pid")));
}

#[tokio::test]
async fn an_update_that_is_not_healthy_within_its_grace_is_rolled_back() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = Components::start(&[], dir.path()).expect("start");
    let good = cloud("svc", "1.0.0", "exec sleep 1000", json!({}));
    assert!(c.apply(std::slice::from_ref(&good)).await.is_empty());
    let v1 = wait_for(&c, "svc", "healthy", |i| i.state == State::Healthy).await;
    let bad = cloud(
        "svc",
        "2.0.0",
        "echo broken >&2; exit 3",
        json!({"update_grace": "1s", "max_restarts": 100}),
    );
    assert!(c.apply(std::slice::from_ref(&bad)).await.is_empty());
    wait_for(&c, "svc", "on version 2", |i| i.version == "2.0.0").await;
    let back = wait_for(&c, "svc", "rolled back to 1.0.0 and healthy", |i| {
        i.version == "1.0.0" && i.state == State::Healthy
    })
    .await;
    let why = back.rollback.clone().expect("rollback reason");
    assert!(
        why.contains("version 2.0.0") && why.contains("exited with status 3"),
        "{why}"
    );
    assert_ne!(back.pid, v1.pid, "version 1 was started again");
    // Asked for again, the rolled-back version is reported, not retried.
    let errors = c.apply(std::slice::from_ref(&bad)).await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("was rolled back"), "{errors:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still = c.get("svc").expect("svc");
    assert_eq!((still.version.as_str(), still.pid), ("1.0.0", back.pid));
    // Another version is tried.
    let fixed = cloud("svc", "2.0.1", "exec sleep 1000", json!({}));
    assert!(c.apply(&[fixed]).await.is_empty());
    wait_for(&c, "svc", "on 2.0.1 and healthy", |i| {
        i.version == "2.0.1" && i.state == State::Healthy
    })
    .await;
    c.shutdown().await;
}

#[tokio::test]
async fn apply_refuses_a_config_name_a_cycle_and_a_bad_spec_changing_nothing_else() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = Components::start(&[spec("local", "exec sleep 1000", json!({}))], dir.path())
        .expect("start");
    let errors = c
        .apply(&[
            cloud("local", "9", "exec sleep 1000", json!({})),
            cloud("ok", "1", "exec sleep 1000", json!({})),
        ])
        .await;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("config file"), "{errors:?}");
    assert_eq!(c.get("local").expect("local").version, "1.0.0");
    wait_for(&c, "ok", "healthy", |i| i.state == State::Healthy).await;

    let errors = c
        .apply(&[
            cloud("x", "1", "true", json!({"depends_on": ["y"]})),
            cloud("y", "1", "true", json!({"depends_on": ["x"]})),
        ])
        .await;
    assert!(
        errors.iter().any(|e| e.contains("dependency cycle")),
        "{errors:?}"
    );
    let names: Vec<String> = c.list().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["local", "ok"], "a refused set changes nothing");

    let mut bad = cloud("z", "1", "true", json!({}));
    bad.command = String::new();
    let errors = c
        .apply(&[bad, cloud("ok", "1", "exec sleep 1000", json!({}))])
        .await;
    assert!(errors.iter().any(|e| e.contains("`z`")), "{errors:?}");
    assert!(c.get("z").is_err());
    c.shutdown().await;
    assert!(
        c.apply(&[]).await.iter().any(|e| e.contains("stopping")),
        "no apply after shutdown"
    );
}

#[tokio::test]
async fn a_rollback_survives_a_restart_and_another_version_is_tried_again() {
    let dir = tempfile::tempdir().expect("tmp");
    let good = cloud("svc", "1.0.0", "exec sleep 1000", json!({}));
    let bad = cloud(
        "svc",
        "2.0.0",
        "exit 3",
        json!({"update_grace": "1s", "max_restarts": 100}),
    );
    {
        let c = Components::start(&[], dir.path()).expect("start");
        assert!(c.apply(std::slice::from_ref(&good)).await.is_empty());
        wait_for(&c, "svc", "healthy", |i| i.state == State::Healthy).await;
        assert!(c.apply(std::slice::from_ref(&bad)).await.is_empty());
        // Within the grace the old version's directory is still in use.
        assert!(
            c.versions_in_use()
                .contains(&("svc".to_owned(), "1.0.0".to_owned())),
            "{:?}",
            c.versions_in_use()
        );
        wait_for(&c, "svc", "rolled back", |i| {
            i.version == "1.0.0" && i.state == State::Healthy && i.rollback.is_some()
        })
        .await;
        c.shutdown().await;
    }
    // The node restarts with the state that still names version 2: the
    // good version runs, and the refusal is reported.
    let c = Components::start(&[], dir.path()).expect("start");
    let errors = c.apply(std::slice::from_ref(&bad)).await;
    assert!(
        errors.len() == 1 && errors[0].contains("version 2.0.0 was rolled back"),
        "{errors:?}"
    );
    let info = wait_for(&c, "svc", "version 1 healthy", |i| {
        i.version == "1.0.0" && i.state == State::Healthy
    })
    .await;
    assert!(info.rollback.is_some(), "{info:?}");
    assert!(
        c.versions_in_use()
            .contains(&("svc".to_owned(), "1.0.0".to_owned()))
    );
    // The cloud asks for the good version: the rollback is forgotten, and
    // version 2 asked for later is tried again.
    assert!(c.apply(std::slice::from_ref(&good)).await.is_empty());
    assert!(c.apply(std::slice::from_ref(&bad)).await.is_empty());
    wait_for(&c, "svc", "version 2 tried again", |i| i.version == "2.0.0").await;
    c.shutdown().await;
}

#[tokio::test]
async fn a_new_spec_the_node_refuses_keeps_the_running_version() {
    let dir = tempfile::tempdir().expect("tmp");
    let c = Components::start(&[], dir.path()).expect("start");
    let v1 = cloud("svc", "1.0.0", "exec sleep 1000", json!({}));
    assert!(c.apply(std::slice::from_ref(&v1)).await.is_empty());
    let before = wait_for(&c, "svc", "healthy", |i| i.state == State::Healthy).await;
    let mut invalid = cloud("svc", "2.0.0", "", json!({}));
    invalid.command = String::new();
    let errors = c.apply(&[invalid]).await;
    assert!(
        errors.len() == 1 && errors[0].contains("command"),
        "{errors:?}"
    );
    // A cloud spec may not choose a host directory either.
    let mut elsewhere = cloud("svc", "2.0.0", "exec sleep 1000", json!({}));
    elsewhere.workdir = Some("/".into());
    let errors = c.apply(&[elsewhere]).await;
    assert!(
        errors.len() == 1 && errors[0].contains("workdir"),
        "{errors:?}"
    );
    let after = c.get("svc").expect("svc");
    assert_eq!((after.version.as_str(), after.pid), ("1.0.0", before.pid));
    c.shutdown().await;
}

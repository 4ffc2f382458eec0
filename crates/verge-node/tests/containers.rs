//! Container components on a real engine: the Docker Engine API on the
//! unix socket in `VERGE_TEST_ENGINE` (CI starts Podman's service and
//! builds the busybox image `VERGE_TEST_IMAGE` offline with
//! `tests/containers/engine.sh`). Without an engine these tests fail in
//! CI (`CI` or `VERGE_REQUIRE_ENGINE` set, as `.ci/run` does) and say
//! they skipped elsewhere; the unreachable-engine test needs none.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/components.rs"]
mod comp;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::errors::Error as EngineError;
use comp::{free_port, spec_from, wait_for};
use serde_json::{Value, json};
use verge_node::components::{Components, ComponentsOptions, State};
use verge_protocol::ComponentSpec;

/// Longest wait for anything that should happen; only there so a broken
/// build fails instead of hanging.
const WAIT: Duration = Duration::from_secs(60);

/// The engine socket and test image, or `None` (after saying so) when
/// they are not given outside CI.
fn engine() -> Option<(PathBuf, String)> {
    let sock = std::env::var("VERGE_TEST_ENGINE").ok();
    let image = std::env::var("VERGE_TEST_IMAGE").ok();
    match (sock, image) {
        (Some(s), Some(i)) => Some((PathBuf::from(s.trim_start_matches("unix://")), i)),
        _ if std::env::var_os("CI").is_some()
            || std::env::var_os("VERGE_REQUIRE_ENGINE").is_some() =>
        {
            panic!(
                "CI or VERGE_REQUIRE_ENGINE is set but VERGE_TEST_ENGINE / VERGE_TEST_IMAGE are not: the container tests need an engine (tests/containers/engine.sh)"
            )
        }
        _ => {
            eprintln!(
                "SKIPPED: no container engine (set VERGE_TEST_ENGINE and VERGE_TEST_IMAGE, see tests/containers/engine.sh)"
            );
            None
        }
    }
}

fn spec(name: &str, v: Value) -> ComponentSpec {
    let s = spec_from(
        json!({
            "name": name, "version": "1.0.0",
            "backoff_min": "100ms", "backoff_max": "500ms",
            "stop_timeout": "2s",
        }),
        v,
    );
    s.validate().expect("valid spec");
    s
}

fn options(sock: PathBuf) -> ComponentsOptions {
    ComponentsOptions {
        engine: sock,
        pull: true,
        node: "test-node".into(),
    }
}

fn client(sock: &std::path::Path) -> Docker {
    Docker::connect_with_unix(
        &sock.to_string_lossy(),
        60,
        &bollard::ClientVersion {
            major_version: 1,
            minor_version: 41,
        },
    )
    .expect("engine client")
}

fn is_gone(r: Result<bollard::models::ContainerInspectResponse, EngineError>) -> bool {
    matches!(
        r,
        Err(EngineError::DockerResponseServerError {
            status_code: 404,
            ..
        })
    )
}

/// A container component runs on the host network (its HTTP health
/// check passes on 127.0.0.1), gets its labels, environment and limits,
/// its output reaches its log ring, it is restarted after it is killed
/// from outside, and stopping it removes its container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_runs_logs_restarts_after_kill_and_stop_removes_it() {
    let Some((sock, image)) = engine() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let web = spec(
        "web",
        json!({
            "kind": "container", "image": image,
            "command": "sh",
            "args": ["-c", "echo hello from $VERGE_COMPONENT_NAME $GREETING; echo to stderr >&2; exec httpd -f -p 127.0.0.1:$PORT -h /www"],
            "env": { "PORT": port.to_string(), "GREETING": "hi" },
            "limits": { "memory": "64MiB", "cpu_shares": 512 },
            "health": {
                "kind": "http", "url": format!("http://127.0.0.1:{port}/"),
                "interval": "200ms", "timeout": "1s", "start_grace": "10s",
            },
        }),
    );
    let c =
        Components::start_with(&[web], dir.path(), &options(sock.clone()), None).expect("start");
    let info = wait_for(&c, "web", "healthy", |i| i.state == State::Healthy).await;
    let id = info.container_id.clone().expect("a container id");
    assert_eq!(id.len(), 12);

    let docker = client(&sock);
    let inspect = docker.inspect_container(&id, None).await.expect("inspect");
    let labels = inspect
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    assert_eq!(
        labels.get("io.verge.component").map(String::as_str),
        Some("web")
    );
    assert_eq!(
        labels.get("io.verge.version").map(String::as_str),
        Some("1.0.0")
    );
    let host = inspect.host_config.clone().unwrap_or_default();
    assert_eq!(host.memory, Some(64 << 20));
    assert_eq!(host.cpu_shares, Some(512));
    assert_eq!(host.network_mode.as_deref(), Some("host"));

    let t = Instant::now();
    loop {
        let (lines, _) = c.logs("web", 100).expect("logs");
        let has =
            |stream: &str, text: &str| lines.iter().any(|l| l.stream == stream && l.line == text);
        if has("stdout", "hello from web hi") && has("stderr", "to stderr") {
            break;
        }
        assert!(t.elapsed() < WAIT, "output not in the log ring: {lines:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Killed from outside: the supervisor starts a new container.
    docker
        .kill_container(&id, None::<bollard::query_parameters::KillContainerOptions>)
        .await
        .expect("kill");
    let info = wait_for(&c, "web", "restarted and healthy", |i| {
        i.restarts >= 1
            && i.state == State::Healthy
            && i.container_id.as_deref().is_some_and(|n| n != id)
    })
    .await;
    assert!(
        info.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("exited with status")),
        "{info:?}"
    );
    assert!(
        is_gone(docker.inspect_container(&id, None).await),
        "the killed container is removed"
    );

    // Stop: the container is stopped and removed.
    let id = info.container_id.clone().expect("id");
    c.stop_one("web").expect("stop");
    let info = wait_for(&c, "web", "stopped", |i| i.state == State::Stopped).await;
    assert_eq!(info.container_id, None);
    let t = Instant::now();
    while !is_gone(docker.inspect_container(&id, None).await) {
        assert!(t.elapsed() < WAIT, "container {id} not removed after stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.shutdown().await;
}

/// A container whose image is not on the engine and cannot be pulled
/// (no registry is reachable) ends `failed` with the reason, while a
/// process component beside it runs healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_fails_clearly_and_a_process_runs_on() {
    let Some((sock, _)) = engine() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let ghost = spec(
        "ghost",
        json!({
            "kind": "container", "image": "localhost/verge-test-missing:1",
            "max_restarts": 1,
        }),
    );
    let steady = spec(
        "steady",
        json!({ "command": "sh", "args": ["-c", "exec sleep 60"] }),
    );
    let c = Components::start_with(&[ghost, steady], dir.path(), &options(sock.clone()), None)
        .expect("start");
    let info = wait_for(&c, "ghost", "failed", |i| i.state == State::Failed).await;
    let reason = info.last_error.clone().unwrap_or_default();
    assert!(
        reason.contains(
            "image `localhost/verge-test-missing:1` is not on the engine and could not be pulled"
        ),
        "{reason}"
    );
    assert!(info.restarts >= 1, "the failure is counted: {info:?}");
    let steady = wait_for(&c, "steady", "healthy", |i| i.state == State::Healthy).await;
    assert!(steady.pid.is_some());
    c.shutdown().await;

    // With pulling off the engine is not asked to pull at all.
    let dir = tempfile::tempdir().expect("tmp");
    let ghost = spec(
        "ghost",
        json!({
            "kind": "container", "image": "localhost/verge-test-missing:1",
            "restart": "never",
        }),
    );
    let no_pull = ComponentsOptions {
        pull: false,
        ..options(sock)
    };
    let c = Components::start_with(&[ghost], dir.path(), &no_pull, None).expect("start");
    let info = wait_for(&c, "ghost", "failed", |i| i.state == State::Failed).await;
    assert_eq!(
        info.last_error.as_deref(),
        Some(
            "image `localhost/verge-test-missing:1` is not on the engine and pulling is off (containers.pull)"
        )
    );
    c.shutdown().await;
}

/// An engine socket nobody serves: the container component fails with a
/// reason naming the socket; the process component runs on. Needs no
/// engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_engine_names_the_socket() {
    let dir = tempfile::tempdir().expect("tmp");
    let sock = dir.path().join("no-engine.sock");
    let boxed = spec(
        "boxed",
        json!({
            "kind": "container", "image": "localhost/anything:1",
            "restart": "never",
        }),
    );
    let steady = spec(
        "steady",
        json!({ "command": "sh", "args": ["-c", "exec sleep 60"] }),
    );
    let c = Components::start_with(&[boxed, steady], dir.path(), &options(sock.clone()), None)
        .expect("start");
    let info = wait_for(&c, "boxed", "failed", |i| i.state == State::Failed).await;
    let reason = info.last_error.clone().unwrap_or_default();
    assert!(
        reason.contains(&format!(
            "container engine {} is unreachable",
            sock.display()
        )),
        "{reason}"
    );
    wait_for(&c, "steady", "healthy", |i| i.state == State::Healthy).await;
    c.shutdown().await;
}

/// A container that ignores SIGTERM (a shell as its first process does)
/// is killed by the engine after the stop timeout, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_timeout_kills_a_container_that_ignores_sigterm() {
    let Some((sock, image)) = engine() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let deaf = spec(
        "deaf",
        json!({
            "kind": "container", "image": image, "network": "none",
            "command": "sh", "args": ["-c", "trap '' TERM; echo up; while true; do sleep 1; done"],
            "stop_timeout": "1s",
        }),
    );
    let c = Components::start_with(&[deaf], dir.path(), &options(sock), None).expect("start");
    wait_for(&c, "deaf", "healthy", |i| i.state == State::Healthy).await;
    let t = Instant::now();
    loop {
        let (lines, _) = c.logs("deaf", 10).expect("logs");
        if lines.iter().any(|l| l.line == "up") {
            break;
        }
        assert!(t.elapsed() < WAIT, "no output: {lines:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.stop_one("deaf").expect("stop");
    let info = wait_for(&c, "deaf", "stopped", |i| i.state == State::Stopped).await;
    assert_eq!(
        info.last_error.as_deref(),
        Some("did not stop within 1000 ms of SIGTERM; killed")
    );
    c.shutdown().await;
}

/// A node that ended without stopping its components (killed) leaves its
/// container running; the next start on the same data directory removes
/// it and runs a new one under the same name.
#[test]
fn a_container_left_by_a_killed_node_is_replaced() {
    let Some((sock, image)) = engine() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let left = spec(
        "left",
        json!({
            "kind": "container", "image": image, "network": "none",
            "command": "sleep", "args": ["3600"],
        }),
    );
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    };
    // The first node: its runtime goes away without a shutdown.
    let first = runtime();
    let old = first.block_on(async {
        let c = Components::start_with(
            std::slice::from_ref(&left),
            dir.path(),
            &options(sock.clone()),
            None,
        )
        .expect("start");
        let info = wait_for(&c, "left", "healthy", |i| i.state == State::Healthy).await;
        info.container_id.expect("id")
    });
    first.shutdown_background();

    let second = runtime();
    second.block_on(async {
        let docker = client(&sock);
        let running = docker.inspect_container(&old, None).await.expect("inspect");
        assert_eq!(
            running.state.and_then(|s| s.running),
            Some(true),
            "the killed node's container still runs"
        );
        let c = Components::start_with(&[left], dir.path(), &options(sock.clone()), None)
            .expect("start");
        let info = wait_for(&c, "left", "healthy", |i| i.state == State::Healthy).await;
        assert_ne!(info.container_id.as_deref(), Some(old.as_str()));
        assert!(
            is_gone(docker.inspect_container(&old, None).await),
            "the old container is removed"
        );
        c.shutdown().await;
    });
}

/// A container component deployed from the cloud (`apply`) and then
/// dropped from the desired state (`apply(&[])`) is stopped and its
/// container removed from the engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_unassigned_by_the_cloud_is_removed() {
    let Some((sock, image)) = engine() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tmp");
    let c = Components::start_with(&[], dir.path(), &options(sock.clone()), None).expect("start");
    let sleeper = spec(
        "sleeper",
        json!({
            "kind": "container", "image": image,
            "command": "sh", "args": ["-c", "exec sleep 600"],
            "stop_timeout": "1s",
        }),
    );
    let errors = c.apply(&[sleeper]).await;
    assert!(errors.is_empty(), "{errors:?}");
    let info = wait_for(&c, "sleeper", "healthy", |i| i.state == State::Healthy).await;
    let id = info.container_id.clone().expect("a container id");
    let docker = client(&sock);
    docker.inspect_container(&id, None).await.expect("running");

    let errors = c.apply(&[]).await;
    assert!(errors.is_empty(), "{errors:?}");
    let t = Instant::now();
    while c.get("sleeper").is_ok() {
        assert!(t.elapsed() < WAIT, "sleeper still listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while !is_gone(docker.inspect_container(&id, None).await) {
        assert!(
            t.elapsed() < WAIT,
            "container {id} not removed after unassign"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.shutdown().await;
}

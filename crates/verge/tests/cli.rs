//! End-to-end tests of the `verge` binary: runs the built executable.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use verge_broker::config::AclPolicy;
use verge_broker::{Authenticator, BrokerConfig};

fn verge() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_verge"));
    // The tests set their own overrides; none may leak in from the caller.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("VERGE__") {
            c.env_remove(k);
        }
    }
    c.env_remove("RUST_LOG");
    c
}

fn run(args: &[&str]) -> Output {
    verge().args(args).output().expect("verge runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn config_default_parses_and_checks() {
    let out = run(&["config", "default"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    let table: toml::Table = toml::from_str(&printed).expect("default config is TOML");
    let broker: BrokerConfig = table["broker"]
        .clone()
        .try_into()
        .expect("[broker] is a BrokerConfig");
    assert_eq!(broker, BrokerConfig::default());
    assert_eq!(table["node"]["name"].as_str(), Some("verge-node"));

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node.toml");
    std::fs::write(&path, &printed).expect("write");
    let out = run(&["config", "check", path.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok"));
}

#[test]
fn config_check_names_unknown_and_bad_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node.toml");
    std::fs::write(&path, "[broker]\nmax_inflite = 5\n").expect("write");
    let out = run(&["config", "check", path.to_str().expect("utf-8 path")]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("broker.max_inflite: unknown key"), "{err}");

    std::fs::write(&path, "[broker]\nconnect_timeout = \"soon\"\n").expect("write");
    let out = run(&["config", "check", path.to_str().expect("utf-8 path")]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("broker.connect_timeout:"), "{err}");

    let out = verge()
        .args(["config", "check", path.to_str().expect("utf-8 path")])
        .env("VERGE__BROKER__CONNECT_TIMEOUT", "5s")
        .env("VERGE__BROKER__MAX_INFLIGHT", "lots")
        .output()
        .expect("runs");
    let err = text(&out.stderr);
    assert!(
        err.contains("broker.max_inflight:") && err.contains("VERGE__BROKER__MAX_INFLIGHT"),
        "{err}"
    );
}

#[test]
fn device_add_hashes_and_refuses_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = dir.path().join("sub").join("devices.toml");
    std::fs::create_dir_all(registry.parent().expect("parent")).expect("mkdir");
    let reg = registry.to_str().expect("utf-8 path");

    // Password from standard input.
    let mut child = verge()
        .args(["device", "add", "--registry", reg, "--username", "sensor-1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"s3cret\n")
        .expect("write password");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = run(&[
        "device",
        "add",
        "--registry",
        reg,
        "--username",
        "sensor-2",
        "--password",
        "p2",
        "--client-id",
        "c2",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let contents = std::fs::read_to_string(&registry).expect("registry written");
    assert_eq!(contents.matches("$argon2id$").count(), 2, "{contents}");
    assert!(
        !contents.contains("s3cret"),
        "no plain password in the file"
    );
    let auth = Authenticator::load(&registry, false, AclPolicy::Deny)
        .expect("the broker loads the registry");
    assert!(
        auth.authenticate("any", Some("sensor-1"), Some(b"s3cret"), None)
            .is_ok()
    );
    assert!(
        auth.authenticate("c2", Some("sensor-2"), Some(b"p2"), None)
            .is_ok()
    );
    assert!(
        auth.authenticate("any", Some("sensor-1"), Some(b"wrong"), None)
            .is_err()
    );

    let out = run(&[
        "device",
        "add",
        "--registry",
        reg,
        "--username",
        "sensor-1",
        "--password",
        "x",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&registry).expect("read"),
        contents,
        "file unchanged"
    );

    let out = run(&["device", "hash-password", "--password", "abc"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).starts_with("$argon2id$"));
}

/// Proves the bench's QoS 1 accounting end to end. The rate is capped so the
/// result does not depend on this machine's speed: at full speed a slow
/// subscriber may legitimately overflow the broker's bounded session queue.
#[test]
fn bench_broker_qos1_loses_nothing() {
    let args = "bench broker --spawn verge --duration 1 --warmup 0.2 --publishers 1 --subscribers 1 --qos 1 \
                --rate 10000 --json";
    let out = run(&args.split_whitespace().collect::<Vec<_>>());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["lost"], 0, "{report}");
    assert!(
        report["delivered"].as_u64().expect("delivered") > 0,
        "{report}"
    );
    assert_eq!(
        report["delivered"], report["expected_deliveries"],
        "{report}"
    );
    assert!(
        report["latency_ms"]["samples"].as_u64().expect("samples") > 0,
        "{report}"
    );
}

#[test]
fn bench_connections_spawns_a_node_and_reads_its_memory() {
    let out = run(&[
        "bench",
        "connections",
        "--spawn",
        "verge",
        "--count",
        "50",
        "--settle",
        "0.2",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["opened"], 50, "{report}");
    assert!(
        report["rss_after_bytes"].as_u64().expect("rss") > 0,
        "{report}"
    );
}

/// `bench startup` starts `verge node` (this binary) with fresh data dirs,
/// gets a CONNACK from each, and reads the idle node's memory. No timing
/// thresholds: benchmarks measure, tests do not assert speed.
#[test]
fn bench_startup_starts_nodes_and_reads_the_idle_ones_memory() {
    let out = run(&["bench", "startup", "--runs", "3", "--idle", "0.3", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["runs"], 3, "{report}");
    let ms = &report["ready_ms"];
    let (min, median, max) = (
        ms["min"].as_f64().expect("min"),
        ms["median"].as_f64().expect("median"),
        ms["max"].as_f64().expect("max"),
    );
    assert!(0.0 < min && min <= median && median <= max, "{report}");
    assert!(
        report["idle_rss_bytes"].as_u64().expect("rss") > 0,
        "{report}"
    );
    let missing = run(&["bench", "startup", "--bin", "/nonexistent/verge"]);
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains("/nonexistent/verge: no such file"),
        "{}",
        text(&missing.stderr)
    );
}

/// Engine mode: both built-in queries run and report a sane shape. No
/// timing thresholds: benchmarks measure, tests do not assert speed.
#[test]
fn bench_rules_engine_reports_both_queries() {
    let out = run(&["bench", "rules", "--messages", "20000", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["mode"], "engine", "{report}");
    let queries = report["queries"].as_array().expect("queries");
    let names: Vec<_> = queries.iter().map(|q| q["name"].as_str()).collect();
    assert_eq!(
        names,
        [Some("filter+project"), Some("tumbling 10s group by")],
        "{report}"
    );
    for q in queries {
        assert_eq!(q["messages"], 20000, "{q}");
        assert!(q["msgs_per_s"].as_f64().expect("rate") > 0.0, "{q}");
        assert!(
            q["push_latency_ns"]["batches"].as_u64().expect("batches") > 0,
            "{q}"
        );
        assert_eq!(q["eval_errors"], 0, "{q}");
        assert!(q["meets_target"].is_boolean(), "{q}");
    }
    // About 60% of the readings are above 20 degrees.
    let rows = queries[0]["rows_out"].as_u64().expect("rows");
    assert!((8_000..16_000).contains(&rows), "{rows}");
    assert!(text(&out.stderr).contains("engine: filter+project"));

    let out = run(&[
        "bench",
        "rules",
        "--messages",
        "100",
        "--sql",
        "SELECT nope FROM",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("custom"),
        "{}",
        text(&out.stderr)
    );
}

/// Broker mode: a rule in an in-process broker, fed over TCP, republishes
/// to a subscriber.
#[test]
fn bench_rules_through_the_broker() {
    let out = run(&[
        "bench",
        "rules",
        "--mode",
        "broker",
        "--duration",
        "1",
        // A steady rate, not a flood: under a flood the rule task can be
        // starved for seconds (BENCHMARKS.md), and this test checks the
        // pipeline and its report, not the flood.
        "--publish-rate",
        "20000",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(report["mode"], "broker", "{report}");
    assert_eq!(report["query"], "filter+project", "{report}");
    assert!(
        report["published_per_s"].as_f64().expect("published") > 0.0,
        "{report}"
    );
    assert!(
        report["rule_in_per_s"].as_f64().expect("rule rate") > 0.0,
        "{report}"
    );
    let rule = &report["rule"];
    assert!(
        rule["messages_in"].as_u64().expect("messages_in") > 0,
        "{report}"
    );
    assert!(rule["dropped_queue"].is_u64(), "{report}");
    assert!(report["rule_latency_us"]["p99"].is_u64(), "{report}");
    assert!(
        report["received"].as_u64().expect("received") > 0,
        "{report}"
    );
    assert!(report["output_lost"].is_u64(), "{report}");
}

fn node_args(data: &str, bind: &str) -> Vec<String> {
    [
        "node",
        "--set",
        &format!("node.data_dir={data}"),
        "--set",
        &format!("broker.listeners.tcp.bind={bind}"),
        "--set",
        "broker.listeners.ws.enabled=false",
        "--set",
        "http.bind=127.0.0.1:0",
        "--set",
        "coap.bind=127.0.0.1:0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn busy_port_error_names_listener_and_address() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = verge()
        .args(node_args(dir.path().to_str().expect("utf-8"), &addr))
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("listeners.tcp") && err.contains(&addr),
        "{err}"
    );
}

#[test]
fn node_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut child = verge()
        .args(node_args(data.to_str().expect("utf-8"), "127.0.0.1:0"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = loop {
        let line = lines.next().expect("banner line").expect("read");
        if let Some(a) = line.split("mqtt://").nth(1) {
            break a.trim().to_owned();
        }
    };
    assert!(Path::new(&data).is_dir(), "data_dir created");
    std::net::TcpStream::connect(&addr).expect("the node accepts connections");
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the node did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "clean exit: {exit:?}");
}

/// Both runtimes run and every row reports calls; the outputs were checked
/// before measuring (the command fails otherwise). No timing thresholds.
#[test]
fn bench_functions_reports_both_runtimes() {
    let out = run(&[
        "bench",
        "functions",
        "--duration",
        "0.3",
        "--callers",
        "2",
        "--workers",
        "1",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON report");
    let kinds: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r["runtime"].to_string(), r["function"].to_string()))
        .collect();
    for want in [
        ("wasm", "echo"),
        ("process", "echo"),
        ("process", "json-reshape"),
    ] {
        assert!(
            kinds.contains(&(format!("\"{}\"", want.0), format!("\"{}\"", want.1))),
            "{want:?} missing in {kinds:?}"
        );
    }
    for r in &rows {
        assert!(r["calls"].as_u64().expect("calls") > 0, "{r}");
    }
}

/// The Modbus driver reads points from the in-process simulator in both
/// throughput rows and under load. No timing thresholds.
#[test]
fn bench_drivers_reads_points() {
    let out = run(&[
        "bench",
        "drivers",
        "--duration",
        "0.3",
        "--points",
        "200",
        "--load-points",
        "500",
        "--load-secs",
        "1.5",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let rows = doc["throughput"].as_array().expect("throughput rows");
    assert_eq!(rows.len(), 2);
    for r in rows {
        assert!(r["points_read"].as_u64().expect("points_read") > 0, "{r}");
        assert!(r["published"].as_u64().expect("published") > 0, "{r}");
    }
    assert!(
        doc["load"]["points_read"].as_u64().expect("load points") > 0,
        "{doc}"
    );
    assert!(
        doc["load"]["rss_after_mb"].as_f64().expect("rss") > 0.0,
        "{doc}"
    );
}

#[test]
fn config_check_refuses_a_component_cycle_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node.toml");
    std::fs::write(
        &path,
        "[[components]]\nname = \"a\"\nversion = \"1\"\ncommand = \"true\"\ndepends_on = [\"b\"]\n\
         [[components]]\nname = \"b\"\nversion = \"1\"\ncommand = \"true\"\ndepends_on = [\"a\"]\n",
    )
    .expect("write");
    let out = run(&["config", "check", path.to_str().expect("utf-8 path")]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("components[0]: component `a`: dependency cycle a -> b -> a"),
        "{err}"
    );
}

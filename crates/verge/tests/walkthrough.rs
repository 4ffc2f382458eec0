//! The walkthrough of SPEC.md, end to end across separate processes: a
//! `verge cloud`, a `verge node --cloud … --join …` and a
//! `verge device simulate`, driven only through the cloud's open API.
//!
//! 1. create a node → join token;
//! 2. start the node with it;
//! 3. create a device bound to it;
//! 4. the simulated device sends telemetry with its credentials;
//! 5. upload a function and create a rule forwarding the device's data to it;
//! 6. the function's output is visible through the API.
//!
//! Then: a command reaches the device, wrong credentials are refused, the
//! cloud marks a stopped node offline, and a node restarted while the cloud
//! is down runs its last desired state.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn verge() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_verge"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("VERGE__") {
            c.env_remove(k);
        }
    }
    c.env_remove("RUST_LOG");
    c
}

/// A child process killed when dropped, with its stdout lines on a channel.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn verge");
        let lines = pipe_lines(child.stdout.take().expect("stdout"));
        Proc { child, lines }
    }

    /// The first stdout line containing `needle`.
    fn wait_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no line with `{needle}` on stdout: {e}"),
            }
        }
    }

    /// Stop with SIGTERM and wait; the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "process {pid} did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pipe_lines(out: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// One HTTP/1.0 request to `addr`; status and JSON body (`null` if empty).
fn http(addr: &str, method: &str, path: &str, token: &str, body: Option<&Value>) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).expect("http connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let json = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let value = if json.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"))
    };
    (status, value)
}

/// The cloud under test: its address and admin token.
struct Cloud {
    _proc: Proc,
    addr: String,
    token: String,
}

impl Cloud {
    fn start(dir: &Path, http: &str, mqtt: &str, database: Option<&str>) -> Cloud {
        let mut cmd = verge();
        cmd.arg("cloud");
        // A shared database has its admin token already: make a new one.
        let mut reset_token = None;
        if let Some(url) = database {
            cmd.args(["--set", &format!("cloud.database={url}")]);
            let out = verge()
                .args(["cloud", "--reset-admin-token", "--set"])
                .arg(format!("cloud.database={url}"))
                .args(["--set", &format!("cloud.data_dir={}", dir.display())])
                .output()
                .expect("reset the admin token");
            assert!(out.status.success(), "{out:?}");
            reset_token = String::from_utf8_lossy(&out.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("admin token: ").map(str::to_owned));
        }
        let proc = Proc::spawn(cmd.args([
            "--set",
            &format!("http.bind={http}"),
            "--set",
            &format!("mqtt.bind={mqtt}"),
            "--set",
            &format!("cloud.data_dir={}", dir.display()),
            "--set",
            "cloud.offline_after=3s",
        ]));
        let console = proc.wait_line("console");
        let addr = console
            .split("http://")
            .nth(1)
            .expect("console url")
            .trim()
            .trim_end_matches('/')
            .to_owned();
        let token_line = proc.wait_line("admin token");
        let token = reset_token.unwrap_or_else(|| {
            token_line
                .split_once("admin token: ")
                .map(|(_, t)| t.trim().to_owned())
                .unwrap_or_default()
        });
        Cloud {
            _proc: proc,
            addr,
            token,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        http(&self.addr, method, path, &self.token, body.as_ref())
    }

    /// A 2xx answer's body.
    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }
}

/// Poll `f` until it returns `Some`, at most [`WAIT`].
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn node_args(dir: &Path, mqtt_port: u16) -> Vec<String> {
    [
        format!("node.data_dir={}", dir.display()),
        format!("broker.listeners.tcp.bind=127.0.0.1:{mqtt_port}"),
        "broker.listeners.ws.enabled=false".to_owned(),
        "coap.enabled=false".to_owned(),
        "http.bind=127.0.0.1:0".to_owned(),
    ]
    .into_iter()
    .flat_map(|kv| ["--set".to_owned(), kv])
    .collect()
}

fn simulate(mqtt_port: u16, device: &str, secret: &str) -> Command {
    let mut c = verge();
    c.args([
        "device",
        "simulate",
        "--node",
        &format!("127.0.0.1:{mqtt_port}"),
        "--device",
        device,
        "--secret",
        secret,
        "--interval",
        "200ms",
    ]);
    c
}

#[test]
fn walkthrough_across_processes() {
    walkthrough(None, "");
}

/// The same against PostgreSQL when `VERGE_TEST_POSTGRES_URL` names a
/// database (`.ci/run` starts one); names get a suffix so that runs can
/// share the database.
#[test]
fn walkthrough_with_postgresql() {
    let Ok(url) = std::env::var("VERGE_TEST_POSTGRES_URL") else {
        eprintln!("VERGE_TEST_POSTGRES_URL is not set: the PostgreSQL walkthrough is skipped");
        return;
    };
    let suffix = format!(
        "-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    walkthrough(Some(&url), &suffix);
}

fn walkthrough(database: Option<&str>, suffix: &str) {
    let node_id = format!("edge-1{suffix}");
    let dev = format!("d1{suffix}");
    let rule = format!("to-function{suffix}");
    let tmp = tempfile::tempdir().unwrap();
    let cloud_dir = tmp.path().join("cloud");
    let node_dir = tmp.path().join("node");
    let (cloud_http, cloud_mqtt) = (free_port(), free_port());
    let cloud = Cloud::start(
        &cloud_dir,
        &format!("127.0.0.1:{cloud_http}"),
        &format!("127.0.0.1:{cloud_mqtt}"),
        database,
    );
    assert!(
        !cloud.token.is_empty(),
        "the first start prints the admin token"
    );
    let (status, err) = http(&cloud.addr, "GET", "/api/nodes", "wrong-token", None);
    assert_eq!(status, 401, "{err}");
    assert_eq!(err["error"]["code"], "unauthorized");

    // 1. Create an edge node: a one-time join token and the command.
    let created = cloud.ok(
        "POST",
        "/api/nodes",
        Some(json!({ "name": node_id, "description": "walkthrough" })),
    );
    let join_token = created["join_token"]
        .as_str()
        .expect("join token")
        .to_owned();
    let command = created["join_command"].as_str().expect("join command");
    assert!(command.contains("verge node --cloud"), "{command}");
    assert!(command.contains(&join_token), "{command}");
    assert_eq!(created["node"]["status"], "pending");

    // 2. Start the node core suite with the join token.
    let mqtt_port = free_port();
    let node = Proc::spawn(
        verge()
            .args([
                "node",
                "--cloud",
                &format!("http://{}", cloud.addr),
                "--join",
                &join_token,
            ])
            .args(node_args(&node_dir, mqtt_port)),
    );
    node.wait_line("is running");
    eventually("the node to be online", || {
        let n = cloud.ok("GET", &format!("/api/nodes/{node_id}"), None);
        (n["status"] == "online").then_some(())
    });
    // The token was for one join only.
    let (status, _) = http(
        &cloud.addr,
        "POST",
        "/api/agent/join",
        "",
        Some(&json!({ "token": join_token })),
    );
    assert_eq!(status, 401, "a join token works once");

    // 3. A device bound to the node, with credentials shown once.
    let made = cloud.ok(
        "POST",
        "/api/devices",
        Some(json!({ "name": dev, "node_id": node_id })),
    );
    let secret = made["secret"].as_str().expect("secret").to_owned();
    let shown = cloud.ok("GET", &format!("/api/devices/{dev}"), None);
    assert!(
        !shown.to_string().contains(&secret),
        "the secret is not shown again"
    );

    // 5 (before 4, so no reading is missed). A function and a rule.
    let wat = include_str!("../src/demo/demo-tag.wat");
    cloud.ok(
        "PUT",
        "/api/functions/demo-tag",
        Some(json!({
            "spec": { "runtime": "wasm" },
            "module_base64": base64::engine::general_purpose::STANDARD.encode(wat),
        })),
    );
    let (status, bad) = cloud.call(
        "POST",
        "/api/rules",
        Some(json!({
            "id": format!("broken{suffix}"), "node_id": node_id,
            "sql": "SELEC temperature FROM \"devices/+/telemetry\"",
            "actions": [],
        })),
    );
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["error"]["code"], "invalid_rule");
    cloud.ok(
        "POST",
        "/api/rules",
        Some(json!({
            "id": rule, "node_id": node_id,
            "sql": "SELECT topic(2) AS device, temperature FROM \"devices/+/telemetry\"",
            "actions": [{ "type": "function", "name": "demo-tag" }],
        })),
    );
    let desired = cloud.ok("GET", &format!("/api/nodes/{node_id}/desired"), None)["version"]
        .as_i64()
        .expect("desired version");
    eventually("the node to apply the desired state", || {
        let n = cloud.ok("GET", &format!("/api/nodes/{node_id}"), None);
        (n["applied_version"].as_i64() == Some(desired)).then_some(n)
    });

    // 4. The device program connects to the node with its credentials.
    let device = Proc::spawn(&mut simulate(mqtt_port, &dev, &secret));
    device.wait_line("connected");

    // 6. The function ran on the node and its output reached the cloud.
    let out = eventually("the function's output in the cloud", || {
        let v = cloud.ok(
            "GET",
            &format!("/api/nodes/{node_id}/messages?topic=processed%2F%23&limit=10"),
            None,
        );
        v.as_array().and_then(|a| a.last().cloned())
    });
    assert_eq!(
        out["topic"],
        format!("processed/devices/{dev}/telemetry"),
        "{out}"
    );
    assert_eq!(out["payload"]["tagged_by"], "demo-tag", "{out}");
    assert_eq!(out["payload"]["row"]["device"], dev.as_str(), "{out}");
    assert!(out["payload"]["row"]["temperature"].is_number(), "{out}");
    let telemetry = eventually("the device's last telemetry", || {
        let d = cloud.ok("GET", &format!("/api/devices/{dev}"), None);
        (!d["last_telemetry"].is_null()).then_some(d)
    });
    assert!(telemetry["last_telemetry"]["temperature"].is_number());
    eventually("the function's calls in the node's report", || {
        let n = cloud.ok("GET", &format!("/api/nodes/{node_id}"), None);
        let fns = n["report"]["functions"].as_array()?.clone();
        let f = fns.iter().find(|f| f["name"] == "demo-tag")?;
        (f["metrics"]["invocations"].as_u64().unwrap_or(0) > 0).then_some(())
    });

    // A command reaches the device through its node.
    cloud.ok(
        "POST",
        &format!("/api/devices/{dev}/commands/reboot"),
        Some(json!({ "delay_s": 1 })),
    );
    let line = device.wait_line("command reboot");
    assert!(line.contains("delay_s"), "{line}");

    // Wrong credentials are refused, clearly, and end the program.
    let out = simulate(mqtt_port, &dev, "not-the-secret")
        .output()
        .expect("run simulate");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused its credentials"), "{err}");

    // `verge ctl` over the same API: the deployment is in sync; a wrong
    // token ends the command with the API's error.
    let out = verge()
        .args(["ctl", "--cloud", &format!("http://{}", cloud.addr)])
        .args(["--token", &cloud.token, "deployments"])
        .output()
        .expect("verge ctl");
    assert!(out.status.success(), "{out:?}");
    let deployments: Value = serde_json::from_slice(&out.stdout).expect("ctl prints JSON");
    let mine = deployments
        .as_array()
        .and_then(|a| a.iter().find(|d| d["node_id"] == node_id.as_str()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(mine["state"], "in_sync", "{deployments}");
    let out = verge()
        .args(["ctl", "--cloud", &format!("http://{}", cloud.addr)])
        .args(["--token", "wrong", "nodes", "list"])
        .output()
        .expect("verge ctl");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401 unauthorized"), "{err}");

    // A stopped node is marked offline.
    drop(device);
    assert!(node.stop().success(), "the node stops cleanly on SIGTERM");
    eventually("the node to be offline", || {
        let n = cloud.ok("GET", &format!("/api/nodes/{node_id}"), None);
        (n["status"] == "offline").then_some(())
    });

    // Offline autonomy: the cloud is gone; the node restarts from its last
    // desired state (no --join: the stored credentials are used).
    drop(cloud);
    let node = Proc::spawn(
        verge()
            .args(["node", "--cloud", &format!("http://127.0.0.1:{cloud_http}")])
            .args(node_args(&node_dir, mqtt_port)),
    );
    let banner = node.wait_line("HTTP API");
    let node_http = banner
        .split("http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .expect("node http address")
        .to_owned();
    let device = Proc::spawn(&mut simulate(mqtt_port, &dev, &secret));
    device.wait_line("connected");
    eventually("the cached rule to call the function", || {
        let (status, f) = http(&node_http, "GET", "/api/functions/demo-tag", "", None);
        (status == 200 && f["metrics"]["invocations"].as_u64().unwrap_or(0) > 0).then_some(())
    });
    let (status, rule) = http(&node_http, "GET", &format!("/api/rules/{rule}"), "", None);
    assert_eq!(status, 200, "{rule}");
    drop(device);
    assert!(node.stop().success());
}

//! `verge up`: the walkthrough on one machine, in one process. It starts a
//! cloud center (SQLite under the data dir), then, through the cloud's open
//! API as a user would: creates (or finds) the node, joins the node to it
//! and starts it, creates demo devices, starts simulated devices that send
//! telemetry with their credentials, uploads the demo WebAssembly function
//! and creates the rule that forwards the devices' data to it. A second
//! `up` reuses everything it finds in the data dir. Ctrl-C stops it all.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use base64::Engine as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use verge_cloud::CloudConfig;
use verge_net::now_ms;

use crate::config::NodeConfig;
use crate::ctl::Api;
use verge_node::CloudLink;

use crate::node::{Mode, Signals, runtime};
use crate::simulate::{SimulateArgs, simulate};

/// The demo function (WebAssembly text; needs no toolchain).
const DEMO_WAT: &str = include_str!("demo/demo-tag.wat");
/// The demo rule's id.
const DEMO_RULE: &str = "demo-function";

/// Run the walkthrough until Ctrl-C or SIGTERM. Call outside any runtime.
pub fn run(mut node: NodeConfig, mut cloud: CloudConfig, devices: usize) -> anyhow::Result<()> {
    let data = node.node.data_dir.clone();
    if cloud.cloud.data_dir == CloudConfig::default().cloud.data_dir {
        cloud.cloud.data_dir = data.join("cloud-center");
    }
    runtime()?.block_on(async move {
        let signals = Signals::install()?;
        let (stop_tx, stop) = watch::channel(false);
        let started = crate::cloud::start(cloud.clone()).await?;
        let token = admin_token(&started, &cloud.cloud.data_dir).await?;
        let api = Api {
            base: started.url.clone(),
            token: Some(token.clone()),
        };
        let console = started.url.clone();
        let mqtt_cloud = started.mqtt_url.clone();
        let mut cloud_task = tokio::spawn(started.serve(stopped(stop.clone())));

        // Steps 1 and 2: the node, created in the cloud and joined with its token.
        let node_id = node.node.name.clone();
        let link = ensure_node(&api, &node_id, &data).await?;
        crate::node::prepare(&mut node, Mode::Demo)?;
        let mqtt_node = node.broker.listeners.tcp.bind;
        let http_node = node.http.bind;
        let node_started_ms = now_ms();
        // The demo's node never restarts itself: it has no release key.
        let mut node_task = tokio::spawn({
            let stop = stopped(stop.clone());
            async move {
                crate::node::serve(node, Mode::Demo, Some(link), stop)
                    .await
                    .map(drop)
            }
        });

        // Step 3: devices bound to the node, with credentials.
        let secrets = ensure_devices(&api, &node_id, devices, &data).await?;
        // The devices may log in once the node runs the state that has them.
        wait_applied(&api, &node_id, node_started_ms).await?;
        // Step 4: device programs sending data to the node.
        let mut sims = tokio::task::JoinSet::new();
        for (device, secret) in &secrets {
            let args = SimulateArgs {
                node: mqtt_node.to_string(),
                device: device.clone(),
                secret: secret.clone(),
                interval: verge_duration::HumanDuration(Duration::from_secs(1)),
                count: None,
                ca_file: None,
                quiet: true,
            };
            let stop = stop.clone();
            sims.spawn(async move {
                if let Err(e) = simulate(args, stop).await {
                    eprintln!("simulated device: {e:#}");
                }
            });
        }
        // Step 5: a rule forwarding the devices' data to an edge function.
        ensure_function(&api).await?;
        ensure_rule(&api, &node_id).await?;

        let names: Vec<&str> = secrets.iter().map(|(d, _)| d.as_str()).collect();
        println!(
            "\nverge up: the walkthrough is running\n  \
             console        {console}/   (log in with the admin token)\n  \
             admin token    {token}   (kept in {token_file}, mode 0600)\n  \
             cloud MQTT     {mqtt_cloud}   (for nodes)\n  \
             node           `{node_id}`, joined: MQTT mqtt://{mqtt_node}, API http://{http_node}/api   (its token: {node_token})\n  \
             devices        {devices}   (simulated, one reading a second; secrets in {secrets_file})\n  \
             rule           `{DEMO_RULE}`: devices/+/telemetry -> function demo-tag -> processed/<topic>\n\
             step 6, what the function produced:\n  \
             verge ctl --cloud {console} --token-file {token_file} messages {node_id} --topic 'processed/#'\n\
             press Ctrl-C to stop",
            token_file = token_file(&cloud.cloud.data_dir).display(),
            node_token = data.join(verge_node::http::auth::TOKEN_FILE).display(),
            devices = if names.is_empty() {
                "(none: --devices 0)".to_owned()
            } else {
                names.join(", ")
            },
            secrets_file = devices_file(&data).display(),
        );

        let outcome = tokio::select! {
            _ = signals.wait() => Ok(()),
            r = &mut node_task => Err(flatten("the node", r)),
            r = &mut cloud_task => Err(flatten("the cloud center", r)),
        };
        let _ = stop_tx.send(true);
        while sims.join_next().await.is_some() {}
        if !node_task.is_finished() {
            flatten_ok("the node", node_task.await)?;
        }
        if !cloud_task.is_finished() {
            flatten_ok("the cloud center", cloud_task.await)?;
        }
        outcome
    })
}

/// Resolves when `stop` turns true.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Why a task that should have run until the stop ended.
fn flatten(what: &str, r: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Error {
    match flatten_ok(what, r) {
        Ok(()) => anyhow::anyhow!("{what} stopped"),
        Err(e) => e,
    }
}

fn flatten_ok(
    what: &str,
    r: Result<anyhow::Result<()>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    match r {
        Ok(r) => r.with_context(|| format!("{what} stopped")),
        Err(e) => Err(anyhow::anyhow!("{what} failed: {e}")),
    }
}

fn token_file(cloud_dir: &Path) -> PathBuf {
    cloud_dir.join("admin-token")
}

fn devices_file(data: &Path) -> PathBuf {
    data.join("demo").join("devices.json")
}

/// The demo keeps its admin token in a file (mode 0600) so that a second
/// `up` can use the API; a real `verge cloud` prints it once only.
async fn admin_token(started: &crate::cloud::Started, cloud_dir: &Path) -> anyhow::Result<String> {
    let path = token_file(cloud_dir);
    if let Some(t) = &started.new_admin_token {
        write_private(&path, t.as_bytes())?;
        return Ok(t.clone());
    }
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        _ => {
            let t = started
                .cloud
                .reset_admin_token()
                .await
                .context("making a new admin token for the demo")?;
            write_private(&path, t.as_bytes())?;
            Ok(t)
        }
    }
}

/// Write a file readable by its owner only (atomically).
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    verge_agent::write_atomic(path, bytes, 0o600)
        .with_context(|| format!("writing {}", path.display()))
}

/// Create the node unless the cloud knows it; join unless this data dir
/// holds its credentials.
async fn ensure_node(api: &Api, node_id: &str, data: &Path) -> anyhow::Result<CloudLink> {
    let dir = data.join("cloud");
    let stored = verge_agent::load_credentials(&dir)
        .with_context(|| format!("reading the node's credentials in {}", dir.display()))?;
    let token = match api.get_opt(&format!("/api/nodes/{node_id}")).await? {
        None => {
            let created = api
                .call(
                    "POST",
                    "/api/nodes",
                    Some(json!({ "name": node_id, "description": "the node of `verge up`" })),
                )
                .await?;
            Some(str_field(&created, "join_token")?)
        }
        Some(_) if stored.is_some() => None,
        Some(_) => {
            let fresh = api
                .call("POST", &format!("/api/nodes/{node_id}/join-token"), None)
                .await?;
            Some(str_field(&fresh, "join_token")?)
        }
    };
    CloudLink::establish(data, &api.base, token.as_deref(), None)
        .await
        .context("joining the node to the cloud center")
}

/// Devices d1…dN bound to the node; their secrets are kept in the data dir
/// (a device whose secret was lost gets a new one).
async fn ensure_devices(
    api: &Api,
    node_id: &str,
    n: usize,
    data: &Path,
) -> anyhow::Result<Vec<(String, String)>> {
    let path = devices_file(data);
    let mut known: serde_json::Map<String, Value> = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut out = Vec::new();
    for i in 1..=n {
        let id = format!("d{i}");
        let existing = api.get_opt(&format!("/api/devices/{id}")).await?;
        let secret = match (existing, known.get(&id).and_then(Value::as_str)) {
            (Some(_), Some(secret)) => secret.to_owned(),
            (Some(_), None) => {
                let v = api
                    .call("POST", &format!("/api/devices/{id}/secret"), None)
                    .await?;
                str_field(&v, "secret")?
            }
            (None, _) => {
                let v = api
                    .call(
                        "POST",
                        "/api/devices",
                        Some(json!({ "name": id, "node_id": node_id, "description": "simulated by verge up" })),
                    )
                    .await?;
                str_field(&v, "secret")?
            }
        };
        known.insert(id.clone(), Value::String(secret.clone()));
        out.push((id, secret));
    }
    let text = serde_json::to_vec_pretty(&known).context("encoding the demo devices")?;
    write_private(&path, &text)?;
    Ok(out)
}

/// Upload the demo function unless the cloud has this very module.
async fn ensure_function(api: &Api) -> anyhow::Result<()> {
    let sha = hex::encode(Sha256::digest(DEMO_WAT.as_bytes()));
    if let Some(f) = api.get_opt("/api/functions/demo-tag").await?
        && f["sha256"].as_str() == Some(sha.as_str())
    {
        return Ok(());
    }
    let body = json!({
        "spec": {
            "runtime": "wasm",
            "description": "tags a row and returns it on processed/<topic>",
        },
        "module_base64": base64::engine::general_purpose::STANDARD.encode(DEMO_WAT),
    });
    api.call("PUT", "/api/functions/demo-tag", Some(body))
        .await
        .map(|_| ())
}

/// The rule forwarding every reading to the demo function.
async fn ensure_rule(api: &Api, node_id: &str) -> anyhow::Result<()> {
    if api
        .get_opt(&format!("/api/rules/{DEMO_RULE}"))
        .await?
        .is_some()
    {
        return Ok(());
    }
    let body = json!({
        "id": DEMO_RULE,
        "node_id": node_id,
        "description": "every reading -> the demo-tag function -> processed/<topic>",
        "sql": "SELECT topic(2) AS device, temperature FROM \"devices/+/telemetry\"",
        "actions": [{ "type": "function", "name": "demo-tag" }],
    });
    api.call("POST", "/api/rules", Some(body)).await.map(|_| ())
}

/// Wait until the node, in a report sent after `since_ms`, says it applied
/// the desired version.
async fn wait_applied(api: &Api, node_id: &str, since_ms: i64) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = api
            .call("GET", &format!("/api/nodes/{node_id}"), None)
            .await?;
        let (desired, applied) = (n["desired_version"].as_i64(), n["applied_version"].as_i64());
        let fresh = n["last_seen_ms"].as_i64().is_some_and(|t| t >= since_ms);
        if fresh && desired.is_some() && desired == applied {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "the node did not apply its desired state within 30 s (desired {desired:?}, \
                 applied {applied:?}, errors {})",
                n["apply_errors"]
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn str_field(v: &Value, key: &str) -> anyhow::Result<String> {
    v[key]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("the cloud's answer has no `{key}`: {v}"))
}

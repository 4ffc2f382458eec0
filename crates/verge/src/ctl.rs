//! `verge ctl`: a command-line client of the cloud center's open API. Each
//! subcommand is one or two API requests; answers are printed as JSON, and
//! an API error ends the command with its status, code and message.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

mod deploy;
pub use deploy::{ReleasesCmd, RevisionsCmd, RolloutsCmd};

/// `verge ctl`.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The cloud center's URL.
    #[arg(long, env = "VERGE_CLOUD", default_value = "http://127.0.0.1:8080")]
    pub cloud: String,
    /// An API token (the admin token or one made with `tokens create`).
    /// Prefer `--token-file` or `VERGE_TOKEN`: a token on the command line
    /// ends up in the shell's history and in `ps`.
    #[arg(long, env = "VERGE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the API token (e.g. `verge up`'s admin-token file).
    #[arg(
        long,
        env = "VERGE_TOKEN_FILE",
        value_name = "FILE",
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,
    /// PEM CA file an https:// cloud is verified against instead of
    /// Mozilla's roots.
    #[arg(long, env = "VERGE_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The resources.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Edge nodes.
    #[command(subcommand)]
    Nodes(NodesCmd),
    /// Devices bound to nodes.
    #[command(subcommand)]
    Devices(DevicesCmd),
    /// Alarms raised by rules on devices: list, acknowledge, clear.
    #[command(subcommand)]
    Alarms(AlarmsCmd),
    /// Rules deployed to nodes.
    #[command(subcommand)]
    Rules(RulesCmd),
    /// Function artifacts.
    #[command(subcommand)]
    Functions(FunctionsCmd),
    /// User components: versions, their files, and the nodes that run them.
    #[command(subcommand)]
    Components(ComponentsCmd),
    /// Protocol drivers (with their point tables) deployed to a node.
    #[command(subcommand)]
    Drivers(DriversCmd),
    /// API tokens.
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Releases of the `verge` binary and the nodes assigned each
    /// (self-update of nodes).
    #[command(subcommand)]
    Releases(ReleasesCmd),
    /// A node's revisions: history, diff, rollback, cancel.
    #[command(subcommand)]
    Revisions(RevisionsCmd),
    /// Staged rollouts of a component version to labelled nodes.
    #[command(subcommand)]
    Rollouts(RolloutsCmd),
    /// Desired and applied versions of every node.
    Deployments,
    /// A node's upstream messages (newest last).
    Messages {
        /// The node.
        node: String,
        /// Only topics matching this filter (MQTT wildcards).
        #[arg(long)]
        topic: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Any API request, e.g. `verge ctl api GET /api/nodes`.
    Api {
        /// GET, POST, PUT, PATCH or DELETE.
        method: String,
        /// Path under the cloud URL, starting with `/api/`.
        path: String,
        /// JSON body.
        body: Option<String>,
    },
}

/// `verge ctl nodes …`.
#[derive(Debug, Subcommand)]
pub enum NodesCmd {
    /// List nodes with their status.
    List,
    /// Show one node.
    Get {
        /// Node id.
        id: String,
    },
    /// Create a node; prints its one-time join token and command.
    Create {
        /// Node name (letters, digits, `-`, `_`).
        name: String,
        /// Free text.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// A new one-time join token for a node (reinstalling it).
    JoinToken {
        /// Node id.
        id: String,
    },
    /// Delete a node (refused while devices or rules are bound to it).
    Delete {
        /// Node id.
        id: String,
    },
}

/// `verge ctl devices …`.
#[derive(Debug, Subcommand)]
pub enum DevicesCmd {
    /// List devices.
    List {
        /// Only those of this node.
        #[arg(long)]
        node: Option<String>,
    },
    /// Show one device with its last telemetry.
    Get {
        /// Device id.
        id: String,
    },
    /// Create a device bound to a node; prints its secret once.
    Create {
        /// Device id (its MQTT username).
        name: String,
        /// The node it connects to.
        #[arg(long)]
        node: String,
    },
    /// A new secret for a device.
    Secret {
        /// Device id.
        id: String,
    },
    /// Delete a device.
    Delete {
        /// Device id.
        id: String,
    },
    /// Send a command to a device through its node; it is kept until it
    /// is answered or its time to live ends (also while the node is
    /// offline). Prints the command with its id and status.
    Command {
        /// Device id.
        id: String,
        /// Command name.
        name: String,
        /// JSON payload.
        #[arg(default_value = "{}")]
        payload: String,
        /// Time to live (e.g. `30s`, `1h`; at most `7d`; default 1 h).
        #[arg(long)]
        ttl: Option<String>,
    },
    /// A device's commands, newest first, with status and reply.
    Commands {
        /// Device id.
        id: String,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One command by its id (status, reply, error).
    CommandStatus {
        /// Command id (as `command` printed it).
        command: String,
    },
    /// A device's shadow: desired, reported, delta, version.
    Shadow {
        /// Device id.
        id: String,
    },
    /// Change a device's desired state (`null` removes a key).
    Desired {
        /// Device id.
        id: String,
        /// JSON object of desired keys, e.g. `{"interval_ms": 500}`.
        desired: String,
        /// Refuse the change unless the shadow is still at this version.
        #[arg(long = "if-version")]
        if_version: Option<u64>,
    },
}

/// `verge ctl alarms …`.
#[derive(Debug, Subcommand)]
pub enum AlarmsCmd {
    /// List alarms, newest first.
    List {
        /// Only this device's.
        #[arg(long)]
        device: Option<String>,
        /// Only `active` or `cleared` ones.
        #[arg(long)]
        status: Option<String>,
        /// Only unacknowledged ones.
        #[arg(long)]
        unacknowledged: bool,
    },
    /// Acknowledge an alarm.
    Ack {
        /// Alarm id.
        id: String,
    },
    /// Clear an alarm.
    Clear {
        /// Alarm id.
        id: String,
    },
}

/// `verge ctl rules …`.
#[derive(Debug, Subcommand)]
pub enum RulesCmd {
    /// List rules.
    List {
        /// Only those of this node.
        #[arg(long)]
        node: Option<String>,
    },
    /// Show one rule.
    Get {
        /// Rule id.
        id: String,
    },
    /// Create a rule on a node.
    Create {
        /// Rule id.
        #[arg(long)]
        id: String,
        /// The node it runs on.
        #[arg(long)]
        node: String,
        /// The SQL.
        #[arg(long)]
        sql: String,
        /// An action as JSON, e.g. `{"type":"function","name":"demo-tag"}`;
        /// repeat for more.
        #[arg(long = "action")]
        actions: Vec<String>,
    },
    /// Delete a rule.
    Delete {
        /// Rule id.
        id: String,
    },
    /// Run SQL over one sample message and print the rows.
    Test {
        /// The SQL.
        #[arg(long)]
        sql: String,
        /// The sample's topic.
        #[arg(long)]
        topic: String,
        /// The sample's JSON payload.
        #[arg(long)]
        payload: String,
    },
}

/// `verge ctl functions …`.
#[derive(Debug, Subcommand)]
pub enum FunctionsCmd {
    /// List function artifacts.
    List,
    /// Show one function with its per-node stats.
    Get {
        /// Function name.
        name: String,
    },
    /// Upload a WebAssembly module (`.wasm` or `.wat`) as a new version.
    Upload {
        /// Function name.
        name: String,
        /// The module file.
        file: PathBuf,
        /// The function's config (JSON object).
        #[arg(long, default_value = "{}")]
        config: String,
    },
    /// Call the function in the cloud's sandbox.
    Invoke {
        /// Function name.
        name: String,
        /// Topic of the message handed to it.
        #[arg(long, default_value = "devices/d1/telemetry")]
        topic: String,
        /// JSON payload.
        #[arg(long, default_value = "{}")]
        payload: String,
    },
    /// Delete a function (refused while a rule uses it).
    Delete {
        /// Function name.
        name: String,
    },
}

/// `verge ctl components …`.
#[derive(Debug, Subcommand)]
pub enum ComponentsCmd {
    /// List components with their versions and the nodes that run them.
    List,
    /// Show one component, with its state on each node.
    Get {
        /// Component name.
        name: String,
    },
    /// Add a version from a spec file (JSON, as `[[components]]` takes it,
    /// with `name` and `version`), and for a process its files.
    Add {
        /// The spec (JSON file).
        spec: PathBuf,
        /// The process's files: a `.tar.gz` unpacked into its directory on
        /// the node.
        #[arg(long, value_name = "FILE")]
        archive: Option<PathBuf>,
    },
    /// Run a version of a component on a node (again: a version update).
    Assign {
        /// Component name.
        name: String,
        /// The version (named so apart from `--version`, which clap keeps).
        #[arg(value_name = "VERSION")]
        release: String,
        /// Node id.
        #[arg(long)]
        node: String,
    },
    /// Stop running a component on a node.
    Unassign {
        /// Component name.
        name: String,
        /// Node id.
        #[arg(long)]
        node: String,
    },
    /// The components of a node, with the state it reports.
    Node {
        /// Node id.
        id: String,
    },
    /// Delete a component (refused while a node runs it).
    Delete {
        /// Component name.
        name: String,
    },
}

/// `verge ctl drivers …`.
#[derive(Debug, Subcommand)]
pub enum DriversCmd {
    /// The drivers of a node: protocol, devices and points of each.
    List {
        /// Node id.
        #[arg(long)]
        node: String,
    },
    /// Create or replace a driver of a node from its config file (JSON, as
    /// the node's drivers API takes it; its `name` names the driver unless
    /// `--name` does). Each change is a new revision of the node.
    Put {
        /// Node id.
        #[arg(long)]
        node: String,
        /// The driver's config (JSON file).
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// The driver's name, when the file has none.
        #[arg(long)]
        name: Option<String>,
    },
    /// Stop running a driver on a node.
    Delete {
        /// Node id.
        #[arg(long)]
        node: String,
        /// Driver name.
        #[arg(long)]
        name: String,
    },
}

/// `verge ctl tokens …`.
#[derive(Debug, Subcommand)]
pub enum TokensCmd {
    /// List tokens (without their secrets).
    List,
    /// Create an API token; prints it once.
    Create {
        /// What it is for.
        name: String,
        /// `admin` (everything), `read` (GET only) or `broker` (the
        /// external broker's `/api/broker/*` hooks only).
        #[arg(long, default_value = "admin", value_parser = ["admin", "read", "broker"])]
        scope: String,
    },
    /// Revoke a token.
    Delete {
        /// Token id.
        id: String,
    },
}

/// Run one `verge ctl` command.
pub fn run(args: CtlArgs) -> anyhow::Result<()> {
    if let Some(ca) = &args.ca {
        verge_agent::http::set_ca_file(Some(ca)).context("--ca")?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let out = runtime.block_on(execute(&args))?;
    let text = serde_json::to_string_pretty(&out).context("printing the answer")?;
    // A reader that stops early (`| head`) is not an error of the command.
    match writeln!(std::io::stdout(), "{text}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing the answer"),
    }
}

/// The request(s) of one command; the answer to print.
async fn execute(args: &CtlArgs) -> anyhow::Result<Value> {
    let token = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(file)) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("--token-file {}", file.display()))?
                .trim()
                .to_owned(),
        ),
        (None, None) => None,
    };
    let api = Api {
        base: args.cloud.trim_end_matches('/').to_owned(),
        token,
    };
    match &args.command {
        CtlCommand::Nodes(c) => match c {
            NodesCmd::List => api.call("GET", "/api/nodes", None).await,
            NodesCmd::Get { id } => api.call("GET", &format!("/api/nodes/{id}"), None).await,
            NodesCmd::Create { name, description } => {
                let body = json!({ "name": name, "description": description });
                api.call("POST", "/api/nodes", Some(body)).await
            }
            NodesCmd::JoinToken { id } => {
                api.call("POST", &format!("/api/nodes/{id}/join-token"), None)
                    .await
            }
            NodesCmd::Delete { id } => api.call("DELETE", &format!("/api/nodes/{id}"), None).await,
        },
        CtlCommand::Devices(c) => match c {
            DevicesCmd::List { node } => {
                let q = node_query(node.as_deref());
                api.call("GET", &format!("/api/devices{q}"), None).await
            }
            DevicesCmd::Get { id } => api.call("GET", &format!("/api/devices/{id}"), None).await,
            DevicesCmd::Create { name, node } => {
                let body = json!({ "name": name, "node_id": node });
                api.call("POST", "/api/devices", Some(body)).await
            }
            DevicesCmd::Secret { id } => {
                api.call("POST", &format!("/api/devices/{id}/secret"), None)
                    .await
            }
            DevicesCmd::Delete { id } => {
                api.call("DELETE", &format!("/api/devices/{id}"), None)
                    .await
            }
            DevicesCmd::Command {
                id,
                name,
                payload,
                ttl,
            } => {
                let body = parse_json("payload", payload)?;
                let q = ttl
                    .as_deref()
                    .map(|t| format!("?ttl={}", percent_encode(t)))
                    .unwrap_or_default();
                api.call(
                    "POST",
                    &format!("/api/devices/{id}/commands/{name}{q}"),
                    Some(body),
                )
                .await
            }
            DevicesCmd::Commands { id, limit } => {
                api.call(
                    "GET",
                    &format!("/api/devices/{id}/commands?limit={limit}"),
                    None,
                )
                .await
            }
            DevicesCmd::CommandStatus { command } => {
                api.call(
                    "GET",
                    &format!("/api/commands/{}", percent_encode(command)),
                    None,
                )
                .await
            }
            DevicesCmd::Shadow { id } => {
                api.call("GET", &format!("/api/devices/{id}/shadow"), None)
                    .await
            }
            DevicesCmd::Desired {
                id,
                desired,
                if_version,
            } => {
                let desired = parse_json("desired", desired)?;
                if !desired.is_object() {
                    bail!(
                        "desired: expected a JSON object of keys, e.g. '{{\"interval_ms\": 500}}'"
                    );
                }
                let mut body = json!({ "desired": desired });
                if let Some(v) = if_version {
                    body["version"] = json!(v);
                }
                api.call("PATCH", &format!("/api/devices/{id}/shadow"), Some(body))
                    .await
            }
        },
        CtlCommand::Alarms(c) => match c {
            AlarmsCmd::List {
                device,
                status,
                unacknowledged,
            } => {
                let mut q = Vec::new();
                if let Some(d) = device {
                    q.push(format!("device_id={}", percent_encode(d)));
                }
                if let Some(s) = status {
                    q.push(format!("status={}", percent_encode(s)));
                }
                if *unacknowledged {
                    q.push("acknowledged=false".to_owned());
                }
                let q = if q.is_empty() {
                    String::new()
                } else {
                    format!("?{}", q.join("&"))
                };
                api.call("GET", &format!("/api/alarms{q}"), None).await
            }
            AlarmsCmd::Ack { id } => {
                api.call(
                    "POST",
                    &format!("/api/alarms/{}/ack", percent_encode(id)),
                    None,
                )
                .await
            }
            AlarmsCmd::Clear { id } => {
                api.call(
                    "POST",
                    &format!("/api/alarms/{}/clear", percent_encode(id)),
                    None,
                )
                .await
            }
        },
        CtlCommand::Rules(c) => match c {
            RulesCmd::List { node } => {
                let q = node_query(node.as_deref());
                api.call("GET", &format!("/api/rules{q}"), None).await
            }
            RulesCmd::Get { id } => api.call("GET", &format!("/api/rules/{id}"), None).await,
            RulesCmd::Create {
                id,
                node,
                sql,
                actions,
            } => {
                let actions = actions
                    .iter()
                    .map(|a| parse_json("--action", a))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let body = json!({ "id": id, "node_id": node, "sql": sql, "actions": actions });
                api.call("POST", "/api/rules", Some(body)).await
            }
            RulesCmd::Delete { id } => api.call("DELETE", &format!("/api/rules/{id}"), None).await,
            RulesCmd::Test {
                sql,
                topic,
                payload,
            } => {
                let payload = parse_json("--payload", payload)?;
                let body =
                    json!({ "sql": sql, "samples": [{ "topic": topic, "payload": payload }] });
                api.call("POST", "/api/rules/test", Some(body)).await
            }
        },
        CtlCommand::Functions(c) => match c {
            FunctionsCmd::List => api.call("GET", "/api/functions", None).await,
            FunctionsCmd::Get { name } => {
                api.call("GET", &format!("/api/functions/{name}"), None)
                    .await
            }
            FunctionsCmd::Upload { name, file, config } => {
                let module = std::fs::read(file)
                    .with_context(|| format!("reading the module {}", file.display()))?;
                let config = parse_json("--config", config)?;
                let body = json!({
                    "spec": { "runtime": "wasm", "config": config },
                    "module_base64": base64::engine::general_purpose::STANDARD.encode(module),
                });
                api.call("PUT", &format!("/api/functions/{name}"), Some(body))
                    .await
            }
            FunctionsCmd::Invoke {
                name,
                topic,
                payload,
            } => {
                let payload = parse_json("--payload", payload)?;
                let body = json!({ "topic": topic, "payload": payload });
                api.call("POST", &format!("/api/functions/{name}/invoke"), Some(body))
                    .await
            }
            FunctionsCmd::Delete { name } => {
                api.call("DELETE", &format!("/api/functions/{name}"), None)
                    .await
            }
        },
        CtlCommand::Components(c) => components(&api, c).await,
        CtlCommand::Drivers(c) => drivers(&api, c).await,
        CtlCommand::Tokens(c) => match c {
            TokensCmd::List => api.call("GET", "/api/tokens", None).await,
            TokensCmd::Create { name, scope } => {
                let body = json!({ "name": name, "scope": scope });
                api.call("POST", "/api/tokens", Some(body)).await
            }
            TokensCmd::Delete { id } => {
                api.call("DELETE", &format!("/api/tokens/{id}"), None).await
            }
        },
        CtlCommand::Releases(c) => deploy::releases(&api, c).await,
        CtlCommand::Revisions(c) => deploy::revisions(&api, c).await,
        CtlCommand::Rollouts(c) => deploy::rollouts(&api, c).await,
        CtlCommand::Deployments => api.call("GET", "/api/deployments", None).await,
        CtlCommand::Messages { node, topic, limit } => {
            let mut q = format!("?limit={limit}");
            if let Some(t) = topic {
                q.push_str("&topic=");
                q.push_str(&percent_encode(t));
            }
            api.call("GET", &format!("/api/nodes/{node}/messages{q}"), None)
                .await
        }
        CtlCommand::Api { method, path, body } => {
            if !path.starts_with("/api/") {
                bail!("path `{path}`: must start with /api/");
            }
            let body = body.as_deref().map(|b| parse_json("body", b)).transpose()?;
            api.call(&method.to_uppercase(), path, body).await
        }
    }
}

async fn components(api: &Api, c: &ComponentsCmd) -> anyhow::Result<Value> {
    match c {
        ComponentsCmd::List => api.call("GET", "/api/components", None).await,
        ComponentsCmd::Get { name } => {
            api.call("GET", &format!("/api/components/{name}"), None)
                .await
        }
        ComponentsCmd::Add { spec, archive } => {
            let text = std::fs::read_to_string(spec)
                .with_context(|| format!("reading the spec {}", spec.display()))?;
            let body = parse_json(&spec.display().to_string(), &text)?;
            let added = api.call("POST", "/api/components", Some(body)).await?;
            let Some(archive) = archive else {
                return Ok(added);
            };
            let bytes = std::fs::read(archive)
                .with_context(|| format!("reading the archive {}", archive.display()))?;
            let (name, version) = (
                added["name"].as_str().unwrap_or_default(),
                added["version"].as_str().unwrap_or_default(),
            );
            api.upload(
                "PUT",
                &format!("/api/components/{name}/versions/{version}/artifact"),
                bytes,
                "application/gzip",
            )
            .await
        }
        ComponentsCmd::Assign {
            name,
            node,
            release,
        } => {
            let body = json!({ "version": release });
            api.call(
                "PUT",
                &format!("/api/nodes/{node}/components/{name}"),
                Some(body),
            )
            .await
        }
        ComponentsCmd::Unassign { name, node } => {
            api.call(
                "DELETE",
                &format!("/api/nodes/{node}/components/{name}"),
                None,
            )
            .await
        }
        ComponentsCmd::Node { id } => {
            api.call("GET", &format!("/api/nodes/{id}/components"), None)
                .await
        }
        ComponentsCmd::Delete { name } => {
            api.call("DELETE", &format!("/api/components/{name}"), None)
                .await
        }
    }
}

async fn drivers(api: &Api, c: &DriversCmd) -> anyhow::Result<Value> {
    match c {
        DriversCmd::List { node } => {
            api.call("GET", &format!("/api/nodes/{node}/drivers"), None)
                .await
        }
        DriversCmd::Put { node, file, name } => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading the driver {}", file.display()))?;
            let body = parse_json(&file.display().to_string(), &text)?;
            let name =
                driver_name(&body, name.as_deref()).with_context(|| file.display().to_string())?;
            api.call(
                "PUT",
                &format!("/api/nodes/{node}/drivers/{}", percent_encode(&name)),
                Some(body),
            )
            .await
        }
        DriversCmd::Delete { node, name } => {
            api.call(
                "DELETE",
                &format!("/api/nodes/{node}/drivers/{}", percent_encode(name)),
                None,
            )
            .await
        }
    }
}

/// The name a driver config file is put under: `--name`, else the file's
/// `name` (the cloud refuses a file whose `name` differs from `--name`).
fn driver_name(body: &Value, flag: Option<&str>) -> anyhow::Result<String> {
    if let Some(n) = flag {
        return Ok(n.to_owned());
    }
    match body.get("name") {
        Some(Value::String(n)) => Ok(n.clone()),
        Some(_) => bail!("`name` must be a string"),
        None => bail!("the driver has no `name`: add one, or give --name"),
    }
}

/// The cloud's address and the token.
pub struct Api {
    /// Base URL without a trailing slash.
    pub base: String,
    /// Bearer token.
    pub token: Option<String>,
}

impl Api {
    /// One request; a non-2xx answer becomes an error with the API's code
    /// and message. An empty answer (204) is `null`.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        match self.send(method, path, body).await? {
            (status, value) if (200..300).contains(&status) => Ok(value),
            (status, value) => Err(api_error(method, path, status, &value)),
        }
    }

    /// One request with a raw body of `content_type` (an upload).
    pub async fn upload(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        content_type: &'static str,
    ) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let (status, bytes) = verge_agent::http::request_raw(
            method,
            &url,
            self.token.as_deref(),
            Some((body.into(), content_type)),
            Duration::from_secs(300),
        )
        .await
        .with_context(|| format!("{method} {url}"))?;
        let value = answer(&bytes);
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            Err(api_error(method, path, status, &value))
        }
    }

    /// A GET whose 404 is `None` (`verge up`).
    #[cfg(feature = "cloud")]
    pub async fn get_opt(&self, path: &str) -> anyhow::Result<Option<Value>> {
        match self.send("GET", path, None).await? {
            (404, _) => Ok(None),
            (status, value) if (200..300).contains(&status) => Ok(Some(value)),
            (status, value) => Err(api_error("GET", path, status, &value)),
        }
    }

    /// One request: the status and the JSON answer (`null` when empty).
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        let (status, bytes) = verge_agent::http::request(
            method,
            &url,
            self.token.as_deref(),
            body.as_ref(),
            Duration::from_secs(30),
        )
        .await
        .with_context(|| format!("{method} {url}"))?;
        Ok((status, answer(&bytes)))
    }
}

/// An answer's JSON (`null` when empty, a string when not JSON).
fn answer(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
    }
}

/// `GET /api/x: 404 not_found: no …`.
fn api_error(method: &str, path: &str, status: u16, value: &Value) -> anyhow::Error {
    let code = value["error"]["code"].as_str().unwrap_or("error");
    let message = value["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| value.to_string());
    anyhow::anyhow!("{method} {path}: {status} {code}: {message}")
}

/// `?node_id=…` for the list commands' `--node`, or nothing.
fn node_query(node: Option<&str>) -> String {
    node.map(|n| format!("?node_id={}", percent_encode(n)))
        .unwrap_or_default()
}

fn parse_json(what: &str, text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).with_context(|| format!("{what}: not valid JSON"))
}

/// Percent-encode a query value (MQTT filters hold `+`, `#` and `/`).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_driver_is_put_under_its_name_or_the_flag() {
        let named = json!({"name": "plc1", "protocol": "modbus-tcp"});
        assert_eq!(driver_name(&named, None).ok().as_deref(), Some("plc1"));
        assert_eq!(
            driver_name(&named, Some("plc2")).ok().as_deref(),
            Some("plc2")
        );
        let bare = json!({"protocol": "modbus-tcp"});
        assert_eq!(driver_name(&bare, Some("x")).ok().as_deref(), Some("x"));
        assert!(driver_name(&bare, None).is_err());
        assert!(driver_name(&json!({"name": 3}), None).is_err());
    }

    #[test]
    fn filters_are_percent_encoded() {
        assert_eq!(percent_encode("devices/+/x#"), "devices/%2B/x%23");
        assert_eq!(percent_encode("a b"), "a%20b");
    }
}

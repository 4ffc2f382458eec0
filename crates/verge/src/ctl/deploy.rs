//! `verge ctl releases | revisions | rollouts`: the deployment commands
//! (self-update releases of the `verge` binary, a node's revisions with
//! rollback and cancel, staged rollouts), each one or two API requests.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Map, Value, json};

use super::{Api, parse_json};

/// `verge ctl releases …`.
#[derive(Debug, Subcommand)]
pub enum ReleasesCmd {
    /// List releases with the nodes assigned each.
    List,
    /// Show one release.
    Get {
        /// The release version (named so apart from `--version`, which
        /// clap keeps).
        #[arg(value_name = "VERSION")]
        release: String,
    },
    /// Add a release: post the metadata `verge release sign` printed, then
    /// upload the binary it was made from.
    Add {
        /// The signed release metadata (JSON file printed by `verge release
        /// sign`).
        #[arg(long, value_name = "FILE")]
        metadata: PathBuf,
        /// The `verge` binary the metadata names.
        #[arg(long, value_name = "FILE")]
        binary: PathBuf,
    },
    /// Delete a release (refused while a node is assigned it).
    Delete {
        /// The release version.
        #[arg(value_name = "VERSION")]
        release: String,
    },
    /// Make a node run a release (a revision; the node swaps its binary).
    Assign {
        /// Node id.
        #[arg(long)]
        node: String,
        /// The release version.
        #[arg(value_name = "VERSION")]
        release: String,
    },
    /// Take a node's release away (it keeps the binary it runs).
    Unassign {
        /// Node id.
        #[arg(long)]
        node: String,
    },
}

/// `verge ctl revisions …`.
#[derive(Debug, Subcommand)]
pub enum RevisionsCmd {
    /// A node's revisions, newest first, with their results.
    List {
        /// Node id.
        #[arg(long)]
        node: String,
        /// At most this many (1 to 1000).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// One revision with its state and the node's attempt.
    Get {
        /// Node id.
        #[arg(long)]
        node: String,
        /// Revision number.
        revision: i64,
    },
    /// What changed from revision A to revision B.
    Diff {
        /// Node id.
        #[arg(long)]
        node: String,
        /// The older revision.
        a: i64,
        /// The newer revision.
        b: i64,
    },
    /// A new revision with the content of an older one.
    Rollback {
        /// Node id.
        #[arg(long)]
        node: String,
        /// The revision whose content the node should run.
        revision: i64,
    },
    /// A new revision with the content of the node's applied revision.
    Cancel {
        /// Node id.
        #[arg(long)]
        node: String,
    },
}

/// `verge ctl rollouts …`.
#[derive(Debug, Subcommand)]
pub enum RolloutsCmd {
    /// The newest 100 rollouts, newest first.
    List,
    /// Show one rollout by stage and node.
    Get {
        /// Rollout id.
        id: i64,
    },
    /// Start a staged rollout of a component version to the nodes a label
    /// selector matches (the canary stage first).
    #[command(disable_version_flag = true)]
    Start {
        /// Component name.
        #[arg(long)]
        component: String,
        /// The component version.
        #[arg(long = "version", value_name = "VERSION")]
        release: String,
        /// Label selector, `key=value,key=value`.
        #[arg(long, value_parser = parse_selector)]
        selector: Map<String, Value>,
        /// Nodes in the canary stage.
        #[arg(long, conflicts_with = "canary_percent")]
        canary: Option<u32>,
        /// Percent of the matched nodes in the canary stage.
        #[arg(long)]
        canary_percent: Option<f64>,
        /// The failure rate (0 to 1) above which a stage pauses the
        /// rollout.
        #[arg(long)]
        max_failure_rate: Option<f64>,
        /// How long a stage's nodes have to report, e.g. `10m`.
        #[arg(long)]
        stage_timeout: Option<String>,
    },
    /// Go on with the next stage of a paused rollout.
    Resume {
        /// Rollout id.
        id: i64,
    },
    /// Start no more stages (nodes already changed keep what they got).
    Cancel {
        /// Rollout id.
        id: i64,
    },
}

/// `k=v,k=v` as a JSON object; the cloud checks the keys and values.
fn parse_selector(text: &str) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                out.insert(k.trim().to_owned(), Value::String(v.trim().to_owned()));
            }
            _ => return Err(format!("`{pair}` is not key=value")),
        }
    }
    if out.is_empty() {
        return Err("give at least one key=value".to_owned());
    }
    Ok(out)
}

pub(super) async fn releases(api: &Api, c: &ReleasesCmd) -> anyhow::Result<Value> {
    match c {
        ReleasesCmd::List => api.call("GET", "/api/releases", None).await,
        ReleasesCmd::Get { release } => {
            let all = api.call("GET", "/api/releases", None).await?;
            let found = all
                .as_array()
                .and_then(|a| a.iter().find(|r| r["version"] == release.as_str()));
            match found {
                Some(r) => Ok(r.clone()),
                None => bail!("no release `{release}`"),
            }
        }
        ReleasesCmd::Add { metadata, binary } => {
            let text = std::fs::read_to_string(metadata)
                .with_context(|| format!("reading the metadata {}", metadata.display()))?;
            let body = parse_json(&metadata.display().to_string(), &text)?;
            // Read first: a missing binary leaves no release behind.
            let bytes = std::fs::read(binary)
                .with_context(|| format!("reading the binary {}", binary.display()))?;
            let added = api.call("POST", "/api/releases", Some(body)).await?;
            let version = added["version"].as_str().unwrap_or_default();
            api.upload(
                "PUT",
                &format!("/api/releases/{version}/binary"),
                bytes,
                "application/octet-stream",
            )
            .await
        }
        ReleasesCmd::Delete { release } => {
            api.call("DELETE", &format!("/api/releases/{release}"), None)
                .await
        }
        ReleasesCmd::Assign { node, release } => {
            let body = json!({ "version": release });
            api.call("PUT", &format!("/api/nodes/{node}/release"), Some(body))
                .await
        }
        ReleasesCmd::Unassign { node } => {
            api.call("DELETE", &format!("/api/nodes/{node}/release"), None)
                .await
        }
    }
}

pub(super) async fn revisions(api: &Api, c: &RevisionsCmd) -> anyhow::Result<Value> {
    match c {
        RevisionsCmd::List { node, limit } => {
            let q = limit.map(|l| format!("?limit={l}")).unwrap_or_default();
            api.call("GET", &format!("/api/nodes/{node}/revisions{q}"), None)
                .await
        }
        RevisionsCmd::Get { node, revision } => {
            api.call(
                "GET",
                &format!("/api/nodes/{node}/revisions/{revision}"),
                None,
            )
            .await
        }
        RevisionsCmd::Diff { node, a, b } => {
            api.call(
                "GET",
                &format!("/api/nodes/{node}/revisions/{a}/diff/{b}"),
                None,
            )
            .await
        }
        RevisionsCmd::Rollback { node, revision } => {
            let body = json!({ "revision": revision });
            api.call("POST", &format!("/api/nodes/{node}/rollback"), Some(body))
                .await
        }
        RevisionsCmd::Cancel { node } => {
            api.call("POST", &format!("/api/nodes/{node}/cancel"), None)
                .await
        }
    }
}

pub(super) async fn rollouts(api: &Api, c: &RolloutsCmd) -> anyhow::Result<Value> {
    match c {
        RolloutsCmd::List => api.call("GET", "/api/rollouts", None).await,
        RolloutsCmd::Get { id } => api.call("GET", &format!("/api/rollouts/{id}"), None).await,
        RolloutsCmd::Start {
            component,
            release,
            selector,
            canary,
            canary_percent,
            max_failure_rate,
            stage_timeout,
        } => {
            let mut body = json!({
                "component": component, "version": release, "selector": selector,
            });
            let extra = [
                ("canary", canary.map(Value::from)),
                ("canary_percent", canary_percent.map(Value::from)),
                ("max_failure_rate", max_failure_rate.map(Value::from)),
                ("stage_timeout", stage_timeout.clone().map(Value::from)),
            ];
            for (key, value) in extra {
                if let Some(v) = value {
                    body[key] = v;
                }
            }
            api.call("POST", "/api/rollouts", Some(body)).await
        }
        RolloutsCmd::Resume { id } => {
            api.call("POST", &format!("/api/rollouts/{id}/resume"), None)
                .await
        }
        RolloutsCmd::Cancel { id } => {
            api.call("POST", &format!("/api/rollouts/{id}/cancel"), None)
                .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_key_value_pairs() {
        let s = parse_selector("site=a, tier = edge").expect("ok");
        assert_eq!(Value::Object(s), json!({"site": "a", "tier": "edge"}));
        assert!(parse_selector("site").is_err());
        assert!(parse_selector("=a").is_err());
        assert!(parse_selector(" , ").is_err(), "empty");
    }
}

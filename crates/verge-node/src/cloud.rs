//! A node managed by a cloud center: the credentials policy (join with a
//! one-time token, else run with the stored credentials) and how a managed
//! node's config is completed from them (its name, the cloud link and the
//! default upstream forwards).

use std::path::{Path, PathBuf};

use verge_agent::{AgentError, Credentials};

use crate::NodeConfig;

/// A node managed by a cloud center: its credentials and the folder where
/// the agent keeps them and the last desired state (`<data_dir>/cloud`).
pub struct CloudLink {
    /// From the join.
    pub creds: Credentials,
    /// `<data_dir>/cloud`.
    pub dir: PathBuf,
}

/// Upstream forwards of a cloud-managed node whose config names none:
/// device telemetry, device events (alarms lane) and what functions
/// publish under `processed/`.
pub const CLOUD_FORWARDS: &[(&str, &str)] = &[
    ("devices/+/telemetry", "telemetry"),
    ("devices/+/events/#", "alarms"),
    ("processed/#", "telemetry"),
];

/// Why a node could not be linked to its cloud center.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The cloud's URL is not `http(s)://…`.
    #[error("--cloud `{0}`: expected the cloud center's http(s)://host:port")]
    BadUrl(String),
    /// A step failed; `what` says which.
    #[error("{what}: {error}")]
    Step {
        /// The step, e.g. `joining the cloud center at …`.
        what: String,
        /// Why it failed.
        error: String,
    },
    /// No token was given and the node never joined.
    #[error(
        "this node has not joined a cloud center yet (no credentials in {}): \
         run `verge node --cloud {url} --join <token>` with the token the console \
         or `verge ctl nodes create` gave",
        dir.display()
    )]
    NotJoined {
        /// The cloud's URL.
        url: String,
        /// Where credentials would be.
        dir: PathBuf,
    },
}

fn step(what: impl Into<String>) -> impl FnOnce(AgentError) -> LinkError {
    let what = what.into();
    move |e| LinkError::Step {
        what,
        error: e.to_string(),
    }
}

impl CloudLink {
    /// The credentials of a node managed by the cloud at `url`: a join with
    /// `join` (then stored in `<data_dir>/cloud`), else the stored ones.
    /// `ca` (`--cloud-ca`) is the CA file the cloud's certificates are
    /// verified against; it is stored with the credentials, and a stored
    /// one is used when none is given.
    pub async fn establish(
        data_dir: &Path,
        url: &str,
        join: Option<&str>,
        ca: Option<&Path>,
    ) -> Result<CloudLink, LinkError> {
        let dir = data_dir.join("cloud");
        let url = url.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(LinkError::BadUrl(url.to_owned()));
        }
        // Absolute: the node may be restarted from another directory.
        let ca = ca
            .map(std::path::absolute)
            .transpose()
            .map_err(|e| LinkError::Step {
                what: "--cloud-ca".into(),
                error: e.to_string(),
            })?;
        if let Some(ca) = &ca {
            verge_agent::http::set_ca_file(Some(ca)).map_err(|e| LinkError::Step {
                what: "--cloud-ca".into(),
                error: e.to_string(),
            })?;
        }
        let stored = verge_agent::load_credentials(&dir).map_err(step(format!(
            "reading the node's credentials in {}",
            dir.display()
        )))?;
        let storing = || format!("storing the node's credentials in {}", dir.display());
        let creds = match (join, stored) {
            (Some(token), stored) => match verge_agent::join(url, token).await {
                Ok(creds) => {
                    verge_agent::save_credentials(&dir, &creds).map_err(step(storing()))?;
                    eprintln!(
                        "joined {url} as node `{}`; credentials stored in {}",
                        creds.node_id,
                        dir.display()
                    );
                    creds
                }
                // The join command run again (the token is spent) or the
                // cloud down: a node that already joined this cloud runs as
                // before.
                Err(e) => match stored {
                    Some(creds) if creds.cloud_url == url => {
                        eprintln!(
                            "note: joining again failed ({e}); this node joined {url} before as \
                             `{}`: using its stored credentials",
                            creds.node_id
                        );
                        creds
                    }
                    _ => return Err(step(format!("joining the cloud center at {url}"))(e)),
                },
            },
            (None, Some(mut creds)) => {
                if creds.cloud_url != url {
                    tracing::warn!(
                        stored = %creds.cloud_url,
                        given = %url,
                        "the node joined another cloud URL; using the one given"
                    );
                    creds.cloud_url = url.to_owned();
                }
                match (&ca, &creds.ca_file) {
                    (Some(given), stored) if stored.as_ref() != Some(given) => {
                        creds.ca_file = Some(given.clone());
                        verge_agent::save_credentials(&dir, &creds).map_err(step(storing()))?;
                    }
                    (None, Some(stored)) => {
                        verge_agent::http::set_ca_file(Some(stored)).map_err(|e| {
                            LinkError::Step {
                                what: format!(
                                    "the CA file stored with the node's credentials in {}",
                                    dir.display()
                                ),
                                error: e.to_string(),
                            }
                        })?;
                    }
                    _ => {}
                }
                creds
            }
            (None, None) => {
                return Err(LinkError::NotJoined {
                    url: url.to_owned(),
                    dir,
                });
            }
        };
        Ok(CloudLink { creds, dir })
    }

    /// Complete a managed node's config: known by its cloud id unless
    /// named in its config, its cloud link pointed at the cloud's MQTT
    /// endpoint with the node's credentials, and the default forwards
    /// unless the config names some.
    pub fn configure(&self, cfg: &mut NodeConfig) -> Result<(), LinkError> {
        let c = &self.creds;
        if cfg.node.name == NodeConfig::default().node.name {
            cfg.node.name = c.node_id.clone();
        }
        let b = &mut cfg.bridge;
        b.enabled = true;
        b.url = c.mqtt_url.clone();
        // The CA given at join verifies the cloud's MQTT endpoint too,
        // unless the node's config names one.
        if b.ca_file.is_none() && c.mqtt_url.starts_with("mqtts://") {
            b.ca_file = c.ca_file.clone();
        }
        b.node = c.node_id.clone();
        b.username = Some(c.node_id.clone());
        b.password = Some(c.secret.clone());
        if b.forwards.is_empty() {
            b.forwards = CLOUD_FORWARDS
                .iter()
                .map(|(filter, lane)| verge_bridge::Forward {
                    filter: (*filter).to_owned(),
                    lane: (*lane).to_owned(),
                })
                .collect();
        }
        b.plan(&cfg.node.name).map_err(|e| LinkError::Step {
            what: "the cloud link made from the node's credentials".into(),
            error: e.to_string(),
        })?;
        Ok(())
    }
}

//! Joining the cloud with a one-time token, and the node's long-lived
//! credentials on disk (`<dir>/credentials.json`, mode 0600).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use verge_protocol::{JoinRequest, JoinResponse};

use crate::AgentError;
use crate::http;
use crate::store;

/// Time limit of the join request.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The credentials file in the agent's directory.
const CREDENTIALS_FILE: &str = "credentials.json";

/// What a node keeps after joining: where the cloud is and who it is there.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The cloud's base URL, e.g. `http://127.0.0.1:8080` (no trailing `/`).
    pub cloud_url: String,
    /// The node's id.
    pub node_id: String,
    /// The node's secret (HTTP bearer and MQTT password).
    pub secret: String,
    /// The cloud's MQTT endpoint for the bridge.
    pub mqtt_url: String,
    /// The CA file the cloud's certificates (`https://`, `mqtts://`) are
    /// verified against; `None` = Mozilla's roots. Absent in files written
    /// before TLS support.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The ed25519 public key (hex) releases of `verge` must be signed
    /// with (`--release-key` at join); `None`: the node takes no release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_key: Option<String>,
}

/// Join the cloud at `cloud_url` with a one-time `token`; returns the
/// node's credentials (not yet saved: see [`save_credentials`]). They
/// record the CA file set with [`http::set_ca_file`], if any.
pub async fn join(cloud_url: &str, token: &str) -> Result<Credentials, AgentError> {
    let cloud_url = cloud_url.trim_end_matches('/');
    let request = JoinRequest {
        token: token.to_owned(),
        hostname: hostname(),
        agent_version: crate::release::build_version().to_owned(),
    };
    let body = serde_json::to_value(&request)
        .map_err(|e| AgentError::Invalid(format!("join request: {e}")))?;
    let url = format!("{cloud_url}{}", verge_protocol::paths::JOIN);
    let (status, bytes) = http::request("POST", &url, None, Some(&body), JOIN_TIMEOUT).await?;
    if status == 401 {
        return Err(AgentError::JoinRefused(
            http::status_error(status, &bytes).to_string(),
        ));
    }
    let bytes = http::check(status, bytes)?;
    let answer: JoinResponse = serde_json::from_slice(&bytes)
        .map_err(|e| AgentError::Invalid(format!("the cloud's join answer is invalid: {e}")))?;
    Ok(Credentials {
        cloud_url: cloud_url.to_owned(),
        node_id: answer.node_id,
        secret: answer.secret,
        mqtt_url: answer.mqtt_url,
        ca_file: http::ca_file(),
        release_key: None,
    })
}

/// The credentials saved in `dir`, `None` if the node never joined.
pub fn load_credentials(dir: &Path) -> Result<Option<Credentials>, AgentError> {
    let path = dir.join(CREDENTIALS_FILE);
    let Some(bytes) = store::read_optional(&path)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| AgentError::Invalid(format!("{}: {e}", path.display())))
}

/// Save the credentials in `dir` (created if needed), readable by the
/// owner only.
pub fn save_credentials(dir: &Path, c: &Credentials) -> Result<(), AgentError> {
    let bytes = serde_json::to_vec_pretty(c)
        .map_err(|e| AgentError::Invalid(format!("credentials: {e}")))?;
    store::write_atomic(&dir.join(CREDENTIALS_FILE), &bytes, 0o600)
}

/// The machine's host name, for people; empty when unknown.
fn hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_default()
}

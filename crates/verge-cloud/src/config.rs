//! The cloud's configuration: serde structs with every default in one
//! documented place ([`Default`] impls below).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use verge_duration::HumanDuration;

/// The whole cloud configuration (`verge cloud --config …`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloudConfig {
    /// Storage, retention and node settings.
    pub cloud: CloudSection,
    /// The HTTP server (API, console, metrics).
    pub http: HttpSection,
    /// The MQTT endpoint for nodes.
    pub mqtt: MqttSection,
}

/// The `[cloud]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloudSection {
    /// Directory for the SQLite database and the function sandbox.
    pub data_dir: PathBuf,
    /// Database URL: empty = the SQLite file `<data_dir>/cloud.db` (created
    /// if missing), or `postgres://…`.
    pub database: String,
    /// Connections in the PostgreSQL pool of the API, the long polls and
    /// the ingest checks (at least 1; SQLite always uses one connection).
    pub database_connections: u32,
    /// The URL nodes reach the HTTP API at (used in join commands); empty =
    /// `http://` + `http.bind`.
    pub public_url: String,
    /// A node without a heartbeat for this long is shown offline.
    pub offline_after: HumanDuration,
    /// Upstream messages older than this are deleted.
    pub message_retention: HumanDuration,
    /// At most this many upstream messages are kept; the oldest go first.
    pub max_messages: u64,
    /// Largest function module accepted, in bytes.
    pub max_upload_bytes: usize,
    /// Largest component artifact (a `.tar.gz`) accepted, in bytes.
    pub max_artifact_bytes: usize,
    /// Largest release binary of `verge` accepted, in bytes.
    pub max_release_bytes: usize,
    /// This replica's id among the replicas on one database (1–64
    /// letters, digits, `.`, `_` or `-`); empty = a random id made at
    /// first start and kept in `<data_dir>/replica-id` (mode 0600).
    pub replica_id: String,
    /// A held desired-state long poll re-reads its node's version this
    /// often while wake-ups reach it (always on SQLite; on PostgreSQL while
    /// the `LISTEN` connection is up, else every second).
    pub long_poll_recheck: HumanDuration,
}

impl Default for CloudSection {
    fn default() -> Self {
        CloudSection {
            data_dir: PathBuf::from("./verge-cloud-data"),
            database: String::new(),
            database_connections: 32,
            public_url: String::new(),
            offline_after: HumanDuration(Duration::from_secs(15)),
            message_retention: HumanDuration(Duration::from_secs(24 * 3600)),
            max_messages: 1_000_000,
            max_upload_bytes: 16 << 20,
            max_artifact_bytes: 64 << 20,
            max_release_bytes: 128 << 20,
            replica_id: String::new(),
            long_poll_recheck: HumanDuration(Duration::from_secs(30)),
        }
    }
}

/// The `[http]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// Address of the HTTP server.
    pub bind: SocketAddr,
    /// Host names answered besides IP literals, `localhost` and the host
    /// of `cloud.public_url`; `*`: any.
    pub allowed_hosts: Vec<String>,
    /// Origins whose web pages may call the API besides the console's own.
    pub allowed_origins: Vec<String>,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
        }
    }
}

/// The `[mqtt]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttSection {
    /// Where nodes' MQTT traffic goes: the cloud's own endpoint
    /// (`embedded`) or an MQTT 5 broker (cluster) run beside it
    /// (`external`, see `[mqtt.external]`).
    pub mode: MqttMode,
    /// Address of the MQTT endpoint for nodes (embedded mode only).
    pub bind: SocketAddr,
    /// The URL nodes reach the MQTT endpoint at (told at join); empty =
    /// `mqtt.external.url` in external mode, else `mqtts://` +
    /// `mqtt.tls.bind` when TLS is on, else `mqtt://` + `mqtt.bind`.
    pub public_url: String,
    /// The same endpoint over TLS (embedded mode only).
    pub tls: MqttTlsSection,
    /// The external broker (`mode = "external"`).
    pub external: MqttExternalSection,
}

impl Default for MqttSection {
    fn default() -> Self {
        MqttSection {
            mode: MqttMode::Embedded,
            bind: SocketAddr::from(([127, 0, 0, 1], 1884)),
            public_url: String::new(),
            tls: MqttTlsSection::default(),
            external: MqttExternalSection::default(),
        }
    }
}

/// `mqtt.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MqttMode {
    /// The cloud serves the node MQTT endpoint itself (one process).
    #[default]
    Embedded,
    /// Nodes connect to an external MQTT 5 broker; every cloud replica
    /// consumes upstream through a shared subscription there and
    /// publishes downstream messages there.
    External,
}

/// The `[mqtt.external]` section: the cloud replicas' own connection to
/// the external broker (nodes get `mqtt.public_url`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttExternalSection {
    /// `mqtt://host:port` or `mqtts://host:port` (port 1883 / 8883 when
    /// left out).
    pub url: String,
    /// PEM file of the CA certificate(s) the broker's certificate must
    /// chain to (required for `mqtts://`).
    pub ca: Option<PathBuf>,
    /// The user the cloud replicas log in as; empty = none.
    pub username: String,
    /// A file holding that user's password (read at start; it must not
    /// be readable by group or others).
    pub password_file: Option<PathBuf>,
    /// The shared-subscription group of the replicas
    /// (`$share/{group}/nodes/+/up/#`).
    pub share_group: String,
    /// How long the broker keeps a replica's session (and the messages
    /// queued in it) after its connection ends.
    pub session_expiry: HumanDuration,
    /// A replica whose consumer has not been seen for this long has its
    /// broker session adopted (drained, then ended) by a live replica.
    pub adopt_after: HumanDuration,
    /// How node credentials reach the broker: `none` (the broker asks the
    /// cloud, `/api/broker/authn` and `/api/broker/authz`) or
    /// `mosquitto-dynsec` (the cloud writes them into Mosquitto's
    /// dynamic-security plugin at join, delete and start).
    pub provision: Provision,
    /// `mqtt://host:port` of the broker the dynamic-security commands go
    /// to (needed with `provision = "mosquitto-dynsec"`).
    pub admin_url: String,
    /// The dynamic-security admin user (`mosquitto_ctrl dynsec init FILE USER`).
    pub admin_username: String,
    /// File holding the admin user's password (one line; mode 0600).
    pub admin_password_file: Option<PathBuf>,
    /// The session expiry an adopter leaves a drained session with
    /// (`crate::external::adopt`): not a config key (always 60 s, longer
    /// than the consumer's reconnect backoff, outside tests, which
    /// shorten it so as not to wait a minute for the broker to drop it).
    #[doc(hidden)]
    #[serde(skip, default = "adopted_session_expiry")]
    pub adopted_session_expiry: Duration,
}

/// [`MqttExternalSection::adopted_session_expiry`]'s value.
fn adopted_session_expiry() -> Duration {
    Duration::from_secs(u64::from(crate::external::adopt::SESSION_END_EXPIRY_SECS))
}

impl Default for MqttExternalSection {
    fn default() -> Self {
        MqttExternalSection {
            url: String::new(),
            ca: None,
            username: String::new(),
            password_file: None,
            share_group: "verge-cloud".into(),
            session_expiry: HumanDuration(Duration::from_secs(24 * 3600)),
            adopt_after: HumanDuration(Duration::from_secs(15)),
            provision: Provision::None,
            admin_url: String::new(),
            admin_username: String::new(),
            admin_password_file: None,
            adopted_session_expiry: adopted_session_expiry(),
        }
    }
}

/// The `[mqtt.tls]` section: the node MQTT endpoint over TLS, served next
/// to the plain TCP one.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttTlsSection {
    /// Serve the endpoint over TLS too.
    pub enabled: bool,
    /// Address of the TLS endpoint.
    pub bind: SocketAddr,
    /// PEM certificate chain of the server (required when enabled).
    pub cert: Option<PathBuf>,
    /// PEM private key of the server (required when enabled).
    pub key: Option<PathBuf>,
}

impl Default for MqttTlsSection {
    fn default() -> Self {
        MqttTlsSection {
            enabled: false,
            bind: SocketAddr::from(([127, 0, 0, 1], 8885)),
            cert: None,
            key: None,
        }
    }
}

/// `mqtt.external.provision`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Provision {
    /// Nothing is written to the broker.
    #[default]
    None,
    /// Node clients and roles in Mosquitto's dynamic-security plugin.
    MosquittoDynsec,
}

impl CloudConfig {
    /// The public HTTP URL, without a trailing slash.
    pub fn http_url(&self) -> String {
        if self.cloud.public_url.is_empty() {
            format!("http://{}", self.http.bind)
        } else {
            self.cloud.public_url.trim_end_matches('/').to_owned()
        }
    }

    /// The public MQTT URL (the external broker in external mode, else
    /// the TLS endpoint when it is on).
    pub fn mqtt_url(&self) -> String {
        if self.mqtt.public_url.is_empty() {
            if self.mqtt.mode == MqttMode::External {
                self.mqtt.external.url.clone()
            } else if self.mqtt.tls.enabled {
                format!("mqtts://{}", self.mqtt.tls.bind)
            } else {
                format!("mqtt://{}", self.mqtt.bind)
            }
        } else {
            self.mqtt.public_url.clone()
        }
    }

    /// The database URL to connect to.
    pub fn database_url(&self) -> String {
        if self.cloud.database.is_empty() {
            format!(
                "sqlite://{}?mode=rwc",
                self.cloud.data_dir.join("cloud.db").display()
            )
        } else {
            self.cloud.database.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c: CloudConfig = serde_json::from_str("{}").unwrap_or_default();
        assert_eq!(c, CloudConfig::default());
        assert_eq!(c.http_url(), "http://127.0.0.1:8080");
        assert_eq!(c.mqtt_url(), "mqtt://127.0.0.1:1884");
        assert!(c.database_url().ends_with("cloud.db?mode=rwc"));
        assert!(serde_json::from_str::<CloudConfig>(r#"{"cloud":{"nope":1}}"#).is_err());
        let c: CloudConfig =
            serde_json::from_str(r#"{"cloud":{"offline_after":"5s"}}"#).unwrap_or_default();
        assert_eq!(c.cloud.offline_after.get(), Duration::from_secs(5));
    }

    #[test]
    fn the_join_answer_prefers_the_tls_endpoint_when_it_is_on() {
        let mut c: CloudConfig = serde_json::from_str(
            r#"{"mqtt":{"tls":{"enabled":true,"cert":"c.pem","key":"k.pem"}}}"#,
        )
        .unwrap_or_default();
        assert_eq!(c.mqtt.tls.cert, Some(PathBuf::from("c.pem")));
        assert_eq!(c.mqtt_url(), "mqtts://127.0.0.1:8885");
        c.mqtt.public_url = "mqtts://cloud.example.com:8885".into();
        assert_eq!(c.mqtt_url(), "mqtts://cloud.example.com:8885");
        assert!(serde_json::from_str::<CloudConfig>(r#"{"mqtt":{"tls":{"nope":1}}}"#).is_err());
    }

    #[test]
    fn provisioning_is_off_unless_named() {
        let c: CloudConfig = serde_json::from_str("{}").unwrap_or_default();
        assert_eq!(c.mqtt.external.provision, Provision::None);
        let c: CloudConfig = serde_json::from_str(
            r#"{"mqtt":{"external":{"provision":"mosquitto-dynsec","admin_username":"admin"}}}"#,
        )
        .unwrap_or_default();
        assert_eq!(c.mqtt.external.provision, Provision::MosquittoDynsec);
        assert!(
            serde_json::from_str::<CloudConfig>(r#"{"mqtt":{"external":{"provision":"http"}}}"#)
                .is_err()
        );
    }

    #[test]
    fn external_mode_tells_nodes_the_external_broker() {
        let mut c: CloudConfig = serde_json::from_str(
            r#"{"mqtt":{"mode":"external","external":{"url":"mqtt://broker:1883"}}}"#,
        )
        .unwrap_or_default();
        assert_eq!(c.mqtt.mode, MqttMode::External);
        assert_eq!(c.mqtt.external.share_group, "verge-cloud");
        assert_eq!(c.mqtt_url(), "mqtt://broker:1883");
        c.mqtt.public_url = "mqtts://nodes.example.com:8883".into();
        assert_eq!(c.mqtt_url(), "mqtts://nodes.example.com:8883");
        assert!(serde_json::from_str::<CloudConfig>(r#"{"mqtt":{"mode":"cluster"}}"#).is_err());
        assert!(
            serde_json::from_str::<CloudConfig>(r#"{"mqtt":{"external":{"nope":1}}}"#).is_err()
        );
    }
}

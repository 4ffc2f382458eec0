//! External broker mode (`mqtt.mode = "external"`): nodes connect to an
//! MQTT 5 broker (cluster) run beside the cloud instead of the cloud's
//! in-process endpoint, and every cloud replica
//!
//! - consumes upstream through the shared subscription
//!   `$share/{group}/nodes/+/up/#` on a persistent session with manual
//!   acknowledgement: a message is acknowledged only after the batch
//!   holding it committed ([`consumer`], fed into `ingest::run`);
//! - adopts the session of a replica that died with messages in flight
//!   (the broker keeps them in the dead member's session instead of
//!   handing them to another member; [`adopt`]);
//! - publishes commands, shadows and store queries on the broker, and
//!   receives store replies on a plain subscription of its own
//!   (`crate::downlink`).
//!
//! Config is resolved here once at start ([`Plan::resolve`]): every error
//! names its key.

pub mod adopt;
pub mod consumer;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::MqttOptions;

use crate::config::{CloudConfig, MqttMode};
use crate::error::CloudError;

/// The upstream filter every replica shares, without the `$share/` part.
pub fn up_filter() -> String {
    verge_protocol::topics::up_filter_all()
}

/// The resolved `[mqtt.external]` section.
#[derive(Clone)]
pub struct Plan {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS client config for `mqtts://`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// User and password, when a user is configured.
    pub credentials: Option<(String, String)>,
    /// The shared-subscription group.
    pub share_group: String,
    /// Session expiry interval of the consumer's session, seconds.
    pub session_expiry_secs: u32,
    /// When another replica's unseen session is adopted.
    pub adopt_after: Duration,
    /// The expiry an adopted session is left with, seconds
    /// ([`adopt::SESSION_END_EXPIRY_SECS`] but in tests).
    pub adopted_expiry_secs: u32,
    /// This replica's id.
    pub replica: String,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls.is_some())
            .field("share_group", &self.share_group)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

fn config_error(key: &str, why: impl std::fmt::Display) -> CloudError {
    CloudError::Other(format!("{key}: {why}"))
}

impl Plan {
    /// Check `[mqtt]` for external mode; `None` in embedded mode. Reads
    /// the password and CA files and the replica id.
    pub fn resolve(cfg: &CloudConfig) -> Result<Option<Plan>, CloudError> {
        let m = &cfg.mqtt;
        if m.mode != MqttMode::External {
            return Ok(None);
        }
        let x = &m.external;
        if m.tls.enabled {
            return Err(config_error(
                "mqtt.tls.enabled",
                "the in-process endpoint is not served in external mode (mqtt.mode = \"external\"); configure TLS on the external broker",
            ));
        }
        let (tls, rest) = if let Some(rest) = x.url.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = x.url.strip_prefix("mqtt://") {
            (false, rest)
        } else if x.url.is_empty() {
            return Err(config_error(
                "mqtt.external.url",
                "required in external mode (mqtt://host:port or mqtts://host:port)",
            ));
        } else {
            return Err(config_error(
                "mqtt.external.url",
                format!("`{}` is not mqtt://host:port or mqtts://host:port", x.url),
            ));
        };
        let (host, port) =
            parse_host_port(rest, if tls { 8883 } else { 1883 }).ok_or_else(|| {
                config_error(
                    "mqtt.external.url",
                    format!("`{}` is not mqtt://host:port or mqtts://host:port", x.url),
                )
            })?;
        let tls = match (tls, &x.ca) {
            (true, Some(ca)) => Some(client_tls(ca)?),
            (true, None) => {
                return Err(config_error(
                    "mqtt.external.ca",
                    "required for an mqtts:// url (the PEM file of the broker's CA)",
                ));
            }
            (false, Some(_)) => {
                return Err(config_error(
                    "mqtt.external.ca",
                    "set, but mqtt.external.url is not mqtts://",
                ));
            }
            (false, None) => None,
        };
        let credentials = match (&x.username, &x.password_file) {
            (u, Some(file)) if !u.is_empty() => Some((
                u.clone(),
                crate::broker_auth::dynsec::read_password(
                    "mqtt.external.password_file",
                    Some(file),
                )?,
            )),
            (u, None) if !u.is_empty() => {
                return Err(config_error(
                    "mqtt.external.password_file",
                    "required when mqtt.external.username is set",
                ));
            }
            (_, Some(_)) => {
                return Err(config_error(
                    "mqtt.external.username",
                    "required when mqtt.external.password_file is set",
                ));
            }
            _ => None,
        };
        let g = &x.share_group;
        if g.is_empty() || g.contains(['/', '+', '#']) {
            return Err(config_error(
                "mqtt.external.share_group",
                format!("`{g}` must be a non-empty name without `/`, `+` or `#`"),
            ));
        }
        let session_expiry_secs = u32::try_from(x.session_expiry.get().as_secs())
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| {
                config_error(
                    "mqtt.external.session_expiry",
                    "must be between 1s and about 136 years",
                )
            })?;
        if x.adopt_after.get() < Duration::from_secs(3) {
            return Err(config_error(
                "mqtt.external.adopt_after",
                "must be at least 3s (replicas refresh their record every second)",
            ));
        }
        let replica = replica_id(cfg)?;
        Ok(Some(Plan {
            host,
            port,
            tls,
            credentials,
            share_group: g.clone(),
            session_expiry_secs,
            adopt_after: x.adopt_after.get(),
            adopted_expiry_secs: u32::try_from(x.adopted_session_expiry.as_secs())
                .unwrap_or(adopt::SESSION_END_EXPIRY_SECS)
                .max(1),
            replica,
        }))
    }

    /// The shared upstream subscription.
    pub fn shared_filter(&self) -> String {
        format!("$share/{}/{}", self.share_group, up_filter())
    }

    /// This replica's consumer client id (its persistent session).
    pub fn consumer_client_id(&self) -> String {
        format!("verge-cloud-{}", self.replica)
    }

    /// The client id of this replica's downlink connection (no session).
    pub fn downlink_client_id(&self) -> String {
        format!("verge-cloud-{}-down", self.replica)
    }

    /// MQTT 5 options to connect as `client_id`.
    pub fn options(&self, client_id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, self.host.clone(), self.port);
        o.set_keep_alive(Duration::from_secs(30));
        // rumqttc refuses incoming packets over 10 KiB by default (and
        // the connection would fail again on every resend): take what the
        // in-process endpoint takes from nodes.
        o.set_max_packet_size(Some(verge_broker::BrokerConfig::default().max_packet_size));
        if let Some((u, p)) = &self.credentials {
            o.set_credentials(u.clone(), p.clone());
        }
        if let Some(tls) = &self.tls {
            o.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        o
    }
}

/// `host:port`, `host` or `[v6]:port`.
fn parse_host_port(s: &str, default_port: u16) -> Option<(String, u16)> {
    let s = s.trim_end_matches('/');
    if s.is_empty() || s.contains(['/', '@', '?', '#']) {
        return None;
    }
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (h, rest) = v6.split_once(']')?;
        match rest {
            "" => (h, None),
            r => (h, Some(r.strip_prefix(':')?)),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => p.parse().ok().filter(|p| *p != 0)?,
        None => default_port,
    };
    Some((host.to_owned(), port))
}

/// A rustls client config trusting the CA certificates in `ca` (ring).
fn client_tls(ca: &Path) -> Result<Arc<rustls::ClientConfig>, CloudError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let key = "mqtt.external.ca";
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| config_error(key, format!("{}: {e}", ca.display())))?;
    if certs.is_empty() {
        return Err(config_error(
            key,
            format!("{}: no PEM certificate in it", ca.display()),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots
            .add(c)
            .map_err(|e| config_error(key, format!("{}: {e}", ca.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(key, e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// This replica's id: `cloud.replica_id`, else the one kept in
/// `<data_dir>/replica-id` (`crate::replicas::resolve_id`).
pub fn replica_id(cfg: &CloudConfig) -> Result<String, CloudError> {
    crate::replicas::resolve_id(&cfg.cloud.replica_id, &cfg.cloud.data_dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn cfg(toml_json: &str, dir: &Path) -> CloudConfig {
        let mut c: CloudConfig = serde_json::from_str(toml_json).unwrap_or_default();
        c.cloud.data_dir = dir.to_owned();
        c
    }

    fn err(c: &CloudConfig) -> String {
        match Plan::resolve(c) {
            Err(e) => e.to_string(),
            Ok(p) => format!("resolved: {p:?}"),
        }
    }

    #[test]
    fn host_and_port() {
        assert_eq!(parse_host_port("b:1", 9), Some(("b".into(), 1)));
        assert_eq!(parse_host_port("b", 9), Some(("b".into(), 9)));
        assert_eq!(parse_host_port("[::1]:7", 9), Some(("::1".into(), 7)));
        assert_eq!(parse_host_port("b:x", 9), None);
        assert_eq!(parse_host_port("b:0", 9), None);
        assert_eq!(parse_host_port("u@b:1", 9), None);
        assert_eq!(parse_host_port(":1", 9), None);
    }

    #[test]
    fn bad_settings_name_their_key() {
        let d = tempfile::tempdir().expect("tempdir");
        let ext = |x: &str| format!(r#"{{"mqtt":{{"mode":"external","external":{x}}}}}"#);
        assert!(err(&cfg(&ext("{}"), d.path())).starts_with("mqtt.external.url: required"));
        assert!(
            err(&cfg(&ext(r#"{"url":"http://b"}"#), d.path())).starts_with("mqtt.external.url:")
        );
        assert!(
            err(&cfg(&ext(r#"{"url":"mqtts://b"}"#), d.path())).starts_with("mqtt.external.ca:")
        );
        assert!(
            err(&cfg(
                &ext(r#"{"url":"mqtt://b","share_group":"a/b"}"#),
                d.path()
            ))
            .starts_with("mqtt.external.share_group:")
        );
        let pw = d.path().join("pw");
        // One reader for every password file: the first line, trimmed
        // (the hooks check the cloud user's password read the same way).
        std::fs::write(&pw, " secret \r\nsecond line\n").expect("write");
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let with_pw = ext(&format!(
            r#"{{"url":"mqtt://b:1884","username":"cloud","password_file":"{}"}}"#,
            pw.display()
        ));
        let e = err(&cfg(&with_pw, d.path()));
        assert!(
            e.starts_with("mqtt.external.password_file:") && e.contains("mode 644"),
            "{e}"
        );
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let plan = Plan::resolve(&cfg(&with_pw, d.path()))
            .expect("resolves")
            .expect("external");
        assert_eq!((plan.host.as_str(), plan.port), ("b", 1884));
        assert_eq!(
            plan.credentials,
            Some(("cloud".to_owned(), "secret".to_owned()))
        );
        assert_eq!(
            plan.credentials.as_ref().map(|c| c.1.clone()),
            crate::broker_auth::dynsec::read_password("k", Some(&pw)).ok()
        );
        assert_eq!(plan.shared_filter(), "$share/verge-cloud/nodes/+/up/#");
        let no_pw = ext(r#"{"url":"mqtt://b","username":"cloud"}"#);
        assert!(
            err(&cfg(&no_pw, d.path())).starts_with("mqtt.external.password_file: required"),
            "{}",
            err(&cfg(&no_pw, d.path()))
        );
        // The replica id is kept: the consumer's session survives a restart.
        let again = Plan::resolve(&cfg(&with_pw, d.path()))
            .expect("resolves")
            .expect("external");
        assert_eq!(plan.consumer_client_id(), again.consumer_client_id());
        let tls_on =
            r#"{"mqtt":{"mode":"external","tls":{"enabled":true},"external":{"url":"mqtt://b"}}}"#;
        assert!(err(&cfg(tls_on, d.path())).starts_with("mqtt.tls.enabled:"));
        assert!(matches!(Plan::resolve(&cfg("{}", d.path())), Ok(None)));
    }
}

//! The node's MQTT side of its components: each running component gets its
//! own credentials on the node's broker ([`Bus::grant`], [`Bus::revoke`]),
//! its heartbeat topic is watched for the `mqtt` health check, and the
//! node answers the components' requests on `$verge/rpc/<name>/<method>`
//! ([`rpc`](super::rpc)).
//!
//! Credentials: username and client id `component:<name>` (device ids of
//! the cloud are letters, digits, `-` and `_`, so they cannot clash; a
//! device of the node's own devices file with that username is shadowed),
//! a random 256-bit secret made at every start and kept only as an argon2
//! hash in the broker's local users (never logged or shown), and an ACL of
//! the component's own topics, its RPC topics and its spec's `mqtt`
//! rights, nothing else. The client id is pinned: the broker refuses
//! another one for that username, and no other client may take it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use verge_broker::auth::{AclAction, AclRule, Device, hash_password};
use verge_broker::config::AclPolicy;
use verge_broker::{Authenticator, BrokerHandle};
use verge_protocol::{ComponentSpec, HealthKind};
use verge_tsdb::Tsdb;

use super::rpc::RpcStats;

/// The prefix of a component's username and client id.
pub const USER_PREFIX: &str = "component:";
/// The prefix of the node's RPC topics: `$verge/rpc/<component>/<method>`.
pub const RPC_PREFIX: &str = "$verge/rpc/";

/// A component's username and client id.
pub fn username(component: &str) -> String {
    format!("{USER_PREFIX}{component}")
}

/// A component's heartbeat topic.
pub fn heartbeat_topic(spec: &ComponentSpec) -> String {
    spec.health
        .topic
        .clone()
        .unwrap_or_else(|| format!("components/{}/heartbeat", spec.name))
}

/// What a component gets to connect to the node's broker. `Debug` hides
/// the password.
#[derive(Clone)]
pub struct Credentials {
    /// `mqtt://127.0.0.1:<port>` of the node's first plain TCP listener
    /// (else its first listener, `mqtts://`, `ws://` or `wss://`); none
    /// when the node has no MQTT listener.
    pub url: Option<String>,
    /// `component:<name>`.
    pub username: String,
    /// The secret, 64 hex digits.
    pub password: String,
    /// `component:<name>`: the only client id the broker takes for it.
    pub client_id: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .field("client_id", &self.client_id)
            .finish()
    }
}

/// What the node knows of a component's liveness over MQTT.
#[derive(Debug, Default)]
pub struct Heartbeat {
    state: Mutex<BeatState>,
}

#[derive(Debug, Default)]
struct BeatState {
    /// The last heartbeat message or `health.report` with `healthy: true`.
    last: Option<Instant>,
    /// The message of a `health.report` with `healthy: false`, until one
    /// with `healthy: true`.
    unhealthy: Option<String>,
}

impl Heartbeat {
    /// A message arrived on the heartbeat topic.
    pub fn beat(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.last = Some(Instant::now());
        }
    }

    /// The component reported its health.
    pub fn report(&self, healthy: bool, message: Option<String>) {
        if let Ok(mut s) = self.state.lock() {
            if healthy {
                s.last = Some(Instant::now());
                s.unhealthy = None;
            } else {
                s.unhealthy = Some(message.unwrap_or_else(|| "no message".to_owned()));
            }
        }
    }

    /// The `mqtt` health probe: passes while the component has not
    /// reported itself unhealthy and its last heartbeat is at most
    /// `within` old.
    pub fn check(&self, topic: &str, within: Duration) -> Result<(), String> {
        let s = self
            .state
            .lock()
            .map_err(|_| "heartbeat state poisoned".to_owned())?;
        if let Some(m) = &s.unhealthy {
            return Err(format!("the component reports unhealthy: {m}"));
        }
        match s.last {
            Some(t) if t.elapsed() <= within => Ok(()),
            Some(t) => Err(format!(
                "no heartbeat on {topic} for {} ms",
                t.elapsed().as_millis()
            )),
            None => Err(format!("no heartbeat on {topic} yet")),
        }
    }
}

/// Why a component's credentials could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The secret or its hash could not be made, or the broker refused it.
    #[error("mqtt credentials: {0}")]
    Credentials(String),
}

/// One component's grant.
pub(super) struct Grant {
    /// Its spec as granted (the RPC service answers `config.get` from it).
    pub(super) spec: ComponentSpec,
    pub(super) heartbeat: Arc<Heartbeat>,
    watch: Option<JoinHandle<()>>,
}

impl Drop for Grant {
    fn drop(&mut self) {
        if let Some(w) = self.watch.take() {
            w.abort();
        }
    }
}

/// The node's name and version, for `node.info`.
#[derive(Debug, Clone)]
pub struct NodeIdent {
    /// `node.name`.
    pub name: String,
    /// The node's version.
    pub version: String,
}

/// The MQTT side of the components; clones share it.
#[derive(Clone)]
pub struct Bus {
    pub(super) inner: Arc<BusInner>,
}

pub(super) struct BusInner {
    pub(super) auth: Authenticator,
    pub(super) broker: BrokerHandle,
    /// The URL components connect to: `None` until the node serves its
    /// listeners, then the URL or why there is none.
    url: watch::Sender<Option<Result<String, String>>>,
    pub(super) grants: Mutex<HashMap<String, Grant>>,
    pub(super) node: NodeIdent,
    pub(super) store: Option<Arc<Tsdb>>,
    pub(super) stats: RpcStats,
    rpc_task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for BusInner {
    fn drop(&mut self) {
        if let Ok(mut t) = self.rpc_task.lock()
            && let Some(t) = t.take()
        {
            t.abort();
        }
    }
}

impl Bus {
    /// The bus over the node's broker: sets the local rule that keeps
    /// every other client off `$verge/#` and starts the RPC service. Call
    /// inside a tokio runtime.
    pub async fn start(
        auth: Authenticator,
        broker: BrokerHandle,
        node: NodeIdent,
        store: Option<Arc<Tsdb>>,
    ) -> Result<Bus, verge_broker::error::BrokerError> {
        auth.set_local_rules(vec![AclRule {
            permission: AclPolicy::Deny,
            action: AclAction::All,
            topic: "$verge/#".to_owned(),
        }]);
        let bus = Bus {
            inner: Arc::new(BusInner {
                auth,
                broker,
                url: watch::channel(None).0,
                grants: Mutex::new(HashMap::new()),
                node,
                store,
                stats: RpcStats::default(),
                rpc_task: Mutex::new(None),
            }),
        };
        let task = super::rpc::start(&bus).await?;
        if let Ok(mut t) = bus.inner.rpc_task.lock() {
            *t = Some(task);
        }
        Ok(bus)
    }

    /// Say where components connect (the node serves its listeners now),
    /// or why they cannot.
    pub fn set_url(&self, url: Result<String, String>) {
        self.inner.url.send_replace(Some(url));
    }

    /// Wait until the node serves its listeners; the URL, or why there is
    /// none.
    pub async fn url(&self) -> Result<String, String> {
        let mut rx = self.inner.url.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(v) => v.clone().unwrap_or_else(|| Err("no url".to_owned())),
            Err(_) => Err("the node stopped".to_owned()),
        }
    }

    /// Make fresh credentials for `spec` (a new secret; an earlier one of
    /// the same component stops working and its connections are closed),
    /// register them with the broker with the component's ACL, and watch
    /// its heartbeat topic when its health check is `mqtt`. Call at every
    /// start of the component's process (the supervisor does).
    pub async fn grant(&self, spec: &ComponentSpec) -> Result<Credentials, BusError> {
        let user = username(&spec.name);
        let secret = random_secret()?;
        let hashed = {
            let secret = secret.clone();
            tokio::task::spawn_blocking(move || hash_password(&secret))
                .await
                .map_err(|e| BusError::Credentials(e.to_string()))?
                .map_err(|e| BusError::Credentials(e.to_string()))?
        };
        let had = self
            .inner
            .grants
            .lock()
            .map(|g| g.contains_key(&spec.name))
            .unwrap_or(false);
        if had {
            let _ = self.inner.broker.disconnect_user(&user).await;
        }
        self.inner
            .auth
            .set_local_user(Device {
                username: user.clone(),
                password_hash: Some(hashed),
                client_id: Some(user.clone()),
                acl: component_acl(spec),
            })
            .map_err(|e| BusError::Credentials(e.to_string()))?;
        let heartbeat = Arc::new(Heartbeat::default());
        let watch = match spec.health.kind {
            HealthKind::Mqtt => {
                let topic = heartbeat_topic(spec);
                match self.inner.broker.subscribe(&topic, 16).await {
                    Ok(mut sub) => {
                        let hb = heartbeat.clone();
                        Some(tokio::spawn(async move {
                            while sub.recv().await.is_some() {
                                hb.beat();
                            }
                        }))
                    }
                    Err(e) => {
                        tracing::warn!(component = %spec.name, "cannot watch heartbeat topic {topic}: {e}");
                        None
                    }
                }
            }
            _ => None,
        };
        if let Ok(mut g) = self.inner.grants.lock() {
            g.insert(
                spec.name.clone(),
                Grant {
                    spec: spec.clone(),
                    heartbeat,
                    watch,
                },
            );
        }
        let url = match self.inner.url.borrow().clone() {
            Some(Ok(u)) => Some(u),
            _ => None,
        };
        Ok(Credentials {
            url,
            username: user.clone(),
            password: secret,
            client_id: user,
        })
    }

    /// Remove `component`'s credentials and close its connections (a
    /// removed component, or the node stops).
    pub async fn revoke(&self, component: &str) {
        let user = username(component);
        self.inner.auth.remove_local_user(&user);
        if let Ok(mut g) = self.inner.grants.lock() {
            g.remove(component);
        }
        match self.inner.broker.disconnect_user(&user).await {
            Ok(0) | Err(_) => {}
            Ok(n) => tracing::info!(component, connections = n, "component credentials revoked"),
        }
    }

    /// The heartbeat state of `component`, while it has credentials.
    pub fn heartbeat(&self, component: &str) -> Option<Arc<Heartbeat>> {
        self.inner
            .grants
            .lock()
            .ok()
            .and_then(|g| g.get(component).map(|x| x.heartbeat.clone()))
    }

    /// Append the `verge_component_rpc_*` metrics.
    pub fn render_metrics(&self, out: &mut String) {
        self.inner.stats.render(out);
    }
}

/// A component's own rules: `components/<name>/#` (both ways),
/// `$verge/rpc/<name>/#` (publish), its heartbeat topic (publish), its
/// spec's `mqtt.publish` and `mqtt.subscribe`; then deny everything else.
pub fn component_acl(spec: &ComponentSpec) -> Vec<AclRule> {
    let rule = |action, topic: String| AclRule {
        permission: AclPolicy::Allow,
        action,
        topic,
    };
    let name = &spec.name;
    let mut acl = vec![
        rule(AclAction::All, format!("components/{name}/#")),
        rule(AclAction::Publish, format!("{RPC_PREFIX}{name}/#")),
    ];
    if spec.health.kind == HealthKind::Mqtt
        && let Some(t) = &spec.health.topic
    {
        acl.push(rule(AclAction::Publish, t.clone()));
    }
    for t in &spec.mqtt.publish {
        acl.push(rule(AclAction::Publish, t.clone()));
    }
    for t in &spec.mqtt.subscribe {
        acl.push(rule(AclAction::Subscribe, t.clone()));
    }
    acl.push(AclRule {
        permission: AclPolicy::Deny,
        action: AclAction::All,
        topic: "#".to_owned(),
    });
    acl
}

fn random_secret() -> Result<String, BusError> {
    use rand_core::RngCore;
    let mut b = [0u8; 32];
    rand_core::OsRng
        .try_fill_bytes(&mut b)
        .map_err(|e| BusError::Credentials(format!("no randomness: {e}")))?;
    Ok(hex::encode(b))
}

/// One bound MQTT listener: its kind (`tcp`, `tls`, `ws`, `wss`), address,
/// and WebSocket path (empty for the others).
pub type ListenerAddr = (&'static str, std::net::SocketAddr, String);

/// The URL components get from the node's bound MQTT listeners: the first
/// plain TCP one, else the first one (with its WebSocket path); an
/// unspecified bind address (`0.0.0.0`, `::`) becomes the loopback
/// address.
pub fn listener_url(listeners: &[ListenerAddr]) -> Result<String, String> {
    let pick = listeners
        .iter()
        .find(|(k, _, _)| *k == "tcp")
        .or_else(|| listeners.first())
        .ok_or_else(|| {
            "the node has no MQTT listener; components get no VERGE_MQTT_URL".to_owned()
        })?;
    let (kind, mut addr, path) = pick.clone();
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let scheme = match kind {
        "tcp" => "mqtt",
        "tls" => "mqtts",
        other => other,
    };
    Ok(format!("{scheme}://{addr}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_prefers_tcp_and_loopback() {
        let a = |s: &str| s.parse::<std::net::SocketAddr>().expect("addr");
        assert_eq!(
            listener_url(&[
                ("ws", a("127.0.0.1:9001"), "/mqtt".into()),
                ("tcp", a("0.0.0.0:1883"), String::new())
            ]),
            Ok("mqtt://127.0.0.1:1883".to_owned())
        );
        assert_eq!(
            listener_url(&[("tls", a("[::]:8883"), String::new())]),
            Ok("mqtts://[::1]:8883".to_owned())
        );
        assert_eq!(
            listener_url(&[("ws", a("127.0.0.1:9001"), "/mqtt".into())]),
            Ok("ws://127.0.0.1:9001/mqtt".to_owned())
        );
        assert!(listener_url(&[]).is_err());
    }

    #[test]
    fn heartbeat_check_follows_beats_and_reports() {
        let hb = Heartbeat::default();
        assert!(hb.check("t", Duration::from_secs(5)).is_err());
        hb.beat();
        assert!(hb.check("t", Duration::from_secs(5)).is_ok());
        hb.report(false, Some("sensor gone".into()));
        let e = hb
            .check("t", Duration::from_secs(5))
            .expect_err("unhealthy");
        assert!(e.contains("sensor gone"), "{e}");
        hb.beat();
        assert!(
            hb.check("t", Duration::from_secs(5)).is_err(),
            "a beat does not clear a report"
        );
        hb.report(true, None);
        assert!(hb.check("t", Duration::from_secs(5)).is_ok());
    }

    #[test]
    fn credentials_debug_hides_the_secret() {
        let c = Credentials {
            url: None,
            username: "component:a".into(),
            password: "topsecret".into(),
            client_id: "component:a".into(),
        };
        assert!(!format!("{c:?}").contains("topsecret"));
    }
}

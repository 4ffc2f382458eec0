//! Broker configuration: serde structs with documented defaults.
//!
//! Every struct denies unknown fields so a misspelt key is an error that names
//! the key instead of a silently ignored setting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;

/// The `[broker]` section of the node config.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// Most client connections accepted at once; more are refused with
    /// CONNACK "server busy".
    pub max_connections: usize,
    /// Largest MQTT packet accepted from a client, in bytes (advertised to
    /// 5.0 clients as Maximum Packet Size).
    pub max_packet_size: u32,
    /// Most unacknowledged QoS 1/2 messages in flight towards one client, and
    /// the Receive Maximum advertised to 5.0 clients.
    pub max_inflight: u16,
    /// Most messages queued for one session (connected but slow, or offline
    /// and persistent); beyond it messages are dropped and counted.
    pub max_queued_messages: usize,
    /// Most subscriptions one session holds; a SUBSCRIBE filter beyond it
    /// is refused (5.0: 0x97 quota exceeded, 3.1.1: 0x80 failure) and
    /// counted. Subscribing again to a filter the session holds is not a
    /// new subscription.
    pub max_subscriptions: usize,
    /// How long a message waits for room in a connected session's full queue
    /// (slowing publishers down) before the session is marked slow and its
    /// messages are dropped and counted until its queue is half empty.
    pub slow_consumer_wait: HumanDuration,
    /// Highest keep alive a 5.0 client may ask for, in seconds; one asking
    /// for more (or for 0, off) is told this value as Server Keep Alive in
    /// the CONNACK and held to it. 3.1.1 has no way to tell the client, so
    /// a 3.1.1 client keeps the keep alive it asked for. 0 = accept
    /// whatever a client asks for, including 0.
    pub max_keep_alive: u16,
    /// Time a new connection has to send CONNECT.
    pub connect_timeout: HumanDuration,
    /// Longest a disconnected persistent session is kept (caps 5.0 Session
    /// Expiry Interval and applies to 3.1.1 clean-session=false sessions).
    pub max_session_expiry: HumanDuration,
    /// Most persistent sessions (5.0 Session Expiry Interval above 0, 3.1.1
    /// clean-session=false) held, connected or not: every connected one
    /// becomes an offline one when its client goes away. A CONNECT that would
    /// add one more is refused (5.0: CONNACK 0x97 quota exceeded, 3.1.1:
    /// return code 3 server unavailable) and counted; a client resuming its
    /// own persistent session is never refused.
    pub max_persistent_sessions: usize,
    /// Topic Alias Maximum advertised to 5.0 clients (0 = no aliases).
    pub max_topic_alias: u16,
    /// Most retained messages kept; further new retained topics are dropped
    /// and counted.
    pub max_retained: usize,
    /// Messages per second one client may publish; 0 = unlimited. Excess
    /// publishes are delayed (the connection is read more slowly).
    pub max_publish_rate: u32,
    /// Interval of `$SYS/broker/...` statistics; "0s" turns them off.
    pub sys_interval: HumanDuration,
    /// Accept clients without credentials.
    pub allow_anonymous: bool,
    /// How a client id is bound to the username (or certificate name) a
    /// client authenticated with: "prefix" (the id is the username or
    /// starts with `{username}:`), "exact" (the id is the username) or
    /// "off". A CONNECT breaking it is refused (5.0: CONNACK 0x85 client
    /// identifier not valid, 3.1.1: return code 2 identifier rejected) and
    /// counted. Devices whose registry entry pins a `client_id` use that id;
    /// anonymous clients may not use an id a registered username would own.
    /// Whatever the setting, a session belongs to the username that made
    /// it: a CONNECT with another identity (or none) is refused the same way
    /// instead of taking it over.
    pub client_id_binding: ClientIdBinding,
    /// Device registry file (TOML) with usernames, argon2 password hashes and
    /// per-device ACLs; optional.
    pub devices_file: Option<PathBuf>,
    /// What happens when no ACL rule matches: "allow" or "deny".
    pub acl_default: AclPolicy,
    /// Listeners; each is optional.
    pub listeners: ListenersConfig,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            max_connections: 100_000,
            max_packet_size: 1024 * 1024,
            max_inflight: 256,
            max_queued_messages: 10_000,
            max_subscriptions: 1000,
            slow_consumer_wait: HumanDuration(Duration::from_millis(500)),
            max_keep_alive: 300,
            connect_timeout: HumanDuration(Duration::from_secs(10)),
            max_session_expiry: HumanDuration(Duration::from_secs(24 * 3600)),
            max_persistent_sessions: 100_000,
            max_topic_alias: 256,
            max_retained: 100_000,
            max_publish_rate: 0,
            sys_interval: HumanDuration(Duration::from_secs(10)),
            allow_anonymous: false,
            client_id_binding: ClientIdBinding::Prefix,
            devices_file: None,
            acl_default: AclPolicy::Allow,
            listeners: ListenersConfig::default(),
        }
    }
}

/// Default decision of the ACL.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AclPolicy {
    /// Permit.
    Allow,
    /// Refuse.
    Deny,
}

/// How a client id is bound to the authenticated username
/// (`broker.client_id_binding`).
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientIdBinding {
    /// The client id is the username, or the username followed by
    /// [`CLIENT_ID_SEPARATOR`] and anything.
    Prefix,
    /// The client id is the username.
    Exact,
    /// Any client id; sessions still belong to the username that made them.
    Off,
}

/// What follows the username in a client id under prefix binding: `dev1:a`
/// is `dev1`'s, `dev10` and `dev1-a` are not. Not `-`, which usernames
/// often hold (`edge-1` and `edge` would share ids), nor `/`, which ACL
/// `%c` substitution rewrites.
pub const CLIENT_ID_SEPARATOR: char = ':';

/// The four listener kinds.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ListenersConfig {
    /// Plain MQTT over TCP.
    pub tcp: TcpListenerConfig,
    /// MQTT over TLS.
    pub tls: TlsListenerConfig,
    /// MQTT over WebSocket.
    pub ws: WsListenerConfig,
    /// MQTT over WebSocket over TLS.
    pub wss: WssListenerConfig,
}

impl Default for ListenersConfig {
    fn default() -> Self {
        ListenersConfig {
            tcp: TcpListenerConfig {
                enabled: true,
                bind: addr("127.0.0.1:1883"),
            },
            tls: TlsListenerConfig {
                enabled: false,
                bind: addr("127.0.0.1:8883"),
                tls: TlsConfig::default(),
            },
            ws: WsListenerConfig {
                enabled: true,
                bind: addr("127.0.0.1:8083"),
                path: "/mqtt".into(),
            },
            wss: WssListenerConfig {
                enabled: false,
                bind: addr("127.0.0.1:8084"),
                path: "/mqtt".into(),
                tls: TlsConfig::default(),
            },
        }
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// A plain TCP listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TcpListenerConfig {
    /// Whether the listener runs.
    pub enabled: bool,
    /// Address to bind.
    pub bind: SocketAddr,
}

/// Certificate settings of a TLS listener.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain of the server.
    pub cert: Option<PathBuf>,
    /// PEM private key of the server.
    pub key: Option<PathBuf>,
    /// PEM CA bundle that client certificates are verified against; when set,
    /// clients may authenticate by certificate.
    pub client_ca: Option<PathBuf>,
    /// Refuse TLS clients that present no valid certificate.
    pub require_client_cert: bool,
}

/// A TLS listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsListenerConfig {
    /// Whether the listener runs.
    pub enabled: bool,
    /// Address to bind.
    pub bind: SocketAddr,
    /// Certificates.
    #[serde(flatten)]
    pub tls: TlsConfig,
}

/// A WebSocket listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WsListenerConfig {
    /// Whether the listener runs.
    pub enabled: bool,
    /// Address to bind.
    pub bind: SocketAddr,
    /// HTTP path of the upgrade request.
    pub path: String,
}

/// A WebSocket-over-TLS listener.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WssListenerConfig {
    /// Whether the listener runs.
    pub enabled: bool,
    /// Address to bind.
    pub bind: SocketAddr,
    /// HTTP path of the upgrade request.
    pub path: String,
    /// Certificates.
    #[serde(flatten)]
    pub tls: TlsConfig,
}

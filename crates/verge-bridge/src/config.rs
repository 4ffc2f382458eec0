//! `[bridge]`: where the cloud is, how to log in, what to forward, and how
//! hard to push; validated into a [`Plan`] before anything starts.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use verge_broker::duration::HumanDuration;
use verge_mqtt::topic;
use verge_protocol::topics;

use crate::BridgeError;

/// The `[bridge]` section of the node config.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeConfig {
    /// Run the link to the cloud (and open the cache queue) at all.
    pub enabled: bool,
    /// The cloud's MQTT endpoint: `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    /// Node name in the cloud's topics (`nodes/{node}/up/…`); the node's
    /// `node.name` when empty.
    pub node: String,
    /// MQTT client id at the cloud; `verge-node-{node}` when empty.
    pub client_id: String,
    /// User name at the cloud.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password at the cloud.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// PEM CA bundle to verify the cloud's certificate (`mqtts://`); the
    /// Mozilla roots when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Keep alive towards the cloud.
    pub keep_alive: HumanDuration,
    /// How long the cloud keeps the node's session (and queues downstream
    /// messages) while the link is down.
    pub session_expiry: HumanDuration,
    /// Messages sent to the cloud and not yet acknowledged, at most (the
    /// cloud's Receive Maximum lowers it).
    pub inflight: u16,
    /// Give up on a connection attempt after this long.
    pub connect_timeout: HumanDuration,
    /// First wait before reconnecting (±20 % jitter); doubles up to
    /// `reconnect_max`, and starts again here once a connection proved
    /// healthy (the cloud acknowledged a message or the downstream
    /// subscription, and deferred none).
    pub reconnect_min: HumanDuration,
    /// Longest wait before reconnecting (±20 % jitter): after an outage,
    /// the link is back at most about this long after the cloud is. Keep
    /// it a few seconds.
    pub reconnect_max: HumanDuration,
    /// Subscribe to `nodes/{node}/down/#` at the cloud and publish what
    /// arrives into the local broker with the prefix stripped.
    pub downstream: bool,
    /// Local topics sent upstream as they arrive (rules add more with
    /// their `upstream` action).
    pub forwards: Vec<Forward>,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            enabled: false,
            url: "mqtt://127.0.0.1:1884".into(),
            node: String::new(),
            client_id: String::new(),
            username: None,
            password: None,
            ca_file: None,
            keep_alive: HumanDuration(Duration::from_secs(30)),
            session_expiry: HumanDuration(Duration::from_secs(3600)),
            inflight: 1000,
            connect_timeout: HumanDuration(Duration::from_secs(10)),
            reconnect_min: HumanDuration(Duration::from_millis(500)),
            reconnect_max: HumanDuration(Duration::from_secs(5)),
            downstream: true,
            forwards: Vec::new(),
        }
    }
}

/// One `[[bridge.forwards]]` entry: local messages matching `filter` go
/// into the cache queue's `lane`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    /// Local topic filter (MQTT wildcards).
    pub filter: String,
    /// Cache queue lane, e.g. `telemetry` or `alarms`.
    #[serde(default = "telemetry")]
    pub lane: String,
}

fn telemetry() -> String {
    "telemetry".into()
}

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// `mqtts://`.
    pub tls: bool,
}

/// A validated [`BridgeConfig`].
#[derive(Debug, Clone)]
pub struct Plan {
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Node name in the cloud's topics.
    pub node: String,
    /// MQTT client id.
    pub client_id: String,
    /// `nodes/{node}/up/`.
    pub up_prefix: String,
    /// `nodes/{node}/down/`.
    pub down_prefix: String,
    /// The rest of the config as given.
    pub config: BridgeConfig,
}

impl BridgeConfig {
    /// Check every key; `node_name` stands in for an empty `node`.
    pub fn plan(&self, node_name: &str) -> Result<Plan, BridgeError> {
        let bad = |key: &str, msg: String| BridgeError::Config(format!("bridge.{key}: {msg}"));
        let endpoint = parse_url(&self.url).map_err(|m| bad("url", m))?;
        let node = if self.node.is_empty() {
            node_name.to_owned()
        } else {
            self.node.clone()
        };
        if node.is_empty() || node.contains(['/', '+', '#', '\0']) || node.starts_with('$') {
            return Err(bad(
                "node",
                format!("`{node}` cannot be a topic level (no `/`, `+`, `#`, leading `$`)"),
            ));
        }
        let client_id = if self.client_id.is_empty() {
            format!("verge-node-{node}")
        } else {
            self.client_id.clone()
        };
        if client_id.len() > 65_535 {
            return Err(bad("client_id", "longer than 65,535 bytes".into()));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(bad(
                "password",
                "set `username` too (MQTT sends no password without a user name)".into(),
            ));
        }
        if self.inflight == 0 {
            return Err(bad("inflight", "must be at least 1".into()));
        }
        if self.keep_alive.get().as_secs() > u64::from(u16::MAX) {
            return Err(bad("keep_alive", "at most 65535s".into()));
        }
        let ka = self.keep_alive.get();
        if !ka.is_zero() && (ka.as_secs() == 0 || ka.subsec_nanos() != 0) {
            return Err(bad(
                "keep_alive",
                "MQTT counts keep alive in whole seconds: use e.g. \"30s\" (or \"0s\" for none)"
                    .into(),
            ));
        }
        if self.connect_timeout.get().is_zero() {
            return Err(bad("connect_timeout", "must be more than 0".into()));
        }
        if self.reconnect_min.get().is_zero() || self.reconnect_max < self.reconnect_min {
            return Err(bad(
                "reconnect_min",
                "must be more than 0 and at most `reconnect_max`".into(),
            ));
        }
        for (i, f) in self.forwards.iter().enumerate() {
            if !topic::valid_topic_filter(&f.filter) {
                return Err(bad(
                    &format!("forwards[{i}].filter"),
                    format!("`{}` is not a valid topic filter", f.filter),
                ));
            }
        }
        Ok(Plan {
            endpoint,
            up_prefix: topics::up_prefix(&node),
            down_prefix: topics::down_prefix(&node),
            node,
            client_id,
            config: self.clone(),
        })
    }
}

fn parse_url(url: &str) -> Result<Endpoint, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("mqtts://") {
        (true, r)
    } else {
        return Err(format!("`{url}` must start with mqtt:// or mqtts://"));
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') {
        return Err(format!("`{url}` has a path; give only host and port"));
    }
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(h) = rest.strip_prefix('[') {
        // [v6]:port
        let (h, after) = h
            .split_once(']')
            .ok_or_else(|| format!("`{url}`: unclosed `[`"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("`{url}`: bad port `{p}`"))?,
            None if after.is_empty() => default_port,
            None => return Err(format!("`{url}`: unexpected `{after}`")),
        };
        (h.to_owned(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (
                h.to_owned(),
                p.parse().map_err(|_| format!("`{url}`: bad port `{p}`"))?,
            ),
            None => (rest.to_owned(), default_port),
        }
    };
    if host.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    Ok(Endpoint { host, port, tls })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let e = parse_url("mqtt://127.0.0.1:1884").expect("url");
        assert_eq!((e.host.as_str(), e.port, e.tls), ("127.0.0.1", 1884, false));
        let e = parse_url("mqtts://cloud.example.com").expect("url");
        assert_eq!(
            (e.host.as_str(), e.port, e.tls),
            ("cloud.example.com", 8883, true)
        );
        let e = parse_url("mqtt://[::1]:1884").expect("url");
        assert_eq!((e.host.as_str(), e.port), ("::1", 1884));
        assert!(parse_url("http://x").is_err());
        assert!(parse_url("mqtt://x:notaport").is_err());
        assert!(parse_url("mqtt://:1883").is_err());
        assert!(parse_url("mqtt://x:1883/path").is_err());
    }

    #[test]
    fn errors_name_the_key() {
        let mut c = BridgeConfig {
            url: "tcp://x".into(),
            ..BridgeConfig::default()
        };
        let e = c.plan("n").expect_err("bad url").to_string();
        assert!(e.contains("bridge.url"), "{e}");
        c.url = "mqtt://x".into();
        c.forwards.push(Forward {
            filter: "a/#/b".into(),
            lane: "telemetry".into(),
        });
        let e = c.plan("n").expect_err("bad filter").to_string();
        assert!(e.contains("bridge.forwards[0].filter"), "{e}");
        c.forwards.clear();
        c.keep_alive = HumanDuration(Duration::from_millis(500));
        let e = c.plan("n").expect_err("sub-second keep alive").to_string();
        assert!(e.contains("bridge.keep_alive"), "{e}");
        c.keep_alive = HumanDuration(Duration::from_secs(30));
        let e = c.plan("a/b").expect_err("bad node").to_string();
        assert!(e.contains("bridge.node"), "{e}");
        c.password = Some("p".into());
        let e = c.plan("n").expect_err("password alone").to_string();
        assert!(e.contains("bridge.password"), "{e}");
    }

    #[test]
    fn plan_derives_names_and_prefixes() {
        let p = BridgeConfig::default().plan("edge-1").expect("plan");
        assert_eq!(p.client_id, "verge-node-edge-1");
        assert_eq!(p.up_prefix, "nodes/edge-1/up/");
        assert_eq!(p.down_prefix, "nodes/edge-1/down/");
    }
}

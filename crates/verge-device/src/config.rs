//! [`DeviceConfig`]: where the node is, who the device is, and the bounds
//! of the client; checked once by [`DeviceConfig::resolve`] before any
//! I/O, every error naming its field.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::Error;

/// The separator of a client id under the broker's prefix binding: a
/// device `d1` may connect as `d1` or as `d1:anything`.
pub const CLIENT_ID_SEPARATOR: char = ':';

/// How a device program connects to its node. Build it with
/// [`DeviceConfig::new`] and change the public fields as needed.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// `mqtt://host[:port]` (default port 1883) or `mqtts://host[:port]`
    /// (TLS, default port 8883).
    pub url: String,
    /// The device's name: its MQTT username and the `{d}` of its topics.
    pub device: String,
    /// The device's secret (its MQTT password).
    pub secret: String,
    /// The MQTT client id; `None` (the default) uses the device name. A
    /// node binds client ids to devices: it must be the device name or
    /// `{device}:{anything}`.
    pub client_id: Option<String>,
    /// PEM file of the CA that signed the node's TLS certificate
    /// (`mqtts://` only); `None` trusts Mozilla's roots.
    pub ca_file: Option<PathBuf>,
    /// MQTT keep alive: a PINGREQ goes out after this long without
    /// sending, and the connection counts as lost when no PINGRESP comes
    /// within it. Zero turns pings off. At most 65535 s.
    pub keep_alive: Duration,
    /// How many messages wait while the node cannot take them
    /// (disconnected, or the in-flight window full). When full, the
    /// oldest waiting message is dropped and counted
    /// ([`DeviceStats::dropped`](crate::DeviceStats::dropped)).
    pub offline_buffer: usize,
    /// QoS 1 publishes sent and not yet acknowledged at most (lowered to
    /// the node's receive maximum). 1 to 1000.
    pub max_inflight: u16,
    /// First wait before reconnecting; doubles after each failure up to
    /// [`DeviceConfig::reconnect_max`].
    pub reconnect_min: Duration,
    /// Longest wait before reconnecting.
    pub reconnect_max: Duration,
    /// Longest a TCP/TLS/MQTT handshake may take.
    pub connect_timeout: Duration,
    /// How long shadow requests wait for the node's answer.
    pub request_timeout: Duration,
    /// How long [`Device::close`](crate::Device::close) waits for
    /// unacknowledged messages.
    pub close_timeout: Duration,
    /// How many command ids (with their replies) are remembered to answer
    /// a redelivered command without running its handler again.
    pub command_memory: usize,
    /// Largest packet taken from the node (announced to it in CONNECT).
    pub max_packet: u32,
}

impl DeviceConfig {
    /// A config with the defaults: keep alive 30 s, offline buffer 1000,
    /// 16 in flight, reconnect 0.5 s doubling to 30 s, connect, request
    /// and close timeouts 10 s, 10 s and 5 s, 256 command ids, packets up
    /// to 1 MiB.
    pub fn new(
        url: impl Into<String>,
        device: impl Into<String>,
        secret: impl Into<String>,
    ) -> DeviceConfig {
        DeviceConfig {
            url: url.into(),
            device: device.into(),
            secret: secret.into(),
            client_id: None,
            ca_file: None,
            keep_alive: Duration::from_secs(30),
            offline_buffer: 1000,
            max_inflight: 16,
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            command_memory: 256,
            max_packet: 1 << 20,
        }
    }

    /// Check every field and prepare TLS (reads the CA file); no network.
    pub(crate) fn resolve(&self) -> Result<Resolved, Error> {
        let bad = |key: &'static str, message: String| Error::Config { key, message };
        let endpoint = parse_url(&self.url).map_err(|m| bad("url", m))?;
        let device = self.device.as_str();
        if device.is_empty() || device.contains(['/', '+', '#']) || device.contains('\0') {
            return Err(bad(
                "device",
                format!("`{device}` is not a device name (empty, or has `/`, `+` or `#`)"),
            ));
        }
        let client_id = match &self.client_id {
            None => device.to_owned(),
            Some(id) if client_id_allowed(device, id) => id.clone(),
            Some(id) => {
                return Err(bad(
                    "client_id",
                    format!("`{id}` is not `{device}` or `{device}{CLIENT_ID_SEPARATOR}…`"),
                ));
            }
        };
        let keep_alive = u16::try_from(self.keep_alive.as_secs())
            .map_err(|_| bad("keep_alive", "at most 65535 s".into()))?;
        if !(1..=1000).contains(&self.max_inflight) {
            return Err(bad("max_inflight", "must be 1 to 1000".into()));
        }
        if self.reconnect_min.is_zero() {
            return Err(bad("reconnect_min", "must be more than 0".into()));
        }
        for (key, d) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if d.is_zero() {
                return Err(bad(key, "must be more than 0".into()));
            }
        }
        if self.max_packet < 1024 {
            return Err(bad("max_packet", "at least 1024 bytes".into()));
        }
        let tls = if endpoint.tls {
            let config = verge_net::tls::client_config(self.ca_file.as_deref())
                .map_err(|e| bad("ca_file", e.to_string()))?;
            let name = match endpoint.host.parse::<std::net::IpAddr>() {
                Ok(ip) => ServerName::from(ip),
                Err(_) => ServerName::try_from(endpoint.host.clone()).map_err(|e| {
                    bad(
                        "url",
                        format!("`{}` is not a valid server name: {e}", endpoint.host),
                    )
                })?,
            };
            Some((TlsConnector::from(config), name))
        } else {
            if self.ca_file.is_some() {
                return Err(bad(
                    "ca_file",
                    "given for an `mqtt://` url (use `mqtts://`)".into(),
                ));
            }
            None
        };
        Ok(Resolved {
            host: endpoint.host,
            port: endpoint.port,
            tls,
            device: device.to_owned(),
            client_id,
            secret: self.secret.clone(),
            keep_alive,
            offline_buffer: self.offline_buffer,
            max_inflight: self.max_inflight,
            reconnect_min: self.reconnect_min,
            reconnect_max: self.reconnect_max.max(self.reconnect_min),
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            close_timeout: self.close_timeout,
            command_memory: self.command_memory.max(1),
            max_packet: self.max_packet,
        })
    }
}

/// Whether a node with prefix binding lets `device` connect as `id`.
pub fn client_id_allowed(device: &str, id: &str) -> bool {
    id == device
        || id
            .strip_prefix(device)
            .is_some_and(|rest| rest.starts_with(CLIENT_ID_SEPARATOR))
}

/// The checked config.
#[derive(Clone)]
pub(crate) struct Resolved {
    pub host: String,
    pub port: u16,
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
    pub device: String,
    pub client_id: String,
    pub secret: String,
    pub keep_alive: u16,
    pub offline_buffer: usize,
    pub max_inflight: u16,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub close_timeout: Duration,
    pub command_memory: usize,
    pub max_packet: u32,
}

pub(crate) type Shared = Arc<Resolved>;

#[derive(Debug, PartialEq)]
struct Endpoint {
    host: String,
    port: u16,
    tls: bool,
}

fn parse_url(url: &str) -> Result<Endpoint, String> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else {
        return Err(format!(
            "`{url}`: want mqtt://host[:port] or mqtts://host[:port]"
        ));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{url}`: unclosed `[`"))?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("`{url}`: junk after `]`"))?,
                ),
            ),
        }
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', '?', '#', ' ']) {
        return Err(format!("`{url}`: no host, or a path, user or query"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{url}`: `{p}` is not a port"))?,
    };
    Ok(Endpoint {
        host: host.to_owned(),
        port,
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(host: &str, port: u16, tls: bool) -> Endpoint {
        Endpoint {
            host: host.into(),
            port,
            tls,
        }
    }

    #[test]
    fn urls_parse_with_default_ports() {
        assert_eq!(parse_url("mqtt://node"), Ok(ep("node", 1883, false)));
        assert_eq!(
            parse_url("mqtts://node.local:9883"),
            Ok(ep("node.local", 9883, true))
        );
        assert_eq!(parse_url("mqtts://node/"), Ok(ep("node", 8883, true)));
        assert_eq!(parse_url("mqtt://[::1]:1884"), Ok(ep("::1", 1884, false)));
        assert_eq!(parse_url("mqtt://[::1]"), Ok(ep("::1", 1883, false)));
        for bad in [
            "node:1883",
            "http://node",
            "mqtt://",
            "mqtt://node:0",
            "mqtt://node:x",
            "mqtt://node:1883/path",
            "mqtt://u@node",
            "mqtt://[::1",
            "mqtt://[::1]x",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn client_ids_follow_the_prefix_binding() {
        assert!(client_id_allowed("d1", "d1"));
        assert!(client_id_allowed("d1", "d1:a"));
        assert!(!client_id_allowed("d1", "d10"));
        assert!(!client_id_allowed("d1", "d1-a"));
        assert!(!client_id_allowed("d1", "x"));
    }

    #[test]
    fn bad_fields_are_named() {
        let key = |c: DeviceConfig| match c.resolve() {
            Err(Error::Config { key, .. }) => key,
            Err(e) => panic!("{e}"),
            Ok(_) => "ok",
        };
        let ok = DeviceConfig::new("mqtt://127.0.0.1:1883", "d1", "s");
        assert_eq!(key(ok.clone()), "ok");
        assert_eq!(key(DeviceConfig::new("tcp://x", "d1", "s")), "url");
        assert_eq!(key(DeviceConfig::new("mqtt://x", "a/b", "s")), "device");
        assert_eq!(key(DeviceConfig::new("mqtt://x", "", "s")), "device");
        let mut c = ok.clone();
        c.client_id = Some("d2".into());
        assert_eq!(key(c), "client_id");
        let mut c = ok.clone();
        c.client_id = Some("d1:sim".into());
        assert_eq!(
            c.resolve().map(|r| r.client_id).ok().as_deref(),
            Some("d1:sim")
        );
        let mut c = ok.clone();
        c.keep_alive = Duration::from_secs(70_000);
        assert_eq!(key(c), "keep_alive");
        let mut c = ok.clone();
        c.max_inflight = 0;
        assert_eq!(key(c), "max_inflight");
        let mut c = ok.clone();
        c.ca_file = Some("/nonexistent/ca.pem".into());
        assert_eq!(key(c.clone()), "ca_file", "a ca file for mqtt://");
        c.url = "mqtts://localhost".into();
        assert_eq!(key(c), "ca_file", "a missing ca file");
        let mut c = ok;
        c.url = "mqtts://localhost".into();
        assert_eq!(key(c), "ok", "mozilla roots");
    }
}

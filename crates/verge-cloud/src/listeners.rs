//! The cloud center's sockets (HTTP, MQTT for nodes, MQTT over TLS when
//! `mqtt.tls.enabled`; no MQTT ones in external mode), bound before the database is opened so a port in
//! use is reported first, and the public URLs nodes and users are told,
//! which default to the bound addresses (port 0 asks for any free port).

use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::CloudConfig;
use crate::config::MqttMode;

/// A port that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("{key} {addr}: cannot listen: {error}")]
pub struct BindError {
    /// The config key of the address: `http.bind`, `mqtt.bind` or
    /// `mqtt.tls.bind`.
    pub key: &'static str,
    /// The address.
    pub addr: SocketAddr,
    /// Why.
    pub error: std::io::Error,
}

/// The cloud center's bound listeners, handed to
/// [`Cloud::serve_with`](crate::Cloud::serve_with).
pub struct Listeners {
    /// The open API, the node protocol and the console.
    pub http: TcpListener,
    /// MQTT for nodes; `None` in external mode (nodes connect to the
    /// external broker).
    pub mqtt: Option<TcpListener>,
    /// MQTT over TLS for nodes, when `mqtt.tls.enabled`.
    pub mqtt_tls: Option<TcpListener>,
}

async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| BindError { key, addr, error })
}

impl Listeners {
    /// Bind every port `cfg` asks for.
    pub async fn bind(cfg: &CloudConfig) -> Result<Listeners, BindError> {
        let http = bind("http.bind", cfg.http.bind).await?;
        if cfg.mqtt.mode == MqttMode::External {
            return Ok(Listeners {
                http,
                mqtt: None,
                mqtt_tls: None,
            });
        }
        let mqtt = Some(bind("mqtt.bind", cfg.mqtt.bind).await?);
        let mqtt_tls = match cfg.mqtt.tls.enabled {
            true => Some(bind("mqtt.tls.bind", cfg.mqtt.tls.bind).await?),
            false => None,
        };
        Ok(Listeners {
            http,
            mqtt,
            mqtt_tls,
        })
    }

    /// The bound addresses: HTTP, MQTT and MQTT over TLS (no MQTT ones
    /// in external mode).
    pub fn addrs(&self) -> std::io::Result<(SocketAddr, Option<SocketAddr>, Option<SocketAddr>)> {
        let tls = self
            .mqtt_tls
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        let mqtt = self
            .mqtt
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()?;
        Ok((self.http.local_addr()?, mqtt, tls))
    }

    /// Fill the public URLs `cfg` leaves empty from the bound addresses:
    /// users are told `http://{http}`, nodes the TLS endpoint when it is
    /// on (`mqtts://…`), else `mqtt://…`; in external mode the external
    /// broker's URL ([`CloudConfig::mqtt_url`]).
    pub fn complete(&self, cfg: &mut CloudConfig) -> std::io::Result<()> {
        let (http, mqtt, tls) = self.addrs()?;
        if cfg.cloud.public_url.is_empty() {
            cfg.cloud.public_url = format!("http://{http}");
        }
        if cfg.mqtt.public_url.is_empty() {
            cfg.mqtt.public_url = match (tls, mqtt) {
                (Some(a), _) => format!("mqtts://{a}"),
                (None, Some(a)) => format!("mqtt://{a}"),
                (None, None) => cfg.mqtt_url(),
            };
        }
        Ok(())
    }
}

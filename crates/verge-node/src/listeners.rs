//! Every socket a node serves, bound before the node starts so that a taken
//! port is reported before anything is opened, and so that tests can bind
//! `127.0.0.1:0` and read the addresses back.

use std::net::SocketAddr;

use tokio::net::{TcpListener, UdpSocket};
use verge_broker::{BoundListener, BrokerError};

use crate::{NodeConfig, StartError};

/// The node's bound sockets, handed to [`Node::serve`](crate::Node::serve).
pub struct Listeners {
    /// The broker's listeners (TCP, TLS, WebSocket, WSS) that are enabled.
    pub mqtt: Vec<BoundListener>,
    /// The HTTP API's listener, when `[http] enabled`.
    pub http: Option<TcpListener>,
    /// The CoAP gateway's plain UDP socket, when `[coap] enabled`.
    pub coap: Option<UdpSocket>,
    /// The CoAP gateway's DTLS socket, when `[coap.dtls] enabled`.
    pub coap_dtls: Option<UdpSocket>,
}

/// One address the node listens on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `tcp`, `tls`, `ws`, `wss` (MQTT), `coap`, `coaps` or `http`.
    pub kind: &'static str,
    /// The bound address.
    pub addr: SocketAddr,
}

impl Listeners {
    /// Bind every enabled listener of `cfg`; an error names the key to
    /// change.
    pub async fn bind(cfg: &NodeConfig) -> Result<Listeners, StartError> {
        let mqtt = verge_broker::bind_all(&cfg.broker.listeners)
            .await
            .map_err(|e| match e {
                BrokerError::Listener { what, error } => StartError::Bind {
                    what,
                    error: error.to_string(),
                    hint: "set another `bind` address for this listener, or `enabled = false`",
                },
                other => StartError::Part {
                    part: "starting the broker's listeners".into(),
                    message: other.to_string(),
                },
            })?;
        let http = if cfg.http.enabled {
            Some(
                TcpListener::bind(cfg.http.bind)
                    .await
                    .map_err(|e| StartError::Bind {
                        what: format!("http.bind {}", cfg.http.bind),
                        error: e.to_string(),
                        hint: "set another address, or http.enabled = false",
                    })?,
            )
        } else {
            None
        };
        let coap = if cfg.coap.enabled {
            Some(
                verge_coap::bind(&cfg.coap)
                    .await
                    .map_err(|e| StartError::Bind {
                        what: "coap".into(),
                        error: e.to_string(),
                        hint: "set another coap.bind, or coap.enabled = false",
                    })?,
            )
        } else {
            None
        };
        let coap_dtls = if cfg.coap.dtls.enabled {
            Some(
                verge_coap::bind_dtls(&cfg.coap)
                    .await
                    .map_err(|e| StartError::Bind {
                        what: "coap.dtls".into(),
                        error: e.to_string(),
                        hint: "set another coap.dtls.bind, or coap.dtls.enabled = false",
                    })?,
            )
        } else {
            None
        };
        Ok(Listeners {
            mqtt,
            http,
            coap,
            coap_dtls,
        })
    }

    /// Where the node listens, MQTT listeners first, in the order bound.
    pub fn endpoints(&self) -> Vec<Endpoint> {
        let mut out: Vec<Endpoint> = self
            .mqtt
            .iter()
            .filter_map(|l| {
                l.local_addr().ok().map(|addr| Endpoint {
                    kind: l.kind(),
                    addr,
                })
            })
            .collect();
        if let Some(addr) = self.coap.as_ref().and_then(|s| s.local_addr().ok()) {
            out.push(Endpoint { kind: "coap", addr });
        }
        if let Some(addr) = self.coap_dtls.as_ref().and_then(|s| s.local_addr().ok()) {
            out.push(Endpoint {
                kind: "coaps",
                addr,
            });
        }
        if let Some(addr) = self.http.as_ref().and_then(|l| l.local_addr().ok()) {
            out.push(Endpoint { kind: "http", addr });
        }
        out
    }
}

//! The node's link to the cloud.
//!
//! Everything sent upstream goes into the cache queue (`verge-queue`)
//! first; one MQTT 5 connection drains it to the cloud under
//! `nodes/{node}/up/{topic}` with many QoS 1 messages in flight, and a
//! message leaves the queue only when the cloud's PUBACK for it arrives.
//! While the link is down the node works on and the queue grows; after a
//! reconnect the backlog drains at link speed, highest-priority lane
//! first, oldest first within a lane. Each message carries a `verge-id`
//! user property (`{queue id}/{lane}/{seq}`) so the cloud can drop the
//! duplicates that a lost PUBACK or a crash produces: delivery is at least
//! once, exactly once after de-duplication.
//!
//! Downstream, the bridge subscribes to `nodes/{node}/down/#` at the cloud
//! and publishes what arrives into the local broker with the prefix
//! stripped, so commands reach devices.
//!
//! The broker knows nothing of the bridge: forwards attach through its
//! in-process subscribe API like any other part of the node, as durable
//! subscriptions, so a device's PUBACK waits for the durable append.

pub mod config;
mod forward;
mod link;
pub mod status;

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use verge_broker::BrokerHandle;
use verge_net::tls::TlsError;
use verge_queue::Queue;

pub use config::{BridgeConfig, Endpoint, Forward, Plan};
pub use link::ORIGIN;
pub use status::{LinkState, LinkStatus};

/// Capacity of each forward's local subscription queue.
const FORWARD_QUEUE: usize = 65_536;

/// Why the bridge cannot start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A config key is wrong (the message names it).
    #[error("{0}")]
    Config(String),
    /// The local broker refused a forward's subscription or has stopped.
    #[error("bridge.forwards: {0}")]
    Broker(#[from] verge_broker::BrokerError),
}

/// A running bridge.
pub struct Bridge {
    status: Arc<Status>,
    queue: Queue,
    stop: watch::Sender<bool>,
    link: JoinHandle<()>,
    forwards: Vec<JoinHandle<()>>,
}

use status::Status;

impl Bridge {
    /// Check the plan against the queue's lanes, subscribe the forwards and
    /// start the link. Returns at once; the link connects in the
    /// background and retries with backoff.
    pub async fn start(
        plan: Plan,
        queue: Queue,
        broker: BrokerHandle,
    ) -> Result<Bridge, BridgeError> {
        for (i, f) in plan.config.forwards.iter().enumerate() {
            if queue.lane_index(&f.lane).is_none() {
                return Err(BridgeError::Config(format!(
                    "bridge.forwards[{i}].lane: no queue lane `{}` (lanes: {})",
                    f.lane,
                    queue.lanes().join(", ")
                )));
            }
        }
        let tls = if plan.endpoint.tls {
            Some(tls(&plan)?)
        } else {
            None
        };
        let status = Arc::new(Status::default());
        let (stop, stop_rx) = watch::channel(false);
        let mut forwards = Vec::new();
        for f in &plan.config.forwards {
            // Durable: a device's QoS 1/2 PUBLISH is acknowledged only
            // after the forward appended it to the queue.
            let sub = broker
                .subscribe_durable(std::slice::from_ref(&f.filter), FORWARD_QUEUE)
                .await?;
            forwards.push(tokio::spawn(forward::run(
                sub,
                f.lane.clone(),
                queue.clone(),
                status.clone(),
                stop_rx.clone(),
            )));
        }
        let link = link::Link {
            lanes: queue.lanes(),
            plan: Arc::new(plan),
            tls,
            queue: queue.clone(),
            broker,
            status: status.clone(),
        };
        let link = tokio::spawn(link.run(stop_rx));
        Ok(Bridge {
            status,
            queue,
            stop,
            link,
            forwards,
        })
    }

    /// A handle for status reads.
    pub fn handle(&self) -> BridgeHandle {
        BridgeHandle {
            status: self.status.clone(),
            queue: self.queue.clone(),
        }
    }

    /// Stop: the forwards append what they hold, the link says goodbye to
    /// the cloud. Messages still in the queue stay there for the next start.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for f in self.forwards {
            let _ = f.await;
        }
        let _ = self.link.await;
    }
}

/// Reads the bridge's state.
#[derive(Clone)]
pub struct BridgeHandle {
    status: Arc<Status>,
    queue: Queue,
}

impl BridgeHandle {
    /// The link's counters and state.
    pub fn link(&self) -> LinkStatus {
        self.status.snapshot()
    }

    /// The cache queue's counters.
    pub fn queue(&self) -> verge_queue::QueueStats {
        self.queue.stats()
    }
}

fn tls(plan: &Plan) -> Result<(TlsConnector, ServerName<'static>), BridgeError> {
    let bad = |m: String| BridgeError::Config(m);
    let config = verge_net::tls::client_config(plan.config.ca_file.as_deref()).map_err(|e| {
        bad(match e {
            TlsError::Setup(_) => format!("bridge: {e}"),
            TlsError::NoCertificate { path } => {
                format!("bridge.ca_file: {} holds no certificate", path.display())
            }
            TlsError::CaFile { .. } => format!("bridge.ca_file: {e}"),
        })
    })?;
    let host = &plan.endpoint.host;
    let name = match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ServerName::from(ip),
        Err(_) => ServerName::try_from(host.clone()).map_err(|e| {
            bad(format!(
                "bridge.url: `{host}` is not a valid server name: {e}"
            ))
        })?,
    };
    Ok((TlsConnector::from(config), name))
}

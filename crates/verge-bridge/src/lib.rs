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
//!
//! The forwards change while the bridge runs ([`BridgeHandle::set_forwards`],
//! a deployed `bridge.forwards`); the rest of `[bridge]` and the queue's
//! lanes do not: the link's endpoint, credentials and TLS are how the node
//! reaches the cloud (a wrong one deployed would cut it off from the
//! deployment that could repair it), and the lanes are the queue's on-disk
//! layout, fixed when it opens.

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
pub use forward::{ForwardsChange, MAX_FORWARDS};
pub use link::ORIGIN;
pub use status::{LinkState, LinkStatus};

use forward::Forwards;

/// Why the bridge cannot start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A config key is wrong (the message names it).
    #[error("{0}")]
    Config(String),
    /// The local broker refused a forward's subscription or has stopped.
    #[error("bridge.forwards: {0}")]
    Broker(#[from] verge_broker::BrokerError),
    /// The bridge has shut down: its forwards change no more.
    #[error("the bridge has stopped")]
    Stopped,
}

/// A running bridge.
pub struct Bridge {
    status: Arc<Status>,
    queue: Queue,
    stop: watch::Sender<bool>,
    link: JoinHandle<()>,
    forwards: Arc<Forwards>,
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
        forward::check(&plan.config.forwards, &queue)?;
        let tls = if plan.endpoint.tls {
            Some(tls(&plan)?)
        } else {
            None
        };
        let status = Arc::new(Status::default());
        let (stop, stop_rx) = watch::channel(false);
        let forwards = Forwards::start(
            plan.config.forwards.clone(),
            broker.clone(),
            queue.clone(),
            status.clone(),
        )
        .await?;
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
            forwards: Arc::new(forwards),
        })
    }

    /// A handle for status reads and forward changes.
    pub fn handle(&self) -> BridgeHandle {
        BridgeHandle {
            status: self.status.clone(),
            queue: self.queue.clone(),
            forwards: self.forwards.clone(),
        }
    }

    /// Stop: the forwards append what they hold, the link says goodbye to
    /// the cloud. Messages still in the queue stay there for the next start.
    pub async fn shutdown(self) {
        self.forwards.stop().await;
        let _ = self.stop.send(true);
        let _ = self.link.await;
    }
}

/// Reads the bridge's state and changes its forwards.
#[derive(Clone)]
pub struct BridgeHandle {
    status: Arc<Status>,
    queue: Queue,
    forwards: Arc<Forwards>,
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

    /// The forwards the bridge started with: `[[bridge.forwards]]` of the
    /// node's config file (or the managed node's defaults).
    pub fn configured_forwards(&self) -> &[Forward] {
        self.forwards.configured()
    }

    /// The forwards running now.
    pub async fn forwards(&self) -> Vec<Forward> {
        self.forwards.current().await
    }

    /// Run exactly `forwards` from now on (at most [`MAX_FORWARDS`]).
    /// Nothing changes when one is refused (a lane the queue does not
    /// have, a bad filter; the error names its index). Otherwise unchanged
    /// forwards run on untouched, a changed lane switches between two
    /// batches, new filters subscribe durably, and dropped ones stop
    /// after appending and confirming what they hold; returns when they
    /// have.
    pub async fn set_forwards(
        &self,
        forwards: Vec<Forward>,
    ) -> Result<ForwardsChange, BridgeError> {
        self.forwards.replace(forwards).await
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

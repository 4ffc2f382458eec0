//! The one way down to nodes: commands, shadow syncs and store queries
//! (`nodes/{id}/down/…`) are published, QoS 1, on the cloud's in-process
//! broker in embedded mode and on the external broker in external mode.
//!
//! In embedded mode a replica reaches only the nodes connected to its own
//! endpoint ([`Downlink::reachable`]); the dispatcher leaves the others to
//! the replica they are connected to. In external mode every node is
//! reachable from every replica, and each replica also holds a plain (not
//! shared) subscription to store replies, answering only the requests
//! waiting in it.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event};
use verge_broker::{BrokerHandle, Message};
use verge_protocol::device;
use verge_protocol::topics;

use crate::Cloud;
use crate::external::Plan;

/// Requests the external downlink connection queues while connecting.
const QUEUE: usize = 1024;

/// Where downstream messages go.
pub enum Downlink {
    /// The cloud's in-process broker.
    Embedded(BrokerHandle),
    /// The external broker, through this replica's downlink connection.
    External {
        /// Its client.
        client: AsyncClient,
        /// Whether it is connected now.
        connected: Arc<AtomicBool>,
        /// Its event loop, until [`Downlink::start`] takes it.
        events: std::sync::Mutex<Option<Box<rumqttc::v5::EventLoop>>>,
        /// Its plain subscription to store replies.
        replies: String,
    },
}

/// A downstream message that was not handed to the broker.
#[derive(Debug, thiserror::Error)]
pub enum DownlinkError {
    /// The in-process broker refused it.
    #[error("{0}")]
    Embedded(#[from] verge_broker::BrokerError),
    /// The external broker is not connected now, or its queue is full.
    #[error("the external MQTT broker is not reachable now: {0}")]
    External(String),
}

impl Downlink {
    /// The downlink of a cloud: `plan` in external mode.
    pub fn new(handle: BrokerHandle, plan: Option<&Plan>) -> Downlink {
        let Some(plan) = plan else {
            return Downlink::Embedded(handle);
        };
        let mut o = plan.options(&plan.downlink_client_id());
        o.set_clean_start(true);
        let (client, events) = AsyncClient::new(o, QUEUE);
        Downlink::External {
            client,
            connected: Arc::new(AtomicBool::new(false)),
            events: std::sync::Mutex::new(Some(Box::new(events))),
            replies: topics::up_filter_all()
                .replace('#', &device::DeviceChannel::StoreReply.topic("+")),
        }
    }

    /// Publish `payload` on `topic` (a `nodes/{id}/down/…` topic), QoS 1.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), DownlinkError> {
        match self {
            Downlink::Embedded(handle) => {
                let msg = Message::local(topic, payload, verge_mqtt::QoS::AtLeastOnce, false);
                Ok(handle.publish(msg).await?)
            }
            Downlink::External {
                client, connected, ..
            } => {
                if !connected.load(Ordering::Acquire) {
                    return Err(DownlinkError::External("not connected".into()));
                }
                client
                    .try_publish(topic, QoS::AtLeastOnce, false, payload)
                    .map_err(|e| DownlinkError::External(e.to_string()))
            }
        }
    }

    /// The nodes a downstream message reaches from this process now:
    /// `None` = any (external broker); in embedded mode the nodes
    /// connected to this process's endpoint (they log in as their id).
    pub async fn reachable(&self) -> Option<HashSet<String>> {
        match self {
            Downlink::Embedded(handle) => Some(
                handle
                    .sessions()
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|s| s.username.map(|u| u.to_string()))
                    .collect(),
            ),
            Downlink::External { .. } => None,
        }
    }

    /// Start the external connection's task (nothing in embedded mode).
    pub fn start(&self, cloud: &Cloud) -> Option<tokio::task::JoinHandle<()>> {
        let Downlink::External {
            client,
            connected,
            events,
            replies,
        } = self
        else {
            return None;
        };
        let events = events.lock().ok()?.take()?;
        Some(tokio::spawn(run(
            cloud.clone(),
            client.clone(),
            events,
            connected.clone(),
            replies.clone(),
        )))
    }
}

/// Poll the downlink connection: (re)subscribe to store replies on every
/// connect, hand each reply to its waiting request, reconnect after a
/// failure (1 s doubling to 30 s).
async fn run(
    cloud: Cloud,
    client: AsyncClient,
    mut events: Box<rumqttc::v5::EventLoop>,
    connected: Arc<AtomicBool>,
    replies: String,
) {
    let mut stop = cloud.inner().stop.subscribe();
    let mut backoff = Duration::from_secs(1);
    loop {
        let ev = tokio::select! {
            ev = events.poll() => ev,
            _ = stop.wait_for(|s| *s) => {
                let _ = client.try_disconnect();
                return;
            }
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_secs(1);
                connected.store(true, Ordering::Release);
                tracing::info!("external broker: downlink connected");
                if let Err(e) = client.try_subscribe(replies.as_str(), QoS::AtLeastOnce) {
                    tracing::warn!("external broker: store-reply subscription not queued: {e}");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Ok(topic) = std::str::from_utf8(&p.topic) else {
                    continue;
                };
                if let Some((node, rest)) = topics::parse_up(topic)
                    && let Some((device::DeviceChannel::StoreReply, dev)) =
                        device::parse_device_channel(rest)
                {
                    // Every replica gets every reply; only the one
                    // holding the request answers it.
                    cloud.inner().history.complete(node, dev, &p.payload);
                }
            }
            Ok(_) => {}
            Err(e) => {
                connected.store(false, Ordering::Release);
                tracing::warn!(
                    "external broker: downlink connection: {e}; reconnecting in {}s",
                    backoff.as_secs()
                );
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

//! The rule engine's `alarm` action onto the node: each [`AlarmEvent`] is
//! appended to the cache queue on `$verge/alarms/{d}` when the node is
//! managed by a cloud (so an alarm raised offline arrives when the link
//! returns, and survives a kill -9), and always published on the local
//! broker at `$verge/alarms/{d}` for consumers inside the node (rules,
//! the node's services; the broker keeps MQTT clients off `$verge/#`).

use bytes::Bytes;
use verge_broker::{BrokerHandle, Message};
use verge_mqtt::QoS;
use verge_net::{BoxFuture, now_ms};
use verge_protocol::device::{AlarmEvent, DeviceChannel};
use verge_queue::{Queue, Record};
use verge_rules::action::rule_origin;
use verge_rules::{Alarms, Domain, ServiceError};

use super::upstream::service_error;

/// The lane alarms go on when the queue has it; else the queue's first.
pub const ALARM_LANE: &str = "alarms";

/// [`Alarms`] over the cache queue and the local broker.
pub struct NodeAlarms {
    /// The cache queue and the lane, when the node is cloud-managed.
    upstream: Option<(Queue, String)>,
    /// The local broker.
    broker: BrokerHandle,
}

impl NodeAlarms {
    /// Alarms published on `broker` and, with `queue` (a cloud-managed
    /// node), appended to it on its `alarms` lane (its first lane when it
    /// has none of that name).
    pub fn new(queue: Option<Queue>, broker: BrokerHandle) -> NodeAlarms {
        let upstream = queue.and_then(|q| {
            let lane = match q.lane_index(ALARM_LANE) {
                Some(_) => ALARM_LANE.to_owned(),
                None => q.lanes().into_iter().next()?,
            };
            Some((q, lane))
        });
        NodeAlarms { upstream, broker }
    }

    /// The lane alarms are appended to, if any.
    pub fn lane(&self) -> Option<&str> {
        self.upstream.as_ref().map(|(_, lane)| lane.as_str())
    }
}

impl Alarms for NodeAlarms {
    fn send(&self, event: AlarmEvent, hops: u8) -> BoxFuture<'_, Result<(), ServiceError>> {
        Box::pin(async move {
            let topic = DeviceChannel::Alarm.topic(&event.device);
            let payload = Bytes::from(serde_json::to_vec(&event).map_err(|e| {
                ServiceError::permanent(Domain::Internal, format!("alarm event as json: {e}"))
            })?);
            if let Some((queue, lane)) = &self.upstream {
                let record = Record {
                    topic: topic.clone(),
                    payload: payload.clone(),
                    time_ms: now_ms(),
                };
                queue
                    .append(lane, vec![record])
                    .await
                    .map_err(service_error)?;
            }
            let mut msg = Message::local(topic, payload, QoS::AtLeastOnce, false);
            msg.origin = rule_origin(&event.rule);
            msg.hops = hops;
            msg.properties.content_type = Some("application/json".into());
            msg.properties.payload_format_indicator = Some(1);
            match self.broker.publish(msg).await {
                Ok(()) => Ok(()),
                // Durable upstream already: a retry would append it twice.
                Err(e) if self.upstream.is_some() => {
                    tracing::warn!("alarm not published locally: {e}");
                    Ok(())
                }
                Err(e) => Err(ServiceError::transient(
                    Domain::Internal,
                    format!("publish: {e}"),
                )),
            }
        })
    }
}

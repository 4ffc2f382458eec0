//! The message as it travels through the broker: shared, never copied.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use verge_mqtt::{Properties, QoS};

/// One application message inside the node. The router hands the same
/// `Arc<Message>` to every subscriber, socket or in-process.
#[derive(Debug, Clone)]
pub struct Message {
    /// Topic name.
    pub topic: Arc<str>,
    /// Payload bytes.
    pub payload: Bytes,
    /// QoS it was published with.
    pub qos: QoS,
    /// Retain flag it was published with.
    pub retain: bool,
    /// 5.0 properties to pass through (payload format, content type, response
    /// topic, correlation data, user properties); topic alias, subscription
    /// identifiers and message expiry are handled by the broker.
    pub properties: Properties,
    /// Client id of the publisher (`$local` for in-process publishes).
    pub origin: Arc<str>,
    /// When the broker received it.
    pub received: Instant,
    /// When it expires (5.0 Message Expiry Interval), if ever.
    pub expires: Option<Instant>,
    /// How many in-node steps (rules, functions) produced it from a client's
    /// message: 0 for messages from clients. Rules refuse messages past a
    /// limit, so rules that feed each other cannot loop forever.
    pub hops: u8,
}

impl Message {
    /// A message published from inside the node.
    pub fn local(
        topic: impl Into<Arc<str>>,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Message {
        Message {
            topic: topic.into(),
            payload: payload.into(),
            qos,
            retain,
            properties: Properties::default(),
            origin: Arc::from("$local"),
            received: Instant::now(),
            expires: None,
            hops: 0,
        }
    }

    /// Whether the message has expired at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }
}

//! A message on its way to one session: what the router hands a
//! connection's mailbox and a session's offline queue.

use std::sync::Arc;

use verge_mqtt::QoS;

use crate::message::Message;

/// A message on its way to one session, with the QoS and flags it is sent with.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    /// The shared message.
    pub msg: Arc<Message>,
    /// QoS to deliver with (min of published and granted).
    pub qos: QoS,
    /// Retain flag to send.
    pub retain: bool,
    /// Subscription identifiers of the matching subscriptions.
    pub sub_ids: Vec<u32>,
}

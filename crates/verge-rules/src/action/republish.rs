//! `republish`: publish each row, as JSON, back into the broker.

use std::sync::Arc;

use verge_broker::{BrokerHandle, Message};
use verge_mqtt::QoS;

use super::{Action, ActionError, BoxFuture, Output};
use crate::Services;
use crate::config::RepublishConfig;
use crate::error::RuleError;
use crate::template::Template;

/// Publishes rows to a topic made from a template.
pub struct Republish {
    broker: BrokerHandle,
    topic: Template,
    qos: QoS,
    retain: bool,
}

impl Republish {
    /// Check the settings and build the action.
    pub fn new(c: &RepublishConfig, services: &Services) -> Result<Republish, RuleError> {
        let (topic, qos) = Republish::settings(c)?;
        Ok(Republish {
            broker: services.broker.clone(),
            topic,
            qos,
            retain: c.retain,
        })
    }
}

impl Republish {
    /// Check the settings: the topic template and the QoS.
    pub(crate) fn settings(c: &RepublishConfig) -> Result<(Template, QoS), RuleError> {
        let topic = Template::parse(&c.topic).map_err(|e| RuleError::action("republish", e))?;
        let qos = QoS::from_u8(c.qos).ok_or_else(|| {
            RuleError::action("republish", format!("qos {} is not 0, 1 or 2", c.qos))
        })?;
        Ok((topic, qos))
    }
}

impl Action for Republish {
    fn deliver<'a>(&'a self, out: &'a Output) -> BoxFuture<'a, Result<(), ActionError>> {
        Box::pin(async move {
            let topic = self
                .topic
                .render(&out.row)
                .map_err(ActionError::permanent)?;
            let mut msg = Message::local(topic, out.json.clone(), self.qos, self.retain);
            // The origin lets the rule skip its own output (no feedback loop).
            msg.origin = rule_origin(&out.rule);
            msg.hops = out.hops;
            msg.properties.content_type = Some("application/json".into());
            msg.properties.payload_format_indicator = Some(1);
            self.broker
                .publish(msg)
                .await
                .map_err(|e| ActionError::transient(format!("publish: {e}")))
        })
    }
}

/// The publisher identity of a rule's own messages.
pub fn rule_origin(rule: &str) -> Arc<str> {
    Arc::from(format!("$rule/{rule}"))
}

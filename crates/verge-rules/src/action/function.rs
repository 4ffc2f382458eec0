//! `function`: hand each row to an edge function and publish what it
//! returns back into the broker, so rules can chain. The function runtime
//! is behind [`FunctionInvoker`]; the node supplies it.

use std::sync::Arc;

use bytes::Bytes;
use verge_broker::{BrokerHandle, Message};
use verge_mqtt::QoS;

use super::{Action, ActionError, BoxFuture, Output};
use crate::ServiceError;
use crate::Services;
use crate::config::FunctionConfig;
use crate::error::RuleError;

/// One message into or out of a function.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionMessage {
    /// Topic: the source topic going in, the topic to publish to coming out.
    pub topic: String,
    /// Payload bytes (the row as JSON going in).
    pub payload: Bytes,
    /// Content type, e.g. `application/json`.
    pub content_type: Option<String>,
    /// MQTT 5 user properties.
    pub user_properties: Vec<(String, String)>,
    /// Time in ms since the Unix epoch.
    pub time_ms: i64,
}

/// Why a function call failed (trap, timeout, function returned an
/// error…); `retry` when another attempt may succeed (e.g. a worker
/// restarting).
pub type InvokeError = ServiceError;

/// Runs deployed functions (the functions runtime implements this).
pub trait FunctionInvoker: Send + Sync + 'static {
    /// Whether a function of this name is deployed.
    fn exists(&self, name: &str) -> bool;
    /// Call `name` with one message; it returns zero or more messages.
    fn invoke<'a>(
        &'a self,
        name: &'a str,
        msg: FunctionMessage,
    ) -> BoxFuture<'a, Result<Vec<FunctionMessage>, InvokeError>>;
}

/// Calls one function per row.
pub struct Function {
    name: String,
    invoker: Arc<dyn FunctionInvoker>,
    broker: BrokerHandle,
    origin: Arc<str>,
}

impl Function {
    /// Check the function runtime is there and build the action. The
    /// function itself may be deployed later; calls fail until it is.
    pub fn new(c: &FunctionConfig, services: &Services) -> Result<Function, RuleError> {
        let invoker = services
            .functions
            .clone()
            .ok_or_else(|| RuleError::action("function", "this node has no function runtime"))?;
        Function::settings(c)?;
        Ok(Function {
            name: c.name.clone(),
            invoker,
            broker: services.broker.clone(),
            origin: Arc::from(format!("$function/{}", c.name)),
        })
    }
}

impl Function {
    /// Check the settings: a function name.
    pub(crate) fn settings(c: &FunctionConfig) -> Result<(), RuleError> {
        if c.name.is_empty() {
            return Err(RuleError::action("function", "`name` is empty"));
        }
        Ok(())
    }
}

impl Action for Function {
    fn deliver<'a>(&'a self, out: &'a Output) -> BoxFuture<'a, Result<(), ActionError>> {
        Box::pin(async move {
            let msg = FunctionMessage {
                topic: out.topic.to_string(),
                payload: out.json.clone(),
                content_type: Some("application/json".into()),
                user_properties: vec![("rule".into(), out.rule.to_string())],
                time_ms: out.time_ms,
            };
            let results = self
                .invoker
                .invoke(&self.name, msg)
                .await
                .map_err(|e| ActionError::service(&format!("function `{}`", self.name), e))?;
            for r in results {
                let mut m = Message::local(r.topic, r.payload, QoS::AtLeastOnce, false);
                m.origin = self.origin.clone();
                m.hops = out.hops;
                m.properties.content_type = r.content_type;
                m.properties.user_properties = r.user_properties;
                // A bad topic from the function is its error, not a reason
                // to call it again.
                self.broker.publish(m).await.map_err(|e| {
                    ActionError::permanent(format!("function `{}` output: {e}", self.name))
                })?;
            }
            Ok(())
        })
    }
}

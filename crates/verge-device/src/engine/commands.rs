//! Commands: run the handler once per id, publish its reply where the
//! command asks (MQTT 5 response topic, else the reply topic convention),
//! and answer a redelivery from memory.

use bytes::Bytes;
use serde_json::Value;
use tracing::debug;
use verge_mqtt::{Properties, Publish};
use verge_protocol::device::{COMMAND_ID_PROPERTY, failed_reply_topic, reply_topic};

use super::{Engine, Outgoing};
use crate::command::{Command, Reply, Seen};
use std::sync::atomic::Ordering::Relaxed;

/// A handler's result on its way back to the task.
pub(super) struct Finished {
    /// The command's id (`None`: a command without one, from an older
    /// node: no memory, and a reply only to a response topic).
    id: Option<String>,
    result: Result<Value, String>,
    response_topic: Option<String>,
    correlation: Option<Bytes>,
}

impl Engine {
    /// A command on `devices/{d}/commands/{name}/{id}`, or on
    /// `devices/{d}/commands/{name}` (older nodes; the id then comes from
    /// the `verge-command-id` user property when there is one).
    pub(super) fn on_command(&mut self, p: Publish, name: String, id: Option<String>) {
        let id = id.or_else(|| {
            p.properties
                .user_properties
                .iter()
                .find(|(k, v)| k == COMMAND_ID_PROPERTY && !v.is_empty() && !v.contains('/'))
                .map(|(_, v)| v.clone())
        });
        if let Some(id) = &id {
            match self.recent.get(id) {
                Some(Seen::Running) => {
                    self.counters.duplicates.fetch_add(1, Relaxed);
                    debug!(device = %self.cfg.device, "command {id} again while its handler runs");
                    return;
                }
                Some(Seen::Done(reply)) => {
                    self.counters.duplicates.fetch_add(1, Relaxed);
                    debug!(device = %self.cfg.device, "command {id} again: sending its reply again");
                    let msg = reply_message(reply, id);
                    self.publish(msg);
                    return;
                }
                None => {}
            }
        }
        let response_topic = p.properties.response_topic.clone();
        let correlation = p.properties.correlation_data.clone();
        let Some(handler) = self
            .handlers
            .get(&name)
            .or(self.any_handler.as_ref())
            .cloned()
        else {
            self.on_finished(Finished {
                id,
                result: Err(format!("no handler for command `{name}`")),
                response_topic,
                correlation,
            });
            return;
        };
        self.counters.commands.fetch_add(1, Relaxed);
        if let Some(id) = &id {
            self.recent.set(id, Seen::Running);
        }
        let command = Command {
            id: id.clone().unwrap_or_default(),
            name,
            payload: Command::payload_of(&p.payload),
        };
        let tx = self.finished_tx.clone();
        tokio::spawn(async move {
            let result = match tokio::spawn(handler(command)).await {
                Ok(r) => r,
                Err(e) if e.is_panic() => Err("the command handler panicked".to_owned()),
                Err(_) => Err("the command handler was cancelled".to_owned()),
            };
            let _ = tx
                .send(Finished {
                    id,
                    result,
                    response_topic,
                    correlation,
                })
                .await;
        });
    }

    /// Publish a handler's reply and remember it for redeliveries.
    pub(super) fn on_finished(&mut self, f: Finished) {
        let device = &self.cfg.device;
        let response_topic = f
            .response_topic
            .filter(|t| verge_mqtt::topic::valid_topic_name(t));
        let topic = match (&f.id, &f.result, response_topic) {
            (Some(id), Err(_), _) => failed_reply_topic(device, id),
            (_, Ok(_), Some(t)) => t,
            (Some(id), Ok(_), None) => reply_topic(device, id),
            (None, _, _) => {
                debug!(device = %device, "a command without an id: no reply topic for {:?}", f.result);
                return;
            }
        };
        let payload = match f.result {
            Ok(value) => {
                Bytes::from(serde_json::to_vec(&value).unwrap_or_else(|_| b"null".to_vec()))
            }
            Err(why) => Bytes::from(why),
        };
        let reply = Reply {
            topic,
            payload,
            correlation: f.correlation,
        };
        let id = f.id.unwrap_or_default();
        let msg = reply_message(&reply, &id);
        if !id.is_empty() {
            self.recent.set(&id, Seen::Done(reply));
        }
        self.publish(msg);
    }
}

/// The message of a reply (5.0: with the correlation data and the
/// command id as a user property).
pub(super) fn reply_message(reply: &Reply, id: &str) -> Outgoing {
    Outgoing {
        topic: reply.topic.clone(),
        payload: reply.payload.clone(),
        properties: Properties {
            correlation_data: reply.correlation.clone(),
            user_properties: vec![(COMMAND_ID_PROPERTY.to_owned(), id.to_owned())],
            ..Properties::default()
        },
        dup: false,
    }
}

//! The message a function receives and the messages it returns.

use crate::error::{Error, Result};

/// One MQTT message, as a handler receives it and as it returns them.
///
/// Not every field crosses the ABI both ways: the node does not pass
/// `retain` in (it is `false` in a received message) and does not take
/// `time_ms` back (the node stamps returned messages itself).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// The topic name, e.g. `devices/d1/telemetry`. A returned message's
    /// topic must be a valid MQTT topic name (no wildcards) to be published.
    pub topic: String,
    /// The payload, raw bytes (often UTF-8 JSON).
    pub payload: Vec<u8>,
    /// The MQTT 5 content type, e.g. `application/json`.
    pub content_type: Option<String>,
    /// The MQTT 5 user properties, in order; keys may repeat.
    pub user_properties: Vec<(String, String)>,
    /// Message time in milliseconds since the Unix epoch (input only).
    pub time_ms: i64,
    /// Quality of service: 0, 1 or 2. A returned message with any other
    /// value fails the call.
    pub qos: u8,
    /// The retain flag (output only).
    pub retain: bool,
}

impl Message {
    /// A message on `topic` with `payload`, QoS 1, not retained, no
    /// content type or user properties, time 0.
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            topic: topic.into(),
            payload: payload.into(),
            content_type: None,
            user_properties: Vec::new(),
            time_ms: 0,
            qos: 1,
            retain: false,
        }
    }

    /// [`Message::new`] with content type `application/json`.
    pub fn json(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self::new(topic, payload).with_content_type("application/json")
    }

    /// Set the content type.
    #[must_use]
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// Append a user property.
    #[must_use]
    pub fn with_user_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.user_properties.push((key.into(), value.into()));
        self
    }

    /// Set the QoS (0, 1 or 2).
    #[must_use]
    pub fn with_qos(mut self, qos: u8) -> Self {
        self.qos = qos;
        self
    }

    /// Set the retain flag.
    #[must_use]
    pub fn with_retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }

    /// Set the message time (milliseconds since the Unix epoch).
    #[must_use]
    pub fn with_time_ms(mut self, time_ms: i64) -> Self {
        self.time_ms = time_ms;
        self
    }

    /// The payload as text; an error when it is not UTF-8.
    pub fn payload_str(&self) -> Result<&str> {
        core::str::from_utf8(&self.payload)
            .map_err(|e| Error::msg(format_args!("payload is not UTF-8: {e}")))
    }

    /// The first value of user property `key`.
    pub fn user_property(&self, key: &str) -> Option<&str> {
        self.user_properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Level `n` (from 0) of the topic: level 1 of `devices/d1/telemetry`
    /// is `d1`.
    pub fn topic_level(&self, n: usize) -> Option<&str> {
        self.topic.split('/').nth(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_and_accessors() {
        let m = Message::json("devices/d1/telemetry", "{}")
            .with_user_property("rule", "r1")
            .with_user_property("rule", "r2")
            .with_qos(2)
            .with_retain(true)
            .with_time_ms(7);
        assert_eq!(m.content_type.as_deref(), Some("application/json"));
        assert_eq!(m.user_property("rule"), Some("r1"));
        assert_eq!(m.user_property("x"), None);
        assert_eq!((m.qos, m.retain, m.time_ms), (2, true, 7));
        assert_eq!(m.topic_level(1), Some("d1"));
        assert_eq!(m.topic_level(3), None);
        assert_eq!(m.payload_str().ok(), Some("{}"));
        let bin = Message::new("t", vec![0xff, 0]);
        assert!(bin.payload_str().is_err());
        assert_eq!(bin.qos, 1);
    }
}

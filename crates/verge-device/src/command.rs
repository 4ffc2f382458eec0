//! Commands as a handler sees them, the handler types, and the memory of
//! recent command ids that answers a redelivered command with the reply
//! it already got instead of running its handler twice.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

/// A command from the node (`devices/{d}/commands/{name}/{id}`).
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// The command's id (unique; a redelivery has the same id).
    pub id: String,
    /// The command's name.
    pub name: String,
    /// The payload: JSON as sent, or a JSON string holding the text when
    /// the payload is not JSON (empty payload: `null`).
    pub payload: Value,
}

impl Command {
    pub(crate) fn payload_of(bytes: &[u8]) -> Value {
        if bytes.is_empty() {
            return Value::Null;
        }
        serde_json::from_slice(bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
    }
}

/// The future a command handler returns: `Ok(reply)` is published on the
/// reply topic, `Err(why)` on the failed topic.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<Value, String>> + Send>>;

/// A registered command handler.
pub(crate) type Handler = Arc<dyn Fn(Command) -> HandlerFuture + Send + Sync>;

/// A registered delta callback.
pub(crate) type DeltaHandler = Arc<
    dyn Fn(verge_protocol::device::ShadowDelta) -> Pin<Box<dyn Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// A reply ready to publish (kept to answer a redelivery the same way).
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub topic: String,
    pub payload: Bytes,
    pub correlation: Option<Bytes>,
}

/// What is known of a recent command id.
#[derive(Debug, Clone)]
pub(crate) enum Seen {
    /// Its handler runs; a redelivery is ignored (the reply follows).
    Running,
    /// Answered with this reply.
    Done(Reply),
}

/// The last `bound` command ids, oldest forgotten first.
#[derive(Debug)]
pub(crate) struct Recent {
    bound: usize,
    order: VecDeque<String>,
    seen: HashMap<String, Seen>,
}

impl Recent {
    pub fn new(bound: usize) -> Recent {
        Recent {
            bound: bound.max(1),
            order: VecDeque::new(),
            seen: HashMap::new(),
        }
    }

    pub fn get(&self, id: &str) -> Option<&Seen> {
        self.seen.get(id)
    }

    /// Remember `id` (new: as running; known: its state changes).
    pub fn set(&mut self, id: &str, state: Seen) {
        if let Some(s) = self.seen.get_mut(id) {
            *s = state;
            return;
        }
        if self.order.len() >= self.bound
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.order.push_back(id.to_owned());
        self.seen.insert(id.to_owned(), state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payloads_are_json_or_text() {
        assert_eq!(Command::payload_of(b"{\"a\":1}"), json!({"a": 1}));
        assert_eq!(Command::payload_of(b"now"), json!("now"));
        assert_eq!(Command::payload_of(b""), Value::Null);
        assert_eq!(Command::payload_of(&[0xff, b'x']), json!("\u{fffd}x"));
    }

    #[test]
    fn recent_ids_are_bounded_oldest_first() {
        let mut r = Recent::new(2);
        r.set("a", Seen::Running);
        r.set("b", Seen::Running);
        r.set("a", Seen::Running);
        r.set("c", Seen::Running);
        assert!(r.get("a").is_none(), "the oldest id is forgotten");
        assert!(r.get("b").is_some() && r.get("c").is_some());
        assert_eq!(r.order.len(), 2);
    }
}

//! Messages routed in the last moments, for a SUBSCRIBE that reached the
//! broker before them but the router after them.
//!
//! A SUBSCRIBE that reached the broker before another client's PUBLISH is
//! in force for that PUBLISH, even when the publisher's connection read
//! and routed first (see `connection::arrival`). The router keeps what it
//! routed during the last [`WINDOW`] (at most [`MAX_MESSAGES`] messages and
//! [`MAX_BYTES`] of payload); a new subscription gets those that arrived
//! after its SUBSCRIBE and match it, as if it had been in place. A SUBSCRIBE
//! that spent longer than the window between its socket and the router
//! (a router backlog of that length) loses the promise for the messages
//! that fell out.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::message::Message;

/// How long a routed message is kept for subscriptions that arrived first.
pub(super) const WINDOW: Duration = Duration::from_millis(100);
/// Most messages kept.
pub(super) const MAX_MESSAGES: usize = 1024;
/// Most payload bytes kept.
pub(super) const MAX_BYTES: usize = 4 * 1024 * 1024;

#[derive(Default)]
pub(super) struct Recent {
    msgs: VecDeque<Arc<Message>>,
    bytes: usize,
}

impl Recent {
    /// Note a message just routed.
    pub fn push(&mut self, msg: &Arc<Message>) {
        self.bytes += msg.payload.len();
        self.msgs.push_back(msg.clone());
        let horizon = msg.received.checked_sub(WINDOW);
        while let Some(front) = self.msgs.front() {
            let old = horizon.is_some_and(|h| front.received < h);
            if !old && self.msgs.len() <= MAX_MESSAGES && self.bytes <= MAX_BYTES {
                break;
            }
            self.pop();
        }
    }

    /// Forget what is older than the window at `now`.
    pub fn expire(&mut self, now: Instant) {
        let Some(horizon) = now.checked_sub(WINDOW) else {
            return;
        };
        while self.msgs.front().is_some_and(|m| m.received < horizon) {
            self.pop();
        }
    }

    fn pop(&mut self) {
        if let Some(m) = self.msgs.pop_front() {
            self.bytes -= m.payload.len();
        }
    }

    /// The kept messages that arrived after `arrived`, oldest routed first.
    pub fn after(&self, arrived: Instant) -> impl Iterator<Item = &Arc<Message>> {
        self.msgs.iter().filter(move |m| m.received > arrived)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.msgs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_mqtt::QoS;

    fn at(received: Instant, topic: &str, payload: usize) -> Arc<Message> {
        let mut m = Message::local(topic, vec![0u8; payload], QoS::AtMostOnce, false);
        m.received = received;
        Arc::new(m)
    }

    #[test]
    fn gives_what_arrived_after_in_routing_order() {
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        let mut r = Recent::default();
        r.push(&at(t0, "a/1", 1));
        r.push(&at(t0 + 2 * ms, "a/2", 1));
        r.push(&at(t0 + 3 * ms, "b/1", 1));
        let got: Vec<_> = r.after(t0 + ms).map(|m| m.topic.clone()).collect();
        assert_eq!(got, vec![Arc::from("a/2"), Arc::from("b/1")]);
        // Arrived at the same moment as the SUBSCRIBE: not after it.
        assert_eq!(r.after(t0 + 3 * ms).count(), 0);
    }

    #[test]
    fn keeps_the_window_and_the_bounds() {
        let t0 = Instant::now();
        let mut r = Recent::default();
        r.push(&at(t0, "a", 1));
        r.push(&at(t0 + WINDOW + Duration::from_millis(1), "a", 1));
        assert_eq!(r.len(), 1, "older than the window behind the newest");
        r.expire(t0 + 3 * WINDOW);
        assert_eq!(r.len(), 0, "older than the window at a tick");
        for _ in 0..MAX_MESSAGES + 10 {
            r.push(&at(t0, "a", 0));
        }
        assert_eq!(r.len(), MAX_MESSAGES);
        let mut r = Recent::default();
        r.push(&at(t0, "a", MAX_BYTES / 2));
        r.push(&at(t0, "a", MAX_BYTES / 2));
        r.push(&at(t0, "a", 1));
        assert_eq!(r.len(), 2);
        assert_eq!(r.bytes, MAX_BYTES / 2 + 1);
    }
}

//! Range queries of a node's local time-series store: the API publishes a
//! `StoreQuery` down to the device's node and waits for its `StoreReply`,
//! which the ingest hands to [`Pending::complete`] instead of storing it.
//!
//! The pending requests live in memory, per cloud process: a reply that
//! reaches another replica (or this one after a restart) finds no request
//! and is dropped and counted, and its API call answers 504. The map is
//! bounded ([`MAX_PENDING`]); a request past it is refused at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;
use verge_protocol::device::StoreReply;

/// Most requests waiting for a reply at a time.
pub const MAX_PENDING: usize = 256;

/// A request waiting for its reply.
struct Waiter {
    node: String,
    device: String,
    tx: oneshot::Sender<StoreReply>,
}

/// The requests waiting for their node's reply, by query id.
#[derive(Default)]
pub struct Pending {
    waiting: Mutex<HashMap<String, Waiter>>,
    /// Replies that matched no waiting request (unknown or expired id, or
    /// from another node than the device's).
    pub unmatched: AtomicU64,
}

/// Why [`Pending::register`] refused a request.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

/// A registered request; dropping it forgets the request.
pub struct Ticket<'a> {
    pending: &'a Pending,
    id: String,
    /// The reply, once it arrives.
    pub reply: oneshot::Receiver<StoreReply>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Ok(mut w) = self.pending.waiting.lock() {
            w.remove(&self.id);
        }
    }
}

impl Pending {
    /// Wait for the reply to query `id` of `device` on `node`.
    pub fn register(&self, id: &str, node: &str, device: &str) -> Result<Ticket<'_>, Full> {
        let (tx, reply) = oneshot::channel();
        let mut w = self.waiting.lock().map_err(|_| Full)?;
        if w.len() >= MAX_PENDING {
            return Err(Full);
        }
        w.insert(
            id.to_owned(),
            Waiter {
                node: node.to_owned(),
                device: device.to_owned(),
                tx,
            },
        );
        Ok(Ticket {
            pending: self,
            id: id.to_owned(),
            reply,
        })
    }

    /// Hand `payload`, node `node`'s reply for `device`, to its waiting
    /// request. False (and counted) when it matches none.
    pub fn complete(&self, node: &str, device: &str, payload: &[u8]) -> bool {
        let matched = serde_json::from_slice::<StoreReply>(payload)
            .ok()
            .filter(|r| r.device == device)
            .and_then(|r| {
                let mut w = self.waiting.lock().ok()?;
                let ok = w
                    .get(&r.id)
                    .is_some_and(|x| x.node == node && x.device == device);
                let waiter = if ok { w.remove(&r.id) } else { None }?;
                waiter.tx.send(r).ok()
            })
            .is_some();
        if !matched {
            self.unmatched.fetch_add(1, Ordering::Relaxed);
        }
        matched
    }

    /// Requests waiting now.
    pub fn len(&self) -> usize {
        self.waiting.lock().map(|w| w.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn reply(id: &str, device: &str) -> Vec<u8> {
        serde_json::to_vec(&StoreReply {
            id: id.into(),
            device: device.into(),
            ..StoreReply::default()
        })
        .unwrap()
    }

    #[test]
    fn a_reply_completes_its_request_once_and_strays_are_counted() {
        let p = Pending::default();
        let mut t = p.register("q1", "n1", "d1").unwrap();
        // another node, another device, an unknown id, garbage: not matched
        assert!(!p.complete("n2", "d1", &reply("q1", "d1")));
        assert!(!p.complete("n1", "d2", &reply("q1", "d2")));
        assert!(!p.complete("n1", "d1", &reply("q9", "d1")));
        assert!(!p.complete("n1", "d1", b"nope"));
        assert!(p.complete("n1", "d1", &reply("q1", "d1")));
        assert_eq!(t.reply.try_recv().unwrap().id, "q1");
        // a resend finds nothing
        assert!(!p.complete("n1", "d1", &reply("q1", "d1")));
        assert_eq!(p.unmatched.load(Ordering::Relaxed), 5);
        drop(t);
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn the_map_is_bounded_and_a_dropped_ticket_frees_its_place() {
        let p = Pending::default();
        let tickets: Vec<_> = (0..MAX_PENDING)
            .map(|i| p.register(&format!("q{i}"), "n", "d").unwrap())
            .collect();
        assert!(p.register("one-more", "n", "d").is_err());
        drop(tickets);
        assert_eq!(p.len(), 0);
        let _t = p.register("q", "n", "d").unwrap();
        // a reply after its request ended is dropped
        let t = p.register("late", "n", "d").unwrap();
        drop(t);
        assert!(!p.complete("n", "d", &reply("late", "d")));
    }
}

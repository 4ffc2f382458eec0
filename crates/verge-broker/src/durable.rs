//! Durable in-process subscriptions: the consumer confirms each delivery
//! after it has persisted it, and a client's QoS 1/2 PUBLISH that reached a
//! durable subscriber is acknowledged (PUBACK/PUBREC) only once every such
//! subscriber has confirmed.
//!
//! The connection creates one [`Gate`] per QoS 1/2 PUBLISH, but only while
//! at least one durable subscription exists (one atomic load on the fast
//! path). The gate counts outstanding confirmations: one hold for the router
//! (released once the message is routed) plus one per durable subscriber
//! that received it. When the count reaches zero the connection is woken and
//! sends the acknowledgement, success or not. Every hold is a [`Confirm`],
//! which confirms as failed when dropped, so a delivery lost on the way
//! (queue full, subscription dropped, shutdown) can never leave a
//! connection waiting forever.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{Notify, mpsc};

use crate::message::Message;

/// Outstanding confirmations of one client PUBLISH.
#[derive(Debug)]
pub(crate) struct Gate {
    /// Holds not yet released (the router's plus one per durable delivery).
    left: AtomicUsize,
    /// Some hold was released as failed.
    failed: AtomicBool,
    /// The connection's wake-up, notified when `left` reaches zero.
    wake: Arc<Notify>,
}

impl Gate {
    /// A gate with the router's hold taken; returns the gate and that hold.
    pub(crate) fn new(wake: Arc<Notify>) -> (Arc<Gate>, Confirm) {
        let gate = Arc::new(Gate {
            left: AtomicUsize::new(1),
            failed: AtomicBool::new(false),
            wake,
        });
        let hold = Confirm {
            gate: Some(gate.clone()),
        };
        (gate, hold)
    }

    /// `None` while holds are outstanding, else whether all succeeded.
    pub(crate) fn outcome(&self) -> Option<bool> {
        if self.left.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(!self.failed.load(Ordering::Acquire))
    }

    fn release(&self, ok: bool) {
        if !ok {
            self.failed.store(true, Ordering::Release);
        }
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.wake.notify_one();
        }
    }
}

/// One outstanding confirmation. Call [`Confirm::ok`] once the message is
/// persisted or [`Confirm::fail`] if it could not be; dropping it counts as
/// a failure. For messages nobody waits for (QoS 0, in-process publishes) it
/// does nothing.
#[derive(Debug, Default)]
#[must_use = "dropping a confirmation reports a failure to the publisher"]
pub struct Confirm {
    gate: Option<Arc<Gate>>,
}

impl Confirm {
    /// A confirmation nobody waits for.
    pub(crate) fn none() -> Confirm {
        Confirm { gate: None }
    }

    /// Take one more hold on `gate`.
    pub(crate) fn hold(gate: &Arc<Gate>) -> Confirm {
        gate.left.fetch_add(1, Ordering::AcqRel);
        Confirm {
            gate: Some(gate.clone()),
        }
    }

    /// The gate this confirmation holds, if any.
    pub(crate) fn gate(&self) -> Option<&Arc<Gate>> {
        self.gate.as_ref()
    }

    /// Whether a client is waiting for this confirmation.
    pub fn is_awaited(&self) -> bool {
        self.gate.is_some()
    }

    /// The message is persisted: the publisher may be acknowledged.
    pub fn ok(mut self) {
        if let Some(g) = self.gate.take() {
            g.release(true);
        }
    }

    /// The message could not be persisted: the publisher is told (5.0:
    /// reason 0x97 quota exceeded; 3.1.1: its connection is closed
    /// unacknowledged so it resends).
    pub fn fail(mut self) {
        if let Some(g) = self.gate.take() {
            g.release(false);
        }
    }
}

impl Drop for Confirm {
    fn drop(&mut self) {
        if let Some(g) = self.gate.take() {
            g.release(false);
        }
    }
}

/// A message from a durable subscription with its confirmation.
#[derive(Debug)]
pub struct DurableMessage {
    /// The shared message.
    pub msg: Arc<Message>,
    /// Confirm after persisting (dropping it reports a failure).
    pub confirm: Confirm,
}

/// An in-process subscription whose consumer confirms each message after
/// persisting it; dropping it unsubscribes (undelivered messages then
/// count as failed). To stop without failing any, [`close`](Self::close)
/// it and receive until `None`.
pub struct DurableSubscription {
    pub(crate) rx: mpsc::Receiver<DurableMessage>,
    pub(crate) dropped: Arc<AtomicU64>,
    /// `None` once closed.
    pub(crate) reg: Option<crate::Registration>,
}

impl DurableSubscription {
    /// The next message; `None` once the broker has stopped.
    pub async fn recv(&mut self) -> Option<DurableMessage> {
        self.rx.recv().await
    }

    /// Wait for at least one message and take up to `limit` into `buf`;
    /// returns how many were taken, 0 once the broker has stopped.
    pub async fn recv_many(&mut self, buf: &mut Vec<DurableMessage>, limit: usize) -> usize {
        self.rx.recv_many(buf, limit).await
    }

    /// Messages dropped because this subscription's queue was full (each
    /// one's publisher was told the publish failed).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Unsubscribe, keeping what was delivered: the router routes nothing
    /// more here once it has taken the unsubscribe (in order with the
    /// publishes before it), then drops its sender, so
    /// [`recv`](Self::recv) returns every message routed here and then
    /// `None`. A consumer that confirms each of them stops without failing
    /// a publisher.
    pub fn close(&mut self) {
        self.reg = None;
    }
}

/// Where the router sends an in-process subscription's messages.
#[derive(Debug)]
pub(crate) enum LocalSink {
    /// Fire and forget.
    Plain(mpsc::Sender<Arc<Message>>),
    /// With a confirmation per message.
    Durable(mpsc::Sender<DurableMessage>),
}

impl LocalSink {
    /// Hand `msg` over; `false` if the queue is full or closed (a held
    /// confirmation then reports failure).
    pub(crate) fn try_send(&self, msg: Arc<Message>, gate: Option<&Arc<Gate>>) -> bool {
        match self {
            LocalSink::Plain(tx) => tx.try_send(msg).is_ok(),
            LocalSink::Durable(tx) => {
                let confirm = gate.map_or_else(Confirm::none, Confirm::hold);
                tx.try_send(DurableMessage { msg, confirm }).is_ok()
            }
        }
    }

    pub(crate) fn is_durable(&self) -> bool {
        matches!(self, LocalSink::Durable(_))
    }
}

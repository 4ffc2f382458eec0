//! What the router is asked to do ([`Event`]) and the session state that
//! travels between the router and a connection.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};
use verge_mqtt::SubOptions;

use crate::delivery::Delivery;
use crate::durable::{Confirm, LocalSink};
use crate::mailbox::Mailbox;
use crate::message::Message;
use crate::presence::SessionInfo;
use crate::subs::SubKey;

/// A signal to end a connection, with the reason to send (5.0).
#[derive(Debug, Default)]
pub(crate) struct Kill {
    notify: Notify,
    reason: AtomicU8,
}

impl Kill {
    pub fn kill(&self, reason: u8) {
        self.reason.store(reason, Ordering::Relaxed);
        self.notify.notify_one();
    }
    /// Signal again with the reason already stored.
    pub fn rearm(&self) {
        self.notify.notify_one();
    }
    pub async fn wait(&self) -> u8 {
        self.notify.notified().await;
        self.reason.load(Ordering::Relaxed)
    }
}

/// State of an outgoing QoS 1/2 message not yet fully acknowledged.
#[derive(Debug, Clone)]
pub(crate) struct InflightOut {
    /// Packet identifier used.
    pub packet_id: u16,
    /// The delivery.
    pub delivery: Delivery,
    /// True once PUBREC arrived (QoS 2): PUBREL is what must be resent.
    pub released: bool,
}

/// Session state a connection hands back to the router when it ends, and
/// gets again when the session resumes.
#[derive(Debug, Default)]
pub(crate) struct Carry {
    /// Outgoing QoS 1/2 messages awaiting acknowledgement, oldest first.
    pub inflight: Vec<InflightOut>,
    /// Incoming QoS 2 packet ids awaiting PUBREL.
    pub qos2_in: Vec<u16>,
    /// Deliveries queued but not yet sent.
    pub queued: VecDeque<Delivery>,
    /// The connection's mailbox, drained by the router.
    pub mailbox: Option<Arc<Mailbox>>,
}

/// Request to attach a connection to a session.
#[derive(Debug)]
pub(crate) struct ConnectReq {
    pub client_id: Arc<str>,
    /// The authenticated username, if any (for [`Event::Disconnect`]).
    pub username: Option<Arc<str>>,
    /// The listener's scheme (`mqtt`, `mqtts`, `ws`, `wss`).
    pub transport: &'static str,
    pub clean_start: bool,
    pub expiry: Duration,
    /// The broker is at `max_connections`: only a takeover may proceed.
    pub at_limit: bool,
    pub conn_id: u64,
    pub mailbox: Arc<Mailbox>,
    pub kill: Arc<Kill>,
    pub reply: oneshot::Sender<ConnectReply>,
}

/// The router's answer to [`ConnectReq`].
#[derive(Debug)]
pub(crate) struct ConnectReply {
    /// Refused with this reason code (the other fields are then empty).
    pub refused: Option<u8>,
    pub key: SubKey,
    pub session_present: bool,
    pub carry: Carry,
}

/// One filter of a SUBSCRIBE as the router sees it.
#[derive(Debug)]
pub(crate) struct SubReq {
    /// Full filter, `$share/...` included.
    pub filter: String,
    pub options: SubOptions,
    pub id: Option<u32>,
    /// A failure code decided by the connection (ACL, invalid filter).
    pub refused: Option<u8>,
}

/// Everything the router is asked to do.
#[derive(Debug)]
pub(crate) enum Event {
    Connect(ConnectReq),
    /// Messages with the router's hold on their publisher's acknowledgement
    /// (released once routed; a no-op unless a durable subscription exists).
    Publish(Vec<(Arc<Message>, Confirm)>),
    Subscribe {
        key: SubKey,
        filters: Vec<SubReq>,
        /// When the SUBSCRIBE reached the broker's socket.
        arrived: Instant,
        reply: oneshot::Sender<(Vec<u8>, Vec<Delivery>)>,
    },
    Unsubscribe {
        key: SubKey,
        filters: Vec<String>,
        reply: oneshot::Sender<Vec<u8>>,
    },
    Disconnected {
        key: SubKey,
        conn_id: u64,
        carry: Carry,
        will: Option<(Arc<Message>, Duration)>,
        expiry: Duration,
    },
    LocalSubscribe {
        filters: Vec<String>,
        sink: LocalSink,
        dropped: Arc<AtomicU64>,
        reply: oneshot::Sender<SubKey>,
    },
    LocalUnsubscribe {
        key: SubKey,
        filters: Vec<String>,
    },
    /// Close every connection authenticated as `username` (reason code
    /// `reason` in 5.0); the number closed.
    Disconnect {
        username: String,
        reason: u8,
        reply: oneshot::Sender<usize>,
    },
    /// The retained message of one topic name, if any (and not expired).
    Retained {
        topic: String,
        reply: oneshot::Sender<Option<Arc<Message>>>,
    },
    /// The connected sessions.
    Sessions {
        reply: oneshot::Sender<Vec<SessionInfo>>,
    },
    /// Refuse new connections and end every connection (5.0: reason
    /// "server shutting down"); answered once no session has a connection
    /// left, so every PUBLISH they sent has been routed. In-process
    /// publishing and subscriptions go on.
    CloseClients(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

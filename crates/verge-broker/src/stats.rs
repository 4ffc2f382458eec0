//! Broker counters, shared by the router and every connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Counters and gauges; read them with [`Stats::snapshot`].
#[derive(Debug)]
pub struct Stats {
    /// When the broker started.
    pub started: Instant,
    /// Clients connected now.
    pub clients_connected: AtomicU64,
    /// Connections accepted since start (including refused CONNECTs).
    pub connections_total: AtomicU64,
    /// PUBLISH packets received from clients plus in-process publishes.
    pub messages_received: AtomicU64,
    /// PUBLISH packets sent to clients plus in-process deliveries.
    pub messages_sent: AtomicU64,
    /// Bytes read from client sockets.
    pub bytes_received: AtomicU64,
    /// Bytes written to client sockets.
    pub bytes_sent: AtomicU64,
    /// Messages dropped because a session's queue was full.
    pub dropped_queue_full: AtomicU64,
    /// Times a session's queue stayed full past `slow_consumer_wait`.
    pub slow_consumers: AtomicU64,
    /// Messages dropped because they expired before delivery.
    pub dropped_expired: AtomicU64,
    /// Messages dropped because they exceed the client's maximum packet size.
    pub dropped_too_large: AtomicU64,
    /// QoS 0 messages not queued for an offline session.
    pub dropped_offline_qos0: AtomicU64,
    /// New retained topics refused because the retained store was full.
    pub dropped_retained_full: AtomicU64,
    /// Client QoS 1/2 publishes answered with a failure (5.0: 0x97) or a
    /// closed connection (3.1.1) because a durable subscriber could not take
    /// or persist them.
    pub durable_refused: AtomicU64,
    /// Publishes refused by the ACL.
    pub denied_publish: AtomicU64,
    /// Subscriptions refused by the ACL.
    pub denied_subscribe: AtomicU64,
    /// SUBSCRIBE filters refused because the session held
    /// `max_subscriptions` subscriptions.
    pub refused_subscriptions: AtomicU64,
    /// CONNECTs refused because `max_persistent_sessions` persistent
    /// sessions were held (also counted in `connects_refused`).
    pub refused_sessions: AtomicU64,
    /// CONNECTs refused for their client id: not bound to the identity
    /// (`client_id_binding`) or naming a session of another identity (also
    /// counted in `connects_refused`).
    pub refused_client_ids: AtomicU64,
    /// CONNECTs refused (bad credentials, not authorized, busy, bad packet).
    pub connects_refused: AtomicU64,
    /// Connections closed for a protocol violation or malformed packet.
    pub protocol_errors: AtomicU64,
    /// Subscriptions held (gauge, set by the router).
    pub subscriptions: AtomicU64,
    /// Retained messages held (gauge, set by the router).
    pub retained: AtomicU64,
    /// Sessions held, online and offline (gauge, set by the router).
    pub sessions: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            clients_connected: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            messages_received: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            dropped_queue_full: AtomicU64::new(0),
            slow_consumers: AtomicU64::new(0),
            dropped_expired: AtomicU64::new(0),
            dropped_too_large: AtomicU64::new(0),
            dropped_offline_qos0: AtomicU64::new(0),
            dropped_retained_full: AtomicU64::new(0),
            durable_refused: AtomicU64::new(0),
            denied_publish: AtomicU64::new(0),
            denied_subscribe: AtomicU64::new(0),
            refused_subscriptions: AtomicU64::new(0),
            refused_sessions: AtomicU64::new(0),
            refused_client_ids: AtomicU64::new(0),
            connects_refused: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            subscriptions: AtomicU64::new(0),
            retained: AtomicU64::new(0),
            sessions: AtomicU64::new(0),
        }
    }
}

/// Increment a counter by one.
pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Add to a counter.
pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Stats {
    /// All values by name, in a stable order (for `$SYS`, APIs and metrics).
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("uptime_seconds", self.started.elapsed().as_secs()),
            ("clients_connected", g(&self.clients_connected)),
            ("connections_total", g(&self.connections_total)),
            ("messages_received", g(&self.messages_received)),
            ("messages_sent", g(&self.messages_sent)),
            ("bytes_received", g(&self.bytes_received)),
            ("bytes_sent", g(&self.bytes_sent)),
            ("dropped_queue_full", g(&self.dropped_queue_full)),
            ("slow_consumers", g(&self.slow_consumers)),
            ("dropped_expired", g(&self.dropped_expired)),
            ("dropped_too_large", g(&self.dropped_too_large)),
            ("dropped_offline_qos0", g(&self.dropped_offline_qos0)),
            ("dropped_retained_full", g(&self.dropped_retained_full)),
            ("durable_refused", g(&self.durable_refused)),
            ("denied_publish", g(&self.denied_publish)),
            ("denied_subscribe", g(&self.denied_subscribe)),
            ("refused_subscriptions", g(&self.refused_subscriptions)),
            ("refused_sessions", g(&self.refused_sessions)),
            ("refused_client_ids", g(&self.refused_client_ids)),
            ("connects_refused", g(&self.connects_refused)),
            ("protocol_errors", g(&self.protocol_errors)),
            ("subscriptions", g(&self.subscriptions)),
            ("retained", g(&self.retained)),
            ("sessions", g(&self.sessions)),
        ]
    }
}

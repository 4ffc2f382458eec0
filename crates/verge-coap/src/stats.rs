//! The gateway's counters, shared with the node's Prometheus endpoint as a
//! plain snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// Live counters (relaxed atomics).
        #[derive(Debug, Default)]
        pub struct Stats {
            $( $(#[$doc])* pub $name: AtomicU64, )*
        }

        /// A copy of [`Stats`] at one moment.
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
        pub struct StatsSnapshot {
            $( $(#[$doc])* pub $name: u64, )*
        }

        impl Stats {
            /// Read every counter.
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot {
                    $( $name: self.$name.load(Ordering::Relaxed), )*
                }
            }
        }
    };
}

counters! {
    /// Datagrams received.
    datagrams_received,
    /// Datagrams that were not CoAP messages (ignored, or answered with RST).
    malformed,
    /// Requests handled (duplicates not included).
    requests,
    /// Duplicate requests answered from the de-duplication cache or ignored.
    duplicates,
    /// Messages published into the broker.
    publishes,
    /// Requests refused for bad credentials (4.01).
    unauthorized,
    /// Requests refused by the ACL (4.03).
    forbidden,
    /// Other 4.xx answers.
    client_errors,
    /// 5.xx answers (broker closed, too busy).
    server_errors,
    /// Observers registered now (a gauge).
    observers,
    /// Registrations refused because `max_observers` was reached.
    observers_refused,
    /// Observers dropped after a Reset or after retransmissions ran out.
    observers_dropped,
    /// Notifications sent (first transmissions).
    notifications,
    /// Retransmissions of Confirmable notifications.
    retransmissions,
    /// Notifications lost because an observer's queue was full.
    notifications_dropped,
    /// Notifications not sent because the message is larger than
    /// `max_payload`.
    notifications_too_large,
    /// Message ids forgotten early because the de-duplication cache was full.
    dedup_evicted,
    /// Block-wise transfers dropped unfinished (cache full or expired).
    blocks_dropped,
    /// Successful password checks forgotten early (auth cache full).
    auth_cache_evicted,
    /// Datagrams that could not be sent.
    send_errors,
    /// DTLS handshakes completed.
    dtls_handshakes,
    /// DTLS handshakes that failed: unknown identity, wrong key, bad
    /// messages, or not finished within `handshake_timeout`.
    dtls_handshake_failures,
    /// DTLS sessions established now (a gauge).
    dtls_sessions,
    /// ClientHellos dropped because `max_sessions` or `max_handshakes` was
    /// reached.
    dtls_refused,
    /// Datagrams on the DTLS port dropped: not a DTLS record of a session,
    /// or a record that failed to decrypt.
    dtls_dropped,
    /// DTLS sessions forgotten after `idle_timeout`, or closed by the peer.
    dtls_sessions_closed,
}

impl Stats {
    /// Add one to a counter.
    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

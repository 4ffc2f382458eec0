//! Counters and link state of the bridge, shared by its tasks and read by
//! the node's HTTP API and metrics.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Link states, as the API shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Trying to connect.
    Connecting,
    /// Connected and sending.
    Connected,
    /// Waiting before the next attempt.
    Disconnected,
    /// Stopped.
    Stopped,
}

/// The bridge's shared counters.
#[derive(Debug)]
pub struct Status {
    state: Mutex<StateCell>,
    rate: Mutex<RateCell>,
    /// Successful connections so far.
    pub connects: AtomicU64,
    /// Messages the cloud acknowledged (removed from the queue).
    pub sent: AtomicU64,
    /// PUBLISH packets written, resends included.
    pub published: AtomicU64,
    /// Of those, resends after a reconnect.
    pub resent: AtomicU64,
    /// Messages the cloud refused for good (reason code), dropped.
    pub rejected: AtomicU64,
    /// Messages larger than the cloud's Maximum Packet Size, dropped.
    pub too_large: AtomicU64,
    /// Messages sent and not yet acknowledged.
    pub inflight: AtomicU64,
    /// Downstream messages published into the local broker.
    pub downstream: AtomicU64,
    /// Downstream messages that could not be published locally.
    pub downstream_dropped: AtomicU64,
    /// Local messages the forwards put into the queue.
    pub forwarded: AtomicU64,
    /// Local messages the forwards could not queue (queue full with
    /// `when_full = "reject"`, I/O error).
    pub forward_failed: AtomicU64,
    /// Local messages dropped before the forwards saw them (their
    /// subscription queue was full).
    pub forward_dropped: AtomicU64,
}

#[derive(Debug)]
struct StateCell {
    state: LinkState,
    since: SystemTime,
    last_error: Option<String>,
}

#[derive(Debug)]
struct RateCell {
    at: Instant,
    sent: u64,
    rate: f64,
}

/// A snapshot for the API.
#[derive(Debug, Clone, Serialize)]
pub struct LinkStatus {
    /// Link state.
    pub state: LinkState,
    /// Since when, ms since the Unix epoch.
    pub since_ms: u64,
    /// The most recent error (connect failure, lost link, refusal).
    pub last_error: Option<String>,
    /// Successful connections.
    pub connects: u64,
    /// Messages the cloud acknowledged.
    pub sent: u64,
    /// Acknowledged messages per second (over the time since the previous
    /// status read, at least one second).
    pub send_rate: f64,
    /// PUBLISH packets written, resends included.
    pub published: u64,
    /// Resends after reconnects.
    pub resent: u64,
    /// Refused by the cloud and dropped.
    pub rejected: u64,
    /// Too large for the cloud and dropped.
    pub too_large: u64,
    /// Sent, not yet acknowledged.
    pub inflight: u64,
    /// Downstream messages published locally.
    pub downstream: u64,
    /// Downstream messages dropped.
    pub downstream_dropped: u64,
    /// Local messages forwarded into the queue.
    pub forwarded: u64,
    /// Local messages the queue refused.
    pub forward_failed: u64,
    /// Local messages dropped before reaching the queue.
    pub forward_dropped: u64,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            state: Mutex::new(StateCell {
                state: LinkState::Connecting,
                since: SystemTime::now(),
                last_error: None,
            }),
            rate: Mutex::new(RateCell {
                at: Instant::now(),
                sent: 0,
                rate: 0.0,
            }),
            connects: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            published: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            too_large: AtomicU64::new(0),
            inflight: AtomicU64::new(0),
            downstream: AtomicU64::new(0),
            downstream_dropped: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            forward_failed: AtomicU64::new(0),
            forward_dropped: AtomicU64::new(0),
        }
    }
}

impl Status {
    /// Move to `state`.
    pub fn set_state(&self, state: LinkState) {
        if let Ok(mut s) = self.state.lock()
            && s.state != state
        {
            s.state = state;
            s.since = SystemTime::now();
        }
    }

    /// Record an error (kept until the next one).
    pub fn error(&self, e: impl Into<String>) {
        if let Ok(mut s) = self.state.lock() {
            s.last_error = Some(e.into());
        }
    }

    /// The current state.
    pub fn state(&self) -> LinkState {
        self.state
            .lock()
            .map(|s| s.state)
            .unwrap_or(LinkState::Stopped)
    }

    /// A snapshot; also refreshes the send rate.
    pub fn snapshot(&self) -> LinkStatus {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let sent = get(&self.sent);
        let send_rate = match self.rate.lock() {
            Ok(mut r) => {
                let dt = r.at.elapsed();
                if dt >= Duration::from_secs(1) {
                    r.rate = sent.saturating_sub(r.sent) as f64 / dt.as_secs_f64();
                    r.sent = sent;
                    r.at = Instant::now();
                }
                r.rate
            }
            Err(_) => 0.0,
        };
        let (state, since_ms, last_error) = match self.state.lock() {
            Ok(s) => (
                s.state,
                s.since
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
                s.last_error.clone(),
            ),
            Err(_) => (LinkState::Stopped, 0, None),
        };
        LinkStatus {
            state,
            since_ms,
            last_error,
            connects: get(&self.connects),
            sent,
            send_rate,
            published: get(&self.published),
            resent: get(&self.resent),
            rejected: get(&self.rejected),
            too_large: get(&self.too_large),
            inflight: get(&self.inflight),
            downstream: get(&self.downstream),
            downstream_dropped: get(&self.downstream_dropped),
            forwarded: get(&self.forwarded),
            forward_failed: get(&self.forward_failed),
            forward_dropped: get(&self.forward_dropped),
        }
    }
}

//! What the node last told the cloud about each (device, alarm type), so
//! `alarm` actions send changes only: a row that keeps an alarm as it is
//! (a normal reading while it is clear, another hot one while it is raised)
//! sends nothing through the `alarms` lane.
//!
//! The rule, per (device, alarm type):
//! - a raise is sent when the last event sent was a clear, or nothing is
//!   known; while raised, a raise is sent again at most once per
//!   [`RAISE_REFRESH_MS`] of row time (it refreshes the cloud's message and
//!   severity and counts one more occurrence);
//! - a clear is sent when the last event sent was a raise, or nothing is
//!   known: after a node restart (or once the entry was evicted) the first
//!   clear of a key is sent once, because the cloud may hold an alarm the
//!   node raised before;
//! - an event is remembered only once the `Alarms` service took it, so a
//!   send that failed and is retried is not taken for a duplicate.
//!
//! The memory is shared by every `alarm` action of an engine (it lives in
//! [`crate::Services`]), so a rule that raises and another with
//! `clear = true` see each other's events. It keeps at most
//! [`MAX_ALARM_KEYS`] keys; the least recently used one is dropped
//! (counted), which costs at most one extra event for that key.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use verge_protocol::device::AlarmAction;

/// Most (device, alarm type) keys remembered.
pub const MAX_ALARM_KEYS: usize = 10_000;

/// While an alarm is raised, a further raise is sent at most this often
/// (row time): 60 s.
pub const RAISE_REFRESH_MS: u64 = 60_000;

#[derive(Debug, Clone, Copy)]
struct Last {
    action: AlarmAction,
    /// Row time of the last raise sent.
    at_ms: u64,
    /// Place in the use order (key of `order`).
    used: u64,
}

#[derive(Debug, Default)]
struct Inner {
    last: HashMap<(String, String), Last>,
    /// Use order: `used` → key, oldest first.
    order: BTreeMap<u64, (String, String)>,
    next_use: u64,
}

/// The last alarm event sent per (device, alarm type); see the module doc.
#[derive(Debug, Default)]
pub struct AlarmMemory {
    inner: Mutex<Inner>,
    suppressed: AtomicU64,
    evicted: AtomicU64,
}

impl AlarmMemory {
    /// An empty memory (what a node has after a start).
    pub fn new() -> AlarmMemory {
        AlarmMemory::default()
    }

    /// Whether an event `action` at row time `at_ms` for `(device,
    /// alarm_type)` is to be sent; one that is not is counted
    /// ([`AlarmMemory::suppressed`]).
    pub fn should_send(
        &self,
        device: &str,
        alarm_type: &str,
        action: AlarmAction,
        at_ms: u64,
    ) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let last = inner.last.get(&(device.to_owned(), alarm_type.to_owned()));
        let send = match (last, action) {
            (None, _) => true,
            (Some(l), AlarmAction::Raise) => {
                l.action == AlarmAction::Clear || l.at_ms.abs_diff(at_ms) >= RAISE_REFRESH_MS
            }
            (Some(l), AlarmAction::Clear) => l.action == AlarmAction::Raise,
        };
        if !send {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
        send
    }

    /// Remember that an event was sent.
    pub fn sent(&self, device: &str, alarm_type: &str, action: AlarmAction, at_ms: u64) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let key = (device.to_owned(), alarm_type.to_owned());
        let used = inner.next_use;
        inner.next_use += 1;
        if let Some(old) = inner.last.get(&key).map(|l| l.used) {
            inner.order.remove(&old);
        } else if inner.last.len() >= MAX_ALARM_KEYS
            && let Some((_, oldest)) = inner.order.pop_first()
        {
            inner.last.remove(&oldest);
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        inner.order.insert(used, key.clone());
        inner.last.insert(
            key,
            Last {
                action,
                at_ms,
                used,
            },
        );
    }

    /// Events not sent because they changed nothing.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }

    /// Keys dropped to stay within [`MAX_ALARM_KEYS`].
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last
            .len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AlarmAction::{Clear, Raise};

    /// Send what the memory lets through; returns whether it was sent.
    fn offer(m: &AlarmMemory, device: &str, action: AlarmAction, at_ms: u64) -> bool {
        let send = m.should_send(device, "hot", action, at_ms);
        if send {
            m.sent(device, "hot", action, at_ms);
        }
        send
    }

    #[test]
    fn only_changes_and_refreshes_are_sent() {
        let m = AlarmMemory::new();
        // after a start nothing is known: the first clear goes once
        assert!(offer(&m, "d1", Clear, 0));
        assert!(!offer(&m, "d1", Clear, 1_000));
        assert!(!offer(&m, "d1", Clear, 2_000));
        assert!(offer(&m, "d1", Raise, 3_000));
        assert!(!offer(&m, "d1", Raise, 4_000));
        assert!(!offer(&m, "d1", Raise, 3_000 + RAISE_REFRESH_MS - 1));
        assert!(offer(&m, "d1", Raise, 3_000 + RAISE_REFRESH_MS));
        assert!(offer(&m, "d1", Clear, 70_000));
        assert!(!offer(&m, "d1", Clear, 71_000));
        // another device or type is its own key
        assert!(offer(&m, "d2", Clear, 71_000));
        assert!(m.should_send("d1", "cold", Clear, 71_000));
        assert_eq!(m.suppressed(), 5);
    }

    #[test]
    fn a_send_not_remembered_is_offered_again() {
        let m = AlarmMemory::new();
        assert!(m.should_send("d1", "hot", Raise, 0));
        // the service failed: nothing remembered, the retry goes
        assert!(m.should_send("d1", "hot", Raise, 0));
        m.sent("d1", "hot", Raise, 0);
        assert!(!m.should_send("d1", "hot", Raise, 0));
    }

    #[test]
    fn the_least_recently_used_key_is_dropped_and_counted() {
        let m = AlarmMemory::new();
        for i in 0..MAX_ALARM_KEYS {
            m.sent(&format!("d{i}"), "hot", Raise, 0);
        }
        // d0 is used again, so d1 is now the oldest
        m.sent("d0", "hot", Raise, 10);
        m.sent("new", "hot", Raise, 0);
        assert_eq!((m.len(), m.evicted()), (MAX_ALARM_KEYS, 1));
        assert!(!m.should_send("d0", "hot", Raise, 10));
        // d1 is forgotten: its next clear is sent, as after a restart
        assert!(m.should_send("d1", "hot", Clear, 20));
        assert!(!m.should_send("d2", "hot", Raise, 0));
    }
}

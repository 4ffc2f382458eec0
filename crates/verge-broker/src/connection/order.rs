//! Ordering of SUBSCRIBEs before other connections' PUBLISHes.
//!
//! Every connection is its own task, so two sockets that become readable
//! together are read in an order of the runtime's choosing (tokio runs the
//! task woken last first, and another worker may steal the other one).
//!
//! What the broker promises: a SUBSCRIBE it has read from one socket is
//! with the router before any PUBLISH it read later from another socket is
//! routed. A connection whose read holds a SUBSCRIBE takes a hold on
//! [`SubscribeOrder`] in the same poll as the read, and lets go when the
//! SUBSCRIBE is sent to the router; a connection about to route publishes
//! first waits until no other connection holds one. A connection lets go of
//! its own hold before it waits, so two never wait for each other (the one
//! exception to the promise: a read whose own publishes come before its
//! SUBSCRIBE, while another connection holds).
//!
//! Not promised: arrival order across two sockets. Connections whose
//! sockets become readable together run in an order of the runtime's
//! choosing (tokio runs the task woken last first, and another worker may
//! steal one), so a PUBLISH may be read and routed before a SUBSCRIBE that
//! reached another socket earlier has been read at all (paho trials with a
//! SUBSCRIBE written just before another client's PUBLISH: about half
//! missed). Giving the runtime one turn (`yield_now`) before routing each
//! read's publishes cut that to a few in 50, but cost a quarter of QoS 1
//! 1 x 1 throughput and 35-50 us of p50 latency (`verge bench broker`), so
//! it is not done; the regression tests stay ignored until arrival order
//! is kept.
//!
//! Cost: one atomic load per batch of publishes while nobody subscribes.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Connections holding a SUBSCRIBE they read and have not yet handed to the
/// router.
#[derive(Debug, Default)]
pub(crate) struct SubscribeOrder {
    holds: AtomicUsize,
    released: Notify,
}

impl SubscribeOrder {
    pub fn hold(&self) {
        self.holds.fetch_add(1, Ordering::SeqCst);
    }

    pub fn release(&self) {
        if self.holds.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.released.notify_waiters();
        }
    }

    /// Resolve once no connection holds an unsent SUBSCRIBE.
    pub async fn wait(&self) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.holds.load(Ordering::SeqCst) == 0 {
                return;
            }
            released.await;
        }
    }
}

/// Does `buf` hold (the start of) a SUBSCRIBE packet? Walks the fixed
/// headers only; stops at the first incomplete length.
pub(crate) fn holds_subscribe(buf: &[u8]) -> bool {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] >> 4 == 8 {
            return true;
        }
        let mut len = 0usize;
        let mut shift = 0;
        let mut j = i + 1;
        loop {
            let Some(&b) = buf.get(j) else {
                return false;
            };
            len |= usize::from(b & 0x7F) << shift;
            j += 1;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift > 21 {
                return false;
            }
        }
        i = j.saturating_add(len);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::holds_subscribe;

    #[test]
    fn finds_a_subscribe_behind_other_packets() {
        // PINGREQ, PUBLISH "a" (length 3), SUBSCRIBE
        assert!(holds_subscribe(&[0xC0, 0, 0x30, 3, 0, 1, b'a', 0x82, 6]));
        assert!(!holds_subscribe(&[0xC0, 0, 0x30, 3, 0, 1, b'a']));
        // a payload byte that looks like SUBSCRIBE is not one
        assert!(!holds_subscribe(&[0x30, 4, 0, 1, b'a', 0x82]));
        // incomplete length
        assert!(!holds_subscribe(&[0x30, 0x80]));
        assert!(!holds_subscribe(&[]));
        // a two-byte length
        let mut long = vec![0x30, 0x80, 0x01];
        long.extend(std::iter::repeat_n(0u8, 128));
        long.push(0x82);
        assert!(holds_subscribe(&long));
    }
}

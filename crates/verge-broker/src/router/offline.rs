//! Deliveries a session's mailbox cannot take now: the wait for room in a
//! full mailbox (slow consumers) and the offline queues of persistent
//! sessions whose connection is ending or gone.

use verge_mqtt::QoS;

use super::Router;
use crate::delivery::Delivery;
use crate::mailbox::PushError;
use crate::stats::inc;
use crate::subs::SubKey;

impl Router {
    /// Wait for room for deliveries that found their session's queue full.
    /// While the router waits it reads no new events, so publishers are
    /// slowed down instead of their messages being dropped. A session that
    /// stays full for `slow_consumer_wait` is marked slow: its messages are
    /// then dropped and counted until its queue is half empty.
    pub(super) async fn unstall(&mut self) {
        let wait = self.cfg.slow_consumer_wait;
        for (key, mailbox, d) in std::mem::take(&mut self.stalled) {
            let slow = self
                .sessions
                .get(&key)
                .and_then(|s| s.link.as_ref())
                .is_none_or(|l| l.slow);
            if slow {
                inc(&self.stats.dropped_queue_full);
                continue;
            }
            match mailbox.push_wait(d, wait).await {
                Ok(()) => {}
                Err(PushError::Closed(d)) => self.keep_offline(key, d),
                Err(PushError::Full(_)) => {
                    inc(&self.stats.dropped_queue_full);
                    inc(&self.stats.slow_consumers);
                    if let Some(l) = self.sessions.get_mut(&key).and_then(|s| s.link.as_mut()) {
                        l.slow = true;
                    }
                }
            }
        }
        for s in self.sessions.values_mut() {
            if let Some(l) = &mut s.link {
                l.stalled = false;
            }
        }
    }

    /// Queue a delivery for a session whose connection is ending or gone.
    pub(super) fn keep_offline(&mut self, key: SubKey, d: Delivery) {
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        if d.qos == QoS::AtMostOnce {
            inc(&self.stats.dropped_offline_qos0);
        } else if s.offline.len() + s.carry.queued.len() >= self.cfg.max_queued {
            inc(&self.stats.dropped_queue_full);
        } else {
            s.offline.push_back(d);
        }
    }
}

//! The rule engine's `upstream` action onto the cache queue: rows become
//! queue records, acknowledged once they are durable.

use bytes::Bytes;
use verge_queue::{Queue, Record, now_ms};
use verge_rules::Upstream;
use verge_rules::action::BoxFuture;

/// [`Upstream`] over the cache queue.
pub struct QueueUpstream {
    queue: Queue,
}

impl QueueUpstream {
    /// Send upstream rows into `queue`.
    pub fn new(queue: Queue) -> QueueUpstream {
        QueueUpstream { queue }
    }
}

impl Upstream for QueueUpstream {
    fn send<'a>(
        &'a self,
        lane: &'a str,
        topic: String,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), String>> {
        self.send_many(lane, vec![(topic, payload)])
    }

    fn check_lane(&self, lane: &str) -> Result<(), String> {
        match self.queue.lane_index(lane) {
            Some(_) => Ok(()),
            None => Err(format!(
                "no cache queue lane `{lane}` (lanes: {})",
                self.queue.lanes().join(", ")
            )),
        }
    }

    fn send_many<'a>(
        &'a self,
        lane: &'a str,
        messages: Vec<(String, Bytes)>,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let time_ms = now_ms();
            let records = messages
                .into_iter()
                .map(|(topic, payload)| Record {
                    topic,
                    payload,
                    time_ms,
                })
                .collect();
            self.queue
                .append(lane, records)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

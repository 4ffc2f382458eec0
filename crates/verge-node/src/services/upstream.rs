//! The rule engine's `upstream` action onto the cache queue: rows become
//! queue records, acknowledged once they are durable.

use bytes::Bytes;
use verge_net::BoxFuture;
use verge_net::now_ms;
use verge_queue::{Queue, QueueError, Record};
use verge_rules::{Domain, ServiceError, Upstream};

/// A queue error as a service error: whether the rule's action may retry.
///
/// - `TooLarge`, `UnknownLane`, `Config`: the call itself is wrong; no retry.
/// - `Full` (a `reject` lane): retry, the bridge frees room as the cloud
///   acknowledges; the action's attempts bound how long.
/// - `Io`: retry; a lasting disk fault stops the writer, and the next
///   attempt then gets `Failed`.
/// - `Failed`, `Closed`, `Locked`: the queue no longer takes appends until
///   the node reopens it; no retry.
pub fn service_error(e: QueueError) -> ServiceError {
    let message = e.to_string();
    match e {
        QueueError::TooLarge { .. } | QueueError::UnknownLane(_) | QueueError::Config(_) => {
            ServiceError::permanent(Domain::User, message)
        }
        QueueError::Full { .. } | QueueError::Io { .. } => {
            ServiceError::transient(Domain::External, message)
        }
        QueueError::Failed(_) | QueueError::Locked(_) => {
            ServiceError::permanent(Domain::External, message)
        }
        QueueError::Closed => ServiceError::permanent(Domain::Internal, message),
    }
}

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
    ) -> BoxFuture<'a, Result<(), ServiceError>> {
        self.send_many(lane, vec![(topic, payload)])
    }

    fn check_lane(&self, lane: &str) -> Result<(), ServiceError> {
        match self.queue.lane_index(lane) {
            Some(_) => Ok(()),
            None => Err(ServiceError::permanent(
                Domain::User,
                format!(
                    "no cache queue lane `{lane}` (lanes: {})",
                    self.queue.lanes().join(", ")
                ),
            )),
        }
    }

    fn send_many<'a>(
        &'a self,
        lane: &'a str,
        messages: Vec<(String, Bytes)>,
    ) -> BoxFuture<'a, Result<(), ServiceError>> {
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
                .map_err(service_error)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_queue::{LaneConfig, QueueConfig, WhenFull};

    fn open(dir: &std::path::Path) -> Queue {
        let cfg = QueueConfig {
            dir: dir.to_path_buf(),
            lanes: vec![LaneConfig {
                name: "small".into(),
                priority: 0,
                max_bytes: 4096,
                max_age: None,
                when_full: WhenFull::Reject,
            }],
            ..QueueConfig::default()
        };
        Queue::open(cfg).expect("open").0
    }

    /// Regression: `TooLarge` (a record that can never fit) was retried as
    /// if it were transient.
    #[tokio::test]
    async fn queue_errors_say_whether_a_retry_can_help() {
        let dir = tempfile::tempdir().expect("tempdir");
        let queue = open(dir.path());
        let up = QueueUpstream::new(queue.clone());
        let big = Bytes::from(vec![b'x'; 9000]);
        let e = up
            .send("small", "t".into(), big)
            .await
            .expect_err("too large");
        assert_eq!((e.domain, e.retry), (Domain::User, false), "{e}");
        let e = up.check_lane("nope").expect_err("unknown lane");
        assert_eq!((e.domain, e.retry), (Domain::User, false), "{e}");
        assert!(e.message.contains("lanes: small"), "{e}");

        let e = loop {
            let payload = Bytes::from(vec![b'x'; 500]);
            if let Err(e) = up.send("small", "t".into(), payload).await {
                break e;
            }
        };
        assert!(e.message.contains("is full"), "{e}");
        assert_eq!((e.domain, e.retry), (Domain::External, true), "{e}");

        queue.close().await;
        let e = up
            .send("small", "t".into(), Bytes::from_static(b"1"))
            .await
            .expect_err("closed");
        assert_eq!((e.domain, e.retry), (Domain::Internal, false), "{e}");
    }
}

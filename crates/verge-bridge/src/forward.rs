//! Topic forwards: local messages matching a configured filter go into a
//! lane of the cache queue as they arrive, in batches (one durable append
//! per batch, so many messages share one group commit). The subscription is
//! durable: each message is confirmed to the broker only after the append
//! of its batch returned, so a device's PUBACK never precedes durability;
//! a failed append is confirmed as failed and the device is told.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;
use verge_broker::{DurableMessage, DurableSubscription};
use verge_queue::{Queue, Record};

use crate::link::ORIGIN;
use crate::status::Status;

/// Messages taken from the subscription per append.
const BATCH: usize = 1024;

/// One forward's task: subscription → queue lane, until `stop`; what is
/// already in the subscription's queue when `stop` comes is still
/// appended.
pub async fn run(
    mut sub: DurableSubscription,
    lane: String,
    queue: Queue,
    status: Arc<Status>,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf = Vec::with_capacity(BATCH);
    let mut seen_dropped = 0;
    loop {
        let n = tokio::select! {
            n = sub.recv_many(&mut buf, BATCH) => n,
            _ = stop.changed() => {
                // Drain what has arrived, without waiting for more.
                while let Ok(n) = tokio::time::timeout(Duration::ZERO, sub.recv_many(&mut buf, BATCH)).await {
                    if n == 0 || buf.len() >= 64 * BATCH {
                        break;
                    }
                }
                append(&mut buf, &lane, &queue, &status).await;
                return;
            }
        };
        if n == 0 {
            return;
        }
        append(&mut buf, &lane, &queue, &status).await;
        let dropped = sub.dropped();
        if dropped > seen_dropped {
            status
                .forward_dropped
                .fetch_add(dropped - seen_dropped, Ordering::Relaxed);
            seen_dropped = dropped;
        }
    }
}

/// Append `buf` to the lane as one batch, then confirm each message to the
/// broker: success once the append returned Ok, failure otherwise.
/// Downstream messages (origin `$bridge`) are not forwarded and are
/// confirmed at once.
async fn append(buf: &mut Vec<DurableMessage>, lane: &str, queue: &Queue, status: &Status) {
    let now = verge_net::now_ms();
    let mut records = Vec::with_capacity(buf.len());
    let mut confirms = Vec::with_capacity(buf.len());
    for DurableMessage { msg, confirm } in buf.drain(..) {
        if &*msg.origin == ORIGIN {
            confirm.ok();
            continue;
        }
        records.push(Record {
            topic: msg.topic.to_string(),
            payload: msg.payload.clone(),
            time_ms: now,
        });
        confirms.push(confirm);
    }
    if records.is_empty() {
        return;
    }
    let n = records.len() as u64;
    match queue.append(lane, records).await {
        Ok(_) => {
            status.forwarded.fetch_add(n, Ordering::Relaxed);
            confirms.into_iter().for_each(|c| c.ok());
        }
        Err(e) => {
            warn!(lane, "forward: {n} messages not queued: {e}");
            status.forward_failed.fetch_add(n, Ordering::Relaxed);
            status.error(format!("forward to lane `{lane}`: {e}"));
            confirms.into_iter().for_each(|c| c.fail());
        }
    }
}

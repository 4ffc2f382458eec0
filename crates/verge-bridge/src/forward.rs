//! Topic forwards: local messages matching a configured filter go into a
//! lane of the cache queue as they arrive, in batches (one durable append
//! per batch, so many messages share one group commit). The subscription is
//! durable: each message is confirmed to the broker only after the append
//! of its batch returned, so a device's PUBACK never precedes durability;
//! a failed append is confirmed as failed and the device is told.
//!
//! [`Forwards`] is the running set, replaced as a whole at run time
//! ([`Forwards::replace`]): a forward kept as it is runs on untouched; one
//! whose filter stays and whose lane changes switches lanes between two
//! batches (each message lands in exactly one of the two lanes); a new one
//! subscribes before any dropped one stops; a dropped one closes its
//! subscription and appends and confirms everything the broker routed to
//! it before the close, so it fails no publisher and loses nothing a
//! device was acknowledged for. A topic matched both by a dropped filter
//! and by a different new one may be queued twice while the two overlap
//! (the subscribe comes first: a duplicate, never a gap).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{Mutex, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};
use verge_broker::{BrokerHandle, DurableMessage, DurableSubscription};
use verge_mqtt::topic;
use verge_queue::{Queue, Record};

use crate::link::ORIGIN;
use crate::status::Status;
use crate::{BridgeError, Forward};

/// Messages taken from the subscription per append.
const BATCH: usize = 1024;

/// Capacity of each forward's local subscription queue.
const FORWARD_QUEUE: usize = 65_536;

/// Forwards one bridge runs at most (the same bound as a deployed
/// `bridge.forwards`).
pub const MAX_FORWARDS: usize = verge_protocol::MAX_FORWARDS;

/// What [`BridgeHandle::set_forwards`](crate::BridgeHandle::set_forwards) changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwardsChange {
    /// Forwards left running as they were.
    pub kept: usize,
    /// Forwards whose filter stayed and whose lane changed.
    pub relaned: usize,
    /// New subscriptions.
    pub added: usize,
    /// Forwards stopped (after appending what they held).
    pub removed: usize,
}

/// The bridge's running forwards.
pub(crate) struct Forwards {
    /// The forwards the bridge started with (the node's config file).
    configured: Vec<Forward>,
    broker: BrokerHandle,
    queue: Queue,
    status: Arc<Status>,
    /// In the order of the last set given; `None` once stopped.
    running: Mutex<Option<Vec<Running>>>,
}

/// One running forward.
struct Running {
    forward: Forward,
    /// The lane its task appends to, read per batch.
    lane: watch::Sender<String>,
    /// Stop: close the subscription, append what it holds, end.
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Why `forwards` cannot run on `queue`, naming the key.
pub(crate) fn check(forwards: &[Forward], queue: &Queue) -> Result<(), BridgeError> {
    if forwards.len() > MAX_FORWARDS {
        return Err(BridgeError::Config(format!(
            "bridge.forwards: {} forwards, at most {MAX_FORWARDS}",
            forwards.len()
        )));
    }
    for (i, f) in forwards.iter().enumerate() {
        if !topic::valid_topic_filter(&f.filter) {
            return Err(BridgeError::Config(format!(
                "bridge.forwards[{i}].filter: `{}` is not a valid topic filter",
                f.filter
            )));
        }
        if queue.lane_index(&f.lane).is_none() {
            return Err(BridgeError::Config(format!(
                "bridge.forwards[{i}].lane: no queue lane `{}` (lanes: {}; the lanes are \
                 `[[queue.lanes]]` in the node's config file and change only with a restart)",
                f.lane,
                queue.lanes().join(", ")
            )));
        }
    }
    Ok(())
}

impl Forwards {
    /// Check `configured` and subscribe each of its forwards.
    pub(crate) async fn start(
        configured: Vec<Forward>,
        broker: BrokerHandle,
        queue: Queue,
        status: Arc<Status>,
    ) -> Result<Forwards, BridgeError> {
        check(&configured, &queue)?;
        let forwards = Forwards {
            configured: configured.clone(),
            broker,
            queue,
            status,
            running: Mutex::new(Some(Vec::new())),
        };
        let mut running = Vec::with_capacity(configured.len());
        for f in configured {
            match forwards.spawn(f).await {
                Ok(r) => running.push(r),
                Err(e) => {
                    stop_all(running).await;
                    return Err(e);
                }
            }
        }
        *forwards.running.lock().await = Some(running);
        Ok(forwards)
    }

    /// The forwards the bridge started with.
    pub(crate) fn configured(&self) -> &[Forward] {
        &self.configured
    }

    /// The forwards running now, in the order last given.
    pub(crate) async fn current(&self) -> Vec<Forward> {
        self.running
            .lock()
            .await
            .iter()
            .flatten()
            .map(|r| r.forward.clone())
            .collect()
    }

    /// Run exactly `next`. Checked as a whole first: a bad filter, a lane
    /// the queue does not have or too many forwards change nothing. Then
    /// new forwards subscribe, changed lanes switch, dropped forwards stop
    /// after appending what they hold; unchanged ones are not touched.
    pub(crate) async fn replace(&self, next: Vec<Forward>) -> Result<ForwardsChange, BridgeError> {
        check(&next, &self.queue)?;
        let mut guard = self.running.lock().await;
        let Some(running) = guard.as_mut() else {
            return Err(BridgeError::Stopped);
        };
        // Pair each next forward with a running one: same filter and lane
        // first, then same filter (its lane changes).
        let mut pair: Vec<Option<usize>> = vec![None; next.len()];
        let mut taken = vec![false; running.len()];
        for same_lane in [true, false] {
            for (p, f) in pair.iter_mut().zip(&next) {
                if p.is_some() {
                    continue;
                }
                *p = (0..running.len()).find(|&j| {
                    let r = &running[j].forward;
                    !taken[j] && r.filter == f.filter && (!same_lane || r.lane == f.lane)
                });
                if let Some(j) = *p {
                    taken[j] = true;
                }
            }
        }
        // Subscribe the new ones before anything changes; on an error
        // they stop again (appending what they took) and the running ones
        // stay as they were.
        let mut fresh = Vec::new();
        for (p, f) in pair.iter().zip(&next) {
            if p.is_some() {
                continue;
            }
            match self.spawn(f.clone()).await {
                Ok(r) => fresh.push(r),
                Err(e) => {
                    stop_all(fresh).await;
                    return Err(e);
                }
            }
        }
        let mut change = ForwardsChange {
            added: fresh.len(),
            ..ForwardsChange::default()
        };
        let mut old: Vec<Option<Running>> = running.drain(..).map(Some).collect();
        let mut fresh = fresh.into_iter();
        for (p, f) in pair.iter().zip(&next) {
            let r = match p {
                Some(j) => {
                    let Some(mut r) = old[*j].take() else {
                        continue;
                    };
                    if r.forward.lane == f.lane {
                        change.kept += 1;
                    } else {
                        r.lane.send_replace(f.lane.clone());
                        r.forward.lane = f.lane.clone();
                        change.relaned += 1;
                    }
                    r
                }
                None => match fresh.next() {
                    Some(r) => r,
                    None => continue,
                },
            };
            running.push(r);
        }
        let dropped: Vec<Running> = old.into_iter().flatten().collect();
        change.removed = dropped.len();
        drop(guard);
        stop_all(dropped).await;
        info!(
            kept = change.kept,
            relaned = change.relaned,
            added = change.added,
            removed = change.removed,
            "bridge forwards replaced"
        );
        Ok(change)
    }

    /// Stop every forward (each appends what it holds); the set takes no
    /// more changes.
    pub(crate) async fn stop(&self) {
        let running = self.running.lock().await.take();
        stop_all(running.unwrap_or_default()).await;
    }

    /// Subscribe `f` durably and start its task.
    async fn spawn(&self, f: Forward) -> Result<Running, BridgeError> {
        // Durable: a device's QoS 1/2 PUBLISH is acknowledged only after
        // the forward appended it to the queue.
        let sub = self
            .broker
            .subscribe_durable(std::slice::from_ref(&f.filter), FORWARD_QUEUE)
            .await?;
        let (lane, lane_rx) = watch::channel(f.lane.clone());
        let (stop, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run(
            sub,
            lane_rx,
            self.queue.clone(),
            self.status.clone(),
            stop_rx,
        ));
        Ok(Running {
            forward: f,
            lane,
            stop,
            task,
        })
    }
}

/// Tell each forward to stop, then wait until each has appended what it
/// holds.
async fn stop_all(running: Vec<Running>) {
    let mut tasks = Vec::with_capacity(running.len());
    for r in running {
        let _ = r.stop.send(());
        tasks.push(r.task);
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// One forward's task: subscription → queue lane, until `stop`. Then it
/// closes the subscription and appends everything the broker routed to it
/// before the close, so no publisher waiting for it is failed.
async fn run(
    mut sub: DurableSubscription,
    lane: watch::Receiver<String>,
    queue: Queue,
    status: Arc<Status>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut buf = Vec::with_capacity(BATCH);
    let mut seen_dropped = 0;
    let mut stopping = false;
    loop {
        let n = if stopping {
            sub.recv_many(&mut buf, BATCH).await
        } else {
            tokio::select! {
                n = sub.recv_many(&mut buf, BATCH) => n,
                _ = &mut stop => {
                    // The broker routes nothing more here; what it routed
                    // before is received below, then `recv_many` says 0.
                    sub.close();
                    stopping = true;
                    continue;
                }
            }
        };
        if n == 0 {
            return;
        }
        // Read per batch: a lane change lands between two batches.
        let to = lane.borrow().clone();
        append(&mut buf, &to, &queue, &status).await;
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

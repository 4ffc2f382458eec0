//! The task in front of every action: a bounded queue of rows, one attempt
//! at a time, retries with backoff for transient failures, and counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use verge_net::Backoff;

use super::{Action, ActionError, Output};

/// Rows handed to [`Action::deliver_batch`] at once.
const BATCH: usize = 1024;
use crate::config::Delivery;

/// Counters of one action of one rule.
#[derive(Debug, Default)]
pub struct ActionMetrics {
    /// Rows the action handled.
    pub delivered: AtomicU64,
    /// Rows given up on after the last attempt (or a permanent failure).
    pub failed: AtomicU64,
    /// Extra attempts made.
    pub retries: AtomicU64,
    /// Rows dropped because the queue was full.
    pub dropped: AtomicU64,
    /// The most recent failure.
    pub last_error: Mutex<Option<String>>,
}

/// A snapshot of [`ActionMetrics`] for the API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionStatus {
    /// The action's `type`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Rows handled.
    pub delivered: u64,
    /// Rows given up on.
    pub failed: u64,
    /// Extra attempts.
    pub retries: u64,
    /// Rows dropped on a full queue.
    pub dropped: u64,
    /// Rows waiting now.
    pub queued: usize,
    /// The most recent failure.
    pub last_error: Option<String>,
}

/// Where a rule task hands rows to one action.
pub struct ActionInlet {
    tx: mpsc::Sender<Arc<Output>>,
    metrics: Arc<ActionMetrics>,
}

impl ActionInlet {
    /// Queue a row; when the queue is full it is dropped and counted, so a
    /// slow action never holds up its rule.
    pub fn offer(&self, out: &Arc<Output>) {
        if self.tx.try_send(out.clone()).is_err() {
            self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A running action: its queue and its task.
pub struct ActionRunner {
    kind: &'static str,
    tx: mpsc::Sender<Arc<Output>>,
    metrics: Arc<ActionMetrics>,
    task: JoinHandle<()>,
}

impl ActionRunner {
    /// Start the task for `action`.
    pub fn spawn(kind: &'static str, action: Arc<dyn Action>, delivery: &Delivery) -> ActionRunner {
        let (tx, rx) = mpsc::channel(delivery.queue.max(1));
        let metrics = Arc::new(ActionMetrics::default());
        let task = tokio::spawn(run(action, rx, delivery.clone(), metrics.clone()));
        ActionRunner {
            kind,
            tx,
            metrics,
            task,
        }
    }

    /// The end of the queue the rule task writes to.
    pub fn inlet(&self) -> ActionInlet {
        ActionInlet {
            tx: self.tx.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// The action's counters now.
    pub fn status(&self) -> ActionStatus {
        let m = &self.metrics;
        ActionStatus {
            kind: self.kind,
            delivered: m.delivered.load(Ordering::Relaxed),
            failed: m.failed.load(Ordering::Relaxed),
            retries: m.retries.load(Ordering::Relaxed),
            dropped: m.dropped.load(Ordering::Relaxed),
            queued: self.tx.max_capacity() - self.tx.capacity(),
            last_error: m.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }

    /// Close the queue and let the task finish the rows already in it,
    /// waiting at most `grace`; then stop it.
    pub async fn finish(self, grace: Duration) {
        let ActionRunner { tx, mut task, .. } = self;
        drop(tx);
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
        }
    }
}

async fn run(
    action: Arc<dyn Action>,
    mut rx: mpsc::Receiver<Arc<Output>>,
    delivery: Delivery,
    metrics: Arc<ActionMetrics>,
) {
    let attempts = delivery.max_attempts.max(1);
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let results = action.deliver_batch(&batch).await;
        for (i, out) in batch.drain(..).enumerate() {
            let first = results
                .get(i)
                .cloned()
                .unwrap_or_else(|| Err(ActionError::permanent("the action returned no result")));
            settle(&*action, &out, first, attempts, &delivery, &metrics).await;
        }
    }
}

/// Count a row's first result; retry it alone with backoff while the
/// failure is transient and attempts are left.
async fn settle(
    action: &dyn Action,
    out: &Output,
    first: Result<(), ActionError>,
    attempts: u32,
    delivery: &Delivery,
    metrics: &ActionMetrics,
) {
    let mut result = first;
    let mut backoff = Backoff::new(delivery.backoff.get(), delivery.max_backoff.get());
    let mut attempt = 1;
    loop {
        match result {
            Ok(()) => {
                metrics.delivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(e) if e.retry && attempt < attempts => {
                attempt += 1;
                metrics.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(backoff.next_delay()).await;
                result = action.deliver(out).await;
            }
            Err(e) => {
                tracing::warn!(rule = %out.rule, "action failed: {e}");
                metrics.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut last) = metrics.last_error.lock() {
                    *last = Some(e.message);
                }
                return;
            }
        }
    }
}

//! One running rule: a task that reads the rule's broker subscription in
//! batches, feeds the executor, closes windows on time and hands rows to
//! the actions' queues.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use verge_broker::{LocalSubscription, Message};
use verge_sql::{Event, Executor, Row};

use crate::action::{ActionInlet, ActionRunner, Output, rule_origin};
use verge_metrics::Histogram;
use verge_net::now_ms;

/// Messages taken from the subscription per batch.
const BATCH: usize = 256;

/// Messages that went through this many rules or functions already are not
/// taken by another rule (counted as `dropped_loop`): rules that feed each
/// other stop here instead of looping forever.
pub(crate) const MAX_HOPS: u8 = 8;

/// What a running rule shares with the engine for status and metrics.
pub(crate) struct Shared {
    /// The executor (window state and its counters); locked per batch.
    pub exec: Mutex<Executor>,
    /// Receipt-to-processed latency per message.
    pub latency: Histogram,
    /// Messages the broker dropped because the rule's queue was full.
    pub queue_dropped: AtomicU64,
    /// Messages refused because they had passed [`MAX_HOPS`] steps.
    pub loop_dropped: AtomicU64,
    /// Internal failures (a panic while evaluating) caught by the task.
    pub internal_errors: AtomicU64,
    /// The most recent internal failure.
    pub internal_error: Mutex<Option<String>>,
}

impl Shared {
    pub(crate) fn exec(&self) -> MutexGuard<'_, Executor> {
        self.exec.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A rule's task and its actions.
pub(crate) struct Running {
    pub shared: Arc<Shared>,
    pub actions: Vec<ActionRunner>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Running {
    /// Start the rule task over `sub`.
    pub fn start(
        id: Arc<str>,
        sub: LocalSubscription,
        exec: Executor,
        aggregate: bool,
        actions: Vec<ActionRunner>,
    ) -> Running {
        let shared = Arc::new(Shared {
            exec: Mutex::new(exec),
            latency: Histogram::default(),
            queue_dropped: AtomicU64::new(0),
            loop_dropped: AtomicU64::new(0),
            internal_errors: AtomicU64::new(0),
            internal_error: Mutex::new(None),
        });
        let inlets = actions.iter().map(ActionRunner::inlet).collect();
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(id, sub, shared.clone(), inlets, aggregate, stop_rx));
        Running {
            shared,
            actions,
            stop,
            task,
        }
    }

    /// Whether the task has ended on its own (the broker stopped).
    pub fn ended(&self) -> bool {
        self.task.is_finished()
    }

    /// Stop reading and wait for the rule task (quick: it never waits on
    /// actions); returns the actions, which still hold their queues.
    pub async fn halt(self) -> Vec<ActionRunner> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.actions
    }
}

/// Let each action finish its queue, all at once, for up to `grace`.
pub(crate) async fn finish_all(actions: Vec<ActionRunner>, grace: Duration) {
    let mut tasks = tokio::task::JoinSet::new();
    for a in actions {
        tasks.spawn(a.finish(grace));
    }
    while tasks.join_next().await.is_some() {}
}

async fn run(
    id: Arc<str>,
    mut sub: LocalSubscription,
    shared: Arc<Shared>,
    inlets: Vec<ActionInlet>,
    aggregate: bool,
    mut stop: watch::Receiver<bool>,
) {
    let own = rule_origin(&id);
    let mut batch: Vec<Arc<Message>> = Vec::with_capacity(BATCH);
    let mut rows: Vec<Row> = Vec::new();
    let mut out: Vec<(Row, Arc<str>, u8)> = Vec::new();
    // Window rows summarise many messages: they carry no source topic.
    let no_topic: Arc<str> = Arc::from("");
    // A window row's hop count is the highest of the messages seen so far.
    let mut window_hops = 0u8;
    loop {
        let deadline = shared.exec().next_deadline();
        let wait = deadline
            .map(|d| Duration::from_millis(u64::try_from(d.saturating_sub(now_ms())).unwrap_or(0)));
        tokio::select! {
            _ = stop.changed() => break,
            n = sub.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    break;
                }
                let (wall, at) = (now_ms(), Instant::now());
                {
                    let mut exec = shared.exec();
                    for m in batch.drain(..) {
                        // The rule's own republished rows do not feed it again.
                        if m.origin == own {
                            continue;
                        }
                        if m.hops >= MAX_HOPS {
                            shared.loop_dropped.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        let age = at.saturating_duration_since(m.received);
                        let ev = Event {
                            topic: &m.topic,
                            payload: &m.payload,
                            client_id: &m.origin,
                            qos: m.qos as u8,
                            timestamp_ms: wall.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(0)),
                            user_properties: &m.properties.user_properties,
                        };
                        // Evaluation errors are counted by the executor; a
                        // panic is caught and counted here, and the rule runs on.
                        guarded(&shared, || {
                            let _ = exec.push(&ev, &mut rows);
                        });
                        let hops = m.hops.saturating_add(1);
                        if aggregate {
                            window_hops = window_hops.max(hops);
                            out.extend(rows.drain(..).map(|r| (r, no_topic.clone(), window_hops)));
                        } else {
                            out.extend(rows.drain(..).map(|r| (r, m.topic.clone(), hops)));
                        }
                        let us = m.received.elapsed().as_micros();
                        shared.latency.record(u64::try_from(us).unwrap_or(u64::MAX));
                    }
                    if deadline.is_some_and(|d| d <= wall) {
                        guarded(&shared, || exec.advance(wall, &mut rows));
                        out.extend(rows.drain(..).map(|r| (r, no_topic.clone(), window_hops)));
                    }
                }
                shared.queue_dropped.store(sub.dropped(), Ordering::Relaxed);
                emit(&id, &mut out, &inlets);
            }
            _ = tokio::time::sleep(wait.unwrap_or(Duration::ZERO)), if wait.is_some() => {
                {
                    let mut exec = shared.exec();
                    guarded(&shared, || exec.advance(now_ms(), &mut rows));
                }
                out.extend(rows.drain(..).map(|r| (r, no_topic.clone(), window_hops)));
                emit(&id, &mut out, &inlets);
            }
        }
    }
}

/// Run `f`; a panic inside it is counted as an internal error instead of
/// ending the rule.
fn guarded(shared: &Shared, f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        shared.internal_errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = shared.internal_error.lock() {
            *e = Some("internal error while evaluating a message (see the node log)".into());
        }
        tracing::error!("rule evaluation panicked; the message was skipped");
    }
}

fn emit(id: &Arc<str>, out: &mut Vec<(Row, Arc<str>, u8)>, inlets: &[ActionInlet]) {
    if inlets.is_empty() {
        out.clear();
        return;
    }
    let time_ms = now_ms();
    for (row, topic, hops) in out.drain(..) {
        let json = Bytes::from(row.to_json());
        let o = Arc::new(Output {
            rule: id.clone(),
            row,
            json,
            topic,
            time_ms,
            hops,
        });
        for inlet in inlets {
            inlet.offer(&o);
        }
    }
}

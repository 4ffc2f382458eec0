//! The wake hub: held desired-state long polls wait here for their own
//! node only, so one change wakes that node's polls and not every poll in
//! the process.
//!
//! Fed by changes this process commits (`Cloud::notify_nodes`) and, on
//! PostgreSQL, by [`listen`]: a `LISTEN` connection on the channel the
//! `nodes` trigger notifies at commit when a node's `desired_version`
//! changes or the node is deleted (payload: the node id), so a change
//! made through any replica wakes the polls every replica holds. While
//! the listener is down, polls fall back to re-reading every second; when
//! it comes back (notifications sent in between are lost) every poll
//! re-reads once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::Cloud;

/// The PostgreSQL channel of desired-state changes (see migration 10).
pub const CHANNEL: &str = "verge_desired";

/// The channel a replica notifies, with "{replica id} {node id}", when a
/// node joined (again) or was deleted through it: the others rebuild their
/// broker registry at once (embedded mode), so a node that moves to
/// another replica's endpoint is known there, and end that node's
/// connections to their own endpoints (made with an old secret, or of a
/// deleted node).
pub const REGISTRY_CHANNEL: &str = "verge_registry";

/// Per-node wake-ups for the long polls held in this process.
pub struct WakeHub {
    /// One sender per node with a held poll; removed with its last poll,
    /// so the map is bounded by the polls held (HTTP connections).
    nodes: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Bumped to wake every poll (the listener went up or down).
    all: watch::Sender<u64>,
    /// Whether every change reaches the hub (SQLite: always; PostgreSQL:
    /// while the listener is connected).
    listening: watch::Sender<bool>,
}

impl WakeHub {
    /// A hub; `complete` = every change reaches it without a listener
    /// (one process on SQLite).
    pub fn new(complete: bool) -> WakeHub {
        WakeHub {
            nodes: Mutex::new(HashMap::new()),
            all: watch::channel(0).0,
            listening: watch::channel(complete).0,
        }
    }

    /// Wait for wake-ups of `node`'s desired state.
    pub fn waiter(&self, node: &str) -> Waiter<'_> {
        let one = {
            let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
            nodes
                .entry(node.to_owned())
                .or_insert_with(|| watch::channel(0).0)
                .subscribe()
        };
        Waiter {
            hub: self,
            node: node.to_owned(),
            one,
            all: self.all.subscribe(),
        }
    }

    /// Wake the polls held for `node` (none held: nothing to do).
    pub fn wake(&self, node: &str) {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = nodes.get(node) {
            tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Wake every poll held in this process.
    pub fn wake_all(&self) {
        self.all.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Whether every change reaches the hub now.
    pub fn listening(&self) -> bool {
        *self.listening.borrow()
    }

    /// Nodes with a held poll.
    pub fn nodes_waiting(&self) -> usize {
        self.nodes.lock().map_or(0, |n| n.len())
    }

    /// The listener went up or down: every poll re-reads once (and picks
    /// its re-check interval again).
    fn set_listening(&self, up: bool) {
        self.listening.send_replace(up);
        self.wake_all();
    }
}

/// A held poll's registration; unregisters on drop.
pub struct Waiter<'a> {
    hub: &'a WakeHub,
    node: String,
    one: watch::Receiver<u64>,
    all: watch::Receiver<u64>,
}

impl Waiter<'_> {
    /// Forget wake-ups so far (call before reading the state).
    pub fn mark_seen(&mut self) {
        self.one.mark_unchanged();
        self.all.mark_unchanged();
    }

    /// Resolves at the next wake-up of this node (or of every poll).
    pub async fn woken(&mut self) {
        tokio::select! {
            r = self.one.changed() => { if r.is_err() { std::future::pending::<()>().await } }
            r = self.all.changed() => { if r.is_err() { std::future::pending::<()>().await } }
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut nodes = self.hub.nodes.lock().unwrap_or_else(|e| e.into_inner());
        // This waiter's receiver is still alive here: the last one out
        // removes the entry (subscribing takes the same lock).
        if nodes
            .get(&self.node)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            nodes.remove(&self.node);
        }
    }
}

/// Pause between reconnects of the listener.
const RECONNECT: Duration = Duration::from_secs(1);

/// PostgreSQL: keep a `LISTEN` connection on [`CHANNEL`] and wake the
/// node each notification names, and on [`REGISTRY_CHANNEL`] to rebuild
/// the broker registry after another replica's joins, until the cloud
/// stops.
pub async fn listen(cloud: Cloud) {
    let inner = cloud.inner();
    let mut stop = inner.stop.subscribe();
    let url = inner.cfg.database_url();
    loop {
        match connect(&url).await {
            Ok(mut listener) => {
                inner.wake.set_listening(true);
                // Joins made elsewhere while it was down.
                inner.registry_wake.notify_one();
                tracing::debug!("listening for desired-state changes");
                loop {
                    tokio::select! {
                        r = listener.try_recv() => match r {
                            Ok(Some(n)) if n.channel() == REGISTRY_CHANNEL => {
                                let (from, node) =
                                    n.payload().split_once(' ').unwrap_or((n.payload(), ""));
                                if from != inner.replica.id {
                                    inner.registry_wake.notify_one();
                                    if !node.is_empty() {
                                        // Its connection here was made with an
                                        // old secret, or it was deleted.
                                        let (handle, node) = (inner.handle.clone(), node.to_owned());
                                        tokio::spawn(async move {
                                            if let Err(e) = handle.disconnect_user(&node).await {
                                                tracing::warn!(node = %node, "closing a moved node's connection: {e}");
                                            }
                                        });
                                    }
                                }
                            }
                            Ok(Some(n)) => {
                                inner.metrics.wake_notifications.fetch_add(1, Ordering::Relaxed);
                                inner.wake.wake(n.payload());
                            }
                            Ok(None) => {
                                tracing::warn!("desired-state listener lost its connection");
                                break;
                            }
                            Err(e) => {
                                tracing::warn!("desired-state listener failed: {e}");
                                break;
                            }
                        },
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
                // Polls re-read every second until it is back.
                inner.wake.set_listening(false);
                inner
                    .metrics
                    .wake_reconnects
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!("desired-state listener not connected: {e}"),
        }
        tokio::select! {
            () = tokio::time::sleep(RECONNECT) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn connect(url: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen_all([CHANNEL, REGISTRY_CHANNEL]).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test]
    async fn a_wake_reaches_only_its_node_and_the_map_empties() {
        let hub = WakeHub::new(true);
        let mut a = hub.waiter("a");
        let mut a2 = hub.waiter("a");
        let mut b = hub.waiter("b");
        for w in [&mut a, &mut a2, &mut b] {
            w.mark_seen();
        }
        hub.wake("a");
        hub.wake("nobody");
        // `woken` is ready at its first poll when a wake-up came.
        assert!(a.woken().now_or_never().is_some());
        assert!(a2.woken().now_or_never().is_some());
        assert!(b.woken().now_or_never().is_none());
        hub.wake_all();
        assert!(b.woken().now_or_never().is_some());
        assert_eq!(hub.nodes_waiting(), 2);
        drop(a);
        assert_eq!(hub.nodes_waiting(), 2, "a2 still waits for a");
        drop(a2);
        drop(b);
        assert_eq!(hub.nodes_waiting(), 0);
    }
}

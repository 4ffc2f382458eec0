//! The edge node's MQTT 3.1.1/5.0 broker.
//!
//! Design: one router task owns every session, the subscription trie and the
//! retained store ([`router`]); each client connection is a task of its own
//! ([`connection`]) that decodes packets, batches publishes to the router and
//! writes deliveries. The router never waits on a consumer: each connection
//! and in-process subscriber has a bounded queue, and a full queue drops and
//! counts. The rest of the node (rules, drivers, bridge) attaches through
//! [`BrokerHandle`] without a socket and receives the same `Arc<Message>` the
//! socket subscribers get.
//!
//! A durable subscription ([`BrokerHandle::subscribe_durable`]) is the one
//! place where a consumer holds up a publisher: a client's QoS 1/2 PUBLISH
//! that reaches one is acknowledged only after the consumer confirmed that
//! it persisted the message (see [`Confirm`]), and the client's later
//! acknowledgements wait behind it, so none leaves out of order.
//!
//! Rejected alternative: shared, locked subscription maps read by every
//! connection task. It saves one channel hop, but spreads session state over
//! many owners and makes takeover, persistent sessions and wills racy.

pub mod auth;
pub mod config;
mod connection;
mod delivery;
mod durable;
pub use verge_duration as duration;
pub mod error;
pub mod listener;
mod mailbox;
pub mod message;
pub mod presence;
mod router;
pub mod stats;
mod subs;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use verge_mqtt::topic;

pub use auth::{Authenticator, Registry};
pub use config::BrokerConfig;
pub use durable::{Confirm, DurableMessage, DurableSubscription};
pub use error::BrokerError;
pub use listener::{BoundListener, Transport, bind_all};
pub use message::Message;
pub use presence::{SessionEvent, SessionInfo};
pub use stats::Stats;

use connection::Ctx;
use durable::LocalSink;
use router::{Event, Router, RouterConfig};

/// A running broker.
pub struct Broker {
    handle: BrokerHandle,
    ctx: Arc<Ctx>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Broker {
    /// Start the router on the current tokio runtime.
    pub fn start(config: BrokerConfig, auth: Authenticator) -> Broker {
        let stats = Arc::new(Stats::default());
        let (tx, rx) = mpsc::channel(4096);
        let durable = Arc::new(AtomicUsize::new(0));
        let (presence, _) = broadcast::channel(presence::SESSION_EVENTS);
        let router = Router::new(
            RouterConfig {
                max_queued: config.max_queued_messages,
                max_subscriptions: config.max_subscriptions,
                max_persistent_sessions: config.max_persistent_sessions,
                max_retained: config.max_retained,
                sys_interval: config.sys_interval.get(),
                slow_consumer_wait: config.slow_consumer_wait.get(),
            },
            stats.clone(),
            durable.clone(),
            presence.clone(),
        );
        let mut tasks = JoinSet::new();
        tasks.spawn(router.run(rx));
        let ctx = Arc::new(Ctx {
            cfg: config,
            auth,
            router: tx.clone(),
            stats: stats.clone(),
            next_conn: AtomicU64::new(1),
            password_checks: connection::password_check_slots(),
            durable,
        });
        let (shutdown, _) = watch::channel(false);
        Broker {
            handle: BrokerHandle {
                tx,
                stats,
                presence,
            },
            ctx,
            shutdown,
            tasks,
        }
    }

    /// Build the authenticator the config asks for (registry file or empty).
    pub fn authenticator(config: &BrokerConfig) -> Result<Authenticator, BrokerError> {
        match &config.devices_file {
            Some(path) => Authenticator::load(path, config.allow_anonymous, config.acl_default),
            None => Authenticator::new(
                Registry::default(),
                config.allow_anonymous,
                config.acl_default,
            ),
        }
    }

    /// Serve clients on an already-bound listener.
    pub fn serve(&mut self, listener: BoundListener) {
        let ctx = self.ctx.clone();
        let rx = self.shutdown.subscribe();
        self.tasks.spawn(listener::accept_loop(listener, ctx, rx));
    }

    /// The in-process API.
    pub fn handle(&self) -> BrokerHandle {
        self.handle.clone()
    }

    /// Stop accepting and end every client connection (5.0: reason
    /// "server shutting down"; a CONNECT still on its way is refused with
    /// "server unavailable"), keeping the in-process API: what clients
    /// published is routed before this returns (within 5 s), so in-process
    /// consumers stopped after it see every message a client was
    /// acknowledged for. A process stopping calls it before it stops the
    /// durable subscribers (whose gate holds acknowledgements back):
    /// once they are gone a PUBLISH would be acknowledged unpersisted.
    pub async fn close_clients(&self) {
        let _ = self.shutdown.send(true);
        let (done, wait) = oneshot::channel();
        if self.handle.tx.send(Event::CloseClients(done)).await.is_ok()
            && tokio::time::timeout(std::time::Duration::from_secs(5), wait)
                .await
                .is_err()
        {
            tracing::warn!("clients still connected 5 s after they were told to go");
        }
    }

    /// Stop accepting, disconnect every client (5.0: reason "server shutting
    /// down") and stop the router.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let (done, wait) = oneshot::channel();
        if self.handle.tx.send(Event::Shutdown(done)).await.is_ok() {
            let _ = wait.await;
        }
        // Give connections a moment to send their DISCONNECT.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        self.tasks.shutdown().await;
    }
}

/// The broker's in-process publish/subscribe API. Cheap to clone.
#[derive(Clone)]
pub struct BrokerHandle {
    tx: mpsc::Sender<Event>,
    stats: Arc<Stats>,
    presence: broadcast::Sender<SessionEvent>,
}

impl BrokerHandle {
    /// Publish a message as if a client had (waits only if the router is
    /// saturated).
    pub async fn publish(&self, msg: Message) -> Result<(), BrokerError> {
        if !topic::valid_topic_name(&msg.topic) {
            return Err(BrokerError::InvalidTopic(msg.topic.to_string()));
        }
        self.stats.messages_received.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send(Event::Publish(vec![(Arc::new(msg), Confirm::none())]))
            .await
            .map_err(|_| BrokerError::Closed)
    }

    /// Subscribe to a filter (`$share/...` allowed) with a queue of
    /// `capacity` messages; when it is full new messages are dropped and
    /// counted in [`LocalSubscription::dropped`].
    pub async fn subscribe(
        &self,
        filter: &str,
        capacity: usize,
    ) -> Result<LocalSubscription, BrokerError> {
        self.subscribe_many(&[filter.to_owned()], capacity).await
    }

    /// Subscribe to several filters through one queue; a message that
    /// matches more than one of them arrives once.
    pub async fn subscribe_many(
        &self,
        filters: &[String],
        capacity: usize,
    ) -> Result<LocalSubscription, BrokerError> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let (dropped, reg) = self.register(filters, LocalSink::Plain(tx)).await?;
        Ok(LocalSubscription {
            rx,
            dropped,
            _reg: reg,
        })
    }

    /// Subscribe durably to several filters through one queue of
    /// `capacity` messages: the consumer confirms each message after
    /// persisting it, and a client's QoS 1/2 PUBLISH that reached this
    /// subscription is acknowledged only after that confirmation (a failed,
    /// dropped or refused delivery — queue full — is reported to the client
    /// as a failure). Covers publishes the broker decodes after this returns.
    pub async fn subscribe_durable(
        &self,
        filters: &[String],
        capacity: usize,
    ) -> Result<DurableSubscription, BrokerError> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let (dropped, reg) = self.register(filters, LocalSink::Durable(tx)).await?;
        Ok(DurableSubscription {
            rx,
            dropped,
            reg: Some(reg),
        })
    }

    async fn register(
        &self,
        filters: &[String],
        sink: LocalSink,
    ) -> Result<(Arc<AtomicU64>, Registration), BrokerError> {
        if filters.is_empty() {
            return Err(BrokerError::InvalidTopic(String::new()));
        }
        for filter in filters {
            let valid = if filter.starts_with("$share/") {
                topic::valid_shared(filter)
            } else {
                topic::valid_topic_filter(filter)
            };
            if !valid {
                return Err(BrokerError::InvalidTopic(filter.clone()));
            }
        }
        let dropped = Arc::new(AtomicU64::new(0));
        let (reply, key) = oneshot::channel();
        self.tx
            .send(Event::LocalSubscribe {
                filters: filters.to_vec(),
                sink,
                dropped: dropped.clone(),
                reply,
            })
            .await
            .map_err(|_| BrokerError::Closed)?;
        let key = key.await.map_err(|_| BrokerError::Closed)?;
        Ok((
            dropped,
            Registration {
                key,
                filters: filters.to_vec(),
                router: self.tx.clone(),
            },
        ))
    }

    /// Close every connection authenticated as `username` (a revoked
    /// device or node), with DISCONNECT reason 0x98 "administrative
    /// action" in 5.0; returns how many were closed. Their sessions stay,
    /// as after any disconnect.
    pub async fn disconnect_user(&self, username: &str) -> Result<usize, BrokerError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Event::Disconnect {
                username: username.to_owned(),
                reason: verge_mqtt::reason::ADMINISTRATIVE_ACTION,
                reply,
            })
            .await
            .map_err(|_| BrokerError::Closed)?;
        rx.await.map_err(|_| BrokerError::Closed)
    }

    /// The retained message of the topic name `topic`, if one is held and
    /// has not expired (for protocol gateways that answer a read with the
    /// current value, such as CoAP GET).
    pub async fn retained(&self, topic: &str) -> Result<Option<Arc<Message>>, BrokerError> {
        if !topic::valid_topic_name(topic) {
            return Err(BrokerError::InvalidTopic(topic.to_owned()));
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Event::Retained {
                topic: topic.to_owned(),
                reply,
            })
            .await
            .map_err(|_| BrokerError::Closed)?;
        rx.await.map_err(|_| BrokerError::Closed)
    }

    /// The sessions that have a connection now (client id, username,
    /// since when, listener).
    pub async fn sessions(&self) -> Result<Vec<SessionInfo>, BrokerError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Event::Sessions { reply })
            .await
            .map_err(|_| BrokerError::Closed)?;
        rx.await.map_err(|_| BrokerError::Closed)
    }

    /// Connects and disconnects from now on (bounded: a receiver more than
    /// [`presence::SESSION_EVENTS`] behind gets `Lagged` and should read
    /// [`sessions`](Self::sessions) again). Subscribe before reading
    /// `sessions()` so no change falls between the two.
    pub fn session_events(&self) -> broadcast::Receiver<SessionEvent> {
        self.presence.subscribe()
    }

    /// The broker's counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
}

/// An in-process subscription; dropping it unsubscribes.
pub struct LocalSubscription {
    rx: mpsc::Receiver<Arc<Message>>,
    dropped: Arc<AtomicU64>,
    _reg: Registration,
}

impl LocalSubscription {
    /// The next message; `None` once the broker has stopped.
    pub async fn recv(&mut self) -> Option<Arc<Message>> {
        self.rx.recv().await
    }

    /// Wait for at least one message and take up to `limit` into `buf`;
    /// returns how many were taken, 0 once the broker has stopped.
    pub async fn recv_many(&mut self, buf: &mut Vec<Arc<Message>>, limit: usize) -> usize {
        self.rx.recv_many(buf, limit).await
    }

    /// Messages dropped because this subscription's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Take no more messages: those already queued can still be received,
    /// then [`recv`](Self::recv) returns `None`. Lets a consumer hand over
    /// to a new subscription without dropping what it holds.
    pub fn close(&mut self) {
        self.rx.close();
    }
}

/// An in-process subscription's entry in the router; dropping it
/// unsubscribes.
pub(crate) struct Registration {
    key: u64,
    filters: Vec<String>,
    router: mpsc::Sender<Event>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let ev = Event::LocalUnsubscribe {
            key: self.key,
            filters: std::mem::take(&mut self.filters),
        };
        if let Err(mpsc::error::TrySendError::Full(ev)) = self.router.try_send(ev) {
            let router = self.router.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = router.send(ev).await;
                });
            }
        }
    }
}

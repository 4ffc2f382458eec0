//! The router: the single owner of sessions, subscriptions and retained
//! messages. Connections and in-process users talk to it through [`Event`]s on
//! one bounded channel; it answers through per-connection channels and never
//! blocks on a slow consumer (a full queue drops and counts).
//!
//! Its parts: `event` (what it is asked, what travels with a session),
//! `sessions` (session table, takeover, resume, expiry, wills), `route`
//! (subscriptions, routing, retained messages) and `offline` (full
//! mailboxes and offline queues).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot};
use verge_mqtt::{QoS, SubOptions, reason, topic};

use crate::delivery::Delivery;
use crate::durable::LocalSink;
use crate::mailbox::Mailbox;
use crate::message::Message;
use crate::presence::{SessionEvent, SessionInfo};
use crate::stats::Stats;
use crate::subs::{Hit, SubEntry, SubKey, SubTree};
use recent::Recent;

mod event;
mod offline;
mod recent;
mod route;
mod sessions;

pub(crate) use event::{Carry, ConnectReply, ConnectReq, Event, InflightOut, Kill, SubReq};

/// Router limits taken from the config.
#[derive(Debug, Clone)]
pub(crate) struct RouterConfig {
    pub max_queued: usize,
    pub max_subscriptions: usize,
    pub max_persistent_sessions: usize,
    pub max_retained: usize,
    pub sys_interval: Duration,
    pub slow_consumer_wait: Duration,
}

struct Link {
    conn_id: u64,
    username: Option<Arc<str>>,
    /// The listener's scheme.
    transport: &'static str,
    /// When it attached, ms since the Unix epoch.
    since_ms: u64,
    mailbox: Arc<Mailbox>,
    kill: Arc<Kill>,
    /// Deliveries to this link wait in `Router::stalled` (keeps order).
    stalled: bool,
    /// The queue stayed full too long: drop QoS 1/2 until it drains to half.
    slow: bool,
}

struct Session {
    client_id: Arc<str>,
    /// The username (or certificate name) of the connection that made it;
    /// `None` for an anonymous one. Only the same identity attaches to it.
    owner: Option<Arc<str>>,
    link: Option<Link>,
    subs: HashMap<String, SubEntry>,
    offline: VecDeque<Delivery>,
    carry: Carry,
    expires: Option<Instant>,
    takeover: Option<ConnectReq>,
    /// Kept after its connection ends (session expiry above 0); counted in
    /// `Router::persistent`.
    persistent: bool,
}

struct LocalSub {
    sink: LocalSink,
    dropped: Arc<AtomicU64>,
}

pub(crate) struct Router {
    cfg: RouterConfig,
    stats: Arc<Stats>,
    sessions: HashMap<SubKey, Session>,
    by_client: HashMap<Arc<str>, SubKey>,
    locals: HashMap<SubKey, LocalSub>,
    tree: SubTree,
    retained: HashMap<Arc<str>, Arc<Message>>,
    wills: Vec<(Instant, SubKey, Arc<Message>)>,
    next_key: SubKey,
    hits: Vec<Hit>,
    stalled: Vec<(SubKey, Arc<Mailbox>, Delivery)>,
    last_sys: Instant,
    /// Persistent sessions held, connected or not (bounded by
    /// `max_persistent_sessions`).
    persistent: usize,
    /// Durable local subscriptions held, read by connections to decide
    /// whether a PUBLISH needs an acknowledgement gate.
    durable: Arc<AtomicUsize>,
    /// What was routed just now, for SUBSCRIBEs that arrived before it.
    recent: Recent,
    /// Connects and disconnects, sent only while someone listens.
    presence: broadcast::Sender<SessionEvent>,
    /// Closed to clients (`Event::CloseClients`): connects are refused.
    closed: bool,
    /// `CloseClients` calls waiting for the last connection to end.
    close_waiters: Vec<oneshot::Sender<()>>,
}

impl Router {
    pub fn new(
        cfg: RouterConfig,
        stats: Arc<Stats>,
        durable: Arc<AtomicUsize>,
        presence: broadcast::Sender<SessionEvent>,
    ) -> Router {
        Router {
            cfg,
            stats,
            sessions: HashMap::new(),
            by_client: HashMap::new(),
            locals: HashMap::new(),
            tree: SubTree::default(),
            retained: HashMap::new(),
            wills: Vec::new(),
            next_key: 1,
            hits: Vec::new(),
            stalled: Vec::new(),
            last_sys: Instant::now(),
            persistent: 0,
            durable,
            recent: Recent::default(),
            presence,
            closed: false,
            close_waiters: Vec::new(),
        }
    }

    /// Run until the channel closes or `Shutdown` arrives.
    pub async fn run(mut self, mut rx: mpsc::Receiver<Event>) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(256);
        loop {
            tokio::select! {
                n = rx.recv_many(&mut batch, 256) => {
                    if n == 0 {
                        return;
                    }
                    for ev in batch.drain(..) {
                        if let Event::Shutdown(done) = ev {
                            self.shutdown();
                            let _ = done.send(());
                            return;
                        }
                        self.handle(ev);
                        if !self.stalled.is_empty() {
                            self.unstall().await;
                        }
                    }
                    self.answer_close_waiters();
                }
                _ = tick.tick() => self.on_tick(Instant::now()),
            }
        }
    }

    /// Answer `CloseClients` once no session has a connection.
    fn answer_close_waiters(&mut self) {
        if self.close_waiters.is_empty() || self.sessions.values().any(|s| s.link.is_some()) {
            return;
        }
        for done in self.close_waiters.drain(..) {
            let _ = done.send(());
        }
    }

    fn shutdown(&mut self) {
        for s in self.sessions.values() {
            if let Some(link) = &s.link {
                link.kill.kill(reason::SERVER_SHUTTING_DOWN);
            }
        }
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Connect(req) => self.on_connect(req),
            Event::Publish(msgs) => {
                for (m, hold) in msgs {
                    self.route_held(m, &hold);
                    hold.ok();
                }
            }
            Event::Subscribe {
                key,
                filters,
                arrived,
                reply,
            } => {
                let r = self.on_subscribe(key, filters, arrived);
                let _ = reply.send(r);
            }
            Event::Unsubscribe {
                key,
                filters,
                reply,
            } => {
                let codes = filters.iter().map(|f| self.unsubscribe(key, f)).collect();
                let _ = reply.send(codes);
            }
            Event::Disconnected {
                key,
                conn_id,
                carry,
                will,
                expiry,
            } => self.on_disconnected(key, conn_id, carry, will, expiry),
            Event::LocalSubscribe {
                filters,
                sink,
                dropped,
                reply,
            } => {
                // One key for all the filters: a message that matches
                // several of them is delivered once.
                let key = self.new_key();
                let entry = SubEntry {
                    options: SubOptions {
                        qos: QoS::ExactlyOnce,
                        ..SubOptions::default()
                    },
                    id: None,
                };
                for filter in &filters {
                    let (group, f) = split_shared(filter);
                    self.tree.insert(f, group, key, entry);
                }
                if sink.is_durable() {
                    self.durable.fetch_add(1, Ordering::Relaxed);
                }
                self.locals.insert(key, LocalSub { sink, dropped });
                let _ = reply.send(key);
            }
            Event::LocalUnsubscribe { key, filters } => {
                for filter in &filters {
                    let (group, f) = split_shared(filter);
                    self.tree.remove(f, group, key);
                }
                if self
                    .locals
                    .remove(&key)
                    .is_some_and(|l| l.sink.is_durable())
                {
                    self.durable.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Event::Disconnect {
                username,
                reason,
                reply,
            } => {
                let mut n = 0;
                for s in self.sessions.values() {
                    if let Some(link) = &s.link
                        && link.username.as_deref() == Some(username.as_str())
                    {
                        link.kill.kill(reason);
                        n += 1;
                    }
                }
                let _ = reply.send(n);
            }
            Event::Retained { topic, reply } => {
                let now = Instant::now();
                let msg = self
                    .retained
                    .get(topic.as_str())
                    .filter(|m| !m.expired(now))
                    .cloned();
                let _ = reply.send(msg);
            }
            Event::Sessions { reply } => {
                let list = self
                    .sessions
                    .values()
                    .filter_map(|s| {
                        let link = s.link.as_ref()?;
                        Some(SessionInfo {
                            client_id: s.client_id.clone(),
                            username: link.username.clone(),
                            since_ms: link.since_ms,
                            transport: link.transport,
                        })
                    })
                    .collect();
                let _ = reply.send(list);
            }
            Event::CloseClients(done) => {
                self.closed = true;
                self.shutdown();
                self.close_waiters.push(done);
            }
            Event::Shutdown(_) => {}
        }
        self.gauges();
    }

    fn gauges(&self) {
        self.stats
            .subscriptions
            .store(self.tree.len() as u64, Ordering::Relaxed);
        self.stats
            .retained
            .store(self.retained.len() as u64, Ordering::Relaxed);
        self.stats
            .sessions
            .store(self.sessions.len() as u64, Ordering::Relaxed);
    }

    fn new_key(&mut self) -> SubKey {
        let k = self.next_key;
        self.next_key += 1;
        k
    }

    fn on_tick(&mut self, now: Instant) {
        self.recent.expire(now);
        let expired: Vec<SubKey> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.link.is_none() && s.expires.is_some_and(|e| e <= now))
            .map(|(&k, _)| k)
            .collect();
        for k in expired {
            self.remove_session(k);
        }
        for m in self.take_wills(|at, _| at <= now) {
            self.route_will(m);
        }
        self.retained.retain(|_, m| !m.expired(now));
        if !self.cfg.sys_interval.is_zero()
            && now.duration_since(self.last_sys) >= self.cfg.sys_interval
        {
            self.last_sys = now;
            self.publish_sys();
        }
        self.gauges();
    }

    fn publish_sys(&mut self) {
        let snap = self.stats.snapshot();
        let mut out = vec![(
            "$SYS/broker/version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        )];
        for (name, v) in snap {
            let topic = match name {
                "uptime_seconds" => "$SYS/broker/uptime".to_string(),
                "clients_connected" => "$SYS/broker/clients/connected".to_string(),
                "messages_received" => "$SYS/broker/messages/received".to_string(),
                "messages_sent" => "$SYS/broker/messages/sent".to_string(),
                "bytes_received" => "$SYS/broker/bytes/received".to_string(),
                "bytes_sent" => "$SYS/broker/bytes/sent".to_string(),
                "subscriptions" => "$SYS/broker/subscriptions/count".to_string(),
                "retained" => "$SYS/broker/retained messages/count".to_string(),
                other => format!("$SYS/broker/stats/{other}"),
            };
            out.push((topic, v.to_string()));
        }
        for (topic, value) in out {
            let mut m = Message::local(topic, value, QoS::AtMostOnce, true);
            m.origin = Arc::from("$SYS");
            self.route(Arc::new(m));
        }
    }
}

/// Split `$share/{group}/{filter}` into its group and filter.
pub(crate) fn split_shared(filter: &str) -> (Option<&str>, &str) {
    match topic::parse_shared(filter) {
        Some((g, f)) => (Some(g), f),
        None => (None, filter),
    }
}

#[cfg(test)]
mod tests;

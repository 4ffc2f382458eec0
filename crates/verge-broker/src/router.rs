//! The router: the single owner of sessions, subscriptions and retained
//! messages. Connections and in-process users talk to it through [`Event`]s on
//! one bounded channel; it answers through per-connection channels and never
//! blocks on a slow consumer (a full queue drops and counts).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc, oneshot};
use verge_mqtt::{QoS, SubOptions, reason, topic};

use crate::durable::{Confirm, Gate, LocalSink};
use crate::mailbox::{Mailbox, PushError};
use crate::message::Message;
use crate::stats::{Stats, inc};
use crate::subs::{Hit, SubEntry, SubKey, SubTree};

/// A message on its way to one session, with the QoS and flags it is sent with.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    /// The shared message.
    pub msg: Arc<Message>,
    /// QoS to deliver with (min of published and granted).
    pub qos: QoS,
    /// Retain flag to send.
    pub retain: bool,
    /// Subscription identifiers of the matching subscriptions.
    pub sub_ids: Vec<u32>,
}

/// A signal to end a connection, with the reason to send (5.0).
#[derive(Debug, Default)]
pub(crate) struct Kill {
    notify: Notify,
    reason: AtomicU8,
}

impl Kill {
    pub fn kill(&self, reason: u8) {
        self.reason.store(reason, Ordering::Relaxed);
        self.notify.notify_one();
    }
    /// Signal again with the reason already stored.
    pub fn rearm(&self) {
        self.notify.notify_one();
    }
    pub async fn wait(&self) -> u8 {
        self.notify.notified().await;
        self.reason.load(Ordering::Relaxed)
    }
}

/// State of an outgoing QoS 1/2 message not yet fully acknowledged.
#[derive(Debug, Clone)]
pub(crate) struct InflightOut {
    /// Packet identifier used.
    pub packet_id: u16,
    /// The delivery.
    pub delivery: Delivery,
    /// True once PUBREC arrived (QoS 2): PUBREL is what must be resent.
    pub released: bool,
}

/// Session state a connection hands back to the router when it ends, and
/// gets again when the session resumes.
#[derive(Debug, Default)]
pub(crate) struct Carry {
    /// Outgoing QoS 1/2 messages awaiting acknowledgement, oldest first.
    pub inflight: Vec<InflightOut>,
    /// Incoming QoS 2 packet ids awaiting PUBREL.
    pub qos2_in: Vec<u16>,
    /// Deliveries queued but not yet sent.
    pub queued: VecDeque<Delivery>,
    /// The connection's mailbox, drained by the router.
    pub mailbox: Option<Arc<Mailbox>>,
}

/// Request to attach a connection to a session.
#[derive(Debug)]
pub(crate) struct ConnectReq {
    pub client_id: Arc<str>,
    /// The authenticated username, if any (for [`Event::Disconnect`]).
    pub username: Option<Arc<str>>,
    pub clean_start: bool,
    pub expiry: Duration,
    /// The broker is at `max_connections`: only a takeover may proceed.
    pub at_limit: bool,
    pub conn_id: u64,
    pub mailbox: Arc<Mailbox>,
    pub kill: Arc<Kill>,
    pub reply: oneshot::Sender<ConnectReply>,
}

/// The router's answer to [`ConnectReq`].
#[derive(Debug)]
pub(crate) struct ConnectReply {
    /// Refused with this reason code (the other fields are then empty).
    pub refused: Option<u8>,
    pub key: SubKey,
    pub session_present: bool,
    pub carry: Carry,
}

/// One filter of a SUBSCRIBE as the router sees it.
#[derive(Debug)]
pub(crate) struct SubReq {
    /// Full filter, `$share/...` included.
    pub filter: String,
    pub options: SubOptions,
    pub id: Option<u32>,
    /// A failure code decided by the connection (ACL, invalid filter).
    pub refused: Option<u8>,
}

/// Everything the router is asked to do.
#[derive(Debug)]
pub(crate) enum Event {
    Connect(ConnectReq),
    /// Messages with the router's hold on their publisher's acknowledgement
    /// (released once routed; a no-op unless a durable subscription exists).
    Publish(Vec<(Arc<Message>, Confirm)>),
    Subscribe {
        key: SubKey,
        filters: Vec<SubReq>,
        reply: oneshot::Sender<(Vec<u8>, Vec<Delivery>)>,
    },
    Unsubscribe {
        key: SubKey,
        filters: Vec<String>,
        reply: oneshot::Sender<Vec<u8>>,
    },
    Disconnected {
        key: SubKey,
        conn_id: u64,
        carry: Carry,
        will: Option<(Arc<Message>, Duration)>,
        expiry: Duration,
    },
    LocalSubscribe {
        filters: Vec<String>,
        sink: LocalSink,
        dropped: Arc<AtomicU64>,
        reply: oneshot::Sender<SubKey>,
    },
    LocalUnsubscribe {
        key: SubKey,
        filters: Vec<String>,
    },
    /// Close every connection authenticated as `username` (reason code
    /// `reason` in 5.0); the number closed.
    Disconnect {
        username: String,
        reason: u8,
        reply: oneshot::Sender<usize>,
    },
    /// The retained message of one topic name, if any (and not expired).
    Retained {
        topic: String,
        reply: oneshot::Sender<Option<Arc<Message>>>,
    },
    Shutdown(oneshot::Sender<()>),
}

/// Router limits taken from the config.
#[derive(Debug, Clone)]
pub(crate) struct RouterConfig {
    pub max_queued: usize,
    pub max_retained: usize,
    pub sys_interval: Duration,
    pub slow_consumer_wait: Duration,
}

struct Link {
    conn_id: u64,
    username: Option<Arc<str>>,
    mailbox: Arc<Mailbox>,
    kill: Arc<Kill>,
    /// Deliveries to this link wait in `Router::stalled` (keeps order).
    stalled: bool,
    /// The queue stayed full too long: drop QoS 1/2 until it drains to half.
    slow: bool,
}

struct Session {
    client_id: Arc<str>,
    link: Option<Link>,
    subs: HashMap<String, SubEntry>,
    offline: VecDeque<Delivery>,
    carry: Carry,
    expires: Option<Instant>,
    takeover: Option<ConnectReq>,
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
    /// Durable local subscriptions held, read by connections to decide
    /// whether a PUBLISH needs an acknowledgement gate.
    durable: Arc<AtomicUsize>,
}

impl Router {
    pub fn new(cfg: RouterConfig, stats: Arc<Stats>, durable: Arc<AtomicUsize>) -> Router {
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
            durable,
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
                }
                _ = tick.tick() => self.on_tick(Instant::now()),
            }
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
                reply,
            } => {
                let r = self.on_subscribe(key, filters);
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

    fn on_connect(&mut self, req: ConnectReq) {
        if req.at_limit {
            let takeover = self
                .by_client
                .get(&req.client_id)
                .and_then(|k| self.sessions.get(k))
                .is_some_and(|s| s.link.is_some());
            if !takeover {
                let _ = req.reply.send(ConnectReply {
                    refused: Some(reason::SERVER_BUSY),
                    key: 0,
                    session_present: false,
                    carry: Carry::default(),
                });
                return;
            }
        }
        let key = match self.by_client.get(&req.client_id) {
            Some(&key) => key,
            None => {
                let key = self.new_key();
                self.by_client.insert(req.client_id.clone(), key);
                self.sessions.insert(
                    key,
                    Session {
                        client_id: req.client_id.clone(),
                        link: None,
                        subs: HashMap::new(),
                        offline: VecDeque::new(),
                        carry: Carry::default(),
                        expires: None,
                        takeover: None,
                    },
                );
                self.complete_connect(key, req, false);
                return;
            }
        };
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        if let Some(link) = &s.link {
            // Session takeover: the old connection hands its state back first.
            link.kill.kill(reason::SESSION_TAKEN_OVER);
            if let Some(old) = s.takeover.replace(req) {
                // A third connection raced in: the one waiting loses.
                drop(old);
            }
            return;
        }
        self.complete_connect(key, req, true);
    }

    fn complete_connect(&mut self, key: SubKey, req: ConnectReq, existed: bool) {
        // A new connection for this client cancels a pending (delayed) will,
        // unless it starts clean: then the old session ends, and a session's
        // end is when its delayed will is due.
        let mut due = Vec::new();
        self.wills.retain(|(_, k, m)| {
            if *k != key {
                return true;
            }
            if req.clean_start {
                due.push(m.clone());
            }
            false
        });
        for m in due {
            self.route_will(m);
        }
        if req.clean_start && existed {
            self.clear_session(key);
        }
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        let session_present = existed && !req.clean_start;
        let mut carry = std::mem::take(&mut s.carry);
        carry.queued.extend(s.offline.drain(..));
        s.expires = None;
        s.link = Some(Link {
            conn_id: req.conn_id,
            username: req.username,
            mailbox: req.mailbox,
            kill: req.kill,
            stalled: false,
            slow: false,
        });
        let reply = ConnectReply {
            refused: None,
            key,
            session_present,
            carry,
        };
        if let Err(reply) = req.reply.send(reply) {
            // The connection went away while waiting: keep its state.
            s.link = None;
            s.carry = reply.carry;
            s.expires = Some(Instant::now() + req.expiry);
            if req.expiry.is_zero() {
                self.remove_session(key);
            }
        }
    }

    fn clear_session(&mut self, key: SubKey) {
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        let subs = std::mem::take(&mut s.subs);
        s.offline.clear();
        s.carry = Carry::default();
        for filter in subs.keys() {
            let (group, f) = split_shared(filter);
            self.tree.remove(f, group, key);
        }
    }

    fn remove_session(&mut self, key: SubKey) {
        self.clear_session(key);
        if let Some(s) = self.sessions.remove(&key) {
            self.by_client.remove(&s.client_id);
        }
        // A delayed will is published when the session ends.
        let mut due = Vec::new();
        self.wills.retain(|(_, k, m)| {
            if *k == key {
                due.push(m.clone());
                false
            } else {
                true
            }
        });
        for m in due {
            self.route_will(m);
        }
    }

    fn on_disconnected(
        &mut self,
        key: SubKey,
        conn_id: u64,
        mut carry: Carry,
        will: Option<(Arc<Message>, Duration)>,
        expiry: Duration,
    ) {
        let Some(s) = self.sessions.get_mut(&key) else {
            return;
        };
        if s.link.as_ref().map(|l| l.conn_id) != Some(conn_id) {
            return;
        }
        s.link = None;
        if let Some(mailbox) = carry.mailbox.take() {
            carry.queued.extend(mailbox.close());
        }
        // Deliveries that met the closed mailbox before this event wait in
        // `offline`, behind what the mailbox held.
        s.carry = carry;
        let takeover = s.takeover.take();
        if let Some((msg, delay)) = will {
            if delay.is_zero() || expiry.is_zero() {
                self.route_will(msg);
            } else {
                self.wills
                    .push((Instant::now() + delay.min(expiry), key, msg));
            }
        }
        if let Some(req) = takeover {
            // A session that expires on disconnect ended with the old
            // connection: the new one starts afresh.
            let existed = !expiry.is_zero();
            if !existed {
                self.clear_session(key);
            }
            self.complete_connect(key, req, existed);
            return;
        }
        if expiry.is_zero() {
            self.remove_session(key);
        } else if let Some(s) = self.sessions.get_mut(&key) {
            s.expires = Some(Instant::now() + expiry);
        }
    }

    fn on_subscribe(&mut self, key: SubKey, filters: Vec<SubReq>) -> (Vec<u8>, Vec<Delivery>) {
        let mut codes = Vec::with_capacity(filters.len());
        let mut retained = Vec::new();
        for req in filters {
            if let Some(code) = req.refused {
                codes.push(code);
                continue;
            }
            let (group, f) = split_shared(&req.filter);
            let entry = SubEntry {
                options: req.options,
                id: req.id,
            };
            let existed = self.tree.insert(f, group, key, entry);
            if let Some(s) = self.sessions.get_mut(&key) {
                s.subs.insert(req.filter.clone(), entry);
            }
            codes.push(req.options.qos as u8);
            let rh = req.options.retain_handling;
            if group.is_none() && (rh == 0 || (rh == 1 && !existed)) {
                let now = Instant::now();
                for (t, m) in &self.retained {
                    if topic::matches(f, t) && !m.expired(now) {
                        retained.push(Delivery {
                            msg: m.clone(),
                            qos: m.qos.min(req.options.qos),
                            retain: true,
                            sub_ids: req.id.into_iter().collect(),
                        });
                    }
                }
            }
        }
        (codes, retained)
    }

    fn unsubscribe(&mut self, key: SubKey, filter: &str) -> u8 {
        let (group, f) = split_shared(filter);
        if !verge_mqtt::topic::valid_topic_filter(f) {
            return reason::TOPIC_FILTER_INVALID;
        }
        let removed = self.tree.remove(f, group, key);
        if let Some(s) = self.sessions.get_mut(&key) {
            s.subs.remove(filter);
        }
        if removed {
            reason::SUCCESS
        } else {
            reason::NO_SUBSCRIPTION_EXISTED
        }
    }

    /// Publish a will: it is received now, so its Message Expiry Interval
    /// starts now, not at CONNECT.
    fn route_will(&mut self, msg: Arc<Message>) {
        let mut msg = Arc::unwrap_or_clone(msg);
        let now = Instant::now();
        msg.received = now;
        msg.expires = msg
            .properties
            .message_expiry_interval
            .take()
            .map(|s| now + Duration::from_secs(u64::from(s)));
        self.route(Arc::new(msg));
    }

    /// Route one message nobody waits for to every matching subscriber.
    pub fn route(&mut self, msg: Arc<Message>) {
        self.route_held(msg, &Confirm::none());
    }

    /// Route one message to every matching subscriber; each durable local
    /// subscriber that takes it adds a hold on `hold`'s gate.
    fn route_held(&mut self, msg: Arc<Message>, hold: &Confirm) {
        if msg.retain {
            self.retain(&msg);
        }
        let mut hits = std::mem::take(&mut self.hits);
        hits.clear();
        {
            let sessions = &self.sessions;
            let locals = &self.locals;
            let online = |k: SubKey| {
                sessions.get(&k).is_some_and(|s| s.link.is_some()) || locals.contains_key(&k)
            };
            self.tree.matches(&msg.topic, &online, &mut hits);
        }
        if hits.len() > 1 {
            hits.sort_unstable_by_key(|h| h.key);
        }
        let mut i = 0;
        while i < hits.len() {
            let key = hits[i].key;
            let mut qos: Option<QoS> = None;
            let mut retain = false;
            let mut ids = Vec::new();
            while i < hits.len() && hits[i].key == key {
                let h = hits[i];
                i += 1;
                let o = h.entry.options;
                if o.no_local && !h.shared && self.is_origin(key, &msg.origin) {
                    continue;
                }
                qos = Some(qos.map_or(o.qos, |q| q.max(o.qos)));
                retain |= o.retain_as_published && msg.retain;
                if let Some(id) = h.entry.id {
                    ids.push(id);
                }
            }
            if let Some(q) = qos {
                self.deliver(
                    key,
                    Delivery {
                        qos: msg.qos.min(q),
                        msg: msg.clone(),
                        retain,
                        sub_ids: ids,
                    },
                    hold.gate(),
                );
            }
        }
        self.hits = hits;
    }

    fn is_origin(&self, key: SubKey, origin: &str) -> bool {
        self.sessions
            .get(&key)
            .is_some_and(|s| &*s.client_id == origin)
    }

    fn retain(&mut self, msg: &Arc<Message>) {
        if msg.payload.is_empty() {
            self.retained.remove(&msg.topic);
            return;
        }
        if self.retained.len() >= self.cfg.max_retained && !self.retained.contains_key(&msg.topic) {
            inc(&self.stats.dropped_retained_full);
            return;
        }
        self.retained.insert(msg.topic.clone(), msg.clone());
    }

    fn deliver(&mut self, key: SubKey, d: Delivery, gate: Option<&Arc<Gate>>) {
        if let Some(s) = self.sessions.get_mut(&key) {
            match &mut s.link {
                Some(link) => {
                    if link.slow && link.mailbox.room() * 2 >= link.mailbox.capacity() {
                        link.slow = false;
                    }
                    if link.stalled {
                        // keep order behind what already waits for room
                        self.stalled.push((key, link.mailbox.clone(), d));
                        return;
                    }
                    match link.mailbox.try_push(d) {
                        Ok(()) => {}
                        Err(PushError::Full(d)) if !link.slow => {
                            link.stalled = true;
                            self.stalled.push((key, link.mailbox.clone(), d));
                        }
                        Err(PushError::Full(_)) => inc(&self.stats.dropped_queue_full),
                        // The connection is ending: keep it for the session.
                        Err(PushError::Closed(d)) => self.keep_offline(key, d),
                    }
                }
                None if d.qos == QoS::AtMostOnce => inc(&self.stats.dropped_offline_qos0),
                None if s.offline.len() + s.carry.queued.len() >= self.cfg.max_queued => {
                    inc(&self.stats.dropped_queue_full)
                }
                None => s.offline.push_back(d),
            }
        } else if let Some(l) = self.locals.get(&key) {
            if l.sink.try_send(d.msg, gate) {
                inc(&self.stats.messages_sent);
            } else {
                l.dropped.fetch_add(1, Ordering::Relaxed);
                inc(&self.stats.dropped_queue_full);
            }
        }
    }

    /// Wait for room for deliveries that found their session's queue full.
    /// While the router waits it reads no new events, so publishers are
    /// slowed down instead of their messages being dropped. A session that
    /// stays full for `slow_consumer_wait` is marked slow: its messages are
    /// then dropped and counted until its queue is half empty.
    async fn unstall(&mut self) {
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
    fn keep_offline(&mut self, key: SubKey, d: Delivery) {
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

    fn on_tick(&mut self, now: Instant) {
        let expired: Vec<SubKey> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.link.is_none() && s.expires.is_some_and(|e| e <= now))
            .map(|(&k, _)| k)
            .collect();
        for k in expired {
            self.remove_session(k);
        }
        let mut due = Vec::new();
        self.wills.retain(|(at, _, m)| {
            if *at <= now {
                due.push(m.clone());
                false
            } else {
                true
            }
        });
        for m in due {
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

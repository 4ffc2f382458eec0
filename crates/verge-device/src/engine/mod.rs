//! The client's one task: it owns the connection and all state (messages
//! in flight, the offline buffer, subscriptions, shadow requests waiting
//! for answers, recent command ids) and serves the [`Device`](crate::Device)
//! handles through a bounded channel. Reconnects run in a spawned task
//! so requests are served while the node is away.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use verge_mqtt::{
    Ack, Packet, Properties, Publish, QoS, SubAck, SubOptions, Subscribe, SubscribeFilter,
};
use verge_net::Backoff;
use verge_protocol::device::{
    Shadow, ShadowDelta, ShadowTopic, command_filter, parse_command_topic, parse_shadow_topic,
};

use crate::Error;

mod commands;
mod shadow;

use crate::command::{DeltaHandler, Handler, Recent};
use crate::config::Shared;
use crate::conn::Conn;
use commands::Finished;

/// Shadow requests waiting for an answer at most.
pub(crate) const MAX_PENDING_SHADOW: usize = 256;

/// A connection that lived this long was healthy: the reconnect after it
/// starts from the shortest wait again. One dropped sooner (a node that
/// accepts and hangs up, or two programs taking the same client id from
/// each other) keeps the backoff growing.
const HEALTHY: Duration = Duration::from_secs(1);

/// Deltas waiting for the delta callback at most (more are dropped and
/// counted; the next delta or a `get_shadow` catches up).
const DELTA_QUEUE: usize = 64;

/// A message to publish at QoS 1.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub topic: String,
    pub payload: Bytes,
    pub properties: Properties,
    /// Sent before and not acknowledged (resent after a reconnect).
    pub dup: bool,
}

/// Which shadow request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShadowKind {
    Get,
    Update,
}

/// What a [`Device`](crate::Device) handle asks of the task.
pub(crate) enum Request {
    /// Publish (or buffer) a message.
    Publish(Box<Outgoing>),
    /// Register a command handler (`None`: any command without its own).
    Handler {
        name: Option<String>,
        handler: Handler,
        done: oneshot::Sender<Result<(), Error>>,
    },
    /// Register the delta callback.
    Delta {
        handler: DeltaHandler,
        done: oneshot::Sender<Result<(), Error>>,
    },
    /// Publish a shadow request and answer `done` with the node's answer.
    Shadow {
        kind: ShadowKind,
        token: String,
        payload: Bytes,
        done: oneshot::Sender<Result<Shadow, Error>>,
    },
    /// Wait for the unacknowledged messages (up to the close timeout),
    /// then DISCONNECT.
    Close {
        done: oneshot::Sender<Result<(), Error>>,
    },
}

/// The connection's state, as [`Device::connection`](crate::Device::connection)
/// shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    /// Connected to the node.
    Connected,
    /// Not connected: the client reconnects with backoff; `error` says
    /// why the connection or the last attempt failed.
    Reconnecting {
        /// The error, for people.
        error: String,
    },
    /// The node refused the last attempt for good (the device was
    /// deleted or its secret changed). The client still retries at the
    /// backoff's pace, in case the credentials come back; a program that
    /// cannot fix them should stop.
    Refused {
        /// The CONNACK reason code.
        reason_code: u8,
        /// The reason code in words.
        message: String,
    },
    /// Closed by [`Device::close`](crate::Device::close) (or every handle
    /// dropped).
    Closed,
}

/// Counters shared with the handles.
#[derive(Debug)]
pub(crate) struct Counters {
    pub state: watch::Sender<Connection>,
    pub connected: AtomicBool,
    pub closed: AtomicBool,
    pub connects: AtomicU64,
    pub acked: AtomicU64,
    pub dropped: AtomicU64,
    pub refused: AtomicU64,
    pub commands: AtomicU64,
    pub duplicates: AtomicU64,
    pub deltas_dropped: AtomicU64,
    pub waiting: AtomicUsize,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            state: watch::Sender::new(Connection::Connected),
            connected: AtomicBool::default(),
            closed: AtomicBool::default(),
            connects: AtomicU64::default(),
            acked: AtomicU64::default(),
            dropped: AtomicU64::default(),
            refused: AtomicU64::default(),
            commands: AtomicU64::default(),
            duplicates: AtomicU64::default(),
            deltas_dropped: AtomicU64::default(),
            waiting: AtomicUsize::default(),
        }
    }
}

/// A SUBSCRIBE waiting for its SUBACK: its filters and who waits.
type PendingSub = (Vec<String>, Option<oneshot::Sender<Result<(), Error>>>);

struct PendingShadow {
    kind: ShadowKind,
    token: String,
    done: oneshot::Sender<Result<Shadow, Error>>,
}

struct Closing {
    deadline: Instant,
    /// Every `close` call waiting.
    done: Vec<oneshot::Sender<Result<(), Error>>>,
}

pub(crate) struct Engine {
    cfg: Shared,
    counters: Arc<Counters>,
    rx: mpsc::Receiver<Request>,
    rx_open: bool,
    finished_tx: mpsc::Sender<Finished>,
    finished_rx: mpsc::Receiver<Finished>,
    conn: Option<Conn>,
    /// When the current connection was made.
    connected_at: Instant,
    connecting: Option<JoinHandle<Result<Conn, Error>>>,
    retry_at: Option<Instant>,
    backoff: Backoff,
    /// Sent, waiting for PUBACK, in send order.
    inflight: VecDeque<(u16, Outgoing)>,
    /// Waiting to be sent (the offline buffer).
    queue: VecDeque<Outgoing>,
    next_id: u16,
    /// Filters made on every connection.
    subs: Vec<String>,
    pending_subs: HashMap<u16, PendingSub>,
    handlers: HashMap<String, Handler>,
    any_handler: Option<Handler>,
    recent: Recent,
    delta_tx: Option<mpsc::Sender<ShadowDelta>>,
    pending_shadow: VecDeque<PendingShadow>,
    closing: Option<Closing>,
}

impl Engine {
    /// The task's state around a first connection that is already made.
    pub fn new(
        cfg: Shared,
        counters: Arc<Counters>,
        rx: mpsc::Receiver<Request>,
        conn: Conn,
    ) -> (Engine, oneshot::Receiver<Result<(), Error>>) {
        let (finished_tx, finished_rx) = mpsc::channel(64);
        let device = cfg.device.clone();
        let mut engine = Engine {
            backoff: Backoff::new(cfg.reconnect_min, cfg.reconnect_max).with_jitter(0.2),
            recent: Recent::new(cfg.command_memory),
            cfg,
            counters,
            rx,
            rx_open: true,
            finished_tx,
            finished_rx,
            conn: None,
            connected_at: Instant::now(),
            connecting: None,
            retry_at: None,
            inflight: VecDeque::new(),
            queue: VecDeque::new(),
            next_id: 0,
            subs: [
                ShadowTopic::GetAccepted,
                ShadowTopic::GetRejected,
                ShadowTopic::UpdateAccepted,
                ShadowTopic::UpdateRejected,
            ]
            .iter()
            .map(|t| t.topic(&device))
            .collect(),
            pending_subs: HashMap::new(),
            handlers: HashMap::new(),
            any_handler: None,
            delta_tx: None,
            pending_shadow: VecDeque::new(),
            closing: None,
        };
        let (ready, ready_rx) = oneshot::channel();
        engine.connected(conn, Some(ready));
        (engine, ready_rx)
    }

    /// Serve until closed (a `Close` request, or every handle dropped).
    pub async fn run(mut self) {
        loop {
            self.flush().await;
            if self.try_finish().await {
                return;
            }
            let wake = self.next_wake();
            tokio::select! {
                req = self.rx.recv(), if self.rx_open => match req {
                    Some(req) => self.on_request(req),
                    None => {
                        self.rx_open = false;
                        self.start_closing(None);
                    }
                },
                Some(f) = self.finished_rx.recv() => self.on_finished(f),
                r = fill(&mut self.conn) => match r {
                    Ok(()) => self.read_packets(),
                    Err(e) => self.lost(e),
                },
                r = join(&mut self.connecting) => {
                    self.connecting = None;
                    match r {
                        Ok(Ok(conn)) => self.connected(conn, None),
                        Ok(Err(e)) => self.failed(e),
                        Err(e) => self.failed(Error::Protocol(format!("connect task: {e}"))),
                    }
                }
                _ = tokio::time::sleep_until(wake) => self.on_timer(),
            }
        }
    }

    // ---- connection ------------------------------------------------------

    fn connected(&mut self, conn: Conn, ready: Option<oneshot::Sender<Result<(), Error>>>) {
        info!(device = %self.cfg.device, "connected to {}:{}", self.cfg.host, self.cfg.port);
        self.conn = Some(conn);
        self.retry_at = None;
        self.connected_at = Instant::now();
        self.counters.connected.store(true, Relaxed);
        self.counters.connects.fetch_add(1, Relaxed);
        self.counters.state.send_replace(Connection::Connected);
        let subs = self.subs.clone();
        self.subscribe(subs, ready);
        self.pump();
    }

    fn failed(&mut self, e: Error) {
        self.counters.state.send_replace(match &e {
            Error::Refused {
                reason_code,
                message,
            } => Connection::Refused {
                reason_code: *reason_code,
                message: message.clone(),
            },
            e => Connection::Reconnecting {
                error: e.to_string(),
            },
        });
        match &e {
            Error::Refused { .. } => warn!(device = %self.cfg.device, "reconnecting: {e}"),
            _ => debug!(device = %self.cfg.device, "reconnecting: {e}"),
        }
        self.retry_at = Some(Instant::now() + self.backoff.next_delay());
    }

    /// The connection is gone: requeue what is in flight and retry later.
    fn lost(&mut self, e: Error) {
        drop(self.take_lost(e));
    }

    /// [`Engine::lost`], returning the connection (to say goodbye on).
    fn take_lost(&mut self, e: Error) -> Option<Conn> {
        let conn = self.conn.take()?;
        warn!(device = %self.cfg.device, "connection lost: {e}");
        if self.connected_at.elapsed() >= HEALTHY {
            self.backoff.reset();
        }
        self.counters.connected.store(false, Relaxed);
        self.counters.state.send_replace(Connection::Reconnecting {
            error: e.to_string(),
        });
        while let Some((_, mut msg)) = self.inflight.pop_back() {
            msg.dup = true;
            self.queue.push_front(msg);
        }
        self.trim();
        // the filters are made again on the next connection
        for (_, (_, done)) in self.pending_subs.drain() {
            if let Some(done) = done {
                let _ = done.send(Ok(()));
            }
        }
        self.retry_at = Some(Instant::now() + self.backoff.next_delay());
        Some(conn)
    }

    async fn flush(&mut self) {
        let Some(conn) = &mut self.conn else { return };
        if !conn.has_queued() {
            return;
        }
        // a node that stops reading must not hold the task in a write
        let limit = self.cfg.connect_timeout.max(conn.keep_alive);
        match tokio::time::timeout(limit, conn.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.lost(e),
            Err(_) => self.lost(Error::Timeout {
                what: "the node to take our packets",
            }),
        }
    }

    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut t = now + Duration::from_secs(3600);
        if let Some(c) = &self.conn
            && !c.keep_alive.is_zero()
        {
            t = t.min(c.ping_sent.unwrap_or(c.last_sent) + c.keep_alive);
        }
        if self.conn.is_none()
            && self.connecting.is_none()
            && let Some(at) = self.retry_at
        {
            t = t.min(at);
        }
        if let Some(c) = &self.closing {
            t = t.min(c.deadline);
        }
        t
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        if let Some(c) = &mut self.conn
            && !c.keep_alive.is_zero()
        {
            match c.ping_sent {
                Some(at) if now >= at + c.keep_alive => {
                    self.lost(Error::Timeout { what: "PINGRESP" });
                }
                None if now >= c.last_sent + c.keep_alive => {
                    if let Err(e) = c.queue(&Packet::PingReq) {
                        self.lost(e);
                    } else {
                        c.ping_sent = Some(now);
                    }
                }
                _ => {}
            }
        }
        if self.conn.is_none()
            && self.connecting.is_none()
            && self.retry_at.is_some_and(|at| now >= at)
        {
            self.retry_at = None;
            let cfg = self.cfg.clone();
            self.connecting = Some(tokio::spawn(async move { Conn::open(&cfg).await }));
        }
    }

    // ---- closing ---------------------------------------------------------

    fn start_closing(&mut self, done: Option<oneshot::Sender<Result<(), Error>>>) {
        self.counters.closed.store(true, Relaxed);
        let deadline = Instant::now() + self.cfg.close_timeout;
        let closing = self.closing.get_or_insert_with(|| Closing {
            deadline,
            done: Vec::new(),
        });
        closing.done.extend(done);
    }

    /// Finish closing when nothing waits or the close timeout passed.
    async fn try_finish(&mut self) -> bool {
        let Some(closing) = &self.closing else {
            return false;
        };
        let left = self.queue.len() + self.inflight.len();
        if left > 0 && Instant::now() < closing.deadline {
            return false;
        }
        let done = self.closing.take().map(|c| c.done).unwrap_or_default();
        if let Some(task) = self.connecting.take() {
            task.abort();
        }
        if let Some(conn) = self.conn.take() {
            conn.disconnect(verge_mqtt::reason::SUCCESS).await;
        }
        self.counters.connected.store(false, Relaxed);
        self.counters.state.send_replace(Connection::Closed);
        for p in self.pending_shadow.drain(..) {
            let _ = p.done.send(Err(Error::Closed));
        }
        for done in done {
            let _ = done.send(if left == 0 {
                Ok(())
            } else {
                Err(Error::Unflushed { count: left })
            });
        }
        info!(device = %self.cfg.device, "closed");
        true
    }

    // ---- requests --------------------------------------------------------

    fn on_request(&mut self, req: Request) {
        if self.closing.is_some() {
            match req {
                Request::Publish(_) => {}
                Request::Handler { done, .. } | Request::Delta { done, .. } => {
                    let _ = done.send(Err(Error::Closed));
                }
                Request::Shadow { done, .. } => {
                    let _ = done.send(Err(Error::Closed));
                }
                Request::Close { done } => self.start_closing(Some(done)),
            }
            return;
        }
        match req {
            Request::Publish(msg) => self.publish(*msg),
            Request::Handler {
                name,
                handler,
                done,
            } => {
                match name {
                    Some(n) => {
                        self.handlers.insert(n, handler);
                    }
                    None => self.any_handler = Some(handler),
                }
                self.add_sub(command_filter(&self.cfg.device), done);
            }
            Request::Delta { handler, done } => {
                let (tx, mut rx) = mpsc::channel::<ShadowDelta>(DELTA_QUEUE);
                self.delta_tx = Some(tx);
                tokio::spawn(async move {
                    while let Some(delta) = rx.recv().await {
                        handler(delta).await;
                    }
                });
                self.add_sub(ShadowTopic::Delta.topic(&self.cfg.device), done);
            }
            Request::Shadow {
                kind,
                token,
                payload,
                done,
            } => {
                self.pending_shadow.retain(|p| !p.done.is_closed());
                if self.pending_shadow.len() >= MAX_PENDING_SHADOW {
                    let _ = done.send(Err(Error::Busy));
                    return;
                }
                self.pending_shadow
                    .push_back(PendingShadow { kind, token, done });
                let topic = match kind {
                    ShadowKind::Get => ShadowTopic::Get,
                    ShadowKind::Update => ShadowTopic::Update,
                };
                self.publish(Outgoing {
                    topic: topic.topic(&self.cfg.device),
                    payload,
                    properties: Properties::default(),
                    dup: false,
                });
            }
            Request::Close { done } => self.start_closing(Some(done)),
        }
    }

    /// Subscribe to `filter` on this and every later connection.
    fn add_sub(&mut self, filter: String, done: oneshot::Sender<Result<(), Error>>) {
        if self.subs.contains(&filter) {
            let _ = done.send(Ok(()));
            return;
        }
        self.subs.push(filter.clone());
        self.subscribe(vec![filter], Some(done));
    }

    fn subscribe(
        &mut self,
        filters: Vec<String>,
        done: Option<oneshot::Sender<Result<(), Error>>>,
    ) {
        let Some(conn) = &mut self.conn else {
            if let Some(done) = done {
                let _ = done.send(Ok(()));
            }
            return;
        };
        if filters.is_empty() {
            if let Some(done) = done {
                let _ = done.send(Ok(()));
            }
            return;
        }
        let id = next_free_id(&mut self.next_id, &self.inflight, &self.pending_subs);
        let packet = Packet::Subscribe(Subscribe {
            packet_id: id,
            filters: filters
                .iter()
                .map(|f| SubscribeFilter {
                    filter: f.clone(),
                    options: SubOptions {
                        qos: QoS::AtLeastOnce,
                        ..SubOptions::default()
                    },
                })
                .collect(),
            properties: Properties::default(),
        });
        match conn.queue(&packet) {
            Ok(()) => {
                self.pending_subs.insert(id, (filters, done));
            }
            Err(e) => {
                if let Some(done) = done {
                    let _ = done.send(Err(e));
                }
            }
        }
    }

    /// Queue a message, send what the window allows, and keep the offline
    /// buffer within its bound.
    fn publish(&mut self, msg: Outgoing) {
        self.queue.push_back(msg);
        self.pump();
        self.trim();
    }

    fn trim(&mut self) {
        while self.queue.len() > self.cfg.offline_buffer {
            if let Some(old) = self.queue.pop_front() {
                self.counters.dropped.fetch_add(1, Relaxed);
                debug!(device = %self.cfg.device, topic = %old.topic, "offline buffer full: dropped the oldest message");
            }
        }
        self.counters
            .waiting
            .store(self.queue.len() + self.inflight.len(), Relaxed);
    }

    /// Send waiting messages while connected and the window is open.
    fn pump(&mut self) {
        let Some(conn) = &mut self.conn else { return };
        while self.inflight.len() < conn.max_inflight {
            let Some(msg) = self.queue.pop_front() else {
                break;
            };
            let id = next_free_id(&mut self.next_id, &self.inflight, &self.pending_subs);
            let packet = Packet::Publish(Publish {
                dup: msg.dup,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: msg.topic.clone(),
                packet_id: id,
                properties: msg.properties.clone(),
                payload: msg.payload.clone(),
            });
            match conn.queue(&packet) {
                Ok(()) => self.inflight.push_back((id, msg)),
                Err(e) => {
                    self.counters.refused.fetch_add(1, Relaxed);
                    warn!(device = %self.cfg.device, topic = %msg.topic, "message not sent: {e}");
                }
            }
        }
        self.counters
            .waiting
            .store(self.queue.len() + self.inflight.len(), Relaxed);
    }

    // ---- packets from the node ---------------------------------------------

    fn read_packets(&mut self) {
        loop {
            let Some(conn) = &mut self.conn else { return };
            match conn.next_packet() {
                Ok(Some(p)) => self.on_packet(p),
                Ok(None) => return,
                Err(e) => {
                    // tell the node why, beside the task
                    if let Some(conn) = self.take_lost(e) {
                        tokio::spawn(conn.disconnect(verge_mqtt::reason::MALFORMED_PACKET));
                    }
                    return;
                }
            }
        }
    }

    fn on_packet(&mut self, p: Packet) {
        match p {
            Packet::Publish(p) => self.on_publish(p),
            Packet::PubAck(ack) => self.on_puback(ack),
            Packet::SubAck(ack) => self.on_suback(ack),
            Packet::PingResp => {
                if let Some(c) = &mut self.conn {
                    c.ping_sent = None;
                }
            }
            Packet::Disconnect(d) => {
                use verge_mqtt::reason::{SERVER_BUSY, SERVER_SHUTTING_DOWN, SERVER_UNAVAILABLE};
                let e = match d.reason_code {
                    // a node stopping or too busy: nothing is wrong, it may
                    // take us again later
                    SERVER_SHUTTING_DOWN | SERVER_BUSY | SERVER_UNAVAILABLE => Error::Unavailable {
                        reason_code: d.reason_code,
                    },
                    code => Error::Protocol(format!(
                        "the node disconnected (reason code 0x{code:02x}{})",
                        d.properties
                            .reason_string
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    )),
                };
                self.lost(e);
            }
            Packet::UnsubAck(_) | Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) => {
                debug!(device = %self.cfg.device, "ignoring an unexpected {}", p.name());
            }
            other => self.lost(Error::Protocol(format!("the node sent {}", other.name()))),
        }
    }

    /// `{name}` of `devices/{d}/commands/{name}`, the command topic of
    /// nodes before command ids.
    fn command_without_id(&self, topic: &str) -> Option<String> {
        let filter = command_filter(&self.cfg.device);
        let name = topic.strip_prefix(filter.strip_suffix('#')?)?;
        (!name.is_empty() && !name.contains('/')).then(|| name.to_owned())
    }

    fn on_puback(&mut self, ack: Ack) {
        let Some(pos) = self
            .inflight
            .iter()
            .position(|(id, _)| *id == ack.packet_id)
        else {
            debug!(device = %self.cfg.device, "PUBACK for unknown packet id {}", ack.packet_id);
            return;
        };
        let Some((_, msg)) = self.inflight.remove(pos) else {
            return;
        };
        if ack.reason_code >= 0x80 {
            self.counters.refused.fetch_add(1, Relaxed);
            warn!(
                device = %self.cfg.device,
                topic = %msg.topic,
                "the node refused a message (reason code 0x{:02x})",
                ack.reason_code
            );
        } else {
            self.counters.acked.fetch_add(1, Relaxed);
        }
        self.pump();
    }

    fn on_suback(&mut self, ack: SubAck) {
        let Some((filters, done)) = self.pending_subs.remove(&ack.packet_id) else {
            return;
        };
        let mut result = Ok(());
        for (i, filter) in filters.into_iter().enumerate() {
            let code = ack.reason_codes.get(i).copied().unwrap_or(0x80);
            if code >= 0x80 {
                warn!(device = %self.cfg.device, "the node refused the subscription to `{filter}` (reason code 0x{code:02x})");
                if result.is_ok() {
                    result = Err(Error::SubscribeRefused {
                        filter,
                        reason_code: code,
                    });
                }
            }
        }
        if let Some(done) = done {
            let _ = done.send(result);
        }
    }

    fn on_publish(&mut self, p: Publish) {
        if let Some(conn) = &mut self.conn {
            let ack = match p.qos {
                QoS::AtMostOnce => None,
                QoS::AtLeastOnce => Some(Packet::PubAck(Ack {
                    packet_id: p.packet_id,
                    ..Ack::default()
                })),
                // never asked for (subscriptions are QoS 1); answered so
                // the node's session does not stall
                QoS::ExactlyOnce => Some(Packet::PubRec(Ack {
                    packet_id: p.packet_id,
                    ..Ack::default()
                })),
            };
            if let Some(ack) = ack
                && let Err(e) = conn.queue(&ack)
            {
                self.lost(e);
                return;
            }
        }
        let device = self.cfg.device.as_str();
        if let Some((d, name, id)) = parse_command_topic(&p.topic)
            && d == device
        {
            let (name, id) = (name.to_owned(), id.to_owned());
            self.on_command(p, name, Some(id));
            return;
        }
        if let Some(name) = self.command_without_id(&p.topic) {
            self.on_command(p, name, None);
            return;
        }
        match parse_shadow_topic(&p.topic) {
            Some((d, op)) if d == device => match op {
                ShadowTopic::GetAccepted => {
                    self.on_shadow_answer(ShadowKind::Get, true, &p.payload)
                }
                ShadowTopic::GetRejected => {
                    self.on_shadow_answer(ShadowKind::Get, false, &p.payload)
                }
                ShadowTopic::UpdateAccepted => {
                    self.on_shadow_answer(ShadowKind::Update, true, &p.payload)
                }
                ShadowTopic::UpdateRejected => {
                    self.on_shadow_answer(ShadowKind::Update, false, &p.payload)
                }
                ShadowTopic::Delta => self.on_delta(&p.payload),
                _ => debug!(device, topic = %p.topic, "ignoring a shadow message"),
            },
            _ => debug!(device, topic = %p.topic, "ignoring a message"),
        }
    }
}

/// A packet id used by no message in flight and no subscription waiting.
fn next_free_id<T>(
    next: &mut u16,
    inflight: &VecDeque<(u16, Outgoing)>,
    subs: &HashMap<u16, T>,
) -> u16 {
    loop {
        *next = next.checked_add(1).unwrap_or(1);
        let id = *next;
        if !subs.contains_key(&id) && !inflight.iter().any(|(i, _)| *i == id) {
            return id;
        }
    }
}

async fn fill(conn: &mut Option<Conn>) -> Result<(), Error> {
    match conn {
        Some(c) => c.fill().await,
        None => std::future::pending().await,
    }
}

async fn join<T>(task: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match task {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}

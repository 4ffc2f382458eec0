//! One client connection: the CONNECT handshake, then a loop that reads
//! packets, forwards publishes to the router in batches, and writes
//! deliveries with per-connection packet ids, inflight window and aliases.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::{debug, info, warn};
use verge_mqtt::{
    Ack, ConnAck, Connect, DecodeError, Disconnect, Packet, Properties, Protocol, Publish, QoS,
    SubAck, Subscribe, UnsubAck, Unsubscribe, decode, encode, encoded_len, reason, topic,
};

use crate::auth::{AuthFailure, Authenticator, Identity};
use crate::config::BrokerConfig;
use crate::durable::{Confirm, Gate};
use crate::mailbox::Mailbox;
use crate::message::Message;
use crate::router::{Carry, ConnectReply, ConnectReq, Delivery, Event, InflightOut, Kill, SubReq};
use crate::stats::{Stats, add, inc};
use crate::subs::SubKey;

mod handshake;
use handshake::accept;

/// Smallest read buffer; what an idle connection holds.
const MIN_READ: usize = 256;
/// Largest read buffer a busy connection grows to.
const MAX_READ: usize = 64 * 1024;

/// What every connection shares.
pub(crate) struct Ctx {
    pub cfg: BrokerConfig,
    pub auth: Authenticator,
    pub router: mpsc::Sender<Event>,
    pub stats: Arc<Stats>,
    pub next_conn: AtomicU64,
    /// Bounds concurrent password hashes, so a flood of CONNECTs cannot
    /// occupy the whole blocking pool with argon2.
    pub password_checks: Arc<tokio::sync::Semaphore>,
    /// Durable local subscriptions held (kept by the router); while it is
    /// zero no PUBLISH gets an acknowledgement gate.
    pub durable: Arc<AtomicUsize>,
}

/// Two argon2 checks per core at a time.
pub(crate) fn password_check_slots() -> Arc<tokio::sync::Semaphore> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    Arc::new(tokio::sync::Semaphore::new(2 * cores))
}

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// Peer closed or I/O failed.
    Closed,
    /// DISCONNECT received; `with_will` = reason 0x04.
    Disconnect { with_will: bool },
    /// We close with a reason (sent as DISCONNECT on 5.0).
    Error(u8, &'static str),
    /// Killed by the router (takeover, shutdown).
    Killed(u8),
}

/// Serve one connection to the end. `cert_name` is a verified client
/// certificate's common name.
pub(crate) async fn serve<S>(stream: S, peer: SocketAddr, cert_name: Option<String>, ctx: Arc<Ctx>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    inc(&ctx.stats.connections_total);
    let mut io = Io {
        stream,
        rbuf: BytesMut::with_capacity(MIN_READ),
        wbuf: BytesMut::new(),
        stats: ctx.stats.clone(),
    };
    // Boxed: the handshake's state is large and lives only briefly; an idle
    // connection should not carry it in its task.
    let Some(mut conn) = Box::pin(handshake(&mut io, peer, cert_name, &ctx)).await else {
        return;
    };
    ctx.stats
        .clients_connected
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let end = conn.run(&mut io).await;
    ctx.stats
        .clients_connected
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    Box::pin(conn.finish(&mut io, end)).await;
}

/// Read CONNECT and run the handshake; answers refusals itself.
async fn handshake<S>(
    io: &mut Io<S>,
    peer: SocketAddr,
    cert_name: Option<String>,
    ctx: &Arc<Ctx>,
) -> Option<Conn>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let max = ctx.cfg.max_packet_size as usize;
    let connect =
        match tokio::time::timeout(ctx.cfg.connect_timeout.get(), io.read_connect(max)).await {
            Err(_) => {
                debug!(%peer, "no CONNECT within the connect timeout; closing");
                return None;
            }
            Ok(Err(e)) => {
                inc(&ctx.stats.connects_refused);
                info!(%peer, error = %e, "bad CONNECT; closing");
                if let ConnectError::Decode(d) = &e {
                    // Answer with a CONNACK where the version is known.
                    if !matches!(d, DecodeError::UnsupportedProtocolVersion(_)) {
                        return None;
                    }
                    let ack = ConnAck {
                        reason_code: reason::UNSUPPORTED_PROTOCOL_VERSION,
                        ..ConnAck::default()
                    };
                    let _ = io.send(&Packet::ConnAck(ack), Protocol::V311).await;
                }
                return None;
            }
            Ok(Ok(c)) => c,
        };
    let protocol = connect.protocol;
    match accept(io, connect, peer, cert_name, ctx).await {
        Ok(conn) => Some(conn),
        Err(code) => {
            inc(&ctx.stats.connects_refused);
            let ack = ConnAck {
                reason_code: code,
                ..ConnAck::default()
            };
            let _ = io.send(&Packet::ConnAck(ack), protocol).await;
            None
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnectError {
    #[error("{0}")]
    Decode(DecodeError),
    #[error("first packet is not CONNECT")]
    NotConnect,
    #[error("connection closed before CONNECT")]
    Closed,
}

struct Io<S> {
    stream: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    stats: Arc<Stats>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
    async fn read_connect(&mut self, max: usize) -> Result<Connect, ConnectError> {
        loop {
            // Anything but CONNECT first (an HTTP request, TLS on the plain
            // port) is refused at once rather than at the connect timeout.
            if self.rbuf.first().is_some_and(|b| b >> 4 != 1) {
                return Err(ConnectError::NotConnect);
            }
            match decode(&mut self.rbuf, Protocol::V5, max) {
                Ok(Some(Packet::Connect(c))) => return Ok(c),
                Ok(Some(_)) => return Err(ConnectError::NotConnect),
                Ok(None) => {}
                Err(e) => return Err(ConnectError::Decode(e)),
            }
            let n = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|_| ConnectError::Closed)?;
            if n == 0 {
                return Err(ConnectError::Closed);
            }
            add(&self.stats.bytes_received, n as u64);
        }
    }

    async fn send(&mut self, p: &Packet, protocol: Protocol) -> std::io::Result<()> {
        if encode(p, protocol, &mut self.wbuf).is_err() {
            return Ok(());
        }
        self.flush().await
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        self.stream.write_all(&self.wbuf).await?;
        add(&self.stats.bytes_sent, self.wbuf.len() as u64);
        self.wbuf.clear();
        if self.wbuf.capacity() > MAX_READ {
            self.wbuf = BytesMut::new();
        }
        Ok(())
    }
}

/// An acknowledgement (PUBACK for QoS 1, PUBREC for QoS 2) of a client
/// PUBLISH held back: its own gate is not open yet, or one ahead of it is
/// waiting (acknowledgements go out in arrival order).
struct HeldAck {
    packet_id: u16,
    qos: QoS,
    /// Reason code to send if the gate opens with success.
    code: u8,
    /// Durable subscribers' confirmations, if the message needs them.
    gate: Option<Arc<Gate>>,
}

struct Conn {
    ctx: Arc<Ctx>,
    peer: SocketAddr,
    protocol: Protocol,
    key: SubKey,
    conn_id: u64,
    identity: Identity,
    kill: Arc<Kill>,
    mailbox: Arc<Mailbox>,
    keep_alive: Duration,
    expiry: Duration,
    expiry_was_zero: bool,
    will: Option<(Arc<Message>, Duration)>,
    /// Most outgoing QoS 1/2 messages unacknowledged at once.
    window: usize,
    client_max_packet: usize,
    client_alias_max: u16,
    aliases_in: HashMap<u16, Arc<str>>,
    aliases_out: HashMap<Arc<str>, u16>,
    inflight: VecDeque<InflightOut>,
    inflight_ids: HashSet<u16>,
    next_id: u16,
    /// Deliveries waiting for room in the window.
    pending: VecDeque<Delivery>,
    qos2_in: HashSet<u16>,
    /// Held acknowledgements, oldest first; at most `max_inflight` (reading
    /// pauses when full).
    acks: VecDeque<HeldAck>,
    /// Notified when a gate opens; created with the first gate.
    wake: Option<Arc<Notify>>,
    /// Publishes for the router, each with the router's hold on its gate.
    batch: Vec<(Arc<Message>, Confirm)>,
    rate_tokens: f64,
    rate_at: Instant,
}

impl Conn {
    fn v5(&self) -> bool {
        self.protocol == Protocol::V5
    }

    /// Resend what a resumed session had in flight, then its queue.
    fn resume<S>(&mut self, io: &mut Io<S>, carry: Carry) {
        self.qos2_in.extend(carry.qos2_in);
        for inf in carry.inflight {
            self.inflight_ids.insert(inf.packet_id);
            if inf.released {
                let rel = Ack {
                    packet_id: inf.packet_id,
                    ..Ack::default()
                };
                let _ = encode(&Packet::PubRel(rel), self.protocol, &mut io.wbuf);
            } else {
                let p = self.publish_packet(&inf.delivery, inf.packet_id, true);
                let _ = encode(&Packet::Publish(p), self.protocol, &mut io.wbuf);
            }
            self.inflight.push_back(inf);
        }
        self.pending.extend(carry.queued);
        self.drain_pending(io);
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut Io<S>) -> End {
        let mut deliveries = Vec::with_capacity(64);
        let mut last_read = Instant::now();
        let mut read_hint = MIN_READ;
        let kill = self.kill.clone();
        let mailbox = self.mailbox.clone();
        loop {
            if let Err(e) = self.flush_all(io).await {
                debug!(peer = %self.peer, "write failed: {e}");
                break End::Closed;
            }
            let room = self.pending.is_empty() && self.inflight.len() < self.window;
            if io.rbuf.is_empty() && io.rbuf.capacity() > read_hint * 2 {
                io.rbuf = BytesMut::new();
            }
            if io.rbuf.capacity() - io.rbuf.len() < MIN_READ {
                io.rbuf.reserve(read_hint);
            }
            let spare = io.rbuf.capacity() - io.rbuf.len();
            let ka = self.keep_alive;
            let acks_full = self.acks.len() >= self.ack_limit();
            // Cloned only while acknowledgements are held.
            let wake = if self.acks.is_empty() {
                None
            } else {
                self.wake.clone()
            };
            tokio::select! {
                biased;
                r = kill.wait() => break End::Killed(r),
                _ = gate_opened(wake.as_deref()), if wake.is_some() => {
                    if let Some(end) = self.release_acks(io) {
                        break end;
                    }
                    // Packets left unread while the held acks were full.
                    if acks_full && !io.rbuf.is_empty() && self.acks.len() < self.ack_limit() {
                        if let Some(end) = Box::pin(self.on_read(io)).await {
                            break end;
                        }
                        last_read = Instant::now();
                    }
                }
                r = io.stream.read_buf(&mut io.rbuf), if !acks_full => {
                    match r {
                        Ok(0) | Err(_) => break End::Closed,
                        Ok(n) => {
                            // Busy connections read big, idle ones hold little.
                            read_hint = if n >= spare { (read_hint * 2).min(MAX_READ) } else { (read_hint / 2).max(MIN_READ) };
                            add(&self.ctx.stats.bytes_received, n as u64);
                            if let Some(end) = Box::pin(self.on_read(io)).await {
                                break end;
                            }
                            // After the packets are handled: a publish-rate
                            // pause inside them must not count as silence.
                            last_read = Instant::now();
                        }
                    }
                }
                n = mailbox.recv_many(&mut deliveries, 64), if room => {
                    if n == 0 {
                        break End::Closed;
                    }
                    for d in deliveries.drain(..) {
                        self.send_delivery(io, d);
                    }
                }
                _ = tokio::time::sleep_until((last_read + ka).into()), if !ka.is_zero() => {
                    break End::Error(reason::KEEP_ALIVE_TIMEOUT, "keep alive timeout");
                }
            }
        }
    }

    async fn flush_all<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut Io<S>,
    ) -> std::io::Result<()> {
        if io.wbuf.is_empty() {
            return Ok(());
        }
        let kill = self.kill.clone();
        tokio::select! {
            r = io.flush() => r,
            _ = kill.wait() => {
                // Re-arm so the main loop sees it too.
                self.kill.rearm();
                Err(std::io::Error::other("killed while writing"))
            }
        }
    }

    /// Most acknowledgements held at once: the Receive Maximum the broker
    /// advertises, which already bounds a client's unacknowledged QoS 1/2
    /// PUBLISHes.
    fn ack_limit(&self) -> usize {
        self.ctx.cfg.max_inflight.max(1) as usize
    }

    /// Decode and handle every complete packet in the read buffer (stops
    /// early while the held acknowledgements are at their bound).
    async fn on_read<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut Io<S>) -> Option<End> {
        let max = self.ctx.cfg.max_packet_size as usize;
        loop {
            if self.acks.len() >= self.ack_limit() {
                break;
            }
            let packet = match decode(&mut io.rbuf, self.protocol, max) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    self.flush_batch().await;
                    inc(&self.ctx.stats.protocol_errors);
                    info!(peer = %self.peer, client_id = %self.identity.client_id, error = %e, "bad packet; closing");
                    return Some(End::Error(e.reason_code(), "bad packet"));
                }
            };
            let end = match packet {
                Packet::Publish(p) => self.on_publish(io, p).await,
                other => {
                    self.flush_batch().await;
                    self.on_control(io, other).await
                }
            };
            if end.is_some() {
                self.flush_batch().await;
                return end;
            }
        }
        self.flush_batch().await;
        None
    }

    async fn flush_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let _ = self.ctx.router.send(Event::Publish(batch)).await;
    }

    async fn on_publish<S>(&mut self, io: &mut Io<S>, mut p: Publish) -> Option<End> {
        inc(&self.ctx.stats.messages_received);
        if self.v5()
            && let Some(alias) = p.properties.topic_alias.take()
        {
            if alias == 0 || alias > self.ctx.cfg.max_topic_alias {
                return Some(End::Error(
                    reason::TOPIC_ALIAS_INVALID,
                    "topic alias out of range",
                ));
            }
            if p.topic.is_empty() {
                match self.aliases_in.get(&alias) {
                    Some(t) => p.topic = t.to_string(),
                    None => return Some(End::Error(reason::PROTOCOL_ERROR, "unknown topic alias")),
                }
            } else {
                self.aliases_in.insert(alias, Arc::from(p.topic.as_str()));
            }
        }
        if p.topic.is_empty() || !topic::valid_topic_name(&p.topic) {
            return Some(End::Error(reason::TOPIC_NAME_INVALID, "invalid topic name"));
        }
        if !p.properties.subscription_identifiers.is_empty() {
            return Some(End::Error(
                reason::PROTOCOL_ERROR,
                "subscription identifier in a client PUBLISH",
            ));
        }
        if self.ctx.cfg.max_publish_rate > 0 {
            self.throttle().await;
        }
        // `$SYS/...` belongs to the broker: clients cannot forge statistics.
        let allowed = !is_reserved(&p.topic) && self.ctx.auth.may_publish(&self.identity, &p.topic);
        if !allowed {
            inc(&self.ctx.stats.denied_publish);
            debug!(client_id = %self.identity.client_id, topic = %p.topic, "publish denied by ACL");
        }
        let code = if allowed || !self.v5() {
            reason::SUCCESS
        } else {
            reason::NOT_AUTHORIZED
        };
        let mut hold = Confirm::none();
        match p.qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                let gate = if allowed { self.gate(&mut hold) } else { None };
                self.ack_publish(io, QoS::AtLeastOnce, p.packet_id, code, gate);
            }
            QoS::ExactlyOnce => {
                let dup = self.qos2_in.contains(&p.packet_id);
                if !dup && self.qos2_in.len() >= self.ctx.cfg.max_inflight.max(1) as usize {
                    return Some(End::Error(
                        reason::RECEIVE_MAXIMUM_EXCEEDED,
                        "receive maximum exceeded",
                    ));
                }
                if dup
                    && self
                        .acks
                        .iter()
                        .any(|a| a.packet_id == p.packet_id && a.qos == QoS::ExactlyOnce)
                {
                    // Its PUBREC is still held: that answer covers the resend.
                    return None;
                }
                if code == reason::SUCCESS {
                    self.qos2_in.insert(p.packet_id);
                }
                let gate = if allowed && !dup {
                    self.gate(&mut hold)
                } else {
                    None
                };
                self.ack_publish(io, QoS::ExactlyOnce, p.packet_id, code, gate);
                if dup {
                    // Exactly once: a resent QoS 2 PUBLISH is not routed again.
                    return None;
                }
            }
        }
        if !allowed {
            return None;
        }
        let now = Instant::now();
        let mut props = p.properties;
        props.subscription_identifiers.clear();
        let expires = props
            .message_expiry_interval
            .take()
            .map(|s| now + Duration::from_secs(s as u64));
        self.batch.push((
            Arc::new(Message {
                topic: Arc::from(p.topic),
                payload: p.payload,
                qos: p.qos,
                retain: p.retain,
                properties: props,
                origin: self.identity.client_id.clone(),
                received: now,
                expires,
                hops: 0,
            }),
            hold,
        ));
        if self.batch.len() >= 64 {
            self.flush_batch().await;
        }
        None
    }

    /// A gate for a QoS 1/2 PUBLISH if any durable subscription exists
    /// (the router decides whether the message reaches one); `hold` becomes
    /// the router's hold on it.
    fn gate(&mut self, hold: &mut Confirm) -> Option<Arc<Gate>> {
        if self.ctx.durable.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let wake = self.wake.get_or_insert_with(Default::default).clone();
        let (gate, router_hold) = Gate::new(wake);
        *hold = router_hold;
        Some(gate)
    }

    /// Acknowledge a PUBLISH now, or hold the acknowledgement if it has a
    /// gate or others are held ahead of it.
    fn ack_publish<S>(
        &mut self,
        io: &mut Io<S>,
        qos: QoS,
        packet_id: u16,
        code: u8,
        gate: Option<Arc<Gate>>,
    ) {
        if gate.is_none() && self.acks.is_empty() {
            self.encode_ack(io, qos, packet_id, code);
        } else {
            self.acks.push_back(HeldAck {
                packet_id,
                qos,
                code,
                gate,
            });
        }
    }

    fn encode_ack<S>(&self, io: &mut Io<S>, qos: QoS, packet_id: u16, code: u8) {
        let ack = Ack {
            packet_id,
            reason_code: code,
            properties: Properties::default(),
        };
        let packet = if qos == QoS::ExactlyOnce {
            Packet::PubRec(ack)
        } else {
            Packet::PubAck(ack)
        };
        let _ = encode(&packet, self.protocol, &mut io.wbuf);
    }

    /// Send the held acknowledgements whose gates are open, oldest first,
    /// up to the first still waiting. A failed gate (a durable subscriber
    /// could not take or persist the message) is answered with 0x97 quota
    /// exceeded on 5.0 and ends a 3.1.1 connection unacknowledged, so the
    /// client resends.
    fn release_acks<S>(&mut self, io: &mut Io<S>) -> Option<End> {
        while let Some(front) = self.acks.front() {
            let ok = match &front.gate {
                None => true,
                Some(g) => match g.outcome() {
                    None => break,
                    Some(ok) => ok,
                },
            };
            let a = self.acks.pop_front()?;
            let code = if ok {
                a.code
            } else {
                inc(&self.ctx.stats.durable_refused);
                if a.qos == QoS::ExactlyOnce {
                    self.qos2_in.remove(&a.packet_id);
                }
                if !self.v5() {
                    return Some(End::Error(
                        reason::QUOTA_EXCEEDED,
                        "a durable subscriber did not persist a publish",
                    ));
                }
                reason::QUOTA_EXCEEDED
            };
            self.encode_ack(io, a.qos, a.packet_id, code);
        }
        None
    }

    async fn throttle(&mut self) {
        let rate = self.ctx.cfg.max_publish_rate as f64;
        let now = Instant::now();
        self.rate_tokens =
            (self.rate_tokens + now.duration_since(self.rate_at).as_secs_f64() * rate).min(rate);
        self.rate_at = now;
        self.rate_tokens -= 1.0;
        if self.rate_tokens < 0.0 {
            self.flush_batch().await;
            tokio::time::sleep(Duration::from_secs_f64(-self.rate_tokens / rate)).await;
        }
    }

    async fn on_control<S>(&mut self, io: &mut Io<S>, packet: Packet) -> Option<End> {
        match packet {
            Packet::PubAck(a) => {
                self.complete(a.packet_id, false);
                self.drain_pending(io);
            }
            Packet::PubRec(a) => {
                if a.reason_code >= 0x80 {
                    self.complete(a.packet_id, false);
                    self.drain_pending(io);
                } else if let Some(inf) = self
                    .inflight
                    .iter_mut()
                    .find(|i| i.packet_id == a.packet_id)
                {
                    inf.released = true;
                    let rel = Ack {
                        packet_id: a.packet_id,
                        ..Ack::default()
                    };
                    let _ = encode(&Packet::PubRel(rel), self.protocol, &mut io.wbuf);
                } else {
                    let rel = Ack {
                        packet_id: a.packet_id,
                        reason_code: reason::PACKET_IDENTIFIER_NOT_FOUND,
                        properties: Properties::default(),
                    };
                    let _ = encode(&Packet::PubRel(rel), self.protocol, &mut io.wbuf);
                }
            }
            Packet::PubComp(a) => {
                self.complete(a.packet_id, true);
                self.drain_pending(io);
            }
            Packet::PubRel(a) => {
                let found = self.qos2_in.remove(&a.packet_id);
                let comp = Ack {
                    packet_id: a.packet_id,
                    reason_code: if found {
                        reason::SUCCESS
                    } else {
                        reason::PACKET_IDENTIFIER_NOT_FOUND
                    },
                    properties: Properties::default(),
                };
                let _ = encode(&Packet::PubComp(comp), self.protocol, &mut io.wbuf);
            }
            Packet::Subscribe(s) => return self.on_subscribe(io, s).await,
            Packet::Unsubscribe(u) => return self.on_unsubscribe(io, u).await,
            Packet::PingReq => {
                let _ = encode(&Packet::PingResp, self.protocol, &mut io.wbuf);
            }
            Packet::Disconnect(d) => {
                if let Some(e) = d.properties.session_expiry_interval {
                    if self.expiry_was_zero && e != 0 {
                        return Some(End::Error(
                            reason::PROTOCOL_ERROR,
                            "session expiry set after 0",
                        ));
                    }
                    let max = self.ctx.cfg.max_session_expiry.get();
                    self.expiry = Duration::from_secs(e as u64).min(max);
                }
                return Some(End::Disconnect {
                    with_will: d.reason_code == reason::DISCONNECT_WITH_WILL,
                });
            }
            Packet::Auth(_) => {
                return Some(End::Error(
                    reason::PROTOCOL_ERROR,
                    "AUTH without an authentication method",
                ));
            }
            Packet::Connect(_) => {
                return Some(End::Error(reason::PROTOCOL_ERROR, "second CONNECT"));
            }
            Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp
            | Packet::Publish(_) => {
                return Some(End::Error(
                    reason::PROTOCOL_ERROR,
                    "packet a client must not send",
                ));
            }
        }
        None
    }

    fn complete(&mut self, packet_id: u16, qos2_done: bool) {
        if let Some(pos) = self.inflight.iter().position(|i| i.packet_id == packet_id) {
            let inf = &self.inflight[pos];
            // PUBACK ends QoS 1; PUBCOMP ends a released QoS 2.
            if qos2_done == inf.released || inf.delivery.qos == QoS::AtLeastOnce {
                self.inflight.remove(pos);
                self.inflight_ids.remove(&packet_id);
            }
        }
    }

    async fn on_subscribe<S>(&mut self, io: &mut Io<S>, s: Subscribe) -> Option<End> {
        let id = s.properties.subscription_identifiers.first().copied();
        let v5 = self.v5();
        // 5.0 §3.8.3.1: No Local on a shared subscription is a protocol error
        if v5
            && s.filters
                .iter()
                .any(|f| f.options.no_local && topic::parse_shared(&f.filter).is_some())
        {
            return Some(End::Error(
                reason::PROTOCOL_ERROR,
                "no local on a shared subscription",
            ));
        }
        let filters = s
            .filters
            .into_iter()
            .map(|f| {
                let valid = if f.filter.starts_with("$share/") {
                    topic::valid_shared(&f.filter)
                } else {
                    topic::valid_topic_filter(&f.filter)
                };
                let refused = if !valid {
                    Some(reason::TOPIC_FILTER_INVALID)
                } else if !self
                    .ctx
                    .auth
                    .may_subscribe(&self.identity, crate::router::split_shared(&f.filter).1)
                {
                    inc(&self.ctx.stats.denied_subscribe);
                    Some(reason::NOT_AUTHORIZED)
                } else {
                    None
                };
                let mut options = f.options;
                if !v5 {
                    options.no_local = false;
                    options.retain_as_published = false;
                    options.retain_handling = 0;
                }
                SubReq {
                    filter: f.filter,
                    options,
                    id,
                    refused,
                }
            })
            .collect();
        let (tx, rx) = oneshot::channel();
        let ev = Event::Subscribe {
            key: self.key,
            filters,
            reply: tx,
        };
        if self.ctx.router.send(ev).await.is_err() {
            return Some(End::Error(reason::SERVER_SHUTTING_DOWN, "router gone"));
        }
        let Ok((codes, retained)) = rx.await else {
            return Some(End::Error(reason::SERVER_SHUTTING_DOWN, "router gone"));
        };
        let ack = SubAck {
            packet_id: s.packet_id,
            reason_codes: codes,
            properties: Properties::default(),
        };
        let _ = encode(&Packet::SubAck(ack), self.protocol, &mut io.wbuf);
        for d in retained {
            self.send_delivery(io, d);
        }
        None
    }

    async fn on_unsubscribe<S>(&mut self, io: &mut Io<S>, u: Unsubscribe) -> Option<End> {
        let (tx, rx) = oneshot::channel();
        let ev = Event::Unsubscribe {
            key: self.key,
            filters: u.filters,
            reply: tx,
        };
        if self.ctx.router.send(ev).await.is_err() {
            return Some(End::Error(reason::SERVER_SHUTTING_DOWN, "router gone"));
        }
        let Ok(codes) = rx.await else {
            return Some(End::Error(reason::SERVER_SHUTTING_DOWN, "router gone"));
        };
        let ack = UnsubAck {
            packet_id: u.packet_id,
            reason_codes: codes,
            properties: Properties::default(),
        };
        let _ = encode(&Packet::UnsubAck(ack), self.protocol, &mut io.wbuf);
        None
    }

    fn drain_pending<S>(&mut self, io: &mut Io<S>) {
        while self.inflight.len() < self.window {
            let Some(d) = self.pending.pop_front() else {
                break;
            };
            self.send_delivery(io, d);
        }
    }

    fn next_packet_id(&mut self) -> u16 {
        loop {
            let id = self.next_id;
            self.next_id = if self.next_id == u16::MAX {
                1
            } else {
                self.next_id + 1
            };
            if !self.inflight_ids.contains(&id) {
                return id;
            }
        }
    }

    /// Encode one delivery into the write buffer, or queue it if the
    /// window is full.
    fn send_delivery<S>(&mut self, io: &mut Io<S>, d: Delivery) {
        if d.msg.expired(Instant::now()) {
            inc(&self.ctx.stats.dropped_expired);
            return;
        }
        if d.qos != QoS::AtMostOnce && self.inflight.len() >= self.window {
            if self.pending.len() >= self.ctx.cfg.max_queued_messages {
                inc(&self.ctx.stats.dropped_queue_full);
            } else {
                self.pending.push_back(d);
            }
            return;
        }
        let packet_id = if d.qos == QoS::AtMostOnce {
            0
        } else {
            self.next_packet_id()
        };
        let mut p = self.publish_packet(&d, packet_id, false);
        if self.client_max_packet != usize::MAX {
            let packet = Packet::Publish(p);
            if encoded_len(&packet, self.protocol) > self.client_max_packet {
                inc(&self.ctx.stats.dropped_too_large);
                return;
            }
            let Packet::Publish(back) = packet else {
                return;
            };
            p = back;
        }
        if self.client_alias_max > 0 {
            self.apply_alias(&mut p);
        }
        if encode(&Packet::Publish(p), self.protocol, &mut io.wbuf).is_err() {
            inc(&self.ctx.stats.dropped_too_large);
            return;
        }
        inc(&self.ctx.stats.messages_sent);
        if d.qos != QoS::AtMostOnce {
            self.inflight_ids.insert(packet_id);
            self.inflight.push_back(InflightOut {
                packet_id,
                delivery: d,
                released: false,
            });
        }
    }

    fn apply_alias(&mut self, p: &mut Publish) {
        if let Some(&a) = self.aliases_out.get(p.topic.as_str()) {
            p.properties.topic_alias = Some(a);
            p.topic.clear();
        } else if (self.aliases_out.len() as u16) < self.client_alias_max {
            let a = self.aliases_out.len() as u16 + 1;
            self.aliases_out.insert(Arc::from(p.topic.as_str()), a);
            p.properties.topic_alias = Some(a);
        }
    }

    fn publish_packet(&self, d: &Delivery, packet_id: u16, dup: bool) -> Publish {
        let msg = &d.msg;
        let properties = if self.v5() {
            let mut props = msg.properties.clone();
            if let Some(e) = msg.expires {
                let left = e.saturating_duration_since(Instant::now()).as_secs().max(1);
                props.message_expiry_interval = Some(left.min(u32::MAX as u64) as u32);
            }
            props.subscription_identifiers = d.sub_ids.clone();
            props
        } else {
            Properties::default()
        };
        Publish {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic: msg.topic.to_string(),
            packet_id,
            properties,
            payload: msg.payload.clone(),
        }
    }

    /// Send the closing DISCONNECT if any, hand state back to the router.
    async fn finish<S: AsyncRead + AsyncWrite + Unpin>(mut self, io: &mut Io<S>, end: End) {
        let (will, code) = match &end {
            End::Disconnect { with_will } => (*with_will, None),
            End::Closed => (true, None),
            End::Error(code, why) => {
                debug!(peer = %self.peer, client_id = %self.identity.client_id, why, "closing connection");
                (true, Some(*code))
            }
            End::Killed(code) => (true, Some(*code)),
        };
        if let (Some(code), true) = (code, self.v5()) {
            let d = Disconnect {
                reason_code: code,
                properties: Properties::default(),
            };
            let _ = encode(&Packet::Disconnect(d), self.protocol, &mut io.wbuf);
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = io.flush().await;
            let _ = io.stream.shutdown().await;
        })
        .await;
        // QoS 2 PUBLISHes whose PUBREC was never sent are routed again
        // when resent: they may not have been persisted.
        for a in self.acks.drain(..) {
            if a.qos == QoS::ExactlyOnce {
                self.qos2_in.remove(&a.packet_id);
            }
        }
        let mut queued = std::mem::take(&mut self.pending);
        // From here on the router keeps new deliveries for the session
        // itself, behind these.
        queued.extend(self.mailbox.close());
        // Unsent QoS 0 deliveries die with the connection.
        queued.retain(|d| d.qos != QoS::AtMostOnce);
        let carry = Carry {
            inflight: self.inflight.drain(..).collect(),
            qos2_in: self.qos2_in.drain().collect(),
            queued,
            mailbox: Some(self.mailbox.clone()),
        };
        let will = if will { self.will.take() } else { None };
        let ev = Event::Disconnected {
            key: self.key,
            conn_id: self.conn_id,
            carry,
            will,
            expiry: self.expiry,
        };
        let _ = self.ctx.router.send(ev).await;
        debug!(peer = %self.peer, client_id = %self.identity.client_id, ?end, "disconnected");
    }
}

/// Resolves when `wake` is notified (a gate opened); never without one.
async fn gate_opened(wake: Option<&Notify>) {
    match wake {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

/// Topics under `$SYS` belong to the broker: clients cannot publish there.
pub(crate) fn is_reserved(topic: &str) -> bool {
    topic.starts_with("$SYS/") || topic == "$SYS"
}

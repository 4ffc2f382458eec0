//! One client connection: the CONNECT handshake (`handshake`), then a
//! loop that reads packets and writes deliveries until the connection ends,
//! and the hand-back of its session state to the router.
//!
//! Its parts: `publish` (incoming PUBLISH, QoS 2, acknowledgements and their
//! gates, the publish rate), `subscribe` (SUBSCRIBE and UNSUBSCRIBE) and
//! `deliver` (outgoing deliveries, packet ids, the inflight window, topic
//! aliases).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tracing::{debug, info};
use verge_mqtt::{Disconnect, Packet, Properties, Protocol, QoS, decode, encode, reason};

use crate::auth::{Authenticator, Identity};
use crate::config::BrokerConfig;
use crate::delivery::Delivery;
use crate::durable::Confirm;
use crate::mailbox::Mailbox;
use crate::message::Message;
use crate::router::{Carry, Event, InflightOut, Kill};
use crate::stats::{Stats, add, inc};
use crate::subs::SubKey;

mod arrival;
mod deliver;
mod handshake;
mod publish;
mod subscribe;

use arrival::{Arrival, Stamped};
use handshake::handshake;
use publish::HeldAck;

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
pub(crate) async fn serve<S>(
    stream: S,
    peer: SocketAddr,
    cert_name: Option<String>,
    transport: &'static str,
    ctx: Arc<Ctx>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    inc(&ctx.stats.connections_total);
    let mut io = Io {
        stream: Stamped::new(stream),
        rbuf: BytesMut::with_capacity(MIN_READ),
        wbuf: BytesMut::new(),
        stats: ctx.stats.clone(),
    };
    // Boxed: the handshake's state is large and lives only briefly; an idle
    // connection should not carry it in its task.
    let Some(mut conn) = Box::pin(handshake(&mut io, peer, cert_name, transport, &ctx)).await
    else {
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

struct Io<S> {
    stream: Stamped<S>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    stats: Arc<Stats>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Io<S> {
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
    /// When the bytes of the last read reached the socket (see `arrival`).
    arrived: Arrival,
    rate_tokens: f64,
    rate_at: Instant,
}

impl Conn {
    fn v5(&self) -> bool {
        self.protocol == Protocol::V5
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(&mut self, io: &mut Io<S>) -> End {
        let mut deliveries = Vec::with_capacity(64);
        let mut last_read = Instant::now();
        let mut read_hint = MIN_READ;
        let kill = self.kill.clone();
        let mailbox = self.mailbox.clone();
        self.arrived = io.stream.arrival();
        // Packets that came in the same read as the CONNECT: the loop below
        // handles the buffer only after a read, and the client may be
        // waiting for their answers before it sends anything else.
        if !io.rbuf.is_empty()
            && let Some(end) = Box::pin(self.on_read(io)).await
        {
            return end;
        }
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
                            self.arrived = io.stream.arrival();
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

    async fn on_control<S>(&mut self, io: &mut Io<S>, packet: Packet) -> Option<End> {
        match packet {
            Packet::PubAck(a) => self.on_puback(io, a),
            Packet::PubRec(a) => self.on_pubrec(io, a),
            Packet::PubComp(a) => self.on_pubcomp(io, a),
            Packet::PubRel(a) => self.on_pubrel(io, a),
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

    /// Send the closing DISCONNECT if any, hand state back to the router.
    async fn finish<S: AsyncRead + AsyncWrite + Unpin>(mut self, io: &mut Io<S>, end: End) {
        let (will, code, why) = match &end {
            End::Disconnect { with_will } => (*with_will, None, None),
            End::Closed => (true, None, None),
            End::Error(code, why) => {
                debug!(peer = %self.peer, client_id = %self.identity.client_id, why, "closing connection");
                (true, Some(*code), Some(*why))
            }
            End::Killed(code) => (true, Some(*code), killed_why(*code)),
        };
        if let (Some(code), true) = (code, self.v5()) {
            // The Reason String tells a person why; it also makes the
            // reason code readable to paho-mqtt (2.1), which reads a
            // DISCONNECT's reason code only when more than two bytes follow
            // the fixed header.
            let mut d = Disconnect {
                reason_code: code,
                properties: Properties {
                    reason_string: why.map(str::to_owned),
                    ..Properties::default()
                },
            };
            if verge_mqtt::encoded_len(&Packet::Disconnect(d.clone()), self.protocol)
                > self.client_max_packet
            {
                d.properties = Properties::default();
            }
            let _ = encode(&Packet::Disconnect(d), self.protocol, &mut io.wbuf);
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = io.flush().await;
            let _ = io.stream.shutdown().await;
        })
        .await;
        // Closing a socket with unread input sends a reset, and a client
        // still writing then sees its connection reset (often before it
        // reads the DISCONNECT): read its input until it closes, a little
        // while, after the session is handed back.
        let drain = matches!(end, End::Error(..));
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
        if drain {
            discard_input(io).await;
        }
    }
}

/// The Reason String of a DISCONNECT the router asked for.
fn killed_why(code: u8) -> Option<&'static str> {
    match code {
        reason::SESSION_TAKEN_OVER => Some("session taken over"),
        reason::SERVER_SHUTTING_DOWN => Some("server shutting down"),
        reason::ADMINISTRATIVE_ACTION => Some("disconnected by an administrator"),
        _ => None,
    }
}

/// Longest a closing connection reads and discards its client's input.
const DRAIN_TIME: Duration = Duration::from_secs(2);
/// Most bytes a closing connection reads and discards.
const DRAIN_BYTES: usize = 1024 * 1024;

/// Read and discard input until the client closes, or [`DRAIN_TIME`] or
/// [`DRAIN_BYTES`] is reached.
async fn discard_input<S: AsyncRead + AsyncWrite + Unpin>(io: &mut Io<S>) {
    let deadline = tokio::time::Instant::now() + DRAIN_TIME;
    let mut left = DRAIN_BYTES;
    while left > 0 {
        io.rbuf.clear();
        if io.rbuf.capacity() < MIN_READ {
            io.rbuf.reserve(MIN_READ);
        }
        match tokio::time::timeout_at(deadline, io.stream.read_buf(&mut io.rbuf)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => break,
        }
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

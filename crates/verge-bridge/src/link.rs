//! The connection to the cloud: connect with backoff, drain the cache queue
//! with a window of QoS 1 PUBLISHes in flight, remove a message from the
//! queue only when its PUBACK arrives, and publish downstream messages into
//! the local broker.
//!
//! Messages in flight when the link drops stay in flight: on the next
//! connection they are sent again first (same packet ids, DUP set), in lane
//! and sequence order, then the queue goes on from where it was. The
//! `verge-id` user property (`{queue id}/{lane}/{seq}`) lets the cloud drop
//! the duplicates this can make.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tracing::{debug, info, warn};
use verge_broker::{BrokerHandle, Message};
use verge_mqtt::{
    Ack, Connect, Disconnect, Packet, Properties, Protocol, Publish, QoS, SubOptions, Subscribe,
    SubscribeFilter, decode, encode, encoded_len, topic,
};
use verge_net::Backoff;
use verge_protocol::VergeId;
use verge_protocol::device::DeviceChannel;
use verge_protocol::topics::{self, VERGE_ID_PROPERTY, VERGE_TIME_PROPERTY};
use verge_queue::{Entry, Queue};

use crate::config::Plan;
use crate::status::{LinkState, Status};

/// Largest packet accepted from the cloud.
const MAX_IN_PACKET: usize = 16 << 20;
/// Entries taken from the queue per read.
const BATCH: usize = 256;
/// A write that takes longer than this means the link is dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Origin of messages the bridge publishes locally; the forwards skip them
/// so downstream messages do not echo back up.
pub const ORIGIN: &str = "$bridge";

/// Everything the link task needs.
pub struct Link {
    /// The validated config.
    pub plan: Arc<Plan>,
    /// TLS, for `mqtts://`.
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The cache queue.
    pub queue: Queue,
    /// The local broker, for downstream messages.
    pub broker: BrokerHandle,
    /// Shared counters.
    pub status: Arc<Status>,
    /// Lane names by index, for message ids.
    pub lanes: Vec<String>,
}

/// One message sent and not yet acknowledged.
struct Pending {
    entry: Entry,
}

/// How long a connection whose messages the cloud acknowledged must last
/// to count as healthy.
const PROVEN_AFTER: Duration = Duration::from_secs(1);

/// What a connection proved about the cloud, for the reconnect backoff.
#[derive(Default)]
struct Proof {
    /// The cloud acknowledged a PUBLISH or the downstream SUBSCRIBE with
    /// success: it is up and taking messages.
    acked: bool,
    /// The cloud deferred a message (quota exceeded and the like): going
    /// back at `reconnect_min` would hammer it.
    deferred: bool,
}

/// Why a connection ended.
enum End {
    /// Asked to stop.
    Stopped,
    /// Lost or refused; try again.
    Lost(String),
}

impl Link {
    /// Connect, drain and reconnect until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let cfg = &self.plan.config;
        let mut inflight: BTreeMap<u16, Pending> = BTreeMap::new();
        let mut next_id: u16 = 1;
        // ±20 %, so many nodes do not reconnect in lock step.
        let mut backoff =
            Backoff::new(cfg.reconnect_min.get(), cfg.reconnect_max.get()).with_jitter(0.2);
        loop {
            if *stop.borrow() {
                break;
            }
            self.status.set_state(LinkState::Connecting);
            let attempt = tokio::time::timeout(cfg.connect_timeout.get(), self.connect());
            let connected = tokio::select! {
                r = attempt => r.unwrap_or_else(|_| Err(format!(
                    "no CONNACK within {:?}", cfg.connect_timeout.get()
                ))),
                _ = stop.changed() => break,
            };
            match connected {
                Ok((io, connack, rbuf))
                    if connack.properties.receive_maximum == Some(0)
                        || connack.properties.maximum_packet_size == Some(0) =>
                {
                    drop((io, rbuf));
                    self.status.error("connect: the cloud sent a CONNACK with Receive Maximum or Maximum Packet Size 0 (a protocol error)");
                }
                Ok((io, connack, rbuf)) => {
                    // The backoff resets once a connection proved healthy:
                    // the cloud acknowledged something, deferred nothing
                    // and kept the link for `PROVEN_AFTER`, or the link
                    // stayed up for `reconnect_max`. So the first wait
                    // after an outage of a working link is `reconnect_min`,
                    // while a cloud that accepts and then drops or defers
                    // (or two nodes with one identity taking the session
                    // from each other) is not hammered at that pace.
                    let connected_at = Instant::now();
                    self.status.connects.fetch_add(1, Ordering::Relaxed);
                    self.status.set_state(LinkState::Connected);
                    info!(url = %cfg.url, session = connack.session_present, "connected to the cloud");
                    let mut proof = Proof::default();
                    let end = self
                        .session(
                            io,
                            rbuf,
                            &connack,
                            &mut inflight,
                            &mut next_id,
                            &mut stop,
                            &mut proof,
                        )
                        .await;
                    let up = connected_at.elapsed();
                    if (proof.acked && !proof.deferred && up >= PROVEN_AFTER)
                        || up >= cfg.reconnect_max.get()
                    {
                        backoff.reset();
                    }
                    match end {
                        End::Stopped => break,
                        End::Lost(e) => {
                            warn!(url = %cfg.url, "cloud link lost: {e}");
                            self.status.error(format!("link lost: {e}"));
                        }
                    }
                }
                Err(e) => {
                    debug!(url = %cfg.url, "cannot connect to the cloud: {e}");
                    self.status.error(format!("connect: {e}"));
                }
            }
            self.status.set_state(LinkState::Disconnected);
            let wait = backoff.next_delay();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => break,
            }
        }
        self.status.set_state(LinkState::Stopped);
    }

    async fn connect(&self) -> Result<(Io, verge_mqtt::ConnAck, BytesMut), String> {
        let ep = &self.plan.endpoint;
        let tcp = TcpStream::connect((ep.host.as_str(), ep.port))
            .await
            .map_err(|e| format!("{}:{}: {e}", ep.host, ep.port))?;
        let _ = tcp.set_nodelay(true);
        let mut io = match &self.tls {
            None => Io::Plain(tcp),
            Some((connector, name)) => Io::Tls(Box::new(
                connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("tls: {e}"))?,
            )),
        };
        let cfg = &self.plan.config;
        let connect = Connect {
            protocol: Protocol::V5,
            clean_start: false,
            keep_alive: cfg.keep_alive.get().as_secs() as u16,
            client_id: self.plan.client_id.clone(),
            username: cfg.username.clone(),
            password: cfg.password.clone().map(Into::into),
            will: None,
            properties: Properties {
                session_expiry_interval: Some(
                    cfg.session_expiry.get().as_secs().min(u64::from(u32::MAX)) as u32,
                ),
                receive_maximum: Some(u16::MAX),
                maximum_packet_size: Some(MAX_IN_PACKET as u32),
                ..Properties::default()
            },
        };
        let mut buf = BytesMut::new();
        encode(&Packet::Connect(connect), Protocol::V5, &mut buf)
            .map_err(|e| format!("encoding CONNECT: {e}"))?;
        io.write_all(&buf)
            .await
            .map_err(|e| format!("writing CONNECT: {e}"))?;
        let mut rbuf = BytesMut::with_capacity(4096);
        loop {
            match decode(&mut rbuf, Protocol::V5, MAX_IN_PACKET) {
                Ok(Some(Packet::ConnAck(ack))) if ack.reason_code < 0x80 => {
                    // Bytes after the CONNACK (queued downstream messages)
                    // belong to the session.
                    return Ok((io, ack, rbuf));
                }
                Ok(Some(Packet::ConnAck(ack))) => {
                    return Err(format!(
                        "the cloud refused the connection: {}",
                        connack_reason(ack.reason_code, &ack.properties)
                    ));
                }
                Ok(Some(other)) => return Err(format!("expected CONNACK, got {other:?}")),
                Ok(None) => {}
                Err(e) => return Err(format!("bad CONNACK: {e}")),
            }
            let n = io
                .read_buf(&mut rbuf)
                .await
                .map_err(|e| format!("reading CONNACK: {e}"))?;
            if n == 0 {
                return Err("the cloud closed the connection before CONNACK".into());
            }
        }
    }

    /// One connected session; returns why it ended.
    #[allow(clippy::too_many_arguments)]
    async fn session(
        &self,
        io: Io,
        mut rbuf: BytesMut,
        connack: &verge_mqtt::ConnAck,
        inflight: &mut BTreeMap<u16, Pending>,
        next_id: &mut u16,
        stop: &mut watch::Receiver<bool>,
        proof: &mut Proof,
    ) -> End {
        let cfg = &self.plan.config;
        let (mut rd, wr) = tokio::io::split(io);
        let mut out = Writer {
            wr,
            buf: BytesMut::with_capacity(64 << 10),
        };
        let window = usize::from(
            cfg.inflight
                .min(connack.properties.receive_maximum.unwrap_or(u16::MAX))
                .min(u16::MAX - 1),
        );
        let max_out = connack
            .properties
            .maximum_packet_size
            .map_or(usize::MAX, |m| m as usize);
        let keep_alive = match connack.properties.server_keep_alive {
            Some(s) => Duration::from_secs(u64::from(s)),
            None => cfg.keep_alive.get(),
        };

        // Downstream subscription: its packet id is taken from the same
        // space as the PUBLISHes'.
        let mut sub_id = None;
        if cfg.downstream {
            let id = free_id(inflight, next_id, None);
            sub_id = Some(id);
            let sub = Subscribe {
                packet_id: id,
                filters: vec![SubscribeFilter {
                    filter: topics::down_filter(&self.plan.node),
                    options: SubOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: true,
                        // Retained commands only on a new subscription, not
                        // again after every reconnect.
                        retain_handling: 1,
                        ..SubOptions::default()
                    },
                }],
                properties: Properties::default(),
            };
            if let Err(e) = out.push(&Packet::Subscribe(sub)) {
                return End::Lost(e);
            }
        }

        // What was in flight when the link dropped goes first, in order.
        let mut resend: Vec<(u16, &Pending)> = inflight.iter().map(|(k, v)| (*k, v)).collect();
        resend.sort_by_key(|(_, p)| (p.entry.lane, p.entry.seq));
        let resend_ids: Vec<u16> = resend.iter().map(|(k, _)| *k).collect();
        for id in resend_ids {
            if let Some(p) = inflight.get(&id) {
                let publish = self.publish(&p.entry, id, true);
                if let Err(e) = out.push(&Packet::Publish(publish)) {
                    return End::Lost(e);
                }
                self.status.published.fetch_add(1, Ordering::Relaxed);
                self.status.resent.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Err(e) = out.flush().await {
            return End::Lost(e);
        }

        // Packets that came with the CONNACK.
        if let Err(e) = self
            .handle_read(&mut rbuf, inflight, sub_id, &mut out, proof)
            .await
        {
            return End::Lost(e);
        }
        if let Err(e) = out.flush().await {
            return End::Lost(e);
        }
        rbuf.reserve(64 << 10);
        let mut batch: Vec<Entry> = Vec::with_capacity(BATCH);
        let mut last_in = Instant::now();
        let mut last_out = Instant::now();
        let tick_every = (keep_alive / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let room = window.saturating_sub(inflight.len());
            tokio::select! {
                biased;
                _ = stop.changed() => {
                    let bye = Packet::Disconnect(Disconnect::default());
                    if out.push(&bye).is_ok() {
                        let _ = tokio::time::timeout(Duration::from_secs(1), out.flush()).await;
                    }
                    return End::Stopped;
                }
                r = rd.read_buf(&mut rbuf) => {
                    match r {
                        Ok(0) => return End::Lost("the cloud closed the connection".into()),
                        Ok(_) => last_in = Instant::now(),
                        Err(e) => return End::Lost(format!("read: {e}")),
                    }
                    if let Err(e) = self.handle_read(&mut rbuf, inflight, sub_id, &mut out, proof).await {
                        return End::Lost(e);
                    }
                    if !out.buf.is_empty() {
                        if let Err(e) = out.flush().await {
                            return End::Lost(e);
                        }
                        last_out = Instant::now();
                    }
                }
                n = self.queue.next_batch(room.min(BATCH), &mut batch), if room > 0 => {
                    if n == 0 {
                        // The queue closed: the node is stopping.
                        return End::Stopped;
                    }
                    for entry in batch.drain(..) {
                        let id = free_id(inflight, next_id, sub_id);
                        let publish = self.publish(&entry, id, false);
                        let packet = Packet::Publish(publish);
                        if encoded_len(&packet, Protocol::V5) > max_out {
                            warn!(lane = %self.lanes.get(entry.lane).map_or("?", |s| s.as_str()),
                                seq = entry.seq, "message larger than the cloud accepts, dropped");
                            self.status.too_large.fetch_add(1, Ordering::Relaxed);
                            self.status.error(format!(
                                "a message on `{}` is larger than the cloud's maximum packet size ({max_out} bytes); dropped",
                                entry.record.topic
                            ));
                            self.queue.ack(entry.lane, entry.seq);
                            continue;
                        }
                        if let Err(e) = out.push(&packet) {
                            // Cannot be encoded (e.g. a topic over 65,535
                            // bytes with the prefix): drop and count it like
                            // an oversized one; the rest of the batch goes on.
                            warn!(topic = %entry.record.topic, "message cannot be encoded, dropped: {e}");
                            self.status.too_large.fetch_add(1, Ordering::Relaxed);
                            self.status.error(format!("a message on `{}` cannot be sent: {e}; dropped", entry.record.topic));
                            self.queue.ack(entry.lane, entry.seq);
                            continue;
                        }
                        self.status.published.fetch_add(1, Ordering::Relaxed);
                        inflight.insert(id, Pending { entry });
                    }
                    self.status.inflight.store(inflight.len() as u64, Ordering::Relaxed);
                    if let Err(e) = out.flush().await {
                        return End::Lost(e);
                    }
                    last_out = Instant::now();
                }
                _ = tick.tick() => {
                    if !keep_alive.is_zero() {
                        if last_in.elapsed() > keep_alive + keep_alive / 2 {
                            return End::Lost(format!(
                                "no packet from the cloud for {:?}", last_in.elapsed()
                            ));
                        }
                        if last_out.elapsed() >= keep_alive / 2 {
                            if let Err(e) = out.push(&Packet::PingReq) {
                                return End::Lost(e);
                            }
                            if let Err(e) = out.flush().await {
                                return End::Lost(e);
                            }
                            last_out = Instant::now();
                        }
                    }
                }
            }
        }
    }

    /// Handle every complete packet in `rbuf`.
    async fn handle_read(
        &self,
        rbuf: &mut BytesMut,
        inflight: &mut BTreeMap<u16, Pending>,
        sub_id: Option<u16>,
        out: &mut Writer,
        proof: &mut Proof,
    ) -> Result<(), String> {
        while let Some(packet) = decode(rbuf, Protocol::V5, MAX_IN_PACKET)
            .map_err(|e| format!("bad packet from the cloud: {e}"))?
        {
            self.on_packet(packet, inflight, sub_id, out, proof).await?;
        }
        Ok(())
    }

    fn publish(&self, entry: &Entry, packet_id: u16, dup: bool) -> Publish {
        let lane = self.lanes.get(entry.lane).map_or("?", |s| s.as_str());
        Publish {
            dup,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: format!("{}{}", self.plan.up_prefix, entry.record.topic),
            packet_id,
            properties: Properties {
                user_properties: vec![
                    (
                        VERGE_ID_PROPERTY.into(),
                        VergeId::format(self.queue.id(), lane, entry.seq),
                    ),
                    (VERGE_TIME_PROPERTY.into(), entry.record.time_ms.to_string()),
                ],
                ..Properties::default()
            },
            payload: entry.record.payload.clone(),
        }
    }

    async fn on_packet(
        &self,
        packet: Packet,
        inflight: &mut BTreeMap<u16, Pending>,
        sub_id: Option<u16>,
        out: &mut Writer,
        proof: &mut Proof,
    ) -> Result<(), String> {
        match packet {
            Packet::PubAck(ack) => {
                let Some(p) = inflight.remove(&ack.packet_id) else {
                    // A PUBACK for a message acknowledged before (a resend).
                    return Ok(());
                };
                self.status
                    .inflight
                    .store(inflight.len() as u64, Ordering::Relaxed);
                match ack.reason_code {
                    c if c < 0x80 => {
                        proof.acked = true;
                        self.queue.ack(p.entry.lane, p.entry.seq);
                        self.status.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    // Quota exceeded, unspecified, implementation specific:
                    // the cloud may take it later; packet identifier in use
                    // (0x91) is a session mix-up, not a refusal. Keep it in
                    // flight and reconnect after a pause.
                    0x80 | 0x83 | 0x91 | 0x97 => {
                        proof.deferred = true;
                        let id = ack.packet_id;
                        inflight.insert(id, p);
                        return Err(format!(
                            "the cloud deferred a message: {}",
                            reason_text(ack.reason_code, &ack.properties)
                        ));
                    }
                    code => {
                        warn!(topic = %p.entry.record.topic, code, "the cloud refused a message; dropped");
                        self.status.rejected.fetch_add(1, Ordering::Relaxed);
                        self.status.error(format!(
                            "the cloud refused a message on `{}`: {}",
                            p.entry.record.topic,
                            reason_text(code, &ack.properties)
                        ));
                        self.queue.ack(p.entry.lane, p.entry.seq);
                    }
                }
            }
            Packet::SubAck(ack) if Some(ack.packet_id) == sub_id => {
                if ack.reason_codes.first().is_some_and(|&c| c < 0x80) {
                    proof.acked = true;
                }
                if let Some(&code) = ack.reason_codes.first()
                    && code >= 0x80
                {
                    let e = format!(
                        "the cloud refused the downstream subscription {}: {}",
                        topics::down_filter(&self.plan.node),
                        reason_text(code, &ack.properties)
                    );
                    warn!("{e}");
                    self.status.error(e);
                }
            }
            Packet::Publish(p) => self.downstream(p, out).await?,
            Packet::PubRel(rel) => out.push(&Packet::PubComp(Ack {
                packet_id: rel.packet_id,
                ..Ack::default()
            }))?,
            Packet::PingResp => {}
            Packet::Disconnect(d) => {
                return Err(format!(
                    "the cloud disconnected: {}",
                    reason_text(d.reason_code, &d.properties)
                ));
            }
            other => return Err(format!("unexpected packet from the cloud: {other:?}")),
        }
        Ok(())
    }

    /// A message from `nodes/{node}/down/…`: publish it locally under the
    /// rest of its topic, then acknowledge it.
    async fn downstream(&self, p: Publish, out: &mut Writer) -> Result<(), String> {
        let local = p
            .topic
            .strip_prefix(self.plan.down_prefix.as_str())
            .filter(|t| !t.is_empty() && topic::valid_topic_name(t) && downstream_allowed(t));
        match local {
            Some(t) => {
                let mut msg =
                    Message::local(t, p.payload.clone(), p.qos.min(QoS::AtLeastOnce), p.retain);
                msg.origin = Arc::from(ORIGIN);
                msg.properties = Properties {
                    payload_format_indicator: p.properties.payload_format_indicator,
                    content_type: p.properties.content_type.clone(),
                    response_topic: p.properties.response_topic.clone(),
                    correlation_data: p.properties.correlation_data.clone(),
                    user_properties: p.properties.user_properties.clone(),
                    ..Properties::default()
                };
                match self.broker.publish(msg).await {
                    Ok(()) => {
                        self.status.downstream.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        self.status
                            .downstream_dropped
                            .fetch_add(1, Ordering::Relaxed);
                        self.status.error(format!("downstream `{t}`: {e}"));
                    }
                }
            }
            None => {
                warn!(topic = %p.topic, "downstream message outside {}…, dropped", self.plan.down_prefix);
                self.status
                    .downstream_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        let ack = Ack {
            packet_id: p.packet_id,
            ..Ack::default()
        };
        match p.qos {
            QoS::AtMostOnce => Ok(()),
            QoS::AtLeastOnce => out.push(&Packet::PubAck(ack)),
            QoS::ExactlyOnce => out.push(&Packet::PubRec(ack)),
        }
    }
}

/// Whether a downstream topic may be published locally: any but a
/// `$`-topic, except the device channel's downstream ones
/// (`$verge/shadow/{d}`, `$verge/commands/{d}`, `$verge/store-query/{d}`),
/// which the node's device service takes (devices cannot reach
/// `$verge/…`).
fn downstream_allowed(local: &str) -> bool {
    if !local.starts_with('$') {
        return true;
    }
    matches!(
        verge_protocol::device::parse_device_channel(local),
        Some((
            DeviceChannel::Shadow | DeviceChannel::Command | DeviceChannel::StoreQuery,
            _
        ))
    )
}

/// The next packet id not in use.
fn free_id(inflight: &BTreeMap<u16, Pending>, next: &mut u16, reserved: Option<u16>) -> u16 {
    loop {
        let id = *next;
        *next = if *next == u16::MAX { 1 } else { *next + 1 };
        if !inflight.contains_key(&id) && Some(id) != reserved {
            return id;
        }
    }
}

fn reason_text(code: u8, props: &Properties) -> String {
    match &props.reason_string {
        Some(s) => format!("reason code 0x{code:02x} ({s})"),
        None => format!("reason code 0x{code:02x}"),
    }
}

fn connack_reason(code: u8, props: &Properties) -> String {
    let what = match code {
        0x84 => "unsupported protocol version (the cloud must speak MQTT 5)",
        0x85 => "client identifier not valid",
        0x86 => "bad user name or password",
        0x87 => "not authorized",
        0x88 => "server unavailable",
        0x89 => "server busy",
        0x8A => "banned",
        _ => "",
    };
    if what.is_empty() {
        reason_text(code, props)
    } else {
        format!("{what} ({})", reason_text(code, props))
    }
}

/// Packets encoded into one buffer and written together.
struct Writer {
    wr: WriteHalf<Io>,
    buf: BytesMut,
}

impl Writer {
    fn push(&mut self, packet: &Packet) -> Result<(), String> {
        encode(packet, Protocol::V5, &mut self.buf).map_err(|e| format!("encoding: {e}"))
    }

    async fn flush(&mut self) -> Result<(), String> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = self.buf.split().freeze();
        match tokio::time::timeout(WRITE_TIMEOUT, self.wr.write_all(&data)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("write: {e}")),
            Err(_) => Err(format!("a write took over {WRITE_TIMEOUT:?}")),
        }
    }
}

/// The socket, plain or TLS.
pub enum Io {
    /// `mqtt://`.
    Plain(TcpStream),
    /// `mqtts://`.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connack_reasons_are_spelled_out() {
        let s = connack_reason(0x86, &Properties::default());
        assert!(s.contains("bad user name or password"), "{s}");
        let s = connack_reason(0x9F, &Properties::default());
        assert!(s.contains("0x9f"), "{s}");
    }
}

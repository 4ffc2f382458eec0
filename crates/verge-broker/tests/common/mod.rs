//! Shared helpers of the broker's integration tests: an in-process broker on
//! an ephemeral loopback port, rumqttc clients (3.1.1 and 5.0) whose event
//! loops are driven by a task, and a raw client that speaks packets encoded
//! with `verge_mqtt` over any byte stream.
//!
//! Every wait is bounded (at most [`WAIT`]) so a broken broker fails a test
//! instead of hanging it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use verge_broker::duration::HumanDuration;
use verge_broker::{
    Authenticator, BoundListener, Broker, BrokerConfig, BrokerHandle, Stats, Transport,
};

/// The longest any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(5);

/// How long to watch for something that must NOT arrive when no sentinel
/// can be used.
pub const QUIET: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------
// Broker
// ---------------------------------------------------------------------------

/// A broker running in-process with one plain TCP listener.
pub struct TestBroker {
    pub broker: Broker,
    pub addr: SocketAddr,
}

impl TestBroker {
    pub fn handle(&self) -> BrokerHandle {
        self.broker.handle()
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.broker.handle().stats().clone()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Add another listener with `transport`; returns its address.
    pub async fn listen(&mut self, transport: Transport) -> SocketAddr {
        listen(&mut self.broker, transport).await
    }
}

/// Anonymous clients allowed, `$SYS` off, everything else default.
pub fn test_config() -> BrokerConfig {
    BrokerConfig {
        allow_anonymous: true,
        sys_interval: HumanDuration(Duration::from_secs(0)),
        ..BrokerConfig::default()
    }
}

/// A broker with [`test_config`].
pub async fn start() -> TestBroker {
    start_with(|_| {}).await
}

/// A broker with [`test_config`] changed by `f`.
pub async fn start_with(f: impl FnOnce(&mut BrokerConfig)) -> TestBroker {
    let mut cfg = test_config();
    f(&mut cfg);
    let auth = Broker::authenticator(&cfg).expect("authenticator");
    start_with_auth(cfg, auth).await
}

/// A broker with an explicit config and authenticator.
pub async fn start_with_auth(cfg: BrokerConfig, auth: Authenticator) -> TestBroker {
    let mut broker = Broker::start(cfg, auth);
    let addr = listen(&mut broker, Transport::Tcp).await;
    TestBroker { broker, addr }
}

/// Bind 127.0.0.1:0 and serve `transport` on it.
pub async fn listen(broker: &mut Broker, transport: Transport) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let l = BoundListener {
        listener,
        transport,
    };
    let addr = l.local_addr().expect("local addr");
    broker.serve(l);
    addr
}

/// Poll `cond` every 20 ms until it holds or [`WAIT`] passes.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Read a counter.
pub fn counter(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}

// ---------------------------------------------------------------------------
// rumqttc 3.1.1 client
// ---------------------------------------------------------------------------

/// Something other than a PUBLISH that the 3.1.1 event loop reported.
#[derive(Debug)]
pub enum Ctrl3 {
    Packet(rumqttc::Packet),
    Closed(rumqttc::ConnectionError),
}

/// A connected rumqttc 3.1.1 client with a driven event loop. Incoming
/// PUBLISHes go to one queue, every other incoming packet (and the final
/// error) to another. The driver stops at the first error, so rumqttc never
/// reconnects behind a test's back.
pub struct Client3 {
    pub client: rumqttc::AsyncClient,
    pub connack: rumqttc::ConnAck,
    pubs: mpsc::UnboundedReceiver<rumqttc::Publish>,
    ctrl: mpsc::UnboundedReceiver<Ctrl3>,
    task: JoinHandle<()>,
}

/// Connect a 3.1.1 client; `f` adjusts the options. Returns the
/// connection error if the CONNECT is refused.
pub async fn try_connect3(
    addr: SocketAddr,
    id: &str,
    f: impl FnOnce(&mut rumqttc::MqttOptions),
) -> Result<Client3, rumqttc::ConnectionError> {
    let mut opts = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    f(&mut opts);
    let (client, mut el) = rumqttc::AsyncClient::new(opts, 64);
    let connack = match timeout(WAIT, el.poll()).await {
        Err(_) => panic!("{id}: no CONNACK within {WAIT:?}"),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a)))) => a,
        Ok(Ok(other)) => panic!("{id}: expected CONNACK, got {other:?}"),
    };
    let (ptx, pubs) = mpsc::unbounded_channel();
    let (ctx, ctrl) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let _ = ptx.send(p);
                }
                Ok(rumqttc::Event::Incoming(other)) => {
                    let _ = ctx.send(Ctrl3::Packet(other));
                }
                Ok(rumqttc::Event::Outgoing(_)) => {}
                Err(e) => {
                    let _ = ctx.send(Ctrl3::Closed(e));
                    return;
                }
            }
        }
    });
    Ok(Client3 {
        client,
        connack,
        pubs,
        ctrl,
        task,
    })
}

/// Connect a 3.1.1 client that must be accepted.
pub async fn connect3(
    addr: SocketAddr,
    id: &str,
    f: impl FnOnce(&mut rumqttc::MqttOptions),
) -> Client3 {
    match try_connect3(addr, id, f).await {
        Ok(c) => c,
        Err(e) => panic!("{id}: connect refused: {e:?}"),
    }
}

/// The CONNACK return code of a refused 3.1.1 CONNECT.
pub fn refused3(r: Result<Client3, rumqttc::ConnectionError>) -> rumqttc::ConnectReturnCode {
    match r {
        Ok(c) => panic!("expected refusal, got CONNACK {:?}", c.connack),
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("expected a CONNACK refusal, got {e:?}"),
    }
}

impl Client3 {
    /// SUBSCRIBE one filter and return the SUBACK codes.
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::QoS,
    ) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("queue subscribe");
        self.suback().await
    }

    /// Wait for the next SUBACK.
    pub async fn suback(&mut self) -> Vec<rumqttc::SubscribeReasonCode> {
        match self
            .wait_ctrl("SUBACK", |p| matches!(p, rumqttc::Packet::SubAck(_)))
            .await
        {
            rumqttc::Packet::SubAck(s) => s.return_codes,
            _ => unreachable!(),
        }
    }

    /// UNSUBSCRIBE and wait for the UNSUBACK.
    pub async fn unsubscribe(&mut self, filter: &str) {
        self.client
            .unsubscribe(filter)
            .await
            .expect("queue unsubscribe");
        self.wait_ctrl("UNSUBACK", |p| matches!(p, rumqttc::Packet::UnsubAck(_)))
            .await;
    }

    /// PUBLISH without waiting for anything.
    pub async fn publish(
        &self,
        topic: &str,
        qos: rumqttc::QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) {
        self.client
            .publish(topic, qos, retain, payload)
            .await
            .expect("queue publish");
    }

    /// PUBLISH and, for QoS 1/2, wait until the broker acknowledged it
    /// (PUBACK / PUBCOMP). With several publishes outstanding this waits for
    /// the next acknowledgement, whichever it is.
    pub async fn publish_acked(
        &mut self,
        topic: &str,
        qos: rumqttc::QoS,
        retain: bool,
        payload: impl Into<Vec<u8>>,
    ) {
        self.publish(topic, qos, retain, payload).await;
        match qos {
            rumqttc::QoS::AtMostOnce => {}
            rumqttc::QoS::AtLeastOnce => {
                self.wait_ctrl("PUBACK", |p| matches!(p, rumqttc::Packet::PubAck(_)))
                    .await;
            }
            rumqttc::QoS::ExactlyOnce => {
                self.wait_ctrl("PUBCOMP", |p| matches!(p, rumqttc::Packet::PubComp(_)))
                    .await;
            }
        }
    }

    /// Wait for a control packet matching `want`, skipping others.
    pub async fn wait_ctrl(
        &mut self,
        what: &str,
        want: impl Fn(&rumqttc::Packet) -> bool,
    ) -> rumqttc::Packet {
        let deadline = Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ctrl.recv()).await {
                Err(_) => panic!("timed out waiting for {what}"),
                Ok(None) => panic!("event loop gone while waiting for {what}"),
                Ok(Some(Ctrl3::Closed(e))) => {
                    panic!("connection closed while waiting for {what}: {e:?}")
                }
                Ok(Some(Ctrl3::Packet(p))) if want(&p) => return p,
                Ok(Some(Ctrl3::Packet(_))) => {}
            }
        }
    }

    /// The next incoming PUBLISH; panics after [`WAIT`].
    pub async fn recv(&mut self) -> rumqttc::Publish {
        match self.recv_within(WAIT).await {
            Some(p) => p,
            None => panic!("no PUBLISH within {WAIT:?}"),
        }
    }

    /// The next incoming PUBLISH within `d`, if any.
    pub async fn recv_within(&mut self, d: Duration) -> Option<rumqttc::Publish> {
        timeout(d, self.pubs.recv()).await.ok().flatten()
    }

    /// Assert no PUBLISH arrives within `d`.
    pub async fn expect_no_publish(&mut self, d: Duration) {
        if let Some(p) = self.recv_within(d).await {
            panic!("unexpected PUBLISH on {} payload {:?}", p.topic, p.payload);
        }
    }

    /// Wait until the connection ends; returns why, `None` if it is still
    /// open after `d`.
    pub async fn closed_within(&mut self, d: Duration) -> Option<rumqttc::ConnectionError> {
        let deadline = Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.ctrl.recv()).await {
                Err(_) => return None,
                Ok(None) => panic!("event loop ended without an error"),
                Ok(Some(Ctrl3::Closed(e))) => return Some(e),
                Ok(Some(Ctrl3::Packet(_))) => {}
            }
        }
    }

    /// Send DISCONNECT and wait until the broker closed the connection.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("queue disconnect");
        assert!(
            self.closed_within(WAIT).await.is_some(),
            "broker did not close the connection after DISCONNECT"
        );
    }

    /// Drop the connection without DISCONNECT (abnormal end).
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

// ---------------------------------------------------------------------------
// rumqttc 5.0 client
// ---------------------------------------------------------------------------

pub use rumqttc::v5::mqttbytes::v5 as m5;

/// Something other than a PUBLISH that the 5.0 event loop reported.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Ctrl5 {
    Packet(m5::Packet),
    Closed(rumqttc::v5::ConnectionError),
}

/// A connected rumqttc 5.0 client with a driven event loop (see [`Client3`]).
pub struct Client5 {
    pub client: rumqttc::v5::AsyncClient,
    pub connack: m5::ConnAck,
    pubs: mpsc::UnboundedReceiver<m5::Publish>,
    ctrl: mpsc::UnboundedReceiver<Ctrl5>,
    task: JoinHandle<()>,
}

/// Connect a 5.0 client; `f` adjusts the options.
pub async fn try_connect5(
    addr: SocketAddr,
    id: &str,
    f: impl FnOnce(&mut rumqttc::v5::MqttOptions),
) -> Result<Client5, rumqttc::v5::ConnectionError> {
    let mut opts = rumqttc::v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    f(&mut opts);
    let (client, mut el) = rumqttc::v5::AsyncClient::new(opts, 64);
    let connack = match timeout(WAIT, el.poll()).await {
        Err(_) => panic!("{id}: no CONNACK within {WAIT:?}"),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(rumqttc::v5::Event::Incoming(m5::Packet::ConnAck(a)))) => a,
        Ok(Ok(other)) => panic!("{id}: expected CONNACK, got {other:?}"),
    };
    let (ptx, pubs) = mpsc::unbounded_channel();
    let (ctx, ctrl) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(rumqttc::v5::Event::Incoming(m5::Packet::Publish(p))) => {
                    let _ = ptx.send(p);
                }
                Ok(rumqttc::v5::Event::Incoming(other)) => {
                    let _ = ctx.send(Ctrl5::Packet(other));
                }
                Ok(rumqttc::v5::Event::Outgoing(_)) => {}
                Err(e) => {
                    let _ = ctx.send(Ctrl5::Closed(e));
                    return;
                }
            }
        }
    });
    Ok(Client5 {
        client,
        connack,
        pubs,
        ctrl,
        task,
    })
}

/// Connect a 5.0 client that must be accepted.
pub async fn connect5(
    addr: SocketAddr,
    id: &str,
    f: impl FnOnce(&mut rumqttc::v5::MqttOptions),
) -> Client5 {
    match try_connect5(addr, id, f).await {
        Ok(c) => c,
        Err(e) => panic!("{id}: connect refused: {e:?}"),
    }
}

/// The CONNACK reason code of a refused 5.0 CONNECT.
pub fn refused5(r: Result<Client5, rumqttc::v5::ConnectionError>) -> m5::ConnectReturnCode {
    match r {
        Ok(c) => panic!("expected refusal, got CONNACK {:?}", c.connack),
        Err(rumqttc::v5::ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("expected a CONNACK refusal, got {e:?}"),
    }
}

/// A filter with explicit 5.0 options.
pub fn filter5(path: &str, qos: rumqttc::v5::mqttbytes::QoS) -> m5::Filter {
    m5::Filter::new(path, qos)
}

/// SUBSCRIBE properties carrying a subscription identifier.
pub fn sub_id(id: usize) -> m5::SubscribeProperties {
    m5::SubscribeProperties {
        id: Some(id),
        user_properties: Vec::new(),
    }
}

impl Client5 {
    /// SUBSCRIBE one filter (default options) and return the SUBACK codes.
    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
    ) -> Vec<m5::SubscribeReasonCode> {
        self.client
            .subscribe(filter, qos)
            .await
            .expect("queue subscribe");
        self.suback().await.return_codes
    }

    /// SUBSCRIBE with explicit filters and optional properties.
    pub async fn subscribe_filters(
        &mut self,
        filters: Vec<m5::Filter>,
        props: Option<m5::SubscribeProperties>,
    ) -> Vec<m5::SubscribeReasonCode> {
        match props {
            Some(p) => self.client.subscribe_many_with_properties(filters, p).await,
            None => self.client.subscribe_many(filters).await,
        }
        .expect("queue subscribe");
        self.suback().await.return_codes
    }

    /// Wait for the next SUBACK.
    pub async fn suback(&mut self) -> m5::SubAck {
        match self
            .wait_ctrl("SUBACK", |p| matches!(p, m5::Packet::SubAck(_)))
            .await
        {
            m5::Packet::SubAck(s) => s,
            _ => unreachable!(),
        }
    }

    /// UNSUBSCRIBE and wait for the UNSUBACK.
    pub async fn unsubscribe(&mut self, filter: &str) -> m5::UnsubAck {
        self.client
            .unsubscribe(filter)
            .await
            .expect("queue unsubscribe");
        match self
            .wait_ctrl("UNSUBACK", |p| matches!(p, m5::Packet::UnsubAck(_)))
            .await
        {
            m5::Packet::UnsubAck(u) => u,
            _ => unreachable!(),
        }
    }

    /// PUBLISH without waiting for anything.
    pub async fn publish(
        &self,
        topic: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
        retain: bool,
        payload: impl Into<bytes::Bytes>,
    ) {
        self.client
            .publish(topic, qos, retain, payload)
            .await
            .expect("queue publish");
    }

    /// PUBLISH with properties without waiting for anything.
    pub async fn publish_props(
        &self,
        topic: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
        retain: bool,
        payload: impl Into<bytes::Bytes>,
        props: m5::PublishProperties,
    ) {
        self.client
            .publish_with_properties(topic, qos, retain, payload, props)
            .await
            .expect("queue publish");
    }

    /// PUBLISH and wait for the PUBACK (QoS 1) / PUBCOMP (QoS 2).
    pub async fn publish_acked(
        &mut self,
        topic: &str,
        qos: rumqttc::v5::mqttbytes::QoS,
        retain: bool,
        payload: impl Into<bytes::Bytes>,
    ) {
        self.publish(topic, qos, retain, payload).await;
        self.wait_pub_ack(qos).await;
    }

    /// Wait for the acknowledgement a publish of `qos` ends with.
    pub async fn wait_pub_ack(&mut self, qos: rumqttc::v5::mqttbytes::QoS) -> Option<m5::Packet> {
        use rumqttc::v5::mqttbytes::QoS;
        match qos {
            QoS::AtMostOnce => None,
            QoS::AtLeastOnce => Some(
                self.wait_ctrl("PUBACK", |p| matches!(p, m5::Packet::PubAck(_)))
                    .await,
            ),
            QoS::ExactlyOnce => Some(
                self.wait_ctrl("PUBCOMP", |p| matches!(p, m5::Packet::PubComp(_)))
                    .await,
            ),
        }
    }

    /// Wait for a control packet matching `want`, skipping others.
    pub async fn wait_ctrl(
        &mut self,
        what: &str,
        want: impl Fn(&m5::Packet) -> bool,
    ) -> m5::Packet {
        let deadline = Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ctrl.recv()).await {
                Err(_) => panic!("timed out waiting for {what}"),
                Ok(None) => panic!("event loop gone while waiting for {what}"),
                Ok(Some(Ctrl5::Closed(e))) => {
                    panic!("connection closed while waiting for {what}: {e:?}")
                }
                Ok(Some(Ctrl5::Packet(p))) if want(&p) => return p,
                Ok(Some(Ctrl5::Packet(_))) => {}
            }
        }
    }

    /// The next incoming PUBLISH; panics after [`WAIT`].
    pub async fn recv(&mut self) -> m5::Publish {
        match self.recv_within(WAIT).await {
            Some(p) => p,
            None => panic!("no PUBLISH within {WAIT:?}"),
        }
    }

    /// The next incoming PUBLISH within `d`, if any.
    pub async fn recv_within(&mut self, d: Duration) -> Option<m5::Publish> {
        timeout(d, self.pubs.recv()).await.ok().flatten()
    }

    /// Assert no PUBLISH arrives within `d`.
    pub async fn expect_no_publish(&mut self, d: Duration) {
        if let Some(p) = self.recv_within(d).await {
            panic!(
                "unexpected PUBLISH on {:?} payload {:?}",
                p.topic, p.payload
            );
        }
    }

    /// Wait until the connection ends; returns why, `None` if still open
    /// after `d`.
    pub async fn closed_within(&mut self, d: Duration) -> Option<rumqttc::v5::ConnectionError> {
        let deadline = Instant::now() + d;
        loop {
            match tokio::time::timeout_at(deadline, self.ctrl.recv()).await {
                Err(_) => return None,
                Ok(None) => panic!("event loop ended without an error"),
                Ok(Some(Ctrl5::Closed(e))) => return Some(e),
                Ok(Some(Ctrl5::Packet(_))) => {}
            }
        }
    }

    /// Send DISCONNECT and wait until the broker closed the connection.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("queue disconnect");
        assert!(
            self.closed_within(WAIT).await.is_some(),
            "broker did not close the connection after DISCONNECT"
        );
    }

    /// Drop the connection without DISCONNECT (abnormal end).
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// The DISCONNECT reason a 5.0 client was closed with, if the broker sent one.
pub fn server_disconnect_reason(
    e: &rumqttc::v5::ConnectionError,
) -> Option<m5::DisconnectReasonCode> {
    match e {
        rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::ServerDisconnect {
            reason_code,
            ..
        }) => Some(*reason_code),
        _ => None,
    }
}

/// Payload as text, for readable assertions.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---------------------------------------------------------------------------
// Raw client over any byte stream, packets encoded with verge_mqtt
// ---------------------------------------------------------------------------

pub use verge_mqtt::{Packet, Protocol};

/// What a raw read produced.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Read {
    Packet(Packet),
    /// The peer closed the connection (EOF or reset).
    Closed,
    /// Nothing within the time given.
    Timeout,
    /// The bytes could not be decoded.
    Garbage(verge_mqtt::DecodeError),
}

/// A hand-driven MQTT client.
pub struct Raw<S> {
    pub stream: S,
    pub protocol: Protocol,
    buf: BytesMut,
}

/// A raw client over a fresh TCP connection.
pub async fn raw_tcp(addr: SocketAddr, protocol: Protocol) -> Raw<TcpStream> {
    let s = timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("tcp connect timed out")
        .expect("tcp connect");
    s.set_nodelay(true).expect("nodelay");
    Raw::new(s, protocol)
}

/// A CONNECT with the given client id and keep alive, clean start.
pub fn connect_packet(protocol: Protocol, client_id: &str, keep_alive: u16) -> verge_mqtt::Connect {
    verge_mqtt::Connect {
        protocol,
        clean_start: true,
        keep_alive,
        client_id: client_id.to_owned(),
        username: None,
        password: None,
        will: None,
        properties: verge_mqtt::Properties::default(),
    }
}

/// A PUBLISH packet.
pub fn publish_packet(topic: &str, qos: verge_mqtt::QoS, packet_id: u16, payload: &[u8]) -> Packet {
    Packet::Publish(verge_mqtt::Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.to_owned(),
        packet_id,
        properties: verge_mqtt::Properties::default(),
        payload: bytes::Bytes::copy_from_slice(payload),
    })
}

/// A SUBSCRIBE packet for one filter.
pub fn subscribe_packet(packet_id: u16, filter: &str, qos: verge_mqtt::QoS) -> Packet {
    Packet::Subscribe(verge_mqtt::Subscribe {
        packet_id,
        filters: vec![verge_mqtt::SubscribeFilter {
            filter: filter.to_owned(),
            options: verge_mqtt::SubOptions {
                qos,
                ..verge_mqtt::SubOptions::default()
            },
        }],
        properties: verge_mqtt::Properties::default(),
    })
}

/// An acknowledgement packet body.
pub fn ack(packet_id: u16) -> verge_mqtt::Ack {
    verge_mqtt::Ack {
        packet_id,
        reason_code: 0,
        properties: verge_mqtt::Properties::default(),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    pub fn new(stream: S, protocol: Protocol) -> Self {
        Raw {
            stream,
            protocol,
            buf: BytesMut::with_capacity(4096),
        }
    }

    /// Encode and write one packet.
    pub async fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        verge_mqtt::encode(p, self.protocol, &mut out).expect("encode");
        self.send_bytes(&out).await;
    }

    /// Write raw bytes (errors ignored: the broker may already have closed).
    pub async fn send_bytes(&mut self, b: &[u8]) {
        let _ = self.stream.write_all(b).await;
        let _ = self.stream.flush().await;
    }

    /// The next packet, or why there is none, within `d`.
    pub async fn read(&mut self, d: Duration) -> Read {
        let deadline = Instant::now() + d;
        loop {
            match verge_mqtt::decode(&mut self.buf, self.protocol, usize::MAX) {
                Ok(Some(p)) => return Read::Packet(p),
                Ok(None) => {}
                Err(e) => return Read::Garbage(e),
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Read::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => return Read::Closed,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next packet within [`WAIT`]; panics otherwise.
    pub async fn recv(&mut self) -> Packet {
        match self.read(WAIT).await {
            Read::Packet(p) => p,
            other => panic!("expected a packet, got {other:?}"),
        }
    }

    /// Wait for a packet matching `want`, skipping others.
    pub async fn recv_matching(&mut self, what: &str, want: impl Fn(&Packet) -> bool) -> Packet {
        let deadline = Instant::now() + WAIT;
        loop {
            match self
                .read(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Read::Packet(p) if want(&p) => return p,
                Read::Packet(_) => {}
                other => panic!("waiting for {what}: {other:?}"),
            }
        }
    }

    /// Send CONNECT and return the CONNACK.
    pub async fn connect(&mut self, c: verge_mqtt::Connect) -> verge_mqtt::ConnAck {
        self.send(&Packet::Connect(c)).await;
        match self.recv().await {
            Packet::ConnAck(a) => a,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// CONNECT with defaults (clean start, keep alive 0); asserts success.
    pub async fn handshake(&mut self, client_id: &str) {
        let ack = self
            .connect(connect_packet(self.protocol, client_id, 0))
            .await;
        assert_eq!(ack.reason_code, 0, "CONNACK refused: {ack:?}");
    }

    /// SUBSCRIBE to one filter; returns the SUBACK codes.
    pub async fn subscribe(
        &mut self,
        packet_id: u16,
        filter: &str,
        qos: verge_mqtt::QoS,
    ) -> Vec<u8> {
        self.send(&subscribe_packet(packet_id, filter, qos)).await;
        match self
            .recv_matching("SUBACK", |p| matches!(p, Packet::SubAck(_)))
            .await
        {
            Packet::SubAck(s) => {
                assert_eq!(s.packet_id, packet_id, "SUBACK packet id");
                s.reason_codes
            }
            _ => unreachable!(),
        }
    }

    /// Read until the connection closes; returns the DISCONNECT reason code
    /// if one arrived first. Panics if it is still open after `d`.
    pub async fn expect_closed(&mut self, d: Duration) -> Option<u8> {
        let deadline = Instant::now() + d;
        let mut reason = None;
        loop {
            match self
                .read(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Read::Closed => return reason,
                Read::Packet(Packet::Disconnect(dis)) => reason = Some(dis.reason_code),
                Read::Packet(_) => {}
                Read::Garbage(e) => panic!("undecodable bytes from the broker: {e}"),
                Read::Timeout => panic!("connection still open after {d:?}"),
            }
        }
    }
}

//! Transports other than plain TCP: TLS (client certificate as identity,
//! required or optional), WebSocket (path, subprotocol, MQTT over binary
//! frames) and WebSocket over TLS. rumqttc's TLS and WebSocket features are
//! off, so these tests speak MQTT with packets encoded by `verge_mqtt`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use futures_util::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use verge_broker::Transport;
use verge_broker::auth::{AclAction, AclRule, Device, Registry, hash_password};
use verge_broker::config::{AclPolicy, TlsConfig};
use verge_mqtt::QoS;

// ---------------------------------------------------------------------------
// PKI
// ---------------------------------------------------------------------------

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
    pem: String,
}

fn new_ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("ca key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("self-sign ca");
    Ca {
        der: cert.der().clone(),
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A leaf certificate signed by `ca`: (cert DER, cert PEM, key).
fn leaf(
    ca: &Ca,
    cn: &str,
    sans: &[&str],
    eku: ExtendedKeyUsagePurpose,
) -> (CertificateDer<'static>, String, KeyPair) {
    let key = KeyPair::generate().expect("leaf key");
    let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![eku];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params.signed_by(&key, &ca.issuer).expect("sign leaf");
    (cert.der().clone(), cert.pem(), key)
}

struct Pki {
    _dir: tempfile::TempDir,
    ca: Ca,
    cert: PathBuf,
    key: PathBuf,
    ca_file: PathBuf,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = new_ca("Verge Test CA");
    let (_, pem, key) = leaf(
        &ca,
        "localhost",
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let cert = dir.path().join("server.pem");
    let key_path = dir.path().join("server.key");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&cert, pem).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    std::fs::write(&ca_file, &ca.pem).unwrap();
    Pki {
        _dir: dir,
        ca,
        cert,
        key: key_path,
        ca_file,
    }
}

impl Pki {
    fn server_tls(&self, require_client_cert: bool) -> Arc<rustls::ServerConfig> {
        let cfg = TlsConfig {
            cert: Some(self.cert.clone()),
            key: Some(self.key.clone()),
            client_ca: Some(self.ca_file.clone()),
            require_client_cert,
        };
        verge_broker::listener::server_tls(&cfg, "test").expect("server tls config")
    }

    /// A client certificate with common name `cn`, signed by this CA.
    fn client_cert(&self, cn: &str) -> (CertificateDer<'static>, KeyPair) {
        let (der, _, key) = leaf(&self.ca, cn, &[], ExtendedKeyUsagePurpose::ClientAuth);
        (der, key)
    }
}

fn client_config(
    ca: &Ca,
    identity: Option<(CertificateDer<'static>, KeyPair)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let cfg = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![cert],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("client auth cert"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(cfg)
}

type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// TLS-connect; `Err` if the handshake fails on the client side.
async fn tls_connect(
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let name = ServerName::try_from("localhost").expect("server name");
    tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("tls handshake timed out"))?
}

fn rule(permission: AclPolicy, action: AclAction, topic: &str) -> AclRule {
    AclRule {
        permission,
        action,
        topic: topic.to_owned(),
    }
}

/// Device `sensor1` (certificate only) may use `devices/%u/#` and nothing
/// else; `bridge` has a password.
fn registry() -> Registry {
    Registry {
        acl: vec![],
        devices: vec![
            Device {
                username: "sensor1".into(),
                password_hash: None,
                client_id: None,
                acl: vec![
                    rule(AclPolicy::Allow, AclAction::All, "devices/%u/#"),
                    rule(AclPolicy::Deny, AclAction::All, "#"),
                ],
            },
            Device {
                username: "bridge".into(),
                password_hash: Some(hash_password("pw").expect("hash")),
                client_id: None,
                acl: vec![],
            },
        ],
    }
}

async fn tls_broker(pki: &Pki, require_client_cert: bool) -> (TestBroker, std::net::SocketAddr) {
    let mut cfg = test_config();
    cfg.allow_anonymous = false;
    let auth = verge_broker::Authenticator::new(registry(), false, AclPolicy::Allow).expect("auth");
    let mut b = start_with_auth(cfg, auth).await;
    let tls_addr = b
        .listen(Transport::Tls(pki.server_tls(require_client_cert)))
        .await;
    (b, tls_addr)
}

// ---------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------

#[tokio::test]
async fn tls_client_certificate_common_name_is_the_identity() {
    let pki = pki();
    let (b, addr) = tls_broker(&pki, true).await;
    let stream = tls_connect(
        addr,
        client_config(&pki.ca, Some(pki.client_cert("sensor1"))),
    )
    .await
    .expect("tls handshake");
    let mut raw = Raw::new(stream, Protocol::V5);
    // No username or password: the certificate authenticates.
    let connack = raw
        .connect(connect_packet(Protocol::V5, "sensor1:cert-client", 0))
        .await;
    assert_eq!(
        connack.reason_code, 0,
        "certificate client refused: {connack:?}"
    );

    assert_eq!(
        raw.subscribe(1, "devices/sensor1/#", QoS::AtLeastOnce)
            .await,
        vec![1]
    );
    assert_eq!(
        raw.subscribe(2, "devices/other/#", QoS::AtLeastOnce).await,
        vec![verge_mqtt::reason::NOT_AUTHORIZED],
        "%u must be the certificate's common name"
    );

    raw.send(&publish_packet(
        "devices/other/t",
        QoS::AtLeastOnce,
        10,
        b"no",
    ))
    .await;
    match raw
        .recv_matching("PUBACK", |p| matches!(p, Packet::PubAck(_)))
        .await
    {
        Packet::PubAck(a) => assert_eq!(a.reason_code, verge_mqtt::reason::NOT_AUTHORIZED),
        _ => unreachable!(),
    }
    raw.send(&publish_packet(
        "devices/sensor1/t",
        QoS::AtLeastOnce,
        11,
        b"yes",
    ))
    .await;
    let mut got_ack = false;
    let mut got_msg = false;
    while !(got_ack && got_msg) {
        match raw.recv().await {
            Packet::PubAck(a) => {
                assert_eq!((a.packet_id, a.reason_code), (11, 0));
                got_ack = true;
            }
            Packet::Publish(p) => {
                assert_eq!(
                    (p.topic.as_str(), &p.payload[..]),
                    ("devices/sensor1/t", &b"yes"[..])
                );
                raw.send(&Packet::PubAck(ack(p.packet_id))).await;
                got_msg = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    // A plain-TCP client (password) reaches the TLS client.
    let mut tcp = connect3(b.addr, "bridge", |o| {
        o.set_credentials("bridge", "pw");
    })
    .await;
    tcp.publish_acked(
        "devices/sensor1/cmd",
        rumqttc::QoS::AtLeastOnce,
        false,
        "from-tcp",
    )
    .await;
    match raw
        .recv_matching("PUBLISH", |p| matches!(p, Packet::Publish(_)))
        .await
    {
        Packet::Publish(p) => assert_eq!(&p.payload[..], b"from-tcp"),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn tls_without_client_certificate_is_refused_when_required() {
    let pki = pki();
    let (_b, addr) = tls_broker(&pki, true).await;
    // TLS 1.3: the client may finish its side of the handshake before the
    // server rejects it, so the refusal can show up on the first read.
    match tls_connect(addr, client_config(&pki.ca, None)).await {
        Err(_) => {}
        Ok(stream) => {
            let mut raw = Raw::new(stream, Protocol::V311);
            raw.send(&Packet::Connect(connect_packet(
                Protocol::V311,
                "nocert",
                0,
            )))
            .await;
            match raw.read(WAIT).await {
                Read::Closed => {}
                other => panic!("client without certificate got {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn tls_client_certificate_from_unknown_ca_is_refused() {
    let pki = pki();
    let (_b, addr) = tls_broker(&pki, false).await;
    let rogue_ca = new_ca("Rogue CA");
    let (der, _, key) = leaf(
        &rogue_ca,
        "sensor1",
        &[],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    match tls_connect(addr, client_config(&pki.ca, Some((der, key)))).await {
        Err(_) => {}
        Ok(stream) => {
            let mut raw = Raw::new(stream, Protocol::V311);
            raw.send(&Packet::Connect(connect_packet(Protocol::V311, "rogue", 0)))
                .await;
            match raw.read(WAIT).await {
                Read::Closed => {}
                other => panic!("certificate from an unknown CA got {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn tls_optional_client_certificate_falls_back_to_password() {
    let pki = pki();
    let (_b, addr) = tls_broker(&pki, false).await;
    // No certificate, no credentials: refused at the MQTT level.
    let stream = tls_connect(addr, client_config(&pki.ca, None))
        .await
        .expect("tls handshake");
    let mut raw = Raw::new(stream, Protocol::V5);
    let ack = raw.connect(connect_packet(Protocol::V5, "anon", 0)).await;
    assert_eq!(
        ack.reason_code,
        verge_mqtt::reason::BAD_USERNAME_OR_PASSWORD
    );
    // No certificate, good password: accepted.
    let stream = tls_connect(addr, client_config(&pki.ca, None))
        .await
        .expect("tls handshake");
    let mut raw = Raw::new(stream, Protocol::V311);
    let mut c = connect_packet(Protocol::V311, "bridge:pw-client", 0);
    c.username = Some("bridge".into());
    c.password = Some(bytes::Bytes::from_static(b"pw"));
    assert_eq!(raw.connect(c).await.reason_code, 0);
    // A certificate from our CA also works.
    let stream = tls_connect(
        addr,
        client_config(&pki.ca, Some(pki.client_cert("sensor1"))),
    )
    .await
    .expect("tls handshake");
    let mut raw = Raw::new(stream, Protocol::V311);
    assert_eq!(
        raw.connect(connect_packet(Protocol::V311, "sensor1:c", 0))
            .await
            .reason_code,
        0
    );
    assert_eq!(
        raw.subscribe(1, "devices/other/#", QoS::AtMostOnce).await,
        vec![0x80]
    );
}

// ---------------------------------------------------------------------------
// WebSocket
// ---------------------------------------------------------------------------

/// MQTT over WebSocket binary frames.
struct Ws<S> {
    ws: WebSocketStream<S>,
    buf: BytesMut,
    protocol: Protocol,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Ws<S> {
    async fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        verge_mqtt::encode(p, self.protocol, &mut out).expect("encode");
        self.send_frame(out.to_vec()).await;
    }

    async fn send_frame(&mut self, b: Vec<u8>) {
        self.ws
            .send(WsMessage::Binary(b.into()))
            .await
            .expect("ws send");
    }

    async fn read(&mut self, d: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            match verge_mqtt::decode(&mut self.buf, self.protocol, usize::MAX) {
                Ok(Some(p)) => return Read::Packet(p),
                Ok(None) => {}
                Err(e) => return Read::Garbage(e),
            }
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Read::Timeout,
                Ok(Some(Ok(WsMessage::Binary(b)))) => self.buf.extend_from_slice(&b),
                Ok(Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_)))) => {}
                Ok(Some(Ok(WsMessage::Text(t)))) => panic!("text frame from the broker: {t}"),
                Ok(Some(Ok(WsMessage::Close(_)))) | Ok(Some(Err(_))) | Ok(None) => {
                    return Read::Closed;
                }
            }
        }
    }

    async fn recv(&mut self) -> Packet {
        match self.read(WAIT).await {
            Read::Packet(p) => p,
            other => panic!("websocket: expected a packet, got {other:?}"),
        }
    }
}

async fn ws_open<S>(stream: S, url: &str, subprotocol: Option<&str>) -> Result<Ws<S>, WsError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut req = url.into_client_request().expect("request");
    if let Some(p) = subprotocol {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(p).expect("header"),
        );
    }
    let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(req, stream))
        .await
        .expect("websocket handshake timed out")?;
    if let Some(p) = subprotocol {
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some(p),
            "subprotocol echoed"
        );
    }
    Ok(Ws {
        ws,
        buf: BytesMut::new(),
        protocol: Protocol::V311,
    })
}

#[tokio::test]
async fn websocket_client_publishes_and_subscribes() {
    let mut b = start().await;
    let ws_addr = b.listen(Transport::Ws("/mqtt".into())).await;
    let tcp = TcpStream::connect(ws_addr).await.unwrap();
    let mut ws = ws_open(
        tcp,
        &format!("ws://127.0.0.1:{}/mqtt", ws_addr.port()),
        Some("mqtt"),
    )
    .await
    .expect("websocket upgrade");
    ws.send(&Packet::Connect(connect_packet(
        Protocol::V311,
        "ws-client",
        0,
    )))
    .await;
    match ws.recv().await {
        Packet::ConnAck(a) => assert_eq!(a.reason_code, 0),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    ws.send(&subscribe_packet(1, "ws/in", QoS::AtLeastOnce))
        .await;
    match ws.recv().await {
        Packet::SubAck(a) => assert_eq!(a.reason_codes, vec![1]),
        other => panic!("expected SUBACK, got {other:?}"),
    }

    let mut tcp_client = connect3(b.addr, "tcp-client", |_| {}).await;
    tcp_client
        .subscribe("ws/out", rumqttc::QoS::AtLeastOnce)
        .await;
    tcp_client
        .publish_acked("ws/in", rumqttc::QoS::AtLeastOnce, false, "to-ws")
        .await;
    match ws.recv().await {
        Packet::Publish(p) => {
            assert_eq!((p.topic.as_str(), &p.payload[..]), ("ws/in", &b"to-ws"[..]));
            ws.send(&Packet::PubAck(ack(p.packet_id))).await;
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    ws.send(&publish_packet("ws/out", QoS::AtLeastOnce, 5, b"from-ws"))
        .await;
    match ws.recv().await {
        Packet::PubAck(a) => assert_eq!(a.packet_id, 5),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    assert_eq!(text(&tcp_client.recv().await.payload), "from-ws");
}

/// MQTT packets are a byte stream over WebSocket: one packet may span
/// frames and one frame may carry several packets.
#[tokio::test]
async fn websocket_packets_split_and_coalesced_across_frames() {
    let mut b = start().await;
    let ws_addr = b.listen(Transport::Ws("/mqtt".into())).await;
    let tcp = TcpStream::connect(ws_addr).await.unwrap();
    let mut ws = ws_open(
        tcp,
        &format!("ws://127.0.0.1:{}/mqtt", ws_addr.port()),
        Some("mqtt"),
    )
    .await
    .expect("websocket upgrade");
    let mut bytes = BytesMut::new();
    verge_mqtt::encode(
        &Packet::Connect(connect_packet(Protocol::V311, "split", 0)),
        Protocol::V311,
        &mut bytes,
    )
    .unwrap();
    let (a, rest) = bytes.split_at(5);
    ws.send_frame(a.to_vec()).await;
    ws.send_frame(rest.to_vec()).await;
    match ws.recv().await {
        Packet::ConnAck(a) => assert_eq!(a.reason_code, 0),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let mut two = BytesMut::new();
    verge_mqtt::encode(
        &subscribe_packet(1, "a", QoS::AtMostOnce),
        Protocol::V311,
        &mut two,
    )
    .unwrap();
    verge_mqtt::encode(&Packet::PingReq, Protocol::V311, &mut two).unwrap();
    ws.send_frame(two.to_vec()).await;
    assert!(matches!(ws.recv().await, Packet::SubAck(_)));
    assert!(matches!(ws.recv().await, Packet::PingResp));
}

#[tokio::test]
async fn websocket_wrong_path_gets_404() {
    let mut b = start().await;
    let ws_addr = b.listen(Transport::Ws("/mqtt".into())).await;
    let tcp = TcpStream::connect(ws_addr).await.unwrap();
    match ws_open(
        tcp,
        &format!("ws://127.0.0.1:{}/nope", ws_addr.port()),
        Some("mqtt"),
    )
    .await
    {
        Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 404),
        Err(e) => panic!("expected HTTP 404, got {e:?}"),
        Ok(_) => panic!("upgrade accepted on a wrong path"),
    }
    // The listener keeps serving.
    let tcp = TcpStream::connect(ws_addr).await.unwrap();
    ws_open(
        tcp,
        &format!("ws://127.0.0.1:{}/mqtt", ws_addr.port()),
        Some("mqtt"),
    )
    .await
    .expect("upgrade on the right path after a 404");
}

#[tokio::test]
async fn websocket_text_frame_closes_the_connection() {
    let mut b = start().await;
    let ws_addr = b.listen(Transport::Ws("/mqtt".into())).await;
    let tcp = TcpStream::connect(ws_addr).await.unwrap();
    let mut ws = ws_open(
        tcp,
        &format!("ws://127.0.0.1:{}/mqtt", ws_addr.port()),
        Some("mqtt"),
    )
    .await
    .expect("websocket upgrade");
    ws.send(&Packet::Connect(connect_packet(
        Protocol::V311,
        "texter",
        0,
    )))
    .await;
    assert!(matches!(ws.recv().await, Packet::ConnAck(_)));
    ws.ws.send(WsMessage::Text("hello".into())).await.unwrap();
    match ws.read(WAIT).await {
        Read::Closed => {}
        other => panic!("text frame did not close the connection: {other:?}"),
    }
    eventually("client gone", || counter(&b.stats().clients_connected) == 0).await;
}

#[tokio::test]
async fn websocket_over_tls() {
    let pki = pki();
    let mut b = start().await;
    let addr = b
        .listen(Transport::Wss(pki.server_tls(false), "/mqtt".into()))
        .await;
    let tls = tls_connect(addr, client_config(&pki.ca, None))
        .await
        .expect("tls handshake");
    let mut ws = ws_open(
        tls,
        &format!("wss://localhost:{}/mqtt", addr.port()),
        Some("mqtt"),
    )
    .await
    .expect("websocket upgrade over tls");
    ws.protocol = Protocol::V5;
    ws.send(&Packet::Connect(connect_packet(Protocol::V5, "wss", 0)))
        .await;
    match ws.recv().await {
        Packet::ConnAck(a) => assert_eq!(a.reason_code, 0),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    ws.send(&subscribe_packet(1, "wss/t", QoS::AtMostOnce))
        .await;
    assert!(matches!(ws.recv().await, Packet::SubAck(_)));
    b.handle()
        .publish(verge_broker::Message::local(
            "wss/t",
            "secure",
            QoS::AtMostOnce,
            false,
        ))
        .await
        .unwrap();
    match ws.recv().await {
        Packet::Publish(p) => assert_eq!(&p.payload[..], b"secure"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

/// Regression: a client that opened a WebSocket listener's socket and never
/// finished the HTTP upgrade held it forever.
#[tokio::test]
async fn regression_websocket_upgrade_that_never_finishes_is_dropped() {
    let mut b = start_with(|c| {
        c.connect_timeout = verge_broker::duration::HumanDuration(Duration::from_secs(1))
    })
    .await;
    let ws_addr = b.listen(Transport::Ws("/mqtt".into())).await;
    let mut tcp = TcpStream::connect(ws_addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Half a request line, then silence.
    tcp.write_all(b"GET /mqtt HTTP/1.1\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await;
    match r {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("unexpected {n} bytes from the server"),
        Err(_) => panic!("server still holds an unfinished upgrade after 10 s"),
    }
}

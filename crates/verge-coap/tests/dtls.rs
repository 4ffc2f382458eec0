//! CoAP over DTLS end to end on loopback: an OpenSSL DTLS 1.2 PSK client
//! (the library's client side, driven here over a tokio socket) against the
//! gateway's DTLS listener, with a broker in the same process.
#![cfg(feature = "dtls")]

mod common;
use common::registry;
use verge_broker::auth::Registry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openssl::pkey::PKey;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslMethod, SslStream, SslVerifyMode, SslVersion,
};
use openssl::x509::X509;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::net::UdpSocket;
use verge_broker::config::AclPolicy;
use verge_broker::{Authenticator, Broker, BrokerConfig, Message};
use verge_coap::DatagramChannel as Channel;
use verge_coap::option;
use verge_coap::{
    CoapConfig, CoapMessage, Code, DtlsConfig, Gateway, MsgType, PskEntry, RunningGateway,
};
use verge_duration::HumanDuration;
use verge_mqtt::QoS;

/// Guard against hangs only; nothing asserts on time.
const WAIT: Duration = Duration::from_secs(10);
const KEY: &[u8] = b"sensor-secret-key";

fn psk(identity: &str, key: &[u8]) -> PskEntry {
    PskEntry {
        identity: identity.into(),
        key: None,
        key_hex: Some(hex::encode(key)),
        key_file: None,
    }
}

fn config() -> CoapConfig {
    CoapConfig {
        dtls: DtlsConfig {
            enabled: true,
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            psk: vec![psk("sensor", KEY), psk("other", b"other-key")],
            ..DtlsConfig::default()
        },
        ..CoapConfig::default()
    }
}

struct Env {
    broker: Broker,
    gw: RunningGateway,
    addr: SocketAddr,
}

async fn env_with(cfg: CoapConfig) -> Env {
    let auth = Authenticator::new(registry(), false, AclPolicy::Allow).expect("auth");
    let broker = Broker::start(BrokerConfig::default(), auth.clone());
    let gw = Gateway::new(cfg, broker.handle(), auth).expect("gateway");
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    let gw = gw.spawn_dtls(socket);
    Env { broker, gw, addr }
}

/// A DTLS 1.2 PSK client.
struct Client {
    socket: UdpSocket,
    stream: SslStream<Channel>,
    mid: u16,
}

fn client_builder(ciphers: &str) -> SslContextBuilder {
    let mut b = SslContext::builder(SslMethod::dtls_client()).expect("ctx");
    b.set_min_proto_version(Some(SslVersion::DTLS1_2))
        .expect("version");
    b.set_cipher_list(ciphers).expect("ciphers");
    b
}

fn stream_of(b: SslContextBuilder) -> SslStream<Channel> {
    let mut ssl = Ssl::new(&b.build()).expect("ssl");
    ssl.set_mtu(1200).expect("mtu");
    SslStream::new(ssl, Channel::default()).expect("stream")
}

fn client_session(identity: &str, key: &[u8], ciphers: &str) -> SslStream<Channel> {
    let mut b = client_builder(ciphers);
    let (identity, key) = (identity.as_bytes().to_vec(), key.to_vec());
    b.set_psk_client_callback(move |_ssl, _hint, id_out, key_out| {
        id_out[..identity.len()].copy_from_slice(&identity);
        id_out[identity.len()] = 0;
        key_out[..key.len()].copy_from_slice(&key);
        Ok(key.len())
    });
    stream_of(b)
}

impl Client {
    async fn send_out(&mut self) {
        for d in self.stream.get_mut().outbound.drain(..) {
            self.socket.send(&d).await.expect("send");
        }
    }

    /// One datagram from the gateway, or `None` after `within`.
    async fn recv_datagram(&self, within: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 4096];
        match tokio::time::timeout(within, self.socket.recv(&mut buf)).await {
            Ok(Ok(n)) => Some(buf[..n].to_vec()),
            _ => None,
        }
    }

    /// Handshake with `identity` and `key`; the error is what the client
    /// saw.
    async fn connect_with(
        addr: SocketAddr,
        identity: &str,
        key: &[u8],
        ciphers: &str,
    ) -> Result<Client, String> {
        Client::handshake(addr, client_session(identity, key, ciphers)).await
    }

    /// Handshake over `stream`; the error is what the client saw.
    async fn handshake(addr: SocketAddr, stream: SslStream<Channel>) -> Result<Client, String> {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        socket.connect(addr).await.expect("connect");
        let mut c = Client {
            socket,
            stream,
            mid: 1000,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            let r = c.stream.connect();
            c.send_out().await;
            match r {
                Ok(()) => return Ok(c),
                Err(e) if e.code() == ErrorCode::WANT_READ => {}
                Err(e) => return Err(e.to_string()),
            }
            if Instant::now() > deadline {
                return Err("handshake timed out".into());
            }
            // Silence: drive the handshake again (OpenSSL retransmits when
            // its timer is due) or give up at the deadline.
            if let Some(d) = c.recv_datagram(Duration::from_millis(500)).await {
                c.stream.get_mut().inbound = Some(d);
            }
        }
    }

    async fn connect(addr: SocketAddr) -> Client {
        Client::connect_with(addr, "sensor", KEY, "PSK-AES128-CCM8")
            .await
            .expect("handshake")
    }

    async fn send(&mut self, m: &CoapMessage) {
        self.stream.ssl_write(&m.encode()).expect("write");
        self.send_out().await;
    }

    /// The next CoAP message from the gateway.
    async fn recv(&mut self) -> CoapMessage {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut buf = vec![0u8; 4096];
            match self.stream.ssl_read(&mut buf) {
                Ok(n) => return CoapMessage::decode(&buf[..n]).expect("valid coap"),
                Err(e) if e.code() == ErrorCode::WANT_READ => {}
                Err(e) => panic!("dtls read: {e}"),
            }
            self.send_out().await;
            assert!(Instant::now() < deadline, "an answer in time");
            if let Some(d) = self.recv_datagram(Duration::from_millis(200)).await {
                self.stream.get_mut().inbound = Some(d);
            }
        }
    }

    async fn call(&mut self, m: &CoapMessage) -> CoapMessage {
        self.send(m).await;
        self.recv().await
    }

    fn request(&mut self, code: Code, path: &str) -> CoapMessage {
        self.mid += 1;
        let mut m = CoapMessage::new(
            MsgType::Con,
            code,
            self.mid,
            self.mid.to_be_bytes().to_vec(),
        );
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        for seg in path.split('/').filter(|s| !s.is_empty()) {
            m.push_option(option::URI_PATH, seg.as_bytes().to_vec());
        }
        for q in query.split('&').filter(|s| !s.is_empty()) {
            m.push_option(option::URI_QUERY, q.as_bytes().to_vec());
        }
        m
    }

    async fn post(&mut self, path: &str, payload: &[u8]) -> CoapMessage {
        let mut m = self.request(Code::POST, path);
        m.payload = payload.to_vec();
        self.call(&m).await
    }
}

async fn next(sub: &mut verge_broker::LocalSubscription) -> Arc<Message> {
    tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("a message in time")
        .expect("broker running")
}

/// Wait until the gateway's counters satisfy `ok`.
async fn eventually(gw: &RunningGateway, ok: impl Fn(&verge_coap::StatsSnapshot) -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ok(&gw.stats()) {
        assert!(Instant::now() < deadline, "counters: {:?}", gw.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn psk_handshake_then_post_publishes_as_the_psk_identity() {
    let e = env_with(config()).await;
    let mut sub = e
        .broker
        .handle()
        .subscribe("devices/sensor/#", 16)
        .await
        .expect("sub");
    let mut c = Client::connect(e.addr).await;
    let mut m = c.request(Code::POST, "/ps/devices/sensor/t?c=probe-1");
    m.push_uint(option::CONTENT_FORMAT, 50);
    m.payload = b"{\"t\":21.5}".to_vec();
    let resp = c.call(&m).await;
    assert_eq!(
        (resp.ty, resp.code, resp.mid),
        (MsgType::Ack, Code::CHANGED, m.mid)
    );
    let got = next(&mut sub).await;
    assert_eq!(&*got.topic, "devices/sensor/t");
    assert_eq!(&got.payload[..], b"{\"t\":21.5}");
    assert_eq!(got.qos, QoS::AtLeastOnce);
    assert_eq!(&*got.origin, "probe-1", "the query's client id is kept");
    let s = e.gw.stats();
    assert_eq!((s.dtls_handshakes, s.dtls_sessions, s.publishes), (1, 1, 1));
    assert_eq!(s.dtls_handshake_failures, 0);
}

#[tokio::test]
async fn every_offered_psk_suite_completes_a_handshake() {
    let e = env_with(config()).await;
    for suite in [
        "PSK-AES128-CCM8",
        "PSK-AES128-GCM-SHA256",
        "ECDHE-PSK-CHACHA20-POLY1305",
        "PSK-AES128-CBC-SHA256",
    ] {
        let mut c = Client::connect_with(e.addr, "sensor", KEY, suite)
            .await
            .unwrap_or_else(|err| panic!("{suite}: {err}"));
        let resp = c.post("/ps/devices/sensor/s", suite.as_bytes()).await;
        assert_eq!(resp.code, Code::CHANGED, "{suite}");
    }
    assert_eq!(e.gw.stats().dtls_handshakes, 4);
}

#[tokio::test]
async fn observe_over_dtls_notifies_through_the_session() {
    let e = env_with(config()).await;
    let handle = e.broker.handle();
    let mut c = Client::connect(e.addr).await;
    let mut reg = c.request(Code::GET, "/ps/devices/sensor/o");
    reg.push_uint(option::OBSERVE, 0);
    let resp = c.call(&reg).await;
    assert_eq!(resp.code, Code::CONTENT);
    let first = resp.uint(option::OBSERVE).expect("observe in the answer");
    assert_eq!(e.gw.stats().observers, 1);
    handle
        .publish(Message::local(
            "devices/sensor/o",
            b"42".to_vec(),
            QoS::AtMostOnce,
            false,
        ))
        .await
        .expect("publish");
    let n = c.recv().await;
    assert_eq!(
        (n.token.clone(), n.payload.clone()),
        (reg.token.clone(), b"42".to_vec())
    );
    assert!(n.uint(option::OBSERVE).expect("observe") > first);
    c.send(&CoapMessage::empty(MsgType::Ack, n.mid)).await;
    assert_eq!(e.gw.stats().notifications, 1);
}

#[tokio::test]
async fn wrong_psk_is_refused() {
    let e = env_with(config()).await;
    let r = Client::connect_with(e.addr, "sensor", b"not-the-key", "PSK-AES128-CCM8").await;
    assert!(r.is_err(), "a wrong key must not complete a handshake");
    eventually(&e.gw, |s| s.dtls_handshake_failures == 1).await;
    let s = e.gw.stats();
    assert_eq!((s.dtls_handshakes, s.dtls_sessions), (0, 0));
    // The right key still works afterwards.
    let mut c = Client::connect(e.addr).await;
    assert_eq!(
        c.post("/ps/devices/sensor/t", b"1").await.code,
        Code::CHANGED
    );
}

#[tokio::test]
async fn unknown_identity_is_refused() {
    let e = env_with(config()).await;
    let r = Client::connect_with(e.addr, "stranger", KEY, "PSK-AES128-CCM8").await;
    assert!(
        r.is_err(),
        "an identity without a key must not complete a handshake"
    );
    eventually(&e.gw, |s| s.dtls_handshake_failures == 1).await;
    assert_eq!(e.gw.stats().dtls_sessions, 0);
}

#[tokio::test]
async fn the_acl_applies_to_the_dtls_identity() {
    let e = env_with(config()).await;
    let mut c = Client::connect(e.addr).await;
    let resp = c.post("/ps/devices/other/t", b"1").await;
    assert_eq!(
        resp.code,
        Code::FORBIDDEN,
        "sensor's ACL: only devices/sensor/#"
    );
    let mut reg = c.request(Code::GET, "/ps/%23");
    reg.push_uint(option::OBSERVE, 0);
    assert_eq!(
        c.call(&reg).await.code,
        Code::FORBIDDEN,
        "no reading around the deny"
    );
    // "other" has a key but no device in the registry: only the global
    // rules and the default apply (as for an unknown certificate name).
    let mut o = Client::connect_with(e.addr, "other", b"other-key", "PSK-AES128-CCM8")
        .await
        .expect("other's handshake");
    assert_eq!(
        o.post("/ps/devices/other/t", b"1").await.code,
        Code::CHANGED
    );
    // Credentials in the query string are refused over DTLS.
    let resp = c.post("/ps/devices/sensor/t?u=sensor&p=s3cret", b"1").await;
    assert_eq!(resp.code, Code::BAD_REQUEST);
    assert_eq!(e.gw.stats().forbidden, 2);
}

#[tokio::test]
async fn garbage_datagrams_are_dropped_and_counted() {
    let e = env_with(config()).await;
    let raw = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    for junk in [
        &b""[..],
        b"\x16",
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        // An application-data record from an address without a session.
        b"\x17\xfe\xfd\x00\x01\x00\x00\x00\x00\x00\x01\x00\x04abcd",
        // Plain CoAP sent to the DTLS port.
        b"\x40\x01\x00\x01\xb2ps",
        // A handshake record (epoch 0) that is not a valid ClientHello.
        b"\x16\xfe\xfd\x00\x00\x00\x00\x00\x00\x00\x00\x00\x05hello",
    ] {
        raw.send_to(junk, e.addr).await.expect("send");
    }
    eventually(&e.gw, |s| {
        s.dtls_dropped == 5 && s.dtls_handshake_failures == 1
    })
    .await;
    // Forged records inside an established session (one too short to
    // decrypt, one that fails authentication) are dropped, and the session
    // goes on.
    let mut c = Client::connect(e.addr).await;
    c.socket
        .send(b"\x17\xfe\xfd\x00\x01\x00\x00\x00\x00\x00\x09\x00\x04abcd")
        .await
        .expect("send");
    let mut forged = b"\x17\xfe\xfd\x00\x01\x00\x00\x00\x00\x00\x0a\x00\x20".to_vec();
    forged.extend_from_slice(&[0x5a; 32]);
    c.socket.send(&forged).await.expect("send");
    assert_eq!(
        c.post("/ps/devices/sensor/t", b"1").await.code,
        Code::CHANGED
    );
    let s = e.gw.stats();
    assert_eq!((s.dtls_sessions, s.requests, s.malformed), (1, 1, 0));
    assert_eq!(s.dtls_dropped, 6, "the short forged record");
}

#[tokio::test]
async fn handshakes_are_bounded_and_expire_and_the_cookie_answer_is_small() {
    let cfg = CoapConfig {
        dtls: DtlsConfig {
            max_handshakes: 1,
            handshake_timeout: HumanDuration(Duration::from_millis(1500)),
            ..config().dtls
        },
        ..config()
    };
    let e = env_with(cfg).await;
    // The first flight of a client, sent raw from two addresses.
    let mut hello = client_session("sensor", KEY, "PSK-AES128-CCM8");
    let _ = hello.connect();
    let flight = hello.get_mut().outbound.concat();
    let a = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    a.send_to(&flight, e.addr).await.expect("send");
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(WAIT, a.recv_from(&mut buf))
        .await
        .expect("an answer in time")
        .expect("recv");
    // Record type handshake, message type 3 = HelloVerifyRequest, and no
    // larger than what was sent (no amplification).
    assert_eq!((buf[0], buf[13]), (22, 3), "a HelloVerifyRequest");
    assert!(n <= flight.len(), "{n} > {}", flight.len());
    let b = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    b.send_to(&flight, e.addr).await.expect("send");
    eventually(&e.gw, |s| s.dtls_refused == 1).await;
    // a never answers the cookie: its handshake times out.
    eventually(&e.gw, |s| s.dtls_handshake_failures == 1).await;
    let mut c = Client::connect(e.addr).await;
    assert_eq!(
        c.post("/ps/devices/sensor/t", b"1").await.code,
        Code::CHANGED
    );
}

#[tokio::test]
async fn idle_sessions_expire_but_not_while_observing() {
    let cfg = CoapConfig {
        dtls: DtlsConfig {
            idle_timeout: HumanDuration(Duration::from_millis(300)),
            ..config().dtls
        },
        ..config()
    };
    let e = env_with(cfg).await;
    let mut quiet = Client::connect(e.addr).await;
    assert_eq!(
        quiet.post("/ps/devices/sensor/q", b"1").await.code,
        Code::CHANGED
    );
    let mut watcher = Client::connect(e.addr).await;
    let mut reg = watcher.request(Code::GET, "/ps/devices/sensor/w");
    reg.push_uint(option::OBSERVE, 0);
    assert_eq!(watcher.call(&reg).await.code, Code::CONTENT);
    eventually(&e.gw, |s| s.dtls_sessions_closed == 1).await;
    assert_eq!(
        e.gw.stats().dtls_sessions,
        1,
        "the observer's session is kept"
    );
    e.broker
        .handle()
        .publish(Message::local(
            "devices/sensor/w",
            b"late".to_vec(),
            QoS::AtMostOnce,
            false,
        ))
        .await
        .expect("publish");
    assert_eq!(watcher.recv().await.payload, b"late".to_vec());
}

/// A CA, and files of a server certificate it signed.
struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

fn pki(name: &str) -> Pki {
    let key = KeyPair::generate().expect("ca key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("self-sign");
    let pki = Pki {
        dir: tempfile::tempdir().expect("tempdir"),
        ca_pem: cert.pem(),
        issuer: Issuer::new(params, key),
    };
    let (cert, key) = pki.leaf("127.0.0.1");
    std::fs::write(pki.dir.path().join("server.pem"), cert).expect("write");
    std::fs::write(pki.dir.path().join("server.key"), key).expect("write");
    std::fs::write(pki.dir.path().join("ca.pem"), &pki.ca_pem).expect("write");
    pki
}

impl Pki {
    /// A certificate with common name `cn` and its key, both PEM.
    fn leaf(&self, cn: &str) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    fn path(&self, file: &str) -> Option<std::path::PathBuf> {
        Some(self.dir.path().join(file))
    }

    /// A client session that trusts this CA, with a certificate (signed by
    /// `by`) of common name `cn`, or none.
    fn client(&self, cert: Option<(&Pki, &str)>) -> SslStream<Channel> {
        let mut b = client_builder("ECDHE-ECDSA-AES128-CCM8:ECDHE-ECDSA-AES128-GCM-SHA256");
        b.set_ca_file(self.dir.path().join("ca.pem")).expect("ca");
        b.set_verify(SslVerifyMode::PEER);
        if let Some((by, cn)) = cert {
            let (cert, key) = by.leaf(cn);
            b.set_certificate(&X509::from_pem(cert.as_bytes()).expect("x509"))
                .expect("cert");
            b.set_private_key(&PKey::private_key_from_pem(key.as_bytes()).expect("key"))
                .expect("key");
        }
        stream_of(b)
    }
}

fn cert_config(p: &Pki) -> CoapConfig {
    CoapConfig {
        dtls: DtlsConfig {
            cert: p.path("server.pem"),
            key: p.path("server.key"),
            client_ca: p.path("ca.pem"),
            ..config().dtls
        },
        ..config()
    }
}

#[tokio::test]
async fn client_certificate_common_name_is_the_device() {
    let p = pki("Verge Test CA");
    let e = env_with(cert_config(&p)).await;
    let mut sub = e
        .broker
        .handle()
        .subscribe("devices/sensor/#", 16)
        .await
        .expect("sub");
    let mut c = Client::handshake(e.addr, p.client(Some((&p, "sensor"))))
        .await
        .expect("certificate handshake");
    assert_eq!(
        c.post("/ps/devices/sensor/c", b"1").await.code,
        Code::CHANGED
    );
    assert_eq!(&*next(&mut sub).await.topic, "devices/sensor/c");
    assert_eq!(
        c.post("/ps/devices/other/c", b"1").await.code,
        Code::FORBIDDEN,
        "the ACL of the certificate's name applies"
    );
    // PSK devices keep working beside certificates.
    let mut k = Client::connect(e.addr).await;
    assert_eq!(
        k.post("/ps/devices/sensor/k", b"1").await.code,
        Code::CHANGED
    );
    assert_eq!(e.gw.stats().dtls_handshakes, 2);
}

#[tokio::test]
async fn no_client_certificate_or_one_of_another_ca_is_refused() {
    let p = pki("Verge Test CA");
    let other = pki("Another CA");
    let e = env_with(cert_config(&p)).await;
    let r = Client::handshake(e.addr, p.client(None)).await;
    assert!(r.is_err(), "no client certificate");
    let r = Client::handshake(e.addr, p.client(Some((&other, "sensor")))).await;
    assert!(r.is_err(), "a certificate of another CA");
    eventually(&e.gw, |s| s.dtls_handshake_failures == 2).await;
    assert_eq!(e.gw.stats().dtls_sessions, 0);
}

#[tokio::test]
async fn certificates_need_all_three_files() {
    let cfg = CoapConfig {
        dtls: DtlsConfig {
            enabled: true,
            cert: Some("/etc/verge/server.pem".into()),
            ..DtlsConfig::default()
        },
        ..CoapConfig::default()
    };
    let e = cfg.validate().expect_err("no key");
    assert!(e.to_string().contains("coap.dtls.key"), "{e}");
    let cfg = CoapConfig {
        dtls: DtlsConfig {
            cert: Some("/nonexistent/server.pem".into()),
            key: Some("/nonexistent/server.key".into()),
            client_ca: Some("/nonexistent/ca.pem".into()),
            ..config().dtls
        },
        ..config()
    };
    cfg.validate()
        .expect("valid: files are read when the gateway is made");
    let auth = Authenticator::new(Registry::default(), false, AclPolicy::Allow).expect("auth");
    let broker = Broker::start(BrokerConfig::default(), auth.clone());
    let Err(e) = Gateway::new(cfg, broker.handle(), auth) else {
        panic!("a missing certificate file must fail");
    };
    assert!(
        e.to_string()
            .contains("coap.dtls.cert /nonexistent/server.pem"),
        "{e}"
    );
}

#[test]
fn dtls_without_keys_is_a_config_error_naming_the_key() {
    let cfg = CoapConfig {
        dtls: DtlsConfig {
            enabled: true,
            ..DtlsConfig::default()
        },
        ..CoapConfig::default()
    };
    let e = cfg.validate().expect_err("no psk");
    assert!(e.to_string().contains("coap.dtls.psk"), "{e}");
}

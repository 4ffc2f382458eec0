//! The gateway end to end over real UDP on loopback, with raw datagrams
//! built by the crate's codec and a broker in the same process.

mod common;
use common::registry;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use verge_broker::config::AclPolicy;
use verge_broker::{Authenticator, Broker, BrokerConfig, Message};
use verge_coap::option::{self, Block};
use verge_coap::{CoapConfig, CoapMessage, Code, Gateway, MsgType, RunningGateway};
use verge_mqtt::QoS;

/// Guard against hangs only; nothing asserts on time.
const WAIT: Duration = Duration::from_secs(10);

struct Env {
    broker: Broker,
    gw: RunningGateway,
    addr: SocketAddr,
    client: UdpSocket,
    mid: u16,
}

async fn env_with(cfg: CoapConfig, anonymous: bool) -> Env {
    let auth = Authenticator::new(registry(), anonymous, AclPolicy::Allow).expect("auth");
    let broker = Broker::start(BrokerConfig::default(), auth.clone());
    let gw = Gateway::new(cfg, broker.handle(), auth).expect("gateway");
    let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    let gw = gw.spawn(socket);
    let client = UdpSocket::bind("127.0.0.1:0").await.expect("client");
    Env {
        broker,
        gw,
        addr,
        client,
        mid: 100,
    }
}

async fn env() -> Env {
    env_with(CoapConfig::default(), true).await
}

fn request(ty: MsgType, code: Code, mid: u16, path: &str) -> CoapMessage {
    let mut m = CoapMessage::new(ty, code, mid, mid.to_be_bytes().to_vec());
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    for seg in path.split('/').filter(|s| !s.is_empty()) {
        m.push_option(option::URI_PATH, seg.as_bytes().to_vec());
    }
    for q in query.split('&').filter(|s| !s.is_empty()) {
        m.push_option(option::URI_QUERY, q.as_bytes().to_vec());
    }
    m
}

impl Env {
    fn next_mid(&mut self) -> u16 {
        self.mid += 1;
        self.mid
    }

    async fn send(&self, m: &CoapMessage) {
        self.client
            .send_to(&m.encode(), self.addr)
            .await
            .expect("send");
    }

    async fn recv_raw(&self) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(WAIT, self.client.recv_from(&mut buf))
            .await
            .expect("an answer in time")
            .expect("recv");
        buf.truncate(n);
        buf
    }

    async fn recv(&self) -> CoapMessage {
        CoapMessage::decode(&self.recv_raw().await).expect("a valid coap answer")
    }

    /// Send and wait for the answer.
    async fn call(&self, m: &CoapMessage) -> CoapMessage {
        self.send(m).await;
        self.recv().await
    }

    async fn req(&mut self, code: Code, path: &str) -> CoapMessage {
        let m = request(MsgType::Con, code, self.next_mid(), path);
        self.call(&m).await
    }

    async fn post(&mut self, ty: MsgType, path: &str, payload: &[u8]) -> CoapMessage {
        let mut m = request(ty, Code::POST, self.next_mid(), path);
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

#[tokio::test]
async fn publish_con_and_non_reach_a_broker_subscriber() {
    let mut e = env().await;
    let mut sub = e
        .broker
        .handle()
        .subscribe("sensors/#", 16)
        .await
        .expect("sub");
    let mut m = request(MsgType::Con, Code::POST, 7, "/ps/sensors/t");
    m.push_uint(option::CONTENT_FORMAT, 50);
    m.payload = b"{\"t\":21.5}".to_vec();
    let resp = e.call(&m).await;
    assert_eq!(
        (resp.ty, resp.code, resp.mid),
        (MsgType::Ack, Code::CHANGED, 7)
    );
    assert_eq!(resp.token, m.token);
    let got = next(&mut sub).await;
    assert_eq!(&*got.topic, "sensors/t");
    assert_eq!(&got.payload[..], b"{\"t\":21.5}");
    assert_eq!(got.qos, QoS::AtLeastOnce);
    assert_eq!(
        got.properties.content_type.as_deref(),
        Some("application/json")
    );

    let mut m = request(MsgType::Non, Code::PUT, e.next_mid(), "/ps/sensors/h");
    m.payload = b"40".to_vec();
    let resp = e.call(&m).await;
    assert_eq!((resp.ty, resp.code), (MsgType::Non, Code::CHANGED));
    assert_eq!(resp.token, m.token);
    let got = next(&mut sub).await;
    assert_eq!((&*got.topic, got.qos), ("sensors/h", QoS::AtMostOnce));
    assert_eq!(e.gw.stats().publishes, 2);
}

#[tokio::test]
async fn duplicate_message_id_publishes_once_and_repeats_the_answer() {
    let mut e = env().await;
    let mut sub = e.broker.handle().subscribe("dup/#", 16).await.expect("sub");
    let mut m = request(MsgType::Con, Code::POST, 42, "/ps/dup/a");
    m.payload = b"once".to_vec();
    e.send(&m).await;
    let first = e.recv_raw().await;
    e.send(&m).await;
    let second = e.recv_raw().await;
    assert_eq!(first, second, "the cached answer is repeated");
    e.post(MsgType::Con, "/ps/dup/marker", b"m").await;
    assert_eq!(&*next(&mut sub).await.topic, "dup/a");
    assert_eq!(
        &*next(&mut sub).await.topic,
        "dup/marker",
        "no second publish"
    );
    assert_eq!(e.gw.stats().duplicates, 1);
}

#[tokio::test]
async fn observe_notifies_on_publish_and_deregisters() {
    let mut e = env().await;
    let handle = e.broker.handle();
    let mut reg = request(MsgType::Con, Code::GET, 9, "/ps/obs/x");
    reg.push_uint(option::OBSERVE, 0);
    let resp = e.call(&reg).await;
    assert_eq!(resp.code, Code::CONTENT);
    let first_seq = resp.uint(option::OBSERVE).expect("observe in the answer");
    assert_eq!(e.gw.stats().observers, 1);

    let mut last = first_seq;
    for i in 0..3u8 {
        handle
            .publish(Message::local(
                "obs/x",
                vec![b'0' + i],
                QoS::AtMostOnce,
                false,
            ))
            .await
            .expect("publish");
        let n = e.recv().await;
        assert_eq!(n.token, reg.token);
        assert_eq!(
            n.ty,
            MsgType::Con,
            "a CON registration gets CON notifications"
        );
        assert_eq!(n.payload, vec![b'0' + i]);
        let seq = n.uint(option::OBSERVE).expect("observe");
        assert!(seq > last, "observe numbers increase");
        last = seq;
        e.send(&CoapMessage::empty(MsgType::Ack, n.mid)).await;
    }
    let mut dereg = request(MsgType::Con, Code::GET, e.next_mid(), "/ps/obs/x");
    dereg.token = reg.token.clone();
    dereg.push_uint(option::OBSERVE, 1);
    let resp = e.call(&dereg).await;
    assert_eq!(resp.uint(option::OBSERVE), None);
    assert_eq!(e.gw.stats().observers, 0);
    assert_eq!(e.gw.stats().notifications, 3);
}

/// Issue 17, drivers 8: `coap.max_payload` said it limits notifications,
/// but a 100,000-byte notification was delivered. A message above it is
/// not sent to observers (counted); the observation goes on.
#[tokio::test]
async fn notification_larger_than_max_payload_is_not_sent() {
    let cfg = CoapConfig {
        max_payload: 1024,
        ..CoapConfig::default()
    };
    let e = env_with(cfg, true).await;
    let handle = e.broker.handle();
    let mut reg = request(MsgType::Non, Code::GET, 9, "/ps/big/x");
    reg.push_uint(option::OBSERVE, 0);
    let resp = e.call(&reg).await;
    assert_eq!(resp.code, Code::CONTENT);
    assert_eq!(e.gw.stats().observers, 1);
    for payload in [vec![b'a'; 100_000], vec![b'b'; 1025], b"small".to_vec()] {
        handle
            .publish(Message::local("big/x", payload, QoS::AtMostOnce, false))
            .await
            .expect("publish");
    }
    // The first notification to arrive is the small one.
    let n = e.recv().await;
    assert_eq!(n.token, reg.token);
    assert_eq!(n.payload, b"small".to_vec());
    let stats = e.gw.stats();
    assert_eq!(stats.notifications_too_large, 2);
    assert_eq!(stats.notifications, 1);
    assert_eq!(stats.observers, 1);
}

#[tokio::test]
async fn reset_or_silence_drops_an_observer() {
    let cfg = CoapConfig {
        ack_timeout: verge_duration::HumanDuration(Duration::from_millis(20)),
        max_retransmit: 2,
        ..CoapConfig::default()
    };
    let mut e = env_with(cfg, true).await;
    let handle = e.broker.handle();
    let mut reg = request(MsgType::Non, Code::GET, e.next_mid(), "/ps/rst/x");
    reg.push_uint(option::OBSERVE, 0);
    assert!(e.call(&reg).await.uint(option::OBSERVE).is_some());
    handle
        .publish(Message::local("rst/x", "a", QoS::AtMostOnce, false))
        .await
        .expect("publish");
    let n = e.recv().await;
    assert_eq!(n.ty, MsgType::Non);
    e.send(&CoapMessage::empty(MsgType::Rst, n.mid)).await;

    // A Confirmable observer that never acknowledges is retried, then dropped.
    let mut reg = request(MsgType::Con, Code::GET, e.next_mid(), "/ps/rst/y");
    reg.push_uint(option::OBSERVE, 0);
    assert!(e.call(&reg).await.uint(option::OBSERVE).is_some());
    handle
        .publish(Message::local("rst/y", "b", QoS::AtMostOnce, false))
        .await
        .expect("publish");
    let first = e.recv().await;
    for _ in 0..2 {
        let again = e.recv().await;
        assert_eq!(again.mid, first.mid, "a retransmission");
    }
    tokio::time::timeout(WAIT, async {
        while e.gw.stats().observers_dropped < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("both observers dropped");
    let s = e.gw.stats();
    assert_eq!((s.observers, s.retransmissions), (0, 2));
}

#[tokio::test]
async fn block_wise_upload_and_download() {
    let mut e = env().await;
    let mut sub = e.broker.handle().subscribe("big/up", 4).await.expect("sub");
    let body: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    for (num, chunk) in body.chunks(1024).enumerate() {
        let more = (num + 1) * 1024 < body.len();
        let mut m = request(MsgType::Con, Code::PUT, e.next_mid(), "/ps/big/up?r=1");
        m.push_option(
            option::BLOCK1,
            Block {
                num: num as u32,
                more,
                szx: 6,
            }
            .encode(),
        );
        m.payload = chunk.to_vec();
        let resp = e.call(&m).await;
        let echo = Block::decode(resp.option(option::BLOCK1).expect("block1 echo")).expect("block");
        assert_eq!(echo.num, num as u32);
        assert_eq!(resp.code, if more { Code::CONTINUE } else { Code::CHANGED });
    }
    let got = next(&mut sub).await;
    assert_eq!(&got.payload[..], &body[..], "reassembled in order");

    // The retained body comes back in blocks.
    let mut down = Vec::new();
    for num in 0.. {
        let mut m = request(MsgType::Con, Code::GET, e.next_mid(), "/ps/big/up");
        m.push_option(
            option::BLOCK2,
            Block {
                num,
                more: false,
                szx: 6,
            }
            .encode(),
        );
        let resp = e.call(&m).await;
        assert_eq!(resp.code, Code::CONTENT);
        if num == 0 {
            assert_eq!(resp.uint(option::SIZE2), Some(3000));
        }
        let b = Block::decode(resp.option(option::BLOCK2).expect("block2")).expect("block");
        down.extend_from_slice(&resp.payload);
        if !b.more {
            break;
        }
    }
    assert_eq!(down, body);

    // Too large at once, and too large block-wise.
    let cfg_max = CoapConfig::default().max_payload;
    let mut m = request(MsgType::Con, Code::PUT, e.next_mid(), "/ps/big/x");
    m.push_option(
        option::BLOCK1,
        Block {
            num: (cfg_max / 1024) as u32,
            more: true,
            szx: 6,
        }
        .encode(),
    );
    m.payload = vec![0; 1024];
    let resp = e.call(&m).await;
    assert_eq!(resp.code, Code::REQUEST_ENTITY_TOO_LARGE);
    assert_eq!(resp.uint(option::SIZE1), Some(cfg_max as u32));
    // A block out of order is 4.08.
    let mut m = request(MsgType::Con, Code::PUT, e.next_mid(), "/ps/big/y");
    m.push_option(
        option::BLOCK1,
        Block {
            num: 3,
            more: true,
            szx: 6,
        }
        .encode(),
    );
    m.payload = vec![0; 1024];
    assert_eq!(e.call(&m).await.code, Code::REQUEST_ENTITY_INCOMPLETE);
}

#[tokio::test]
async fn credentials_and_acl_are_the_brokers() {
    let mut e = env_with(CoapConfig::default(), false).await;
    let resp = e.post(MsgType::Con, "/ps/devices/sensor/t", b"1").await;
    assert_eq!(resp.code, Code::UNAUTHORIZED, "anonymous refused");
    let resp = e
        .post(MsgType::Con, "/ps/devices/sensor/t?u=sensor&p=wrong", b"1")
        .await;
    assert_eq!(resp.code, Code::UNAUTHORIZED);
    let resp = e
        .post(MsgType::Con, "/ps/devices/sensor/t?u=sensor&p=s3cret", b"1")
        .await;
    assert_eq!(resp.code, Code::CHANGED);
    let resp = e
        .post(MsgType::Con, "/ps/devices/other/t?u=sensor&p=s3cret", b"1")
        .await;
    assert_eq!(resp.code, Code::FORBIDDEN, "the device's ACL applies");
    let s = e.gw.stats();
    assert_eq!((s.unauthorized, s.forbidden, s.publishes), (2, 1, 1));
}

#[tokio::test]
async fn malformed_datagrams_never_stop_the_gateway() {
    let mut e = env().await;
    for junk in [
        &b""[..],
        b"\x40",
        b"\xff\xff\xff\xff\xff",
        b"\x4f\x01\x00\x01",     // token length 15, CON: Reset
        b"\x40\x01\x00\x02\xff", // payload marker without payload
        b"\x40\x01\x00\x03\xf0", // reserved option delta
        b"\x48\x01\x00\x04\x01", // token cut short
        b"\x40\x01\x00\x05\xd0", // extended delta cut short
        b"\x80\x01\x00\x06",     // version 2
    ] {
        e.client.send_to(junk, e.addr).await.expect("send");
    }
    // The Confirmable ones with a readable header are reset.
    let mut resets = Vec::new();
    for _ in 0..6 {
        let r = e.recv().await;
        assert_eq!(r.ty, MsgType::Rst);
        resets.push(r.mid);
    }
    resets.sort();
    assert_eq!(resets, vec![1, 2, 3, 4, 5, 6]);
    let mut m = request(MsgType::Con, Code::POST, e.next_mid(), "/ps/x");
    m.push_option(9, b"?".to_vec());
    assert_eq!(
        e.call(&m).await.code,
        Code::BAD_OPTION,
        "unknown critical option"
    );
    let resp = e.post(MsgType::Con, "/ps/still/alive", b"1").await;
    assert_eq!(resp.code, Code::CHANGED);
    assert_eq!(e.gw.stats().malformed, 9);
}

#[tokio::test]
async fn discovery_ping_and_plain_get() {
    let mut e = env().await;
    let resp = e.req(Code::GET, "/.well-known/core").await;
    assert_eq!(resp.code, Code::CONTENT);
    assert_eq!(resp.uint(option::CONTENT_FORMAT), Some(40));
    assert!(String::from_utf8_lossy(&resp.payload).contains("</ps>"));
    let ping = CoapMessage::empty(MsgType::Con, 77);
    let pong = e.call(&ping).await;
    assert_eq!((pong.ty, pong.mid), (MsgType::Rst, 77));
    let resp = e.req(Code::GET, "/ps/none").await;
    assert_eq!(resp.code, Code::NOT_FOUND);
    e.post(MsgType::Con, "/ps/kept?r=1", b"v").await;
    let resp = e.req(Code::GET, "/ps/kept").await;
    assert_eq!((resp.code, &resp.payload[..]), (Code::CONTENT, &b"v"[..]));
    let resp = e.req(Code::DELETE, "/ps/kept").await;
    assert_eq!(resp.code, Code::METHOD_NOT_ALLOWED);
    let resp = e.req(Code::GET, "/other").await;
    assert_eq!(resp.code, Code::NOT_FOUND);
    e.gw.shutdown().await.expect("clean shutdown");
}

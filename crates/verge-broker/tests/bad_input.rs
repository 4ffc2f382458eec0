//! Hostile or broken clients on raw TCP: each is closed (5.0: DISCONNECT with
//! the matching reason code first), and a well-behaved rumqttc client
//! connected at the same time keeps working.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use rumqttc::QoS as Q3;
use verge_mqtt::QoS;
use verge_mqtt::reason;

/// A subscriber and a publisher that must be unaffected by the bad client.
struct Bystanders {
    sub: Client3,
    publisher: Client3,
    n: u32,
}

async fn bystanders(b: &TestBroker) -> Bystanders {
    let mut sub = connect3(b.addr, "bystander-sub", |_| {}).await;
    sub.subscribe("ok/t", Q3::AtLeastOnce).await;
    let publisher = connect3(b.addr, "bystander-pub", |_| {}).await;
    Bystanders {
        sub,
        publisher,
        n: 0,
    }
}

impl Bystanders {
    async fn still_work(&mut self) {
        self.n += 1;
        let tag = format!("still-{}", self.n);
        self.publisher
            .publish_acked("ok/t", Q3::AtLeastOnce, false, tag.clone())
            .await;
        assert_eq!(
            text(&self.sub.recv().await.payload),
            tag,
            "bystander stopped working"
        );
        assert!(
            self.sub
                .closed_within(std::time::Duration::ZERO)
                .await
                .is_none()
        );
    }
}

/// Hand-built PUBLISH (QoS 0) with raw topic bytes.
fn raw_publish(topic: &[u8], v5: bool, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    body.extend_from_slice(topic);
    if v5 {
        body.push(0); // property length
    }
    body.extend_from_slice(payload);
    let mut out = vec![0x30, body.len() as u8];
    assert!(body.len() < 128);
    out.extend_from_slice(&body);
    out
}

#[tokio::test]
async fn garbage_before_connect_closes_connection() {
    let b = start().await;
    let mut ok = bystanders(&b).await;
    let mut raw = raw_tcp(b.addr, Protocol::V311).await;
    raw.send_bytes(&[0x00, 0x04, 0xde, 0xad, 0xbe, 0xef]).await; // reserved packet type 0
    assert_eq!(
        raw.expect_closed(WAIT).await,
        None,
        "no packet expected in answer to garbage"
    );
    let mut raw = raw_tcp(b.addr, Protocol::V311).await;
    raw.send_bytes(&[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).await; // remaining length > 4 bytes
    assert_eq!(raw.expect_closed(WAIT).await, None);
    ok.still_work().await;
}

/// An HTTP request is not MQTT. Its first bytes parse as a PUBACK header
/// announcing more bytes than follow, so the broker may only notice at the
/// connect timeout (rejecting a non-CONNECT first byte at once would be
/// quicker); either way the connection must end.
#[tokio::test]
async fn http_request_on_mqtt_port_is_closed() {
    let b = start_with(|c| {
        c.connect_timeout = verge_broker::duration::HumanDuration(std::time::Duration::from_secs(2))
    })
    .await;
    let mut ok = bystanders(&b).await;
    let mut raw = raw_tcp(b.addr, Protocol::V311).await;
    raw.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(raw.expect_closed(WAIT).await, None);
    ok.still_work().await;
}

#[tokio::test]
async fn garbage_after_connect_is_malformed_packet() {
    let b = start().await;
    let mut ok = bystanders(&b).await;
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    raw.handshake("garbage").await;
    raw.send_bytes(&[0x00, 0x02, 0xff, 0xff]).await; // packet type 0 is reserved
    assert_eq!(
        raw.expect_closed(WAIT).await,
        Some(reason::MALFORMED_PACKET)
    );
    let mut raw = raw_tcp(b.addr, Protocol::V311).await;
    raw.handshake("garbage3").await;
    raw.send_bytes(&[0x00, 0x02, 0xff, 0xff]).await;
    assert_eq!(raw.expect_closed(WAIT).await, None);
    ok.still_work().await;
    assert!(counter(&b.stats().protocol_errors) >= 2);
}

#[tokio::test]
async fn publish_before_connect_closes_connection() {
    let b = start().await;
    let mut ok = bystanders(&b).await;
    for protocol in [Protocol::V311, Protocol::V5] {
        let mut raw = raw_tcp(b.addr, protocol).await;
        raw.send(&publish_packet("ok/t", QoS::AtMostOnce, 0, b"sneaky"))
            .await;
        match raw.read(WAIT).await {
            Read::Closed => {}
            Read::Packet(Packet::ConnAck(a)) if a.reason_code >= 0x80 => {
                raw.expect_closed(WAIT).await.map_or((), |_| ())
            }
            other => panic!("{protocol:?}: PUBLISH before CONNECT got {other:?}"),
        }
    }
    ok.still_work().await; // and "sneaky" was never routed: the next message is the tag
}

#[tokio::test]
async fn publish_with_wildcard_topic_is_topic_name_invalid() {
    let b = start().await;
    let mut ok = bystanders(&b).await;
    for topic in ["ok/+", "ok/#"] {
        let mut raw = raw_tcp(b.addr, Protocol::V5).await;
        raw.handshake("wild5").await;
        raw.send(&publish_packet(topic, QoS::AtLeastOnce, 1, b"x"))
            .await;
        assert_eq!(
            raw.expect_closed(WAIT).await,
            Some(reason::TOPIC_NAME_INVALID),
            "{topic}"
        );
        let mut raw = raw_tcp(b.addr, Protocol::V311).await;
        raw.handshake("wild3").await;
        raw.send(&publish_packet(topic, QoS::AtMostOnce, 0, b"x"))
            .await;
        assert_eq!(raw.expect_closed(WAIT).await, None, "{topic}");
    }
    ok.still_work().await;
}

#[tokio::test]
async fn publish_with_empty_topic_and_no_alias_is_topic_name_invalid() {
    let b = start().await;
    let mut ok = bystanders(&b).await;
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    raw.handshake("empty").await;
    raw.send_bytes(&raw_publish(b"", true, b"x")).await;
    assert_eq!(
        raw.expect_closed(WAIT).await,
        Some(reason::TOPIC_NAME_INVALID)
    );
    ok.still_work().await;
}

#[tokio::test]
async fn invalid_utf8_topic_is_malformed() {
    let b = start().await;
    let mut ok = bystanders(&b).await;
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    raw.handshake("utf8-5").await;
    raw.send_bytes(&raw_publish(&[b'o', b'k', 0xC3, 0x28], true, b"x"))
        .await;
    assert_eq!(
        raw.expect_closed(WAIT).await,
        Some(reason::MALFORMED_PACKET)
    );
    let mut raw = raw_tcp(b.addr, Protocol::V311).await;
    raw.handshake("utf8-3").await;
    raw.send_bytes(&raw_publish(&[0xFF, 0xFE], false, b"x"))
        .await;
    assert_eq!(raw.expect_closed(WAIT).await, None);
    // U+0000 is not allowed in a topic either.
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    raw.handshake("nul").await;
    raw.send_bytes(&raw_publish(b"ok\0t", true, b"x")).await;
    assert_eq!(
        raw.expect_closed(WAIT).await,
        Some(reason::MALFORMED_PACKET)
    );
    ok.still_work().await;
}

#[tokio::test]
async fn oversized_packet_is_packet_too_large() {
    let b = start_with(|c| c.max_packet_size = 1024).await;
    let mut ok = bystanders(&b).await;
    // Claim 2000 bytes, send only part of them: the fixed header alone must
    // be enough for the broker to refuse.
    let mut big = vec![0x30, 0xD0, 0x0F]; // PUBLISH, remaining length 2000
    big.extend_from_slice(&[0x00, 0x04]);
    big.extend_from_slice(b"ok/t");
    big.push(0);
    big.extend_from_slice(&[b'x'; 100]);
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    raw.handshake("big5").await;
    raw.send_bytes(&big).await;
    assert_eq!(
        raw.expect_closed(WAIT).await,
        Some(reason::PACKET_TOO_LARGE)
    );

    let mut raw = raw_tcp(b.addr, Protocol::V311).await;
    raw.handshake("big3").await;
    raw.send_bytes(&big).await;
    assert_eq!(raw.expect_closed(WAIT).await, None);

    // A whole oversized packet, sent complete.
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    raw.handshake("big5b").await;
    raw.send(&publish_packet("ok/t", QoS::AtLeastOnce, 1, &[b'y'; 1500]))
        .await;
    assert_eq!(
        raw.expect_closed(WAIT).await,
        Some(reason::PACKET_TOO_LARGE)
    );

    // Just under the limit is fine.
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    raw.handshake("fits").await;
    raw.send(&publish_packet("ok/t", QoS::AtLeastOnce, 1, &[b'z'; 900]))
        .await;
    match raw.recv().await {
        Packet::PubAck(a) => assert_eq!((a.packet_id, a.reason_code), (1, 0)),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    assert_eq!(ok.sub.recv().await.payload.len(), 900);
    ok.still_work().await;
}

#[tokio::test]
async fn oversized_connect_is_refused() {
    let b = start_with(|c| c.max_packet_size = 256).await;
    let mut ok = bystanders(&b).await;
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    let mut c = connect_packet(Protocol::V5, "big-connect", 0);
    c.username = Some("u".repeat(400));
    raw.send(&Packet::Connect(c)).await;
    match raw.read(WAIT).await {
        Read::Closed => {}
        Read::Packet(Packet::ConnAck(a)) => assert_eq!(a.reason_code, reason::PACKET_TOO_LARGE),
        other => panic!("oversized CONNECT got {other:?}"),
    }
    ok.still_work().await;
}

#[tokio::test]
async fn second_connect_is_a_protocol_error() {
    let b = start().await;
    let mut ok = bystanders(&b).await;
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    raw.handshake("twice5").await;
    raw.send(&Packet::Connect(connect_packet(Protocol::V5, "twice5", 0)))
        .await;
    assert_eq!(raw.expect_closed(WAIT).await, Some(reason::PROTOCOL_ERROR));
    let mut raw = raw_tcp(b.addr, Protocol::V311).await;
    raw.handshake("twice3").await;
    raw.send(&Packet::Connect(connect_packet(
        Protocol::V311,
        "twice3",
        0,
    )))
    .await;
    assert_eq!(raw.expect_closed(WAIT).await, None);
    ok.still_work().await;
}

#[tokio::test]
async fn server_only_packet_from_client_is_a_protocol_error() {
    let b = start().await;
    let mut ok = bystanders(&b).await;
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    raw.handshake("connack").await;
    raw.send(&Packet::ConnAck(verge_mqtt::ConnAck::default()))
        .await;
    assert_eq!(raw.expect_closed(WAIT).await, Some(reason::PROTOCOL_ERROR));
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    raw.handshake("pingresp").await;
    raw.send(&Packet::PingResp).await;
    assert_eq!(raw.expect_closed(WAIT).await, Some(reason::PROTOCOL_ERROR));
    ok.still_work().await;
}

#[tokio::test]
async fn reserved_flags_and_qos3_are_malformed() {
    let b = start().await;
    let mut ok = bystanders(&b).await;
    // SUBSCRIBE with fixed-header flags 0000 instead of 0010.
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    raw.handshake("flags").await;
    raw.send_bytes(&[0x80, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, b'a'])
        .await;
    assert_eq!(
        raw.expect_closed(WAIT).await,
        Some(reason::MALFORMED_PACKET)
    );
    // PUBLISH with QoS 3.
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    raw.handshake("qos3").await;
    raw.send_bytes(&[0x36, 0x08, 0x00, 0x01, b'a', 0x00, 0x01, 0x00, b'x', b'y'])
        .await;
    assert_eq!(
        raw.expect_closed(WAIT).await,
        Some(reason::MALFORMED_PACKET)
    );
    ok.still_work().await;
}

#[tokio::test]
async fn unsupported_protocol_level_gets_connack_0x84_or_return_code_1() {
    let b = start().await;
    let mut ok = bystanders(&b).await;
    // CONNECT "MQTT" level 6.
    let connect_v6: &[u8] = &[
        0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x06, 0x02, 0x00, 0x00, 0x00, 0x01, b'x',
    ];
    let mut raw = raw_tcp(b.addr, Protocol::V311).await;
    raw.send_bytes(connect_v6).await;
    match raw.read(WAIT).await {
        Read::Packet(Packet::ConnAck(a)) => {
            assert_eq!(
                a.reason_code,
                reason::UNSUPPORTED_PROTOCOL_VERSION,
                "3.1.1 return code 1"
            )
        }
        Read::Closed => {}
        other => panic!("unsupported level got {other:?}"),
    }
    raw.expect_closed(WAIT).await;
    // Wrong protocol name: close without CONNACK is allowed, a success CONNACK is not.
    let mut bad_name = connect_v6.to_vec();
    bad_name[7] = b'X';
    bad_name[8] = 0x04;
    let mut raw = raw_tcp(b.addr, Protocol::V311).await;
    raw.send_bytes(&bad_name).await;
    match raw.read(WAIT).await {
        Read::Closed => {}
        Read::Packet(Packet::ConnAck(a)) => assert_ne!(a.reason_code, 0),
        other => panic!("bad protocol name got {other:?}"),
    }
    ok.still_work().await;
}

#[tokio::test]
async fn topic_alias_zero_is_invalid() {
    let b = start().await;
    let mut ok = bystanders(&b).await;
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    raw.handshake("alias0").await;
    // PUBLISH "ok/t" with property 0x23 (topic alias) = 0.
    let body: &[u8] = &[
        0x00, 0x04, b'o', b'k', b'/', b't', 0x03, 0x23, 0x00, 0x00, b'x',
    ];
    let mut p = vec![0x30, body.len() as u8];
    p.extend_from_slice(body);
    raw.send_bytes(&p).await;
    let code = raw.expect_closed(WAIT).await;
    assert!(
        code == Some(reason::TOPIC_ALIAS_INVALID) || code == Some(reason::PROTOCOL_ERROR),
        "topic alias 0: {code:?}"
    );
    ok.still_work().await;
}

/// Many bad clients at once do not disturb the broker.
#[tokio::test]
async fn burst_of_bad_clients_leaves_broker_healthy() {
    let b = start().await;
    let mut ok = bystanders(&b).await;
    let mut tasks = Vec::new();
    for i in 0..20u8 {
        let addr = b.addr;
        tasks.push(tokio::spawn(async move {
            let mut raw = raw_tcp(addr, Protocol::V5).await;
            if i % 2 == 0 {
                raw.send_bytes(&[0xF0 | (i & 0x0F), 0xFF, 0xFF, 0xFF, 0xFF, 0x7F])
                    .await;
            } else {
                raw.handshake(&format!("bad-{i}")).await;
                raw.send_bytes(&[0x30, 0x03, 0x00, 0x05, b'x']).await;
            }
            raw.expect_closed(WAIT).await
        }));
    }
    for t in tasks {
        t.await.expect("bad client task");
    }
    ok.still_work().await;
    eventually("only bystanders left", || {
        counter(&b.stats().clients_connected) == 2
    })
    .await;
}

/// A client may not set a Subscription Identifier on its own PUBLISH
/// (MQTT 5.0 §3.3.4): protocol error.
#[tokio::test]
async fn publish_with_subscription_identifier_is_a_protocol_error() {
    let b = start().await;
    let mut ok = bystanders(&b).await;
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    raw.handshake("subid").await;
    let mut p = publish_packet("ok/x", QoS::AtLeastOnce, 1, b"x");
    if let Packet::Publish(p) = &mut p {
        p.properties.subscription_identifiers = vec![7];
    }
    raw.send(&p).await;
    assert_eq!(raw.expect_closed(WAIT).await, Some(reason::PROTOCOL_ERROR));
    ok.still_work().await;
}

/// Invalid filters in SUBSCRIBE and UNSUBSCRIBE get 0x8F per filter; the
/// connection and its valid filters carry on.
#[tokio::test]
async fn invalid_filters_get_topic_filter_invalid() {
    let b = start().await;
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    raw.handshake("filters").await;
    for (id, bad) in [(1, "a/#/b"), (2, "a+/b"), (3, "$share/g")] {
        assert_eq!(
            raw.subscribe(id, bad, QoS::AtMostOnce).await,
            vec![reason::TOPIC_FILTER_INVALID],
            "SUBSCRIBE {bad}"
        );
    }
    raw.send(&Packet::Unsubscribe(verge_mqtt::Unsubscribe {
        packet_id: 9,
        filters: vec!["a/#/b".into(), "never/subscribed".into()],
        properties: verge_mqtt::Properties::default(),
    }))
    .await;
    match raw
        .recv_matching("UNSUBACK", |p| matches!(p, Packet::UnsubAck(_)))
        .await
    {
        Packet::UnsubAck(u) => assert_eq!(
            u.reason_codes,
            vec![
                reason::TOPIC_FILTER_INVALID,
                reason::NO_SUBSCRIPTION_EXISTED
            ]
        ),
        _ => unreachable!(),
    }
    assert_eq!(
        raw.subscribe(10, "ok/#", QoS::AtMostOnce).await,
        vec![0],
        "connection still serves valid filters"
    );
}

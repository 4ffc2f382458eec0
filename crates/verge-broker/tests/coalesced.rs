//! Packets that arrive in the same TCP segment as the CONNECT are handled
//! at once, not when the client next sends something (regression: a client
//! writing CONNECT and SUBSCRIBE, or CONNECT and PUBLISH, in one write got
//! no SUBACK and its publish was not delivered until it sent a PINGREQ).

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::*;
use verge_mqtt::{Packet, Protocol, QoS};

/// CONNECT followed by `then`, encoded into one buffer and written at once.
fn connect_and(protocol: Protocol, client_id: &str, then: &Packet) -> BytesMut {
    let mut out = BytesMut::new();
    let connect = Packet::Connect(connect_packet(protocol, client_id, 60));
    verge_mqtt::encode(&connect, protocol, &mut out).expect("encode connect");
    verge_mqtt::encode(then, protocol, &mut out).expect("encode second packet");
    out
}

/// Neither test sends anything after the one write, so a packet left in
/// the broker's read buffer would stay there until this runs out.
const QUIET: Duration = Duration::from_secs(3);

async fn subscribe_in_the_connect_segment(protocol: Protocol) {
    let b = start().await;
    let mut raw = raw_tcp(b.addr, protocol).await;
    let bytes = connect_and(
        protocol,
        "one-write-sub",
        &subscribe_packet(7, "seg/#", QoS::AtLeastOnce),
    );
    raw.send_bytes(&bytes).await;
    match raw.read(QUIET).await {
        Read::Packet(Packet::ConnAck(a)) => assert_eq!(a.reason_code, 0, "{a:?}"),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    match raw.read(QUIET).await {
        Read::Packet(Packet::SubAck(s)) => {
            assert_eq!(s.packet_id, 7);
            assert_eq!(s.reason_codes, vec![1]);
        }
        other => panic!("expected the SUBACK without sending more, got {other:?}"),
    }
}

async fn publish_in_the_connect_segment(protocol: Protocol) {
    let b = start().await;
    let mut sub = raw_tcp(b.addr, protocol).await;
    sub.handshake("seg-listener").await;
    assert_eq!(sub.subscribe(1, "seg/p", QoS::AtMostOnce).await, vec![0]);
    let mut raw = raw_tcp(b.addr, protocol).await;
    let bytes = connect_and(
        protocol,
        "one-write-pub",
        &publish_packet("seg/p", QoS::AtMostOnce, 0, b"in the same segment"),
    );
    raw.send_bytes(&bytes).await;
    match sub.read(QUIET).await {
        Read::Packet(Packet::Publish(p)) => {
            assert_eq!(p.topic, "seg/p");
            assert_eq!(&p.payload[..], b"in the same segment");
        }
        other => panic!("expected the publish to be delivered, got {other:?}"),
    }
}

#[tokio::test]
async fn v5_subscribe_written_with_connect_is_answered() {
    subscribe_in_the_connect_segment(Protocol::V5).await;
}

#[tokio::test]
async fn v3_subscribe_written_with_connect_is_answered() {
    subscribe_in_the_connect_segment(Protocol::V311).await;
}

#[tokio::test]
async fn v5_publish_written_with_connect_is_delivered() {
    publish_in_the_connect_segment(Protocol::V5).await;
}

#[tokio::test]
async fn v3_publish_written_with_connect_is_delivered() {
    publish_in_the_connect_segment(Protocol::V311).await;
}

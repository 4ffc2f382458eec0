//! Durable in-process subscriptions: a client's QoS 1/2 PUBLISH that
//! reaches one is acknowledged only after the consumer confirmed it, in
//! arrival order; a failed, dropped or refused delivery is reported to the
//! client (5.0: reason 0x97; 3.1.1: the connection closes unacknowledged);
//! QoS 0, non-matching and in-process publishes are not held.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use verge_broker::{DurableMessage, DurableSubscription};
use verge_mqtt::QoS;

const QUOTA_EXCEEDED: u8 = 0x97;

async fn durable(b: &TestBroker, filter: &str, capacity: usize) -> DurableSubscription {
    b.handle()
        .subscribe_durable(&[filter.to_owned()], capacity)
        .await
        .expect("subscribe_durable")
}

async fn next(s: &mut DurableSubscription) -> DurableMessage {
    tokio::time::timeout(WAIT, s.recv())
        .await
        .expect("durable subscription: nothing within WAIT")
        .expect("broker gone")
}

async fn client(b: &TestBroker, protocol: Protocol, id: &str) -> Raw<tokio::net::TcpStream> {
    let mut raw = raw_tcp(b.addr, protocol).await;
    raw.handshake(id).await;
    raw
}

/// The next PUBACK (or PUBREC for QoS 2) as (packet id, reason code).
async fn ack_of(raw: &mut Raw<tokio::net::TcpStream>) -> (u16, u8) {
    match raw.recv().await {
        Packet::PubAck(a) | Packet::PubRec(a) => (a.packet_id, a.reason_code),
        other => panic!("expected PUBACK/PUBREC, got {other:?}"),
    }
}

/// Nothing arrives within [`QUIET`].
async fn expect_silence(raw: &mut Raw<tokio::net::TcpStream>, what: &str) {
    match raw.read(QUIET).await {
        Read::Timeout => {}
        other => panic!("{what}: got {other:?}"),
    }
}

#[tokio::test]
async fn qos1_puback_waits_for_the_durable_confirmation() {
    let b = start().await;
    let mut sub = durable(&b, "d/#", 16).await;
    let mut raw = client(&b, Protocol::V5, "dev").await;
    raw.send(&publish_packet("d/1", QoS::AtLeastOnce, 1, b"x"))
        .await;
    let m = next(&mut sub).await;
    assert_eq!(&*m.msg.topic, "d/1");
    assert!(m.confirm.is_awaited());
    expect_silence(&mut raw, "PUBACK before the confirmation").await;
    // Other traffic keeps working while the acknowledgement is held.
    raw.send(&Packet::PingReq).await;
    assert!(matches!(raw.recv().await, Packet::PingResp));
    m.confirm.ok();
    assert_eq!(ack_of(&mut raw).await, (1, 0));
}

#[tokio::test]
async fn puback_order_is_kept_across_durable_and_plain_publishes() {
    let b = start().await;
    let mut sub = durable(&b, "d/#", 16).await;
    let mut plain = b.handle().subscribe("other/#", 16).await.expect("sub");
    let mut raw = client(&b, Protocol::V5, "dev").await;
    raw.send(&publish_packet("d/1", QoS::AtLeastOnce, 1, b"a"))
        .await;
    raw.send(&publish_packet("other/1", QoS::AtLeastOnce, 2, b"b"))
        .await;
    raw.send(&publish_packet("d/2", QoS::AtLeastOnce, 3, b"c"))
        .await;
    let first = next(&mut sub).await;
    let third = next(&mut sub).await;
    // The plain message was routed at once; only its PUBACK waits.
    let m = tokio::time::timeout(WAIT, plain.recv())
        .await
        .expect("plain")
        .expect("open");
    assert_eq!(&*m.topic, "other/1");
    expect_silence(&mut raw, "a PUBACK overtook a held one").await;
    // The third is confirmed first: still nothing goes out before the first.
    third.confirm.ok();
    expect_silence(&mut raw, "a PUBACK overtook a held one").await;
    first.confirm.ok();
    assert_eq!(ack_of(&mut raw).await, (1, 0));
    assert_eq!(ack_of(&mut raw).await, (2, 0));
    assert_eq!(ack_of(&mut raw).await, (3, 0));
}

#[tokio::test]
async fn failed_or_dropped_confirmation_gives_quota_exceeded_on_v5() {
    let b = start().await;
    let mut sub = durable(&b, "d/#", 16).await;
    let mut raw = client(&b, Protocol::V5, "dev").await;
    raw.send(&publish_packet("d/1", QoS::AtLeastOnce, 1, b"a"))
        .await;
    raw.send(&publish_packet("d/2", QoS::AtLeastOnce, 2, b"b"))
        .await;
    next(&mut sub).await.confirm.fail();
    drop(next(&mut sub).await);
    assert_eq!(ack_of(&mut raw).await, (1, QUOTA_EXCEEDED));
    assert_eq!(ack_of(&mut raw).await, (2, QUOTA_EXCEEDED));
    assert_eq!(counter(&b.stats().durable_refused), 2);
    // The connection goes on.
    raw.send(&publish_packet("d/3", QoS::AtLeastOnce, 3, b"c"))
        .await;
    next(&mut sub).await.confirm.ok();
    assert_eq!(ack_of(&mut raw).await, (3, 0));
}

#[tokio::test]
async fn failed_confirmation_closes_a_v311_connection_unacknowledged() {
    let b = start().await;
    let mut sub = durable(&b, "d/#", 16).await;
    let mut raw = client(&b, Protocol::V311, "dev").await;
    raw.send(&publish_packet("d/1", QoS::AtLeastOnce, 1, b"a"))
        .await;
    next(&mut sub).await.confirm.fail();
    loop {
        match raw.read(WAIT).await {
            Read::Closed => break,
            Read::Packet(Packet::PubAck(a)) => panic!("acknowledged a failed publish: {a:?}"),
            Read::Packet(_) => {}
            other => panic!("expected the connection to close, got {other:?}"),
        }
    }
    assert_eq!(counter(&b.stats().durable_refused), 1);
}

#[tokio::test]
async fn full_durable_queue_gives_quota_exceeded() {
    let b = start().await;
    let mut sub = durable(&b, "d/#", 1).await;
    let mut raw = client(&b, Protocol::V5, "dev").await;
    raw.send(&publish_packet("d/1", QoS::AtLeastOnce, 1, b"a"))
        .await;
    raw.send(&publish_packet("d/2", QoS::AtLeastOnce, 2, b"b"))
        .await;
    eventually("the second delivery to be dropped", || sub.dropped() == 1).await;
    next(&mut sub).await.confirm.ok();
    assert_eq!(ack_of(&mut raw).await, (1, 0));
    assert_eq!(ack_of(&mut raw).await, (2, QUOTA_EXCEEDED));
}

#[tokio::test]
async fn dropping_the_durable_subscription_releases_the_publisher() {
    let b = start().await;
    let sub = durable(&b, "d/#", 16).await;
    let mut raw = client(&b, Protocol::V5, "dev").await;
    raw.send(&publish_packet("d/1", QoS::AtLeastOnce, 1, b"a"))
        .await;
    expect_silence(&mut raw, "PUBACK before the confirmation").await;
    drop(sub);
    assert_eq!(ack_of(&mut raw).await, (1, QUOTA_EXCEEDED));
    // With no durable subscription left, acknowledgements are immediate.
    raw.send(&publish_packet("d/2", QoS::AtLeastOnce, 2, b"b"))
        .await;
    assert_eq!(ack_of(&mut raw).await, (2, 0));
}

#[tokio::test]
async fn a_closed_subscription_hands_over_what_it_was_given_and_then_ends() {
    let b = start().await;
    let mut sub = durable(&b, "d/#", 16).await;
    // Routed in the same step as the durable delivery: once it has a
    // message, so has `sub`.
    let mut witness = b.handle().subscribe("d/#", 16).await.expect("sub");
    let mut raw = client(&b, Protocol::V5, "dev").await;
    raw.send(&publish_packet("d/1", QoS::AtLeastOnce, 1, b"a"))
        .await;
    raw.send(&publish_packet("d/2", QoS::AtLeastOnce, 2, b"b"))
        .await;
    for _ in 0..2 {
        tokio::time::timeout(WAIT, witness.recv())
            .await
            .expect("routed")
            .expect("open");
    }
    sub.close();
    let first = next(&mut sub).await;
    let second = next(&mut sub).await;
    assert_eq!((&*first.msg.topic, &*second.msg.topic), ("d/1", "d/2"));
    expect_silence(&mut raw, "PUBACK before the confirmation").await;
    first.confirm.ok();
    second.confirm.ok();
    assert_eq!(ack_of(&mut raw).await, (1, 0));
    assert_eq!(ack_of(&mut raw).await, (2, 0));
    // Then the end, once the router took the unsubscribe; later publishes
    // are not held for it.
    assert!(
        tokio::time::timeout(WAIT, sub.recv())
            .await
            .expect("the subscription never ended")
            .is_none()
    );
    raw.send(&publish_packet("d/3", QoS::AtLeastOnce, 3, b"c"))
        .await;
    assert_eq!(ack_of(&mut raw).await, (3, 0));
}

#[tokio::test]
async fn qos0_non_matching_and_local_publishes_are_not_held() {
    let b = start().await;
    let mut sub = durable(&b, "d/#", 16).await;
    let mut raw = client(&b, Protocol::V5, "dev").await;
    // Not matching: acknowledged without any confirmation.
    raw.send(&publish_packet("elsewhere", QoS::AtLeastOnce, 1, b"a"))
        .await;
    assert_eq!(ack_of(&mut raw).await, (1, 0));
    // QoS 0 and in-process publishes arrive with nobody waiting.
    raw.send(&publish_packet("d/0", QoS::AtMostOnce, 0, b"q0"))
        .await;
    let m = next(&mut sub).await;
    assert_eq!(&*m.msg.topic, "d/0");
    assert!(!m.confirm.is_awaited());
    b.handle()
        .publish(verge_broker::Message::local(
            "d/local",
            "l",
            QoS::AtLeastOnce,
            false,
        ))
        .await
        .expect("publish");
    let m = next(&mut sub).await;
    assert_eq!(&*m.msg.topic, "d/local");
    assert!(!m.confirm.is_awaited());
    drop(m);
    assert_eq!(counter(&b.stats().durable_refused), 0);
}

#[tokio::test]
async fn qos2_pubrec_waits_for_the_durable_confirmation() {
    let b = start().await;
    let mut sub = durable(&b, "d/#", 16).await;
    let mut raw = client(&b, Protocol::V5, "dev").await;
    raw.send(&publish_packet("d/1", QoS::ExactlyOnce, 7, b"a"))
        .await;
    let m = next(&mut sub).await;
    expect_silence(&mut raw, "PUBREC before the confirmation").await;
    m.confirm.ok();
    assert_eq!(ack_of(&mut raw).await, (7, 0));
    raw.send(&Packet::PubRel(ack(7))).await;
    match raw.recv().await {
        Packet::PubComp(c) => assert_eq!((c.packet_id, c.reason_code), (7, 0)),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
}

#[tokio::test]
async fn failed_qos2_is_refused_and_routed_again_when_resent() {
    let b = start().await;
    let mut sub = durable(&b, "d/#", 16).await;
    let mut raw = client(&b, Protocol::V5, "dev").await;
    raw.send(&publish_packet("d/1", QoS::ExactlyOnce, 7, b"a"))
        .await;
    next(&mut sub).await.confirm.fail();
    assert_eq!(ack_of(&mut raw).await, (7, QUOTA_EXCEEDED));
    // The packet id is free again: the same id is a new message, routed.
    raw.send(&publish_packet("d/1", QoS::ExactlyOnce, 7, b"a"))
        .await;
    next(&mut sub).await.confirm.ok();
    assert_eq!(ack_of(&mut raw).await, (7, 0));
}

#[tokio::test]
async fn held_acks_are_bounded_by_max_inflight_and_reading_resumes() {
    let b = start_with(|c| c.max_inflight = 2).await;
    let mut sub = durable(&b, "d/#", 16).await;
    let mut raw = client(&b, Protocol::V5, "dev").await;
    for id in 1..=4u16 {
        raw.send(&publish_packet("d/x", QoS::AtLeastOnce, id, b"p"))
            .await;
    }
    let first = next(&mut sub).await;
    let second = next(&mut sub).await;
    // Two acknowledgements held: the rest is not read yet.
    assert!(
        tokio::time::timeout(QUIET, sub.recv()).await.is_err(),
        "a third publish was read past the bound"
    );
    first.confirm.ok();
    second.confirm.ok();
    assert_eq!(ack_of(&mut raw).await, (1, 0));
    assert_eq!(ack_of(&mut raw).await, (2, 0));
    for id in 3..=4u16 {
        let m = next(&mut sub).await;
        m.confirm.ok();
        assert_eq!(ack_of(&mut raw).await, (id, 0));
    }
}

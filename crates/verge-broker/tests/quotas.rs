//! Quotas: subscriptions per session (`max_subscriptions`) and persistent
//! sessions held (`max_persistent_sessions`), on 5.0 and 3.1.1.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use rumqttc::QoS as Q3;
use verge_mqtt::{QoS, reason};

/// A SUBSCRIBE packet for several filters, all at QoS 1.
fn subscribe_many(packet_id: u16, filters: &[&str]) -> Packet {
    Packet::Subscribe(verge_mqtt::Subscribe {
        packet_id,
        filters: filters
            .iter()
            .map(|f| verge_mqtt::SubscribeFilter {
                filter: (*f).to_owned(),
                options: verge_mqtt::SubOptions {
                    qos: QoS::AtLeastOnce,
                    ..verge_mqtt::SubOptions::default()
                },
            })
            .collect(),
        properties: verge_mqtt::Properties::default(),
    })
}

/// Send a SUBSCRIBE for `filters` and return the SUBACK codes as sent.
async fn suback<S>(raw: &mut Raw<S>, packet_id: u16, filters: &[&str]) -> Vec<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    raw.send(&subscribe_many(packet_id, filters)).await;
    match raw
        .recv_matching("SUBACK", |p| matches!(p, Packet::SubAck(_)))
        .await
    {
        Packet::SubAck(s) => {
            assert_eq!(s.packet_id, packet_id);
            s.reason_codes
        }
        _ => unreachable!(),
    }
}

/// With `max_subscriptions = 2`: a third filter is refused with `refused`,
/// the other filters of the same SUBSCRIBE are still granted, subscribing
/// again to a held filter is not a new subscription, and a slot freed by
/// UNSUBSCRIBE can be used again. A refused filter receives nothing.
async fn subscription_quota(protocol: Protocol, refused: u8) {
    let b = start_with(|c| c.max_subscriptions = 2).await;
    let mut raw = raw_tcp(b.addr, protocol).await;
    raw.handshake("many-subs").await;
    assert_eq!(suback(&mut raw, 1, &["q/a", "q/b"]).await, vec![1, 1]);
    assert_eq!(
        suback(&mut raw, 2, &["q/a", "q/c", "q/b"]).await,
        vec![1, refused, 1],
        "only the new filter beyond the quota is refused"
    );
    assert_eq!(counter(&b.stats().refused_subscriptions), 1);

    raw.send(&Packet::Unsubscribe(verge_mqtt::Unsubscribe {
        packet_id: 3,
        filters: vec!["q/b".into()],
        properties: verge_mqtt::Properties::default(),
    }))
    .await;
    raw.recv_matching("UNSUBACK", |p| matches!(p, Packet::UnsubAck(_)))
        .await;
    assert_eq!(
        suback(&mut raw, 4, &["q/c", "q/d"]).await,
        vec![1, refused],
        "the freed slot is used by the first new filter"
    );
    assert_eq!(counter(&b.stats().refused_subscriptions), 2);

    // In publish order: had q/d been subscribed, its message would come first.
    let p = connect3(b.addr, "pub", |_| {}).await;
    p.publish("q/d", Q3::AtMostOnce, false, "refused").await;
    p.publish("q/c", Q3::AtMostOnce, false, "granted").await;
    match raw.recv().await {
        Packet::Publish(m) => assert_eq!(m.topic, "q/c", "refused filter got a message"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

#[tokio::test]
async fn v5_subscription_beyond_max_subscriptions_is_quota_exceeded() {
    subscription_quota(Protocol::V5, reason::QUOTA_EXCEEDED).await;
}

#[tokio::test]
async fn v3_subscription_beyond_max_subscriptions_is_failure() {
    subscription_quota(Protocol::V311, 0x80).await;
}

/// A 5.0 CONNECT with Session Expiry Interval `expiry` and clean start
/// `clean`.
fn connect5_expiry(client_id: &str, clean: bool, expiry: u32) -> verge_mqtt::Connect {
    let mut c = connect_packet(Protocol::V5, client_id, 0);
    c.clean_start = clean;
    c.properties.session_expiry_interval = Some(expiry);
    c
}

/// Connect a raw 5.0 client; returns it with its CONNACK.
async fn raw5(
    b: &TestBroker,
    c: verge_mqtt::Connect,
) -> (Raw<tokio::net::TcpStream>, verge_mqtt::ConnAck) {
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    let ack = raw.connect(c).await;
    (raw, ack)
}

/// End a raw 5.0 connection with DISCONNECT, setting its session expiry.
async fn leave(mut raw: Raw<tokio::net::TcpStream>, expiry: u32) {
    raw.send(&Packet::Disconnect(verge_mqtt::Disconnect {
        reason_code: 0,
        properties: verge_mqtt::Properties {
            session_expiry_interval: Some(expiry),
            ..Default::default()
        },
    }))
    .await;
    assert_eq!(raw.expect_closed(WAIT).await, None);
}

#[tokio::test]
async fn v5_persistent_session_beyond_the_limit_is_quota_exceeded() {
    let b = start_with(|c| c.max_persistent_sessions = 2).await;
    let (p1, ack) = raw5(&b, connect5_expiry("p1", false, 60)).await;
    assert_eq!(ack.reason_code, 0);
    leave(p1, 60).await;
    // Connected persistent sessions count as well as offline ones.
    let (_p2, ack) = raw5(&b, connect5_expiry("p2", false, 60)).await;
    assert_eq!(ack.reason_code, 0);

    let (_, ack) = raw5(&b, connect5_expiry("p3", false, 60)).await;
    assert_eq!(ack.reason_code, reason::QUOTA_EXCEEDED, "a third one");
    assert_eq!(counter(&b.stats().refused_sessions), 1);

    // Sessions that end with their connection are not limited.
    let (_c, ack) = raw5(&b, connect5_expiry("c", true, 0)).await;
    assert_eq!(ack.reason_code, 0, "a non-persistent session");

    // A client resuming its own session is never refused, nor one
    // replacing it with a clean start.
    let (p1, ack) = raw5(&b, connect5_expiry("p1", false, 60)).await;
    assert_eq!(ack.reason_code, 0, "resume at the limit");
    assert!(ack.session_present);
    leave(p1, 60).await;
    let (p1, ack) = raw5(&b, connect5_expiry("p1", true, 60)).await;
    assert_eq!(ack.reason_code, 0, "clean start of its own session");
    assert!(!ack.session_present);

    // Ending a session frees its place.
    leave(p1, 0).await;
    eventually("p1 removed", || counter(&b.stats().sessions) == 2).await;
    let (_p3, ack) = raw5(&b, connect5_expiry("p3", false, 60)).await;
    assert_eq!(ack.reason_code, 0, "place freed by an ended session");
    assert_eq!(counter(&b.stats().refused_sessions), 1);
}

#[tokio::test]
async fn v3_persistent_session_beyond_the_limit_is_server_unavailable() {
    let b = start_with(|c| c.max_persistent_sessions = 1).await;
    let persistent = |o: &mut rumqttc::MqttOptions| {
        o.set_clean_session(false);
    };
    let keep = connect3(b.addr, "keep", persistent).await;
    keep.disconnect().await;
    eventually("offline", || counter(&b.stats().clients_connected) == 0).await;

    let code = refused3(try_connect3(b.addr, "other", persistent).await);
    assert_eq!(code, rumqttc::ConnectReturnCode::ServiceUnavailable);
    assert_eq!(counter(&b.stats().refused_sessions), 1);
    assert_eq!(counter(&b.stats().connects_refused), 1);

    let _clean = connect3(b.addr, "clean", |_| {}).await;
    let keep = connect3(b.addr, "keep", persistent).await;
    assert!(keep.connack.session_present, "resume at the limit");
    keep.disconnect().await;
    eventually("offline", || counter(&b.stats().clients_connected) == 1).await;

    // Coming back with clean session = 1 ends the persistent session.
    let _keep = connect3(b.addr, "keep", |_| {}).await;
    let other = connect3(b.addr, "other", persistent).await;
    assert!(!other.connack.session_present);
    assert_eq!(counter(&b.stats().refused_sessions), 1);
}

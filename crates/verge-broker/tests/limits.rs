//! Configured limits: connections, queued messages (slow consumer, offline
//! session), inflight window, retained store, receive maximum, publish rate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use rumqttc::QoS as Q3;
use rumqttc::v5::mqttbytes::QoS as Q5;
use verge_broker::duration::HumanDuration;
use verge_mqtt::QoS;

#[tokio::test]
async fn max_connections_refuses_the_next_client_as_busy() {
    let b = start_with(|c| c.max_connections = 2).await;
    let first = connect3(b.addr, "one", |_| {}).await;
    let _second = connect5(b.addr, "two", |_| {}).await;
    let code = refused3(try_connect3(b.addr, "three", |_| {}).await);
    assert_eq!(
        code,
        rumqttc::ConnectReturnCode::ServiceUnavailable,
        "3.1.1: server unavailable"
    );
    let code = refused5(try_connect5(b.addr, "three5", |_| {}).await);
    assert!(
        matches!(
            code,
            m5::ConnectReturnCode::ServerBusy | m5::ConnectReturnCode::ServerUnavailable
        ),
        "5.0: {code:?}"
    );
    assert_eq!(counter(&b.stats().clients_connected), 2);
    // A slot frees up when a client leaves.
    first.disconnect().await;
    eventually("slot free", || counter(&b.stats().clients_connected) == 1).await;
    let _third = connect3(b.addr, "three", |_| {}).await;
}

/// A subscriber that never acknowledges: its window fills, then its queues,
/// then the broker drops and counts. Nothing is lost silently and nothing is
/// reordered; a healthy subscriber of the same topic gets everything.
#[tokio::test]
async fn slow_consumer_drops_are_counted() {
    const N: usize = 50;
    let b = start_with(|c| {
        c.max_queued_messages = 5;
        c.max_inflight = 2;
        c.slow_consumer_wait = HumanDuration(Duration::from_millis(100));
    })
    .await;
    let mut slow = raw_tcp(b.addr, Protocol::V311).await;
    slow.handshake("slow").await;
    assert_eq!(slow.subscribe(1, "load/t", QoS::AtLeastOnce).await, vec![1]);
    let mut healthy = connect3(b.addr, "healthy", |_| {}).await;
    healthy.subscribe("load/t", Q3::AtLeastOnce).await;

    let mut publisher = connect3(b.addr, "pub", |_| {}).await;
    for i in 0..N {
        publisher
            .publish_acked("load/t", Q3::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    for i in 0..N {
        assert_eq!(
            text(&healthy.recv().await.payload),
            format!("{i}"),
            "healthy subscriber lost a message"
        );
    }
    let stats = b.stats();
    eventually("drops counted", || counter(&stats.dropped_queue_full) > 0).await;

    // Now drain the slow one, acknowledging everything.
    let mut got = Vec::new();
    loop {
        match slow.read(Duration::from_millis(700)).await {
            Read::Packet(Packet::Publish(p)) => {
                got.push(
                    String::from_utf8(p.payload.to_vec())
                        .unwrap()
                        .parse::<usize>()
                        .unwrap(),
                );
                slow.send(&Packet::PubAck(ack(p.packet_id))).await;
            }
            Read::Timeout => break,
            other => panic!("slow subscriber: {other:?}"),
        }
    }
    let dropped = counter(&stats.dropped_queue_full) as usize;
    assert!(
        got.len() >= 2,
        "at least the inflight window arrives: {got:?}"
    );
    assert!(got.windows(2).all(|w| w[0] < w[1]), "reordered: {got:?}");
    assert_eq!(
        got.len() + dropped,
        N,
        "every message is delivered or counted as dropped (got {got:?}, dropped {dropped})"
    );
}

#[tokio::test]
async fn offline_queue_limit_keeps_oldest_and_counts_the_rest() {
    let b = start_with(|c| c.max_queued_messages = 3).await;
    let persistent = |o: &mut rumqttc::MqttOptions| {
        o.set_clean_session(false);
    };
    let mut p = connect3(b.addr, "away", persistent).await;
    p.subscribe("q/t", Q3::AtLeastOnce).await;
    p.disconnect().await;
    eventually("offline", || counter(&b.stats().clients_connected) == 0).await;
    let mut publisher = connect3(b.addr, "pub", |_| {}).await;
    for i in 0..10 {
        publisher
            .publish_acked("q/t", Q3::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    assert_eq!(counter(&b.stats().dropped_queue_full), 7);
    let mut p = connect3(b.addr, "away", persistent).await;
    assert!(p.connack.session_present);
    for i in 0..3 {
        assert_eq!(text(&p.recv().await.payload), format!("{i}"));
    }
    publisher
        .publish_acked("q/t", Q3::AtLeastOnce, false, "live")
        .await;
    assert_eq!(
        text(&p.recv().await.payload),
        "live",
        "more than max_queued_messages were kept"
    );
}

#[tokio::test]
async fn inflight_window_to_a_client_is_max_inflight() {
    let b = start_with(|c| c.max_inflight = 3).await;
    let mut raw = raw_tcp(b.addr, Protocol::V311).await;
    raw.handshake("window").await;
    raw.subscribe(1, "win/t", QoS::AtLeastOnce).await;
    let mut publisher = connect3(b.addr, "pub", |_| {}).await;
    for i in 0..6 {
        publisher
            .publish_acked("win/t", Q3::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    let mut ids = Vec::new();
    for i in 0..3 {
        match raw.recv().await {
            Packet::Publish(p) => {
                assert_eq!(&p.payload[..], format!("{i}").as_bytes());
                ids.push(p.packet_id);
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    assert!(
        matches!(raw.read(Duration::from_millis(400)).await, Read::Timeout),
        "more than max_inflight unacknowledged messages sent"
    );
    raw.send(&Packet::PubAck(ack(ids[0]))).await;
    match raw.recv().await {
        Packet::Publish(p) => assert_eq!(&p.payload[..], b"3"),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
    assert!(matches!(
        raw.read(Duration::from_millis(300)).await,
        Read::Timeout
    ));
}

#[tokio::test]
async fn max_retained_refuses_new_topics_but_allows_replacing() {
    let b = start_with(|c| c.max_retained = 2).await;
    let mut p = connect5(b.addr, "p", |_| {}).await;
    p.publish_acked("ret/a", Q5::AtLeastOnce, true, "a1").await;
    p.publish_acked("ret/b", Q5::AtLeastOnce, true, "b1").await;
    p.publish_acked("ret/c", Q5::AtLeastOnce, true, "c1").await;
    p.publish_acked("ret/a", Q5::AtLeastOnce, true, "a2").await;
    eventually("store full", || counter(&b.stats().retained) == 2).await;
    assert_eq!(counter(&b.stats().dropped_retained_full), 1);
    let mut s = connect5(b.addr, "s", |_| {}).await;
    s.subscribe("ret/+", Q5::AtLeastOnce).await;
    let mut got = vec![text(&s.recv().await.payload), text(&s.recv().await.payload)];
    got.sort();
    assert_eq!(got, ["a2", "b1"]);
    s.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn exceeding_receive_maximum_with_qos2_is_disconnect_0x93() {
    let b = start_with(|c| c.max_inflight = 2).await;
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    let ack = raw.connect(connect_packet(Protocol::V5, "greedy", 0)).await;
    assert_eq!(
        ack.properties.receive_maximum,
        Some(2),
        "advertised Receive Maximum"
    );
    for id in 1..=2u16 {
        raw.send(&publish_packet("rm/t", QoS::ExactlyOnce, id, b"x"))
            .await;
        match raw.recv().await {
            Packet::PubRec(a) => assert_eq!(a.packet_id, id),
            other => panic!("expected PUBREC, got {other:?}"),
        }
    }
    raw.send(&publish_packet("rm/t", QoS::ExactlyOnce, 3, b"x"))
        .await;
    assert_eq!(
        raw.expect_closed(WAIT).await,
        Some(verge_mqtt::reason::RECEIVE_MAXIMUM_EXCEEDED)
    );
}

/// Regression (issue 16): a client still writing when the broker closed the
/// connection for exceeding the Receive Maximum got a TCP reset for its
/// next write, and paho reported "connection lost" instead of the DISCONNECT
/// 0x93 it had been sent. The broker now reads (and discards) the client's
/// input for a while after the DISCONNECT, so the client's writes succeed
/// and the stream ends with the DISCONNECT and a clean close, not a reset.
#[tokio::test]
async fn regression_receive_maximum_disconnect_is_not_lost_to_a_reset() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let b = start_with(|c| c.max_inflight = 2).await;
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    raw.connect(connect_packet(Protocol::V5, "keeps-writing", 0))
        .await;
    let mut burst = bytes::BytesMut::new();
    for id in 1..=3u16 {
        let p = publish_packet("rm/t", QoS::ExactlyOnce, id, b"x");
        verge_mqtt::encode(&p, Protocol::V5, &mut burst).expect("encode");
    }
    raw.stream.write_all(&burst).await.expect("burst written");
    // Keep writing, as a client with more to send does, for a while after
    // the broker has decided to close.
    let mut later = bytes::BytesMut::new();
    let p = publish_packet("rm/t", QoS::ExactlyOnce, 9, b"x");
    verge_mqtt::encode(&p, Protocol::V5, &mut later).expect("encode");
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Err(e) = raw.stream.write_all(&later).await {
            panic!("write {i} after the limit failed ({e}): the broker reset the connection");
        }
    }
    raw.stream.shutdown().await.expect("shutdown");
    let mut got = Vec::new();
    let read = tokio::time::timeout(WAIT, raw.stream.read_to_end(&mut got))
        .await
        .expect("the broker closed within WAIT");
    assert!(
        read.is_ok(),
        "the stream ended with {read:?}, not a clean close"
    );
    let mut buf = bytes::BytesMut::from(&got[..]);
    let mut last = None;
    while let Some(p) = verge_mqtt::decode(&mut buf, Protocol::V5, usize::MAX).expect("decode") {
        last = Some(p);
    }
    match last {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, verge_mqtt::reason::RECEIVE_MAXIMUM_EXCEEDED);
            // paho-mqtt reads the reason code only with more bytes behind it
            assert_eq!(
                d.properties.reason_string.as_deref(),
                Some("receive maximum exceeded")
            );
        }
        other => panic!("expected DISCONNECT 0x93 last, got {other:?}"),
    }
}

/// `max_publish_rate` slows a publisher down without losing anything. Only a
/// lower bound on the time is asserted: the rate cannot be beaten.
#[tokio::test]
async fn publish_rate_limit_delays_but_does_not_drop() {
    let b = start_with(|c| c.max_publish_rate = 20).await;
    let mut s = connect3(b.addr, "s", |_| {}).await;
    s.subscribe("rate/t", Q3::AtMostOnce).await;
    let p = connect3(b.addr, "p", |_| {}).await;
    let started = tokio::time::Instant::now();
    for i in 0..40 {
        p.publish("rate/t", Q3::AtMostOnce, false, format!("{i}"))
            .await;
    }
    for i in 0..40 {
        assert_eq!(text(&s.recv().await.payload), format!("{i}"));
    }
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "40 messages at 20/s (burst 20) took only {:?}",
        started.elapsed()
    );
}

/// At `max_connections`, a client whose old connection is still counted
/// (half-open after a network change, common for devices behind NAT) can
/// still reconnect: taking over its own session does not add a connection.
#[tokio::test]
async fn takeover_is_allowed_at_max_connections() {
    let b = start_with(|c| c.max_connections = 2).await;
    let _other = connect3(b.addr, "other", |_| {}).await;
    let mut old = connect3(b.addr, "device", |_| {}).await;
    let again = try_connect3(b.addr, "device", |_| {}).await;
    match again {
        Ok(_) => {}
        Err(e) => {
            panic!("reconnect of an already-connected client refused at max_connections: {e:?}")
        }
    }
    assert!(
        old.closed_within(WAIT).await.is_some(),
        "old connection taken over"
    );
    eventually("still two", || counter(&b.stats().clients_connected) == 2).await;
}

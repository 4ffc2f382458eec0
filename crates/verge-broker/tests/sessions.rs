//! Sessions: takeover, persistent sessions (3.1.1 clean session = 0, 5.0
//! clean start = 0 with session expiry), clean start, session expiry,
//! closing to clients and broker shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use rumqttc::QoS as Q3;
use rumqttc::v5::mqttbytes::QoS as Q5;

#[tokio::test]
async fn v3_second_client_with_same_id_takes_over() {
    let b = start().await;
    let mut first = connect3(b.addr, "same", |_| {}).await;
    first.subscribe("take/1", Q3::AtLeastOnce).await;
    let mut second = connect3(b.addr, "same", |_| {}).await;
    assert!(
        first.closed_within(WAIT).await.is_some(),
        "first connection not closed on takeover"
    );
    second.subscribe("take/2", Q3::AtLeastOnce).await;
    second
        .publish_acked("take/2", Q3::AtLeastOnce, false, "mine")
        .await;
    assert_eq!(text(&second.recv().await.payload), "mine");
    eventually("one client connected", || {
        counter(&b.stats().clients_connected) == 1
    })
    .await;
}

/// rumqttc 0.25 cannot decode a DISCONNECT whose remaining length is 1
/// (reason code, property length omitted — valid per MQTT 5.0 §3.14.2.2.1):
/// its property parser asks for more bytes, so it reports the close as
/// `ConnectionAborted`. The rumqttc client therefore only checks the close;
/// the reason code is checked on the wire by the raw test below.
#[tokio::test]
async fn v5_takeover_closes_first_rumqttc_client() {
    let b = start().await;
    let mut first = connect5(b.addr, "same", |_| {}).await;
    let mut second = connect5(b.addr, "same", |_| {}).await;
    let why = first
        .closed_within(WAIT)
        .await
        .expect("first connection not closed on takeover");
    if let Some(code) = server_disconnect_reason(&why) {
        assert_eq!(code, m5::DisconnectReasonCode::SessionTakenOver);
    }
    second.subscribe("take/x", Q5::AtMostOnce).await;
    second.publish("take/x", Q5::AtMostOnce, false, "ok").await;
    assert_eq!(text(&second.recv().await.payload), "ok");
}

#[tokio::test]
async fn v5_takeover_sends_disconnect_session_taken_over() {
    let b = start().await;
    let mut first = raw_tcp(b.addr, Protocol::V5).await;
    first.handshake("same").await;
    let mut second = connect5(b.addr, "same", |_| {}).await;
    assert_eq!(
        first.expect_closed(WAIT).await,
        Some(verge_mqtt::reason::SESSION_TAKEN_OVER),
        "DISCONNECT 0x8E before the close"
    );
    second.subscribe("take/x", Q5::AtMostOnce).await;
}

/// A taken-over persistent session keeps its subscriptions and queued
/// messages for the new connection.
#[tokio::test]
async fn v5_takeover_of_persistent_session_keeps_subscriptions() {
    let b = start().await;
    let opts = |o: &mut rumqttc::v5::MqttOptions| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(60));
    };
    let mut first = connect5(b.addr, "keep", opts).await;
    assert!(!first.connack.session_present);
    first.subscribe("keep/t", Q5::AtLeastOnce).await;
    let mut second = connect5(b.addr, "keep", opts).await;
    assert!(
        second.connack.session_present,
        "takeover of a persistent session"
    );
    assert!(first.closed_within(WAIT).await.is_some());
    let mut publisher = connect5(b.addr, "pub", |_| {}).await;
    publisher
        .publish_acked("keep/t", Q5::AtLeastOnce, false, "still")
        .await;
    assert_eq!(text(&second.recv().await.payload), "still");
}

/// 3.1.1 §3.1.2.4: a Clean Session = 1 session lasts as long as its network
/// connection. When a clean-session connection is taken over by a
/// Clean Session = 0 CONNECT, the old session has ended: CONNACK must say
/// session present = 0 and none of its subscriptions may survive.
#[tokio::test]
async fn v3_takeover_of_clean_session_does_not_resume_it() {
    let b = start().await;
    let mut first = connect3(b.addr, "twice", |_| {}).await; // clean session
    first.subscribe("old/sub", Q3::AtLeastOnce).await;
    let mut second = connect3(b.addr, "twice", |o| {
        o.set_clean_session(false);
    })
    .await;
    assert!(first.closed_within(WAIT).await.is_some());
    assert!(
        !second.connack.session_present,
        "a clean session was resumed after takeover (session present = 1)"
    );
    second.subscribe("new/sub", Q3::AtLeastOnce).await;
    let mut publisher = connect3(b.addr, "pub", |_| {}).await;
    publisher
        .publish_acked("old/sub", Q3::AtLeastOnce, false, "leak")
        .await;
    publisher
        .publish_acked("new/sub", Q3::AtLeastOnce, false, "sentinel")
        .await;
    assert_eq!(
        text(&second.recv().await.payload),
        "sentinel",
        "subscription of the ended session survived"
    );
}

#[tokio::test]
async fn v3_persistent_session_delivers_offline_qos1_on_reconnect() {
    let b = start().await;
    let persistent = |o: &mut rumqttc::MqttOptions| {
        o.set_clean_session(false);
    };
    let mut p = connect3(b.addr, "persist", persistent).await;
    assert!(!p.connack.session_present, "fresh session");
    p.subscribe("ps/t", Q3::AtLeastOnce).await;
    p.disconnect().await;
    eventually("offline", || counter(&b.stats().clients_connected) == 0).await;

    let mut publisher = connect3(b.addr, "pub", |_| {}).await;
    for i in 0..3 {
        publisher
            .publish_acked("ps/t", Q3::AtLeastOnce, false, format!("offline-{i}"))
            .await;
    }

    let mut p = connect3(b.addr, "persist", persistent).await;
    assert!(p.connack.session_present, "session_present after reconnect");
    for i in 0..3 {
        let m = p.recv().await;
        assert_eq!(text(&m.payload), format!("offline-{i}"));
        assert_eq!(m.qos, Q3::AtLeastOnce);
    }
    // The subscription itself survived: live messages arrive without re-subscribing.
    publisher
        .publish_acked("ps/t", Q3::AtLeastOnce, false, "live")
        .await;
    assert_eq!(text(&p.recv().await.payload), "live");
    p.disconnect().await;
    eventually("offline again", || {
        counter(&b.stats().clients_connected) == 1
    })
    .await;

    // Clean session discards it.
    publisher
        .publish_acked("ps/t", Q3::AtLeastOnce, false, "discarded")
        .await;
    let mut p = connect3(b.addr, "persist", |_| {}).await;
    assert!(!p.connack.session_present, "clean session must not resume");
    p.subscribe("ps/other", Q3::AtLeastOnce).await;
    publisher
        .publish_acked("ps/t", Q3::AtLeastOnce, false, "unsubscribed")
        .await;
    publisher
        .publish_acked("ps/other", Q3::AtLeastOnce, false, "sentinel")
        .await;
    assert_eq!(
        text(&p.recv().await.payload),
        "sentinel",
        "old session's messages or subscription leaked"
    );
}

#[tokio::test]
async fn v5_persistent_session_delivers_offline_qos1_on_reconnect() {
    let b = start().await;
    let persistent = |o: &mut rumqttc::v5::MqttOptions| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(60));
    };
    let mut p = connect5(b.addr, "persist", persistent).await;
    assert!(!p.connack.session_present);
    p.subscribe("ps/t", Q5::AtLeastOnce).await;
    p.disconnect().await;
    eventually("offline", || counter(&b.stats().clients_connected) == 0).await;

    let mut publisher = connect5(b.addr, "pub", |_| {}).await;
    for i in 0..3 {
        publisher
            .publish_acked("ps/t", Q5::AtLeastOnce, false, format!("offline-{i}"))
            .await;
    }
    let mut p = connect5(b.addr, "persist", persistent).await;
    assert!(p.connack.session_present, "session_present after reconnect");
    for i in 0..3 {
        let m = p.recv().await;
        assert_eq!(text(&m.payload), format!("offline-{i}"));
        assert_eq!(m.qos, Q5::AtLeastOnce);
    }
    publisher
        .publish_acked("ps/t", Q5::AtLeastOnce, false, "live")
        .await;
    assert_eq!(text(&p.recv().await.payload), "live");
}

#[tokio::test]
async fn v5_clean_start_discards_the_session() {
    let b = start().await;
    let mut p = connect5(b.addr, "c", |o| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(60));
    })
    .await;
    p.subscribe("cs/t", Q5::AtLeastOnce).await;
    p.disconnect().await;
    eventually("offline", || counter(&b.stats().clients_connected) == 0).await;
    let mut publisher = connect5(b.addr, "pub", |_| {}).await;
    publisher
        .publish_acked("cs/t", Q5::AtLeastOnce, false, "queued")
        .await;

    let mut p = connect5(b.addr, "c", |o| {
        o.set_clean_start(true);
        o.set_session_expiry_interval(Some(60));
    })
    .await;
    assert!(!p.connack.session_present);
    p.subscribe("cs/sentinel", Q5::AtLeastOnce).await;
    publisher
        .publish_acked("cs/t", Q5::AtLeastOnce, false, "old-sub")
        .await;
    publisher
        .publish_acked("cs/sentinel", Q5::AtLeastOnce, false, "sentinel")
        .await;
    assert_eq!(
        text(&p.recv().await.payload),
        "sentinel",
        "clean start kept queued messages or subscriptions"
    );
}

#[tokio::test]
async fn v5_session_expires_after_its_interval() {
    let b = start().await;
    let opts = |o: &mut rumqttc::v5::MqttOptions| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(1));
    };
    let mut p = connect5(b.addr, "short", opts).await;
    p.subscribe("exp/t", Q5::AtLeastOnce).await;
    p.disconnect().await;
    eventually("offline", || counter(&b.stats().clients_connected) == 0).await;
    let mut publisher = connect5(b.addr, "pub", |_| {}).await;
    publisher
        .publish_acked("exp/t", Q5::AtLeastOnce, false, "too-late")
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    eventually("session removed", || counter(&b.stats().sessions) == 1).await;

    let mut p = connect5(b.addr, "short", opts).await;
    assert!(
        !p.connack.session_present,
        "session outlived its 1 s expiry"
    );
    p.subscribe("exp/sentinel", Q5::AtLeastOnce).await;
    publisher
        .publish_acked("exp/sentinel", Q5::AtLeastOnce, false, "sentinel")
        .await;
    assert_eq!(
        text(&p.recv().await.payload),
        "sentinel",
        "expired session's queue delivered"
    );
}

/// 3.1.1 has no expiry: a clean-session=0 session survives a pause.
#[tokio::test]
async fn v3_persistent_session_survives_short_absence() {
    let b = start().await;
    let persistent = |o: &mut rumqttc::MqttOptions| {
        o.set_clean_session(false);
    };
    let p = connect3(b.addr, "stay", persistent).await;
    p.kill().await; // abnormal end keeps the session too
    eventually("offline", || counter(&b.stats().clients_connected) == 0).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let p = connect3(b.addr, "stay", persistent).await;
    assert!(p.connack.session_present);
}

#[tokio::test]
async fn shutdown_disconnects_clients_with_server_shutting_down() {
    let b = start().await;
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    raw.handshake("raw5").await;
    let mut c = connect5(b.addr, "c", |_| {}).await;
    let mut c3 = connect3(b.addr, "c3", |_| {}).await;
    tokio::time::timeout(WAIT, b.broker.shutdown())
        .await
        .expect("shutdown hung");
    assert_eq!(
        raw.expect_closed(WAIT).await,
        Some(verge_mqtt::reason::SERVER_SHUTTING_DOWN),
        "5.0 DISCONNECT 0x8B on shutdown"
    );
    let why = c
        .closed_within(WAIT)
        .await
        .expect("5.0 client not disconnected on shutdown");
    if let Some(code) = server_disconnect_reason(&why) {
        assert_eq!(code, m5::DisconnectReasonCode::ServerShuttingDown);
    }
    assert!(
        c3.closed_within(WAIT).await.is_some(),
        "3.1.1 client not disconnected"
    );
}

/// Unacknowledged outgoing QoS 1 messages are resent with DUP after a
/// persistent session resumes, and a QoS 2 message that got its PUBREC but
/// not its PUBCOMP continues with PUBREL (3.1.1 §4.4, 5.0 §4.4).
#[tokio::test]
async fn unacknowledged_deliveries_resume_after_reconnect() {
    let b = start().await;
    let persistent = || {
        let mut c = connect_packet(Protocol::V311, "resume", 0);
        c.clean_start = false;
        c
    };
    let mut raw = raw_tcp(b.addr, Protocol::V311).await;
    assert_eq!(raw.connect(persistent()).await.reason_code, 0);
    raw.subscribe(1, "rs/q1", verge_mqtt::QoS::AtLeastOnce)
        .await;
    raw.subscribe(2, "rs/q2", verge_mqtt::QoS::ExactlyOnce)
        .await;
    let mut publisher = connect3(b.addr, "pub", |_| {}).await;
    publisher
        .publish_acked("rs/q1", Q3::AtLeastOnce, false, "m1")
        .await;
    publisher
        .publish_acked("rs/q2", Q3::ExactlyOnce, false, "m2")
        .await;

    let Packet::Publish(m1) = raw.recv().await else {
        panic!("expected m1")
    };
    let Packet::Publish(m2) = raw.recv().await else {
        panic!("expected m2")
    };
    assert_eq!(
        (&m1.payload[..], m1.qos),
        (&b"m1"[..], verge_mqtt::QoS::AtLeastOnce)
    );
    assert_eq!(
        (&m2.payload[..], m2.qos),
        (&b"m2"[..], verge_mqtt::QoS::ExactlyOnce)
    );
    raw.send(&Packet::PubRec(ack(m2.packet_id))).await; // m1 never acknowledged
    match raw.recv().await {
        Packet::PubRel(r) => assert_eq!(r.packet_id, m2.packet_id),
        other => panic!("expected PUBREL, got {other:?}"),
    }
    drop(raw); // gone without PUBACK / PUBCOMP
    eventually("offline", || counter(&b.stats().clients_connected) == 1).await;

    let mut raw = raw_tcp(b.addr, Protocol::V311).await;
    let connack = raw.connect(persistent()).await;
    assert!(connack.session_present);
    match raw.recv().await {
        Packet::Publish(p) => {
            assert_eq!(&p.payload[..], b"m1");
            assert!(p.dup, "resent PUBLISH must carry DUP");
            assert_eq!(p.packet_id, m1.packet_id, "same packet identifier");
            raw.send(&Packet::PubAck(ack(p.packet_id))).await;
        }
        other => panic!("expected m1 again, got {other:?}"),
    }
    match raw.recv().await {
        Packet::PubRel(r) => {
            assert_eq!(r.packet_id, m2.packet_id);
            raw.send(&Packet::PubComp(ack(r.packet_id))).await;
        }
        other => panic!("expected PUBREL for m2 (not the PUBLISH again), got {other:?}"),
    }
    assert!(
        matches!(raw.read(QUIET).await, Read::Timeout),
        "something else was resent"
    );
}

/// Exactly once across a reconnect: an incoming QoS 2 PUBLISH that was
/// PUBREC'd before the connection dropped is not routed again when the
/// client resends it in the resumed session.
#[tokio::test]
async fn incoming_qos2_state_survives_reconnect() {
    let b = start().await;
    let mut sub = connect3(b.addr, "sub", |_| {}).await;
    sub.subscribe("in/q2", Q3::ExactlyOnce).await;
    let persistent = || {
        let mut c = connect_packet(Protocol::V5, "sender", 0);
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(60);
        c
    };
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    assert_eq!(raw.connect(persistent()).await.reason_code, 0);
    raw.send(&publish_packet(
        "in/q2",
        verge_mqtt::QoS::ExactlyOnce,
        5,
        b"once",
    ))
    .await;
    assert!(matches!(raw.recv().await, Packet::PubRec(a) if a.packet_id == 5));
    drop(raw);
    eventually("offline", || counter(&b.stats().clients_connected) == 1).await;

    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    assert!(raw.connect(persistent()).await.session_present);
    let Packet::Publish(mut again) =
        publish_packet("in/q2", verge_mqtt::QoS::ExactlyOnce, 5, b"once")
    else {
        unreachable!()
    };
    again.dup = true;
    raw.send(&Packet::Publish(again)).await;
    assert!(matches!(raw.recv().await, Packet::PubRec(a) if a.packet_id == 5));
    raw.send(&Packet::PubRel(ack(5))).await;
    match raw.recv().await {
        Packet::PubComp(c) => assert_eq!((c.packet_id, c.reason_code), (5, 0)),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    raw.send(&publish_packet(
        "in/q2",
        verge_mqtt::QoS::AtMostOnce,
        0,
        b"end",
    ))
    .await;
    assert_eq!(text(&sub.recv().await.payload), "once");
    assert_eq!(
        text(&sub.recv().await.payload),
        "end",
        "QoS 2 message routed twice across a reconnect"
    );
}

fn disconnect_with_expiry(secs: u32) -> Packet {
    Packet::Disconnect(verge_mqtt::Disconnect {
        reason_code: 0,
        properties: verge_mqtt::Properties {
            session_expiry_interval: Some(secs),
            ..Default::default()
        },
    })
}

/// 5.0 §3.14.2.2.2: DISCONNECT may change the session expiry, but not from
/// 0 (set in CONNECT) to non-zero — that is a protocol error.
#[tokio::test]
async fn v5_disconnect_cannot_set_expiry_after_zero() {
    let b = start().await;
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    raw.handshake("zero").await; // no session expiry = 0
    raw.send(&disconnect_with_expiry(60)).await;
    assert_eq!(
        raw.expect_closed(WAIT).await,
        Some(verge_mqtt::reason::PROTOCOL_ERROR)
    );
    eventually("offline", || counter(&b.stats().clients_connected) == 0).await;
    let c = connect5(b.addr, "zero", |o| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(60));
    })
    .await;
    assert!(
        !c.connack.session_present,
        "session with expiry 0 outlived its connection"
    );
}

/// DISCONNECT with session expiry 0 ends a persistent session at once.
#[tokio::test]
async fn v5_disconnect_can_shorten_expiry_to_zero() {
    let b = start().await;
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    let mut c = connect_packet(Protocol::V5, "short", 0);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(300);
    assert_eq!(raw.connect(c).await.reason_code, 0);
    raw.subscribe(1, "sx/t", verge_mqtt::QoS::AtLeastOnce).await;
    raw.send(&disconnect_with_expiry(0)).await;
    assert_eq!(raw.expect_closed(WAIT).await, None);
    eventually("offline", || counter(&b.stats().clients_connected) == 0).await;
    let c = connect5(b.addr, "short", |o| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(60));
    })
    .await;
    assert!(
        !c.connack.session_present,
        "DISCONNECT session expiry 0 did not end the session"
    );
}

/// A process stopping closes the broker to its clients before it stops
/// the in-process consumers of what they publish: the clients are told
/// to go, no new one gets in, and once `close_clients` returns their
/// connections have ended while in-process publish and subscribe go on.
#[tokio::test]
async fn close_clients_ends_connections_and_keeps_the_in_process_api() {
    let b = start().await;
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    raw.handshake("raw5").await;
    let mut c3 = connect3(b.addr, "c3", |_| {}).await;
    let mut local = b.handle().subscribe("local/#", 16).await.expect("sub");
    tokio::time::timeout(WAIT, b.broker.close_clients())
        .await
        .expect("close_clients hung");
    assert!(
        b.handle().sessions().await.expect("sessions").is_empty(),
        "no connection left once it returns"
    );
    assert_eq!(
        raw.expect_closed(WAIT).await,
        Some(verge_mqtt::reason::SERVER_SHUTTING_DOWN),
        "5.0 DISCONNECT 0x8B"
    );
    assert!(
        c3.closed_within(WAIT).await.is_some(),
        "3.1.1 client not disconnected"
    );
    assert!(
        tokio::net::TcpStream::connect(b.addr).await.is_err(),
        "the listener is closed"
    );
    b.handle()
        .publish(verge_broker::Message::local(
            "local/1",
            b"x".to_vec(),
            verge_mqtt::QoS::AtLeastOnce,
            false,
        ))
        .await
        .expect("in-process publish");
    let m = tokio::time::timeout(WAIT, local.recv())
        .await
        .expect("in-process delivery")
        .expect("open");
    assert_eq!(&*m.topic, "local/1");
    tokio::time::timeout(WAIT, b.broker.shutdown())
        .await
        .expect("shutdown hung");
}

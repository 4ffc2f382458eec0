//! MQTT 5.0 features with the rumqttc v5 client (raw client where rumqttc
//! cannot express the case): topic aliases both ways, message expiry,
//! property pass-through, no local, maximum packet size, receive maximum,
//! CONNACK properties.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use rumqttc::v5::mqttbytes::QoS as Q5;

fn props() -> m5::PublishProperties {
    m5::PublishProperties::default()
}

#[tokio::test]
async fn topic_alias_from_client_is_resolved() {
    let b = start().await;
    let mut sub = connect5(b.addr, "sub", |_| {}).await;
    sub.subscribe("alias/#", Q5::AtLeastOnce).await;
    let mut publisher = connect5(b.addr, "pub", |_| {}).await;
    let with_alias = |a| m5::PublishProperties {
        topic_alias: Some(a),
        ..props()
    };
    publisher
        .publish_props("alias/t", Q5::AtLeastOnce, false, "1", with_alias(1))
        .await;
    publisher.wait_pub_ack(Q5::AtLeastOnce).await;
    publisher
        .publish_props("", Q5::AtLeastOnce, false, "2", with_alias(1))
        .await;
    publisher.wait_pub_ack(Q5::AtLeastOnce).await;
    // Re-map alias 1 to another topic.
    publisher
        .publish_props("alias/u", Q5::AtLeastOnce, false, "3", with_alias(1))
        .await;
    publisher.wait_pub_ack(Q5::AtLeastOnce).await;
    publisher
        .publish_props("", Q5::AtLeastOnce, false, "4", with_alias(1))
        .await;
    publisher.wait_pub_ack(Q5::AtLeastOnce).await;
    let mut got = Vec::new();
    for _ in 0..4 {
        let m = sub.recv().await;
        assert!(
            m.properties.as_ref().and_then(|p| p.topic_alias).is_none(),
            "subscriber allowed no aliases but got one"
        );
        got.push((text(&m.topic), text(&m.payload)));
    }
    let want: Vec<(String, String)> = [
        ("alias/t", "1"),
        ("alias/t", "2"),
        ("alias/u", "3"),
        ("alias/u", "4"),
    ]
    .iter()
    .map(|(t, p)| (t.to_string(), p.to_string()))
    .collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn topic_alias_above_maximum_is_a_disconnect_0x94() {
    let b = start_with(|c| c.max_topic_alias = 2).await;
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    let mut c = connect_packet(Protocol::V5, "raw", 0);
    c.properties.topic_alias_maximum = None;
    let ack = raw.connect(c).await;
    assert_eq!(
        ack.properties.topic_alias_maximum,
        Some(2),
        "advertised Topic Alias Maximum"
    );
    let Packet::Publish(mut p) = publish_packet("x/y", verge_mqtt::QoS::AtMostOnce, 0, b"p") else {
        unreachable!()
    };
    p.properties.topic_alias = Some(3);
    raw.send(&Packet::Publish(p)).await;
    assert_eq!(
        raw.expect_closed(WAIT).await,
        Some(verge_mqtt::reason::TOPIC_ALIAS_INVALID)
    );
}

#[tokio::test]
async fn unknown_topic_alias_is_a_protocol_error() {
    let b = start().await;
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    raw.handshake("raw").await;
    let Packet::Publish(mut p) = publish_packet("", verge_mqtt::QoS::AtMostOnce, 0, b"p") else {
        unreachable!()
    };
    p.properties.topic_alias = Some(1);
    raw.send(&Packet::Publish(p)).await;
    assert_eq!(
        raw.expect_closed(WAIT).await,
        Some(verge_mqtt::reason::PROTOCOL_ERROR)
    );
}

#[tokio::test]
async fn broker_uses_topic_aliases_within_client_maximum() {
    let b = start().await;
    let mut sub = connect5(b.addr, "sub", |o| {
        o.set_topic_alias_max(Some(1));
    })
    .await;
    sub.subscribe("ta/#", Q5::AtMostOnce).await;
    let mut publisher = connect5(b.addr, "pub", |_| {}).await;
    for (t, p) in [
        ("ta/one", "a"),
        ("ta/one", "b"),
        ("ta/two", "c"),
        ("ta/two", "d"),
    ] {
        publisher.publish_acked(t, Q5::AtLeastOnce, false, p).await;
    }
    let m1 = sub.recv().await;
    let a1 = m1.properties.as_ref().and_then(|p| p.topic_alias);
    assert_eq!(
        (text(&m1.topic).as_str(), a1),
        ("ta/one", Some(1)),
        "first use sets alias 1"
    );
    let m2 = sub.recv().await;
    assert_eq!(m2.properties.as_ref().and_then(|p| p.topic_alias), Some(1));
    // rumqttc reports the packet as received, before resolving the alias.
    assert!(
        m2.topic.is_empty() || &m2.topic[..] == b"ta/one",
        "second use carries the alias only"
    );
    assert_eq!(text(&m2.payload), "b");
    // No alias left for a second topic: full names, never alias 2.
    for want in ["c", "d"] {
        let m = sub.recv().await;
        assert_eq!(text(&m.topic), "ta/two");
        assert_eq!(text(&m.payload), want);
        let a = m.properties.as_ref().and_then(|p| p.topic_alias);
        assert!(
            a.is_none() || a == Some(1) && !m.topic.is_empty(),
            "alias {a:?} beyond the client's maximum 1"
        );
        assert_ne!(a, Some(2));
    }
}

#[tokio::test]
async fn message_expiry_drops_stale_offline_messages_and_counts_down() {
    let b = start().await;
    let persistent = |o: &mut rumqttc::v5::MqttOptions| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(60));
    };
    let mut p = connect5(b.addr, "offline", persistent).await;
    p.subscribe("exp/t", Q5::AtLeastOnce).await;
    p.disconnect().await;
    eventually("offline", || counter(&b.stats().clients_connected) == 0).await;

    let mut publisher = connect5(b.addr, "pub", |_| {}).await;
    let expiring = |s| m5::PublishProperties {
        message_expiry_interval: Some(s),
        ..props()
    };
    publisher
        .publish_props("exp/t", Q5::AtLeastOnce, false, "short", expiring(1))
        .await;
    publisher.wait_pub_ack(Q5::AtLeastOnce).await;
    publisher
        .publish_props("exp/t", Q5::AtLeastOnce, false, "long", expiring(60))
        .await;
    publisher.wait_pub_ack(Q5::AtLeastOnce).await;
    publisher
        .publish_acked("exp/t", Q5::AtLeastOnce, false, "forever")
        .await;
    tokio::time::sleep(Duration::from_millis(2200)).await;

    let mut p = connect5(b.addr, "offline", persistent).await;
    assert!(p.connack.session_present);
    let m = p.recv().await;
    assert_eq!(text(&m.payload), "long", "expired message delivered");
    let left = m
        .properties
        .and_then(|p| p.message_expiry_interval)
        .expect("remaining expiry sent");
    assert!(
        (50..=58).contains(&left),
        "expiry must count down by the time queued: {left}"
    );
    let m = p.recv().await;
    assert_eq!(text(&m.payload), "forever");
    assert_eq!(m.properties.and_then(|p| p.message_expiry_interval), None);
    assert!(counter(&b.stats().dropped_expired) >= 1);
}

#[tokio::test]
async fn expired_retained_message_is_not_delivered() {
    let b = start().await;
    let mut publisher = connect5(b.addr, "pub", |_| {}).await;
    let p = m5::PublishProperties {
        message_expiry_interval: Some(1),
        ..props()
    };
    publisher
        .publish_props("exp/ret", Q5::AtLeastOnce, true, "stale", p)
        .await;
    publisher.wait_pub_ack(Q5::AtLeastOnce).await;
    publisher
        .publish_acked("exp/keep", Q5::AtLeastOnce, true, "fresh")
        .await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut s = connect5(b.addr, "s", |_| {}).await;
    s.subscribe("exp/+", Q5::AtLeastOnce).await;
    assert_eq!(text(&s.recv().await.payload), "fresh");
    s.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn publish_properties_pass_through() {
    let b = start().await;
    let mut sub3 = connect3(b.addr, "sub3", |_| {}).await;
    sub3.subscribe("props/t", rumqttc::QoS::AtLeastOnce).await;
    let mut sub = connect5(b.addr, "sub", |_| {}).await;
    sub.subscribe("props/t", Q5::AtLeastOnce).await;
    let mut publisher = connect5(b.addr, "pub", |_| {}).await;
    let sent = m5::PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        response_topic: Some("props/reply".into()),
        correlation_data: Some(Bytes::from_static(b"\x00\x01req-7")),
        user_properties: vec![
            ("site".into(), "north".into()),
            ("dup".into(), "1".into()),
            ("dup".into(), "2".into()),
        ],
        ..props()
    };
    publisher
        .publish_props("props/t", Q5::AtLeastOnce, false, "{\"v\":1}", sent.clone())
        .await;
    publisher.wait_pub_ack(Q5::AtLeastOnce).await;
    let m = sub.recv().await;
    assert_eq!(text(&m.payload), "{\"v\":1}");
    let got = m.properties.expect("properties");
    assert_eq!(got.payload_format_indicator, Some(1));
    assert_eq!(got.content_type, sent.content_type);
    assert_eq!(got.response_topic, sent.response_topic);
    assert_eq!(got.correlation_data, sent.correlation_data);
    assert_eq!(
        got.user_properties, sent.user_properties,
        "user properties in order, duplicates kept"
    );
    // A 3.1.1 subscriber gets the same message without properties.
    let m3 = sub3.recv().await;
    assert_eq!(text(&m3.payload), "{\"v\":1}");
}

#[tokio::test]
async fn no_local_suppresses_own_messages_only() {
    let b = start().await;
    let mut me = connect5(b.addr, "me", |_| {}).await;
    let mut f = filter5("nl/t", Q5::AtLeastOnce);
    f.nolocal = true;
    me.subscribe_filters(vec![f], None).await;
    me.subscribe("nl/echo", Q5::AtLeastOnce).await;
    me.publish_acked("nl/t", Q5::AtLeastOnce, false, "mine")
        .await;
    me.publish_acked("nl/echo", Q5::AtLeastOnce, false, "echo")
        .await;
    assert_eq!(
        text(&me.recv().await.payload),
        "echo",
        "no local delivered the client's own message"
    );
    let mut other = connect5(b.addr, "other", |_| {}).await;
    other
        .publish_acked("nl/t", Q5::AtLeastOnce, false, "theirs")
        .await;
    assert_eq!(text(&me.recv().await.payload), "theirs");
}

#[tokio::test]
async fn maximum_packet_size_of_client_is_respected() {
    let b = start().await;
    let mut small = connect5(b.addr, "small", |o| {
        o.set_max_packet_size(Some(256));
    })
    .await;
    small.subscribe("mps/t", Q5::AtLeastOnce).await;
    let mut publisher = connect5(b.addr, "pub", |_| {}).await;
    publisher
        .publish_acked("mps/t", Q5::AtLeastOnce, false, vec![b'x'; 1000])
        .await;
    publisher
        .publish_acked("mps/t", Q5::AtLeastOnce, false, "small")
        .await;
    let m = small.recv().await;
    assert_eq!(
        text(&m.payload),
        "small",
        "oversized message sent to the client"
    );
    assert!(counter(&b.stats().dropped_too_large) >= 1);
    // The connection survived and keeps working.
    publisher
        .publish_acked("mps/t", Q5::AtLeastOnce, false, "after")
        .await;
    assert_eq!(text(&small.recv().await.payload), "after");
    assert!(small.closed_within(Duration::ZERO).await.is_none());
}

#[tokio::test]
async fn receive_maximum_of_client_limits_inflight() {
    let b = start().await;
    let mut slow = connect5(b.addr, "slow", |o| {
        o.set_receive_maximum(Some(2));
        o.set_manual_acks(true);
    })
    .await;
    slow.subscribe("rm/t", Q5::AtLeastOnce).await;
    let mut publisher = connect5(b.addr, "pub", |_| {}).await;
    for i in 0..5 {
        publisher
            .publish_acked("rm/t", Q5::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    let first = slow.recv().await;
    let second = slow.recv().await;
    assert_eq!(
        (text(&first.payload), text(&second.payload)),
        ("0".into(), "1".into())
    );
    slow.expect_no_publish(Duration::from_millis(400)).await;
    slow.client.ack(&first).await.expect("ack");
    assert_eq!(text(&slow.recv().await.payload), "2");
    slow.expect_no_publish(QUIET).await;
    slow.client.ack(&second).await.expect("ack");
    let third = slow.recv().await;
    assert_eq!(text(&third.payload), "3");
}

#[tokio::test]
async fn connack_advertises_broker_limits() {
    let b = start_with(|c| {
        c.max_inflight = 17;
        c.max_packet_size = 4096;
        c.max_topic_alias = 9;
        c.max_session_expiry = verge_broker::duration::HumanDuration(Duration::from_secs(10));
    })
    .await;
    let c = connect5(b.addr, "c", |o| {
        o.set_session_expiry_interval(Some(3600));
    })
    .await;
    let p = c.connack.properties.clone().expect("CONNACK properties");
    assert_eq!(p.receive_max, Some(17));
    assert_eq!(p.max_packet_size, Some(4096));
    assert_eq!(p.topic_alias_max, Some(9));
    assert_eq!(
        p.session_expiry_interval,
        Some(10),
        "session expiry capped and reported"
    );
    assert_ne!(p.shared_subscription_available, Some(0));
    assert_ne!(p.subscription_identifiers_available, Some(0));
    assert_ne!(p.wildcard_subscription_available, Some(0));
}

#[tokio::test]
async fn empty_client_id_gets_an_assigned_identifier() {
    let b = start().await;
    let c = connect5(b.addr, "", |_| {}).await;
    let assigned = c
        .connack
        .properties
        .clone()
        .and_then(|p| p.assigned_client_identifier)
        .expect("assigned client identifier");
    assert!(!assigned.is_empty());
    let d = connect5(b.addr, "", |_| {}).await;
    let other = d
        .connack
        .properties
        .clone()
        .and_then(|p| p.assigned_client_identifier);
    assert_ne!(Some(assigned), other, "two clients got the same identifier");
}

#[tokio::test]
async fn v3_empty_client_id_needs_clean_session() {
    let b = start().await;
    let ok = connect3(b.addr, "", |_| {}).await;
    assert!(!ok.connack.session_present);
    let mut raw = raw_tcp(b.addr, Protocol::V311).await;
    let mut c = connect_packet(Protocol::V311, "", 0);
    c.clean_start = false;
    let ack = raw.connect(c).await;
    assert_eq!(
        ack.reason_code,
        verge_mqtt::reason::CLIENT_IDENTIFIER_NOT_VALID,
        "3.1.1 return code 2 (identifier rejected)"
    );
    assert_eq!(raw.expect_closed(WAIT).await, None);
}

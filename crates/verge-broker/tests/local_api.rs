//! The in-process API (`BrokerHandle`): local subscribers see what socket
//! clients publish and vice versa, input is validated, a full local queue
//! drops and counts, dropping a subscription unsubscribes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use rumqttc::QoS as Q3;
use rumqttc::v5::mqttbytes::QoS as Q5;
use verge_broker::{BrokerError, LocalSubscription, Message};
use verge_mqtt::QoS;

async fn next(s: &mut LocalSubscription) -> Arc<Message> {
    tokio::time::timeout(WAIT, s.recv())
        .await
        .expect("local subscription: nothing within WAIT")
        .expect("broker gone")
}

#[tokio::test]
async fn local_subscription_receives_client_publishes() {
    let b = start().await;
    let h = b.handle();
    let mut telemetry = h
        .subscribe("devices/+/telemetry", 100)
        .await
        .expect("subscribe");
    let mut p3 = connect3(b.addr, "d1", |_| {}).await;
    let payload: Vec<u8> = (0..=255u8).collect();
    p3.publish_acked("devices/d1/other", Q3::AtLeastOnce, false, "not-matching")
        .await;
    p3.publish_acked(
        "devices/d1/telemetry",
        Q3::AtLeastOnce,
        false,
        payload.clone(),
    )
    .await;
    let m = next(&mut telemetry).await;
    assert_eq!(
        &*m.topic, "devices/d1/telemetry",
        "non-matching topic delivered"
    );
    assert_eq!(&m.payload[..], &payload[..], "payload bytes unchanged");
    assert_eq!(m.qos, QoS::AtLeastOnce);
    assert!(!m.retain);
    assert_eq!(&*m.origin, "d1");

    let mut p5 = connect5(b.addr, "d2", |_| {}).await;
    let props = m5::PublishProperties {
        content_type: Some("application/cbor".into()),
        user_properties: vec![("unit".into(), "C".into())],
        ..Default::default()
    };
    p5.publish_props(
        "devices/d2/telemetry",
        Q5::ExactlyOnce,
        false,
        "21.5",
        props,
    )
    .await;
    p5.wait_pub_ack(Q5::ExactlyOnce).await;
    let m = next(&mut telemetry).await;
    assert_eq!(
        (&*m.topic, &m.payload[..]),
        ("devices/d2/telemetry", &b"21.5"[..])
    );
    assert_eq!(m.qos, QoS::ExactlyOnce);
    assert_eq!(
        m.properties.content_type.as_deref(),
        Some("application/cbor")
    );
    assert_eq!(
        m.properties.user_properties,
        vec![("unit".to_string(), "C".to_string())]
    );
    assert_eq!(&*m.origin, "d2");
}

#[tokio::test]
async fn local_publish_reaches_socket_subscribers() {
    let b = start().await;
    let mut s3 = connect3(b.addr, "s3", |_| {}).await;
    s3.subscribe("cmd/#", Q3::AtLeastOnce).await;
    let mut s5 = connect5(b.addr, "s5", |_| {}).await;
    s5.subscribe("cmd/+", Q5::AtMostOnce).await;
    let h = b.handle();
    h.publish(Message::local("cmd/pump", "on", QoS::ExactlyOnce, false))
        .await
        .expect("publish");
    let m = s3.recv().await;
    assert_eq!(
        (m.topic.as_str(), text(&m.payload).as_str()),
        ("cmd/pump", "on")
    );
    assert_eq!(m.qos, Q3::AtLeastOnce, "min(published 2, granted 1)");
    let m = s5.recv().await;
    assert_eq!(
        (text(&m.topic).as_str(), text(&m.payload).as_str()),
        ("cmd/pump", "on")
    );
    assert_eq!(m.qos, Q5::AtMostOnce);

    // Retained local publish is stored for later subscribers.
    h.publish(Message::local("cmd/state", "idle", QoS::AtLeastOnce, true))
        .await
        .expect("publish");
    assert_eq!(text(&s3.recv().await.payload), "idle");
    let mut late = connect3(b.addr, "late", |_| {}).await;
    late.subscribe("cmd/state", Q3::AtLeastOnce).await;
    let m = late.recv().await;
    assert_eq!(text(&m.payload), "idle");
    assert!(m.retain);
}

#[tokio::test]
async fn invalid_topics_and_filters_are_errors() {
    let b = start().await;
    let h = b.handle();
    for bad in ["a/+", "a/#", "#", "", "nul\0byte"] {
        match h
            .publish(Message::local(bad, "x", QoS::AtMostOnce, false))
            .await
        {
            Err(BrokerError::InvalidTopic(t)) => assert_eq!(t, bad),
            other => panic!("publish to {bad:?}: expected InvalidTopic, got {other:?}"),
        }
    }
    for bad in [
        "a/#/b",
        "a+",
        "a/b#",
        "",
        "$share//x",
        "$share/g",
        "$share/g+/x",
        "$share/g/a#",
    ] {
        match h.subscribe(bad, 10).await {
            Err(BrokerError::InvalidTopic(f)) => assert_eq!(f, bad),
            Err(e) => panic!("subscribe {bad:?}: expected InvalidTopic, got {e:?}"),
            Ok(_) => panic!("subscribe {bad:?} accepted"),
        }
    }
    for good in ["#", "+/+", "a/+/c/#", "$share/g/a/#", "$SYS/#"] {
        assert!(
            h.subscribe(good, 10).await.is_ok(),
            "valid filter {good:?} refused"
        );
    }
    assert_eq!(
        counter(&b.stats().messages_received),
        0,
        "an invalid publish was counted"
    );
}

#[tokio::test]
async fn full_local_queue_drops_and_counts() {
    let b = start().await;
    let h = b.handle();
    let mut slow = h.subscribe("q/#", 2).await.expect("subscribe");
    let mut fast = h.subscribe("q/#", 100).await.expect("subscribe");
    for i in 0..10 {
        h.publish(Message::local(
            format!("q/{i}"),
            format!("{i}"),
            QoS::AtLeastOnce,
            false,
        ))
        .await
        .expect("publish");
    }
    for i in 0..10 {
        assert_eq!(
            &*next(&mut fast).await.topic,
            format!("q/{i}"),
            "the other subscriber is unaffected"
        );
    }
    eventually("8 dropped", || slow.dropped() == 8).await;
    assert_eq!(counter(&b.stats().dropped_queue_full), 8);
    assert_eq!(fast.dropped(), 0);
    assert_eq!(&*next(&mut slow).await.topic, "q/0");
    assert_eq!(&*next(&mut slow).await.topic, "q/1");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), slow.recv())
            .await
            .is_err(),
        "dropped messages were delivered after all"
    );
    // Room again: new messages flow.
    h.publish(Message::local("q/after", "a", QoS::AtMostOnce, false))
        .await
        .unwrap();
    assert_eq!(&*next(&mut slow).await.topic, "q/after");
}

#[tokio::test]
async fn dropping_a_local_subscription_unsubscribes() {
    let b = start().await;
    let h = b.handle();
    let sub = h.subscribe("gone/#", 10).await.expect("subscribe");
    let mut keep = h.subscribe("keep/#", 10).await.expect("subscribe");
    eventually("two subscriptions", || {
        counter(&b.stats().subscriptions) == 2
    })
    .await;
    drop(sub);
    eventually("one subscription", || {
        counter(&b.stats().subscriptions) == 1
    })
    .await;
    h.publish(Message::local("gone/x", "x", QoS::AtMostOnce, false))
        .await
        .unwrap();
    h.publish(Message::local("keep/x", "k", QoS::AtMostOnce, false))
        .await
        .unwrap();
    assert_eq!(&*next(&mut keep).await.topic, "keep/x");
    assert_eq!(counter(&b.stats().dropped_queue_full), 0);
}

#[tokio::test]
async fn local_shared_subscriptions_split_messages() {
    let b = start().await;
    let h = b.handle();
    let mut a = h.subscribe("$share/workers/jobs/+", 100).await.unwrap();
    let mut c = h.subscribe("$share/workers/jobs/+", 100).await.unwrap();
    let mut p = connect3(b.addr, "p", |_| {}).await;
    for i in 0..10 {
        p.publish_acked(&format!("jobs/{i}"), Q3::AtLeastOnce, false, "j")
            .await;
    }
    let mut got = Vec::new();
    for s in [&mut a, &mut c] {
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), s.recv()).await {
            got.push(m.topic.to_string());
        }
    }
    got.sort();
    let mut want: Vec<String> = (0..10).map(|i| format!("jobs/{i}")).collect();
    want.sort();
    assert_eq!(got, want, "each job exactly once across the group");
    assert!(a.dropped() == 0 && c.dropped() == 0);
}

/// Overlapping filters of one local subscription deliver each message once;
/// dropping the subscription removes every filter.
#[tokio::test]
async fn subscribe_many_delivers_overlapping_matches_once() {
    let b = start().await;
    let h = b.handle();
    let mut s = h
        .subscribe_many(&["a/#".to_owned(), "a/b".to_owned(), "c/+".to_owned()], 100)
        .await
        .expect("subscribe");
    assert_eq!(counter(&b.stats().subscriptions), 3);
    for t in ["a/b", "c/d", "x/y", "a/z"] {
        h.publish(Message::local(t, "p", QoS::AtMostOnce, false))
            .await
            .expect("publish");
    }
    let mut got = Vec::new();
    let mut buf = Vec::new();
    while got.len() < 3 {
        buf.clear();
        let n = tokio::time::timeout(WAIT, s.recv_many(&mut buf, 10))
            .await
            .expect("messages within WAIT");
        assert!(n > 0, "broker gone");
        got.extend(buf.iter().map(|m| m.topic.to_string()));
    }
    assert_eq!(got, ["a/b", "c/d", "a/z"]);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), s.recv())
            .await
            .is_err(),
        "a message arrived twice"
    );
    assert!(
        h.subscribe_many(&["ok".to_owned(), "bad/#/x".to_owned()], 1)
            .await
            .is_err()
    );
    drop(s);
    eventually("filters removed", || counter(&b.stats().subscriptions) == 0).await;
}

/// `sessions()` lists the connected sessions with their listener, and
/// `session_events()` tells of each connect and disconnect, a takeover
/// included (the old connection's end, then the new one).
#[tokio::test]
async fn sessions_are_listed_and_their_connects_and_disconnects_announced() {
    let b = start().await;
    let h = b.handle();
    assert!(h.sessions().await.expect("sessions").is_empty());
    let mut events = h.session_events();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let c1 = connect3(b.addr, "d1", |_| {}).await;
    let e = tokio::time::timeout(WAIT, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(e.connected);
    assert_eq!(&*e.client_id, "d1");
    assert_eq!(e.transport, "mqtt");
    assert!(e.at_ms >= before);
    let list = h.sessions().await.expect("sessions");
    assert_eq!(list.len(), 1);
    assert_eq!(&*list[0].client_id, "d1");
    assert_eq!(list[0].transport, "mqtt");
    assert_eq!(list[0].since_ms, e.at_ms);
    assert_eq!(list[0].username, None);

    // a takeover: the old connection ends, the new one attaches
    let c2 = connect3(b.addr, "d1", |_| {}).await;
    let e = tokio::time::timeout(WAIT, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(!e.connected, "the replaced connection's end comes first");
    let e = tokio::time::timeout(WAIT, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(e.connected);
    drop(c1);
    c2.disconnect().await;
    let e = tokio::time::timeout(WAIT, events.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(!e.connected);
    assert_eq!(&*e.client_id, "d1");
    let list = h.sessions().await.expect("sessions");
    assert!(list.is_empty(), "{list:?}");
}

/// A receiver that falls behind lags instead of holding up the broker.
#[tokio::test]
async fn a_slow_session_event_receiver_lags() {
    let b = start().await;
    let h = b.handle();
    let mut events = h.session_events();
    for _ in 0..(verge_broker::presence::SESSION_EVENTS / 2 + 8) {
        let c = connect3(b.addr, "flapper", |_| {}).await;
        c.disconnect().await;
    }
    let c = connect3(b.addr, "still-served", |_| {}).await;
    assert_eq!(h.sessions().await.expect("sessions").len(), 1);
    assert!(matches!(
        events.recv().await,
        Err(tokio::sync::broadcast::error::RecvError::Lagged(_))
    ));
    drop(c);
}

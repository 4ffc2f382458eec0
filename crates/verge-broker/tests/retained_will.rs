//! Retained messages (set, replace, delete, 5.0 retain handling and
//! retain-as-published) and will messages (abnormal vs clean disconnect, 5.0
//! will delay).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use rumqttc::QoS as Q3;
use rumqttc::v5::mqttbytes::QoS as Q5;

#[tokio::test]
async fn v3_retained_set_replace_and_delete() {
    let b = start().await;
    let mut publisher = connect3(b.addr, "pub", |_| {}).await;
    publisher
        .publish_acked("r/t", Q3::AtLeastOnce, true, "first")
        .await;
    publisher
        .publish_acked("r/t", Q3::AtLeastOnce, true, "second")
        .await;
    eventually("one retained message", || counter(&b.stats().retained) == 1).await;

    let mut s1 = connect3(b.addr, "s1", |_| {}).await;
    s1.subscribe("r/#", Q3::AtLeastOnce).await;
    let m = s1.recv().await;
    assert_eq!(
        (m.topic.as_str(), text(&m.payload).as_str()),
        ("r/t", "second"),
        "replaced value"
    );
    assert!(m.retain, "retained delivery on subscribe carries RETAIN=1");
    assert_eq!(m.qos, Q3::AtLeastOnce);

    // A live retained publish reaches existing 3.1.1 subscribers with RETAIN=0.
    publisher
        .publish_acked("r/t", Q3::AtLeastOnce, true, "third")
        .await;
    let m = s1.recv().await;
    assert_eq!(text(&m.payload), "third");
    assert!(
        !m.retain,
        "3.1.1: RETAIN must be 0 on delivery to an established subscription"
    );

    // Delete with an empty retained payload.
    publisher
        .publish_acked("r/t", Q3::AtLeastOnce, true, "")
        .await;
    let m = s1.recv().await;
    assert!(m.payload.is_empty());
    eventually("retained store empty", || counter(&b.stats().retained) == 0).await;

    let mut s2 = connect3(b.addr, "s2", |_| {}).await;
    s2.subscribe("r/#", Q3::AtLeastOnce).await;
    publisher
        .publish_acked("r/live", Q3::AtLeastOnce, false, "sentinel")
        .await;
    let m = s2.recv().await;
    assert_eq!(
        (m.topic.as_str(), text(&m.payload).as_str()),
        ("r/live", "sentinel"),
        "deleted retained message was still delivered"
    );
}

#[tokio::test]
async fn v5_retained_set_replace_delete_and_qos_downgrade() {
    let b = start().await;
    let mut publisher = connect5(b.addr, "pub", |_| {}).await;
    publisher
        .publish_acked("r/t", Q5::ExactlyOnce, true, "first")
        .await;
    publisher
        .publish_acked("r/t", Q5::ExactlyOnce, true, "second")
        .await;
    publisher
        .publish_acked("r/gone", Q5::AtLeastOnce, true, "x")
        .await;
    publisher
        .publish_acked("r/gone", Q5::AtLeastOnce, true, "")
        .await;

    let mut s = connect5(b.addr, "s", |_| {}).await;
    s.subscribe("r/#", Q5::AtLeastOnce).await;
    let m = s.recv().await;
    assert_eq!(
        (text(&m.topic).as_str(), text(&m.payload).as_str()),
        ("r/t", "second")
    );
    assert!(m.retain);
    assert_eq!(
        m.qos,
        Q5::AtLeastOnce,
        "retained QoS 2 message delivered at granted QoS 1"
    );
    publisher
        .publish_acked("r/live", Q5::AtMostOnce, false, "sentinel")
        .await;
    assert_eq!(
        text(&s.recv().await.payload),
        "sentinel",
        "deleted retained message was delivered"
    );
}

#[tokio::test]
async fn v5_retain_handling_0_1_2() {
    let b = start().await;
    let mut publisher = connect5(b.addr, "pub", |_| {}).await;
    publisher
        .publish_acked("rh/t", Q5::AtLeastOnce, true, "kept")
        .await;

    let mut s = connect5(b.addr, "s", |_| {}).await;
    let sub = |rule: m5::RetainForwardRule| {
        let mut f = filter5("rh/t", Q5::AtLeastOnce);
        f.retain_forward_rule = rule;
        vec![f]
    };
    let marker = |n: &str| format!("marker-{n}");

    // 0: on every subscribe, including a repeated one.
    for round in 0..2 {
        s.subscribe_filters(sub(m5::RetainForwardRule::OnEverySubscribe), None)
            .await;
        let m = s.recv().await;
        assert_eq!(
            text(&m.payload),
            "kept",
            "retain handling 0, subscribe #{round}"
        );
        assert!(m.retain);
    }
    s.unsubscribe("rh/t").await;

    // 1: only when the subscription is new.
    s.subscribe("rh/marker", Q5::AtMostOnce).await;
    s.subscribe_filters(sub(m5::RetainForwardRule::OnNewSubscribe), None)
        .await;
    assert_eq!(
        text(&s.recv().await.payload),
        "kept",
        "retain handling 1, new subscription"
    );
    s.subscribe_filters(sub(m5::RetainForwardRule::OnNewSubscribe), None)
        .await;
    publisher
        .publish_acked("rh/marker", Q5::AtMostOnce, false, marker("1"))
        .await;
    assert_eq!(
        text(&s.recv().await.payload),
        marker("1"),
        "retain handling 1 resent the retained message for an existing subscription"
    );
    s.unsubscribe("rh/t").await;

    // 2: never.
    s.subscribe_filters(sub(m5::RetainForwardRule::Never), None)
        .await;
    publisher
        .publish_acked("rh/marker", Q5::AtMostOnce, false, marker("2"))
        .await;
    assert_eq!(
        text(&s.recv().await.payload),
        marker("2"),
        "retain handling 2 sent the retained message"
    );
}

#[tokio::test]
async fn v5_retain_as_published() {
    let b = start().await;
    let mut keep = connect5(b.addr, "keep", |_| {}).await;
    let mut f = filter5("rap/t", Q5::AtLeastOnce);
    f.preserve_retain = true;
    keep.subscribe_filters(vec![f], None).await;
    let mut clear = connect5(b.addr, "clear", |_| {}).await;
    clear.subscribe("rap/t", Q5::AtLeastOnce).await;

    let mut publisher = connect5(b.addr, "pub", |_| {}).await;
    publisher
        .publish_acked("rap/t", Q5::AtLeastOnce, true, "r")
        .await;
    publisher
        .publish_acked("rap/t", Q5::AtLeastOnce, false, "n")
        .await;

    let (a, b2) = (keep.recv().await, keep.recv().await);
    assert_eq!(
        (text(&a.payload).as_str(), a.retain),
        ("r", true),
        "retain-as-published keeps RETAIN"
    );
    assert_eq!((text(&b2.payload).as_str(), b2.retain), ("n", false));
    let (a, b2) = (clear.recv().await, clear.recv().await);
    assert_eq!(
        (text(&a.payload).as_str(), a.retain),
        ("r", false),
        "without it RETAIN is cleared"
    );
    assert_eq!((text(&b2.payload).as_str(), b2.retain), ("n", false));
}

#[tokio::test]
async fn v3_will_published_on_abnormal_disconnect() {
    let b = start().await;
    let mut watcher = connect3(b.addr, "watcher", |_| {}).await;
    watcher.subscribe("will/#", Q3::AtLeastOnce).await;
    let dying = connect3(b.addr, "dying", |o| {
        o.set_last_will(rumqttc::LastWill::new(
            "will/dying",
            "gone",
            Q3::AtLeastOnce,
            false,
        ));
    })
    .await;
    dying.kill().await;
    let m = watcher.recv().await;
    assert_eq!(
        (m.topic.as_str(), text(&m.payload).as_str()),
        ("will/dying", "gone")
    );
    assert_eq!(m.qos, Q3::AtLeastOnce);
}

#[tokio::test]
async fn v3_retained_will_is_stored() {
    let b = start().await;
    let dying = connect3(b.addr, "dying", |o| {
        o.set_last_will(rumqttc::LastWill::new(
            "will/status",
            "offline",
            Q3::AtLeastOnce,
            true,
        ));
    })
    .await;
    dying.kill().await;
    eventually("retained will stored", || counter(&b.stats().retained) == 1).await;
    let mut late = connect3(b.addr, "late", |_| {}).await;
    late.subscribe("will/status", Q3::AtLeastOnce).await;
    let m = late.recv().await;
    assert_eq!(text(&m.payload), "offline");
    assert!(m.retain);
}

#[tokio::test]
async fn v3_will_not_published_on_clean_disconnect() {
    let b = start().await;
    let mut watcher = connect3(b.addr, "watcher", |_| {}).await;
    watcher.subscribe("will/#", Q3::AtLeastOnce).await;
    let polite = connect3(b.addr, "polite", |o| {
        o.set_last_will(rumqttc::LastWill::new(
            "will/polite",
            "gone",
            Q3::AtLeastOnce,
            false,
        ));
    })
    .await;
    polite.disconnect().await;
    eventually("disconnect processed", || {
        counter(&b.stats().clients_connected) == 1
    })
    .await;
    let mut other = connect3(b.addr, "other", |_| {}).await;
    other
        .publish_acked("will/sentinel", Q3::AtLeastOnce, false, "s")
        .await;
    assert_eq!(
        watcher.recv().await.topic,
        "will/sentinel",
        "will sent after a clean DISCONNECT"
    );
}

fn will5(topic: &str, payload: &str, delay: Option<u32>) -> m5::LastWill {
    m5::LastWill::new(
        topic,
        payload,
        Q5::AtLeastOnce,
        false,
        Some(m5::LastWillProperties {
            delay_interval: delay,
            payload_format_indicator: Some(1),
            message_expiry_interval: None,
            content_type: Some("text/plain".into()),
            response_topic: Some("will/reply".into()),
            correlation_data: Some(bytes::Bytes::from_static(b"corr")),
            user_properties: vec![("k".into(), "v".into())],
        }),
    )
}

#[tokio::test]
async fn v5_will_published_on_abnormal_disconnect_with_properties() {
    let b = start().await;
    let mut watcher = connect5(b.addr, "watcher", |_| {}).await;
    watcher.subscribe("will/#", Q5::AtLeastOnce).await;
    let dying = connect5(b.addr, "dying", |o| {
        o.set_last_will(will5("will/dying", "gone", None));
    })
    .await;
    dying.kill().await;
    let m = watcher.recv().await;
    assert_eq!(
        (text(&m.topic).as_str(), text(&m.payload).as_str()),
        ("will/dying", "gone")
    );
    let p = m.properties.expect("will properties passed through");
    assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.response_topic.as_deref(), Some("will/reply"));
    assert_eq!(p.correlation_data.as_deref(), Some(&b"corr"[..]));
    assert_eq!(p.payload_format_indicator, Some(1));
    assert_eq!(p.user_properties, vec![("k".to_string(), "v".to_string())]);
}

#[tokio::test]
async fn v5_will_not_published_on_clean_disconnect() {
    let b = start().await;
    let mut watcher = connect5(b.addr, "watcher", |_| {}).await;
    watcher.subscribe("will/#", Q5::AtLeastOnce).await;
    let polite = connect5(b.addr, "polite", |o| {
        o.set_last_will(will5("will/polite", "gone", None));
    })
    .await;
    polite.disconnect().await;
    eventually("disconnect processed", || {
        counter(&b.stats().clients_connected) == 1
    })
    .await;
    let mut other = connect5(b.addr, "other", |_| {}).await;
    other
        .publish_acked("will/sentinel", Q5::AtLeastOnce, false, "s")
        .await;
    assert_eq!(
        text(&watcher.recv().await.topic),
        "will/sentinel",
        "will sent after a clean DISCONNECT"
    );
}

/// DISCONNECT with reason 0x04 asks the broker to publish the will anyway.
#[tokio::test]
async fn v5_disconnect_with_will_message_publishes_will() {
    let b = start().await;
    let mut watcher = connect5(b.addr, "watcher", |_| {}).await;
    watcher.subscribe("will/#", Q5::AtLeastOnce).await;
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    let mut c = connect_packet(Protocol::V5, "raw-will", 0);
    c.will = Some(verge_mqtt::Will {
        topic: "will/raw".into(),
        payload: bytes::Bytes::from_static(b"asked"),
        qos: verge_mqtt::QoS::AtMostOnce,
        retain: false,
        properties: verge_mqtt::Properties::default(),
    });
    assert_eq!(raw.connect(c).await.reason_code, 0);
    raw.send(&Packet::Disconnect(verge_mqtt::Disconnect {
        reason_code: verge_mqtt::reason::DISCONNECT_WITH_WILL,
        properties: verge_mqtt::Properties::default(),
    }))
    .await;
    assert_eq!(
        raw.expect_closed(WAIT).await,
        None,
        "broker answers a DISCONNECT by closing"
    );
    let m = watcher.recv().await;
    assert_eq!(
        (text(&m.topic).as_str(), text(&m.payload).as_str()),
        ("will/raw", "asked")
    );
}

#[tokio::test]
async fn v5_will_delay_is_honoured() {
    let b = start().await;
    let mut watcher = connect5(b.addr, "watcher", |_| {}).await;
    watcher.subscribe("will/#", Q5::AtLeastOnce).await;
    let dying = connect5(b.addr, "delayed", |o| {
        o.set_last_will(will5("will/delayed", "late", Some(1)));
        o.set_session_expiry_interval(Some(60));
    })
    .await;
    dying.kill().await;
    watcher.expect_no_publish(Duration::from_millis(500)).await;
    let m = watcher.recv().await;
    assert_eq!(text(&m.payload), "late");
}

#[tokio::test]
async fn v5_will_delay_not_sent_when_client_reconnects_in_time() {
    let b = start().await;
    let mut watcher = connect5(b.addr, "watcher", |_| {}).await;
    watcher.subscribe("will/#", Q5::AtLeastOnce).await;
    let opts = |o: &mut rumqttc::v5::MqttOptions| {
        o.set_last_will(will5("will/back", "gone", Some(2)));
        o.set_session_expiry_interval(Some(60));
        o.set_clean_start(false);
    };
    let dying = connect5(b.addr, "back", opts).await;
    dying.kill().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let back = connect5(b.addr, "back", opts).await;
    assert!(
        back.connack.session_present,
        "session kept for the reconnect"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut other = connect5(b.addr, "other", |_| {}).await;
    other
        .publish_acked("will/sentinel", Q5::AtLeastOnce, false, "s")
        .await;
    assert_eq!(
        text(&watcher.recv().await.topic),
        "will/sentinel",
        "delayed will published although the client came back in time"
    );
}

/// MQTT 5.0 §3.1.3.2.2 / §3.1.2.5: the will is published when the delay
/// passes *or the session ends*, whichever is first. A reconnect with Clean
/// Start = 1 ends the old session, so the pending will must go out then.
#[tokio::test]
async fn v5_delayed_will_published_when_clean_start_reconnect_ends_session() {
    let b = start().await;
    let mut watcher = connect5(b.addr, "watcher", |_| {}).await;
    watcher.subscribe("will/#", Q5::AtLeastOnce).await;
    let dying = connect5(b.addr, "fresh", |o| {
        o.set_last_will(will5("will/fresh", "old-session", Some(30)));
        o.set_session_expiry_interval(Some(60));
    })
    .await;
    dying.kill().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let again = connect5(b.addr, "fresh", |o| {
        o.set_clean_start(true);
    })
    .await;
    assert!(!again.connack.session_present);
    let m = watcher
        .recv_within(Duration::from_secs(3))
        .await
        .expect("will of the ended session was never published");
    assert_eq!(text(&m.payload), "old-session");
}

/// The will goes out when the session expires even if the will delay is
/// longer.
#[tokio::test]
async fn v5_will_sent_at_session_expiry_when_shorter_than_delay() {
    let b = start().await;
    let mut watcher = connect5(b.addr, "watcher", |_| {}).await;
    watcher.subscribe("will/#", Q5::AtLeastOnce).await;
    let dying = connect5(b.addr, "short", |o| {
        o.set_last_will(will5("will/short", "expired", Some(60)));
        o.set_session_expiry_interval(Some(1));
    })
    .await;
    dying.kill().await;
    let m = watcher
        .recv_within(Duration::from_secs(4))
        .await
        .expect("will not published at session expiry (1 s) but held for the 60 s delay");
    assert_eq!(text(&m.payload), "expired");
}

/// A retained message sent because of a new subscription carries that
/// subscription's identifier.
#[tokio::test]
async fn v5_retained_delivery_carries_subscription_identifier() {
    let b = start().await;
    let mut publisher = connect5(b.addr, "pub", |_| {}).await;
    publisher
        .publish_acked("rid/t", Q5::AtLeastOnce, true, "kept")
        .await;
    let mut s = connect5(b.addr, "s", |_| {}).await;
    s.subscribe_filters(vec![filter5("rid/+", Q5::AtLeastOnce)], Some(sub_id(42)))
        .await;
    let m = s.recv().await;
    assert_eq!(text(&m.payload), "kept");
    assert!(m.retain);
    assert_eq!(
        m.properties.map(|p| p.subscription_identifiers),
        Some(vec![42])
    );
}

/// Regression: the will's Message Expiry Interval ran from CONNECT, so a
/// will delayed longer than its expiry was dropped as expired the moment it
/// was published.
#[tokio::test]
async fn regression_will_expiry_counts_from_publication_not_connect() {
    let b = start().await;
    let mut watcher = connect5(b.addr, "watcher", |_| {}).await;
    watcher.subscribe("will/#", Q5::AtLeastOnce).await;
    let dying = connect5(b.addr, "expiring", |o| {
        let mut w = will5("will/expiring", "late but fresh", Some(2));
        if let Some(p) = w.properties.as_mut() {
            p.message_expiry_interval = Some(1);
        }
        o.set_last_will(w);
        o.set_session_expiry_interval(Some(60));
    })
    .await;
    dying.kill().await;
    let m = watcher
        .recv_within(Duration::from_secs(6))
        .await
        .expect("delayed will published although it outlived its expiry since CONNECT");
    assert_eq!(text(&m.payload), "late but fresh");
    let p = m.properties.expect("properties");
    assert!(
        p.message_expiry_interval.is_some_and(|s| s <= 1),
        "remaining expiry forwarded: {:?}",
        p.message_expiry_interval
    );
}

/// Regression: the `$SYS` guard on PUBLISH did not cover the will topic.
#[tokio::test]
async fn regression_will_cannot_forge_sys_topics() {
    let b = start().await;
    let mut watcher = connect3(b.addr, "watcher", |_| {}).await;
    watcher.subscribe("$SYS/#", Q3::AtLeastOnce).await;
    watcher.subscribe("sentinel", Q3::AtLeastOnce).await;
    let forger = connect3(b.addr, "forger", |o| {
        o.set_last_will(rumqttc::LastWill::new(
            "$SYS/broker/clients/connected",
            "1000000",
            Q3::AtLeastOnce,
            false,
        ));
    })
    .await;
    assert_eq!(
        counter(&b.stats().denied_publish),
        1,
        "will refused at CONNECT"
    );
    forger.kill().await;
    eventually("forger gone", || counter(&b.stats().clients_connected) == 1).await;
    let mut other = connect3(b.addr, "other", |_| {}).await;
    other
        .publish_acked("sentinel", Q3::AtLeastOnce, false, "s")
        .await;
    assert_eq!(
        watcher.recv().await.topic,
        "sentinel",
        "forged $SYS will delivered"
    );
}

//! PUBLISH/SUBSCRIBE through the broker with real rumqttc clients, 3.1.1 and
//! 5.0: QoS downgrade, exactly-once, ordering under load, wildcards, `$SYS`
//! isolation, overlapping subscriptions and UNSUBSCRIBE.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use rumqttc::QoS as Q3;
use rumqttc::v5::mqttbytes::QoS as Q5;

fn q3(n: u8) -> Q3 {
    match n {
        0 => Q3::AtMostOnce,
        1 => Q3::AtLeastOnce,
        _ => Q3::ExactlyOnce,
    }
}

fn q5(n: u8) -> Q5 {
    match n {
        0 => Q5::AtMostOnce,
        1 => Q5::AtLeastOnce,
        _ => Q5::ExactlyOnce,
    }
}

#[tokio::test]
async fn v3_delivered_qos_is_min_of_published_and_granted() {
    let b = start().await;
    let mut sub = connect3(b.addr, "sub", |_| {}).await;
    for s in 0..3u8 {
        let codes = sub.subscribe(&format!("qos/{s}"), q3(s)).await;
        assert_eq!(
            codes,
            vec![rumqttc::SubscribeReasonCode::Success(q3(s))],
            "granted QoS {s}"
        );
    }
    let mut publisher = connect3(b.addr, "pub", |_| {}).await;
    for s in 0..3u8 {
        for p in 0..3u8 {
            publisher
                .publish_acked(&format!("qos/{s}"), q3(p), false, format!("p{p}"))
                .await;
        }
    }
    let mut seen = Vec::new();
    for _ in 0..9 {
        let m = sub.recv().await;
        seen.push((m.topic.clone(), text(&m.payload), m.qos as u8, m.retain));
    }
    seen.sort();
    let mut want = Vec::new();
    for s in 0..3u8 {
        for p in 0..3u8 {
            want.push((format!("qos/{s}"), format!("p{p}"), s.min(p), false));
        }
    }
    assert_eq!(seen, want);
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn v5_delivered_qos_is_min_of_published_and_granted() {
    let b = start().await;
    let mut sub = connect5(b.addr, "sub", |_| {}).await;
    for s in 0..3u8 {
        let codes = sub.subscribe(&format!("qos/{s}"), q5(s)).await;
        assert_eq!(
            codes,
            vec![m5::SubscribeReasonCode::Success(q5(s))],
            "granted QoS {s}"
        );
    }
    let mut publisher = connect5(b.addr, "pub", |_| {}).await;
    for s in 0..3u8 {
        for p in 0..3u8 {
            publisher
                .publish_acked(&format!("qos/{s}"), q5(p), false, format!("p{p}"))
                .await;
        }
    }
    let mut seen = Vec::new();
    for _ in 0..9 {
        let m = sub.recv().await;
        seen.push((text(&m.topic), text(&m.payload), m.qos as u8, m.retain));
    }
    seen.sort();
    let mut want = Vec::new();
    for s in 0..3u8 {
        for p in 0..3u8 {
            want.push((format!("qos/{s}"), format!("p{p}"), s.min(p), false));
        }
    }
    assert_eq!(seen, want);
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn v3_qos2_is_delivered_exactly_once() {
    let b = start().await;
    let mut sub = connect3(b.addr, "sub", |_| {}).await;
    sub.subscribe("exactly/once", Q3::ExactlyOnce).await;
    let publisher = connect3(b.addr, "pub", |_| {}).await;
    for i in 0..20 {
        publisher
            .publish("exactly/once", Q3::ExactlyOnce, false, format!("{i}"))
            .await;
    }
    publisher
        .publish("exactly/once", Q3::AtMostOnce, false, "end")
        .await;
    let mut got = Vec::new();
    loop {
        let m = sub.recv().await;
        if &m.payload[..] == b"end" {
            break;
        }
        assert_eq!(m.qos, Q3::ExactlyOnce);
        got.push(text(&m.payload));
    }
    let want: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(got, want, "each QoS 2 message once, in order");
}

#[tokio::test]
async fn v5_qos2_is_delivered_exactly_once() {
    let b = start().await;
    let mut sub = connect5(b.addr, "sub", |_| {}).await;
    sub.subscribe("exactly/once", Q5::ExactlyOnce).await;
    let publisher = connect5(b.addr, "pub", |_| {}).await;
    for i in 0..20 {
        publisher
            .publish("exactly/once", Q5::ExactlyOnce, false, format!("{i}"))
            .await;
    }
    publisher
        .publish("exactly/once", Q5::AtMostOnce, false, "end")
        .await;
    let mut got = Vec::new();
    loop {
        let m = sub.recv().await;
        if &m.payload[..] == b"end" {
            break;
        }
        assert_eq!(m.qos, Q5::ExactlyOnce);
        got.push(text(&m.payload));
    }
    let want: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    assert_eq!(got, want, "each QoS 2 message once, in order");
}

/// A QoS 2 PUBLISH resent with DUP before PUBREL must not be routed twice.
#[tokio::test]
async fn raw_qos2_resend_before_pubrel_is_routed_once() {
    let b = start().await;
    let mut sub = connect3(b.addr, "sub", |_| {}).await;
    sub.subscribe("dup/q2", Q3::ExactlyOnce).await;

    let mut raw = raw_tcp(b.addr, Protocol::V311).await;
    raw.handshake("raw-pub").await;
    let first = publish_packet("dup/q2", verge_mqtt::QoS::ExactlyOnce, 7, b"once");
    raw.send(&first).await;
    match raw.recv().await {
        Packet::PubRec(a) => assert_eq!(a.packet_id, 7),
        other => panic!("expected PUBREC, got {other:?}"),
    }
    let Packet::Publish(mut again) = first else {
        unreachable!()
    };
    again.dup = true;
    raw.send(&Packet::Publish(again)).await;
    match raw.recv().await {
        Packet::PubRec(a) => assert_eq!(a.packet_id, 7),
        other => panic!("expected PUBREC for the resend, got {other:?}"),
    }
    raw.send(&Packet::PubRel(ack(7))).await;
    match raw.recv().await {
        Packet::PubComp(a) => assert_eq!(a.packet_id, 7),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    raw.send(&publish_packet(
        "dup/q2",
        verge_mqtt::QoS::AtMostOnce,
        0,
        b"end",
    ))
    .await;

    assert_eq!(text(&sub.recv().await.payload), "once");
    assert_eq!(
        text(&sub.recv().await.payload),
        "end",
        "the resent QoS 2 PUBLISH was routed twice"
    );
}

#[tokio::test]
async fn v3_thousand_qos1_messages_arrive_in_order() {
    let b = start().await;
    let mut sub = connect3(b.addr, "sub", |_| {}).await;
    sub.subscribe("load/q1", Q3::AtLeastOnce).await;
    let publisher = connect3(b.addr, "pub", |_| {}).await;
    let sender = tokio::spawn(async move {
        for i in 0..1000u32 {
            publisher
                .publish("load/q1", Q3::AtLeastOnce, false, i.to_be_bytes().to_vec())
                .await;
        }
        publisher
    });
    for i in 0..1000u32 {
        let m = match sub.recv_within(WAIT).await {
            Some(m) => m,
            None => panic!("message {i} of 1000 never arrived"),
        };
        assert_eq!(m.qos, Q3::AtLeastOnce);
        assert_eq!(
            &m.payload[..],
            &i.to_be_bytes(),
            "message {i} out of order or lost"
        );
    }
    let _publisher = sender.await.expect("publisher task");
    sub.expect_no_publish(QUIET).await;
    assert!(counter(&b.stats().messages_received) >= 1000);
}

#[tokio::test]
async fn v5_thousand_qos1_messages_arrive_in_order() {
    let b = start().await;
    let mut sub = connect5(b.addr, "sub", |_| {}).await;
    sub.subscribe("load/q1", Q5::AtLeastOnce).await;
    let publisher = connect5(b.addr, "pub", |_| {}).await;
    let sender = tokio::spawn(async move {
        for i in 0..1000u32 {
            publisher
                .publish("load/q1", Q5::AtLeastOnce, false, i.to_be_bytes().to_vec())
                .await;
        }
        publisher
    });
    for i in 0..1000u32 {
        let m = match sub.recv_within(WAIT).await {
            Some(m) => m,
            None => panic!("message {i} of 1000 never arrived"),
        };
        assert_eq!(m.qos, Q5::AtLeastOnce);
        assert_eq!(
            &m.payload[..],
            &i.to_be_bytes(),
            "message {i} out of order or lost"
        );
    }
    let _publisher = sender.await.expect("publisher task");
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn v3_wildcards_plus_and_hash() {
    let b = start().await;
    let mut plus = connect3(b.addr, "plus", |_| {}).await;
    plus.subscribe("w/+/c", Q3::AtMostOnce).await;
    let mut hash = connect3(b.addr, "hash", |_| {}).await;
    hash.subscribe("w/#", Q3::AtMostOnce).await;
    let mut lead = connect3(b.addr, "lead", |_| {}).await;
    lead.subscribe("+/b/#", Q3::AtMostOnce).await;
    let mut publisher = connect3(b.addr, "pub", |_| {}).await;
    for t in ["w/b/c", "w/b/d", "w", "w/b/c/d", "x/b/c", "w/z/c"] {
        publisher.publish_acked(t, Q3::AtLeastOnce, false, t).await;
    }
    async fn topics(c: &mut Client3, n: usize) -> Vec<String> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(c.recv().await.topic);
        }
        v
    }
    assert_eq!(topics(&mut plus, 2).await, ["w/b/c", "w/z/c"]);
    assert_eq!(
        topics(&mut hash, 5).await,
        ["w/b/c", "w/b/d", "w", "w/b/c/d", "w/z/c"]
    );
    assert_eq!(
        topics(&mut lead, 4).await,
        ["w/b/c", "w/b/d", "w/b/c/d", "x/b/c"]
    );
    plus.expect_no_publish(QUIET).await;
    hash.expect_no_publish(Duration::ZERO).await;
    lead.expect_no_publish(Duration::ZERO).await;
}

#[tokio::test]
async fn v5_wildcards_plus_and_hash() {
    let b = start().await;
    let mut plus = connect5(b.addr, "plus", |_| {}).await;
    plus.subscribe("w/+/c", Q5::AtMostOnce).await;
    let mut hash = connect5(b.addr, "hash", |_| {}).await;
    hash.subscribe("w/#", Q5::AtMostOnce).await;
    let mut publisher = connect5(b.addr, "pub", |_| {}).await;
    for t in ["w/b/c", "w/b/d", "w", "w/b/c/d", "x/b/c", "w/z/c"] {
        publisher.publish_acked(t, Q5::AtLeastOnce, false, t).await;
    }
    let mut p = Vec::new();
    for _ in 0..2 {
        p.push(text(&plus.recv().await.topic));
    }
    assert_eq!(p, ["w/b/c", "w/z/c"]);
    let mut h = Vec::new();
    for _ in 0..5 {
        h.push(text(&hash.recv().await.topic));
    }
    assert_eq!(h, ["w/b/c", "w/b/d", "w", "w/b/c/d", "w/z/c"]);
    plus.expect_no_publish(QUIET).await;
    hash.expect_no_publish(Duration::ZERO).await;
}

/// `$SYS/...` is published by the broker (retained, every sys_interval) and
/// reaches `$SYS/#`, but never `#` or `+/...` subscribers (3.1.1 and 5.0),
/// neither live nor as retained messages on subscribe.
#[tokio::test]
async fn sys_topics_are_not_matched_by_leading_wildcards() {
    let b = start_with(|c| {
        c.sys_interval = verge_broker::duration::HumanDuration(Duration::from_secs(1))
    })
    .await;
    let mut sys = connect3(b.addr, "sys", |_| {}).await;
    sys.subscribe("$SYS/#", Q3::AtMostOnce).await;
    let first = sys.recv().await;
    assert!(
        first.topic.starts_with("$SYS/broker/"),
        "got {}",
        first.topic
    );

    // Retained $SYS messages exist now; leading-wildcard subscribers must get none.
    let mut all3 = connect3(b.addr, "all3", |_| {}).await;
    all3.subscribe("#", Q3::AtMostOnce).await;
    let mut plus3 = connect3(b.addr, "plus3", |_| {}).await;
    plus3.subscribe("+/broker/#", Q3::AtMostOnce).await;
    let mut all5 = connect5(b.addr, "all5", |_| {}).await;
    all5.subscribe("#", Q5::AtMostOnce).await;

    // Wait for a full new round of live $SYS messages after those subscribed.
    let mut topics = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut rounds = 0;
    while rounds < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no second $SYS round"
        );
        let m = sys.recv().await;
        if m.topic == "$SYS/broker/version" {
            rounds += 1;
        }
        topics.insert(m.topic);
    }
    for t in [
        "$SYS/broker/uptime",
        "$SYS/broker/clients/connected",
        "$SYS/broker/version",
    ] {
        assert!(topics.contains(t), "missing {t} in {topics:?}");
    }

    let mut publisher = connect3(b.addr, "pub", |_| {}).await;
    publisher
        .publish_acked("sentinel/broker/x", Q3::AtLeastOnce, false, "s")
        .await;
    assert_eq!(
        all3.recv().await.topic,
        "sentinel/broker/x",
        "`#` matched a $SYS topic"
    );
    assert_eq!(
        plus3.recv().await.topic,
        "sentinel/broker/x",
        "`+/broker/#` matched a $SYS topic"
    );
    assert_eq!(
        text(&all5.recv().await.topic),
        "sentinel/broker/x",
        "5.0 `#` matched a $SYS topic"
    );
}

/// An in-process publish on a `$` topic is not matched by `#` either.
#[tokio::test]
async fn dollar_topics_from_api_not_matched_by_hash() {
    let b = start().await;
    let mut all = connect5(b.addr, "all", |_| {}).await;
    all.subscribe("#", Q5::AtMostOnce).await;
    let mut dollar = connect5(b.addr, "dollar", |_| {}).await;
    dollar.subscribe("$internal/+", Q5::AtMostOnce).await;
    let h = b.handle();
    h.publish(verge_broker::Message::local(
        "$internal/x",
        "hidden",
        verge_mqtt::QoS::AtMostOnce,
        false,
    ))
    .await
    .expect("publish");
    h.publish(verge_broker::Message::local(
        "visible",
        "v",
        verge_mqtt::QoS::AtMostOnce,
        false,
    ))
    .await
    .expect("publish");
    assert_eq!(text(&dollar.recv().await.payload), "hidden");
    assert_eq!(
        text(&all.recv().await.topic),
        "visible",
        "`#` matched $internal/x"
    );
}

#[tokio::test]
async fn v3_overlapping_subscriptions_deliver_once_with_highest_qos() {
    let b = start().await;
    let mut sub = connect3(b.addr, "sub", |_| {}).await;
    sub.subscribe("o/#", Q3::AtMostOnce).await;
    sub.subscribe("o/+", Q3::ExactlyOnce).await;
    sub.subscribe("o/a", Q3::AtLeastOnce).await;
    let mut publisher = connect3(b.addr, "pub", |_| {}).await;
    publisher
        .publish_acked("o/a", Q3::ExactlyOnce, false, "one")
        .await;
    publisher
        .publish_acked("o/b/c", Q3::ExactlyOnce, false, "end")
        .await;
    let m = sub.recv().await;
    assert_eq!(
        (m.topic.as_str(), text(&m.payload).as_str()),
        ("o/a", "one")
    );
    assert_eq!(
        m.qos,
        Q3::ExactlyOnce,
        "overlap delivers with the highest granted QoS"
    );
    let m = sub.recv().await;
    assert_eq!(text(&m.payload), "end", "o/a delivered more than once");
    assert_eq!(m.qos, Q3::AtMostOnce, "o/b/c only matches o/# (QoS 0)");
}

/// rumqttc 0.25 over-counts each Subscription Identifier property while
/// decoding (cursor += 1 + 1 + len), so with three or more identifiers it
/// loses the last one into the payload; this test uses two identifiers (plus
/// one overlapping subscription without) and the raw test below checks three.
#[tokio::test]
async fn v5_overlapping_subscriptions_deliver_once_with_all_identifiers() {
    let b = start().await;
    let mut sub = connect5(b.addr, "sub", |_| {}).await;
    for (i, f) in [(11, "o/#"), (22, "o/+")] {
        let codes = sub
            .subscribe_filters(vec![filter5(f, Q5::AtLeastOnce)], Some(sub_id(i)))
            .await;
        assert_eq!(
            codes,
            vec![m5::SubscribeReasonCode::Success(Q5::AtLeastOnce)]
        );
    }
    sub.subscribe("o/a", Q5::AtMostOnce).await; // no identifier
    let mut publisher = connect5(b.addr, "pub", |_| {}).await;
    publisher
        .publish_acked("o/a", Q5::AtLeastOnce, false, "one")
        .await;
    publisher
        .publish_acked("o/b/c", Q5::AtLeastOnce, false, "end")
        .await;

    let m = sub.recv().await;
    assert_eq!(text(&m.payload), "one");
    assert_eq!(m.qos, Q5::AtLeastOnce, "highest granted QoS of the overlap");
    let mut ids = m
        .properties
        .expect("properties with subscription identifiers")
        .subscription_identifiers;
    ids.sort();
    assert_eq!(ids, vec![11, 22]);
    let m = sub.recv().await;
    assert_eq!(text(&m.payload), "end", "o/a delivered more than once");
    let ids = m
        .properties
        .map(|p| p.subscription_identifiers)
        .unwrap_or_default();
    assert_eq!(ids, vec![11], "only o/# matches o/b/c");
}

#[tokio::test]
async fn raw_v5_overlapping_subscriptions_carry_three_identifiers() {
    let b = start().await;
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    raw.handshake("raw-sub").await;
    for (pid, (id, f)) in [(11u32, "o/#"), (22, "o/+"), (33, "o/a")]
        .into_iter()
        .enumerate()
    {
        let Packet::Subscribe(mut s) =
            subscribe_packet(pid as u16 + 1, f, verge_mqtt::QoS::AtLeastOnce)
        else {
            unreachable!()
        };
        s.properties.subscription_identifiers = vec![id];
        raw.send(&Packet::Subscribe(s)).await;
        match raw.recv().await {
            Packet::SubAck(a) => assert_eq!(a.reason_codes, vec![1]),
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }
    let mut publisher = connect5(b.addr, "pub", |_| {}).await;
    publisher
        .publish_acked("o/a", Q5::AtLeastOnce, false, "one")
        .await;
    publisher
        .publish_acked("o/b/c", Q5::AtLeastOnce, false, "end")
        .await;
    let Packet::Publish(p) = raw.recv().await else {
        panic!("expected PUBLISH")
    };
    assert_eq!(&p.payload[..], b"one");
    let mut ids = p.properties.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(ids, vec![11, 22, 33]);
    raw.send(&Packet::PubAck(ack(p.packet_id))).await;
    let Packet::Publish(p) = raw.recv().await else {
        panic!("expected PUBLISH")
    };
    assert_eq!(&p.payload[..], b"end", "o/a delivered more than once");
    assert_eq!(p.properties.subscription_identifiers, vec![11]);
}

#[tokio::test]
async fn v3_unsubscribe_stops_delivery() {
    let b = start().await;
    let mut sub = connect3(b.addr, "sub", |_| {}).await;
    sub.subscribe("u/1", Q3::AtLeastOnce).await;
    sub.subscribe("u/2", Q3::AtLeastOnce).await;
    let mut publisher = connect3(b.addr, "pub", |_| {}).await;
    publisher
        .publish_acked("u/1", Q3::AtLeastOnce, false, "before")
        .await;
    assert_eq!(text(&sub.recv().await.payload), "before");
    sub.unsubscribe("u/1").await;
    publisher
        .publish_acked("u/1", Q3::AtLeastOnce, false, "after")
        .await;
    publisher
        .publish_acked("u/2", Q3::AtLeastOnce, false, "sentinel")
        .await;
    let m = sub.recv().await;
    assert_eq!(
        (m.topic.as_str(), text(&m.payload).as_str()),
        ("u/2", "sentinel")
    );
    assert_eq!(counter(&b.stats().subscriptions), 1);
}

#[tokio::test]
async fn v5_unsubscribe_stops_delivery_and_reports_missing_subscription() {
    let b = start().await;
    let mut sub = connect5(b.addr, "sub", |_| {}).await;
    sub.subscribe("u/1", Q5::AtLeastOnce).await;
    sub.subscribe("u/2", Q5::AtLeastOnce).await;
    let mut publisher = connect5(b.addr, "pub", |_| {}).await;
    publisher
        .publish_acked("u/1", Q5::AtLeastOnce, false, "before")
        .await;
    assert_eq!(text(&sub.recv().await.payload), "before");
    let ack = sub.unsubscribe("u/1").await;
    assert_eq!(ack.reasons, vec![m5::UnsubAckReason::Success]);
    let ack = sub.unsubscribe("u/1").await;
    assert_eq!(ack.reasons, vec![m5::UnsubAckReason::NoSubscriptionExisted]);
    publisher
        .publish_acked("u/1", Q5::AtLeastOnce, false, "after")
        .await;
    publisher
        .publish_acked("u/2", Q5::AtLeastOnce, false, "sentinel")
        .await;
    let m = sub.recv().await;
    assert_eq!(text(&m.payload), "sentinel");
}

#[tokio::test]
async fn resubscribing_replaces_the_subscription() {
    let b = start().await;
    let mut sub = connect5(b.addr, "sub", |_| {}).await;
    sub.subscribe("re/t", Q5::AtMostOnce).await;
    let codes = sub.subscribe("re/t", Q5::ExactlyOnce).await;
    assert_eq!(
        codes,
        vec![m5::SubscribeReasonCode::Success(Q5::ExactlyOnce)]
    );
    assert_eq!(
        counter(&b.stats().subscriptions),
        1,
        "a second SUBSCRIBE must replace, not add"
    );
    let mut publisher = connect5(b.addr, "pub", |_| {}).await;
    publisher
        .publish_acked("re/t", Q5::ExactlyOnce, false, "x")
        .await;
    publisher
        .publish_acked("re/t", Q5::AtMostOnce, false, "end")
        .await;
    let m = sub.recv().await;
    assert_eq!((text(&m.payload).as_str(), m.qos), ("x", Q5::ExactlyOnce));
    assert_eq!(text(&sub.recv().await.payload), "end", "delivered twice");
}

#[tokio::test]
async fn empty_levels_and_leading_slash_match_like_the_spec() {
    let b = start().await;
    let mut a = connect3(b.addr, "a", |_| {}).await;
    a.subscribe("a/+/b", Q3::AtMostOnce).await;
    let mut c = connect3(b.addr, "c", |_| {}).await;
    c.subscribe("/+", Q3::AtMostOnce).await;
    let mut publisher = connect3(b.addr, "pub", |_| {}).await;
    for t in ["a//b", "a/x/b", "/finance", "finance", "a/b"] {
        publisher.publish_acked(t, Q3::AtLeastOnce, false, t).await;
    }
    publisher
        .publish_acked("/end", Q3::AtLeastOnce, false, "/end")
        .await;
    publisher
        .publish_acked("a/end/b", Q3::AtLeastOnce, false, "a/end/b")
        .await;
    let mut got_a = Vec::new();
    for _ in 0..3 {
        got_a.push(a.recv().await.topic);
    }
    assert_eq!(got_a, ["a//b", "a/x/b", "a/end/b"]);
    let mut got_c = Vec::new();
    for _ in 0..2 {
        got_c.push(c.recv().await.topic);
    }
    assert_eq!(got_c, ["/finance", "/end"]);
}

#[tokio::test]
async fn large_payload_passes_intact() {
    let b = start().await;
    let big: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(31) % 251) as u8)
        .collect();
    let mut s3 = connect3(b.addr, "s3", |o| {
        o.set_max_packet_size(1 << 20, 1 << 20);
    })
    .await;
    s3.subscribe("big/t", Q3::AtLeastOnce).await;
    let mut s5 = connect5(b.addr, "s5", |o| {
        o.set_max_packet_size(Some(1 << 20));
    })
    .await;
    s5.subscribe("big/t", Q5::AtLeastOnce).await;
    let mut publisher = connect3(b.addr, "pub", |o| {
        o.set_max_packet_size(1 << 20, 1 << 20);
    })
    .await;
    publisher
        .publish_acked("big/t", Q3::AtLeastOnce, false, big.clone())
        .await;
    assert!(
        s3.recv().await.payload[..] == big[..],
        "3.1.1 payload changed"
    );
    assert!(
        s5.recv().await.payload[..] == big[..],
        "5.0 payload changed"
    );
}

/// Many publishers at once: nothing lost, each publisher's order kept.
#[tokio::test]
async fn concurrent_publishers_keep_per_publisher_order() {
    const PUBLISHERS: usize = 10;
    const EACH: usize = 100;
    let b = start().await;
    let mut sub = connect5(b.addr, "sub", |_| {}).await;
    sub.subscribe("many/+", Q5::AtLeastOnce).await;
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let addr = b.addr;
        tasks.push(tokio::spawn(async move {
            let c = connect3(addr, &format!("p{p}"), |_| {}).await;
            for i in 0..EACH {
                c.publish(&format!("many/{p}"), Q3::AtLeastOnce, false, format!("{i}"))
                    .await;
            }
            c
        }));
    }
    let mut next = [0usize; PUBLISHERS];
    for _ in 0..PUBLISHERS * EACH {
        let m = sub.recv().await;
        let p: usize = text(&m.topic)["many/".len()..].parse().unwrap();
        let i: usize = text(&m.payload).parse().unwrap();
        assert_eq!(i, next[p], "publisher {p}: out of order or lost");
        next[p] += 1;
    }
    for t in tasks {
        t.await.expect("publisher");
    }
    sub.expect_no_publish(QUIET).await;
}

/// 5.0: PUBREL for a packet identifier the broker does not know is answered
/// with PUBCOMP 0x92 and the connection stays up.
#[tokio::test]
async fn v5_pubrel_for_unknown_packet_id_gets_pubcomp_not_found() {
    let b = start().await;
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    raw.handshake("stray").await;
    raw.send(&Packet::PubRel(ack(99))).await;
    match raw.recv().await {
        Packet::PubComp(c) => assert_eq!(
            (c.packet_id, c.reason_code),
            (99, verge_mqtt::reason::PACKET_IDENTIFIER_NOT_FOUND)
        ),
        other => panic!("expected PUBCOMP, got {other:?}"),
    }
    raw.send(&Packet::PingReq).await;
    assert!(matches!(raw.recv().await, Packet::PingResp));
}

//! Shared subscriptions `$share/{group}/{filter}`: every message goes to
//! exactly one member of each group, members share the load, plain
//! subscribers still get everything.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use rumqttc::QoS as Q3;
use rumqttc::v5::mqttbytes::QoS as Q5;

const N: usize = 40;

#[tokio::test]
async fn v3_shared_group_splits_messages_among_members() {
    let b = start().await;
    let mut a = connect3(b.addr, "a", |_| {}).await;
    let mut c = connect3(b.addr, "c", |_| {}).await;
    let codes = a.subscribe("$share/g/jobs/+", Q3::AtLeastOnce).await;
    assert_eq!(
        codes,
        vec![rumqttc::SubscribeReasonCode::Success(Q3::AtLeastOnce)]
    );
    c.subscribe("$share/g/jobs/+", Q3::AtLeastOnce).await;
    let mut solo = connect3(b.addr, "solo", |_| {}).await;
    solo.subscribe("$share/h/jobs/#", Q3::AtLeastOnce).await;
    let mut plain = connect3(b.addr, "plain", |_| {}).await;
    plain.subscribe("jobs/+", Q3::AtLeastOnce).await;

    let mut publisher = connect3(b.addr, "pub", |_| {}).await;
    for i in 0..N {
        publisher
            .publish_acked("jobs/x", Q3::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    publisher
        .publish_acked("end", Q3::AtLeastOnce, false, "")
        .await;

    // Plain and single-member group subscribers see every message.
    for who in [&mut plain, &mut solo] {
        for i in 0..N {
            assert_eq!(text(&who.recv().await.payload), format!("{i}"));
        }
    }
    // Group g: each message to exactly one member.
    let mut got_a = Vec::new();
    while let Some(m) = a.recv_within(Duration::from_millis(400)).await {
        got_a.push(text(&m.payload).parse::<usize>().unwrap());
    }
    let mut got_c = Vec::new();
    while let Some(m) = c.recv_within(Duration::from_millis(100)).await {
        got_c.push(text(&m.payload).parse::<usize>().unwrap());
    }
    check_split(&got_a, &got_c);
}

#[tokio::test]
async fn v5_shared_group_splits_messages_among_members() {
    let b = start().await;
    let mut a = connect5(b.addr, "a", |_| {}).await;
    let mut c = connect5(b.addr, "c", |_| {}).await;
    let codes = a.subscribe("$share/g/jobs/+", Q5::AtLeastOnce).await;
    assert_eq!(
        codes,
        vec![m5::SubscribeReasonCode::Success(Q5::AtLeastOnce)]
    );
    c.subscribe("$share/g/jobs/+", Q5::AtLeastOnce).await;
    let mut plain = connect5(b.addr, "plain", |_| {}).await;
    plain.subscribe("jobs/+", Q5::AtLeastOnce).await;

    let mut publisher = connect5(b.addr, "pub", |_| {}).await;
    for i in 0..N {
        publisher
            .publish_acked("jobs/x", Q5::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    for i in 0..N {
        assert_eq!(text(&plain.recv().await.payload), format!("{i}"));
    }
    let mut got_a = Vec::new();
    while let Some(m) = a.recv_within(Duration::from_millis(400)).await {
        got_a.push(text(&m.payload).parse::<usize>().unwrap());
    }
    let mut got_c = Vec::new();
    while let Some(m) = c.recv_within(Duration::from_millis(100)).await {
        got_c.push(text(&m.payload).parse::<usize>().unwrap());
    }
    check_split(&got_a, &got_c);
}

fn check_split(a: &[usize], c: &[usize]) {
    let sa: BTreeSet<_> = a.iter().copied().collect();
    let sc: BTreeSet<_> = c.iter().copied().collect();
    assert_eq!(sa.len(), a.len(), "member a got a duplicate: {a:?}");
    assert_eq!(sc.len(), c.len(), "member c got a duplicate: {c:?}");
    assert!(
        sa.is_disjoint(&sc),
        "a message went to both members: a={a:?} c={c:?}"
    );
    let all: BTreeSet<_> = sa.union(&sc).copied().collect();
    assert_eq!(all, (0..N).collect(), "messages lost: a={a:?} c={c:?}");
    assert!(
        !a.is_empty() && !c.is_empty(),
        "load not shared: a={} c={}",
        a.len(),
        c.len()
    );
    // Each member sees its share in publish order.
    assert!(a.windows(2).all(|w| w[0] < w[1]), "a out of order: {a:?}");
    assert!(c.windows(2).all(|w| w[0] < w[1]), "c out of order: {c:?}");
}

/// Retained messages are not sent for a new shared subscription
/// (MQTT 5.0 §4.8.2).
#[tokio::test]
async fn shared_subscription_gets_no_retained_messages() {
    let b = start().await;
    let mut publisher = connect5(b.addr, "pub", |_| {}).await;
    publisher
        .publish_acked("sr/t", Q5::AtLeastOnce, true, "retained")
        .await;
    let mut s = connect5(b.addr, "s", |_| {}).await;
    s.subscribe("$share/g/sr/t", Q5::AtLeastOnce).await;
    publisher
        .publish_acked("sr/t", Q5::AtLeastOnce, false, "live")
        .await;
    assert_eq!(
        text(&s.recv().await.payload),
        "live",
        "retained message sent to a shared subscription"
    );
}

/// When a member leaves, the rest of the group gets everything.
#[tokio::test]
async fn shared_group_member_leaving_hands_over_to_the_rest() {
    let b = start().await;
    let mut a = connect3(b.addr, "a", |_| {}).await;
    a.subscribe("$share/g/w/t", Q3::AtLeastOnce).await;
    let c = {
        let mut c = connect3(b.addr, "c", |_| {}).await;
        c.subscribe("$share/g/w/t", Q3::AtLeastOnce).await;
        c
    };
    c.disconnect().await;
    eventually("member gone", || counter(&b.stats().clients_connected) == 1).await;
    let mut publisher = connect3(b.addr, "pub", |_| {}).await;
    for i in 0..6 {
        publisher
            .publish_acked("w/t", Q3::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    for i in 0..6 {
        assert_eq!(
            text(&a.recv().await.payload),
            format!("{i}"),
            "message lost to a departed member"
        );
    }
}

/// Unsubscribing from the share stops delivery to that member only.
#[tokio::test]
async fn v5_unsubscribe_from_shared_group() {
    let b = start().await;
    let mut a = connect5(b.addr, "a", |_| {}).await;
    a.subscribe("$share/g/us/t", Q5::AtLeastOnce).await;
    let mut c = connect5(b.addr, "c", |_| {}).await;
    c.subscribe("$share/g/us/t", Q5::AtLeastOnce).await;
    let ack = c.unsubscribe("$share/g/us/t").await;
    assert_eq!(ack.reasons, vec![m5::UnsubAckReason::Success]);
    let mut publisher = connect5(b.addr, "pub", |_| {}).await;
    for i in 0..4 {
        publisher
            .publish_acked("us/t", Q5::AtLeastOnce, false, format!("{i}"))
            .await;
    }
    for i in 0..4 {
        assert_eq!(text(&a.recv().await.payload), format!("{i}"));
    }
    c.expect_no_publish(QUIET).await;
}

/// A shared subscription with No Local is a Protocol Error (MQTT 5.0
/// §3.8.3.1). The broker may close with DISCONNECT 0x82 or refuse the filter
/// in SUBACK — but a SUBACK may only carry the reason codes listed in
/// §3.9.3 (0x00–0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2);
/// 0x82 is not one of them.
#[tokio::test]
async fn v5_shared_subscription_with_no_local_is_refused_validly() {
    let b = start().await;
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    raw.handshake("s").await;
    let Packet::Subscribe(mut sub) =
        subscribe_packet(1, "$share/g/nl/t", verge_mqtt::QoS::AtLeastOnce)
    else {
        unreachable!()
    };
    sub.filters[0].options.no_local = true;
    raw.send(&Packet::Subscribe(sub)).await;
    match raw.read(WAIT).await {
        Read::Packet(Packet::SubAck(a)) => {
            assert_eq!(a.reason_codes.len(), 1);
            let code = a.reason_codes[0];
            let valid_failures = [0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2];
            assert!(
                valid_failures.contains(&code),
                "SUBACK reason code {code:#04x} for shared + no local is not a valid SUBACK failure code"
            );
        }
        Read::Packet(Packet::Disconnect(d)) => {
            assert_eq!(d.reason_code, verge_mqtt::reason::PROTOCOL_ERROR)
        }
        other => panic!("expected SUBACK failure or DISCONNECT 0x82, got {other:?}"),
    }
}

/// `$share/{group}` without a filter is not a valid shared subscription
/// (MQTT 5.0 §4.8.2); it must not be taken as a plain filter either.
#[tokio::test]
async fn malformed_shared_filters_are_refused() {
    let b = start().await;
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    raw.handshake("s").await;
    for (i, f) in ["$share/g", "$share//t", "$share/g+/t", "$share/g/t#"]
        .into_iter()
        .enumerate()
    {
        let codes = raw
            .subscribe(i as u16 + 1, f, verge_mqtt::QoS::AtMostOnce)
            .await;
        assert_eq!(codes, vec![verge_mqtt::reason::TOPIC_FILTER_INVALID], "{f}");
    }
}

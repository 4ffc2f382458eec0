//! Authentication against a registry built in code and the topic ACL, with
//! 3.1.1 and 5.0 rumqttc clients. Devices use client ids under their username
//! (`sensor:…`), as the default client id binding wants.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use rumqttc::QoS as Q3;
use rumqttc::v5::mqttbytes::QoS as Q5;
use verge_broker::auth::{AclAction, AclRule, Device, Registry, hash_password};
use verge_broker::config::AclPolicy;
use verge_broker::{Authenticator, BrokerHandle, LocalSubscription};

const PASSWORD: &str = "s3cret";

/// argon2 is slow in a debug build: hash once per test binary.
fn hash() -> String {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash_password(PASSWORD).expect("hash"))
        .clone()
}

fn rule(permission: AclPolicy, action: AclAction, topic: &str) -> AclRule {
    AclRule {
        permission,
        action,
        topic: topic.to_owned(),
    }
}

fn registry() -> Registry {
    use AclAction::*;
    use AclPolicy::*;
    Registry {
        acl: vec![rule(Allow, Subscribe, "public/#")],
        devices: vec![
            Device {
                username: "sensor".into(),
                password_hash: Some(hash()),
                client_id: None,
                acl: vec![
                    rule(Allow, All, "devices/%u/#"),
                    rule(Allow, All, "clients/%c/#"),
                    rule(Allow, Publish, "telemetry/%u"),
                    rule(Deny, All, "#"),
                ],
            },
            Device {
                username: "pinned".into(),
                password_hash: Some(hash()),
                client_id: Some("pinned-1".into()),
                acl: vec![],
            },
        ],
    }
}

async fn broker(allow_anonymous: bool, default: AclPolicy) -> TestBroker {
    let mut cfg = test_config();
    cfg.allow_anonymous = allow_anonymous;
    cfg.acl_default = default;
    let auth = Authenticator::new(registry(), allow_anonymous, default).expect("authenticator");
    start_with_auth(cfg, auth).await
}

/// Sees every non-`$` message, ACL or not.
async fn spy(h: &BrokerHandle) -> LocalSubscription {
    h.subscribe("#", 1000).await.expect("local subscribe")
}

async fn spy_next(s: &mut LocalSubscription) -> (String, String) {
    let m = tokio::time::timeout(WAIT, s.recv())
        .await
        .expect("spy: nothing within WAIT")
        .expect("broker gone");
    (m.topic.to_string(), text(&m.payload))
}

fn creds3(user: &'static str, pass: &'static str) -> impl FnOnce(&mut rumqttc::MqttOptions) {
    move |o| {
        o.set_credentials(user, pass);
    }
}

fn creds5(user: &'static str, pass: &'static str) -> impl FnOnce(&mut rumqttc::v5::MqttOptions) {
    move |o| {
        o.set_credentials(user, pass);
    }
}

#[tokio::test]
async fn v3_password_authentication() {
    let b = broker(false, AclPolicy::Allow).await;
    let ok = connect3(b.addr, "sensor:c1", creds3("sensor", PASSWORD)).await;
    assert_eq!(ok.connack.code, rumqttc::ConnectReturnCode::Success);
    let bad = try_connect3(b.addr, "sensor:c2", creds3("sensor", "wrong")).await;
    assert_eq!(
        refused3(bad),
        rumqttc::ConnectReturnCode::BadUserNamePassword
    );
    let unknown = try_connect3(b.addr, "c3", creds3("nobody", PASSWORD)).await;
    assert_eq!(
        refused3(unknown),
        rumqttc::ConnectReturnCode::BadUserNamePassword
    );
    let anon = refused3(try_connect3(b.addr, "c4", |_| {}).await);
    assert!(
        matches!(
            anon,
            rumqttc::ConnectReturnCode::BadUserNamePassword
                | rumqttc::ConnectReturnCode::NotAuthorized
        ),
        "anonymous: {anon:?}"
    );
    assert_eq!(counter(&b.stats().connects_refused), 3);
}

#[tokio::test]
async fn v5_password_authentication() {
    let b = broker(false, AclPolicy::Allow).await;
    let ok = connect5(b.addr, "sensor:c1", creds5("sensor", PASSWORD)).await;
    assert_eq!(ok.connack.code, m5::ConnectReturnCode::Success);
    let bad = try_connect5(b.addr, "sensor:c2", creds5("sensor", "wrong")).await;
    assert_eq!(refused5(bad), m5::ConnectReturnCode::BadUserNamePassword);
    let anon = refused5(try_connect5(b.addr, "c3", |_| {}).await);
    assert!(
        matches!(
            anon,
            m5::ConnectReturnCode::BadUserNamePassword | m5::ConnectReturnCode::NotAuthorized
        ),
        "anonymous: {anon:?}"
    );
}

#[tokio::test]
async fn device_pinned_to_a_client_id() {
    let b = broker(false, AclPolicy::Allow).await;
    let wrong3 = try_connect3(b.addr, "other", creds3("pinned", PASSWORD)).await;
    assert_eq!(refused3(wrong3), rumqttc::ConnectReturnCode::NotAuthorized);
    let wrong5 = try_connect5(b.addr, "other", creds5("pinned", PASSWORD)).await;
    assert_eq!(refused5(wrong5), m5::ConnectReturnCode::NotAuthorized);
    connect5(b.addr, "pinned-1", creds5("pinned", PASSWORD)).await;
}

#[tokio::test]
async fn v3_acl_subscribe_denied_gets_failure_code() {
    let b = broker(false, AclPolicy::Allow).await;
    let mut c = connect3(b.addr, "sensor:c", creds3("sensor", PASSWORD)).await;
    c.client
        .subscribe_many([
            rumqttc::SubscribeFilter::new("devices/sensor/cmd".into(), Q3::AtLeastOnce),
            rumqttc::SubscribeFilter::new("devices/other/cmd".into(), Q3::AtLeastOnce),
            rumqttc::SubscribeFilter::new("devices/+/cmd".into(), Q3::AtLeastOnce),
            rumqttc::SubscribeFilter::new("public/news".into(), Q3::AtMostOnce),
        ])
        .await
        .unwrap();
    let codes = c.suback().await;
    assert_eq!(
        codes,
        vec![
            rumqttc::SubscribeReasonCode::Success(Q3::AtLeastOnce),
            rumqttc::SubscribeReasonCode::Failure,
            rumqttc::SubscribeReasonCode::Failure,
            rumqttc::SubscribeReasonCode::Failure, // device's deny-all comes before the global rule
        ]
    );
    assert_eq!(counter(&b.stats().denied_subscribe), 3);
    // The granted one works.
    c.publish_acked("devices/sensor/cmd", Q3::AtLeastOnce, false, "go")
        .await;
    assert_eq!(text(&c.recv().await.payload), "go");
}

#[tokio::test]
async fn v5_acl_subscribe_denied_gets_not_authorized() {
    let b = broker(false, AclPolicy::Allow).await;
    let mut c = connect5(b.addr, "sensor:c", creds5("sensor", PASSWORD)).await;
    let codes = c
        .subscribe_filters(
            vec![
                filter5("devices/sensor/#", Q5::AtLeastOnce),
                filter5("devices/other/#", Q5::AtLeastOnce),
                filter5("#", Q5::AtMostOnce),
            ],
            None,
        )
        .await;
    assert_eq!(
        codes,
        vec![
            m5::SubscribeReasonCode::Success(Q5::AtLeastOnce),
            m5::SubscribeReasonCode::NotAuthorized,
            m5::SubscribeReasonCode::NotAuthorized,
        ]
    );
}

#[tokio::test]
async fn v5_acl_publish_denied_gets_puback_not_authorized_and_is_not_delivered() {
    let b = broker(false, AclPolicy::Allow).await;
    let mut spy = spy(&b.handle()).await;
    let mut c = connect5(b.addr, "sensor:c", creds5("sensor", PASSWORD)).await;
    c.publish("devices/other/x", Q5::AtLeastOnce, false, "denied")
        .await;
    match c.wait_pub_ack(Q5::AtLeastOnce).await {
        Some(m5::Packet::PubAck(a)) => assert_eq!(a.reason, m5::PubAckReason::NotAuthorized),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    c.publish("devices/other/y", Q5::ExactlyOnce, false, "denied2")
        .await;
    let rec = c
        .wait_ctrl("PUBREC", |p| matches!(p, m5::Packet::PubRec(_)))
        .await;
    match rec {
        m5::Packet::PubRec(r) => assert_eq!(r.reason, m5::PubRecReason::NotAuthorized),
        _ => unreachable!(),
    }
    c.publish("devices/sensor/x", Q5::AtLeastOnce, false, "allowed")
        .await;
    match c.wait_pub_ack(Q5::AtLeastOnce).await {
        Some(m5::Packet::PubAck(a)) => assert_eq!(a.reason, m5::PubAckReason::Success),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    assert_eq!(
        spy_next(&mut spy).await,
        ("devices/sensor/x".into(), "allowed".into()),
        "a denied publish was routed"
    );
    assert_eq!(counter(&b.stats().denied_publish), 2);
}

#[tokio::test]
async fn v3_acl_publish_denied_is_not_delivered() {
    let b = broker(false, AclPolicy::Allow).await;
    let mut spy = spy(&b.handle()).await;
    let mut c = connect3(b.addr, "sensor:c", creds3("sensor", PASSWORD)).await;
    c.publish_acked("devices/other/x", Q3::AtLeastOnce, false, "denied")
        .await;
    c.publish_acked("telemetry/other", Q3::AtMostOnce, false, "denied")
        .await;
    c.publish_acked("telemetry/sensor", Q3::AtLeastOnce, false, "allowed")
        .await;
    assert_eq!(
        spy_next(&mut spy).await,
        ("telemetry/sensor".into(), "allowed".into())
    );
    assert!(
        c.closed_within(Duration::ZERO).await.is_none(),
        "3.1.1 client kept connected"
    );
}

#[tokio::test]
async fn acl_substitutes_username_and_client_id() {
    let b = broker(false, AclPolicy::Allow).await;
    let mut c = connect5(b.addr, "sensor:c-9", creds5("sensor", PASSWORD)).await;
    let codes = c
        .subscribe_filters(
            vec![
                filter5("clients/sensor:c-9/#", Q5::AtMostOnce),
                filter5("clients/sensor:c-8/#", Q5::AtMostOnce),
                filter5("devices/sensor/+", Q5::AtMostOnce),
                filter5("devices/sensor2/+", Q5::AtMostOnce),
            ],
            None,
        )
        .await;
    assert_eq!(
        codes,
        vec![
            m5::SubscribeReasonCode::Success(Q5::AtMostOnce),
            m5::SubscribeReasonCode::NotAuthorized,
            m5::SubscribeReasonCode::Success(Q5::AtMostOnce),
            m5::SubscribeReasonCode::NotAuthorized,
        ]
    );
}

/// A client id holding wildcards must not widen a `%c` rule.
#[tokio::test]
async fn wildcard_client_id_does_not_widen_acl() {
    let b = broker(false, AclPolicy::Allow).await;
    let mut c = connect5(b.addr, "sensor:+", creds5("sensor", PASSWORD)).await;
    let codes = c
        .subscribe_filters(vec![filter5("clients/+/secret", Q5::AtMostOnce)], None)
        .await;
    assert_eq!(codes, vec![m5::SubscribeReasonCode::NotAuthorized]);
    let mut spy = spy(&b.handle()).await;
    c.publish("clients/other/secret", Q5::AtLeastOnce, false, "x")
        .await;
    match c.wait_pub_ack(Q5::AtLeastOnce).await {
        Some(m5::Packet::PubAck(a)) => assert_eq!(a.reason, m5::PubAckReason::NotAuthorized),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    c.publish_acked("devices/sensor/ok", Q5::AtLeastOnce, false, "ok")
        .await;
    assert_eq!(spy_next(&mut spy).await.0, "devices/sensor/ok");
}

#[tokio::test]
async fn default_deny_with_anonymous_clients() {
    let b = broker(true, AclPolicy::Deny).await;
    let mut spy = spy(&b.handle()).await;
    let mut anon = connect5(b.addr, "anon", |_| {}).await;
    let codes = anon
        .subscribe_filters(
            vec![
                filter5("public/news", Q5::AtMostOnce),
                filter5("private/x", Q5::AtMostOnce),
            ],
            None,
        )
        .await;
    assert_eq!(
        codes,
        vec![
            m5::SubscribeReasonCode::Success(Q5::AtMostOnce),
            m5::SubscribeReasonCode::NotAuthorized,
        ]
    );
    anon.publish("public/news", Q5::AtLeastOnce, false, "x")
        .await;
    match anon.wait_pub_ack(Q5::AtLeastOnce).await {
        Some(m5::Packet::PubAck(a)) => assert_eq!(a.reason, m5::PubAckReason::NotAuthorized),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    // In-process publishes are not subject to the ACL and reach the anonymous subscriber.
    b.handle()
        .publish(verge_broker::Message::local(
            "public/news",
            "from-node",
            verge_mqtt::QoS::AtMostOnce,
            false,
        ))
        .await
        .unwrap();
    assert_eq!(text(&anon.recv().await.payload), "from-node");
    assert_eq!(
        spy_next(&mut spy).await.1,
        "from-node",
        "the denied publish was routed"
    );
}

#[tokio::test]
async fn will_to_a_denied_topic_is_dropped() {
    let b = broker(false, AclPolicy::Allow).await;
    let mut spy = spy(&b.handle()).await;
    let denied = connect3(b.addr, "sensor:w1", |o| {
        o.set_credentials("sensor", PASSWORD);
        o.set_last_will(rumqttc::LastWill::new(
            "devices/other/will",
            "x",
            Q3::AtMostOnce,
            false,
        ));
    })
    .await;
    denied.kill().await;
    let allowed = connect3(b.addr, "sensor:w2", |o| {
        o.set_credentials("sensor", PASSWORD);
        o.set_last_will(rumqttc::LastWill::new(
            "devices/sensor/will",
            "y",
            Q3::AtMostOnce,
            false,
        ));
    })
    .await;
    allowed.kill().await;
    assert_eq!(
        spy_next(&mut spy).await,
        ("devices/sensor/will".into(), "y".into()),
        "will to a denied topic was published"
    );
}

/// With anonymous access on, a CONNECT that names a registered user but
/// gives no password is at best anonymous: it must not get that user's
/// `%u` rights (a wrong password is refused, so no password must not be
/// better than a wrong one).
#[tokio::test]
async fn username_without_password_does_not_impersonate() {
    let mut reg = registry();
    reg.acl = vec![rule(AclPolicy::Allow, AclAction::All, "devices/%u/#")];
    let mut cfg = test_config();
    cfg.allow_anonymous = true;
    cfg.acl_default = AclPolicy::Deny;
    let auth = Authenticator::new(reg, true, AclPolicy::Deny).expect("authenticator");
    let b = start_with_auth(cfg, auth).await;

    // The real device gets its rights.
    let mut real = connect5(b.addr, "sensor:real", creds5("sensor", PASSWORD)).await;
    assert_eq!(
        real.subscribe("devices/sensor/cmd", Q5::AtMostOnce).await,
        vec![m5::SubscribeReasonCode::Success(Q5::AtMostOnce)]
    );
    // A wrong password is refused.
    let wrong = try_connect5(b.addr, "sensor:wrong", creds5("sensor", "nope")).await;
    assert_eq!(refused5(wrong), m5::ConnectReturnCode::BadUserNamePassword);

    // Username, no password.
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    let mut c = connect_packet(Protocol::V5, "impostor", 0);
    c.username = Some("sensor".into());
    let ack = raw.connect(c).await;
    if ack.reason_code == 0 {
        let codes = raw
            .subscribe(1, "devices/sensor/cmd", verge_mqtt::QoS::AtMostOnce)
            .await;
        assert_eq!(
            codes,
            vec![verge_mqtt::reason::NOT_AUTHORIZED],
            "an unauthenticated username was trusted for %u"
        );
    }
}

/// `$SYS/...` belongs to the broker: a client cannot forge its statistics,
/// even with the ACL allowing everything.
#[tokio::test]
async fn v5_clients_cannot_publish_to_sys_topics() {
    let b = start().await;
    let mut spy = b.handle().subscribe("$SYS/#", 16).await.expect("subscribe");
    let mut c = connect5(b.addr, "forger", |_| {}).await;
    c.publish("$SYS/broker/uptime", Q5::AtLeastOnce, true, "0")
        .await;
    match c.wait_pub_ack(Q5::AtLeastOnce).await {
        Some(m5::Packet::PubAck(a)) => assert_eq!(a.reason, m5::PubAckReason::NotAuthorized),
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let got = tokio::time::timeout(std::time::Duration::from_millis(300), spy.recv()).await;
    assert!(got.is_err(), "a client's $SYS publish was routed: {got:?}");
}

#[tokio::test]
async fn disconnect_user_closes_only_that_users_connections() {
    let b = broker(false, AclPolicy::Allow).await;
    let mut v3 = connect3(b.addr, "sensor:s-3", creds3("sensor", PASSWORD)).await;
    let mut v5 = connect5(b.addr, "sensor:s-5", creds5("sensor", PASSWORD)).await;
    let mut other = connect5(b.addr, "pinned-1", creds5("pinned", PASSWORD)).await;
    let closed = b.handle().disconnect_user("sensor").await.expect("broker");
    assert_eq!(closed, 2);
    assert!(
        v3.closed_within(WAIT).await.is_some(),
        "3.1.1 client closed"
    );
    let why = v5.closed_within(WAIT).await.expect("5.0 client closed");
    assert!(
        format!("{why:?}").contains("AdministrativeAction"),
        "reason 0x98: {why:?}"
    );
    assert!(
        other
            .closed_within(Duration::from_millis(300))
            .await
            .is_none(),
        "another user stays connected"
    );
    assert_eq!(
        b.handle().disconnect_user("nobody").await.expect("broker"),
        0
    );
}

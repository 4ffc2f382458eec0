//! Device identity: a client id is bound to the username it authenticated
//! with (`client_id_binding`), and a session belongs to the identity that
//! made it. Regression (issue 16, finding 5): a device connecting with
//! another device's client id disconnected it and, with clean session off,
//! took over its persistent session and the commands queued for it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use rumqttc::v5::mqttbytes::QoS as Q5;
use verge_broker::auth::{Device, Registry, hash_password};
use verge_broker::config::{AclPolicy, ClientIdBinding};
use verge_broker::message::Message;
use verge_broker::{Authenticator, BrokerHandle};
use verge_mqtt::{Packet, Protocol, QoS, reason};

const PASSWORD: &str = "pw";

/// argon2 is slow in a debug build: hash once per test binary.
fn hash() -> String {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| hash_password(PASSWORD).expect("hash"))
        .clone()
}

fn device(name: &str) -> Device {
    Device {
        username: name.into(),
        password_hash: Some(hash()),
        client_id: None,
        acl: vec![],
    }
}

async fn broker(binding: ClientIdBinding, anonymous: bool) -> TestBroker {
    let mut cfg = test_config();
    cfg.allow_anonymous = anonymous;
    cfg.client_id_binding = binding;
    let registry = Registry {
        acl: vec![],
        devices: vec![device("dev1"), device("dev10"), device("dev2")],
    };
    let auth = Authenticator::new(registry, anonymous, AclPolicy::Allow).expect("auth");
    start_with_auth(cfg, auth).await
}

/// A raw CONNECT as `user` (with the password) or anonymous.
fn connect_as(
    protocol: Protocol,
    client_id: &str,
    user: Option<&str>,
    clean: bool,
) -> verge_mqtt::Connect {
    let mut c = connect_packet(protocol, client_id, 0);
    c.clean_start = clean;
    if let Some(u) = user {
        c.username = Some(u.into());
        c.password = Some(bytes::Bytes::from_static(PASSWORD.as_bytes()));
    }
    if protocol == Protocol::V5 && !clean {
        c.properties.session_expiry_interval = Some(3600);
    }
    c
}

async fn connack(b: &TestBroker, c: verge_mqtt::Connect) -> (Raw<tokio::net::TcpStream>, u8) {
    let mut raw = raw_tcp(b.addr, c.protocol).await;
    let ack = raw.connect(c).await;
    (raw, ack.reason_code)
}

#[tokio::test]
async fn v5_client_id_not_bound_to_the_username_gets_connack_0x85() {
    let b = broker(ClientIdBinding::Prefix, false).await;
    for (id, want) in [
        ("dev1", 0),
        ("dev1:pump", 0),
        ("dev10", reason::CLIENT_IDENTIFIER_NOT_VALID),
        ("dev1-pump", reason::CLIENT_IDENTIFIER_NOT_VALID),
        ("dev2:x", reason::CLIENT_IDENTIFIER_NOT_VALID),
    ] {
        let (_raw, code) = connack(&b, connect_as(Protocol::V5, id, Some("dev1"), true)).await;
        assert_eq!(code, want, "dev1 with client id {id}");
    }
    assert_eq!(counter(&b.stats().refused_client_ids), 3);
}

#[tokio::test]
async fn v311_client_id_not_bound_to_the_username_gets_identifier_rejected() {
    let b = broker(ClientIdBinding::Prefix, false).await;
    let ok = connect3(b.addr, "dev1:a", |o| {
        o.set_credentials("dev1", PASSWORD);
    })
    .await;
    assert_eq!(ok.connack.code, rumqttc::ConnectReturnCode::Success);
    let refused = try_connect3(b.addr, "dev10", |o| {
        o.set_credentials("dev1", PASSWORD);
    })
    .await;
    assert_eq!(
        refused3(refused),
        rumqttc::ConnectReturnCode::BadClientId,
        "3.1.1 return code 2"
    );
}

#[tokio::test]
async fn exact_binding_wants_the_username_itself() {
    let b = broker(ClientIdBinding::Exact, false).await;
    let (_a, code) = connack(&b, connect_as(Protocol::V5, "dev1", Some("dev1"), true)).await;
    assert_eq!(code, 0);
    let (_b, code) = connack(&b, connect_as(Protocol::V5, "dev1:x", Some("dev1"), true)).await;
    assert_eq!(code, reason::CLIENT_IDENTIFIER_NOT_VALID);
}

#[tokio::test]
async fn an_empty_client_id_is_assigned_under_the_username() {
    let b = broker(ClientIdBinding::Prefix, false).await;
    let c = connect5(b.addr, "", |o| {
        o.set_credentials("dev1", PASSWORD);
    })
    .await;
    let props = c.connack.properties.clone().expect("CONNACK properties");
    let id = props.assigned_client_identifier.expect("assigned id");
    assert!(id.starts_with("dev1:verge-"), "{id}");
}

#[tokio::test]
async fn an_empty_client_id_is_the_username_under_exact_binding() {
    let b = broker(ClientIdBinding::Exact, false).await;
    let c = connect5(b.addr, "", |o| {
        o.set_credentials("dev1", PASSWORD);
    })
    .await;
    let props = c.connack.properties.clone().expect("CONNACK properties");
    assert_eq!(props.assigned_client_identifier.as_deref(), Some("dev1"));
}

/// A username without a password is no identity: with anonymous access on
/// such a client is anonymous, and its assigned id is an ordinary one.
#[tokio::test]
async fn an_unverified_username_does_not_place_the_assigned_id() {
    let b = broker(ClientIdBinding::Prefix, true).await;
    let mut c = connect_packet(Protocol::V5, "", 0);
    c.username = Some("dev1".into());
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    let ack = raw.connect(c).await;
    assert_eq!(ack.reason_code, 0, "{ack:?}");
    let id = ack
        .properties
        .assigned_client_identifier
        .expect("assigned id");
    assert!(id.starts_with("verge-"), "{id}");
}

#[tokio::test]
async fn anonymous_clients_keep_out_of_registered_client_ids() {
    let b = broker(ClientIdBinding::Prefix, true).await;
    let (_a, code) = connack(&b, connect_as(Protocol::V5, "dev1:x", None, true)).await;
    assert_eq!(code, reason::CLIENT_IDENTIFIER_NOT_VALID);
    let (_b, code) = connack(&b, connect_as(Protocol::V5, "visitor", None, true)).await;
    assert_eq!(code, 0);
}

/// Queue two commands for dev1's persistent session while it is away.
async fn queue_commands(h: &BrokerHandle, topic: &str) {
    for i in 0..2 {
        h.publish(Message::local(
            topic,
            format!("cmd{i}"),
            QoS::AtLeastOnce,
            false,
        ))
        .await
        .expect("publish");
    }
}

/// The finding itself, with binding off so only session ownership stands
/// in the way: dev2 connecting with dev1's client id, clean session off, is
/// refused and gets nothing; dev1 then resumes and gets its commands.
async fn takeover_of_an_offline_session_refused(protocol: Protocol) {
    let b = broker(ClientIdBinding::Off, false).await;
    let id = "dev1:ctl";
    let (mut victim, code) = connack(&b, connect_as(protocol, id, Some("dev1"), false)).await;
    assert_eq!(code, 0);
    assert_eq!(
        victim.subscribe(1, "cmd/dev1", QoS::AtLeastOnce).await,
        vec![1]
    );
    victim.send(&Packet::Disconnect(Default::default())).await;
    assert_eq!(victim.expect_closed(WAIT).await, None);
    queue_commands(&b.handle(), "cmd/dev1").await;

    let (mut thief, code) = connack(&b, connect_as(protocol, id, Some("dev2"), false)).await;
    assert_eq!(code, reason::CLIENT_IDENTIFIER_NOT_VALID, "{protocol:?}");
    assert_eq!(
        thief.expect_closed(WAIT).await,
        None,
        "refused: closed with nothing delivered"
    );
    // Nor anonymously (binding off, anonymous refused anyway here) nor with
    // clean session on, which would have discarded the session.
    let (_t, code) = connack(&b, connect_as(protocol, id, Some("dev2"), true)).await;
    assert_eq!(code, reason::CLIENT_IDENTIFIER_NOT_VALID);
    assert_eq!(counter(&b.stats().refused_client_ids), 2);

    let (mut back, code) = connack(&b, connect_as(protocol, id, Some("dev1"), false)).await;
    assert_eq!(code, 0);
    for i in 0..2 {
        match back
            .recv_matching("PUBLISH", |p| matches!(p, Packet::Publish(_)))
            .await
        {
            Packet::Publish(p) => assert_eq!(&p.payload[..], format!("cmd{i}").as_bytes()),
            _ => unreachable!(),
        }
    }
}

#[tokio::test]
async fn regression_v5_device_cannot_take_over_another_devices_session() {
    takeover_of_an_offline_session_refused(Protocol::V5).await;
}

#[tokio::test]
async fn regression_v311_device_cannot_take_over_another_devices_session() {
    takeover_of_an_offline_session_refused(Protocol::V311).await;
}

/// A live session: the other device is refused and the connected one stays
/// connected and keeps receiving.
#[tokio::test]
async fn connected_device_is_not_disconnected_by_another_identity() {
    let b = broker(ClientIdBinding::Off, true).await;
    let mut victim = connect5(b.addr, "shared-id", |o| {
        o.set_credentials("dev1", PASSWORD);
        o.set_clean_start(false);
    })
    .await;
    victim.subscribe("cmd/dev1", Q5::AtLeastOnce).await;
    let thief = try_connect5(b.addr, "shared-id", |o| {
        o.set_credentials("dev2", PASSWORD);
    })
    .await;
    assert_eq!(
        refused5(thief),
        m5::ConnectReturnCode::ClientIdentifierNotValid
    );
    // Anonymous does not get it either.
    let anon = try_connect3(b.addr, "shared-id", |_| {}).await;
    assert_eq!(refused3(anon), rumqttc::ConnectReturnCode::BadClientId);
    b.handle()
        .publish(Message::local(
            "cmd/dev1",
            "still yours",
            QoS::AtLeastOnce,
            false,
        ))
        .await
        .expect("publish");
    assert_eq!(text(&victim.recv().await.payload), "still yours");
    assert!(
        victim
            .closed_within(Duration::from_millis(300))
            .await
            .is_none(),
        "the first device stays connected"
    );
}

/// The same identity still takes over its own session (a device that
/// reconnects before the broker noticed the old connection died).
#[tokio::test]
async fn the_same_identity_still_takes_over_its_session() {
    let b = broker(ClientIdBinding::Prefix, false).await;
    let mut old = connect5(b.addr, "dev1:a", |o| {
        o.set_credentials("dev1", PASSWORD);
    })
    .await;
    let _new = connect5(b.addr, "dev1:a", |o| {
        o.set_credentials("dev1", PASSWORD);
    })
    .await;
    let why = old
        .closed_within(WAIT)
        .await
        .expect("old connection closed");
    assert!(format!("{why:?}").contains("SessionTakenOver"), "{why:?}");
}

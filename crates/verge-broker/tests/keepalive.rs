//! Keep alive: a silent client is closed after 1.5 × keep alive, a pinging
//! one is not, keep alive 0 is off, and 5.0 Server Keep Alive when a client
//! asks for more than `max_keep_alive` (300 s unless configured). Raw TCP clients so nothing pings behind
//! the test's back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn v3_silent_client_closed_after_keep_alive() {
    let b = start().await;
    let mut raw = raw_tcp(b.addr, Protocol::V311).await;
    let ack = raw
        .connect(connect_packet(Protocol::V311, "silent", 1))
        .await;
    assert_eq!(ack.reason_code, 0);
    assert!(
        matches!(raw.read(Duration::from_millis(500)).await, Read::Timeout),
        "closed too early (keep alive 1 s allows 1.5 s of silence)"
    );
    assert_eq!(
        raw.expect_closed(WAIT).await,
        None,
        "3.1.1 has no DISCONNECT from the server"
    );
}

#[tokio::test]
async fn v5_silent_client_gets_keep_alive_timeout() {
    let b = start().await;
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    let ack = raw.connect(connect_packet(Protocol::V5, "silent", 1)).await;
    assert_eq!(ack.reason_code, 0);
    assert_eq!(
        ack.properties.server_keep_alive, None,
        "no max_keep_alive configured"
    );
    assert!(matches!(
        raw.read(Duration::from_millis(500)).await,
        Read::Timeout
    ));
    assert_eq!(
        raw.expect_closed(WAIT).await,
        Some(verge_mqtt::reason::KEEP_ALIVE_TIMEOUT),
        "DISCONNECT 0x8D"
    );
}

#[tokio::test]
async fn pinging_client_stays_connected() {
    let b = start().await;
    let mut raw = raw_tcp(b.addr, Protocol::V311).await;
    raw.connect(connect_packet(Protocol::V311, "pinger", 1))
        .await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        raw.send(&Packet::PingReq).await;
        match raw.read(WAIT).await {
            Read::Packet(Packet::PingResp) => {}
            other => panic!("expected PINGRESP, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn keep_alive_zero_is_accepted_and_never_times_out_without_max_keep_alive() {
    let b = start_with(|c| c.max_keep_alive = 0).await;
    let mut v3 = raw_tcp(b.addr, Protocol::V311).await;
    assert_eq!(
        v3.connect(connect_packet(Protocol::V311, "ka0-3", 0))
            .await
            .reason_code,
        0
    );
    let mut v5 = raw_tcp(b.addr, Protocol::V5).await;
    let ack = v5.connect(connect_packet(Protocol::V5, "ka0-5", 0)).await;
    assert_eq!(ack.reason_code, 0);
    assert_eq!(ack.properties.server_keep_alive, None);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    for raw in [&mut v3, &mut v5] {
        raw.send(&Packet::PingReq).await;
        match raw.read(WAIT).await {
            Read::Packet(Packet::PingResp) => {}
            other => panic!("keep alive 0 connection: expected PINGRESP, got {other:?}"),
        }
    }
}

/// The default `max_keep_alive` (300 s) lowers a 5.0 client asking for
/// more, or for 0, and says so; a 3.1.1 client cannot be told, so it keeps
/// keep alive 0 (off).
#[tokio::test]
async fn default_max_keep_alive_caps_v5_clients_only() {
    let b = start().await;
    for asked in [3600, 0] {
        let mut v5 = raw_tcp(b.addr, Protocol::V5).await;
        let ack = v5
            .connect(connect_packet(Protocol::V5, &format!("ka-{asked}"), asked))
            .await;
        assert_eq!(ack.reason_code, 0);
        assert_eq!(ack.properties.server_keep_alive, Some(300), "asked {asked}");
    }
    let mut v5 = raw_tcp(b.addr, Protocol::V5).await;
    let ack = v5.connect(connect_packet(Protocol::V5, "ka-60", 60)).await;
    assert_eq!(
        ack.properties.server_keep_alive, None,
        "60 is under the cap"
    );
    let mut v3 = raw_tcp(b.addr, Protocol::V311).await;
    let ack = v3.connect(connect_packet(Protocol::V311, "ka0-3", 0)).await;
    assert_eq!(ack.reason_code, 0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    v3.send(&Packet::PingReq).await;
    assert!(matches!(
        v3.read(WAIT).await,
        Read::Packet(Packet::PingResp)
    ));
}

#[tokio::test]
async fn v5_server_keep_alive_when_max_keep_alive_configured() {
    let b = start_with(|c| c.max_keep_alive = 2).await;
    // rumqttc asks for 30 s: told 2.
    let c = connect5(b.addr, "long", |_| {}).await;
    let props = c.connack.properties.clone().expect("CONNACK properties");
    assert_eq!(props.server_keep_alive, Some(2));
    // Asking for less than the maximum is left alone.
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    let ack = raw.connect(connect_packet(Protocol::V5, "short", 1)).await;
    assert_eq!(ack.properties.server_keep_alive, None);
}

#[tokio::test]
async fn v5_keep_alive_zero_is_replaced_and_enforced_when_max_configured() {
    let b = start_with(|c| c.max_keep_alive = 1).await;
    let mut raw = raw_tcp(b.addr, Protocol::V5).await;
    let ack = raw.connect(connect_packet(Protocol::V5, "zero", 0)).await;
    assert_eq!(ack.reason_code, 0);
    assert_eq!(
        ack.properties.server_keep_alive,
        Some(1),
        "keep alive 0 overridden"
    );
    assert!(matches!(
        raw.read(Duration::from_millis(500)).await,
        Read::Timeout
    ));
    assert_eq!(
        raw.expect_closed(WAIT).await,
        Some(verge_mqtt::reason::KEEP_ALIVE_TIMEOUT),
        "server keep alive enforced"
    );
}

#[tokio::test]
async fn connection_without_connect_is_closed_after_connect_timeout() {
    let b = start_with(|c| {
        c.connect_timeout = verge_broker::duration::HumanDuration(Duration::from_secs(1))
    })
    .await;
    let mut raw = raw_tcp(b.addr, Protocol::V311).await;
    assert!(
        matches!(raw.read(Duration::from_millis(500)).await, Read::Timeout),
        "closed before the connect timeout"
    );
    assert_eq!(raw.expect_closed(WAIT).await, None);
}

/// A real client with keep alive 1 s pings and stays connected (rumqttc's
/// 5.0 client refuses keep alives under 5 s, so 3.1.1 only).
#[tokio::test]
async fn rumqttc_client_with_short_keep_alive_stays_connected() {
    let b = start().await;
    let mut c = connect3(b.addr, "ka1", |o| {
        o.set_keep_alive(Duration::from_secs(1));
    })
    .await;
    assert!(
        c.closed_within(Duration::from_millis(3200)).await.is_none(),
        "3.1.1 client dropped"
    );
    c.subscribe("ka/t", rumqttc::QoS::AtMostOnce).await;
}

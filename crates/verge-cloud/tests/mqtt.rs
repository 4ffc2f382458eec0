//! The node MQTT endpoint through `serve` on real sockets: upstream
//! messages are in the database before the PUBACK, the ACL keeps a node to
//! its own topics, and commands reach the node.

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use serde_json::json;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

async fn next_packet(el: &mut EventLoop, what: &str, want: impl Fn(&Packet) -> bool) -> Packet {
    timeout(WAIT, async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(p)) if want(&p) => return p,
                Ok(_) => {}
                Err(e) => panic!("{what}: connection failed: {e:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_is_stored_before_puback_acl_and_commands() {
    let h = common::harness().await;
    let (node, secret) = h.joined_node("edge-m").await;
    let (other, _) = h.joined_node("edge-o").await;
    let (s, _) = h
        .call(
            Method::POST,
            "/api/devices",
            Some(json!({"name": "d1", "node_id": node})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);

    let served = common::serve(&h).await;
    let mqtt_addr = served.mqtt;

    // Wrong password is refused.
    let mut bad = MqttOptions::new("bad", mqtt_addr.ip().to_string(), mqtt_addr.port());
    bad.set_credentials(node.clone(), "wrong");
    let (_c, mut el) = AsyncClient::new(bad, 10);
    assert!(timeout(WAIT, el.poll()).await.expect("answer").is_err());

    let mut opts = MqttOptions::new("node-m", mqtt_addr.ip().to_string(), mqtt_addr.port());
    opts.set_credentials(node.clone(), secret.clone());
    let (client, mut el) = AsyncClient::new(opts, 64);
    next_packet(&mut el, "CONNACK", |p| matches!(p, Packet::ConnAck(_))).await;

    // Downstream: subscribe to our own commands.
    client
        .subscribe(format!("nodes/{node}/down/#"), QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    next_packet(&mut el, "SUBACK", |p| matches!(p, Packet::SubAck(_))).await;

    // Upstream telemetry with a verge-id, twice: stored once.
    let topic = format!("nodes/{node}/up/devices/d1/telemetry");
    for _ in 0..2 {
        let props = PublishProperties {
            user_properties: vec![("verge-id".into(), "m-1".into())],
            ..Default::default()
        };
        client
            .publish_with_properties(
                topic.clone(),
                QoS::AtLeastOnce,
                false,
                r#"{"t":21.5}"#,
                props,
            )
            .await
            .expect("publish");
        let ack = next_packet(&mut el, "PUBACK", |p| matches!(p, Packet::PubAck(_))).await;
        if let Packet::PubAck(a) = ack {
            assert_eq!(a.reason, PubAckReason::Success);
        }
        // At PUBACK time the row is already there.
        let (s, msgs) = h
            .call(Method::GET, &format!("/api/nodes/{node}/messages"), None)
            .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(msgs.as_array().map(Vec::len), Some(1), "{msgs}");
        assert_eq!(msgs[0]["topic"], "devices/d1/telemetry");
        assert_eq!(msgs[0]["payload"]["t"], 21.5);
    }
    let (_, dev) = h.call(Method::GET, "/api/devices/d1", None).await;
    assert_eq!(dev["last_telemetry"]["t"], 21.5);
    let (_, dm) = h.call(Method::GET, "/api/devices/d1/messages", None).await;
    assert_eq!(dm.as_array().map(Vec::len), Some(1));

    // Another node's topic is refused and not stored.
    client
        .publish(
            format!("nodes/{other}/up/x"),
            QoS::AtLeastOnce,
            false,
            "spoof",
        )
        .await
        .expect("publish");
    let ack = next_packet(&mut el, "PUBACK", |p| matches!(p, Packet::PubAck(_))).await;
    if let Packet::PubAck(a) = ack {
        assert_eq!(a.reason, PubAckReason::NotAuthorized);
    }
    let (_, msgs) = h
        .call(Method::GET, &format!("/api/nodes/{other}/messages"), None)
        .await;
    assert_eq!(msgs, json!([]));

    // A command reaches the node, online after its heartbeat.
    let (s, _) = h
        .status_as(&node, &secret, json!({"applied_version": 0}))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = h
        .call(
            Method::POST,
            "/api/devices/d1/commands/reboot",
            Some(json!({"delay": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["command"]["id"].as_str().expect("id").to_owned();
    let got = next_packet(&mut el, "command", |p| matches!(p, Packet::Publish(_))).await;
    if let Packet::Publish(p) = got {
        assert_eq!(
            &p.topic[..],
            format!("nodes/{node}/down/$verge/commands/d1").as_bytes()
        );
        let req: verge_protocol::device::CommandRequest =
            serde_json::from_slice(&p.payload).expect("a CommandRequest");
        assert_eq!(req.id, id);
        assert_eq!(req.name, "reboot");
        assert_eq!(req.payload, json!({"delay": 1}));
    }

    served.stop().await;
}

//! Upstream ingest on real sockets: a message is acknowledged only once it
//! is stored, and every message the cloud cannot store is refused (so the
//! node keeps it and resends), never acknowledged and dropped.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use serde_json::{Value, json};
use tokio::time::timeout;

use common::{Harness, Served, harness_on, serve};

const WAIT: Duration = Duration::from_secs(10);

async fn connect(s: &Served, node: &str, secret: &str) -> (AsyncClient, EventLoop) {
    let mut opts = MqttOptions::new(format!("c-{node}"), s.mqtt.ip().to_string(), s.mqtt.port());
    opts.set_credentials(node, secret);
    opts.set_max_packet_size(Some(4 << 20));
    let (client, mut el) = AsyncClient::new(opts, 64);
    timeout(WAIT, async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("connect: {e:?}"),
            }
        }
    })
    .await
    .expect("CONNACK in time");
    (client, el)
}

/// Publish `payload` to `topic` at QoS 1 with `verge-id` set to `id`, and
/// wait for a successful PUBACK.
async fn publish_acked(
    client: &AsyncClient,
    el: &mut EventLoop,
    topic: String,
    payload: Vec<u8>,
    id: &str,
) {
    let props = rumqttc::v5::mqttbytes::v5::PublishProperties {
        user_properties: vec![("verge-id".into(), id.into())],
        ..Default::default()
    };
    client
        .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, props)
        .await
        .expect("publish");
    timeout(WAIT, async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    assert_eq!(ack.reason, PubAckReason::Success);
                    return;
                }
                Ok(_) => {}
                Err(e) => panic!("publish: {e:?}"),
            }
        }
    })
    .await
    .expect("PUBACK in time");
}

/// Publish `(topic, payload)` at QoS 1 and return each PUBACK reason in
/// publish order.
async fn publish_all(
    client: &AsyncClient,
    el: &mut EventLoop,
    msgs: &[(String, Vec<u8>)],
) -> Vec<PubAckReason> {
    let mut order = Vec::new();
    let mut acks: HashMap<u16, PubAckReason> = HashMap::new();
    for (topic, payload) in msgs {
        client
            .publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
            .await
            .expect("publish");
    }
    timeout(WAIT, async {
        while acks.len() < msgs.len() {
            match el.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid))) => order.push(pkid),
                Ok(Event::Incoming(Packet::PubAck(a))) => {
                    acks.insert(a.pkid, a.reason);
                }
                Ok(_) => {}
                Err(e) => panic!("publish: connection failed: {e:?}"),
            }
        }
    })
    .await
    .expect("every PUBACK in time");
    order
        .iter()
        .map(|p| acks.get(p).cloned().expect("ack for every publish"))
        .collect()
}

async fn stored(h: &Harness, node: &str) -> Vec<Value> {
    let (s, v) = h
        .call(
            Method::GET,
            &format!("/api/nodes/{node}/messages?limit=1000"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v.as_array().cloned().unwrap_or_default()
}

/// Regression: `nodes/{id}/up` (no sub-topic) passes the ACL
/// (`nodes/{id}/up/#` covers its parent level) but cannot be stored; it
/// was acknowledged and dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_that_cannot_be_stored_is_refused_not_acknowledged() {
    let h = common::harness().await;
    let (node, secret) = h.joined_node("edge-t").await;
    let s = serve(&h).await;
    let (client, mut el) = connect(&s, &node, &secret).await;
    let reasons = publish_all(
        &client,
        &mut el,
        &[
            (format!("nodes/{node}/up"), b"lost?".to_vec()),
            (format!("nodes/{node}/up/ok"), b"1".to_vec()),
        ],
    )
    .await;
    assert_ne!(reasons[0], PubAckReason::Success);
    assert_eq!(reasons[1], PubAckReason::Success);
    let msgs = stored(&h, &node).await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["topic"], "ok");
    let (_, m) = h.call_as(Method::GET, "/metrics", None, None).await;
    assert!(
        m.as_str()
            .unwrap_or_default()
            .contains("verge_cloud_ingest_refused_total 1"),
        "{m}"
    );
    drop(client);
    s.stop().await;
}

/// Regression: one message the database refuses failed its whole batch;
/// now only that message is refused, the others are stored and
/// acknowledged, and no acknowledged message is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_row_refuses_only_itself() {
    let h = common::harness().await;
    let (node, secret) = h.joined_node("edge-p").await;
    // A row the database rejects (as a constraint or a bad value would).
    let pool = sqlx::AnyPool::connect(&h.db_url).await.expect("db");
    sqlx::query(
        "CREATE TRIGGER poison BEFORE INSERT ON messages WHEN NEW.topic = 'poison' \
         BEGIN SELECT RAISE(ABORT, 'poisoned row'); END",
    )
    .execute(&pool)
    .await
    .expect("trigger");
    pool.close().await;
    let s = serve(&h).await;
    let (client, mut el) = connect(&s, &node, &secret).await;
    let mut msgs = Vec::new();
    for i in 0..40 {
        let topic = if i % 10 == 5 {
            format!("nodes/{node}/up/poison")
        } else {
            format!("nodes/{node}/up/good/{i}")
        };
        msgs.push((topic, i.to_string().into_bytes()));
    }
    let reasons = publish_all(&client, &mut el, &msgs).await;
    let kept = stored(&h, &node).await;
    let kept: Vec<&str> = kept.iter().filter_map(|m| m["topic"].as_str()).collect();
    for ((topic, _), reason) in msgs.iter().zip(&reasons) {
        let local = topic.split_once("/up/").map_or("", |t| t.1);
        if local == "poison" {
            assert_ne!(*reason, PubAckReason::Success, "{topic}");
        } else {
            assert_eq!(*reason, PubAckReason::Success, "{topic}");
            assert!(kept.contains(&local), "{local} acknowledged, not stored");
        }
    }
    assert_eq!(kept.len(), 36);
    drop(client);
    s.stop().await;
}

/// A node deleted while connected keeps its MQTT connection (the broker
/// keeps a connection's rights), but its messages are refused, not stored
/// under a node that no longer exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_node_is_refused() {
    let h = common::harness().await;
    let (node, secret) = h.joined_node("edge-x").await;
    let s = serve(&h).await;
    let (client, mut el) = connect(&s, &node, &secret).await;
    let (st, _) = h
        .call(Method::DELETE, &format!("/api/nodes/{node}"), None)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    // Its connection is closed (DISCONNECT 0x98, administrative action).
    let ended = timeout(WAIT, async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Disconnect(d))) => {
                    return format!("{:?}", d.reason_code);
                }
                Ok(_) => {}
                Err(e) => return format!("{e:?}"),
            }
        }
    })
    .await
    .expect("the deleted node's connection ends");
    assert!(ended.contains("AdministrativeAction"), "{ended}");
    let pool = sqlx::AnyPool::connect(&h.db_url).await.expect("db");
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM messages")
        .fetch_one(&pool)
        .await
        .expect("count");
    pool.close().await;
    assert_eq!(n, 0);
    // New connections are refused: the registry dropped it.
    let mut opts = MqttOptions::new("again", s.mqtt.ip().to_string(), s.mqtt.port());
    opts.set_credentials(node.clone(), secret.clone());
    let (_c, mut el2) = AsyncClient::new(opts, 10);
    assert!(timeout(WAIT, el2.poll()).await.expect("answer").is_err());
    drop(client);

    // Deleted by another replica (straight in the database): this
    // process's registry still lets it publish until its next refresh, but
    // nothing is stored for a node that no longer exists.
    let (other, other_secret) = h.joined_node("edge-y").await;
    let (client, mut el) = connect(&s, &other, &other_secret).await;
    let pool = sqlx::AnyPool::connect(&h.db_url).await.expect("db");
    sqlx::query("DELETE FROM nodes WHERE id = $1")
        .bind(&other)
        .execute(&pool)
        .await
        .expect("delete");
    let reasons = publish_all(
        &client,
        &mut el,
        &[(format!("nodes/{other}/up/late"), b"1".to_vec())],
    )
    .await;
    assert_ne!(reasons[0], PubAckReason::Success);
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM messages")
        .fetch_one(&pool)
        .await
        .expect("count");
    pool.close().await;
    assert_eq!(n, 0);
    drop(client);
    s.stop().await;
}

/// Binary and large payloads are stored as sent; binary ones are shown
/// as base64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_and_large_payloads_are_stored() {
    let h = common::harness().await;
    let (node, secret) = h.joined_node("edge-b").await;
    let (st, _) = h
        .call(
            Method::POST,
            "/api/devices",
            Some(json!({"name": "bd", "node_id": node})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let s = serve(&h).await;
    let (client, mut el) = connect(&s, &node, &secret).await;
    let binary = vec![0xff, 0x00, 0xfe, 0x80];
    let large = vec![b'a'; 900 * 1024];
    let reasons = publish_all(
        &client,
        &mut el,
        &[
            (format!("nodes/{node}/up/devices/bd/telemetry"), binary),
            (format!("nodes/{node}/up/big"), large),
        ],
    )
    .await;
    assert!(reasons.iter().all(|r| *r == PubAckReason::Success));
    let msgs = stored(&h, &node).await;
    assert_eq!(msgs[0]["payload_base64"], "/wD+gA==");
    assert_eq!(msgs[0]["payload"], Value::Null);
    assert_eq!(msgs[1]["payload"].as_str().map(str::len), Some(900 * 1024));
    // Non-JSON telemetry still updates the device, as a string.
    let (_, dev) = h.call(Method::GET, "/api/devices/bd", None).await;
    assert!(dev["last_telemetry"].is_string(), "{dev}");
    drop(client);
    s.stop().await;
}

/// Regression: de-duplication by `verge-id` was global, so one node could
/// suppress another's messages by reusing its ids; it is per node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_verge_id_from_two_nodes_is_stored_for_each() {
    let h = common::harness().await;
    let (a, secret_a) = h.joined_node("edge-a").await;
    let (b, secret_b) = h.joined_node("edge-b").await;
    let s = serve(&h).await;
    for (node, secret, times) in [(&a, &secret_a, 2), (&b, &secret_b, 1)] {
        let (client, mut el) = connect(&s, node, secret).await;
        for _ in 0..times {
            publish_acked(
                &client,
                &mut el,
                format!("nodes/{node}/up/devices/x/telemetry"),
                b"{}".to_vec(),
                "q/telemetry/1",
            )
            .await;
        }
    }
    assert_eq!(stored(&h, &a).await.len(), 1, "a resend is stored once");
    assert_eq!(
        stored(&h, &b).await.len(),
        1,
        "another node's id is its own"
    );
    s.stop().await;
}

/// A resent old reading (same `verge-id`, already stored) must not become
/// the device's last telemetry again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_old_reading_does_not_replace_the_last_telemetry() {
    let h = common::harness().await;
    let (node, secret) = h.joined_node("edge-r").await;
    let (s, v) = h
        .call(
            Method::POST,
            "/api/devices",
            Some(json!({ "name": "dr", "node_id": node })),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let served = serve(&h).await;
    let (client, mut el) = connect(&served, &node, &secret).await;
    for (id, t) in [
        ("q/telemetry/1", 1),
        ("q/telemetry/2", 2),
        ("q/telemetry/1", 1),
    ] {
        publish_acked(
            &client,
            &mut el,
            format!("nodes/{node}/up/devices/dr/telemetry"),
            json!({ "t": t }).to_string().into_bytes(),
            id,
        )
        .await;
    }
    let (s, dev) = h.call(Method::GET, "/api/devices/dr", None).await;
    assert_eq!(s, StatusCode::OK, "{dev}");
    assert_eq!(dev["last_telemetry"], json!({ "t": 2 }), "{dev}");
    assert_eq!(stored(&h, &node).await.len(), 2);
    served.stop().await;
}

/// Batches are stored by several workers at once on PostgreSQL; each
/// node's messages must still be stored in the order they arrived (ids
/// increase with the node's sequence) and its device's last telemetry
/// must be its last message, with several nodes publishing at once.
async fn each_nodes_messages_are_stored_in_order(h: Harness) {
    const NODES: usize = 6;
    const EACH: usize = 400;
    let mut nodes = Vec::new();
    for i in 0..NODES {
        let (node, secret) = h.joined_node(&format!("edge-o{i}")).await;
        let device = format!("d-o{i}");
        let (s, v) = h
            .call(
                Method::POST,
                "/api/devices",
                Some(json!({ "name": device, "node_id": node })),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        nodes.push((node, secret, device));
    }
    let served = serve(&h).await;
    let mut publishing = tokio::task::JoinSet::new();
    for (node, secret, device) in nodes.clone() {
        let (client, mut el) = connect(&served, &node, &secret).await;
        // The event loop runs beside the publishes: more of them than
        // the client's request queue holds.
        let acks = tokio::spawn(async move {
            let mut ok = 0;
            while ok < EACH {
                match timeout(WAIT, el.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::PubAck(a)))) => {
                        assert_eq!(a.reason, PubAckReason::Success);
                        ok += 1;
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => panic!("publish: connection failed: {e:?}"),
                    Err(_) => panic!("no PUBACK for {WAIT:?} ({ok} of {EACH})"),
                }
            }
        });
        publishing.spawn(async move {
            for seq in 0..EACH {
                client
                    .publish(
                        format!("nodes/{node}/up/devices/{device}/telemetry"),
                        QoS::AtLeastOnce,
                        false,
                        json!({ "seq": seq }).to_string().into_bytes(),
                    )
                    .await
                    .expect("publish");
            }
            acks.await.expect("acknowledgements");
            drop(client);
        });
    }
    while let Some(r) = publishing.join_next().await {
        r.expect("publisher");
    }
    for (node, _, device) in &nodes {
        let mut msgs = stored(&h, node).await;
        assert_eq!(msgs.len(), EACH, "node {node}");
        msgs.sort_by_key(|m| m["id"].as_i64());
        let seqs: Vec<i64> = msgs
            .iter()
            .map(|m| m["payload"]["seq"].as_i64().expect("seq"))
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "node {node}: stored out of order: {seqs:?}"
        );
        let (s, dev) = h
            .call(Method::GET, &format!("/api/devices/{device}"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{dev}");
        assert_eq!(dev["last_telemetry"], json!({ "seq": EACH - 1 }), "{dev}");
    }
    served.stop().await;
}

both!(each_nodes_messages_are_stored_in_order);

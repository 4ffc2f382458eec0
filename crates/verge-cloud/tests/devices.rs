//! Devices in the cloud (issue 20), on SQLite and PostgreSQL: the shadow
//! API, shadows and command statuses and alarms coming up from a node
//! over the cloud's MQTT endpoint, commands queued for an offline node
//! and sent once it is online, expiry, device sessions from the
//! heartbeat, and history asked of the node's store.

#[macro_use]
mod common;

use std::collections::VecDeque;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, Publish, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use serde_json::{Value, json};
use tokio::time::timeout;
use verge_protocol::device::{
    AlarmAction, AlarmEvent, CommandRequest, CommandState, CommandStatus, Severity, Shadow,
    ShadowSync, ShadowUpdate, StoreQuery, StoreReply, StoreSeries,
};

use common::{Harness, Served, harness_on, serve};

const WAIT: Duration = Duration::from_secs(10);

both!(
    shadow_api_get_patch_stale_version_and_invalid,
    node_shadow_merges_by_the_conflict_rule_and_clears_pending,
    commands_queue_while_offline_go_when_online_and_only_move_forward,
    commands_expire_in_the_cloud,
    alarms_raise_again_ack_and_clear,
    device_sessions_and_endpoints_come_from_the_heartbeat,
    deleting_a_device_deletes_its_shadow_commands_and_alarms,
    history_is_asked_of_the_node_and_answered,
);

fn assert_error(s: StatusCode, v: &Value, want: StatusCode, code: &str, what: &str) {
    assert_eq!(s, want, "{what}: {v}");
    assert_eq!(v["error"]["code"], code, "{what}: {v}");
}

/// A joined node `node` with device `device`.
async fn node_with_device(h: &Harness, node: &str, device: &str) -> (String, String) {
    let (node, secret) = h.joined_node(node).await;
    let (s, v) = h
        .call(
            Method::POST,
            "/api/devices",
            Some(json!({"name": device, "node_id": node})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    (node, secret)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

/// A node on the cloud's MQTT endpoint, subscribed to its down topics.
struct NodeLink {
    node: String,
    client: AsyncClient,
    el: EventLoop,
    /// Down publishes seen while waiting for something else.
    down: VecDeque<Publish>,
}

impl NodeLink {
    async fn connect(s: &Served, node: &str, secret: &str) -> NodeLink {
        let mut opts =
            MqttOptions::new(format!("n-{node}"), s.mqtt.ip().to_string(), s.mqtt.port());
        opts.set_credentials(node, secret);
        let (client, el) = AsyncClient::new(opts, 64);
        let mut link = NodeLink {
            node: node.to_owned(),
            client,
            el,
            down: VecDeque::new(),
        };
        link.wait("CONNACK", |p| matches!(p, Packet::ConnAck(_)))
            .await;
        link.client
            .subscribe(format!("nodes/{node}/down/#"), QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        link.wait("SUBACK", |p| matches!(p, Packet::SubAck(_)))
            .await;
        link
    }

    /// Poll until a packet `want` takes; down publishes are kept.
    async fn wait(&mut self, what: &str, want: impl Fn(&Packet) -> bool) -> Packet {
        timeout(WAIT, async {
            loop {
                match self.el.poll().await {
                    Ok(Event::Incoming(p)) if want(&p) => return p,
                    Ok(Event::Incoming(Packet::Publish(p))) => self.down.push_back(p),
                    Ok(_) => {}
                    Err(e) => panic!("{what}: connection failed: {e:?}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
    }

    /// Publish `body` up on the node-local `rest` with `verge-id` = `id`;
    /// returns the PUBACK's reason.
    async fn up(&mut self, rest: &str, body: &[u8], id: &str) -> PubAckReason {
        let props = PublishProperties {
            user_properties: vec![("verge-id".into(), id.into())],
            ..Default::default()
        };
        self.client
            .publish_with_properties(
                format!("nodes/{}/up/{rest}", self.node),
                QoS::AtLeastOnce,
                false,
                body.to_vec(),
                props,
            )
            .await
            .expect("publish");
        match self
            .wait("PUBACK", |p| matches!(p, Packet::PubAck(_)))
            .await
        {
            Packet::PubAck(a) => a.reason,
            _ => unreachable!(),
        }
    }

    async fn up_json(&mut self, rest: &str, body: &impl serde::Serialize, id: &str) {
        let body = serde_json::to_vec(body).expect("json");
        assert_eq!(
            self.up(rest, &body, id).await,
            PubAckReason::Success,
            "{rest}"
        );
    }

    /// The next down publish on node-local `rest`.
    async fn next_down(&mut self, rest: &str) -> Publish {
        let topic = format!("nodes/{}/down/{rest}", self.node);
        if let Some(i) = self.down.iter().position(|p| p.topic == topic.as_bytes()) {
            return self.down.remove(i).expect("kept");
        }
        match self
            .wait(
                &topic,
                |p| matches!(p, Packet::Publish(p) if p.topic == topic.as_bytes()),
            )
            .await
        {
            Packet::Publish(p) => p,
            _ => unreachable!(),
        }
    }

    /// Poll for `d`, keeping every down publish; true if one on `rest`
    /// came.
    async fn saw_down_within(&mut self, rest: &str, d: Duration) -> bool {
        let topic = format!("nodes/{}/down/{rest}", self.node);
        let _ = timeout(d, async {
            loop {
                match self.el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => self.down.push_back(p),
                    Ok(_) => {}
                    Err(e) => panic!("connection failed: {e:?}"),
                }
            }
        })
        .await;
        self.down.iter().any(|p| p.topic == topic.as_bytes())
    }
}

async fn heartbeat(h: &Harness, node: &str, secret: &str, body: Value) {
    let (s, v) = h.status_as(node, secret, body).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
}

/// Call `get` until `done` holds of its answer (the ingest and the
/// dispatcher work in the background).
async fn until(h: &Harness, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (s, v) = h.call(Method::GET, path, None).await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
        if done(&v) {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn shadow_api_get_patch_stale_version_and_invalid(h: Harness) {
    node_with_device(&h, "edge-s", "d1").await;
    let (s, v) = h.call(Method::GET, "/api/devices/d1/shadow", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["version"], 0);
    assert_eq!(v["desired"], json!({}));
    assert_eq!(v["node_id"], "edge-s");
    assert_eq!(v["synced"], true);

    let patch = |body: Value| h.call(Method::PATCH, "/api/devices/d1/shadow", Some(body));
    let (s, v) = patch(json!({"desired": {"led": "on", "cfg": {"a": 1}}, "version": 0})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["version"], 1);
    assert_eq!(v["delta"], json!({"led": "on", "cfg": {"a": 1}}));
    assert_eq!(v["synced"], false, "the node has not got it yet");
    assert!(
        v["metadata"]["desired"]["led"]["ts"].as_u64().is_some(),
        "{v}"
    );

    // A merge patch without a version; then a stale version is refused
    // and changes nothing.
    let (s, v) = patch(json!({"desired": {"cfg": {"b": 2}, "led": null}})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["version"], 2);
    assert_eq!(v["desired"], json!({"cfg": {"a": 1, "b": 2}}));
    let (s, v) = patch(json!({"desired": {"led": "off"}, "version": 1})).await;
    assert_error(s, &v, StatusCode::CONFLICT, "version_conflict", "stale");
    let (_, v) = h.call(Method::GET, "/api/devices/d1/shadow", None).await;
    assert_eq!(v["version"], 2);
    assert!(v["desired"].get("led").is_none(), "{v}");

    // Not an update the API takes.
    for (body, what) in [
        (json!({"reported": {"t": 1}}), "reported"),
        (
            json!({"desired": {"x": 1}, "reported": {"t": 1}}),
            "reported with desired",
        ),
        (json!({"desired": {"x": 1}, "desire": 1}), "unknown key"),
        (json!({"desired": [1]}), "desired not an object"),
        (json!({"version": 2}), "no desired"),
        (json!([1]), "not an object"),
        (json!({"desired": {"": 1}}), "empty key"),
    ] {
        let (s, v) = patch(body).await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_update", what);
    }
    let big = "x".repeat(verge_protocol::device::MAX_SHADOW_BYTES);
    let (s, v) = patch(json!({"desired": {"blob": big}})).await;
    assert_error(
        s,
        &v,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        "too large",
    );

    let (s, v) = h.call(Method::GET, "/api/devices/nope/shadow", None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found", "no device");
    let (s, v) = h
        .call(
            Method::PATCH,
            "/api/devices/nope/shadow",
            Some(json!({"desired": {}})),
        )
        .await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found", "no device");

    // A read-only token reads, but does not change.
    let (s, t) = h
        .call(
            Method::POST,
            "/api/tokens",
            Some(json!({"name": "viewer", "scope": "read"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let bearer = format!("Bearer {}", t["token"].as_str().expect("token"));
    let (s, _) = h
        .call_as(Method::GET, "/api/devices/d1/shadow", Some(&bearer), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = h
        .call_as(
            Method::PATCH,
            "/api/devices/d1/shadow",
            Some(&bearer),
            Some(json!({"desired": {"x": 1}})),
        )
        .await;
    assert_error(s, &v, StatusCode::FORBIDDEN, "forbidden", "read token");
    let (s, v) = h
        .call_as(
            Method::POST,
            "/api/devices/d1/commands/reboot",
            Some(&bearer),
            Some(json!({})),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::FORBIDDEN,
        "forbidden",
        "read token command",
    );
}

async fn node_shadow_merges_by_the_conflict_rule_and_clears_pending(h: Harness) {
    let (node, secret) = node_with_device(&h, "edge-sh", "d1").await;
    let served = serve(&h).await;
    let mut link = NodeLink::connect(&served, &node, &secret).await;
    heartbeat(&h, &node, &secret, json!({"applied_version": 0})).await;

    // The node's copy, edited while it was offline: a desired `mode`
    // (older than the cloud's edit below) and a reported `rate`.
    let mut node_copy = Shadow::default();
    let t0 = now_ms() - 60_000;
    node_copy
        .apply(
            &serde_json::from_value::<ShadowUpdate>(
                json!({"desired": {"mode": "boost", "keep": 1}, "reported": {"rate": 2}}),
            )
            .expect("update"),
            t0,
        )
        .expect("apply");

    // The cloud changes desired `mode` later; its copy is pending and
    // goes down to the online node.
    let (s, v) = h
        .call(
            Method::PATCH,
            "/api/devices/d1/shadow",
            Some(json!({"desired": {"mode": "eco", "rate": 5}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let p = link.next_down("$verge/shadow/d1").await;
    assert_eq!(p.qos, QoS::AtLeastOnce);
    let down: ShadowSync = serde_json::from_slice(&p.payload).expect("a ShadowSync");
    assert_eq!(down.device, "d1");
    assert_eq!(down.shadow.desired["mode"], json!("eco"));

    // The node merges it and answers with its whole copy.
    node_copy.merge_from_cloud(&down.shadow, now_ms());
    let up = ShadowSync {
        device: "d1".into(),
        shadow: node_copy.clone(),
    };
    link.up_json("$verge/shadow/d1", &up, "s-1").await;
    let (_, v) = h.call(Method::GET, "/api/devices/d1/shadow", None).await;
    assert_eq!(v["desired"]["mode"], "eco", "the cloud's later edit: {v}");
    assert_eq!(v["desired"]["keep"], 1, "the node's key: {v}");
    assert_eq!(v["reported"]["rate"], 2, "the device's report: {v}");
    assert_eq!(v["delta"]["rate"], 5, "{v}");
    assert_eq!(v["synced"], true, "the node's copy covers the cloud's: {v}");
    // Not stored as an upstream message.
    let (_, msgs) = h
        .call(Method::GET, &format!("/api/nodes/{node}/messages"), None)
        .await;
    assert_eq!(msgs, json!([]), "{msgs}");

    // A node copy that lacks a later cloud edit leaves the copy pending
    // (and it is sent again); a node edit later than the cloud's wins.
    let (s, v) = h
        .call(
            Method::PATCH,
            "/api/devices/d1/shadow",
            Some(json!({"desired": {"rate": 6}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    node_copy
        .apply(
            &serde_json::from_value::<ShadowUpdate>(json!({"desired": {"mode": "night"}}))
                .expect("update"),
            now_ms() + 1000,
        )
        .expect("apply");
    let up = ShadowSync {
        device: "d1".into(),
        shadow: node_copy.clone(),
    };
    link.up_json("$verge/shadow/d1", &up, "s-2").await;
    let (_, v) = h.call(Method::GET, "/api/devices/d1/shadow", None).await;
    assert_eq!(v["desired"]["mode"], "night", "{v}");
    assert_eq!(v["desired"]["rate"], 6, "{v}");
    assert_eq!(v["synced"], false, "{v}");

    // A bad payload and a shadow of another node's device are dropped;
    // the PUBACK is still a success (a node would resend forever).
    let (other, _) = h.joined_node("edge-other").await;
    let (s, _) = h
        .call(
            Method::POST,
            "/api/devices",
            Some(json!({"name": "d-other", "node_id": other})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(
        link.up("$verge/shadow/d1", b"{not json", "s-3").await,
        PubAckReason::Success
    );
    let foreign = ShadowSync {
        device: "d-other".into(),
        shadow: node_copy.clone(),
    };
    link.up_json("$verge/shadow/d-other", &foreign, "s-4").await;
    let (_, v) = h
        .call(Method::GET, "/api/devices/d-other/shadow", None)
        .await;
    assert_eq!(v["version"], 0, "{v}");
    let (_, metrics) = h.call(Method::GET, "/metrics", None).await;
    let metrics = metrics.as_str().expect("text").to_owned();
    assert!(
        metrics.contains("verge_cloud_device_channel_dropped_total 2"),
        "{metrics}"
    );
    served.stop().await;
}

fn status(id: &str, state: CommandState, reply: Option<Value>) -> CommandStatus {
    CommandStatus {
        id: id.into(),
        device: "d1".into(),
        state,
        at_ms: now_ms(),
        reply,
        error: None,
    }
}

async fn commands_queue_while_offline_go_when_online_and_only_move_forward(h: Harness) {
    let (node, secret) = node_with_device(&h, "edge-c", "d1").await;
    let served = serve(&h).await;
    let mut link = NodeLink::connect(&served, &node, &secret).await;

    // Joined and connected, but no heartbeat: offline; the command is
    // queued, and nothing goes down.
    let (s, v) = h
        .call(
            Method::POST,
            "/api/devices/d1/commands/reboot",
            Some(json!({"delay": 5})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["command"]["id"].as_str().expect("id").to_owned();
    assert_eq!(v["command"]["status"], "queued");
    assert!(
        !link
            .saw_down_within("$verge/commands/d1", Duration::from_millis(1500))
            .await,
        "sent to an offline node"
    );
    let (_, c) = h
        .call(Method::GET, &format!("/api/commands/{id}"), None)
        .await;
    assert_eq!(c["attempts"], 0, "{c}");

    // Online: it goes down as a CommandRequest, QoS 1.
    heartbeat(&h, &node, &secret, json!({"applied_version": 0})).await;
    let p = link.next_down("$verge/commands/d1").await;
    assert_eq!(p.qos, QoS::AtLeastOnce);
    let req: CommandRequest = serde_json::from_slice(&p.payload).expect("a CommandRequest");
    assert_eq!(req.id, id);
    assert_eq!(req.device, "d1");
    assert_eq!(req.name, "reboot");
    assert_eq!(req.payload, json!({"delay": 5}));
    assert_eq!(
        req.expires_ms - req.created_ms,
        3_600_000,
        "the default ttl"
    );
    let (_, c) = h
        .call(Method::GET, &format!("/api/commands/{id}"), None)
        .await;
    assert_eq!(c["attempts"], 1, "{c}");
    assert_eq!(c["status"], "queued", "until the node says it has it");

    // Not taken: sent again after the resend time.
    let p = link.next_down("$verge/commands/d1").await;
    let again: CommandRequest = serde_json::from_slice(&p.payload).expect("a CommandRequest");
    assert_eq!(again.id, id);

    // Statuses move it forward, never back; the reply is stored.
    link.up_json(
        "$verge/command-status/d1",
        &status(&id, CommandState::Delivered, None),
        "c-1",
    )
    .await;
    let (_, c) = h
        .call(Method::GET, &format!("/api/commands/{id}"), None)
        .await;
    assert_eq!(c["status"], "delivered", "{c}");
    link.up_json(
        "$verge/command-status/d1",
        &status(&id, CommandState::Sent, None),
        "c-2",
    )
    .await;
    let (_, c) = h
        .call(Method::GET, &format!("/api/commands/{id}"), None)
        .await;
    assert_eq!(
        c["status"], "delivered",
        "a late `sent` does not move it back: {c}"
    );
    link.up_json(
        "$verge/command-status/d1",
        &status(&id, CommandState::Replied, Some(json!({"ok": true}))),
        "c-3",
    )
    .await;
    let mut failed = status(&id, CommandState::Failed, None);
    failed.error = Some("too late".into());
    link.up_json("$verge/command-status/d1", &failed, "c-4")
        .await;
    let (_, c) = h
        .call(Method::GET, &format!("/api/commands/{id}"), None)
        .await;
    assert_eq!(c["status"], "replied", "{c}");
    assert_eq!(c["reply"], json!({"ok": true}), "{c}");
    assert_eq!(c["error"], Value::Null, "{c}");
    // A replied command is not sent again.
    link.down.clear();
    assert!(
        !link
            .saw_down_within("$verge/commands/d1", Duration::from_millis(5500))
            .await,
        "a replied command was sent again"
    );

    // A status of an unknown command, or of another node's device's
    // command, is ignored.
    let (other, other_secret) = h.joined_node("edge-c2").await;
    let (s, v) = h
        .call(
            Method::POST,
            "/api/devices",
            Some(json!({"name": "d2", "node_id": other})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = h
        .call(
            Method::POST,
            "/api/devices/d2/commands/ping",
            Some(json!(1)),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id2 = v["command"]["id"].as_str().expect("id").to_owned();
    let mut foreign = status(&id2, CommandState::Replied, Some(json!("spoofed")));
    foreign.device = "d1".into();
    link.up_json("$verge/command-status/d1", &foreign, "c-5")
        .await;
    link.up_json(
        "$verge/command-status/d1",
        &status("no-such-command", CommandState::Sent, None),
        "c-6",
    )
    .await;
    let (_, c) = h
        .call(Method::GET, &format!("/api/commands/{id2}"), None)
        .await;
    assert_eq!(c["status"], "queued", "{c}");
    assert_eq!(c["reply"], Value::Null, "{c}");
    let _ = other_secret;

    // The list, newest first.
    let (s, list) = h
        .call(Method::GET, "/api/devices/d1/commands?limit=10", None)
        .await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["id"], id.as_str());
    let (s, v) = h
        .call(Method::GET, "/api/devices/d1/commands?limit=0", None)
        .await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_request", "limit 0");
    let (s, v) = h.call(Method::GET, "/api/commands/nope", None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found", "no command");
    served.stop().await;
}

async fn commands_expire_in_the_cloud(h: Harness) {
    node_with_device(&h, "edge-x", "d1").await;
    let (s, v) = h
        .call(
            Method::POST,
            "/api/devices/d1/commands/reboot?ttl=1s",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let id = v["command"]["id"].as_str().expect("id").to_owned();
    let (s, v) = h
        .call(
            Method::POST,
            "/api/devices/d1/commands/later",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let later = v["command"]["id"].as_str().expect("id").to_owned();
    let c = until(&h, &format!("/api/commands/{id}"), "expired", |c| {
        c["status"] == "expired"
    })
    .await;
    assert!(c["updated_ms"].as_i64() >= c["expires_ms"].as_i64(), "{c}");
    let (_, c) = h
        .call(Method::GET, &format!("/api/commands/{later}"), None)
        .await;
    assert_eq!(c["status"], "queued", "{c}");
    let (_, list) = h.call(Method::GET, "/api/devices/d1/commands", None).await;
    assert_eq!(list[0]["id"], later.as_str(), "newest first: {list}");
}

fn alarm(action: AlarmAction, severity: Severity, message: &str) -> AlarmEvent {
    AlarmEvent {
        device: "d1".into(),
        alarm_type: "overheat".into(),
        action,
        severity,
        message: message.into(),
        rule: "hot".into(),
        at_ms: now_ms(),
        details: json!({"t": 91}),
    }
}

async fn alarms_raise_again_ack_and_clear(h: Harness) {
    let (node, secret) = node_with_device(&h, "edge-a", "d1").await;
    let served = serve(&h).await;
    let mut link = NodeLink::connect(&served, &node, &secret).await;
    let topic = "$verge/alarms/d1";
    link.up_json(
        topic,
        &alarm(AlarmAction::Raise, Severity::Major, "hot"),
        "a-1",
    )
    .await;
    let (s, list) = h.call(Method::GET, "/api/alarms", None).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    let a = &list[0];
    let id = a["id"].as_str().expect("id").to_owned();
    assert_eq!(a["status"], "active");
    assert_eq!(a["count"], 1);
    assert_eq!(a["type"], "overheat");
    assert_eq!(a["severity"], "major");
    assert_eq!(a["node_id"], node.as_str());
    assert_eq!(a["rule"], "hot");
    assert_eq!(a["details"], json!({"t": 91}));
    assert_eq!(a["acknowledged"], false);

    // Raised again: the same alarm, count 2; a resent message (same
    // verge-id) counts once.
    let again = alarm(AlarmAction::Raise, Severity::Critical, "hotter");
    link.up_json(topic, &again, "a-2").await;
    link.up_json(topic, &again, "a-2").await;
    let (_, list) = h.call(Method::GET, "/api/devices/d1/alarms", None).await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["count"], 2, "{list}");
    assert_eq!(list[0]["severity"], "critical");
    assert_eq!(list[0]["message"], "hotter");

    // Acknowledged; a raise keeps it acknowledged.
    let (s, a) = h
        .call(Method::POST, &format!("/api/alarms/{id}/ack"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{a}");
    assert_eq!(a["acknowledged"], true);
    let acked_at = a["acknowledged_ms"].clone();
    assert!(acked_at.is_i64(), "{a}");
    let (_, a) = h
        .call(Method::POST, &format!("/api/alarms/{id}/ack"), None)
        .await;
    assert_eq!(
        a["acknowledged_ms"], acked_at,
        "a second ack keeps the first"
    );
    link.up_json(
        topic,
        &alarm(AlarmAction::Raise, Severity::Major, "hot"),
        "a-3",
    )
    .await;
    let (_, list) = h
        .call(
            Method::GET,
            "/api/alarms?acknowledged=true&status=active",
            None,
        )
        .await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["count"], 3);

    // Cleared by the node; the next raise opens a new alarm.
    link.up_json(
        topic,
        &alarm(AlarmAction::Clear, Severity::Major, ""),
        "a-4",
    )
    .await;
    let (_, a) = h
        .call(Method::GET, "/api/alarms?status=cleared", None)
        .await;
    assert_eq!(a.as_array().map(Vec::len), Some(1), "{a}");
    assert_eq!(a[0]["id"], id.as_str());
    assert!(a[0]["cleared_ms"].is_i64(), "{a}");
    link.up_json(
        topic,
        &alarm(AlarmAction::Raise, Severity::Minor, "warm"),
        "a-5",
    )
    .await;
    let (_, list) = h.call(Method::GET, "/api/alarms?status=active", None).await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    let id2 = list[0]["id"].as_str().expect("id").to_owned();
    assert_ne!(id2, id);
    assert_eq!(list[0]["count"], 1);
    assert_eq!(list[0]["acknowledged"], false);
    let (_, list) = h
        .call(
            Method::GET,
            "/api/alarms?device_id=d1&acknowledged=false",
            None,
        )
        .await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["id"], id2.as_str());
    let (_, all) = h.call(Method::GET, "/api/alarms", None).await;
    assert_eq!(all[0]["id"], id2.as_str(), "newest first: {all}");

    // A clear older than the open alarm (it cleared an earlier one) leaves
    // it open.
    let mut stale = alarm(AlarmAction::Clear, Severity::Minor, "");
    stale.at_ms -= 600_000;
    link.up_json(topic, &stale, "a-4b").await;
    let (_, list) = h.call(Method::GET, "/api/alarms?status=active", None).await;
    assert_eq!(list[0]["id"], id2.as_str(), "{list}");

    // Cleared by a person.
    let (s, a) = h
        .call(Method::POST, &format!("/api/alarms/{id2}/clear"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{a}");
    assert_eq!(a["status"], "cleared");
    let (_, list) = h.call(Method::GET, "/api/alarms?status=active", None).await;
    assert_eq!(list, json!([]));

    // Bad input.
    let (s, v) = h.call(Method::POST, "/api/alarms/nope/ack", None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found", "ack");
    let (s, v) = h.call(Method::POST, "/api/alarms/nope/clear", None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found", "clear");
    let (s, v) = h.call(Method::GET, "/api/alarms?status=open", None).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_request", "status");
    let (s, v) = h.call(Method::GET, "/api/devices/nope/alarms", None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found", "device");
    let mut bad = alarm(AlarmAction::Raise, Severity::Major, "x");
    bad.alarm_type = String::new();
    link.up_json(topic, &bad, "a-6").await;
    let (_, all) = h.call(Method::GET, "/api/alarms", None).await;
    assert_eq!(all.as_array().map(Vec::len), Some(2), "{all}");
    // A NUL in free text (PostgreSQL refuses it in TEXT) is left out, not
    // a failed batch.
    let mut nul = alarm(AlarmAction::Raise, Severity::Major, "a\u{0}b");
    nul.rule = "r\u{0}1".into();
    link.up_json(topic, &nul, "a-7").await;
    let (_, list) = h.call(Method::GET, "/api/alarms?status=active", None).await;
    assert_eq!(list[0]["message"], "ab", "{list}");
    assert_eq!(list[0]["rule"], "r1", "{list}");
    served.stop().await;
}

async fn device_sessions_and_endpoints_come_from_the_heartbeat(h: Harness) {
    let (node, secret) = node_with_device(&h, "edge-h", "d1").await;
    let (_, v) = h
        .call(
            Method::POST,
            "/api/devices",
            Some(json!({"name": "d2", "node_id": node})),
        )
        .await;
    assert!(v["device"]["session"].is_null(), "{v}");
    assert_eq!(v["device"]["endpoints"], json!([]));
    let (other, _) = h.joined_node("edge-h2").await;
    let (s, _) = h
        .call(
            Method::POST,
            "/api/devices",
            Some(json!({"name": "foreign", "node_id": other})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    heartbeat(
        &h,
        &node,
        &secret,
        json!({
            "applied_version": 0,
            "devices": [
                {"device": "d1", "connected": true, "since_ms": 1234, "client_id": "c-1", "transport": "mqtt"},
                {"device": "d2", "connected": false, "since_ms": 99, "client_id": "c\u{0}"},
                {"device": "foreign", "connected": true, "since_ms": 1, "client_id": "x", "transport": "mqtt"},
                {"device": "d\u{0}", "connected": true},
            ],
            "endpoints": ["mqtt://10.0.0.5:1883", "mqtts://10.0.0.5:8883"],
        }),
    )
    .await;
    let (s, d) = h.call(Method::GET, "/api/devices/d1", None).await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(
        d["session"],
        json!({"connected": true, "since_ms": 1234, "client_id": "c-1", "transport": "mqtt"})
    );
    assert_eq!(
        d["endpoints"],
        json!(["mqtt://10.0.0.5:1883", "mqtts://10.0.0.5:8883"])
    );
    let (_, d) = h.call(Method::GET, "/api/devices/d2", None).await;
    assert_eq!(d["session"]["connected"], false, "{d}");
    assert_eq!(d["session"]["since_ms"], 99, "{d}");
    assert_eq!(d["session"]["client_id"], "c", "{d}");
    let (_, d) = h.call(Method::GET, "/api/devices/foreign", None).await;
    assert!(d["session"].is_null(), "another node's device: {d}");
    assert_eq!(d["endpoints"], json!([]));
    let (_, list) = h
        .call(Method::GET, "/api/devices?node_id=edge-h", None)
        .await;
    assert_eq!(list[0]["session"]["client_id"], "c-1", "{list}");

    // Left out of the next report: no longer connected.
    heartbeat(&h, &node, &secret, json!({"applied_version": 0})).await;
    let (_, d) = h.call(Method::GET, "/api/devices/d1", None).await;
    assert_eq!(d["session"]["connected"], false, "{d}");
    assert_eq!(d["session"]["client_id"], "c-1", "{d}");
}

async fn deleting_a_device_deletes_its_shadow_commands_and_alarms(h: Harness) {
    let (node, secret) = node_with_device(&h, "edge-del", "d1").await;
    let (s, _) = h
        .call(
            Method::PATCH,
            "/api/devices/d1/shadow",
            Some(json!({"desired": {"x": 1}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = h
        .call(Method::POST, "/api/devices/d1/commands/go", Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let served = serve(&h).await;
    let mut link = NodeLink::connect(&served, &node, &secret).await;
    link.up_json(
        "$verge/alarms/d1",
        &alarm(AlarmAction::Raise, Severity::Major, "hot"),
        "a-1",
    )
    .await;
    let (_, all) = h.call(Method::GET, "/api/alarms", None).await;
    assert_eq!(all.as_array().map(Vec::len), Some(1), "{all}");
    let (s, _) = h.call(Method::DELETE, "/api/devices/d1", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = h
        .call(
            Method::POST,
            "/api/devices",
            Some(json!({"name": "d1", "node_id": node})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, v) = h.call(Method::GET, "/api/devices/d1/shadow", None).await;
    assert_eq!(v["version"], 0, "{v}");
    let (_, v) = h.call(Method::GET, "/api/devices/d1/commands", None).await;
    assert_eq!(v, json!([]));
    let (_, v) = h.call(Method::GET, "/api/alarms", None).await;
    assert_eq!(v, json!([]));
    served.stop().await;
}

/// The history API asks the device's node for a range of its store: a
/// fake node answers the `StoreQuery` it gets on its down topic; an
/// offline node is 503 at once, a silent one 504, an error reply 502, and
/// a reply nobody waits for is dropped and counted.
async fn history_is_asked_of_the_node_and_answered(h: Harness) {
    let (node, secret) = node_with_device(&h, "edge-h", "d1").await;
    let served = serve(&h).await;
    let mut link = NodeLink::connect(&served, &node, &secret).await;
    let (s, v) = h.call(Method::GET, "/api/devices/nope/history", None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found", "unknown device");

    // No heartbeat yet: offline, answered at once.
    let started = std::time::Instant::now();
    let (s, v) = h.call(Method::GET, "/api/devices/d1/history", None).await;
    assert_error(
        s,
        &v,
        StatusCode::SERVICE_UNAVAILABLE,
        "node_offline",
        "offline",
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        !link
            .saw_down_within("$verge/store-query/d1", Duration::from_millis(300))
            .await,
        "asked an offline node"
    );

    heartbeat(&h, &node, &secret, json!({"applied_version": 0})).await;
    for bad in [
        "bucket=soon",
        "bucket=1s&from_ms=0&to_ms=86400000",
        "from_ms=5&to_ms=4",
        "metric=",
        "limit=5",
    ] {
        let (s, v) = h
            .call(Method::GET, &format!("/api/devices/d1/history?{bad}"), None)
            .await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_request", bad);
    }

    // Online: the query goes down, the node's reply is the answer.
    let to = now_ms();
    let path = format!("/api/devices/d1/history?metric=temp&bucket=1m&to_ms={to}");
    let node_side = async {
        let p = link.next_down("$verge/store-query/d1").await;
        assert_eq!(p.qos, QoS::AtLeastOnce);
        let q: StoreQuery = serde_json::from_slice(&p.payload).expect("a StoreQuery");
        assert_eq!(q.device, "d1");
        assert_eq!(q.metric.as_deref(), Some("temp"));
        assert_eq!(q.bucket_ms, Some(60_000));
        assert_eq!((q.to_ms, q.to_ms - q.from_ms), (to, 86_400_000));
        // a stray reply first: dropped, the request keeps waiting
        let stray = StoreReply {
            id: "not-asked".into(),
            device: "d1".into(),
            ..StoreReply::default()
        };
        link.up_json("$verge/store-reply/d1", &stray, "r-0").await;
        let reply = StoreReply {
            id: q.id.clone(),
            device: "d1".into(),
            series: vec![StoreSeries {
                metric: "temp".into(),
                points: vec![(to - 120_000, 20.5), (to - 60_000, 21.0)],
            }],
            error: None,
            truncated: true,
        };
        link.up_json("$verge/store-reply/d1", &reply, "r-1").await;
        q.id
    };
    let ((s, v), _id) = tokio::join!(h.call(Method::GET, &path, None), node_side);
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["device_id"], "d1");
    assert_eq!(v["node_id"], node.as_str());
    assert_eq!(v["bucket_ms"], 60_000);
    assert_eq!(v["truncated"], true);
    assert_eq!(
        v["series"],
        json!([{"metric": "temp", "points": [[to - 120_000, 20.5], [to - 60_000, 21.0]]}])
    );
    // the reply was not stored as a message
    let (_, msgs) = h
        .call(Method::GET, &format!("/api/nodes/{node}/messages"), None)
        .await;
    assert_eq!(msgs, json!([]), "{msgs}");

    // The node answers with an error: 502 with its text.
    let node_side = async {
        let p = link.next_down("$verge/store-query/d1").await;
        let q: StoreQuery = serde_json::from_slice(&p.payload).expect("a StoreQuery");
        let reply = StoreReply {
            id: q.id,
            device: "d1".into(),
            error: Some("this node has no local store".into()),
            ..StoreReply::default()
        };
        link.up_json("$verge/store-reply/d1", &reply, "r-2").await;
    };
    let ((s, v), ()) = tokio::join!(
        h.call(Method::GET, "/api/devices/d1/history", None),
        node_side
    );
    assert_error(s, &v, StatusCode::BAD_GATEWAY, "node_error", "error reply");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no local store")
    );

    // The node says nothing: 504 after the wait; its late reply is dropped.
    let started = std::time::Instant::now();
    let ((s, v), late) = tokio::join!(
        h.call(Method::GET, "/api/devices/d1/history", None),
        async {
            let p = link.next_down("$verge/store-query/d1").await;
            serde_json::from_slice::<StoreQuery>(&p.payload).expect("a StoreQuery")
        }
    );
    assert_error(
        s,
        &v,
        StatusCode::GATEWAY_TIMEOUT,
        "node_timeout",
        "silent node",
    );
    assert!(started.elapsed() >= Duration::from_secs(9));
    let reply = StoreReply {
        id: late.id,
        device: "d1".into(),
        ..StoreReply::default()
    };
    link.up_json("$verge/store-reply/d1", &reply, "r-3").await;
    let (s, metrics) = h.call(Method::GET, "/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    let metrics = metrics.as_str().unwrap_or_default();
    assert!(
        metrics.contains("verge_cloud_store_replies_unmatched_total 2"),
        "the stray and the late reply: {metrics}"
    );
    assert!(metrics.contains("verge_cloud_store_queries_waiting 0"));
    served.stop().await;
}

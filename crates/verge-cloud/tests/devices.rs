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
    a_reply_in_time_replaces_the_clouds_expiry,
    node_times_ahead_are_clamped_and_api_edits_order_after_them,
    commands_are_paced_per_device_and_payloads_capped,
    unchanged_device_sessions_are_not_written_again,
    commands_are_paced_per_node,
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
        (
            json!({"desired": {"x": 1}, "client_token": "t"}),
            "client_token (devices only)",
        ),
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

    // The node's clock stepped back: its clear is older than the open
    // alarm's raise, but came after it from the same node (its queue is
    // FIFO), so it clears it (regression: a clear was ignored).
    let mut stale = alarm(AlarmAction::Clear, Severity::Minor, "");
    stale.at_ms -= 600_000;
    link.up_json(topic, &stale, "a-4b").await;
    let (_, list) = h.call(Method::GET, "/api/alarms?status=active", None).await;
    assert_eq!(list, json!([]), "a stepped-back clear clears: {list}");
    link.up_json(
        topic,
        &alarm(AlarmAction::Raise, Severity::Minor, "warm again"),
        "a-4c",
    )
    .await;
    let (_, list) = h.call(Method::GET, "/api/alarms?status=active", None).await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    let id3 = list[0]["id"].as_str().expect("id").to_owned();
    assert_ne!(id3, id2);

    // Cleared by a person.
    let (s, a) = h
        .call(Method::POST, &format!("/api/alarms/{id3}/clear"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{a}");
    assert_eq!(a["status"], "cleared");
    let (_, list) = h.call(Method::GET, "/api/alarms?status=active", None).await;
    assert_eq!(list, json!([]));

    // A raise made before the person's clear (queued on the node) is
    // counted in the cleared alarm and opens none; a later one opens one.
    let mut queued = alarm(AlarmAction::Raise, Severity::Major, "queued");
    queued.at_ms -= 5_000;
    link.up_json(topic, &queued, "a-4d").await;
    let (_, list) = h.call(Method::GET, "/api/alarms?status=active", None).await;
    assert_eq!(list, json!([]), "a raise older than the clear: {list}");
    let (_, all) = h.call(Method::GET, "/api/alarms", None).await;
    let cleared = all
        .as_array()
        .and_then(|a| a.iter().find(|a| a["id"] == id3.as_str()))
        .expect("the cleared alarm");
    assert_eq!(cleared["count"], 2, "{cleared}");
    assert_eq!(cleared["status"], "cleared", "{cleared}");
    tokio::time::sleep(Duration::from_millis(5)).await;
    link.up_json(
        topic,
        &alarm(AlarmAction::Raise, Severity::Major, "fresh"),
        "a-4e",
    )
    .await;
    let (_, list) = h.call(Method::GET, "/api/alarms?status=active", None).await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["message"], "fresh", "{list}");

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
    assert_eq!(all.as_array().map(Vec::len), Some(4), "{all}");
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

/// Regression: the cloud expired a command by its own clock while the
/// node was cut off; the device's reply, made in time, was dropped.
async fn a_reply_in_time_replaces_the_clouds_expiry(h: Harness) {
    let (node, secret) = node_with_device(&h, "edge-late", "d1").await;
    let mut ids = Vec::new();
    for name in ["answered", "too-late"] {
        let (s, v) = h
            .call(
                Method::POST,
                &format!("/api/devices/d1/commands/{name}?ttl=1s"),
                Some(json!({})),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        ids.push((
            v["command"]["id"].as_str().expect("id").to_owned(),
            v["command"]["expires_ms"].as_u64().expect("expires"),
        ));
    }
    for (id, _) in &ids {
        until(&h, &format!("/api/commands/{id}"), "expired", |c| {
            c["status"] == "expired"
        })
        .await;
    }
    let served = serve(&h).await;
    let mut link = NodeLink::connect(&served, &node, &secret).await;
    let (id, expires) = &ids[0];
    let mut replied = status(id, CommandState::Replied, Some(json!({"ok": 1})));
    replied.at_ms = expires - 200;
    link.up_json("$verge/command-status/d1", &replied, "r-1")
        .await;
    let (_, c) = h
        .call(Method::GET, &format!("/api/commands/{id}"), None)
        .await;
    assert_eq!(c["status"], "replied", "answered before it expired: {c}");
    assert_eq!(c["reply"], json!({"ok": 1}), "{c}");
    // A second final status does not replace the reply.
    let mut failed = status(id, CommandState::Failed, None);
    failed.at_ms = expires - 100;
    link.up_json("$verge/command-status/d1", &failed, "r-2")
        .await;
    let (_, c) = h
        .call(Method::GET, &format!("/api/commands/{id}"), None)
        .await;
    assert_eq!(c["status"], "replied", "{c}");
    // A reply after its expiry stays expired.
    let (id, expires) = &ids[1];
    let mut late = status(id, CommandState::Failed, None);
    late.at_ms = expires + 1;
    late.error = Some("late".into());
    link.up_json("$verge/command-status/d1", &late, "r-3").await;
    let (_, c) = h
        .call(Method::GET, &format!("/api/commands/{id}"), None)
        .await;
    assert_eq!(c["status"], "expired", "{c}");
    assert_eq!(c["error"], Value::Null, "{c}");
    served.stop().await;
}

/// Regression: node times were taken as they came, so a node clock ahead
/// made the cloud's edits lose, and a far-future time could never be
/// beaten.
async fn node_times_ahead_are_clamped_and_api_edits_order_after_them(h: Harness) {
    let (node, secret) = node_with_device(&h, "edge-skew", "d1").await;
    let served = serve(&h).await;
    let mut link = NodeLink::connect(&served, &node, &secret).await;
    heartbeat(&h, &node, &secret, json!({"applied_version": 0})).await;
    let update = |v: Value| serde_json::from_value::<ShadowUpdate>(v).expect("update");
    // devices::MAX_SKEW_MS
    let skew = 60_000;

    // A clock a year ahead, and a time near u64::MAX: cut to now + skew.
    let mut wild = Shadow::default();
    wild.apply(
        &update(json!({"desired": {"far": 1}})),
        now_ms() + 365 * 86_400_000,
    )
    .expect("apply");
    wild.apply(&update(json!({"reported": {"max": 1}})), u64::MAX - 1)
        .expect("apply");
    let before = now_ms();
    link.up_json(
        "$verge/shadow/d1",
        &ShadowSync {
            device: "d1".into(),
            shadow: wild,
        },
        "w-1",
    )
    .await;
    let (_, v) = h.call(Method::GET, "/api/devices/d1/shadow", None).await;
    let limit = now_ms() + skew;
    for ts in [
        &v["metadata"]["desired"]["far"]["ts"],
        &v["metadata"]["reported"]["max"]["ts"],
        &v["timestamp"],
    ] {
        let ts = ts.as_u64().expect("a time");
        assert!(ts >= before && ts <= limit, "clamped to now + skew: {v}");
    }
    let (_, metrics) = h.call(Method::GET, "/metrics", None).await;
    assert!(
        metrics
            .as_str()
            .is_some_and(|m| m.contains("verge_cloud_device_times_clamped_total")),
        "{metrics}"
    );

    // A node 30 s ahead (within the skew) edits `mode`; an API edit made
    // after it is stamped after it, so the node takes it and the cloud
    // keeps it once the node answers.
    let mut node_copy = Shadow::default();
    node_copy
        .apply(
            &update(json!({"desired": {"mode": "node"}})),
            now_ms() + 30_000,
        )
        .expect("apply");
    link.up_json(
        "$verge/shadow/d1",
        &ShadowSync {
            device: "d1".into(),
            shadow: node_copy.clone(),
        },
        "w-2",
    )
    .await;
    let (s, v) = h
        .call(
            Method::PATCH,
            "/api/devices/d1/shadow",
            Some(json!({"desired": {"mode": "cloud"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let mut down = None;
    for _ in 0..3 {
        let p = link.next_down("$verge/shadow/d1").await;
        let sync: ShadowSync = serde_json::from_slice(&p.payload).expect("a ShadowSync");
        if sync.shadow.desired.get("mode") == Some(&json!("cloud")) {
            down = Some(sync);
            break;
        }
    }
    let down = down.expect("the API edit went down");
    node_copy.merge_from_cloud(&down.shadow, now_ms());
    assert_eq!(
        node_copy.desired["mode"],
        json!("cloud"),
        "the node takes it"
    );
    link.up_json(
        "$verge/shadow/d1",
        &ShadowSync {
            device: "d1".into(),
            shadow: node_copy,
        },
        "w-3",
    )
    .await;
    let (_, v) = h.call(Method::GET, "/api/devices/d1/shadow", None).await;
    assert_eq!(v["desired"]["mode"], "cloud", "not reverted: {v}");
    served.stop().await;
}

/// Regression: the cloud handed all of a device's open commands (up to
/// 1,000) to the node at once, which keeps 100 per device and failed the
/// rest.
async fn commands_are_paced_per_device_and_payloads_capped(h: Harness) {
    let (node, secret) = node_with_device(&h, "edge-pace", "d1").await;
    let served = serve(&h).await;
    let mut link = NodeLink::connect(&served, &node, &secret).await;
    // dispatch::IN_FLIGHT_PER_DEVICE
    let n = 50;
    let mut ids = Vec::new();
    for i in 0..n + 5 {
        let (s, v) = h
            .call(
                Method::POST,
                "/api/devices/d1/commands/step",
                Some(json!({"i": i})),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        ids.push(v["command"]["id"].as_str().expect("id").to_owned());
        // Distinct creation times keep the order.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    heartbeat(&h, &node, &secret, json!({"applied_version": 0})).await;
    let seen = |link: &NodeLink| {
        let mut got: Vec<String> = link
            .down
            .iter()
            .filter(|p| p.topic == format!("nodes/{node}/down/$verge/commands/d1").as_bytes())
            .map(|p| {
                serde_json::from_slice::<CommandRequest>(&p.payload)
                    .expect("a CommandRequest")
                    .id
            })
            .collect();
        got.sort();
        got.dedup();
        got
    };
    link.saw_down_within("$verge/commands/d1", Duration::from_millis(2500))
        .await;
    let mut first: Vec<String> = ids[..n].to_vec();
    first.sort();
    assert_eq!(seen(&link), first, "the oldest {n} only");
    // One finishes: one more goes.
    link.up_json(
        "$verge/command-status/d1",
        &status(&ids[0], CommandState::Replied, None),
        "p-1",
    )
    .await;
    link.saw_down_within("$verge/commands/d1", Duration::from_millis(2500))
        .await;
    let mut want = first.clone();
    want.push(ids[n].clone());
    want.sort();
    assert_eq!(seen(&link), want, "the next one after a reply");
    let (_, c) = h
        .call(Method::GET, &format!("/api/commands/{}", ids[n + 1]), None)
        .await;
    assert_eq!(c["attempts"], 0, "still waiting in the cloud: {c}");

    // The payload cap.
    // api::commands::MAX_PAYLOAD
    let cap: usize = 64 * 1024;
    let (s, v) = h
        .call(
            Method::POST,
            "/api/devices/d1/commands/big",
            Some(json!({"blob": "x".repeat(cap)})),
        )
        .await;
    assert_error(
        s,
        &v,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "over the cap",
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&cap.to_string())),
        "{v}"
    );
    let (s, v) = h
        .call(
            Method::POST,
            "/api/devices/d1/commands/big",
            Some(json!({"blob": "x".repeat(cap - 100)})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "under the cap: {v}");
    served.stop().await;
}

/// Regression: every heartbeat wrote every listed device's session, though
/// most had not changed. A trigger counts the writes.
async fn unchanged_device_sessions_are_not_written_again(h: Harness) {
    let (node, secret) = node_with_device(&h, "edge-w", "d1").await;
    let (s, _) = h
        .call(
            Method::POST,
            "/api/devices",
            Some(json!({"name": "d2", "node_id": node})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&h.db_url).await.expect("connect");
    let postgres = h.db_url.starts_with("postgres");
    let mut setup = vec!["CREATE TABLE session_writes (id TEXT NOT NULL)"];
    if postgres {
        setup.push(
            "CREATE FUNCTION log_session_write() RETURNS trigger AS $$ \
             BEGIN INSERT INTO session_writes (id) VALUES (NEW.id); RETURN NEW; END $$ LANGUAGE plpgsql",
        );
        setup.push(
            "CREATE TRIGGER session_written AFTER UPDATE OF connected, since_ms, client_id, transport \
             ON devices FOR EACH ROW EXECUTE FUNCTION log_session_write()",
        );
    } else {
        setup.push(
            "CREATE TRIGGER session_written AFTER UPDATE OF connected, since_ms, client_id, transport \
             ON devices BEGIN INSERT INTO session_writes (id) VALUES (NEW.id); END",
        );
    }
    for sql in setup {
        sqlx::query(sql).execute(&pool).await.expect(sql);
    }
    let writes = || async {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM session_writes")
            .fetch_one(&pool)
            .await
            .expect("count");
        n
    };
    let report = |d1_client: &str| {
        json!({
            "applied_version": 0,
            "devices": [
                {"device": "d1", "connected": true, "since_ms": 10, "client_id": d1_client, "transport": "mqtt"},
                {"device": "d2", "connected": false, "since_ms": 5},
            ],
        })
    };
    heartbeat(&h, &node, &secret, report("c-1")).await;
    assert_eq!(writes().await, 2, "both new");
    heartbeat(&h, &node, &secret, report("c-1")).await;
    heartbeat(&h, &node, &secret, report("c-1")).await;
    assert_eq!(writes().await, 2, "nothing changed, nothing written");
    heartbeat(&h, &node, &secret, report("c-2")).await;
    assert_eq!(writes().await, 3, "d1 changed");
    let (_, d) = h.call(Method::GET, "/api/devices/d1", None).await;
    assert_eq!(d["session"]["client_id"], "c-2", "{d}");
    // Left out: d1 (connected) is marked disconnected; d2 was already.
    heartbeat(&h, &node, &secret, json!({"applied_version": 0})).await;
    assert_eq!(writes().await, 4, "d1 disconnected");
    let (_, d) = h.call(Method::GET, "/api/devices/d1", None).await;
    assert_eq!(d["session"]["connected"], false, "{d}");
    pool.close().await;
}

/// Regression: the node keeps 1,000 commands in all; many devices' 50
/// each could pass it. At most 500 of a node are handed over at once.
async fn commands_are_paced_per_node(h: Harness) {
    let (node, secret) = h.joined_node("edge-many").await;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&h.db_url).await.expect("connect");
    // 12 devices with 50 queued commands each (rows written directly:
    // 600 API calls would only slow the test).
    let now = i64::try_from(now_ms()).expect("now");
    for d in 0..12 {
        for i in 0..50 {
            sqlx::query(
                "INSERT INTO commands (id, device_id, node_id, name, payload, status, created_ms, expires_ms, updated_ms, attempts) \
                 VALUES ($1, $2, $3, 'go', '{}', 'queued', $4, $5, $4, 0)",
            )
            .bind(format!("c-{d}-{i}"))
            .bind(format!("p{d}"))
            .bind(&node)
            .bind(now + i64::from(d * 50 + i))
            .bind(now + 3_600_000)
            .execute(&pool)
            .await
            .expect("insert command");
        }
    }
    pool.close().await;
    let served = serve(&h).await;
    let mut link = NodeLink::connect(&served, &node, &secret).await;
    heartbeat(&h, &node, &secret, json!({"applied_version": 0})).await;
    link.saw_down_within("$verge/commands/p0", Duration::from_millis(3000))
        .await;
    let mut ids: Vec<String> = link
        .down
        .iter()
        .filter_map(|p| serde_json::from_slice::<CommandRequest>(&p.payload).ok())
        .map(|r| r.id)
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 500, "at most 500 of a node at once");
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

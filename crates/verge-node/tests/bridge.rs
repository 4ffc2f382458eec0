//! The rule engine's `upstream` and `alarm` actions into the cache queue,
//! and the bridge's status at `/api/bridge` and in `/metrics`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;
use verge_bridge::{Bridge, BridgeConfig};
use verge_broker::{Broker, BrokerConfig, Message};
use verge_mqtt::QoS;
use verge_node::http::{ApiState, router};
use verge_node::services::{NodeAlarms, QueueUpstream};
use verge_protocol::device::{AlarmAction, AlarmEvent, Severity};
use verge_queue::{Queue, QueueConfig};
use verge_rules::{Alarms, Engine, RuleConfig, RuleEngineConfig, Services, Upstream};

fn broker() -> Broker {
    let cfg = BrokerConfig {
        allow_anonymous: true,
        ..BrokerConfig::default()
    };
    Broker::start(cfg.clone(), Broker::authenticator(&cfg).expect("auth"))
}

fn queue(dir: &std::path::Path) -> Queue {
    Queue::open(QueueConfig {
        dir: dir.to_path_buf(),
        ..QueueConfig::default()
    })
    .expect("queue")
    .0
}

fn engine(broker: &Broker, q: &Queue) -> Arc<Engine> {
    let mut services = Services::new(broker.handle());
    services.upstream = Some(Arc::new(QueueUpstream::new(q.clone())) as Arc<dyn Upstream>);
    Arc::new(Engine::new(services, RuleEngineConfig::default()))
}

fn upstream_rule(lane: &str) -> RuleConfig {
    serde_json::from_value(json!({
        "id": "up",
        "sql": "SELECT topic(2) AS device, temperature FROM \"devices/+/telemetry\" WHERE temperature > 20",
        "actions": [{"type": "upstream", "topic": "telemetry/{device}", "lane": lane}]
    }))
    .expect("rule")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_rows_are_queued_durably_on_their_lane() {
    let dir = tempfile::tempdir().expect("tmp");
    let b = broker();
    let q = queue(dir.path());
    let rules = engine(&b, &q);
    rules
        .create(upstream_rule("telemetry"))
        .await
        .expect("create");
    let h = b.handle();
    for i in 0..5000 {
        let t = if i % 2 == 0 { 25 } else { 15 };
        h.publish(Message::local(
            format!("devices/d{}/telemetry", i % 10),
            format!("{{\"temperature\":{t},\"i\":{i}}}"),
            QoS::AtMostOnce,
            false,
        ))
        .await
        .expect("publish");
        if i % 500 == 499 {
            // Paced: a burst beyond the action's queue (1,024 rows) would
            // be dropped and counted, which is not what this test is about.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let lane = q.lane_index("telemetry").unwrap();
    while q.stats().lanes[lane].appended < 2500 {
        assert!(
            Instant::now() < deadline,
            "rows not queued: {:?}",
            q.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let s = q.stats();
    assert_eq!(s.lanes[lane].appended, 2500, "only the matching rows");
    assert_eq!(s.depth, 2500);
    let mut out = Vec::new();
    assert_eq!(q.try_next_batch(10, &mut out), 10);
    assert_eq!(out[0].record.topic, "telemetry/d0");
    let row: Value = serde_json::from_slice(&out[0].record.payload).expect("json row");
    assert_eq!(row, json!({"device": "d0", "temperature": 25}));
    let info = rules.get("up").await.expect("rule");
    let v = serde_json::to_value(&info).expect("json");
    assert_eq!(v["action_metrics"][0]["delivered"], json!(2500), "{v}");
    assert_eq!(v["action_metrics"][0]["dropped"], json!(0), "{v}");
    rules.shutdown().await;
    q.close().await;
    b.shutdown().await;
}

/// A rule's `alarm` action appends an `AlarmEvent` on `$verge/alarms/{d}`
/// to the `alarms` lane (raise above the threshold, clear below it by
/// `clear_when`) and publishes it on the local broker too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarm_events_are_queued_upstream_and_published_locally() {
    let dir = tempfile::tempdir().expect("tmp");
    let b = broker();
    let q = queue(dir.path());
    let mut services = Services::new(b.handle());
    let alarms = NodeAlarms::new(Some(q.clone()), b.handle());
    assert_eq!(alarms.lane(), Some("alarms"));
    services.alarms = Some(Arc::new(alarms) as Arc<dyn Alarms>);
    let rules = Arc::new(Engine::new(services, RuleEngineConfig::default()));
    let rule: RuleConfig = serde_json::from_value(json!({
        "id": "hot",
        "sql": "SELECT temperature FROM \"devices/+/telemetry\"",
        "actions": [{
            "type": "alarm", "alarm_type": "overheat", "severity": "critical",
            "message": "temperature {temperature}", "clear_when": "temperature < 50"
        }]
    }))
    .expect("rule");
    rules.create(rule).await.expect("create");
    let h = b.handle();
    let mut local = h.subscribe("$verge/alarms/+", 10).await.expect("subscribe");
    for t in [80, 20] {
        h.publish(Message::local(
            "devices/d1/telemetry",
            format!("{{\"temperature\":{t}}}"),
            QoS::AtMostOnce,
            false,
        ))
        .await
        .expect("publish");
    }
    let lane = q.lane_index("alarms").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while q.stats().lanes[lane].appended < 2 {
        assert!(
            Instant::now() < deadline,
            "alarms not queued: {:?}",
            q.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut out = Vec::new();
    assert_eq!(q.try_next_batch(10, &mut out), 2);
    let events: Vec<AlarmEvent> = out
        .iter()
        .map(|o| {
            assert_eq!(o.record.topic, "$verge/alarms/d1");
            serde_json::from_slice(&o.record.payload).expect("an AlarmEvent")
        })
        .collect();
    assert_eq!(events[0].device, "d1");
    assert_eq!(events[0].alarm_type, "overheat");
    assert_eq!(events[0].action, AlarmAction::Raise);
    assert_eq!(events[0].severity, Severity::Critical);
    assert_eq!(events[0].message, "temperature 80");
    assert_eq!(events[0].rule, "hot");
    assert_eq!(events[0].details, json!({"temperature": 80}));
    assert_eq!(events[1].action, AlarmAction::Clear);
    for expected in &events {
        let m = tokio::time::timeout(Duration::from_secs(5), local.recv())
            .await
            .expect("published locally")
            .expect("message");
        assert_eq!(&*m.topic, "$verge/alarms/d1");
        let got: AlarmEvent = serde_json::from_slice(&m.payload).expect("json");
        assert_eq!(&got, expected);
    }
    let v = serde_json::to_value(rules.get("hot").await.expect("rule")).expect("json");
    assert_eq!(v["action_metrics"][0]["delivered"], json!(2), "{v}");
    rules.shutdown().await;
    q.close().await;
    b.shutdown().await;
}

/// Without a cloud link the alarm is only published locally; a rule on a
/// node without the alarm service is refused.
#[tokio::test]
async fn alarms_without_a_cloud_link_stay_local() {
    let b = broker();
    let alarms = NodeAlarms::new(None, b.handle());
    assert_eq!(alarms.lane(), None);
    let mut local = b
        .handle()
        .subscribe("$verge/alarms/+", 10)
        .await
        .expect("sub");
    let event = AlarmEvent {
        device: "d2".into(),
        alarm_type: "door".into(),
        action: AlarmAction::Raise,
        severity: Severity::Minor,
        message: String::new(),
        rule: "r".into(),
        at_ms: 1,
        details: Value::Null,
    };
    alarms.send(event.clone(), 1).await.expect("sent");
    let m = tokio::time::timeout(Duration::from_secs(5), local.recv())
        .await
        .expect("published")
        .expect("message");
    assert_eq!(
        serde_json::from_slice::<AlarmEvent>(&m.payload).expect("json"),
        event
    );
    let rules = Engine::new(Services::new(b.handle()), RuleEngineConfig::default());
    let e = rules
        .create(
            serde_json::from_value(json!({
                "id": "a", "sql": "SELECT * FROM \"devices/+/telemetry\"",
                "actions": [{"type": "alarm", "alarm_type": "t"}]
            }))
            .expect("rule"),
        )
        .await
        .expect_err("no alarm service")
        .to_string();
    assert_eq!(e, "actions[0] (alarm): this node takes no alarms");
    b.shutdown().await;
}

#[tokio::test]
async fn an_unknown_lane_is_refused_when_the_rule_is_created() {
    let dir = tempfile::tempdir().expect("tmp");
    let b = broker();
    let q = queue(dir.path());
    let rules = engine(&b, &q);
    let e = rules
        .create(upstream_rule("telemtry"))
        .await
        .expect_err("unknown lane")
        .to_string();
    assert!(
        e.contains("telemtry") && e.contains("alarms, telemetry"),
        "{e}"
    );
    q.close().await;
    b.shutdown().await;
}

async fn get(s: &ApiState, path: &str) -> (StatusCode, String) {
    let req = Request::builder()
        .uri(path)
        .body(Body::empty())
        .expect("request");
    let resp = router(s.clone()).oneshot(req).await.expect("response");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .expect("body");
    (status, String::from_utf8(bytes.to_vec()).expect("utf-8"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_status_and_metrics() {
    let dir = tempfile::tempdir().expect("tmp");
    let b = broker();
    let q = queue(dir.path());
    // Nothing listens on this port: the link stays down and says why.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let cfg = BridgeConfig {
        enabled: true,
        url: format!("mqtt://127.0.0.1:{port}"),
        forwards: vec![verge_bridge::Forward {
            filter: "alarms/#".into(),
            lane: "alarms".into(),
        }],
        ..BridgeConfig::default()
    };
    let bridge = Bridge::start(cfg.plan("edge-9").expect("plan"), q.clone(), b.handle())
        .await
        .expect("bridge");
    q.append(
        "alarms",
        vec![verge_queue::Record {
            topic: "alarms/x".into(),
            payload: "hot".into(),
            time_ms: verge_net::now_ms(),
        }],
    )
    .await
    .expect("append");
    let mut state = ApiState {
        name: Arc::from("edge-9"),
        started: Instant::now(),
        broker: b.handle(),
        rules: engine(&b, &q),
        auth: None,
        guard: Default::default(),
        store: None,
        bridge: Some(bridge.handle()),
        functions: None,
        drivers: None,
        components: None,
        coap: None,
        cloud: None,
        local: None,
        devices: None,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let v = loop {
        let (st, body) = get(&state, "/api/bridge").await;
        assert_eq!(st, StatusCode::OK, "{body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        if !v["link"]["last_error"].is_null() {
            break v;
        }
        assert!(Instant::now() < deadline, "no connect error reported: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_ne!(v["link"]["state"], json!("connected"));
    assert_eq!(
        v["forwards"],
        json!([{"filter": "alarms/#", "lane": "alarms"}]),
        "{v}"
    );
    assert!(
        v["link"]["last_error"]
            .as_str()
            .unwrap()
            .contains("connect"),
        "{v}"
    );
    assert_eq!(v["queue"]["depth"], json!(1));
    assert_eq!(v["queue"]["lanes"][0]["name"], json!("alarms"));
    assert_eq!(v["queue"]["lanes"][0]["depth"], json!(1));

    let (st, metrics) = get(&state, "/metrics").await;
    assert_eq!(st, StatusCode::OK);
    assert!(metrics.contains("verge_bridge_connected 0"), "{metrics}");
    assert!(
        metrics.contains("verge_queue_depth{lane=\"alarms\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("verge_queue_depth{lane=\"telemetry\"} 0"),
        "{metrics}"
    );

    state.bridge = None;
    let (st, body) = get(&state, "/api/bridge").await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert!(body.contains("bridge_disabled"), "{body}");
    bridge.shutdown().await;
    q.close().await;
    b.shutdown().await;
}

//! The rule engine against a real broker: rules subscribe, evaluate and act;
//! a real MQTT client (rumqttc) publishes and receives. Management (create,
//! update, delete, start, stop, test), isolation of slow and failing
//! actions, retries, and metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use verge_broker::{BoundListener, Broker, BrokerConfig, Message, Transport};
use verge_net::BoxFuture;
use verge_rules::{
    Domain, Engine, FunctionInvoker, FunctionMessage, InvokeError, RuleConfig, RuleEngineConfig,
    RuleError, Sample, ServiceError, Services, TelemetryPoint, TelemetryStore, Upstream,
};

const WAIT: Duration = Duration::from_secs(5);

async fn broker() -> (Broker, SocketAddr) {
    let cfg = BrokerConfig {
        allow_anonymous: true,
        ..BrokerConfig::default()
    };
    let auth = Broker::authenticator(&cfg).expect("auth");
    let mut broker = Broker::start(cfg, auth);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let l = BoundListener {
        listener,
        transport: Transport::Tcp,
    };
    let addr = l.local_addr().expect("addr");
    broker.serve(l);
    (broker, addr)
}

/// A rumqttc client whose event loop runs in a task; publishes it receives
/// arrive on `rx`.
struct Client {
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<rumqttc::Publish>,
}

async fn client(addr: SocketAddr, id: &str, subscribe: &[&str]) -> Client {
    let mut opts = MqttOptions::new(id, "127.0.0.1", addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut ev) = AsyncClient::new(opts, 100);
    let (tx, rx) = mpsc::unbounded_channel();
    let (subacked_tx, mut subacked) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(p);
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = subacked_tx.send(());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    for f in subscribe {
        client
            .subscribe(*f, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        tokio::time::timeout(WAIT, subacked.recv())
            .await
            .expect("suback within WAIT");
    }
    Client { client, rx }
}

impl Client {
    async fn publish(&self, topic: &str, payload: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
            .await
            .expect("publish");
    }

    async fn recv(&mut self) -> (String, serde_json::Value) {
        let p = tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("a message within WAIT")
            .expect("client alive");
        let v = serde_json::from_slice(&p.payload).expect("JSON payload");
        (p.topic, v)
    }

    async fn expect_nothing(&mut self, d: Duration) {
        if let Ok(Some(p)) = tokio::time::timeout(d, self.rx.recv()).await {
            panic!("unexpected message on {}: {:?}", p.topic, p.payload);
        }
    }
}

fn rule(json: serde_json::Value) -> RuleConfig {
    serde_json::from_value(json).expect("rule config")
}

async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn republish_filter_and_project_end_to_end() {
    let (broker, addr) = broker().await;
    let engine = Engine::new(Services::new(broker.handle()), RuleEngineConfig::default());
    engine
        .create(rule(serde_json::json!({
            "id": "hot",
            "sql": "SELECT topic(2) AS device, temperature AS t FROM \"devices/+/telemetry\" WHERE temperature > 30",
            "actions": [{"type": "republish", "topic": "alerts/{device}", "qos": 1}]
        })))
        .await
        .expect("create");
    let mut watcher = client(addr, "watcher", &["alerts/#"]).await;
    let device = client(addr, "d1", &[]).await;
    device
        .publish("devices/d1/telemetry", r#"{"temperature": 20}"#)
        .await;
    device
        .publish("devices/d1/telemetry", r#"{"temperature": 35.5}"#)
        .await;
    device
        .publish("devices/d1/status", r#"{"temperature": 99}"#)
        .await;
    let (topic, v) = watcher.recv().await;
    assert_eq!(topic, "alerts/d1");
    assert_eq!(v, serde_json::json!({"device": "d1", "t": 35.5}));
    watcher.expect_nothing(Duration::from_millis(300)).await;
    let info = engine.get("hot").await.expect("get");
    assert_eq!(info.status, "running");
    assert_eq!(info.metrics.messages_in, 2, "status topic is not in FROM");
    assert_eq!(info.metrics.filtered, 1);
    assert_eq!(info.metrics.rows_out, 1);
    assert_eq!(info.action_metrics[0].delivered, 1);
    assert!(info.metrics.latency_p99_us.is_some());
}

#[tokio::test]
async fn tumbling_window_group_by_emits_when_the_window_closes() {
    let (broker, addr) = broker().await;
    let engine = Engine::new(Services::new(broker.handle()), RuleEngineConfig::default());
    engine
        .create(rule(serde_json::json!({
            "id": "avg",
            "sql": "SELECT device, avg(temperature) AS avg_t, max(temperature) AS max_t, count(*) AS n \
                    FROM \"devices/+/telemetry\" GROUP BY device, TUMBLING(1s)",
            "actions": [{"type": "republish", "topic": "stats/{device}"}]
        })))
        .await
        .expect("create");
    let mut watcher = client(addr, "watcher", &["stats/#"]).await;
    let device = client(addr, "d", &[]).await;
    for (d, t) in [("a", 10), ("b", 1), ("a", 20), ("a", 30)] {
        device
            .publish(
                "devices/x/telemetry",
                &format!(r#"{{"device": "{d}", "temperature": {t}}}"#),
            )
            .await;
    }
    let mut got = [watcher.recv().await, watcher.recv().await];
    got.sort_by(|a, b| a.0.cmp(&b.0));
    // The four messages may straddle a window boundary; sum the windows.
    let (ta, va) = &got[0];
    assert_eq!(ta, "stats/a");
    let mut n_a = va["n"].as_i64().expect("n");
    let mut max_a = va["max_t"].as_i64().expect("max");
    if n_a < 3 {
        let (t, v) = watcher.recv().await;
        assert_eq!(t, "stats/a", "a's second window");
        n_a += v["n"].as_i64().expect("n");
        max_a = max_a.max(v["max_t"].as_i64().expect("max"));
    }
    assert_eq!((n_a, max_a), (3, 30));
    assert_eq!(got[1].0, "stats/b");
    assert_eq!(got[1].1["n"], 1);
}

/// A function that blocks forever on one rule must not stall another rule,
/// nor the router; its queue fills and drops are counted.
#[tokio::test]
async fn stuck_action_does_not_block_other_rules() {
    struct Stuck;
    impl FunctionInvoker for Stuck {
        fn exists(&self, _: &str) -> bool {
            true
        }
        fn invoke<'a>(
            &'a self,
            _: &'a str,
            _: FunctionMessage,
        ) -> BoxFuture<'a, Result<Vec<FunctionMessage>, InvokeError>> {
            Box::pin(std::future::pending())
        }
    }
    let (broker, addr) = broker().await;
    let mut services = Services::new(broker.handle());
    services.functions = Some(Arc::new(Stuck));
    let engine = Engine::new(services, RuleEngineConfig::default());
    engine
        .create(rule(serde_json::json!({
            "id": "stuck",
            "sql": "SELECT * FROM \"in/#\"",
            "actions": [{"type": "function", "name": "f", "delivery": {"queue": 2}}]
        })))
        .await
        .expect("create stuck");
    engine
        .create(rule(serde_json::json!({
            "id": "fine",
            "sql": "SELECT n FROM \"in/#\"",
            "actions": [{"type": "republish", "topic": "out/fine"}]
        })))
        .await
        .expect("create fine");
    let mut watcher = client(addr, "watcher", &["out/#"]).await;
    let p = client(addr, "p", &[]).await;
    for n in 0..20 {
        p.publish("in/x", &format!(r#"{{"n": {n}}}"#)).await;
    }
    for n in 0..20 {
        let (_, v) = watcher.recv().await;
        assert_eq!(v["n"], n, "in order, none lost");
    }
    let stuck = engine.get("stuck").await.expect("get");
    assert_eq!(stuck.metrics.rows_out, 20);
    // One row in the stuck call, at most two queued, the rest dropped.
    eventually(
        "one row in the call, the rest queued or dropped",
        async || {
            let a = &engine.get("stuck").await.expect("get").action_metrics[0];
            a.dropped + a.queued as u64 == 19
        },
    )
    .await;
    let a = &engine.get("stuck").await.expect("get").action_metrics[0];
    assert!(
        a.dropped >= 17 && a.queued <= 2 && a.delivered == 0,
        "{a:?}"
    );
    // Deleting a rule with a stuck action returns (after the grace).
    let engine = Engine::new(
        {
            let mut s = Services::new(broker.handle());
            s.functions = Some(Arc::new(Stuck));
            s
        },
        RuleEngineConfig {
            stop_grace: verge_broker::duration::HumanDuration(Duration::from_millis(100)),
            ..RuleEngineConfig::default()
        },
    );
    engine
        .create(rule(serde_json::json!({
            "id": "stuck2", "sql": "SELECT * FROM \"in/#\"",
            "actions": [{"type": "function", "name": "f"}]
        })))
        .await
        .expect("create");
    p.publish("in/x", "{}").await;
    eventually("row reached the function", async || {
        engine.get("stuck2").await.expect("get").metrics.rows_out == 1
    })
    .await;
    tokio::time::timeout(WAIT, engine.delete("stuck2"))
        .await
        .expect("delete returns despite the stuck call")
        .expect("delete");
}

/// Transient failures are retried per the policy; permanent ones are not.
#[tokio::test]
async fn failing_actions_are_retried_and_counted() {
    struct Flaky {
        calls: AtomicU32,
        fail_first: u32,
        retry: bool,
    }
    impl FunctionInvoker for Flaky {
        fn exists(&self, _: &str) -> bool {
            true
        }
        fn invoke<'a>(
            &'a self,
            _: &'a str,
            msg: FunctionMessage,
        ) -> BoxFuture<'a, Result<Vec<FunctionMessage>, InvokeError>> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let retry = self.retry;
            let fail = n < self.fail_first;
            Box::pin(async move {
                if fail {
                    return Err(InvokeError {
                        domain: Domain::External,
                        retry,
                        message: format!("failure {n}"),
                    });
                }
                Ok(vec![FunctionMessage {
                    topic: "fn/out".into(),
                    payload: msg.payload,
                    content_type: None,
                    user_properties: vec![],
                    time_ms: msg.time_ms,
                }])
            })
        }
    }
    let (broker, addr) = broker().await;
    let flaky = Arc::new(Flaky {
        calls: AtomicU32::new(0),
        fail_first: 2,
        retry: true,
    });
    let broken = Arc::new(Flaky {
        calls: AtomicU32::new(0),
        fail_first: u32::MAX,
        retry: false,
    });
    let mut s1 = Services::new(broker.handle());
    s1.functions = Some(flaky.clone());
    let mut s2 = Services::new(broker.handle());
    s2.functions = Some(broken.clone());
    let e1 = Engine::new(s1, RuleEngineConfig::default());
    let e2 = Engine::new(s2, RuleEngineConfig::default());
    let delivery = serde_json::json!({"max_attempts": 5, "backoff": "10ms"});
    let cfg = |id: &str| {
        rule(serde_json::json!({
            "id": id, "sql": "SELECT v FROM \"in/+\"",
            "actions": [{"type": "function", "name": "f", "delivery": delivery}]
        }))
    };
    e1.create(cfg("flaky")).await.expect("create");
    e2.create(cfg("broken")).await.expect("create");
    let mut watcher = client(addr, "watcher", &["fn/out"]).await;
    let p = client(addr, "p", &[]).await;
    p.publish("in/a", r#"{"v": 7}"#).await;
    let (_, v) = watcher.recv().await;
    assert_eq!(v, serde_json::json!({"v": 7}), "function output published");
    watcher.expect_nothing(Duration::from_millis(200)).await;
    let a = &e1.get("flaky").await.expect("get").action_metrics[0];
    assert_eq!((a.delivered, a.retries, a.failed), (1, 2, 0));
    eventually("permanent failure counted", async || {
        e2.get("broken").await.expect("get").action_metrics[0].failed == 1
    })
    .await;
    let b = &e2.get("broken").await.expect("get").action_metrics[0];
    assert_eq!(b.retries, 0, "a permanent failure is not retried");
    assert_eq!(broken.calls.load(Ordering::SeqCst), 1);
    assert!(
        b.last_error
            .as_deref()
            .is_some_and(|e| e.contains("failure 0")),
        "{b:?}"
    );
}

#[tokio::test]
async fn bad_rules_are_refused_and_change_nothing() {
    let (broker, _) = broker().await;
    let engine = Engine::new(Services::new(broker.handle()), RuleEngineConfig::default());
    engine
        .create(rule(
            serde_json::json!({"id": "ok", "sql": "SELECT * FROM \"a\""}),
        ))
        .await
        .expect("create");
    let cases = [
        (
            serde_json::json!({"id": "x", "sql": "SELECT FROM \"a\""}),
            "line 1, column",
        ),
        (
            serde_json::json!({"id": "bad id!", "sql": "SELECT * FROM \"a\""}),
            "invalid rule id",
        ),
        (
            serde_json::json!({"id": "ok", "sql": "SELECT * FROM \"a\""}),
            "exists already",
        ),
        (
            serde_json::json!({"id": "y", "sql": "SELECT * FROM \"a\"",
                "actions": [{"type": "republish", "topic": "x/{"}]}),
            "actions[0] (republish): unclosed",
        ),
        (
            serde_json::json!({"id": "y", "sql": "SELECT * FROM \"a\"",
                "actions": [{"type": "log"}, {"type": "republish", "topic": "x", "qos": 3}]}),
            "actions[1] (republish): qos 3",
        ),
        (
            serde_json::json!({"id": "y", "sql": "SELECT * FROM \"a\"",
                "actions": [{"type": "function", "name": "f"}]}),
            "no function runtime",
        ),
        (
            serde_json::json!({"id": "y", "sql": "SELECT * FROM \"a\"",
                "actions": [{"type": "store"}]}),
            "no local store",
        ),
        (
            serde_json::json!({"id": "y", "sql": "SELECT topic(2) AS device, t FROM \"a/+\"",
                "actions": [{"type": "republish", "topic": "alerts/{devcie}"}]}),
            "actions[0] (republish): topic template uses `{devcie}` but the rule's columns are: device, t",
        ),
        (
            serde_json::json!({"id": "y", "sql": "SELECT * FROM \"a\"",
                "actions": [{"type": "log", "level": "verbose"}]}),
            "actions[0] (log): level `verbose`",
        ),
        (
            serde_json::json!({"id": "y", "sql": "SELECT * FROM \"a\"",
                "actions": [{"type": "republish", "topic": "$SYS/x"}]}),
            "belong to the broker",
        ),
    ];
    for (cfg, want) in cases {
        let err = engine
            .create(rule(cfg.clone()))
            .await
            .expect_err("must be refused");
        assert!(err.to_string().contains(want), "{cfg}: {err}");
    }
    // A bad update keeps the old version running.
    let err = engine
        .update(
            "ok",
            rule(serde_json::json!({"id": "ok", "sql": "SELECT nope( FROM \"a\""})),
        )
        .await
        .expect_err("bad update");
    assert!(matches!(err, RuleError::Sql(_)), "{err}");
    let rules = engine.list().await;
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].config.sql, "SELECT * FROM \"a\"");
    assert_eq!(rules[0].status, "running");
    // Unknown action type and unknown keys are config errors.
    assert!(
        serde_json::from_value::<RuleConfig>(serde_json::json!({
            "id": "z", "sql": "SELECT * FROM \"a\"", "actions": [{"type": "email"}]
        }))
        .is_err()
    );
    assert!(
        serde_json::from_value::<RuleConfig>(serde_json::json!({
            "id": "z", "sql": "SELECT * FROM \"a\"",
            "actions": [{"type": "log", "colour": "red"}]
        }))
        .is_err()
    );
}

#[tokio::test]
async fn lifecycle_update_stop_start_delete() {
    let (broker, addr) = broker().await;
    let handle = broker.handle();
    let engine = Engine::new(Services::new(handle.clone()), RuleEngineConfig::default());
    let mut watcher = client(addr, "watcher", &["out/#"]).await;
    let subs = || handle.stats().subscriptions.load(Ordering::Relaxed);
    let base = subs();
    engine
        .create(rule(serde_json::json!({
            "id": "r", "sql": "SELECT v FROM \"in/a\", \"in/b\"",
            "actions": [{"type": "republish", "topic": "out/v1"}]
        })))
        .await
        .expect("create");
    assert_eq!(subs(), base + 2);
    let p = client(addr, "p", &[]).await;
    p.publish("in/b", r#"{"v": 1}"#).await;
    assert_eq!(watcher.recv().await.0, "out/v1");

    engine
        .update(
            "r",
            rule(serde_json::json!({
                "id": "ignored", "sql": "SELECT v FROM \"in/a\"",
                "actions": [{"type": "republish", "topic": "out/v2"}]
            })),
        )
        .await
        .expect("update");
    eventually("old subscription removed", async || subs() == base + 1).await;
    p.publish("in/b", r#"{"v": 2}"#).await;
    p.publish("in/a", r#"{"v": 3}"#).await;
    let (t, v) = watcher.recv().await;
    assert_eq!((t.as_str(), &v["v"]), ("out/v2", &serde_json::json!(3)));

    let info = engine.stop("r").await.expect("stop");
    assert_eq!(info.status, "stopped");
    eventually("stopped rule unsubscribed", async || subs() == base).await;
    p.publish("in/a", r#"{"v": 4}"#).await;
    watcher.expect_nothing(Duration::from_millis(300)).await;
    engine.start("r").await.expect("start");
    p.publish("in/a", r#"{"v": 5}"#).await;
    assert_eq!(watcher.recv().await.1["v"], 5);

    engine.delete("r").await.expect("delete");
    eventually("deleted rule unsubscribed", async || subs() == base).await;
    assert!(matches!(engine.get("r").await, Err(RuleError::NotFound(_))));
    assert!(matches!(
        engine.delete("r").await,
        Err(RuleError::NotFound(_))
    ));
}

/// A rule that republishes into its own FROM does not feed on itself.
#[tokio::test]
async fn own_output_does_not_loop() {
    let (broker, _) = broker().await;
    let handle = broker.handle();
    let engine = Engine::new(Services::new(handle.clone()), RuleEngineConfig::default());
    engine
        .create(rule(serde_json::json!({
            "id": "loop", "sql": "SELECT * FROM \"a/#\"",
            "actions": [{"type": "republish", "topic": "a/out"}]
        })))
        .await
        .expect("create");
    let mut sub = handle.subscribe("a/out", 10).await.expect("subscribe");
    handle
        .publish(Message::local(
            "a/in",
            "{\"x\":1}",
            verge_mqtt::QoS::AtMostOnce,
            false,
        ))
        .await
        .expect("publish");
    let m = tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("output")
        .expect("alive");
    assert_eq!(&m.payload[..], b"{\"x\":1}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let info = engine.get("loop").await.expect("get");
    assert_eq!(info.metrics.messages_in, 1, "{info:?}");
}

#[tokio::test]
async fn store_and_upstream_actions_reach_their_services() {
    #[derive(Default)]
    struct Sink {
        points: std::sync::Mutex<Vec<TelemetryPoint>>,
        sent: std::sync::Mutex<Vec<(String, String, Bytes)>>,
    }
    impl TelemetryStore for Sink {
        fn write(&self, points: Vec<TelemetryPoint>) -> BoxFuture<'_, Result<(), ServiceError>> {
            self.points.lock().unwrap().extend(points);
            Box::pin(async { Ok(()) })
        }
    }
    impl Upstream for Sink {
        fn send<'a>(
            &'a self,
            lane: &'a str,
            topic: String,
            payload: Bytes,
        ) -> BoxFuture<'a, Result<(), ServiceError>> {
            self.sent
                .lock()
                .unwrap()
                .push((lane.into(), topic, payload));
            Box::pin(async { Ok(()) })
        }
    }
    let (broker, _) = broker().await;
    let handle = broker.handle();
    let sink = Arc::new(Sink::default());
    let mut services = Services::new(handle.clone());
    services.store = Some(sink.clone());
    services.upstream = Some(sink.clone());
    let engine = Engine::new(services, RuleEngineConfig::default());
    engine
        .create(rule(serde_json::json!({
            "id": "s", "sql": "SELECT topic(2) AS device, temperature, humidity FROM \"devices/+/telemetry\"",
            "actions": [
                {"type": "store"},
                {"type": "upstream", "topic": "telemetry/{device}", "lane": "alarms"}
            ]
        })))
        .await
        .expect("create");
    handle
        .publish(Message::local(
            "devices/d9/telemetry",
            r#"{"temperature": 21.5, "humidity": null}"#,
            verge_mqtt::QoS::AtLeastOnce,
            false,
        ))
        .await
        .expect("publish");
    eventually("both actions ran", async || {
        let i = engine.get("s").await.expect("get");
        i.action_metrics.iter().all(|a| a.delivered == 1)
    })
    .await;
    let points = sink.points.lock().unwrap().clone();
    assert_eq!(points.len(), 1, "null humidity is not stored: {points:?}");
    assert_eq!(
        (points[0].device.as_str(), points[0].metric.as_str()),
        ("d9", "temperature")
    );
    assert_eq!(points[0].value, verge_sql::Value::Float(21.5));
    let sent = sink.sent.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].0.as_str(), sent[0].1.as_str()),
        ("alarms", "telemetry/d9")
    );
    let v: serde_json::Value = serde_json::from_slice(&sent[0].2).expect("json");
    assert_eq!(
        v,
        serde_json::json!({"device": "d9", "temperature": 21.5, "humidity": null})
    );
}

#[tokio::test]
async fn test_runs_sql_over_samples_without_side_effects() {
    let (broker, _) = broker().await;
    let handle = broker.handle();
    let engine = Engine::new(Services::new(handle.clone()), RuleEngineConfig::default());
    let samples: Vec<Sample> = serde_json::from_str(
        &serde_json::json!([
            {"topic": "devices/a/telemetry", "payload": {"device": "a", "t": 10}, "time": 1000},
            {"topic": "devices/a/telemetry", "payload": {"device": "a", "t": 20}, "time": 2000},
            {"topic": "other", "payload": {"device": "a", "t": 99}, "time": 2500},
            {"topic": "devices/b/telemetry", "payload": {"device": "b", "t": 5}, "time": 11000},
            {"advance": 20000},
            {"topic": "devices/b/telemetry", "payload": {"device": "b", "t": 7}, "time": 21000}
        ])
        .to_string(),
    )
    .expect("samples");
    let out = engine
        .test(
            "SELECT device, sum(t) AS s, count(*) AS n FROM \"devices/+/telemetry\" GROUP BY device, TUMBLING(10s)".into(),
            samples,
        )
        .await
        .expect("test");
    let rows: Vec<serde_json::Value> = out
        .rows
        .iter()
        .map(|r| serde_json::from_str(&r.to_json()).expect("json"))
        .collect();
    assert_eq!(
        rows,
        vec![
            serde_json::json!({"device": "a", "s": 30, "n": 2}),
            serde_json::json!({"device": "b", "s": 5, "n": 1}),
            serde_json::json!({"device": "b", "s": 7, "n": 1}),
        ]
    );
    assert!(out.errors.is_empty());
    assert_eq!(handle.stats().subscriptions.load(Ordering::Relaxed), 0);

    let err = engine
        .test("SELECT a +".into(), vec![])
        .await
        .expect_err("bad sql");
    assert!(err.to_string().contains("line 1, column"), "{err}");
    let err = engine
        .test("SELECT * FROM \"a\"".into(), vec![Sample::default()])
        .await
        .expect_err("no topic");
    assert!(
        err.to_string().contains("samples[0]: `topic` is missing"),
        "{err}"
    );
}

#[tokio::test]
async fn prometheus_metrics_name_every_rule() {
    let (broker, _) = broker().await;
    let handle = broker.handle();
    let engine = Engine::new(Services::new(handle.clone()), RuleEngineConfig::default());
    engine
        .create(rule(serde_json::json!({
            "id": "m", "sql": "SELECT x FROM \"m/#\" WHERE x > 1",
            "actions": [{"type": "log", "level": "debug"}]
        })))
        .await
        .expect("create");
    for x in [1, 2, 3] {
        handle
            .publish(Message::local(
                "m/1",
                format!("{{\"x\":{x}}}"),
                verge_mqtt::QoS::AtMostOnce,
                false,
            ))
            .await
            .expect("publish");
    }
    eventually("processed", async || {
        engine.get("m").await.expect("get").action_metrics[0].delivered == 2
    })
    .await;
    let mut text = String::new();
    engine.render_metrics(&mut text).await;
    for want in [
        "verge_rule_messages_total{rule=\"m\"} 3",
        "verge_rule_filtered_total{rule=\"m\"} 1",
        "verge_rule_rows_total{rule=\"m\"} 2",
        "verge_rule_running{rule=\"m\"} 1",
        "verge_rule_action_rows_total{rule=\"m\",action=\"0:log\",outcome=\"delivered\"} 2",
        "verge_rule_latency_seconds_count{rule=\"m\"} 3",
        "# TYPE verge_rule_latency_seconds histogram",
    ] {
        assert!(text.contains(want), "missing `{want}` in:\n{text}");
    }
}

/// Two rules that republish into each other's FROM stop after a bounded
/// number of hops instead of looping forever; the refusals are counted.
#[tokio::test]
async fn rules_feeding_each_other_stop_after_max_hops() {
    let (broker, _) = broker().await;
    let handle = broker.handle();
    let engine = Engine::new(Services::new(handle.clone()), RuleEngineConfig::default());
    for (id, from, to) in [("la", "pa/#", "pb/x"), ("lb", "pb/#", "pa/x")] {
        engine
            .create(rule(serde_json::json!({
                "id": id, "sql": format!("SELECT * FROM \"{from}\""),
                "actions": [{"type": "republish", "topic": to}]
            })))
            .await
            .expect("create");
    }
    handle
        .publish(Message::local(
            "pa/start",
            "{}",
            verge_mqtt::QoS::AtMostOnce,
            false,
        ))
        .await
        .expect("publish");
    eventually("the loop is cut and counted", async || {
        let a = engine.get("la").await.expect("get").metrics;
        let b = engine.get("lb").await.expect("get").metrics;
        a.dropped_loop + b.dropped_loop == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = engine.get("la").await.expect("get").metrics;
    let b = engine.get("lb").await.expect("get").metrics;
    // 8 hops: la takes hops 0, 2, 4, 6; lb takes 1, 3, 5, 7; hop 8 is refused.
    assert_eq!((a.messages_in, b.messages_in), (4, 4), "{a:?} {b:?}");
    assert_eq!(a.dropped_loop + b.dropped_loop, 1);
}

/// Payload values cannot steer a republish into `$SYS` or across topic
/// levels; such rows fail permanently and are counted.
#[tokio::test]
async fn template_values_cannot_change_topic_levels() {
    let (broker, _) = broker().await;
    let handle = broker.handle();
    let engine = Engine::new(Services::new(handle.clone()), RuleEngineConfig::default());
    engine
        .create(rule(serde_json::json!({
            "id": "inj", "sql": "SELECT device, v FROM \"inj/+/t\"",
            "actions": [{"type": "republish", "topic": "{device}/alerts", "retain": true}]
        })))
        .await
        .expect("create");
    let mut all = handle.subscribe("#", 100).await.expect("subscribe");
    let mut sys = handle.subscribe("$SYS/#", 100).await.expect("subscribe");
    for device in ["$SYS/broker", "devices/victim/commands/reboot", "ok"] {
        handle
            .publish(Message::local(
                "inj/1/t",
                serde_json::json!({"device": device, "v": 1}).to_string(),
                verge_mqtt::QoS::AtMostOnce,
                false,
            ))
            .await
            .expect("publish");
    }
    let mut topics = Vec::new();
    while topics.len() < 4 {
        let m = tokio::time::timeout(WAIT, all.recv())
            .await
            .expect("message")
            .expect("alive");
        topics.push(m.topic.to_string());
    }
    assert_eq!(topics[3], "ok/alerts", "{topics:?}");
    let a = &engine.get("inj").await.expect("get").action_metrics[0];
    assert_eq!((a.delivered, a.failed), (1, 2), "{a:?}");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sys.recv())
            .await
            .is_err(),
        "nothing under $SYS"
    );
}

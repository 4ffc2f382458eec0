//! Edge functions wired into the broker, in-process: a rule's `function`
//! action, the hop bound between rules and functions, and `subscribe`
//! triggers (outputs published, no re-triggering, failures, redeploys,
//! deletes, stop).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/functions.rs"]
mod support;

use support::*;

/// A rule's `function` action: a reading published into the broker goes
/// through the rule into the function, whose output a subscriber gets.
#[tokio::test]
async fn rule_function_action_publishes_the_function_output() {
    let n = node().await;
    let s = &n.state;
    deploy_wasm(
        s,
        "cfg",
        "config",
        json!({"config": {"tag": "from-config"}}),
    )
    .await;
    let rule: RuleConfig = serde_json::from_value(json!({
        "id": "to-fn",
        "sql": "SELECT * FROM \"devices/+/telemetry\"",
        "actions": [{"type": "function", "name": "cfg"}]
    }))
    .unwrap();
    s.rules.create(rule).await.expect("rule");
    let mut sub = s.broker.subscribe("cfg", 16).await.unwrap();
    publish(&s.broker, "devices/d1/telemetry", r#"{"temperature":21.5}"#).await;
    let m = recv(&mut sub).await;
    let got: Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(got, json!({"tag": "from-config"}));
    assert_eq!(&*m.origin, "$function/cfg");
    assert_eq!(m.hops, 1);
    assert_eq!(n.functions.get("cfg").unwrap().metrics.invocations, 1);

    // A rule naming a function that is not deployed is accepted; its calls
    // fail until it is, and the rule keeps running.
    let rule: RuleConfig = serde_json::from_value(json!({
        "id": "later",
        "sql": "SELECT * FROM \"later/in\"",
        "actions": [{"type": "function", "name": "later", "delivery": {"max_attempts": 1}}]
    }))
    .unwrap();
    s.rules
        .create(rule)
        .await
        .expect("rule for a function not there yet");
    deploy_wasm(s, "later", "config", json!({"config": {"late": true}})).await;
    publish(&s.broker, "later/in", "{}").await;
    let m = recv(&mut sub).await;
    assert_eq!(&*m.origin, "$function/later");
    assert_eq!(
        serde_json::from_slice::<Value>(&m.payload).unwrap(),
        json!({"late": true})
    );
}

/// A function whose output lands on its rule's own source topic feeds the
/// rule again: the hop bound ends it after 8 steps.
#[tokio::test]
async fn rule_and_function_feeding_each_other_stop_at_the_hop_bound() {
    let n = node().await;
    let s = &n.state;
    deploy_wasm(s, "echo", "echo", json!({})).await;
    let rule: RuleConfig = serde_json::from_value(json!({
        "id": "loop",
        "sql": "SELECT * FROM \"devices/+/telemetry\"",
        "actions": [{"type": "function", "name": "echo"}]
    }))
    .unwrap();
    s.rules.create(rule).await.expect("rule");
    let mut sub = s.broker.subscribe("devices/#", 64).await.unwrap();
    publish(&s.broker, "devices/d1/telemetry", r#"{"t":1}"#).await;
    let first = recv(&mut sub).await;
    assert_eq!((&*first.origin, first.hops), ("$local", 0));
    for hop in 1..=8u8 {
        let m = recv(&mut sub).await;
        assert_eq!((&*m.origin, m.hops), ("$function/echo", hop));
        assert_eq!(
            serde_json::from_slice::<Value>(&m.payload).unwrap(),
            json!({"t": 1})
        );
    }
    let more = tokio::time::timeout(Duration::from_millis(500), sub.recv()).await;
    assert!(more.is_err(), "a ninth step: {more:?}");
    assert_eq!(n.functions.get("echo").unwrap().metrics.invocations, 8);
}

async fn publish(b: &BrokerHandle, topic: &str, payload: &str) {
    b.publish(Message::local(
        topic,
        payload.as_bytes().to_vec(),
        QoS::AtLeastOnce,
        false,
    ))
    .await
    .expect("publish");
}

/// Publish `topic` until the function's trigger answers (its subscription
/// is made in the background after a deploy), then take everything up to
/// the answer to a last marker, so the subscriber starts clean.
async fn until_triggered(
    b: &BrokerHandle,
    sub: &mut LocalSubscription,
    topic: &str,
    function: &str,
) {
    let origin = format!("$function/{function}");
    let deadline = Instant::now() + WAIT;
    'probe: loop {
        assert!(
            Instant::now() < deadline,
            "{function} never triggered by {topic}"
        );
        publish(b, topic, "probe").await;
        let tick = tokio::time::sleep(Duration::from_millis(50));
        tokio::pin!(tick);
        loop {
            tokio::select! {
                m = sub.recv() => {
                    if m.expect("broker running").origin.as_ref() == origin {
                        break 'probe;
                    }
                }
                () = &mut tick => continue 'probe,
            }
        }
    }
    publish(b, topic, "marker").await;
    loop {
        let m = recv(sub).await;
        if m.origin.as_ref() == origin && &m.payload[..] == b"marker" {
            return;
        }
    }
}

#[tokio::test]
async fn subscription_triggers_publish_outputs_without_retriggering() {
    let n = node().await;
    let s = &n.state;
    let triggers = Triggers::start(n.functions.clone(), s.broker.clone());
    deploy_wasm(s, "echo", "echo", json!({"subscribe": ["in/#"]})).await;
    let mut sub = s
        .broker
        .subscribe_many(&["in/#".into(), "other/#".into()], 256)
        .await
        .unwrap();
    until_triggered(&s.broker, &mut sub, "in/probe", "echo").await;

    let before = n.functions.get("echo").unwrap().metrics.invocations;
    publish(&s.broker, "in/a", "one").await;
    let m = recv(&mut sub).await;
    assert_eq!((&*m.topic, &*m.origin, m.hops), ("in/a", "$local", 0));
    let m = recv(&mut sub).await;
    assert_eq!(
        (&*m.topic, &*m.origin, m.hops),
        ("in/a", "$function/echo", 1)
    );
    assert_eq!(&m.payload[..], b"one");
    // Its output matched its own filter but did not call it again: the
    // next thing the subscriber sees is the next input, then its output
    // (the trigger answers in order).
    publish(&s.broker, "in/b", "two").await;
    let m = recv(&mut sub).await;
    assert_eq!((&*m.topic, &*m.origin), ("in/b", "$local"));
    let m = recv(&mut sub).await;
    assert_eq!(
        (&*m.topic, &*m.origin, &m.payload[..]),
        ("in/b", "$function/echo", &b"two"[..])
    );
    assert_eq!(
        n.functions.get("echo").unwrap().metrics.invocations,
        before + 2
    );

    // Messages that already passed 8 in-node steps are not handed over.
    let mut tired = Message::local("in/tired", b"x".to_vec(), QoS::AtLeastOnce, false);
    tired.hops = 8;
    s.broker.publish(tired).await.unwrap();
    publish(&s.broker, "in/c", "three").await;
    let seen: Vec<(String, String)> = [
        recv(&mut sub).await,
        recv(&mut sub).await,
        recv(&mut sub).await,
    ]
    .iter()
    .map(|m| (m.topic.to_string(), m.origin.to_string()))
    .collect();
    assert_eq!(
        seen,
        [
            ("in/tired".into(), "$local".into()),
            ("in/c".into(), "$local".into()),
            ("in/c".into(), "$function/echo".into())
        ]
    );

    // A redeploy with other filters moves the trigger.
    deploy_wasm(s, "echo", "echo", json!({"subscribe": ["other/#"]})).await;
    until_triggered(&s.broker, &mut sub, "other/probe", "echo").await;
    publish(&s.broker, "in/d", "old filter").await;
    publish(&s.broker, "other/e", "new filter").await;
    let seen: Vec<(String, String)> = [
        recv(&mut sub).await,
        recv(&mut sub).await,
        recv(&mut sub).await,
    ]
    .iter()
    .map(|m| (m.topic.to_string(), m.origin.to_string()))
    .collect();
    assert_eq!(
        seen,
        [
            ("in/d".into(), "$local".into()),
            ("other/e".into(), "$local".into()),
            ("other/e".into(), "$function/echo".into())
        ]
    );
    triggers.stop();
}

/// A function that fails on some inputs keeps being triggered for the next.
#[tokio::test]
async fn a_failing_triggered_call_does_not_stop_the_trigger() {
    let n = node().await;
    let s = &n.state;
    let triggers = Triggers::start(n.functions.clone(), s.broker.clone());
    deploy_process(
        &n,
        json!({
            "name": "py",
            "runtime": "process",
            "command": ["python3", path_str(&python_example())],
            "config": {"above": 30, "topic": "alerts/py"},
            "subscribe": ["sensors/+"],
        }),
    )
    .await;
    let mut alerts = s.broker.subscribe("alerts/py", 16).await.unwrap();
    // Until the trigger is subscribed, readings go nowhere: keep sending.
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "never triggered");
        publish(&s.broker, "sensors/probe", r#"{"temperature":50}"#).await;
        if tokio::time::timeout(Duration::from_millis(100), alerts.recv())
            .await
            .is_ok()
        {
            break;
        }
    }
    publish(&s.broker, "sensors/s1", "not json").await;
    publish(&s.broker, "sensors/s1", r#"{"temperature":10}"#).await;
    publish(&s.broker, "sensors/s1", r#"{"temperature":31}"#).await;
    loop {
        let m = recv(&mut alerts).await;
        let doc: Value = serde_json::from_slice(&m.payload).unwrap();
        if doc["source"] == "sensors/s1" {
            assert_eq!(doc["temperature"], 31);
            break;
        }
    }
    let m = n.functions.get("py").unwrap().metrics;
    assert!(m.errors >= 1, "{m:?}");
    assert_eq!(
        m.last_error.as_ref().map(|e| e.code),
        Some("function_error")
    );
    triggers.stop();
    n.functions.shutdown().await;
}

/// Regression: `Triggers::stop` aborted only the watcher; the per-function
/// tasks it had spawned kept calling their functions.
#[tokio::test]
async fn stopped_triggers_call_nothing_more() {
    let n = node().await;
    let s = &n.state;
    let triggers = Triggers::start(n.functions.clone(), s.broker.clone());
    deploy_wasm(s, "echo", "echo", json!({"subscribe": ["in/#"]})).await;
    let mut sub = s.broker.subscribe("in/#", 256).await.unwrap();
    until_triggered(&s.broker, &mut sub, "in/probe", "echo").await;
    triggers.stop();
    // Let the aborted tasks be dropped.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = n.functions.get("echo").unwrap().metrics.invocations;
    publish(&s.broker, "in/after", "x").await;
    let m = recv(&mut sub).await;
    assert_eq!((&*m.topic, &*m.origin), ("in/after", "$local"));
    let more = tokio::time::timeout(Duration::from_millis(500), sub.recv()).await;
    assert!(more.is_err(), "called after stop: {more:?}");
    assert_eq!(n.functions.get("echo").unwrap().metrics.invocations, before);
}

/// A new version with another concurrency gets a new trigger task, and
/// one deleted and deployed again keeps being triggered.
#[tokio::test]
async fn triggers_follow_redeploys_and_deletes() {
    let n = node().await;
    let s = &n.state;
    let triggers = Triggers::start(n.functions.clone(), s.broker.clone());
    deploy_wasm(s, "echo", "echo", json!({"subscribe": ["in/#"]})).await;
    let mut sub = s.broker.subscribe("in/#", 256).await.unwrap();
    until_triggered(&s.broker, &mut sub, "in/probe", "echo").await;
    deploy_wasm(
        s,
        "echo",
        "echo",
        json!({"subscribe": ["in/#"], "limits": {"concurrency": 2}}),
    )
    .await;
    until_triggered(&s.broker, &mut sub, "in/probe", "echo").await;
    let (st, _) = call(s, "DELETE", "/api/functions/echo", None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    deploy_wasm(s, "echo", "echo", json!({"subscribe": ["in/#"]})).await;
    until_triggered(&s.broker, &mut sub, "in/probe", "echo").await;
    publish(&s.broker, "in/x", "last").await;
    let m = recv(&mut sub).await;
    assert_eq!((&*m.topic, &*m.origin), ("in/x", "$local"));
    let m = recv(&mut sub).await;
    assert_eq!((&*m.topic, &*m.origin), ("in/x", "$function/echo"));
    triggers.stop();
}

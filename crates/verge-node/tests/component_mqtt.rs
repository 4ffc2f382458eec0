//! Components on the node's broker: each gets its own credentials in its
//! environment (a wrong secret, another client id or a topic outside its
//! rights is refused), asks the node over `$verge/rpc/...`, and the `mqtt`
//! health check follows its heartbeats. A real broker on a loopback port,
//! `sh` components, rumqttc 3.1.1 clients.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/components.rs"]
mod comp;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use comp::{spec_from, wait_for};
use rumqttc::{AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use verge_broker::auth::Registry;
use verge_broker::config::AclPolicy;
use verge_broker::{Authenticator, Broker, BrokerConfig};
use verge_node::components::bus::{Bus, NodeIdent, listener_url};
use verge_node::components::{Components, State};
use verge_protocol::ComponentSpec;
use verge_tsdb::{Tsdb, TsdbConfig};

const WAIT: Duration = Duration::from_secs(20);

struct Setup {
    _dir: tempfile::TempDir,
    broker: Broker,
    auth: Authenticator,
    addr: SocketAddr,
    bus: Bus,
    db: Arc<Tsdb>,
    data: std::path::PathBuf,
}

/// A broker that lets anonymous clients do anything (the loosest config),
/// with the bus over it.
async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tmp");
    let mut cfg = BrokerConfig {
        allow_anonymous: true,
        ..BrokerConfig::default()
    };
    cfg.listeners.tcp.enabled = true;
    cfg.listeners.tcp.bind = "127.0.0.1:0".parse().expect("addr");
    cfg.listeners.ws.enabled = false;
    let auth = Authenticator::new(Registry::default(), true, AclPolicy::Allow).expect("auth");
    let mut broker = Broker::start(cfg.clone(), auth.clone());
    let listeners = verge_broker::bind_all(&cfg.listeners).await.expect("bind");
    let addrs: Vec<_> = listeners
        .iter()
        .map(|l| (l.kind(), l.local_addr().expect("addr"), String::new()))
        .collect();
    let addr = addrs[0].1;
    for l in listeners {
        broker.serve(l);
    }
    let db = Arc::new(
        Tsdb::open(TsdbConfig {
            dir: dir.path().join("store"),
            ..TsdbConfig::default()
        })
        .expect("store"),
    );
    let bus = Bus::start(
        auth.clone(),
        broker.handle(),
        NodeIdent {
            name: "edge-1".into(),
            version: "9.9.9".into(),
        },
        Some(db.clone()),
    )
    .await
    .expect("bus");
    bus.set_url(listener_url(&addrs));
    let data = dir.path().join("data");
    Setup {
        _dir: dir,
        broker,
        auth,
        addr,
        bus,
        db,
        data,
    }
}

fn spec(v: Value) -> ComponentSpec {
    spec_from(
        json!({
            "version": "1", "command": "sh",
            "backoff_min": "50ms", "backoff_max": "200ms", "stop_timeout": "1s",
        }),
        v,
    )
}

/// The `VERGE_*` variables a component wrote to `env.txt` in its workdir.
async fn env_of(workdir: &Path) -> HashMap<String, String> {
    let t = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(workdir.join("env.txt"))
            && text.contains("VERGE_MQTT_CLIENT_ID")
        {
            return text
                .lines()
                .filter_map(|l| l.split_once('='))
                .filter(|(k, _)| k.starts_with("VERGE_"))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        }
        assert!(t.elapsed() < WAIT, "no env.txt in {}", workdir.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Client {
    c: AsyncClient,
    rx: mpsc::UnboundedReceiver<Result<Packet, String>>,
}

async fn connect(
    addr: SocketAddr,
    id: &str,
    creds: Option<(&str, &str)>,
) -> Result<Client, String> {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    if let Some((u, p)) = creds {
        o.set_credentials(u, p);
    }
    let (c, mut el) = AsyncClient::new(o, 64);
    match tokio::time::timeout(WAIT, el.poll())
        .await
        .expect("connack in time")
    {
        Ok(Event::Incoming(Packet::ConnAck(a))) if a.code == ConnectReturnCode::Success => {}
        Ok(other) => return Err(format!("{other:?}")),
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return Err(format!("{code:?}")),
        Err(e) => return Err(e.to_string()),
    }
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(p)) => {
                    let _ = tx.send(Ok(p));
                }
                Ok(Event::Outgoing(_)) => {}
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            }
        }
    });
    Ok(Client { c, rx })
}

impl Client {
    async fn next(&mut self, what: &str, f: impl Fn(&Packet) -> bool) -> Packet {
        loop {
            let p = tokio::time::timeout(WAIT, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} in time"))
                .unwrap_or_else(|| panic!("closed before {what}"))
                .unwrap_or_else(|e| panic!("connection ended before {what}: {e}"));
            if f(&p) {
                return p;
            }
        }
    }

    async fn subscribe(&mut self, filter: &str) -> Vec<rumqttc::SubscribeReasonCode> {
        self.c
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("queue");
        match self
            .next("SUBACK", |p| matches!(p, Packet::SubAck(_)))
            .await
        {
            Packet::SubAck(s) => s.return_codes,
            _ => unreachable!(),
        }
    }

    async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.c
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("queue");
    }

    async fn message(&mut self, topic: &str) -> Vec<u8> {
        match self
            .next(
                topic,
                |p| matches!(p, Packet::Publish(m) if m.topic == topic),
            )
            .await
        {
            Packet::Publish(m) => m.payload.to_vec(),
            _ => unreachable!(),
        }
    }

    /// A 3.1.1 RPC call: the response topic and id in the body.
    async fn call(&mut self, component: &str, method: &str, body: Value) -> Value {
        let reply = format!("components/{component}/reply");
        let mut body = body;
        body["reply_to"] = json!(reply);
        self.publish(
            &format!("$verge/rpc/{component}/{method}"),
            body.to_string(),
        )
        .await;
        serde_json::from_slice(&self.message(&reply).await).expect("json answer")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_credentials_acl_rpc_and_revoke() {
    let s = setup().await;
    let a = spec(json!({
        "name": "a",
        "args": ["-c", "env > env.txt; exec sleep 1000"],
        "config": {"k": 1},
        "mqtt": {"publish": ["shared/a"], "subscribe": ["shared/#"]},
    }));
    let c = Components::start_with_bus(&[a], &s.data, Some(s.bus.clone())).expect("start");
    let env = env_of(&s.data.join("components/a/1")).await;
    assert_eq!(env["VERGE_MQTT_URL"], format!("mqtt://{}", s.addr));
    assert_eq!(env["VERGE_MQTT_USERNAME"], "component:a");
    assert_eq!(env["VERGE_MQTT_CLIENT_ID"], "component:a");
    let secret = env["VERGE_MQTT_PASSWORD"].clone();
    assert_eq!(secret.len(), 64);
    let user = Some(("component:a", secret.as_str()));
    // What the cloud agent does at every apply: a new registry. The
    // component's credentials and the `$verge/#` rule stay.
    s.auth.replace(Registry::default()).expect("replace");

    // A wrong secret, another client id: refused.
    let bad = connect(s.addr, "component:a", Some(("component:a", "wrong"))).await;
    assert!(bad.is_err_and(|e| e.contains("BadUserNamePassword")));
    let other = connect(s.addr, "someone", user).await;
    assert!(other.is_err_and(|e| e.contains("NotAuthorized")));
    // Nobody else takes its client id.
    assert!(connect(s.addr, "component:a", None).await.is_err());

    let mut me = connect(s.addr, "component:a", user).await.expect("connect");
    let mut spy = s.broker.handle().subscribe("#", 100).await.expect("spy");
    // Outside its rights: not delivered; its own topics and rights: delivered,
    // in order.
    me.publish("forbidden/x", "no").await;
    me.publish("components/b/x", "no").await;
    me.publish("shared/a", "yes").await;
    me.publish("components/a/telemetry", "yes").await;
    let first = tokio::time::timeout(WAIT, spy.recv())
        .await
        .expect("spy")
        .expect("msg");
    assert_eq!(&*first.topic, "shared/a");
    let second = tokio::time::timeout(WAIT, spy.recv())
        .await
        .expect("spy")
        .expect("msg");
    assert_eq!(&*second.topic, "components/a/telemetry");
    assert_eq!(
        me.subscribe("#").await,
        [rumqttc::SubscribeReasonCode::Failure]
    );
    assert_eq!(
        me.subscribe("components/b/#").await,
        [rumqttc::SubscribeReasonCode::Failure]
    );
    assert!(matches!(
        me.subscribe("shared/x").await[..],
        [rumqttc::SubscribeReasonCode::Success(_)]
    ));
    me.subscribe("components/a/reply").await;

    // RPC.
    let got = me.call("a", "config.get", json!({"id": 7})).await;
    assert_eq!(got, json!({"ok": true, "result": {"k": 1}, "id": 7}));
    let got = me.call("a", "node.info", json!({})).await;
    assert_eq!(got["result"]["name"], "edge-1");
    assert_eq!(got["result"]["version"], "9.9.9");
    let got = me.call("a", "no.such", json!({})).await;
    assert_eq!(got["ok"], false);
    assert!(
        got["error"]
            .as_str()
            .expect("error")
            .contains("unknown method")
    );
    let got = me
        .call(
            "a",
            "store.write",
            json!({"params": {"points": [{"metric": "temp", "value": 21.5}]}}),
        )
        .await;
    assert_eq!(got, json!({"ok": true, "result": {"points": 1}}));
    let latest = s.db.latest(Some("a"));
    assert_eq!(latest.len(), 1, "{latest:?}");
    // Its own series and those under its name, never another device's.
    let got = me
        .call(
            "a",
            "store.write",
            json!({"params": {"points": [{"metric": "rpm", "value": 3, "device": "a/pump-1"}]}}),
        )
        .await;
    assert_eq!(got["ok"], true, "{got}");
    assert_eq!(s.db.latest(Some("a/pump-1")).len(), 1);
    for other in ["b", "ab", "a/", "pump-1"] {
        let got = me
            .call(
                "a",
                "store.write",
                json!({"params": {"points": [{"metric": "rpm", "value": 3, "device": other}]}}),
            )
            .await;
        assert!(
            got["error"]
                .as_str()
                .is_some_and(|e| e.contains("not this component's")),
            "{other}: {got}"
        );
        assert!(s.db.latest(Some(other)).is_empty(), "{other}");
    }
    let got = me
        .call(
            "a",
            "store.write",
            json!({"params": {"points": [{"value": 1}]}}),
        )
        .await;
    assert!(
        got["error"].as_str().expect("error").contains("metric"),
        "{got}"
    );
    // Not a JSON object, or too large: over 3.1.1 the response topic is
    // only in the body, so there is no one to answer (MQTT 5 requests get
    // an error answer: tests/interop/test_components_mqtt.py).
    me.publish("$verge/rpc/a/config.get", "[1]").await;
    me.publish(
        "$verge/rpc/a/config.get",
        json!({"reply_to": "components/a/reply", "params": "x".repeat(70_000)}).to_string(),
    )
    .await;
    // A response topic outside its own topics gets no answer (the node
    // does not publish elsewhere for it); the next call is still answered.
    me.publish(
        "$verge/rpc/a/config.get",
        json!({"reply_to": "shared/a"}).to_string(),
    )
    .await;
    let got = me.call("a", "node.info", json!({})).await;
    assert_eq!(got["ok"], true);
    let mut metrics = String::new();
    c.render_metrics(&mut metrics);
    assert!(
        metrics.contains("verge_component_rpc_requests_total{result=\"error\"} 6"),
        "{metrics}"
    );
    assert!(
        metrics.contains("verge_component_rpc_requests_total{result=\"unanswerable\"} 3"),
        "{metrics}"
    );
    assert!(!metrics.contains(&secret));

    // Another client cannot call for it, even where the broker allows
    // anonymous clients everything.
    let mut anon = connect(s.addr, "anon", None).await.expect("anon");
    anon.subscribe("components/a/#").await;
    anon.publish(
        "$verge/rpc/a/config.get",
        json!({"reply_to": "components/a/anon"}).to_string(),
    )
    .await;
    me.publish("components/a/marker", "m").await;
    anon.message("components/a/marker").await;
    assert!(anon.rx.try_recv().is_err(), "no answer to another client");

    // Revoked: disconnected, and the secret no longer works.
    s.bus.revoke("a").await;
    while let Some(Ok(_)) = tokio::time::timeout(WAIT, me.rx.recv())
        .await
        .expect("disconnected in time")
    {}
    assert!(connect(s.addr, "component:a", user).await.is_err());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_heartbeat_makes_healthy_and_its_absence_restarts() {
    let s = setup().await;
    let health = |grace: &str| json!({"kind": "mqtt", "interval": "200ms", "timeout": "100ms", "failures": 2, "start_grace": grace});
    let beating = spec(json!({
        "name": "beating", "args": ["-c", "env > env.txt; exec sleep 1000"],
        "health": health("30s"),
    }));
    let silent = spec(json!({
        "name": "silent", "args": ["-c", "exec sleep 1000"],
        "health": health("0s"), "max_restarts": 100,
    }));
    let c = Components::start_with_bus(&[beating, silent], &s.data, Some(s.bus.clone()))
        .expect("start");
    let env = env_of(&s.data.join("components/beating/1")).await;
    let me = connect(
        s.addr,
        "component:beating",
        Some(("component:beating", env["VERGE_MQTT_PASSWORD"].as_str())),
    )
    .await
    .expect("connect");
    assert_eq!(c.get("beating").expect("c").state, State::Running);
    let beats = tokio::spawn(async move {
        loop {
            me.publish("components/beating/heartbeat", "{}").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    wait_for(&c, "beating", "healthy", |i| i.state == State::Healthy).await;
    let info = wait_for(&c, "silent", "restarted for its missing heartbeat", |i| {
        i.restarts >= 1
    })
    .await;
    let err = info.last_error.unwrap_or_default();
    assert!(err.contains("heartbeat"), "{err}");
    beats.abort();
    c.shutdown().await;
}

/// A component stopped through the API loses its credentials at once (its
/// connections are closed, its secret refused); a start makes new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_component_has_no_credentials() {
    let s = setup().await;
    let a = spec(json!({"name": "a", "args": ["-c", "env > env.txt; exec sleep 1000"]}));
    let c = Components::start_with_bus(&[a], &s.data, Some(s.bus.clone())).expect("start");
    let dir = s.data.join("components/a/1");
    let env = env_of(&dir).await;
    let secret = env["VERGE_MQTT_PASSWORD"].clone();
    let mut me = connect(
        s.addr,
        "component:a",
        Some(("component:a", secret.as_str())),
    )
    .await
    .expect("connect while it runs");
    c.stop_one("a").expect("stop");
    while let Some(Ok(_)) = tokio::time::timeout(WAIT, me.rx.recv())
        .await
        .expect("disconnected in time")
    {}
    let t = Instant::now();
    while c.get("a").expect("a").state != verge_node::components::State::Stopped {
        assert!(t.elapsed() < WAIT, "not stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        connect(
            s.addr,
            "component:a",
            Some(("component:a", secret.as_str()))
        )
        .await
        .is_err(),
        "the stopped component's secret still works"
    );
    // Started again: a new secret that works.
    std::fs::remove_file(dir.join("env.txt")).expect("rm");
    c.start_one("a").expect("start");
    let env = env_of(&dir).await;
    assert_ne!(env["VERGE_MQTT_PASSWORD"], secret);
    connect(
        s.addr,
        "component:a",
        Some(("component:a", env["VERGE_MQTT_PASSWORD"].as_str())),
    )
    .await
    .expect("the new secret works");
    c.shutdown().await;
}

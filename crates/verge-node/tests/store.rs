//! The store's HTTP API through the router (no socket): series, raw and
//! downsampled queries, latest values, stats, metrics and errors; and end
//! to end: a rule's `store` action fed by a real MQTT publish, read back
//! through the API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tower::ServiceExt;
use verge_broker::{BoundListener, Broker, BrokerConfig, Transport};
use verge_net::now_ms;
use verge_node::http::{ApiState, router};
use verge_node::services::TsdbStore;
use verge_rules::{Engine, RuleConfig, RuleEngineConfig, Services};
use verge_tsdb::{Point, Tsdb, TsdbConfig};

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

fn open(dir: &std::path::Path) -> Arc<Tsdb> {
    Arc::new(
        Tsdb::open(TsdbConfig {
            dir: dir.to_path_buf(),
            ..TsdbConfig::default()
        })
        .expect("open store"),
    )
}

fn state(broker: &Broker, store: Option<Arc<Tsdb>>) -> ApiState {
    let mut services = Services::new(broker.handle());
    services.store = store
        .clone()
        .map(|db| Arc::new(TsdbStore::new(db)) as Arc<dyn verge_rules::TelemetryStore>);
    ApiState {
        name: Arc::from("test-node"),
        started: Instant::now(),
        broker: broker.handle(),
        rules: Arc::new(Engine::new(services, RuleEngineConfig::default())),
        auth: None,
        guard: Default::default(),
        store,
        bridge: None,
        functions: None,
        drivers: None,
        components: None,
        coap: None,
        cloud: None,
        local: None,
        devices: None,
    }
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

async fn get_json(s: &ApiState, path: &str) -> (StatusCode, Value) {
    let (st, body) = get(s, path).await;
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (st, v)
}

fn point(device: &str, metric: &str, time_ms: i64, value: verge_tsdb::Value) -> Point {
    Point {
        device: device.into(),
        metric: metric.into(),
        time_ms,
        value,
    }
}

#[tokio::test]
async fn queries_latest_series_and_stats() {
    let (b, _) = broker().await;
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let base = (now_ms() - 3_600_000) / 60_000 * 60_000;
    let mut pts: Vec<Point> = (0..60)
        .map(|i| {
            point(
                "d1",
                "temp",
                base + i * 1000,
                verge_tsdb::Value::Number(i as f64),
            )
        })
        .collect();
    pts.push(point(
        "d1",
        "door",
        base,
        verge_tsdb::Value::Text("open".into()),
    ));
    pts.push(point("d2", "temp", base, verge_tsdb::Value::Bool(true)));
    db.write(&pts).unwrap();
    let s = state(&b, Some(db));

    let (st, v) = get_json(&s, "/api/store/series").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        v,
        json!([
            {"device": "d1", "metric": "door"},
            {"device": "d1", "metric": "temp"},
            {"device": "d2", "metric": "temp"}
        ])
    );

    let path = format!(
        "/api/store/query?device=d1&metric=temp&from={base}&to={}&limit=5",
        base + 59_000
    );
    let (st, v) = get_json(&s, &path).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["samples"].as_array().unwrap().len(), 5);
    assert_eq!(
        v["samples"][4],
        json!({"time_ms": base + 4000, "value": 4.0})
    );
    assert_eq!(v["truncated"], json!(true));

    // RFC 3339 and relative times: the last two hours hold all 60 points.
    let (st, v) = get_json(&s, "/api/store/query?device=d1&metric=temp&from=-2h&to=now").await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["samples"].as_array().unwrap().len(), 60);
    assert_eq!(v["truncated"], json!(false));
    let (st, v) = get_json(
        &s,
        "/api/store/query?device=d1&metric=temp&from=1970-01-01T00:00:00Z&to=2000-01-01T00:00:00%2B01:00",
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["samples"], json!([]));

    let path = format!(
        "/api/store/query?device=d1&metric=temp&from={base}&to={}&bucket=20s",
        base + 59_999
    );
    let (st, v) = get_json(&s, &path).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["bucket_ms"], json!(20_000));
    let buckets = v["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 3);
    assert_eq!(
        buckets[1],
        json!({"start_ms": base + 20_000, "count": 20, "avg": 29.5, "min": 20.0, "max": 39.0, "non_numeric": 0})
    );

    let (st, v) = get_json(&s, "/api/store/latest?device=d1").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        v,
        json!([
            {"device": "d1", "metric": "door", "time_ms": base, "value": "open"},
            {"device": "d1", "metric": "temp", "time_ms": base + 59_000, "value": 59.0}
        ])
    );
    let (_, v) = get_json(&s, "/api/store/latest").await;
    assert_eq!(v.as_array().unwrap().len(), 3);

    let (st, v) = get_json(&s, "/api/store/stats").await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["series"], json!(3));
    assert_eq!(v["points_written"], json!(62));
    assert_eq!(v["last_error"], Value::Null);

    let (st, text) = get(&s, "/metrics").await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        text.contains("# TYPE verge_store_points_written_total counter"),
        "{text}"
    );
    assert!(
        text.contains("verge_store_points_written_total 62"),
        "{text}"
    );
    assert!(text.contains("verge_store_series 3"), "{text}");
}

#[tokio::test]
async fn bad_parameters_are_400s_naming_the_parameter() {
    let (b, _) = broker().await;
    let dir = tempfile::tempdir().unwrap();
    let s = state(&b, Some(open(dir.path())));
    for (query, param) in [
        ("metric=t", "device"),
        ("device=d", "metric"),
        ("device=d&metric=t&from=yesterday", "from"),
        ("device=d&metric=t&from=20&to=10", "from"),
        ("device=d&metric=t&limit=0", "limit"),
        ("device=d&metric=t&limit=100001", "limit"),
        ("device=d&metric=t&limit=x", "limit"),
        ("device=d&metric=t&bucket=fast", "bucket"),
        ("device=d&metric=t&bucket=0s", "bucket"),
        ("device=d&metric=t&from=0&to=100000000&bucket=1ms", "bucket"),
        ("device=d&metric=t&bucket=1s&limit=5", "limit"),
        ("device=d&metric=t&colour=red", "colour"),
    ] {
        let (st, v) = get_json(&s, &format!("/api/store/query?{query}")).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{query}: {v}");
        assert_eq!(v["error"]["code"], json!("invalid_query"), "{query}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with(&format!("{param}:")), "{query}: {msg}");
    }
    let (st, v) = get_json(&s, "/api/store/latest?dev=x").await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test]
async fn no_store_is_a_404_store_disabled() {
    let (b, _) = broker().await;
    let s = state(&b, None);
    for path in [
        "/api/store/series",
        "/api/store/query?device=d&metric=m",
        "/api/store/latest",
        "/api/store/stats",
    ] {
        let (st, v) = get_json(&s, path).await;
        assert_eq!(st, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(v["error"]["code"], json!("store_disabled"), "{path}");
    }
    let (_, text) = get(&s, "/metrics").await;
    assert!(!text.contains("verge_store_"));
}

#[tokio::test]
async fn mqtt_publish_through_a_store_rule_is_queryable() {
    let (b, addr) = broker().await;
    let dir = tempfile::tempdir().unwrap();
    let s = state(&b, Some(open(dir.path())));
    let rule: RuleConfig = serde_json::from_value(json!({
        "id": "keep",
        "sql": "SELECT topic(2) AS device, temperature, ok FROM \"devices/+/telemetry\"",
        "actions": [{"type": "store", "device": "device"}]
    }))
    .expect("rule");
    s.rules.create(rule).await.expect("create rule");

    let mut opts = MqttOptions::new("d7", "127.0.0.1", addr.port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut ev) = AsyncClient::new(opts, 10);
    tokio::spawn(async move { while ev.poll().await.is_ok() {} });
    for t in [20.5, 21.5, 25.0] {
        client
            .publish(
                "devices/d7/telemetry",
                QoS::AtLeastOnce,
                false,
                format!(r#"{{"temperature": {t}, "ok": true}}"#).into_bytes(),
            )
            .await
            .expect("publish");
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let samples = loop {
        let (st, v) = get_json(&s, "/api/store/query?device=d7&metric=temperature&from=-1h").await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let samples = v["samples"].as_array().unwrap().clone();
        if samples.len() == 3 {
            break samples;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stored samples never arrived: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let values: Vec<f64> = samples
        .iter()
        .map(|s| s["value"].as_f64().unwrap())
        .collect();
    assert_eq!(values, [20.5, 21.5, 25.0]);
    let (_, v) = get_json(&s, "/api/store/latest?device=d7").await;
    assert_eq!(v[0]["metric"], json!("ok"));
    assert_eq!(v[0]["value"], json!(true));
    assert_eq!(v[1]["metric"], json!("temperature"));
    assert_eq!(v[1]["value"], json!(25.0));
    let (_, v) = get_json(&s, "/api/store/series").await;
    assert_eq!(
        v,
        json!([{"device": "d7", "metric": "ok"}, {"device": "d7", "metric": "temperature"}])
    );
    s.rules.shutdown().await;
    b.shutdown().await;
}

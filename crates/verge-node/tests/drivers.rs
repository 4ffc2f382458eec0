//! `/api/drivers` through the router: create, list, get, replace, delete,
//! errors naming the field, and the driver metrics. The driver talks Modbus
//! TCP to a port where nothing listens, so it stays disconnected and
//! reports why.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;
use verge_broker::{Broker, BrokerConfig};
use verge_drivers::Drivers;
use verge_node::http::{ApiState, router};
use verge_rules::{Engine, RuleEngineConfig, Services};

fn broker() -> Broker {
    let cfg = BrokerConfig::default();
    let auth = Broker::authenticator(&cfg).expect("auth");
    Broker::start(cfg, auth)
}

fn state(broker: &Broker, drivers: Option<Arc<Drivers>>) -> ApiState {
    ApiState {
        name: Arc::from("test-node"),
        started: Instant::now(),
        broker: broker.handle(),
        rules: Arc::new(Engine::new(
            Services::new(broker.handle()),
            RuleEngineConfig::default(),
        )),
        auth: None,
        guard: Default::default(),
        store: None,
        bridge: None,
        functions: None,
        drivers,
        components: None,
        coap: None,
        cloud: None,
        local: None,
        devices: None,
    }
}

async fn call(s: &ApiState, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .expect("request");
    let resp = router(s.clone()).oneshot(req).await.expect("response");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, v)
}

/// A port on loopback where nothing listens.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn driver(name: &str, port: u16) -> Value {
    json!({"name": name, "protocol": "dlt645-tcp", "host": "127.0.0.1", "port": port,
           "timeout": "100ms", "retry": {"initial": "50ms", "max": "100ms"},
           "devices": [{"name": format!("{name}-dev"), "meter": "000000000001", "poll": "100ms",
                        "points": [{"name": "voltage", "address": "02010100"}]}]})
}

#[tokio::test]
async fn drivers_are_created_listed_replaced_and_deleted() {
    let b = broker();
    let s = state(&b, Some(Arc::new(Drivers::new(b.handle()))));
    let port = closed_port();
    let (st, v) = call(&s, "POST", "/api/drivers", Some(driver("plc1", port))).await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    assert_eq!(v["name"], "plc1");
    assert_eq!(v["protocol"], "dlt645-tcp");
    // Nothing listens: it stays disconnected and says why.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = call(&s, "GET", "/api/drivers/plc1", None).await;
        if v["status"]["last_error"].is_string() {
            assert_eq!(v["status"]["connected"], false, "{v}");
            assert_eq!(
                v["config"]["devices"][0]["points"][0]["address"],
                "02010100"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection error reported: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (st, v) = call(&s, "GET", "/api/drivers", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    // Replaced by PUT: 200; a name that does not match the path: 400.
    let (st, v) = call(&s, "PUT", "/api/drivers/plc1", Some(driver("plc1", port))).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = call(&s, "PUT", "/api/drivers/plc1", Some(driver("other", port))).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    // Metrics.
    let (_, text) = call(&s, "GET", "/metrics", None).await;
    let text = text.as_str().unwrap_or_default().to_owned();
    assert!(
        text.contains("verge_driver_connected{driver=\"plc1\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("verge_driver_device_good{driver=\"plc1\",device=\"plc1-dev\"} 0"),
        "{text}"
    );
    for line in [
        "verge_driver_reads_per_second{driver=\"plc1\"}",
        "verge_driver_read_latency_p99_seconds{driver=\"plc1\"}",
        "verge_driver_device_errors_total{driver=\"plc1\",device=\"plc1-dev\"}",
    ] {
        assert!(text.contains(line), "{line} missing in {text}");
    }
    // Deleted: 204, then 404.
    let (st, _) = call(&s, "DELETE", "/api/drivers/plc1", None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, v) = call(&s, "DELETE", "/api/drivers/plc1", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    let (st, _) = call(&s, "GET", "/api/drivers/plc1", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_drivers_are_refused_naming_the_field() {
    let b = broker();
    let s = state(&b, Some(Arc::new(Drivers::new(b.handle()))));
    let mut bad_address = driver("x", 1);
    bad_address["devices"][0]["points"][0]["address"] = json!("nothex!!");
    let mut no_host = driver("x", 1);
    no_host.as_object_mut().unwrap().remove("host");
    let mut unknown = driver("x", 1);
    unknown["colour"] = json!("red");
    // A key the protocol does not use (issue 17, drivers 8: `host` on an
    // OPC UA driver was accepted and ignored).
    let opcua_host = json!({
        "name": "ua", "protocol": "opcua", "endpoint": "opc.tcp://127.0.0.1:4840/",
        "host": "127.0.0.1",
        "devices": [{"name": "d", "points": [{"name": "t", "address": "ns=2;s=T"}]}]
    });
    for (body, needle) in [
        (bad_address, "address"),
        (no_host, "host"),
        (unknown, "colour"),
        (opcua_host, "host: not used by protocol opcua"),
        (json!({"name": "x"}), "protocol"),
    ] {
        let (st, v) = call(&s, "POST", "/api/drivers", Some(body)).await;
        assert!(
            st == StatusCode::BAD_REQUEST || st == StatusCode::UNPROCESSABLE_ENTITY,
            "{st} {v}"
        );
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
    }
    let (_, v) = call(&s, "GET", "/api/drivers", None).await;
    assert_eq!(v, json!([]));
}

#[tokio::test]
async fn a_node_without_drivers_says_so() {
    let b = broker();
    let s = state(&b, None);
    let (st, v) = call(&s, "GET", "/api/drivers", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(v["error"]["code"], "drivers_disabled");
}

/// Two drivers reading a device of the same name would both publish to and
/// take commands from its topics: the second is refused.
#[tokio::test]
async fn a_device_name_belongs_to_one_driver() {
    let b = broker();
    let s = state(&b, Some(Arc::new(Drivers::new(b.handle()))));
    let port = closed_port();
    let (st, _) = call(&s, "POST", "/api/drivers", Some(driver("plc1", port))).await;
    assert_eq!(st, StatusCode::CREATED);
    let mut other = driver("plc2", port);
    other["devices"][0]["name"] = json!("plc1-dev");
    let (st, v) = call(&s, "POST", "/api/drivers", Some(other)).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("already read by driver `plc1`"), "{msg}");
    // Replacing plc1 itself with the same device is fine.
    let (st, v) = call(&s, "PUT", "/api/drivers/plc1", Some(driver("plc1", port))).await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

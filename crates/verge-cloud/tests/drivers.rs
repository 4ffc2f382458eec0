//! A node's protocol drivers through the API: create, replace, list, get
//! and delete; every change a revision, served to the node in its desired
//! state; the diff names drivers; a rollback serves the older driver;
//! what is refused (400 naming the key, 404) and who may ask. Each runs
//! on SQLite, and on PostgreSQL when `VERGE_TEST_POSTGRES_URL` is set.

#[macro_use]
mod common;

use axum::http::{Method, StatusCode};
use common::{Harness, desired_as, harness_on};
use serde_json::{Value, json};

both!(
    drivers_are_created_replaced_listed_and_deleted,
    every_change_is_a_revision_served_to_the_node,
    the_diff_names_drivers_added_changed_and_removed,
    rollback_serves_the_older_driver,
    bad_drivers_are_refused_naming_the_key,
    unknown_nodes_and_drivers_are_404,
    deleting_the_node_deletes_its_drivers,
    drivers_need_a_credential,
);

/// A Modbus TCP driver with one device of `points` points, named after
/// the host (a device belongs to one driver of a node).
fn modbus(host: &str, points: usize) -> Value {
    let points: Vec<Value> = (0..points)
        .map(|i| json!({"name": format!("p{i}"), "address": format!("hr:{i}")}))
        .collect();
    let device = format!("m-{}", host.replace('.', "-"));
    json!({"protocol": "modbus-tcp", "host": host,
           "devices": [{"name": device, "poll": "5s", "points": points}]})
}

async fn put(h: &Harness, node: &str, name: &str, body: Value) -> (StatusCode, Value) {
    h.call(
        Method::PUT,
        &format!("/api/nodes/{node}/drivers/{name}"),
        Some(body),
    )
    .await
}

async fn node(h: &Harness, name: &str) -> String {
    h.joined_node(name).await.0
}

/// The node's desired state as the node is served it.
async fn served(h: &Harness, node: &str, secret: &str) -> Value {
    let (s, v) = desired_as(h, node, secret, 0, 0).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

async fn revisions(h: &Harness, node: &str) -> Vec<Value> {
    let (s, v) = h
        .call(Method::GET, &format!("/api/nodes/{node}/revisions"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v.as_array().expect("list").clone()
}

async fn drivers_are_created_replaced_listed_and_deleted(h: Harness) {
    let n = node(&h, "edge-1").await;
    let (s, v) = put(&h, &n, "plc1", modbus("10.0.0.5", 3)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["node_id"], n.as_str());
    assert_eq!(v["name"], "plc1");
    assert_eq!(v["protocol"], "modbus-tcp");
    assert_eq!(
        (v["devices"].as_u64(), v["points"].as_u64()),
        (Some(1), Some(3))
    );
    // The config as given, with its name; no defaults filled in.
    let mut whole = modbus("10.0.0.5", 3);
    whole["name"] = json!("plc1");
    assert_eq!(v["config"], whole);
    // `name` in the body is allowed when it is the path's.
    let mut named = modbus("10.0.0.6", 2);
    named["name"] = json!("plc1");
    let (s, v) = put(&h, &n, "plc1", named).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["config"]["host"], "10.0.0.6");
    assert_eq!(v["points"], 2);
    assert!(v["updated_ms"].as_i64() >= v["created_ms"].as_i64());
    let (s, v) = put(
        &h,
        &n,
        "a-meter",
        json!({"protocol": "dlt645-tcp", "host": "gw",
        "devices": [{"name": "meter1", "meter": "000000000001",
                     "points": [{"name": "energy", "address": "00000000"}]}]}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = h
        .call(Method::GET, &format!("/api/nodes/{n}/drivers"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let names: Vec<&str> = v
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(names, ["a-meter", "plc1"]);
    let (s, v) = h
        .call(Method::GET, &format!("/api/nodes/{n}/drivers/plc1"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["config"]["host"], "10.0.0.6");
    let (s, v) = h
        .call(
            Method::DELETE,
            &format!("/api/nodes/{n}/drivers/plc1"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (s, _) = h
        .call(Method::GET, &format!("/api/nodes/{n}/drivers/plc1"), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, v) = h
        .call(Method::GET, &format!("/api/nodes/{n}/drivers"), None)
        .await;
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
}

async fn every_change_is_a_revision_served_to_the_node(h: Harness) {
    let (n, secret) = h.joined_node("edge-1").await;
    let before = revisions(&h, &n).await.len();
    let (s, v) = put(&h, &n, "plc1", modbus("10.0.0.5", 1)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let d = served(&h, &n, &secret).await;
    let mut whole = modbus("10.0.0.5", 1);
    whole["name"] = json!("plc1");
    assert_eq!(d["drivers"], json!([whole]), "{d}");
    let revs = revisions(&h, &n).await;
    assert_eq!(revs.len(), before + 1);
    assert_eq!(revs[0]["summary"], "driver `plc1` added");
    assert_eq!(revs[0]["revision"], d["version"]);
    // A token's name is the author.
    let (s, t) = h
        .call(Method::POST, "/api/tokens", Some(json!({"name": "ops"})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let bearer = format!("Bearer {}", t["token"].as_str().expect("token"));
    let (s, v) = h
        .call_as(
            Method::PUT,
            &format!("/api/nodes/{n}/drivers/plc0"),
            Some(&bearer),
            Some(modbus("10.0.0.9", 2)),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let revs = revisions(&h, &n).await;
    assert_eq!(revs[0]["author"], "ops");
    assert_eq!(revs[0]["summary"], "driver `plc0` added");
    // Served in name order.
    let d = served(&h, &n, &secret).await;
    let names: Vec<&str> = d["drivers"]
        .as_array()
        .expect("drivers")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(names, ["plc0", "plc1"]);
    // The same config again changes nothing.
    let (s, v) = put(&h, &n, "plc1", modbus("10.0.0.5", 1)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(revisions(&h, &n).await.len(), before + 2);
    let (s, _) = put(&h, &n, "plc1", modbus("10.0.0.7", 1)).await;
    assert_eq!(s, StatusCode::OK);
    let revs = revisions(&h, &n).await;
    assert_eq!(revs.len(), before + 3);
    assert_eq!(revs[0]["summary"], "driver `plc1` set");
    assert_eq!(
        served(&h, &n, &secret).await["drivers"][1]["host"],
        "10.0.0.7"
    );
    let (s, _) = h
        .call(
            Method::DELETE,
            &format!("/api/nodes/{n}/drivers/plc1"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let revs = revisions(&h, &n).await;
    assert_eq!(revs[0]["summary"], "driver `plc1` removed");
    let d = served(&h, &n, &secret).await;
    assert_eq!(d["drivers"].as_array().map(Vec::len), Some(1), "{d}");
    assert_eq!(d["drivers"][0]["name"], "plc0");
    // The admin view of the desired state shows them too.
    let (s, v) = h
        .call(Method::GET, &format!("/api/nodes/{n}/desired"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["drivers"], d["drivers"]);
}

async fn the_diff_names_drivers_added_changed_and_removed(h: Harness) {
    let n = node(&h, "edge-1").await;
    let rev = |v: &Vec<Value>| v[0]["revision"].as_i64().expect("revision");
    put(&h, &n, "gone", modbus("10.0.0.1", 1)).await;
    put(&h, &n, "kept", modbus("10.0.0.2", 1)).await;
    let a = rev(&revisions(&h, &n).await);
    put(&h, &n, "kept", modbus("10.0.0.3", 1)).await;
    put(&h, &n, "new", modbus("10.0.0.4", 1)).await;
    h.call(
        Method::DELETE,
        &format!("/api/nodes/{n}/drivers/gone"),
        None,
    )
    .await;
    let b = rev(&revisions(&h, &n).await);
    let (s, d) = h
        .call(
            Method::GET,
            &format!("/api/nodes/{n}/revisions/{a}/diff/{b}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["drivers"]["added"], json!(["new"]), "{d}");
    assert_eq!(d["drivers"]["removed"], json!(["gone"]), "{d}");
    let changed = d["drivers"]["changed"].as_array().expect("changed");
    assert_eq!(changed.len(), 1, "{d}");
    assert_eq!(changed[0]["name"], "kept");
    assert_eq!(changed[0]["from"]["host"], "10.0.0.2");
    assert_eq!(changed[0]["to"]["host"], "10.0.0.3");
    assert_eq!(
        d["rules"],
        json!({"added": [], "removed": [], "changed": []})
    );
}

async fn rollback_serves_the_older_driver(h: Harness) {
    let (n, secret) = h.joined_node("edge-1").await;
    put(&h, &n, "plc1", modbus("10.0.0.1", 1)).await;
    let old = revisions(&h, &n).await[0]["revision"]
        .as_i64()
        .expect("revision");
    put(&h, &n, "plc1", modbus("10.0.0.2", 4)).await;
    put(&h, &n, "plc2", modbus("10.0.0.3", 1)).await;
    let (s, v) = h
        .call(
            Method::POST,
            &format!("/api/nodes/{n}/rollback"),
            Some(json!({"revision": old})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let d = served(&h, &n, &secret).await;
    let mut whole = modbus("10.0.0.1", 1);
    whole["name"] = json!("plc1");
    assert_eq!(d["drivers"], json!([whole]), "{d}");
    assert_eq!(d["version"], v["revision"]);
    // A rollback pins the content; the table keeps what was set last, as
    // for rules, and the next change builds from it again.
    let (_, list) = h
        .call(Method::GET, &format!("/api/nodes/{n}/drivers"), None)
        .await;
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    put(&h, &n, "plc3", modbus("10.0.0.4", 1)).await;
    let d = served(&h, &n, &secret).await;
    assert_eq!(d["drivers"].as_array().map(Vec::len), Some(3), "{d}");
}

async fn bad_drivers_are_refused_naming_the_key(h: Harness) {
    let n = node(&h, "edge-1").await;
    let before = revisions(&h, &n).await.len();
    let refused = |body: Value, code: &'static str, needle: &'static str| {
        let h = &h;
        let n = n.clone();
        async move {
            let (s, v) = put(h, &n, "plc1", body).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
            assert_eq!(v["error"]["code"], code, "{v}");
            let m = v["error"]["message"].as_str().expect("message");
            assert!(m.contains(needle), "`{needle}` not in {m}");
        }
    };
    let mut unknown = modbus("h", 1);
    unknown["devices"][0]["points"][0]["colour"] = json!("red");
    refused(unknown, "invalid_driver", "devices[0].points[0]").await;
    let mut unknown = modbus("h", 1);
    unknown["surprise"] = json!(1);
    refused(unknown, "invalid_driver", "surprise").await;
    refused(
        json!({"protocol": "modbus-tcp", "host": "h"}),
        "invalid_driver",
        "devices",
    )
    .await;
    refused(
        json!({"protocol": "modbus-tcp", "host": "h", "devices": []}),
        "invalid_driver",
        "devices",
    )
    .await;
    let mut proto = modbus("h", 1);
    proto["protocol"] = json!("profibus");
    refused(proto, "invalid_driver", "protocol").await;
    let mut addr = modbus("h", 1);
    addr["devices"][0]["points"][0]["address"] = json!("hr:nope");
    refused(addr, "invalid_driver", "devices[0].points[0].address").await;
    let mut host = modbus("h", 1);
    host["endpoint"] = json!("opc.tcp://x:4840");
    refused(host, "invalid_driver", "endpoint").await;
    refused(
        json!({"protocol": "opcua", "endpoint": "opc.tcp://plc:4840", "pki_dir": "/etc",
               "devices": [{"name": "d", "points": [{"name": "p", "address": "ns=2;i=1"}]}]}),
        "invalid_driver",
        "pki_dir",
    )
    .await;
    refused(
        json!({"protocol": "modbus-rtu", "serial": {"device": "/etc/passwd"},
               "devices": [{"name": "d", "points": [{"name": "p", "address": "hr:1"}]}]}),
        "invalid_driver",
        "serial.device",
    )
    .await;
    let mut other = modbus("h", 1);
    other["name"] = json!("plc2");
    refused(other, "invalid_request", "name").await;
    refused(json!(["not", "an", "object"]), "invalid_request", "object").await;
    let (s, v) = put(&h, &n, "bad.name", modbus("h", 1)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`name`")),
        "{v}"
    );
    // Too large.
    let (s, v) = put(&h, &n, "plc1", modbus("h", 40_000)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("bytes")),
        "{v}"
    );
    // Nothing was stored, no revision made.
    let (_, list) = h
        .call(Method::GET, &format!("/api/nodes/{n}/drivers"), None)
        .await;
    assert_eq!(list, json!([]));
    assert_eq!(revisions(&h, &n).await.len(), before);
    // A serial line under /dev/ and an OPC UA driver without pki_dir are fine.
    let (s, v) = put(
        &h,
        &n,
        "rtu",
        json!({"protocol": "modbus-rtu",
        "serial": {"device": "/dev/ttyUSB0", "baud": 19200},
        "devices": [{"name": "d", "unit": 3, "points": [{"name": "p", "address": "hr:1"}]}]}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = put(
        &h,
        &n,
        "ua",
        json!({"protocol": "opcua", "endpoint": "opc.tcp://plc:4840",
        "devices": [{"name": "d2", "points": [{"name": "p", "address": "ns=2;i=1"}]}]}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // A device another driver of the node reads already.
    let (s, v) = put(
        &h,
        &n,
        "ua2",
        json!({"protocol": "opcua", "endpoint": "opc.tcp://plc:4840",
        "devices": [{"name": "d", "points": [{"name": "p", "address": "ns=2;i=1"}]}]}),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let m = v["error"]["message"].as_str().unwrap_or_default();
    assert!(m.contains("`d` is read by driver `rtu`"), "{m}");
    // Replacing a driver with its own devices is fine.
    let (s, v) = put(
        &h,
        &n,
        "rtu",
        json!({"protocol": "modbus-rtu",
        "serial": {"device": "/dev/ttyUSB1", "baud": 19200},
        "devices": [{"name": "d", "unit": 3, "points": [{"name": "p", "address": "hr:1"}]}]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

async fn unknown_nodes_and_drivers_are_404(h: Harness) {
    let n = node(&h, "edge-1").await;
    for (method, path, body) in [
        (Method::GET, "/api/nodes/nope/drivers".to_owned(), None),
        (Method::GET, "/api/nodes/nope/drivers/plc1".to_owned(), None),
        (
            Method::PUT,
            "/api/nodes/nope/drivers/plc1".to_owned(),
            Some(modbus("h", 1)),
        ),
        (
            Method::DELETE,
            "/api/nodes/nope/drivers/plc1".to_owned(),
            None,
        ),
        (Method::GET, format!("/api/nodes/{n}/drivers/plc1"), None),
        (Method::DELETE, format!("/api/nodes/{n}/drivers/plc1"), None),
    ] {
        let (s, v) = h.call(method.clone(), &path, body).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], "not_found", "{v}");
    }
}

async fn deleting_the_node_deletes_its_drivers(h: Harness) {
    let n = node(&h, "edge-1").await;
    put(&h, &n, "plc1", modbus("h", 1)).await;
    let (s, v) = h
        .call(Method::DELETE, &format!("/api/nodes/{n}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let pool = sqlx::AnyPool::connect(&h.db_url).await.expect("db");
    let (left,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM node_drivers WHERE node_id = $1")
        .bind(&n)
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(left, 0);
    // A node made again with the same id starts without drivers.
    let again = node(&h, "edge-1").await;
    assert_eq!(again, n);
    let (s, v) = h
        .call(Method::GET, &format!("/api/nodes/{n}/drivers"), None)
        .await;
    assert_eq!((s, v), (StatusCode::OK, json!([])));
}

async fn drivers_need_a_credential(h: Harness) {
    let n = node(&h, "edge-1").await;
    for (method, path, body) in [
        (Method::GET, format!("/api/nodes/{n}/drivers"), None),
        (Method::GET, format!("/api/nodes/{n}/drivers/plc1"), None),
        (
            Method::PUT,
            format!("/api/nodes/{n}/drivers/plc1"),
            Some(modbus("h", 1)),
        ),
        (Method::DELETE, format!("/api/nodes/{n}/drivers/plc1"), None),
    ] {
        let (s, v) = h.call_as(method.clone(), &path, None, body.clone()).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{method} {path}: {v}");
        let (s, v) = h
            .call_as(method.clone(), &path, Some("Bearer wrong"), body)
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{method} {path}: {v}");
    }
    // A read-only token reads but does not change.
    let (s, t) = h
        .call(
            Method::POST,
            "/api/tokens",
            Some(json!({"name": "viewer", "scope": "read"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let bearer = format!("Bearer {}", t["token"].as_str().expect("token"));
    let (s, v) = h
        .call_as(
            Method::PUT,
            &format!("/api/nodes/{n}/drivers/plc1"),
            Some(&bearer),
            Some(modbus("h", 1)),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = h
        .call_as(
            Method::GET,
            &format!("/api/nodes/{n}/drivers"),
            Some(&bearer),
            None,
        )
        .await;
    assert_eq!((s, v), (StatusCode::OK, json!([])));
}

//! A node's revisions through the API: every change is a revision with
//! its author and summary, history is bounded, diffs, the desired state
//! served from the revision (modules included), rollback, cancel and the
//! node's reported results. Each runs on SQLite, and on PostgreSQL when
//! `VERGE_TEST_POSTGRES_URL` is set.

#[macro_use]
mod common;

use axum::http::{Method, StatusCode};
use base64::Engine as _;
use common::{DEMO_WAT, Harness, desired_as, harness_on};
use serde_json::{Value, json};

both!(
    every_change_makes_a_revision_with_author_and_summary,
    history_is_bounded_but_keeps_the_desired_and_applied_revisions,
    diff_names_items_per_kind_and_never_shows_hashes,
    the_node_is_served_its_revision_with_that_revisions_modules,
    rollback_pins_an_older_revision,
    cancel_keeps_the_node_on_its_applied_revision,
    status_reports_record_results_and_superseded_revisions,
    bad_revision_inputs_are_clear_errors,
    a_node_from_before_revisions_gets_its_snapshot_when_first_needed,
    modules_are_kept_while_a_revision_names_them,
    migration_keeps_the_stored_modules_and_serves_the_same_state,
);

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A token named `name` (admin scope); its `Authorization` value.
async fn token(h: &Harness, name: &str) -> String {
    let (s, v) = h
        .call(Method::POST, "/api/tokens", Some(json!({"name": name})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    format!("Bearer {}", v["token"].as_str().expect("token"))
}

async fn revisions(h: &Harness, node: &str) -> Vec<Value> {
    let (s, v) = h
        .call(
            Method::GET,
            &format!("/api/nodes/{node}/revisions?limit=1000"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v.as_array().expect("list").clone()
}

async fn revision(h: &Harness, node: &str, n: i64) -> (StatusCode, Value) {
    h.call(
        Method::GET,
        &format!("/api/nodes/{node}/revisions/{n}"),
        None,
    )
    .await
}

async fn patch_config(h: &Harness, node: &str, config: Value) {
    let (s, v) = h
        .call(
            Method::PATCH,
            &format!("/api/nodes/{node}"),
            Some(json!({"config": config})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

async fn rule(h: &Harness, node: &str, id: &str, sql: &str) {
    let (s, v) = h
        .call(
            Method::POST,
            "/api/rules",
            Some(json!({"id": id, "node_id": node, "sql": sql})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

async fn status(h: &Harness, node: &str, secret: &str, report: Value) {
    let (s, v) = h.status_as(node, secret, report).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
}

async fn every_change_makes_a_revision_with_author_and_summary(h: Harness) {
    let ci = token(&h, "ci").await;
    let (s, v) = h
        .call_as(
            Method::POST,
            "/api/nodes",
            Some(&ci),
            Some(json!({"name": "edge"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["node"]["deployment"]["state"], "pending");
    let calls = [
        (
            Method::POST,
            "/api/devices",
            json!({"name": "d1", "node_id": "edge"}),
        ),
        (
            Method::POST,
            "/api/rules",
            json!({"id": "hot", "node_id": "edge", "sql": "SELECT * FROM \"t\""}),
        ),
        (
            Method::PUT,
            "/api/rules/hot",
            json!({"node_id": "edge", "sql": "SELECT a FROM \"t\""}),
        ),
        (
            Method::PATCH,
            "/api/nodes/edge",
            json!({"config": {"log": {"level": "debug"}}}),
        ),
        (
            Method::POST,
            "/api/components",
            json!({"name": "app", "version": "2.0.0", "command": "bin/app"}),
        ),
        (
            Method::PUT,
            "/api/nodes/edge/components/app",
            json!({"version": "2.0.0"}),
        ),
        (Method::POST, "/api/devices/d1/secret", Value::Null),
        (Method::DELETE, "/api/rules/hot", Value::Null),
        (
            Method::DELETE,
            "/api/nodes/edge/components/app",
            Value::Null,
        ),
        (Method::DELETE, "/api/devices/d1", Value::Null),
    ];
    for (method, path, body) in calls {
        let body = (!body.is_null()).then_some(body);
        let (s, v) = h.call_as(method.clone(), path, Some(&ci), body).await;
        assert!(s.is_success(), "{method} {path}: {s} {v}");
    }
    // A change that changes nothing makes no revision.
    patch_config(&h, "edge", json!({"log": {"level": "debug"}})).await;
    let list = revisions(&h, "edge").await;
    let got: Vec<(i64, &str, &str)> = list
        .iter()
        .map(|r| {
            (
                r["revision"].as_i64().expect("n"),
                r["author"].as_str().expect("author"),
                r["summary"].as_str().expect("summary"),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (10, "ci", "device `d1` removed"),
            (9, "ci", "component `app` unassigned"),
            (8, "ci", "rule `hot` removed"),
            (7, "ci", "device `d1` secret changed"),
            (6, "ci", "component `app` assigned 2.0.0"),
            (5, "ci", "config changed"),
            (4, "ci", "rule `hot` updated"),
            (3, "ci", "rule `hot` added"),
            (2, "ci", "device `d1` added"),
            (1, "ci", "node created"),
        ]
    );
    assert_eq!(list[0]["result"], "pending");
    assert_eq!(list[1]["result"], "superseded");
    assert!(list[0]["created_ms"].as_i64().is_some_and(|t| t > 0));
    // Each holds the state at its time; the admin token is named `admin`.
    let (_, r4) = revision(&h, "edge", 4).await;
    assert_eq!(r4["state"]["version"], 4);
    assert_eq!(r4["state"]["rules"][0]["sql"], "SELECT a FROM \"t\"");
    assert_eq!(r4["state"]["devices"][0]["id"], "d1");
    assert_eq!(r4["attempt"], Value::Null);
    let (_, r6) = revision(&h, "edge", 6).await;
    assert_eq!(r6["state"]["components"][0]["version"], "2.0.0");
    assert_eq!(r6["state"]["config"]["log"]["level"], "debug");
    patch_config(&h, "edge", json!({})).await;
    assert_eq!(revisions(&h, "edge").await[0]["author"], "admin");
    // Limit.
    let (s, v) = h
        .call(Method::GET, "/api/nodes/edge/revisions?limit=2", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v.as_array().map(Vec::len), Some(2));
    assert_eq!(v[0]["revision"], 11);
}

async fn history_is_bounded_but_keeps_the_desired_and_applied_revisions(h: Harness) {
    let (node, secret) = h.joined_node("edge-b").await;
    patch_config(&h, &node, json!({"store": {"retention": "1000m"}})).await;
    status(&h, &node, &secret, json!({"applied_version": 2})).await;
    for i in 1..=105 {
        patch_config(
            &h,
            &node,
            json!({"store": {"retention": format!("{}m", 1000 + i)}}),
        )
        .await;
    }
    // Revisions 1..=107 were made; the newest 100 are 8..=107, plus 2.
    let list = revisions(&h, &node).await;
    assert_eq!(list.len(), 101);
    assert_eq!(list[0]["revision"], 107);
    assert_eq!(list[99]["revision"], 8);
    assert_eq!(list[100]["revision"], 2);
    let (s, r2) = revision(&h, &node, 2).await;
    assert_eq!(s, StatusCode::OK, "{r2}");
    assert_eq!(r2["state"]["config"]["store"]["retention"], "1000m");
    assert_eq!(r2["result"], "applied");
    let (s, v) = revision(&h, &node, 7).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    // A pruned revision cannot be rolled back to.
    let (s, v) = h
        .call(
            Method::POST,
            &format!("/api/nodes/{node}/rollback"),
            Some(json!({"revision": 7})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "conflict");
    // The kept applied revision can (and cancel stays on it).
    let (s, v) = h
        .call(
            Method::POST,
            &format!("/api/nodes/{node}/rollback"),
            Some(json!({"revision": 2})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["revision"], 108);
}

async fn diff_names_items_per_kind_and_never_shows_hashes(h: Harness) {
    let (node, _) = h.joined_node("edge-d").await;
    for d in ["keep", "renew", "gone"] {
        let (s, _) = h
            .call(
                Method::POST,
                "/api/devices",
                Some(json!({"name": d, "node_id": node})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    rule(&h, &node, "hot", "SELECT * FROM \"t\"").await;
    rule(&h, &node, "old", "SELECT * FROM \"o\"").await;
    patch_config(&h, &node, json!({"log": {"level": "info"}})).await;
    let a = revisions(&h, &node).await[0]["revision"]
        .as_i64()
        .expect("n");
    h.call(Method::POST, "/api/devices/renew/secret", None)
        .await;
    h.call(Method::DELETE, "/api/devices/gone", None).await;
    h.call(
        Method::POST,
        "/api/devices",
        Some(json!({"name": "new", "node_id": node})),
    )
    .await;
    let (s, _) = h
        .call(
            Method::PUT,
            "/api/rules/hot",
            Some(json!({"node_id": node, "sql": "SELECT a FROM \"t\""})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    h.call(Method::DELETE, "/api/rules/old", None).await;
    patch_config(
        &h,
        &node,
        json!({"log": {"level": "debug"}, "store": {"retention": "3d"}}),
    )
    .await;
    let b = revisions(&h, &node).await[0]["revision"]
        .as_i64()
        .expect("n");
    let (s, d) = h
        .call(
            Method::GET,
            &format!("/api/nodes/{node}/revisions/{a}/diff/{b}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["from"], a);
    assert_eq!(d["to"], b);
    assert_eq!(d["devices"]["added"], json!(["new"]));
    assert_eq!(d["devices"]["removed"], json!(["gone"]));
    assert_eq!(
        d["devices"]["changed"],
        json!([{"name": "renew", "change": "secret changed"}])
    );
    assert!(!d.to_string().contains("argon2"), "hash in the diff: {d}");
    assert_eq!(d["rules"]["added"], json!([]));
    assert_eq!(d["rules"]["removed"], json!(["old"]));
    assert_eq!(d["rules"]["changed"][0]["name"], "hot");
    assert_eq!(
        d["rules"]["changed"][0]["from"]["sql"],
        "SELECT * FROM \"t\""
    );
    assert_eq!(d["rules"]["changed"][0]["to"]["sql"], "SELECT a FROM \"t\"");
    assert_eq!(d["config"]["added"], json!(["store.retention"]));
    assert_eq!(
        d["config"]["changed"],
        json!([{"name": "log.level", "from": "info", "to": "debug"}])
    );
    assert_eq!(
        d["functions"],
        json!({"added": [], "removed": [], "changed": []})
    );
    // The other way round.
    let (_, back) = h
        .call(
            Method::GET,
            &format!("/api/nodes/{node}/revisions/{b}/diff/{a}"),
            None,
        )
        .await;
    assert_eq!(back["devices"]["added"], json!(["gone"]));
    assert_eq!(back["rules"]["added"], json!(["old"]));
}

async fn the_node_is_served_its_revision_with_that_revisions_modules(h: Harness) {
    let (node, secret) = h.joined_node("edge-f").await;
    let v1 = DEMO_WAT.to_owned();
    let v2 = format!("{DEMO_WAT}\n;; version two\n");
    let (s, f1) = h
        .call(
            Method::PUT,
            "/api/functions/tag",
            Some(json!({"spec": {"runtime": "wasm"}, "module_base64": b64(&v1)})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{f1}");
    let (s, v) = h
        .call(
            Method::POST,
            "/api/rules",
            Some(
                json!({"id": "uses-tag", "node_id": node, "sql": "SELECT * FROM \"x\"",
                        "actions": [{"type": "function", "name": "tag"}]}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let with_v1 = revisions(&h, &node).await[0]["revision"]
        .as_i64()
        .expect("n");
    let (s, got) = desired_as(&h, &node, &secret, 0, 0).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["version"], with_v1);
    assert_eq!(got["functions"][0]["module_base64"], b64(&v1));

    let (s, f2) = h
        .call(
            Method::PUT,
            "/api/functions/tag",
            Some(json!({"spec": {"runtime": "wasm"}, "module_base64": b64(&v2)})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{f2}");
    let list = revisions(&h, &node).await;
    assert_eq!(list[0]["summary"], "function `tag` uploaded as version 2");
    let (s, got) = desired_as(&h, &node, &secret, with_v1, 0).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["functions"][0]["module_base64"], b64(&v2));
    assert_eq!(got["functions"][0]["version"], 2);

    // Back to the revision with version 1: the node gets version 1's
    // module, though `functions` holds only version 2.
    let (s, v) = h
        .call(
            Method::POST,
            &format!("/api/nodes/{node}/rollback"),
            Some(json!({"revision": with_v1})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let pinned = v["revision"].as_i64().expect("n");
    let (s, mut got) = desired_as(&h, &node, &secret, pinned - 1, 0).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["version"], pinned);
    assert_eq!(got["functions"][0]["module_base64"], b64(&v1));
    assert_eq!(got["functions"][0]["sha256"], f1["sha256"]);
    // What the node gets is the revision, modules aside.
    let (_, detail) = revision(&h, &node, pinned).await;
    got["functions"][0]["module_base64"] = json!("");
    assert_eq!(got, detail["state"]);
    let (_, admin_view) = h
        .call(Method::GET, &format!("/api/nodes/{node}/desired"), None)
        .await;
    assert_eq!(admin_view, detail["state"]);
}

async fn rollback_pins_an_older_revision(h: Harness) {
    let (node, _) = h.joined_node("edge-r").await;
    rule(&h, &node, "a", "SELECT * FROM \"a\"").await; // 2
    rule(&h, &node, "b", "SELECT * FROM \"b\"").await; // 3
    let (s, v) = h
        .call(
            Method::POST,
            &format!("/api/nodes/{node}/rollback"),
            Some(json!({"revision": 2})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["revision"], 4);
    assert_eq!(v["summary"], "rollback to 2");
    assert_eq!(v["author"], "admin");
    assert_eq!(v["result"], "pending");
    let (_, n) = h
        .call(Method::GET, &format!("/api/nodes/{node}"), None)
        .await;
    assert_eq!(n["desired_version"], 4);
    let (_, r4) = revision(&h, &node, 4).await;
    let ids: Vec<&str> = r4["state"]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, ["a"]);
    // The rule stays in the tables: the next change builds from them.
    let (s, _) = h.call(Method::GET, "/api/rules/b", None).await;
    assert_eq!(s, StatusCode::OK);
    patch_config(&h, &node, json!({"log": {"level": "warn"}})).await;
    let (_, r5) = revision(&h, &node, 5).await;
    assert_eq!(r5["state"]["rules"].as_array().map(Vec::len), Some(2));
    // Unknown revision, unknown node.
    let (s, v) = h
        .call(
            Method::POST,
            &format!("/api/nodes/{node}/rollback"),
            Some(json!({"revision": 99})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, _) = h
        .call(
            Method::POST,
            "/api/nodes/nope/rollback",
            Some(json!({"revision": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, n) = h
        .call(Method::GET, &format!("/api/nodes/{node}"), None)
        .await;
    assert_eq!(n["desired_version"], 5, "a refused rollback moved nothing");
}

async fn cancel_keeps_the_node_on_its_applied_revision(h: Harness) {
    let (node, secret) = h.joined_node("edge-c").await;
    let cancel = format!("/api/nodes/{node}/cancel");
    // Never applied anything: nothing to stay on.
    let (s, v) = h.call(Method::POST, &cancel, None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    rule(&h, &node, "a", "SELECT * FROM \"a\"").await; // 2
    status(&h, &node, &secret, json!({"applied_version": 2})).await;
    // In sync: nothing to cancel.
    let (s, v) = h.call(Method::POST, &cancel, None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("nothing to cancel"),
        "{v}"
    );
    rule(&h, &node, "b", "SELECT * FROM \"b\"").await; // 3
    let (_, n) = h
        .call(Method::GET, &format!("/api/nodes/{node}"), None)
        .await;
    assert_eq!(n["deployment"]["state"], "pending");
    let (s, v) = h.call(Method::POST, &cancel, None).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["revision"], 4);
    assert_eq!(v["summary"], "cancel revision 3: stay on 2");
    let (_, r2) = revision(&h, &node, 2).await;
    let (_, r4) = revision(&h, &node, 4).await;
    let mut same = r2["state"].clone();
    same["version"] = json!(4);
    assert_eq!(r4["state"], same);
    let (s, _) = h.call(Method::POST, "/api/nodes/nope/cancel", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

async fn status_reports_record_results_and_superseded_revisions(h: Harness) {
    let (node, secret) = h.joined_node("edge-s").await;
    rule(&h, &node, "a", "SELECT * FROM \"a\"").await; // 2
    // A report of a revision beyond the desired one marks nothing past it.
    status(
        &h,
        &node,
        &secret,
        json!({"applied_version": 0, "attempt": {"version": 999, "state": "applied"}}),
    )
    .await;
    let list = revisions(&h, &node).await;
    assert_eq!(list[0]["result"], "pending", "{list:?}");
    rule(&h, &node, "b", "SELECT * FROM \"b\"").await; // 3
    status(
        &h,
        &node,
        &secret,
        json!({"applied_version": 2, "attempt": {"version": 2, "state": "applied",
               "started_ms": 1, "finished_ms": 2,
               "items": [{"kind": "rule", "name": "a", "result": "applied"}]}}),
    )
    .await;
    rule(&h, &node, "c", "SELECT * FROM \"c\"").await; // 4
    let failed = json!({"applied_version": 2, "attempt": {"version": 4, "state": "rolled_back",
        "started_ms": 3, "finished_ms": 4, "rolled_back_to": 2,
        "items": [{"kind": "rule", "name": "b", "result": "applied"},
                  {"kind": "rule", "name": "c", "result": "failed", "error": "bad topic"}]}});
    status(&h, &node, &secret, failed.clone()).await;
    let first = revisions(&h, &node).await;
    let results: Vec<(i64, &str)> = first
        .iter()
        .map(|r| {
            (
                r["revision"].as_i64().expect("n"),
                r["result"].as_str().expect("result"),
            )
        })
        .collect();
    assert_eq!(
        results,
        [
            (4, "rolled_back"),
            (3, "superseded"),
            (2, "applied"),
            (1, "superseded")
        ]
    );
    let (_, r4) = revision(&h, &node, 4).await;
    assert_eq!(r4["attempt"]["rolled_back_to"], 2);
    assert_eq!(r4["attempt"]["items"][1]["error"], "bad topic");
    let (_, n) = h
        .call(Method::GET, &format!("/api/nodes/{node}"), None)
        .await;
    assert_eq!(n["deployment"]["state"], "failed", "{n}");
    assert_eq!(n["deployment"]["error"], "rule `c`: bad topic");
    assert_eq!(n["last_attempt"]["version"], 4);
    // The same report again changes nothing.
    status(&h, &node, &secret, failed).await;
    assert_eq!(revisions(&h, &node).await, first);
    let pool = sqlx::AnyPool::connect(&h.db_url).await.expect("db");
    let stored: Vec<(i64, Option<String>)> = sqlx::query_as(
        "SELECT revision, result FROM node_revisions WHERE node_id = $1 ORDER BY revision",
    )
    .bind(&node)
    .fetch_all(&pool)
    .await
    .expect("rows");
    pool.close().await;
    assert_eq!(
        stored,
        [
            (1, Some("superseded".to_owned())),
            (2, Some("applied".to_owned())),
            (3, Some("superseded".to_owned())),
            (4, Some("rolled_back".to_owned()))
        ]
    );
    // A new revision being applied.
    rule(&h, &node, "d", "SELECT * FROM \"d\"").await; // 5
    status(
        &h,
        &node,
        &secret,
        json!({"applied_version": 2, "attempt": {"version": 5, "state": "applying", "started_ms": 5}}),
    )
    .await;
    let (_, n) = h
        .call(Method::GET, &format!("/api/nodes/{node}"), None)
        .await;
    assert_eq!(n["deployment"]["state"], "applying");
    assert_eq!(revisions(&h, &node).await[0]["result"], "applying");
    status(
        &h,
        &node,
        &secret,
        json!({"applied_version": 5, "attempt": {"version": 5, "state": "applied", "started_ms": 5, "finished_ms": 6}}),
    )
    .await;
    let (_, n) = h
        .call(Method::GET, &format!("/api/nodes/{node}"), None)
        .await;
    assert_eq!(n["deployment"]["state"], "in_sync");
    assert_eq!(revisions(&h, &node).await[0]["result"], "applied");
}

async fn bad_revision_inputs_are_clear_errors(h: Harness) {
    let (node, _) = h.joined_node("edge-x").await;
    for (path, status) in [
        (
            format!("/api/nodes/{node}/revisions/abc"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/api/nodes/{node}/revisions/-1"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/api/nodes/{node}/revisions/0"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/api/nodes/{node}/revisions/2"),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/api/nodes/{node}/revisions/1/diff/x"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/api/nodes/{node}/revisions/1/diff/9"),
            StatusCode::NOT_FOUND,
        ),
        (
            format!("/api/nodes/{node}/revisions?limit=0"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/api/nodes/{node}/revisions?limit=x"),
            StatusCode::BAD_REQUEST,
        ),
        (
            format!("/api/nodes/{node}/revisions?since=1"),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/nodes/nope/revisions".to_owned(),
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/nodes/nope/revisions/1".to_owned(),
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/nodes/nope/revisions/1/diff/1".to_owned(),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (s, v) = h.call(Method::GET, &path, None).await;
        assert_eq!(s, status, "{path}: {v}");
        assert!(v["error"]["message"].is_string(), "{path}: {v}");
    }
    let rollback = format!("/api/nodes/{node}/rollback");
    for body in [
        json!({"revision": "1"}),
        json!({"revision": -1}),
        json!({"revision": 0}),
        json!({}),
        json!({"revision": 1, "force": true}),
    ] {
        let (s, v) = h.call(Method::POST, &rollback, Some(body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["error"]["code"], "invalid_request");
    }
    let (_, n) = h
        .call(Method::GET, &format!("/api/nodes/{node}"), None)
        .await;
    assert_eq!(n["desired_version"], 1, "a refused request moved nothing");
    // Read-only tokens read revisions but do not roll back.
    let (s, v) = h
        .call(
            Method::POST,
            "/api/tokens",
            Some(json!({"name": "viewer", "scope": "read"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let read = format!("Bearer {}", v["token"].as_str().expect("token"));
    let (s, _) = h
        .call_as(
            Method::GET,
            &format!("/api/nodes/{node}/revisions"),
            Some(&read),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = h
        .call_as(
            Method::POST,
            &rollback,
            Some(&read),
            Some(json!({"revision": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}

async fn a_node_from_before_revisions_gets_its_snapshot_when_first_needed(h: Harness) {
    let (node, secret) = h.joined_node("edge-old").await;
    rule(&h, &node, "a", "SELECT * FROM \"a\"").await; // 2
    // As a database migrated from before revisions: no snapshots at all.
    let pool = sqlx::AnyPool::connect(&h.db_url).await.expect("db");
    sqlx::query("DELETE FROM node_revisions")
        .execute(&pool)
        .await
        .expect("delete");
    let (s, got) = desired_as(&h, &node, &secret, 0, 0).await;
    assert_eq!(s, StatusCode::OK, "{got}");
    assert_eq!(got["version"], 2);
    assert_eq!(got["rules"][0]["id"], "a");
    let list = revisions(&h, &node).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["revision"], 2);
    assert_eq!(list[0]["author"], "system");
    assert_eq!(list[0]["summary"], "state when revisions were introduced");
    // Older revisions were never kept: 409 on a rollback to them.
    let (s, v) = h
        .call(
            Method::POST,
            &format!("/api/nodes/{node}/rollback"),
            Some(json!({"revision": 1})),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    // The listing makes it too (a node nobody polled yet).
    let (other, _) = h.joined_node("edge-old2").await;
    sqlx::query("DELETE FROM node_revisions WHERE node_id = $1")
        .bind(&other)
        .execute(&pool)
        .await
        .expect("delete");
    pool.close().await;
    assert_eq!(revisions(&h, &other).await[0]["author"], "system");
}

async fn modules(h: &Harness) -> Vec<String> {
    let pool = sqlx::AnyPool::connect(&h.db_url).await.expect("db");
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT sha256 FROM function_modules ORDER BY sha256")
            .fetch_all(&pool)
            .await
            .expect("rows");
    pool.close().await;
    rows.into_iter().map(|r| r.0).collect()
}

async fn modules_are_kept_while_a_revision_names_them(h: Harness) {
    let (node, _) = h.joined_node("edge-m").await;
    let mut shas = Vec::new();
    for text in [DEMO_WAT.to_owned(), format!("{DEMO_WAT}\n;; two\n")] {
        let (s, f) = h
            .call(
                Method::PUT,
                "/api/functions/tag",
                Some(json!({"spec": {"runtime": "wasm"}, "module_base64": b64(&text)})),
            )
            .await;
        assert!(s.is_success(), "{f}");
        shas.push(f["sha256"].as_str().expect("sha").to_owned());
        if shas.len() == 1 {
            let (s, v) = h
                .call(
                    Method::POST,
                    "/api/rules",
                    Some(
                        json!({"id": "uses", "node_id": node, "sql": "SELECT * FROM \"x\"",
                                "actions": [{"type": "function", "name": "tag"}]}),
                    ),
                )
                .await;
            assert_eq!(s, StatusCode::CREATED, "{v}");
        }
    }
    // A third upload no revision names replaces the second in `functions`.
    let (s, _) = h.call(Method::DELETE, "/api/rules/uses", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let three = format!("{DEMO_WAT}\n;; three\n");
    let (_, f) = h
        .call(
            Method::PUT,
            "/api/functions/tag",
            Some(json!({"spec": {"runtime": "wasm"}, "module_base64": b64(&three)})),
        )
        .await;
    let sha3 = f["sha256"].as_str().expect("sha").to_owned();
    let mut want = vec![shas[0].clone(), shas[1].clone(), sha3.clone()];
    want.sort();
    assert_eq!(modules(&h).await, want);
    // The function goes: its modules stay while revisions name them.
    let (s, _) = h.call(Method::DELETE, "/api/functions/tag", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let mut want = shas.clone();
    want.sort();
    assert_eq!(modules(&h).await, want);
    // The node goes with its revisions: nothing names them any more.
    let (s, v) = h
        .call(Method::DELETE, &format!("/api/nodes/{node}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(modules(&h).await, Vec::<String>::new());
}

async fn migration_keeps_the_stored_modules_and_serves_the_same_state(h: Harness) {
    let (node, secret) = h.joined_node("edge-mig").await;
    let (s, f) = h
        .call(
            Method::PUT,
            "/api/functions/tag",
            Some(json!({"spec": {"runtime": "wasm"}, "module_base64": b64(DEMO_WAT)})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{f}");
    let (s, v) = h
        .call(
            Method::POST,
            "/api/rules",
            Some(
                json!({"id": "uses", "node_id": node, "sql": "SELECT * FROM \"x\"",
                        "actions": [{"type": "function", "name": "tag"}]}),
            ),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, before) = desired_as(&h, &node, &secret, 0, 0).await;
    // Back to the schema before revisions (version 4), then open again.
    let pool = sqlx::AnyPool::connect(&h.db_url).await.expect("db");
    for sql in [
        "DROP TABLE node_revisions",
        "DROP TABLE revision_modules",
        "DROP TABLE function_modules",
        "DELETE FROM schema_migrations WHERE version = 5",
    ] {
        sqlx::query(sql).execute(&pool).await.expect(sql);
    }
    pool.close().await;
    // A restart: this cloud stops first (on PostgreSQL a second live
    // process with its replica id would be refused).
    h.cloud.close().await;
    let mut cfg = verge_cloud::CloudConfig::default();
    cfg.cloud.data_dir = h.dir.path().join("data");
    cfg.cloud.database = h.db_url.clone();
    let (cloud, _) = verge_cloud::Cloud::open(cfg).await.expect("migrates");
    let again = Harness {
        cloud,
        admin: h.admin.clone(),
        db_url: h.db_url.clone(),
        dir: tempfile::tempdir().expect("tempdir"),
        scratch: h.scratch.clone(),
    };
    assert_eq!(modules(&again).await, [f["sha256"].as_str().expect("sha")]);
    let (s, after) = desired_as(&again, &node, &secret, 0, 0).await;
    assert_eq!(s, StatusCode::OK, "{after}");
    assert_eq!(after, before);
    assert_eq!(revisions(&again, &node).await[0]["author"], "system");
}

//! Node labels and staged rollouts through the API: labels set, filtered
//! and checked; a rollout assigns its canary first, the rest once the
//! canary applied it, pauses when a stage fails too often (a rolled-back
//! revision, a node that says nothing in time), resumes, cancels, and goes
//! on after a restart of the cloud. Nodes are played by their status
//! reports. Each runs on SQLite, and on PostgreSQL when
//! `VERGE_TEST_POSTGRES_URL` is set.

#[macro_use]
mod common;

use axum::http::{Method, StatusCode};
use common::{Harness, harness_on};
use serde_json::{Value, json};
use tokio::time::{Duration, Instant, sleep};

both!(
    labels_are_set_filtered_and_checked,
    a_canary_that_applies_lets_the_rest_follow,
    a_canary_that_rolls_back_pauses_the_rollout,
    a_paused_rollout_resumes_with_the_next_stage,
    a_cancelled_rollout_starts_no_more_stages,
    a_node_without_a_result_in_time_fails_its_stage,
    bad_rollout_inputs_are_clear_errors,
    the_driver_goes_on_after_a_restart,
    a_one_stage_rollout_counts_nodes_that_run_the_version_already,
    a_node_deleted_before_its_stage_fails_and_a_rate_at_the_maximum_goes_on,
);

/// A joined node with `labels`; (id, secret).
async fn labelled(h: &Harness, name: &str, labels: Value) -> (String, String) {
    let (id, secret) = h.joined_node(name).await;
    let (s, v) = h
        .call(
            Method::PATCH,
            &format!("/api/nodes/{id}"),
            Some(json!({"labels": labels})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    (id, secret)
}

/// Component `app` version `version` (a process).
async fn component(h: &Harness, version: &str) {
    let (s, v) = h
        .call(
            Method::POST,
            "/api/components",
            Some(json!({"name": "app", "version": version, "command": "bin/app"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

/// Three nodes `a1`, `a2`, `a3` with `site=a` and one `b1` with `site=b`;
/// the secrets by node id.
async fn fleet(h: &Harness) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in ["a1", "a2", "a3"] {
        out.push(labelled(h, name, json!({"site": "a", "tier": "edge"})).await);
    }
    out.push(labelled(h, "b1", json!({"site": "b"})).await);
    out
}

async fn start(h: &Harness, body: Value) -> Value {
    let (s, v) = h.call(Method::POST, "/api/rollouts", Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v
}

async fn rollout(h: &Harness, id: i64) -> Value {
    let (s, v) = h
        .call(Method::GET, &format!("/api/rollouts/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

/// The rollout once `done` holds for it (the driver runs each second).
async fn wait_for(h: &Harness, id: i64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let r = rollout(h, id).await;
        if done(&r) {
            return r;
        }
        assert!(Instant::now() < until, "{what}: {r:#}");
        sleep(Duration::from_millis(100)).await;
    }
}

/// The nodes of `stage` (1-based) of a rollout as (node, revision, result).
fn stage_nodes(r: &Value, stage: usize) -> Vec<(String, Option<i64>, String)> {
    r["stages"][stage - 1]["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["node_id"].as_str().expect("id").to_owned(),
                n["revision"].as_i64(),
                n["result"].as_str().expect("result").to_owned(),
            )
        })
        .collect()
}

/// The version of `app` the cloud assigns to `node`, if any.
async fn assigned(h: &Harness, node: &str) -> Option<String> {
    let (s, v) = h
        .call(Method::GET, &format!("/api/nodes/{node}/components"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v.as_array()
        .expect("list")
        .iter()
        .find(|c| c["name"] == "app")
        .and_then(|c| c["version"].as_str().map(str::to_owned))
}

async fn report(h: &Harness, node: &str, secret: &str, body: Value) {
    let (s, v) = h.status_as(node, secret, body).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
}

/// The node applied revision `n`.
async fn applied(h: &Harness, node: &str, secret: &str, n: i64) {
    report(
        h,
        node,
        secret,
        json!({"applied_version": n, "attempt": {"version": n, "state": "applied",
               "started_ms": 1, "finished_ms": 2}}),
    )
    .await;
}

/// The node tried revision `n`, its component failed, it went back to 1.
async fn rolled_back(h: &Harness, node: &str, secret: &str, n: i64) {
    report(
        h,
        node,
        secret,
        json!({"applied_version": 1, "attempt": {"version": n, "state": "rolled_back",
               "started_ms": 1, "finished_ms": 2, "rolled_back_to": 1,
               "items": [{"kind": "component", "name": "app", "result": "failed",
                          "error": "version 2.0.0 is backoff"}]}}),
    )
    .await;
}

async fn labels_are_set_filtered_and_checked(h: Harness) {
    let (s, v) = h
        .call(
            Method::POST,
            "/api/nodes",
            Some(json!({"name": "n1", "labels": {"site": "a", "tier": "edge"}})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["node"]["labels"], json!({"site": "a", "tier": "edge"}));
    let (s, v) = h
        .call(Method::POST, "/api/nodes", Some(json!({"name": "n2"})))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["node"]["labels"], json!({}));
    // PATCH replaces them, and makes no revision.
    let (s, v) = h
        .call(
            Method::PATCH,
            "/api/nodes/n2",
            Some(json!({"labels": {"site": "a", "rack": "r.7"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["labels"], json!({"site": "a", "rack": "r.7"}));
    assert_eq!(v["desired_version"], 1);
    let ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .expect("list")
            .iter()
            .map(|n| n["id"].as_str().expect("id").to_owned())
            .collect()
    };
    for (selector, want) in [
        ("site=a", vec!["n1", "n2"]),
        ("site=a,tier=edge", vec!["n1"]),
        ("rack=r.7", vec!["n2"]),
        ("site=b", vec![]),
        ("", vec!["n1", "n2"]),
    ] {
        let (s, v) = h
            .call(
                Method::GET,
                &format!("/api/nodes?selector={selector}"),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(ids(&v), want, "{selector}");
    }
    let (_, all) = h.call(Method::GET, "/api/nodes", None).await;
    assert_eq!(ids(&all), ["n1", "n2"]);
    // Bad labels and selectors are 400 naming what is wrong.
    let many: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("k{i}"), json!("v"))).collect();
    for bad in [
        json!({"site": 1}),
        json!({"a b": "x"}),
        json!({"site": ""}),
        json!({"site": "x".repeat(64)}),
        json!(["site"]),
        Value::Object(many),
    ] {
        let (s, v) = h
            .call(Method::PATCH, "/api/nodes/n1", Some(json!({"labels": bad})))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .expect("message")
                .contains("labels"),
            "{v}"
        );
    }
    let (s, v) = h
        .call(
            Method::POST,
            "/api/nodes",
            Some(json!({"name": "n3", "labels": {"x": "a/b"}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    for bad in ["site", "site=a%20b", "=a"] {
        let (s, v) = h
            .call(Method::GET, &format!("/api/nodes?selector={bad}"), None)
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    // The labels stayed as they were.
    let (_, v) = h.call(Method::GET, "/api/nodes/n1", None).await;
    assert_eq!(v["labels"], json!({"site": "a", "tier": "edge"}));
}

async fn a_canary_that_applies_lets_the_rest_follow(h: Harness) {
    let nodes = fleet(&h).await;
    component(&h, "2.0.0").await;
    let r = start(
        &h,
        json!({"component": "app", "version": "2.0.0", "selector": {"site": "a"}, "canary": 1}),
    )
    .await;
    let id = r["id"].as_i64().expect("id");
    assert_eq!(r["state"], "running");
    assert_eq!(r["stages"].as_array().expect("stages").len(), 2);
    // Stage 1 is the first node by id, assigned at once with a revision.
    assert_eq!(
        stage_nodes(&r, 1),
        [("a1".to_owned(), Some(2), "pending".to_owned())]
    );
    assert_eq!(r["stages"][0]["state"], "running");
    assert_eq!(r["stages"][1]["state"], "pending");
    let rest: Vec<String> = stage_nodes(&r, 2).into_iter().map(|n| n.0).collect();
    assert_eq!(rest, ["a2", "a3"]);
    assert_eq!(assigned(&h, "a1").await.as_deref(), Some("2.0.0"));
    for n in ["a2", "a3", "b1"] {
        assert_eq!(assigned(&h, n).await, None, "{n}");
    }
    let (_, revs) = h.call(Method::GET, "/api/nodes/a1/revisions", None).await;
    assert_eq!(
        revs[0]["summary"],
        format!("rollout {id} stage 1: component `app` assigned 2.0.0")
    );
    assert_eq!(revs[0]["author"], "admin");
    // The canary applied it: stage 2 assigns the other two.
    applied(&h, &nodes[0].0, &nodes[0].1, 2).await;
    let r = wait_for(&h, id, "stage 2 assigned", |r| {
        stage_nodes(r, 2).iter().all(|n| n.1.is_some())
    })
    .await;
    assert_eq!(r["stages"][0]["state"], "succeeded");
    assert_eq!(r["stages"][1]["state"], "running");
    assert_eq!(r["stage"], 2);
    for n in ["a2", "a3"] {
        assert_eq!(assigned(&h, n).await.as_deref(), Some("2.0.0"), "{n}");
    }
    assert_eq!(assigned(&h, "b1").await, None);
    // One of them applied the revision, the other applied a later one
    // (a newer change came before it tried this one): both count.
    applied(&h, &nodes[1].0, &nodes[1].1, 2).await;
    let (s, v) = h
        .call(
            Method::PATCH,
            "/api/nodes/a3",
            Some(json!({"config": {"log": {"level": "debug"}}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    applied(&h, &nodes[2].0, &nodes[2].1, 3).await;
    let r = wait_for(&h, id, "completed", |r| r["state"] == "completed").await;
    assert_eq!(r["stages"][1]["state"], "succeeded");
    assert!(stage_nodes(&r, 2).iter().all(|n| n.2 == "applied"), "{r:#}");
    assert_eq!(r["reason"], Value::Null);
    let (_, list) = h.call(Method::GET, "/api/rollouts", None).await;
    assert_eq!(list[0]["id"], id);
}

async fn a_canary_that_rolls_back_pauses_the_rollout(h: Harness) {
    let nodes = fleet(&h).await;
    component(&h, "2.0.0").await;
    let r = start(
        &h,
        json!({"component": "app", "version": "2.0.0", "selector": {"site": "a"},
               "canary_percent": 10, "max_failure_rate": 0}),
    )
    .await;
    let id = r["id"].as_i64().expect("id");
    // 10 % of three nodes is one node.
    assert_eq!(stage_nodes(&r, 1).len(), 1);
    rolled_back(&h, &nodes[0].0, &nodes[0].1, 2).await;
    let r = wait_for(&h, id, "paused", |r| r["state"] == "paused").await;
    let reason = r["reason"].as_str().expect("reason");
    assert!(
        reason.contains("stage 1: 1 of 1 node(s) failed"),
        "{reason}"
    );
    assert!(reason.contains("version 2.0.0 is backoff"), "{reason}");
    assert_eq!(r["stages"][0]["state"], "failed");
    assert_eq!(r["stages"][1]["state"], "pending");
    assert_eq!(
        stage_nodes(&r, 1),
        [("a1".to_owned(), Some(2), "rolled_back".to_owned())]
    );
    assert!(
        r["stages"][0]["nodes"][0]["error"]
            .as_str()
            .expect("error")
            .contains("backoff")
    );
    // Stage 2 was not started: the others run nothing new, even later.
    sleep(Duration::from_millis(1500)).await;
    let r = rollout(&h, id).await;
    assert_eq!(r["state"], "paused");
    for n in ["a2", "a3"] {
        assert_eq!(assigned(&h, n).await, None, "{n}");
        let (_, node) = h.call(Method::GET, &format!("/api/nodes/{n}"), None).await;
        assert_eq!(node["desired_version"], 1, "{n}");
    }
    assert!(stage_nodes(&r, 2).iter().all(|n| n.1.is_none()));
}

async fn a_paused_rollout_resumes_with_the_next_stage(h: Harness) {
    let nodes = fleet(&h).await;
    component(&h, "2.0.0").await;
    let r = start(
        &h,
        json!({"component": "app", "version": "2.0.0", "selector": {"site": "a"}, "canary": 1}),
    )
    .await;
    let id = r["id"].as_i64().expect("id");
    // Not paused: 409.
    let (s, v) = h
        .call(Method::POST, &format!("/api/rollouts/{id}/resume"), None)
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    rolled_back(&h, &nodes[0].0, &nodes[0].1, 2).await;
    wait_for(&h, id, "paused", |r| r["state"] == "paused").await;
    let (s, r) = h
        .call(Method::POST, &format!("/api/rollouts/{id}/resume"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["state"], "running");
    assert_eq!(r["reason"], Value::Null);
    assert_eq!(r["stage"], 2);
    assert_eq!(r["stages"][0]["state"], "failed");
    assert!(stage_nodes(&r, 2).iter().all(|n| n.1 == Some(2)), "{r:#}");
    for n in ["a2", "a3"] {
        assert_eq!(assigned(&h, n).await.as_deref(), Some("2.0.0"), "{n}");
    }
    // One of the two fails too: 50 % is above 0, paused again; resuming
    // after the last stage completes it.
    applied(&h, &nodes[1].0, &nodes[1].1, 2).await;
    rolled_back(&h, &nodes[2].0, &nodes[2].1, 2).await;
    let r = wait_for(&h, id, "paused at stage 2", |r| r["state"] == "paused").await;
    assert!(
        r["reason"]
            .as_str()
            .expect("reason")
            .contains("stage 2: 1 of 2 node(s) failed"),
        "{r:#}"
    );
    let (s, r) = h
        .call(Method::POST, &format!("/api/rollouts/{id}/resume"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["state"], "completed");
}

async fn a_cancelled_rollout_starts_no_more_stages(h: Harness) {
    let nodes = fleet(&h).await;
    component(&h, "2.0.0").await;
    let r = start(
        &h,
        json!({"component": "app", "version": "2.0.0", "selector": {"tier": "edge"}}),
    )
    .await;
    let id = r["id"].as_i64().expect("id");
    let (s, r) = h
        .call(Method::POST, &format!("/api/rollouts/{id}/cancel"), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["state"], "cancelled");
    let reason = r["reason"].as_str().expect("reason");
    assert!(reason.contains("keep the version they got"), "{reason}");
    // The canary reports success: nothing more happens.
    applied(&h, &nodes[0].0, &nodes[0].1, 2).await;
    sleep(Duration::from_millis(1500)).await;
    let r = rollout(&h, id).await;
    assert_eq!(r["state"], "cancelled");
    assert!(stage_nodes(&r, 2).iter().all(|n| n.1.is_none()), "{r:#}");
    // The canary keeps what it got; the others got nothing.
    assert_eq!(assigned(&h, "a1").await.as_deref(), Some("2.0.0"));
    assert_eq!(assigned(&h, "a2").await, None);
    for action in ["cancel", "resume"] {
        let (s, v) = h
            .call(Method::POST, &format!("/api/rollouts/{id}/{action}"), None)
            .await;
        assert_eq!(s, StatusCode::CONFLICT, "{action}: {v}");
    }
}

async fn a_node_without_a_result_in_time_fails_its_stage(h: Harness) {
    fleet(&h).await;
    component(&h, "2.0.0").await;
    let r = start(
        &h,
        json!({"component": "app", "version": "2.0.0", "selector": {"site": "a"},
               "canary": 2, "max_failure_rate": 0.4, "stage_timeout": "1s"}),
    )
    .await;
    let id = r["id"].as_i64().expect("id");
    assert_eq!(r["stage_timeout"], "1s");
    assert_eq!(stage_nodes(&r, 1).len(), 2);
    let r = wait_for(&h, id, "paused by the timeout", |r| r["state"] == "paused").await;
    let first = &r["stages"][0]["nodes"];
    for n in first.as_array().expect("nodes") {
        assert_eq!(n["result"], "timed_out", "{r:#}");
        assert_eq!(n["error"], "no result within 1s");
    }
    assert!(
        r["reason"]
            .as_str()
            .expect("reason")
            .contains("2 of 2 node(s) failed"),
        "{r:#}"
    );
    assert_eq!(assigned(&h, "a3").await, None);
}

async fn bad_rollout_inputs_are_clear_errors(h: Harness) {
    fleet(&h).await;
    component(&h, "2.0.0").await;
    let base = json!({"component": "app", "version": "2.0.0", "selector": {"site": "a"}});
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    for (body, status, says) in [
        (
            with("version", json!("9.9.9")),
            StatusCode::NOT_FOUND,
            "no version",
        ),
        (
            with("component", json!("nope")),
            StatusCode::NOT_FOUND,
            "no version",
        ),
        (
            with("selector", json!({"site": "z"})),
            StatusCode::CONFLICT,
            "no node matches",
        ),
        (with("canary", json!(0)), StatusCode::BAD_REQUEST, "canary"),
        (
            with("canary_percent", json!(150)),
            StatusCode::BAD_REQUEST,
            "canary_percent",
        ),
        (
            with("max_failure_rate", json!(1.5)),
            StatusCode::BAD_REQUEST,
            "max_failure_rate",
        ),
        (
            with("stage_timeout", json!("0s")),
            StatusCode::BAD_REQUEST,
            "stage_timeout",
        ),
        (
            with("stage_timeout", json!("soon")),
            StatusCode::BAD_REQUEST,
            "stage_timeout",
        ),
        (
            with("selector", json!({"a b": "c"})),
            StatusCode::BAD_REQUEST,
            "selector",
        ),
        (with("extra", json!(1)), StatusCode::BAD_REQUEST, "extra"),
    ] {
        let (s, v) = h
            .call(Method::POST, "/api/rollouts", Some(body.clone()))
            .await;
        assert_eq!(s, status, "{body}: {v}");
        let msg = v["error"]["message"].as_str().expect("message");
        assert!(msg.contains(says), "{body}: {msg}");
    }
    let mut both = base.clone();
    both["canary"] = json!(1);
    both["canary_percent"] = json!(10);
    let (s, v) = h.call(Method::POST, "/api/rollouts", Some(both)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    for (path, status) in [
        ("/api/rollouts/99", StatusCode::NOT_FOUND),
        ("/api/rollouts/0", StatusCode::BAD_REQUEST),
        ("/api/rollouts/abc", StatusCode::BAD_REQUEST),
    ] {
        let (s, v) = h.call(Method::GET, path, None).await;
        assert_eq!(s, status, "{path}: {v}");
    }
    let (s, v) = h.call(Method::POST, "/api/rollouts/99/cancel", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    // Nothing was started by the bad requests.
    let (_, list) = h.call(Method::GET, "/api/rollouts", None).await;
    assert_eq!(list, json!([]));
    assert_eq!(assigned(&h, "a1").await, None);
}

async fn the_driver_goes_on_after_a_restart(h: Harness) {
    let nodes = fleet(&h).await;
    component(&h, "2.0.0").await;
    let r = start(
        &h,
        json!({"component": "app", "version": "2.0.0", "selector": {"site": "a"}, "canary": 1}),
    )
    .await;
    let id = r["id"].as_i64().expect("id");
    // Stop this cloud (its background tasks end, its pool closes) and
    // start another on the same database.
    common::serve(&h).await.stop().await;
    let Harness {
        admin,
        db_url,
        dir,
        scratch,
        ..
    } = h;
    let mut cfg = verge_cloud::CloudConfig::default();
    cfg.cloud.data_dir = dir.path().join("data");
    if db_url.starts_with("postgres") {
        cfg.cloud.database = db_url.clone();
    }
    let (cloud, _) = verge_cloud::Cloud::open(cfg).await.expect("reopen");
    let h = Harness {
        cloud,
        admin,
        db_url,
        dir,
        scratch,
    };
    let r = rollout(&h, id).await;
    assert_eq!(r["state"], "running");
    assert!(stage_nodes(&r, 2).iter().all(|n| n.1.is_none()));
    applied(&h, &nodes[0].0, &nodes[0].1, 2).await;
    let r = wait_for(&h, id, "stage 2 after the restart", |r| {
        stage_nodes(r, 2).iter().all(|n| n.1.is_some())
    })
    .await;
    assert_eq!(r["stage"], 2);
    assert_eq!(assigned(&h, "a3").await.as_deref(), Some("2.0.0"));
}

async fn a_one_stage_rollout_counts_nodes_that_run_the_version_already(h: Harness) {
    let nodes = fleet(&h).await;
    component(&h, "2.0.0").await;
    // a1 runs 2.0.0 already (revision 2, applied).
    let (s, v) = h
        .call(
            Method::PUT,
            "/api/nodes/a1/components/app",
            Some(json!({"version": "2.0.0"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    applied(&h, &nodes[0].0, &nodes[0].1, 2).await;
    // Every node of site a in one stage.
    let r = start(
        &h,
        json!({"component": "app", "version": "2.0.0", "selector": {"site": "a"},
               "canary_percent": 100}),
    )
    .await;
    let id = r["id"].as_i64().expect("id");
    assert_eq!(r["stages"].as_array().expect("stages").len(), 1);
    let first = stage_nodes(&r, 1);
    assert_eq!(
        first,
        [
            ("a1".to_owned(), Some(2), "applied".to_owned()),
            ("a2".to_owned(), Some(2), "pending".to_owned()),
            ("a3".to_owned(), Some(2), "pending".to_owned()),
        ]
    );
    // a1 got no new revision.
    let (_, n) = h.call(Method::GET, "/api/nodes/a1", None).await;
    assert_eq!(n["desired_version"], 2);
    // Nodes that report no attempt count once their applied version
    // reaches the revision.
    for (node, secret) in &nodes[1..3] {
        report(&h, node, secret, json!({"applied_version": 2})).await;
    }
    let r = wait_for(&h, id, "completed", |r| r["state"] == "completed").await;
    assert_eq!(r["stages"][0]["state"], "succeeded");
    assert_eq!(assigned(&h, "b1").await, None);
}

async fn a_node_deleted_before_its_stage_fails_and_a_rate_at_the_maximum_goes_on(h: Harness) {
    let nodes = fleet(&h).await;
    component(&h, "2.0.0").await;
    let r = start(
        &h,
        json!({"component": "app", "version": "2.0.0", "selector": {"site": "a"},
               "canary": 1, "max_failure_rate": 0.5}),
    )
    .await;
    let id = r["id"].as_i64().expect("id");
    let (s, v) = h.call(Method::DELETE, "/api/nodes/a2", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    applied(&h, &nodes[0].0, &nodes[0].1, 2).await;
    let r = wait_for(&h, id, "stage 2 started and a2 failed", |r| {
        r["stage"] == 2 && r["stages"][1]["nodes"][0]["result"] != "pending"
    })
    .await;
    let a2 = &r["stages"][1]["nodes"][0];
    assert_eq!(a2["node_id"], "a2");
    assert_eq!(a2["result"], "failed", "{r:#}");
    assert_eq!(a2["error"], "no node `a2`");
    assert_eq!(assigned(&h, "a3").await.as_deref(), Some("2.0.0"));
    // One of two failed: 0.5 is not above the maximum 0.5.
    applied(&h, &nodes[2].0, &nodes[2].1, 2).await;
    let r = wait_for(&h, id, "completed", |r| r["state"] == "completed").await;
    assert_eq!(r["stages"][1]["state"], "succeeded");
}

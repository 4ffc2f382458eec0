//! The agent against a fake cloud with real node parts: join, apply,
//! removal, long-poll latency, heartbeat, offline autonomy, refused
//! credentials.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::*;
use verge_agent::{AgentError, Credentials, join, load_credentials, save_credentials};
use verge_broker::Registry;
use verge_broker::auth::Device;
use verge_protocol::{AttemptState, ItemOutcome};

#[tokio::test]
async fn join_saves_credentials_owner_only_and_a_bad_token_is_refused() {
    let cloud = FakeCloud::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let cloud_dir = dir.path().join("cloud");
    assert!(load_credentials(&cloud_dir).expect("load").is_none());

    let err = join(&cloud.url, "wrong-token").await.expect_err("refused");
    assert!(matches!(err, AgentError::JoinRefused(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("refused the join token") && text.contains("401 unauthorized"),
        "{text}"
    );

    let creds = join(&format!("{}/", cloud.url), JOIN_TOKEN)
        .await
        .expect("join");
    assert_eq!(
        creds,
        Credentials {
            cloud_url: cloud.url.clone(),
            node_id: NODE.into(),
            secret: SECRET.into(),
            mqtt_url: "mqtt://127.0.0.1:1884".into(),
            ca_file: None,
            release_key: None,
        }
    );
    let joins = cloud.state.joins.lock().unwrap().clone();
    assert_eq!(joins[1].agent_version, env!("CARGO_PKG_VERSION"));

    save_credentials(&cloud_dir, &creds).expect("save");
    let path = cloud_dir.join("credentials.json");
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(load_credentials(&cloud_dir).expect("load"), Some(creds));

    // The token is one-time.
    let again = join(&cloud.url, JOIN_TOKEN).await.expect_err("used");
    assert!(matches!(again, AgentError::JoinRefused(_)), "{again:?}");
    // Nothing listening: a transport error, not a refusal.
    let down = join(&closed_url().await, JOIN_TOKEN)
        .await
        .expect_err("down");
    assert!(matches!(down, AgentError::Http(_)), "{down:?}");
}

#[tokio::test]
async fn desired_state_is_applied_and_what_a_new_version_drops_is_removed() {
    let cloud = FakeCloud::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let node = TestNode::new(dir.path()).await;
    let v1 = cloud.publish(full_state);
    let agent = node.agent(cloud.creds()).await;
    eventually("v1 applied", || async {
        agent.status().applied_version == v1
    })
    .await;
    let status = agent.status();
    assert!(status.apply_errors.is_empty(), "{:?}", status.apply_errors);
    assert!(status.cloud_reachable && status.last_sync_ms.is_some());

    assert!(node.device_logs_in("d1", "d1-secret"));
    assert!(!node.device_logs_in("d1", "wrong"));
    let who = node
        .auth
        .authenticate("c", Some("d1"), Some(b"d1-secret"), None)
        .expect("login");
    assert!(node.auth.may_publish(&who, "devices/d1/telemetry"));
    assert!(!node.auth.may_publish(&who, "devices/d2/telemetry"));
    assert!(node.auth.may_subscribe(&who, "$shadow/d1/update"));
    // What a device sends, and nothing the node speaks for it.
    for topic in [
        "devices/d1/events/door",
        "devices/d1/replies/c1",
        "devices/d1/replies/c1/failed",
        "$shadow/d1/get",
        "$shadow/d1/update",
        "devices/d1/custom/stream",
    ] {
        assert!(node.auth.may_publish(&who, topic), "{topic}");
    }
    for topic in [
        "$shadow/d1/document",
        "$shadow/d1/update/accepted",
        "$shadow/d1/update/delta",
        "devices/d1/commands/reboot/c1",
        "devices/d1/commands/write",
        "devices/d2/custom/stream",
        "$verge/shadow/d1",
    ] {
        assert!(!node.auth.may_publish(&who, topic), "{topic}");
    }
    for filter in ["devices/d1/#", "devices/d1/commands/#", "$shadow/d1/#"] {
        assert!(node.auth.may_subscribe(&who, filter), "{filter}");
    }
    assert!(!node.auth.may_subscribe(&who, "devices/d2/#"));
    assert!(node.has_rule("r1").await);
    let f = node.functions.get("tag").expect("function deployed");
    assert_eq!(f.version, 1);
    // The cache holds what was applied.
    let cached: verge_protocol::DesiredState = serde_json::from_slice(
        &std::fs::read(node.cloud_dir().join("desired.json")).expect("cache"),
    )
    .expect("json");
    assert_eq!(cached.version, v1);

    // Same function again under a new version: not redeployed.
    let v2 = cloud.publish(|_| {});
    eventually("v2 applied", || async {
        agent.status().applied_version == v2
    })
    .await;
    assert_eq!(node.functions.get("tag").expect("function").version, 1);

    // Rule, function and device gone.
    let v3 = cloud.publish(|d| {
        d.rules.clear();
        d.devices.clear();
        d.functions.clear();
    });
    eventually("v3 applied", || async {
        agent.status().applied_version == v3
    })
    .await;
    assert!(!node.has_rule("r1").await);
    assert!(!node.device_logs_in("d1", "d1-secret"));
    assert!(node.functions.get("tag").is_none());
    assert!(agent.status().apply_errors.is_empty());
    agent.shutdown().await;
}

#[tokio::test]
async fn a_change_reaches_the_node_through_the_long_poll_within_a_second() {
    let cloud = FakeCloud::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let node = TestNode::new(dir.path()).await;
    let agent = node.agent(cloud.creds()).await;
    // The agent is waiting in a long poll on version 0.
    eventually("a waiting poll", || async {
        cloud.state.waiting.load(Ordering::SeqCst) == 1
    })
    .await;
    let polls = cloud.state.polls.load(Ordering::SeqCst);
    let start = Instant::now();
    let v = cloud.publish(|d| d.devices = vec![device("d7", "s7")]);
    eventually("the change applied", || async {
        agent.status().applied_version == v
    })
    .await;
    let took = start.elapsed();
    // A timer-driven poll would take its period; the long poll answers at
    // once. The bound is generous for a loaded test machine.
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // The change came on the poll that was waiting (the one after it is the
    // next long poll, on the new version).
    assert!(cloud.state.polls.load(Ordering::SeqCst) <= polls + 1);
    assert!(node.device_logs_in("d7", "s7"));

    // Shutdown does not wait out the next long poll.
    eventually("the next poll waiting", || async {
        cloud.state.waiting.load(Ordering::SeqCst) == 1
    })
    .await;
    let start = Instant::now();
    agent.shutdown().await;
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn the_heartbeat_reports_the_applied_version_right_after_an_apply() {
    let cloud = FakeCloud::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let node = TestNode::new(dir.path()).await;
    let agent = node.agent(cloud.creds()).await;
    // The first heartbeat goes out at once.
    eventually("a first report", || async { !cloud.reports().is_empty() }).await;
    let first = cloud.reports()[0].clone();
    assert_eq!(first.applied_version, 0);
    assert_eq!(first.agent_version, env!("CARGO_PKG_VERSION"));
    assert!(first.memory_bytes > 0);
    assert!(first.disk_total_bytes > 0 && first.disk_free_bytes <= first.disk_total_bytes);

    let v = cloud.publish(full_state);
    let start = Instant::now();
    eventually("a report of the new version", || async {
        cloud.reports().iter().any(|r| r.applied_version == v)
    })
    .await;
    // Well before the 5 s period: the apply asked for a report.
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    let report = cloud
        .reports()
        .into_iter()
        .find(|r| r.applied_version == v)
        .expect("report");
    assert!(report.apply_errors.is_empty(), "{:?}", report.apply_errors);
    assert_eq!(report.rules.len(), 1);
    assert_eq!(report.rules[0]["id"], "r1");
    assert_eq!(report.functions.len(), 1);
    assert_eq!(report.functions[0]["name"], "tag");
    assert!(report.functions[0].get("spec").is_none());
    assert!(!report.link_up);
    agent.shutdown().await;
}

#[tokio::test]
async fn the_cached_state_runs_after_a_restart_without_the_cloud() {
    let cloud = FakeCloud::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let first = TestNode::new(&dir.path().join("a")).await;
    let v = cloud.publish(full_state);
    let agent = first.agent(cloud.creds()).await;
    eventually("applied", || async { agent.status().applied_version == v }).await;
    agent.shutdown().await;

    // A fresh node (new broker, engine and function registry), the same
    // agent directory, the cloud unreachable.
    let second = TestNode::new(&dir.path().join("b")).await;
    std::fs::create_dir_all(second.cloud_dir()).expect("dir");
    std::fs::copy(
        first.cloud_dir().join("desired.json"),
        second.cloud_dir().join("desired.json"),
    )
    .expect("copy cache");
    let mut creds = cloud.creds();
    creds.cloud_url = closed_url().await;
    let agent = second.agent(creds).await;
    // Applied before `start` returned.
    assert_eq!(agent.status().applied_version, v);
    assert!(second.device_logs_in("d1", "d1-secret"));
    assert!(second.has_rule("r1").await);
    assert!(second.functions.get("tag").is_some());
    eventually("the sync error", || async {
        agent.status().last_error.is_some()
    })
    .await;
    let status = agent.status();
    assert!(!status.cloud_reachable);
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("cannot connect")),
        "{status:?}"
    );
    // Still running from the cache.
    assert!(second.has_rule("r1").await);
    agent.shutdown().await;

    // The same directory joined as another node: the cache is not its own.
    let third = TestNode::new(&dir.path().join("c")).await;
    std::fs::create_dir_all(third.cloud_dir()).expect("dir");
    std::fs::copy(
        first.cloud_dir().join("desired.json"),
        third.cloud_dir().join("desired.json"),
    )
    .expect("copy cache");
    let mut creds = cloud.creds();
    creds.cloud_url = closed_url().await;
    creds.node_id = "another-node".into();
    let agent = third.agent(creds).await;
    assert_eq!(agent.status().applied_version, 0);
    assert!(!third.device_logs_in("d1", "d1-secret"));
    assert!(!third.has_rule("r1").await);
    agent.shutdown().await;
}

#[tokio::test]
async fn refused_credentials_keep_the_cached_state() {
    let cloud = FakeCloud::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let node = TestNode::new(dir.path()).await;
    let v = cloud.publish(full_state);
    let agent = node.agent(cloud.creds()).await;
    eventually("applied", || async { agent.status().applied_version == v }).await;
    agent.shutdown().await;

    // The node was deleted in the cloud; its state there is gone too.
    cloud.state.refuse.store(true, Ordering::SeqCst);
    cloud.publish(|d| {
        d.rules.clear();
        d.devices.clear();
        d.functions.clear();
    });
    let fresh = TestNode::new(&dir.path().join("fresh")).await;
    std::fs::create_dir_all(fresh.cloud_dir()).expect("dir");
    std::fs::copy(
        node.cloud_dir().join("desired.json"),
        fresh.cloud_dir().join("desired.json"),
    )
    .expect("copy cache");
    let agent = fresh.agent(cloud.creds()).await;
    eventually("the refusal", || async {
        agent
            .status()
            .last_error
            .is_some_and(|e| e.contains("refused the node's credentials"))
    })
    .await;
    let status = agent.status();
    assert_eq!(status.applied_version, v);
    assert!(fresh.device_logs_in("d1", "d1-secret"));
    assert!(fresh.has_rule("r1").await);
    assert!(fresh.functions.get("tag").is_some());
    // The refusal is not retried at once.
    let polls = cloud.state.polls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(cloud.state.polls.load(Ordering::SeqCst), polls);
    agent.shutdown().await;
}

#[tokio::test]
async fn local_devices_and_rules_stay_and_a_clash_is_reported() {
    let cloud = FakeCloud::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let base = Registry {
        acl: vec![],
        devices: vec![Device {
            username: "local".into(),
            password_hash: Some(verge_broker::auth::hash_password("local-secret").expect("hash")),
            client_id: None,
            acl: vec![],
        }],
    };
    let node = TestNode::with_registry(dir.path(), base).await;
    node.rules
        .create(
            serde_json::from_value(serde_json::json!({
                "id": "mine", "sql": "SELECT * FROM \"a\""
            }))
            .expect("rule"),
        )
        .await
        .expect("local rule");
    // A revision with one bad item (a device that clashes with the node's
    // own) does not apply: the node returns to its last good state (here:
    // nothing from the cloud), and says which item failed.
    let v1 = cloud.publish(|d| {
        d.devices = vec![device("local", "cloud-secret"), device("d1", "d1-secret")];
        d.rules = vec![rule_spec(
            serde_json::json!({"id": "r1", "sql": "SELECT * FROM \"b\""}),
        )];
        d.functions = vec![];
    });
    let agent = node.agent(cloud.creds()).await;
    let attempt = eventually_attempt(&agent, v1, AttemptState::RolledBack).await;
    assert_eq!(agent.status().applied_version, 0);
    assert_eq!(attempt.rolled_back_to, Some(0));
    let failed: Vec<_> = attempt
        .items
        .iter()
        .filter(|i| i.result == ItemOutcome::Failed)
        .collect();
    assert_eq!(failed.len(), 1, "{attempt:?}");
    assert_eq!(
        (failed[0].kind.as_str(), failed[0].name.as_str()),
        ("device", "local")
    );
    let errors = agent.status().apply_errors;
    assert!(
        errors.len() == 1 && errors[0].starts_with("device `local`"),
        "{errors:?}"
    );
    assert!(node.device_logs_in("local", "local-secret"));
    assert!(!node.device_logs_in("local", "cloud-secret"));
    assert!(
        !node.device_logs_in("d1", "d1-secret"),
        "d1 went with the revision"
    );
    assert!(!node.has_rule("r1").await, "r1 went with the revision");
    assert!(node.has_rule("mine").await);

    // The next good revision applies, item by item.
    let v2 = cloud.publish(|d| {
        d.devices = vec![device("d1", "d1-secret")];
    });
    let attempt = eventually_attempt(&agent, v2, AttemptState::Applied).await;
    assert_eq!(agent.status().applied_version, v2);
    assert!(agent.status().apply_errors.is_empty());
    let mut items: Vec<_> = attempt
        .items
        .iter()
        .map(|i| (i.kind.as_str(), i.name.as_str(), i.result))
        .collect();
    items.sort_by_key(|i| (i.0, i.1));
    assert_eq!(
        items,
        [
            ("device", "d1", ItemOutcome::Applied),
            ("rule", "r1", ItemOutcome::Applied)
        ]
    );
    assert!(node.device_logs_in("d1", "d1-secret"));
    assert!(node.has_rule("r1").await);

    // A bad rule fails its revision; the node stays on v2 (the removal of
    // d1 and r1 in it is undone), and the node's own rule stays.
    let v3 = cloud.publish(|d| {
        d.devices.clear();
        d.rules = vec![rule_spec(serde_json::json!({"id": "bad", "sql": "SELEKT"}))];
    });
    let attempt = eventually_attempt(&agent, v3, AttemptState::RolledBack).await;
    assert_eq!(agent.status().applied_version, v2);
    assert_eq!(attempt.rolled_back_to, Some(v2));
    let errors = agent.status().apply_errors;
    assert!(
        errors.len() == 1 && errors[0].starts_with("rule `bad`"),
        "{errors:?}"
    );
    assert!(node.has_rule("r1").await);
    assert!(!node.has_rule("bad").await);
    assert!(node.has_rule("mine").await);
    assert!(node.device_logs_in("local", "local-secret"));
    assert!(node.device_logs_in("d1", "d1-secret"));
    // The failed revision is not fetched again; the heartbeat says it all.
    let polls = cloud.state.polls.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(cloud.state.polls.load(Ordering::SeqCst) <= polls + 1);
    let report = eventually_report(&cloud, |r| {
        r.attempt.as_ref().is_some_and(|a| a.version == v3)
    })
    .await;
    assert_eq!(report.applied_version, v2);
    agent.shutdown().await;

    // After a restart the node runs v2 and does not try v3 again.
    let agent = node.agent(cloud.creds()).await;
    assert_eq!(agent.status().applied_version, v2);
    let again = agent.status().attempt.expect("the last attempt");
    assert_eq!((again.version, again.state), (v3, AttemptState::RolledBack));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(agent.status().attempt.map(|a| a.version), Some(v3));
    assert!(node.has_rule("r1").await);
    agent.shutdown().await;
}

/// Finding 6 of the security review: cloud rules stopped or cloud
/// functions deleted on the node stayed so until the next desired-state
/// change while the cloud showed "in_sync". The agent knows what the cloud
/// manages (so the node's API can refuse local changes to it), puts back
/// what was changed anyway at the next quiet poll, and reports it as drift
/// in its status and heartbeat.
#[tokio::test]
async fn finding_6_cloud_items_changed_on_the_node_are_restored_and_reported() {
    let cloud = FakeCloud::start().await;
    cloud.state.hold_ms.store(200, Ordering::SeqCst);
    let dir = tempfile::tempdir().expect("tmp");
    let node = TestNode::new(dir.path()).await;
    let v1 = cloud.publish(full_state);
    let agent = node.agent(cloud.creds()).await;
    eventually("v1 applied", || async {
        agent.status().applied_version == v1
    })
    .await;
    let handle = agent.status_handle();
    assert!(handle.manages_rule("r1") && handle.manages_function("tag"));
    assert!(!handle.manages_rule("mine") && !handle.manages_function("other"));
    assert!(agent.status().drift.is_empty());

    // Changed behind the cloud's back.
    node.rules.stop("r1").await.expect("stop");
    node.functions.delete("tag").await.expect("delete");
    eventually("the rule and function restored", || async {
        node.rules.get("r1").await.is_ok_and(|r| r.config.enabled)
            && node.functions.get("tag").is_some()
    })
    .await;
    eventually("the drift reported to the cloud", || async {
        cloud.reports().iter().any(|r| {
            r.drift.contains(&"rule `r1` restored".to_owned())
                && r.drift.contains(&"function `tag` restored".to_owned())
        })
    })
    .await;
    assert!(agent.status().drift_ms.is_some());
    // The next quiet poll finds nothing to put back: the drift clears (its
    // time stays), and the cloud hears it.
    eventually("the drift cleared", || async {
        agent.status().drift.is_empty()
            && cloud.reports().last().is_some_and(|r| r.drift.is_empty())
    })
    .await;
    assert!(agent.status().drift_ms.is_some());
    assert_eq!(agent.status().applied_version, v1, "no new version needed");
    agent.shutdown().await;
}

/// A node that stopped in the middle of applying a revision (killed, power
/// cut) finds the attempt at its next start: it runs its last good
/// revision, reports the cut-off one as rolled back with the reason, and
/// does not try it again (a revision that kills the node must not do so at
/// every start); a newer revision applies as usual.
#[tokio::test]
async fn an_apply_cut_off_by_the_node_stopping_is_reported_rolled_back() {
    let cloud = FakeCloud::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let node = TestNode::new(dir.path()).await;
    let v1 = cloud.publish(|d| {
        d.rules = vec![rule_spec(
            serde_json::json!({"id": "r1", "sql": "SELECT * FROM \"a\""}),
        )];
    });
    let agent = node.agent(cloud.creds()).await;
    eventually_attempt(&agent, v1, AttemptState::Applied).await;
    agent.shutdown().await;

    // What a node killed while applying v2 leaves behind.
    let v2 = cloud.publish(|d| {
        d.rules = vec![rule_spec(
            serde_json::json!({"id": "r2", "sql": "SELECT * FROM \"b\""}),
        )];
    });
    let cut = verge_protocol::ApplyAttempt {
        version: v2,
        state: AttemptState::Applying,
        started_ms: 1,
        ..Default::default()
    };
    std::fs::write(
        node.cloud_dir().join("attempt.json"),
        serde_json::to_vec(&cut).expect("json"),
    )
    .expect("write");
    let agent = node.agent(cloud.creds()).await;
    let attempt = agent.status().attempt.expect("the attempt");
    assert_eq!(
        (attempt.version, attempt.state),
        (v2, AttemptState::RolledBack)
    );
    assert_eq!(attempt.rolled_back_to, Some(v1));
    assert!(
        attempt
            .error
            .as_deref()
            .is_some_and(|e| e.contains("stopped while applying")),
        "{attempt:?}"
    );
    assert_eq!(agent.status().applied_version, v1);
    let report = eventually_report(&cloud, |r| {
        r.attempt
            .as_ref()
            .is_some_and(|a| a.version == v2 && a.state == AttemptState::RolledBack)
    })
    .await;
    assert_eq!(report.applied_version, v1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(node.has_rule("r1").await && !node.has_rule("r2").await);

    // The next revision applies.
    let v3 = cloud.publish(|_| {});
    eventually_attempt(&agent, v3, AttemptState::Applied).await;
    assert!(node.has_rule("r2").await && !node.has_rule("r1").await);
    agent.shutdown().await;
}

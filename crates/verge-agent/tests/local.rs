//! The heartbeat's `local`: the node's own items, as the node accounts for
//! them through `NodeParts::local`, in a stable order, and never what the
//! cloud's running revision manages (`StatusHandle::manages`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};

use support::*;
use verge_agent::{LocalFuture, LocalItems, StatusHandle};
use verge_protocol::{DesiredState, LocalItem};

/// A node's account of its own items: `items`, less what the agent says
/// the cloud manages (as the node's own account does).
struct Own {
    items: Vec<LocalItem>,
    agent: Mutex<Option<StatusHandle>>,
}

impl LocalItems for Own {
    fn items(&self) -> LocalFuture<'_> {
        Box::pin(async move {
            let agent = self.agent.lock().unwrap().clone();
            self.items
                .iter()
                .filter(|i| !agent.as_ref().is_some_and(|a| a.manages(&i.kind, &i.name)))
                .cloned()
                .collect()
        })
    }
}

fn item(kind: &str, name: &str, source: &str) -> LocalItem {
    LocalItem {
        kind: kind.into(),
        name: name.into(),
        source: source.into(),
        local_only: false,
    }
}

fn lines(items: &[LocalItem]) -> Vec<String> {
    items
        .iter()
        .map(|i| format!("{}/{}/{}", i.kind, i.name, i.source))
        .collect()
}

#[tokio::test]
async fn the_heartbeat_lists_the_nodes_own_items_in_order_and_not_the_clouds() {
    let cloud = FakeCloud::start().await;
    // Function `tag` and rule `r1` are the cloud's.
    let v1 = cloud.publish(full_state);
    let dir = tempfile::tempdir().expect("tmp");
    let node = TestNode::new(dir.path()).await;
    let own = Arc::new(Own {
        items: vec![
            item("rule", "own", "api"),
            // Named like the cloud's: the cloud's revision wins.
            item("rule", "r1", "api"),
            item("function", "tag", "config"),
            item("function", "mine", "api"),
            item("driver", "meter", "api"),
            item("component", "sidecar", "config"),
            // Told twice: listed once.
            item("rule", "own", "api"),
        ],
        agent: Mutex::new(None),
    });
    let mut parts = node.parts();
    parts.local = Some(own.clone());
    let agent = verge_agent::Agent::start(cloud.creds(), node.cloud_dir(), parts)
        .await
        .expect("agent");
    *own.agent.lock().unwrap() = Some(agent.status_handle());
    eventually_attempt(&agent, v1, verge_protocol::AttemptState::Applied).await;
    let handle = agent.status_handle();
    assert!(handle.manages("rule", "r1") && handle.manages("function", "tag"));
    assert!(!handle.manages("rule", "own") && !handle.manages("driver", "meter"));
    assert!(!handle.manages("component", "sidecar") && !handle.manages("device", "d1"));
    let expected = [
        "component/sidecar/config",
        "driver/meter/api",
        "function/mine/api",
        "rule/own/api",
    ];
    let report = eventually_report(&cloud, |r| {
        r.applied_version == v1 && lines(&r.local) == expected
    })
    .await;
    assert!(report.rules.iter().any(|r| r["id"] == "r1"), "r1 runs");

    // The cloud lets go of `r1` and `tag`: the node may call them its own.
    let v2 = cloud.publish(|d| {
        d.rules.clear();
        d.functions.clear();
    });
    eventually_attempt(&agent, v2, verge_protocol::AttemptState::Applied).await;
    assert!(!handle.manages("rule", "r1") && !handle.manages("function", "tag"));
    eventually_report(&cloud, |r| {
        r.applied_version == v2
            && lines(&r.local)
                == [
                    "component/sidecar/config",
                    "driver/meter/api",
                    "function/mine/api",
                    "function/tag/config",
                    "rule/own/api",
                    "rule/r1/api",
                ]
    })
    .await;
    agent.shutdown().await;
}

#[tokio::test]
async fn a_node_that_gives_no_account_reports_no_local_items() {
    let cloud = FakeCloud::start().await;
    let v1 = cloud.publish(full_state);
    let dir = tempfile::tempdir().expect("tmp");
    let node = TestNode::new(dir.path()).await;
    // A rule of the node's own, but no account of it.
    node.rules
        .create(
            serde_json::from_value(
                serde_json::json!({"id": "own", "sql": "SELECT * FROM \"a/b\""}),
            )
            .expect("rule"),
        )
        .await
        .expect("rule");
    let agent = node.agent(cloud.creds()).await;
    let report = eventually_report(&cloud, |r| r.applied_version == v1).await;
    assert!(report.local.is_empty(), "{:?}", report.local);
    assert!(report.rules.iter().any(|r| r["id"] == "own"));
    agent.shutdown().await;
}

/// A node account whose marks can change: what `local_only` answers.
struct Marks(Mutex<Vec<(String, String)>>);

impl LocalItems for Marks {
    fn items(&self) -> LocalFuture<'_> {
        Box::pin(async { Vec::new() })
    }

    fn local_only(&self, kind: &str, name: &str) -> bool {
        self.0
            .lock()
            .unwrap()
            .iter()
            .any(|(k, n)| k == kind && n == name)
    }
}

async fn sql_of(node: &TestNode, id: &str) -> Option<String> {
    node.rules.get(id).await.ok().map(|r| r.config.sql)
}

#[tokio::test]
async fn an_item_kept_local_only_is_neither_replaced_nor_removed_by_a_revision() {
    let cloud = FakeCloud::start().await;
    // Quiet polls come every 200 ms, so reconciliations run.
    cloud
        .state
        .hold_ms
        .store(200, std::sync::atomic::Ordering::SeqCst);
    let dir = tempfile::tempdir().expect("tmp");
    let node = TestNode::new(dir.path()).await;
    let own_sql = "SELECT * FROM \"own/topic\"";
    node.rules
        .create(
            serde_json::from_value(serde_json::json!({"id": "hot", "sql": own_sql})).expect("rule"),
        )
        .await
        .expect("rule");
    let marks = Arc::new(Marks(Mutex::new(vec![("rule".into(), "hot".into())])));
    let mut parts = node.parts();
    parts.local = Some(marks.clone());
    // The cloud wants its own `hot` and a rule `r2`.
    let cloud_hot = |d: &mut DesiredState| {
        d.rules = vec![
            rule_spec(serde_json::json!({"id": "hot", "sql": "SELECT * FROM \"cloud/hot\""})),
            rule_spec(serde_json::json!({"id": "r2", "sql": "SELECT * FROM \"cloud/r2\""})),
        ];
    };
    let v1 = cloud.publish(cloud_hot);
    let agent = verge_agent::Agent::start(cloud.creds(), node.cloud_dir(), parts)
        .await
        .expect("agent");
    let a = eventually_attempt(&agent, v1, verge_protocol::AttemptState::Applied).await;
    let kept: Vec<_> = a
        .items
        .iter()
        .filter(|i| i.result == verge_protocol::ItemOutcome::KeptLocal)
        .map(|i| format!("{}/{}", i.kind, i.name))
        .collect();
    assert_eq!(kept, ["rule/hot"], "{:?}", a.items);
    assert_eq!(agent.status().applied_version, v1, "kept is not failed");
    assert_eq!(sql_of(&node, "hot").await.as_deref(), Some(own_sql));
    assert!(node.has_rule("r2").await);
    let handle = agent.status_handle();
    assert!(
        !handle.manages("rule", "hot"),
        "the node's own, changeable there"
    );
    assert!(handle.manages("rule", "r2"));

    // Quiet polls do not put the cloud's `hot` back either.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(sql_of(&node, "hot").await.as_deref(), Some(own_sql));

    // A revision without `hot` leaves the node's `hot` running.
    let v2 = cloud.publish(|d| d.rules.retain(|r| r.id != "hot"));
    eventually_attempt(&agent, v2, verge_protocol::AttemptState::Applied).await;
    assert_eq!(sql_of(&node, "hot").await.as_deref(), Some(own_sql));

    // Unmarked: the next revision naming `hot` replaces it with the cloud's.
    marks.0.lock().unwrap().clear();
    let v3 = cloud.publish(cloud_hot);
    let a = eventually_attempt(&agent, v3, verge_protocol::AttemptState::Applied).await;
    assert!(
        a.items
            .iter()
            .all(|i| i.result != verge_protocol::ItemOutcome::KeptLocal),
        "{:?}",
        a.items
    );
    assert_eq!(
        sql_of(&node, "hot").await.as_deref(),
        Some("SELECT * FROM \"cloud/hot\"")
    );
    assert!(handle.manages("rule", "hot"));
    agent.shutdown().await;
}

/// A revision whose rule replaces the node's own rule of that id fails on
/// another item: going back to the last good revision removes the cloud's
/// rule and the node's own runs again as it was.
#[tokio::test]
async fn a_failed_revision_gives_back_the_nodes_own_rule_it_replaced() {
    let cloud = FakeCloud::start().await;
    let dir = tempfile::tempdir().expect("tmp");
    let node = TestNode::new(dir.path()).await;
    let own_sql = "SELECT * FROM \"own/topic\"";
    node.rules
        .create(
            serde_json::from_value(serde_json::json!({"id": "hot", "sql": own_sql})).expect("rule"),
        )
        .await
        .expect("rule");
    let v1 = cloud.publish(|d| {
        d.rules = vec![
            rule_spec(serde_json::json!({"id": "hot", "sql": "SELECT * FROM \"cloud/hot\""})),
            rule_spec(serde_json::json!({"id": "bad", "sql": "SELEC nothing"})),
        ];
    });
    let agent = node.agent(cloud.creds()).await;
    let a = eventually_attempt(&agent, v1, verge_protocol::AttemptState::RolledBack).await;
    assert!(
        a.items
            .iter()
            .any(|i| i.name == "bad" && i.result == verge_protocol::ItemOutcome::Failed),
        "{:?}",
        a.items
    );
    assert_eq!(sql_of(&node, "hot").await.as_deref(), Some(own_sql));
    assert!(!node.has_rule("bad").await);
    agent.shutdown().await;
}

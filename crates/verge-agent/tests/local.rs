//! The heartbeat's `local`: the node's own items, as the node accounts for
//! them through `NodeParts::local`, in a stable order, and never what the
//! cloud's running revision manages (`StatusHandle::manages`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};

use support::*;
use verge_agent::{LocalFuture, LocalItems, StatusHandle};
use verge_protocol::LocalItem;

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

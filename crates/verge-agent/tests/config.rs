//! The revision's `config`: the node settings changed at run time (the
//! local store's retention here; the log filter needs the binary's
//! logging, tested with real processes), refused keys that need a
//! restart, and a key left out going back to the node's own value.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use support::*;
use verge_agent::Agent;
use verge_protocol::{AttemptState, ItemOutcome};
use verge_tsdb::{Tsdb, TsdbConfig};

fn item<'a>(a: &'a verge_protocol::ApplyAttempt, name: &str) -> &'a verge_protocol::ItemResult {
    a.items
        .iter()
        .find(|i| i.kind == "config" && i.name == name)
        .unwrap_or_else(|| panic!("no config item {name}: {a:?}"))
}

#[tokio::test]
async fn runtime_settings_apply_refused_ones_fail_the_revision_and_left_out_ones_go_back() {
    let cloud = FakeCloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::new(dir.path()).await;
    let store = Arc::new(
        Tsdb::open(TsdbConfig {
            dir: dir.path().join("store"),
            ..TsdbConfig::default()
        })
        .unwrap(),
    );
    let week = Duration::from_secs(7 * 86_400);
    assert_eq!(store.retention(), week);
    let mut parts = node.parts();
    parts.store = Some(store.clone());

    let v1 = cloud.publish(|d| d.config = json!({"store": {"retention": "2d"}}));
    let agent = Agent::start(cloud.creds(), node.cloud_dir(), parts)
        .await
        .unwrap();
    let a = eventually_attempt(&agent, v1, AttemptState::Applied).await;
    assert_eq!(item(&a, "store.retention").result, ItemOutcome::Applied);
    assert_eq!(store.retention(), Duration::from_secs(2 * 86_400));

    // Less than one chunk: the store refuses it, the revision fails.
    let v2 = cloud.publish(|d| d.config = json!({"store": {"retention": "1s"}}));
    let a = eventually_attempt(&agent, v2, AttemptState::RolledBack).await;
    let i = item(&a, "store.retention");
    assert_eq!(i.result, ItemOutcome::Failed);
    assert!(
        i.error.as_deref().unwrap_or_default().contains("retention"),
        "{a:?}"
    );
    assert_eq!(store.retention(), Duration::from_secs(2 * 86_400));

    // A key that needs a restart, and a log filter in a process that did
    // not set up changeable logging: both named, neither applied.
    let v3 = cloud.publish(|d| {
        d.config = json!({
            "store": {"retention": "3d"},
            "broker": {"max_connections": 5},
            "log": {"level": "debug"},
        })
    });
    let a = eventually_attempt(&agent, v3, AttemptState::RolledBack).await;
    let broker = item(&a, "broker.max_connections");
    assert_eq!(broker.result, ItemOutcome::Failed);
    assert!(
        broker
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("restart the node"),
        "{a:?}"
    );
    assert!(
        item(&a, "log.level")
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("cannot be changed while it runs"),
        "{a:?}"
    );
    assert_eq!(
        store.retention(),
        Duration::from_secs(2 * 86_400),
        "the 3d of the failed revision was undone"
    );

    // Left out: the node's own value again.
    let v4 = cloud.publish(|d| d.config = json!({}));
    let a = eventually_attempt(&agent, v4, AttemptState::Applied).await;
    assert_eq!(item(&a, "store.retention").result, ItemOutcome::Removed);
    assert_eq!(store.retention(), week);
    agent.shutdown().await;
}

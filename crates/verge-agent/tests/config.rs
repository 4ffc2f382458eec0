//! The revision's `config`: the node settings changed at run time (the
//! local store's retention and the cloud link's forwards here; the log
//! filter needs the binary's logging, tested with real processes), refused
//! keys that need a restart, and a key left out going back to the node's
//! own value.

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

/// Every topic in `queue`, in lane order, read without acknowledging.
fn queued(queue: &verge_queue::Queue) -> Vec<(String, String)> {
    let lanes = queue.lanes();
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while queue.try_next_batch(1024, &mut buf) > 0 {
        out.extend(
            buf.drain(..)
                .map(|e| (lanes[e.lane].clone(), e.record.topic)),
        );
    }
    out
}

#[tokio::test]
async fn deployed_forwards_queue_their_topics_a_bad_lane_keeps_the_running_ones_and_left_out_they_go_back()
 {
    use verge_bridge::{Bridge, BridgeConfig, Forward};
    use verge_broker::Message;

    let cloud = FakeCloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::new(dir.path()).await;
    let (queue, _) = verge_queue::Queue::open(verge_queue::QueueConfig {
        dir: dir.path().join("queue"),
        ..verge_queue::QueueConfig::default()
    })
    .unwrap();
    // The config file's forwards; the link's cloud is down, so what the
    // forwards queue stays in the queue.
    let file = vec![Forward {
        filter: "file/#".into(),
        lane: "telemetry".into(),
    }];
    let link = closed_url().await.replace("http://", "mqtt://");
    let plan = BridgeConfig {
        enabled: true,
        url: link,
        forwards: file.clone(),
        ..BridgeConfig::default()
    }
    .plan("n1")
    .unwrap();
    let bridge = Bridge::start(plan, queue.clone(), node.broker.handle())
        .await
        .unwrap();
    let handle = bridge.handle();
    let mut parts = node.parts();
    parts.bridge = Some(handle.clone());
    let publish = |topic: &'static str| {
        let broker = node.broker.handle();
        async move {
            broker
                .publish(Message::local(
                    topic,
                    "x",
                    verge_mqtt::QoS::AtLeastOnce,
                    false,
                ))
                .await
                .unwrap();
        }
    };
    let forwarded = |n: u64| {
        let handle = handle.clone();
        async move {
            eventually(&format!("{n} messages queued"), || {
                let h = handle.clone();
                async move { h.link().forwarded == n }
            })
            .await;
        }
    };

    let v1 = cloud.publish(|d| {
        d.config = json!({"bridge": {"forwards": [
            {"filter": "deployed/#"},
            {"filter": "urgent/#", "lane": "alarms"},
        ]}})
    });
    let agent = Agent::start(cloud.creds(), node.cloud_dir(), parts)
        .await
        .unwrap();
    let a = eventually_attempt(&agent, v1, AttemptState::Applied).await;
    assert_eq!(item(&a, "bridge.forwards").result, ItemOutcome::Applied);
    publish("file/1").await;
    publish("deployed/1").await;
    publish("urgent/1").await;
    forwarded(2).await;

    // A lane the node's queue does not have: the item fails naming it,
    // the node goes back to v1 and keeps v1's forwards.
    let v2 = cloud.publish(|d| {
        d.config = json!({"bridge": {"forwards": [
            {"filter": "deployed/#"},
            {"filter": "other/#", "lane": "bulk"},
        ]}})
    });
    let a = eventually_attempt(&agent, v2, AttemptState::RolledBack).await;
    let i = item(&a, "bridge.forwards");
    assert_eq!(i.result, ItemOutcome::Failed);
    let e = i.error.as_deref().unwrap_or_default();
    assert!(
        e.contains("bridge.forwards[1].lane")
            && e.contains("`bulk`")
            && e.contains("alarms, telemetry"),
        "{a:?}"
    );
    assert_eq!(handle.forwards().await.len(), 2, "v1's forwards run on");
    let v1_forwards = handle.forwards().await;

    // Valid forwards in a revision that fails for another item: applied,
    // then v1's put back by the return to the last good revision.
    let v2b = cloud.publish(|d| {
        d.config = json!({
            "bridge": {"forwards": [{"filter": "other/#"}]},
            "broker": {"max_connections": 5},
        })
    });
    let a = eventually_attempt(&agent, v2b, AttemptState::RolledBack).await;
    assert_eq!(item(&a, "bridge.forwards").result, ItemOutcome::Applied);
    assert_eq!(handle.forwards().await, v1_forwards);
    publish("other/1").await;
    publish("deployed/2").await;
    forwarded(3).await;

    // Left out: the config file's forwards again.
    let v3 = cloud.publish(|d| d.config = json!({}));
    let a = eventually_attempt(&agent, v3, AttemptState::Applied).await;
    assert_eq!(item(&a, "bridge.forwards").result, ItemOutcome::Removed);
    assert_eq!(handle.forwards().await, file);
    publish("deployed/3").await;
    publish("file/2").await;
    forwarded(4).await;
    agent.shutdown().await;
    bridge.shutdown().await;
    let topics = queued(&queue);
    assert_eq!(
        topics,
        [
            ("alarms".to_owned(), "urgent/1".to_owned()),
            ("telemetry".to_owned(), "deployed/1".to_owned()),
            ("telemetry".to_owned(), "deployed/2".to_owned()),
            ("telemetry".to_owned(), "file/2".to_owned()),
        ]
    );
    queue.close().await;
}

#[tokio::test]
async fn forwards_on_a_node_without_a_cloud_link_fail_the_item() {
    let cloud = FakeCloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::new(dir.path()).await;
    let v1 = cloud.publish(|d| d.config = json!({"bridge": {"forwards": [{"filter": "a/#"}]}}));
    let agent = Agent::start(cloud.creds(), node.cloud_dir(), node.parts())
        .await
        .unwrap();
    let a = eventually_attempt(&agent, v1, AttemptState::RolledBack).await;
    let i = item(&a, "bridge.forwards");
    assert_eq!(i.result, ItemOutcome::Failed);
    assert!(
        i.error
            .as_deref()
            .unwrap_or_default()
            .contains("no link to the cloud"),
        "{a:?}"
    );
    agent.shutdown().await;
}

//! Components in the desired state: archives fetched with the node's
//! credentials, checked and unpacked before the supervisor is asked to run
//! them; a bad archive keeps the previous version; the cached state runs
//! its components again after a restart without the cloud.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::json;
use sha2::{Digest, Sha256};
use support::*;
use verge_protocol::{ArtifactRef, ComponentSpec};

fn component(version: &str, archive: &[u8]) -> ComponentSpec {
    serde_json::from_value(json!({
        "name": "reader", "version": version, "command": "./run.sh",
        // The revision's verdict waits for this grace.
        "update_grace": "100ms",
        "artifact": {"sha256": hex::encode(Sha256::digest(archive)), "size": archive.len()},
    }))
    .unwrap()
}

#[tokio::test]
async fn archives_are_fetched_checked_unpacked_and_a_bad_one_keeps_the_old_version() {
    let cloud = FakeCloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::new(dir.path()).await;
    let host = Arc::new(RecordingHost::default());
    let v1 = tar_gz(&[("run.sh", b"#!/bin/sh\necho v1\n", 0o755)]);
    cloud
        .state
        .artifacts
        .lock()
        .unwrap()
        .insert(("reader".into(), "1.0".into()), v1.clone());
    let spec1 = component("1.0", &v1);
    cloud.publish(|d| d.components = vec![spec1.clone()]);
    let agent = node.agent_with(cloud.creds(), host.clone()).await;
    eventually("version 1 applied", || async {
        host.last().is_some_and(|l| l == vec![spec1.clone()])
    })
    .await;
    let installed = dir.path().join("components/reader/1.0");
    let mode = std::fs::metadata(installed.join("run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "the executable bit is kept");
    assert_eq!(cloud.state.downloads.load(Ordering::SeqCst), 1);
    eventually("components in the heartbeat", || async {
        cloud.reports().iter().any(|r| {
            r.components
                .iter()
                .any(|c| c["name"] == "reader" && c["version"] == "1.0")
        })
    })
    .await;

    // Version 2's archive is not the one the desired state names.
    let v2 = tar_gz(&[("run.sh", b"#!/bin/sh\necho v2\n", 0o755)]);
    let mut spec2 = component("2.0", &v2);
    spec2.artifact = Some(ArtifactRef {
        sha256: "0".repeat(64),
        size: v2.len() as u64,
    });
    cloud
        .state
        .artifacts
        .lock()
        .unwrap()
        .insert(("reader".into(), "2.0".into()), v2.clone());
    let applied = agent.status().applied_version;
    let version = cloud.publish(|d| d.components = vec![spec2.clone()]);
    eventually_attempt(&agent, version, verge_protocol::AttemptState::RolledBack).await;
    let s = agent.status();
    assert_eq!(
        s.applied_version, applied,
        "the node stays on its good revision"
    );
    assert!(
        s.apply_errors
            .iter()
            .any(|e| e.contains("`reader`") && e.contains("SHA-256")),
        "{s:?}"
    );
    assert_eq!(host.last(), Some(vec![spec1.clone()]), "version 1 runs on");
    assert!(!dir.path().join("components/reader/2.0").exists());

    // A good version 2 replaces it; version 1's directory stays as the way back.
    let spec2 = component("2.0", &v2);
    cloud.publish(|d| d.components = vec![spec2.clone()]);
    eventually("version 2 applied", || async {
        host.last().is_some_and(|l| l == vec![spec2.clone()])
    })
    .await;
    assert!(dir.path().join("components/reader/2.0/run.sh").is_file());
    assert!(installed.exists());
    agent.shutdown().await;

    // After a restart without the cloud, the cached state's components run
    // again from their files on disk.
    let downloads = cloud.state.downloads.load(Ordering::SeqCst);
    let host2 = Arc::new(RecordingHost::default());
    let mut offline = cloud.creds();
    offline.cloud_url = closed_url().await;
    let agent = node.agent_with(offline, host2.clone()).await;
    assert_eq!(host2.last(), Some(vec![spec2.clone()]), "applied at start");
    assert!(
        agent.status().apply_errors.is_empty(),
        "{:?}",
        agent.status()
    );
    assert_eq!(cloud.state.downloads.load(Ordering::SeqCst), downloads);
    agent.shutdown().await;
}

#[tokio::test]
async fn an_archive_the_cloud_does_not_have_is_an_apply_error_naming_the_component() {
    let cloud = FakeCloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::new(dir.path()).await;
    let host = Arc::new(RecordingHost::default());
    let spec = component("1.0", b"never served");
    let version = cloud.publish(|d| d.components = vec![spec.clone()]);
    let agent = node.agent_with(cloud.creds(), host.clone()).await;
    eventually_attempt(&agent, version, verge_protocol::AttemptState::RolledBack).await;
    let s = agent.status();
    assert_eq!(s.applied_version, 0);
    assert!(
        s.apply_errors.iter().any(|e| {
            e.contains("component `reader`: artifact of version 1.0 not installed")
                && e.contains("404")
        }),
        "{s:?}"
    );
    assert_eq!(host.last(), Some(vec![]), "nothing to run");
    agent.shutdown().await;
}

#[tokio::test]
async fn a_component_state_change_is_reported_before_the_next_heartbeat() {
    let cloud = FakeCloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::new(dir.path()).await;
    let host = Arc::new(RecordingHost::default());
    let spec: ComponentSpec = serde_json::from_value(
        json!({"name": "svc", "version": "1", "command": "true", "update_grace": "100ms"}),
    )
    .unwrap();
    let version = cloud.publish(|d| d.components = vec![spec.clone()]);
    let agent = node.agent_with(cloud.creds(), host.clone()).await;
    eventually_attempt(&agent, version, verge_protocol::AttemptState::Applied).await;
    let state_in_last = |cloud: &FakeCloud| {
        cloud
            .reports()
            .last()
            .and_then(|r| r.components.first().map(|c| c["state"].clone()))
    };
    eventually("a report with the component", || async {
        state_in_last(&cloud) == Some(json!("healthy"))
    })
    .await;
    // Right after a heartbeat, the next periodic one is 5 s away.
    let sent = cloud.reports().len();
    eventually("the next heartbeat", || async {
        cloud.reports().len() > sent
    })
    .await;
    let changed = std::time::Instant::now();
    host.set_state("backoff");
    eventually("the change reported", || async {
        state_in_last(&cloud) == Some(json!("backoff"))
    })
    .await;
    let took = changed.elapsed();
    assert!(
        took < std::time::Duration::from_millis(2500),
        "reported after {took:?}: it waited for the periodic heartbeat"
    );
    agent.shutdown().await;
}

/// A revision whose component does not stay healthy through its grace
/// fails as a whole: the node returns to the last good revision (its
/// component specs and its other items) and says which component and why.
#[tokio::test]
async fn a_component_that_fails_in_its_grace_fails_the_revision() {
    let cloud = FakeCloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::new(dir.path()).await;
    let host = Arc::new(RecordingHost::default());
    let svc = |version: &str| -> ComponentSpec {
        serde_json::from_value(json!({
            "name": "svc", "version": version, "command": "true", "update_grace": "2s",
        }))
        .unwrap()
    };
    let good = cloud.publish(|d| d.components = vec![svc("1")]);
    let agent = node.agent_with(cloud.creds(), host.clone()).await;
    eventually_attempt(&agent, good, verge_protocol::AttemptState::Applied).await;

    // Version 2 starts, then crashes within its grace.
    host.set_state("starting");
    let bad = cloud.publish(|d| {
        d.components = vec![svc("2")];
        d.rules = vec![rule_spec(json!({"id": "r2", "sql": "SELECT * FROM \"x\""}))];
    });
    eventually("version 2 asked for", || async {
        host.last().is_some_and(|l| l == vec![svc("2")])
    })
    .await;
    assert!(node.has_rule("r2").await);
    host.set_state("backoff");
    let attempt = eventually_attempt(&agent, bad, verge_protocol::AttemptState::RolledBack).await;
    assert_eq!(attempt.rolled_back_to, Some(good));
    let failed: Vec<_> = attempt
        .items
        .iter()
        .filter(|i| i.result == verge_protocol::ItemOutcome::Failed)
        .collect();
    assert_eq!(failed.len(), 1, "{attempt:?}");
    assert_eq!(failed[0].name, "svc");
    assert!(
        failed[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("version 2 is backoff")),
        "{attempt:?}"
    );
    assert_eq!(host.last(), Some(vec![svc("1")]), "version 1 again");
    assert!(
        !node.has_rule("r2").await,
        "the revision's rule went with it"
    );
    assert_eq!(agent.status().applied_version, good);
    agent.shutdown().await;
}

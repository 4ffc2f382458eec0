//! Self-update: a revision's release is fetched, checked against the
//! node's release key and swapped in place of the executable (the old one
//! kept), and a restart is asked for; a release the node cannot trust
//! fails the revision with nothing swapped. A new binary on trial is
//! confirmed once its revision applied and the cloud took a heartbeat, and
//! reverted (previous binary and revision put back, restart asked for)
//! when the grace passes or it started too often. The executable here is a
//! file in a temporary directory, never the test binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;
use verge_agent::release::{self, build_version};
use verge_agent::update::{self, Update, UpdateState};
use verge_agent::{Agent, AgentOptions, Credentials};
use verge_protocol::{AttemptState, DesiredState, ItemOutcome, ReleaseRef};

/// A "binary" that reports `version` (`verge --version` prints `verge V`).
fn script(version: &str) -> Vec<u8> {
    format!("#!/bin/sh\necho verge {version}\n").into_bytes()
}

/// A key pair: (private PKCS#8, public hex).
fn key() -> (Vec<u8>, String) {
    release::keygen().unwrap()
}

/// `exe` holding `bytes`, executable.
fn write_exe(exe: &Path, bytes: &[u8]) {
    std::fs::write(exe, bytes).unwrap();
    std::fs::set_permissions(exe, std::fs::Permissions::from_mode(0o755)).unwrap();
}

struct Setup {
    cloud: FakeCloud,
    _dir: tempfile::TempDir,
    node: TestNode,
    exe: PathBuf,
    creds: Credentials,
}

async fn setup(release_key: Option<String>) -> Setup {
    let cloud = FakeCloud::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::new(&dir.path().join("node")).await;
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let exe = bin.join("verge");
    write_exe(&exe, b"the old binary");
    let mut creds = cloud.creds();
    creds.release_key = release_key;
    Setup {
        cloud,
        _dir: dir,
        node,
        exe,
        creds,
    }
}

impl Setup {
    async fn agent(&self, grace: Duration) -> Agent {
        self.node
            .agent_opts(
                self.creds.clone(),
                AgentOptions {
                    exe: Some(self.exe.clone()),
                    release_grace: Some(grace),
                },
            )
            .await
    }

    fn release_dir(&self) -> PathBuf {
        self.node.dir.join("release")
    }

    /// Publish the release `r` (its binary `binary`) as a new revision.
    fn publish(&self, r: &ReleaseRef, binary: &[u8]) -> i64 {
        self.cloud
            .state
            .releases
            .lock()
            .unwrap()
            .insert(r.version.clone(), binary.to_vec());
        let r = r.clone();
        self.cloud.publish(|d| d.release = Some(r))
    }
}

async fn restarted(agent: &Agent) {
    tokio::time::timeout(WAIT, agent.restart_requested())
        .await
        .expect("a restart was asked for");
}

async fn not_restarted(agent: &Agent) {
    let asked = tokio::time::timeout(Duration::from_millis(300), agent.restart_requested()).await;
    assert!(asked.is_err(), "no restart is asked for");
}

#[tokio::test]
async fn a_trusted_release_is_swapped_in_and_a_restart_asked_for() {
    let (private, public) = key();
    let s = setup(Some(public)).await;
    let agent = s.agent(Duration::from_secs(60)).await;
    let good = s.cloud.publish(|_| {});
    eventually_attempt(&agent, good, AttemptState::Applied).await;
    let binary = script("9.9.9");
    let r = release::sign(&private, "9.9.9", &binary).unwrap();
    let revision = s.publish(&r, &binary);
    restarted(&agent).await;
    let a = agent.status().attempt.unwrap();
    assert_eq!(
        (a.version, a.state),
        (revision, AttemptState::Applying),
        "{a:?}"
    );
    assert_eq!(
        std::fs::read(&s.exe).unwrap(),
        binary,
        "the new binary is in place"
    );
    let mode = std::fs::metadata(&s.exe).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755);
    let previous = s.release_dir().join(release::PREVIOUS_BINARY);
    assert_eq!(std::fs::read(previous).unwrap(), b"the old binary");
    let u = update::load(&s.release_dir()).unwrap();
    assert_eq!(u.state, UpdateState::Trial);
    assert_eq!((u.from.as_str(), u.to.as_str()), (build_version(), "9.9.9"));
    assert_eq!(
        (u.revision, u.previous_revision, u.boots),
        (revision, good, 0)
    );
    // The new binary runs the revision at start; the good one is kept.
    let cached: DesiredState =
        serde_json::from_slice(&std::fs::read(s.node.cloud_dir().join("desired.json")).unwrap())
            .unwrap();
    assert_eq!(cached.version, revision);
    let kept: DesiredState = serde_json::from_slice(
        &std::fs::read(s.node.cloud_dir().join(update::PREVIOUS_DESIRED)).unwrap(),
    )
    .unwrap();
    assert_eq!(kept.version, good);
    agent.shutdown().await;
}

/// The revision fails on its `release` item with `says`; nothing swapped.
async fn refused(s: &Setup, r: &ReleaseRef, binary: &[u8], says: &str) {
    let agent = s.agent(Duration::from_secs(60)).await;
    let revision = s.publish(r, binary);
    let a = eventually_attempt(&agent, revision, AttemptState::RolledBack).await;
    let item = a
        .items
        .iter()
        .find(|i| i.kind == "release")
        .expect("release item");
    assert_eq!(item.result, ItemOutcome::Failed);
    let error = item.error.clone().unwrap_or_default();
    assert!(error.contains(says), "{error}");
    not_restarted(&agent).await;
    assert_eq!(std::fs::read(&s.exe).unwrap(), b"the old binary");
    assert!(update::load(&s.release_dir()).is_none());
    agent.shutdown().await;
}

#[tokio::test]
async fn a_release_signed_with_another_key_fails_and_nothing_is_swapped() {
    let (_, public) = key();
    let (other, _) = key();
    let s = setup(Some(public)).await;
    let binary = script("9.9.9");
    let r = release::sign(&other, "9.9.9", &binary).unwrap();
    refused(&s, &r, &binary, "does not match the node's release key").await;
}

#[tokio::test]
async fn a_node_without_a_release_key_takes_no_release() {
    let (private, _) = key();
    let s = setup(None).await;
    let binary = script("9.9.9");
    let r = release::sign(&private, "9.9.9", &binary).unwrap();
    refused(&s, &r, &binary, "no release key").await;
}

#[tokio::test]
async fn a_binary_that_reports_another_version_is_not_swapped_in() {
    let (private, public) = key();
    let s = setup(Some(public)).await;
    let binary = script("1.2.3");
    let r = release::sign(&private, "9.9.9", &binary).unwrap();
    refused(&s, &r, &binary, "reports version").await;
}

#[tokio::test]
async fn an_executable_in_a_read_only_place_fails_the_release() {
    let (private, public) = key();
    let mut s = setup(Some(public)).await;
    s.exe = PathBuf::from("/proc/self/verge-nowhere/verge");
    let binary = script("9.9.9");
    let r = release::sign(&private, "9.9.9", &binary).unwrap();
    let agent = s.agent(Duration::from_secs(60)).await;
    let revision = s.publish(&r, &binary);
    let a = eventually_attempt(&agent, revision, AttemptState::RolledBack).await;
    let item = a
        .items
        .iter()
        .find(|i| i.kind == "release")
        .expect("release item");
    let error = item.error.as_deref().unwrap_or_default();
    assert!(
        error.contains(
            "/proc/self/verge-nowhere/verge cannot be replaced \
             (its directory /proc/self/verge-nowhere must be writable by the node)"
        ),
        "{error}"
    );
    assert!(
        !s.release_dir().join(release::PREVIOUS_BINARY).exists(),
        "checked before anything changed"
    );
    assert!(update::load(&s.release_dir()).is_none());
    agent.shutdown().await;
}

/// The node's files as the previous binary left them after a swap: the
/// revision `revision` (naming release `to`) cached, `good` kept, the
/// previous binary kept, the attempt applying, the trial recorded with
/// `boots` starts so far.
fn after_swap(s: &Setup, to: &str, boots: u32) -> (i64, i64) {
    let (good, revision) = (4, 5);
    let state = |version: i64| {
        let mut d: DesiredState =
            serde_json::from_value(serde_json::json!({"node_id": NODE, "version": version}))
                .unwrap();
        if version == revision {
            d.release = Some(ReleaseRef {
                version: to.into(),
                sha256: "00".repeat(32),
                size: 1,
                signature: String::new(),
            });
        }
        serde_json::to_vec(&d).unwrap()
    };
    let cloud_dir = s.node.cloud_dir();
    std::fs::create_dir_all(&cloud_dir).unwrap();
    std::fs::write(cloud_dir.join("desired.json"), state(revision)).unwrap();
    std::fs::write(cloud_dir.join(update::PREVIOUS_DESIRED), state(good)).unwrap();
    std::fs::write(
        cloud_dir.join("attempt.json"),
        serde_json::to_vec(&serde_json::json!({
            "version": revision, "state": "applying", "started_ms": 1, "items": [],
        }))
        .unwrap(),
    )
    .unwrap();
    std::fs::create_dir_all(s.release_dir()).unwrap();
    std::fs::write(
        s.release_dir().join(release::PREVIOUS_BINARY),
        b"the previous binary",
    )
    .unwrap();
    std::fs::write(s.release_dir().join(format!("verge-{to}")), b"the download").unwrap();
    update::save(
        &s.release_dir(),
        &Update {
            state: UpdateState::Trial,
            from: "0.0.1".into(),
            to: to.into(),
            revision,
            previous_revision: good,
            boots,
            started_ms: 1,
        },
    );
    (good, revision)
}

fn cached_version(s: &Setup) -> i64 {
    let d: DesiredState =
        serde_json::from_slice(&std::fs::read(s.node.cloud_dir().join("desired.json")).unwrap())
            .unwrap();
    d.version
}

#[tokio::test]
async fn the_new_binary_confirms_once_it_applied_and_reached_the_cloud() {
    let s = setup(Some(key().1)).await;
    let (_, revision) = after_swap(&s, build_version(), 0);
    // The cloud's desired state is that revision.
    while s.cloud.version() < revision {
        s.cloud.publish(|_| {});
    }
    let agent = s.agent(Duration::from_secs(30)).await;
    let a = eventually_attempt(&agent, revision, AttemptState::Applied).await;
    let item = a
        .items
        .iter()
        .find(|i| i.kind == "release")
        .expect("release item");
    assert_eq!(
        (item.name.as_str(), item.result),
        (build_version(), ItemOutcome::Applied)
    );
    assert_eq!(agent.status().applied_version, revision);
    assert_eq!(
        update::load(&s.release_dir()).map(|u| (u.state, u.boots)),
        Some((UpdateState::Confirmed, 1))
    );
    eventually("the cloud told", || async {
        s.cloud.reports().iter().any(|r| {
            r.agent_version == build_version()
                && r.attempt
                    .as_ref()
                    .is_some_and(|a| a.state == AttemptState::Applied)
        })
    })
    .await;
    not_restarted(&agent).await;
    assert_eq!(
        std::fs::read(&s.exe).unwrap(),
        b"the old binary",
        "nothing reverted"
    );
    let download = s.release_dir().join(format!("verge-{}", build_version()));
    assert!(!download.exists(), "the download is removed once confirmed");
    assert!(s.release_dir().join(release::PREVIOUS_BINARY).exists());
    agent.shutdown().await;
}

#[tokio::test]
async fn the_new_binary_reverts_when_the_cloud_is_not_reached_within_the_grace() {
    let mut s = setup(Some(key().1)).await;
    s.creds.cloud_url = closed_url().await;
    let (good, revision) = after_swap(&s, build_version(), 0);
    let agent = s.agent(Duration::from_secs(1)).await;
    restarted(&agent).await;
    let a = agent.status().attempt.unwrap();
    assert_eq!(
        (a.version, a.state, a.rolled_back_to),
        (revision, AttemptState::RolledBack, Some(good))
    );
    let why = format!(
        "release {} did not report healthy within 1 s; 0.0.1 runs again",
        build_version()
    );
    assert_eq!(a.error.as_deref(), Some(why.as_str()));
    assert_eq!(std::fs::read(&s.exe).unwrap(), b"the previous binary");
    assert_eq!(
        cached_version(&s),
        good,
        "the last good revision runs again"
    );
    assert!(update::load(&s.release_dir()).is_none());
    assert!(s.release_dir().join(release::PREVIOUS_BINARY).exists());
    let download = s.release_dir().join(format!("verge-{}", build_version()));
    assert!(!download.exists(), "the download is removed at the revert");
    agent.shutdown().await;
    // The previous binary at its start reports the attempt and does not
    // take that revision again.
    let agent = s.agent(Duration::from_secs(1)).await;
    let a = agent.status().attempt.unwrap();
    assert_eq!((a.version, a.state), (revision, AttemptState::RolledBack));
    assert_eq!(agent.status().applied_version, good);
    agent.shutdown().await;
}

#[tokio::test]
async fn a_new_binary_that_keeps_restarting_is_reverted_at_its_fourth_start() {
    let s = setup(Some(key().1)).await;
    let (good, revision) = after_swap(&s, build_version(), 3);
    let agent = s.agent(Duration::from_secs(60)).await;
    restarted(&agent).await;
    let a = agent.status().attempt.unwrap();
    assert_eq!((a.version, a.state), (revision, AttemptState::RolledBack));
    assert!(
        a.error
            .as_deref()
            .unwrap_or_default()
            .contains("started 3 times"),
        "{a:?}"
    );
    assert_eq!(std::fs::read(&s.exe).unwrap(), b"the previous binary");
    assert_eq!(cached_version(&s), good);
    agent.shutdown().await;
}

#[tokio::test]
async fn the_old_binary_finds_a_trial_that_never_started() {
    let s = setup(Some(key().1)).await;
    let (good, revision) = after_swap(&s, "9.9.9", 0);
    let agent = s.agent(Duration::from_secs(60)).await;
    let a = agent.status().attempt.unwrap();
    assert_eq!((a.version, a.state), (revision, AttemptState::RolledBack));
    assert!(
        a.error
            .as_deref()
            .unwrap_or_default()
            .contains("did not start"),
        "{a:?}"
    );
    assert_eq!(agent.status().applied_version, good);
    assert!(update::load(&s.release_dir()).is_none());
    not_restarted(&agent).await;
    agent.shutdown().await;
}

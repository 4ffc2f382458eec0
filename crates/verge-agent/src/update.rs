//! The trial of a new `verge` binary after a self-update
//! (`<data_dir>/release/update.json`): the new process confirms it when
//! its revision applied and the cloud took a heartbeat within the grace;
//! otherwise (the grace passed, or it started more than [`MAX_BOOTS`]
//! times without confirming, i.e. it crashes) the previous binary and the
//! last good revision are put back and the node restarts into them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store;

/// The trial's file in the release folder.
pub const UPDATE_FILE: &str = "update.json";
/// The last good revision, kept in the agent's directory while a new
/// binary is on trial.
pub const PREVIOUS_DESIRED: &str = "desired.previous.json";
/// How long a new binary has to apply its revision and reach the cloud.
pub const RELEASE_GRACE: Duration = Duration::from_secs(120);
/// Environment variable overriding [`RELEASE_GRACE`], in seconds (tests).
pub const GRACE_ENV: &str = "VERGE_RELEASE_GRACE_S";
/// Starts of a new binary without confirming it before it is reverted.
pub const MAX_BOOTS: u32 = 3;

/// The grace of a new binary: [`GRACE_ENV`] when set to a number of
/// seconds, else [`RELEASE_GRACE`].
pub fn grace() -> Duration {
    std::env::var(GRACE_ENV)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map_or(RELEASE_GRACE, Duration::from_secs)
}

/// Where a self-update stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    /// The new binary is in place and has not confirmed yet.
    Trial,
    /// The new binary confirmed.
    Confirmed,
}

/// `update.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Update {
    /// Where it stands.
    pub state: UpdateState,
    /// The version that ran before.
    pub from: String,
    /// The release on trial.
    pub to: String,
    /// The revision that named the release.
    pub revision: i64,
    /// The last good revision, run again on a revert.
    pub previous_revision: i64,
    /// Starts of the new binary so far.
    pub boots: u32,
    /// When the swap was made, ms since the Unix epoch.
    pub started_ms: u64,
}

/// What a starting process does about `update.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtStart {
    /// No trial: run as usual.
    Run,
    /// This process is the new binary on trial (its `boots` counted and
    /// saved): confirm it within the grace or revert.
    Trial(Update),
    /// Put the previous binary back, for this reason.
    Revert(Update, String),
    /// The previous binary runs while the trial file says otherwise (the
    /// new one never started, or someone put the old one back): finish
    /// the attempt as rolled back, for this reason.
    Abandoned(Update, String),
}

/// Decide what a process of version `running` does with the trial file
/// in `release_dir`, counting this start when it is the new binary.
pub fn at_start(release_dir: &Path, running: &str) -> AtStart {
    let Some(mut u) = load(release_dir) else {
        return AtStart::Run;
    };
    if u.state != UpdateState::Trial {
        return AtStart::Run;
    }
    if running != u.to {
        let why = if u.boots > MAX_BOOTS {
            // Put back by the start guard of the new binary.
            format!(
                "release {} started {} times without reporting healthy (it stopped before its \
                 agent ran); {running} runs again",
                u.to,
                u.boots - 1
            )
        } else {
            format!("release {} did not start; {running} runs again", u.to)
        };
        return AtStart::Abandoned(u, why);
    }
    u.boots += 1;
    save(release_dir, &u);
    if u.boots > MAX_BOOTS {
        let why = format!(
            "release {} started {} times without reporting healthy; {} runs again",
            u.to,
            u.boots - 1,
            u.from
        );
        return AtStart::Revert(u, why);
    }
    AtStart::Trial(u)
}

/// What [`guard_start`] found, for the agent of the same process.
static GUARDED: std::sync::Mutex<Option<(PathBuf, AtStart)>> = std::sync::Mutex::new(None);

/// The node's binary calls this first, before it starts anything that may
/// fail: it counts this start of a binary on trial at once
/// ([`at_start`]), so that a new binary that stops before its agent runs
/// (a listener it cannot bind, a store it cannot open, a panic) is
/// still put back after [`MAX_BOOTS`] starts by a service manager that
/// restarts it. Returns `true` when the previous binary was put back at
/// `exe`: the caller executes `exe` at once, and the previous binary's
/// agent finds the trial abandoned and reports the revision rolled back.
/// Otherwise the agent of this process takes the outcome
/// ([`at_start_once`]) instead of counting the start again.
pub fn guard_start(release_dir: &Path, exe: &Path) -> bool {
    let at = at_start(release_dir, crate::release::build_version());
    if let AtStart::Revert(u, why) = &at {
        tracing::error!("{why}");
        let previous = release_dir.join(crate::release::PREVIOUS_BINARY);
        match crate::release::replace_file(&previous, exe) {
            Ok(()) => {
                tracing::warn!(release = %u.to, back = %u.from, "the previous binary is back");
                return true;
            }
            // The agent tries again (and reports it) if it gets to run.
            Err(e) => tracing::error!("the previous binary was not put back: {e}"),
        }
    }
    *GUARDED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((release_dir.to_owned(), at));
    false
}

/// [`at_start`], unless [`guard_start`] counted this process's start in
/// `release_dir` already: then what it found (once).
pub fn at_start_once(release_dir: &Path, running: &str) -> AtStart {
    let mut guarded = GUARDED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match guarded.take() {
        Some((dir, at)) if dir == release_dir => at,
        other => {
            *guarded = other;
            drop(guarded);
            at_start(release_dir, running)
        }
    }
}

/// The reason of a revert after the grace.
pub fn grace_passed(u: &Update, grace: Duration) -> String {
    format!(
        "release {} did not report healthy within {} s; {} runs again",
        u.to,
        grace.as_secs(),
        u.from
    )
}

/// `update.json` in `release_dir`, if any (an unreadable one is logged
/// and ignored).
pub fn load(release_dir: &Path) -> Option<Update> {
    let path = release_dir.join(UPDATE_FILE);
    let bytes = store::read_optional(&path).ok().flatten()?;
    match serde_json::from_slice(&bytes) {
        Ok(u) => Some(u),
        Err(e) => {
            tracing::warn!("{}: not an update record, ignored: {e}", path.display());
            None
        }
    }
}

/// Save `u` as `update.json` in `release_dir`.
pub fn save(release_dir: &Path, u: &Update) {
    let written = serde_json::to_vec_pretty(u)
        .map_err(|e| e.to_string())
        .and_then(|b| {
            store::write_atomic(&release_dir.join(UPDATE_FILE), &b, 0o600)
                .map_err(|e| e.to_string())
        });
    if let Err(e) = written {
        tracing::warn!("update record not saved: {e}");
    }
}

/// Remove the downloaded releases (`verge-{version}`) from `release_dir`
/// once a trial ended: the executable holds the binary that runs and
/// `verge-previous` the one before; nothing else is needed.
pub fn prune(release_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(release_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("verge-")
            && name != crate::release::PREVIOUS_BINARY
            && let Err(err) = std::fs::remove_file(e.path())
        {
            tracing::warn!("{}: not removed: {err}", e.path().display());
        }
    }
}

/// Remove `update.json`.
pub fn clear(release_dir: &Path) {
    let _ = std::fs::remove_file(release_dir.join(UPDATE_FILE));
}

/// Put the previous binary back at `exe` and the last good revision back
/// as the cached desired state (`agent_dir`), and end the trial. The
/// caller restarts the node into the previous binary.
pub fn revert(release_dir: &Path, agent_dir: &Path, exe: &Path) -> Result<(), String> {
    let previous: PathBuf = release_dir.join(crate::release::PREVIOUS_BINARY);
    crate::release::replace_file(&previous, exe)?;
    restore_desired(agent_dir)?;
    clear(release_dir);
    prune(release_dir);
    Ok(())
}

/// Put the last good revision back as the cached desired state.
pub fn restore_desired(agent_dir: &Path) -> Result<(), String> {
    let desired = agent_dir.join(crate::agent::DESIRED_FILE);
    let good = agent_dir.join(PREVIOUS_DESIRED);
    match std::fs::read(&good) {
        Ok(bytes) => store::write_atomic(&desired, &bytes, 0o600).map_err(|e| e.to_string())?,
        // The node ran no revision before: it runs none again.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let _ = std::fs::remove_file(&desired);
        }
        Err(e) => return Err(format!("{}: {e}", good.display())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(dir: &Path) -> Update {
        let u = Update {
            state: UpdateState::Trial,
            from: "0.1.0".into(),
            to: "0.1.0+b2".into(),
            revision: 5,
            previous_revision: 4,
            boots: 0,
            started_ms: 1,
        };
        save(dir, &u);
        u
    }

    #[test]
    fn no_file_or_a_confirmed_one_runs_as_usual() {
        let dir = tempfile::tempdir().expect("tmp");
        assert_eq!(at_start(dir.path(), "0.1.0"), AtStart::Run);
        let mut u = trial(dir.path());
        u.state = UpdateState::Confirmed;
        save(dir.path(), &u);
        assert_eq!(at_start(dir.path(), "0.1.0+b2"), AtStart::Run);
    }

    #[test]
    fn the_new_binary_is_on_trial_and_counts_its_starts() {
        let dir = tempfile::tempdir().expect("tmp");
        trial(dir.path());
        for boots in 1..=MAX_BOOTS {
            match at_start(dir.path(), "0.1.0+b2") {
                AtStart::Trial(u) => assert_eq!(u.boots, boots),
                other => panic!("{other:?}"),
            }
        }
        match at_start(dir.path(), "0.1.0+b2") {
            AtStart::Revert(u, why) => {
                assert_eq!(u.boots, MAX_BOOTS + 1);
                assert!(why.contains("started 3 times"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// A new binary that stops before its agent runs: each start counts
    /// in the guard; the one after the last allowed puts the previous
    /// binary back, and the previous binary finds the trial abandoned.
    #[test]
    fn the_start_guard_reverts_a_binary_that_stops_before_its_agent() {
        let dir = tempfile::tempdir().expect("tmp");
        let running = crate::release::build_version().to_owned();
        let mut u = trial(dir.path());
        u.to = running.clone();
        u.from = "0.0.9".into();
        save(dir.path(), &u);
        let exe = dir.path().join("verge");
        std::fs::write(&exe, b"new").expect("exe");
        std::fs::write(dir.path().join(crate::release::PREVIOUS_BINARY), b"old").expect("old");
        for boots in 1..=MAX_BOOTS {
            assert!(!guard_start(dir.path(), &exe), "start {boots}");
            assert_eq!(load(dir.path()).map(|u| u.boots), Some(boots));
        }
        // The agent of the last start takes the guard's outcome without
        // counting again.
        match at_start_once(dir.path(), &running) {
            AtStart::Trial(u) => assert_eq!(u.boots, MAX_BOOTS),
            other => panic!("{other:?}"),
        }
        assert_eq!(load(dir.path()).map(|u| u.boots), Some(MAX_BOOTS));
        assert_eq!(std::fs::read(&exe).expect("exe"), b"new");
        // One start more: the previous binary is back at the executable.
        assert!(guard_start(dir.path(), &exe));
        assert_eq!(std::fs::read(&exe).expect("exe"), b"old");
        match at_start(dir.path(), "0.0.9") {
            AtStart::Abandoned(u, why) => {
                assert_eq!(u.boots, MAX_BOOTS + 1);
                assert!(why.contains("started 3 times"), "{why}");
                assert!(why.contains("0.0.9 runs again"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_old_binary_finds_an_abandoned_trial() {
        let dir = tempfile::tempdir().expect("tmp");
        trial(dir.path());
        match at_start(dir.path(), "0.1.0") {
            AtStart::Abandoned(_, why) => assert!(why.contains("did not start"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn grace_reason_names_both_versions() {
        let dir = tempfile::tempdir().expect("tmp");
        let u = trial(dir.path());
        assert_eq!(
            grace_passed(&u, Duration::from_secs(120)),
            "release 0.1.0+b2 did not report healthy within 120 s; 0.1.0 runs again"
        );
    }

    #[test]
    fn prune_keeps_the_previous_binary_and_the_record() {
        let dir = tempfile::tempdir().expect("tmp");
        for f in [
            "verge-previous",
            "verge-0.1.0+b2",
            "verge-0.2.0",
            "update.json",
        ] {
            std::fs::write(dir.path().join(f), b"x").expect("write");
        }
        prune(dir.path());
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["update.json", "verge-previous"]);
    }

    #[test]
    fn revert_puts_back_the_binary_and_the_good_revision() {
        let release = tempfile::tempdir().expect("tmp");
        let agent = tempfile::tempdir().expect("tmp");
        let bin = tempfile::tempdir().expect("tmp");
        let exe = bin.path().join("verge");
        std::fs::write(&exe, b"new").expect("exe");
        std::fs::write(release.path().join(crate::release::PREVIOUS_BINARY), b"old").expect("old");
        std::fs::write(agent.path().join(crate::agent::DESIRED_FILE), b"{\"v\":5}").expect("d");
        std::fs::write(agent.path().join(PREVIOUS_DESIRED), b"{\"v\":4}").expect("p");
        trial(release.path());
        revert(release.path(), agent.path(), &exe).expect("revert");
        assert_eq!(std::fs::read(&exe).expect("exe"), b"old");
        assert_eq!(
            std::fs::read(agent.path().join(crate::agent::DESIRED_FILE)).expect("d"),
            b"{\"v\":4}"
        );
        assert_eq!(load(release.path()), None);
        assert_eq!(at_start(release.path(), "0.1.0"), AtStart::Run);
    }
}

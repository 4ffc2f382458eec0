//! One revision at a time: apply it, wait for the verdict of the
//! components it changed, and keep it only when all of it works;
//! otherwise put the node back on its last good revision. The attempt
//! (`attempt.json` beside the cached state) is written before the apply
//! starts, so a node that dies in the middle finds it at its next start
//! and reports it as rolled back instead of leaving it in progress.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use verge_protocol::{ApplyAttempt, AttemptState, ComponentSpec, DesiredState, ItemOutcome};

use crate::apply::{self, Results};
use crate::parts::{ComponentHost, NodeParts};
use crate::{artifact, store};

/// The last attempt, in the agent's directory.
pub(crate) const ATTEMPT_FILE: &str = "attempt.json";

/// Longer than a component's `update_grace` the agent waits for it to be
/// healthy before the revision fails.
const HEALTH_MARGIN: Duration = Duration::from_secs(10);
/// How often the components' states are read during the verdict.
const VERDICT_POLL: Duration = Duration::from_millis(200);

/// The state that ran before anything came from the cloud: nothing.
pub(crate) fn empty_state(node_id: &str) -> DesiredState {
    DesiredState {
        node_id: node_id.to_owned(),
        version: 0,
        devices: Vec::new(),
        rules: Vec::new(),
        functions: Vec::new(),
        drivers: Vec::new(),
        components: Vec::new(),
        release: None,
        config: serde_json::Value::Object(serde_json::Map::new()),
    }
}

/// What a revision's release (a new `verge` binary) needs.
pub(crate) struct ReleaseSetup<'a> {
    /// The node's release key (hex), if it was given one at join.
    pub(crate) key: Option<&'a str>,
    /// `<data_dir>/release`.
    pub(crate) dir: PathBuf,
    /// The running executable (read at start, before any swap).
    pub(crate) exe: &'a Path,
}

/// What one deployment came to.
pub(crate) struct Deployed {
    /// The state the node runs now: the revision, or the good one it
    /// returned to.
    pub(crate) running: DesiredState,
    /// How it went (also written to [`ATTEMPT_FILE`]).
    pub(crate) attempt: ApplyAttempt,
    /// A new binary is in place: the node must restart into it (the
    /// attempt stays `applying` until the new binary confirms it).
    pub(crate) restart: bool,
}

/// Apply `next` over `good` (the state that runs now). `started` is told
/// the attempt before the apply begins (so the cloud sees it applying).
pub(crate) async fn deploy(
    parts: &NodeParts,
    source: &artifact::Source<'_>,
    dir: &Path,
    good: &DesiredState,
    next: DesiredState,
    release: &ReleaseSetup<'_>,
    started: impl FnOnce(&ApplyAttempt),
) -> Deployed {
    let mut attempt = ApplyAttempt {
        version: next.version,
        state: AttemptState::Applying,
        started_ms: now_ms(),
        ..ApplyAttempt::default()
    };
    save_attempt(dir, &attempt);
    started(&attempt);
    let displaced = Displaced::before(parts, good, &next).await;
    let mut results = apply::apply(parts, source, Some(good), &next).await;
    if !results.any_failed()
        && let Some(host) = &parts.components
    {
        let changed: Vec<&ComponentSpec> = next
            .components
            .iter()
            .filter(|c| !good.components.contains(c))
            .collect();
        for (name, error) in verdict(host.as_ref(), &changed).await {
            results.fail_component(&name, error);
        }
    }
    if !results.any_failed()
        && let Some(r) = next
            .release
            .as_ref()
            .filter(|r| r.version != crate::release::build_version())
    {
        match self_update(source, dir, release, good, &next, r).await {
            Ok(()) => {
                tracing::info!(
                    release = %r.version,
                    "new binary in place; the node restarts into it"
                );
                attempt.items = results.items;
                save_attempt(dir, &attempt);
                return Deployed {
                    running: next,
                    attempt,
                    restart: true,
                };
            }
            Err(e) => results.items.push(verge_protocol::ItemResult {
                kind: "release".into(),
                name: r.version.clone(),
                result: ItemOutcome::Failed,
                error: Some(e),
            }),
        }
    }
    let failed = results.any_failed();
    attempt.items = results.items;
    let running = if failed {
        tracing::warn!(
            version = next.version,
            back_to = good.version,
            "revision failed; returning to the last good revision"
        );
        let back = apply::apply(parts, source, Some(&next), good).await;
        displaced.put_back(parts).await;
        if back.any_failed() {
            attempt.error = Some(format!(
                "returning to revision {}: {}",
                good.version,
                back.errors().join("; ")
            ));
        }
        attempt.state = AttemptState::RolledBack;
        attempt.rolled_back_to = Some(good.version);
        good.clone()
    } else {
        attempt.state = AttemptState::Applied;
        next
    };
    attempt.finished_ms = Some(now_ms());
    save_attempt(dir, &attempt);
    Deployed {
        running,
        attempt,
        restart: false,
    }
}

/// The node's own rules and drivers (its config file's or its API's) that
/// a revision's items of the same name replace: when the revision fails,
/// going back to the last good one removes the cloud's items, and these
/// run again as they were.
struct Displaced {
    rules: Vec<verge_rules::RuleConfig>,
    drivers: Vec<verge_drivers::DriverConfig>,
}

impl Displaced {
    /// What `next` would replace of the node's own, `good` running.
    async fn before(parts: &NodeParts, good: &DesiredState, next: &DesiredState) -> Displaced {
        let mut rules = Vec::new();
        for r in &next.rules {
            if !r.id.is_empty()
                && !good.rules.iter().any(|g| g.id == r.id)
                && let Ok(own) = parts.rules.get(&r.id).await
            {
                rules.push(own.config);
            }
        }
        let drivers = parts
            .drivers
            .iter()
            .flat_map(|d| {
                next.drivers
                    .iter()
                    .filter(|x| !good.drivers.iter().any(|g| g.name == x.name))
                    .filter_map(|x| d.get(&x.name).map(|(c, _)| c))
            })
            .collect();
        Displaced { rules, drivers }
    }

    /// Start again what the failed revision replaced and going back
    /// removed.
    async fn put_back(self, parts: &NodeParts) {
        for r in self.rules {
            let id = r.id.clone();
            if parts.rules.get(&id).await.is_err() {
                match parts.rules.create(r).await {
                    Ok(_) => tracing::info!(rule = %id, "the node's own rule runs again"),
                    Err(e) => {
                        tracing::warn!(rule = %id, "the node's own rule did not start again: {e}")
                    }
                }
            }
        }
        let Some(drivers) = &parts.drivers else {
            return;
        };
        for d in self.drivers {
            let name = d.name.clone();
            if drivers.get(&name).is_none() {
                match drivers.create(d).await {
                    Ok(_) => tracing::info!(driver = %name, "the node's own driver runs again"),
                    Err(e) => {
                        tracing::warn!(driver = %name, "the node's own driver did not start again: {e}")
                    }
                }
            }
        }
    }
}

/// Fetch and check the release `r`, keep the running binary as
/// `verge-previous`, cache `next` (to run after the restart) and `good`
/// (to go back to), record the trial and put the new binary at the
/// executable's path. On an error nothing changed but files in the
/// release folder.
async fn self_update(
    source: &artifact::Source<'_>,
    dir: &Path,
    setup: &ReleaseSetup<'_>,
    good: &DesiredState,
    next: &DesiredState,
    r: &verge_protocol::ReleaseRef,
) -> Result<(), String> {
    use crate::{release, update};
    let key = setup.key.ok_or_else(|| {
        "this node was given no release key at join (`--release-key`), so it takes no release"
            .to_owned()
    })?;
    release::check_replaceable(setup.exe)?;
    verge_net::fs::create_private_dir(&setup.dir)
        .map_err(|e| format!("{}: {e}", setup.dir.display()))?;
    let staged = release::fetch(source, &setup.dir, key, r).await?;
    release::replace_file(setup.exe, &setup.dir.join(release::PREVIOUS_BINARY))?;
    let json = |d: &DesiredState| serde_json::to_vec(d).map_err(|e| e.to_string());
    let previous = dir.join(update::PREVIOUS_DESIRED);
    if good.version > 0 {
        store::write_atomic(&previous, &json(good)?, 0o600).map_err(|e| e.to_string())?;
    } else {
        let _ = std::fs::remove_file(&previous);
    }
    let desired = dir.join(crate::agent::DESIRED_FILE);
    let restore = || {
        if good.version > 0 {
            let _ = json(good).map(|b| store::write_atomic(&desired, &b, 0o600));
        } else {
            let _ = std::fs::remove_file(&desired);
        }
        update::clear(&setup.dir);
    };
    let trial = update::Update {
        state: update::UpdateState::Trial,
        from: release::build_version().to_owned(),
        to: r.version.clone(),
        revision: next.version,
        previous_revision: good.version,
        boots: 0,
        started_ms: now_ms(),
    };
    let cached = json(next)
        .and_then(|b| store::write_atomic(&desired, &b, 0o600).map_err(|e| e.to_string()));
    if let Err(e) = cached {
        restore();
        return Err(format!("caching the revision: {e}"));
    }
    update::save(&setup.dir, &trial);
    if let Err(e) = release::replace_file(&staged, setup.exe) {
        restore();
        return Err(e);
    }
    Ok(())
}

/// The apply errors of `attempt`: one line per failed item, then its
/// error as a whole.
pub(crate) fn errors_of(attempt: &ApplyAttempt) -> Vec<String> {
    apply::failed_lines(&attempt.items)
        .chain(attempt.error.clone())
        .collect()
}

impl Results {
    /// Mark component `name` failed (after it applied).
    fn fail_component(&mut self, name: &str, error: String) {
        self.items
            .retain(|i| !(i.kind == "component" && i.name == name));
        self.items.push(verge_protocol::ItemResult {
            kind: "component".into(),
            name: name.to_owned(),
            result: ItemOutcome::Failed,
            error: Some(error),
        });
    }
}

/// Wait for each of `changed` to run its new version healthy at the end of
/// its `update_grace`, with no restart or failure in it; the components
/// that did not, with why. Returns early on the first failure seen.
async fn verdict(host: &dyn ComponentHost, changed: &[&ComponentSpec]) -> Vec<(String, String)> {
    if changed.is_empty() {
        return Vec::new();
    }
    let start = tokio::time::Instant::now();
    let grace = changed
        .iter()
        .map(|c| c.update_grace)
        .max()
        .unwrap_or_default();
    let restarts_at_start: HashMap<String, u64> = host
        .report()
        .iter()
        .filter_map(|c| Some((c["name"].as_str()?.to_owned(), c["restarts"].as_u64()?)))
        .collect();
    loop {
        let report = host.report();
        let find = |name: &str| report.iter().find(|c| c["name"] == name);
        let mut failures = Vec::new();
        let mut all_healthy = true;
        for spec in changed {
            let Some(c) = find(&spec.name) else {
                failures.push((spec.name.clone(), "not running on the node".to_owned()));
                continue;
            };
            let state = c["state"].as_str().unwrap_or_default();
            let restarts = c["restarts"].as_u64().unwrap_or_default();
            let before = restarts_at_start.get(&spec.name).copied().unwrap_or(0);
            let why = c["last_error"].as_str().unwrap_or("no reason given");
            if c["version"] != spec.version.as_str() {
                let reason = c["rollback"].as_str().unwrap_or(why);
                failures.push((
                    spec.name.clone(),
                    format!("version {} did not stay: {reason}", spec.version),
                ));
            } else if matches!(state, "failed" | "unhealthy" | "backoff") || restarts > before {
                failures.push((
                    spec.name.clone(),
                    format!(
                        "version {} is {state} (restarted {}x): {why}",
                        spec.version,
                        restarts - before.min(restarts)
                    ),
                ));
            } else if state != "healthy" {
                all_healthy = false;
            }
        }
        if !failures.is_empty() {
            return failures;
        }
        let waited = start.elapsed();
        if waited >= grace && all_healthy {
            return Vec::new();
        }
        if waited >= grace + HEALTH_MARGIN {
            return changed
                .iter()
                .filter(|s| find(&s.name).is_none_or(|c| c["state"] != "healthy"))
                .map(|s| {
                    (
                        s.name.clone(),
                        format!(
                            "version {} not healthy within {} s",
                            s.version,
                            (grace + HEALTH_MARGIN).as_secs()
                        ),
                    )
                })
                .collect();
        }
        tokio::time::sleep(VERDICT_POLL).await;
    }
}

/// The attempt a previous run of the node left, if any. One still
/// `applying` was cut off by the node's end: it is reported as rolled
/// back to `running` (the cached good state, which the node applies at
/// start).
pub(crate) fn load_attempt(dir: &Path, running: i64) -> Option<ApplyAttempt> {
    let mut a = read_attempt(dir)?;
    if a.state == AttemptState::Applying {
        tracing::warn!(
            version = a.version,
            running,
            "the node stopped while applying a revision; it runs its last good revision"
        );
        a.state = AttemptState::RolledBack;
        a.error = Some("the node stopped while applying it".into());
        a.rolled_back_to = Some(running);
        a.finished_ms = Some(now_ms());
        save_attempt(dir, &a);
    }
    Some(a)
}

/// The attempt in `dir` as it was saved.
pub(crate) fn read_attempt(dir: &Path) -> Option<ApplyAttempt> {
    let path = dir.join(ATTEMPT_FILE);
    let bytes = match store::read_optional(&path) {
        Ok(Some(b)) => b,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!("{}: not read: {e}", path.display());
            return None;
        }
    };
    match serde_json::from_slice(&bytes) {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::warn!("{}: not an apply attempt, ignored: {e}", path.display());
            None
        }
    }
}

pub(crate) fn save_attempt(dir: &Path, a: &ApplyAttempt) {
    let written = serde_json::to_vec(a)
        .map_err(|e| e.to_string())
        .and_then(|b| {
            store::write_atomic(&dir.join(ATTEMPT_FILE), &b, 0o600).map_err(|e| e.to_string())
        });
    if let Err(e) = written {
        tracing::warn!("apply attempt not saved: {e}");
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

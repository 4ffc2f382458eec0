//! One revision at a time: apply it, wait for the verdict of the
//! components it changed, and keep it only when all of it works;
//! otherwise put the node back on its last good revision. The attempt
//! (`attempt.json` beside the cached state) is written before the apply
//! starts, so a node that dies in the middle finds it at its next start
//! and reports it as rolled back instead of leaving it in progress.

use std::collections::HashMap;
use std::path::Path;
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
        components: Vec::new(),
        config: serde_json::Value::Object(serde_json::Map::new()),
    }
}

/// What one deployment came to.
pub(crate) struct Deployed {
    /// The state the node runs now: the revision, or the good one it
    /// returned to.
    pub(crate) running: DesiredState,
    /// How it went (also written to [`ATTEMPT_FILE`]).
    pub(crate) attempt: ApplyAttempt,
}

/// Apply `next` over `good` (the state that runs now). `started` is told
/// the attempt before the apply begins (so the cloud sees it applying).
pub(crate) async fn deploy(
    parts: &NodeParts,
    source: &artifact::Source<'_>,
    dir: &Path,
    good: &DesiredState,
    next: DesiredState,
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
    let failed = results.any_failed();
    attempt.items = results.items;
    let running = if failed {
        tracing::warn!(
            version = next.version,
            back_to = good.version,
            "revision failed; returning to the last good revision"
        );
        let back = apply::apply(parts, source, Some(&next), good).await;
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
    Deployed { running, attempt }
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
    let path = dir.join(ATTEMPT_FILE);
    let bytes = match store::read_optional(&path) {
        Ok(Some(b)) => b,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!("{}: not read: {e}", path.display());
            return None;
        }
    };
    let mut a: ApplyAttempt = match serde_json::from_slice(&bytes) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!("{}: not an apply attempt, ignored: {e}", path.display());
            return None;
        }
    };
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

fn save_attempt(dir: &Path, a: &ApplyAttempt) {
    let written = serde_json::to_vec(a)
        .map_err(|e| e.to_string())
        .and_then(|b| {
            store::write_atomic(&dir.join(ATTEMPT_FILE), &b, 0o600).map_err(|e| e.to_string())
        });
    if let Err(e) = written {
        tracing::warn!("apply attempt not saved: {e}");
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

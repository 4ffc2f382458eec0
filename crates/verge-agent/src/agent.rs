//! The running agent: the desired-state sync loop (long poll, apply, cache)
//! and the heartbeat loop, sharing the agent's status.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use verge_net::{Backoff, now_ms};
use verge_protocol::{DesiredState, node_bearer};

use crate::parts::NodeParts;
use crate::report::Reporter;
use crate::{AgentError, Credentials, apply, http, release, store, update};

/// How long the cloud may hold a desired-state poll.
const WAIT_MS: u64 = 25_000;
/// Time limit of a poll: the wait plus room for the answer.
const POLL_TIMEOUT: Duration = Duration::from_millis(WAIT_MS + 10_000);
/// Heartbeat period.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Least time between two reports sent for component state changes.
const TRANSITION_GAP: Duration = Duration::from_secs(1);
/// Wait after a component state change, so the changes of one event go
/// in one report.
const TRANSITION_SETTLE: Duration = Duration::from_millis(100);
/// Time limit of a heartbeat.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);
/// First retry delay after a failed poll; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Retry delay while the cloud refuses the node's credentials.
const REFUSED_RETRY: Duration = Duration::from_secs(60);
/// The cached desired state in the agent's directory.
pub(crate) const DESIRED_FILE: &str = "desired.json";

/// What the agent is doing, for the node's API and logs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AgentStatus {
    /// The node's id at the cloud.
    pub node_id: String,
    /// The cloud center's URL.
    pub cloud_url: String,
    /// The desired-state version (revision) the node runs: the last one
    /// that applied completely (0 = none).
    pub applied_version: i64,
    /// What failed in the last apply.
    pub apply_errors: Vec<String>,
    /// The last revision tried and how that went.
    pub attempt: Option<verge_protocol::ApplyAttempt>,
    /// When the cloud last answered a poll, ms since the Unix epoch.
    pub last_sync_ms: Option<i64>,
    /// The most recent sync error, cleared by a successful poll.
    pub last_error: Option<String>,
    /// Whether the last poll or heartbeat reached the cloud.
    pub cloud_reachable: bool,
    /// When the cloud last took a heartbeat, ms since the Unix epoch.
    pub last_heartbeat_ms: Option<i64>,
    /// Cloud-managed items found changed on the node and put back by the
    /// last reconciliation (one line each); cleared by one that finds
    /// nothing.
    pub drift: Vec<String>,
    /// When that was, ms since the Unix epoch.
    pub drift_ms: Option<i64>,
}

/// Reads the agent's status; cheap to clone.
#[derive(Clone)]
pub struct StatusHandle {
    ctx: Arc<Ctx>,
}

impl StatusHandle {
    /// The status now.
    pub fn get(&self) -> AgentStatus {
        self.ctx.status().clone()
    }

    /// Whether the rule `id` is deployed by the cloud (so the node's own
    /// API must not change it).
    /// A rule the node keeps local-only is the node's own, not the
    /// cloud's.
    pub fn manages_rule(&self, id: &str) -> bool {
        self.ctx.managed().rules.contains(id)
            && !crate::local_only::kept(&self.ctx.parts, "rule", id)
    }

    /// Whether the function `name` is deployed by the cloud (and not kept
    /// local-only by the node).
    pub fn manages_function(&self, name: &str) -> bool {
        self.ctx.managed().functions.contains(name)
            && !crate::local_only::kept(&self.ctx.parts, "function", name)
    }

    /// Whether the protocol driver `name` is deployed by the cloud (and
    /// not kept local-only by the node).
    pub fn manages_driver(&self, name: &str) -> bool {
        self.ctx.managed().drivers.contains(name)
            && !crate::local_only::kept(&self.ctx.parts, "driver", name)
    }
}

/// The rules, functions and drivers of the desired state last applied.
#[derive(Default)]
struct Managed {
    rules: HashSet<String>,
    functions: HashSet<String>,
    drivers: HashSet<String>,
}

impl Managed {
    fn of(d: &DesiredState) -> Managed {
        Managed {
            rules: d
                .rules
                .iter()
                .filter(|r| !r.id.is_empty())
                .map(|r| r.id.clone())
                .collect(),
            functions: d.functions.iter().map(|f| f.name.clone()).collect(),
            drivers: d.drivers.iter().map(|x| x.name.clone()).collect(),
        }
    }
}

/// State shared by the agent's handle and its two loops.
struct Ctx {
    /// The cloud and the node's credentials.
    creds: Credentials,
    /// `{node_id}.{secret}` for `Authorization: Bearer`.
    token: String,
    /// The agent's directory (`<data_dir>/cloud`).
    dir: PathBuf,
    /// The node.
    parts: NodeParts,
    /// Status, shown by [`Agent::status`] and reported by the heartbeat.
    status: Mutex<AgentStatus>,
    /// Asks the heartbeat loop to report now (after an apply).
    report_now: Notify,
    /// What the cloud manages on the node now.
    managed: Mutex<Managed>,
    /// The running executable, read at start (before any swap).
    exe: PathBuf,
    /// `<data_dir>/release`.
    release_dir: PathBuf,
    /// `true`: the node must restart (into a new binary, or back into the
    /// previous one).
    restart: watch::Sender<bool>,
    /// How long a new binary on trial has to confirm.
    grace: Duration,
}

impl Ctx {
    /// Where component artifacts are fetched from.
    fn source(&self) -> crate::artifact::Source<'_> {
        crate::artifact::Source {
            cloud_url: &self.creds.cloud_url,
            token: &self.token,
        }
    }

    /// What a revision's release needs.
    fn release_setup(&self) -> crate::deploy::ReleaseSetup<'_> {
        crate::deploy::ReleaseSetup {
            key: self.creds.release_key.as_deref(),
            dir: self.release_dir.clone(),
            exe: &self.exe,
        }
    }

    fn status(&self) -> std::sync::MutexGuard<'_, AgentStatus> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn managed(&self) -> std::sync::MutexGuard<'_, Managed> {
        self.managed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Settings of [`Agent::start_with`] that only tests or special setups
/// change.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// The executable a release replaces; `None`: the running one
    /// (`std::env::current_exe`, read at start).
    pub exe: Option<PathBuf>,
    /// How long a new binary on trial has to confirm; `None`:
    /// [`update::grace`] (120 s, or `VERGE_RELEASE_GRACE_S`).
    pub release_grace: Option<Duration>,
}

/// The node's cloud agent. Dropping it stops its loops too;
/// [`Agent::shutdown`] also waits for them.
pub struct Agent {
    /// Shared with the loops.
    ctx: Arc<Ctx>,
    /// `true` (or dropped) stops the loops.
    stop: watch::Sender<bool>,
    /// The sync loop.
    sync: JoinHandle<()>,
    /// The heartbeat loop.
    heartbeat: JoinHandle<()>,
}

impl Agent {
    /// Start the agent with its directory `dir` (`<data_dir>/cloud`). The
    /// cached desired state, if any, is applied before this returns, so the
    /// node runs its last state even when the cloud is unreachable; then
    /// the sync and heartbeat loops start. When the credentials name a CA
    /// file, the process's HTTP client verifies the cloud against it
    /// ([`http::set_ca_file`]).
    pub async fn start(
        creds: Credentials,
        dir: PathBuf,
        parts: NodeParts,
    ) -> Result<Agent, AgentError> {
        Agent::start_with(creds, dir, parts, AgentOptions::default()).await
    }

    /// [`Agent::start`] with `options`.
    pub async fn start_with(
        creds: Credentials,
        dir: PathBuf,
        parts: NodeParts,
        options: AgentOptions,
    ) -> Result<Agent, AgentError> {
        if let Some(ca) = &creds.ca_file
            && http::ca_file().as_deref() != Some(ca.as_path())
        {
            http::set_ca_file(Some(ca))?;
        }
        verge_net::fs::create_private_dir(&dir).map_err(|source| AgentError::Io {
            path: dir.clone(),
            source,
        })?;
        let release_dir = parts.data_dir.join(release::RELEASE_DIR);
        let exe = match options.exe {
            Some(exe) => exe,
            None => std::env::current_exe().unwrap_or_else(|e| {
                tracing::warn!(
                    "the running executable is unknown, releases cannot be installed: {e}"
                );
                PathBuf::new()
            }),
        };
        let at_start = update::at_start_once(&release_dir, release::build_version());
        if let update::AtStart::Abandoned(u, why) = &at_start {
            tracing::warn!("{why}");
            if let Err(e) = update::restore_desired(&dir) {
                tracing::error!("the last good revision was not put back: {e}");
            }
            update::clear(&release_dir);
            finish_trial(&dir, u, Err(why));
        }
        // A data dir reused for another node keeps the old node's state:
        // never run that.
        let cached = load_desired(&dir).filter(|d| {
            let mine = d.node_id == creds.node_id;
            if !mine {
                tracing::warn!(
                    cached = %d.node_id,
                    node = %creds.node_id,
                    "the cached desired state belongs to another node; not applied"
                );
            }
            mine
        });
        let token = node_bearer(&creds.node_id, &creds.secret)
            .trim_start_matches("Bearer ")
            .to_owned();
        let status = AgentStatus {
            node_id: creds.node_id.clone(),
            cloud_url: creds.cloud_url.clone(),
            ..AgentStatus::default()
        };
        let ctx = Arc::new(Ctx {
            creds,
            token,
            dir,
            parts,
            status: Mutex::new(status),
            report_now: Notify::new(),
            managed: Mutex::new(Managed::default()),
            exe,
            release_dir,
            restart: watch::channel(false).0,
            grace: options.release_grace.unwrap_or_else(update::grace),
        });
        if let Some(d) = &cached {
            tracing::info!(version = d.version, "applying the cached desired state");
            let results = apply::apply(&ctx.parts, &ctx.source(), None, d).await;
            *ctx.managed() = Managed::of(d);
            let mut s = ctx.status();
            s.applied_version = d.version;
            s.apply_errors = results.errors();
        }
        let running = cached.as_ref().map_or(0, |d| d.version);
        let (stop, stop_rx) = watch::channel(false);
        let mut trial = None;
        let attempt = match at_start {
            update::AtStart::Trial(u) => {
                tracing::info!(
                    release = %u.to,
                    boots = u.boots,
                    grace_s = ctx.grace.as_secs(),
                    "this binary is on trial: it must apply its revision and reach the cloud"
                );
                ctx.status().applied_version = u.previous_revision;
                trial = Some(tokio::spawn(trial_watch(ctx.clone(), u, stop_rx.clone())));
                crate::deploy::read_attempt(&ctx.dir)
            }
            update::AtStart::Revert(u, why) => {
                tracing::error!("{why}");
                revert(&ctx, &u, why);
                trial = Some(tokio::spawn(async { false }));
                crate::deploy::read_attempt(&ctx.dir)
            }
            update::AtStart::Run | update::AtStart::Abandoned(..) => {
                crate::deploy::load_attempt(&ctx.dir, running)
            }
        };
        // A revision that failed before the restart is not fetched again:
        // the poll asks for what is newer than it.
        let seen = attempt.as_ref().map_or(running, |a| a.version.max(running));
        ctx.status().attempt = attempt;
        let sync = tokio::spawn(sync_loop(ctx.clone(), cached, seen, trial, stop_rx.clone()));
        let heartbeat = tokio::spawn(heartbeat_loop(ctx.clone(), stop_rx));
        Ok(Agent {
            ctx,
            stop,
            sync,
            heartbeat,
        })
    }

    /// The agent's status now.
    pub fn status(&self) -> AgentStatus {
        self.ctx.status().clone()
    }

    /// Resolves when the node must restart its executable: a new binary
    /// was put in place, or a new binary on trial was reverted. The node
    /// stops as on SIGTERM and executes its binary again with the same
    /// arguments.
    pub fn restart_requested(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.ctx.restart.subscribe();
        async move {
            if rx.wait_for(|r| *r).await.is_err() {
                // The agent is gone without asking.
                std::future::pending::<()>().await;
            }
        }
    }

    /// A cheap handle on [`Agent::status`] for the node's HTTP API.
    pub fn status_handle(&self) -> StatusHandle {
        StatusHandle {
            ctx: self.ctx.clone(),
        }
    }

    /// Stop both loops (a poll in progress is abandoned) and wait for them.
    /// An apply in progress finishes first.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.sync.await;
        let _ = self.heartbeat.await;
    }
}

/// The cached desired state; a missing file is `None`, an unreadable one
/// is logged and `None` (the next poll brings the state again).
fn load_desired(dir: &std::path::Path) -> Option<DesiredState> {
    let path = dir.join(DESIRED_FILE);
    match store::read_optional(&path) {
        Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::error!("{}: not a desired state, ignored: {e}", path.display());
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            tracing::error!("cached desired state not read: {e}");
            None
        }
    }
}

/// Sleep until `at`, unless asked to stop first; `true` when asked to stop.
async fn sleep_until_or_stop(at: tokio::time::Instant, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep_until(at) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// Sleep, unless asked to stop first; `true` when asked to stop.
async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// What one poll came to.
enum Poll {
    /// A new desired state.
    State(Box<DesiredState>),
    /// No change within the wait.
    Unchanged,
    /// The cloud refused the node's credentials.
    Refused(String),
    /// Anything else: retry with backoff.
    Failed(String),
}

async fn poll(ctx: &Ctx, version: i64) -> Poll {
    let url = verge_protocol::paths::desired_poll(
        &ctx.creds.cloud_url,
        verge_protocol::paths::DesiredQuery {
            version,
            wait_ms: WAIT_MS,
        },
    );
    match http::request("GET", &url, Some(&ctx.token), None, POLL_TIMEOUT).await {
        Ok((200, body)) => match serde_json::from_slice::<DesiredState>(&body) {
            Ok(d) => Poll::State(Box::new(d)),
            Err(e) => Poll::Failed(format!("the cloud's desired state is invalid: {e}")),
        },
        Ok((204, _)) => Poll::Unchanged,
        Ok((401, body)) => Poll::Refused(http::status_error(401, &body).to_string()),
        Ok((status, body)) => Poll::Failed(http::status_error(status, &body).to_string()),
        Err(e) => Poll::Failed(e.to_string()),
    }
}

/// Long-poll the cloud; deploy, cache and report each new revision.
/// `prev` is the last good state (the one that runs), `seen` the newest
/// revision the node has tried: the poll waits for one newer than that.
async fn sync_loop(
    ctx: Arc<Ctx>,
    mut prev: Option<DesiredState>,
    mut seen: i64,
    trial: Option<JoinHandle<bool>>,
    mut stop: watch::Receiver<bool>,
) {
    // A new binary on trial takes no new revision before it is confirmed;
    // reverted, the node restarts.
    if let Some(t) = trial {
        let confirmed = tokio::select! {
            c = t => c.unwrap_or(false),
            _ = stop.changed() => return,
        };
        if !confirmed {
            return;
        }
    }
    // ±20 %, so that nodes cut off together do not come back together.
    let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX).with_jitter(0.2);
    // The error last logged, so a retry does not log it again.
    let mut logged: Option<String> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let outcome = tokio::select! {
            o = poll(&ctx, seen) => o,
            _ = stop.changed() => return,
        };
        let reachable = !matches!(outcome, Poll::Failed(_));
        if reachable {
            if logged.take().is_some() {
                tracing::info!(cloud = %ctx.creds.cloud_url, "cloud reachable again");
            }
            backoff.reset();
        }
        match outcome {
            Poll::State(d) => {
                mark(&ctx, None);
                if d.node_id != ctx.creds.node_id {
                    tracing::warn!(
                        expected = %ctx.creds.node_id,
                        got = %d.node_id,
                        "the desired state names another node; applied anyway"
                    );
                }
                if d.version == seen {
                    // The cloud should have answered 204; do not spin.
                    if sleep_or_stop(BACKOFF_MIN, &mut stop).await {
                        return;
                    }
                    continue;
                }
                seen = d.version;
                let good = prev
                    .take()
                    .unwrap_or_else(|| crate::deploy::empty_state(&ctx.creds.node_id));
                let deployed = crate::deploy::deploy(
                    &ctx.parts,
                    &ctx.source(),
                    &ctx.dir,
                    &good,
                    *d,
                    &ctx.release_setup(),
                    |attempt| {
                        ctx.status().attempt = Some(attempt.clone());
                        ctx.report_now.notify_one();
                    },
                )
                .await;
                if deployed.restart {
                    ctx.status().attempt = Some(deployed.attempt);
                    ctx.restart.send_replace(true);
                    return;
                }
                let running = deployed.running;
                *ctx.managed() = Managed::of(&running);
                if deployed.attempt.state == verge_protocol::AttemptState::Applied
                    && let Err(e) = save_desired(&ctx.dir, &running)
                {
                    // It runs; after a restart the previous cached state
                    // would run instead, and the cloud's next poll brings
                    // this one again.
                    tracing::error!("desired state not cached: {e}");
                }
                {
                    let mut s = ctx.status();
                    s.applied_version = running.version;
                    s.apply_errors = crate::deploy::errors_of(&deployed.attempt);
                    s.attempt = Some(deployed.attempt);
                }
                prev = Some(running);
                ctx.report_now.notify_one();
            }
            Poll::Unchanged => {
                mark(&ctx, None);
                // Each quiet poll also checks that what the cloud manages
                // still runs as it said: a change made on the node is put
                // back within one poll and reported as drift.
                if let Some(d) = &prev {
                    let restored = apply::reconcile(&ctx.parts, d).await;
                    if !restored.is_empty() {
                        tracing::warn!(
                            "cloud-managed items changed on the node were restored: {}",
                            restored.join("; ")
                        );
                        let mut s = ctx.status();
                        s.drift = restored;
                        s.drift_ms = Some(now_ms());
                        drop(s);
                        ctx.report_now.notify_one();
                    } else if !ctx.status().drift.is_empty() {
                        // A reconciliation that found nothing: the node
                        // runs its revision again (`drift_ms` keeps when
                        // it last did not).
                        ctx.status().drift.clear();
                        ctx.report_now.notify_one();
                    }
                }
            }
            Poll::Refused(message) => {
                let text = format!("the cloud refused the node's credentials: {message}");
                if logged.as_deref() != Some(text.as_str()) {
                    tracing::error!(
                        node = %ctx.creds.node_id,
                        "{text}; the node was deleted in the cloud or joined again elsewhere. \
                         Running from the cached desired state; retrying every {}s",
                        REFUSED_RETRY.as_secs()
                    );
                    logged = Some(text.clone());
                }
                mark(&ctx, Some(text));
                if sleep_or_stop(REFUSED_RETRY, &mut stop).await {
                    return;
                }
            }
            Poll::Failed(message) => {
                if logged.as_deref() != Some(message.as_str()) {
                    tracing::warn!(
                        cloud = %ctx.creds.cloud_url,
                        "desired-state sync failed, retrying with backoff: {message}"
                    );
                    logged = Some(message.clone());
                }
                {
                    let mut s = ctx.status();
                    s.cloud_reachable = false;
                    s.last_error = Some(message);
                }
                let wait = backoff.next_delay();
                if sleep_or_stop(wait, &mut stop).await {
                    return;
                }
            }
        }
    }
}

/// Wait, within the grace, for the new binary's revision to have applied
/// with no failed item and for a heartbeat the cloud took; then confirm the
/// release (`true`). Otherwise revert to the previous binary (`false`).
async fn trial_watch(ctx: Arc<Ctx>, u: update::Update, mut stop: watch::Receiver<bool>) -> bool {
    let grace = ctx.grace;
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        let healthy = {
            let s = ctx.status();
            s.apply_errors.is_empty() && s.last_heartbeat_ms.is_some()
        };
        if healthy {
            tracing::info!(release = %u.to, "the new binary is healthy: release confirmed");
            let a = finish_trial(&ctx.dir, &u, Ok(()));
            let mut done = u.clone();
            done.state = update::UpdateState::Confirmed;
            update::save(&ctx.release_dir, &done);
            update::prune(&ctx.release_dir);
            {
                let mut s = ctx.status();
                s.applied_version = u.revision;
                s.attempt = Some(a);
            }
            ctx.report_now.notify_one();
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            let why = update::grace_passed(&u, grace);
            tracing::error!("{why}");
            revert(&ctx, &u, why);
            return false;
        }
        if sleep_or_stop(Duration::from_millis(200), &mut stop).await {
            return false;
        }
    }
}

/// Put the previous binary and revision back, record the attempt as
/// rolled back for `why`, and ask for the restart into it.
fn revert(ctx: &Ctx, u: &update::Update, why: String) {
    let why = match update::revert(&ctx.release_dir, &ctx.dir, &ctx.exe) {
        Ok(()) => why,
        Err(e) => {
            tracing::error!("the previous binary was not put back: {e}");
            format!("{why}; putting the previous binary back failed: {e}")
        }
    };
    let a = finish_trial(&ctx.dir, u, Err(&why));
    ctx.status().attempt = Some(a);
    ctx.restart.send_replace(true);
}

/// Finish the attempt of the trial's revision: applied with the item
/// `release`, or rolled back to the previous revision with the error.
fn finish_trial(
    dir: &std::path::Path,
    u: &update::Update,
    outcome: Result<(), &String>,
) -> verge_protocol::ApplyAttempt {
    use verge_protocol::{ApplyAttempt, AttemptState, ItemOutcome, ItemResult};
    let mut a = crate::deploy::read_attempt(dir)
        .filter(|a| a.version == u.revision)
        .unwrap_or_else(|| ApplyAttempt {
            version: u.revision,
            started_ms: u.started_ms,
            ..ApplyAttempt::default()
        });
    a.items.retain(|i| i.kind != "release");
    let (state, result, error) = match outcome {
        Ok(()) => (AttemptState::Applied, ItemOutcome::Applied, None),
        Err(why) => (
            AttemptState::RolledBack,
            ItemOutcome::Failed,
            Some(why.clone()),
        ),
    };
    a.items.push(ItemResult {
        kind: "release".into(),
        name: u.to.clone(),
        result,
        error: error.clone(),
    });
    a.state = state;
    if state == AttemptState::RolledBack {
        a.rolled_back_to = Some(u.previous_revision);
        a.error = error;
    }
    a.finished_ms = Some(crate::deploy::now_ms());
    crate::deploy::save_attempt(dir, &a);
    a
}

/// Record an answer from the cloud (with the error it carried, if any).
fn mark(ctx: &Ctx, error: Option<String>) {
    let mut s = ctx.status();
    s.cloud_reachable = true;
    s.last_sync_ms = Some(now_ms());
    s.last_error = error;
}

fn save_desired(dir: &std::path::Path, d: &DesiredState) -> Result<(), AgentError> {
    let bytes =
        serde_json::to_vec(d).map_err(|e| AgentError::Invalid(format!("desired state: {e}")))?;
    store::write_atomic(&dir.join(DESIRED_FILE), &bytes, 0o600)
}

/// Report every [`HEARTBEAT`] and right after each apply.
async fn heartbeat_loop(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let mut reporter = Reporter::new(&ctx.parts);
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let url = format!("{}{}", ctx.creds.cloud_url, verge_protocol::paths::STATUS);
    let mut failing: Option<String> = None;
    let mut transitions = ctx.parts.components.as_ref().and_then(|c| c.transitions());
    let mut sessions = ctx.parts.devices.as_ref().and_then(|d| d.changes());
    let mut last_sent = tokio::time::Instant::now();
    loop {
        let transition = async {
            match transitions.as_mut() {
                Some(t) => t.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let session = async {
            match sessions.as_mut() {
                Some(t) => t.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => {}
            _ = ctx.report_now.notified() => {}
            alive = transition => {
                if !alive {
                    transitions = None;
                    continue;
                }
                // A burst of changes (a crash loop, an update) is one
                // report, at most one per TRANSITION_GAP.
                let at = (last_sent + TRANSITION_GAP).max(tokio::time::Instant::now() + TRANSITION_SETTLE);
                if sleep_until_or_stop(at, &mut stop).await {
                    return;
                }
                if let Some(t) = transitions.as_mut() {
                    t.borrow_and_update();
                }
            }
            alive = session => {
                if !alive {
                    sessions = None;
                    continue;
                }
                // A cloud device connected or disconnected: reported
                // within a second, a burst as one report.
                let at = (last_sent + TRANSITION_GAP).max(tokio::time::Instant::now() + TRANSITION_SETTLE);
                if sleep_until_or_stop(at, &mut stop).await {
                    return;
                }
                if let Some(t) = sessions.as_mut() {
                    t.borrow_and_update();
                }
            }
            _ = stop.changed() => return,
        }
        last_sent = tokio::time::Instant::now();
        let (version, errors, drift, attempt) = {
            let s = ctx.status();
            (
                s.applied_version,
                s.apply_errors.clone(),
                s.drift.clone(),
                s.attempt.clone(),
            )
        };
        let mut report = reporter.build(&ctx.parts, version, errors).await;
        report.drift = drift;
        report.attempt = attempt;
        let body = match serde_json::to_value(&report) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("status report not serialized: {e}");
                continue;
            }
        };
        let sent = tokio::select! {
            r = http::request("POST", &url, Some(&ctx.token), Some(&body), HEARTBEAT_TIMEOUT) => r,
            _ = stop.changed() => return,
        };
        let result = sent.and_then(|(status, bytes)| http::check(status, bytes).map(drop));
        match result {
            Ok(()) => {
                {
                    let mut s = ctx.status();
                    s.cloud_reachable = true;
                    s.last_heartbeat_ms = Some(now_ms());
                }
                if failing.take().is_some() {
                    tracing::info!("heartbeats reach the cloud again");
                }
            }
            Err(e) => {
                ctx.status().cloud_reachable = false;
                let message = e.to_string();
                if failing.is_none() {
                    tracing::warn!("heartbeat not delivered (the node keeps running): {message}");
                } else if failing.as_deref() != Some(message.as_str()) {
                    tracing::debug!("heartbeat not delivered: {message}");
                }
                failing = Some(message);
            }
        }
        // The report just sent covers any apply that asked for one meanwhile.
        tick.reset();
    }
}

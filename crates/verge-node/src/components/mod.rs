//! User components: the supervisor of the node's process and container
//! components (`[[components]]` in the node's config file). Each component
//! has one task that owns its process or container: it waits for the
//! component's dependencies to be healthy, starts the process in its own
//! process group (or the container through the engine's API, [`container`]),
//! probes its health, restarts it per its policy with exponential backoff
//! until the restart limit makes it `failed`, and stops it with SIGTERM,
//! then SIGKILL after its stop timeout. Output goes to a bounded ring of
//! lines per component ([`log`]).
//!
//! Invariants: nothing here blocks the node (every wait is in a
//! component's own task, every probe and stop has a timeout); restarts and
//! logs are bounded per component; one component's failure changes only
//! its own state.

pub mod bus;
pub mod log;

mod container;
mod env;
mod health;
mod process;
mod rpc;
mod supervise;
mod usage;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use verge_protocol::{ComponentError, ComponentSpec, component_start_order};

use bus::Bus;
use log::{LogLine, LogRing};

pub use container::socket_path as engine_socket;

/// Lines kept per component.
pub const LOG_LINES: usize = 1000;
/// Bytes of text kept per component.
pub const LOG_BYTES: usize = 64 * 1024;

/// A component's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Preparing its directory.
    Installing,
    /// Waiting for its dependencies, or spawning.
    Starting,
    /// Its process runs; its health check has not passed yet.
    Running,
    /// Its process runs and its health check passes.
    Healthy,
    /// Its health check failed `health.failures` times in a row.
    Unhealthy,
    /// Being stopped (SIGTERM, then SIGKILL after the stop timeout).
    Stopping,
    /// Not running, and not to be restarted.
    Stopped,
    /// Waiting before a restart.
    Backoff,
    /// Not running: its restart policy or restart limit gave up.
    Failed,
}

impl State {
    /// Every state, for metrics.
    pub const ALL: [State; 9] = [
        State::Installing,
        State::Starting,
        State::Running,
        State::Healthy,
        State::Unhealthy,
        State::Stopping,
        State::Stopped,
        State::Backoff,
        State::Failed,
    ];

    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Installing => "installing",
            State::Starting => "starting",
            State::Running => "running",
            State::Healthy => "healthy",
            State::Unhealthy => "unhealthy",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Backoff => "backoff",
            State::Failed => "failed",
        }
    }
}

/// Where a component's spec comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The node's config file.
    Config,
    /// The cloud's desired state.
    Cloud,
}

/// A component as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentInfo {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// `process` or `container`.
    pub kind: &'static str,
    /// Where its spec comes from.
    pub source: Source,
    /// Lifecycle state.
    pub state: State,
    /// Whether the last health probe passed (`None`: not probed since the
    /// last start).
    pub healthy: Option<bool>,
    /// Restarts since the node started.
    pub restarts: u64,
    /// Seconds since its process started; none when not running.
    pub uptime_seconds: Option<u64>,
    /// Its process id (also its process group); none when not running.
    /// For a container: its main process on the host, when the engine
    /// says.
    pub pid: Option<u32>,
    /// A container component's container id (12 characters) while it
    /// runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Why it last failed (exit status, spawn error, health check).
    pub last_error: Option<String>,
    /// Set when an update to another version was rolled back: which
    /// version failed and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback: Option<String>,
    /// Dependencies it waits for to be healthy.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<String>,
    /// Log lines held.
    pub log_lines: usize,
    /// Log lines dropped from its ring.
    pub log_lines_dropped: u64,
    /// CPU use of its process (the group leader) in percent of one core,
    /// since the previous reading at least a second before (or since it
    /// started); none when not running.
    pub cpu_percent: Option<f64>,
    /// CPU seconds its process has used; none when not running.
    pub cpu_seconds: Option<f64>,
    /// Resident memory of its process in bytes; none when not running.
    pub memory_bytes: Option<u64>,
    /// Its last [`HISTORY`] state changes, oldest first: every change
    /// reaches the cloud with the next status report, even when several
    /// happen between two reports.
    pub history: Vec<Transition>,
}

/// State changes a component keeps.
pub const HISTORY: usize = 16;

/// One state change of a component.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    /// When, in milliseconds since 1970.
    pub at_ms: u64,
    /// The state it entered.
    pub state: State,
    /// The last failure, when it entered `backoff`, `failed` or
    /// `unhealthy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What the API asks of a component's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Want {
    /// Keep it running.
    run: bool,
    /// Bumped by start (after failed or stopped) and restart: a new run
    /// with a fresh restart history.
    generation: u64,
    /// The node stops, or the component is removed or replaced: end the
    /// task.
    exit: bool,
}

/// A component's mutable status.
#[derive(Debug)]
struct Status {
    state: State,
    healthy: Option<bool>,
    restarts: u64,
    started: Option<Instant>,
    pid: Option<u32>,
    container_id: Option<String>,
    last_error: Option<String>,
    rollback: Option<String>,
    waiting_for: Vec<String>,
    history: std::collections::VecDeque<Transition>,
}

/// One component: its spec and what its task shares.
struct Entry {
    spec: ComponentSpec,
    source: Source,
    workdir: PathBuf,
    /// Whether `workdir` is the node's own (created at install).
    own_workdir: bool,
    status: Mutex<Status>,
    logs: Arc<Mutex<LogRing>>,
    /// The container engine (used by container components only).
    engine: Arc<container::Engine>,
    want: watch::Sender<Want>,
    /// Bumped on every status change of any component.
    changed: Arc<watch::Sender<u64>>,
    /// Bumped when any component's lifecycle state changes.
    transitions: Arc<watch::Sender<u64>>,
    /// The components of the node, to look dependencies up by name.
    set: Weak<Set>,
    /// The node's MQTT side: credentials at each start, heartbeats.
    bus: Option<Bus>,
    /// CPU readings of its process.
    usage: Mutex<usage::Sampler>,
}

impl Entry {
    fn update(&self, f: impl FnOnce(&mut Status)) {
        let moved = match self.status.lock() {
            Ok(mut s) => {
                let before = s.state;
                f(&mut s);
                let moved = s.state != before;
                if moved {
                    let reason = match s.state {
                        State::Backoff | State::Failed | State::Unhealthy => s.last_error.clone(),
                        _ => None,
                    };
                    if s.history.len() >= HISTORY {
                        s.history.pop_front();
                    }
                    let state = s.state;
                    s.history.push_back(Transition {
                        at_ms: now_ms(),
                        state,
                        reason,
                    });
                }
                moved
            }
            Err(_) => false,
        };
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
        if moved {
            self.transitions.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    fn state(&self) -> State {
        self.status.lock().map(|s| s.state).unwrap_or(State::Failed)
    }

    /// The state of each dependency that is not healthy (`None`: no such
    /// component now).
    fn unhealthy_dependencies(&self) -> Vec<String> {
        let Some(set) = self.set.upgrade() else {
            return self.spec.depends_on.clone();
        };
        self.spec
            .depends_on
            .iter()
            .filter(|d| set.find(d).map(|e| e.state()) != Some(State::Healthy))
            .cloned()
            .collect()
    }

    fn info(&self) -> ComponentInfo {
        let (log_lines, log_lines_dropped) = self
            .logs
            .lock()
            .map(|l| (l.len(), l.dropped()))
            .unwrap_or_default();
        let s = self.status.lock();
        let s = s.as_deref();
        let running = s.ok().and_then(|s| s.pid.zip(s.started));
        let sample = running.and_then(|(pid, started)| {
            self.usage
                .lock()
                .ok()
                .and_then(|mut u| u.sample(pid, started))
        });
        ComponentInfo {
            name: self.spec.name.clone(),
            version: self.spec.version.clone(),
            kind: self.spec.kind.as_str(),
            source: self.source,
            state: s.map(|s| s.state).unwrap_or(State::Failed),
            healthy: s.ok().and_then(|s| s.healthy),
            restarts: s.map(|s| s.restarts).unwrap_or_default(),
            uptime_seconds: s
                .ok()
                .and_then(|s| s.started)
                .map(|t| t.elapsed().as_secs()),
            pid: s.ok().and_then(|s| s.pid),
            container_id: s.ok().and_then(|s| s.container_id.clone()),
            last_error: s.ok().and_then(|s| s.last_error.clone()),
            rollback: s.ok().and_then(|s| s.rollback.clone()),
            waiting_for: s.map(|s| s.waiting_for.clone()).unwrap_or_default(),
            log_lines,
            log_lines_dropped,
            cpu_percent: sample.map(|(_, p)| p),
            cpu_seconds: sample.map(|(u, _)| u.cpu_seconds),
            memory_bytes: sample.map(|(u, _)| u.memory_bytes),
            history: s
                .map(|s| s.history.iter().cloned().collect())
                .unwrap_or_default(),
        }
    }
}

/// Milliseconds since 1970.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// An API call on a component that cannot be done.
#[derive(Debug, thiserror::Error)]
pub enum ComponentsError {
    /// No component has this name.
    #[error("no component named `{0}`")]
    NotFound(String),
}

/// One component of the set: its entry and its task.
struct Slot {
    entry: Arc<Entry>,
    task: Option<JoinHandle<()>>,
}

/// An update that was rolled back: the spec that failed is not tried
/// again until the cloud asks for another, and a restart runs `good`
/// instead of it. Kept in `<data_dir>/components/rollbacks.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Rollback {
    refused: ComponentSpec,
    good: ComponentSpec,
    reason: String,
}

/// The file the rollbacks are kept in.
const ROLLBACKS_FILE: &str = "rollbacks.json";

/// The node's components, in start order (dependencies first).
struct Set {
    slots: Mutex<Vec<Slot>>,
    data_dir: PathBuf,
    /// The container engine (used by container components only).
    engine: Arc<container::Engine>,
    /// The node's MQTT side: credentials at each start, heartbeats.
    bus: Option<Bus>,
    /// True ends every log follower (the node stops).
    follow_end: Arc<watch::Sender<bool>>,
    changed: Arc<watch::Sender<u64>>,
    transitions: Arc<watch::Sender<u64>>,
    /// One apply or shutdown at a time.
    applying: tokio::sync::Mutex<bool>,
    /// Rolled-back updates by component name (persisted).
    rollbacks: Mutex<BTreeMap<String, Rollback>>,
    /// The old specs of updates still within their grace (their files
    /// are the way back).
    pending: Mutex<Vec<ComponentSpec>>,
}

impl Set {
    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<ComponentSpec>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn rollbacks(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Rollback>> {
        self.rollbacks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Write the rollbacks; a failure is logged (they hold on until the
    /// node restarts).
    fn save_rollbacks(&self) {
        let text = match serde_json::to_vec_pretty(&*self.rollbacks()) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("rollbacks not saved: {e}");
                return;
            }
        };
        let dir = self.data_dir.join("components");
        let saved = std::fs::create_dir_all(&dir)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                verge_agent::write_atomic(&dir.join(ROLLBACKS_FILE), &text, 0o600)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = saved {
            tracing::warn!("rollbacks not saved: {e}");
        }
    }

    fn find(&self, name: &str) -> Option<Arc<Entry>> {
        self.slots()
            .iter()
            .find(|s| s.entry.spec.name == name)
            .map(|s| s.entry.clone())
    }
}

/// How long a task may take to end after its stop timeout before it is
/// aborted (which kills its process); a container's stop and removal are
/// engine calls, so it gets more.
fn end_slack(spec: &ComponentSpec) -> Duration {
    match spec.kind {
        verge_protocol::ComponentKind::Process => Duration::from_secs(2),
        verge_protocol::ComponentKind::Container => Duration::from_secs(10),
    }
}

/// Ask `entry`'s task to end and wait for it within its stop timeout
/// (then abort it, which kills its process); then its MQTT credentials
/// are revoked and its log followers end.
async fn end_task(entry: &Entry, task: Option<JoinHandle<()>>) {
    stop_task(entry, task).await;
    // Its log followers end once they have read the last lines.
    if let Ok(mut l) = entry.logs.lock() {
        l.close();
    }
}

/// The first part of [`end_task`].
async fn stop_task(entry: &Entry, task: Option<JoinHandle<()>>) {
    entry.want.send_modify(|w| w.exit = true);
    if let Some(task) = task {
        let abort = task.abort_handle();
        if tokio::time::timeout(entry.spec.stop_timeout + end_slack(&entry.spec), task)
            .await
            .is_err()
        {
            abort.abort();
            // Aborting drops the child (kill_on_drop kills the leader
            // only) or the container handle (which stops nothing): finish
            // the job.
            let pid = entry.status.lock().ok().and_then(|s| s.pid);
            match entry.spec.kind {
                verge_protocol::ComponentKind::Process => {
                    if let Some(pid) = pid {
                        process::signal_group(pid, process::Signal::Kill);
                    }
                }
                verge_protocol::ComponentKind::Container => {
                    entry.engine.force_remove(&entry.spec.name).await;
                }
            }
            tracing::warn!(component = %entry.spec.name, "component did not stop in time; killed");
        }
    }
    if let Some(bus) = &entry.bus {
        bus.revoke(&entry.spec.name).await;
    }
}

/// The running supervisor; clones share it.
#[derive(Clone)]
pub struct Components {
    set: Arc<Set>,
}

/// How the supervisor reaches what runs container components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentsOptions {
    /// The container engine's unix socket (Docker Engine API).
    pub engine: PathBuf,
    /// Pull a container image that is not on the engine.
    pub pull: bool,
    /// The node's name, for the `io.verge.node` container label.
    pub node: String,
}

impl Default for ComponentsOptions {
    fn default() -> Self {
        ComponentsOptions {
            engine: PathBuf::from("/var/run/docker.sock"),
            pull: true,
            node: "verge-node".to_owned(),
        }
    }
}

impl Components {
    /// [`Components::start_with`] the default options (Docker's socket).
    pub fn start(specs: &[ComponentSpec], data_dir: &Path) -> Result<Components, ComponentError> {
        Components::start_with(specs, data_dir, &ComponentsOptions::default(), None)
    }

    /// [`start`](Self::start) with the node's MQTT [`Bus`].
    pub fn start_with_bus(
        specs: &[ComponentSpec],
        data_dir: &Path,
        bus: Option<Bus>,
    ) -> Result<Components, ComponentError> {
        Components::start_with(specs, data_dir, &ComponentsOptions::default(), bus)
    }

    /// Check `specs` (the node config's components: names, dependencies,
    /// cycles) and start one task per component; components without their
    /// own `workdir` run in `<data_dir>/components/<name>/<version>`;
    /// containers run on the engine of `options`. With the node's MQTT
    /// [`Bus`], each component gets its own broker credentials at every
    /// start (in `VERGE_MQTT_*`), after the node serves its listeners, and
    /// the `mqtt` health check reads its heartbeats. More components come
    /// and go with [`Components::apply`]. Call inside a tokio runtime.
    pub fn start_with(
        specs: &[ComponentSpec],
        data_dir: &Path,
        options: &ComponentsOptions,
        bus: Option<Bus>,
    ) -> Result<Components, ComponentError> {
        let order = component_start_order(specs)?;
        let engine = Arc::new(container::Engine::new(
            options.engine.clone(),
            options.pull,
            &options.node,
            data_dir,
        ));
        let set = Arc::new(Set {
            slots: Mutex::new(Vec::new()),
            engine,
            bus,
            follow_end: Arc::new(watch::channel(false).0),
            data_dir: data_dir.to_owned(),
            changed: Arc::new(watch::channel(0u64).0),
            transitions: Arc::new(watch::channel(0u64).0),
            applying: tokio::sync::Mutex::new(false),
            rollbacks: Mutex::new(load_rollbacks(data_dir)),
            pending: Mutex::new(Vec::new()),
        });
        let c = Components { set };
        for name in &order {
            if let Some(spec) = specs.iter().find(|s| &s.name == name) {
                let entry = c.entry_for(spec, Source::Config);
                let task = tokio::spawn(supervise::supervise(entry.clone(), None));
                c.set.slots().push(Slot {
                    entry,
                    task: Some(task),
                });
            }
        }
        Ok(c)
    }

    fn entry_for(&self, spec: &ComponentSpec, source: Source) -> Arc<Entry> {
        let (workdir, own_workdir) = match &spec.workdir {
            Some(w) => (PathBuf::from(w), false),
            None => (component_dir(&self.set.data_dir, spec), true),
        };
        Arc::new(Entry {
            spec: spec.clone(),
            source,
            workdir,
            own_workdir,
            status: Mutex::new(Status {
                state: State::Installing,
                healthy: None,
                restarts: 0,
                started: None,
                pid: None,
                container_id: None,
                last_error: None,
                rollback: None,
                waiting_for: Vec::new(),
                history: std::collections::VecDeque::from([Transition {
                    at_ms: now_ms(),
                    state: State::Installing,
                    reason: None,
                }]),
            }),
            logs: Arc::new(Mutex::new(LogRing::new(LOG_LINES, LOG_BYTES))),
            engine: self.set.engine.clone(),
            bus: self.set.bus.clone(),
            usage: Mutex::new(usage::Sampler::default()),
            want: watch::channel(Want {
                run: true,
                generation: 0,
                exit: false,
            })
            .0,
            changed: self.set.changed.clone(),
            transitions: self.set.transitions.clone(),
            set: Arc::downgrade(&self.set),
        })
    }

    fn entry(&self, name: &str) -> Result<Arc<Entry>, ComponentsError> {
        self.set
            .find(name)
            .ok_or_else(|| ComponentsError::NotFound(name.to_owned()))
    }

    /// Make the cloud's components exactly `specs`: start new ones, replace
    /// changed ones, stop and remove the ones left out. Components of the
    /// node's config file are never touched; a cloud component with the
    /// name of one is refused. A replaced component's new version gets its
    /// `update_grace` to become healthy, else its old version runs again
    /// (see [`ComponentInfo::rollback`]); a spec rolled back once is not
    /// tried again until another is asked for. Waits for removed
    /// components to stop (each within its stop timeout); returns one line
    /// per component not applied.
    pub async fn apply(&self, specs: &[ComponentSpec]) -> Vec<String> {
        let guard = self.set.applying.lock().await;
        if *guard {
            return vec!["components: the node is stopping".to_owned()];
        }
        let mut errors = Vec::new();
        let (config, current): (Vec<ComponentSpec>, Vec<ComponentSpec>) = {
            let slots = self.set.slots();
            let config = slots
                .iter()
                .filter(|s| s.entry.source == Source::Config)
                .map(|s| s.entry.spec.clone())
                .collect();
            let current = slots
                .iter()
                .filter(|s| s.entry.source == Source::Cloud)
                .map(|s| s.entry.spec.clone())
                .collect();
            (config, current)
        };
        let running = |name: &str| current.iter().find(|c| c.name == name).cloned();
        let mut wanted: Vec<ComponentSpec> = Vec::with_capacity(specs.len());
        for spec in specs {
            let refused = if config.iter().any(|c| c.name == spec.name) {
                Some(format!(
                    "component `{}`: the node's config file defines it; the cloud's is not applied",
                    spec.name
                ))
            } else if spec.workdir.is_some() {
                Some(format!(
                    "component `{}`: workdir: a component from the cloud runs in its own \
                     directory under the node's data dir",
                    spec.name
                ))
            } else {
                spec.validate().err().map(|e| e.to_string())
            };
            match refused {
                None => wanted.push(spec.clone()),
                Some(e) => {
                    errors.push(e);
                    // What runs under that name keeps running.
                    if let Some(r) = running(&spec.name)
                        && !config.iter().any(|c| c.name == spec.name)
                    {
                        wanted.push(r);
                    }
                }
            }
        }
        // A spec rolled back before runs as its good version (after a
        // restart, or when it was removed and asked for again); a spec
        // other than the refused one forgets the rollback.
        let mut effective: Vec<ComponentSpec> = Vec::with_capacity(wanted.len());
        {
            let mut rollbacks = self.set.rollbacks();
            let before = rollbacks.len();
            rollbacks.retain(|name, r| wanted.iter().any(|w| &w.name == name && *w == r.refused));
            for w in &wanted {
                match rollbacks.get(&w.name) {
                    Some(r) => {
                        errors.push(format!(
                            "component `{}`: version {} was rolled back: {}",
                            w.name, w.version, r.reason
                        ));
                        effective.push(running(&w.name).unwrap_or_else(|| r.good.clone()));
                    }
                    None => effective.push(w.clone()),
                }
            }
            let changed = rollbacks.len() != before;
            drop(rollbacks);
            if changed {
                self.set.save_rollbacks();
            }
        }
        let wanted = effective;
        let all: Vec<ComponentSpec> = config.iter().chain(&wanted).cloned().collect();
        let order = match component_start_order(&all) {
            Ok(o) => o,
            Err(e) => {
                errors.push(format!("components not applied: {e}"));
                return errors;
            }
        };
        // Removed ones stop first, together.
        let removed: Vec<(Arc<Entry>, Option<JoinHandle<()>>)> = {
            let mut slots = self.set.slots();
            let mut out = Vec::new();
            slots.retain_mut(|s| {
                let keep = s.entry.source == Source::Config
                    || wanted.iter().any(|w| w.name == s.entry.spec.name);
                if !keep {
                    out.push((s.entry.clone(), s.task.take()));
                }
                keep
            });
            out
        };
        let mut stopping = tokio::task::JoinSet::new();
        for (entry, task) in removed {
            tracing::info!(component = %entry.spec.name, "component removed from the desired state; stopping it");
            stopping.spawn(async move { end_task(&entry, task).await });
        }
        while stopping.join_next().await.is_some() {}
        self.set.changed.send_modify(|v| *v = v.wrapping_add(1));
        for spec in &wanted {
            match current.iter().find(|c| c.name == spec.name) {
                None => {
                    let entry = self.entry_for(spec, Source::Cloud);
                    if let Some(r) = self.set.rollbacks().get(&spec.name)
                        && r.good == *spec
                    {
                        let reason = r.reason.clone();
                        entry.update(|s| s.rollback = Some(reason));
                    }
                    tracing::info!(component = %spec.name, version = %spec.version, "component added");
                    let task = tokio::spawn(supervise::supervise(entry.clone(), None));
                    self.set.slots().push(Slot {
                        entry,
                        task: Some(task),
                    });
                }
                Some(old) if old == spec => {}
                Some(_) => self.replace(spec),
            }
        }
        // Keep the start order, so the node stops dependents first.
        self.set.slots().sort_by_key(|s| {
            order
                .iter()
                .position(|n| n == &s.entry.spec.name)
                .unwrap_or(usize::MAX)
        });
        drop(guard);
        errors
    }

    /// Replace the running component of `spec`'s name with `spec`: the
    /// new version's task starts once the old one's has ended, and a
    /// watcher rolls back to the old spec if the new one is not healthy
    /// within its `update_grace`.
    fn replace(&self, spec: &ComponentSpec) {
        let old = {
            let mut slots = self.set.slots();
            let Some(slot) = slots.iter_mut().find(|s| s.entry.spec.name == spec.name) else {
                return;
            };
            let new_entry = self.entry_for(spec, Source::Cloud);
            let old_entry = std::mem::replace(&mut slot.entry, new_entry.clone());
            // The old version's task ends first (its process stopped), then
            // the new one starts.
            old_entry.want.send_modify(|w| w.exit = true);
            let previous = slot.task.take().map(|t| (old_entry.clone(), t));
            slot.task = Some(tokio::spawn(supervise::supervise(new_entry, previous)));
            old_entry.spec.clone()
        };
        tracing::info!(
            component = %spec.name,
            from = %old.version,
            to = %spec.version,
            "component update: the old version stops, the new one starts"
        );
        self.set.pending().push(old.clone());
        tokio::spawn(watch_update(self.clone(), old, spec.clone()));
    }

    /// The `(name, version)` whose directories must stay: what runs, the
    /// old versions of updates within their grace, and the good versions
    /// of rolled-back updates.
    pub fn versions_in_use(&self) -> Vec<(String, String)> {
        let mut keep: Vec<(String, String)> = self
            .set
            .slots()
            .iter()
            .map(|s| (s.entry.spec.name.clone(), s.entry.spec.version.clone()))
            .collect();
        keep.extend(
            self.set
                .pending()
                .iter()
                .map(|s| (s.name.clone(), s.version.clone())),
        );
        keep.extend(
            self.set
                .rollbacks()
                .values()
                .map(|r| (r.good.name.clone(), r.good.version.clone())),
        );
        keep
    }

    /// Every component, in start order.
    pub fn list(&self) -> Vec<ComponentInfo> {
        self.set.slots().iter().map(|s| s.entry.info()).collect()
    }

    /// One component.
    pub fn get(&self, name: &str) -> Result<ComponentInfo, ComponentsError> {
        Ok(self.entry(name)?.info())
    }

    /// The spec of one component.
    pub fn spec(&self, name: &str) -> Result<ComponentSpec, ComponentsError> {
        Ok(self.entry(name)?.spec.clone())
    }

    /// Start a stopped or failed component (with a fresh restart history);
    /// one that runs is left alone. Returns at once.
    pub fn start_one(&self, name: &str) -> Result<ComponentInfo, ComponentsError> {
        let e = self.entry(name)?;
        let ended = matches!(e.state(), State::Stopped | State::Failed);
        e.want.send_if_modified(|w| {
            let changed = !w.run || ended;
            if changed {
                w.run = true;
                w.generation += 1;
            }
            changed
        });
        Ok(e.info())
    }

    /// Stop a component (SIGTERM, SIGKILL after its stop timeout); it stays
    /// stopped until started. Returns at once.
    pub fn stop_one(&self, name: &str) -> Result<ComponentInfo, ComponentsError> {
        let e = self.entry(name)?;
        e.want
            .send_if_modified(|w| std::mem::replace(&mut w.run, false));
        Ok(e.info())
    }

    /// Stop and start a component again, with a fresh restart history.
    pub fn restart_one(&self, name: &str) -> Result<ComponentInfo, ComponentsError> {
        let e = self.entry(name)?;
        e.want.send_modify(|w| {
            w.run = true;
            w.generation += 1;
        });
        Ok(e.info())
    }

    /// The last `tail` lines of a component's output and its drop count.
    pub fn logs(&self, name: &str, tail: usize) -> Result<(Vec<LogLine>, u64), ComponentsError> {
        let e = self.entry(name)?;
        Ok(e.logs
            .lock()
            .map(|l| (l.tail(tail), l.dropped()))
            .unwrap_or_default())
    }

    /// Follow a component's output from its last `tail` lines on, until
    /// [`end_follows`](Self::end_follows).
    pub fn follow(&self, name: &str, tail: usize) -> Result<log::Follow, ComponentsError> {
        let e = self.entry(name)?;
        Ok(log::Follow::new(
            e.logs.clone(),
            tail,
            self.set.follow_end.subscribe(),
        ))
    }

    /// End every log follower (before the HTTP API stops: an open follow
    /// would hold its graceful shutdown).
    pub fn end_follows(&self) {
        self.set.follow_end.send_replace(true);
    }

    /// Stop every component, dependents before their dependencies, each
    /// within its stop timeout, and end their tasks; later applies are
    /// refused.
    pub async fn shutdown(&self) {
        self.end_follows();
        let mut guard = self.set.applying.lock().await;
        *guard = true;
        let slots: Vec<(Arc<Entry>, Option<JoinHandle<()>>)> = self
            .set
            .slots()
            .iter_mut()
            .map(|s| (s.entry.clone(), s.task.take()))
            .collect();
        for (entry, task) in slots.into_iter().rev() {
            end_task(&entry, task).await;
        }
    }

    /// The node's MQTT side of its components, when it has one.
    pub fn bus(&self) -> Option<&Bus> {
        self.set.bus.as_ref()
    }

    /// Append the `verge_component_*` metrics.
    pub fn render_metrics(&self, out: &mut String) {
        let infos = self.list();
        let _ = writeln!(
            out,
            "# HELP verge_component_restarts_total restarts of a component since the node started"
        );
        let _ = writeln!(out, "# TYPE verge_component_restarts_total counter");
        for i in &infos {
            let _ = writeln!(
                out,
                "verge_component_restarts_total{{component=\"{}\"}} {}",
                i.name, i.restarts
            );
        }
        let _ = writeln!(
            out,
            "# HELP verge_component_state 1 for the state a component is in"
        );
        let _ = writeln!(out, "# TYPE verge_component_state gauge");
        for i in &infos {
            for s in State::ALL {
                let _ = writeln!(
                    out,
                    "verge_component_state{{component=\"{}\",state=\"{}\"}} {}",
                    i.name,
                    s.as_str(),
                    u8::from(i.state == s)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP verge_component_up 1 while a component's process or container runs"
        );
        let _ = writeln!(out, "# TYPE verge_component_up gauge");
        for i in &infos {
            let _ = writeln!(
                out,
                "verge_component_up{{component=\"{}\"}} {}",
                i.name,
                u8::from(i.pid.is_some() || i.container_id.is_some())
            );
        }
        let _ = writeln!(
            out,
            "# HELP verge_component_log_lines_dropped_total output lines dropped from a component's log ring"
        );
        let _ = writeln!(
            out,
            "# TYPE verge_component_log_lines_dropped_total counter"
        );
        for i in &infos {
            let _ = writeln!(
                out,
                "verge_component_log_lines_dropped_total{{component=\"{}\"}} {}",
                i.name, i.log_lines_dropped
            );
        }
        let _ = writeln!(
            out,
            "# HELP verge_component_memory_bytes resident memory of a running component's process"
        );
        let _ = writeln!(out, "# TYPE verge_component_memory_bytes gauge");
        for i in &infos {
            if let Some(m) = i.memory_bytes {
                let _ = writeln!(
                    out,
                    "verge_component_memory_bytes{{component=\"{}\"}} {m}",
                    i.name
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP verge_component_cpu_seconds_total CPU time of a running component's process (user + system)"
        );
        let _ = writeln!(out, "# TYPE verge_component_cpu_seconds_total counter");
        for i in &infos {
            if let Some(c) = i.cpu_seconds {
                let _ = writeln!(
                    out,
                    "verge_component_cpu_seconds_total{{component=\"{}\"}} {c}",
                    i.name
                );
            }
        }
        if let Some(bus) = &self.set.bus {
            bus.render_metrics(out);
        }
    }
}

/// Lines of a component's output in the cloud's status report.
pub const REPORT_LOG_LINES: usize = 10;
/// Characters kept of each of them.
const REPORT_LINE_CHARS: usize = 240;

impl verge_agent::ComponentHost for Components {
    fn apply<'a>(&'a self, specs: &'a [ComponentSpec]) -> verge_agent::ApplyFuture<'a> {
        Box::pin(Components::apply(self, specs))
    }

    fn report(&self) -> Vec<serde_json::Value> {
        let slots: Vec<Arc<Entry>> = self.set.slots().iter().map(|s| s.entry.clone()).collect();
        slots
            .iter()
            .filter_map(|e| {
                let mut v = serde_json::to_value(e.info()).ok()?;
                let tail: Vec<serde_json::Value> = e
                    .logs
                    .lock()
                    .map(|l| l.tail(REPORT_LOG_LINES))
                    .unwrap_or_default()
                    .into_iter()
                    .map(|l| {
                        let mut line = l.line;
                        if line.len() > REPORT_LINE_CHARS {
                            let mut cut = REPORT_LINE_CHARS;
                            while !line.is_char_boundary(cut) {
                                cut -= 1;
                            }
                            line.truncate(cut);
                        }
                        serde_json::json!({"stream": l.stream, "line": line})
                    })
                    .collect();
                if let Some(m) = v.as_object_mut() {
                    m.insert("log_tail".into(), tail.into());
                }
                Some(v)
            })
            .collect()
    }

    fn transitions(&self) -> Option<watch::Receiver<u64>> {
        Some(self.set.transitions.subscribe())
    }

    fn versions_in_use(&self) -> Vec<(String, String)> {
        Components::versions_in_use(self)
    }
}

/// A component's own directory: `<data_dir>/components/<name>/<version>`
/// (where the agent unpacks its artifact).
pub use verge_agent::artifact::component_dir;

/// Loads the rollbacks kept in `<data_dir>/components`; an unreadable file
/// is logged and taken as none.
fn load_rollbacks(data_dir: &Path) -> BTreeMap<String, Rollback> {
    let path = data_dir.join("components").join(ROLLBACKS_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!("{}: not read, ignored: {e}", path.display());
            BTreeMap::new()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => {
            tracing::warn!("{}: not read, ignored: {e}", path.display());
            BTreeMap::new()
        }
    }
}

/// Removes `old` from the pending updates when the watch ends, however it
/// ends.
struct Pending<'a>(&'a Set, &'a ComponentSpec);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let mut pending = self.0.pending();
        if let Some(i) = pending.iter().position(|s| s == self.1) {
            pending.remove(i);
        }
    }
}

/// After `new` replaced `old`: the new version must be healthy at the end
/// of its `update_grace`, counted from when its process or container first
/// runs, without a failure in between (a restart, or the `failed`,
/// `unhealthy` or `backoff` states). If it is not (and is still the
/// running spec), start `old` again and remember why (persisted). One that
/// never gets to run (stuck installing or waiting for dependencies) is
/// rolled back after its grace plus the old version's stop timeout plus a
/// minute.
async fn watch_update(c: Components, old: ComponentSpec, new: ComponentSpec) {
    let _pending = Pending(&c.set, &old);
    let mut changed = c.set.changed.subscribe();
    let outer =
        tokio::time::Instant::now() + new.update_grace + old.stop_timeout + Duration::from_secs(60);
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        changed.borrow_and_update();
        let Some(entry) = c.set.find(&new.name) else {
            return;
        };
        if entry.spec != new {
            return; // replaced or removed since
        }
        let info = entry.info();
        let failed = info.restarts > 0
            || matches!(
                info.state,
                State::Failed | State::Unhealthy | State::Backoff
            );
        if failed {
            break;
        }
        let now = tokio::time::Instant::now();
        if deadline.is_none() && matches!(info.state, State::Running | State::Healthy) {
            deadline = Some(now + new.update_grace);
        }
        let until = deadline.unwrap_or(outer);
        if now >= until {
            if info.state == State::Healthy {
                tracing::info!(component = %new.name, version = %new.version, "component update healthy");
                return;
            }
            break;
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(until) => {}
        }
    }
    let stopping = c.set.applying.lock().await;
    if *stopping {
        return;
    }
    let (last, reason) = {
        let Some(entry) = c.set.find(&new.name) else {
            return;
        };
        if entry.spec != new {
            return;
        }
        let info = entry.info();
        let last = info
            .last_error
            .unwrap_or_else(|| format!("state {}", info.state.as_str()));
        let reason = format!(
            "version {} did not become healthy within {} s ({last}); version {} runs again",
            new.version,
            new.update_grace.as_secs(),
            old.version
        );
        (last, reason)
    };
    tracing::warn!(component = %new.name, "component update rolled back: {reason}");
    {
        let mut slots = c.set.slots();
        let Some(slot) = slots.iter_mut().find(|s| s.entry.spec == new) else {
            return;
        };
        let back = c.entry_for(&old, Source::Cloud);
        back.update(|s| {
            s.rollback = Some(reason.clone());
            s.last_error = Some(format!("update to {} rolled back: {last}", new.version));
        });
        let failed = std::mem::replace(&mut slot.entry, back.clone());
        failed.want.send_modify(|w| w.exit = true);
        let previous = slot.task.take().map(|t| (failed, t));
        slot.task = Some(tokio::spawn(supervise::supervise(back, previous)));
    }
    c.set.rollbacks().insert(
        new.name.clone(),
        Rollback {
            refused: new,
            good: old.clone(),
            reason,
        },
    );
    c.set.save_rollbacks();
    drop(stopping);
}

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
mod report;
mod rpc;
mod supervise;
mod update;
mod usage;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use verge_protocol::{ComponentError, ComponentSpec, component_start_order};

use bus::Bus;
use log::{LogLine, LogRing};
use update::{Rollback, load_rollbacks};

pub use report::REPORT_LOG_LINES;

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
}

/// A component's own directory: `<data_dir>/components/<name>/<version>`
/// (where the agent unpacks its artifact).
pub use verge_agent::artifact::component_dir;

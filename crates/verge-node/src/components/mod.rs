//! User components: the supervisor of the node's process components
//! (`[[components]]` in the node's config file). Each component has one
//! task that owns its process: it waits for the component's dependencies to
//! be healthy, starts the process in its own process group, probes its
//! health, restarts it per its policy with exponential backoff until the
//! restart limit makes it `failed`, and stops it with SIGTERM, then SIGKILL
//! after its stop timeout. Output goes to a bounded ring of lines per
//! component ([`log`]).
//!
//! Invariants: nothing here blocks the node (every wait is in a
//! component's own task, every probe and stop has a timeout); restarts and
//! logs are bounded per component; one component's failure changes only
//! its own state.

pub mod bus;
pub mod log;

mod env;
mod health;
mod process;
mod rpc;
mod supervise;
mod usage;

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use verge_protocol::{ComponentError, ComponentSpec, component_start_order};

use bus::Bus;
use log::{LogLine, LogRing};

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

/// A component as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentInfo {
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: String,
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
    pub pid: Option<u32>,
    /// Why it last failed (exit status, spawn error, health check).
    pub last_error: Option<String>,
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
}

/// What the API asks of a component's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Want {
    /// Keep it running.
    run: bool,
    /// Bumped by start (after failed or stopped) and restart: a new run
    /// with a fresh restart history.
    generation: u64,
    /// The node stops: end the task.
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
    last_error: Option<String>,
    waiting_for: Vec<String>,
}

/// One component: its spec and what its task shares.
struct Entry {
    spec: ComponentSpec,
    workdir: PathBuf,
    /// Whether `workdir` is the node's own (created at install).
    own_workdir: bool,
    status: Mutex<Status>,
    logs: Arc<Mutex<LogRing>>,
    want: watch::Sender<Want>,
    /// Bumped on every state change of any component.
    changed: Arc<watch::Sender<u64>>,
    /// The node's MQTT side: credentials at each start, heartbeats.
    bus: Option<Bus>,
    /// CPU readings of its process.
    usage: Mutex<usage::Sampler>,
}

impl Entry {
    fn update(&self, f: impl FnOnce(&mut Status)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn state(&self) -> State {
        self.status.lock().map(|s| s.state).unwrap_or(State::Failed)
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
            state: s.map(|s| s.state).unwrap_or(State::Failed),
            healthy: s.ok().and_then(|s| s.healthy),
            restarts: s.map(|s| s.restarts).unwrap_or_default(),
            uptime_seconds: s
                .ok()
                .and_then(|s| s.started)
                .map(|t| t.elapsed().as_secs()),
            pid: s.ok().and_then(|s| s.pid),
            last_error: s.ok().and_then(|s| s.last_error.clone()),
            waiting_for: s.map(|s| s.waiting_for.clone()).unwrap_or_default(),
            log_lines,
            log_lines_dropped,
            cpu_percent: sample.map(|(_, p)| p),
            cpu_seconds: sample.map(|(u, _)| u.cpu_seconds),
            memory_bytes: sample.map(|(u, _)| u.memory_bytes),
        }
    }
}

/// An API call on a component that cannot be done.
#[derive(Debug, thiserror::Error)]
pub enum ComponentsError {
    /// No component has this name.
    #[error("no component named `{0}`")]
    NotFound(String),
}

/// A component's name and its supervising task.
type Task = (String, JoinHandle<()>);

/// The running supervisor; clones share it.
#[derive(Clone)]
pub struct Components {
    /// In start order (dependencies first).
    entries: Arc<Vec<Arc<Entry>>>,
    tasks: Arc<Mutex<Vec<Task>>>,
    bus: Option<Bus>,
    /// True ends every log follower (the node stops).
    follow_end: Arc<watch::Sender<bool>>,
}

impl Components {
    /// Check `specs` (names, dependencies, cycles) and start one task per
    /// component; processes without their own `workdir` run in
    /// `<data_dir>/components/<name>/<version>`. Call inside a tokio
    /// runtime.
    pub fn start(specs: &[ComponentSpec], data_dir: &Path) -> Result<Components, ComponentError> {
        Components::start_with_bus(specs, data_dir, None)
    }

    /// [`start`](Self::start) with the node's MQTT [`Bus`]: each process
    /// gets its own broker credentials at every start (in
    /// `VERGE_MQTT_*`), after the node serves its listeners, and the
    /// `mqtt` health check reads its heartbeats.
    pub fn start_with_bus(
        specs: &[ComponentSpec],
        data_dir: &Path,
        bus: Option<Bus>,
    ) -> Result<Components, ComponentError> {
        let order = component_start_order(specs)?;
        let changed = Arc::new(watch::channel(0u64).0);
        let mut entries: Vec<Arc<Entry>> = Vec::with_capacity(specs.len());
        for name in &order {
            let Some(spec) = specs.iter().find(|s| &s.name == name) else {
                continue;
            };
            let (workdir, own_workdir) = match &spec.workdir {
                Some(w) => (PathBuf::from(w), false),
                None => (
                    data_dir
                        .join("components")
                        .join(&spec.name)
                        .join(&spec.version),
                    true,
                ),
            };
            entries.push(Arc::new(Entry {
                spec: spec.clone(),
                workdir,
                own_workdir,
                status: Mutex::new(Status {
                    state: State::Installing,
                    healthy: None,
                    restarts: 0,
                    started: None,
                    pid: None,
                    last_error: None,
                    waiting_for: Vec::new(),
                }),
                logs: Arc::new(Mutex::new(LogRing::new(LOG_LINES, LOG_BYTES))),
                want: watch::channel(Want {
                    run: true,
                    generation: 0,
                    exit: false,
                })
                .0,
                changed: changed.clone(),
                bus: bus.clone(),
                usage: Mutex::new(usage::Sampler::default()),
            }));
        }
        let mut tasks = Vec::with_capacity(entries.len());
        for e in &entries {
            let deps: Vec<Arc<Entry>> = entries
                .iter()
                .filter(|d| e.spec.depends_on.contains(&d.spec.name))
                .cloned()
                .collect();
            let task = tokio::spawn(supervise::supervise(e.clone(), deps));
            tasks.push((e.spec.name.clone(), task));
        }
        Ok(Components {
            entries: Arc::new(entries),
            tasks: Arc::new(Mutex::new(tasks)),
            bus,
            follow_end: Arc::new(watch::channel(false).0),
        })
    }

    fn entry(&self, name: &str) -> Result<&Arc<Entry>, ComponentsError> {
        self.entries
            .iter()
            .find(|e| e.spec.name == name)
            .ok_or_else(|| ComponentsError::NotFound(name.to_owned()))
    }

    /// Every component, in start order.
    pub fn list(&self) -> Vec<ComponentInfo> {
        self.entries.iter().map(|e| e.info()).collect()
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
            self.follow_end.subscribe(),
        ))
    }

    /// End every log follower (before the HTTP API stops: an open follow
    /// would hold its graceful shutdown).
    pub fn end_follows(&self) {
        self.follow_end.send_replace(true);
    }

    /// Stop every component, dependents before their dependencies, each
    /// within its stop timeout, and end their tasks.
    pub async fn shutdown(&self) {
        self.end_follows();
        let tasks = match self.tasks.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => return,
        };
        for (name, task) in tasks.into_iter().rev() {
            let Ok(e) = self.entry(&name) else { continue };
            e.want.send_modify(|w| w.exit = true);
            let limit = e.spec.stop_timeout + Duration::from_secs(2);
            let abort = task.abort_handle();
            if tokio::time::timeout(limit, task).await.is_err() {
                // Dropping the task kills its process (kill_on_drop).
                abort.abort();
                tracing::warn!(component = %name, "component did not stop in time; killed");
            }
            if let Some(bus) = &self.bus {
                bus.revoke(&name).await;
            }
        }
    }

    /// The node's MQTT side of its components, when it has one.
    pub fn bus(&self) -> Option<&Bus> {
        self.bus.as_ref()
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
            "# HELP verge_component_up 1 while a component's process runs"
        );
        let _ = writeln!(out, "# TYPE verge_component_up gauge");
        for i in &infos {
            let _ = writeln!(
                out,
                "verge_component_up{{component=\"{}\"}} {}",
                i.name,
                u8::from(i.pid.is_some())
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
        if let Some(bus) = &self.bus {
            bus.render_metrics(out);
        }
    }
}

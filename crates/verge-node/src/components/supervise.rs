//! One component's task: install, wait for dependencies, run, probe,
//! restart with backoff within the restart limit, stop. A process and a
//! container differ only in how they start, end and are stopped
//! ([`Running`]).

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::Instant;

use tokio::process::Child;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use verge_protocol::{ComponentKind, HealthKind, RestartPolicy};

use super::bus::Credentials;
use super::container::Container;
use super::process::{self, Signal};
use super::{Entry, State, Want, health};

/// How one run of the process ended.
enum Ended {
    /// It exited or was stopped for health; `Some` says why it failed.
    Exited(Option<String>),
    /// The API or the node asked for something else; the process is
    /// stopped.
    Interrupted,
}

/// Run `e` until the node stops or it is removed or replaced. `previous`
/// is the task of the component it replaces: it starts once that one has
/// ended (its process stopped).
pub(super) async fn supervise(e: Arc<Entry>, previous: Option<(Arc<Entry>, JoinHandle<()>)>) {
    if let Some((old, task)) = previous {
        e.update(|s| s.state = State::Starting);
        super::end_task(&old, Some(task)).await;
    }
    let mut want_rx = e.want.subscribe();
    // Restarts within the restart window, for the limit.
    let mut history: VecDeque<Instant> = VecDeque::new();
    let mut consecutive: u32 = 0;
    let mut generation = None;
    loop {
        let want = *want_rx.borrow_and_update();
        if want.exit {
            e.update(|s| {
                s.state = State::Stopped;
                s.pid = None;
                s.container_id = None;
                s.started = None;
            });
            return;
        }
        if generation != Some(want.generation) {
            generation = Some(want.generation);
            history.clear();
            consecutive = 0;
        }
        if !want.run {
            revoke(&e).await;
            e.update(|s| {
                s.state = State::Stopped;
                s.waiting_for.clear();
            });
            if want_rx.changed().await.is_err() {
                return;
            }
            continue;
        }
        e.update(|s| s.state = State::Installing);
        if e.own_workdir
            && let Err(err) = tokio::fs::create_dir_all(&e.workdir).await
        {
            let reason = format!("cannot create {}: {err}", e.workdir.display());
            if park_failed(&e, &mut want_rx, reason).await {
                return;
            }
            continue;
        }
        let mut run_started = Instant::now();
        let ended = match install(&e, &mut want_rx).await {
            None => continue,
            Some(Err(reason)) => Ended::Exited(Some(reason)),
            Some(Ok(())) => {
                if !wait_for(&e, &mut want_rx).await {
                    continue;
                }
                run_started = Instant::now();
                run_once(&e, want, &mut want_rx).await
            }
        };
        let failure = match ended {
            Ended::Interrupted => continue,
            Ended::Exited(f) => f,
        };
        let restart = match e.spec.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => failure.is_some(),
            RestartPolicy::Never => false,
        };
        if !restart {
            let parked = match failure {
                Some(reason) => park_failed(&e, &mut want_rx, reason).await,
                None => {
                    revoke(&e).await;
                    e.update(|s| s.state = State::Stopped);
                    want_rx.changed().await.is_err()
                }
            };
            if parked {
                return;
            }
            continue;
        }
        let reason = failure.unwrap_or_else(|| "exited with status 0".to_owned());
        let now = Instant::now();
        while history
            .front()
            .is_some_and(|t| now.duration_since(*t) > e.spec.restart_window)
        {
            history.pop_front();
        }
        if history.len() >= e.spec.max_restarts as usize {
            let reason = format!(
                "gave up after {} restarts within {} s; last: {reason}",
                history.len(),
                e.spec.restart_window.as_secs()
            );
            if park_failed(&e, &mut want_rx, reason).await {
                return;
            }
            continue;
        }
        history.push_back(now);
        if run_started.elapsed() >= e.spec.backoff_max {
            consecutive = 0;
        }
        let delay = e
            .spec
            .backoff_min
            .saturating_mul(1u32 << consecutive.min(20))
            .min(e.spec.backoff_max);
        consecutive = consecutive.saturating_add(1);
        tracing::warn!(component = %e.spec.name, delay_ms = delay.as_millis() as u64, "component ended ({reason}); restarting");
        e.update(|s| {
            s.state = State::Backoff;
            s.restarts += 1;
            s.last_error = Some(reason);
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            r = want_rx.changed() => if r.is_err() { return },
        }
    }
}

/// Mark `e` failed with `reason` and wait for the API or the node; true
/// when the task should end.
async fn park_failed(e: &Entry, want_rx: &mut watch::Receiver<Want>, reason: String) -> bool {
    tracing::warn!(component = %e.spec.name, "component failed: {reason}");
    revoke(e).await;
    e.update(|s| {
        s.state = State::Failed;
        s.pid = None;
        s.container_id = None;
        s.started = None;
        s.last_error = Some(reason);
    });
    want_rx.changed().await.is_err()
}

/// Revoke the MQTT credentials of a component that is not going to run
/// until it is started again (a start makes new ones).
async fn revoke(e: &Entry) {
    if let Some(bus) = &e.bus {
        bus.revoke(&e.spec.name).await;
    }
}

/// A container's image on the engine (a process has nothing to install
/// beyond its directory); `None` when the want changed first.
async fn install(e: &Entry, want_rx: &mut watch::Receiver<Want>) -> Option<Result<(), String>> {
    if e.spec.kind != ComponentKind::Container {
        return Some(Ok(()));
    }
    tokio::select! {
        r = e.engine.install(&e.spec) => Some(r),
        _ = want_rx.changed() => None,
    }
}

/// Wait until every dependency is healthy; false when the want changed
/// first.
async fn wait_for(e: &Entry, want_rx: &mut watch::Receiver<Want>) -> bool {
    let mut changed = e.changed.subscribe();
    loop {
        changed.borrow_and_update();
        let missing = e.unhealthy_dependencies();
        let differs = e
            .status
            .lock()
            .map(|s| s.state != State::Starting || s.waiting_for != missing)
            .unwrap_or(true);
        if differs {
            let done = missing.is_empty();
            e.update(|s| {
                s.state = State::Starting;
                s.waiting_for = missing;
            });
            if done {
                return true;
            }
        } else if missing.is_empty() {
            return true;
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return false },
            _ = want_rx.changed() => return false,
        }
    }
}

/// A component's process or container while it runs.
enum Running {
    /// A process, the leader of its own process group.
    Process(Child, Option<u32>),
    /// A container on the engine.
    Container(Box<Container>),
}

impl Running {
    /// Start `e`'s process or container.
    async fn start(e: &Entry, mqtt: Option<&Credentials>) -> Result<Running, String> {
        if !tokio::fs::metadata(&e.workdir)
            .await
            .is_ok_and(|m| m.is_dir())
        {
            return Err(format!(
                "workdir {} is not a directory",
                e.workdir.display()
            ));
        }
        match e.spec.kind {
            ComponentKind::Process => match process::spawn(&e.spec, &e.workdir, &e.logs, mqtt) {
                Ok(child) => {
                    let pid = child.id();
                    Ok(Running::Process(child, pid))
                }
                Err(err) => Err(format!("cannot start `{}`: {err}", e.spec.command)),
            },
            ComponentKind::Container => e
                .engine
                .start(&e.spec, &e.workdir, &e.logs, mqtt)
                .await
                .map(|c| Running::Container(Box::new(c))),
        }
    }

    fn pid(&self) -> Option<u32> {
        match self {
            Running::Process(_, pid) => *pid,
            Running::Container(c) => c.pid(),
        }
    }

    fn container_id(&self) -> Option<String> {
        match self {
            Running::Process(..) => None,
            Running::Container(c) => Some(c.short_id()),
        }
    }

    /// Wait until it ends; `Some` says why it failed. Cancel-safe.
    async fn wait(&mut self) -> Option<String> {
        match self {
            Running::Process(child, _) => match child.wait().await {
                Ok(s) if s.success() => None,
                Ok(s) => Some(match (s.code(), s.signal()) {
                    (Some(c), _) => format!("exited with status {c}"),
                    (None, Some(sig)) => format!("killed by signal {sig}"),
                    _ => "exited".to_owned(),
                }),
                Err(err) => Some(format!("waiting for the process: {err}")),
            },
            Running::Container(c) => c.wait().await,
        }
    }
}

/// Start the process or container and watch it until it ends, fails its
/// health check, or the want changes.
async fn run_once(e: &Entry, want: Want, want_rx: &mut watch::Receiver<Want>) -> Ended {
    let spec = &e.spec;
    let creds = match &e.bus {
        None => None,
        Some(bus) => {
            // Components start once the node serves its listeners.
            let url = tokio::select! {
                u = bus.url() => u,
                r = want_rx.changed() => {
                    if r.is_ok() && *want_rx.borrow() == want {
                        bus.url().await
                    } else {
                        return Ended::Interrupted;
                    }
                }
            };
            if let Err(why) = &url {
                tracing::warn!(component = %spec.name, "{why}");
            }
            match bus.grant(spec).await {
                Ok(c) => Some(c),
                Err(err) => return Ended::Exited(Some(err.to_string())),
            }
        }
    };
    let started = Running::start(e, creds.as_ref()).await;
    // The secret lives on only in the component's environment.
    drop(creds);
    let mut run = match started {
        Ok(r) => r,
        Err(reason) => return Ended::Exited(Some(reason)),
    };
    let pid = run.pid();
    let container_id = run.container_id();
    let started = Instant::now();
    let probing = spec.health.kind != HealthKind::Alive;
    e.update(|s| {
        s.state = if probing {
            State::Running
        } else {
            State::Healthy
        };
        s.healthy = (!probing).then_some(true);
        s.pid = pid;
        s.container_id = container_id.clone();
        s.started = Some(started);
    });
    tracing::info!(component = %spec.name, pid, container = container_id.as_deref(), "component started");
    let interval = spec.health.interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    loop {
        tokio::select! {
            failure = run.wait() => {
                e.update(|s| {
                    s.pid = None;
                    s.container_id = None;
                    s.started = None;
                    s.healthy = None;
                });
                return Ended::Exited(failure);
            }
            _ = tick.tick(), if probing => {
                let hb = e.bus.as_ref().and_then(|b| b.heartbeat(&spec.name));
                let topic = super::bus::heartbeat_topic(spec);
                match health::probe(&spec.health, hb.as_deref().map(|h| (h, topic.as_str()))).await {
                    Ok(()) => {
                        failures = 0;
                        e.update(|s| {
                            s.state = State::Healthy;
                            s.healthy = Some(true);
                        });
                    }
                    Err(reason) => {
                        if started.elapsed() < spec.health.start_grace {
                            continue;
                        }
                        failures += 1;
                        e.update(|s| s.healthy = Some(false));
                        if failures >= spec.health.failures {
                            let reason = format!(
                                "unhealthy after {failures} failed health checks: {reason}"
                            );
                            e.update(|s| {
                                s.state = State::Unhealthy;
                                s.last_error = Some(reason.clone());
                            });
                            stop(e, &mut run).await;
                            return Ended::Exited(Some(reason));
                        }
                    }
                }
            }
            r = want_rx.changed() => {
                if r.is_ok() && *want_rx.borrow() == want {
                    continue;
                }
                stop(e, &mut run).await;
                return Ended::Interrupted;
            }
        }
    }
}

/// SIGTERM to the process group, SIGKILL after the stop timeout; a
/// container is stopped (the same way) and removed by the engine.
async fn stop(e: &Entry, run: &mut Running) {
    e.update(|s| s.state = State::Stopping);
    let (child, pid) = match run {
        Running::Process(child, pid) => (child, *pid),
        Running::Container(c) => {
            let note = c.stop(e.spec.stop_timeout).await;
            e.update(|s| {
                if let Some(note) = note {
                    s.last_error = Some(note);
                }
                s.pid = None;
                s.container_id = None;
                s.started = None;
                s.healthy = None;
            });
            return;
        }
    };
    if let Some(pid) = pid {
        process::signal_group(pid, Signal::Term);
    }
    let graceful = tokio::time::timeout(e.spec.stop_timeout, child.wait()).await;
    if graceful.is_err() {
        tracing::warn!(component = %e.spec.name, "component ignored SIGTERM for {} ms; killing it", e.spec.stop_timeout.as_millis());
        if let Some(pid) = pid {
            process::signal_group(pid, Signal::Kill);
        }
        let _ = child.kill().await;
        e.update(|s| {
            s.last_error = Some(format!(
                "did not stop within {} ms of SIGTERM; killed",
                e.spec.stop_timeout.as_millis()
            ));
        });
    }
    e.update(|s| {
        s.pid = None;
        s.started = None;
        s.healthy = None;
    });
}

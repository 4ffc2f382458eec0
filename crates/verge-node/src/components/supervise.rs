//! One component's task: install, wait for dependencies, run, probe,
//! restart with backoff within the restart limit, stop.

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::Instant;

use tokio::process::Child;
use tokio::sync::watch;
use verge_protocol::{HealthKind, RestartPolicy};

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

/// Run `e` until the node stops; `deps` are the components it waits for.
pub(super) async fn supervise(e: Arc<Entry>, deps: Vec<Arc<Entry>>) {
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
        if !wait_for(&e, &deps, &mut want_rx).await {
            continue;
        }
        let run_started = Instant::now();
        let failure = match run_once(&e, want, &mut want_rx).await {
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
    e.update(|s| {
        s.state = State::Failed;
        s.pid = None;
        s.started = None;
        s.last_error = Some(reason);
    });
    want_rx.changed().await.is_err()
}

/// Wait until every dependency is healthy; false when the want changed
/// first.
async fn wait_for(e: &Entry, deps: &[Arc<Entry>], want_rx: &mut watch::Receiver<Want>) -> bool {
    let mut changed = e.changed.subscribe();
    loop {
        changed.borrow_and_update();
        let missing: Vec<String> = deps
            .iter()
            .filter(|d| d.state() != State::Healthy)
            .map(|d| d.spec.name.clone())
            .collect();
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

/// Spawn the process and watch it until it ends, fails its health check,
/// or the want changes.
async fn run_once(e: &Entry, want: Want, want_rx: &mut watch::Receiver<Want>) -> Ended {
    let spec = &e.spec;
    if !tokio::fs::metadata(&e.workdir)
        .await
        .is_ok_and(|m| m.is_dir())
    {
        return Ended::Exited(Some(format!(
            "workdir {} is not a directory",
            e.workdir.display()
        )));
    }
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
    let spawned = process::spawn(spec, &e.workdir, &e.logs, creds.as_ref());
    // The secret lives on only in the process's environment.
    drop(creds);
    let mut child = match spawned {
        Ok(c) => c,
        Err(err) => {
            return Ended::Exited(Some(format!("cannot start `{}`: {err}", spec.command)));
        }
    };
    let pid = child.id();
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
        s.started = Some(started);
    });
    tracing::info!(component = %spec.name, pid, "component started");
    let interval = spec.health.interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures = 0u32;
    loop {
        tokio::select! {
            status = child.wait() => {
                let failure = match status {
                    Ok(s) if s.success() => None,
                    Ok(s) => Some(match (s.code(), s.signal()) {
                        (Some(c), _) => format!("exited with status {c}"),
                        (None, Some(sig)) => format!("killed by signal {sig}"),
                        _ => "exited".to_owned(),
                    }),
                    Err(err) => Some(format!("waiting for the process: {err}")),
                };
                e.update(|s| {
                    s.pid = None;
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
                            stop(e, &mut child, pid).await;
                            return Ended::Exited(Some(reason));
                        }
                    }
                }
            }
            r = want_rx.changed() => {
                if r.is_ok() && *want_rx.borrow() == want {
                    continue;
                }
                stop(e, &mut child, pid).await;
                return Ended::Interrupted;
            }
        }
    }
}

/// SIGTERM to the process group, SIGKILL after the stop timeout.
async fn stop(e: &Entry, child: &mut Child, pid: Option<u32>) {
    e.update(|s| s.state = State::Stopping);
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

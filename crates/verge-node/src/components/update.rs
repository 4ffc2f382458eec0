//! The cloud's side of the supervisor: `Components::apply` makes the
//! cloud's components exactly what the desired state says (config-file
//! components are never touched), replacing a changed one and watching
//! its update (`watch_update`): a new version that is not healthy through
//! its `update_grace` is rolled back to the old one, and the rollback is
//! remembered in `<data_dir>/components/rollbacks.json` so the failed
//! spec is not tried again until the cloud asks for another.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use verge_protocol::{ComponentSpec, component_start_order};

use super::{Components, Entry, Set, Slot, Source, State, end_task, supervise};

/// An update that was rolled back: the spec that failed is not tried
/// again until the cloud asks for another, and a restart runs `good`
/// instead of it. Kept in `<data_dir>/components/rollbacks.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct Rollback {
    refused: ComponentSpec,
    good: ComponentSpec,
    reason: String,
}

/// The file the rollbacks are kept in.
const ROLLBACKS_FILE: &str = "rollbacks.json";

impl Set {
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
}

impl Components {
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
}

/// Loads the rollbacks kept in `<data_dir>/components`; an unreadable file
/// is logged and taken as none.
pub(super) fn load_rollbacks(data_dir: &Path) -> BTreeMap<String, Rollback> {
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

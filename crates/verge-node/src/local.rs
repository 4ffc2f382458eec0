//! What an operator changes through the node's own HTTP API, kept so that
//! it survives a restart, and the account of the node's own items that the
//! cloud agent reports in the heartbeat's `local` ([`LocalStore`]).
//!
//! On disk, under `<data_dir>/local` (a 0700 directory; every file 0600,
//! written whole and atomically with `verge_net::fs::write_atomic`):
//!
//! ```text
//! rules.json      [RuleConfig]    rules created or changed through the API, as they run
//! drivers.json    [DriverConfig]  drivers created or replaced there, with their point tables
//! functions.json  [name]          functions deployed there (their specs and modules are
//!                                 the function registry's, under <data_dir>/functions)
//! local-only.json [{kind, name}]  items marked local-only (`/api/local-only`): a revision
//!                                 naming one leaves the node's own in place
//! ```
//!
//! The rules, as `docs/rules.md` ("Local changes survive a restart") tells
//! operators:
//! - At start the config file's items come first, then the saved ones. A
//!   saved item named like one of the config file's is not restored: the
//!   config file wins, a warning says so, and the saved copy is dropped.
//! - An item of the config file deleted through the API is gone until the
//!   next start, when the config file brings it back (to remove it for
//!   good, remove it from the file). An item created through the API and
//!   deleted there stays deleted.
//! - A file that cannot be read or is not what it should be is reported
//!   (an error in the log naming the file), moved aside to
//!   `<file>.corrupt` for an operator to look at, and the node starts
//!   without its items: an edge node keeps running what it can. A saved
//!   item that no longer starts (a rule whose function is gone) is logged
//!   and kept in the file.
//! - An item the cloud comes to manage (a revision names it) is dropped
//!   from the files: the cloud's revision wins, and a later revision
//!   without it removes it from the node for good — unless the item is
//!   marked local-only: then the node's own stays, is saved like any item
//!   changed through the API, and the agent leaves it alone
//!   (`verge_agent::local_only`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, watch};
use verge_agent::{LocalFuture, LocalItems, StatusHandle};
use verge_drivers::{DriverConfig, Drivers};
use verge_functions::Functions;
use verge_protocol::LocalItem;
use verge_rules::{Engine, RuleConfig};

use crate::NodeConfig;
use crate::components::{Components, Source};
use crate::http::AppError;

/// The folder under the data dir.
pub const DIR: &str = "local";
const RULES: &str = "rules.json";
const DRIVERS: &str = "drivers.json";
const FUNCTIONS: &str = "functions.json";
const LOCAL_ONLY: &str = "local-only.json";
/// Longest a report waits for the node to hand over the agent's status
/// handle (it does so right after the agent starts).
const CLOUD_WAIT: Duration = Duration::from_secs(2);

/// The names of the config file's items, by kind.
#[derive(Debug, Default, Clone)]
pub struct ConfigNames {
    rules: HashSet<String>,
    drivers: HashSet<String>,
    functions: HashSet<String>,
}

impl ConfigNames {
    /// The items `cfg` declares (disabled ones too: they are the file's).
    pub fn of(cfg: &NodeConfig) -> ConfigNames {
        ConfigNames {
            rules: cfg.rules.iter().map(|r| r.id.clone()).collect(),
            drivers: cfg.drivers.iter().map(|d| d.name.clone()).collect(),
            functions: cfg.functions.iter().map(|f| f.name.clone()).collect(),
        }
    }
}

/// What was saved through the API, by name.
#[derive(Debug, Default, Clone)]
pub struct Saved {
    rules: BTreeMap<String, RuleConfig>,
    drivers: BTreeMap<String, DriverConfig>,
    functions: BTreeSet<String>,
    local_only: BTreeSet<Mark>,
}

/// An item marked local-only: `kind` (`rule`, `function`, `driver`) and
/// name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mark {
    /// The item's kind.
    pub kind: String,
    /// Its name (a rule's id).
    pub name: String,
}

impl Saved {
    /// Read `dir`'s files; a missing file holds nothing, a bad one is
    /// reported and moved aside (see the module's doc).
    pub fn load(dir: &Path) -> Saved {
        let rules: Vec<RuleConfig> = read_list(&dir.join(RULES));
        let drivers: Vec<DriverConfig> = read_list(&dir.join(DRIVERS));
        let functions: Vec<String> = read_list(&dir.join(FUNCTIONS));
        let local_only: Vec<Mark> = read_list(&dir.join(LOCAL_ONLY));
        Saved {
            rules: rules.into_iter().map(|r| (r.id.clone(), r)).collect(),
            drivers: drivers.into_iter().map(|d| (d.name.clone(), d)).collect(),
            functions: functions.into_iter().collect(),
            local_only: local_only
                .into_iter()
                .filter(|m| verge_agent::local_only::KINDS.contains(&m.kind.as_str()))
                .collect(),
        }
    }

    /// Start the saved drivers the config file does not name; the ones it
    /// names are dropped. `true` when something was dropped.
    pub async fn restore_drivers(&mut self, drivers: &Drivers, config: &ConfigNames) -> bool {
        let shadowed = drop_shadowed("driver", &mut self.drivers, &config.drivers);
        for (name, d) in &self.drivers {
            match drivers.create(d.clone()).await {
                Ok(_) => tracing::info!(driver = %name, "driver saved through the API restored"),
                Err(e) => tracing::error!(
                    driver = %name,
                    "the driver saved through the API does not start (kept in {DIR}/{DRIVERS}): {e}"
                ),
            }
        }
        shadowed
    }

    /// Create the saved rules the config file does not name, after the
    /// config's; the ones it names are dropped. `true` when something was
    /// dropped.
    pub async fn restore_rules(&mut self, engine: &Engine, config: &ConfigNames) -> bool {
        let shadowed = drop_shadowed("rule", &mut self.rules, &config.rules);
        for (id, r) in &self.rules {
            match engine.create(r.clone()).await {
                Ok(_) => tracing::info!(rule = %id, "rule saved through the API restored"),
                Err(e) => tracing::error!(
                    rule = %id,
                    "the rule saved through the API does not start (kept in {DIR}/{RULES}): {e}"
                ),
            }
        }
        shadowed
    }

    /// Functions keep themselves (the registry); drop the names the config
    /// file declares (its version is deployed at start) and the ones the
    /// registry no longer holds. `true` when something was dropped.
    pub fn check_functions(&mut self, functions: &Functions, config: &ConfigNames) -> bool {
        let before = self.functions.len();
        self.functions.retain(|name| {
            if config.functions.contains(name) {
                tracing::warn!(
                    function = %name,
                    "the config file declares this function: its version is deployed, the one \
                     deployed through the API is replaced"
                );
                return false;
            }
            functions.exists(name)
        });
        self.functions.len() != before
    }
}

/// Drop the entries of `saved` named in `config`, with a warning each;
/// whether any was.
fn drop_shadowed<T>(kind: &str, saved: &mut BTreeMap<String, T>, config: &HashSet<String>) -> bool {
    let before = saved.len();
    saved.retain(|name, _| {
        let shadowed = config.contains(name);
        if shadowed {
            tracing::warn!(
                "{kind} `{name}`: the config file declares it, so the config file's runs; the \
                 copy saved through the API is dropped"
            );
        }
        !shadowed
    });
    saved.len() != before
}

/// The list in `path`; empty when the file is missing, and when it cannot
/// be read or parsed (then reported and moved aside).
fn read_list<T: DeserializeOwned>(path: &Path) -> Vec<T> {
    let why = match std::fs::read(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => format!("cannot be read: {e}"),
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(list) => return list,
            Err(e) => format!("not a valid list ({e})"),
        },
    };
    let mut aside = path.as_os_str().to_owned();
    aside.push(".corrupt");
    let aside = PathBuf::from(aside);
    let moved = match std::fs::rename(path, &aside) {
        Ok(()) => format!("the file was moved to {}", aside.display()),
        Err(e) => format!("the file could not be moved aside: {e}"),
    };
    tracing::error!(
        "{}: {why}; the items saved through the API in it are not restored, {moved}",
        path.display()
    );
    Vec::new()
}

/// The node's account of its own items: what its API changed (kept in
/// `<data_dir>/local`) and what its config file declares. The HTTP API
/// tells it of every change it made ([`LocalStore::rule_changed`] and the
/// like); the cloud agent reads it ([`LocalItems`]).
pub struct LocalStore {
    /// `<data_dir>/local`.
    dir: PathBuf,
    /// Where OPC UA drivers keep their certificates by default
    /// (`<data_dir>/opcua-pki`); a driver's default `pki_dir` is not saved.
    pki_root: PathBuf,
    /// The config file's items.
    config: ConfigNames,
    /// What is saved; the lock also orders the files' writes.
    saved: Mutex<Saved>,
    /// The items marked local-only (as in `saved`, readable without
    /// waiting: the agent asks at every apply).
    local_only: std::sync::RwLock<BTreeSet<Mark>>,
    rules: Arc<Engine>,
    drivers: Arc<Drivers>,
    functions: Functions,
    components: Option<Components>,
    /// The agent's status handle, once it runs.
    cloud: watch::Sender<Agent>,
}

/// Where the node's cloud agent is, for the store.
#[derive(Clone)]
enum Agent {
    /// The node runs none.
    None,
    /// The node runs one, and has not handed over its status handle yet.
    Coming,
    /// It runs.
    Running(StatusHandle),
    /// It is stopping: the handle was taken back.
    Gone,
}

/// The node's parts the store reads.
pub struct LocalParts {
    /// The rule engine.
    pub rules: Arc<Engine>,
    /// The drivers.
    pub drivers: Arc<Drivers>,
    /// The function registry.
    pub functions: Functions,
    /// The component supervisor.
    pub components: Option<Components>,
}

impl LocalStore {
    /// The store of `data_dir` over what `saved` holds (already restored).
    pub fn new(
        data_dir: &Path,
        config: ConfigNames,
        saved: Saved,
        parts: LocalParts,
        cloud_managed: bool,
    ) -> LocalStore {
        LocalStore {
            dir: data_dir.join(DIR),
            pki_root: data_dir.join("opcua-pki"),
            config,
            local_only: std::sync::RwLock::new(saved.local_only.clone()),
            saved: Mutex::new(saved),
            rules: parts.rules,
            drivers: parts.drivers,
            functions: parts.functions,
            components: parts.components,
            cloud: watch::channel(if cloud_managed {
                Agent::Coming
            } else {
                Agent::None
            })
            .0,
        }
    }

    /// Give the store the agent's status handle (so that it leaves out what
    /// the cloud manages), or take it back (`None`, at shutdown: the agent
    /// holds the store, so the store must not keep the agent alive).
    pub fn set_cloud(&self, cloud: Option<StatusHandle>) {
        self.cloud.send_replace(match cloud {
            Some(h) => Agent::Running(h),
            None => Agent::Gone,
        });
    }

    /// Write every file (after a start that dropped saved items).
    pub async fn save_all(&self) -> Result<(), String> {
        let saved = self.saved.lock().await;
        self.write_rules(&saved)?;
        self.write_drivers(&saved)?;
        self.write_functions(&saved)?;
        self.write(LOCAL_ONLY, &saved.local_only)
    }

    fn write(&self, file: &str, value: &impl Serialize) -> Result<(), String> {
        let path = self.dir.join(file);
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| e.to_string())?;
        verge_net::fs::write_atomic(&path, &bytes, verge_net::fs::PRIVATE_FILE)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    fn write_rules(&self, saved: &Saved) -> Result<(), String> {
        self.write(RULES, &saved.rules.values().collect::<Vec<_>>())
    }

    fn write_drivers(&self, saved: &Saved) -> Result<(), String> {
        self.write(DRIVERS, &saved.drivers.values().collect::<Vec<_>>())
    }

    fn write_functions(&self, saved: &Saved) -> Result<(), String> {
        self.write(FUNCTIONS, &saved.functions)
    }

    /// Save the rule `id` as it runs now (or its absence), after the API
    /// changed it. What runs is read under the store's lock: of two racing
    /// requests, the one that writes last reads after both changes, so
    /// the file ends as the node runs.
    pub async fn rule_changed(&self, id: &str) -> Result<(), AppError> {
        let mut saved = self.saved.lock().await;
        let now = self.rules.get(id).await.ok().map(|i| i.config);
        let gone = now.is_none();
        match now {
            Some(c) => saved.rules.insert(id.to_owned(), c),
            None => saved.rules.remove(id),
        };
        self.write_rules(&saved)
            .map_err(|e| not_saved("rule", id, &e))?;
        self.unmark_gone(&mut saved, "rule", id, gone)
    }

    /// Save the driver `name` as it runs now (or its absence).
    pub async fn driver_changed(&self, name: &str) -> Result<(), AppError> {
        let mut saved = self.saved.lock().await;
        let now = self.drivers.get(name).map(|(mut c, _)| {
            let default_pki = self.pki_root.join(name);
            if c.pki_dir.as_deref() == default_pki.to_str() {
                c.pki_dir = None;
            }
            c
        });
        let gone = now.is_none();
        match now {
            Some(c) => saved.drivers.insert(name.to_owned(), c),
            None => saved.drivers.remove(name),
        };
        self.write_drivers(&saved)
            .map_err(|e| not_saved("driver", name, &e))?;
        self.unmark_gone(&mut saved, "driver", name, gone)
    }

    /// Record whether the function `name` runs, after the API deployed or
    /// deleted it.
    pub async fn function_changed(&self, name: &str) -> Result<(), AppError> {
        let mut saved = self.saved.lock().await;
        let exists = self.functions.exists(name);
        match exists {
            true => saved.functions.insert(name.to_owned()),
            false => saved.functions.remove(name),
        };
        self.write_functions(&saved)
            .map_err(|e| not_saved("function", name, &e))?;
        self.unmark_gone(&mut saved, "function", name, !exists)
    }

    /// An item deleted through the API loses its local-only mark: a mark
    /// of nothing would keep the cloud's item of that name out unseen.
    fn unmark_gone(
        &self,
        saved: &mut Saved,
        kind: &str,
        name: &str,
        gone: bool,
    ) -> Result<(), AppError> {
        let mark = Mark {
            kind: kind.to_owned(),
            name: name.to_owned(),
        };
        if !gone || !saved.local_only.contains(&mark) {
            return Ok(());
        }
        let mut next = saved.local_only.clone();
        next.remove(&mark);
        self.save_marks(saved, next)
            .map_err(|e| not_saved(kind, name, &e))?;
        tracing::info!(kind, name, "deleted: no longer kept local-only");
        Ok(())
    }

    /// Add (`on`) or take away the mark.
    async fn change_mark(&self, mark: &Mark, on: bool) -> Result<(), AppError> {
        let mut saved = self.saved.lock().await;
        let mut next = saved.local_only.clone();
        if on {
            next.insert(mark.clone());
        } else {
            next.remove(mark);
        }
        self.save_marks(&mut saved, next)
            .map_err(|e| not_saved(&mark.kind, &mark.name, &e))
    }

    /// Write `next` as the marks, then hold it.
    fn save_marks(&self, saved: &mut Saved, next: BTreeSet<Mark>) -> Result<(), String> {
        self.write(LOCAL_ONLY, &next)?;
        saved.local_only = next.clone();
        *self
            .local_only
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = next;
        Ok(())
    }

    /// The items marked local-only.
    pub fn marks(&self) -> Vec<Mark> {
        self.marked().iter().cloned().collect()
    }

    fn marked(&self) -> std::sync::RwLockReadGuard<'_, BTreeSet<Mark>> {
        self.local_only
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Mark (`on`) the `kind` `name` local-only, or take the mark away.
    /// Marking needs the item to run on the node, and saves it as it runs
    /// (so it survives a restart like any item changed through the API).
    /// Without the mark, the next apply or quiet poll puts the cloud's
    /// item back if a revision names one.
    pub async fn set_local_only(&self, kind: &str, name: &str, on: bool) -> Result<Mark, AppError> {
        if !verge_agent::local_only::KINDS.contains(&kind) {
            return Err(AppError::new(
                StatusCode::BAD_REQUEST,
                "invalid_kind",
                format!(
                    "`{kind}` cannot be kept local-only; the kinds are {}",
                    verge_agent::local_only::KINDS.join(", ")
                ),
            ));
        }
        let mark = Mark {
            kind: kind.to_owned(),
            name: name.to_owned(),
        };
        if on {
            let runs = match kind {
                "rule" => self.rules.get(name).await.is_ok(),
                "driver" => self.drivers.get(name).is_some(),
                _ => self.functions.exists(name),
            };
            if !runs {
                return Err(AppError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("the node runs no {kind} `{name}` to keep local-only"),
                ));
            }
        } else if !self.marked().contains(&mark) {
            return Err(AppError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("the {kind} `{name}` is not marked local-only"),
            ));
        }
        // The mark first: from then on the agent calls the item the
        // node's own, so no heartbeat drops its saved copy meanwhile.
        self.change_mark(&mark, on).await?;
        if on {
            // The item is the node's own from now on: keep it as it runs.
            let kept = match kind {
                "rule" => self.rule_changed(name).await,
                "driver" => self.driver_changed(name).await,
                _ => self.function_changed(name).await,
            };
            if let Err(e) = kept {
                // Never a mark without its item saved.
                if let Err(undo) = self.change_mark(&mark, false).await {
                    tracing::error!(kind, name, "the mark was not taken back: {}", undo.message);
                }
                return Err(e);
            }
        }
        tracing::info!(kind, name, on, "local-only mark changed");
        Ok(mark)
    }

    /// The agent's status handle (`None`: the node runs no agent); `Err`
    /// when a cloud-managed node has not handed it over within
    /// [`CLOUD_WAIT`], or took it back to stop.
    async fn agent(&self) -> Result<Option<StatusHandle>, ()> {
        let mut rx = self.cloud.subscribe();
        let ready = rx.wait_for(|a| !matches!(a, Agent::Coming));
        match tokio::time::timeout(CLOUD_WAIT, ready).await {
            Ok(Ok(a)) => match &*a {
                Agent::None => Ok(None),
                Agent::Running(h) => Ok(Some(h.clone())),
                Agent::Coming | Agent::Gone => Err(()),
            },
            _ => Err(()),
        }
    }

    /// The node's own items now, none the cloud manages; saved copies of
    /// items the cloud has come to manage are dropped.
    pub async fn list(&self) -> Vec<LocalItem> {
        let Ok(agent) = self.agent().await else {
            // Without the agent's account a cloud item could be listed as
            // the node's own; list nothing rather than that.
            tracing::debug!("local items not listed: the agent's status is not there");
            return Vec::new();
        };
        let manages =
            |kind: &str, name: &str| agent.as_ref().is_some_and(|a| a.manages(kind, name));
        let rules: Vec<String> = self
            .rules
            .list()
            .await
            .into_iter()
            .map(|r| r.config.id)
            .collect();
        let drivers: Vec<String> = self.drivers.list().into_iter().map(|d| d.name).collect();
        let functions: Vec<String> = self.functions.list().into_iter().map(|f| f.name).collect();
        let mut items = Vec::new();
        let mut saved = self.saved.lock().await;
        let mut taken = (false, false, false);
        for id in rules {
            if manages("rule", &id) {
                taken.0 |= saved.rules.remove(&id).is_some();
            } else if let Some(source) = source(
                self.config.rules.contains(&id),
                saved.rules.contains_key(&id),
            ) {
                items.push(item("rule", id, source));
            }
        }
        for name in drivers {
            if manages("driver", &name) {
                taken.1 |= saved.drivers.remove(&name).is_some();
            } else if let Some(source) = source(
                self.config.drivers.contains(&name),
                saved.drivers.contains_key(&name),
            ) {
                items.push(item("driver", name, source));
            }
        }
        for name in functions {
            if manages("function", &name) {
                taken.2 |= saved.functions.remove(&name);
            } else if let Some(source) = source(
                self.config.functions.contains(&name),
                saved.functions.contains(&name),
            ) {
                items.push(item("function", name, source));
            }
        }
        for c in self.components.iter().flat_map(Components::list) {
            if c.source == Source::Config {
                items.push(item("component", c.name, "config"));
            }
        }
        if taken != (false, false, false) {
            tracing::info!(
                "items saved through the node's API are now deployed by the cloud; their saved \
                 copies are dropped (the cloud's revision wins)"
            );
            let writes = [
                taken.0.then(|| self.write_rules(&saved)),
                taken.1.then(|| self.write_drivers(&saved)),
                taken.2.then(|| self.write_functions(&saved)),
            ];
            for e in writes.into_iter().flatten().filter_map(Result::err) {
                tracing::error!("local items not saved: {e}");
            }
        }
        drop(saved);
        let marked = self.marked();
        for i in &mut items {
            i.local_only = marked.contains(&Mark {
                kind: i.kind.clone(),
                name: i.name.clone(),
            });
        }
        drop(marked);
        items
    }
}

/// `config` when the config file declares it, else `api` when it was
/// saved through the API; else it is not the node's own.
fn source(in_config: bool, saved: bool) -> Option<&'static str> {
    match (in_config, saved) {
        (true, _) => Some("config"),
        (false, true) => Some("api"),
        (false, false) => None,
    }
}

fn item(kind: &str, name: String, source: &str) -> LocalItem {
    LocalItem {
        kind: kind.to_owned(),
        name,
        source: source.to_owned(),
        local_only: false,
    }
}

/// 500 when a change made through the API could not be saved: it runs,
/// but would be gone after a restart.
fn not_saved(kind: &str, name: &str, error: &str) -> AppError {
    AppError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "storage_error",
        format!(
            "the {kind} `{name}` was changed but the change was not saved ({error}): it runs \
             until the node restarts"
        ),
    )
}

impl LocalItems for LocalStore {
    fn items(&self) -> LocalFuture<'_> {
        Box::pin(self.list())
    }

    fn local_only(&self, kind: &str, name: &str) -> bool {
        self.marked().contains(&Mark {
            kind: kind.to_owned(),
            name: name.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn a_missing_file_holds_nothing_and_a_bad_one_is_moved_aside() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join(RULES);
        assert!(read_list::<RuleConfig>(&path).is_empty());
        assert!(!path.exists(), "nothing written");
        // JSON, but not a list of rules.
        std::fs::write(&path, br#"{"id": "x"}"#).expect("write");
        assert!(read_list::<RuleConfig>(&path).is_empty());
        assert!(!path.exists());
        assert_eq!(
            std::fs::read(dir.path().join("rules.json.corrupt")).expect("aside"),
            br#"{"id": "x"}"#
        );
        // Unreadable as a file (a directory in its place).
        let names = dir.path().join(FUNCTIONS);
        std::fs::create_dir(&names).expect("dir");
        assert!(read_list::<String>(&names).is_empty());
        assert!(dir.path().join("functions.json.corrupt").is_dir());
        // A good list.
        std::fs::write(&names, br#"["a", "b"]"#).expect("write");
        assert_eq!(read_list::<String>(&names), ["a", "b"]);
    }

    #[test]
    fn the_source_is_the_config_files_first() {
        assert_eq!(source(true, true), Some("config"));
        assert_eq!(source(true, false), Some("config"));
        assert_eq!(source(false, true), Some("api"));
        assert_eq!(source(false, false), None, "the cloud's, or unknown");
    }
}

//! The node's functions: deploy (versioned, artifacts on disk), list, get,
//! delete, invoke, state and metrics.
//!
//! On disk, under the functions directory (`<data_dir>/functions`):
//!
//! ```text
//! <name>/function.json   spec, version, artifact checksum, deploy time
//! <name>/v<N>.wasm       the module of version N (wasm functions; N and N-1 kept)
//! <name>/state.json      the function's key-value state
//! ```
//!
//! A deploy prepares the new version completely (validation, first
//! instance or first worker) before it replaces the old one; calls already
//! running on the old version finish on it, new calls go to the new one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex as AsyncMutex, watch};

use crate::message::{CallError, Message, now_ms};
use crate::metrics::{FunctionMetrics, MetricsSnapshot};
use crate::process::ProcessRuntime;
use crate::runtime::{HostContext, Runtime};
use crate::spec::{FunctionSpec, RuntimeKind};
use crate::state::State;
use crate::wasm::{WasmModule, WasmRuntime};

/// Largest module accepted.
pub const MAX_MODULE_BYTES: usize = 64 << 20;

/// Where the registry keeps its files.
#[derive(Debug, Clone)]
pub struct FunctionsConfig {
    /// The functions directory, e.g. `<data_dir>/functions`.
    pub dir: PathBuf,
}

/// Why a deploy or delete was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeployError {
    /// The spec is wrong (the message names the field).
    #[error("{0}")]
    Invalid(String),
    /// The artifact was read but cannot run: not valid wasm, wrong ABI,
    /// `verge_init` failed, the worker program does not start…
    #[error("{0}")]
    Unusable(String),
    /// No such function.
    #[error("no function named `{0}`")]
    NotFound(String),
    /// The node could not store the artifact or its record.
    #[error("{0}")]
    Storage(String),
}

/// A function as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionInfo {
    /// Name.
    pub name: String,
    /// Version running now (1, 2, …).
    pub version: u64,
    /// `wasm` or `process`.
    pub runtime: RuntimeKind,
    /// When this version was deployed, ms since the Unix epoch.
    pub deployed_ms: i64,
    /// SHA-256 of the module (wasm).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Module size in bytes (wasm).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The spec it was deployed with.
    pub spec: FunctionSpec,
    /// Memory held now (bytes).
    pub memory_bytes: u64,
    /// Keys and bytes in the function's state.
    pub state_keys: usize,
    /// Bytes of keys and values in the state.
    pub state_bytes: u64,
    /// Counters and latency.
    pub metrics: MetricsSnapshot,
}

/// What `function.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    spec: FunctionSpec,
    version: u64,
    deployed_ms: i64,
    #[serde(default)]
    sha256: Option<String>,
    #[serde(default)]
    size: Option<u64>,
}

struct Deployed {
    record: Record,
    runtime: Arc<dyn Runtime>,
    metrics: Arc<FunctionMetrics>,
    state: Arc<State>,
}

/// The node's function registry. Cheap to clone.
#[derive(Clone)]
pub struct Functions {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    map: RwLock<HashMap<String, Arc<Deployed>>>,
    deploys: AsyncMutex<()>,
    changed: watch::Sender<u64>,
}

impl Functions {
    /// Open the registry and start every function recorded in `dir`. A
    /// function that no longer starts is logged and left out (its files
    /// stay, so a later deploy can replace it). Must run inside tokio.
    pub async fn open(config: FunctionsConfig) -> Result<Functions, String> {
        std::fs::create_dir_all(&config.dir)
            .map_err(|e| format!("functions directory {}: {e}", config.dir.display()))?;
        let (changed, _) = watch::channel(0);
        let f = Functions {
            inner: Arc::new(Inner {
                dir: config.dir.clone(),
                map: RwLock::new(HashMap::new()),
                deploys: AsyncMutex::new(()),
                changed,
            }),
        };
        let entries = std::fs::read_dir(&config.dir)
            .map_err(|e| format!("functions directory {}: {e}", config.dir.display()))?;
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.path().join("function.json").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        for name in names {
            if let Err(e) = f.load(&name).await {
                tracing::error!(function = %name, "not started: {e}");
            }
        }
        let weak = Arc::downgrade(&f.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                for d in inner.all() {
                    if let Err(e) = d.state.flush() {
                        tracing::warn!(function = %d.record.spec.name, "state not saved: {e}");
                    }
                }
            }
        });
        Ok(f)
    }

    async fn load(&self, name: &str) -> Result<(), String> {
        let dir = self.inner.dir.join(name);
        let raw = std::fs::read(dir.join("function.json")).map_err(|e| e.to_string())?;
        let record: Record =
            serde_json::from_slice(&raw).map_err(|e| format!("function.json: {e}"))?;
        let artifact = match record.spec.runtime {
            RuntimeKind::Wasm => Some(
                std::fs::read(dir.join(format!("v{}.wasm", record.version)))
                    .map_err(|e| format!("v{}.wasm: {e}", record.version))?,
            ),
            RuntimeKind::Process => None,
        };
        let deployed = self
            .prepare(record, artifact)
            .await
            .map_err(|e| e.to_string())?;
        self.inner
            .write()
            .insert(name.to_owned(), Arc::new(deployed));
        self.inner.changed.send_modify(|g| *g += 1);
        Ok(())
    }

    /// Deploy `spec` as a new version. For wasm, `module` is the uploaded
    /// module; without it the module is read from `spec.path`. A spec and
    /// module identical to what runs now keep the current version.
    pub async fn deploy(
        &self,
        spec: FunctionSpec,
        module: Option<Vec<u8>>,
    ) -> Result<FunctionInfo, DeployError> {
        spec.validate().map_err(DeployError::Invalid)?;
        let module = match (spec.runtime, module) {
            (RuntimeKind::Process, Some(_)) => {
                return Err(DeployError::Invalid(
                    "a process function takes `command`, not an uploaded module".into(),
                ));
            }
            (RuntimeKind::Process, None) => None,
            (RuntimeKind::Wasm, Some(m)) => Some(m),
            (RuntimeKind::Wasm, None) => {
                let path = spec.path.as_ref().ok_or_else(|| {
                    DeployError::Invalid(
                        "a wasm function needs `path` or an uploaded module".into(),
                    )
                })?;
                Some(read_module(path)?)
            }
        };
        if let Some(m) = &module
            && m.len() > MAX_MODULE_BYTES
        {
            return Err(DeployError::Invalid(format!(
                "the module is {} bytes; at most {MAX_MODULE_BYTES} are accepted",
                m.len()
            )));
        }
        let sha256 = module.as_ref().map(|m| hex(&Sha256::digest(m)));
        let _one_at_a_time = self.inner.deploys.lock().await;
        let name = spec.name.clone();
        let current = self.inner.read().get(&name).cloned();
        if let Some(cur) = &current
            && cur.record.spec == spec
            && cur.record.sha256 == sha256
        {
            return Ok(self.info(cur));
        }
        let record = Record {
            version: current.as_ref().map_or(1, |c| c.record.version + 1),
            deployed_ms: now_ms(),
            size: module.as_ref().map(|m| m.len() as u64),
            sha256,
            spec,
        };
        let deployed = Arc::new(self.prepare(record, module.clone()).await?);
        self.store(&deployed.record, module.as_deref())?;
        deployed
            .state
            .set_quota(deployed.record.spec.limits.state_bytes);
        let old = self.inner.write().insert(name.clone(), deployed.clone());
        self.inner.changed.send_modify(|g| *g += 1);
        tracing::info!(
            function = %name,
            version = deployed.record.version,
            runtime = deployed.record.spec.runtime.as_str(),
            "deployed"
        );
        if let Some(old) = old {
            // Calls already on the old version finish there.
            tokio::spawn(async move { old.runtime.shutdown().await });
        }
        Ok(self.info(&deployed))
    }

    /// Build the runtime for `record`, reusing the function's state and
    /// counters across versions.
    async fn prepare(
        &self,
        record: Record,
        module: Option<Vec<u8>>,
    ) -> Result<Deployed, DeployError> {
        let name = record.spec.name.clone();
        let existing = self.inner.read().get(&name).cloned();
        let (state, metrics) = match existing {
            // The quota changes when this version is swapped in.
            Some(d) => (d.state.clone(), d.metrics.clone()),
            None => {
                let dir = self.inner.dir.join(&name);
                let state = State::open(&dir.join("state.json"), record.spec.limits.state_bytes)
                    .map_err(DeployError::Storage)?;
                (Arc::new(state), Arc::new(FunctionMetrics::default()))
            }
        };
        let config = serde_json::to_string(&record.spec.config)
            .map_err(|e| DeployError::Invalid(format!("`config`: {e}")))?;
        let ctx = HostContext {
            name: Arc::from(name.as_str()),
            version: record.version,
            config: Arc::from(config),
            state: state.clone(),
            limits: record.spec.limits,
        };
        let runtime: Arc<dyn Runtime> = match record.spec.runtime {
            RuntimeKind::Wasm => {
                let bytes = module.unwrap_or_default();
                let prepared = tokio::task::spawn_blocking(move || {
                    WasmModule::new(&bytes).and_then(|m| WasmRuntime::new(m, ctx))
                })
                .await
                .map_err(|e| DeployError::Unusable(format!("preparing the module failed: {e}")))?
                .map_err(DeployError::Unusable)?;
                Arc::new(prepared)
            }
            RuntimeKind::Process => Arc::new(
                ProcessRuntime::start(
                    record.spec.command.clone(),
                    record.spec.workdir.clone(),
                    ctx,
                )
                .map_err(DeployError::Unusable)?,
            ),
        };
        Ok(Deployed {
            record,
            runtime,
            metrics,
            state,
        })
    }

    fn store(&self, record: &Record, module: Option<&[u8]>) -> Result<(), DeployError> {
        let dir = self.inner.dir.join(&record.spec.name);
        let io = |what: &str, e: std::io::Error| {
            DeployError::Storage(format!("{}: {what}: {e}", dir.display()))
        };
        std::fs::create_dir_all(&dir).map_err(|e| io("create", e))?;
        if let Some(m) = module {
            write_atomic(&dir.join(format!("v{}.wasm", record.version)), m)
                .map_err(|e| io("module", e))?;
        }
        let raw =
            serde_json::to_vec_pretty(record).map_err(|e| DeployError::Storage(e.to_string()))?;
        write_atomic(&dir.join("function.json"), &raw).map_err(|e| io("function.json", e))?;
        // Keep this version's module and the one before it.
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.filter_map(Result::ok) {
                let name = e.file_name();
                let name = name.to_string_lossy();
                let v = name
                    .strip_prefix('v')
                    .and_then(|s| s.strip_suffix(".wasm"))
                    .and_then(|s| s.parse::<u64>().ok());
                if v.is_some_and(|v| v + 1 < record.version) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    /// Remove a function, its files and its state. Calls in progress
    /// finish first.
    pub async fn delete(&self, name: &str) -> Result<(), DeployError> {
        let old = {
            let _one_at_a_time = self.inner.deploys.lock().await;
            let dir = self.inner.dir.join(name);
            if !self.inner.read().contains_key(name) {
                return Err(DeployError::NotFound(name.to_owned()));
            }
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(DeployError::Storage(format!("{}: {e}", dir.display())));
                }
                _ => {}
            }
            let old = self
                .inner
                .write()
                .remove(name)
                .ok_or_else(|| DeployError::NotFound(name.to_owned()))?;
            self.inner.changed.send_modify(|g| *g += 1);
            old
        };
        // Outside the deploy lock: a slow call cannot hold up other deploys.
        old.runtime.shutdown().await;
        tracing::info!(function = %name, "deleted");
        Ok(())
    }

    /// Call the current version of `name`.
    ///
    /// A call that reached a version just as it was being replaced (the old
    /// version refuses calls it has not started) runs on the new version,
    /// so no call is lost in a swap.
    pub async fn invoke(&self, name: &str, msg: Message) -> Result<Vec<Message>, CallError> {
        let current = || {
            self.inner
                .read()
                .get(name)
                .cloned()
                .ok_or_else(|| CallError::NotFound(name.to_owned()))
        };
        let mut d = current()?;
        let mut swaps = 0;
        loop {
            let call = Call::start(&d.metrics);
            let r = d.runtime.call(msg.clone()).await;
            if let Err(CallError::Unavailable(_)) = &r
                && swaps < 8
                && let Ok(now) = current()
                && !Arc::ptr_eq(&now, &d)
            {
                // Not counted against the function: it never ran.
                call.abandon();
                d = now;
                swaps += 1;
                continue;
            }
            call.finish(r.as_ref().map(Vec::len));
            if let Err(e) = &r {
                tracing::debug!(function = %name, "call failed: {e}");
            }
            return r;
        }
    }

    /// Whether `name` is deployed.
    pub fn exists(&self, name: &str) -> bool {
        self.inner.read().contains_key(name)
    }

    /// One function.
    pub fn get(&self, name: &str) -> Option<FunctionInfo> {
        let d = self.inner.read().get(name).cloned()?;
        Some(self.info(&d))
    }

    /// All functions, by name.
    pub fn list(&self) -> Vec<FunctionInfo> {
        let mut all: Vec<FunctionInfo> = self.inner.all().iter().map(|d| self.info(d)).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// A function's state entries.
    pub fn state(&self, name: &str) -> Option<std::collections::BTreeMap<String, Vec<u8>>> {
        let d = self.inner.read().get(name).cloned()?;
        Some(d.state.snapshot())
    }

    /// Bumped on every deploy and delete (for subscription triggers).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// Stop every function and save every state.
    pub async fn shutdown(&self) {
        for d in self.inner.all() {
            d.runtime.shutdown().await;
            if let Err(e) = d.state.flush() {
                tracing::warn!(function = %d.record.spec.name, "state not saved: {e}");
            }
        }
    }

    /// Prometheus text for every function.
    pub fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write;
        let all = self.list();
        if all.is_empty() {
            return;
        }
        let counters = [
            ("invocations", "calls started"),
            ("errors", "calls failed other than by timing out"),
            ("timeouts", "calls stopped for running too long"),
            ("outputs", "messages returned"),
        ];
        for (metric, help) in counters {
            let _ = writeln!(out, "# HELP verge_function_{metric}_total Function {help}.");
            let _ = writeln!(out, "# TYPE verge_function_{metric}_total counter");
            for f in &all {
                let m = &f.metrics;
                let v = match metric {
                    "invocations" => m.invocations,
                    "errors" => m.errors,
                    "timeouts" => m.timeouts,
                    _ => m.outputs,
                };
                let l = verge_metrics::label(&f.name);
                let _ = writeln!(out, "verge_function_{metric}_total{{function=\"{l}\"}} {v}");
            }
        }
        let gauges = [
            (
                "memory_bytes",
                "Memory held by the function's instances or workers.",
            ),
            ("version", "Version running."),
            ("in_flight", "Calls running now."),
        ];
        for (metric, help) in gauges {
            let _ = writeln!(out, "# HELP verge_function_{metric} {help}");
            let _ = writeln!(out, "# TYPE verge_function_{metric} gauge");
            for f in &all {
                let v = match metric {
                    "memory_bytes" => f.memory_bytes,
                    "version" => f.version,
                    _ => f.metrics.in_flight,
                };
                let l = verge_metrics::label(&f.name);
                let _ = writeln!(out, "verge_function_{metric}{{function=\"{l}\"}} {v}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP verge_function_duration_seconds Function call duration."
        );
        let _ = writeln!(out, "# TYPE verge_function_duration_seconds histogram");
        for d in self.inner.all() {
            let l = format!("function=\"{}\"", verge_metrics::label(&d.record.spec.name));
            d.metrics
                .latency()
                .render(out, "verge_function_duration_seconds", &l);
        }
    }

    fn info(&self, d: &Deployed) -> FunctionInfo {
        let (state_keys, state_bytes) = d.state.usage();
        FunctionInfo {
            name: d.record.spec.name.clone(),
            version: d.record.version,
            runtime: d.record.spec.runtime,
            deployed_ms: d.record.deployed_ms,
            sha256: d.record.sha256.clone(),
            size: d.record.size,
            spec: d.record.spec.clone(),
            memory_bytes: d.runtime.memory_bytes(),
            state_keys,
            state_bytes,
            metrics: d.metrics.snapshot(),
        }
    }
}

impl Inner {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<Deployed>>> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<Deployed>>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }

    fn all(&self) -> Vec<Arc<Deployed>> {
        self.read().values().cloned().collect()
    }
}

/// One call's place in the metrics: counted as started when made, and as
/// finished when it ends, or when it is dropped unfinished (the caller gave
/// up), so `in_flight` always comes back down.
struct Call<'a> {
    metrics: &'a FunctionMetrics,
    started: Instant,
    done: bool,
}

impl<'a> Call<'a> {
    fn start(metrics: &'a FunctionMetrics) -> Call<'a> {
        metrics.start();
        Call {
            metrics,
            started: Instant::now(),
            done: false,
        }
    }

    fn us(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn finish(mut self, result: Result<usize, &CallError>) {
        self.done = true;
        self.metrics.finish(self.us(), result);
    }

    fn abandon(mut self) {
        self.done = true;
        self.metrics.abandon();
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.metrics.finish(
                self.us(),
                Err(&CallError::Unavailable("the caller stopped waiting".into())),
            );
        }
    }
}

fn read_module(path: &Path) -> Result<Vec<u8>, DeployError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| DeployError::Invalid(format!("`path` {}: {e}", path.display())))?;
    if meta.len() > MAX_MODULE_BYTES as u64 {
        return Err(DeployError::Invalid(format!(
            "`path` {}: {} bytes; at most {MAX_MODULE_BYTES} are accepted",
            path.display(),
            meta.len()
        )));
    }
    std::fs::read(path).map_err(|e| DeployError::Invalid(format!("`path` {}: {e}", path.display())))
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

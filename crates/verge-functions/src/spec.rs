//! How a function is described: in the node's config file (`[[functions]]`)
//! and in the HTTP API's deploy request.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which runtime runs a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// A WebAssembly module built against the Verge ABI (docs/functions.md).
    #[default]
    Wasm,
    /// A long-lived local process speaking line-delimited JSON.
    Process,
}

impl RuntimeKind {
    /// Its name in config and API.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Wasm => "wasm",
            RuntimeKind::Process => "process",
        }
    }
}

/// One function as configured or deployed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    /// Unique name: letters, digits, `-` and `_`, at most 64.
    pub name: String,
    /// `wasm` (default) or `process`.
    #[serde(default)]
    pub runtime: RuntimeKind,
    /// wasm: the module file (`.wasm`, or `.wat` text). Not needed when the
    /// module is uploaded through the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// process: the program and its arguments, e.g. `["python3", "h.py"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// process: working directory of the worker (default: the node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<PathBuf>,
    /// The function's own config, handed to it as JSON.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// Topic filters whose messages trigger the function; its outputs are
    /// published into the broker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<String>,
    /// Sandbox and resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Free text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// Per-function limits (docs/functions.md, "Limits and errors").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Bytes of linear memory one wasm instance may have.
    pub memory: u64,
    /// wasm instructions (roughly) one call may run.
    pub fuel: u64,
    /// wasm instances or worker processes; 0 = the runtime's default
    /// (4 wasm, 1 process).
    pub concurrency: u32,
    /// process: longest one call may take.
    #[serde(with = "verge_duration")]
    pub timeout: Duration,
    /// Bytes of keys and values the function's state may hold.
    pub state_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory: 16 << 20,
            fuel: 50_000_000,
            concurrency: 0,
            timeout: Duration::from_secs(5),
            state_bytes: 1 << 20,
        }
    }
}

impl Limits {
    /// Instances or workers for this runtime.
    pub fn concurrency_for(&self, kind: RuntimeKind) -> usize {
        match (self.concurrency, kind) {
            (0, RuntimeKind::Wasm) => 4,
            (0, RuntimeKind::Process) => 1,
            (n, _) => n as usize,
        }
    }
}

/// Longest function name.
pub const MAX_NAME: usize = 64;

impl FunctionSpec {
    /// A wasm function with default limits and no config (its module is
    /// uploaded separately).
    pub fn wasm(name: &str) -> FunctionSpec {
        FunctionSpec {
            name: name.to_owned(),
            runtime: RuntimeKind::Wasm,
            path: None,
            command: Vec::new(),
            workdir: None,
            config: empty_object(),
            subscribe: Vec::new(),
            limits: Limits::default(),
            description: String::new(),
        }
    }

    /// Check everything that can be checked without reading the artifact.
    /// The error names the field.
    pub fn validate(&self) -> Result<(), String> {
        validate_name(&self.name)?;
        match self.runtime {
            RuntimeKind::Wasm => {
                if !self.command.is_empty() {
                    return Err("`command` is for runtime \"process\"; a wasm function takes `path` or an uploaded module".into());
                }
            }
            RuntimeKind::Process => {
                if self.command.is_empty() || self.command[0].is_empty() {
                    return Err(
                        "runtime \"process\" needs `command`, e.g. [\"python3\", \"handler.py\"]"
                            .into(),
                    );
                }
                if self.path.is_some() {
                    return Err(
                        "`path` is for runtime \"wasm\"; a process function takes `command`".into(),
                    );
                }
            }
        }
        let l = &self.limits;
        if !(64 << 10..=4 << 30).contains(&l.memory) {
            return Err(
                "`limits.memory` must be between 65536 (64 KiB) and 4294967296 (4 GiB) bytes"
                    .into(),
            );
        }
        if !(1_000..=100_000_000_000).contains(&l.fuel) {
            return Err("`limits.fuel` must be between 1000 and 100000000000".into());
        }
        if l.concurrency > 64 {
            return Err("`limits.concurrency` must be at most 64".into());
        }
        if l.timeout < Duration::from_millis(1) || l.timeout > Duration::from_secs(600) {
            return Err("`limits.timeout` must be between 1ms and 10m".into());
        }
        if l.state_bytes > 64 << 20 {
            return Err("`limits.state_bytes` must be at most 67108864 (64 MiB)".into());
        }
        for f in &self.subscribe {
            let ok = if f.starts_with("$share/") {
                verge_mqtt::topic::valid_shared(f)
            } else {
                verge_mqtt::topic::valid_topic_filter(f)
            };
            if !ok {
                return Err(format!(
                    "`subscribe`: {f:?} is not a valid MQTT topic filter"
                ));
            }
        }
        Ok(())
    }
}

/// Names are used in paths, URLs and metric labels.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("`name` must be 1 to {MAX_NAME} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "`name` {name:?} may only contain letters, digits, `-` and `_`"
        ));
    }
    Ok(())
}

//! The spec of a user component the node keeps running: a process or a
//! container, with its restart policy, health check, resource limits, MQTT
//! rights, stop timeout and dependencies, and the checks that a set of
//! specs can run (names, dependencies, cycles).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentSpec {
    /// Unique name: 1 to 64 of `a-z A-Z 0-9 _ - .`, starting with a letter
    /// or digit.
    pub name: String,
    /// Version label: 1 to 64 of the name's characters.
    pub version: String,
    /// A process (default) or a container.
    #[serde(default)]
    pub kind: ComponentKind,
    /// Process: the program to run (a path, or a name looked up in `PATH`;
    /// a relative path is taken in the working directory). Container: the
    /// command run instead of the image's (empty: the image's own).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub command: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Container: the OCI image reference (`localhost/reader:1.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Container: `host` (default: the component reaches the broker on
    /// 127.0.0.1), `none` or `bridge`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Process: the files it runs, fetched from the cloud into its
    /// directory `<data_dir>/components/<name>/<version>` before it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<ArtifactRef>,
    /// Resource limits.
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub limits: Limits,
    /// The MQTT rights its credentials on the node's broker get, beyond
    /// its own `components/<name>/#`.
    #[serde(default, skip_serializing_if = "MqttRights::is_empty")]
    pub mqtt: MqttRights,
    /// After an update, the new version must be healthy at the end of this
    /// time and must not fail (restart, `unhealthy`, `failed`) during it;
    /// else the old version is started again.
    #[serde(default = "d_update_grace", with = "verge_duration")]
    pub update_grace: Duration,
    /// Working directory; `<data_dir>/components/<name>/<version>` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Environment of the component (with the `VERGE_*` variables; a
    /// process does not inherit the node's own, but for `PATH` and a few).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A JSON document handed to the component as `VERGE_COMPONENT_CONFIG`.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub config: serde_json::Value,
    /// When the process is started again after it ends.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// First wait before a restart; doubles per restart up to `backoff_max`.
    #[serde(default = "d_backoff_min", with = "verge_duration")]
    pub backoff_min: Duration,
    /// Longest wait before a restart.
    #[serde(default = "d_backoff_max", with = "verge_duration")]
    pub backoff_max: Duration,
    /// Most restarts within `restart_window`; one more and the component
    /// is `failed` until it is started again.
    #[serde(default = "d_max_restarts")]
    pub max_restarts: u32,
    /// The window `max_restarts` counts in.
    #[serde(default = "d_restart_window", with = "verge_duration")]
    pub restart_window: Duration,
    /// How long a process has after SIGTERM before it is sent SIGKILL.
    #[serde(default = "d_stop_timeout", with = "verge_duration")]
    pub stop_timeout: Duration,
    /// Components that must be healthy before this one starts.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// How health is judged.
    #[serde(default)]
    pub health: HealthCheck,
}

/// What runs a component.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComponentKind {
    /// A process started by the node.
    #[default]
    Process,
    /// An OCI image run by the container engine.
    Container,
}

impl ComponentKind {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::Process => "process",
            ComponentKind::Container => "container",
        }
    }
}

/// A process component's files: a gzipped tar archive the cloud serves
/// and the node checks against its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactRef {
    /// SHA-256 of the archive, lower-case hex.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Resource limits of a component. Containers get them through the
/// engine; processes get `memory` as their address-space limit and
/// `cpu_shares` as a scheduling priority.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Most memory in bytes (an integer, or text such as `"256MiB"`).
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "bytes::deserialize"
    )]
    pub memory: Option<u64>,
    /// Relative CPU weight, 2 to 262144 (1024 is a normal share).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<u32>,
}

impl Limits {
    /// No limit set.
    pub fn is_empty(&self) -> bool {
        self.memory.is_none() && self.cpu_shares.is_none()
    }
}

/// Topic filters a component may publish and subscribe to on the node's
/// broker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttRights {
    /// Filters it may publish to.
    pub publish: Vec<String>,
    /// Filters it may subscribe to.
    pub subscribe: Vec<String>,
}

impl MqttRights {
    /// No right beyond its own topics.
    pub fn is_empty(&self) -> bool {
        self.publish.is_empty() && self.subscribe.is_empty()
    }
}

/// Byte sizes as an integer or as text with a unit (`B`, `KiB`, `MiB`,
/// `GiB`, and `K`, `M`, `G` for the same).
mod bytes {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Int(u64),
        Text(String),
    }

    pub(crate) fn parse(text: &str) -> Result<u64, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{text}` is not a size such as 256MiB"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KiB" | "KB" => 1 << 10,
            "M" | "MiB" | "MB" => 1 << 20,
            "G" | "GiB" | "GB" => 1 << 30,
            u => return Err(format!("`{u}` is not a size unit (B, KiB, MiB, GiB)")),
        };
        n.checked_mul(mult)
            .ok_or_else(|| format!("`{text}` is too large"))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<Size>::deserialize(d)? {
            None => Ok(None),
            Some(Size::Int(n)) => Ok(Some(n)),
            Some(Size::Text(t)) => parse(&t).map(Some).map_err(serde::de::Error::custom),
        }
    }
}

/// When a component's process is started again after it ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Whatever its exit status.
    #[default]
    Always,
    /// Only after a non-zero exit, a signal, or a failed health check.
    OnFailure,
    /// Never: it ends `stopped` (exit 0) or `failed`.
    Never,
}

/// What a health check probes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    /// The process is alive.
    #[default]
    Alive,
    /// A TCP connection to `address` succeeds.
    Tcp,
    /// `GET url` answers `status`.
    Http,
    /// A message on `topic` (default `components/<name>/heartbeat`) at
    /// least once per `interval`.
    Mqtt,
}

/// A component's health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheck {
    /// What is probed.
    pub kind: HealthKind,
    /// `host:port` for `tcp`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// `http://host:port/path` for `http`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The heartbeat topic for `mqtt` (default
    /// `components/<name>/heartbeat`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The status `http` expects.
    pub status: u16,
    /// Time between probes.
    #[serde(with = "verge_duration")]
    pub interval: Duration,
    /// Longest one probe may take.
    #[serde(with = "verge_duration")]
    pub timeout: Duration,
    /// Failed probes in a row that make the component `unhealthy` (and
    /// restart it per its policy).
    pub failures: u32,
    /// Failed probes within this time after a start do not count.
    #[serde(with = "verge_duration")]
    pub start_grace: Duration,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            kind: HealthKind::Alive,
            address: None,
            url: None,
            topic: None,
            status: 200,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            failures: 3,
            start_grace: Duration::from_secs(10),
        }
    }
}

fn d_backoff_min() -> Duration {
    Duration::from_millis(500)
}
fn d_backoff_max() -> Duration {
    Duration::from_secs(30)
}
fn d_max_restarts() -> u32 {
    5
}
fn d_restart_window() -> Duration {
    Duration::from_secs(60)
}
fn d_stop_timeout() -> Duration {
    Duration::from_secs(10)
}
fn d_update_grace() -> Duration {
    Duration::from_secs(30)
}

/// Whether `f` is a valid MQTT topic filter (wildcards whole levels, `#`
/// last), without NUL, at most 1,024 bytes.
fn valid_filter(f: &str) -> bool {
    if f.is_empty() || f.len() > 1024 || f.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = f.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| match *l {
        "#" => i + 1 == levels.len(),
        "+" => true,
        l => !l.contains(['#', '+']),
    })
}

/// Why a component spec, or a set of them, cannot run; every message names
/// the component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComponentError {
    /// A key of one component is wrong.
    #[error("component `{name}`: {key}: {message}")]
    Key {
        /// The component.
        name: String,
        /// The key, e.g. `health.url`.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Two components have one name.
    #[error("component `{0}` is defined twice")]
    Duplicate(String),
    /// A dependency names no component.
    #[error("component `{name}`: depends_on names `{missing}`, which is not a component")]
    UnknownDependency {
        /// The component.
        name: String,
        /// The unknown name.
        missing: String,
    },
    /// Dependencies form a cycle.
    #[error("component `{name}`: dependency cycle {}", cycle.join(" -> "))]
    Cycle {
        /// A component on the cycle.
        name: String,
        /// The cycle, first name repeated at the end.
        cycle: Vec<String>,
    },
}

/// Whether `name` is a valid component name.
pub fn valid_component_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

impl ComponentSpec {
    /// Checks of one spec alone.
    pub fn validate(&self) -> Result<(), ComponentError> {
        let err = |key: &'static str, message: &str| ComponentError::Key {
            name: self.name.clone(),
            key,
            message: message.to_owned(),
        };
        if !valid_component_name(&self.name) {
            return Err(err(
                "name",
                "must be 1 to 64 of a-z A-Z 0-9 _ - . starting with a letter or digit",
            ));
        }
        if self.version.is_empty() || !valid_component_name(&self.version) {
            return Err(err(
                "version",
                "must be 1 to 64 of a-z A-Z 0-9 _ - . starting with a letter or digit",
            ));
        }
        match self.kind {
            ComponentKind::Process => {
                if self.command.trim().is_empty() || self.command.contains('\0') {
                    return Err(err("command", "must be a program name or path"));
                }
                if self.image.is_some() || self.network.is_some() {
                    return Err(err("image", "image and network are for containers only"));
                }
            }
            ComponentKind::Container => {
                let image = self.image.as_deref().unwrap_or("");
                if image.trim().is_empty()
                    || image.len() > 255
                    || image.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(err("image", "a container needs an image reference"));
                }
                if self.command.contains('\0') {
                    return Err(err("command", "must not hold NUL characters"));
                }
                if let Some(n) = &self.network
                    && !matches!(n.as_str(), "host" | "none" | "bridge")
                {
                    return Err(err("network", "must be host, none or bridge"));
                }
                if self.artifact.is_some() {
                    return Err(err("artifact", "a container's files are its image"));
                }
            }
        }
        if let Some(a) = &self.artifact
            && (a.sha256.len() != 64 || !a.sha256.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(err("artifact.sha256", "must be 64 hex digits"));
        }
        if let Some(w) = self.limits.cpu_shares
            && !(2..=262_144).contains(&w)
        {
            return Err(err("limits.cpu_shares", "must be 2 to 262144"));
        }
        if let Some(m) = self.limits.memory
            && m < 4 << 20
        {
            return Err(err("limits.memory", "must be at least 4MiB"));
        }
        for (key, filters) in [
            ("mqtt.publish", &self.mqtt.publish),
            ("mqtt.subscribe", &self.mqtt.subscribe),
        ] {
            if let Some(f) = filters.iter().find(|f| !valid_filter(f)) {
                return Err(err(key, &format!("`{f}` is not a topic filter")));
            }
            // `$verge/...` (the node's RPC) and `$SYS/...` are the node's
            // and the broker's; a component's own RPC topics are granted
            // without being listed.
            if let Some(f) = filters.iter().find(|f| f.starts_with('$')) {
                return Err(err(
                    key,
                    &format!("`{f}`: topics starting with $ are reserved"),
                ));
            }
        }
        if self.args.iter().any(|a| a.contains('\0')) {
            return Err(err("args", "must not hold NUL characters"));
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
                return Err(err("env", &format!("`{k}` is not a valid variable")));
            }
            if k.starts_with("VERGE_COMPONENT_") {
                return Err(err("env", &format!("`{k}` is set by the node")));
            }
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return Err(err(
                "backoff_min",
                "must be above 0 and at most backoff_max",
            ));
        }
        if self.restart_window.is_zero() {
            return Err(err("restart_window", "must be above 0"));
        }
        let h = &self.health;
        if h.interval.is_zero() || h.timeout.is_zero() {
            return Err(err(
                "health.interval",
                "interval and timeout must be above 0",
            ));
        }
        if h.failures == 0 {
            return Err(err("health.failures", "must be at least 1"));
        }
        match h.kind {
            HealthKind::Alive => {}
            HealthKind::Tcp => {
                let ok = h
                    .address
                    .as_deref()
                    .and_then(|a| a.rsplit_once(':'))
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
                if !ok {
                    return Err(err("health.address", "tcp needs host:port"));
                }
            }
            HealthKind::Http => {
                let ok = h
                    .url
                    .as_deref()
                    .is_some_and(|u| u.strip_prefix("http://").is_some_and(|r| !r.is_empty()));
                if !ok {
                    return Err(err("health.url", "http needs an http://host:port/path url"));
                }
                if !(100..=599).contains(&h.status) {
                    return Err(err("health.status", "must be an HTTP status (100-599)"));
                }
            }
            HealthKind::Mqtt => {
                if let Some(t) = &h.topic
                    && (!valid_filter(t) || t.contains(['+', '#']))
                {
                    return Err(err("health.topic", "must be a topic without wildcards"));
                }
                if h.topic.as_ref().is_some_and(|t| t.starts_with('$')) {
                    return Err(err("health.topic", "topics starting with $ are reserved"));
                }
            }
        }
        if self.depends_on.iter().any(|d| d == &self.name) {
            return Err(ComponentError::Cycle {
                name: self.name.clone(),
                cycle: vec![self.name.clone(), self.name.clone()],
            });
        }
        Ok(())
    }
}

/// Check a set of components: each spec, unique names, known
/// dependencies and no cycle. Returns their names in a start order
/// (dependencies first).
pub fn component_start_order(specs: &[ComponentSpec]) -> Result<Vec<String>, ComponentError> {
    let mut index = HashMap::new();
    for (i, s) in specs.iter().enumerate() {
        s.validate()?;
        if index.insert(s.name.as_str(), i).is_some() {
            return Err(ComponentError::Duplicate(s.name.clone()));
        }
    }
    for s in specs {
        for d in &s.depends_on {
            if !index.contains_key(d.as_str()) {
                return Err(ComponentError::UnknownDependency {
                    name: s.name.clone(),
                    missing: d.clone(),
                });
            }
        }
    }
    // Depth-first search: 0 unvisited, 1 on the path, 2 done.
    let mut mark = vec![0u8; specs.len()];
    let mut order = Vec::with_capacity(specs.len());
    for start in 0..specs.len() {
        let mut path: Vec<(usize, usize)> = Vec::new();
        if mark[start] != 0 {
            continue;
        }
        mark[start] = 1;
        path.push((start, 0));
        while let Some((node, next)) = path.last().copied() {
            let deps = &specs[node].depends_on;
            if next < deps.len() {
                if let Some(last) = path.last_mut() {
                    last.1 += 1;
                }
                let Some(&dep) = index.get(deps[next].as_str()) else {
                    continue;
                };
                match mark[dep] {
                    0 => {
                        mark[dep] = 1;
                        path.push((dep, 0));
                    }
                    1 => {
                        let from = path.iter().position(|(n, _)| *n == dep).unwrap_or(0);
                        let mut cycle: Vec<String> = path[from..]
                            .iter()
                            .map(|(n, _)| specs[*n].name.clone())
                            .collect();
                        cycle.push(specs[dep].name.clone());
                        return Err(ComponentError::Cycle {
                            name: specs[dep].name.clone(),
                            cycle,
                        });
                    }
                    _ => {}
                }
            } else {
                mark[node] = 2;
                order.push(specs[node].name.clone());
                path.pop();
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(name: &str, deps: &[&str]) -> ComponentSpec {
        serde_json::from_value(serde_json::json!({
            "name": name, "version": "1", "command": "true",
            "depends_on": deps,
        }))
        .unwrap()
    }

    #[test]
    fn order_puts_dependencies_first() {
        let order =
            component_start_order(&[spec("c", &["b"]), spec("b", &["a"]), spec("a", &[])]).unwrap();
        assert_eq!(order, ["a", "b", "c"]);
    }

    #[test]
    fn cycle_and_unknown_dependency_are_named() {
        let e = component_start_order(&[spec("a", &["b"]), spec("b", &["a"])]).unwrap_err();
        assert_eq!(e.to_string(), "component `a`: dependency cycle a -> b -> a");
        let e = component_start_order(&[spec("a", &["zz"])]).unwrap_err();
        assert!(e.to_string().contains("`zz`"), "{e}");
        let e = component_start_order(&[spec("a", &["a"])]).unwrap_err();
        assert!(matches!(e, ComponentError::Cycle { .. }), "{e}");
        let e = component_start_order(&[spec("a", &[]), spec("a", &[])]).unwrap_err();
        assert_eq!(e, ComponentError::Duplicate("a".into()));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let r: Result<ComponentSpec, _> = serde_json::from_value(serde_json::json!({
            "name": "a", "version": "1", "command": "true", "surprise": "x"
        }));
        assert!(r.is_err());
        let mut s = spec("a", &[]);
        s.image = Some("x".into());
        assert!(s.validate().unwrap_err().to_string().contains("image"));
        let mut s = spec("a", &[]);
        s.name = "../x".into();
        assert!(s.validate().is_err());
        let mut s = spec("a", &[]);
        s.health.kind = HealthKind::Http;
        assert!(s.validate().unwrap_err().to_string().contains("health.url"));
        let r: Result<ComponentSpec, _> = serde_json::from_value(serde_json::json!({
            "name": "a", "version": "1", "command": "true", "stop_timeout": "soon"
        }));
        assert!(r.is_err());
    }

    #[test]
    fn reserved_dollar_topics_are_refused() {
        for (key, filter) in [
            ("mqtt.subscribe", "$verge/rpc/+/+"),
            ("mqtt.subscribe", "$SYS/#"),
            ("mqtt.publish", "$verge/rpc/other/config.get"),
        ] {
            let mut s = spec("a", &[]);
            if key == "mqtt.publish" {
                s.mqtt.publish = vec![filter.into()];
            } else {
                s.mqtt.subscribe = vec![filter.into()];
            }
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("reserved"), "{filter}: {e}");
        }
        let mut s = spec("a", &[]);
        s.health.kind = HealthKind::Mqtt;
        s.health.topic = Some("$SYS/broker/uptime".into());
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("health.topic"), "{e}");
        s.health.topic = Some("a/alive".into());
        s.validate().unwrap();
    }

    #[test]
    fn containers_limits_and_rights_are_checked() {
        let c: ComponentSpec = serde_json::from_value(serde_json::json!({
            "name": "c", "version": "1", "kind": "container", "image": "localhost/c:1",
            "limits": {"memory": "64MiB", "cpu_shares": 512},
            "mqtt": {"publish": ["sensors/+/x"], "subscribe": ["cmd/#"]},
        }))
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.limits.memory, Some(64 << 20));
        let mut bad = c.clone();
        bad.image = None;
        assert!(bad.validate().unwrap_err().to_string().contains("image"));
        let mut bad = c.clone();
        bad.network = Some("overlay".into());
        assert!(bad.validate().is_err());
        let mut bad = c.clone();
        bad.mqtt.publish = vec!["a/#/b".into()];
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("mqtt.publish")
        );
        let mut bad = c.clone();
        bad.limits.cpu_shares = Some(1);
        assert!(bad.validate().is_err());
        let r: Result<ComponentSpec, _> = serde_json::from_value(serde_json::json!({
            "name": "c", "version": "1", "command": "x", "limits": {"memory": "12 parsecs"}
        }));
        assert!(r.is_err());
        let mut p = spec("p", &[]);
        p.command = String::new();
        assert!(p.validate().unwrap_err().to_string().contains("command"));
        assert_eq!(bytes::parse("1GiB"), Ok(1 << 30));
        assert!(bytes::parse("99999999999999G").is_err());
    }
}

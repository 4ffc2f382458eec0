//! Applying a desired state to the running node: devices, then functions,
//! then rules, then drivers ([`crate::drivers`]), then components (their
//! artifacts fetched first).
//! Idempotent; the outcome is one [`ItemResult`] per item applied,
//! removed or failed (items already as the state wants them are left
//! out), and the rest still applies. A failed item keeps what ran before
//! (an old function version, an old rule config); the agent then returns
//! the node to its last good state as a whole.

use std::collections::HashSet;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};
use verge_broker::auth::{AclAction, AclRule, Device};
use verge_broker::config::AclPolicy;
use verge_broker::{Authenticator, Registry};
use verge_functions::{DeployError, FunctionSpec};
use verge_protocol::{
    ComponentSpec, DesiredState, DeviceEntry, FunctionArtifact, ItemOutcome, ItemResult, RuleSpec,
};
use verge_rules::{RuleConfig, RuleError};

use crate::parts::NodeParts;
use crate::{artifact, local_only};

/// What applying a state did, item by item.
#[derive(Debug, Default, Clone)]
pub(crate) struct Results {
    pub(crate) items: Vec<ItemResult>,
}

impl Results {
    fn push(&mut self, kind: &str, name: &str, result: ItemOutcome, error: Option<String>) {
        self.items.push(ItemResult {
            kind: kind.to_owned(),
            name: name.to_owned(),
            result,
            error,
        });
    }

    pub(crate) fn applied(&mut self, kind: &str, name: &str) {
        self.push(kind, name, ItemOutcome::Applied, None);
    }

    pub(crate) fn removed(&mut self, kind: &str, name: &str) {
        self.push(kind, name, ItemOutcome::Removed, None);
    }

    pub(crate) fn failed(&mut self, kind: &str, name: &str, error: impl Into<String>) {
        self.push(kind, name, ItemOutcome::Failed, Some(error.into()));
    }

    /// Whether any item failed.
    pub(crate) fn any_failed(&self) -> bool {
        self.items.iter().any(|i| i.result == ItemOutcome::Failed)
    }

    /// One line per failed item: ``rule `hot`: the error``.
    pub(crate) fn errors(&self) -> Vec<String> {
        failed_lines(&self.items).collect()
    }
}

/// One line per failed item of `items`: ``rule `hot`: the error``.
pub(crate) fn failed_lines(items: &[ItemResult]) -> impl Iterator<Item = String> + '_ {
    items
        .iter()
        .filter(|i| i.result == ItemOutcome::Failed)
        .map(|i| {
            format!(
                "{} `{}`: {}",
                i.kind,
                i.name,
                i.error.as_deref().unwrap_or("failed")
            )
        })
}

/// Apply `next`; `prev` is the desired state that ran before (what the
/// cloud managed), `None` at start.
pub(crate) async fn apply(
    parts: &NodeParts,
    source: &artifact::Source<'_>,
    prev: Option<&DesiredState>,
    next: &DesiredState,
) -> Results {
    let mut out = Results::default();
    // What the node keeps local-only is neither applied nor removed.
    let prev = prev.map(|p| local_only::strip(parts, p, None));
    let prev = prev.as_ref();
    let next = &local_only::strip(parts, next, Some(&mut out.items));
    crate::config::apply_config(parts, prev.map(|p| &p.config), &next.config, &mut out).await;
    apply_devices(parts, prev, &next.devices, &mut out);
    if let Some(host) = &parts.devices {
        host.set_cloud_devices(next.devices.iter().map(|d| d.id.clone()).collect());
    }
    disconnect_revoked(parts, prev, &next.devices).await;
    apply_functions(parts, &next.functions, &mut out).await;
    apply_rules(parts, prev, &next.rules, &mut out).await;
    // After the rules, so no rule still running calls a removed function.
    remove_functions(parts, prev, &next.functions, &mut out).await;
    // After the rules, so that a rule of this state that takes a driver's
    // telemetry runs when the driver publishes its first reading; before
    // the components, whose archives may take long to fetch.
    crate::drivers::apply_drivers(parts, prev, &next.drivers, &mut out).await;
    apply_components(parts, source, prev, &next.components, &mut out).await;
    if out.any_failed() {
        tracing::warn!(
            version = next.version,
            "desired state applied with errors: {}",
            out.errors().join("; ")
        );
    } else {
        tracing::info!(
            version = next.version,
            changed = out.items.len(),
            "desired state applied"
        );
    }
    out
}

/// The ACL of a cloud device: it reads its own topics and shadow, and
/// publishes only what a device sends (readings, events, replies, shadow
/// requests) — not a retained `$shadow/{d}/document`, a shadow answer or a
/// command to itself, which are the node's.
fn device_acl() -> Vec<AclRule> {
    let rule = |permission, action, topic: &str| AclRule {
        permission,
        action,
        topic: topic.to_owned(),
    };
    let publish = |topic| rule(AclPolicy::Allow, AclAction::Publish, topic);
    let subscribe = |topic| rule(AclPolicy::Allow, AclAction::Subscribe, topic);
    // First match wins: the node alone publishes a device's commands and
    // its shadow answers; the rest of `devices/{d}/…` is the device's own
    // (telemetry, events, replies, and streams a rule or forward reads).
    vec![
        rule(AclPolicy::Deny, AclAction::Publish, "devices/%u/commands/#"),
        publish("devices/%u/#"),
        publish("$shadow/%u/get"),
        publish("$shadow/%u/update"),
        subscribe("devices/%u/#"),
        subscribe("$shadow/%u/#"),
        rule(AclPolicy::Deny, AclAction::All, "#"),
    ]
}

/// Close the connections of devices the previous cloud state had and
/// `devices` has not, or has with another secret: their credentials no
/// longer hold. (A removed device has no rights left anyway; this also
/// ends the connection.)
async fn disconnect_revoked(
    parts: &NodeParts,
    prev: Option<&DesiredState>,
    devices: &[DeviceEntry],
) {
    let Some(prev) = prev else { return };
    for old in &prev.devices {
        let kept = devices
            .iter()
            .any(|d| d.id == old.id && d.password_hash == old.password_hash);
        if kept {
            continue;
        }
        match parts.broker.disconnect_user(&old.id).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(device = %old.id, connections = n, "revoked device disconnected")
            }
            Err(e) => tracing::warn!(device = %old.id, "disconnecting a revoked device: {e}"),
        }
    }
}

/// Registry = the node's own devices + the cloud's; a clash keeps the
/// node's own device (and fails that item).
fn apply_devices(
    parts: &NodeParts,
    prev: Option<&DesiredState>,
    devices: &[DeviceEntry],
    out: &mut Results,
) {
    let before = |id: &str| {
        prev.and_then(|p| p.devices.iter().find(|d| d.id == id))
            .map(|d| d.password_hash.as_str())
    };
    let mut changed = Vec::new();
    let mut registry = parts.base_registry.clone();
    let mut taken: HashSet<String> = registry
        .devices
        .iter()
        .map(|d| d.username.clone())
        .collect();
    let base = taken.clone();
    for entry in devices {
        if base.contains(&entry.id) {
            out.failed(
                "device",
                &entry.id,
                "the node's own config has a device of that name; it is kept",
            );
            continue;
        }
        if !taken.insert(entry.id.clone()) {
            out.failed("device", &entry.id, "listed twice");
            continue;
        }
        let device = Device {
            username: entry.id.clone(),
            password_hash: Some(entry.password_hash.clone()),
            client_id: None,
            acl: device_acl(),
        };
        // Check each device alone, so one bad hash does not keep the others
        // out.
        let alone = Registry {
            acl: Vec::new(),
            devices: vec![device.clone()],
        };
        if let Err(e) = Authenticator::new(alone, false, AclPolicy::Deny) {
            out.failed("device", &entry.id, e.to_string());
            continue;
        }
        if before(&entry.id) != Some(entry.password_hash.as_str()) {
            changed.push(entry.id.clone());
        }
        registry.devices.push(device);
    }
    if let Err(e) = parts.auth.replace(registry) {
        out.failed("device", "*", format!("the registry was not replaced: {e}"));
        return;
    }
    for id in changed {
        out.applied("device", &id);
    }
    for old in prev.map(|p| p.devices.as_slice()).unwrap_or_default() {
        if !devices.iter().any(|d| d.id == old.id) {
            out.removed("device", &old.id);
        }
    }
}

async fn apply_functions(parts: &NodeParts, artifacts: &[FunctionArtifact], out: &mut Results) {
    for a in artifacts {
        match apply_function(parts, a).await {
            Ok(true) => out.applied("function", &a.name),
            Ok(false) => {}
            Err(e) => out.failed("function", &a.name, e),
        }
    }
}

/// Put back what was changed on the node since `d` was applied: a
/// cloud-managed rule updated, stopped or deleted, a function replaced or
/// deleted, a driver replaced or deleted (through the config file or an
/// API older than the refusal of such changes). Returns one line per item put back; what cannot be put
/// back is logged and left for the next sync.
pub(crate) async fn reconcile(parts: &NodeParts, d: &DesiredState) -> Vec<String> {
    let d = &local_only::strip(parts, d, None);
    let mut restored = Vec::new();
    for a in &d.functions {
        match apply_function(parts, a).await {
            Ok(true) => restored.push(format!("function `{}` restored", a.name)),
            Ok(false) => {}
            Err(e) => tracing::debug!(function = %a.name, "not restored: {e}"),
        }
    }
    let managed: HashSet<&str> = d.rules.iter().filter_map(rule_id).collect();
    for spec in &d.rules {
        let Some(id) = rule_id(spec) else { continue };
        match apply_rule(parts, &managed, spec).await {
            Ok(true) => restored.push(format!("rule `{id}` restored")),
            Ok(false) => {}
            Err(e) => tracing::debug!(rule = %id, "not restored: {e}"),
        }
    }
    restored.extend(crate::drivers::reconcile(parts, d).await);
    restored
}

/// Remove the functions the previous cloud state had and `artifacts` has
/// not.
async fn remove_functions(
    parts: &NodeParts,
    prev: Option<&DesiredState>,
    artifacts: &[FunctionArtifact],
    out: &mut Results,
) {
    let wanted: HashSet<&str> = artifacts.iter().map(|a| a.name.as_str()).collect();
    for old in prev.map(|p| p.functions.as_slice()).unwrap_or_default() {
        if wanted.contains(old.name.as_str()) {
            continue;
        }
        match parts.functions.delete(&old.name).await {
            Ok(()) => out.removed("function", &old.name),
            Err(DeployError::NotFound(_)) => {}
            Err(e) => out.failed("function", &old.name, format!("not removed: {e}")),
        }
    }
}

/// Deploy `a` unless the same module and spec run now; `true` when it
/// deployed. What runs is compared by the module's SHA-256 first, so the
/// module is decoded and hashed only when it is to be deployed (the
/// reconciliation at every quiet poll costs no module work).
async fn apply_function(parts: &NodeParts, a: &FunctionArtifact) -> Result<bool, String> {
    let mut spec = match serde_json::to_value(&a.spec) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => return Err("spec: not a JSON object".into()),
    };
    spec.insert("name".into(), serde_json::Value::String(a.name.clone()));
    let spec: FunctionSpec = serde_json::from_value(serde_json::Value::Object(spec))
        .map_err(|e| format!("spec: {e}"))?;
    if let Some(cur) = parts.functions.get(&a.name)
        && cur
            .sha256
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case(&a.sha256))
        && cur.spec == spec
    {
        return Ok(false);
    }
    let module = B64
        .decode(a.module_base64.as_bytes())
        .map_err(|e| format!("module_base64: {e}"))?;
    let sha256 = hex::encode(Sha256::digest(&module));
    if !sha256.eq_ignore_ascii_case(&a.sha256) {
        return Err(format!(
            "the module's sha256 is {sha256}, the cloud says {}",
            a.sha256
        ));
    }
    parts
        .functions
        .deploy(spec, Some(module))
        .await
        .map_err(|e| e.to_string())?;
    Ok(true)
}

/// The `id` of a rule spec, if it has one.
fn rule_id(r: &RuleSpec) -> Option<&str> {
    Some(r.id.as_str()).filter(|id| !id.is_empty())
}

/// The node's rule config of a rule spec: the same keys, each action's
/// settings checked by the rule engine's own config types.
fn rule_config(spec: &RuleSpec) -> Result<RuleConfig, String> {
    serde_json::to_value(spec)
        .and_then(serde_json::from_value)
        .map_err(|e| e.to_string())
}

async fn apply_rules(
    parts: &NodeParts,
    prev: Option<&DesiredState>,
    rules: &[RuleSpec],
    out: &mut Results,
) {
    let managed: HashSet<&str> = prev
        .map(|p| p.rules.iter().filter_map(rule_id).collect())
        .unwrap_or_default();
    for (i, spec) in rules.iter().enumerate() {
        let label = rule_id(spec).map_or_else(|| format!("#{i}"), str::to_owned);
        match apply_rule(parts, &managed, spec).await {
            Ok(true) => out.applied("rule", &label),
            Ok(false) => {}
            Err(e) => out.failed("rule", &label, e),
        }
    }
    // Ids the new state names, even when their config is invalid: such a
    // rule keeps its old version rather than disappear.
    let wanted: HashSet<&str> = rules.iter().filter_map(rule_id).collect();
    for id in managed {
        if wanted.contains(id) {
            continue;
        }
        match parts.rules.delete(id).await {
            Ok(()) => out.removed("rule", id),
            Err(RuleError::NotFound(_)) => {}
            Err(e) => out.failed("rule", id, format!("not removed: {e}")),
        }
    }
}

/// Create or update the rule of `spec` unless it runs as is; `true` when
/// it changed something.
async fn apply_rule(
    parts: &NodeParts,
    managed: &HashSet<&str>,
    spec: &RuleSpec,
) -> Result<bool, String> {
    let config = rule_config(spec)?;
    if config.id.is_empty() {
        return Err("`id` is missing".into());
    }
    match parts.rules.get(&config.id).await {
        Ok(info) if info.config == config => Ok(false),
        Ok(_) => {
            if !managed.contains(config.id.as_str()) {
                tracing::warn!(
                    rule = %config.id,
                    "a rule from the cloud replaces the node's own rule of the same id"
                );
            }
            let id = config.id.clone();
            parts
                .rules
                .update(&id, config)
                .await
                .map(|_| true)
                .map_err(|e| e.to_string())
        }
        Err(RuleError::NotFound(_)) => parts
            .rules
            .create(config)
            .await
            .map(|_| true)
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// The component a supervisor's apply error names (``component `x`: …``)
/// and the rest of the line; `*` for an error of the whole set.
fn component_error(line: &str) -> (&str, &str) {
    line.strip_prefix("component `")
        .and_then(|rest| rest.split_once("`: "))
        .unwrap_or(("*", line))
}

/// Install the artifacts of `specs` (fetched when not on disk yet), then
/// have the supervisor run exactly them. A component whose artifact cannot
/// be installed keeps the version the previous state ran (or is not
/// started); old versions' directories are removed, but for the ones the
/// supervisor may still go back to.
async fn apply_components(
    parts: &NodeParts,
    source: &artifact::Source<'_>,
    prev: Option<&DesiredState>,
    specs: &[ComponentSpec],
    out: &mut Results,
) {
    let Some(host) = &parts.components else {
        for spec in specs {
            out.failed(
                "component",
                &spec.name,
                "this node runs no component supervisor",
            );
        }
        return;
    };
    let previous = |name: &str| prev.and_then(|p| p.components.iter().find(|c| c.name == name));
    let mut ready: Vec<ComponentSpec> = Vec::with_capacity(specs.len());
    for spec in specs {
        let Some(a) = &spec.artifact else {
            ready.push(spec.clone());
            continue;
        };
        match artifact::ensure(source, &parts.data_dir, spec, a).await {
            Ok(()) => ready.push(spec.clone()),
            Err(e) => {
                out.failed(
                    "component",
                    &spec.name,
                    format!("artifact of version {} not installed: {e}", spec.version),
                );
                if let Some(old) = previous(&spec.name) {
                    ready.push(old.clone());
                }
            }
        }
    }
    let refused = host.apply(&ready).await;
    for line in &refused {
        let (name, error) = component_error(line);
        out.failed("component", name, error);
    }
    for spec in &ready {
        let failed = out
            .items
            .iter()
            .any(|i| i.kind == "component" && i.name == spec.name);
        if !failed && previous(&spec.name) != Some(spec) {
            out.applied("component", &spec.name);
        }
    }
    for old in prev.map(|p| p.components.as_slice()).unwrap_or_default() {
        if !specs.iter().any(|s| s.name == old.name) {
            out.removed("component", &old.name);
        }
    }
    // Old versions go, but for the ones the supervisor may still go back
    // to (an update within its grace, a rolled-back one).
    let in_use = host.versions_in_use();
    for spec in &ready {
        if spec.artifact.is_none() {
            continue;
        }
        let mut keep = vec![spec.version.as_str()];
        keep.extend(
            in_use
                .iter()
                .filter(|(n, _)| n == &spec.name)
                .map(|(_, v)| v.as_str()),
        );
        artifact::prune(&parts.data_dir, &spec.name, &keep);
    }
    for old in prev.map(|p| p.components.as_slice()).unwrap_or_default() {
        if old.artifact.is_some() && !ready.iter().any(|r| r.name == old.name) {
            artifact::prune(&parts.data_dir, &old.name, &[]);
        }
    }
}

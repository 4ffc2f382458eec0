//! The desired state: everything the cloud wants a node to run, one typed
//! spec per kind (devices, rules, functions, node config).

use serde::{Deserialize, Serialize};

/// Everything a node should run, as set in the cloud. Versions only grow;
/// any change to a resource the node uses gives a new version.
///
/// A new kind of resource is a new field holding a `Vec` of its spec,
/// marked `#[serde(default, skip_serializing_if = "Vec::is_empty")]`: a
/// state that does not use the kind serializes as before, so nodes that do
/// not know it keep taking it, and a node that does not know the kind
/// refuses a state that uses it (unknown keys are refused) instead of
/// running without it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    /// The node's id.
    pub node_id: String,
    /// Desired-state version.
    pub version: i64,
    /// Devices bound to the node, allowed to connect to its broker.
    #[serde(default)]
    pub devices: Vec<DeviceEntry>,
    /// The node's rules.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// Functions the node's rules use.
    #[serde(default)]
    pub functions: Vec<FunctionArtifact>,
    /// Protocol drivers with their point tables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drivers: Vec<DriverSpec>,
    /// Components the node keeps running (a process component's files
    /// are fetched from [`paths::component_artifact`](crate::paths::component_artifact)).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<crate::ComponentSpec>,
    /// The release of the `verge` binary the node should run; `None`
    /// leaves the node on whatever binary runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<crate::ReleaseRef>,
    /// Free-form node settings set in the cloud (a JSON object).
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
}

pub(crate) fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// One device the node's broker accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceEntry {
    /// The device's id: its MQTT username and the `{device}` in its topics.
    pub id: String,
    /// Argon2 PHC hash of the device's secret (the secret never leaves the
    /// cloud's answer to the request that created it).
    pub password_hash: String,
}

/// One rule, with the keys the node's rules API takes (docs/rules.md). The
/// node's rule engine checks it further (SQL, each action's settings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique id on the node: letters, digits, `-` and `_`.
    #[serde(default)]
    pub id: String,
    /// The rule's SQL.
    pub sql: String,
    /// What the rule does with each row, in order.
    #[serde(default)]
    pub actions: Vec<ActionSpec>,
    /// Whether the rule runs.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A description for people.
    #[serde(default)]
    pub description: String,
}

fn yes() -> bool {
    true
}

/// One action of a rule: its `type` (`republish`, `function`, `store`,
/// `upstream`, `webhook`, `log`) and that kind's settings. The settings
/// stay JSON here so the contract does not depend on the rule engine; the
/// engine's own action config types check them on the node (and in the
/// cloud before a rule is stored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionSpec {
    /// The action's kind.
    #[serde(rename = "type")]
    pub kind: String,
    /// The kind's settings (every key but `type`).
    #[serde(flatten)]
    pub settings: serde_json::Map<String, serde_json::Value>,
}

/// One protocol driver with its point table, with the keys the node's
/// drivers API takes (docs/drivers.md): `name`, `protocol`, the
/// connection and `devices`. The settings stay JSON here so the contract
/// does not depend on the driver crate; the driver crate's config type
/// checks them on the node and in the cloud before a driver is stored.
/// A driver the cloud deploys never names a file of the node: no
/// `pki_dir` (the node's own default holds), serial lines only under
/// `/dev/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriverSpec {
    /// The driver's name, unique on the node.
    pub name: String,
    /// Every other key of the driver's config.
    #[serde(flatten)]
    pub settings: serde_json::Map<String, serde_json::Value>,
}

impl DriverSpec {
    /// Why this driver may not come from the cloud: it names a file of
    /// the node (`pki_dir`, a serial `device` outside `/dev/` or with a
    /// `..` component); `Ok` when it names none. The rest of the config is
    /// the driver crate's to check.
    pub fn check_files(&self) -> Result<(), String> {
        if self.settings.contains_key("pki_dir") {
            return Err(format!(
                "driver `{}`: `pki_dir` is the node's own (its default, under its data dir); \
                 a driver from the cloud cannot name a directory",
                self.name
            ));
        }
        if let Some(serial) = self.settings.get("serial")
            && let Some(device) = serial.get("device")
            && !device.as_str().is_some_and(serial_line)
        {
            return Err(format!(
                "driver `{}`: `serial.device` must be a serial line: /dev/tty… (such as \
                 /dev/ttyUSB0) or /dev/serial/…",
                self.name
            ));
        }
        Ok(())
    }
}

/// Whether `path` names a serial line: `/dev/tty<name>` or a link under
/// `/dev/serial/` (udev's by-id and by-path names), with no empty, `.`
/// or `..` part. Other device files (a watchdog, `/dev/fd/…`, `/dev/shm`)
/// are no serial line a driver may open.
pub fn serial_line(path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/dev/") else {
        return false;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    if parts
        .iter()
        .any(|c| c.is_empty() || *c == "." || *c == "..")
    {
        return false;
    }
    match parts.as_slice() {
        [tty] => tty.len() > 3 && tty.starts_with("tty"),
        ["serial", _, ..] => true,
        _ => false,
    }
}

/// A function's code and spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionArtifact {
    /// The function's name.
    pub name: String,
    /// The cloud's version of the artifact (grows with each upload).
    pub version: i64,
    /// SHA-256 of the module, lower-case hex.
    pub sha256: String,
    /// How the function runs.
    pub spec: FunctionSpec,
    /// The module (WebAssembly binary or text), standard base64.
    pub module_base64: String,
}

/// A function's spec as the node's functions API takes it, without the
/// keys that belong to the node alone (`name`, which is the artifact's,
/// `path`, `command`, `workdir`). The node's function runtime checks the
/// values (runtime names, limits and their defaults are its own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSpec {
    /// The runtime (the cloud ships `wasm` only).
    #[serde(default = "wasm")]
    pub runtime: String,
    /// The function's own config, handed to it as JSON.
    #[serde(default = "empty_object")]
    pub config: serde_json::Value,
    /// Topic filters whose messages trigger the function.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<String>,
    /// Sandbox and resource limits (`memory`, `fuel`, `concurrency`,
    /// `timeout`, `state_bytes`); left out ones take the node's defaults.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub limits: serde_json::Map<String, serde_json::Value>,
    /// Free text.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

fn wasm() -> String {
    "wasm".into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn desired_state_round_trips_and_refuses_unknown_keys() {
        let d = DesiredState {
            node_id: "edge-1".into(),
            version: 7,
            devices: vec![DeviceEntry {
                id: "d1".into(),
                password_hash: "$argon2id$x".into(),
            }],
            rules: vec![parse(json!({"id": "r", "sql": "SELECT * FROM \"a\""}))],
            functions: vec![],
            drivers: vec![parse(json!({
                "name": "plc1", "protocol": "modbus-tcp", "host": "127.0.0.1",
                "devices": [{"name": "m1", "points": []}],
            }))],
            components: vec![],
            release: None,
            config: empty_object(),
        };
        let text = serde_json::to_string(&d).unwrap_or_default();
        let back: DesiredState = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, d);
        let bad = text.replacen("{", "{\"surprise\":1,", 1);
        assert!(serde_json::from_str::<DesiredState>(&bad).is_err());
    }

    /// A desired state exactly as the cloud serialized it before the specs
    /// were typed parses, and serializes back to the same JSON.
    #[test]
    fn a_desired_state_of_the_untyped_contract_still_parses() {
        let before = json!({
            "node_id": "edge-1",
            "version": 12,
            "devices": [{"id": "d1", "password_hash": "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA"}],
            "rules": [{
                "id": "hot",
                "sql": "SELECT device, temp FROM \"devices/+/telemetry\" WHERE temp > 30",
                "actions": [
                    {"type": "republish", "topic": "alerts/{device}", "qos": 1},
                    {"type": "function", "name": "tag", "delivery": {"max_attempts": 5}},
                    {"type": "upstream", "topic": "alarms/{device}", "lane": "alarms"},
                ],
                "enabled": true,
                "description": "",
            }],
            "functions": [{
                "name": "tag",
                "version": 3,
                "sha256": "ab12",
                "spec": {
                    "runtime": "wasm",
                    "config": {"k": [1, 2]},
                    "limits": {"memory": 16777216, "fuel": 50000000, "concurrency": 0,
                               "timeout": "5s", "state_bytes": 1048576},
                },
                "module_base64": "AGFzbQ==",
            }],
            "config": {"x": 1},
        });
        let d: DesiredState = parse(before.clone());
        assert_eq!(d.rules[0].actions[1].kind, "function");
        assert_eq!(d.rules[0].actions[1].settings["name"], "tag");
        assert_eq!(d.functions[0].spec.runtime, "wasm");
        assert_eq!(serde_json::to_value(&d).ok(), Some(before));
    }

    #[test]
    fn a_driver_from_the_cloud_names_no_file() {
        let d = |v| parse::<DriverSpec>(v).check_files();
        assert!(
            d(json!({"name": "a", "protocol": "modbus-tcp", "host": "h", "devices": []})).is_ok()
        );
        assert!(d(json!({"name": "a", "serial": {"device": "/dev/ttyUSB0"}})).is_ok());
        assert!(d(json!({"name": "a", "serial": {"device": "/dev/serial/by-id/usb-1"}})).is_ok());
        assert!(d(json!({"name": "a", "serial": {"device": "/dev/ttyS1"}})).is_ok());
        for bad in [
            json!({"name": "a", "pki_dir": "/etc"}),
            json!({"name": "a", "serial": {"device": "/etc/passwd"}}),
            json!({"name": "a", "serial": {"device": "/dev/../etc/passwd"}}),
            json!({"name": "a", "serial": {"device": "/dev/"}}),
            json!({"name": "a", "serial": {"device": "/dev//x"}}),
            json!({"name": "a", "serial": {"device": 3}}),
            json!({"name": "a", "serial": {"device": "/dev/watchdog"}}),
            json!({"name": "a", "serial": {"device": "/dev/fd/3"}}),
            json!({"name": "a", "serial": {"device": "/dev/stdin"}}),
            json!({"name": "a", "serial": {"device": "/dev/shm/x"}}),
            json!({"name": "a", "serial": {"device": "/dev/tty"}}),
            json!({"name": "a", "serial": {"device": "/dev/serial"}}),
            json!({"name": "a", "serial": {"device": "/dev/ttyUSB0/../x"}}),
        ] {
            assert!(d(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn left_out_keys_take_their_defaults() {
        let r: RuleSpec = parse(json!({"id": "r", "sql": "SELECT 1 FROM \"a\""}));
        assert!(r.enabled && r.actions.is_empty() && r.description.is_empty());
        let s: FunctionSpec = parse(json!({}));
        assert_eq!(s.runtime, "wasm");
        assert_eq!(s.config, empty_object());
        let d: DesiredState = parse(json!({"node_id": "n", "version": 1}));
        assert!(d.rules.is_empty() && d.functions.is_empty() && d.devices.is_empty());
    }

    #[test]
    fn specs_refuse_what_is_not_the_contract() {
        let rule = |v| serde_json::from_value::<RuleSpec>(v).is_err();
        assert!(rule(json!({"id": "r"})));
        assert!(rule(json!({"id": "r", "sql": "x", "surprise": 1})));
        assert!(rule(
            json!({"id": "r", "sql": "x", "actions": [{"topic": "t"}]})
        ));
        assert!(rule(json!({"id": "r", "sql": "x", "actions": ["log"]})));
        assert!(serde_json::from_value::<FunctionSpec>(json!({"path": "/x"})).is_err());
    }
}

//! The component schemas of a node's protocol drivers: the driver config
//! the cloud takes (the node's drivers API's, README.md "Devices beyond MQTT") and a
//! stored driver as the API answers it.

use serde_json::{Value, json};

use super::shapes::{array, ms, name_schema, obj, string, uint};

fn duration() -> Value {
    json!({"type": "string", "description": "a duration, e.g. `500ms`, `10s`"})
}

/// The keys of `verge_drivers::DriverConfig` (crates/verge-drivers/src/config.rs)
/// that the cloud takes: every one but `pki_dir`. The driver crate checks
/// the values and the keys each protocol uses.
fn config() -> Value {
    let point = obj(
        &["name", "address"],
        true,
        json!({
            "name": string(),
            "address": {"type": "string", "description": "Modbus `hr:N`, `ir:N`, `coil:N`, `di:N`; DL/T 645 data identifier (8 hex digits); OPC UA node id"},
            "type": {"type": "string", "enum": ["bool", "u16", "i16", "u32", "i32", "f32", "f64", "string"]},
            "byte_order": {"type": "string", "enum": ["big", "little"]},
            "word_order": {"type": "string", "enum": ["big", "little"]},
            "length": uint(),
            "scale": {"type": "number"},
            "offset": {"type": "number"},
            "unit": string(),
            "access": {"type": "string", "enum": ["r", "rw"]},
            "deadband": {"type": "number"},
        }),
    );
    let device = obj(
        &["name", "points"],
        true,
        json!({
            "name": string(),
            "unit": {"type": "integer", "minimum": 0, "maximum": 255},
            "meter": string(),
            "poll": duration(),
            "changes_only": {"type": "boolean"},
            "points": array(point),
        }),
    );
    let mut o = obj(
        &["protocol", "devices"],
        true,
        json!({
            "name": {"allOf": [name_schema()], "description": "optional; the path's name when given"},
            "protocol": {"type": "string", "enum": ["modbus-tcp", "modbus-rtu", "dlt645-tcp", "dlt645-serial", "opcua"]},
            "host": string(),
            "port": {"type": "integer", "minimum": 0, "maximum": 65535},
            "serial": obj(&["device"], true, json!({
                "device": {"type": "string", "description": "a serial line under /dev/, such as /dev/ttyUSB0"},
                "baud": uint(),
                "parity": {"type": "string", "enum": ["none", "even", "odd"]},
                "data_bits": {"type": "integer", "enum": [7, 8]},
                "stop_bits": {"type": "integer", "enum": [1, 2]},
            })),
            "endpoint": {"type": "string", "description": "OPC UA: `opc.tcp://host:port/path`"},
            "security": {"type": "string", "enum": ["none", "basic256sha256", "basic256sha256-sign"]},
            "trust_server_certs": {"type": "boolean"},
            "timeout": duration(),
            "retry": obj(&[], true, json!({"initial": duration(), "max": duration()})),
            "devices": array(device),
            "enabled": {"type": "boolean"},
        }),
    );
    o["description"] = json!(
        "a protocol driver with its point table, as the node's drivers API takes it (README.md, Devices beyond MQTT), without `pki_dir`; serial lines only under /dev/"
    );
    o
}

/// The driver schemas, by name.
pub(super) fn schemas() -> Vec<(&'static str, Value)> {
    vec![
        ("DriverConfig", config()),
        (
            "NodeDriver",
            obj(
                &[
                    "node_id",
                    "name",
                    "protocol",
                    "devices",
                    "points",
                    "config",
                    "created_ms",
                    "updated_ms",
                ],
                true,
                json!({
                    "node_id": string(),
                    "name": string(),
                    "protocol": string(),
                    "devices": {"allOf": [uint()], "description": "devices in the point table"},
                    "points": {"allOf": [uint()], "description": "points of all its devices"},
                    "config": {"type": "object", "description": "the driver's config as it was given, with its `name`: what the node is served"},
                    "created_ms": ms(),
                    "updated_ms": ms(),
                }),
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_drivers::DriverConfig;

    /// Every key of the driver crate's config (all set) is in the schema,
    /// at each level, but `pki_dir`, which the cloud refuses.
    #[test]
    fn the_schema_has_the_driver_configs_keys() {
        let full: DriverConfig = serde_json::from_value(json!({
            "name": "d", "protocol": "opcua", "host": "h", "port": 1,
            "serial": {"device": "/dev/ttyS0"}, "endpoint": "opc.tcp://h", "security": "none",
            "pki_dir": "x", "trust_server_certs": true,
            "devices": [{"name": "m", "unit": 1, "meter": "000000000001",
                "points": [{"name": "p", "address": "a", "type": "u16", "length": 1,
                    "scale": 2.0, "offset": 1.0, "unit": "C", "deadband": 1.0}]}],
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let full = serde_json::to_value(full).unwrap_or_default();
        let schema = config();
        let keys = |v: &Value| -> Vec<String> {
            v.as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default()
        };
        let props = |s: &Value| keys(&s["properties"]);
        let mut top = keys(&full);
        top.retain(|k| k != "pki_dir");
        let have = props(&schema);
        for k in &top {
            assert!(have.contains(k), "{k}");
        }
        let device = &schema["properties"]["devices"]["items"];
        for k in keys(&full["devices"][0]) {
            assert!(props(device).contains(&k), "devices[].{k}");
        }
        for k in keys(&full["devices"][0]["points"][0]) {
            assert!(
                props(&device["properties"]["points"]["items"]).contains(&k),
                "points[].{k}"
            );
        }
        for k in keys(&full["serial"]) {
            assert!(
                props(&schema["properties"]["serial"]).contains(&k),
                "serial.{k}"
            );
        }
        assert!(!have.contains(&"pki_dir".to_owned()));
    }
}

//! The difference between two revisions of a node, per kind (devices,
//! rules, functions, drivers, components, config, release): the names added, removed and
//! changed, and for changed items both versions. Devices never show their
//! password hashes: a changed device says only `secret changed`.
//! Pure: no I/O.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use verge_protocol::DesiredState;

/// The items of one kind by name, each as JSON.
type Items = BTreeMap<String, Value>;

fn by_name<T: serde::Serialize>(items: &[T], name: impl Fn(&T) -> &str) -> Items {
    items
        .iter()
        .map(|i| {
            (
                name(i).to_owned(),
                serde_json::to_value(i).unwrap_or(Value::Null),
            )
        })
        .collect()
}

/// `{added, removed, changed}` between `a` and `b`; `show` turns the two
/// versions of a changed item into its entry.
fn kind(a: &Items, b: &Items, show: impl Fn(&str, &Value, &Value) -> Value) -> Value {
    let added: Vec<&String> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    let removed: Vec<&String> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    let changed: Vec<Value> = a
        .iter()
        .filter_map(|(k, va)| match b.get(k) {
            Some(vb) if vb != va => Some(show(k, va, vb)),
            _ => None,
        })
        .collect();
    json!({"added": added, "removed": removed, "changed": changed})
}

fn both(name: &str, from: &Value, to: &Value) -> Value {
    json!({"name": name, "from": from, "to": to})
}

/// The difference from revision `a` to revision `b`.
pub fn diff(a: &DesiredState, b: &DesiredState) -> Value {
    // A device is only its id and its password hash: a changed device is
    // one whose secret changed, and the hashes stay out of the answer.
    let devices = |s: &DesiredState| -> Items {
        s.devices
            .iter()
            .map(|d| (d.id.clone(), Value::String(d.password_hash.clone())))
            .collect()
    };
    let functions = |s: &DesiredState| -> Items {
        s.functions
            .iter()
            .map(|f| {
                (
                    f.name.clone(),
                    json!({"version": f.version, "sha256": f.sha256, "spec": f.spec}),
                )
            })
            .collect()
    };
    // One item per setting, `section.key`, as the node reports them.
    let config = |s: &DesiredState| -> Items {
        let mut items = Items::new();
        for (section, v) in s.config.as_object().into_iter().flatten() {
            match v.as_object() {
                Some(keys) => {
                    for (key, v) in keys {
                        items.insert(format!("{section}.{key}"), v.clone());
                    }
                }
                None => {
                    items.insert(section.clone(), v.clone());
                }
            }
        }
        items
    };
    // The release of the verge binary: one item, named `verge`.
    let release = |s: &DesiredState| -> Items {
        s.release
            .iter()
            .map(|r| {
                (
                    "verge".to_owned(),
                    serde_json::to_value(r).unwrap_or(Value::Null),
                )
            })
            .collect()
    };
    json!({
        "from": a.version,
        "to": b.version,
        "devices": kind(&devices(a), &devices(b), |name, _, _| {
            json!({"name": name, "change": "secret changed"})
        }),
        "rules": kind(&by_name(&a.rules, |r| &r.id), &by_name(&b.rules, |r| &r.id), both),
        "functions": kind(&functions(a), &functions(b), both),
        "drivers": kind(
            &by_name(&a.drivers, |d| &d.name),
            &by_name(&b.drivers, |d| &d.name),
            both,
        ),
        "components": kind(
            &by_name(&a.components, |c| &c.name),
            &by_name(&b.components, |c| &c.name),
            both,
        ),
        "config": kind(&config(a), &config(b), both),
        "release": kind(&release(a), &release(b), both),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_protocol::DeviceEntry;

    fn state(version: i64) -> DesiredState {
        DesiredState {
            node_id: "n".into(),
            version,
            devices: Vec::new(),
            rules: Vec::new(),
            functions: Vec::new(),
            drivers: Vec::new(),
            components: Vec::new(),
            release: None,
            config: json!({}),
        }
    }

    #[test]
    fn devices_show_names_and_never_hashes() {
        let mut a = state(1);
        a.devices.push(DeviceEntry {
            id: "d1".into(),
            password_hash: "$argon2id$old".into(),
        });
        a.devices.push(DeviceEntry {
            id: "d2".into(),
            password_hash: "$argon2id$two".into(),
        });
        let mut b = state(2);
        b.devices.push(DeviceEntry {
            id: "d1".into(),
            password_hash: "$argon2id$new".into(),
        });
        b.devices.push(DeviceEntry {
            id: "d3".into(),
            password_hash: "$argon2id$three".into(),
        });
        let d = diff(&a, &b);
        assert_eq!(d["devices"]["added"], json!(["d3"]));
        assert_eq!(d["devices"]["removed"], json!(["d2"]));
        assert_eq!(
            d["devices"]["changed"],
            json!([{"name": "d1", "change": "secret changed"}])
        );
        assert!(!d.to_string().contains("argon2"), "{d}");
    }

    #[test]
    fn config_keys_are_items() {
        let mut a = state(1);
        a.config = json!({"log": {"level": "info"}, "store": {"gone": 1}});
        let mut b = state(2);
        b.config = json!({"log": {"level": "debug"}, "store": {"retention": "3d"}});
        let d = diff(&a, &b);
        assert_eq!(d["config"]["added"], json!(["store.retention"]));
        assert_eq!(d["config"]["removed"], json!(["store.gone"]));
        assert_eq!(
            d["config"]["changed"],
            json!([{"name": "log.level", "from": "info", "to": "debug"}])
        );
        assert_eq!(
            d["rules"],
            json!({"added": [], "removed": [], "changed": []})
        );
    }

    #[test]
    fn the_release_is_one_item_named_verge() {
        let release = |version: &str| verge_protocol::ReleaseRef {
            version: version.into(),
            sha256: "ab".repeat(32),
            size: 1,
            signature: "sig".into(),
        };
        let (a, mut b, mut c) = (state(1), state(2), state(3));
        b.release = Some(release("0.1.0"));
        c.release = Some(release("0.2.0"));
        assert_eq!(diff(&a, &b)["release"]["added"], json!(["verge"]));
        assert_eq!(diff(&b, &a)["release"]["removed"], json!(["verge"]));
        let changed = &diff(&b, &c)["release"]["changed"][0];
        assert_eq!(changed["name"], "verge");
        assert_eq!(changed["from"]["version"], "0.1.0");
        assert_eq!(changed["to"]["version"], "0.2.0");
        assert_eq!(
            diff(&a, &a)["release"],
            json!({"added": [], "removed": [], "changed": []})
        );
    }
}

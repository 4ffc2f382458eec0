//! The node settings a revision's `config` may hold: the ones the node
//! changes while it runs, one object per section of the node's config
//! file (`{"log": {"level": "debug"}, "store": {"retention": "3d"}}`).
//! The cloud checks a node's `config` with [`check_node_config`] before it
//! stores it; the node applies the same keys.

use serde_json::Value;

/// `section.key` of every run-time setting.
pub const RUNTIME_SETTINGS: [&str; 2] = ["log.level", "store.retention"];

/// Why `config` is not a set of run-time settings, naming the key; `Ok`
/// when it is.
pub fn check_node_config(config: &Value) -> Result<(), String> {
    let Some(sections) = config.as_object() else {
        return Err("`config` must be a JSON object of sections".into());
    };
    for (section, keys) in sections {
        let Some(keys) = keys.as_object() else {
            return Err(format!(
                "`config.{section}` must be an object of settings (run-time settings: {})",
                RUNTIME_SETTINGS.join(", ")
            ));
        };
        for (key, value) in keys {
            check_setting(&format!("{section}.{key}"), value)?;
        }
    }
    Ok(())
}

/// Why `value` is not a valid value of setting `key`.
pub fn check_setting(key: &str, value: &Value) -> Result<(), String> {
    match (key, value) {
        ("log.level", Value::String(s)) if !s.trim().is_empty() && s.len() <= 1024 => Ok(()),
        ("log.level", _) => Err(
            "`config.log.level` must be a log filter such as \"info\" or \"warn,verge_broker=debug\""
                .into(),
        ),
        ("store.retention", Value::String(s)) => verge_duration::parse(s)
            .map(drop)
            .map_err(|e| format!("`config.store.retention`: {e}")),
        ("store.retention", _) => {
            Err("`config.store.retention` must be a duration such as \"7d\"".into())
        }
        (other, _) => Err(format!(
            "`config.{other}` is not a setting the node changes while it runs ({}); \
             set it in the node's config file and restart the node",
            RUNTIME_SETTINGS.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn runtime_settings_pass_and_others_are_named() {
        assert!(check_node_config(&json!({})).is_ok());
        assert!(
            check_node_config(&json!({"log": {"level": "debug"}, "store": {"retention": "3d"}}))
                .is_ok()
        );
        for (bad, named) in [
            (json!([1]), "JSON object"),
            (json!({"x": 1}), "`config.x`"),
            (
                json!({"broker": {"max_connections": 5}}),
                "config.broker.max_connections",
            ),
            (json!({"log": {"level": 3}}), "log filter"),
            (
                json!({"store": {"retention": "soon"}}),
                "config.store.retention",
            ),
        ] {
            let e = check_node_config(&bad).unwrap_err();
            assert!(e.contains(named), "{bad}: {e}");
        }
    }
}

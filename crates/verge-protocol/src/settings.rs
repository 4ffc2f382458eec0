//! The node settings a revision's `config` may hold: the ones the node
//! changes while it runs, one object per section of the node's config
//! file (`{"log": {"level": "debug"}, "store": {"retention": "3d"},
//! "bridge": {"forwards": [{"filter": "alarms/#", "lane": "alarms"}]}}`).
//! The cloud checks a node's `config` with [`check_node_config`] before it
//! stores it; the node applies the same keys (and checks what only it can:
//! a forward's lane must be one of its cache queue's lanes).

use serde_json::Value;

/// `section.key` of every run-time setting.
pub const RUNTIME_SETTINGS: [&str; 3] = ["log.level", "store.retention", "bridge.forwards"];

/// Entries of `bridge.forwards` a revision may set, at most.
pub const MAX_FORWARDS: usize = 64;

/// A forward's lane when it names none.
pub const DEFAULT_FORWARD_LANE: &str = "telemetry";

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
        ("bridge.forwards", v) => check_forwards(v),
        (other, _) => Err(format!(
            "`config.{other}` is not a setting the node changes while it runs ({}); \
             set it in the node's config file and restart the node",
            RUNTIME_SETTINGS.join(", ")
        )),
    }
}

/// Why `value` is not a valid `bridge.forwards`: an array of at most
/// [`MAX_FORWARDS`] `{"filter": "…", "lane": "…"}` objects (`lane`
/// defaults to [`DEFAULT_FORWARD_LANE`]). The filter is checked as an MQTT
/// topic filter, and may not be a `$` system filter (`$SYS/…`, the node's
/// own `$bridge`/`$function` topics) or a shared subscription; whether the
/// lane exists only the node knows.
pub fn check_forwards(value: &Value) -> Result<(), String> {
    const KEY: &str = "`config.bridge.forwards`";
    let Some(list) = value.as_array() else {
        return Err(format!(
            "{KEY} must be an array of {{\"filter\": \"…\", \"lane\": \"…\"}} objects"
        ));
    };
    if list.len() > MAX_FORWARDS {
        return Err(format!(
            "{KEY} has {} entries, at most {MAX_FORWARDS}",
            list.len()
        ));
    }
    for (i, f) in list.iter().enumerate() {
        let at = format!("`config.bridge.forwards[{i}]");
        let Some(f) = f.as_object() else {
            return Err(format!(
                "{at}` must be an object {{\"filter\": \"…\", \"lane\": \"…\"}}"
            ));
        };
        if let Some(other) = f.keys().find(|k| *k != "filter" && *k != "lane") {
            return Err(format!(
                "{at}.{other}` is not a forward's key (filter, lane)"
            ));
        }
        let filter = match f.get("filter") {
            Some(Value::String(s)) => s,
            Some(_) => return Err(format!("{at}.filter` must be a string")),
            None => return Err(format!("{at}.filter` is missing")),
        };
        check_filter(filter).map_err(|e| format!("{at}.filter`: `{filter}` {e}"))?;
        match f.get("lane") {
            None => {}
            Some(Value::String(lane)) if valid_lane(lane) => {}
            Some(_) => {
                return Err(format!(
                    "{at}.lane` must be a lane name of the node's cache queue \
                     (`[a-z0-9_-]`, at most 64 characters), e.g. \"telemetry\""
                ));
            }
        }
    }
    Ok(())
}

/// Why `filter` is not a filter a forward may have.
fn check_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("is empty");
    }
    if filter.len() > usize::from(u16::MAX) {
        return Err("is longer than 65,535 bytes");
    }
    if filter.contains('\0') {
        return Err("contains a NUL character");
    }
    if filter.starts_with('$') {
        return Err(
            "starts with `$`: system topics, shared subscriptions and the node's own \
             `$bridge`/`$function` topics are not forwarded",
        );
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        if level.contains('#') && (level != "#" || !last) {
            return Err("has a `#` that is not the whole last level");
        }
        if level.contains('+') && level != "+" {
            return Err("has a `+` that is not a whole level");
        }
    }
    Ok(())
}

/// A cache queue lane's name: `[a-z0-9_-]`, 1 to 64 characters.
fn valid_lane(lane: &str) -> bool {
    !lane.is_empty()
        && lane.len() <= 64
        && lane
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
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

    #[test]
    fn forwards_pass_and_each_fault_names_key_and_index() {
        for good in [
            json!([]),
            json!([{"filter": "devices/#"}]),
            json!([
                {"filter": "alarms/+/high", "lane": "alarms"},
                {"filter": "#", "lane": "telemetry"},
                {"filter": "a/b", "lane": "lane_2-x"},
            ]),
        ] {
            let config = json!({"bridge": {"forwards": good}});
            assert_eq!(check_node_config(&config), Ok(()), "{config}");
        }
        let many: Vec<Value> = (0..=MAX_FORWARDS)
            .map(|i| json!({"filter": format!("t/{i}")}))
            .collect();
        for (bad, named) in [
            (json!({"filter": "a"}), "must be an array"),
            (json!("a/#"), "must be an array"),
            (Value::Array(many), "at most 64"),
            (
                json!([{"filter": "a"}, 3]),
                "`config.bridge.forwards[1]` must be an object",
            ),
            (
                json!([{"lane": "alarms"}]),
                "`config.bridge.forwards[0].filter` is missing",
            ),
            (
                json!([{"filter": 7}]),
                "`config.bridge.forwards[0].filter` must be a string",
            ),
            (
                json!([{"filter": ""}]),
                "`config.bridge.forwards[0].filter`: `` is empty",
            ),
            (json!([{"filter": "a\0b"}]), "NUL"),
            (json!([{"filter": "$SYS/#"}]), "starts with `$`"),
            (json!([{"filter": "$share/g/a/#"}]), "starts with `$`"),
            (json!([{"filter": "$bridge/x"}]), "starts with `$`"),
            (
                json!([{"filter": "ok"}, {"filter": "a/#/b"}]),
                "`config.bridge.forwards[1].filter`: `a/#/b` has a `#`",
            ),
            (json!([{"filter": "a/b+"}]), "has a `+`"),
            (
                json!([{"filter": "a", "lane": ""}]),
                "`config.bridge.forwards[0].lane` must be a lane name",
            ),
            (
                json!([{"filter": "a", "lane": "Alarms"}]),
                "forwards[0].lane",
            ),
            (json!([{"filter": "a", "lane": 1}]), "forwards[0].lane"),
            (
                json!([{"filter": "a", "qos": 1}]),
                "`config.bridge.forwards[0].qos` is not a forward's key",
            ),
        ] {
            let config = json!({"bridge": {"forwards": bad}});
            let e = check_node_config(&config).unwrap_err();
            assert!(e.contains(named), "{config}: {e}");
        }
        // The bridge's other keys stay restart-only.
        let e = check_node_config(&json!({"bridge": {"url": "mqtt://x"}})).unwrap_err();
        assert!(
            e.contains("config.bridge.url") && e.contains("restart the node"),
            "{e}"
        );
        assert!(
            e.contains("bridge.forwards"),
            "the message lists the run-time keys: {e}"
        );
    }
}

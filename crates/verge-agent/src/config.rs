//! The node settings a revision's `config` changes at run time. It mirrors
//! the node's config file, one object per section; the keys below are the
//! ones the node changes while it runs, each an item of the revision
//! (`config` / `log.level`): the log filter, the store's retention and the
//! cloud link's forwards (`bridge.forwards`). Any other key is a failed
//! item: it lives in the node's config file and needs a restart
//! (listeners, TLS, the data directory, the broker's limits are bound or
//! allocated once at start; the cloud link's endpoint and credentials are
//! how the node reaches the cloud; the queue's lanes are its on-disk
//! layout). A key the previous revision set and this one leaves out goes
//! back to the node's own value (its config file's).

use serde_json::{Map, Value};

use crate::apply::Results;
use crate::parts::NodeParts;

use verge_protocol::RUNTIME_SETTINGS as RUNTIME_KEYS;

/// `section.key` → value, for every leaf two levels deep; anything else
/// (a top-level scalar, deeper nesting) is named as it is.
fn flatten(config: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let Some(sections) = config.as_object() else {
        return out;
    };
    for (section, v) in sections {
        match v {
            Value::Object(keys) => {
                for (key, v) in keys {
                    out.push((format!("{section}.{key}"), v.clone()));
                }
            }
            other => out.push((section.clone(), other.clone())),
        }
    }
    out
}

/// Apply the settings of `next` that differ from `prev`'s, and put back
/// the node's own value of those `prev` set and `next` does not.
pub(crate) async fn apply_config(
    parts: &NodeParts,
    prev: Option<&Value>,
    next: &Value,
    out: &mut Results,
) {
    let empty = Value::Object(Map::new());
    let before: Vec<(String, Value)> = flatten(prev.unwrap_or(&empty));
    let after = flatten(next);
    if !next.is_object() {
        out.failed("config", "*", "must be a JSON object of sections");
        return;
    }
    for (key, value) in &after {
        if before.iter().any(|(k, v)| k == key && v == value) {
            continue;
        }
        match set(parts, key, Some(value)).await {
            Ok(()) => out.applied("config", key),
            Err(e) => out.failed("config", key, e),
        }
    }
    for (key, _) in &before {
        if after.iter().any(|(k, _)| k == key) || !RUNTIME_KEYS.contains(&key.as_str()) {
            continue;
        }
        match set(parts, key, None).await {
            Ok(()) => out.removed("config", key),
            Err(e) => out.failed(
                "config",
                key,
                format!("the node's own value not put back: {e}"),
            ),
        }
    }
}

/// Set `key` to `value`, or back to the node's own value (`None`).
async fn set(parts: &NodeParts, key: &str, value: Option<&Value>) -> Result<(), String> {
    match key {
        "log.level" => {
            let filter = match value {
                Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
                Some(_) => {
                    return Err(
                        "expected a log filter such as \"info\" or \"warn,verge_broker=debug\""
                            .into(),
                    );
                }
                None => verge_net::log_filter::initial()
                    .ok_or("this node's log filter cannot be changed while it runs")?,
            };
            verge_net::log_filter::set(&filter)
        }
        "store.retention" => {
            let store = parts
                .store
                .as_ref()
                .ok_or("this node runs no local store (store.enabled = false)")?;
            let retention = match value {
                Some(Value::String(s)) => verge_duration::parse(s)?,
                Some(_) => return Err("expected a duration such as \"7d\"".into()),
                None => store.configured_retention(),
            };
            store.set_retention(retention).map_err(|e| e.to_string())
        }
        "bridge.forwards" => {
            let bridge = parts
                .bridge
                .as_ref()
                .ok_or("this node runs no link to the cloud (bridge.enabled = false)")?;
            let forwards = match value {
                Some(v) => forwards(v)?,
                None => bridge.configured_forwards().to_vec(),
            };
            // A refused set (a lane the queue does not have) changes
            // nothing; the error names the entry.
            bridge
                .set_forwards(forwards)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }
        other => Err(format!(
            "`{other}` is not a setting the node changes while it runs ({}); set it in the \
             node's config file and restart the node",
            RUNTIME_KEYS.join(", ")
        )),
    }
}

/// The forwards of a deployed `bridge.forwards`, checked as the cloud
/// checks them.
fn forwards(value: &Value) -> Result<Vec<verge_bridge::Forward>, String> {
    verge_protocol::check_forwards(value)?;
    serde_json::from_value(value.clone()).map_err(|e| format!("`config.bridge.forwards`: {e}"))
}

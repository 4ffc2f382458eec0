//! JSON reshape: flattens a nested telemetry document into the flat shape
//! a time-series store wants. The benchmarks use it as the representative
//! "real" function: parse JSON, walk it, build and serialize a new document.
//!
//! Input (a JSON object), for example on topic `devices/d1/telemetry`:
//!
//! ```json
//! {"device": {"id": "d1", "site": "plant-1", "battery": 87},
//!  "timestamp": 1764390000000,
//!  "readings": {"env": {"temperature": 21.5, "humidity": 40},
//!               "power": {"voltage": 230.1, "on": true}},
//!  "cells": [3.3, 3.4],
//!  "status": "ok", "note": null}
//! ```
//!
//! Output, on `{topic}/flat` (here `devices/d1/telemetry/flat`):
//!
//! ```json
//! {"device": "d1", "ts": 1764390000000,
//!  "metrics": {"cells.0": 3.3, "cells.1": 3.4, "device.battery": 87,
//!              "readings.env.humidity": 40, "readings.env.temperature": 21.5,
//!              "readings.power.on": true, "readings.power.voltage": 230.1}}
//! ```
//!
//! The mapping, exactly:
//!
//! - `device`: the payload's `device` when it is a string; else
//!   `device.id` when that is a string; else the second level of a
//!   `devices/{device}/…` topic; else `null`.
//! - `ts`: the payload's `ts` when it is an integer; else its `timestamp`
//!   when that is an integer; else the message time (`time_ms`).
//! - `metrics`: every number and boolean in the payload, at any depth,
//!   keyed by its path: object keys and array indices joined with `.`.
//!   The values used for `device` and `ts` are not metrics; strings and
//!   nulls are dropped. Keys come out sorted.
//!
//! A payload that is not a JSON object fails the call. Config (optional):
//! `{"topic": "{topic}/flat"}`, where `{topic}` is the input topic and
//! `{device}` the resolved device (`unknown` when `null`). The output has
//! content type `application/json` and the input's QoS.

use serde_json::{Map, Value, json};
use verge_function::{Context, Error, Message, Result};

verge_function::export!(handle);

const DEFAULT_TOPIC: &str = "{topic}/flat";

fn topic_template(raw: &str) -> Result<String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(DEFAULT_TOPIC.to_owned());
    }
    let map = match serde_json::from_str(raw).context("config is not JSON")? {
        Value::Null => return Ok(DEFAULT_TOPIC.to_owned()),
        Value::Object(map) => map,
        _ => return Err("config must be a JSON object".into()),
    };
    let mut topic = DEFAULT_TOPIC.to_owned();
    for (key, value) in map {
        match (key.as_str(), value) {
            ("topic", Value::String(t)) => topic = t,
            ("topic", _) => return Err("config key topic: wrong type".into()),
            _ => return Err(Error::msg(format_args!("unknown config key {key}"))),
        }
    }
    Ok(topic)
}

fn handle(msg: Message) -> Result<Vec<Message>> {
    let template = topic_template(&verge_function::config())?;
    let Value::Object(mut doc) =
        serde_json::from_slice(&msg.payload).context("payload is not JSON")?
    else {
        return Err("payload is not a JSON object".into());
    };
    let device = take_device(&mut doc).or_else(|| match (msg.topic_level(0), msg.topic_level(1)) {
        (Some("devices"), Some(d)) if !d.is_empty() => Some(d.to_owned()),
        _ => None,
    });
    let ts = take_integer(&mut doc, "ts")
        .or_else(|| take_integer(&mut doc, "timestamp"))
        .unwrap_or_else(|| Value::from(msg.time_ms));
    let mut metrics = Map::new();
    let mut path = String::new();
    for (key, value) in &doc {
        flatten(value, key, &mut path, &mut metrics);
    }
    let topic = template
        .replace("{device}", device.as_deref().unwrap_or("unknown"))
        .replace("{topic}", &msg.topic);
    let out = json!({"device": device, "ts": ts, "metrics": metrics});
    Ok(vec![
        Message::json(topic, out.to_string()).with_qos(msg.qos),
    ])
}

/// Remove and return the device name: `device` as a string, or `device.id`.
fn take_device(doc: &mut Map<String, Value>) -> Option<String> {
    match doc.get_mut("device")? {
        Value::String(_) => match doc.remove("device") {
            Some(Value::String(d)) => Some(d),
            _ => None,
        },
        Value::Object(dev) => match dev.get("id") {
            Some(Value::String(_)) => match dev.remove("id") {
                Some(Value::String(d)) => Some(d),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// Remove and return `doc[key]` when it is an integer.
fn take_integer(doc: &mut Map<String, Value>, key: &str) -> Option<Value> {
    if doc.get(key).is_some_and(|v| v.is_i64() || v.is_u64()) {
        doc.remove(key)
    } else {
        None
    }
}

/// Add the numbers and booleans under `value` to `metrics`, keyed by
/// `path.key…`; `path` is scratch space, restored on return.
fn flatten(value: &Value, key: &str, path: &mut String, metrics: &mut Map<String, Value>) {
    let len = path.len();
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(key);
    match value {
        Value::Number(_) | Value::Bool(_) => {
            metrics.insert(path.clone(), value.clone());
        }
        Value::Object(map) => {
            for (k, v) in map {
                flatten(v, k, path, metrics);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(v, &i.to_string(), path, metrics);
            }
        }
        Value::String(_) | Value::Null => {}
    }
    path.truncate(len);
}

#[cfg(test)]
mod tests {
    use verge_function::mock;

    use super::*;

    fn run(topic: &str, payload: Value) -> Result<Value> {
        let msg = Message::json(topic, payload.to_string()).with_time_ms(42);
        let out = mock::invoke(handle, &msg)?;
        assert_eq!(out.len(), 1);
        Ok(serde_json::from_slice(&out[0].payload).unwrap_or_default())
    }

    #[test]
    fn the_documented_example() {
        let input = json!({
            "device": {"id": "d1", "site": "plant-1", "battery": 87},
            "timestamp": 1_764_390_000_000_u64,
            "readings": {"env": {"temperature": 21.5, "humidity": 40},
                         "power": {"voltage": 230.1, "on": true}},
            "cells": [3.3, 3.4],
            "status": "ok", "note": null
        });
        let msg = Message::json("devices/d1/telemetry", input.to_string()).with_qos(2);
        let out = mock::invoke(handle, &msg).unwrap();
        assert_eq!(out[0].topic, "devices/d1/telemetry/flat");
        assert_eq!(out[0].qos, 2);
        assert_eq!(
            out[0].payload_str().unwrap(),
            concat!(
                r#"{"device":"d1","metrics":{"cells.0":3.3,"cells.1":3.4,"device.battery":87,"#,
                r#""readings.env.humidity":40,"readings.env.temperature":21.5,"#,
                r#""readings.power.on":true,"readings.power.voltage":230.1},"#,
                r#""ts":1764390000000}"#
            )
        );
    }

    #[test]
    fn device_and_ts_fallbacks() {
        let out = run("devices/d9/x", json!({"device": "d2", "ts": 5, "t": 1})).unwrap();
        assert_eq!(out, json!({"device": "d2", "ts": 5, "metrics": {"t": 1}}));
        // A non-integer timestamp is a metric; the topic names the device.
        let out = run("devices/d9/x", json!({"timestamp": 1.5})).unwrap();
        assert_eq!(
            out,
            json!({"device": "d9", "ts": 42, "metrics": {"timestamp": 1.5}})
        );
        let out = run("plain", json!({"device": {"id": 3}})).unwrap();
        assert_eq!(
            out,
            json!({"device": null, "ts": 42, "metrics": {"device.id": 3}})
        );
    }

    #[test]
    fn configured_topic() {
        mock::set_config(r#"{"topic":"flat/{device}"}"#);
        let msg = Message::new("devices/d3/t", "{}");
        assert_eq!(mock::invoke(handle, &msg).unwrap()[0].topic, "flat/d3");
        mock::set_config(r#"{"topic":"flat/{device}"}"#);
        let msg = Message::new("other", "{}");
        assert_eq!(mock::invoke(handle, &msg).unwrap()[0].topic, "flat/unknown");
        mock::set_config(r#"{"topic":1}"#);
        assert!(mock::invoke(handle, &msg).is_err());
    }

    #[test]
    fn non_objects_are_errors() {
        assert!(run("t", json!([1, 2])).is_err());
        let msg = Message::new("t", "{");
        assert!(
            mock::invoke(handle, &msg)
                .unwrap_err()
                .message()
                .starts_with("payload is not JSON")
        );
    }
}

//! Threshold alert: when a number in a JSON payload exceeds a threshold,
//! publish one JSON alert; otherwise publish nothing.
//!
//! Config (every key optional; an empty config, `null` or `{}` means all
//! defaults; any other key is an error):
//!
//! ```json
//! {"field": "temperature", "above": 30, "topic": "alerts/{device}"}
//! ```
//!
//! - `field`: the payload field to watch; dots reach into nested objects
//!   (`"env.temperature"`).
//! - `above`: the threshold; the alert fires when the value is strictly
//!   greater.
//! - `topic`: the alert's topic. `{device}` is the second level of a
//!   `devices/{device}/…` topic (`unknown` for other topics), `{topic}` the
//!   input topic.
//!
//! A payload that is not JSON, or lacks the field, or whose field is not a
//! number, fails the call with an error naming it. The alert:
//!
//! ```json
//! {"above":30.0,"device":"d1","field":"temperature","time_ms":1764390000000,
//!  "topic":"devices/d1/telemetry","value":31.5}
//! ```
//!
//! (keys sorted, as serde_json writes a map without `preserve_order`)
//!
//! with content type `application/json` and the input's QoS.

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::{Value, json};
use verge_function::{Context, Error, Message, Result};

verge_function::export!(handle, init = init);

/// The resolved config.
#[derive(Debug, PartialEq)]
struct Config {
    /// Dotted path of the watched field.
    field: String,
    /// Alert when the value is greater than this.
    above: f64,
    /// Alert topic template.
    topic: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            field: "temperature".to_owned(),
            above: 30.0,
            topic: "alerts/{device}".to_owned(),
        }
    }
}

impl Config {
    fn parse(raw: &str) -> Result<Self> {
        let mut config = Self::default();
        let raw = raw.trim();
        if raw.is_empty() {
            return Ok(config);
        }
        let map = match serde_json::from_str(raw).context("config is not JSON")? {
            Value::Null => return Ok(config),
            Value::Object(map) => map,
            _ => return Err("config must be a JSON object".into()),
        };
        for (key, value) in map {
            let bad = || Error::msg(format_args!("config key {key}: wrong type"));
            match key.as_str() {
                "field" => config.field = value.as_str().ok_or_else(bad)?.to_owned(),
                "above" => config.above = value.as_f64().ok_or_else(bad)?,
                "topic" => config.topic = value.as_str().ok_or_else(bad)?.to_owned(),
                _ => return Err(Error::msg(format_args!("unknown config key {key}"))),
            }
        }
        Ok(config)
    }
}

thread_local! {
    /// The config, parsed once per instance.
    static CONFIG: RefCell<Option<Rc<Config>>> = const { RefCell::new(None) };
}

fn config() -> Result<Rc<Config>> {
    if let Some(c) = CONFIG.with_borrow(Clone::clone) {
        return Ok(c);
    }
    let c = Rc::new(Config::parse(&verge_function::config())?);
    CONFIG.set(Some(Rc::clone(&c)));
    Ok(c)
}

/// Check the config when the instance starts, so a bad one fails the
/// deploy's first call with a clear error rather than every call.
fn init() -> Result<()> {
    config().map(drop)
}

fn handle(msg: Message) -> Result<Vec<Message>> {
    let config = config()?;
    let doc: Value = serde_json::from_slice(&msg.payload).context("payload is not JSON")?;
    let field = &config.field;
    let value = lookup(&doc, field)
        .context(format_args!("{field} missing"))?
        .as_f64()
        .context(format_args!("{field} is not a number"))?;
    if value <= config.above {
        return Ok(Vec::new());
    }
    let device = device(&msg);
    let alert = json!({
        "device": device,
        "field": config.field,
        "value": value,
        "above": config.above,
        "topic": msg.topic,
        "time_ms": msg.time_ms,
    });
    let topic = config
        .topic
        .replace("{device}", device)
        .replace("{topic}", &msg.topic);
    Ok(vec![
        Message::json(topic, alert.to_string()).with_qos(msg.qos),
    ])
}

/// The value at a dotted path of object keys.
fn lookup<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(doc, |v, key| v.get(key))
}

/// `d1` for `devices/d1/…`, else `unknown`.
fn device(msg: &Message) -> &str {
    match (msg.topic_level(0), msg.topic_level(1)) {
        (Some("devices"), Some(d)) if !d.is_empty() => d,
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use verge_function::mock;

    use super::*;

    fn telemetry(payload: &str) -> Message {
        Message::json("devices/d1/telemetry", payload.to_owned()).with_time_ms(1_764_390_000_000)
    }

    fn payload(m: &Message) -> Value {
        serde_json::from_slice(&m.payload).unwrap_or_default()
    }

    #[test]
    fn above_the_threshold_alerts() {
        let out = mock::invoke(handle, &telemetry(r#"{"temperature":31.5}"#)).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, "alerts/d1");
        assert_eq!(out[0].content_type.as_deref(), Some("application/json"));
        assert_eq!(
            payload(&out[0]),
            json!({"device":"d1","field":"temperature","value":31.5,"above":30.0,
                   "topic":"devices/d1/telemetry","time_ms":1_764_390_000_000_i64})
        );
    }

    #[test]
    fn at_or_below_the_threshold_is_silent() {
        for t in ["30", "29.9", "-5"] {
            let msg = telemetry(&format!(r#"{{"temperature":{t}}}"#));
            assert_eq!(mock::invoke(handle, &msg), Ok(vec![]), "{t}");
        }
    }

    #[test]
    fn empty_null_and_empty_object_configs_are_the_defaults() {
        for raw in ["", " ", "null", "{}"] {
            assert_eq!(Config::parse(raw), Ok(Config::default()), "{raw:?}");
        }
    }

    #[test]
    fn configured_field_threshold_and_topic() {
        mock::set_config(r#"{"field":"env.hum","above":80,"topic":"hum/{device}/{topic}"}"#);
        assert_eq!(init(), Ok(()));
        let msg = Message::new("sensors/s9", r#"{"env":{"hum":81}}"#);
        let out = mock::invoke(handle, &msg).unwrap();
        assert_eq!(out[0].topic, "hum/unknown/sensors/s9");
        assert_eq!(payload(&out[0])["value"], json!(81.0));
    }

    #[test]
    fn bad_config_fails_init_naming_the_key() {
        mock::set_config(r#"{"above":"hot"}"#);
        assert_eq!(
            init().unwrap_err().message(),
            "config key above: wrong type"
        );
        assert_eq!(
            Config::parse(r#"{"abve":3}"#).unwrap_err().message(),
            "unknown config key abve"
        );
        assert!(Config::parse("[1]").is_err());
        assert!(Config::parse("{").is_err());
    }

    #[test]
    fn unusable_payloads_are_errors() {
        let err = |p: &str| mock::invoke(handle, &telemetry(p)).unwrap_err().to_string();
        assert_eq!(err(r#"{"humidity":3}"#), "temperature missing");
        assert_eq!(
            err(r#"{"temperature":"hot"}"#),
            "temperature is not a number"
        );
        assert!(err("not json").starts_with("payload is not JSON"));
    }

    #[test]
    fn device_is_the_second_level_of_devices_topics() {
        assert_eq!(device(&Message::new("devices/d7/x/y", "")), "d7");
        assert_eq!(device(&Message::new("devices//x", "")), "unknown");
        assert_eq!(device(&Message::new("devices", "")), "unknown");
        assert_eq!(device(&Message::new("other/d7", "")), "unknown");
    }
}

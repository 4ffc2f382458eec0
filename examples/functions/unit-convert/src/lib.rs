//! Unit conversion: rewrites Celsius fields of a JSON payload as
//! Fahrenheit (`f = c × 9/5 + 32`) and publishes the converted document.
//!
//! Config (every key optional; an empty config, `null` or `{}` means all
//! defaults; any other key is an error):
//!
//! ```json
//! {"fields": ["temperature"], "topic": "{topic}/converted", "decimals": 2}
//! ```
//!
//! - `fields`: the fields to convert; dots reach into nested objects
//!   (`"env.temperature"`). A listed field that is absent is skipped; one
//!   that is not a number fails the call.
//! - `topic`: where the converted document goes. `{topic}` is the input
//!   topic, `{device}` the second level of a `devices/{device}/…` topic
//!   (`unknown` for others).
//! - `decimals`: converted values are rounded to this many decimals, so
//!   21.5 °C is `70.7`, not `70.69999999999999`.
//!
//! The output is the input document with only the listed fields changed,
//! with the input's content type, user properties and QoS. When none of the
//! listed fields is present there is nothing to convert and no output.

use serde_json::Value;
use verge_function::{Context, Error, Message, Result};

verge_function::export!(handle);

/// The resolved config.
#[derive(Debug, PartialEq)]
struct Config {
    /// Dotted paths of the fields to convert.
    fields: Vec<String>,
    /// Output topic template.
    topic: String,
    /// Decimals kept after conversion.
    decimals: i32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            fields: vec!["temperature".to_owned()],
            topic: "{topic}/converted".to_owned(),
            decimals: 2,
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
                "fields" => {
                    config.fields = value
                        .as_array()
                        .ok_or_else(bad)?
                        .iter()
                        .map(|f| f.as_str().map(str::to_owned).ok_or_else(bad))
                        .collect::<Result<_>>()?;
                }
                "topic" => config.topic = value.as_str().ok_or_else(bad)?.to_owned(),
                "decimals" => {
                    config.decimals = value
                        .as_u64()
                        .filter(|&d| d <= 15)
                        .and_then(|d| i32::try_from(d).ok())
                        .ok_or_else(|| Error::msg("config key decimals: not 0 to 15"))?;
                }
                _ => return Err(Error::msg(format_args!("unknown config key {key}"))),
            }
        }
        Ok(config)
    }
}

fn handle(msg: Message) -> Result<Vec<Message>> {
    // Parsed per call: a few hundred nanoseconds, and it keeps this example
    // free of the caching `threshold` shows.
    let config = Config::parse(&verge_function::config())?;
    let mut doc: Value = serde_json::from_slice(&msg.payload).context("payload is not JSON")?;
    let scale = 10f64.powi(config.decimals);
    let mut converted = 0;
    for field in &config.fields {
        let Some(v) = lookup_mut(&mut doc, field) else {
            continue;
        };
        let c = v
            .as_f64()
            .context(format_args!("{field} is not a number"))?;
        let f = (c * 9.0 / 5.0 + 32.0) * scale;
        *v = Value::from(f.round() / scale);
        converted += 1;
    }
    if converted == 0 {
        return Ok(Vec::new());
    }
    let device = match (msg.topic_level(0), msg.topic_level(1)) {
        (Some("devices"), Some(d)) if !d.is_empty() => d,
        _ => "unknown",
    };
    let topic = config
        .topic
        .replace("{device}", device)
        .replace("{topic}", &msg.topic);
    Ok(vec![Message {
        topic,
        payload: doc.to_string().into_bytes(),
        retain: false,
        ..msg
    }])
}

/// The value at a dotted path of object keys.
fn lookup_mut<'a>(doc: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    path.split('.').try_fold(doc, |v, key| v.get_mut(key))
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use verge_function::mock;

    use super::*;

    fn run(payload: Value) -> Result<Vec<Message>> {
        let msg = Message::json("devices/d1/telemetry", payload.to_string())
            .with_user_property("rule", "r1")
            .with_qos(0);
        mock::invoke(handle, &msg)
    }

    fn payload(m: &Message) -> Value {
        serde_json::from_slice(&m.payload).unwrap_or_default()
    }

    #[test]
    fn converts_the_default_field() {
        let out = run(json!({"temperature": 21.5, "humidity": 40})).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, "devices/d1/telemetry/converted");
        assert_eq!(
            payload(&out[0]),
            json!({"temperature": 70.7, "humidity": 40})
        );
        assert_eq!(out[0].user_property("rule"), Some("r1"));
        assert_eq!(out[0].qos, 0);
        assert_eq!(out[0].content_type.as_deref(), Some("application/json"));
        let out = run(json!({"temperature": -40})).unwrap();
        assert_eq!(payload(&out[0]), json!({"temperature": -40.0}));
    }

    #[test]
    fn configured_fields_topic_and_decimals() {
        mock::set_config(r#"{"fields":["in","env.out","gone"],"topic":"f/{device}","decimals":0}"#);
        let out = run(json!({"in": 20, "env": {"out": 0.3}, "t": 5})).unwrap();
        assert_eq!(out[0].topic, "f/d1");
        assert_eq!(
            payload(&out[0]),
            json!({"in": 68.0, "env": {"out": 33.0}, "t": 5})
        );
    }

    #[test]
    fn nothing_to_convert_is_no_output() {
        assert_eq!(run(json!({"humidity": 40})), Ok(vec![]));
    }

    #[test]
    fn errors_name_what_is_wrong() {
        assert_eq!(
            run(json!({"temperature": "warm"})).unwrap_err().message(),
            "temperature is not a number"
        );
        assert_eq!(Config::parse("null"), Ok(Config::default()));
        assert_eq!(
            Config::parse(r#"{"fields":"temperature"}"#)
                .unwrap_err()
                .message(),
            "config key fields: wrong type"
        );
        assert!(Config::parse(r#"{"decimals":99}"#).is_err());
        assert!(Config::parse(r#"{"unit":"F"}"#).is_err());
    }
}

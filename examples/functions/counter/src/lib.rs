//! Counter: counts the messages seen per topic and publishes the running
//! count, keeping it in the function's state so it survives restarts and
//! new versions.
//!
//! For a message on `devices/d1/telemetry` it publishes, on
//! `counts/devices/d1/telemetry`:
//!
//! ```json
//! {"topic": "devices/d1/telemetry", "count": 3}
//! ```
//!
//! The state key is the topic itself and the value the count in decimal
//! text, so `GET`-ting the function's state shows readable counts. Keys are
//! limited to 256 bytes, so a longer topic fails the call.
//!
//! Config (optional): `{"topic": "counts/{topic}"}`, where `{topic}` is the
//! input topic. The output has content type `application/json` and the
//! input's QoS.
//!
//! Instances of a function run concurrently and share the state, so two
//! instances counting the same topic at once can lose an increment: deploy
//! with `concurrency = 1` for exact counts.

use serde_json::{Value, json};
use verge_function::{Context, Error, Message, Result, kv};

verge_function::export!(handle);

const DEFAULT_TOPIC: &str = "counts/{topic}";

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
    let count = match kv::get(&msg.topic) {
        None => 0,
        Some(raw) => core::str::from_utf8(&raw)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .context(format_args!("state for {} is not a count", msg.topic))?,
    } + 1;
    kv::set(&msg.topic, count.to_string().as_bytes())?;
    let out = json!({"topic": msg.topic, "count": count});
    Ok(vec![
        Message::json(template.replace("{topic}", &msg.topic), out.to_string()).with_qos(msg.qos),
    ])
}

#[cfg(test)]
mod tests {
    use verge_function::mock;

    use super::*;

    fn count(topic: &str) -> Result<(String, Value)> {
        let out = mock::invoke(handle, &Message::new(topic, "x"))?;
        assert_eq!(out.len(), 1);
        let payload = serde_json::from_slice(&out[0].payload).unwrap_or_default();
        Ok((out[0].topic.clone(), payload))
    }

    #[test]
    fn counts_per_topic_in_the_state() {
        for n in 1..=3 {
            assert_eq!(
                count("a/b"),
                Ok(("counts/a/b".to_owned(), json!({"topic": "a/b", "count": n})))
            );
        }
        assert_eq!(count("c").map(|(_, p)| p["count"].clone()), Ok(json!(1)));
        let state = mock::state();
        assert_eq!(state.get("a/b").map(Vec::as_slice), Some(&b"3"[..]));
        assert_eq!(state.get("c").map(Vec::as_slice), Some(&b"1"[..]));
    }

    #[test]
    fn continues_from_existing_state() {
        assert_eq!(kv::set("t", b"41"), Ok(()));
        assert_eq!(count("t").map(|(_, p)| p["count"].clone()), Ok(json!(42)));
        assert_eq!(kv::set("t", b"many"), Ok(()));
        assert_eq!(
            count("t").unwrap_err().message(),
            "state for t is not a count"
        );
    }

    #[test]
    fn state_limits_fail_the_call() {
        let long = "x".repeat(300);
        assert!(count(&long).unwrap_err().message().contains("256 bytes"));
        mock::set_state_quota(4);
        assert!(count("abcd").unwrap_err().message().contains("quota"));
    }

    #[test]
    fn configured_topic() {
        mock::set_config(r#"{"topic":"stats/{topic}/count"}"#);
        assert_eq!(count("a").map(|(t, _)| t), Ok("stats/a/count".to_owned()));
        mock::set_config(r#"{"topics":"x"}"#);
        assert!(count("a").is_err());
    }
}

//! The HTTP API handlers, one module per resource.

pub mod agent;
pub mod devices;
pub mod functions;
pub mod nodes;
mod rows;
pub mod rules;
pub mod tokens;

use serde_json::{Value, json};

use crate::Cloud;
use crate::error::AppError;

/// The JSON shape of a stored upstream message.
pub fn message_json(
    id: i64,
    node_id: &str,
    topic: &str,
    payload: &[u8],
    received_ms: i64,
) -> Value {
    use base64::Engine as _;
    match std::str::from_utf8(payload) {
        Ok(text) => json!({
            "id": id,
            "node_id": node_id,
            "topic": topic,
            "payload": serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::String(text.to_owned())),
            "received_ms": received_ms,
        }),
        Err(_) => json!({
            "id": id,
            "node_id": node_id,
            "topic": topic,
            "payload": Value::Null,
            "payload_base64": base64::engine::general_purpose::STANDARD.encode(payload),
            "received_ms": received_ms,
        }),
    }
}

/// Upstream messages of `node_id` whose topic matches `filter`: after
/// `after_id` oldest first, else the newest `limit`; newest last either way.
pub async fn messages(
    cloud: &Cloud,
    node_id: &str,
    filter: &str,
    after_id: Option<i64>,
    limit: i64,
) -> Result<Vec<Value>, AppError> {
    if !(1..=1000).contains(&limit) {
        return Err(AppError::invalid("`limit` must be 1 to 1000"));
    }
    if !verge_mqtt::topic::valid_topic_filter(filter) {
        return Err(AppError::invalid(format!(
            "`topic`: `{filter}` is not a topic filter"
        )));
    }
    let limit_n = usize::try_from(limit).unwrap_or(100);
    let pool = &cloud.inner().pool;
    let mut out = Vec::new();
    // Scan in pages, filtering topics here (MQTT wildcards); bounded.
    let mut cursor = after_id;
    let mut before: Option<i64> = None;
    for _ in 0..50 {
        let rows: Vec<(i64, String, Vec<u8>, i64)> = match cursor {
            Some(after) => {
                sqlx::query_as(
                    "SELECT id, topic, payload, received_ms FROM messages WHERE node_id = $1 AND id > $2 ORDER BY id ASC LIMIT 1000",
                )
                .bind(node_id)
                .bind(after)
                .fetch_all(pool)
                .await?
            }
            None => {
                sqlx::query_as(
                    "SELECT id, topic, payload, received_ms FROM messages WHERE node_id = $1 AND id < $2 ORDER BY id DESC LIMIT 1000",
                )
                .bind(node_id)
                .bind(before.unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await?
            }
        };
        let Some(last) = rows.last().map(|r| r.0) else {
            break;
        };
        for (id, topic, payload, received_ms) in &rows {
            if verge_mqtt::topic::matches(filter, topic) {
                out.push(message_json(*id, node_id, topic, payload, *received_ms));
                if out.len() == limit_n {
                    break;
                }
            }
        }
        if out.len() == limit_n || rows.len() < 1000 {
            break;
        }
        if cursor.is_some() {
            cursor = Some(last);
        } else {
            before = Some(last);
        }
    }
    if after_id.is_none() {
        out.reverse();
    }
    Ok(out)
}

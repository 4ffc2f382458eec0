//! The HTTP API handlers, one module per resource.

pub mod agent;
pub mod alarms;
pub mod assignments;
pub mod broker;
pub mod commands;
pub mod components;
pub mod devices;
pub mod drivers;
pub mod functions;
pub mod history;
pub mod labels;
pub mod nodes;
pub mod releases;
pub mod revisions;
pub mod rollouts;
mod rows;
pub mod rules;
pub mod shadows;
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

/// The part of a topic filter the database checks: every topic `filter`
/// matches starts with its literal prefix (up to the first wildcard), and a
/// trailing `#` also matches the parent topic (`a/#` matches `a`).
#[derive(Debug, PartialEq, Eq)]
enum TopicSql {
    /// No literal prefix (`#`, `+/x`): every row is a candidate.
    Any,
    /// No wildcard: the topic itself.
    Exact(String),
    /// `topic LIKE pattern ESCAPE '\'`, or `topic = parent` when given.
    Prefix {
        /// The escaped prefix followed by `%`.
        pattern: String,
        /// The prefix without its `/`, when the wildcard is a trailing `#`.
        parent: Option<String>,
    },
}

impl TopicSql {
    fn of(filter: &str) -> TopicSql {
        let Some(at) = filter.find(['+', '#']) else {
            return TopicSql::Exact(filter.to_owned());
        };
        let prefix = &filter[..at];
        if prefix.is_empty() {
            return TopicSql::Any;
        }
        let mut pattern = String::with_capacity(prefix.len() + 8);
        for c in prefix.chars() {
            if matches!(c, '\\' | '%' | '_') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('%');
        let parent = if filter[at..].starts_with('#') {
            prefix.strip_suffix('/').map(str::to_owned)
        } else {
            None
        };
        TopicSql::Prefix { pattern, parent }
    }

    /// The SQL condition, its placeholders numbered from `$3`.
    fn condition(&self) -> &'static str {
        match self {
            TopicSql::Any => "",
            TopicSql::Exact(_) => " AND topic = $3",
            TopicSql::Prefix { parent: None, .. } => " AND topic LIKE $3 ESCAPE '\\'",
            TopicSql::Prefix {
                parent: Some(_), ..
            } => " AND (topic LIKE $3 ESCAPE '\\' OR topic = $4)",
        }
    }
}

/// Rows read per query, and queries per request: a filter whose literal
/// prefix selects little may still need its wildcards checked over many
/// rows, and that scan stops after `PAGES * PAGE` of them.
const PAGE: usize = 1000;
const PAGES: usize = 50;

/// Upstream messages of `node_id` whose topic matches `filter`: after
/// `after_id` oldest first, else the newest `limit`; newest last either way.
/// The database selects by the filter's literal prefix; the wildcards after
/// it are checked here.
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
    let topic = TopicSql::of(filter);
    let (after, order) = match after_id {
        Some(_) => ("id > $2", "ASC"),
        None => ("id < $2", "DESC"),
    };
    let sql = format!(
        "SELECT id, topic, payload, received_ms FROM messages WHERE node_id = $1 AND {after}{} \
         ORDER BY id {order} LIMIT {PAGE}",
        topic.condition()
    );
    let mut out = Vec::new();
    let mut cursor = after_id.unwrap_or(i64::MAX);
    for _ in 0..PAGES {
        let mut q =
            sqlx::query_as::<_, (i64, String, Vec<u8>, i64)>(sqlx::AssertSqlSafe(sql.clone()))
                .bind(node_id)
                .bind(cursor);
        match &topic {
            TopicSql::Any => {}
            TopicSql::Exact(t) => q = q.bind(t),
            TopicSql::Prefix { pattern, parent } => {
                q = q.bind(pattern);
                if let Some(p) = parent {
                    q = q.bind(p);
                }
            }
        }
        let rows = q.fetch_all(pool).await?;
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
        if out.len() == limit_n || rows.len() < PAGE {
            break;
        }
        cursor = last;
    }
    if after_id.is_none() {
        out.reverse();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::TopicSql;

    #[test]
    fn topic_sql_is_the_literal_prefix_escaped() {
        assert_eq!(TopicSql::of("#"), TopicSql::Any);
        assert_eq!(TopicSql::of("+/t"), TopicSql::Any);
        assert_eq!(TopicSql::of("a/b"), TopicSql::Exact("a/b".into()));
        assert_eq!(
            TopicSql::of("devices/d_1/#"),
            TopicSql::Prefix {
                pattern: "devices/d\\_1/%".into(),
                parent: Some("devices/d_1".into()),
            }
        );
        assert_eq!(
            TopicSql::of("a%b\\c/+/t"),
            TopicSql::Prefix {
                pattern: "a\\%b\\\\c/%".into(),
                parent: None,
            }
        );
    }
}

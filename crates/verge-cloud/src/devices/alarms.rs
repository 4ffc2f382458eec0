//! Alarms (`alarms`), ThingsBoard's model: an alarm is `active` or
//! `cleared`, and acknowledged or not; at most one `active` alarm per
//! device and type (a partial unique index). A node's raise updates the
//! open one (count + 1, severity, message, details; an acknowledged one
//! stays acknowledged) or opens a new one; a clear closes the open one.

use serde_json::{Value, json};
use sqlx::AnyConnection;
use sqlx::any::AnyRow;
use verge_protocol::device::{AlarmAction, AlarmEvent};

use crate::db::{self, json_col};

/// Columns of `alarms` that [`Alarm`] holds.
pub const COLS: &str = "id, device_id, node_id, alarm_type, severity, message, status, acknowledged, raise_count, rule, details, created_ms, updated_ms, cleared_ms, acknowledged_ms";

/// Longest alarm type kept (longer events are dropped).
pub const MAX_TYPE: usize = 128;

/// Longest message kept (longer ones are cut).
pub const MAX_MESSAGE: usize = 4096;

/// Largest `details` kept, as JSON (larger ones are left out).
pub const MAX_DETAILS: usize = 16 * 1024;

/// One stored alarm.
pub struct Alarm {
    /// Its id (random).
    pub id: String,
    /// The device.
    pub device_id: String,
    /// The device's node.
    pub node_id: String,
    /// Its type (one open alarm per device and type).
    pub alarm_type: String,
    /// Severity of the last raise.
    pub severity: String,
    /// Message of the last raise.
    pub message: String,
    /// `active` or `cleared`.
    pub status: String,
    /// 1 once acknowledged.
    pub acknowledged: i64,
    /// How often it was raised while open.
    pub count: i64,
    /// The rule that raised it.
    pub rule: String,
    /// The row of the last raise, JSON text.
    pub details: Option<String>,
    /// First raise.
    pub created_ms: i64,
    /// Last raise or clear.
    pub updated_ms: i64,
    /// When it was cleared.
    pub cleared_ms: Option<i64>,
    /// When it was acknowledged.
    pub acknowledged_ms: Option<i64>,
}

impl<'r> sqlx::FromRow<'r, AnyRow> for Alarm {
    fn from_row(row: &'r AnyRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(Alarm {
            id: row.try_get("id")?,
            device_id: row.try_get("device_id")?,
            node_id: row.try_get("node_id")?,
            alarm_type: row.try_get("alarm_type")?,
            severity: row.try_get("severity")?,
            message: row.try_get("message")?,
            status: row.try_get("status")?,
            acknowledged: row.try_get("acknowledged")?,
            count: row.try_get("raise_count")?,
            rule: row.try_get("rule")?,
            details: row.try_get("details")?,
            created_ms: row.try_get("created_ms")?,
            updated_ms: row.try_get("updated_ms")?,
            cleared_ms: row.try_get("cleared_ms")?,
            acknowledged_ms: row.try_get("acknowledged_ms")?,
        })
    }
}

impl Alarm {
    /// The API's JSON (`Alarm` in the OpenAPI document).
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "device_id": self.device_id,
            "node_id": self.node_id,
            "type": self.alarm_type,
            "severity": self.severity,
            "message": self.message,
            "status": self.status,
            "acknowledged": self.acknowledged != 0,
            "count": self.count,
            "rule": self.rule,
            "created_ms": self.created_ms,
            "updated_ms": self.updated_ms,
            "cleared_ms": self.cleared_ms,
            "acknowledged_ms": self.acknowledged_ms,
            "details": self.details.as_deref().map_or(Value::Null, json_col),
        })
    }
}

/// What became of an alarm event.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new alarm was opened.
    Opened,
    /// The open alarm was raised again.
    Raised,
    /// A raise older than the last clear of its type (made before that
    /// clear, e.g. queued on a node while a person cleared the alarm):
    /// counted in the cleared alarm, which stays cleared.
    Late,
    /// The open alarm was cleared.
    Cleared,
    /// A clear without an open alarm of its type.
    NothingOpen,
}

/// `message` cut to [`MAX_MESSAGE`] bytes at a character boundary.
fn cut(message: &str) -> &str {
    if message.len() <= MAX_MESSAGE {
        return message;
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

/// Apply node `node`'s alarm event (its device checked by the caller):
/// raise (update the open alarm of the device and type, else open one)
/// or clear. Times are the event's (`at_ms`, the node's clock, clamped to
/// the cloud's now plus a small skew by the caller).
///
/// A node's events arrive in the order it made them (its queue is FIFO),
/// so its clear closes the open alarm it raised whatever the times say (a
/// node clock stepped back must not keep an alarm open); only an alarm
/// raised by another node (the device was moved) is left open by a clear
/// older than its first raise. A raise older than the last clear of its
/// type is counted in the cleared alarm and opens none (an operator's
/// clear, in the cloud's time, is not undone by a raise queued before
/// it). `updated_ms` never goes back.
pub async fn apply_event(
    conn: &mut AnyConnection,
    node: &str,
    ev: &AlarmEvent,
) -> Result<Outcome, sqlx::Error> {
    let at = i64::try_from(ev.at_ms).unwrap_or(i64::MAX);
    match ev.action {
        AlarmAction::Clear => {
            let done = sqlx::query(
                "UPDATE alarms SET status = 'cleared', cleared_ms = $1, \
                 updated_ms = CASE WHEN updated_ms > $1 THEN updated_ms ELSE $1 END \
                 WHERE device_id = $2 AND alarm_type = $3 AND status = 'active' \
                 AND (node_id = $4 OR created_ms <= $1)",
            )
            .bind(at)
            .bind(&ev.device)
            .bind(&ev.alarm_type)
            .bind(node)
            .execute(&mut *conn)
            .await?;
            Ok(if done.rows_affected() > 0 {
                Outcome::Cleared
            } else {
                Outcome::NothingOpen
            })
        }
        AlarmAction::Raise => {
            let details = if ev.details.is_null() {
                None
            } else {
                Some(ev.details.to_string()).filter(|d| d.len() <= MAX_DETAILS)
            };
            let message = db::clean_text(cut(&ev.message));
            let rule = db::clean_text(&ev.rule);
            let done = sqlx::query(
                "UPDATE alarms SET severity = $1, message = $2, details = $3, rule = $4, \
                 raise_count = raise_count + 1, \
                 updated_ms = CASE WHEN updated_ms > $5 THEN updated_ms ELSE $5 END \
                 WHERE device_id = $6 AND alarm_type = $7 AND status = 'active'",
            )
            .bind(ev.severity.as_str())
            .bind(&message)
            .bind(details.clone())
            .bind(&rule)
            .bind(at)
            .bind(&ev.device)
            .bind(&ev.alarm_type)
            .execute(&mut *conn)
            .await?;
            if done.rows_affected() > 0 {
                return Ok(Outcome::Raised);
            }
            let last: Option<(String, Option<i64>)> = sqlx::query_as(
                "SELECT id, cleared_ms FROM alarms WHERE device_id = $1 AND alarm_type = $2 \
                 AND status = 'cleared' ORDER BY cleared_ms DESC, id DESC LIMIT 1",
            )
            .bind(&ev.device)
            .bind(&ev.alarm_type)
            .fetch_optional(&mut *conn)
            .await?;
            if let Some((id, Some(cleared_ms))) = last
                && at < cleared_ms
            {
                sqlx::query("UPDATE alarms SET raise_count = raise_count + 1 WHERE id = $1")
                    .bind(&id)
                    .execute(&mut *conn)
                    .await?;
                return Ok(Outcome::Late);
            }
            sqlx::query(
                "INSERT INTO alarms (id, device_id, node_id, alarm_type, severity, message, status, \
                 acknowledged, raise_count, rule, details, created_ms, updated_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'active', 0, 1, $7, $8, $9, $9)",
            )
            .bind(db::random_id())
            .bind(&ev.device)
            .bind(node)
            .bind(&ev.alarm_type)
            .bind(ev.severity.as_str())
            .bind(&message)
            .bind(&rule)
            .bind(details)
            .bind(at)
            .execute(&mut *conn)
            .await?;
            Ok(Outcome::Opened)
        }
    }
}

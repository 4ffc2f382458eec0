//! Commands (`commands`): one row per command with its state, moved only
//! forward (`CommandState::rank`) by the node's statuses and by expiry.

use serde_json::{Value, json};
use sqlx::AnyConnection;
use sqlx::any::AnyRow;
use verge_protocol::device::{CommandState, CommandStatus};

use crate::db::json_col;

/// Columns of `commands` that [`Command`] holds.
pub const COLS: &str = "id, device_id, node_id, name, payload, status, created_ms, expires_ms, updated_ms, attempts, reply, error";

/// One stored command.
pub struct Command {
    /// Its id (random).
    pub id: String,
    /// The device.
    pub device_id: String,
    /// The device's node.
    pub node_id: String,
    /// The command's name.
    pub name: String,
    /// The payload as JSON text.
    pub payload: String,
    /// `queued`, `sent`, `delivered`, `replied`, `failed` or `expired`.
    pub status: String,
    /// When it was made.
    pub created_ms: i64,
    /// When it expires.
    pub expires_ms: i64,
    /// When its state last changed.
    pub updated_ms: i64,
    /// How often the cloud published it to the node.
    pub attempts: i64,
    /// The device's reply as JSON text.
    pub reply: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

impl<'r> sqlx::FromRow<'r, AnyRow> for Command {
    fn from_row(row: &'r AnyRow) -> Result<Self, sqlx::Error> {
        use sqlx::Row;
        Ok(Command {
            id: row.try_get("id")?,
            device_id: row.try_get("device_id")?,
            node_id: row.try_get("node_id")?,
            name: row.try_get("name")?,
            payload: row.try_get("payload")?,
            status: row.try_get("status")?,
            created_ms: row.try_get("created_ms")?,
            expires_ms: row.try_get("expires_ms")?,
            updated_ms: row.try_get("updated_ms")?,
            attempts: row.try_get("attempts")?,
            reply: row.try_get("reply")?,
            error: row.try_get("error")?,
        })
    }
}

impl Command {
    /// The API's JSON (`Command` in the OpenAPI document).
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "device_id": self.device_id,
            "node_id": self.node_id,
            "name": self.name,
            "payload": json_col(&self.payload),
            "status": self.status,
            "created_ms": self.created_ms,
            "expires_ms": self.expires_ms,
            "updated_ms": self.updated_ms,
            "attempts": self.attempts,
            "reply": self.reply.as_deref().map_or(Value::Null, json_col),
            "error": self.error,
        })
    }
}

/// A state by its stored name.
pub fn state(name: &str) -> Option<CommandState> {
    serde_json::from_value(Value::String(name.to_owned())).ok()
}

/// What became of a node's status of a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The command moved forward.
    Applied,
    /// The command is already as far or further (a late or repeated
    /// status).
    Stale,
    /// No such command of this device on this node.
    Unknown,
}

/// Apply node `node`'s status of a command: only a state that ranks
/// higher than the stored one is taken (with its reply or error), by an
/// UPDATE conditional on the state read, so statuses never go back.
///
/// One exception: the cloud expires a command by its own clock while the
/// node may be cut off from it, so a `replied` or `failed` status made in
/// time (`at_ms <= expires_ms`, node time clamped by the caller) replaces
/// `expired` (the node reports its own `expired` only when no reply came,
/// and never a reply after it).
pub async fn apply_status(
    conn: &mut AnyConnection,
    node: &str,
    status: &CommandStatus,
    now: i64,
) -> sqlx::Result<Outcome> {
    for _ in 0..8 {
        let row: Option<(String, String, String, i64)> = sqlx::query_as(
            "SELECT node_id, device_id, status, expires_ms FROM commands WHERE id = $1",
        )
        .bind(&status.id)
        .fetch_optional(&mut *conn)
        .await?;
        let Some((owner, device, current, expires_ms)) = row else {
            return Ok(Outcome::Unknown);
        };
        if owner != node || device != status.device {
            return Ok(Outcome::Unknown);
        }
        let rank = state(&current).map_or(0, CommandState::rank);
        if status.state.rank() <= rank && !answered_in_time(&current, status, expires_ms) {
            return Ok(Outcome::Stale);
        }
        let reply = status.reply.as_ref().map(Value::to_string);
        let done = sqlx::query(
            "UPDATE commands SET status = $1, updated_ms = $2, reply = COALESCE($3, reply), \
             error = COALESCE($4, error) WHERE id = $5 AND status = $6",
        )
        .bind(status.state.as_str())
        .bind(now)
        .bind(reply)
        .bind(status.error.as_deref().map(crate::db::clean_text))
        .bind(&status.id)
        .bind(&current)
        .execute(&mut *conn)
        .await?;
        if done.rows_affected() == 1 {
            return Ok(Outcome::Applied);
        }
    }
    Err(sqlx::Error::Protocol(format!(
        "command `{}` kept changing while its status was applied",
        status.id
    )))
}

/// Whether `status` is a reply made before the command expired while the
/// stored state is `expired`: the reply replaces the expiry.
fn answered_in_time(current: &str, status: &CommandStatus, expires_ms: i64) -> bool {
    current == CommandState::Expired.as_str()
        && matches!(status.state, CommandState::Replied | CommandState::Failed)
        && i64::try_from(status.at_ms).is_ok_and(|at| at <= expires_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_are_the_states() {
        for s in [
            CommandState::Queued,
            CommandState::Sent,
            CommandState::Delivered,
            CommandState::Replied,
            CommandState::Failed,
            CommandState::Expired,
        ] {
            assert_eq!(state(s.as_str()), Some(s));
        }
        assert_eq!(state("nope"), None);
    }
}

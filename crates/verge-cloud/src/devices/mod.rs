//! Devices as first-class citizens in the cloud: shadows, commands and
//! alarms, kept in the database, fed by the node↔cloud device channel
//! (`verge_protocol::device::DeviceChannel`) and sent down by the
//! dispatcher.
//!
//! Upstream (`nodes/{n}/up/$verge/{kind}/{d}`) arrives through the
//! ingest's durable subscription; [`handle`] runs in the transaction of
//! the batch (after de-duplication by `verge-id`, before the node's
//! PUBACK), so a message is handled exactly once and never lost. A bad
//! payload, a device of another node or a status of an unknown command
//! is dropped with a log line and a counter: it never fails the batch
//! (the node would resend it forever).
//!
//! Downstream ([`dispatch::run`]): queued commands and pending shadows go
//! to online nodes; every step is a conditional UPDATE, so a second
//! replica or a restart repeats nothing that matters (the node keeps one
//! copy per command id, and merging a shadow twice changes nothing).

pub mod alarms;
pub mod commands;
pub mod dispatch;
pub mod history;
pub mod shadows;

use sqlx::AnyConnection;
use verge_protocol::device::{AlarmEvent, CommandStatus, DeviceChannel, ShadowSync};

/// What [`handle`] did with one upstream device-channel message.
#[derive(Debug, PartialEq, Eq)]
pub enum Handled {
    /// Applied.
    Done,
    /// Applied; the cloud's copy of the shadow still has edits the node
    /// lacks (the dispatcher sends it).
    ShadowPending,
    /// Dropped, with why (logged and counted by the caller).
    Dropped(String),
}

/// Handle node `node`'s upstream message of `kind` for `device` in the
/// batch's transaction. `Err` only for a database failure.
pub async fn handle(
    conn: &mut AnyConnection,
    node: &str,
    kind: DeviceChannel,
    device: &str,
    payload: &[u8],
    now: i64,
) -> sqlx::Result<Handled> {
    let owner: Option<(String,)> = sqlx::query_as("SELECT node_id FROM devices WHERE id = $1")
        .bind(device)
        .fetch_optional(&mut *conn)
        .await?;
    match owner {
        Some((owner,)) if owner == node => {}
        Some(_) => {
            return Ok(dropped(format!(
                "device `{device}` is not bound to this node"
            )));
        }
        None => return Ok(dropped(format!("no device `{device}`"))),
    }
    let same_device = |named: &str| {
        (named == device)
            .then_some(())
            .ok_or_else(|| format!("the payload names device `{named}`, the topic `{device}`"))
    };
    match kind {
        DeviceChannel::Shadow => {
            let sync: ShadowSync = match parse(payload) {
                Ok(s) => s,
                Err(why) => return Ok(Handled::Dropped(why)),
            };
            if let Err(why) = same_device(&sync.device) {
                return Ok(Handled::Dropped(why));
            }
            let pending = shadows::merge_from_node(conn, &sync, now).await?;
            Ok(if pending {
                Handled::ShadowPending
            } else {
                Handled::Done
            })
        }
        DeviceChannel::CommandStatus => {
            let status: CommandStatus = match parse(payload) {
                Ok(s) => s,
                Err(why) => return Ok(Handled::Dropped(why)),
            };
            if let Err(why) = same_device(&status.device) {
                return Ok(Handled::Dropped(why));
            }
            if status.id.is_empty() || status.id.len() > 128 || status.id.contains('\0') {
                return Ok(dropped("a command id must be 1 to 128 bytes".into()));
            }
            match commands::apply_status(conn, node, &status, now).await? {
                commands::Outcome::Applied | commands::Outcome::Stale => Ok(Handled::Done),
                commands::Outcome::Unknown => Ok(dropped(format!(
                    "status `{}` of an unknown command `{}`",
                    status.state.as_str(),
                    status.id
                ))),
            }
        }
        DeviceChannel::Alarm => {
            let ev: AlarmEvent = match parse(payload) {
                Ok(ev) => ev,
                Err(why) => return Ok(Handled::Dropped(why)),
            };
            if let Err(why) = same_device(&ev.device) {
                return Ok(Handled::Dropped(why));
            }
            if ev.alarm_type.is_empty()
                || ev.alarm_type.len() > alarms::MAX_TYPE
                || ev.alarm_type.contains('\0')
            {
                return Ok(dropped(format!(
                    "an alarm type must be 1 to {} bytes, without NUL",
                    alarms::MAX_TYPE
                )));
            }
            alarms::apply_event(conn, node, &ev).await?;
            Ok(Handled::Done)
        }
        // Down only: a node does not send commands or store queries up.
        DeviceChannel::Command | DeviceChannel::StoreQuery => {
            Ok(dropped("commands and store queries do not go up".into()))
        }
        // The ingest hands store replies to their waiting API request
        // (`history::Pending`) before the batch; none gets here.
        DeviceChannel::StoreReply => Ok(dropped("a store reply is not stored".into())),
    }
}

fn dropped(why: String) -> Handled {
    Handled::Dropped(why)
}

fn parse<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    serde_json::from_slice(payload).map_err(|e| format!("bad payload: {e}"))
}

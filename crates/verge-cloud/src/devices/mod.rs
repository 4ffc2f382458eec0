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
//!
//! Node times (shadow key edit times, status and alarm times) are taken
//! as the node's clock says, but never later than the cloud's clock plus
//! [`MAX_SKEW_MS`] ([`clamp`]): a node clock far ahead must not make its
//! edits unbeatable. Node clocks are expected to be NTP-synced.

pub mod alarms;
pub mod commands;
pub mod dispatch;
pub mod history;
pub mod shadows;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use sqlx::AnyConnection;
use verge_protocol::device::{AlarmEvent, CommandStatus, DeviceChannel, ShadowSync};

/// How far ahead of the cloud's clock a node time may be; later times
/// are taken as the cloud's now plus this.
pub const MAX_SKEW_MS: i64 = 60_000;

/// Node times cut to the cloud's now plus [`MAX_SKEW_MS`] (the
/// `verge_cloud_device_times_clamped_total` metric).
pub static CLAMPED: AtomicU64 = AtomicU64::new(0);

/// When a clamp was last logged (one line a minute at most).
static CLAMP_LOGGED_MS: AtomicI64 = AtomicI64::new(i64::MIN);

/// `at` (a node's time, ms) cut to `now + MAX_SKEW_MS`; counted, and
/// logged at most once a minute, when cut.
pub fn clamp(node: &str, what: &str, at: u64, now: i64) -> u64 {
    let max = u64::try_from(now.saturating_add(MAX_SKEW_MS)).unwrap_or(0);
    if at <= max {
        return at;
    }
    CLAMPED.fetch_add(1, Ordering::Relaxed);
    let last = CLAMP_LOGGED_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 60_000
        && CLAMP_LOGGED_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            node = %node,
            "a {what} time is {} ms ahead of the cloud's clock; taken as the cloud's now + {MAX_SKEW_MS} ms (is the node's clock NTP-synced?)",
            at.saturating_sub(max) + u64::try_from(MAX_SKEW_MS).unwrap_or(0)
        );
    }
    max
}

/// Every edit time of `shadow` (and its timestamp) clamped by [`clamp`].
fn clamp_shadow(node: &str, shadow: &mut verge_protocol::device::Shadow, now: i64) {
    let meta = &mut shadow.metadata;
    for m in meta.desired.values_mut().chain(meta.reported.values_mut()) {
        m.ts = clamp(node, "shadow edit", m.ts, now);
    }
    shadow.timestamp = clamp(node, "shadow", shadow.timestamp, now);
}

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
            let mut sync: ShadowSync = match parse(payload) {
                Ok(s) => s,
                Err(why) => return Ok(Handled::Dropped(why)),
            };
            if let Err(why) = same_device(&sync.device) {
                return Ok(Handled::Dropped(why));
            }
            clamp_shadow(node, &mut sync.shadow, now);
            let pending = shadows::merge_from_node(conn, &sync, now).await?;
            Ok(if pending {
                Handled::ShadowPending
            } else {
                Handled::Done
            })
        }
        DeviceChannel::CommandStatus => {
            let mut status: CommandStatus = match parse(payload) {
                Ok(s) => s,
                Err(why) => return Ok(Handled::Dropped(why)),
            };
            if let Err(why) = same_device(&status.device) {
                return Ok(Handled::Dropped(why));
            }
            if status.id.is_empty() || status.id.len() > 128 || status.id.contains('\0') {
                return Ok(dropped("a command id must be 1 to 128 bytes".into()));
            }
            status.at_ms = clamp(node, "command status", status.at_ms, now);
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
            let mut ev: AlarmEvent = match parse(payload) {
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
            ev.at_ms = clamp(node, "alarm", ev.at_ms, now);
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

//! `GET /api/bridge`: the cloud link and the cache queue behind it, and
//! their Prometheus metrics.

use std::fmt::Write;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use verge_bridge::LinkStatus;
use verge_queue::{LaneStats, QueueStats};

use super::ApiState;
use super::AppError;

/// The body of `GET /api/bridge`.
#[derive(Debug, Serialize)]
pub struct BridgeBody {
    /// Link state and counters.
    pub link: LinkStatus,
    /// Backlog per lane and drop counters.
    pub queue: QueueStats,
    /// The forwards running now: the config file's, or a deployed
    /// `bridge.forwards`.
    pub forwards: Vec<verge_bridge::Forward>,
}

/// `GET /api/bridge`.
pub async fn status(State(s): State<ApiState>) -> Result<Json<BridgeBody>, AppError> {
    let Some(b) = &s.bridge else {
        return Err(AppError::new(
            StatusCode::NOT_FOUND,
            "bridge_disabled",
            "this node has no cloud link (set `bridge.enabled = true` and `bridge.url`)",
        ));
    };
    Ok(Json(BridgeBody {
        link: b.link(),
        queue: b.queue(),
        forwards: b.forwards().await,
    }))
}

/// `GET /api/cloud`: the cloud agent of a managed node (joined as which
/// node, to which cloud, the desired-state version applied, its errors, the
/// last sync and its error).
pub async fn cloud(State(s): State<ApiState>) -> Result<Json<verge_agent::AgentStatus>, AppError> {
    match &s.cloud {
        Some(h) => Ok(Json(h.get())),
        None => Err(AppError::new(
            StatusCode::NOT_FOUND,
            "not_managed",
            "this node is not managed by a cloud center (start it with `verge node --cloud URL --join TOKEN`)",
        )),
    }
}

/// Append the link's and the queue's values as `verge_bridge_*` and
/// `verge_queue_*` metrics.
pub fn render_metrics(link: &LinkStatus, queue: &QueueStats, out: &mut String) {
    let connected = u64::from(link.state == verge_bridge::LinkState::Connected);
    metric(
        out,
        "verge_bridge_connected",
        "gauge",
        "1 when the cloud link is up",
        &[("", connected)],
    );
    for (name, help, v) in [
        (
            "connects",
            "successful connections to the cloud",
            link.connects,
        ),
        ("sent", "messages the cloud acknowledged", link.sent),
        (
            "published",
            "publish packets written, resends included",
            link.published,
        ),
        ("resent", "resends after reconnects", link.resent),
        (
            "rejected",
            "messages the cloud refused, dropped",
            link.rejected,
        ),
        (
            "too_large",
            "messages over the cloud's maximum packet size, dropped",
            link.too_large,
        ),
        (
            "downstream",
            "downstream messages published locally",
            link.downstream,
        ),
        (
            "downstream_dropped",
            "downstream messages dropped",
            link.downstream_dropped,
        ),
        (
            "forwarded",
            "local messages forwarded into the queue",
            link.forwarded,
        ),
        (
            "forward_failed",
            "local messages the queue refused",
            link.forward_failed,
        ),
        (
            "forward_dropped",
            "local messages dropped before reaching the queue",
            link.forward_dropped,
        ),
    ] {
        metric(
            out,
            &format!("verge_bridge_{name}_total"),
            "counter",
            help,
            &[("", v)],
        );
    }
    metric(
        out,
        "verge_bridge_inflight",
        "gauge",
        "messages sent and not yet acknowledged",
        &[("", link.inflight)],
    );

    for (name, help, v) in [
        (
            "verge_queue_writer_waits_total",
            "appends that waited for room in the queue writer's channel",
            queue.writer_waits,
        ),
        (
            "verge_queue_writer_wait_milliseconds_total",
            "time appends waited for room in the queue writer's channel",
            queue.writer_wait_ms,
        ),
    ] {
        metric(out, name, "counter", help, &[("", v)]);
    }

    type Get = fn(&LaneStats) -> u64;
    let lanes: [(&str, &str, &str, Get); 8] = [
        (
            "verge_queue_depth",
            "gauge",
            "messages waiting for the cloud",
            |l| l.depth,
        ),
        (
            "verge_queue_bytes",
            "gauge",
            "bytes waiting for the cloud",
            |l| l.bytes,
        ),
        (
            "verge_queue_oldest_age_seconds",
            "gauge",
            "age of the oldest waiting message",
            |l| l.oldest_age_ms.unwrap_or(0) / 1000,
        ),
        (
            "verge_queue_appended_total",
            "counter",
            "messages appended",
            |l| l.appended,
        ),
        (
            "verge_queue_acked_total",
            "counter",
            "messages acknowledged by the cloud",
            |l| l.acked,
        ),
        (
            "verge_queue_dropped_full_total",
            "counter",
            "oldest messages dropped because the lane was full",
            |l| l.dropped_full,
        ),
        (
            "verge_queue_dropped_ttl_total",
            "counter",
            "messages dropped past the lane's max age",
            |l| l.dropped_ttl,
        ),
        (
            "verge_queue_rejected_total",
            "counter",
            "messages refused because the lane was full",
            |l| l.rejected,
        ),
    ];
    for (name, kind, help, get) in lanes {
        let labels: Vec<String> = queue
            .lanes
            .iter()
            .map(|l| format!("lane=\"{}\"", l.name))
            .collect();
        let values: Vec<(&str, u64)> = labels
            .iter()
            .zip(&queue.lanes)
            .map(|(label, l)| (label.as_str(), get(l)))
            .collect();
        metric(out, name, kind, help, &values);
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, values: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in values {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

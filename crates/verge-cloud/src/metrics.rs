//! The cloud's counters and its Prometheus text at `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::Cloud;
use crate::error::AppError;

/// Counters kept in the process (gauges are read from the database).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Upstream batches committed.
    pub ingest_batches: AtomicU64,
    /// Upstream messages received (stored or found to be duplicates).
    pub ingest_messages: AtomicU64,
    /// Batches whose commit failed (their publishers were told).
    pub ingest_failures: AtomicU64,
    /// Upstream messages refused (not stored; their publishers were told
    /// and send them again).
    pub ingest_refused: AtomicU64,
    /// Messages deleted by retention.
    pub pruned_messages: AtomicU64,
    /// Registry refreshes that failed.
    pub registry_failures: AtomicU64,
    /// Upstream device-channel messages (shadows, command statuses,
    /// alarms) applied.
    pub device_channel_handled: AtomicU64,
    /// Upstream device-channel messages dropped (bad payload, a device of
    /// another node, an unknown command).
    pub device_channel_dropped: AtomicU64,
    /// Commands published to nodes (resends included).
    pub commands_sent: AtomicU64,
    /// Commands the cloud expired.
    pub commands_expired: AtomicU64,
    /// Shadows published to nodes (resends included).
    pub shadows_sent: AtomicU64,
    /// Desired-state notifications received from PostgreSQL.
    pub wake_notifications: AtomicU64,
    /// Heartbeats written in batches (PostgreSQL).
    pub heartbeats_batched: AtomicU64,
    /// Heartbeat batches written.
    pub heartbeat_batches: AtomicU64,
    /// Times the desired-state listener lost its connection.
    pub wake_reconnects: AtomicU64,
    /// External mode: 1 while the consumer is connected to the broker.
    pub external_connected: AtomicU64,
    /// External mode: connections made (consumer and adoptions).
    pub external_connects: AtomicU64,
    /// External mode: consumer connections lost or dropped (a message
    /// not stored).
    pub external_connection_losses: AtomicU64,
    /// External mode: messages received on adopted sessions.
    pub external_adopted_messages: AtomicU64,
    /// External mode: other replicas' sessions drained and ended.
    pub external_sessions_adopted: AtomicU64,
    /// HTTP responses by status class (index 0 = 1xx … 4 = 5xx).
    pub http: [AtomicU64; 5],
}

/// Middleware counting responses by status class.
pub async fn count_requests(State(cloud): State<Cloud>, req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let class = usize::from(res.status().as_u16() / 100).clamp(1, 5) - 1;
    cloud.inner().metrics.http[class].fetch_add(1, Ordering::Relaxed);
    res
}

/// `GET /metrics`.
pub async fn render(State(cloud): State<Cloud>) -> Result<Response, AppError> {
    let inner = cloud.inner();
    let pool = &inner.pool;
    let now = crate::db::now_ms();
    let online_since = now - crate::api::nodes::offline_ms(&cloud);
    let (nodes,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM nodes")
        .fetch_one(pool)
        .await?;
    let (online,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM nodes WHERE last_seen_ms IS NOT NULL AND last_seen_ms >= $1",
    )
    .bind(online_since)
    .fetch_one(pool)
    .await?;
    let (pending,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM nodes WHERE joined_ms IS NULL")
        .fetch_one(pool)
        .await?;
    let (devices,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM devices")
        .fetch_one(pool)
        .await?;
    let (messages,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM messages")
        .fetch_one(pool)
        .await?;
    let m = &inner.metrics;
    let mut out = String::new();
    let mut put = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    let offline = n(nodes - online - pending);
    put(
        "verge_cloud_nodes",
        "gauge",
        "nodes by status",
        &[
            ("{status=\"online\"}", n(online)),
            ("{status=\"offline\"}", offline),
            ("{status=\"pending\"}", n(pending)),
        ],
    );
    put(
        "verge_cloud_devices",
        "gauge",
        "devices",
        &[("", n(devices))],
    );
    put(
        "verge_cloud_messages_stored",
        "gauge",
        "upstream messages in the database",
        &[("", n(messages))],
    );
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    put(
        "verge_cloud_ingest_batches_total",
        "counter",
        "upstream batches committed",
        &[("", get(&m.ingest_batches))],
    );
    put(
        "verge_cloud_ingest_messages_total",
        "counter",
        "upstream messages received",
        &[("", get(&m.ingest_messages))],
    );
    put(
        "verge_cloud_ingest_failures_total",
        "counter",
        "upstream batches that failed to commit",
        &[("", get(&m.ingest_failures))],
    );
    put(
        "verge_cloud_ingest_refused_total",
        "counter",
        "upstream messages refused unstored (their publishers resend them)",
        &[("", get(&m.ingest_refused))],
    );
    put(
        "verge_cloud_pruned_messages_total",
        "counter",
        "upstream messages deleted by retention",
        &[("", get(&m.pruned_messages))],
    );
    put(
        "verge_cloud_broker_secret_cache_flushes_total",
        "counter",
        "times the cache of verified broker logins was emptied because it was full",
        &[("", get(&inner.broker_secrets.flushed))],
    );
    put(
        "verge_cloud_registry_refresh_failures_total",
        "counter",
        "failed refreshes of the mqtt device registry",
        &[("", get(&m.registry_failures))],
    );
    put(
        "verge_cloud_device_channel_handled_total",
        "counter",
        "upstream shadows, command statuses and alarms applied",
        &[("", get(&m.device_channel_handled))],
    );
    put(
        "verge_cloud_device_channel_dropped_total",
        "counter",
        "upstream shadows, command statuses and alarms dropped (bad payload, foreign device, unknown command)",
        &[("", get(&m.device_channel_dropped))],
    );
    put(
        "verge_cloud_store_replies_unmatched_total",
        "counter",
        "node store replies that found no waiting request (unknown or expired id, or sent to another replica)",
        &[("", get(&inner.history.unmatched))],
    );
    put(
        "verge_cloud_store_queries_waiting",
        "gauge",
        "node store queries waiting for their reply in this process",
        &[("", inner.history.len() as u64)],
    );
    put(
        "verge_cloud_leader",
        "gauge",
        "1 while this replica leads (runs pruning and the rollout driver)",
        &[("", u64::from(inner.leader.is_leader()))],
    );
    put(
        "verge_cloud_wake_listening",
        "gauge",
        "1 while every desired-state change reaches this replica's long polls (SQLite: always; PostgreSQL: the LISTEN connection is up)",
        &[("", u64::from(inner.wake.listening()))],
    );
    put(
        "verge_cloud_long_poll_nodes",
        "gauge",
        "nodes with a desired-state long poll held by this replica",
        &[("", inner.wake.nodes_waiting() as u64)],
    );
    put(
        "verge_cloud_heartbeats_batched_total",
        "counter",
        "heartbeats written together with others (PostgreSQL)",
        &[("", get(&m.heartbeats_batched))],
    );
    put(
        "verge_cloud_heartbeat_batches_total",
        "counter",
        "heartbeat batches written (PostgreSQL)",
        &[("", get(&m.heartbeat_batches))],
    );
    put(
        "verge_cloud_wake_notifications_total",
        "counter",
        "desired-state change notifications received from PostgreSQL",
        &[("", get(&m.wake_notifications))],
    );
    put(
        "verge_cloud_wake_listener_reconnects_total",
        "counter",
        "times the desired-state LISTEN connection was lost",
        &[("", get(&m.wake_reconnects))],
    );
    put(
        "verge_cloud_commands_sent_total",
        "counter",
        "commands published to nodes, resends included",
        &[("", get(&m.commands_sent))],
    );
    put(
        "verge_cloud_commands_expired_total",
        "counter",
        "commands the cloud expired",
        &[("", get(&m.commands_expired))],
    );
    put(
        "verge_cloud_device_times_clamped_total",
        "counter",
        "node times (shadow edits, command statuses, alarms) ahead of the cloud's clock by more than the allowed skew, cut to it",
        &[("", get(&crate::devices::CLAMPED))],
    );
    put(
        "verge_cloud_shadows_sent_total",
        "counter",
        "shadows published to nodes, resends included",
        &[("", get(&m.shadows_sent))],
    );
    put(
        "verge_cloud_external_connected",
        "gauge",
        "external broker mode: 1 while this replica's upstream consumer is connected",
        &[("", get(&m.external_connected))],
    );
    put(
        "verge_cloud_external_connects_total",
        "counter",
        "external broker mode: connections made (consumer and adoptions)",
        &[("", get(&m.external_connects))],
    );
    put(
        "verge_cloud_external_connection_losses_total",
        "counter",
        "external broker mode: consumer connections lost or dropped to have an unstored message resent",
        &[("", get(&m.external_connection_losses))],
    );
    put(
        "verge_cloud_external_adopted_messages_total",
        "counter",
        "external broker mode: messages received on sessions adopted from dead replicas",
        &[("", get(&m.external_adopted_messages))],
    );
    put(
        "verge_cloud_external_sessions_adopted_total",
        "counter",
        "external broker mode: dead replicas' broker sessions drained and ended",
        &[("", get(&m.external_sessions_adopted))],
    );
    let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
    let labels: Vec<String> = classes
        .iter()
        .map(|c| format!("{{class=\"{c}\"}}"))
        .collect();
    let samples: Vec<(&str, u64)> = labels
        .iter()
        .zip(&m.http)
        .map(|(l, v)| (l.as_str(), get(v)))
        .collect();
    put(
        "verge_cloud_http_requests_total",
        "counter",
        "http responses by status class",
        &samples,
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

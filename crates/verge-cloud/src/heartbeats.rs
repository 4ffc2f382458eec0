//! Heartbeats in batches on PostgreSQL. At thousands of nodes one
//! transaction per heartbeat (several statements, a commit each) took the
//! pool from everything else; nearly every heartbeat only restamps the
//! node and adds a metrics row. So the status handler hands its report to
//! one task that takes what arrived together (up to [`BATCH`]), reads what
//! the nodes' last reports left in one query and, for every report that
//! changes nothing else (same applied revision and attempt, no device
//! sessions to store), writes the node rows and the metrics rows with one
//! `UPDATE … FROM UNNEST` and one `INSERT … SELECT FROM UNNEST` in one
//! transaction. The other reports, and every report of a batch that
//! failed, go back to the handler, which writes them one by one
//! (`api::agent::status`). SQLite keeps the one-by-one path.

use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot};
use verge_protocol::StatusReport;

use crate::Cloud;
use crate::db::now_ms;

/// Most heartbeats written in one batch.
const BATCH: usize = 512;

/// Heartbeats waiting for the batch task.
const QUEUE: usize = 8192;

/// What became of a heartbeat handed to the batch task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Written; `came_online` when the node had been offline (or never
    /// reported).
    Written { came_online: bool },
    /// Not written: the caller writes it one by one.
    OneByOne,
}

/// One heartbeat for the batch task.
pub struct Beat {
    pub node: String,
    pub report: StatusReport,
    /// The report as stored (JSON).
    pub text: String,
    /// Its apply errors as stored (JSON).
    pub errors: String,
    /// Its endpoints as stored (JSON).
    pub endpoints: String,
}

/// A heartbeat and where its outcome goes.
type Job = (Beat, oneshot::Sender<Outcome>);

/// The batch task's inbox.
#[derive(Clone)]
pub struct Heartbeats {
    tx: mpsc::Sender<Job>,
}

impl Heartbeats {
    /// A batcher and the receiver its task ([`run`]) takes.
    pub fn new() -> (Heartbeats, mpsc::Receiver<Job>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Heartbeats { tx }, rx)
    }

    /// Hand `beat` over and wait for its outcome; one by one when the
    /// task is gone or full.
    pub async fn write(&self, beat: Beat) -> Outcome {
        let (reply, rx) = oneshot::channel();
        if self.tx.try_send((beat, reply)).is_err() {
            return Outcome::OneByOne;
        }
        rx.await.unwrap_or(Outcome::OneByOne)
    }
}

/// Write batches until the cloud stops.
pub async fn run(cloud: Cloud, mut rx: mpsc::Receiver<Job>) {
    let mut stop = cloud.inner().stop.subscribe();
    let mut buf = Vec::with_capacity(BATCH);
    loop {
        buf.clear();
        let got = tokio::select! {
            n = rx.recv_many(&mut buf, BATCH) => n,
            _ = stop.wait_for(|s| *s) => return,
        };
        if got == 0 {
            return;
        }
        let (beats, replies): (Vec<Beat>, Vec<_>) = buf.drain(..).unzip();
        let outcomes = match &cloud.inner().pg {
            Some(pg) => write(&cloud, pg, &beats).await.unwrap_or_else(|e| {
                tracing::warn!(
                    "{} heartbeats not written together ({e}); one by one",
                    beats.len()
                );
                vec![Outcome::OneByOne; beats.len()]
            }),
            None => vec![Outcome::OneByOne; beats.len()],
        };
        for (reply, o) in replies.into_iter().zip(outcomes) {
            let _ = reply.send(o);
        }
    }
}

/// What a node's stored row says before this heartbeat.
struct Before {
    id: String,
    applied_version: Option<i64>,
    report: Option<String>,
    last_seen_ms: Option<i64>,
    connected: i64,
}

/// [`Before`] as a row.
type BeforeRow = (String, Option<i64>, Option<String>, Option<i64>, i64);

/// Write the heartbeats of `beats` that change nothing but the node's
/// report, time and metrics; say which were written.
async fn write(cloud: &Cloud, pg: &sqlx::PgPool, beats: &[Beat]) -> sqlx::Result<Vec<Outcome>> {
    let now = now_ms();
    let ids: Vec<&str> = beats.iter().map(|b| b.node.as_str()).collect();
    let mut tx = pg.begin().await?;
    let before: Vec<BeforeRow> = sqlx::query_as(
        "SELECT n.id, n.applied_version, n.report, n.last_seen_ms, \
         (SELECT COUNT(*) FROM devices d WHERE d.node_id = n.id AND d.connected = 1) AS connected \
         FROM nodes n WHERE n.id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let before: Vec<Before> = before
        .into_iter()
        .map(
            |(id, applied_version, report, last_seen_ms, connected)| Before {
                id,
                applied_version,
                report,
                last_seen_ms,
                connected,
            },
        )
        .collect();
    let before: std::collections::HashMap<&str, &Before> =
        before.iter().map(|b| (b.id.as_str(), b)).collect();
    let offline_ms = crate::api::nodes::offline_ms(cloud);
    let mut outcomes = Vec::with_capacity(beats.len());
    // A node twice in one batch is written together once (its later
    // report), the earlier one by one.
    let mut seen = std::collections::HashSet::new();
    let mut fast: Vec<&Beat> = Vec::new();
    for b in beats.iter().rev() {
        let old = before.get(b.node.as_str()).filter(|old| {
            old.applied_version == Some(b.report.applied_version)
                && crate::api::agent::attempt_of(old.report.as_deref())
                    == crate::api::agent::attempt_value(&b.report)
                && b.report.devices.is_empty()
                && old.connected == 0
        });
        match old {
            Some(old) if seen.insert(b.node.as_str()) => {
                fast.push(b);
                outcomes.push(Outcome::Written {
                    came_online: old.last_seen_ms.is_none_or(|t| t < now - offline_ms),
                });
            }
            _ => outcomes.push(Outcome::OneByOne),
        }
    }
    outcomes.reverse();
    if fast.is_empty() {
        tx.rollback().await?;
        return Ok(outcomes);
    }
    // Sorted by node, so two batches lock their rows in the same order.
    fast.sort_by(|a, b| a.node.cmp(&b.node));
    let mut cols = Cols::default();
    for b in fast {
        cols.push(b);
    }
    sqlx::query(
        "UPDATE nodes SET report = u.report, \
         last_seen_ms = GREATEST(COALESCE(nodes.last_seen_ms, u.ts), u.ts), \
         apply_errors = u.errors, endpoints = u.endpoints \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) \
         AS u(id, report, errors, endpoints, ts) WHERE nodes.id = u.id",
    )
    .bind(&cols.ids)
    .bind(&cols.reports)
    .bind(&cols.errors)
    .bind(&cols.endpoints)
    .bind(vec![now; cols.ids.len()])
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO node_metrics (node_id, ts_ms, cpu_percent, memory_bytes, connections, \
         messages_in_rate, messages_out_rate, backlog_messages) \
         SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::float8[], $4::bigint[], $5::bigint[], \
         $6::float8[], $7::float8[], $8::bigint[])",
    )
    .bind(&cols.ids)
    .bind(vec![now; cols.ids.len()])
    .bind(&cols.cpu)
    .bind(&cols.memory)
    .bind(&cols.connections)
    .bind(&cols.rate_in)
    .bind(&cols.rate_out)
    .bind(&cols.backlog)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let m = &cloud.inner().metrics;
    m.heartbeat_batches.fetch_add(1, Ordering::Relaxed);
    m.heartbeats_batched
        .fetch_add(cols.ids.len() as u64, Ordering::Relaxed);
    Ok(outcomes)
}

/// The batch's rows, a vector per column.
#[derive(Default)]
struct Cols {
    ids: Vec<String>,
    reports: Vec<String>,
    errors: Vec<String>,
    endpoints: Vec<String>,
    cpu: Vec<f64>,
    memory: Vec<i64>,
    connections: Vec<i64>,
    rate_in: Vec<f64>,
    rate_out: Vec<f64>,
    backlog: Vec<i64>,
}

impl Cols {
    fn push(&mut self, b: &Beat) {
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let finite = |v: f64| if v.is_finite() { v } else { 0.0 };
        self.ids.push(b.node.clone());
        self.reports.push(b.text.clone());
        self.errors.push(b.errors.clone());
        self.endpoints.push(b.endpoints.clone());
        self.cpu.push(finite(b.report.cpu_percent));
        self.memory.push(n(b.report.memory_bytes));
        self.connections.push(n(b.report.connections));
        self.rate_in.push(finite(b.report.messages_in_rate));
        self.rate_out.push(finite(b.report.messages_out_rate));
        self.backlog.push(n(b.report.backlog_messages));
    }
}

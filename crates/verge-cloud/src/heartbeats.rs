//! Heartbeats in batches on PostgreSQL. At thousands of nodes one
//! transaction per heartbeat (several statements, a commit each) took the
//! pool from everything else; nearly every heartbeat only restamps the
//! node and adds a metrics row. So the status handler hands its report to
//! one task that takes what arrived together (up to [`BATCH`]), reads and
//! locks the nodes' rows in one query (in id order, skipping rows another
//! transaction holds) and, for every report that changes nothing else
//! (same applied revision and attempt, that revision's result recorded,
//! no device sessions to store), writes the node rows and the metrics
//! rows with one `UPDATE … FROM UNNEST` and one `INSERT … SELECT FROM
//! UNNEST` in one transaction. A node's earlier heartbeat in the same
//! batch is superseded by its later one (only its metrics are stored).
//! The other reports, those of locked or deleted nodes, and every report
//! of a batch that failed go back to the handler, which writes them one
//! by one (`api::agent::status`). SQLite keeps the one-by-one path.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot};
use verge_protocol::StatusReport;

use crate::Cloud;
use crate::api::agent::{self, count, finite};
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

    /// Hand `beat` over and wait for its outcome (while the queue is
    /// full the handler waits: falling back to the costlier one-by-one
    /// path would add load when there is most); one by one when the task
    /// is gone.
    pub async fn write(&self, beat: Beat) -> Outcome {
        let (reply, rx) = oneshot::channel();
        if self.tx.send((beat, reply)).await.is_err() {
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
    applied_version: Option<i64>,
    report: Option<String>,
    last_seen_ms: Option<i64>,
    /// Its devices marked connected.
    connected: i64,
    /// Its applied revision has no result recorded yet (a snapshot made
    /// after the node applied it): the report must record it.
    unrecorded: i64,
}

/// [`Before`] as a row, with the node id first.
type BeforeRow = (String, Option<i64>, Option<String>, Option<i64>, i64, i64);

/// Write the heartbeats of `beats` that change nothing but the node's
/// report, time and metrics; say which were written.
///
/// The nodes' rows are read and locked in id order, skipping rows another
/// transaction holds (those heartbeats go one by one): a batch never
/// waits for a lock, so it cannot deadlock with another batch or a
/// multi-node update, and one busy node does not hold up the others.
async fn write(cloud: &Cloud, pg: &sqlx::PgPool, beats: &[Beat]) -> sqlx::Result<Vec<Outcome>> {
    let now = now_ms();
    let ids: Vec<&str> = beats.iter().map(|b| b.node.as_str()).collect();
    let mut tx = pg.begin().await?;
    let rows: Vec<BeforeRow> = sqlx::query_as(
        "SELECT n.id, n.applied_version, n.report, n.last_seen_ms, \
         (SELECT COUNT(*) FROM devices d WHERE d.node_id = n.id AND d.connected = 1), \
         (SELECT COUNT(*) FROM node_revisions r WHERE r.node_id = n.id \
          AND r.revision = n.applied_version AND r.result IS NULL) \
         FROM nodes n WHERE n.id = ANY($1) ORDER BY n.id FOR NO KEY UPDATE OF n SKIP LOCKED",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let before: HashMap<String, Before> = rows
        .into_iter()
        .map(
            |(id, applied_version, report, last_seen_ms, connected, unrecorded)| {
                let b = Before {
                    applied_version,
                    report,
                    last_seen_ms,
                    connected,
                    unrecorded,
                };
                (id, b)
            },
        )
        .collect();
    let offline_ms = crate::api::nodes::offline_ms(cloud);
    // Newest first: a node's last heartbeat in the batch is the one whose
    // report is written; an earlier one in the same batch is superseded
    // by it (only its metrics row is stored), never written after it.
    let mut written: HashMap<&str, usize> = HashMap::new();
    let mut outcomes = vec![Outcome::OneByOne; beats.len()];
    let mut metrics: Vec<usize> = Vec::new();
    for (i, b) in beats.iter().enumerate().rev() {
        let node = b.node.as_str();
        match written.get(node) {
            // Its later heartbeat goes one by one: so does this one.
            Some(&usize::MAX) => continue,
            Some(_) => {
                outcomes[i] = Outcome::Written { came_online: false };
                metrics.push(i);
                continue;
            }
            None => {}
        }
        let Some(old) = before.get(node) else {
            continue; // locked elsewhere or gone: one by one
        };
        let fast = !agent::revisions_moved(
            old.applied_version,
            old.report.as_deref(),
            old.unrecorded,
            &b.report,
        ) && b.report.devices.is_empty()
            && old.connected == 0;
        if fast {
            written.insert(node, i);
            metrics.push(i);
            outcomes[i] = Outcome::Written {
                came_online: old.last_seen_ms.is_none_or(|t| t < now - offline_ms),
            };
        } else {
            // Written alone, with what it changes; an earlier heartbeat of
            // the node in this batch then goes one by one as well.
            written.insert(node, usize::MAX);
        }
    }
    let mut update: Vec<&Beat> = written
        .values()
        .filter(|&&i| i != usize::MAX)
        .map(|&i| &beats[i])
        .collect();
    if update.is_empty() {
        tx.rollback().await?;
        return Ok(outcomes);
    }
    update.sort_by(|a, b| a.node.cmp(&b.node));
    let mut cols = Cols::default();
    for b in &update {
        cols.push_node(b);
    }
    let updated: Vec<(String,)> = sqlx::query_as(
        "UPDATE nodes SET report = u.report, \
         last_seen_ms = GREATEST(COALESCE(nodes.last_seen_ms, u.ts), u.ts), \
         apply_errors = u.errors, endpoints = u.endpoints \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) \
         AS u(id, report, errors, endpoints, ts) WHERE nodes.id = u.id RETURNING nodes.id",
    )
    .bind(&cols.ids)
    .bind(&cols.reports)
    .bind(&cols.errors)
    .bind(&cols.endpoints)
    .bind(vec![now; cols.ids.len()])
    .fetch_all(&mut *tx)
    .await?;
    let updated: std::collections::HashSet<String> = updated.into_iter().map(|(id,)| id).collect();
    // A node deleted meanwhile: no metrics row, and its heartbeats go one
    // by one (which answers 404).
    metrics.retain(|&i| updated.contains(&beats[i].node));
    for (i, b) in beats.iter().enumerate() {
        if !updated.contains(&b.node) {
            outcomes[i] = Outcome::OneByOne;
        }
    }
    let mut m = Metrics::default();
    for &i in &metrics {
        m.push(&beats[i]);
    }
    sqlx::query(
        "INSERT INTO node_metrics (node_id, ts_ms, cpu_percent, memory_bytes, connections, \
         messages_in_rate, messages_out_rate, backlog_messages) \
         SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::float8[], $4::bigint[], $5::bigint[], \
         $6::float8[], $7::float8[], $8::bigint[])",
    )
    .bind(&m.ids)
    .bind(vec![now; m.ids.len()])
    .bind(&m.cpu)
    .bind(&m.memory)
    .bind(&m.connections)
    .bind(&m.rate_in)
    .bind(&m.rate_out)
    .bind(&m.backlog)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let counters = &cloud.inner().metrics;
    counters.heartbeat_batches.fetch_add(1, Ordering::Relaxed);
    counters
        .heartbeats_batched
        .fetch_add(m.ids.len() as u64, Ordering::Relaxed);
    Ok(outcomes)
}

/// The node rows of a batch, a vector per column.
#[derive(Default)]
struct Cols {
    ids: Vec<String>,
    reports: Vec<String>,
    errors: Vec<String>,
    endpoints: Vec<String>,
}

impl Cols {
    fn push_node(&mut self, b: &Beat) {
        self.ids.push(b.node.clone());
        self.reports.push(b.text.clone());
        self.errors.push(b.errors.clone());
        self.endpoints.push(b.endpoints.clone());
    }
}

/// The metrics rows of a batch, a vector per column.
#[derive(Default)]
struct Metrics {
    ids: Vec<String>,
    cpu: Vec<f64>,
    memory: Vec<i64>,
    connections: Vec<i64>,
    rate_in: Vec<f64>,
    rate_out: Vec<f64>,
    backlog: Vec<i64>,
}

impl Metrics {
    fn push(&mut self, b: &Beat) {
        self.ids.push(b.node.clone());
        self.cpu.push(finite(b.report.cpu_percent));
        self.memory.push(count(b.report.memory_bytes));
        self.connections.push(count(b.report.connections));
        self.rate_in.push(finite(b.report.messages_in_rate));
        self.rate_out.push(finite(b.report.messages_out_rate));
        self.backlog.push(count(b.report.backlog_messages));
    }
}

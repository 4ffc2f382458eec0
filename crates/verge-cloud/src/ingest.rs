//! Upstream ingest: node messages from the durable broker subscription
//! (embedded mode) or the external broker's shared subscription
//! (external mode, `crate::external`) are written to the database a batch
//! per transaction, and only then confirmed (so the node's PUBACK, or the
//! cloud's own PUBACK to the external broker, follows the commit); device-channel
//! messages (`$verge/…`: shadows, command statuses, alarms) are applied in
//! the same transaction instead of stored (`crate::devices`); a store
//! reply is handed, after the commit, to the API request waiting for it
//! (`crate::devices::history`), never stored. Plus the
//! pruner that bounds the `messages` and `node_metrics` tables (and the
//! device-channel ids, finished commands and cleared alarms).

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use verge_broker::{DurableMessage, DurableSubscription, Message};
use verge_protocol::device;
use verge_protocol::topics;

use crate::Cloud;
use crate::db::now_ms;
use crate::devices::Handled;
use crate::external::consumer::Ack;
use crate::telemetry::{self, NewMessage};

/// Most messages taken from the source at once, and written in one
/// transaction.
const BATCH: usize = 2048;

/// Where upstream messages come from.
pub enum Source {
    /// The in-process endpoint's durable subscription (embedded mode).
    Broker(DurableSubscription),
    /// The external broker's consumer (external mode): messages and how
    /// to acknowledge each.
    External(mpsc::Receiver<Upstream>),
}

impl Source {
    /// Wait for at least one message and take up to `limit` into `buf`;
    /// 0 once the source has ended.
    async fn recv_many(&mut self, buf: &mut Vec<Upstream>, limit: usize) -> usize {
        match self {
            Source::Broker(sub) => {
                let mut got = Vec::with_capacity(limit);
                let n = sub.recv_many(&mut got, limit).await;
                buf.extend(got.into_iter().map(|msg| Upstream { msg, ack: None }));
                n
            }
            Source::External(rx) => rx.recv_many(buf, limit).await,
        }
    }
}

/// One upstream message and how to tell its sender the outcome: the
/// in-process confirmation inside [`DurableMessage`] (embedded mode), or
/// an acknowledgement on the external broker (its `confirm` is then a
/// no-op).
pub struct Upstream {
    /// The message.
    pub msg: DurableMessage,
    /// The external broker's acknowledgement, in external mode.
    pub ack: Option<Ack>,
}

impl Upstream {
    /// Stored (or a duplicate of a stored one): acknowledge.
    async fn stored(self) {
        self.msg.confirm.ok();
        if let Some(a) = self.ack {
            a.ok().await;
        }
    }

    /// Not stored for now: the sender keeps it and sends it again (the
    /// external broker after a reconnect).
    fn retry(self) {
        self.msg.confirm.fail();
        if let Some(a) = self.ack {
            a.fail();
        }
    }

    /// Never storable (a topic that is not a joined node's): the
    /// in-process publisher is told; on the external broker the message
    /// is acknowledged and dropped, as resending it could not help.
    async fn reject(self) {
        self.msg.confirm.fail();
        if let Some(a) = self.ack {
            a.ok().await;
        }
    }
}

/// Split a batch for [`store`], which takes the messages alone.
fn split(batch: Vec<Upstream>) -> (Vec<DurableMessage>, Vec<Option<Ack>>) {
    batch.into_iter().map(|u| (u.msg, u.ack)).unzip()
}

/// Receive, store, confirm; until the source ends.
///
/// Every message is either confirmed after the commit that stored it or
/// refused (its publisher keeps it and sends it again): a topic that is
/// not `nodes/{id}/up/{rest}` and a node that is not (or no longer) joined
/// are refused, never acknowledged unstored. A batch whose commit fails on
/// a statement is written again one message per transaction, so one bad
/// message refuses only itself; a failure to reach the database refuses
/// the whole batch. The same path serves both [`Source`]s.
///
/// On PostgreSQL the batches are stored by [`WORKERS`] tasks at once, each
/// node's messages always by the same task (by a hash of its id), so one
/// node's messages are stored, and their device-channel messages applied,
/// in the order they arrived; SQLite has one writer, so one task.
pub async fn run(cloud: Cloud, mut source: Source) {
    let workers = if cloud.inner().pg.is_some() {
        WORKERS
    } else {
        1
    };
    let mut txs = Vec::with_capacity(workers);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let (tx, rx) = mpsc::channel::<Vec<Upstream>>(1);
        txs.push(tx);
        tasks.spawn(worker(cloud.clone(), rx));
    }
    let mut buf: Vec<Upstream> = Vec::with_capacity(BATCH);
    loop {
        buf.clear();
        if source.recv_many(&mut buf, BATCH).await == 0 {
            break;
        }
        cloud
            .inner()
            .metrics
            .ingest_messages
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        let mut parts: Vec<Vec<Upstream>> = (0..workers).map(|_| Vec::new()).collect();
        for u in buf.drain(..) {
            let w = shard(&u.msg.msg.topic, workers);
            parts[w].push(u);
        }
        for (part, tx) in parts.into_iter().zip(&txs) {
            // A full worker holds the source back: the broker then refuses
            // what it cannot queue, and the publisher keeps it. A worker
            // never ends before its channel closes (a panic in a batch is
            // caught); were it gone, its part is refused, not dropped.
            if !part.is_empty()
                && let Err(mpsc::error::SendError(part)) = tx.send(part).await
            {
                tracing::error!("an ingest worker is gone; {} messages refused", part.len());
                refuse(&cloud, part);
            }
        }
    }
    drop(txs);
    while tasks.join_next().await.is_some() {}
}

/// Tasks storing batches at once on PostgreSQL.
const WORKERS: usize = 4;

/// The worker that stores the messages of the node `topic` names (the
/// messages of a topic that names none go to the first: it refuses them).
fn shard(topic: &str, workers: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let Some((node, _)) = topics::parse_up(topic) else {
        return 0;
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    node.hash(&mut h);
    (h.finish() % workers as u64) as usize
}

/// Store the batches handed to one worker until the dispatcher ends;
/// batches waiting meanwhile are stored together, up to [`BATCH`].
async fn worker(cloud: Cloud, mut rx: mpsc::Receiver<Vec<Upstream>>) {
    let mut carried: Option<Vec<Upstream>> = None;
    loop {
        let mut buf = match carried.take() {
            Some(b) => b,
            None => match rx.recv().await {
                Some(b) => b,
                None => return,
            },
        };
        while buf.len() < BATCH {
            match rx.try_recv() {
                Ok(more) if buf.len() + more.len() <= BATCH => buf.extend(more),
                Ok(more) => {
                    carried = Some(more);
                    break;
                }
                Err(_) => break,
            }
        }
        // A panic while storing must not end the worker: the batch's
        // confirmations and acknowledgements, dropped undecided, fail
        // (the publishers send again), and the next batch goes on.
        let c = cloud.clone();
        if tokio::spawn(async move { process(&c, buf).await })
            .await
            .is_err_and(|e| e.is_panic())
        {
            tracing::error!(
                "an upstream batch panicked while being stored; its messages are refused"
            );
            cloud
                .inner()
                .metrics
                .ingest_failures
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Admit, store and confirm one batch.
async fn process(cloud: &Cloud, mut buf: Vec<Upstream>) {
    let m = &cloud.inner().metrics;
    let batch = match admit(cloud, &mut buf).await {
        Ok(batch) => batch,
        Err(e) => {
            tracing::warn!("upstream batch of {} not checked: {e}", buf.len());
            m.ingest_failures.fetch_add(1, Ordering::Relaxed);
            refuse(cloud, buf.drain(..));
            return;
        }
    };
    if batch.is_empty() {
        return;
    }
    let (msgs, acks) = split(batch);
    match store(cloud, &msgs).await {
        Ok(()) => {
            m.ingest_batches.fetch_add(1, Ordering::Relaxed);
            for (msg, ack) in msgs.into_iter().zip(acks) {
                Upstream { msg, ack }.stored().await;
            }
        }
        Err(e) if msgs.len() > 1 && matches!(e, sqlx::Error::Database(_)) => {
            tracing::warn!(
                "upstream batch of {} not stored ({e}); storing one by one",
                msgs.len()
            );
            m.ingest_failures.fetch_add(1, Ordering::Relaxed);
            for (d, ack) in msgs.into_iter().zip(acks) {
                match store(cloud, std::slice::from_ref(&d)).await {
                    Ok(()) => {
                        m.ingest_batches.fetch_add(1, Ordering::Relaxed);
                        Upstream { msg: d, ack }.stored().await;
                    }
                    Err(e) => {
                        tracing::warn!(topic = %d.msg.topic, "upstream message not stored: {e}");
                        m.ingest_failures.fetch_add(1, Ordering::Relaxed);
                        refuse(cloud, [Upstream { msg: d, ack }]);
                    }
                }
            }
        }
        Err(e) => {
            tracing::warn!("upstream batch of {} not stored: {e}", msgs.len());
            m.ingest_failures.fetch_add(1, Ordering::Relaxed);
            refuse(
                cloud,
                msgs.into_iter()
                    .zip(acks)
                    .map(|(msg, ack)| Upstream { msg, ack }),
            );
        }
    }
}

/// Tell the publishers of `msgs` that they were not stored (they send
/// them again), and count them.
fn refuse(cloud: &Cloud, msgs: impl IntoIterator<Item = Upstream>) {
    let mut n = 0;
    for u in msgs {
        u.retry();
        n += 1;
    }
    cloud
        .inner()
        .metrics
        .ingest_refused
        .fetch_add(n, Ordering::Relaxed);
}

/// Nodes asked for in one `admit` query (bind parameters).
const ADMIT_CHUNK: usize = 500;

/// Take from `buf` the messages that can be stored: a topic of the form
/// `nodes/{id}/up/{rest}` from a joined node. The others are rejected here
/// (the broker's ACL already keeps a node to its own topics, but a node
/// deleted while connected keeps its connection and its rights).
async fn admit(cloud: &Cloud, buf: &mut Vec<Upstream>) -> sqlx::Result<Vec<Upstream>> {
    let mut nodes: Vec<&str> = buf
        .iter()
        .filter_map(|u| topics::parse_up(&u.msg.msg.topic).map(|(n, _)| n))
        .collect();
    nodes.sort_unstable();
    nodes.dedup();
    // One query per batch (a few for a batch of very many nodes), not one
    // per node: at thousands of nodes the per-node queries queued for the
    // pool behind the API's.
    let mut joined = HashSet::with_capacity(nodes.len());
    // On PostgreSQL through the ingest's own pool, so a busy API pool
    // (heartbeats, long polls) does not hold the ingest back.
    if let Some(pg) = &cloud.inner().pg {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM nodes WHERE secret_phc IS NOT NULL AND id = ANY($1)")
                .bind(&nodes)
                .fetch_all(pg)
                .await?;
        joined.extend(rows.into_iter().map(|(id,)| id));
    } else {
        for chunk in nodes.chunks(ADMIT_CHUNK) {
            let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            // Only placeholders are formatted in; the ids are bound.
            let sql = sqlx::AssertSqlSafe(format!(
                "SELECT id FROM nodes WHERE secret_phc IS NOT NULL AND id IN ({})",
                marks.join(", ")
            ));
            let mut q = sqlx::query_as::<_, (String,)>(sql);
            for n in chunk {
                q = q.bind(*n);
            }
            for (id,) in q.fetch_all(&cloud.inner().pool).await? {
                joined.insert(id);
            }
        }
    }
    let (ok, bad): (Vec<_>, Vec<_>) = buf
        .drain(..)
        .partition(|u| topics::parse_up(&u.msg.msg.topic).is_some_and(|(n, _)| joined.contains(n)));
    if let Some(first) = bad.first() {
        tracing::warn!(
            topic = %first.msg.msg.topic,
            "{} upstream message(s) refused: not `{}` of a joined node",
            bad.len(),
            topics::up("{id}", "…")
        );
        cloud
            .inner()
            .metrics
            .ingest_refused
            .fetch_add(bad.len() as u64, Ordering::Relaxed);
        for u in bad {
            u.reject().await;
        }
    }
    Ok(ok)
}

/// One message of a batch, split for storing.
struct Row<'a> {
    node: &'a str,
    rest: &'a str,
    verge_id: Option<&'a str>,
    msg: &'a Message,
}

/// Write `batch` (see [`store_messages`]).
async fn store(cloud: &Cloud, batch: &[DurableMessage]) -> sqlx::Result<()> {
    let msgs: Vec<&Message> = batch.iter().map(|d| &*d.msg).collect();
    store_messages(cloud, &msgs).await
}

/// Write `batch` in one transaction; every message in it has a topic
/// [`topics::parse_up`] accepts (see [`admit`]). Messages go in by batch
/// INSERTs (`crate::telemetry`) that skip a (node, `verge-id`) already
/// stored; then each device whose telemetry was newly stored gets the
/// last such reading as its `last_telemetry` (one UPDATE per device, not
/// per message; a resent old reading does not overwrite a newer one).
///
/// On PostgreSQL the messages and `last_telemetry` go through the
/// `PgPool` (arrays bound), device-channel messages through the
/// `AnyPool`: the first transaction commits only after the second, so a
/// failure of either refuses the batch (its resend is de-duplicated).
pub async fn store_messages(cloud: &Cloud, batch: &[&Message]) -> sqlx::Result<()> {
    let now = now_ms();
    let mut rows = Vec::with_capacity(batch.len());
    for m in batch {
        let Some((node, rest)) = topics::parse_up(&m.topic) else {
            return Err(sqlx::Error::Protocol(format!(
                "topic `{}` is not `{}`",
                m.topic,
                topics::up("{id}", "…")
            )));
        };
        rows.push(Row {
            node,
            rest,
            verge_id: telemetry::verge_id(&m.properties),
            msg: m,
        });
    }
    // Device-channel messages (`$verge/…`) are handled, not stored; store
    // replies go to their waiting request after the commit.
    let (channel, rows): (Vec<Row>, Vec<Row>) = rows
        .into_iter()
        .partition(|r| device::parse_device_channel(r.rest).is_some());
    let (replies, channel): (Vec<Row>, Vec<Row>) = channel.into_iter().partition(|r| {
        matches!(
            device::parse_device_channel(r.rest),
            Some((device::DeviceChannel::StoreReply, _))
        )
    });
    let new: Vec<NewMessage> = rows
        .iter()
        .map(|r| NewMessage {
            node: r.node,
            topic: r.rest,
            verge_id: r.verge_id,
            payload: &r.msg.payload,
            queued_ms: telemetry::queued_ms(&r.msg.properties, now),
        })
        .collect();
    let mut counts = ChannelCounts::default();
    if let Some(pg) = &cloud.inner().pg {
        // The `AnyPool` connection first: taken while the `PgPool`
        // transaction held its row locks, a wait for it could hold up
        // whoever waits for those locks.
        let mut tx = if channel.is_empty() {
            None
        } else {
            Some(cloud.inner().pool.begin().await?)
        };
        let mut ptx = pg.begin().await?;
        let inserted = telemetry::insert_postgres(&mut ptx, &new, now).await?;
        let latest = latest_readings(&rows, &inserted);
        telemetry::set_last_telemetry_postgres(&mut ptx, &latest, now).await?;
        if let Some(mut tx) = tx.take() {
            for r in &channel {
                handle_channel(&mut tx, r, now, &mut counts).await?;
            }
            tx.commit().await?;
        }
        ptx.commit().await?;
    } else {
        let mut tx = cloud.inner().pool.begin().await?;
        let inserted = telemetry::insert_any(&mut tx, &new, now).await?;
        for (node, device, value) in latest_readings(&rows, &inserted) {
            sqlx::query(
                "UPDATE devices SET last_telemetry = $1, last_telemetry_ms = $2 WHERE id = $3 AND node_id = $4",
            )
            .bind(value)
            .bind(now)
            .bind(device)
            .bind(node)
            .execute(&mut *tx)
            .await?;
        }
        for r in &channel {
            handle_channel(&mut tx, r, now, &mut counts).await?;
        }
        tx.commit().await?;
    }
    for r in &replies {
        if let Some((_, device)) = device::parse_device_channel(r.rest)
            && !cloud
                .inner()
                .history
                .complete(r.node, device, &r.msg.payload)
        {
            tracing::info!(node = %r.node, topic = %r.rest, "store reply for no waiting request (unknown or expired id, or another replica's); dropped");
        }
    }
    let m = &cloud.inner().metrics;
    m.device_channel_handled
        .fetch_add(counts.handled, Ordering::Relaxed);
    m.device_channel_dropped
        .fetch_add(counts.dropped, Ordering::Relaxed);
    if counts.pending {
        cloud.inner().dispatch_wake.notify_one();
    }
    Ok(())
}

/// The last newly stored reading of each device in `rows`, in arrival
/// order: (node, device, its payload as JSON text; a payload that is not
/// JSON as a JSON string).
fn latest_readings<'a>(
    rows: &[Row<'a>],
    inserted: &telemetry::Inserted,
) -> Vec<(&'a str, &'a str, String)> {
    let mut latest: Vec<(&str, &str, &Message)> = Vec::new();
    for r in rows {
        let Some(device) = topics::telemetry_device(r.rest) else {
            continue;
        };
        let fresh = match r.verge_id {
            None => true,
            Some(v) => inserted.contains(&(r.node.to_owned(), v.to_owned())),
        };
        if !fresh {
            continue;
        }
        match latest
            .iter_mut()
            .find(|(n, dev, _)| *n == r.node && *dev == device)
        {
            Some(slot) => slot.2 = r.msg,
            None => latest.push((r.node, device, r.msg)),
        }
    }
    latest
        .into_iter()
        .map(|(node, device, m)| {
            let text = String::from_utf8_lossy(&m.payload);
            let value = serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or_else(|_| serde_json::Value::String(text.into_owned()));
            (node, device, value.to_string())
        })
        .collect()
}

/// What the device-channel messages of one batch came to.
#[derive(Default)]
struct ChannelCounts {
    handled: u64,
    dropped: u64,
    /// A shadow the node lacks edits of: wake the dispatcher.
    pending: bool,
}

/// Handle one upstream device-channel message in the batch's
/// transaction: skipped when its (node, `verge-id`) was handled before
/// (`device_channel_ids`), else applied by [`crate::devices::handle`].
async fn handle_channel(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    r: &Row<'_>,
    now: i64,
    counts: &mut ChannelCounts,
) -> sqlx::Result<()> {
    let Some((kind, device)) = device::parse_device_channel(r.rest) else {
        return Ok(());
    };
    if let Some(v) = &r.verge_id {
        let fresh = sqlx::query(
            "INSERT INTO device_channel_ids (node_id, verge_id, received_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (node_id, verge_id) DO NOTHING",
        )
        .bind(r.node)
        .bind(v)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        if fresh.rows_affected() == 0 {
            return Ok(());
        }
    }
    match crate::devices::handle(tx, r.node, kind, device, &r.msg.payload, now).await? {
        Handled::Done => counts.handled += 1,
        Handled::ShadowPending => {
            counts.handled += 1;
            counts.pending = true;
        }
        Handled::Dropped(why) => {
            tracing::warn!(node = %r.node, topic = %r.rest, "device-channel message dropped: {why}");
            counts.dropped += 1;
        }
    }
    Ok(())
}

/// Every 30 s: delete messages past retention and beyond `max_messages`,
/// and heartbeat metrics older than a day.
pub async fn prune_loop(cloud: Cloud) {
    let mut stop = cloud.inner().stop.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        // One replica prunes: the leader.
        if !cloud.inner().leader.is_leader() {
            continue;
        }
        if let Err(e) = prune_once(&cloud).await {
            tracing::warn!("pruning failed: {e}");
        }
    }
}

/// One pruning pass, counted in `verge_cloud_pruned_messages_total`.
async fn prune_once(cloud: &Cloud) -> sqlx::Result<u64> {
    let n = prune(cloud).await?;
    cloud
        .inner()
        .metrics
        .pruned_messages
        .fetch_add(n, Ordering::Relaxed);
    Ok(n)
}

/// Rows one pruning statement deletes at most: between statements the
/// (single, on SQLite) connection serves other requests. Tiny in unit
/// tests, so that they go through several chunks.
#[cfg(not(test))]
const PRUNE_CHUNK: i64 = 10_000;
#[cfg(test)]
const PRUNE_CHUNK: i64 = 2;

/// Run `sql` (binding `bound` and [`PRUNE_CHUNK`]) until it deletes less
/// than a chunk; the total deleted.
async fn delete_in_chunks(
    pool: &sqlx::AnyPool,
    sql: &'static str,
    bound: i64,
) -> sqlx::Result<u64> {
    let mut total = 0;
    loop {
        let n = sqlx::query(sql)
            .bind(bound)
            .bind(PRUNE_CHUNK)
            .execute(pool)
            .await?
            .rows_affected();
        total += n;
        if n < PRUNE_CHUNK as u64 {
            return Ok(total);
        }
        tokio::task::yield_now().await;
    }
}

/// Device-channel ids (the de-duplication of upstream shadows, statuses
/// and alarms) are kept at least this long, however short
/// `message_retention` is: a node's queue holds a backlog that old (a
/// week offline), and a resent message of it must not be applied twice.
pub const DEDUP_KEEP_MS: i64 = 7 * 24 * 3600 * 1000;

/// One pruning pass; returns how many messages it deleted.
pub async fn prune(cloud: &Cloud) -> sqlx::Result<u64> {
    let inner = cloud.inner();
    let pool = &inner.pool;
    let retention =
        i64::try_from(inner.cfg.cloud.message_retention.get().as_millis()).unwrap_or(i64::MAX);
    let now = now_ms();
    let keep = i64::try_from(inner.cfg.cloud.max_messages).unwrap_or(i64::MAX);
    let pruned = match &inner.pg {
        // Partitions: made ahead, dropped whole (`crate::telemetry`).
        Some(pg) => {
            telemetry::maintain(pg, now, retention).await?;
            telemetry::prune_postgres(pg, now, retention, keep).await?
        }
        None => prune_rows(pool, now.saturating_sub(retention), keep).await?,
    };
    // Finished commands and cleared alarms are kept as long as messages;
    // device-channel ids at least DEDUP_KEEP_MS (a node's backlog that
    // old must not be applied twice). Chunked like the messages.
    let cut = now.saturating_sub(retention);
    delete_in_chunks(
        pool,
        "DELETE FROM device_channel_ids WHERE (node_id, verge_id) IN \
         (SELECT node_id, verge_id FROM device_channel_ids WHERE received_ms < $1 LIMIT $2)",
        now.saturating_sub(retention.max(DEDUP_KEEP_MS)),
    )
    .await?;
    delete_in_chunks(
        pool,
        "DELETE FROM commands WHERE id IN (SELECT id FROM commands \
         WHERE status IN ('replied', 'failed', 'expired') AND updated_ms < $1 LIMIT $2)",
        cut,
    )
    .await?;
    delete_in_chunks(
        pool,
        "DELETE FROM alarms WHERE id IN \
         (SELECT id FROM alarms WHERE status = 'cleared' AND updated_ms < $1 LIMIT $2)",
        cut,
    )
    .await?;
    sqlx::query("DELETE FROM node_metrics WHERE ts_ms < $1")
        .bind(now - crate::api::agent::METRICS_KEEP_MS)
        .execute(pool)
        .await?;
    crate::external::adopt::prune_done(pool, now).await?;
    Ok(pruned)
}

/// The row pruner of `messages` (SQLite): delete the messages received
/// before `horizon`, then all but the newest `keep` by id; how many went.
async fn prune_rows(pool: &sqlx::AnyPool, horizon: i64, keep: i64) -> sqlx::Result<u64> {
    let old = delete_in_chunks(
        pool,
        "DELETE FROM messages WHERE id IN \
         (SELECT id FROM messages WHERE received_ms < $1 ORDER BY id LIMIT $2)",
        horizon,
    )
    .await?;
    let cut: Option<(i64,)> =
        sqlx::query_as("SELECT id FROM messages ORDER BY id DESC LIMIT 1 OFFSET $1")
            .bind(keep)
            .fetch_optional(pool)
            .await?;
    let over = match cut {
        Some((id,)) => {
            delete_in_chunks(
                pool,
                "DELETE FROM messages WHERE id IN \
                 (SELECT id FROM messages WHERE id <= $1 ORDER BY id LIMIT $2)",
                id,
            )
            .await?
        }
        None => 0,
    };
    Ok(old + over)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CloudConfig;

    /// Retention and `max_messages` delete the oldest messages, old
    /// heartbeat metrics go, and what was deleted is counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pruner_deletes_by_age_and_count_and_counts_it() {
        pruner_on(None).await;
    }

    /// The same on PostgreSQL (a fresh database on the server of
    /// `VERGE_TEST_POSTGRES_URL`; skipped, saying so, without it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pruner_deletes_by_age_and_count_and_counts_it_on_postgres() {
        let Some(db) = crate::testing::ScratchDb::from_env("verge_prune").await else {
            return;
        };
        pruner_on(Some(db.url().to_owned())).await;
        db.drop_now().await.expect("drop database");
    }

    async fn pruner_on(database: Option<String>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = CloudConfig::default();
        cfg.cloud.data_dir = dir.path().join("data");
        if let Some(url) = database {
            cfg.cloud.database = url;
        }
        cfg.cloud.max_messages = 5;
        cfg.cloud.message_retention = verge_duration::HumanDuration(Duration::from_secs(3600));
        let (cloud, _) = Cloud::open(cfg).await.expect("open");
        let pool = &cloud.inner().pool;
        let now = now_ms();
        let insert = |topic: String, received_ms: i64| {
            sqlx::query(
                "INSERT INTO messages (verge_id, node_id, topic, payload, received_ms, queued_ms) VALUES (NULL, 'e', $1, $2, $3, $3)",
            )
            .bind(topic)
            .bind(b"{}".to_vec())
            .bind(received_ms)
            .execute(pool)
        };
        // 3 past retention, then 10 recent: 3 go by age, 5 by count. Two
        // days old: on PostgreSQL retention drops whole days, and these
        // fall in no partition of the last hour (so in the DEFAULT one).
        for i in 0..3 {
            insert(format!("old/{i}"), now - 2 * 24 * 3600 * 1000)
                .await
                .expect("insert");
        }
        for i in 0..10 {
            insert(format!("new/{i}"), now).await.expect("insert");
        }
        for ts in [now - crate::api::agent::METRICS_KEEP_MS - 1000, now] {
            sqlx::query(
                "INSERT INTO node_metrics (node_id, ts_ms, cpu_percent, memory_bytes, connections, messages_in_rate, messages_out_rate, backlog_messages) \
                 VALUES ('e', $1, 0, 0, 0, 0, 0, 0)",
            )
            .bind(ts)
            .execute(pool)
            .await
            .expect("insert metric");
        }
        prune_once(&cloud).await.expect("prune");
        let left: Vec<(String,)> = sqlx::query_as("SELECT topic FROM messages ORDER BY id")
            .fetch_all(pool)
            .await
            .expect("select");
        let left: Vec<String> = left.into_iter().map(|r| r.0).collect();
        assert_eq!(left, ["new/5", "new/6", "new/7", "new/8", "new/9"]);
        // The background pass may have run too; together they counted 8
        // (a background pass may have deleted rows and not yet counted
        // them: wait for its count, bounded).
        let pruned = || {
            cloud
                .inner()
                .metrics
                .pruned_messages
                .load(Ordering::Relaxed)
        };
        for _ in 0..100 {
            if pruned() >= 8 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(pruned(), 8);
        let (metrics,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM node_metrics")
            .fetch_one(pool)
            .await
            .expect("count");
        assert_eq!(metrics, 1);
        // Finished commands, cleared alarms and device-channel ids go after
        // retention; open ones stay.
        let old_ms = now - 2 * 3600 * 1000;
        for (id, status) in [
            ("c-old", "replied"),
            ("c-old2", "failed"),
            ("c-old3", "expired"),
            ("c-open", "queued"),
            ("c-new", "expired"),
        ] {
            let at = if id == "c-new" { now } else { old_ms };
            sqlx::query(
                "INSERT INTO commands (id, device_id, node_id, name, payload, status, created_ms, expires_ms, updated_ms, attempts) \
                 VALUES ($1, 'd', 'e', 'n', '{}', $2, $3, $3, $3, 0)",
            )
            .bind(id)
            .bind(status)
            .bind(at)
            .execute(pool)
            .await
            .expect("insert command");
        }
        for (id, status) in [
            ("a-old", "cleared"),
            ("a-old2", "cleared"),
            ("a-old3", "cleared"),
            ("a-open", "active"),
        ] {
            sqlx::query(
                "INSERT INTO alarms (id, device_id, node_id, alarm_type, severity, message, status, acknowledged, raise_count, rule, created_ms, updated_ms) \
                 VALUES ($1, 'd', 'e', $1, 'major', '', $2, 0, 1, '', $3, $3)",
            )
            .bind(id)
            .bind(status)
            .bind(old_ms)
            .execute(pool)
            .await
            .expect("insert alarm");
        }
        // Device-channel ids past retention but younger than a week stay
        // (regression: a node's week-old backlog was applied twice).
        let week_ago = now - DEDUP_KEEP_MS - 1000;
        for (v, at) in [("v-week", week_ago), ("v-old", old_ms), ("v-new", now)] {
            sqlx::query("INSERT INTO device_channel_ids (node_id, verge_id, received_ms) VALUES ('e', $1, $2)")
                .bind(v)
                .bind(at)
                .execute(pool)
                .await
                .expect("insert id");
        }
        prune_once(&cloud).await.expect("prune");
        let ids = |sql: &'static str| async move {
            let rows: Vec<(String,)> = sqlx::query_as(sql).fetch_all(pool).await.expect("select");
            rows.into_iter().map(|r| r.0).collect::<Vec<_>>()
        };
        assert_eq!(
            ids("SELECT id FROM commands ORDER BY id").await,
            ["c-new", "c-open"]
        );
        assert_eq!(ids("SELECT id FROM alarms ORDER BY id").await, ["a-open"]);
        assert_eq!(
            ids("SELECT verge_id FROM device_channel_ids ORDER BY verge_id").await,
            ["v-new", "v-old"]
        );
        // Nothing more to do: a second pass deletes nothing.
        assert_eq!(prune_once(&cloud).await.expect("prune"), 0);
        // Records of adoptions finished over a day ago go; a recent one
        // and records still alive or being adopted stay.
        let day = crate::external::adopt::DONE_KEEP_MS;
        for (client, seen, done) in [
            ("done-old", now - 2 * day, Some(now - day - 1000)),
            ("done-new", now - 2 * day, Some(now - 1000)),
            ("adopting", now - 2 * day, None),
            ("alive", now, None),
        ] {
            sqlx::query(
                "INSERT INTO mqtt_consumer_sessions (client_id, replica, seen_ms, done_ms) VALUES ($1, 'r', $2, $3)",
            )
            .bind(client)
            .bind(seen)
            .bind(done)
            .execute(pool)
            .await
            .expect("insert session record");
        }
        prune_once(&cloud).await.expect("prune");
        assert_eq!(
            ids("SELECT client_id FROM mqtt_consumer_sessions ORDER BY client_id").await,
            ["adopting", "alive", "done-new"]
        );
    }
}

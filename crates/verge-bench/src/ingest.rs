//! Stored upstream messages per second through the cloud's ingest path
//! (`Cloud::store_upstream`: the batch transaction the ingest task runs
//! once the broker hands a batch over), on SQLite and, with `--database
//! postgres://…`, on PostgreSQL in the same run, over batch sizes and
//! concurrent batches. Rows are counted in the database afterwards, so a
//! figure is stored messages, not attempted ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;
use verge_broker::Message;
use verge_cloud::testing::ScratchDb;
use verge_cloud::{Cloud, CloudConfig};
use verge_mqtt::QoS;
use verge_protocol::topics::{self, VERGE_ID_PROPERTY, VERGE_TIME_PROPERTY};

use super::thousands;

/// Options of `verge bench ingest`.
#[derive(Debug, Clone, Args)]
pub struct IngestBenchArgs {
    /// Messages stored per row of the report.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..=50_000_000))]
    pub messages: u64,
    /// Messages per batch (one transaction each); a comma-separated list.
    #[arg(long, value_delimiter = ',', default_values_t = [256usize, 1024, 4096])]
    pub batch: Vec<usize>,
    /// Batches stored at once; a comma-separated list (SQLite has one
    /// writer: its rows run at 1 only).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 4])]
    pub concurrency: Vec<usize>,
    /// Nodes the messages come from.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub nodes: u32,
    /// Devices per node (topic `devices/{d}/telemetry`).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub devices: u32,
    /// A PostgreSQL server to measure too: a scratch database is created
    /// on it (the URL's user needs CREATEDB) and dropped afterwards.
    #[arg(long)]
    pub database: Option<String>,
    /// Skip SQLite.
    #[arg(long)]
    pub no_sqlite: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct IngestRow {
    /// `sqlite` or `postgres`.
    pub database: &'static str,
    /// Messages per batch.
    pub batch: usize,
    /// Batches at once.
    pub concurrency: usize,
    /// Messages stored (counted in the database).
    pub stored: u64,
    /// Seconds from the first batch to the last commit.
    pub secs: f64,
    /// stored / secs.
    pub per_sec: f64,
}

/// Run the bench and print its report. Call outside any runtime.
pub fn run(args: &IngestBenchArgs) -> anyhow::Result<()> {
    if args.batch.iter().any(|&b| b == 0 || b > 65_536) {
        bail!("--batch: each size must be 1 to 65536");
    }
    if args.concurrency.iter().any(|&c| c == 0 || c > 64) {
        bail!("--concurrency: each value must be 1 to 64");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let rows = rt.block_on(all(args))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "verge bench ingest: {} messages per row, {} nodes x {} devices",
        thousands(args.messages),
        args.nodes,
        args.devices
    );
    println!(
        "{:<9} {:>6} {:>11} {:>10} {:>7} {:>12}",
        "database", "batch", "concurrency", "stored", "secs", "stored/s"
    );
    for r in &rows {
        println!(
            "{:<9} {:>6} {:>11} {:>10} {:>7.2} {:>12}",
            r.database,
            r.batch,
            r.concurrency,
            thousands(r.stored),
            r.secs,
            thousands(r.per_sec as u64)
        );
    }
    Ok(())
}

async fn all(args: &IngestBenchArgs) -> anyhow::Result<Vec<IngestRow>> {
    let mut rows = Vec::new();
    if !args.no_sqlite {
        let dir = tempfile::tempdir().context("temporary directory")?;
        let cloud = open(dir.path(), String::new()).await?;
        let conc: Vec<usize> = vec![1];
        rows.extend(measure(&cloud, "sqlite", args, &conc).await?);
    }
    if let Some(base) = &args.database {
        if !(base.starts_with("postgres:") || base.starts_with("postgresql:")) {
            bail!("--database: `{base}` is not a postgres:// URL");
        }
        let db = ScratchDb::create(base, "verge_bench_ingest")
            .await
            .with_context(|| {
                format!("--database: a scratch database on {base} (does the user have CREATEDB?)")
            })?;
        let dir = tempfile::tempdir().context("temporary directory")?;
        let result = async {
            let cloud = open(dir.path(), db.url().to_owned()).await?;
            let rows = measure(&cloud, "postgres", args, &args.concurrency).await;
            // Stopped before its database goes: its `LISTEN` connection
            // would warn of the dropped database.
            cloud.close().await;
            rows
        }
        .await;
        let name = db.name().to_owned();
        if let Err(e) = db.drop_now().await {
            eprintln!("could not drop the scratch database {name}: {e}");
        }
        rows.extend(result?);
    }
    Ok(rows)
}

/// A cloud on `database` (empty: SQLite in `dir`) that prunes nothing
/// during the run.
async fn open(dir: &std::path::Path, database: String) -> anyhow::Result<Cloud> {
    let mut cfg = CloudConfig::default();
    cfg.cloud.data_dir = dir.join("data");
    cfg.cloud.database = database;
    cfg.cloud.max_messages = u64::MAX;
    cfg.cloud.message_retention =
        verge_duration::HumanDuration(Duration::from_secs(30 * 24 * 3600));
    let (cloud, _) = Cloud::open(cfg).await.context("opening the cloud")?;
    Ok(cloud)
}

/// The messages of one row: node `n` sends `devices/d{k}/telemetry` with
/// the ids and times its bridge would give them.
fn messages(args: &IngestBenchArgs, row: usize) -> Vec<Message> {
    let now = verge_net::now_ms();
    let n = args.messages as usize;
    let mut out = Vec::with_capacity(n);
    let topics: Vec<Vec<Arc<str>>> = (0..args.nodes)
        .map(|node| {
            (0..args.devices)
                .map(|d| {
                    Arc::from(topics::up(
                        &format!("bench-{node}"),
                        &format!("devices/d{d}/telemetry"),
                    ))
                })
                .collect()
        })
        .collect();
    for i in 0..n {
        let node = i % args.nodes as usize;
        let dev = (i / args.nodes as usize) % args.devices as usize;
        let payload = format!(r#"{{"temp":{}.{},"seq":{i}}}"#, 20 + i % 10, i % 7);
        let mut m = Message::local(
            topics[node][dev].clone(),
            payload.into_bytes(),
            QoS::AtLeastOnce,
            false,
        );
        m.properties.user_properties = vec![
            (
                VERGE_ID_PROPERTY.into(),
                format!("b{row:04x}0000000000/telemetry/{i}"),
            ),
            (
                VERGE_TIME_PROPERTY.into(),
                (now + (i / 1000) as i64).to_string(),
            ),
        ];
        out.push(m);
    }
    out
}

async fn measure(
    cloud: &Cloud,
    database: &'static str,
    args: &IngestBenchArgs,
    concurrency: &[usize],
) -> anyhow::Result<Vec<IngestRow>> {
    let mut rows = Vec::new();
    let mut before = cloud.stored_messages().await?;
    for &batch in &args.batch {
        for &conc in concurrency {
            let row = rows.len();
            eprintln!("{database}: batch {batch}, concurrency {conc}…");
            let msgs = Arc::new(messages(args, row));
            let next = Arc::new(AtomicUsize::new(0));
            let start = Instant::now();
            let mut tasks = Vec::new();
            for _ in 0..conc {
                let (cloud, msgs, next) = (cloud.clone(), msgs.clone(), next.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        let at = next.fetch_add(batch, Ordering::Relaxed);
                        if at >= msgs.len() {
                            return Ok::<_, verge_cloud::CloudError>(());
                        }
                        let end = (at + batch).min(msgs.len());
                        let refs: Vec<&Message> = msgs[at..end].iter().collect();
                        cloud.store_upstream(&refs).await?;
                    }
                }));
            }
            for t in tasks {
                t.await
                    .context("a store task")?
                    .context("storing a batch")?;
            }
            let secs = start.elapsed().as_secs_f64();
            let total = cloud.stored_messages().await?;
            let stored = total.saturating_sub(before);
            before = total;
            rows.push(IngestRow {
                database,
                batch,
                concurrency: conc,
                stored,
                secs,
                per_sec: stored as f64 / secs,
            });
        }
    }
    Ok(rows)
}

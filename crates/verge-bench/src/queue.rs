//! `verge bench queue`: the cache queue (`verge-queue`) on this machine's
//! disk: durable appends per second and append latency for each sync policy
//! with many concurrent appenders, then the node-side drain ceiling
//! (`next_batch` + `ack`) over a backlog read back from disk, and the drain
//! of a backlog through the bridge to a cloud broker beside the link's own
//! speed ([`super::drain`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use serde_json::json;
use verge_metrics::Histogram;
use verge_queue::{LaneConfig, Queue, QueueConfig, Record, SyncPolicy, WhenFull};

use super::thousands;

/// Options of `verge bench queue`.
#[derive(Debug, Args)]
pub struct QueueBenchArgs {
    /// Sync policies to measure, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "always,group,buffered"
    )]
    pub policies: Vec<PolicyArg>,
    /// Concurrent appenders (tokio tasks), each with one append in flight.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub appenders: u32,
    /// Records per append call.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch: u32,
    /// Payload bytes per record.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(0..=1_048_576))]
    pub payload: u32,
    /// Measured seconds per policy (after 0.5 s of warm-up).
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub duration: f64,
    /// Records in the read-back backlog; 0 skips the read-back.
    #[arg(long, default_value_t = 1_000_000)]
    pub backlog: u64,
    /// Entries per `next_batch` call in the read-back.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub read_batch: u32,
    /// Where the temporary queue directories go [default: the system temp dir].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// The drain through the cloud link.
    #[command(flatten)]
    pub drain: super::drain::DrainArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A sync policy on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyArg {
    /// One fdatasync per append call.
    Always,
    /// Group commit (default config: 5 ms).
    Group,
    /// write(2) only.
    Buffered,
}

impl PolicyArg {
    fn policy(self) -> SyncPolicy {
        match self {
            PolicyArg::Always => SyncPolicy::Always,
            PolicyArg::Group => SyncPolicy::Group,
            PolicyArg::Buffered => SyncPolicy::Buffered,
        }
    }

    fn label(self) -> &'static str {
        match self {
            PolicyArg::Always => "always",
            PolicyArg::Group => "group",
            PolicyArg::Buffered => "buffered",
        }
    }
}

/// Appends/s the project aims at with group commit.
const GROUP_TARGET: f64 = 100_000.0;

/// One policy's result.
struct AppendResult {
    policy: PolicyArg,
    records: u64,
    secs: f64,
    latency: Histogram,
}

/// The read-back result.
struct ReadResult {
    records: u64,
    secs: f64,
    recovery_secs: f64,
}

fn config(dir: PathBuf, sync: SyncPolicy) -> QueueConfig {
    QueueConfig {
        dir,
        sync,
        lanes: vec![LaneConfig {
            name: "bench".into(),
            priority: 0,
            max_bytes: 64 << 30,
            max_age: None,
            when_full: WhenFull::Reject,
        }],
        ..QueueConfig::default()
    }
}

fn record(payload: &Bytes, i: u64) -> Record {
    Record {
        topic: format!("devices/dev-{:04}/telemetry", i % 1000),
        payload: payload.clone(),
        time_ms: verge_net::now_ms(),
    }
}

async fn appends(
    args: &QueueBenchArgs,
    base: &std::path::Path,
    policy: PolicyArg,
) -> anyhow::Result<AppendResult> {
    let tmp = tempfile::Builder::new()
        .prefix("verge-bench-queue-")
        .tempdir_in(base)
        .with_context(|| format!("creating a temp dir in {}", base.display()))?;
    let (q, _) = Queue::open(config(tmp.path().to_path_buf(), policy.policy()))?;
    let payload = Bytes::from(vec![b'x'; args.payload as usize]);
    let warm = Instant::now() + Duration::from_millis(500);
    let end = warm + Duration::from_secs_f64(args.duration);
    let mut tasks = Vec::new();
    for t in 0..args.appenders {
        let q = q.clone();
        let payload = payload.clone();
        let batch = args.batch as u64;
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::default();
            let mut n = 0u64;
            let mut i = u64::from(t);
            loop {
                let start = Instant::now();
                if start >= end {
                    break;
                }
                let recs = (0..batch).map(|k| record(&payload, i + k)).collect();
                i += batch;
                q.append("bench", recs).await?;
                if start >= warm {
                    h.record_mut(start.elapsed().as_nanos() as u64);
                    n += batch;
                }
            }
            anyhow::Ok((n, h))
        }));
    }
    let mut latency = Histogram::default();
    let mut records = 0;
    for t in tasks {
        let (n, h) = t.await.context("appender task")??;
        records += n;
        latency.merge(&h);
    }
    q.close().await;
    Ok(AppendResult {
        policy,
        records,
        secs: args.duration,
        latency,
    })
}

async fn read_back(args: &QueueBenchArgs, base: &std::path::Path) -> anyhow::Result<ReadResult> {
    let tmp = tempfile::Builder::new()
        .prefix("verge-bench-queue-")
        .tempdir_in(base)
        .with_context(|| format!("creating a temp dir in {}", base.display()))?;
    let cfg = config(tmp.path().to_path_buf(), SyncPolicy::Buffered);
    let (q, _) = Queue::open(cfg.clone())?;
    let payload = Bytes::from(vec![b'x'; args.payload as usize]);
    let q = Arc::new(q);
    let writers = 8u64;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let q = Arc::clone(&q);
        let payload = payload.clone();
        let share = args.backlog / writers + u64::from(w < args.backlog % writers);
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < share {
                let n = (share - done).min(1000);
                let recs = (0..n).map(|k| record(&payload, done + k)).collect();
                q.append("bench", recs).await?;
                done += n;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await.context("writer task")??;
    }
    q.close().await;
    drop(q);
    // Reopen: the backlog is read from the files, as after a restart.
    let t0 = Instant::now();
    let (q, recovery) = Queue::open(cfg)?;
    let recovery_secs = t0.elapsed().as_secs_f64();
    let found: u64 = recovery.lanes.iter().map(|l| l.records).sum();
    if found != args.backlog {
        bail!("recovered {found} records, expected {}", args.backlog);
    }
    let t0 = Instant::now();
    let mut out = Vec::with_capacity(args.read_batch as usize);
    let mut read = 0u64;
    while read < args.backlog {
        out.clear();
        let n = q.next_batch(args.read_batch as usize, &mut out).await;
        if n == 0 {
            bail!("queue closed during the read-back");
        }
        for e in &out {
            q.ack(e.lane, e.seq);
        }
        read += n as u64;
    }
    let secs = t0.elapsed().as_secs_f64();
    q.close().await;
    Ok(ReadResult {
        records: read,
        secs,
        recovery_secs,
    })
}

/// Run the benchmark and print the report.
pub fn run(args: &QueueBenchArgs) -> anyhow::Result<()> {
    if !(args.duration.is_finite() && args.duration > 0.0) {
        bail!("--duration must be a positive number of seconds");
    }
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let (results, read) = rt.block_on(async {
        let mut results = Vec::new();
        for &p in &args.policies {
            results.push(appends(args, &base, p).await?);
        }
        let read = if args.backlog > 0 {
            Some(read_back(args, &base).await?)
        } else {
            None
        };
        anyhow::Ok((results, read))
    })?;
    rt.shutdown_timeout(Duration::from_secs(1));
    let drain = if args.drain.drain_messages > 0 {
        Some(super::drain::run(
            &args.drain,
            args.payload as usize,
            &base,
        )?)
    } else {
        None
    };
    if args.json {
        let policies: Vec<_> = results
            .iter()
            .map(|r| {
                json!({
                    "policy": r.policy.label(),
                    "records": r.records,
                    "appends_per_sec": r.records as f64 / r.secs,
                    "latency_p50_us": r.latency.quantile(0.5) as f64 / 1e3,
                    "latency_p99_us": r.latency.quantile(0.99) as f64 / 1e3,
                    "latency_max_us": r.latency.max() as f64 / 1e3,
                })
            })
            .collect();
        let report = json!({
            "appenders": args.appenders,
            "records_per_append": args.batch,
            "payload_bytes": args.payload,
            "duration_secs": args.duration,
            "dir": base.display().to_string(),
            "group_target_per_sec": GROUP_TARGET,
            "policies": policies,
            "read_back": read.as_ref().map(|r| json!({
                "records": r.records,
                "records_per_sec": r.records as f64 / r.secs,
                "read_batch": args.read_batch,
                "recovery_secs": r.recovery_secs,
            })),
            "drain": drain,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("formatting JSON")?
        );
        return Ok(());
    }
    println!(
        "cache queue: {} appenders, {} record(s) of {} B per append, {} s per policy, in {}",
        args.appenders,
        args.batch,
        args.payload,
        args.duration,
        base.display()
    );
    println!(
        "{:<10} {:>14} {:>10} {:>10} {:>10}",
        "policy", "appends/s", "p50 µs", "p99 µs", "max µs"
    );
    for r in &results {
        let rate = r.records as f64 / r.secs;
        let note = match r.policy {
            PolicyArg::Group if rate >= GROUP_TARGET => "  (target 100,000: met)",
            PolicyArg::Group => "  (target 100,000: not met)",
            _ => "",
        };
        println!(
            "{:<10} {:>14} {:>10.0} {:>10.0} {:>10.0}{note}",
            r.policy.label(),
            thousands(rate as u64),
            r.latency.quantile(0.5) as f64 / 1e3,
            r.latency.quantile(0.99) as f64 / 1e3,
            r.latency.max() as f64 / 1e3,
        );
    }
    if let Some(r) = read {
        println!(
            "read-back: {} records with next_batch({}) + ack in {:.2} s = {} records/s (recovery scan {:.0} ms)",
            thousands(r.records),
            args.read_batch,
            r.secs,
            thousands((r.records as f64 / r.secs) as u64),
            r.recovery_secs * 1e3,
        );
    }
    if let Some(d) = &drain {
        print!("{}", super::drain::table(d));
    }
    Ok(())
}

//! `verge bench drivers`: the Modbus TCP driver against the in-process
//! simulator (`verge_drivers::modbus::sim`, tokio-modbus's server side) on
//! loopback, publishing into an in-process broker with one subscriber.
//!
//! - **throughput**: points read per second by one driver polling at 10 ms,
//!   first one device of `--points` registers (bound by the poll interval
//!   when the driver keeps up), then ten such devices on the one connection
//!   (more than it can serve: its capacity).
//! - **load**: CPU and memory while one driver polls `--load-points`
//!   registers (devices of 1,000) every second for `--load-secs`. CPU is
//!   read from `/proc/self/task/*/stat` (utime + stime): the driver side
//!   (driver and broker threads) apart from the simulator's thread, and the
//!   whole process; RSS is the process's (`/proc/self/status`), before the
//!   driver started (the load row runs first) and at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};
use verge_broker::{Broker, BrokerConfig};
use verge_drivers::modbus::sim::Sim;
use verge_drivers::{Driver, DriverConfig};

use super::thousands;

/// Thread name of the driver side (driver task, broker, subscriber).
const DRIVER_THREADS: &str = "verge-drivers";
/// Thread name of the simulator.
const SIM_THREADS: &str = "modbus-sim";
/// Kernel clock ticks per second for /proc times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// Options of `verge bench drivers`.
#[derive(Debug, Args)]
pub struct DriversBenchArgs {
    /// Measured seconds of each throughput row (after 0.5 s of warm-up).
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub duration: f64,
    /// Points (holding registers) per device in the throughput rows.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub points: u32,
    /// Points of the load row (devices of 1,000 points, polled every second).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub load_points: u32,
    /// Measured seconds of the load row.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub load_secs: f64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One throughput row.
struct Row {
    devices: u32,
    points: u32,
    poll_ms: u64,
    secs: f64,
    points_read: u64,
    reads: u64,
    requests: u64,
    published: u64,
    p50_us: Option<u64>,
    p99_us: Option<u64>,
}

/// The load row.
struct Load {
    points: u32,
    devices: u32,
    secs: f64,
    points_read: u64,
    driver_cpu_pct: f64,
    process_cpu_pct: f64,
    rss_before_mb: f64,
    rss_after_mb: f64,
}

/// A driver config: `devices` devices (units 1..) of `points` u16 registers.
fn config(port: u16, devices: u32, points: u32, poll: &str) -> anyhow::Result<DriverConfig> {
    let devs: Vec<Value> = (0..devices)
        .map(|d| {
            let pts: Vec<Value> = (0..points)
                .map(|i| json!({"name": format!("p{i}"), "address": format!("hr:{i}")}))
                .collect();
            json!({"name": format!("dev{d}"), "unit": (d % 247) + 1, "poll": poll, "points": pts})
        })
        .collect();
    serde_json::from_value(json!({
        "name": "bench", "protocol": "modbus-tcp", "host": "127.0.0.1", "port": port,
        "timeout": "1s", "devices": devs,
    }))
    .context("bench driver config")
}

fn runtime(name: &str, workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name(name)
        .enable_all()
        .build()
        .with_context(|| format!("starting the {name} runtime"))
}

/// The broker with one subscriber draining telemetry; returns its counter.
async fn broker() -> anyhow::Result<(Broker, Arc<AtomicU64>)> {
    let cfg = BrokerConfig::default();
    let auth = Broker::authenticator(&cfg).context("broker authenticator")?;
    let broker = Broker::start(cfg, auth);
    let mut sub = broker
        .handle()
        .subscribe("devices/+/telemetry", 4096)
        .await
        .map_err(|e| anyhow::anyhow!("subscribing: {e}"))?;
    let got = Arc::new(AtomicU64::new(0));
    let counter = got.clone();
    tokio::spawn(async move {
        while sub.recv().await.is_some() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    Ok((broker, got))
}

/// Points read so far, all devices.
fn points_read(d: &Driver) -> u64 {
    d.status().devices.iter().map(|x| x.points_read).sum()
}

fn throughput(sim: &Sim, devices: u32, args: &DriversBenchArgs) -> anyhow::Result<Row> {
    let rt = runtime(DRIVER_THREADS, 1)?;
    let port = sim.addr().port();
    let cfg = config(port, devices, args.points, "10ms")?;
    let row = rt.block_on(async {
        let (broker, got) = broker().await?;
        let d = Driver::start(cfg, broker.handle()).map_err(|e| anyhow::anyhow!(e))?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (p0, r0, q0, m0) = (
            points_read(&d),
            d.status().reads,
            sim.requests(),
            got.load(Ordering::Relaxed),
        );
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
        let secs = t0.elapsed().as_secs_f64();
        let st = d.status();
        let row = Row {
            devices,
            points: args.points,
            poll_ms: 10,
            secs,
            points_read: points_read(&d) - p0,
            reads: st.reads - r0,
            requests: sim.requests() - q0,
            published: got.load(Ordering::Relaxed) - m0,
            p50_us: st.p50_us,
            p99_us: st.p99_us,
        };
        d.stop().await;
        broker.shutdown().await;
        anyhow::Ok(row)
    })?;
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(row)
}

/// utime + stime (ticks) of this process's threads, those named `prefix`
/// or all.
fn cpu_ticks(prefix: Option<&str>) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    let mut total = 0;
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state …`: comm may hold spaces, so split after ')'.
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map_or("", |(_, c)| c);
        if prefix.is_some_and(|p| !comm.starts_with(p)) {
            continue;
        }
        let f: Vec<&str> = rest.split_whitespace().collect();
        // After ')': state is field 3, utime 14 and stime 15 (1-based).
        let num = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        total += num(11) + num(12);
    }
    total
}

/// Resident memory, MB.
fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn load(sim: &Sim, args: &DriversBenchArgs) -> anyhow::Result<Load> {
    let devices = args.load_points.div_ceil(1000);
    let per = args.load_points.div_ceil(devices);
    let rt = runtime(DRIVER_THREADS, 2)?;
    let cfg = config(sim.addr().port(), devices, per, "1s")?;
    let rss_before_mb = rss_mb();
    let out = rt.block_on(async {
        let (broker, _got) = broker().await?;
        let d = Driver::start(cfg, broker.handle()).map_err(|e| anyhow::anyhow!(e))?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (p0, drv0, all0) = (
            points_read(&d),
            cpu_ticks(Some(DRIVER_THREADS)),
            cpu_ticks(None),
        );
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(args.load_secs)).await;
        let secs = t0.elapsed().as_secs_f64();
        let (p1, drv1, all1) = (
            points_read(&d),
            cpu_ticks(Some(DRIVER_THREADS)),
            cpu_ticks(None),
        );
        let rss_after_mb = rss_mb();
        d.stop().await;
        broker.shutdown().await;
        anyhow::Ok(Load {
            points: devices * per,
            devices,
            secs,
            points_read: p1 - p0,
            driver_cpu_pct: (drv1 - drv0) as f64 / TICKS / secs * 100.0,
            process_cpu_pct: (all1 - all0) as f64 / TICKS / secs * 100.0,
            rss_before_mb,
            rss_after_mb,
        })
    })?;
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(out)
}

/// Run the bench.
pub fn run(args: &DriversBenchArgs) -> anyhow::Result<()> {
    for (name, v) in [
        ("--duration", args.duration),
        ("--load-secs", args.load_secs),
    ] {
        if !(v.is_finite() && v > 0.0) {
            bail!("{name} must be a positive number of seconds");
        }
    }
    let sim_rt = runtime(SIM_THREADS, 1)?;
    let sim = sim_rt
        .block_on(Sim::start())
        .context("starting the Modbus simulator")?;
    for i in 0..=u16::MAX {
        sim.set_holding(i, &[i]);
    }
    // The load row first, so its RSS is not inflated by the throughput rows.
    eprintln!(
        "load: {} points at 1s for {:.1}s…",
        args.load_points, args.load_secs
    );
    let l = load(&sim, args)?;
    let mut rows = Vec::new();
    for devices in [1, 10] {
        eprintln!(
            "throughput: {devices} device(s) × {} points, poll 10ms, {:.1}s…",
            args.points, args.duration
        );
        rows.push(throughput(&sim, devices, args)?);
    }
    drop(sim);
    sim_rt.shutdown_timeout(Duration::from_secs(1));
    if args.json {
        let doc = json!({
            "throughput": rows.iter().map(|r| json!({
                "devices": r.devices, "points_per_device": r.points, "poll_ms": r.poll_ms,
                "secs": r.secs, "points_read": r.points_read,
                "points_per_sec": r.points_read as f64 / r.secs,
                "reads_per_sec": r.reads as f64 / r.secs,
                "requests_per_sec": r.requests as f64 / r.secs,
                "published": r.published, "p50_us": r.p50_us, "p99_us": r.p99_us,
            })).collect::<Vec<_>>(),
            "load": {
                "points": l.points, "devices": l.devices, "poll_ms": 1000, "secs": l.secs,
                "points_read": l.points_read, "driver_cpu_pct": l.driver_cpu_pct,
                "process_cpu_pct": l.process_cpu_pct, "rss_before_mb": l.rss_before_mb,
                "rss_after_mb": l.rss_after_mb,
            },
        });
        println!("{doc:#}");
        return Ok(());
    }
    println!("Modbus TCP driver against the in-process simulator (loopback), poll 10ms");
    println!(
        "{:>8} {:>10} {:>12} {:>10} {:>12} {:>10} {:>10}",
        "devices", "points", "points/s", "reads/s", "requests/s", "p50 µs", "p99 µs"
    );
    for r in &rows {
        let q = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
        println!(
            "{:>8} {:>10} {:>12} {:>10.0} {:>12.0} {:>10} {:>10}",
            r.devices,
            thousands(u64::from(r.points * r.devices)),
            thousands((r.points_read as f64 / r.secs) as u64),
            r.reads as f64 / r.secs,
            r.requests as f64 / r.secs,
            q(r.p50_us),
            q(r.p99_us),
        );
    }
    println!();
    println!(
        "load: {} points ({} devices) polled every 1s for {:.1}s: {} points read",
        thousands(u64::from(l.points)),
        l.devices,
        l.secs,
        thousands(l.points_read)
    );
    println!(
        "  CPU: driver side {:.1}% of one core, whole process (with the simulator) {:.1}%",
        l.driver_cpu_pct, l.process_cpu_pct
    );
    println!(
        "  RSS: {:.1} MB before the driver started, {:.1} MB at the end (+{:.1} MB)",
        l.rss_before_mb,
        l.rss_after_mb,
        l.rss_after_mb - l.rss_before_mb
    );
    Ok(())
}

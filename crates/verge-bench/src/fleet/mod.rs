//! `verge bench fleet`: N simulated nodes against a cloud the bench starts
//! itself (K `verge cloud` child processes on one database), so it can
//! read each replica's CPU time and memory from `/proc` and `kill -9` one
//! mid-run.
//!
//! The nodes are tasks on one runtime: each joins through the API (its
//! node created with the admin token), heartbeats, holds the desired-state
//! long poll, keeps an MQTT 5 connection publishing telemetry QoS 1 with a
//! unique `verge-id`, and a sample of them takes commands for a device and
//! desired-state changes, both timed. Node HTTP goes over a few HTTP/2
//! cleartext connections per replica ([`http`]): 10,000 held long polls
//! over HTTP/1.1 would need 10,000 sockets in the cloud process besides
//! the 10,000 MQTT connections, past the 20,000 open-file limit.
//!
//! At the end the bench reads every node's stored messages through the
//! API and checks each acknowledged message is stored exactly once.

mod cloud;
mod http;
mod node;
mod report;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use verge_protocol::{JoinRequest, JoinResponse, paths};

use self::cloud::Replica;
use self::http::{Pool, STREAMS_PER_CONN};
use self::node::{Node, Phase, Routes, Stats};
use self::report::{ReplicaReport, Report};
use super::ensure_nofile;

/// HTTP/2 connections per replica for API calls and heartbeats.
const API_CONNS: usize = 4;

/// Longest wait for the last acknowledgements after publishing stops.
const DRAIN: Duration = Duration::from_secs(30);

/// Longest wait, after the run, for acknowledged messages to be stored.
const STORE_SETTLE: Duration = Duration::from_secs(120);

/// The wait for stored messages ends when nothing more arrived for this
/// long.
const STORE_QUIET: Duration = Duration::from_secs(15);

/// Options of `verge bench fleet`.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Simulated nodes.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub nodes: u32,
    /// Measured time, after every node joined and connected.
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub duration: Duration,
    /// Telemetry messages per second per node (0: none).
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Heartbeat period of each node.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub heartbeat: Duration,
    /// `verge cloud` replicas to start (more than one needs `--database
    /// postgres://…`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub replicas: u32,
    /// The replicas' shared database (`postgres://…`, fresh: the bench
    /// needs the admin token the first start prints); default SQLite in a
    /// temporary directory.
    #[arg(long)]
    pub database: Option<String>,
    /// Kill -9 the last replica this long into the measured time.
    #[arg(long, value_parser = duration)]
    pub kill_one_at: Option<Duration>,
    /// More `--set KEY=VALUE` for every `verge cloud` (e.g.
    /// `mqtt.mode=external`).
    #[arg(long = "cloud-arg", value_name = "KEY=VALUE")]
    pub cloud_args: Vec<String>,
    /// Nodes that get a device and take timed commands and desired-state
    /// changes (spread over the fleet).
    #[arg(long, default_value_t = 100)]
    pub sample: u32,
    /// Joins and MQTT connects in progress at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

fn duration(s: &str) -> Result<Duration, String> {
    verge_duration::parse(s)
}

/// Run the benchmark and print the report.
pub fn run(args: &FleetArgs) -> anyhow::Result<()> {
    let k = args.replicas as usize;
    let database = args.database.clone().unwrap_or_default();
    if k > 1 && !database.starts_with("postgres") {
        bail!("--replicas {k} needs --database postgres://… (SQLite serves one replica)");
    }
    if args.kill_one_at.is_some() && k < 2 {
        bail!("--kill-one-at needs at least 2 replicas");
    }
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        bail!("--rate must be a number of messages per second, 0 or more");
    }
    if args.heartbeat.is_zero() || args.duration.is_zero() {
        bail!("--heartbeat and --duration must be more than 0");
    }
    for a in &args.cloud_args {
        if !a.contains('=') {
            bail!("--cloud-arg: expected KEY=VALUE, got `{a}`");
        }
    }
    let n = args.nodes as usize;
    ensure_nofile(n as u64 + (n / STREAMS_PER_CONN) as u64 + 512)?;
    let mut replicas = Vec::with_capacity(k);
    let mut token = None;
    for i in 0..k {
        let (r, t) = Replica::start(i, &database, &args.cloud_args)
            .with_context(|| format!("starting cloud replica {i}"))?;
        if i == 0 {
            token = t;
        }
        replicas.push(r);
    }
    let token = token.context(
        "the first replica printed no admin token: the database was used before; give a fresh one",
    )?;
    let replicas = Arc::new(Mutex::new(replicas));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the bench runtime")?;
    let result = runtime.block_on(fleet(args, replicas.clone(), token));
    runtime.shutdown_timeout(Duration::from_secs(2));
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let tails: String = lock(&replicas)
                .iter()
                .enumerate()
                .map(|(i, r)| format!("\n--- replica {i} ---\n{}", r.log_tail()))
                .collect();
            return Err(e.context(format!("the fleet run failed; the replicas said:{tails}")));
        }
    };
    drop(replicas);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.json()).context("formatting JSON")?
        );
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The whole run inside the runtime.
async fn fleet(
    args: &FleetArgs,
    replicas: Arc<Mutex<Vec<Replica>>>,
    token: String,
) -> anyhow::Result<Report> {
    let n = args.nodes as usize;
    let k = args.replicas as usize;
    let addrs: Vec<SocketAddr> = lock(&replicas).iter().map(|r| r.http).collect();
    let mut api = Vec::with_capacity(k);
    let mut polls = Vec::with_capacity(k);
    for a in &addrs {
        api.push(Pool::connect(*a, API_CONNS).await?);
        polls.push(Pool::connect(*a, n.div_ceil(k).div_ceil(STREAMS_PER_CONN)).await?);
    }
    // Sample CPU and memory twice a second all along.
    let sampler_stop = Arc::new(tokio::sync::Notify::new());
    let sampler = {
        let replicas = replicas.clone();
        let stop = sampler_stop.clone();
        tokio::spawn(async move {
            loop {
                for r in lock(&replicas).iter_mut() {
                    r.sample();
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.notified() => return,
                }
            }
        })
    };

    // Join.
    let gate = Arc::new(Semaphore::new(args.concurrency as usize));
    // Sampled nodes spread over the fleet and over the replicas.
    let every = (n / (args.sample as usize).clamp(1, n)).max(1);
    let sampled: std::collections::HashSet<usize> = (0..(args.sample as usize).min(n))
        .map(|j| (j * every + j % k).min(n - 1))
        .collect();
    let t_join = Instant::now();
    let mut joining = tokio::task::JoinSet::new();
    for i in 0..n {
        let gate = gate.clone();
        let pool = api[i % k].clone();
        let token = token.clone();
        let sampled = sampled.contains(&i);
        joining.spawn(async move {
            let _permit = gate.acquire().await;
            (i, join(&pool, &token, i, sampled).await)
        });
    }
    let mut nodes: Vec<Arc<Node>> = Vec::with_capacity(n);
    let mut join_errors = 0u64;
    let mut first_error = None;
    while let Some(r) = joining.join_next().await {
        let (i, r) = r.context("join task")?;
        match r {
            Ok((id, secret, mqtt, device)) => nodes.push(Arc::new(Node {
                index: i,
                id,
                secret,
                replica: i % k,
                current: (i % k).into(),
                slot: i / k,
                mqtt,
                device,
                acked: Mutex::new(Vec::new()),
                command_at: Mutex::new(None),
                change_at: Mutex::new(None),
                version: Default::default(),
                connected: Default::default(),
            })),
            Err(e) => {
                join_errors += 1;
                first_error.get_or_insert(format!("{e:#}"));
            }
        }
    }
    let join_s = t_join.elapsed().as_secs_f64();
    if nodes.is_empty() {
        bail!(
            "no node joined: {}",
            first_error.unwrap_or_else(|| "no error".into())
        );
    }
    nodes.sort_by_key(|n| n.index);

    // Connect.
    let stats = Arc::new(Stats::default());
    let (phase_tx, phase) = watch::channel(Phase::Ready);
    let t_conn = Instant::now();
    let mut connecting = tokio::task::JoinSet::new();
    for node in &nodes {
        let gate = gate.clone();
        let node = node.clone();
        connecting.spawn(async move {
            let _permit = gate.acquire().await;
            let c = node::connect(&node, node.mqtt).await;
            (node, c)
        });
    }
    let mut connect_errors = 0u64;
    let mut connected = Vec::with_capacity(nodes.len());
    while let Some(r) = connecting.join_next().await {
        let (node, c) = r.context("connect task")?;
        match c {
            Ok(c) => connected.push((node, c)),
            Err(e) => {
                connect_errors += 1;
                first_error.get_or_insert(format!("{e:#}"));
            }
        }
    }
    let connect_s = t_conn.elapsed().as_secs_f64();
    // Each replica's MQTT address, from a node it joined.
    let mqtt: Vec<SocketAddr> = (0..k)
        .map(|j| {
            nodes
                .iter()
                .find(|n| n.replica == j)
                .map_or(nodes[0].mqtt, |n| n.mqtt)
        })
        .collect();
    let routes = Arc::new(Routes {
        mqtt,
        api: api.clone(),
        polls: polls.clone(),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (node, c) in connected {
        tasks.spawn(node::mqtt_loop(
            node.clone(),
            c,
            routes.clone(),
            args.rate,
            stats.clone(),
            phase.clone(),
        ));
    }
    for node in &nodes {
        tasks.spawn(node::heartbeat_loop(
            node.clone(),
            routes.clone(),
            args.heartbeat,
            stats.clone(),
            phase.clone(),
        ));
        tasks.spawn(node::poll_loop(
            node.clone(),
            routes.clone(),
            stats.clone(),
            phase.clone(),
        ));
    }
    // Every long poll has taken its first state.
    let t_settle = Instant::now();
    while nodes.iter().any(|n| n.version.load(Ordering::Relaxed) == 0)
        && t_settle.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Measure.
    let cpu0: Vec<f64> = lock(&replicas).iter().map(Replica::cpu_s).collect();
    phase_tx.send_replace(Phase::Measure);
    let t_measure = Instant::now();
    let operator = tokio::spawn(operate(
        nodes.clone(),
        api.clone(),
        token.clone(),
        phase.clone(),
    ));
    let mut killed = None;
    while t_measure.elapsed() < args.duration {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(at) = args.kill_one_at
            && killed.is_none()
            && t_measure.elapsed() >= at
        {
            let victim = k - 1;
            lock(&replicas)[victim]
                .kill()
                .with_context(|| format!("killing replica {victim}"))?;
            killed = Some((victim, t_measure.elapsed().as_secs_f64()));
        }
    }
    let published_in_window = stats.published.load(Ordering::Relaxed);
    let acked_in_window = stats.acked.load(Ordering::Relaxed);
    let measured_s = t_measure.elapsed().as_secs_f64();
    phase_tx.send_replace(Phase::Drain);
    let _ = operator.await;
    // The last acknowledgements: until every publish of a live connection
    // is answered, or nothing moves for 3 s.
    let t_drain = Instant::now();
    let mut last = (0, Instant::now());
    while t_drain.elapsed() < DRAIN {
        let answered = stats.acked.load(Ordering::Relaxed) + stats.refused.load(Ordering::Relaxed);
        if answered >= stats.published.load(Ordering::Relaxed) {
            break;
        }
        if answered != last.0 {
            last = (answered, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu_window_s = t_measure.elapsed().as_secs_f64();
    let cpu1: Vec<f64> = {
        let mut rs = lock(&replicas);
        for r in rs.iter_mut() {
            r.sample();
        }
        rs.iter().map(Replica::cpu_s).collect()
    };
    phase_tx.send_replace(Phase::Stop);
    while tokio::time::timeout(Duration::from_secs(5), tasks.join_next())
        .await
        .ok()
        .flatten()
        .is_some()
    {}
    tasks.abort_all();

    // Count what was stored, through a live replica.
    let live = lock(&replicas)
        .iter_mut()
        .enumerate()
        .find_map(|(i, r)| (!r.killed && !r.died()).then_some(i))
        .context("no replica is alive to count the stored messages")?;
    // In external mode the broker acknowledges a node's publish before a
    // replica stores it (and a dead replica's share waits for adoption):
    // read again until nothing is missing, or nothing more arrives for
    // STORE_QUIET, at most STORE_SETTLE.
    let t_store = Instant::now();
    let mut check = verify(&nodes, &api[live], &token).await?;
    let mut progress = (check.missing, Instant::now());
    while check.missing > 0 && t_store.elapsed() < STORE_SETTLE {
        tokio::time::sleep(Duration::from_secs(1)).await;
        check = verify(&nodes, &api[live], &token).await?;
        if check.missing < progress.0 {
            progress = (check.missing, Instant::now());
        } else if progress.1.elapsed() > STORE_QUIET {
            break;
        }
    }
    check.settle_s = t_store.elapsed().as_secs_f64();
    sampler_stop.notify_one();
    let _ = sampler.await;

    let rs = lock(&replicas);
    let per_replica = rs
        .iter()
        .enumerate()
        .map(|(i, r)| ReplicaReport {
            nodes: nodes.iter().filter(|n| n.replica == i).count(),
            cpu_s: cpu1[i] - cpu0[i],
            peak_rss: r.peak_rss,
            killed: r.killed,
        })
        .collect();
    Ok(Report {
        nodes: n,
        replicas: k,
        database: if args.database.is_some() {
            "postgresql".into()
        } else {
            "sqlite".into()
        },
        cloud_args: args.cloud_args.clone(),
        rate: args.rate,
        heartbeat_s: args.heartbeat.as_secs_f64(),
        joined: nodes.len(),
        join_errors,
        join_s,
        connected: nodes.len() as u64 - connect_errors,
        connect_errors,
        connect_s,
        first_error,
        measured_s,
        cpu_window_s,
        published_in_window,
        acked_in_window,
        stats,
        check,
        killed,
        per_replica,
    })
}

/// Create node `i` through the API and join it; a sampled node also gets
/// a device. Returns id, secret, MQTT address and device.
async fn join(
    pool: &Pool,
    token: &str,
    i: usize,
    sampled: bool,
) -> anyhow::Result<(String, String, SocketAddr, Option<String>)> {
    let name = format!("sim-{i:05}");
    let body = serde_json::to_vec(&json!({"name": name})).context("encoding")?;
    let created: Value = pool
        .request(None, Method::POST, "/api/nodes", token, Some(body))
        .await?
        .json(StatusCode::CREATED)
        .with_context(|| format!("creating node {name}"))?;
    let join_token = created["join_token"]
        .as_str()
        .context("no `join_token` in the answer")?
        .to_owned();
    let req = JoinRequest {
        token: join_token,
        hostname: name.clone(),
        agent_version: "fleet-sim".into(),
    };
    let joined: JoinResponse = pool
        .request(
            None,
            Method::POST,
            paths::JOIN,
            "",
            Some(serde_json::to_vec(&req).context("encoding")?),
        )
        .await?
        .json(StatusCode::OK)
        .with_context(|| format!("joining node {name}"))?;
    let mqtt = mqtt_addr(&joined.mqtt_url)?;
    let device = if sampled {
        let d = format!("{name}-d");
        let body = serde_json::to_vec(&json!({"name": d, "node_id": joined.node_id}))
            .context("encoding")?;
        pool.request(None, Method::POST, "/api/devices", token, Some(body))
            .await?
            .json::<Value>(StatusCode::CREATED)
            .with_context(|| format!("creating device {d}"))?;
        Some(d)
    } else {
        None
    };
    Ok((joined.node_id, joined.secret, mqtt, device))
}

/// `mqtt://host:port` → an address (TLS is not simulated).
fn mqtt_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let hostport = url.strip_prefix("mqtt://").with_context(|| {
        format!(
            "the join answer's mqtt_url `{url}` is not mqtt://host:port (mqtts is not simulated)"
        )
    })?;
    hostport
        .to_socket_addrs()
        .with_context(|| format!("resolving {hostport}"))?
        .next()
        .with_context(|| format!("{hostport} resolves to no address"))
}

/// The operator while measuring: each second, a command for every sampled
/// node without one pending (queued through its replica), and a
/// desired-state change (its `log.level`) on one sampled node, made
/// through another replica when there are several (its own when that one
/// is down).
async fn operate(
    nodes: Vec<Arc<Node>>,
    api: Vec<Pool>,
    token: String,
    mut phase: watch::Receiver<Phase>,
) {
    let sampled: Vec<Arc<Node>> = nodes.into_iter().filter(|n| n.device.is_some()).collect();
    if sampled.is_empty() {
        return;
    }
    let next_change = Arc::new(AtomicUsize::new(0));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut round = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = phase.wait_for(|p| *p >= Phase::Drain) => return,
        }
        round += 1;
        for node in &sampled {
            if !node.connected.load(Ordering::Relaxed) {
                continue;
            }
            let Some(device) = node.device.clone() else {
                continue;
            };
            {
                let mut slot = lock(&node.command_at);
                if slot.is_some() {
                    continue;
                }
                *slot = Some(Instant::now());
            }
            let pool = api[node.current.load(Ordering::Relaxed)].clone();
            let (node, token) = (node.clone(), token.clone());
            tokio::spawn(async move {
                let path = format!("/api/devices/{device}/commands/ping");
                let ok = pool
                    .request(None, Method::POST, &path, &token, Some(b"{}".to_vec()))
                    .await
                    .is_ok_and(|a| a.status == StatusCode::ACCEPTED);
                if !ok {
                    *lock(&node.command_at) = None;
                }
            });
        }
        let i = next_change.fetch_add(1, Ordering::Relaxed) % sampled.len();
        let node = sampled[i].clone();
        {
            let mut slot = lock(&node.change_at);
            if slot.is_some() {
                continue;
            }
            *slot = Some(Instant::now());
        }
        // Through another replica (its own when that one fails): the
        // change must wake a long poll held elsewhere.
        let on = node.current.load(Ordering::Relaxed);
        let pools = [api[(on + 1) % api.len()].clone(), api[on].clone()];
        let token = token.clone();
        tokio::spawn(async move {
            let body = json!({"config": {"log": {"level": format!("info,fleet_bench=debug,r{round}=info")}}});
            let path = format!("/api/nodes/{}", node.id);
            for pool in &pools {
                let ok = pool
                    .request(
                        None,
                        Method::PATCH,
                        &path,
                        &token,
                        serde_json::to_vec(&body).ok(),
                    )
                    .await
                    .is_ok_and(|a| a.status == StatusCode::OK);
                if ok {
                    return;
                }
            }
            *lock(&node.change_at) = None;
        });
    }
}

/// What the stored messages came to.
#[derive(Debug, Default)]
pub struct Check {
    /// Telemetry rows stored.
    pub stored: u64,
    /// Acknowledged messages not stored (must be 0).
    pub missing: u64,
    /// Messages stored more than once (must be 0).
    pub duplicates: u64,
    /// Stored messages whose acknowledgement never arrived (allowed: the
    /// commit happened, the PUBACK was lost with its replica).
    pub unacked_stored: u64,
    /// Nodes whose messages could not be read.
    pub read_errors: u64,
    /// Seconds from the first read-back until the last (more reads while
    /// acknowledged messages were still arriving in the database).
    pub settle_s: f64,
}

/// Read every node's stored telemetry and compare it with what was
/// acknowledged.
async fn verify(nodes: &[Arc<Node>], pool: &Pool, token: &str) -> anyhow::Result<Check> {
    let gate = Arc::new(Semaphore::new(32));
    let mut reading = tokio::task::JoinSet::new();
    for node in nodes {
        let (gate, pool, token, node) =
            (gate.clone(), pool.clone(), token.to_owned(), node.clone());
        reading.spawn(async move {
            let _permit = gate.acquire().await;
            let seqs = stored_seqs(&pool, &token, &node.id).await;
            (node, seqs)
        });
    }
    let mut c = Check::default();
    while let Some(r) = reading.join_next().await {
        let (node, seqs) = r.context("read task")?;
        let Ok(mut seqs) = seqs else {
            c.read_errors += 1;
            continue;
        };
        c.stored += seqs.len() as u64;
        seqs.sort_unstable();
        let before = seqs.len();
        seqs.dedup();
        c.duplicates += (before - seqs.len()) as u64;
        let mut acked = lock(&node.acked).clone();
        acked.sort_unstable();
        for s in &acked {
            if seqs.binary_search(s).is_err() {
                c.missing += 1;
            }
        }
        for s in &seqs {
            if acked.binary_search(s).is_err() {
                c.unacked_stored += 1;
            }
        }
    }
    Ok(c)
}

/// The `seq` of every telemetry message stored for `node`.
async fn stored_seqs(pool: &Pool, token: &str, node: &str) -> anyhow::Result<Vec<u64>> {
    let mut out = Vec::new();
    let mut after = 0i64;
    loop {
        let path =
            format!("/api/nodes/{node}/messages?after_id={after}&limit=1000&topic=fleet/telemetry");
        let rows: Vec<Value> = pool
            .request(None, Method::GET, &path, token, None)
            .await?
            .json(StatusCode::OK)?;
        for r in &rows {
            if let Some(s) = r["payload"]["seq"].as_u64() {
                out.push(s);
            }
        }
        match rows.last().and_then(|r| r["id"].as_i64()) {
            Some(id) if rows.len() == 1000 => after = id,
            _ => return Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_url_of_the_join_answer() {
        assert_eq!(
            mqtt_addr("mqtt://127.0.0.1:1883").expect("plain"),
            SocketAddr::from(([127, 0, 0, 1], 1883))
        );
        assert!(mqtt_addr("mqtts://127.0.0.1:8883").is_err());
        assert!(mqtt_addr("mqtt://").is_err());
    }
}

//! `verge bench connections`: open N idle MQTT connections and report the
//! broker process's resident memory before, after and per connection.
//!
//! Memory is only meaningful for a broker in its own process: `--spawn
//! verge` starts this executable as `verge node` with a temporary config on
//! a free port; for an external broker `--pid` names the process to read
//! `/proc/PID/status` of.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::client::Client;
use super::{ProtocolArg, Target, ensure_nofile, spawned_config, thousands};

/// Connections per loopback source address (stays clear of the ephemeral
/// port range of one address).
const PER_SOURCE: usize = 20_000;

/// Options of `verge bench connections`.
#[derive(Debug, Args)]
pub struct ConnectionsArgs {
    /// The broker under test.
    #[command(flatten)]
    pub target: Target,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Process id of an external broker, to read its memory from /proc.
    #[arg(long, conflicts_with = "spawn")]
    pub pid: Option<u32>,
    /// Keep alive of the connections in seconds (0 = off).
    #[arg(long, default_value_t = 0)]
    pub keep_alive: u16,
    /// MQTT version of the clients.
    #[arg(long, value_enum, default_value = "5")]
    pub protocol: ProtocolArg,
    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    /// Seconds to wait after the last connection before reading memory.
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    pub settle: f64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A `verge node` child process; killed when dropped.
struct ChildBroker {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for ChildBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run the benchmark and print the report.
pub fn run(args: &ConnectionsArgs) -> anyhow::Result<()> {
    if args.count == 0 {
        bail!("--count must be at least 1");
    }
    ensure_nofile(args.count as u64 + 64)?;
    let (addr, pid, child) = match args.target.spawn {
        Some(_) => {
            let child = spawn_node(args.count).context("starting `verge node` for the bench")?;
            (child.1, Some(child.0.child.id()), Some(child.0))
        }
        None => (args.target.external_addr()?, args.pid, None),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the bench runtime")?;
    let result = runtime.block_on(measure(args, addr, pid));
    drop(child);
    let m = result?;
    let per_conn = match (m.before, m.after) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / m.opened as f64),
        _ => None,
    };
    let kib = |v: Option<u64>| v.map(|v| thousands(v / 1024)).unwrap_or_else(|| "-".into());
    if args.json {
        let j = serde_json::json!({
            "target": addr.to_string(),
            "spawned": args.target.spawn.is_some(),
            "protocol": args.protocol.label(),
            "requested": args.count,
            "opened": m.opened,
            "failed": m.failed,
            "connect_seconds": m.elapsed.as_secs_f64(),
            "rss_before_bytes": m.before,
            "rss_after_bytes": m.after,
            "rss_per_connection_bytes": per_conn,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&j).context("formatting JSON")?
        );
    } else {
        println!(
            "verge bench connections: {addr}, MQTT {}, keep alive {}s",
            args.protocol.label(),
            args.keep_alive
        );
        let rate = m.opened as f64 / m.elapsed.as_secs_f64().max(1e-9);
        let mut rows = vec![
            (
                "opened",
                thousands(m.opened as u64),
                format!("of {}", thousands(args.count as u64)),
            ),
            ("connect rate", thousands(rate as u64), "conn/s".to_owned()),
            ("RSS before", kib(m.before), "KiB".to_owned()),
            ("RSS after", kib(m.after), "KiB".to_owned()),
        ];
        if let Some(p) = per_conn {
            rows.push((
                "per connection",
                format!("{:.2}", p / 1024.0),
                "KiB".to_owned(),
            ));
        }
        for (k, v, unit) in rows {
            println!("  {k:<14} {v:>10} {unit}");
        }
        if m.before.is_none() {
            println!("  (memory not measured: give the broker's process id with --pid)");
        }
        if let Some(e) = &m.first_error {
            println!("  {} connection(s) failed; first error: {e}", m.failed);
        }
    }
    if m.opened == 0 {
        bail!("no connection could be opened");
    }
    Ok(())
}

struct Measured {
    opened: usize,
    failed: usize,
    first_error: Option<String>,
    elapsed: Duration,
    before: Option<u64>,
    after: Option<u64>,
}

async fn measure(
    args: &ConnectionsArgs,
    addr: SocketAddr,
    pid: Option<u32>,
) -> anyhow::Result<Measured> {
    let before = pid.map(rss).transpose()?;
    let protocol = args.protocol.protocol();
    let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    let me = std::process::id();
    for i in 0..args.count {
        let gate = gate.clone();
        let keep_alive = args.keep_alive;
        let source = source_for(addr, i);
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let c = Client::connect(
                addr,
                source,
                protocol,
                &format!("verge-bench-{me}-idle-{i}"),
                keep_alive,
            )
            .await?;
            c.into_stream()
        });
    }
    let mut held: Vec<TcpStream> = Vec::with_capacity(args.count);
    let (mut failed, mut first_error) = (0, None);
    while let Some(r) = tasks.join_next().await {
        match r.context("connection task")? {
            Ok(s) => held.push(s),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(Duration::from_secs_f64(args.settle.max(0.0))).await;
    let after = pid.map(rss).transpose()?;
    Ok(Measured {
        opened: held.len(),
        failed,
        first_error,
        elapsed,
        before,
        after,
    })
}

/// Spread connections to a loopback broker over 127.0.0.x source addresses
/// once there are more than one address's ephemeral ports.
fn source_for(addr: SocketAddr, i: usize) -> Option<SocketAddr> {
    let n = i / PER_SOURCE;
    if n == 0 || !addr.ip().is_loopback() || !addr.is_ipv4() {
        return None;
    }
    let host = 1 + (n % 250) as u8;
    Some(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)),
        0,
    ))
}

/// Resident set size of a process, in bytes (`VmRSS` of /proc/PID/status).
pub(crate) fn rss(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .with_context(|| format!("{path} has no VmRSS line"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("{path}: cannot read `{line}`"))?;
    Ok(kb * 1024)
}

/// Start this executable as `verge node` on a free 127.0.0.1 port and wait
/// until it accepts connections.
fn spawn_node(count: usize) -> anyhow::Result<(ChildBroker, SocketAddr)> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port")?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let path = dir.path().join("node.toml");
    std::fs::write(&path, node_config(&dir.path().join("data"), port, count)?)
        .with_context(|| format!("writing {}", path.display()))?;
    let exe = std::env::current_exe().context("locating the verge executable")?;
    let child = Command::new(exe)
        .arg("node")
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawning `verge node`")?;
    let mut child = ChildBroker { child, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            // Let the broker settle after its first (probe) connection.
            std::thread::sleep(Duration::from_millis(300));
            return Ok((child, addr));
        }
        if let Some(status) = child.child.try_wait().context("waiting for `verge node`")? {
            bail!("`verge node` exited during start-up ({status})");
        }
        if Instant::now() >= deadline {
            bail!("`verge node` did not listen on {addr} within 10s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The spawned node's config file: the node's defaults with its name and
/// data directory, quiet logs, no HTTP API, and the bench broker with room
/// for `count` connections.
fn node_config(data_dir: &std::path::Path, port: u16, count: usize) -> anyhow::Result<String> {
    let mut cfg = verge_node::NodeConfig::default();
    cfg.node.name = "verge-bench".into();
    cfg.node.data_dir = data_dir.to_owned();
    cfg.log.level = "warn".into();
    cfg.broker = spawned_config(port);
    cfg.http.enabled = false;
    cfg.broker.max_connections = cfg.broker.max_connections.max(count + 16);
    toml::to_string(&cfg).context("writing the bench config")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_rotate_only_for_loopback_beyond_one_address() {
        let lo = SocketAddr::from(([127, 0, 0, 1], 1883));
        assert_eq!(source_for(lo, 0), None);
        assert_eq!(source_for(lo, PER_SOURCE - 1), None);
        assert_eq!(
            source_for(lo, PER_SOURCE).map(|a| a.ip()),
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        );
        assert_eq!(
            source_for(SocketAddr::from(([10, 0, 0, 1], 1883)), PER_SOURCE * 3),
            None
        );
    }

    #[test]
    fn spawned_node_config_sets_the_bench_keys() {
        let text = node_config(std::path::Path::new("/tmp/x/data"), 1999, 100_000).expect("config");
        let cfg: verge_node::NodeConfig = toml::from_str(&text).expect("a node config");
        assert_eq!(cfg.node.name, "verge-bench");
        assert_eq!(cfg.node.data_dir, std::path::Path::new("/tmp/x/data"));
        assert_eq!(cfg.log.level, "warn");
        assert!(!cfg.http.enabled);
        assert_eq!(cfg.broker.max_connections, 100_016);
        assert_eq!(cfg.broker.listeners.tcp.bind.port(), 1999);
    }

    #[test]
    fn reads_own_rss() {
        assert!(rss(std::process::id()).expect("rss") > 0);
    }
}

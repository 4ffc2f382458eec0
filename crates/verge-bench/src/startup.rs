//! `verge bench startup`: how long `verge node` takes from exec until its
//! broker answers an MQTT CONNECT, and how much memory an idle node holds.
//!
//! Each run starts the binary (this one unless `--bin` names another, e.g.
//! an edge-only build) as `verge node` with a fresh temporary data dir,
//! its defaults otherwise (but anonymous clients allowed), and every
//! listener that is on by default (MQTT TCP and WebSocket, the HTTP API)
//! moved to a free port. From just before
//! the spawn, the bench tries to connect every `--poll` until the port
//! takes the connection, then sends a CONNECT (MQTT 5, clean start) and
//! stops the clock at the CONNACK; the node is then killed and its data
//! dir removed. After the runs, one more node is started and left alone
//! for `--idle` seconds, and its resident memory (`VmRSS`) is read.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::json;
use verge_mqtt::Protocol;

use super::client::Client;
use super::connections::rss;

/// Options of `verge bench startup`.
#[derive(Debug, Args)]
pub struct StartupArgs {
    /// The `verge` binary to start [default: this one].
    #[arg(long, value_name = "PATH")]
    pub bin: Option<PathBuf>,
    /// Starts to time.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub runs: u32,
    /// How often to retry the TCP connect while the node is starting.
    #[arg(long, default_value = "1ms", value_name = "DURATION", value_parser = verge_duration::parse)]
    pub poll: Duration,
    /// A start that takes longer than this fails the bench.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = verge_duration::parse)]
    pub timeout: Duration,
    /// Seconds an extra node is left idle before its memory is read; 0
    /// skips it.
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub idle: f64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A started node; killed and reaped when dropped, its data dir with it.
struct Node {
    /// The process.
    child: Child,
    /// Where its MQTT TCP listener is.
    mqtt: SocketAddr,
    /// Its data dir (removed on drop).
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run the benchmark and print the report.
pub fn run(args: &StartupArgs) -> anyhow::Result<()> {
    let bin = match &args.bin {
        Some(b) => std::path::absolute(b).with_context(|| format!("--bin {}", b.display()))?,
        None => std::env::current_exe().context("locating the verge executable")?,
    };
    if !bin.is_file() {
        bail!("--bin {}: no such file", bin.display());
    }
    if !(args.idle.is_finite() && args.idle >= 0.0) {
        bail!("--idle must be a number of seconds, 0 or more");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the bench's runtime")?;
    let mut times = Vec::with_capacity(args.runs as usize);
    for _ in 0..args.runs {
        times.push(rt.block_on(time_one(&bin, args.poll, args.timeout))?);
    }
    let idle_rss = if args.idle > 0.0 {
        let mut node = spawn(&bin)?;
        std::thread::sleep(Duration::from_secs_f64(args.idle));
        if let Some(status) = node.child.try_wait().context("waiting for `verge node`")? {
            bail!("the idle `verge node` exited ({status})");
        }
        Some(rss(node.child.id())?)
    } else {
        None
    };
    let summary = Summary::new(&mut times);
    if args.json {
        println!(
            "{}",
            json!({
                "bin": bin.display().to_string(),
                "bin_bytes": std::fs::metadata(&bin).map(|m| m.len()).ok(),
                "runs": args.runs,
                "ready_ms": {"min": summary.min, "median": summary.median, "max": summary.max},
                "idle_secs": args.idle,
                "idle_rss_bytes": idle_rss,
            })
        );
    } else {
        println!("verge bench startup: {}", bin.display());
        if let Ok(m) = std::fs::metadata(&bin) {
            println!(
                "  binary           {:.2} MB ({} bytes)",
                m.len() as f64 / 1e6,
                m.len()
            );
        }
        println!(
            "  exec -> CONNACK  min {:.1} ms, median {:.1} ms, max {:.1} ms ({} runs)",
            summary.min, summary.median, summary.max, args.runs
        );
        if let Some(b) = idle_rss {
            println!(
                "  idle RSS         {:.1} MiB after {}s (VmRSS)",
                b as f64 / (1024.0 * 1024.0),
                args.idle
            );
        }
    }
    Ok(())
}

/// Min, median and max of the runs, in milliseconds.
struct Summary {
    min: f64,
    median: f64,
    max: f64,
}

impl Summary {
    /// `times` must not be empty; it is sorted.
    fn new(times: &mut [f64]) -> Summary {
        times.sort_by(f64::total_cmp);
        let n = times.len();
        let median = if n % 2 == 1 {
            times[n / 2]
        } else {
            (times[n / 2 - 1] + times[n / 2]) / 2.0
        };
        Summary {
            min: times[0],
            median,
            max: times[n - 1],
        }
    }
}

/// One start: milliseconds from just before the spawn until the CONNACK.
async fn time_one(bin: &Path, poll: Duration, timeout: Duration) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut node = spawn(bin)?;
    let deadline = start + timeout;
    loop {
        match Client::connect(node.mqtt, None, Protocol::V5, "verge-bench-startup", 30).await {
            Ok(client) => {
                let ms = start.elapsed().as_secs_f64() * 1e3;
                client.into_split().1.disconnect().await;
                return Ok(ms);
            }
            // Not listening yet: try again. Anything else (a refused
            // CONNECT, a broken handshake) ends the bench.
            Err(e) if !not_listening(&e) => return Err(e.context("connecting to the node")),
            Err(e) => {
                if let Some(status) = node.child.try_wait().context("waiting for `verge node`")? {
                    bail!("`verge node` exited during start-up ({status})");
                }
                if Instant::now() >= deadline {
                    return Err(e.context(format!(
                        "`verge node` did not answer a CONNECT on {} within {timeout:?}",
                        node.mqtt
                    )));
                }
                tokio::time::sleep(poll).await;
            }
        }
    }
}

/// Whether a connect failed because nothing listens on the port (yet).
fn not_listening(e: &anyhow::Error) -> bool {
    e.root_cause()
        .downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// Start `bin` as `verge node` with a fresh data dir and free ports; its
/// broker lets the bench's anonymous client in.
fn spawn(bin: &Path) -> anyhow::Result<Node> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let [mqtt, ws, http] = free_ports()?;
    let child = Command::new(bin)
        .arg("node")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--set", &format!("broker.listeners.tcp.bind={mqtt}")])
        .args(["--set", &format!("broker.listeners.ws.bind={ws}")])
        .args(["--set", &format!("http.bind={http}")])
        .args(["--set", "broker.allow_anonymous=true"])
        .args(["--log", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("spawning {} node", bin.display()))?;
    Ok(Node {
        child,
        mqtt,
        _dir: dir,
    })
}

/// Three distinct free ports on 127.0.0.1 (held open together while they
/// are picked, so they differ).
fn free_ports() -> anyhow::Result<[SocketAddr; 3]> {
    let held = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr().map(|a| (l, a))))
        .collect::<std::io::Result<Vec<_>>>()
        .context("finding free ports")?;
    Ok([held[0].1, held[1].1, held[2].1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_takes_the_middle_of_sorted_runs() {
        let s = Summary::new(&mut [5.0, 1.0, 3.0]);
        assert_eq!((s.min, s.median, s.max), (1.0, 3.0, 5.0));
        let s = Summary::new(&mut [4.0, 1.0, 2.0, 9.0]);
        assert_eq!((s.min, s.median, s.max), (1.0, 3.0, 9.0));
    }

    #[test]
    fn free_ports_differ() {
        let [a, b, c] = free_ports().expect("ports");
        assert!(a != b && b != c && a != c);
    }
}

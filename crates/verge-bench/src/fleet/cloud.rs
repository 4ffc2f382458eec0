//! The cloud under test: `verge cloud` child processes of this executable
//! on free loopback ports, each with a temporary data dir, all on one
//! database; their CPU time and resident memory read from `/proc/PID`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Kernel clock ticks per second for /proc times (USER_HZ, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// How long a replica may take to print its banner and listen.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// One `verge cloud` process; killed when dropped.
pub struct Replica {
    /// The process.
    child: Child,
    /// Its data dir and log (removed when dropped).
    dir: tempfile::TempDir,
    /// Its HTTP address.
    pub http: SocketAddr,
    /// Whether the bench killed it on purpose.
    pub killed: bool,
    /// Peak resident memory seen, bytes.
    pub peak_rss: u64,
    /// CPU ticks (user + system) at the last sample.
    pub last_ticks: u64,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free port on 127.0.0.1 (closed again; the child binds it).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port")?
        .port())
}

impl Replica {
    /// Start replica `index` on `database` (empty: SQLite in its data dir)
    /// with `sets` (`key=value`) passed as `--set`. The first replica of a
    /// fresh database prints the admin token, returned here.
    pub fn start(
        index: usize,
        database: &str,
        sets: &[String],
    ) -> anyhow::Result<(Replica, Option<String>)> {
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let http: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let mqtt: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let log_path = dir.path().join("cloud.log");
        let log = std::fs::File::create(&log_path).context("creating the replica's log")?;
        let exe = std::env::current_exe().context("finding this executable")?;
        let mut cmd = Command::new(exe);
        cmd.arg("cloud")
            .args(["--set", &format!("http.bind={http}")])
            .args(["--set", &format!("mqtt.bind={mqtt}")])
            .args([
                "--set",
                &format!("cloud.data_dir={}", dir.path().join("data").display()),
            ])
            // The bench counts what was stored at the end: nothing may be
            // pruned by count during the run.
            .args(["--set", "cloud.max_messages=1000000000"]);
        if !database.is_empty() {
            cmd.args(["--set", &format!("cloud.database={database}")]);
        }
        for s in sets {
            cmd.args(["--set", s]);
        }
        let child = cmd
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log handle")?)
            .stderr(log)
            .spawn()
            .context("starting `verge cloud`")?;
        let mut r = Replica {
            child,
            dir,
            http,
            killed: false,
            peak_rss: 0,
            last_ticks: 0,
        };
        let token = r.wait_started(index)?;
        r.sample();
        Ok((r, token))
    }

    /// Where the replica's output goes.
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("cloud.log")
    }

    /// The end of the replica's output, for errors.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let start = text.len().saturating_sub(3000);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].to_owned()
    }

    /// Wait for the banner and the HTTP port; the admin token if printed.
    fn wait_started(&mut self, index: usize) -> anyhow::Result<Option<String>> {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().context("checking the replica")? {
                bail!(
                    "replica {index} exited ({status}) at start; it said:\n{}",
                    self.log_tail()
                );
            }
            let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            if text.contains("press Ctrl-C to stop")
                && TcpStream::connect_timeout(&self.http, Duration::from_millis(200)).is_ok()
            {
                let token = text
                    .lines()
                    .find_map(|l| l.strip_prefix("admin token: "))
                    .filter(|t| !t.starts_with("as printed"))
                    .map(|t| t.trim().to_owned());
                return Ok(token);
            }
            if t0.elapsed() > START_TIMEOUT {
                bail!(
                    "replica {index} did not start within {}s; it said:\n{}",
                    START_TIMEOUT.as_secs(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Read CPU ticks and resident memory now (no-op once killed).
    pub fn sample(&mut self) {
        if self.killed {
            return;
        }
        if let Some(t) = cpu_ticks(self.pid()) {
            self.last_ticks = t;
        }
        if let Some(r) = rss(self.pid()) {
            self.peak_rss = self.peak_rss.max(r);
        }
    }

    /// CPU seconds at the last sample.
    pub fn cpu_s(&self) -> f64 {
        self.last_ticks as f64 / TICKS_PER_S
    }

    /// `kill -9`, after a last sample.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.sample();
        self.child.kill().context("killing the replica")?;
        let _ = self.child.wait();
        self.killed = true;
        Ok(())
    }

    /// Whether it exited by itself (not killed by the bench).
    pub fn died(&mut self) -> bool {
        !self.killed && matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

/// utime + stime of a process in ticks (`/proc/PID/stat` fields 14, 15).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after its `)`.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3, so field n is f[n - 3].
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Resident memory of a process in bytes (`VmRSS` of /proc/PID/status).
fn rss(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_and_rss() {
        let me = std::process::id();
        // Burn a little CPU so the tick count is not trivially zero.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_ticks(me).is_some());
        assert!(rss(me).expect("rss") > 0);
    }
}

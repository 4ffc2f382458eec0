//! The heartbeat's [`StatusReport`]: what the node runs and how it is
//! doing (process CPU and memory from `/proc`, disk of the data dir,
//! broker counters, bridge link and backlog, rules and functions), and the
//! node's own items (`local`, from [`NodeParts::local`]).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use verge_protocol::{LocalItem, StatusReport};

use crate::StatusHandle;
use crate::parts::NodeParts;

impl StatusHandle {
    /// Whether the cloud's revision that runs manages the item `name` of
    /// `kind` (`rule`, `function`, `driver`, `component`), so that the
    /// node does not count it among its own. Cloud components are told
    /// apart by the node's supervisor itself (a clash keeps the config
    /// file's).
    pub fn manages(&self, kind: &str, name: &str) -> bool {
        match kind {
            "rule" => self.manages_rule(name),
            "function" => self.manages_function(name),
            "driver" => self.manages_driver(name),
            _ => false,
        }
    }
}

/// The node's own items, in a stable order (kind, then name), at most one
/// per kind and name.
async fn local_items(parts: &NodeParts) -> Vec<LocalItem> {
    let Some(local) = &parts.local else {
        return Vec::new();
    };
    let mut items = local.items().await;
    items.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
    items.dedup_by(|a, b| a.kind == b.kind && a.name == b.name);
    items
}

/// Clock ticks per second of `/proc/self/stat` CPU times. `sysconf(_SC_CLK_TCK)`
/// would need libc (unsafe is forbidden in the workspace); it is 100 on
/// every Linux architecture Verge targets (USER_HZ is fixed at 100 in the
/// kernel's user ABI), so it is assumed.
const CLOCK_TICKS: f64 = 100.0;

/// Builds reports; keeps the previous sample for the rates.
pub(crate) struct Reporter {
    /// When the previous sample was taken.
    at: Instant,
    /// CPU ticks (user + system) of the process then, if readable.
    cpu_ticks: Option<u64>,
    /// Broker counters then.
    messages_in: u64,
    messages_out: u64,
}

impl Reporter {
    pub(crate) fn new(parts: &NodeParts) -> Reporter {
        let stats = parts.broker.stats();
        Reporter {
            at: Instant::now(),
            cpu_ticks: cpu_ticks(),
            messages_in: stats.messages_received.load(Ordering::Relaxed),
            messages_out: stats.messages_sent.load(Ordering::Relaxed),
        }
    }

    /// A report of now; `applied_version` and `apply_errors` come from the
    /// agent.
    pub(crate) async fn build(
        &mut self,
        parts: &NodeParts,
        applied_version: i64,
        apply_errors: Vec<String>,
    ) -> StatusReport {
        let now = Instant::now();
        let secs = now.duration_since(self.at).as_secs_f64();
        let stats = parts.broker.stats();
        let messages_in = stats.messages_received.load(Ordering::Relaxed);
        let messages_out = stats.messages_sent.load(Ordering::Relaxed);
        let ticks = cpu_ticks();
        let rate = |now: u64, then: u64| {
            if secs > 0.0 {
                now.saturating_sub(then) as f64 / secs
            } else {
                0.0
            }
        };
        let cpu_percent = match (ticks, self.cpu_ticks) {
            (Some(now), Some(then)) if secs > 0.0 => {
                now.saturating_sub(then) as f64 / CLOCK_TICKS / secs * 100.0
            }
            _ => 0.0,
        };
        let (disk_total_bytes, disk_free_bytes) = disk(&parts.data_dir);
        let (backlog_messages, backlog_bytes, link_up) = match &parts.bridge {
            Some(b) => {
                let q = b.queue();
                let up = b.link().state == verge_bridge::LinkState::Connected;
                (q.depth, q.bytes, up)
            }
            None => (0, 0, false),
        };
        let rules = parts
            .rules
            .list()
            .await
            .iter()
            .filter_map(|r| serde_json::to_value(r).ok())
            .collect();
        let functions = parts
            .functions
            .list()
            .iter()
            .filter_map(|f| {
                let mut v = serde_json::to_value(f).ok()?;
                // The spec is the cloud's own; keep the heartbeat small.
                if let Some(m) = v.as_object_mut() {
                    m.remove("spec");
                }
                Some(v)
            })
            .collect();
        let report = StatusReport {
            applied_version,
            apply_errors,
            attempt: None,
            local: local_items(parts).await,
            drift: Vec::new(),
            agent_version: crate::release::build_version().to_owned(),
            uptime_s: parts.started.elapsed().as_secs(),
            cpu_percent,
            memory_bytes: memory_bytes().unwrap_or(0),
            disk_total_bytes,
            disk_free_bytes,
            connections: stats.clients_connected.load(Ordering::Relaxed),
            messages_in,
            messages_out,
            messages_in_rate: rate(messages_in, self.messages_in),
            messages_out_rate: rate(messages_out, self.messages_out),
            backlog_messages,
            backlog_bytes,
            link_up,
            rules,
            functions,
            components: parts
                .components
                .as_ref()
                .map(|c| c.report())
                .unwrap_or_default(),
            drivers: parts
                .drivers
                .iter()
                .flat_map(|d| d.list())
                .filter_map(|d| serde_json::to_value(d).ok())
                .collect(),
            devices: parts
                .devices
                .as_ref()
                .map(|d| d.sessions())
                .unwrap_or_default(),
            endpoints: parts
                .devices
                .as_ref()
                .map(|d| d.endpoints())
                .unwrap_or_default(),
        };
        self.at = now;
        self.cpu_ticks = ticks;
        self.messages_in = messages_in;
        self.messages_out = messages_out;
        report
    }
}

/// utime + stime of this process, in clock ticks.
fn cpu_ticks() -> Option<u64> {
    parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// Fields 14 and 15 of `/proc/self/stat`; counted after the command name,
/// which is in parentheses and may hold spaces.
fn parse_stat(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // `after` starts at field 3 (state): utime is field 14, 11 further on.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// VmRSS of this process, bytes.
fn memory_bytes() -> Option<u64> {
    parse_rss(&std::fs::read_to_string("/proc/self/status").ok()?)
}

fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line["VmRSS:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Total and available bytes of the file system holding `dir`; zeros when
/// it cannot be read.
fn disk(dir: &Path) -> (u64, u64) {
    match rustix::fs::statvfs(dir) {
        Ok(s) => (
            s.f_blocks.saturating_mul(s.f_frsize),
            s.f_bavail.saturating_mul(s.f_frsize),
        ),
        Err(_) => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let stat = "1234 (my (odd) prog) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0";
        assert_eq!(parse_stat(stat), Some(300));
        assert_eq!(parse_stat("garbage"), None);
        let status = "Name:\tverge\nVmPeak:\t  9000 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(parse_rss(status), Some(2048 * 1024));
        assert!(cpu_ticks().is_some());
        assert!(memory_bytes().is_some_and(|m| m > 0));
        let (total, free) = disk(Path::new("/"));
        assert!(total > 0 && free <= total);
    }
}

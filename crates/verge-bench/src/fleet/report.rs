//! The result of `verge bench fleet`, as a table or JSON.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::json;
use verge_metrics::Histogram;

use super::Check;
use super::node::Stats;
use crate::thousands;

/// One replica's share.
pub struct ReplicaReport {
    /// Nodes joined through it.
    pub nodes: usize,
    /// CPU seconds (user + system) it used in the measured time and the
    /// drain after it.
    pub cpu_s: f64,
    /// Peak resident memory seen over the whole run, bytes.
    pub peak_rss: u64,
    /// Whether the bench killed it.
    pub killed: bool,
}

/// The numbers a run reports.
pub struct Report {
    /// Nodes asked for.
    pub nodes: usize,
    /// Replicas started.
    pub replicas: usize,
    /// `sqlite` or `postgresql`.
    pub database: String,
    /// `--cloud-arg`s.
    pub cloud_args: Vec<String>,
    /// Telemetry msg/s per node.
    pub rate: f64,
    /// Heartbeat period, seconds.
    pub heartbeat_s: f64,
    /// Nodes joined.
    pub joined: usize,
    /// Joins that failed.
    pub join_errors: u64,
    /// Seconds to create and join every node.
    pub join_s: f64,
    /// MQTT sessions up after the connect phase.
    pub connected: u64,
    /// MQTT connects that failed.
    pub connect_errors: u64,
    /// Seconds to connect every node.
    pub connect_s: f64,
    /// The first join or connect error.
    pub first_error: Option<String>,
    /// Measured seconds.
    pub measured_s: f64,
    /// Seconds the CPU figures cover (the measured time and the wait for
    /// the last acknowledgements).
    pub cpu_window_s: f64,
    /// Telemetry published in the measured time.
    pub published_in_window: u64,
    /// Telemetry acknowledged in the measured time.
    pub acked_in_window: u64,
    /// Counters and latencies.
    pub stats: Arc<Stats>,
    /// The stored-exactly-once check.
    pub check: Check,
    /// The replica killed and when (seconds into the measured time).
    pub killed: Option<(usize, f64)>,
    /// Per replica.
    pub per_replica: Vec<ReplicaReport>,
}

fn ms(h: &Histogram, q: f64) -> f64 {
    h.quantile(q) as f64 / 1e6
}

impl Report {
    fn published(&self) -> u64 {
        self.stats.published.load(Ordering::Relaxed)
    }

    fn acked(&self) -> u64 {
        self.stats.acked.load(Ordering::Relaxed)
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let s = &self.stats;
        let mut out = format!(
            "verge bench fleet: {} node(s), {} replica(s) on {}{}, {} msg/s per node, heartbeat {}s, {:.0}s measured\n\n",
            thousands(self.nodes as u64),
            self.replicas,
            self.database,
            if self.cloud_args.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.cloud_args.join(" "))
            },
            self.rate,
            self.heartbeat_s,
            self.measured_s
        );
        let lat = |h: &Histogram| {
            if h.count() == 0 {
                "-".to_owned()
            } else {
                format!("{:.1} / {:.1}", ms(h, 0.5), ms(h, 0.99))
            }
        };
        let rows: Vec<(&str, String, String)> = vec![
            (
                "joined",
                thousands(self.joined as u64),
                format!(
                    "in {:.1}s: {:.0} nodes/s ({} failed)",
                    self.join_s,
                    self.joined as f64 / self.join_s.max(1e-9),
                    self.join_errors
                ),
            ),
            (
                "MQTT connected",
                thousands(self.connected),
                format!(
                    "in {:.1}s: {:.0} conn/s ({} failed)",
                    self.connect_s,
                    self.connected as f64 / self.connect_s.max(1e-9),
                    self.connect_errors
                ),
            ),
            (
                "heartbeat",
                lat(&s.heartbeat),
                format!(
                    "ms p50 / p99 ({} sent, {} failed)",
                    thousands(s.heartbeat.count()),
                    s.heartbeat_errors.load(Ordering::Relaxed)
                ),
            ),
            (
                "long-poll change",
                lat(&s.poll_change),
                format!(
                    "ms p50 / p99 ({} changes, {} poll errors)",
                    s.poll_change.count(),
                    s.poll_errors.load(Ordering::Relaxed)
                ),
            ),
            (
                "command",
                lat(&s.command),
                format!("ms p50 / p99 ({} commands)", s.command.count()),
            ),
            (
                "published",
                thousands((self.published_in_window as f64 / self.measured_s) as u64),
                "msg/s".into(),
            ),
            (
                "acknowledged",
                thousands((self.acked_in_window as f64 / self.measured_s) as u64),
                "msg/s".into(),
            ),
            (
                "stored",
                thousands(self.check.stored),
                format!(
                    "of {} published, {} acknowledged, {} refused",
                    thousands(self.published()),
                    thousands(self.acked()),
                    s.refused.load(Ordering::Relaxed)
                ),
            ),
            (
                "exactly once",
                if self.check.missing == 0 && self.check.duplicates == 0 {
                    "yes".into()
                } else {
                    "NO".into()
                },
                format!(
                    "{} acknowledged missing, {} duplicates, {} stored unacknowledged \
                     (read back over {:.1} s)",
                    self.check.missing,
                    self.check.duplicates,
                    self.check.unacked_stored,
                    self.check.settle_s
                ),
            ),
        ];
        for (k, v, unit) in rows {
            out.push_str(&format!("  {k:<17} {v:>13} {unit}\n"));
        }
        for (i, r) in self.per_replica.iter().enumerate() {
            let per_k = 1000.0 / r.nodes.max(1) as f64;
            out.push_str(&format!(
                "  replica {i}{}: {} nodes, CPU {:.1}s ({:.0}% of a core; {:.2}s per 1,000 nodes), peak RSS {} MiB ({:.1} MiB per 1,000 nodes)\n",
                if r.killed { " (killed)" } else { "" },
                thousands(r.nodes as u64),
                r.cpu_s,
                r.cpu_s * 100.0 / self.cpu_window_s,
                r.cpu_s * per_k,
                r.peak_rss >> 20,
                (r.peak_rss as f64 / 1048576.0) * per_k
            ));
        }
        let lost = s.mqtt_lost.load(Ordering::Relaxed);
        let moved = format!(
            "{} reconnected ({} attempts failed), {} unacknowledged messages sent again",
            thousands(s.reconnects.load(Ordering::Relaxed)),
            thousands(s.reconnect_errors.load(Ordering::Relaxed)),
            thousands(s.resent.load(Ordering::Relaxed)),
        );
        if let Some((i, at)) = self.killed {
            out.push_str(&format!(
                "  replica {i} killed -9 at {at:.1}s; {} node MQTT session(s) ended, {moved}\n",
                thousands(lost)
            ));
        } else if lost > 0 {
            out.push_str(&format!(
                "  {} node MQTT session(s) ended during the run, {moved}\n",
                thousands(lost)
            ));
        }
        if s.skipped.load(Ordering::Relaxed) > 0 {
            out.push_str(&format!(
                "  {} publish ticks skipped (a node had 1,000 unacknowledged)\n",
                thousands(s.skipped.load(Ordering::Relaxed))
            ));
        }
        if self.check.read_errors > 0 {
            out.push_str(&format!(
                "  {} node(s)' messages could not be read back\n",
                self.check.read_errors
            ));
        }
        if let Some(e) = &self.first_error {
            out.push_str(&format!("  first error: {e}\n"));
        }
        out
    }

    /// The machine-readable form.
    pub fn json(&self) -> serde_json::Value {
        let s = &self.stats;
        let lat = |h: &Histogram| json!({"p50_ms": ms(h, 0.5), "p99_ms": ms(h, 0.99), "max_ms": h.max() as f64 / 1e6, "count": h.count()});
        let mut v = json!({
            "nodes": self.nodes,
            "replicas": self.replicas,
            "database": self.database,
            "cloud_args": self.cloud_args,
            "rate_per_node": self.rate,
            "heartbeat_s": self.heartbeat_s,
            "measured_s": self.measured_s,
            "cpu_window_s": self.cpu_window_s,
            "joined": self.joined,
            "join_errors": self.join_errors,
            "join_s": self.join_s,
            "join_per_s": self.joined as f64 / self.join_s.max(1e-9),
            "connected": self.connected,
            "connect_errors": self.connect_errors,
            "connect_s": self.connect_s,
            "first_error": self.first_error,
            "heartbeat": lat(&s.heartbeat),
            "heartbeat_errors": s.heartbeat_errors.load(Ordering::Relaxed),
            "long_poll_change": lat(&s.poll_change),
            "poll_errors": s.poll_errors.load(Ordering::Relaxed),
            "command": lat(&s.command),
            "published_per_s": self.published_in_window as f64 / self.measured_s,
            "acknowledged_per_s": self.acked_in_window as f64 / self.measured_s,
            "published": self.published(),
            "acknowledged": self.acked(),
            "refused": s.refused.load(Ordering::Relaxed),
            "skipped": s.skipped.load(Ordering::Relaxed),
            "stored": self.check.stored,
            "missing": self.check.missing,
            "duplicates": self.check.duplicates,
            "unacked_stored": self.check.unacked_stored,
            "read_errors": self.check.read_errors,
            "settle_s": self.check.settle_s,
            "mqtt_sessions_ended": s.mqtt_lost.load(Ordering::Relaxed),
            "killed": self.killed.map(|(i, at)| json!({"replica": i, "at_s": at})),
            "per_replica": self.per_replica.iter().map(|r| json!({
                "nodes": r.nodes,
                "cpu_s": r.cpu_s,
                "peak_rss_bytes": r.peak_rss,
                "killed": r.killed,
            })).collect::<Vec<_>>(),
        });
        v["mqtt_reconnects"] = json!(s.reconnects.load(Ordering::Relaxed));
        v["mqtt_reconnect_errors"] = json!(s.reconnect_errors.load(Ordering::Relaxed));
        v["resent"] = json!(s.resent.load(Ordering::Relaxed));
        v
    }
}

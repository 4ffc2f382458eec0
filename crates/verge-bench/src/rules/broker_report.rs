//! The report of `verge bench rules --mode broker`: input, rule and output
//! rates, the rule's latency and drops, CPU per message; a table or JSON.

use std::time::Duration;

use verge_rules::RuleInfo;

use super::super::pubsub::{PubResult, SubResult};
use super::super::thousands;
use super::Scenario;
use super::through_broker::{OUT_FILTER, OUT_TOPIC, Snap};

/// What a run measured.
pub struct Report {
    pub(super) scenario: Scenario,
    pub(super) addr: std::net::SocketAddr,
    pub(super) devices: u32,
    pub(super) publishers: u32,
    pub(super) publish_rate: u64,
    pub(super) duration: f64,
    pub(super) warmup: f64,
    pub(super) pubs: Vec<PubResult>,
    pub(super) sub: SubResult,
    /// At the start and the end of the measured window.
    pub(super) window: (Snap, Snap),
    /// After the rule drained.
    pub(super) last: RuleInfo,
    /// Republished rows the subscriber should have seen.
    pub(super) expected: u64,
    pub(super) broker_drops: Vec<(&'static str, u64)>,
}

impl Report {
    /// Seconds between the two samples of the measured window.
    fn window_secs(&self) -> f64 {
        (self.window.1.at - self.window.0.at)
            .as_secs_f64()
            .max(1e-9)
    }

    /// Messages the rule took in the measured window.
    fn rule_in(&self) -> u64 {
        let (a, b) = (&self.window.0.rule.metrics, &self.window.1.rule.metrics);
        b.messages_in.saturating_sub(a.messages_in)
    }

    fn published_per_s(&self) -> f64 {
        self.pubs.iter().map(|p| p.sent_in_window).sum::<u64>() as f64 / self.duration
    }

    fn rule_per_s(&self) -> f64 {
        self.rule_in() as f64 / self.window_secs()
    }

    fn rows_per_s(&self) -> f64 {
        let (a, b) = (&self.window.0.rule.metrics, &self.window.1.rule.metrics);
        b.rows_out.saturating_sub(a.rows_out) as f64 / self.window_secs()
    }

    fn output_per_s(&self) -> f64 {
        self.sub.received_in_window as f64 / self.duration
    }

    /// Messages dropped from the rule's input queue, and their share of the
    /// messages that matched it, over the whole run.
    fn dropped_queue(&self) -> (u64, f64) {
        let m = &self.last.metrics;
        let matched = m.messages_in + m.dropped_queue;
        (
            m.dropped_queue,
            m.dropped_queue as f64 * 100.0 / matched.max(1) as f64,
        )
    }

    /// CPU in the measured window: (process, broker threads) as µs per
    /// message the rule took in and as cores busy.
    fn cpu(&self) -> Option<[(f64, f64); 2]> {
        let ((p0, b0), (p1, b1)) = (self.window.0.cpu?, self.window.1.cpu?);
        let per = |d: Duration| {
            (
                d.as_secs_f64() * 1e6 / self.rule_in().max(1) as f64,
                d.as_secs_f64() / self.window_secs(),
            )
        };
        Some([per(p1.saturating_sub(p0)), per(b1.saturating_sub(b0))])
    }

    fn republish(&self) -> (u64, u64, u64) {
        self.last
            .action_metrics
            .first()
            .map_or((0, 0, 0), |a| (a.delivered, a.dropped, a.failed))
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let rate = match self.publish_rate {
            0 => "as fast as possible".to_owned(),
            r => format!("{} msg/s in all", thousands(r)),
        };
        let mut out = format!(
            "verge bench rules (broker: in-process verge on {}, rule `{}`)\n  {} devices, {} MQTT 5 publisher(s) at QoS 0, {rate}; republish to {OUT_TOPIC}, 1 subscriber on {OUT_FILTER}\n  {}s measured after {}s warm-up\n\n",
            self.addr,
            self.scenario.name,
            thousands(u64::from(self.devices)),
            self.publishers,
            self.duration,
            self.warmup,
        );
        let m = &self.last.metrics;
        let us = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("<= {}", thousands(v)));
        let (dq, dq_pct) = self.dropped_queue();
        let (delivered, action_dropped, _) = self.republish();
        let lost = self.expected.saturating_sub(self.sub.received);
        let mut rows = vec![
            (
                "published",
                thousands(self.published_per_s() as u64),
                "msg/s into the broker".to_owned(),
            ),
            (
                "rule in",
                thousands(self.rule_per_s() as u64),
                "msg/s (RuleMetrics messages_in)".to_owned(),
            ),
            (
                "rule rows",
                thousands(self.rows_per_s() as u64),
                "rows/s".to_owned(),
            ),
            (
                "output",
                thousands(self.output_per_s() as u64),
                "msg/s received on bench/out/#".to_owned(),
            ),
            (
                "latency p50",
                us(m.latency_p50_us),
                "us receipt to processed (whole run)".to_owned(),
            ),
            (
                "latency p99",
                us(m.latency_p99_us),
                "us receipt to processed (whole run)".to_owned(),
            ),
            (
                "dropped_queue",
                thousands(dq),
                format!("({dq_pct:.2}% of the matched messages; the rule's input queue was full)"),
            ),
            (
                "republished",
                thousands(delivered),
                format!(
                    "rows ({} dropped by the action queue)",
                    thousands(action_dropped)
                ),
            ),
            (
                "output lost",
                thousands(lost),
                format!("of {} republished", thousands(self.expected)),
            ),
        ];
        if let Some([(p_us, p_cores), (b_us, b_cores)]) = self.cpu() {
            rows.push((
                "cpu process",
                format!("{p_us:.2}"),
                format!(
                    "us per rule message ({p_cores:.2} cores busy; includes the load generator)"
                ),
            ));
            rows.push((
                "cpu broker",
                format!("{b_us:.2}"),
                format!("us per rule message ({b_cores:.2} cores busy; broker + rule threads)"),
            ));
        }
        for (k, v, unit) in rows {
            out.push_str(&format!("  {k:<14} {v:>12} {unit}\n"));
        }
        if m.errors > 0 {
            out.push_str(&format!(
                "  rule errors: {} (last: {})\n",
                thousands(m.errors),
                m.last_error.as_deref().unwrap_or("-")
            ));
        }
        for (k, v) in &self.broker_drops {
            out.push_str(&format!("  broker {k}: {}\n", thousands(*v)));
        }
        out.push_str("  (latency: upper bounds of power-of-two buckets of the rule's histogram)\n");
        out
    }

    /// The machine-readable form.
    pub fn json(&self) -> serde_json::Value {
        let m = &self.last.metrics;
        let (dq, dq_pct) = self.dropped_queue();
        let (delivered, action_dropped, failed) = self.republish();
        let cpu = self.cpu().map(|[(p_us, p_cores), (b_us, b_cores)]| {
            serde_json::json!({
                "process_us_per_msg": p_us,
                "process_cores": p_cores,
                "broker_threads_us_per_msg": b_us,
                "broker_threads_cores": b_cores,
            })
        });
        serde_json::json!({
            "mode": "broker",
            "target": format!("in-process verge on {}", self.addr),
            "query": self.scenario.name,
            "sql": self.scenario.sql,
            "devices": self.devices,
            "publishers": self.publishers,
            "publish_rate": self.publish_rate,
            "duration_s": self.duration,
            "warmup_s": self.warmup,
            "published_per_s": self.published_per_s(),
            "rule_in_per_s": self.rule_per_s(),
            "rule_rows_per_s": self.rows_per_s(),
            "output_per_s": self.output_per_s(),
            "rule_latency_us": { "p50": m.latency_p50_us, "p99": m.latency_p99_us },
            "published": self.pubs.iter().map(|p| p.sent).sum::<u64>(),
            "rule": {
                "messages_in": m.messages_in,
                "filtered": m.filtered,
                "rows_out": m.rows_out,
                "errors": m.errors,
                "dropped_queue": dq,
                "dropped_queue_pct": dq_pct,
            },
            "republish": { "delivered": delivered, "dropped": action_dropped, "failed": failed },
            "received": self.sub.received,
            "output_lost": self.expected.saturating_sub(self.sub.received),
            "cpu": cpu,
            "broker_drops": self.broker_drops.iter().copied().collect::<std::collections::BTreeMap<_, _>>(),
        })
    }
}

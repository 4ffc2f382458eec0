//! The result of `verge bench broker`: rates, latency quantiles and losses,
//! as a table or JSON.

use verge_metrics::Histogram;

use super::broker::{BrokerBenchArgs, Outcome};
use super::thousands;

/// The broker's non-zero `dropped_*` counters.
pub fn drops(stats: &[(&'static str, u64)]) -> Vec<(&'static str, u64)> {
    stats
        .iter()
        .filter(|(k, v)| k.starts_with("dropped_") && *v > 0)
        .copied()
        .collect()
}

/// The numbers a run reports.
pub struct Report {
    /// Where the broker was.
    target: String,
    /// MQTT version label.
    protocol: &'static str,
    /// QoS of the run.
    qos: u8,
    /// Payload bytes.
    payload: u32,
    /// Publishing clients.
    publishers: usize,
    /// Subscribing clients.
    subscribers: usize,
    /// Measured seconds.
    duration: f64,
    /// Warm-up seconds.
    warmup: f64,
    /// Target rate per publisher (0 = unlimited).
    rate: u64,
    /// Publishes sent inside the window, per second.
    published_per_s: f64,
    /// Deliveries received inside the window, per second.
    delivered_per_s: f64,
    /// End-to-end latency (ns) of messages sent inside the window.
    latency: Histogram,
    /// Publishes sent in the whole run.
    published: u64,
    /// QoS 1 publishes acknowledged with an error.
    refused: u64,
    /// Deliveries expected (acknowledged or, at QoS 0, sent publishes × subscribers).
    expected: u64,
    /// Deliveries received in the whole run.
    delivered: u64,
    /// Expected deliveries that never arrived.
    lost: u64,
    /// The spawned broker's counters after the run.
    broker_stats: Option<Vec<(&'static str, u64)>>,
}

impl Report {
    /// Summarize a run.
    pub fn new(
        args: &BrokerBenchArgs,
        o: &Outcome,
        target: String,
        broker_stats: Option<Vec<(&'static str, u64)>>,
    ) -> Report {
        let mut latency = Histogram::default();
        for s in &o.subs {
            latency.merge(&s.latency);
        }
        Report {
            target,
            protocol: args.protocol.label(),
            qos: args.qos,
            payload: args.payload,
            publishers: args.publishers,
            subscribers: args.subscribers,
            duration: args.duration,
            warmup: args.warmup,
            rate: args.rate,
            published_per_s: o.pubs.iter().map(|p| p.sent_in_window).sum::<u64>() as f64
                / args.duration,
            delivered_per_s: o.subs.iter().map(|s| s.received_in_window).sum::<u64>() as f64
                / args.duration,
            latency,
            published: o.pubs.iter().map(|p| p.sent).sum(),
            refused: o.pubs.iter().map(|p| p.refused).sum(),
            expected: o.per_sub_expected * o.subs.len() as u64,
            delivered: o.subs.iter().map(|s| s.received).sum(),
            lost: o
                .subs
                .iter()
                .map(|s| o.per_sub_expected.saturating_sub(s.received))
                .sum(),
            broker_stats,
        }
    }

    /// Latency quantile in milliseconds.
    fn ms(&self, q: f64) -> f64 {
        self.latency.quantile(q) as f64 / 1e6
    }

    /// Broker counters that explain losses (spawned broker only).
    fn broker_drops(&self) -> Vec<(&'static str, u64)> {
        self.broker_stats.as_deref().map(drops).unwrap_or_default()
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let rate = if self.rate > 0 {
            format!(", {} msg/s per publisher", thousands(self.rate))
        } else {
            String::new()
        };
        let mut out = format!(
            "verge bench broker: {}\n  MQTT {}, QoS {}, payload {} B, {} publisher(s) -> {} subscriber(s){rate}, {}s measured after {}s warm-up\n\n",
            self.target,
            self.protocol,
            self.qos,
            self.payload,
            self.publishers,
            self.subscribers,
            self.duration,
            self.warmup
        );
        let lost_pct = if self.expected > 0 {
            self.lost as f64 * 100.0 / self.expected as f64
        } else {
            0.0
        };
        let rows = [
            (
                "published",
                thousands(self.published_per_s as u64),
                "msg/s".to_owned(),
            ),
            (
                "delivered",
                thousands(self.delivered_per_s as u64),
                "msg/s".to_owned(),
            ),
            (
                "latency p50",
                format!("{:.3}", self.ms(0.5)),
                "ms".to_owned(),
            ),
            (
                "latency p99",
                format!("{:.3}", self.ms(0.99)),
                "ms".to_owned(),
            ),
            (
                "latency max",
                format!("{:.3}", self.latency.max() as f64 / 1e6),
                "ms".to_owned(),
            ),
            (
                "lost",
                thousands(self.lost),
                format!("of {} expected ({lost_pct:.3}%)", thousands(self.expected)),
            ),
        ];
        for (k, v, unit) in rows {
            out.push_str(&format!("  {k:<12} {v:>12} {unit}\n"));
        }
        if self.refused > 0 {
            out.push_str(&format!(
                "  {:<12} {:>12} (PUBACK with an error code)\n",
                "refused",
                thousands(self.refused)
            ));
        }
        for (k, v) in self.broker_drops() {
            out.push_str(&format!("  broker {k}: {}\n", thousands(v)));
        }
        if self.qos == 0 && self.lost > 0 {
            out.push_str(
                "  (QoS 0 messages may be dropped by design when a subscriber falls behind)\n",
            );
        }
        out
    }

    /// The machine-readable form.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "target": self.target,
            "protocol": self.protocol,
            "qos": self.qos,
            "payload_bytes": self.payload,
            "publishers": self.publishers,
            "subscribers": self.subscribers,
            "duration_s": self.duration,
            "warmup_s": self.warmup,
            "rate_per_publisher": self.rate,
            "published_per_s": self.published_per_s,
            "delivered_per_s": self.delivered_per_s,
            "latency_ms": {
                "p50": self.ms(0.5),
                "p99": self.ms(0.99),
                "max": self.latency.max() as f64 / 1e6,
                "samples": self.latency.count(),
            },
            "published": self.published,
            "refused": self.refused,
            "expected_deliveries": self.expected,
            "delivered": self.delivered,
            "lost": self.lost,
            "broker_drops": self.broker_drops().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        })
    }
}

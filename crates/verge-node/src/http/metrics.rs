//! Prometheus text exposition of the broker's counters.

use std::fmt::Write;

use verge_broker::Stats;

/// Gauges among the broker's values; the rest are counters.
const GAUGES: [&str; 5] = [
    "uptime_seconds",
    "clients_connected",
    "subscriptions",
    "retained",
    "sessions",
];

/// Append the broker's values as `verge_broker_*` metrics.
pub fn render_broker(stats: &Stats, out: &mut String) {
    for (name, value) in stats.snapshot() {
        let (metric, kind) = if GAUGES.contains(&name) {
            (format!("verge_broker_{name}"), "gauge")
        } else if name.ends_with("_total") {
            (format!("verge_broker_{name}"), "counter")
        } else {
            (format!("verge_broker_{name}_total"), "counter")
        };
        let help = name.replace('_', " ");
        let _ = writeln!(out, "# HELP {metric} broker {help}");
        let _ = writeln!(out, "# TYPE {metric} {kind}");
        let _ = writeln!(out, "{metric} {value}");
    }
}

/// The CoAP gateway's counters as `verge_coap_<name>` (observers and
/// dtls_sessions are gauges, the rest are counters).
pub fn render_coap(stats: &verge_coap::StatsSnapshot, out: &mut String) {
    use std::fmt::Write;
    let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(stats) else {
        return;
    };
    for (name, v) in fields {
        let (metric, kind) = if name == "observers" || name == "dtls_sessions" {
            (name.clone(), "gauge")
        } else {
            (format!("{name}_total"), "counter")
        };
        let _ = writeln!(out, "# TYPE verge_coap_{metric} {kind}");
        let _ = writeln!(out, "verge_coap_{metric} {v}");
    }
}

//! Engine mode: the SQL executor alone on this thread, fed the workload with
//! a synthetic processing-time clock, so the result is messages per second
//! per core with nothing else in the way.
//!
//! Pushes are timed in batches of [`BATCH`]: reading the clock around every
//! push would cost about as much as a filter+project push itself. A batch's
//! time divided by its size is recorded as the per-message latency of that
//! batch, so the quantiles are of 64-message averages; a window closing
//! inside a batch shows up in its time.

use std::time::{Duration, Instant};

use anyhow::Context;
use verge_metrics::Histogram;
use verge_sql::{Event, ExecStats, Limits, Query, Row};

use super::super::thousands;
use super::{RulesBenchArgs, Scenario, Workload};

/// Pushes per clock reading.
const BATCH: u64 = 64;
/// Most unmeasured warm-up pushes.
const MAX_WARMUP: u64 = 100_000;
/// Processing time of the first message (ms since the Unix epoch, a fixed
/// 10 s boundary so runs are repeatable).
const CLOCK_START_MS: i64 = 1_700_000_000_000;

/// What one query measured.
pub struct Outcome {
    /// The query.
    scenario: Scenario,
    /// Messages pushed while measuring.
    messages: u64,
    /// Time they took.
    elapsed: Duration,
    /// Rows emitted while measuring.
    rows: u64,
    /// Per-message push time (ns), per batch.
    latency: Histogram,
    /// The executor's counters at the end (warm-up included).
    stats: ExecStats,
}

impl Outcome {
    fn per_s(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn meets(&self) -> Option<bool> {
        self.scenario.target.map(|t| self.per_s() >= t as f64)
    }

    fn dropped(&self) -> u64 {
        let s = &self.stats;
        s.dropped_groups + s.dropped_late + s.dropped_rows + s.dropped_future
    }
}

/// Push the workload through one query.
pub fn run(args: &RulesBenchArgs, sc: &Scenario, w: &Workload) -> anyhow::Result<Outcome> {
    let query = Query::parse(&sc.sql).with_context(|| format!("query `{}`", sc.name))?;
    let mut ex = query.start(Limits::default());
    let mut out: Vec<Row> = Vec::with_capacity(1024);
    let msgs = &w.messages;
    let clock_rate = args.clock_rate;
    // Processing time of message `i`: `clock_rate` messages per second.
    let now_ms = |i: u64| {
        let ms = u128::from(i) * 1000 / u128::from(clock_rate);
        CLOCK_START_MS.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX))
    };
    let push = |ex: &mut verge_sql::Executor, i: u64, out: &mut Vec<Row>| {
        let (topic, payload) = &msgs[(i % msgs.len() as u64) as usize];
        let ev = Event {
            topic,
            payload,
            client_id: "bench",
            qos: 0,
            timestamp_ms: now_ms(i),
            user_properties: &[],
        };
        // Evaluation errors are counted in the executor's stats.
        let _ = ex.push(&ev, out);
    };
    // The runtime closes windows on a timer when no message does; here
    // messages never stop, but check the deadline as it would.
    let tick = |ex: &mut verge_sql::Executor, now: i64, out: &mut Vec<Row>| {
        if ex.next_deadline().is_some_and(|d| d <= now) {
            ex.advance(now, out);
        }
    };

    let warmup = (args.messages / 10).min(MAX_WARMUP);
    eprintln!(
        "engine: {}: {} warm-up + {} messages",
        sc.name,
        thousands(warmup),
        thousands(args.messages)
    );
    for i in 0..warmup {
        push(&mut ex, i, &mut out);
        tick(&mut ex, now_ms(i), &mut out);
        out.clear();
    }

    let end = warmup + args.messages;
    let mut latency = Histogram::default();
    let mut rows = 0u64;
    let start = Instant::now();
    let mut next_progress = start + Duration::from_secs(1);
    let mut i = warmup;
    while i < end {
        let n = BATCH.min(end - i);
        let t = Instant::now();
        for j in i..i + n {
            push(&mut ex, j, &mut out);
            rows += out.len() as u64;
            out.clear();
        }
        tick(&mut ex, now_ms(i + n - 1), &mut out);
        rows += out.len() as u64;
        out.clear();
        let after = Instant::now();
        latency.record_mut((after - t).as_nanos() as u64 / n);
        i += n;
        if after >= next_progress {
            eprintln!(
                "  {} / {} messages",
                thousands(i - warmup),
                thousands(args.messages)
            );
            next_progress = after + Duration::from_secs(1);
        }
    }
    let elapsed = start.elapsed();
    Ok(Outcome {
        scenario: sc.clone(),
        messages: args.messages,
        elapsed,
        rows,
        latency,
        stats: ex.stats(),
    })
}

/// The engine-mode report: one line per query.
pub struct Report {
    /// Devices in the workload.
    devices: u32,
    /// Mean payload bytes.
    payload: f64,
    /// Synthetic clock rate.
    clock_rate: u64,
    /// Per query.
    results: Vec<Outcome>,
}

impl Report {
    /// Summarize a run.
    pub fn new(args: &RulesBenchArgs, w: &Workload, results: Vec<Outcome>) -> Report {
        Report {
            devices: args.devices,
            payload: w.mean_payload(),
            clock_rate: args.clock_rate,
            results,
        }
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "verge bench rules (engine: SQL executor, 1 thread, no I/O)\n  {} devices, JSON payloads of {:.0} B on average, synthetic clock {} msg/s\n  latency = time of a batch of {BATCH} pushes / {BATCH}\n\n",
            thousands(u64::from(self.devices)),
            self.payload,
            thousands(self.clock_rate),
        );
        out.push_str(&format!(
            "  {:<22} {:>12} {:>13} {:>11} {:>11} {:>11}  {}\n",
            "query", "messages", "msg/s/core", "rows out", "p50 ns", "p99 ns", "target"
        ));
        for r in &self.results {
            let target = match (r.scenario.target, r.meets()) {
                (Some(t), Some(true)) => format!(">= {}: met", thousands(t)),
                (Some(t), _) => format!(">= {}: NOT met", thousands(t)),
                _ => "-".to_owned(),
            };
            out.push_str(&format!(
                "  {:<22} {:>12} {:>13} {:>11} {:>11} {:>11}  {target}\n",
                r.scenario.name,
                thousands(r.messages),
                thousands(r.per_s() as u64),
                thousands(r.rows),
                thousands(r.latency.quantile(0.5)),
                thousands(r.latency.quantile(0.99)),
            ));
        }
        for r in &self.results {
            if r.stats.eval_errors > 0 || r.dropped() > 0 {
                out.push_str(&format!(
                    "  {}: {} evaluation errors (last: {}), {} dropped by window bounds\n",
                    r.scenario.name,
                    thousands(r.stats.eval_errors),
                    r.stats.last_error.as_deref().unwrap_or("-"),
                    thousands(r.dropped()),
                ));
            }
        }
        out
    }

    /// The machine-readable form.
    pub fn json(&self) -> serde_json::Value {
        let queries: Vec<_> = self
            .results
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.scenario.name,
                    "sql": r.scenario.sql,
                    "messages": r.messages,
                    "seconds": r.elapsed.as_secs_f64(),
                    "msgs_per_s": r.per_s(),
                    "rows_out": r.rows,
                    "push_latency_ns": {
                        "p50": r.latency.quantile(0.5),
                        "p99": r.latency.quantile(0.99),
                        "max": r.latency.max(),
                        "batches": r.latency.count(),
                    },
                    "eval_errors": r.stats.eval_errors,
                    "dropped": r.dropped(),
                    "open_groups": r.stats.open_groups,
                    "target_msgs_per_s": r.scenario.target,
                    "meets_target": r.meets(),
                })
            })
            .collect();
        serde_json::json!({
            "mode": "engine",
            "threads": 1,
            "devices": self.devices,
            "payload_bytes_mean": self.payload,
            "clock_rate_msgs_per_s": self.clock_rate,
            "latency_batch": BATCH,
            "queries": queries,
        })
    }
}

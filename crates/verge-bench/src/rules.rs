//! `verge bench rules`: throughput and latency of the rule engine, either
//! in-process on one thread (the SQL executor alone, [`engine`]) or as a
//! rule of a running Verge broker fed by MQTT clients over TCP
//! ([`through_broker`]).
//!
//! Both modes use the same workload: `--devices` devices publishing small
//! JSON readings to `devices/dev-NNNN/telemetry`.

mod broker_report;
mod engine;
mod through_broker;

use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};

/// Options of `verge bench rules`.
#[derive(Debug, Args)]
pub struct RulesBenchArgs {
    /// Where the rule runs.
    #[arg(long, value_enum, default_value = "engine")]
    pub mode: Mode,
    /// A built-in query; by default engine mode runs both, broker mode
    /// filter-project.
    #[arg(long, value_enum)]
    pub query: Option<QueryArg>,
    /// Bench this SQL instead of a built-in query (in broker mode its rows
    /// need a `device` column: the output topic is `bench/out/{device}`).
    #[arg(long, conflicts_with = "query")]
    pub sql: Option<String>,
    /// Devices sending readings of about 60 bytes of JSON.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub devices: u32,
    /// Engine mode: messages pushed per query (after an unmeasured warm-up
    /// of a tenth of that, at most 100,000).
    #[arg(long, default_value_t = 2_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: u64,
    /// Engine mode: messages per second of synthetic processing time, which
    /// is what closes windows (the default closes a 10 s window every
    /// 200,000 messages).
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub clock_rate: u64,
    /// Broker mode: publishing MQTT clients (QoS 0, MQTT 5).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub publishers: u32,
    /// Broker mode: messages per second over all publishers; 0 = as fast as
    /// the broker takes them. Lower it to find the rate without drops.
    #[arg(long, default_value_t = 0)]
    pub publish_rate: u64,
    /// Broker mode: measured seconds.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub duration: f64,
    /// Broker mode: seconds of load before measuring.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    pub warmup: f64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Where the rule runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// The SQL executor on one thread, no broker, no I/O.
    Engine,
    /// A rule of an in-process Verge broker, fed over TCP.
    Broker,
}

/// The built-in queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueryArg {
    /// Filter and project every message.
    FilterProject,
    /// A 10 s tumbling window grouped by device.
    Tumbling,
}

/// Filter+project (target: 1M msg/s per core).
const FILTER_PROJECT: &str = r#"SELECT device, temperature * 1.8 + 32 AS f FROM "devices/+/telemetry" WHERE temperature > 20"#;
/// A 10 s tumbling GROUP BY over every device (target: 300k msg/s).
const TUMBLING: &str = r#"SELECT device, avg(temperature) AS avg_t, max(temperature) AS max_t, count(*) AS n FROM "devices/+/telemetry" GROUP BY device, TUMBLING(10s)"#;

/// One query to bench.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Short name for reports.
    pub name: &'static str,
    /// The SQL.
    pub sql: String,
    /// Messages per second per core the project aims at, if any.
    pub target: Option<u64>,
}

impl QueryArg {
    fn scenario(self) -> Scenario {
        match self {
            QueryArg::FilterProject => Scenario {
                name: "filter+project",
                sql: FILTER_PROJECT.to_owned(),
                target: Some(1_000_000),
            },
            QueryArg::Tumbling => Scenario {
                name: "tumbling 10s group by",
                sql: TUMBLING.to_owned(),
                target: Some(300_000),
            },
        }
    }
}

impl RulesBenchArgs {
    /// The queries this run benches, in order.
    fn scenarios(&self) -> Vec<Scenario> {
        if let Some(sql) = &self.sql {
            return vec![Scenario {
                name: "custom",
                sql: sql.clone(),
                target: None,
            }];
        }
        match (self.query, self.mode) {
            (Some(q), _) => vec![q.scenario()],
            (None, Mode::Engine) => vec![
                QueryArg::FilterProject.scenario(),
                QueryArg::Tumbling.scenario(),
            ],
            (None, Mode::Broker) => vec![QueryArg::FilterProject.scenario()],
        }
    }
}

/// Readings variants per device, so payloads are not all alike.
const VARIANTS: u32 = 4;

/// The devices' messages: reading `v` of device `d` is at `v * devices + d`,
/// so cycling through the list visits every device in turn.
#[derive(Debug)]
pub struct Workload {
    /// Topic and JSON payload of each message.
    pub messages: Vec<(String, Bytes)>,
}

impl Workload {
    /// About 60 bytes per payload, e.g.
    /// `{"device":"dev-0042","temperature":23.57,"humidity":41.5}`, with
    /// temperatures spread over 10–35 (about 60% pass `> 20`).
    pub fn new(devices: u32) -> Workload {
        let width = devices.saturating_sub(1).to_string().len().max(4);
        let mut messages = Vec::with_capacity((devices * VARIANTS) as usize);
        for v in 0..VARIANTS {
            for d in 0..devices {
                let h = mix(u64::from(d) << 8 | u64::from(v));
                let temperature = (1000 + h % 2500) as f64 / 100.0;
                let humidity = (60 + (h >> 16) % 100) as f64 / 2.0;
                let device = format!("dev-{d:0width$}");
                let payload = format!(
                    r#"{{"device":"{device}","temperature":{temperature},"humidity":{humidity}}}"#
                );
                messages.push((format!("devices/{device}/telemetry"), Bytes::from(payload)));
            }
        }
        Workload { messages }
    }

    /// Mean payload size in bytes.
    pub fn mean_payload(&self) -> f64 {
        let total: usize = self.messages.iter().map(|(_, p)| p.len()).sum();
        total as f64 / self.messages.len().max(1) as f64
    }

    /// The messages of publisher `i` of `n`: the devices `d` with
    /// `d % n == i`, in the same order.
    pub fn share(&self, i: usize, n: usize, devices: usize) -> Arc<[(String, Bytes)]> {
        self.messages
            .iter()
            .enumerate()
            .filter(|(k, _)| (k % devices) % n == i)
            .map(|(_, m)| m.clone())
            .collect()
    }
}

/// A fixed bit mixer (splitmix64's finalizer), for repeatable readings.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Run the benchmark and print the report.
pub fn run(args: &RulesBenchArgs) -> anyhow::Result<()> {
    if args.mode == Mode::Broker {
        if !(args.duration.is_finite() && args.duration > 0.0) {
            bail!("--duration must be a positive number of seconds");
        }
        if !(args.warmup.is_finite() && args.warmup >= 0.0) {
            bail!("--warmup must be zero or a positive number of seconds");
        }
        if args.publish_rate > 0 && args.publish_rate < u64::from(args.publishers) {
            bail!(
                "--publish-rate must be 0 (unlimited) or at least one message per second per publisher"
            );
        }
    }
    let workload = Workload::new(args.devices);
    let (table, json) = match args.mode {
        Mode::Engine => {
            let mut results = Vec::new();
            for sc in args.scenarios() {
                results.push(engine::run(args, &sc, &workload)?);
            }
            let r = engine::Report::new(args, &workload, results);
            (r.table(), r.json())
        }
        Mode::Broker => {
            let sc = args
                .scenarios()
                .into_iter()
                .next()
                .context("no query to bench")?;
            let r = through_broker::run(args, sc, &workload)?;
            (r.table(), r.json())
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json).context("formatting JSON")?
        );
    } else {
        print!("{table}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_is_about_sixty_bytes_of_json_per_device() {
        let w = Workload::new(1000);
        assert_eq!(w.messages.len(), 4000);
        let mean = w.mean_payload();
        assert!((50.0..70.0).contains(&mean), "{mean}");
        let (topic, payload) = &w.messages[42];
        assert_eq!(topic, "devices/dev-0042/telemetry");
        let v: serde_json::Value = serde_json::from_slice(payload).expect("JSON");
        assert_eq!(v["device"], "dev-0042");
        assert!(v["temperature"].is_f64() || v["temperature"].is_u64());
        let warm = w
            .messages
            .iter()
            .filter(|(_, p)| {
                let v: serde_json::Value = serde_json::from_slice(p).expect("JSON");
                v["temperature"].as_f64().expect("number") > 20.0
            })
            .count();
        assert!((2000..3000).contains(&warm), "{warm} of 4000 pass");
    }

    #[test]
    fn shares_split_devices_between_publishers() {
        let w = Workload::new(10);
        let shares: Vec<_> = (0..3).map(|i| w.share(i, 3, 10)).collect();
        assert_eq!(shares.iter().map(|s| s.len()).sum::<usize>(), 40);
        assert!(shares[1].iter().all(|(t, _)| {
            ["dev-0001", "dev-0004", "dev-0007"]
                .iter()
                .any(|d| t.contains(d))
        }));
    }

    #[test]
    fn builtin_queries_compile() {
        for q in [QueryArg::FilterProject, QueryArg::Tumbling] {
            verge_sql::Query::parse(&q.scenario().sql).expect("compiles");
        }
    }
}

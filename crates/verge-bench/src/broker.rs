//! `verge bench broker`: N publishers each publish to `{prefix}/{i}`, M
//! subscribers each subscribe `{prefix}/#` (so deliveries = published × M);
//! reports publish and delivery rates, end-to-end latency and losses.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use tokio::task::JoinSet;
use verge_mqtt::QoS;

use super::client::{Client, connect_many};
use super::pubsub::{Messages, Plan, PubResult, SubResult, publisher, subscriber};
use super::report::Report;
use super::{InProcessBroker, ProtocolArg, Target, ensure_nofile};

/// Options of `verge bench broker`.
#[derive(Debug, Args)]
pub struct BrokerBenchArgs {
    /// The broker under test.
    #[command(flatten)]
    pub target: Target,
    /// Publishing clients; publisher i publishes to `{topic-prefix}/{i}`.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Subscribing clients, each subscribed to `{topic-prefix}/#`.
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
    /// QoS of publishes and subscriptions.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// Payload size in bytes (the first 8 carry the send timestamp).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(8..=16 * 1024 * 1024))]
    pub payload: u32,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    pub duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    pub warmup: f64,
    /// First topic level.
    #[arg(long, default_value = "bench")]
    pub topic_prefix: String,
    /// MQTT version of the clients.
    #[arg(long, value_enum, default_value = "5")]
    pub protocol: ProtocolArg,
    /// QoS 1: most unacknowledged publishes per publisher.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=65_000))]
    pub window: u32,
    /// Messages per second per publisher; 0 = as fast as the broker takes
    /// them (use a fixed rate to compare latency at equal load).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What a run measured.
pub struct Outcome {
    /// Per publisher.
    pub pubs: Vec<PubResult>,
    /// Per subscriber.
    pub subs: Vec<SubResult>,
    /// Messages each subscriber should have received.
    pub per_sub_expected: u64,
}

/// Run the benchmark and print the report.
pub fn run(args: &BrokerBenchArgs) -> anyhow::Result<()> {
    if args.publishers == 0 {
        bail!("--publishers must be at least 1");
    }
    if !(args.duration.is_finite() && args.duration > 0.0) {
        bail!("--duration must be a positive number of seconds");
    }
    if !(args.warmup.is_finite() && args.warmup >= 0.0) {
        bail!("--warmup must be zero or a positive number of seconds");
    }
    let probe = format!("{}/0", args.topic_prefix);
    if args.topic_prefix.is_empty() || !verge_mqtt::topic::valid_topic_name(&probe) {
        bail!(
            "--topic-prefix `{}` is not a valid topic name",
            args.topic_prefix
        );
    }
    ensure_nofile((args.publishers + args.subscribers) as u64 + 64)?;
    let spawned = match args.target.spawn {
        Some(_) => Some(InProcessBroker::start().context("starting an in-process Verge broker")?),
        None => None,
    };
    let addr = match &spawned {
        Some(b) => b.addr,
        None => args.target.external_addr()?,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("verge-bench")
        .build()
        .context("starting the bench runtime")?;
    let outcome = runtime.block_on(drive(args, addr));
    runtime.shutdown_timeout(Duration::from_secs(1));
    let broker_stats = spawned.as_ref().map(InProcessBroker::stats);
    if let Some(b) = spawned {
        b.stop();
    }
    let outcome = outcome?;
    let target = match args.target.spawn {
        Some(_) => format!("in-process verge on {addr}"),
        None => addr.to_string(),
    };
    let report = Report::new(args, &outcome, target, broker_stats);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.json()).context("formatting JSON")?
        );
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

async fn drive(args: &BrokerBenchArgs, addr: std::net::SocketAddr) -> anyhow::Result<Outcome> {
    let protocol = args.protocol.protocol();
    let qos = if args.qos == 1 {
        QoS::AtLeastOnce
    } else {
        QoS::AtMostOnce
    };
    let pid = std::process::id();
    let filter = format!("{}/#", args.topic_prefix);
    let mut connecting = JoinSet::new();
    for j in 0..args.subscribers {
        let filter = filter.clone();
        connecting.spawn(async move {
            let mut c = Client::connect(
                addr,
                None,
                protocol,
                &format!("verge-bench-{pid}-sub-{j}"),
                0,
            )
            .await?;
            c.subscribe(&filter, qos).await?;
            anyhow::Ok((j, c))
        });
    }
    let mut subs = Vec::with_capacity(args.subscribers);
    while let Some(r) = connecting.join_next().await {
        subs.push(
            r.context("subscriber task")?
                .context("connecting a subscriber")?,
        );
    }
    let pubs = connect_many(
        addr,
        protocol,
        &format!("verge-bench-{pid}-pub"),
        args.publishers,
    )
    .await
    .context("connecting the publishers")?;
    let from = Duration::from_secs_f64(args.warmup);
    let plan = Arc::new(Plan {
        qos,
        payload: args.payload as usize,
        window: args.window as usize,
        rate: args.rate,
        t0: Instant::now(),
        from,
        to: from + Duration::from_secs_f64(args.duration),
        drain: Duration::from_secs(if qos == QoS::AtMostOnce { 2 } else { 5 }),
        expected: AtomicU64::new(u64::MAX),
        stamped: true,
    });
    let mut sub_tasks = JoinSet::new();
    for (j, c) in subs {
        let plan = plan.clone();
        sub_tasks.spawn(async move { (j, subscriber(plan, c).await) });
    }
    let mut pub_tasks = JoinSet::new();
    for (i, c) in pubs.into_iter().enumerate() {
        let plan = plan.clone();
        let messages = Messages::Stamped(format!("{}/{i}", args.topic_prefix));
        pub_tasks.spawn(async move { (i, publisher(plan, c, messages).await) });
    }
    let mut pub_results = Vec::with_capacity(args.publishers);
    while let Some(r) = pub_tasks.join_next().await {
        let (i, r) = r.context("publisher task")?;
        pub_results.push(r.with_context(|| format!("publisher {i}"))?);
    }
    let per_sub_expected: u64 = pub_results
        .iter()
        .map(|p| {
            if qos == QoS::AtMostOnce {
                p.sent
            } else {
                p.acked
            }
        })
        .sum();
    plan.expected.store(per_sub_expected, Ordering::Relaxed);
    let mut sub_results = Vec::with_capacity(args.subscribers);
    while let Some(r) = sub_tasks.join_next().await {
        let (j, r) = r.context("subscriber task")?;
        sub_results.push(r.with_context(|| format!("subscriber {j}"))?);
    }
    Ok(Outcome {
        pubs: pub_results,
        subs: sub_results,
        per_sub_expected,
    })
}

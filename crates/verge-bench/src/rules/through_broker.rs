//! Broker mode: a Verge broker in this process (on 127.0.0.1, a free port)
//! with one rule created through `verge_rules::Engine` on the broker's
//! runtime, republishing its rows to `bench/out/{device}`. The bench's MQTT
//! publishers send the workload over TCP at QoS 0 and a subscriber on
//! `bench/out/#` counts the outputs.
//!
//! The rule's throughput and latency come from its own metrics
//! (`RuleMetrics`), sampled at the start and the end of the measured window.
//! CPU time comes from `/proc/self/stat` (the whole process: broker, rule and
//! load generator) and from the broker runtime's threads alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use tokio::task::JoinSet;
use verge_mqtt::{Protocol, QoS};
use verge_rules::config::{Delivery, RepublishConfig};
use verge_rules::{ActionKind, Engine, RuleConfig, RuleEngineConfig, RuleInfo, Services};

use super::super::client::{Client, connect_many};
use super::super::pubsub::{Messages, Plan, PubResult, SubResult, publisher, subscriber};
use super::super::report::drops;
use super::super::{InProcessBroker, thousands};
use super::broker_report::Report;
use super::{RulesBenchArgs, Scenario, Workload};

/// The bench rule's id.
const RULE: &str = "bench";
/// Where the rule republishes.
pub(super) const OUT_TOPIC: &str = "bench/out/{device}";
/// What the subscriber counts.
pub(super) const OUT_FILTER: &str = "bench/out/#";
/// Name of the broker runtime's threads (see [`InProcessBroker`]).
const BROKER_THREADS: &str = "verge-broker";
/// Clock ticks per second of `/proc/*/stat` times (USER_HZ, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// The rule's state at one moment.
#[derive(Debug, Clone)]
pub(super) struct Snap {
    /// When.
    pub(super) at: Instant,
    /// The rule.
    pub(super) rule: RuleInfo,
    /// CPU time of the process and of the broker's threads so far.
    pub(super) cpu: Option<(Duration, Duration)>,
}

impl Snap {
    async fn take(engine: &Engine) -> anyhow::Result<Snap> {
        Ok(Snap {
            at: Instant::now(),
            rule: engine.get(RULE).await.context("reading the rule")?,
            cpu: cpu_times(),
        })
    }
}

/// Start the broker and the rule, drive them, report.
pub fn run(args: &RulesBenchArgs, sc: Scenario, w: &Workload) -> anyhow::Result<Report> {
    let broker = InProcessBroker::start().context("starting an in-process Verge broker")?;
    let engine = Arc::new(Engine::new(
        Services::new(broker.handle()),
        RuleEngineConfig::default(),
    ));
    let rule = RuleConfig {
        id: RULE.to_owned(),
        sql: sc.sql.clone(),
        actions: vec![ActionKind::Republish(RepublishConfig {
            topic: OUT_TOPIC.to_owned(),
            qos: 0,
            retain: false,
            delivery: Delivery::default(),
        })],
        enabled: true,
        description: String::new(),
    };
    let created = broker.block_on(engine.create(rule));
    let outcome = match created {
        Err(e) => Err(anyhow!("creating the rule `{}`: {e}", sc.name)),
        Ok(_) => {
            eprintln!(
                "broker: in-process verge on {}, rule `{}` created",
                broker.addr, sc.name
            );
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("verge-bench")
                .build()
                .context("starting the bench runtime")?;
            let r = runtime.block_on(drive(args, broker.addr, &engine, w));
            runtime.shutdown_timeout(Duration::from_secs(1));
            r
        }
    };
    let stats = broker.stats();
    broker.block_on(engine.shutdown());
    let addr = broker.addr;
    broker.stop();
    let (pubs, sub, window, last, expected) = outcome?;
    Ok(Report {
        scenario: sc,
        addr,
        devices: args.devices,
        publishers: args.publishers,
        publish_rate: args.publish_rate,
        duration: args.duration,
        warmup: args.warmup,
        pubs,
        sub,
        window,
        last,
        expected,
        broker_drops: drops(&stats),
    })
}

type Outcome = (Vec<PubResult>, SubResult, (Snap, Snap), RuleInfo, u64);

async fn drive(
    args: &RulesBenchArgs,
    addr: std::net::SocketAddr,
    engine: &Arc<Engine>,
    w: &Workload,
) -> anyhow::Result<Outcome> {
    let protocol = Protocol::V5;
    let pid = std::process::id();
    let mut sub = Client::connect(addr, None, protocol, &format!("verge-bench-{pid}-out"), 0)
        .await
        .context("connecting the subscriber")?;
    sub.subscribe(OUT_FILTER, QoS::AtMostOnce).await?;
    let n = args.publishers as usize;
    let pubs = connect_many(addr, protocol, &format!("verge-bench-{pid}-pub"), n)
        .await
        .context("connecting the publishers")?;
    let from = Duration::from_secs_f64(args.warmup);
    let plan = Arc::new(Plan {
        qos: QoS::AtMostOnce,
        payload: w.messages.iter().map(|(_, p)| p.len()).max().unwrap_or(0),
        window: 1,
        rate: args.publish_rate / n as u64,
        t0: Instant::now(),
        from,
        to: from + Duration::from_secs_f64(args.duration),
        drain: Duration::from_secs(2),
        expected: AtomicU64::new(u64::MAX),
        stamped: false,
    });
    let sub_task = tokio::spawn(subscriber(plan.clone(), sub));
    let mut pub_tasks = JoinSet::new();
    for (i, c) in pubs.into_iter().enumerate() {
        let messages = Messages::Cycle(w.share(i, n, args.devices as usize));
        pub_tasks.spawn(publisher(plan.clone(), c, messages));
    }
    let window = monitor(engine, &plan).await;
    let mut pub_results = Vec::with_capacity(n);
    while let Some(r) = pub_tasks.join_next().await {
        pub_results.push(r.context("publisher task")?.context("publisher")?);
    }
    let window = window?;
    let last = drained(engine).await?;
    let expected = last.action_metrics.first().map_or(0, |a| a.delivered);
    plan.expected.store(expected, Ordering::Relaxed);
    let sub_result = sub_task.await.context("subscriber task")??;
    Ok((pub_results, sub_result, window, last, expected))
}

/// Sample the rule every second (progress on stderr) and at both ends of
/// the measured window.
async fn monitor(engine: &Engine, plan: &Plan) -> anyhow::Result<(Snap, Snap)> {
    let mut marks: Vec<Duration> = (1..)
        .map(Duration::from_secs)
        .take_while(|d| *d < plan.to)
        .chain([plan.from, plan.to])
        .collect();
    marks.sort();
    marks.dedup();
    let mut prev = Snap::take(engine).await?;
    let mut start = None;
    for mark in marks {
        tokio::time::sleep_until((plan.t0 + mark).into()).await;
        let snap = Snap::take(engine).await?;
        if mark == plan.from {
            start = Some(snap.clone());
        }
        let secs = (snap.at - prev.at).as_secs_f64().max(1e-9);
        let (m, p) = (&snap.rule.metrics, &prev.rule.metrics);
        eprintln!(
            "  {:>5.1}s {} rule in {:>10} msg/s, rows {:>10}/s, dropped_queue {}",
            mark.as_secs_f64(),
            if mark <= plan.from {
                "warm-up "
            } else {
                "measured"
            },
            thousands(((m.messages_in - p.messages_in) as f64 / secs) as u64),
            thousands(((m.rows_out - p.rows_out) as f64 / secs) as u64),
            thousands(m.dropped_queue),
        );
        prev = snap;
    }
    Ok((start.context("no sample at the start")?, prev))
}

/// Wait until the rule has taken everything from its queue and its action
/// has published every row (at most 5 s), and return its state.
async fn drained(engine: &Engine) -> anyhow::Result<RuleInfo> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = engine.get(RULE).await?;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = engine.get(RULE).await?;
        let seen = |r: &RuleInfo| r.metrics.messages_in + r.metrics.dropped_queue;
        let idle = now.action_metrics.iter().all(|a| a.queued == 0);
        if (seen(&now) == seen(&last) && idle) || Instant::now() >= deadline {
            return Ok(now);
        }
        last = now;
    }
}

/// CPU time (user + system) of this process and of the broker runtime's
/// threads, from /proc; `None` where /proc is not readable.
fn cpu_times() -> Option<(Duration, Duration)> {
    let process = stat_cpu(&std::fs::read_to_string("/proc/self/stat").ok()?)?.1;
    let mut broker = 0.0;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // the thread ended
        };
        if let Some((name, cpu)) = stat_cpu(&text)
            && name == BROKER_THREADS
        {
            broker += cpu;
        }
    }
    Some((
        Duration::from_secs_f64(process),
        Duration::from_secs_f64(broker),
    ))
}

/// The command name and utime + stime (seconds) of a `/proc/.../stat` line.
fn stat_cpu(text: &str) -> Option<(&str, f64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let name = text.get(open + 1..close)?;
    // After the name: state is field 3, utime field 14, stime field 15.
    let mut rest = text.get(close + 1..)?.split_whitespace().skip(11);
    let utime: u64 = rest.next()?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some((name, (utime + stime) as f64 / TICKS_PER_S))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_gives_name_and_cpu() {
        let line = "4242 (verge-broker) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0 100 0 0";
        assert_eq!(stat_cpu(line), Some(("verge-broker", 3.0)));
        let odd = "1 (a) b (c)) R 1 2 3 4 5 6 7 8 9 10 1 1 0";
        assert_eq!(stat_cpu(odd), Some(("a) b (c)", 0.02)));
        assert_eq!(stat_cpu("garbage"), None);
    }

    #[test]
    fn this_process_has_cpu_times() {
        let (process, _) = cpu_times().expect("/proc is readable");
        assert!(process >= Duration::ZERO);
    }
}

//! Drain rate of the cloud link: a backlog in the cache queue sent by the
//! bridge to a cloud broker after an outage, beside the link's own speed
//! (one plain MQTT 5 client publishing the same messages at QoS 1 with the
//! same window to the same broker). A ratio near 1 means the drain is
//! limited by the link, not by the node.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use serde::Serialize;
use verge_bridge::{Bridge, BridgeConfig};
use verge_broker::duration::HumanDuration;
use verge_mqtt::{Connect, Packet, Properties, Protocol, Publish, QoS};
use verge_net::now_ms;
use verge_protocol::VergeId;
use verge_protocol::topics;
use verge_queue::{Queue, QueueConfig, Record, SyncPolicy};

use super::client::Client;
use super::{InProcessBroker, thousands};

/// Options of the drain part of `verge bench queue`.
#[derive(Debug, Clone, Args)]
pub struct DrainArgs {
    /// Backlog to drain through the bridge (messages); 0 skips the drain.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(0..=100_000_000))]
    pub drain_messages: u64,
    /// Messages in flight at most (the cloud's Receive Maximum lowers it).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u16).range(1..))]
    pub inflight: u16,
    /// Port of an already running cloud broker on `--cloud-host` (e.g.
    /// Mosquitto); by default a Verge broker is started in-process.
    #[arg(long)]
    pub cloud_port: Option<u16>,
    /// Host of `--cloud-port`.
    #[arg(long, default_value = "127.0.0.1")]
    pub cloud_host: String,
    /// Log in to the cloud broker as this user; with a Verge cloud center,
    /// a node id (its messages then go to `nodes/{id}/up/…` and are stored
    /// before each PUBACK).
    #[arg(long, requires = "cloud_password")]
    pub cloud_username: Option<String>,
    /// The password (a node's secret).
    #[arg(long, requires = "cloud_username")]
    pub cloud_password: Option<String>,
}

/// What the drain measurement found.
#[derive(Debug, Clone, Serialize)]
pub struct DrainReport {
    /// `verge (in-process)` or `host:port`.
    pub cloud: String,
    /// Backlog size.
    pub messages: u64,
    /// Payload bytes per message.
    pub payload: usize,
    /// Window used (after the cloud's Receive Maximum).
    pub window: u16,
    /// The backlog drained through the bridge, messages per second (from
    /// the bridge's start, connect included, to the last PUBACK).
    pub drain_per_sec: f64,
    /// The same messages from a plain QoS 1 client on the same link.
    pub link_per_sec: f64,
    /// drain / link.
    pub ratio: f64,
}

/// Fill a queue with a backlog, then drain it through the bridge to the
/// cloud; measure the link alone first. Call outside any runtime.
pub fn run(args: &DrainArgs, payload: usize, dir: &std::path::Path) -> anyhow::Result<DrainReport> {
    let in_process = match args.cloud_port {
        Some(_) => None,
        None => Some(InProcessBroker::start()?),
    };
    let (addr, cloud) = match (&in_process, args.cloud_port) {
        (Some(b), _) => (b.addr, "verge (in-process)".to_owned()),
        (None, Some(port)) => {
            let addr = std::net::ToSocketAddrs::to_socket_addrs(&(args.cloud_host.as_str(), port))
                .with_context(|| format!("resolving {}:{port}", args.cloud_host))?
                .next()
                .context("the cloud address resolves to nothing")?;
            (addr, format!("{}:{port}", args.cloud_host))
        }
        (None, None) => bail!("no cloud broker"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("verge-bench")
        .build()
        .context("starting the bench runtime")?;
    let body = Bytes::from(vec![b'x'; payload]);
    let n = args.drain_messages;
    let report = runtime.block_on(async {
        eprintln!(
            "link: {} QoS 1 messages from one client to {cloud}",
            thousands(n)
        );
        let node_name = args.cloud_username.as_deref().unwrap_or("bench");
        let creds = args
            .cloud_username
            .as_deref()
            .zip(args.cloud_password.as_deref());
        let (link_per_sec, window) =
            link_speed(addr, n, args.inflight, body.clone(), node_name, creds).await?;

        let qdir = tempfile::Builder::new()
            .prefix("verge-bench-drain-")
            .tempdir_in(dir)
            .context("creating a temp dir for the queue")?;
        let (queue, _) = Queue::open(QueueConfig {
            dir: qdir.path().to_path_buf(),
            sync: SyncPolicy::Buffered,
            ..QueueConfig::default()
        })
        .context("opening the queue")?;
        eprintln!("queue: appending a backlog of {}", thousands(n));
        let mut left = n;
        while left > 0 {
            let k = left.min(2000);
            let records = (0..k)
                .map(|_| Record {
                    topic: "bench/drain".into(),
                    payload: body.clone(),
                    time_ms: now_ms(),
                })
                .collect();
            queue.append("telemetry", records).await?;
            left -= k;
        }
        let cfg = BridgeConfig {
            enabled: true,
            url: format!("mqtt://{addr}"),
            inflight: args.inflight,
            downstream: false,
            reconnect_min: HumanDuration(Duration::from_millis(50)),
            username: args.cloud_username.clone(),
            password: args.cloud_password.clone(),
            ..BridgeConfig::default()
        };
        eprintln!("drain: bridge to {cloud}");
        // The node's own broker: the bridge needs one for downstream
        // messages (off here); no listeners.
        let node_cfg = verge_broker::BrokerConfig::default();
        let node = verge_broker::Broker::start(
            node_cfg.clone(),
            verge_broker::Broker::authenticator(&node_cfg)?,
        );
        let started = Instant::now();
        let bridge = Bridge::start(cfg.plan(node_name)?, queue.clone(), node.handle()).await?;
        let status = bridge.handle();
        let deadline = started + Duration::from_secs(600);
        while status.link().sent < n {
            if Instant::now() > deadline {
                bail!(
                    "the drain did not finish in 10 minutes: {:?}",
                    status.link()
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        bridge.shutdown().await;
        queue.close().await;
        node.shutdown().await;
        let drain_per_sec = n as f64 / secs;
        anyhow::Ok(DrainReport {
            cloud: cloud.clone(),
            messages: n,
            payload,
            window,
            drain_per_sec,
            link_per_sec,
            ratio: drain_per_sec / link_per_sec,
        })
    })?;
    runtime.shutdown_timeout(Duration::from_secs(1));
    if let Some(b) = in_process {
        b.stop();
    }
    Ok(report)
}

/// One MQTT 5 client publishing `n` QoS 1 messages with up to `window` in
/// flight (lowered to the broker's Receive Maximum); messages per second
/// and the window used.
async fn link_speed(
    addr: SocketAddr,
    n: u64,
    window: u16,
    payload: Bytes,
    node_name: &str,
    creds: Option<(&str, &str)>,
) -> anyhow::Result<(f64, u16)> {
    let connect = Connect {
        protocol: Protocol::V5,
        clean_start: true,
        keep_alive: 0,
        client_id: "verge-bench-link".into(),
        username: creds.map(|(u, _)| u.to_owned()),
        password: creds.map(|(_, p)| Bytes::copy_from_slice(p.as_bytes())),
        will: None,
        properties: Properties {
            receive_maximum: Some(u16::MAX),
            ..Properties::default()
        },
    };
    let (client, ack) = Client::connect_with(addr, None, connect).await?;
    let window = window.min(ack.properties.receive_maximum.unwrap_or(u16::MAX));
    let (mut rd, mut wr) = client.into_split();
    let started = Instant::now();
    let (mut sent, mut acked, mut inflight) = (0u64, 0u64, 0u64);
    let mut next_id: u16 = 0;
    while acked < n {
        while sent < n && inflight < u64::from(window) {
            next_id = if next_id == u16::MAX { 1 } else { next_id + 1 };
            let p = Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: topics::up(node_name, "bench/link"),
                packet_id: next_id,
                properties: Properties {
                    user_properties: vec![
                        (
                            topics::VERGE_ID_PROPERTY.into(),
                            VergeId::format("0123456789abcdef", "telemetry", sent),
                        ),
                        (topics::VERGE_TIME_PROPERTY.into(), "1795879573698".into()),
                    ],
                    ..Properties::default()
                },
                payload: payload.clone(),
            };
            wr.queue(&Packet::Publish(p))?;
            sent += 1;
            inflight += 1;
        }
        wr.flush().await.context("publishing")?;
        if rd.fill(1 << 16).await.context("reading acknowledgements")? == 0 {
            bail!("{addr} closed the connection");
        }
        while let Some(p) = rd.next_packet()? {
            if let Packet::PubAck(_) = p {
                acked += 1;
                inflight -= 1;
            }
        }
    }
    Ok((n as f64 / started.elapsed().as_secs_f64(), window))
}

/// The report as a table.
pub fn table(r: &DrainReport) -> String {
    format!(
        "drain after an outage: {} messages of {} B to {}, window {}\n\
         {:<34} {:>12}\n{:<34} {:>12}\n{:<34} {:>12.2}\n",
        thousands(r.messages),
        r.payload,
        r.cloud,
        r.window,
        "bridge drain (msg/s)",
        thousands(r.drain_per_sec as u64),
        "link: plain QoS 1 client (msg/s)",
        thousands(r.link_per_sec as u64),
        "drain / link",
        r.ratio
    )
}

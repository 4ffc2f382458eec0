//! `verge device simulate`: a device program for the walkthrough. It
//! connects to a node's broker with the device's credentials (MQTT 5,
//! username = device id), publishes a JSON reading to
//! `devices/{device}/telemetry` every interval (QoS 1, waiting for each
//! PUBACK) and prints every command it gets on
//! `devices/{device}/commands/#`. A lost connection is retried with
//! backoff; refused credentials end it with an error.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use tokio::sync::watch;
use verge_duration::HumanDuration;
use verge_mqtt::{Ack, Packet, Properties, Protocol, Publish, QoS};
use verge_net::Backoff;

use verge_bench::client::Client;

/// `verge device simulate`.
#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// The node's MQTT address (TCP).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:1883")]
    pub node: String,
    /// The device's id (its MQTT username, as created in the cloud).
    #[arg(long)]
    pub device: String,
    /// The device's secret (shown once when the device was created).
    #[arg(long, env = "VERGE_DEVICE_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Time between readings, e.g. `1s`, `250ms`.
    #[arg(long, default_value = "1s")]
    pub interval: HumanDuration,
    /// Stop after this many readings (default: run until Ctrl-C).
    #[arg(long)]
    pub count: Option<u64>,
    /// Print nothing but commands and errors.
    #[arg(long)]
    pub quiet: bool,
}

/// Run from the command line until Ctrl-C (or `--count` readings).
pub fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let (stop_tx, stop) = watch::channel(false);
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            let _ = stop_tx.send(true);
        });
        simulate(args.clone(), stop).await
    })
}

/// One simulated device until `stop` turns true or `count` readings were
/// acknowledged.
pub async fn simulate(args: SimulateArgs, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    if args.interval.get().is_zero() {
        bail!("--interval must be more than 0");
    }
    let addr = resolve(&args.node).await?;
    let mut sent: u64 = 0;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    loop {
        let outcome = tokio::select! {
            r = session(&args, addr, &mut sent) => r,
            _ = stop.changed() => return Ok(()),
        };
        match outcome {
            Ok(()) => return Ok(()),
            Err(Failure::Refused(e)) => return Err(e),
            Err(Failure::Lost(e)) => {
                let wait = backoff.next_delay();
                eprintln!(
                    "device {}: {e:#}; retrying in {}",
                    args.device,
                    verge_duration::format(wait)
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return Ok(()),
                }
            }
        }
    }
}

enum Failure {
    /// The node refused the credentials: retrying cannot help.
    Refused(anyhow::Error),
    /// The connection failed or dropped: retry.
    Lost(anyhow::Error),
}

async fn resolve(node: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(node)
        .await
        .with_context(|| format!("--node `{node}`: not a host:port"))?
        .next()
        .with_context(|| format!("--node `{node}`: no address"))
}

/// One connection: publish readings until `count` or the connection ends.
async fn session(args: &SimulateArgs, addr: SocketAddr, sent: &mut u64) -> Result<(), Failure> {
    let mut client = match Client::connect_as(
        addr,
        None,
        Protocol::V5,
        &args.device,
        30,
        Some((&args.device, args.secret.as_bytes())),
    )
    .await
    {
        Ok(c) => c,
        Err(e) if format!("{e}").contains("refused the connection (reason code 0x8") => {
            return Err(Failure::Refused(e.context(format!(
                "device `{}`: the node refused its credentials (check --device and --secret)",
                args.device
            ))));
        }
        Err(e) => return Err(Failure::Lost(e)),
    };
    let commands = format!("devices/{}/commands/#", args.device);
    client
        .subscribe(&commands, QoS::AtLeastOnce)
        .await
        .map_err(|e| Failure::Refused(e.context("subscribing to its commands")))?;
    if !args.quiet {
        println!(
            "device {} connected to {addr}; publishing to devices/{}/telemetry every {}",
            args.device,
            args.device,
            verge_duration::format(args.interval.get())
        );
    }
    let topic = format!("devices/{}/telemetry", args.device);
    let mut tick = tokio::time::interval(args.interval.get());
    let mut awaiting: Option<u16> = None;
    let mut next_id: u16 = 1;
    loop {
        tokio::select! {
            packet = client.recv() => match packet.map_err(Failure::Lost)? {
                Packet::Publish(p) => on_command(&mut client, args, p).await?,
                Packet::PubAck(ack) if Some(ack.packet_id) == awaiting => {
                    awaiting = None;
                    if ack.reason_code >= 0x80 {
                        eprintln!(
                            "device {}: the node refused reading {} (reason code 0x{:02x})",
                            args.device, *sent, ack.reason_code
                        );
                    } else {
                        *sent += 1;
                        if args.count.is_some_and(|c| *sent >= c) {
                            let _ = client.send(&Packet::Disconnect(Default::default())).await;
                            return Ok(());
                        }
                    }
                }
                Packet::Disconnect(d) => {
                    return Err(Failure::Lost(anyhow::anyhow!(
                        "the node disconnected it (reason code 0x{:02x})",
                        d.reason_code
                    )));
                }
                _ => {}
            },
            _ = tick.tick(), if awaiting.is_none() => {
                let payload = reading(*sent);
                let publish = Publish {
                    dup: false,
                    qos: QoS::AtLeastOnce,
                    retain: false,
                    topic: topic.clone(),
                    packet_id: next_id,
                    properties: Properties::default(),
                    payload: Bytes::from(payload),
                };
                client.send(&Packet::Publish(publish)).await.map_err(Failure::Lost)?;
                awaiting = Some(next_id);
                next_id = next_id.checked_add(1).unwrap_or(1);
            }
        }
    }
}

/// Print a command and acknowledge it.
async fn on_command(client: &mut Client, args: &SimulateArgs, p: Publish) -> Result<(), Failure> {
    let name = p
        .topic
        .rsplit_once("/commands/")
        .map_or(p.topic.as_str(), |(_, n)| n);
    println!(
        "device {} command {name}: {}",
        args.device,
        String::from_utf8_lossy(&p.payload)
    );
    if p.qos == QoS::AtLeastOnce {
        let ack = Ack {
            packet_id: p.packet_id,
            ..Ack::default()
        };
        client
            .send(&Packet::PubAck(ack))
            .await
            .map_err(Failure::Lost)?;
    }
    Ok(())
}

/// A plausible reading: temperature and humidity drifting with `n`.
fn reading(n: u64) -> Vec<u8> {
    let phase = (n % 60) as f64 / 60.0 * std::f64::consts::TAU;
    let temperature = 24.0 + 8.0 * phase.sin();
    let humidity = 45.0 + 10.0 * phase.cos();
    let ts = verge_net::now_ms();
    serde_json::json!({
        "temperature": (temperature * 10.0).round() / 10.0,
        "humidity": (humidity * 10.0).round() / 10.0,
        "seq": n,
        "ts": ts,
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_are_json_with_the_expected_fields() {
        let v: serde_json::Value = serde_json::from_slice(&reading(15)).expect("json");
        assert_eq!(v["seq"], 15);
        let t = v["temperature"].as_f64().expect("temperature");
        assert!((16.0..=32.0).contains(&t), "{t}");
        assert!(v["humidity"].as_f64().is_some());
    }
}

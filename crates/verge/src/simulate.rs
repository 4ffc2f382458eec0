//! `verge device simulate`: a device program for the walkthrough, written
//! on the Rust device SDK (`verge-device`) like any user's program. It
//! connects with the device's credentials (username and client id = the
//! device id), publishes a JSON reading on `devices/{device}/telemetry`
//! every interval, answers the commands `set_interval` and `reboot`
//! (others fail with a reply saying so), prints every command, reports
//! its interval in its shadow and applies a desired `interval_ms`. The
//! SDK reconnects and buffers readings while the node is away; refused
//! credentials end it with an error.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};
use tokio::sync::watch;
use verge_device::{Command, Connection, Device, DeviceConfig, Error, ShadowDelta};
use verge_duration::HumanDuration;
use verge_net::Backoff;

/// Shortest interval a command or the shadow may set.
const MIN_INTERVAL_MS: u64 = 10;

/// `verge device simulate`.
#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// The node's MQTT address: `HOST:PORT`, or a `mqtt://` or `mqtts://` URL.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:1883")]
    pub node: String,
    /// The device's id (its MQTT username, as created in the cloud).
    #[arg(long)]
    pub device: String,
    /// The device's secret (shown once when the device was created).
    #[arg(long, env = "VERGE_DEVICE_SECRET", hide_env_values = true)]
    pub secret: String,
    /// Time between readings, e.g. `1s`, `250ms` (the shadow's desired
    /// `interval_ms` and the `set_interval` command change it).
    #[arg(long, default_value = "1s")]
    pub interval: HumanDuration,
    /// Stop after this many readings (default: run until Ctrl-C).
    #[arg(long)]
    pub count: Option<u64>,
    /// CA certificate (PEM) of the node's TLS listener, for `mqtts://`.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<std::path::PathBuf>,
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

/// The SDK's config for the flags.
fn config(args: &SimulateArgs) -> DeviceConfig {
    let url = if args.node.contains("://") {
        args.node.clone()
    } else {
        format!("mqtt://{}", args.node)
    };
    let mut config = DeviceConfig::new(url, &args.device, &args.secret);
    config.ca_file = args.ca_file.clone();
    config.reconnect_max = Duration::from_secs(10);
    config.close_timeout = Duration::from_secs(2);
    config
}

/// One simulated device until `stop` turns true or `count` readings were
/// sent (and acknowledged, up to the close timeout).
pub async fn simulate(args: SimulateArgs, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    if args.interval.get().is_zero() {
        bail!("--interval must be more than 0");
    }
    let Some(device) = connect(&args, &mut stop).await? else {
        return Ok(());
    };
    if !args.quiet {
        println!(
            "device {} connected to {}; publishing to devices/{}/telemetry every {}",
            args.device,
            args.node,
            args.device,
            verge_duration::format(args.interval.get())
        );
    }
    let (interval_tx, mut interval) = watch::channel(args.interval.get());
    let (reboot_tx, mut reboot) = watch::channel(0u64);
    answer_commands(&device, &args.device, interval_tx.clone(), reboot_tx).await?;
    sync_shadow(&device, &args, interval_tx);

    let mut state = device.connection();
    let mut sent: u64 = 0;
    let mut connected = true;
    let mut next = tokio::time::Instant::now() + *interval.borrow();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = interval.changed() => {
                next = tokio::time::Instant::now() + *interval.borrow();
                continue;
            }
            _ = reboot.changed() => {
                sent = 0;
                continue;
            }
            _ = stop.changed() => break,
            // a device deleted in the cloud: its node refuses it from now on
            why = refused(&mut state) => {
                let _ = device.close().await;
                bail!(
                    "device `{}`: the node refused its credentials (check --device and --secret): {why}",
                    args.device
                );
            }
        }
        next += *interval.borrow();
        let now = device.is_connected();
        if now != connected && !args.quiet {
            if now {
                println!("device {}: connected again", args.device);
            } else {
                eprintln!(
                    "device {}: connection lost; reconnecting (readings are buffered)",
                    args.device
                );
            }
        }
        connected = now;
        device
            .send_telemetry(&reading(sent))
            .await
            .context("sending a reading")?;
        sent += 1;
        if args.count.is_some_and(|c| sent >= c) {
            break;
        }
    }
    match device.close().await {
        Ok(()) => Ok(()),
        Err(e @ Error::Unflushed { .. }) if args.count.is_none() => {
            eprintln!("device {}: {e}", args.device);
            Ok(())
        }
        Err(e) => Err(e).context(format!("device `{}`: closing", args.device)),
    }
}

/// Wait until the node refuses the device's credentials; why.
async fn refused(state: &mut watch::Receiver<Connection>) -> String {
    let message = match state
        .wait_for(|s| matches!(s, Connection::Refused { .. }))
        .await
    {
        Ok(s) => match &*s {
            Connection::Refused { message, .. } => Some(message.clone()),
            _ => None,
        },
        Err(_) => None,
    };
    match message {
        Some(m) => m,
        // the client ended: nothing more to wait for
        None => std::future::pending().await,
    }
}

/// Connect, retrying while the node is not reachable; `None` when stopped
/// first.
async fn connect(
    args: &SimulateArgs,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<Option<Device>> {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    loop {
        let attempt = tokio::select! {
            r = Device::connect(config(args)) => r,
            _ = stop.changed() => return Ok(None),
        };
        match attempt {
            Ok(device) => return Ok(Some(device)),
            Err(e @ Error::Refused { .. }) => {
                return Err(e).context(format!(
                    "device `{}`: the node refused its credentials (check --device and --secret)",
                    args.device
                ));
            }
            Err(e) if e.is_retryable() => {
                let wait = backoff.next_delay();
                eprintln!(
                    "device {}: {e}; retrying in {}",
                    args.device,
                    verge_duration::format(wait)
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return Ok(None),
                }
            }
            Err(e) => return Err(e).context(format!("device `{}`", args.device)),
        }
    }
}

/// Print every command and answer `set_interval` (`{"interval_ms": n}`)
/// and `reboot`; other commands fail.
async fn answer_commands(
    device: &Device,
    name: &str,
    interval: watch::Sender<Duration>,
    reboot: watch::Sender<u64>,
) -> anyhow::Result<()> {
    let name = name.to_owned();
    device
        .on_any_command(move |cmd: Command| {
            println!("device {name} command {}: {}", cmd.name, cmd.payload);
            let result = match cmd.name.as_str() {
                "set_interval" => match interval_ms(&cmd.payload["interval_ms"]) {
                    Some(ms) => {
                        let _ = interval.send(Duration::from_millis(ms));
                        Ok(json!({ "interval_ms": ms }))
                    }
                    None => Err(format!(
                        "set_interval wants {{\"interval_ms\": n}} with n >= {MIN_INTERVAL_MS}"
                    )),
                },
                "reboot" => {
                    reboot.send_modify(|n| *n += 1);
                    Ok(json!({ "rebooted": true }))
                }
                other => Err(format!(
                    "unknown command `{other}` (the simulator knows set_interval and reboot)"
                )),
            };
            std::future::ready(result)
        })
        .await
        .context("subscribing to its commands")
}

/// Report the interval in the shadow, apply a desired `interval_ms` (now
/// and on every delta) and report it back. The node answers shadow
/// requests only when its device service runs, so this never holds up
/// the readings: it runs beside them and says once what failed.
fn sync_shadow(device: &Device, args: &SimulateArgs, interval: watch::Sender<Duration>) {
    let device = device.clone();
    let name = args.device.clone();
    let quiet = args.quiet;
    tokio::spawn(async move {
        let (delta_tx, mut deltas) = tokio::sync::mpsc::channel::<ShadowDelta>(8);
        let subscribed = device
            .on_delta(move |d| {
                let tx = delta_tx.clone();
                async move {
                    let _ = tx.send(d).await;
                }
            })
            .await;
        if let Err(e) = subscribed {
            eprintln!("device {name}: shadow deltas: {e}");
            return;
        }
        let desired = match device.get_shadow().await {
            Ok(s) => s.desired.get("interval_ms").and_then(interval_ms),
            Err(e) => {
                if !quiet {
                    eprintln!("device {name}: shadow: {e}");
                }
                None
            }
        };
        if let Some(ms) = desired {
            interval.send_replace(Duration::from_millis(ms));
        }
        report(&device, &name, quiet, &interval).await;
        while let Some(delta) = deltas.recv().await {
            if let Some(ms) = delta.state.get("interval_ms").and_then(interval_ms) {
                if !quiet {
                    println!("device {name}: shadow asks for interval_ms {ms}");
                }
                interval.send_replace(Duration::from_millis(ms));
                report(&device, &name, quiet, &interval).await;
            }
        }
    });
}

/// Report the interval in force (errors are printed unless quiet).
async fn report(device: &Device, name: &str, quiet: bool, interval: &watch::Sender<Duration>) {
    let ms = u64::try_from(interval.borrow().as_millis()).unwrap_or(u64::MAX);
    let mut reported = serde_json::Map::new();
    reported.insert("interval_ms".into(), json!(ms));
    if let Err(e) = device.update_reported(reported).await
        && !matches!(e, Error::Closed)
        && !quiet
    {
        eprintln!("device {name}: reporting its interval: {e}");
    }
}

/// A usable interval in ms from JSON.
fn interval_ms(v: &Value) -> Option<u64> {
    v.as_u64().filter(|ms| *ms >= MIN_INTERVAL_MS)
}

/// A plausible reading: temperature and humidity drifting with `n`.
fn reading(n: u64) -> Value {
    let phase = (n % 60) as f64 / 60.0 * std::f64::consts::TAU;
    let temperature = 24.0 + 8.0 * phase.sin();
    let humidity = 45.0 + 10.0 * phase.cos();
    let ts = verge_net::now_ms();
    json!({
        "temperature": (temperature * 10.0).round() / 10.0,
        "humidity": (humidity * 10.0).round() / 10.0,
        "seq": n,
        "ts": ts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_are_json_with_the_expected_fields() {
        let v = reading(15);
        assert_eq!(v["seq"], 15);
        let t = v["temperature"].as_f64().expect("temperature");
        assert!((16.0..=32.0).contains(&t), "{t}");
        assert!(v["humidity"].as_f64().is_some());
    }

    #[test]
    fn node_flags_become_urls_and_intervals_are_checked() {
        let args = SimulateArgs {
            node: "127.0.0.1:1883".into(),
            device: "d1".into(),
            secret: "s".into(),
            interval: HumanDuration(Duration::from_secs(1)),
            count: None,
            ca_file: None,
            quiet: true,
        };
        assert_eq!(config(&args).url, "mqtt://127.0.0.1:1883");
        let tls = SimulateArgs {
            node: "mqtts://node:8883".into(),
            ..args
        };
        assert_eq!(config(&tls).url, "mqtts://node:8883");
        assert_eq!(interval_ms(&json!(250)), Some(250));
        assert_eq!(interval_ms(&json!(1)), None);
        assert_eq!(interval_ms(&json!("250")), None);
    }

    /// The simulator against the node's broker in-process, with a stand-in
    /// for the node's shadow service: it takes the desired interval from
    /// the shadow, reports it, answers `set_interval`, and fails unknown
    /// commands.
    #[tokio::test]
    async fn the_simulator_follows_its_shadow_and_answers_commands() {
        use verge_broker::auth::{Device as RegDevice, Registry, hash_password};
        use verge_broker::{
            Authenticator, BoundListener, Broker, BrokerConfig, Message, Transport,
        };
        use verge_mqtt::QoS;
        use verge_protocol::device::{ShadowTopic, command_topic};
        const WAIT: Duration = Duration::from_secs(10);

        let registry = Registry {
            acl: vec![],
            devices: vec![RegDevice {
                username: "d1".into(),
                password_hash: Some(hash_password("s").expect("hash")),
                client_id: None,
                acl: vec![],
            }],
        };
        let cfg = BrokerConfig {
            allow_anonymous: true,
            sys_interval: HumanDuration(Duration::ZERO),
            ..BrokerConfig::default()
        };
        let auth = Authenticator::new(registry, true, verge_broker::config::AclPolicy::Allow)
            .expect("auth");
        let mut broker = Broker::start(cfg, auth);
        let h = broker.handle();
        let mut seen = h
            .subscribe_many(
                &[
                    "devices/d1/telemetry".to_owned(),
                    "devices/d1/replies/#".to_owned(),
                    ShadowTopic::Get.topic("d1"),
                    ShadowTopic::Update.topic("d1"),
                ],
                1000,
            )
            .await
            .expect("subscribe");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        broker.serve(BoundListener {
            listener,
            transport: Transport::Tcp,
        });
        let (stop_tx, stop) = watch::channel(false);
        let args = SimulateArgs {
            node: addr.to_string(),
            device: "d1".into(),
            secret: "s".into(),
            // far longer than the test: readings come only at the shadow's pace
            interval: HumanDuration(Duration::from_secs(60)),
            count: None,
            ca_file: None,
            quiet: true,
        };
        let sim = tokio::spawn(simulate(args, stop));
        let answer = |topic: ShadowTopic, request: &[u8], mut doc: Value| {
            let token =
                serde_json::from_slice::<Value>(request).expect("json")["client_token"].clone();
            doc["client_token"] = token;
            Message::local(topic.topic("d1"), doc.to_string(), QoS::AtLeastOnce, false)
        };
        let (mut readings, mut reported, mut replies) = (0, Vec::new(), Vec::new());
        let mut commanded = false;
        let deadline = tokio::time::Instant::now() + WAIT;
        while readings < 3 || reported.is_empty() || replies.len() < 2 {
            let m = tokio::time::timeout_at(deadline, seen.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("readings {readings}, reported {reported:?}, replies {replies:?}")
                })
                .expect("broker");
            let topic = m.topic.to_string();
            if topic == ShadowTopic::Get.topic("d1") {
                let doc = json!({"desired": {"interval_ms": 50}, "version": 1});
                h.publish(answer(ShadowTopic::GetAccepted, &m.payload, doc))
                    .await
                    .expect("publish");
            } else if topic == ShadowTopic::Update.topic("d1") {
                let update: Value = serde_json::from_slice(&m.payload).expect("json");
                reported.push(update["reported"]["interval_ms"].clone());
                let doc = json!({"reported": update["reported"], "version": 2});
                h.publish(answer(ShadowTopic::UpdateAccepted, &m.payload, doc))
                    .await
                    .expect("publish");
            } else if topic == "devices/d1/telemetry" {
                readings += 1;
                if readings == 3 && !commanded {
                    commanded = true;
                    for (name, id, payload) in [
                        ("set_interval", "c1", r#"{"interval_ms": 20}"#),
                        ("dance", "c2", "{}"),
                    ] {
                        h.publish(Message::local(
                            command_topic("d1", name, id),
                            payload,
                            QoS::AtLeastOnce,
                            false,
                        ))
                        .await
                        .expect("publish");
                    }
                }
            } else {
                replies.push((topic, String::from_utf8_lossy(&m.payload).into_owned()));
            }
        }
        assert_eq!(reported[0], json!(50), "the desired interval, reported");
        replies.sort();
        assert_eq!(
            replies[0],
            (
                "devices/d1/replies/c1".into(),
                r#"{"interval_ms":20}"#.into()
            )
        );
        assert_eq!(replies[1].0, "devices/d1/replies/c2/failed");
        assert!(
            replies[1].1.contains("unknown command `dance`"),
            "{replies:?}"
        );
        let _ = stop_tx.send(true);
        tokio::time::timeout(WAIT, sim)
            .await
            .expect("the simulator stops")
            .expect("task")
            .expect("no error");
    }
}

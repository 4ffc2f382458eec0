//! The protocol-independent part of a driver: one task per driver that
//! connects (again, with backoff), reads each device at its own cadence,
//! marks a device that stops answering bad and retries it with backoff
//! while the others keep their cadence, publishes telemetry (with deadband),
//! answers write commands, and keeps the status. [`Drivers`] is the node's
//! set of running drivers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::sleep_until;
use verge_broker::{BrokerHandle, LocalSubscription, Message};
use verge_metrics::Histogram;
use verge_mqtt::QoS;
use verge_net::{Backoff, now_ms};

use crate::config::{Access, DriverConfig};
use crate::protocol::{self, DriverError, PointResult, Protocol};
use crate::status::{DeviceStatus, DriverStatus};

/// Counters behind [`DriverStatus`].
struct Shared {
    status: Mutex<DriverStatus>,
    latency: Histogram,
    /// (when, reads so far) samples for `reads_per_sec`.
    rate: Mutex<std::collections::VecDeque<(Instant, u64)>>,
}

/// One running driver.
pub struct Driver {
    config: DriverConfig,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Driver {
    /// Check `config`, build its protocol client and start its task.
    pub fn start(config: DriverConfig, broker: BrokerHandle) -> Result<Driver, String> {
        config.validate()?;
        let protocol = protocol::build(&config)?;
        Ok(Driver::start_with(config, protocol, broker))
    }

    /// Start a driver over a given protocol client (tests, simulators).
    /// `config` should have passed [`DriverConfig::validate`].
    pub fn start_with(
        config: DriverConfig,
        protocol: Box<dyn Protocol>,
        broker: BrokerHandle,
    ) -> Driver {
        let shared = Arc::new(Shared {
            status: Mutex::new(DriverStatus {
                name: config.name.clone(),
                protocol: config.protocol.as_str(),
                connected: false,
                connects: 0,
                last_error: None,
                reads: 0,
                errors: 0,
                reads_per_sec: 0.0,
                p50_us: None,
                p99_us: None,
                writes: 0,
                write_errors: 0,
                published: 0,
                devices: config
                    .devices
                    .iter()
                    .map(|d| DeviceStatus {
                        name: d.name.clone(),
                        state: "pending",
                        reads: 0,
                        errors: 0,
                        points_read: 0,
                        bad_points: 0,
                        last_latency_us: None,
                        last_ok_ms: None,
                        last_error: None,
                    })
                    .collect(),
            }),
            latency: Histogram::default(),
            rate: Mutex::new(std::collections::VecDeque::new()),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(
            config.clone(),
            protocol,
            broker,
            shared.clone(),
            stopped,
        ));
        Driver {
            config,
            shared,
            stop,
            task: Mutex::new(Some(task)),
        }
    }

    /// Its config.
    pub fn config(&self) -> &DriverConfig {
        &self.config
    }

    /// Its status now.
    pub fn status(&self) -> DriverStatus {
        let mut s = lock(&self.shared.status).clone();
        s.p50_us = self.shared.latency.quantile_us(0.5);
        s.p99_us = self.shared.latency.quantile_us(0.99);
        let rate = lock(&self.shared.rate);
        if let (Some(first), Some(last)) = (rate.front(), rate.back()) {
            let secs = last.0.duration_since(first.0).as_secs_f64();
            if secs > 0.0 {
                s.reads_per_sec = (last.1 - first.1) as f64 / secs;
            }
        }
        s
    }

    /// Stop the task: a request in progress is abandoned (every protocol
    /// call is raced with the stop signal), the connection closed.
    pub async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = lock(&self.task).take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Per-device schedule, health and last published values.
struct DeviceState {
    /// Its next slot on its cadence: a read, or (while the connection is
    /// down or the device is backing off) a `bad` message.
    due: Instant,
    /// While the device is not answering: when to read it again and the
    /// backoff behind that (see `Retry`).
    retry: Option<(Instant, Backoff)>,
    /// Why it is bad, published with every `bad` message.
    error: Option<String>,
    last: HashMap<String, Value>,
}

impl DeviceState {
    /// Whether its slot at `now` may read the device.
    fn readable(&self, now: Instant) -> bool {
        self.retry.as_ref().is_none_or(|(at, _)| now >= *at)
    }
}

async fn run(
    cfg: DriverConfig,
    mut proto: Box<dyn Protocol>,
    broker: BrokerHandle,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    // A local writer's `…/commands/write`, and the node's device service's
    // `…/commands/{name}/{id}` (commands from the cloud).
    let filters: Vec<String> = cfg
        .devices
        .iter()
        .flat_map(|d| {
            [
                format!("devices/{}/commands/write", d.name),
                format!("devices/{}/commands/+/+", d.name),
            ]
        })
        .collect();
    let mut commands = match broker.subscribe_many(&filters, 256).await {
        Ok(s) => Some(s),
        Err(e) => {
            lock(&shared.status).last_error = Some(format!("cannot subscribe to commands: {e}"));
            None
        }
    };
    let start = Instant::now();
    let mut devices: Vec<DeviceState> = cfg
        .devices
        .iter()
        .map(|_| DeviceState {
            due: start,
            retry: None,
            error: None,
            last: HashMap::new(),
        })
        .collect();
    let mut connected = false;
    let mut reconnect = Backoff::new(cfg.retry.initial, cfg.retry.max);
    let mut reconnect_at = start;
    loop {
        if *stop.borrow() {
            return;
        }
        if !connected && Instant::now() >= reconnect_at {
            let attempt = tokio::select! {
                r = tokio::time::timeout(cfg.timeout * 5, proto.connect()) => r,
                _ = stop.changed() => return,
            };
            match attempt {
                Ok(Ok(())) => {
                    connected = true;
                    reconnect.reset();
                    let mut s = lock(&shared.status);
                    s.connected = true;
                    s.connects += 1;
                    s.last_error = None;
                    tracing::info!(driver = %cfg.name, "connected");
                }
                failed => {
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("connecting timed out after {:?}", cfg.timeout * 5),
                    };
                    let wait = reconnect.next_delay();
                    tracing::warn!(driver = %cfg.name, "{why}; retrying in {wait:?}");
                    for st in &mut devices {
                        st.error = Some(why.clone());
                    }
                    {
                        let mut st = lock(&shared.status);
                        for d in &mut st.devices {
                            d.state = "bad";
                            d.last_error = Some(why.clone());
                        }
                        st.last_error = Some(why);
                    }
                    reconnect_at = Instant::now() + wait;
                }
            }
            continue;
        }
        let Some((i, due)) = devices
            .iter()
            .enumerate()
            .map(|(i, d)| (i, d.due))
            .min_by_key(|&(_, due)| due)
        else {
            return;
        };
        let wake = if connected {
            due
        } else {
            due.min(reconnect_at)
        };
        // Due slots come before queued commands, so a flood of writes
        // cannot stop polling; every protocol call is raced with `stop`.
        let mut slot = false;
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = sleep_until(wake.into()) => slot = Instant::now() >= due,
            cmd = recv(&mut commands) => {
                let to = match Answer::of(&cmd.topic) {
                    Some(Answer::Other(to)) => {
                        let e = "a driver's device takes only the `write` command".to_owned();
                        answer(&broker, &cmd, &Answer::Other(to), Err(e)).await;
                        continue;
                    }
                    Some(to) => to,
                    None => continue,
                };
                let backing_off = command_device(&cfg, &cmd)
                    .is_some_and(|j| devices[j].retry.is_some());
                let r = if !connected {
                    Err(DriverError::Connection("the driver is not connected".into()))
                } else if backing_off {
                    Err(DriverError::Refused(
                        "the device is not answering; it is being retried with backoff".into(),
                    ))
                } else {
                    tokio::select! {
                        r = write(&cfg, proto.as_mut(), &cmd) => r,
                        _ = stop.changed() => return,
                    }
                };
                if connected
                    && let Err(e) = &r
                    && e.is_connection()
                {
                    connected = false;
                    lost(&cfg, &shared, &mut devices, e);
                }
                {
                    let mut s = lock(&shared.status);
                    match &r {
                        Ok(_) => s.writes += 1,
                        Err(_) => s.write_errors += 1,
                    }
                }
                answer(&broker, &cmd, &to, r.map_err(|e| e.to_string())).await;
            }
        }
        if !slot {
            continue;
        }
        let device = &cfg.devices[i];
        let st = &mut devices[i];
        st.due = next_due(due, device.poll);
        if !connected || !st.readable(Instant::now()) {
            // Not readable now: say so on its cadence, so that a consumer
            // can tell a dead device from a quiet one.
            let why = st.error.as_deref().unwrap_or("not connected");
            publish_bad(&broker, device, why).await;
            continue;
        }
        let t = Instant::now();
        let r = tokio::select! {
            r = proto.read(i, device) => r,
            _ = stop.changed() => return,
        };
        let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
        match r {
            Ok(results) if results.len() == device.points.len() => {
                shared.latency.record(us);
                st.retry = None;
                st.error = None;
                let published = publish(&broker, &cfg, i, st, results, &shared, us).await;
                if published {
                    lock(&shared.status).published += 1;
                }
            }
            other => {
                let e = match other {
                    Err(e) => e,
                    Ok(r) => DriverError::BadResponse(format!(
                        "{} results for {} points",
                        r.len(),
                        device.points.len()
                    )),
                };
                // A broken connection is the connection's backoff; a
                // device that does not answer backs off on its own.
                if !e.is_connection() {
                    let now = Instant::now();
                    let (at, backoff) = st.retry.get_or_insert_with(|| {
                        (now, Backoff::new(cfg.retry.initial, cfg.retry.max))
                    });
                    *at = now + backoff.next_delay();
                }
                st.error = Some(e.to_string());
                {
                    let mut s = lock(&shared.status);
                    s.errors += 1;
                    let d = &mut s.devices[i];
                    d.errors += 1;
                    d.state = "bad";
                    d.last_error = Some(e.to_string());
                    d.last_latency_us = Some(us);
                }
                tracing::debug!(driver = %cfg.name, device = %device.name, "read failed: {e}");
                publish_bad(&broker, device, &e.to_string()).await;
                if e.is_connection() {
                    connected = false;
                    lost(&cfg, &shared, &mut devices, &e);
                }
            }
        }
        let mut rate = lock(&shared.rate);
        let reads = lock(&shared.status).reads;
        rate.push_back((Instant::now(), reads));
        while rate
            .front()
            .is_some_and(|(t, _)| t.elapsed() > Duration::from_secs(10))
        {
            rate.pop_front();
        }
    }
}

/// The next time a device is due: on its cadence, skipping missed slots
/// rather than bursting to catch up.
fn next_due(prev: Instant, poll: Duration) -> Instant {
    let now = Instant::now();
    let mut next = prev + poll;
    if next <= now {
        let behind = now.duration_since(next).as_nanos() / poll.as_nanos().max(1);
        next += poll * (u32::try_from(behind).unwrap_or(u32::MAX).saturating_add(1));
    }
    next
}

fn lost(cfg: &DriverConfig, shared: &Shared, devices: &mut [DeviceState], e: &DriverError) {
    tracing::warn!(driver = %cfg.name, "connection lost: {e}");
    for st in devices {
        st.error = Some(e.to_string());
    }
    let mut s = lock(&shared.status);
    s.connected = false;
    s.last_error = Some(e.to_string());
    // No device can answer until the connection is back.
    for d in &mut s.devices {
        d.state = "bad";
        d.last_error = Some(e.to_string());
    }
}

async fn recv(sub: &mut Option<LocalSubscription>) -> Arc<Message> {
    match sub {
        Some(s) => match s.recv().await {
            Some(m) => m,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Publish one device's readings; `false` when nothing changed
/// (`changes_only`).
async fn publish(
    broker: &BrokerHandle,
    cfg: &DriverConfig,
    i: usize,
    st: &mut DeviceState,
    results: Vec<PointResult>,
    shared: &Shared,
    us: u64,
) -> bool {
    let device = &cfg.devices[i];
    let mut values = Map::new();
    let mut quality = Map::new();
    let mut errors = Map::new();
    let mut good = 0;
    for (p, r) in device.points.iter().zip(results) {
        match r {
            Ok(raw) => {
                let v = p.scaled(raw);
                let changed = match st.last.get(&p.name) {
                    None => true,
                    Some(old) => match (old.as_f64(), v.as_f64(), p.deadband) {
                        (Some(a), Some(b), Some(db)) => (a - b).abs() > db,
                        _ => *old != v,
                    },
                };
                good += 1;
                if !device.changes_only || changed {
                    if changed {
                        st.last.insert(p.name.clone(), v.clone());
                    }
                    values.insert(p.name.clone(), v);
                    quality.insert(p.name.clone(), "good".into());
                }
            }
            Err(e) => {
                quality.insert(p.name.clone(), "bad".into());
                errors.insert(p.name.clone(), e.message.into());
                st.last.remove(&p.name);
            }
        }
    }
    let bad = errors.len() as u64;
    {
        let mut s = lock(&shared.status);
        s.reads += 1;
        let d = &mut s.devices[i];
        d.reads += 1;
        d.points_read += good;
        d.bad_points = bad;
        d.state = "good";
        d.last_latency_us = Some(us);
        d.last_ok_ms = Some(now_ms());
        // The last error is the current one: cleared once every point
        // answers again.
        d.last_error = errors
            .iter()
            .next()
            .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or_default()));
    }
    if quality.is_empty() {
        return false;
    }
    let mut doc = json!({"ts": now_ms(), "values": values, "quality": quality});
    if !errors.is_empty() {
        doc["errors"] = Value::Object(errors);
    }
    send(broker, &format!("devices/{}/telemetry", device.name), doc).await;
    true
}

/// A device that cannot be read (it did not answer, or the connection is
/// down): every point bad, with the reason.
async fn publish_bad(broker: &BrokerHandle, device: &crate::config::DeviceConfig, e: &str) {
    let quality: Map<String, Value> = device
        .points
        .iter()
        .map(|p| (p.name.clone(), Value::from("bad")))
        .collect();
    let doc = json!({"ts": now_ms(), "values": {}, "quality": quality, "error": e});
    send(broker, &format!("devices/{}/telemetry", device.name), doc).await;
}

async fn send(broker: &BrokerHandle, topic: &str, doc: Value) {
    let mut m = Message::local(topic, doc.to_string(), QoS::AtLeastOnce, false);
    m.origin = Arc::from("$driver");
    m.properties.content_type = Some("application/json".into());
    if let Err(e) = broker.publish(m).await {
        tracing::warn!("driver publish to {topic}: {e}");
    }
}

/// The index of the device a command's topic names.
fn command_device(cfg: &DriverConfig, cmd: &Message) -> Option<usize> {
    let name = cmd.topic.split('/').nth(1)?;
    cfg.devices.iter().position(|d| d.name == name)
}

/// Carry out a write command.
async fn write(
    cfg: &DriverConfig,
    proto: &mut dyn Protocol,
    cmd: &Message,
) -> Result<Value, DriverError> {
    let req: Value = serde_json::from_slice(&cmd.payload)
        .map_err(|e| DriverError::Invalid(format!("the command is not JSON: {e}")))?;
    let point = req
        .get("point")
        .and_then(Value::as_str)
        .ok_or_else(|| DriverError::Invalid("`point` (a string) is missing".into()))?;
    let value = req
        .get("value")
        .filter(|v| !v.is_null())
        .ok_or_else(|| DriverError::Invalid("`value` is missing".into()))?;
    let device_name = cmd.topic.split('/').nth(1).unwrap_or_default();
    let (i, device) = cfg
        .devices
        .iter()
        .enumerate()
        .find(|(_, d)| d.name == device_name)
        .ok_or_else(|| DriverError::Invalid(format!("no device {device_name:?}")))?;
    let p = device
        .points
        .iter()
        .find(|p| p.name == point)
        .ok_or_else(|| {
            DriverError::Invalid(format!("device {device_name:?} has no point {point:?}"))
        })?;
    if p.access != Access::Rw {
        return Err(DriverError::Invalid(format!(
            "point {point:?} is read-only"
        )));
    }
    let raw = p.unscaled(value);
    // The reply carries the value the device was given, in published
    // terms (what the next telemetry shows), not the one asked for.
    let written = proto
        .write(i, device, p, raw.clone())
        .await
        .map_err(|e| match e {
            DriverError::Invalid(m) if raw != *value => DriverError::Invalid(format!(
                "{m} ({value} is {raw} on the device, with scale and offset undone)"
            )),
            e => e,
        })?;
    Ok(p.scaled(written))
}

/// Where a command is answered, by the topic it came on.
#[derive(Debug, PartialEq)]
enum Answer {
    /// `devices/{d}/commands/write` (a local writer): on `<topic>/reply`.
    Local,
    /// `devices/{d}/commands/write/{id}` (the node's device service, a
    /// command from the cloud): on `devices/{d}/replies/{id}`, or
    /// `…/replies/{id}/failed` with the reason (the contract's reply
    /// topics, `verge_protocol::device::reply_topic`).
    Command(String),
    /// Another command name for a driver's device: refused on the
    /// failed-reply topic (its id given).
    Other(String),
}

impl Answer {
    /// `None`: not a command (the `…/commands/write/reply` a local write
    /// is answered on also matches `…/commands/+/+`).
    fn of(topic: &str) -> Option<Answer> {
        let mut parts = topic.split('/');
        let (Some("devices"), Some(device), Some("commands"), Some(name)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let replies = |id: &str| format!("devices/{device}/replies/{id}");
        match (name, parts.next(), parts.next()) {
            ("write", None, _) => Some(Answer::Local),
            ("write", Some("reply"), None) => None,
            ("write", Some(id), None) if !id.is_empty() => Some(Answer::Command(replies(id))),
            (_, Some(id), None) if !id.is_empty() => Some(Answer::Other(replies(id))),
            _ => None,
        }
    }
}

/// Answer a write command: a local writer's on `<topic>/reply`, echoing
/// its `id` if any; a command of the node's device service on its reply
/// topic (the reason as a JSON string when it failed).
async fn answer(broker: &BrokerHandle, cmd: &Message, to: &Answer, r: Result<Value, String>) {
    if let Answer::Command(reply) | Answer::Other(reply) = to {
        let req: Value = serde_json::from_slice(&cmd.payload).unwrap_or(Value::Null);
        match r {
            Ok(v) => {
                let doc = json!({"point": req.get("point").cloned().unwrap_or(Value::Null),
                                 "ok": true, "value": v});
                send(broker, reply, doc).await;
            }
            Err(e) => send(broker, &format!("{reply}/failed"), Value::String(e)).await,
        }
        return;
    }
    let req: Value = serde_json::from_slice(&cmd.payload).unwrap_or(Value::Null);
    let mut doc = json!({"point": req.get("point").cloned().unwrap_or(Value::Null)});
    if let Some(id) = req.get("id") {
        doc["id"] = id.clone();
    }
    match r {
        Ok(v) => {
            doc["ok"] = true.into();
            doc["value"] = v;
        }
        Err(e) => {
            doc["ok"] = false.into();
            doc["error"] = e.into();
        }
    }
    send(broker, &format!("{}/reply", cmd.topic), doc).await;
}

/// The node's running drivers, by name.
pub struct Drivers {
    broker: BrokerHandle,
    running: RwLock<HashMap<String, Arc<Driver>>>,
    pki_root: Option<std::path::PathBuf>,
    /// One create or delete at a time (the node's API and the cloud agent
    /// both change the set): the device check, the stop of the old driver
    /// and the start of the new one are one step.
    changes: tokio::sync::Mutex<()>,
}

impl Drivers {
    /// No drivers yet.
    pub fn new(broker: BrokerHandle) -> Drivers {
        Drivers {
            broker,
            running: RwLock::new(HashMap::new()),
            pki_root: None,
            changes: tokio::sync::Mutex::new(()),
        }
    }

    /// OPC UA drivers without a `pki_dir` keep their certificates under
    /// `<root>/<driver name>` (the node passes `<data_dir>/opcua-pki`).
    pub fn with_pki_root(mut self, root: std::path::PathBuf) -> Drivers {
        self.pki_root = Some(root);
        self
    }

    /// The root of the OPC UA drivers' default certificate folders.
    pub fn pki_root(&self) -> Option<&std::path::Path> {
        self.pki_root.as_deref()
    }

    /// `config` as [`Drivers::create`] runs it: an OPC UA driver without a
    /// `pki_dir` gets `<pki root>/<name>`. What [`Drivers::get`] shows of a
    /// driver created from `config` is this, so a caller compares with it
    /// to tell whether a driver runs as asked.
    pub fn with_defaults(&self, mut config: DriverConfig) -> DriverConfig {
        if config.pki_dir.is_none()
            && config.protocol == crate::config::ProtocolKind::Opcua
            && let Some(root) = &self.pki_root
        {
            config.pki_dir = Some(root.join(&config.name).display().to_string());
        }
        config
    }

    /// Start a driver; one of the same name is stopped first (so the two
    /// never share a connection or execute the same write). A device name
    /// used by another driver is refused: both would publish to and take
    /// commands from the same topics.
    pub async fn create(&self, config: DriverConfig) -> Result<DriverStatus, String> {
        let _one = self.changes.lock().await;
        let config = self.with_defaults(config);
        config.validate()?;
        {
            let running = self.running.read().unwrap_or_else(|p| p.into_inner());
            for (other, d) in running.iter().filter(|(n, _)| **n != config.name) {
                if let Some(dev) = d
                    .config()
                    .devices
                    .iter()
                    .find(|dev| config.devices.iter().any(|c| c.name == dev.name))
                {
                    return Err(format!(
                        "devices: device {:?} is already read by driver `{other}`",
                        dev.name
                    ));
                }
            }
        }
        // Checked (addresses, types) before the old one is stopped.
        let protocol = protocol::build(&config)?;
        let name = config.name.clone();
        let old = self
            .running
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name);
        if let Some(old) = old {
            old.stop().await;
        }
        let d = Arc::new(Driver::start_with(config, protocol, self.broker.clone()));
        let status = d.status();
        self.running
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, d);
        Ok(status)
    }

    /// Stop and remove a driver; whether it existed.
    pub async fn delete(&self, name: &str) -> bool {
        let _one = self.changes.lock().await;
        let old = self
            .running
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        match old {
            Some(d) => {
                d.stop().await;
                true
            }
            None => false,
        }
    }

    /// One driver's config and status.
    pub fn get(&self, name: &str) -> Option<(DriverConfig, DriverStatus)> {
        let d = self
            .running
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()?;
        Some((d.config().clone(), d.status()))
    }

    /// Whether a running driver reads `device` (its commands from the
    /// cloud are handed to the driver in process).
    pub fn owns_device(&self, device: &str) -> bool {
        self.running
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .any(|d| d.config().devices.iter().any(|x| x.name == device))
    }

    /// Every driver's status, by name.
    pub fn list(&self) -> Vec<DriverStatus> {
        let all: Vec<Arc<Driver>> = self
            .running
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let mut out: Vec<DriverStatus> = all.iter().map(|d| d.status()).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Stop every driver.
    pub async fn shutdown(&self) {
        let all: Vec<Arc<Driver>> = self
            .running
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, d)| d)
            .collect();
        for d in all {
            d.stop().await;
        }
    }

    /// Prometheus text for every driver and device.
    pub fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write;
        let all = self.list();
        if all.is_empty() {
            return;
        }
        let l = verge_metrics::label;
        let _ = writeln!(
            out,
            "# HELP verge_driver_connected Whether the driver's connection is up."
        );
        let _ = writeln!(out, "# TYPE verge_driver_connected gauge");
        for d in &all {
            let _ = writeln!(
                out,
                "verge_driver_connected{{driver=\"{}\"}} {}",
                l(&d.name),
                u8::from(d.connected)
            );
        }
        for (metric, help) in [
            ("reads", "Device reads that answered."),
            ("errors", "Device reads that failed."),
            ("writes", "Point writes done."),
            ("write_errors", "Point writes that failed."),
        ] {
            let _ = writeln!(out, "# HELP verge_driver_{metric}_total {help}");
            let _ = writeln!(out, "# TYPE verge_driver_{metric}_total counter");
            for d in &all {
                let v = match metric {
                    "reads" => d.reads,
                    "errors" => d.errors,
                    "writes" => d.writes,
                    _ => d.write_errors,
                };
                let _ = writeln!(
                    out,
                    "verge_driver_{metric}_total{{driver=\"{}\"}} {v}",
                    l(&d.name)
                );
            }
        }
        for (metric, help) in [
            (
                "reads_per_second",
                "Device reads per second over the last 10 s.",
            ),
            ("read_latency_p50_seconds", "Median device read duration."),
            (
                "read_latency_p99_seconds",
                "99th percentile device read duration.",
            ),
        ] {
            let _ = writeln!(out, "# HELP verge_driver_{metric} {help}");
            let _ = writeln!(out, "# TYPE verge_driver_{metric} gauge");
            for d in &all {
                let v = match metric {
                    "reads_per_second" => d.reads_per_sec,
                    "read_latency_p50_seconds" => d.p50_us.unwrap_or(0) as f64 / 1e6,
                    _ => d.p99_us.unwrap_or(0) as f64 / 1e6,
                };
                let _ = writeln!(
                    out,
                    "verge_driver_{metric}{{driver=\"{}\"}} {v}",
                    l(&d.name)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP verge_driver_device_errors_total Reads of the device that failed."
        );
        let _ = writeln!(out, "# TYPE verge_driver_device_errors_total counter");
        for d in &all {
            for dev in &d.devices {
                let _ = writeln!(
                    out,
                    "verge_driver_device_errors_total{{driver=\"{}\",device=\"{}\"}} {}",
                    l(&d.name),
                    l(&dev.name),
                    dev.errors
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP verge_driver_device_good Whether the device's last read answered."
        );
        let _ = writeln!(out, "# TYPE verge_driver_device_good gauge");
        for d in &all {
            for dev in &d.devices {
                let _ = writeln!(
                    out,
                    "verge_driver_device_good{{driver=\"{}\",device=\"{}\"}} {}",
                    l(&d.name),
                    l(&dev.name),
                    u8::from(dev.state == "good")
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP verge_driver_device_reads_total Reads of the device that answered."
        );
        let _ = writeln!(out, "# TYPE verge_driver_device_reads_total counter");
        for d in &all {
            for dev in &d.devices {
                let _ = writeln!(
                    out,
                    "verge_driver_device_reads_total{{driver=\"{}\",device=\"{}\"}} {}",
                    l(&d.name),
                    l(&dev.name),
                    dev.reads
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_answered_where_they_came_from() {
        assert_eq!(Answer::of("devices/m/commands/write"), Some(Answer::Local));
        assert_eq!(
            Answer::of("devices/m/commands/write/c1"),
            Some(Answer::Command("devices/m/replies/c1".into()))
        );
        assert_eq!(
            Answer::of("devices/m/commands/reboot/c2"),
            Some(Answer::Other("devices/m/replies/c2".into()))
        );
        // the local answer, which `…/commands/+/+` also matches
        assert_eq!(Answer::of("devices/m/commands/write/reply"), None);
        assert_eq!(Answer::of("devices/m/commands/write/a/b"), None);
        assert_eq!(Answer::of("devices/m/telemetry"), None);
    }
}

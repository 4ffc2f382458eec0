//! The node's device service: device shadows over MQTT (and CoAP through
//! the gateway's publish path and retained documents), commands held for
//! devices and delivered when they connect, replies and statuses, shadow
//! sync with the cloud through the cache queue, and device sessions for the
//! heartbeat.
//!
//! It attaches to the broker in process (one subscription to the shadow
//! request topics, the device replies and the node-local `$verge/shadow/+`,
//! `$verge/commands/+` and `$verge/store-query/+` the bridge publishes
//! downstream messages on, and the broker's connect/disconnect events) and
//! runs as one task, so shadows and commands have one owner; a store query
//! runs beside it (at most [`MAX_STORE_QUERIES`] at a time) and its answer
//! goes up as a `StoreReply`. Upstream messages (`ShadowSync`,
//! `CommandStatus`, `StoreReply`) are appended straight to the cache queue on the
//! `alarms` lane when the queue has one, else its first lane, so they
//! survive a kill -9 like any queued message and leave before telemetry.
//!
//! Topics and the conflict rule are `verge_protocol::device`'s; the files
//! are `<data_dir>/devices/shadows/{device}.json` and
//! `<data_dir>/devices/commands.json`.

mod commands;
mod history;
mod sessions;
mod shadow;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use verge_broker::{Authenticator, BrokerHandle, LocalSubscription, Message};
use verge_mqtt::{Properties, QoS};
use verge_protocol::device::{
    self, COMMAND_ID_PROPERTY, CommandRequest, CommandState, CommandStatus, DeviceChannel,
    DeviceSession, Shadow, ShadowError, ShadowRejection, ShadowSync, ShadowTopic, ShadowUpdate,
};
use verge_queue::{Queue, Record};
use verge_tsdb::Tsdb;

pub use commands::{MAX_BYTES, MAX_COMMANDS, MAX_FINISHED, MAX_OUTBOX, MAX_PER_DEVICE};
pub use shadow::{MAX_SHADOWS, UpdateError, valid_device};

use commands::{Commands, Taken};
use sessions::Presence;
use shadow::Shadows;

/// How long after a device connects its held commands are handed over:
/// time for a client that starts a clean session to subscribe again.
pub const DELIVER_AFTER_CONNECT: Duration = Duration::from_millis(1000);
/// How long a delivered command waits for its reply before it is handed
/// to the still-connected device again (at least once: a device that
/// subscribed late, or lost it, gets it; the SDKs drop a known id).
pub const REDELIVER_AFTER: Duration = Duration::from_secs(30);
/// Depth of the service's broker subscription (a full one drops and
/// counts; the cloud resends commands and shadows it is not told of).
const QUEUE_DEPTH: usize = 4096;
/// Store queries from the cloud answered at a time; one past it is
/// answered with an error at once.
pub const MAX_STORE_QUERIES: usize = 4;

/// What the device service needs.
pub struct DevicesOptions {
    /// The node's data dir; the service keeps `devices/` under it.
    pub data_dir: PathBuf,
    /// The cache queue, when the node has a cloud link: statuses and
    /// shadows go upstream through it. None: nothing goes upstream.
    pub queue: Option<Queue>,
    /// The broker's authenticator, to know the node's devices.
    pub auth: Authenticator,
    /// The local time-series store, when the node has one: the cloud's
    /// store queries read it.
    pub store: Option<Arc<Tsdb>>,
}

/// Why the service did not start.
#[derive(Debug, thiserror::Error)]
pub enum DevicesError {
    /// Its directory or files.
    #[error("devices: {0}")]
    Io(String),
    /// The broker is gone.
    #[error("devices: {0}")]
    Broker(#[from] verge_broker::BrokerError),
}

/// The service's counters.
#[derive(Debug, Default, Serialize)]
pub struct DevicesStats {
    /// Shadow requests answered.
    pub shadow_requests: AtomicU64,
    /// Cloud shadows merged.
    pub cloud_shadows: AtomicU64,
    /// Commands taken from the cloud (resends included).
    pub commands: AtomicU64,
    /// Command hand-overs to devices.
    pub deliveries: AtomicU64,
    /// Upstream appends that failed (queue full or closed).
    pub upstream_failed: AtomicU64,
    /// Messages ignored: a `$verge/…` one not from the bridge, or one that
    /// did not parse.
    pub ignored: AtomicU64,
    /// Messages dropped because the service's subscription queue was full.
    pub dropped: AtomicU64,
    /// Shadows kept (a gauge, updated every 250 ms).
    pub shadows: AtomicU64,
    /// Commands held (a gauge, updated every 250 ms).
    pub held_commands: AtomicU64,
    /// Store queries from the cloud answered (with points or an error).
    pub store_queries: AtomicU64,
}

impl DevicesStats {
    /// Append the counters as `verge_devices_*` Prometheus metrics.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let rows: [(&str, &str, &str, &AtomicU64); 10] = [
            (
                "shadow_requests_total",
                "counter",
                "shadow get/update requests",
                &self.shadow_requests,
            ),
            (
                "cloud_shadows_total",
                "counter",
                "shadow copies from the cloud",
                &self.cloud_shadows,
            ),
            (
                "commands_total",
                "counter",
                "commands from the cloud, resends included",
                &self.commands,
            ),
            (
                "deliveries_total",
                "counter",
                "commands handed to device connections",
                &self.deliveries,
            ),
            (
                "upstream_failed_total",
                "counter",
                "upstream appends that failed",
                &self.upstream_failed,
            ),
            (
                "ignored_total",
                "counter",
                "messages ignored (not from the cloud link, or unparsable)",
                &self.ignored,
            ),
            (
                "dropped_total",
                "counter",
                "messages dropped on a full subscription queue",
                &self.dropped,
            ),
            (
                "store_queries_total",
                "counter",
                "store queries from the cloud answered",
                &self.store_queries,
            ),
            ("shadows", "gauge", "shadows kept", &self.shadows),
            (
                "held_commands",
                "gauge",
                "commands held for devices",
                &self.held_commands,
            ),
        ];
        for (name, kind, help, v) in rows {
            let _ = writeln!(
                out,
                "# HELP verge_devices_{name} The device service: {help}."
            );
            let _ = writeln!(out, "# TYPE verge_devices_{name} {kind}");
            let _ = writeln!(out, "verge_devices_{name} {}", v.load(Ordering::Relaxed));
        }
    }
}

/// The running device service; cheap to clone.
#[derive(Clone)]
pub struct Devices {
    inner: Arc<Inner>,
}

struct Inner {
    broker: BrokerHandle,
    queue: Option<Queue>,
    lane: String,
    auth: Authenticator,
    store: Option<Arc<Tsdb>>,
    /// Permits for store queries running beside the task.
    store_queries: Arc<tokio::sync::Semaphore>,
    state: tokio::sync::Mutex<State>,
    presence: Mutex<Presence>,
    /// The cloud's devices (`None` until the agent says: not managed).
    cloud: RwLock<Option<HashSet<String>>>,
    endpoints: Mutex<Vec<String>>,
    stats: DevicesStats,
    stop: tokio::sync::Notify,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Bumped when a cloud device connects or disconnects (the agent
    /// reports it at once).
    changes: tokio::sync::watch::Sender<u64>,
    /// Whether a running protocol driver reads a device (its commands are
    /// handed to the driver in process, so it counts as connected).
    drivers: RwLock<Option<DriverDevices>>,
    /// Devices whose shadow the cache queue refused: sent again on the tick.
    dirty: Mutex<HashSet<String>>,
    /// One outbox flush at a time (statuses leave in order).
    flushing: tokio::sync::Mutex<()>,
    /// Whether the last upstream append failed (one warning per streak).
    up_failing: std::sync::atomic::AtomicBool,
    /// Devices whose ignored cloud shadow was logged (once each).
    ignored_shadows: Mutex<HashSet<String>>,
}

/// See [`Devices::set_driver_devices`].
type DriverDevices = Arc<dyn Fn(&str) -> bool + Send + Sync>;

struct State {
    shadows: Shadows,
    commands: Commands,
    /// Devices whose held commands are due at the instant.
    due: Vec<(Instant, String)>,
}

fn now_ms() -> u64 {
    u64::try_from(verge_net::now_ms()).unwrap_or(0)
}

impl Devices {
    /// Open the stores under `<data_dir>/devices`, subscribe and start the
    /// service's task.
    pub async fn start(
        broker: BrokerHandle,
        opts: DevicesOptions,
    ) -> Result<Devices, DevicesError> {
        let dir = opts.data_dir.join("devices");
        let (shadows, commands) = tokio::task::spawn_blocking(move || {
            verge_net::fs::create_private_dir(&dir)
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            let shadows = Shadows::load(&dir.join("shadows"))
                .map_err(|e| format!("{}: {e}", dir.join("shadows").display()))?;
            Ok::<_, String>((shadows, Commands::load(&dir.join("commands.json"))))
        })
        .await
        .map_err(|e| DevicesError::Io(e.to_string()))?
        .map_err(DevicesError::Io)?;
        let lane = opts
            .queue
            .as_ref()
            .map(|q| {
                let lanes = q.lanes();
                if lanes.iter().any(|l| l == "alarms") {
                    "alarms".to_owned()
                } else {
                    lanes.first().cloned().unwrap_or_default()
                }
            })
            .unwrap_or_default();
        let mut filters: Vec<String> = device::SHADOW_REQUEST_FILTERS
            .iter()
            .map(|f| (*f).to_owned())
            .collect();
        filters.push(DeviceChannel::Shadow.filter());
        filters.push(DeviceChannel::Command.filter());
        filters.push(DeviceChannel::StoreQuery.filter());
        filters.push(device::ALL_REPLIES_FILTER.to_owned());
        // Events first, then the list: no change falls between the two.
        let events = broker.session_events();
        let sub = broker.subscribe_many(&filters, QUEUE_DEPTH).await?;
        let list = broker.sessions().await?;
        let mut presence = Presence::default();
        presence.resync(list, now_ms());
        let inner = Arc::new(Inner {
            broker,
            queue: opts.queue,
            lane,
            auth: opts.auth,
            store: opts.store,
            store_queries: Arc::new(tokio::sync::Semaphore::new(MAX_STORE_QUERIES)),
            state: tokio::sync::Mutex::new(State {
                shadows,
                commands,
                due: Vec::new(),
            }),
            presence: Mutex::new(presence),
            cloud: RwLock::new(None),
            endpoints: Mutex::new(Vec::new()),
            stats: DevicesStats::default(),
            stop: tokio::sync::Notify::new(),
            task: Mutex::new(None),
            changes: tokio::sync::watch::channel(0).0,
            drivers: RwLock::new(None),
            dirty: Mutex::new(HashSet::new()),
            flushing: tokio::sync::Mutex::new(()),
            up_failing: std::sync::atomic::AtomicBool::new(false),
            ignored_shadows: Mutex::new(HashSet::new()),
        });
        // The retained documents (the broker keeps none across a
        // restart), then held commands for the devices connected now.
        {
            let docs: Vec<(String, Vec<u8>)> = inner
                .state
                .lock()
                .await
                .shadows
                .all()
                .map(|(d, doc)| (ShadowTopic::Document.topic(d), document(doc, None)))
                .collect();
            for (topic, payload) in docs {
                inner.publish(topic, payload, true).await;
            }
            let connected: Vec<String> = inner
                .presence
                .lock()
                .map(|p| p.sessions(|_| true))
                .unwrap_or_default()
                .into_iter()
                .filter(|s| s.connected)
                .map(|s| s.device)
                .collect();
            let mut st = inner.state.lock().await;
            let at = Instant::now() + DELIVER_AFTER_CONNECT;
            st.due.extend(connected.into_iter().map(|d| (at, d)));
        }
        let task = tokio::spawn(run(inner.clone(), sub, events));
        if let Ok(mut t) = inner.task.lock() {
            *t = Some(task);
        }
        Ok(Devices { inner })
    }

    /// Stop the task (what it holds is on disk already).
    pub async fn stop(&self) {
        self.inner.stop.notify_one();
        let task = self.inner.task.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = task {
            let _ = t.await;
        }
    }

    /// The service's counters.
    pub fn stats(&self) -> &DevicesStats {
        &self.inner.stats
    }

    /// The cache queue lane upstream messages go to (empty without a
    /// queue).
    pub fn lane(&self) -> &str {
        &self.inner.lane
    }

    /// The broker's addresses, for the heartbeat (set by `Node::serve`).
    pub fn set_endpoints(&self, endpoints: Vec<String>) {
        if let Ok(mut e) = self.inner.endpoints.lock() {
            *e = endpoints;
        }
    }

    /// Which devices the cloud manages (their shadows sync with it). A
    /// device newly listed (each one, the first time after the node
    /// started) has its shadow sent up, so a change made before the node
    /// knew it was the cloud's is not kept back until the next one. A
    /// device no longer listed is forgotten: its held commands are
    /// reported `failed` ("device removed"), its shadow (file and retained
    /// document) and its last session are dropped, so a device created
    /// again with the same name starts clean.
    pub fn set_cloud_devices(&self, devices: impl IntoIterator<Item = String>) {
        let next: HashSet<String> = devices.into_iter().collect();
        let (newly, removed): (Vec<String>, Vec<String>) = match self.inner.cloud.write() {
            Ok(mut c) => {
                let newly = next
                    .iter()
                    .filter(|d| c.as_ref().is_none_or(|old| !old.contains(*d)))
                    .cloned()
                    .collect();
                let removed = c
                    .as_ref()
                    .map(|old| old.difference(&next).cloned().collect())
                    .unwrap_or_default();
                *c = Some(next);
                (newly, removed)
            }
            Err(_) => return,
        };
        let newly: Vec<String> = match self.inner.queue.is_some() {
            true => newly,
            false => Vec::new(),
        };
        if newly.is_empty() && removed.is_empty() {
            return;
        }
        let inner = self.inner.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if !removed.is_empty() {
                    inner.remove_devices(&removed).await;
                }
                // Read under the lock, sent without it (the queue may be
                // slow; the service's task needs the lock meanwhile).
                let docs: Vec<(String, Shadow)> = {
                    let st = inner.state.lock().await;
                    newly
                        .into_iter()
                        .filter(|d| st.shadows.has(d))
                        .map(|d| {
                            let doc = st.shadows.get(&d);
                            (d, doc)
                        })
                        .collect()
                };
                for (d, doc) in docs {
                    inner.sync_up(&d, &doc).await;
                }
            });
        }
    }

    /// Tell the service which devices running protocol drivers read (the
    /// node passes [`verge_drivers::Drivers::owns_device`]): such a device
    /// has no MQTT session, its commands are handed to its driver in
    /// process (the driver takes `write` and answers on the reply topics).
    pub fn set_driver_devices(&self, owns: impl Fn(&str) -> bool + Send + Sync + 'static) {
        if let Ok(mut d) = self.inner.drivers.write() {
            *d = Some(Arc::new(owns));
        }
    }

    /// The device's shadow (empty, version 0, when it has none).
    pub async fn shadow(&self, device: &str) -> Result<Shadow, ShadowError> {
        if !valid_device(device) {
            return Err(ShadowError::Invalid(format!(
                "`{device}` is not a device name"
            )));
        }
        Ok(self.inner.state.lock().await.shadows.get(device))
    }

    /// Change the device's shadow as a local app would (the node's HTTP
    /// API): the same path as a device's update, so the device is told the
    /// delta and the cloud gets the node's copy.
    pub async fn update_shadow(
        &self,
        device: &str,
        update: &ShadowUpdate,
    ) -> Result<Shadow, UpdateError> {
        self.inner.update(device, update, false).await
    }

    /// How many shadows and held commands the node keeps.
    pub async fn counts(&self) -> (usize, usize) {
        let st = self.inner.state.lock().await;
        (st.shadows.len(), st.commands.len())
    }

    /// Whether the device has a connection now.
    pub fn connected(&self, device: &str) -> bool {
        self.inner
            .presence
            .lock()
            .is_ok_and(|p| p.connected(device))
    }
}

impl verge_agent::DeviceHost for Devices {
    fn set_cloud_devices(&self, devices: Vec<String>) {
        Devices::set_cloud_devices(self, devices);
    }

    fn sessions(&self) -> Vec<DeviceSession> {
        let cloud = self.inner.cloud.read().ok().and_then(|c| c.clone());
        let Some(cloud) = cloud else {
            return Vec::new();
        };
        self.inner
            .presence
            .lock()
            .map(|p| p.sessions(|d| cloud.contains(d)))
            .unwrap_or_default()
    }

    fn endpoints(&self) -> Vec<String> {
        self.inner
            .endpoints
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.inner.changes.subscribe())
    }
}

/// The service's task.
async fn run(
    inner: Arc<Inner>,
    mut sub: LocalSubscription,
    mut events: tokio::sync::broadcast::Receiver<verge_broker::SessionEvent>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut events_open = true;
    loop {
        tokio::select! {
            _ = inner.stop.notified() => return,
            m = sub.recv() => match m {
                Some(m) => inner.on_message(&m).await,
                None => return,
            },
            e = events.recv(), if events_open => match e {
                Ok(e) => {
                    if e.username.as_deref().is_some_and(|u| inner.is_listed(u)) {
                        inner.changes.send_modify(|n| *n = n.wrapping_add(1));
                    }
                    let first = inner.presence.lock().ok().and_then(|mut p| p.on_event(&e));
                    if let Some(device) = first {
                        let at = Instant::now() + DELIVER_AFTER_CONNECT;
                        inner.state.lock().await.due.push((at, device));
                    }
                }
                Err(RecvError::Lagged(_)) => inner.resync().await,
                Err(RecvError::Closed) => events_open = false,
            },
            _ = tick.tick() => {
                inner.stats.dropped.store(sub.dropped(), Ordering::Relaxed);
                inner.on_tick().await;
            }
        }
    }
}

impl Inner {
    /// Whether `device`'s shadow syncs with the cloud: the cloud lists it
    /// and there is a queue to send through.
    fn is_cloud_device(&self, device: &str) -> bool {
        self.queue.is_some() && self.is_listed(device)
    }

    /// Whether commands can be handed to `device` now: it has an MQTT
    /// connection, or a running driver reads it.
    fn connected(&self, device: &str) -> bool {
        self.presence.lock().is_ok_and(|p| p.connected(device)) || self.driven(device)
    }

    fn driven(&self, device: &str) -> bool {
        let owns = self.drivers.read().ok().and_then(|d| d.clone());
        owns.is_some_and(|owns| owns(device))
    }

    /// Forget devices the cloud no longer lists (see
    /// [`Devices::set_cloud_devices`]).
    async fn remove_devices(&self, removed: &[String]) {
        let mut had_shadow = Vec::new();
        {
            let mut st = self.state.lock().await;
            for d in removed {
                for h in st.commands.remove_device(d) {
                    self.status(
                        &mut st,
                        d,
                        &h.request.id,
                        CommandState::Failed,
                        None,
                        Some("device removed".into()),
                    );
                }
                if st.shadows.remove(d).await {
                    had_shadow.push(d.clone());
                }
            }
            st.commands.save_logged().await;
        }
        for d in removed {
            if let Ok(mut p) = self.presence.lock() {
                p.forget(d);
            }
            if let Ok(mut dirty) = self.dirty.lock() {
                dirty.remove(d);
            }
        }
        // An empty retained message clears the retained document.
        for d in had_shadow {
            self.publish(ShadowTopic::Document.topic(&d), Vec::new(), true)
                .await;
        }
        self.flush().await;
    }

    /// Whether the cloud lists `device` (queue or not).
    fn is_listed(&self, device: &str) -> bool {
        self.cloud
            .read()
            .is_ok_and(|c| c.as_ref().is_some_and(|c| c.contains(device)))
    }

    async fn resync(&self) {
        let Ok(list) = self.broker.sessions().await else {
            return;
        };
        let newly: Vec<String> = {
            let Ok(mut p) = self.presence.lock() else {
                return;
            };
            let before: HashSet<String> = p
                .sessions(|_| true)
                .into_iter()
                .filter(|s| s.connected)
                .map(|s| s.device)
                .collect();
            p.resync(list, now_ms());
            p.sessions(|_| true)
                .into_iter()
                .filter(|s| s.connected && !before.contains(&s.device))
                .map(|s| s.device)
                .collect()
        };
        let at = Instant::now() + DELIVER_AFTER_CONNECT;
        self.state
            .lock()
            .await
            .due
            .extend(newly.into_iter().map(|d| (at, d)));
    }

    async fn on_message(self: &Arc<Self>, m: &Message) {
        self.handle(m).await;
        self.flush().await;
    }

    async fn handle(self: &Arc<Self>, m: &Message) {
        if let Some((d, op)) = device::parse_shadow_topic(&m.topic) {
            self.stats.shadow_requests.fetch_add(1, Ordering::Relaxed);
            match op {
                ShadowTopic::Get => self.on_get(d, &m.payload).await,
                ShadowTopic::Update => self.on_update(d, &m.payload).await,
                _ => {}
            }
            return;
        }
        if let Some((d, id, failed)) = device::parse_reply_topic(&m.topic) {
            self.on_reply(d, id, failed, &m.payload).await;
            return;
        }
        if let Some((kind, d)) = device::parse_device_channel(&m.topic) {
            // Only the bridge speaks for the cloud.
            if &*m.origin != verge_bridge::ORIGIN {
                self.stats.ignored.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(topic = %m.topic, origin = %m.origin, "device channel message not from the cloud link; ignored");
                return;
            }
            match kind {
                DeviceChannel::Shadow => self.on_cloud_shadow(d, &m.payload).await,
                DeviceChannel::Command => self.on_command(d, &m.payload).await,
                DeviceChannel::StoreQuery => self.on_store_query(d, &m.payload),
                _ => {}
            }
        }
    }

    /// A store query from the cloud: answered beside the task (it reads
    /// files), its reply appended upstream.
    fn on_store_query(self: &Arc<Self>, device: &str, payload: &[u8]) {
        let q: device::StoreQuery = match serde_json::from_slice(payload) {
            Ok(q) => q,
            Err(e) => {
                self.stats.ignored.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(device, "store query does not parse: {e}");
                return;
            }
        };
        if q.device != device || q.id.is_empty() || q.id.len() > 128 {
            self.stats.ignored.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                device,
                "store query names another device or has no id of 1 to 128 bytes; ignored"
            );
            return;
        }
        self.stats.store_queries.fetch_add(1, Ordering::Relaxed);
        let topic = DeviceChannel::StoreReply.topic(device);
        let Ok(permit) = self.store_queries.clone().try_acquire_owned() else {
            let reply = device::StoreReply {
                id: q.id,
                device: q.device,
                error: Some(format!(
                    "the node is answering {MAX_STORE_QUERIES} store queries already; try again"
                )),
                ..device::StoreReply::default()
            };
            let inner = self.clone();
            // A reply is not retried: the cloud waits for it 10 s at most.
            tokio::spawn(async move {
                inner.append_up(topic, json_bytes(&reply)).await;
            });
            return;
        };
        let inner = self.clone();
        tokio::spawn(async move {
            let store = inner.store.clone();
            let reply =
                tokio::task::spawn_blocking(move || history::answer(store.as_deref(), &q)).await;
            drop(permit);
            match reply {
                Ok(reply) => {
                    inner.append_up(topic, json_bytes(&reply)).await;
                }
                Err(e) => tracing::warn!("devices: store query failed: {e}"),
            }
        });
    }

    async fn publish(&self, topic: String, payload: Vec<u8>, retain: bool) {
        let msg = Message::local(topic, payload, QoS::AtLeastOnce, retain);
        if let Err(e) = self.broker.publish(msg).await {
            tracing::warn!("devices: publish failed: {e}");
        }
    }

    async fn reject(&self, device: &str, op: ShadowTopic, e: &UpdateError, token: Option<String>) {
        let version = self.state.lock().await.shadows.get(device).version;
        let body = ShadowRejection {
            code: e.code().to_owned(),
            message: e.to_string(),
            version,
            client_token: token,
        };
        self.publish(op.topic(device), json_bytes(&body), false)
            .await;
    }

    async fn on_get(&self, device: &str, payload: &[u8]) {
        let token = serde_json::from_slice::<Value>(payload)
            .ok()
            .and_then(|v| v.get("client_token")?.as_str().map(str::to_owned));
        match shadow::valid_device(device) {
            true => {
                let doc = self.state.lock().await.shadows.get(device);
                self.publish(
                    ShadowTopic::GetAccepted.topic(device),
                    document(&doc, token),
                    false,
                )
                .await;
            }
            false => {
                let e = UpdateError::Shadow(ShadowError::Invalid(format!(
                    "`{device}` is not a device name"
                )));
                self.reject(device, ShadowTopic::GetRejected, &e, token)
                    .await;
            }
        }
    }

    async fn on_update(&self, device: &str, payload: &[u8]) {
        let update = match ShadowUpdate::parse(payload) {
            Ok(u) => u,
            Err(e) => {
                let token = serde_json::from_slice::<Value>(payload)
                    .ok()
                    .and_then(|v| v.get("client_token")?.as_str().map(str::to_owned));
                self.reject(device, ShadowTopic::UpdateRejected, &e.into(), token)
                    .await;
                return;
            }
        };
        match self.update(device, &update, true).await {
            Ok(_) => {}
            Err(e) => {
                self.reject(device, ShadowTopic::UpdateRejected, &e, update.client_token)
                    .await;
            }
        }
    }

    /// Apply an update; `answer`: publish `update/accepted` first (a
    /// device's request). On a change: the retained document, the delta
    /// when desired changed, the node's copy upstream — all under the lock,
    /// so they leave in the order of the changes.
    async fn update(
        &self,
        device: &str,
        update: &ShadowUpdate,
        answer: bool,
    ) -> Result<Shadow, UpdateError> {
        let mut st = self.state.lock().await;
        let c = st.shadows.update(device, update, now_ms()).await?;
        if answer {
            self.publish(
                ShadowTopic::UpdateAccepted.topic(device),
                document(&c.shadow, update.client_token.clone()),
                false,
            )
            .await;
        }
        if c.changed {
            self.after_change(device, &c.shadow, c.desired_changed)
                .await;
            if self.is_cloud_device(device) {
                self.sync_up(device, &c.shadow).await;
            }
        }
        Ok(c.shadow)
    }

    /// After a change: the delta when desired changed and differs from
    /// reported, then the retained document.
    async fn after_change(&self, device: &str, doc: &Shadow, desired_changed: bool) {
        let delta = doc.delta_message();
        if desired_changed && !delta.state.is_empty() {
            self.publish(ShadowTopic::Delta.topic(device), json_bytes(&delta), false)
                .await;
        }
        self.publish(
            ShadowTopic::Document.topic(device),
            document(doc, None),
            true,
        )
        .await;
    }

    /// Send the node's copy up; refused by the queue, the device is marked
    /// and its copy (the one current then) sent again on the tick.
    async fn sync_up(&self, device: &str, doc: &Shadow) {
        let sync = ShadowSync {
            device: device.to_owned(),
            shadow: doc.clone(),
        };
        let sent = self
            .append_up(DeviceChannel::Shadow.topic(device), json_bytes(&sync))
            .await;
        if let Ok(mut dirty) = self.dirty.lock() {
            match sent {
                true => dirty.remove(device),
                false => dirty.insert(device.to_owned()),
            };
        }
    }

    async fn on_cloud_shadow(&self, device: &str, payload: &[u8]) {
        self.stats.cloud_shadows.fetch_add(1, Ordering::Relaxed);
        let sync: ShadowSync = match serde_json::from_slice(payload) {
            Ok(s) => s,
            Err(e) => {
                self.stats.ignored.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(device, "cloud shadow does not parse: {e}");
                return;
            }
        };
        if !self.is_cloud_device(device) {
            // Not answered: the cloud keeps its copy pending and resends
            // it, which merges it once the agent lists the device.
            self.stats.ignored.fetch_add(1, Ordering::Relaxed);
            self.ignored_shadow(
                device,
                "cloud shadow for a device the cloud does not list here (yet); ignored until it does",
            );
            return;
        }
        let mut st = self.state.lock().await;
        match st
            .shadows
            .merge_from_cloud(device, &sync.shadow, now_ms())
            .await
        {
            Ok(c) => {
                if let Ok(mut s) = self.ignored_shadows.lock() {
                    s.remove(device);
                }
                if c.changed {
                    self.after_change(device, &c.shadow, c.desired_changed)
                        .await;
                }
                // Always answered: the cloud stops resending once the
                // node's copy covers its own.
                self.sync_up(device, &c.shadow).await;
            }
            Err(e) => {
                self.stats.ignored.fetch_add(1, Ordering::Relaxed);
                self.ignored_shadow(device, &format!("cloud shadow not merged: {e}"));
            }
        }
    }

    /// Log an ignored cloud shadow once per device (the cloud resends it
    /// every few seconds).
    fn ignored_shadow(&self, device: &str, why: &str) {
        let first = self
            .ignored_shadows
            .lock()
            .is_ok_and(|mut s| s.len() < MAX_SHADOWS && s.insert(device.to_owned()));
        if first {
            tracing::warn!(device, "{why}");
        }
    }

    /// Add a status to the outbox (nothing without a queue); it leaves
    /// with the next [`flush`](Self::flush), after the store holding it
    /// was written.
    fn status(
        &self,
        st: &mut State,
        device: &str,
        id: &str,
        state: CommandState,
        reply: Option<Value>,
        error: Option<String>,
    ) {
        if self.queue.is_none() {
            return;
        }
        st.commands.push_status(CommandStatus {
            id: id.to_owned(),
            device: device.to_owned(),
            state,
            at_ms: now_ms(),
            reply,
            error,
        });
    }

    /// Append the outbox's statuses to the cache queue, oldest first, until
    /// one is refused (the rest wait for the next tick). Without the state
    /// lock while appending.
    async fn flush(&self) {
        let _one = self.flushing.lock().await;
        let out = self.state.lock().await.commands.outbox();
        let mut last = None;
        for o in out {
            let s = &o.status;
            if !self
                .append_up(DeviceChannel::CommandStatus.topic(&s.device), json_bytes(s))
                .await
            {
                break;
            }
            last = Some(o.seq);
        }
        // Written out with the next save (a status appended twice after a
        // crash is harmless).
        if let Some(seq) = last {
            self.state.lock().await.commands.sent_up_to(seq);
        }
    }

    /// Append to the cache queue; whether it took the message.
    async fn append_up(&self, topic: String, payload: Vec<u8>) -> bool {
        let Some(q) = &self.queue else { return true };
        let record = Record {
            topic,
            payload: Bytes::from(payload),
            time_ms: verge_net::now_ms(),
        };
        match q.append(&self.lane, vec![record]).await {
            Ok(_) => {
                self.up_failing.store(false, Ordering::Relaxed);
                true
            }
            Err(e) => {
                self.stats.upstream_failed.fetch_add(1, Ordering::Relaxed);
                if !self.up_failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(lane = %self.lane, "devices: upstream append failed (retried): {e}");
                }
                false
            }
        }
    }

    /// Whether the node knows `device`: the cloud lists it, or the broker's
    /// registry has it — or the agent has not said yet which devices the
    /// cloud has (at start the bridge may bring commands before the agent
    /// applied its stored state; they are held, not failed).
    fn known(&self, device: &str) -> bool {
        self.cloud.read().is_ok_and(|c| c.is_none())
            || self.is_listed(device)
            || self
                .auth
                .registry()
                .devices
                .iter()
                .any(|d| d.username == device)
    }

    async fn on_command(&self, device: &str, payload: &[u8]) {
        self.stats.commands.fetch_add(1, Ordering::Relaxed);
        let mut req: CommandRequest = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => {
                self.stats.ignored.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(device, "command does not parse: {e}");
                return;
            }
        };
        req.device = device.to_owned();
        let id = req.id.clone();
        let fail = |m: String| (CommandState::Failed, Some(m));
        let mut st = self.state.lock().await;
        let refused = if id.is_empty() || id.contains(['/', '+', '#']) {
            Some(fail(format!("`{id}` is not a command id")))
        } else if req.name.is_empty() || req.name.contains(['/', '+', '#']) {
            Some(fail(format!("`{}` is not a command name", req.name)))
        } else if !valid_device(device) || !self.known(device) {
            Some(fail(format!("the node has no device `{device}`")))
        } else if req.expires_ms <= now_ms() {
            Some((CommandState::Expired, None))
        } else {
            None
        };
        if let Some((state, error)) = refused {
            if st.commands.take_known(&id) {
                self.status(&mut st, device, &id, CommandState::Sent, None, None);
                return;
            }
            st.commands.remember(&id);
            self.status(&mut st, device, &id, state, None, error);
            st.commands.save_logged().await;
            return;
        }
        match st.commands.take(req) {
            Taken::Known => {
                self.status(&mut st, device, &id, CommandState::Sent, None, None);
            }
            Taken::Refused(why) => {
                st.commands.remember(&id);
                self.status(&mut st, device, &id, CommandState::Failed, None, Some(why));
                st.commands.save_logged().await;
            }
            Taken::New => {
                // Acknowledged only once on disk: otherwise not held, and
                // the cloud's resend is taken again.
                if let Err(e) = st.commands.save().await {
                    st.commands.untake(&id);
                    tracing::error!(device, id, "command not taken: {e}");
                    return;
                }
                self.status(&mut st, device, &id, CommandState::Sent, None, None);
                if self.connected(device) {
                    self.deliver(&mut st, device, |h| h.request.id == id).await;
                }
            }
        }
    }

    /// Hand the held commands of `device` that `pick` chooses to its
    /// connection.
    async fn deliver(&self, st: &mut State, device: &str, pick: impl Fn(&commands::Held) -> bool) {
        let held: Vec<commands::Held> = st
            .commands
            .of_device(device)
            .into_iter()
            .filter(|h| pick(h))
            .collect();
        if held.is_empty() {
            return;
        }
        for h in held {
            let r = &h.request;
            let mut msg = Message::local(
                device::command_topic(device, &r.name, &r.id),
                json_bytes(&r.payload),
                QoS::AtLeastOnce,
                false,
            );
            msg.properties = Properties {
                payload_format_indicator: Some(1),
                content_type: Some("application/json".into()),
                response_topic: Some(device::reply_topic(device, &r.id)),
                correlation_data: Some(Bytes::from(r.id.clone().into_bytes())),
                user_properties: vec![(COMMAND_ID_PROPERTY.to_owned(), r.id.clone())],
                ..Properties::default()
            };
            if let Err(e) = self.broker.publish(msg).await {
                tracing::warn!(device, id = %r.id, "command not handed over: {e}");
                continue;
            }
            self.stats.deliveries.fetch_add(1, Ordering::Relaxed);
            if st.commands.handed_over(&r.id, now_ms()) {
                self.status(st, device, &r.id, CommandState::Delivered, None, None);
            }
        }
        st.commands.save_logged().await;
    }

    /// A device's reply: the command finished and its status put in the
    /// outbox in one write (the status leaves with the flush after).
    async fn on_reply(&self, device: &str, id: &str, failed: bool, payload: &[u8]) {
        let mut st = self.state.lock().await;
        if st.commands.finish(device, id).is_none() {
            tracing::debug!(device, id, "reply for no command the node holds; ignored");
            return;
        }
        let text = || String::from_utf8_lossy(payload).into_owned();
        if failed {
            let error = match serde_json::from_slice::<Value>(payload) {
                Ok(Value::String(s)) => s,
                _ => text(),
            };
            self.status(&mut st, device, id, CommandState::Failed, None, Some(error));
        } else {
            let reply =
                serde_json::from_slice::<Value>(payload).unwrap_or_else(|_| Value::String(text()));
            self.status(
                &mut st,
                device,
                id,
                CommandState::Replied,
                Some(reply),
                None,
            );
        }
        st.commands.save_logged().await;
    }

    async fn on_tick(&self) {
        let now = Instant::now();
        let mut st = self.state.lock().await;
        self.stats
            .shadows
            .store(st.shadows.len() as u64, Ordering::Relaxed);
        self.stats
            .held_commands
            .store(st.commands.len() as u64, Ordering::Relaxed);
        let expired = st.commands.expire(now_ms());
        if !expired.is_empty() {
            for h in &expired {
                self.status(
                    &mut st,
                    &h.request.device,
                    &h.request.id,
                    CommandState::Expired,
                    None,
                    None,
                );
            }
            st.commands.save_logged().await;
        }
        // Commands for a driver's device never handed over (held before
        // its driver started, or at a restart).
        for device in st.commands.undelivered() {
            if self.driven(&device) {
                self.deliver(&mut st, &device, |h| !h.delivered).await;
            }
        }
        // Devices that connected a moment ago: everything they are held.
        let (ready, later): (Vec<_>, Vec<_>) = std::mem::take(&mut st.due)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        st.due = later;
        let mut seen = HashSet::new();
        for (_, device) in ready {
            if seen.insert(device.clone()) && self.connected(&device) {
                self.deliver(&mut st, &device, |_| true).await;
            }
        }
        // Unanswered for a while and still connected: hand those again.
        let redeliver_ms = u64::try_from(REDELIVER_AFTER.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now_ms().saturating_sub(redeliver_ms);
        for device in st.commands.unanswered_since(cutoff) {
            if self.connected(&device) {
                self.deliver(&mut st, &device, |h| h.delivered && h.handed_ms < cutoff)
                    .await;
            }
        }
        drop(st);
        // What the queue refused before: statuses, then shadows.
        self.flush().await;
        let dirty: Vec<String> = self
            .dirty
            .lock()
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default();
        for device in dirty {
            if !self.is_cloud_device(&device) {
                if let Ok(mut d) = self.dirty.lock() {
                    d.remove(&device);
                }
                continue;
            }
            let doc = self.state.lock().await.shadows.get(&device);
            self.sync_up(&device, &doc).await;
        }
    }
}

/// The document as answered: the shadow, its delta, and the request's
/// `client_token` when it had one.
fn document(doc: &Shadow, token: Option<String>) -> Vec<u8> {
    let mut v = serde_json::to_value(doc).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        m.insert("delta".into(), Value::Object(doc.delta()));
        if let Some(t) = token {
            m.insert("client_token".into(), Value::String(t));
        }
    }
    json_bytes(&v)
}

fn json_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

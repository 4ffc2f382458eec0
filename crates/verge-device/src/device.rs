//! [`Device`]: the handle a device program holds. Every call is a request
//! to the client's task (see `engine`); the handle is cheap to clone.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};
use verge_protocol::device::{Shadow, ShadowDelta, ShadowUpdate, event_topic, telemetry_topic};

use crate::command::{Command, DeltaHandler, Handler, HandlerFuture};
use crate::config::Shared;
use crate::conn::Conn;
use crate::engine::{Connection, Counters, Engine, Outgoing, Request, ShadowKind};
use crate::{DeviceConfig, Error};

/// Requests waiting for the client's task at most (a caller waits when
/// it is full).
const REQUESTS: usize = 256;

/// A connected device. Clones share one connection.
#[derive(Clone)]
pub struct Device {
    /// Requests to the client's task.
    tx: mpsc::Sender<Request>,
    /// The checked config.
    cfg: Shared,
    /// What the task counts.
    counters: Arc<Counters>,
    /// Makes shadow requests' client tokens unique.
    tokens: Arc<AtomicU64>,
}

/// What the client counted so far ([`Device::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceStats {
    /// Whether a connection is up now.
    pub connected: bool,
    /// Connections made (the first one included).
    pub connects: u64,
    /// Messages the node acknowledged.
    pub acked: u64,
    /// Messages dropped from a full offline buffer (the oldest first).
    pub dropped: u64,
    /// Messages the node refused (PUBACK with an error) or that could not
    /// be sent at all (too large for the node).
    pub refused: u64,
    /// Commands whose handler ran.
    pub commands: u64,
    /// Redelivered commands answered from memory.
    pub duplicate_commands: u64,
    /// Deltas dropped because the delta callback was too slow.
    pub deltas_dropped: u64,
    /// Messages not yet acknowledged (in flight and waiting).
    pub waiting: usize,
}

impl Device {
    /// Check `config`, connect to the node (one attempt) and start the
    /// client's task, which from then on reconnects by itself.
    ///
    /// Errors: [`Error::Config`] (no I/O was done), [`Error::Refused`]
    /// (credentials or client id: retrying cannot help),
    /// [`Error::Io`]/[`Error::Tls`]/[`Error::Timeout`]/[`Error::Unavailable`]
    /// (the node is not reachable now: [`Error::is_retryable`]).
    pub async fn connect(config: DeviceConfig) -> Result<Device, Error> {
        let cfg: Shared = Arc::new(config.resolve()?);
        let conn = Conn::open(&cfg).await?;
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel(REQUESTS);
        let (engine, ready) = Engine::new(cfg.clone(), counters.clone(), rx, conn);
        tokio::spawn(engine.run());
        // the shadow answers' subscriptions are in place before a request
        match tokio::time::timeout(cfg.request_timeout, ready).await {
            Ok(Ok(Err(e))) => tracing::warn!(device = %cfg.device, "shadow answers: {e}"),
            Ok(_) => {}
            Err(_) => tracing::warn!(device = %cfg.device, "no SUBACK for the shadow answers"),
        }
        Ok(Device {
            tx,
            cfg,
            counters,
            tokens: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.cfg.device
    }

    /// The MQTT client id in use.
    pub fn client_id(&self) -> &str {
        &self.cfg.client_id
    }

    /// Whether a connection is up now.
    pub fn is_connected(&self) -> bool {
        self.counters.connected.load(Relaxed)
    }

    /// The connection's state, to watch: e.g. stop a program whose
    /// credentials the node refuses ([`Connection::Refused`]).
    pub fn connection(&self) -> watch::Receiver<Connection> {
        self.counters.state.subscribe()
    }

    /// What the client counted so far.
    pub fn stats(&self) -> DeviceStats {
        let c = &self.counters;
        DeviceStats {
            connected: c.connected.load(Relaxed),
            connects: c.connects.load(Relaxed),
            acked: c.acked.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            refused: c.refused.load(Relaxed),
            commands: c.commands.load(Relaxed),
            duplicate_commands: c.duplicates.load(Relaxed),
            deltas_dropped: c.deltas_dropped.load(Relaxed),
            waiting: c.waiting.load(Relaxed),
        }
    }

    /// Publish a reading as JSON on `devices/{d}/telemetry` (QoS 1).
    /// Returns once the client took it: sent, or buffered while the node
    /// cannot take it (see [`DeviceConfig::offline_buffer`]).
    pub async fn send_telemetry<T: Serialize + ?Sized>(&self, reading: &T) -> Result<(), Error> {
        let payload = serde_json::to_vec(reading)?;
        self.publish(telemetry_topic(&self.cfg.device), payload)
            .await
    }

    /// Publish an event as JSON on `devices/{d}/events/{kind}` (QoS 1),
    /// as [`Device::send_telemetry`]. `kind` is one topic level.
    pub async fn send_event<T: Serialize + ?Sized>(
        &self,
        kind: &str,
        payload: &T,
    ) -> Result<(), Error> {
        if kind.is_empty() || kind.contains(['/', '+', '#', '\0']) {
            return Err(Error::Config {
                key: "kind",
                message: format!("`{kind}` is not one topic level"),
            });
        }
        let payload = serde_json::to_vec(payload)?;
        self.publish(event_topic(&self.cfg.device, kind), payload)
            .await
    }

    async fn publish(&self, topic: String, payload: Vec<u8>) -> Result<(), Error> {
        self.check_open()?;
        self.request(Request::Publish(Box::new(Outgoing {
            topic,
            payload: Bytes::from(payload),
            properties: Default::default(),
            dup: false,
        })))
        .await
    }

    /// Run `handler` for every command named `name`. Its `Ok(reply)` is
    /// published as JSON on the command's MQTT 5 response topic (with its
    /// correlation data) or else on `devices/{d}/replies/{id}`; its
    /// `Err(why)` goes to `devices/{d}/replies/{id}/failed`. A command
    /// delivered again with an id seen lately gets the same reply without
    /// running the handler again. The first handler subscribes to the
    /// device's commands (until then none are delivered); returns once
    /// the node granted it.
    pub async fn on_command<F, Fut>(&self, name: &str, handler: F) -> Result<(), Error>
    where
        F: Fn(Command) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, String>> + Send + 'static,
    {
        self.register(Some(name.to_owned()), handler).await
    }

    /// As [`Device::on_command`], for every command without a handler of
    /// its own. A command with no handler at all is answered on its failed
    /// topic.
    pub async fn on_any_command<F, Fut>(&self, handler: F) -> Result<(), Error>
    where
        F: Fn(Command) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, String>> + Send + 'static,
    {
        self.register(None, handler).await
    }

    async fn register<F, Fut>(&self, name: Option<String>, handler: F) -> Result<(), Error>
    where
        F: Fn(Command) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, String>> + Send + 'static,
    {
        self.check_open()?;
        let handler: Handler = Arc::new(move |c| -> HandlerFuture { Box::pin(handler(c)) });
        let (done, rx) = oneshot::channel();
        self.request(Request::Handler {
            name,
            handler,
            done,
        })
        .await?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Call `callback` with every delta the node publishes
    /// (`$shadow/{d}/update/delta`: desired keys that differ from
    /// reported), one at a time in order. Subscribes on the first call;
    /// a later call replaces the callback.
    pub async fn on_delta<F, Fut>(&self, callback: F) -> Result<(), Error>
    where
        F: Fn(ShadowDelta) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.check_open()?;
        let handler: DeltaHandler = Arc::new(move |d| Box::pin(callback(d)));
        let (done, rx) = oneshot::channel();
        self.request(Request::Delta { handler, done }).await?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// The device's shadow as the node holds it (`$shadow/{d}/get`).
    pub async fn get_shadow(&self) -> Result<Shadow, Error> {
        let token = self.token();
        let payload = serde_json::to_vec(&serde_json::json!({ "client_token": token }))?;
        self.shadow(ShadowKind::Get, token, payload).await
    }

    /// Set keys of `reported` (a `null` removes a key; objects merge);
    /// returns the new document. Errors: [`Error::ShadowRejected`],
    /// [`Error::Timeout`] (no answer within the request timeout; the
    /// update may still be applied later).
    pub async fn update_reported(&self, reported: Map<String, Value>) -> Result<Shadow, Error> {
        self.update(ShadowUpdate {
            reported: Some(reported),
            ..ShadowUpdate::default()
        })
        .await
    }

    /// Set keys of `desired`, made against `version` when given (refused
    /// with code `version_conflict` when the shadow moved on).
    pub async fn update_desired(
        &self,
        desired: Map<String, Value>,
        version: Option<u64>,
    ) -> Result<Shadow, Error> {
        self.update(ShadowUpdate {
            desired: Some(desired),
            version,
            ..ShadowUpdate::default()
        })
        .await
    }

    async fn update(&self, mut update: ShadowUpdate) -> Result<Shadow, Error> {
        let token = self.token();
        update.client_token = Some(token.clone());
        let payload = serde_json::to_vec(&update)?;
        self.shadow(ShadowKind::Update, token, payload).await
    }

    async fn shadow(
        &self,
        kind: ShadowKind,
        token: String,
        payload: Vec<u8>,
    ) -> Result<Shadow, Error> {
        self.check_open()?;
        let (done, rx) = oneshot::channel();
        self.request(Request::Shadow {
            kind,
            token,
            payload: Bytes::from(payload),
            done,
        })
        .await?;
        match tokio::time::timeout(self.cfg.request_timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout {
                what: "the shadow answer",
            }),
        }
    }

    /// Close: wait (up to [`DeviceConfig::close_timeout`]) until the node
    /// acknowledged every message sent or buffered, then DISCONNECT.
    /// [`Error::Unflushed`] says how many were not. Every clone is closed.
    pub async fn close(&self) -> Result<(), Error> {
        let (done, rx) = oneshot::channel();
        self.request(Request::Close { done }).await?;
        rx.await.map_err(|_| Error::Closed)?
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.counters.closed.load(Relaxed) {
            return Err(Error::Closed);
        }
        Ok(())
    }

    async fn request(&self, req: Request) -> Result<(), Error> {
        self.tx.send(req).await.map_err(|_| Error::Closed)
    }

    fn token(&self) -> String {
        let n = self.tokens.fetch_add(1, Relaxed);
        format!("{}-{:x}-{n}", self.cfg.client_id, verge_net::now_ms())
    }
}

//! `store` and `upstream`: rows to the local time-series store and to the
//! cloud through the cache queue. Both services are behind traits the node
//! supplies ([`TelemetryStore`], [`Upstream`]); their [`ServiceError`]s say
//! whether a row is worth another attempt.

use std::sync::Arc;

use bytes::Bytes;
use verge_sql::Value;

use super::{Action, ActionError, BoxFuture, Output};
use crate::ServiceError;
use crate::Services;
use crate::config::{StoreConfig, UpstreamConfig};
use crate::error::RuleError;
use crate::template::Template;

/// One value of one metric of one device at one time.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryPoint {
    /// Device name.
    pub device: String,
    /// Metric (the row's column name).
    pub metric: String,
    /// Time in ms since the Unix epoch.
    pub time_ms: i64,
    /// The value (numbers, strings, booleans, JSON).
    pub value: Value,
}

/// The local time-series store.
pub trait TelemetryStore: Send + Sync + 'static {
    /// Write points; done when they are stored. The error says whether
    /// writing them again may succeed.
    fn write(&self, points: Vec<TelemetryPoint>) -> BoxFuture<'_, Result<(), ServiceError>>;
}

/// The way to the cloud: the cache queue in front of the bridge.
pub trait Upstream: Send + Sync + 'static {
    /// Queue a message for the cloud on `lane`; done when it is durable in
    /// the queue (not when the cloud has it). The error says whether
    /// sending it again may succeed (a record too large never will).
    fn send<'a>(
        &'a self,
        lane: &'a str,
        topic: String,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), ServiceError>>;

    /// Whether `lane` exists (checked when a rule is created, so a typo is
    /// an error then rather than a failure per row).
    fn check_lane(&self, lane: &str) -> Result<(), ServiceError> {
        let _ = lane;
        Ok(())
    }

    /// Queue several `(topic, payload)` messages on `lane` at once, all or
    /// none; done when they are durable. The default sends one by one.
    fn send_many<'a>(
        &'a self,
        lane: &'a str,
        messages: Vec<(String, Bytes)>,
    ) -> BoxFuture<'a, Result<(), ServiceError>> {
        Box::pin(async move {
            for (topic, payload) in messages {
                self.send(lane, topic, payload).await?;
            }
            Ok(())
        })
    }
}

/// Writes each row's columns as points of the row's device.
pub struct Store {
    store: Arc<dyn TelemetryStore>,
    device: String,
}

impl Store {
    /// Check the store is there and build the action.
    pub fn new(c: &StoreConfig, services: &Services) -> Result<Store, RuleError> {
        let store = services
            .store
            .clone()
            .ok_or_else(|| RuleError::action("store", "this node has no local store"))?;
        Ok(Store {
            store,
            device: c.device.clone(),
        })
    }
}

impl Action for Store {
    fn deliver<'a>(&'a self, out: &'a Output) -> BoxFuture<'a, Result<(), ActionError>> {
        Box::pin(async move {
            let device = match out.row.get(&self.device) {
                Some(Value::Str(s)) => s.to_string(),
                Some(Value::Null) | None => {
                    return Err(ActionError::permanent(format!(
                        "store: the row has no `{}` column naming the device",
                        self.device
                    )));
                }
                Some(v) => v.to_string(),
            };
            let points: Vec<TelemetryPoint> = out
                .row
                .columns()
                .filter(|(k, v)| *k != self.device && !matches!(v, Value::Null))
                .map(|(k, v)| TelemetryPoint {
                    device: device.clone(),
                    metric: k.to_owned(),
                    time_ms: out.time_ms,
                    value: v.clone(),
                })
                .collect();
            if points.is_empty() {
                return Ok(());
            }
            self.store
                .write(points)
                .await
                .map_err(|e| ActionError::service("store", e))
        })
    }
}

/// Queues each row for the cloud.
pub struct UpstreamAction {
    upstream: Arc<dyn Upstream>,
    topic: Template,
    lane: String,
}

impl UpstreamAction {
    /// Check the cache queue is there and build the action.
    pub fn new(c: &UpstreamConfig, services: &Services) -> Result<UpstreamAction, RuleError> {
        let upstream = services
            .upstream
            .clone()
            .ok_or_else(|| RuleError::action("upstream", "this node has no cloud link"))?;
        let topic = UpstreamAction::settings(c)?;
        upstream
            .check_lane(&c.lane)
            .map_err(|e| RuleError::action("upstream", e.message))?;
        Ok(UpstreamAction {
            upstream,
            topic,
            lane: c.lane.clone(),
        })
    }
}

impl UpstreamAction {
    /// Check the settings: the topic template and a lane name (whether the
    /// node has that lane is the cache queue's to say).
    pub(crate) fn settings(c: &UpstreamConfig) -> Result<Template, RuleError> {
        let topic = Template::parse(&c.topic).map_err(|e| RuleError::action("upstream", e))?;
        if c.lane.is_empty() {
            return Err(RuleError::action("upstream", "`lane` is empty"));
        }
        Ok(topic)
    }
}

impl Action for UpstreamAction {
    fn deliver<'a>(&'a self, out: &'a Output) -> BoxFuture<'a, Result<(), ActionError>> {
        Box::pin(async move {
            let topic = self
                .topic
                .render(&out.row)
                .map_err(ActionError::permanent)?;
            self.upstream
                .send(&self.lane, topic, out.json.clone())
                .await
                .map_err(|e| ActionError::service("upstream", e))
        })
    }

    /// One durable append for the whole batch: rows share a group commit
    /// instead of waiting for one each.
    fn deliver_batch<'a>(
        &'a self,
        outs: &'a [Arc<Output>],
    ) -> BoxFuture<'a, Vec<Result<(), ActionError>>> {
        Box::pin(async move {
            let mut results: Vec<Result<(), ActionError>> = Vec::with_capacity(outs.len());
            let mut messages = Vec::with_capacity(outs.len());
            for out in outs {
                match self.topic.render(&out.row) {
                    Ok(topic) => {
                        messages.push((topic, out.json.clone()));
                        results.push(Ok(()));
                    }
                    Err(e) => results.push(Err(ActionError::permanent(e))),
                }
            }
            let sent = messages.len();
            if sent == 0 {
                return results;
            }
            match self.upstream.send_many(&self.lane, messages).await {
                Ok(()) => {}
                // Refused for good as a whole (all or none, so nothing was
                // queued): the batch may be what is too large, so each row
                // gets its own answer.
                Err(e) if !e.retry && sent > 1 => {
                    for (out, r) in outs.iter().zip(results.iter_mut()) {
                        if r.is_ok() {
                            *r = self.deliver(out).await;
                        }
                    }
                }
                Err(e) => {
                    let e = ActionError::service("upstream", e);
                    for r in results.iter_mut().filter(|r| r.is_ok()) {
                        *r = Err(e.clone());
                    }
                }
            }
            results
        })
    }
}

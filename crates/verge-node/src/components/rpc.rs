//! The node's answers to its components over MQTT: a request published to
//! `$verge/rpc/<component>/<method>` is answered on its response topic.
//!
//! A request's payload is a JSON object (empty payload: `{}`) with
//! optional keys `params` (the method's parameters), `reply_to` and `id`.
//! The answer goes to the MQTT 5 Response Topic with the request's
//! Correlation Data; a 3.1.1 client, which has neither, puts the response
//! topic in `reply_to` and gets its `id` back in the answer. The response
//! topic must lie under the component's own `components/<name>/` (the node
//! publishes nowhere else for it). Answers are `{"ok":true,"result":…}`
//! or `{"ok":false,"error":"…"}`, plus `"id"` when the request had one.
//!
//! The broker's ACL lets only the component itself publish to its RPC
//! topics; the service checks again that the publisher's client id is the
//! component's own. A request without a usable response topic, or from
//! another client, cannot be answered: it is counted and dropped.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};
use tokio::task::JoinHandle;
use verge_broker::message::Message;
use verge_mqtt::QoS;
use verge_tsdb::{Point, Value as TsValue};

use super::bus::{Bus, RPC_PREFIX, username};

/// Largest request payload answered; a larger one gets an error.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Most points one `store.write` takes.
pub const MAX_POINTS: usize = 1000;
/// Requests queued for the service; more are dropped and counted.
const QUEUE: usize = 256;

/// The service's counters.
#[derive(Debug, Default)]
pub struct RpcStats {
    ok: AtomicU64,
    error: AtomicU64,
    unanswerable: AtomicU64,
    dropped: AtomicU64,
}

impl RpcStats {
    pub(super) fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP verge_component_rpc_requests_total requests of components to the node over MQTT, by result"
        );
        let _ = writeln!(out, "# TYPE verge_component_rpc_requests_total counter");
        for (result, n) in [
            ("ok", &self.ok),
            ("error", &self.error),
            ("unanswerable", &self.unanswerable),
            ("dropped", &self.dropped),
        ] {
            let _ = writeln!(
                out,
                "verge_component_rpc_requests_total{{result=\"{result}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
    }
}

/// Subscribe to `$verge/rpc/+/+` and answer requests until the bus is
/// dropped.
pub(super) async fn start(bus: &Bus) -> Result<JoinHandle<()>, verge_broker::error::BrokerError> {
    let mut sub = bus
        .inner
        .broker
        .subscribe(&format!("{RPC_PREFIX}+/+"), QUEUE)
        .await?;
    let weak = std::sync::Arc::downgrade(&bus.inner);
    Ok(tokio::spawn(async move {
        let mut seen_dropped = 0;
        while let Some(msg) = sub.recv().await {
            let Some(inner) = weak.upgrade() else { break };
            let bus = Bus { inner };
            let dropped = sub.dropped();
            if dropped > seen_dropped {
                bus.inner
                    .stats
                    .dropped
                    .fetch_add(dropped - seen_dropped, Ordering::Relaxed);
                seen_dropped = dropped;
            }
            handle(&bus, &msg).await;
        }
    }))
}

/// A request that cannot be answered.
#[derive(Debug)]
enum Unanswerable {
    NotAComponent,
    NoResponseTopic,
}

async fn handle(bus: &Bus, msg: &Message) {
    let stats = &bus.inner.stats;
    match route(bus, msg) {
        Err(why) => {
            stats.unanswerable.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(topic = %msg.topic, origin = %msg.origin, "component rpc request dropped: {why:?}");
        }
        Ok((component, method, reply_to, id, body)) => {
            let answer = match body {
                Ok(params) => call(bus, &component, &method, params).await,
                Err(e) => Err(e),
            };
            let mut out = match answer {
                Ok(result) => {
                    stats.ok.fetch_add(1, Ordering::Relaxed);
                    json!({"ok": true, "result": result})
                }
                Err(error) => {
                    stats.error.fetch_add(1, Ordering::Relaxed);
                    json!({"ok": false, "error": error})
                }
            };
            if let Some(id) = id {
                out["id"] = id;
            }
            let mut reply = Message::local(reply_to, out.to_string(), QoS::AtLeastOnce, false);
            reply.properties.correlation_data = msg.properties.correlation_data.clone();
            reply.properties.content_type = Some("application/json".to_owned());
            if let Err(e) = bus.inner.broker.publish(reply).await {
                tracing::debug!(component, "component rpc answer not sent: {e}");
            }
        }
    }
}

type Routed = (String, String, String, Option<Value>, Result<Value, String>);

/// The component, method, response topic, request id and parameters of a
/// request (parameters `Err` when the body is unusable, which is answered).
fn route(bus: &Bus, msg: &Message) -> Result<Routed, Unanswerable> {
    let rest = msg
        .topic
        .strip_prefix(RPC_PREFIX)
        .ok_or(Unanswerable::NotAComponent)?;
    let (component, method) = rest.split_once('/').ok_or(Unanswerable::NotAComponent)?;
    let known = bus
        .inner
        .grants
        .lock()
        .map(|g| g.contains_key(component))
        .unwrap_or(false);
    if !known || *msg.origin != username(component) {
        return Err(Unanswerable::NotAComponent);
    }
    let body: Result<serde_json::Map<String, Value>, String> = if msg.payload.len() > MAX_REQUEST {
        Err(format!(
            "request too large: {} bytes, at most {MAX_REQUEST}",
            msg.payload.len()
        ))
    } else if msg.payload.is_empty() {
        Ok(serde_json::Map::new())
    } else {
        match serde_json::from_slice::<Value>(&msg.payload) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err("the request must be a JSON object".to_owned()),
            Err(e) => Err(format!("the request is not JSON: {e}")),
        }
    };
    let (reply_to, id, params) = match &body {
        Ok(m) => (
            m.get("reply_to").and_then(Value::as_str).map(str::to_owned),
            m.get("id").cloned(),
            Ok(m.get("params").cloned().unwrap_or(Value::Null)),
        ),
        Err(e) => (None, None, Err(e.clone())),
    };
    let reply_to = msg
        .properties
        .response_topic
        .clone()
        .or(reply_to)
        .ok_or(Unanswerable::NoResponseTopic)?;
    let own = format!("components/{component}/");
    let valid = reply_to.starts_with(&own)
        && reply_to.len() > own.len()
        && !reply_to.contains(['+', '#', '\0']);
    if !valid {
        return Err(Unanswerable::NoResponseTopic);
    }
    Ok((
        component.to_owned(),
        method.to_owned(),
        reply_to,
        id,
        params,
    ))
}

async fn call(bus: &Bus, component: &str, method: &str, params: Value) -> Result<Value, String> {
    match method {
        "config.get" => {
            let config = bus
                .inner
                .grants
                .lock()
                .ok()
                .and_then(|g| g.get(component).map(|x| x.spec.config.clone()))
                .unwrap_or(Value::Null);
            Ok(match config {
                Value::Null => json!({}),
                v => v,
            })
        }
        "node.info" => Ok(json!({
            "name": bus.inner.node.name,
            "version": bus.inner.node.version,
            "component": component,
        })),
        "health.report" => {
            let healthy = params
                .get("healthy")
                .and_then(Value::as_bool)
                .ok_or("params.healthy: expected true or false")?;
            let message = params
                .get("message")
                .and_then(Value::as_str)
                .map(|m| m.chars().take(512).collect::<String>());
            let hb = bus
                .heartbeat(component)
                .ok_or("the component has no credentials")?;
            hb.report(healthy, message);
            Ok(Value::Null)
        }
        "store.write" => store_write(bus, component, &params).await,
        other => Err(format!(
            "unknown method `{other}` (config.get, store.write, health.report, node.info)"
        )),
    }
}

/// Whether `device` is `component` or a name under it (`component/x`).
fn own_device(component: &str, device: &str) -> bool {
    device == component
        || device
            .strip_prefix(component)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|sub| !sub.is_empty())
}

/// `params.points`: `[{metric, value, device?, time_ms?}]`; `device`
/// defaults to the component's name and must be it or a name under it,
/// `time_ms` defaults to now.
async fn store_write(bus: &Bus, component: &str, params: &Value) -> Result<Value, String> {
    let db = bus
        .inner
        .store
        .clone()
        .ok_or("the node has no local store (store.enabled = false)")?;
    let list = params
        .get("points")
        .and_then(Value::as_array)
        .ok_or("params.points: expected an array of points")?;
    if list.len() > MAX_POINTS {
        return Err(format!(
            "params.points: {} points, at most {MAX_POINTS}",
            list.len()
        ));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default();
    let mut points = Vec::with_capacity(list.len());
    for (i, p) in list.iter().enumerate() {
        let metric = p
            .get("metric")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .ok_or_else(|| format!("params.points[{i}].metric: expected a name"))?;
        // A component writes only its own series: its name, or a name
        // under it (`reader/pump-1`), never another device's.
        let device = match p.get("device") {
            None | Some(Value::Null) => component.to_owned(),
            Some(Value::String(d)) if own_device(component, d) => d.clone(),
            Some(Value::String(d)) => {
                return Err(format!(
                    "params.points[{i}].device: `{d}` is not this component's; use `{component}` or `{component}/<name>`"
                ));
            }
            Some(_) => return Err(format!("params.points[{i}].device: expected a name")),
        };
        let time_ms = match p.get("time_ms") {
            None | Some(Value::Null) => now,
            Some(t) => t
                .as_i64()
                .filter(|t| *t >= 0)
                .ok_or_else(|| format!("params.points[{i}].time_ms: expected ms since 1970"))?,
        };
        let value = match p.get("value") {
            Some(Value::Number(n)) => TsValue::Number(n.as_f64().unwrap_or(f64::NAN)),
            Some(Value::Bool(b)) => TsValue::Bool(*b),
            Some(Value::String(s)) => TsValue::Text(s.clone()),
            Some(v @ (Value::Array(_) | Value::Object(_))) => TsValue::Json(v.to_string()),
            _ => return Err(format!("params.points[{i}].value: expected a value")),
        };
        points.push(Point {
            device,
            metric: metric.to_owned(),
            time_ms,
            value,
        });
    }
    let n = points.len();
    tokio::task::spawn_blocking(move || db.write(&points))
        .await
        .map_err(|e| format!("store task failed: {e}"))?
        .map_err(|e| format!("store: {e}"))?;
    Ok(json!({ "points": n }))
}

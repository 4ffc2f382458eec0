//! Regression tests for the services' typed errors: a failure the service
//! calls permanent (a record too large for its lane, a closed store) is
//! attempted once and counted as failed, a transient one is retried up to
//! the action's attempts. Before, every store and upstream failure was
//! retried as if it were transient.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use verge_broker::{Broker, BrokerConfig, BrokerHandle, Message};
use verge_net::BoxFuture;
use verge_rules::{
    ActionStatus, Domain, Engine, RuleConfig, RuleEngineConfig, ServiceError, Services,
    TelemetryPoint, TelemetryStore, Upstream,
};

const WAIT: Duration = Duration::from_secs(5);

fn broker() -> Broker {
    let cfg = BrokerConfig {
        allow_anonymous: true,
        ..BrokerConfig::default()
    };
    let auth = Broker::authenticator(&cfg).expect("auth");
    Broker::start(cfg, auth)
}

/// A store and an upstream that fail every call with `error` (or, with
/// `refuse_batches`, refuse only calls of more than one message) and count
/// their calls.
struct Failing {
    error: Option<ServiceError>,
    refuse_batches: bool,
    calls: AtomicU32,
    refused_batches: AtomicU32,
    sent: AtomicU32,
}

impl Failing {
    fn new(error: Option<ServiceError>) -> Arc<Failing> {
        Arc::new(Failing {
            error,
            refuse_batches: false,
            calls: AtomicU32::new(0),
            refused_batches: AtomicU32::new(0),
            sent: AtomicU32::new(0),
        })
    }

    fn answer(&self) -> Result<(), ServiceError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        match &self.error {
            Some(e) => Err(e.clone()),
            None => {
                self.sent.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }
    }
}

impl TelemetryStore for Failing {
    fn write(&self, _: Vec<TelemetryPoint>) -> BoxFuture<'_, Result<(), ServiceError>> {
        let r = self.answer();
        Box::pin(async move { r })
    }
}

impl Upstream for Failing {
    fn send<'a>(
        &'a self,
        _: &'a str,
        _: String,
        _: Bytes,
    ) -> BoxFuture<'a, Result<(), ServiceError>> {
        let r = self.answer();
        Box::pin(async move { r })
    }

    fn send_many<'a>(
        &'a self,
        lane: &'a str,
        messages: Vec<(String, Bytes)>,
    ) -> BoxFuture<'a, Result<(), ServiceError>> {
        Box::pin(async move {
            if !self.refuse_batches {
                for (topic, payload) in messages {
                    self.send(lane, topic, payload).await?;
                }
                return Ok(());
            }
            if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
                // Hold the first row so the next ones queue up into a batch.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            if messages.len() > 1 {
                self.refused_batches.fetch_add(1, Ordering::SeqCst);
                return Err(ServiceError::permanent(
                    Domain::User,
                    "the batch is larger than the lane",
                ));
            }
            self.sent.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
}

/// One rule with one action of `action` (JSON) on `in/+`, five attempts.
async fn engine(broker: &Broker, service: Arc<Failing>, action: serde_json::Value) -> Engine {
    let mut services = Services::new(broker.handle());
    services.store = Some(service.clone());
    services.upstream = Some(service);
    let engine = Engine::new(services, RuleEngineConfig::default());
    let mut action = action;
    action["delivery"] = serde_json::json!({"max_attempts": 5, "backoff": "10ms"});
    let rule: RuleConfig = serde_json::from_value(serde_json::json!({
        "id": "r",
        "sql": "SELECT topic(2) AS device, v FROM \"in/+\"",
        "actions": [action],
    }))
    .expect("rule");
    engine.create(rule).await.expect("create");
    engine
}

async fn publish(handle: &BrokerHandle, n: usize) {
    for i in 0..n {
        handle
            .publish(Message::local(
                format!("in/d{i}"),
                r#"{"v": 1}"#,
                verge_mqtt::QoS::AtLeastOnce,
                false,
            ))
            .await
            .expect("publish");
    }
}

/// The action's counters once `done` holds for them.
async fn settled(engine: &Engine, done: impl Fn(&ActionStatus) -> bool) -> ActionStatus {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let a = engine.get("r").await.expect("get").action_metrics[0].clone();
        if done(&a) {
            return a;
        }
        assert!(tokio::time::Instant::now() < deadline, "not settled: {a:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn upstream() -> serde_json::Value {
    serde_json::json!({"type": "upstream", "topic": "t/{device}", "lane": "telemetry"})
}

fn store() -> serde_json::Value {
    serde_json::json!({"type": "store"})
}

#[tokio::test]
async fn a_permanent_upstream_failure_is_attempted_once() {
    let broker = broker();
    let up = Failing::new(Some(ServiceError::permanent(
        Domain::User,
        "record of 9000 bytes is larger than the limit of 4096",
    )));
    let engine = engine(&broker, up.clone(), upstream()).await;
    publish(&broker.handle(), 1).await;
    let a = settled(&engine, |a| a.failed == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(up.calls.load(Ordering::SeqCst), 1, "no retry");
    assert_eq!((a.delivered, a.retries, a.failed), (0, 0, 1));
    assert!(
        a.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("upstream: record of 9000 bytes")),
        "{a:?}"
    );
}

#[tokio::test]
async fn a_transient_upstream_failure_is_retried() {
    let broker = broker();
    let up = Failing::new(Some(ServiceError::transient(
        Domain::External,
        "lane `alarms` is full",
    )));
    let engine = engine(&broker, up.clone(), upstream()).await;
    publish(&broker.handle(), 1).await;
    let a = settled(&engine, |a| a.failed == 1).await;
    assert_eq!(up.calls.load(Ordering::SeqCst), 5, "every attempt used");
    assert_eq!((a.delivered, a.retries, a.failed), (0, 4, 1));
}

#[tokio::test]
async fn a_permanent_store_failure_is_attempted_once() {
    let broker = broker();
    let db = Failing::new(Some(ServiceError::permanent(
        Domain::Internal,
        "the store is closed",
    )));
    let engine = engine(&broker, db.clone(), store()).await;
    publish(&broker.handle(), 1).await;
    let a = settled(&engine, |a| a.failed == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(db.calls.load(Ordering::SeqCst), 1, "no retry");
    assert_eq!((a.delivered, a.retries, a.failed), (0, 0, 1));
}

#[tokio::test]
async fn a_transient_store_failure_is_retried() {
    let broker = broker();
    let db = Failing::new(Some(ServiceError::transient(
        Domain::External,
        "write buffer full (9 bytes unflushed); the last flush failed",
    )));
    let engine = engine(&broker, db.clone(), store()).await;
    publish(&broker.handle(), 1).await;
    let a = settled(&engine, |a| a.failed == 1).await;
    assert_eq!(db.calls.load(Ordering::SeqCst), 5, "every attempt used");
    assert_eq!((a.delivered, a.retries, a.failed), (0, 4, 1));
}

/// A batch refused for good (larger together than the lane) does not fail
/// rows that fit one by one.
#[tokio::test]
async fn rows_of_a_batch_refused_for_good_are_sent_one_by_one() {
    let broker = broker();
    let up = Arc::new(Failing {
        refuse_batches: true,
        ..Arc::into_inner(Failing::new(None)).expect("sole owner")
    });
    let engine = engine(&broker, up.clone(), upstream()).await;
    publish(&broker.handle(), 5).await;
    let a = settled(&engine, |a| a.delivered + a.failed == 5).await;
    assert!(
        up.refused_batches.load(Ordering::SeqCst) >= 1,
        "a batch formed"
    );
    assert_eq!((a.delivered, a.retries, a.failed), (5, 0, 0));
    assert_eq!(up.sent.load(Ordering::SeqCst), 5);
}

//! The function runtime wired into the node: the rule engine's `function`
//! action ([`FunctionsInvoker`]) and functions triggered by their own
//! `subscribe` filters ([`Triggers`]), whose outputs are published into the
//! broker so rules and other functions can take them up.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use verge_broker::{BrokerHandle, Message as BrokerMessage};
use verge_functions::{CallError, Functions, Message};
use verge_mqtt::QoS;
use verge_net::BoxFuture;
use verge_rules::{Domain, FunctionInvoker, FunctionMessage, InvokeError, ServiceError};

/// Messages produced by more in-node steps than this are not handed to a
/// function (the same bound as rules), so functions that feed each other
/// cannot loop forever.
pub const MAX_HOPS: u8 = 8;

/// [`FunctionInvoker`] over the node's [`Functions`].
pub struct FunctionsInvoker {
    functions: Functions,
}

impl FunctionsInvoker {
    /// The adapter over `functions`.
    pub fn new(functions: Functions) -> FunctionsInvoker {
        FunctionsInvoker { functions }
    }
}

impl FunctionInvoker for FunctionsInvoker {
    fn exists(&self, name: &str) -> bool {
        self.functions.exists(name)
    }

    fn invoke<'a>(
        &'a self,
        name: &'a str,
        msg: FunctionMessage,
    ) -> BoxFuture<'a, Result<Vec<FunctionMessage>, InvokeError>> {
        Box::pin(async move {
            let input = Message {
                topic: msg.topic,
                payload: msg.payload,
                content_type: msg.content_type,
                user_properties: msg.user_properties,
                time_ms: msg.time_ms,
                qos: 1,
                retain: false,
            };
            let out = self
                .functions
                .invoke(name, input)
                .await
                .map_err(service_error)?;
            Ok(out
                .into_iter()
                .map(|m| FunctionMessage {
                    topic: m.topic,
                    payload: m.payload,
                    content_type: m.content_type,
                    user_properties: m.user_properties,
                    time_ms: m.time_ms,
                })
                .collect())
        })
    }
}

/// A function call's error as a service error: retried when the runtime
/// says another attempt may succeed ([`CallError::is_transient`]). What
/// the function did (returned an error, trapped, ran too long, answered
/// nonsense, is not deployed) is on the user's side; a worker that exited
/// or a runtime that could not run the call is external.
pub fn service_error(e: CallError) -> ServiceError {
    let domain = match e {
        CallError::WorkerExited(_) | CallError::Unavailable(_) => Domain::External,
        _ => Domain::User,
    };
    ServiceError {
        domain,
        retry: e.is_transient(),
        message: e.to_string(),
    }
}

/// A broker message as a function's input.
pub fn input(m: &BrokerMessage) -> Message {
    Message {
        topic: m.topic.to_string(),
        payload: m.payload.clone(),
        content_type: m.properties.content_type.clone(),
        user_properties: m.properties.user_properties.clone(),
        time_ms: verge_net::now_ms(),
        qos: m.qos as u8,
        retain: m.retain,
    }
}

/// Publish a function's outputs into the broker as coming from
/// `$function/<name>`, one step (`hops`) further than the input.
pub async fn publish_outputs(
    broker: &BrokerHandle,
    name: &str,
    hops: u8,
    outputs: Vec<Message>,
) -> Result<(), String> {
    let origin: Arc<str> = Arc::from(format!("$function/{name}"));
    for o in outputs {
        let qos = match o.qos {
            0 => QoS::AtMostOnce,
            2 => QoS::ExactlyOnce,
            _ => QoS::AtLeastOnce,
        };
        let mut m = BrokerMessage::local(o.topic, o.payload, qos, o.retain);
        m.origin = origin.clone();
        m.hops = hops.saturating_add(1);
        m.properties.content_type = o.content_type;
        m.properties.user_properties = o.user_properties;
        broker
            .publish(m)
            .await
            .map_err(|e| format!("function `{name}` output: {e}"))?;
    }
    Ok(())
}

/// One task per function that has `subscribe` filters, kept in step with
/// deploys and deletes.
pub struct Triggers {
    task: JoinHandle<()>,
}

impl Triggers {
    /// Start watching `functions` and subscribing for them on `broker`.
    pub fn start(functions: Functions, broker: BrokerHandle) -> Triggers {
        let task = tokio::spawn(async move {
            let mut changes = functions.changes();
            let mut running: HashMap<String, Running> = HashMap::new();
            loop {
                let wanted: HashMap<String, (Vec<String>, usize)> = functions
                    .list()
                    .into_iter()
                    .filter(|f| !f.spec.subscribe.is_empty())
                    .map(|f| {
                        let n = f.spec.limits.concurrency_for(f.runtime);
                        (f.name, (f.spec.subscribe, n))
                    })
                    .collect();
                // A deleted function's trigger ends now; one whose new
                // version has other filters or another concurrency is
                // replaced: the new subscription first, then the old task
                // finishes what it already holds (a message published in
                // between may reach both: at least once, never lost).
                running.retain(|name, _| wanted.contains_key(name));
                for (name, (filters, n)) in wanted {
                    if running
                        .get(&name)
                        .is_some_and(|r| r.filters == filters && r.concurrency == n)
                    {
                        continue;
                    }
                    let sub = match broker.subscribe_many(&filters, 4096).await {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::error!(function = %name, "cannot subscribe to {filters:?}: {e}");
                            continue;
                        }
                    };
                    tracing::info!(function = %name, ?filters, "triggered by subscription");
                    let (stop, stopped) = oneshot::channel();
                    let task = tokio::spawn(run_trigger(
                        functions.clone(),
                        broker.clone(),
                        name.clone(),
                        sub,
                        n,
                        stopped,
                    ));
                    let new = Running {
                        filters,
                        concurrency: n,
                        stop: Some(stop),
                        task: Some(task),
                    };
                    if let Some(old) = running.insert(name, new) {
                        old.retire();
                    }
                }
                if changes.changed().await.is_err() {
                    break;
                }
            }
        });
        Triggers { task }
    }

    /// Stop every trigger.
    pub fn stop(self) {
        // The watcher's map of `Running` goes with it, ending every trigger.
        self.task.abort();
    }
}

/// One function's trigger task; dropping it ends the task (a dropped
/// `JoinHandle` alone would leave it running, also after [`Triggers::stop`]).
struct Running {
    filters: Vec<String>,
    concurrency: usize,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Running {
    /// Let the task finish the messages it holds, then end.
    fn retire(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

async fn run_trigger(
    functions: Functions,
    broker: BrokerHandle,
    name: String,
    sub: verge_broker::LocalSubscription,
    concurrency: usize,
    stop: oneshot::Receiver<()>,
) {
    let own: Arc<str> = Arc::from(format!("$function/{name}"));
    // Messages until `stop`; then the subscription is closed and what it
    // already queued is still handed over.
    let stream =
        futures_util::stream::unfold((sub, Some(stop)), |(mut sub, mut stop)| async move {
            if let Some(rx) = stop.as_mut() {
                tokio::select! {
                    biased;
                    _ = rx => {
                        sub.close();
                        stop = None;
                    }
                    m = sub.recv() => return m.map(|m| (m, (sub, stop))),
                }
            }
            sub.recv().await.map(|m| (m, (sub, stop)))
        })
        .filter(|m| {
            let skip = m.origin == own || m.hops >= MAX_HOPS;
            async move { !skip }
        })
        .map(|m| {
            let functions = functions.clone();
            let name = name.clone();
            async move {
                let r = functions.invoke(&name, input(&m)).await;
                (m.hops, r)
            }
        })
        .buffered(concurrency.max(1));
    futures_util::pin_mut!(stream);
    while let Some((hops, r)) = stream.next().await {
        // A failure is recorded in the function's metrics and last_error.
        // `NotFound` (deleted, and the watcher has not seen it yet) does not
        // end the task: the watcher does that if it stays deleted. Ending
        // here lost the trigger of a function deleted and deployed again
        // before the watcher woke (one coalesced change).
        if let Ok(out) = r
            && let Err(e) = publish_outputs(&broker, &name, hops, out).await
        {
            tracing::warn!(function = %name, "{e}");
        }
    }
}

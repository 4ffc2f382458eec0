//! The rule engine: the set of rules on a node, their lifecycle (create,
//! update, delete, start, stop), status and metrics, and dry runs (`test`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use verge_sql::{Event, Limits, Query, Row};

use crate::Services;
use crate::action::{self, ActionRunner, ActionStatus};
use crate::config::{ActionKind, RuleConfig, RuleEngineConfig};
use crate::error::RuleError;
use crate::rule::{Running, finish_all};
use crate::template::Template;
use verge_metrics::label;
use verge_net::now_ms;

/// The node's rules. Management calls are serialised; running rules are
/// independent tasks.
pub struct Engine {
    services: Services,
    settings: RuleEngineConfig,
    rules: Mutex<BTreeMap<String, Entry>>,
    /// One dry run at a time.
    test_turn: tokio::sync::Semaphore,
}

struct Entry {
    config: RuleConfig,
    query: Query,
    run: Option<Running>,
}

/// A rule as the API shows it: its config, state and metrics.
#[derive(Debug, Clone, Serialize)]
pub struct RuleInfo {
    /// The rule's config as given.
    #[serde(flatten)]
    pub config: RuleConfig,
    /// `running`, `stopped`, or `failed` (its task ended: the broker
    /// stopped); `start` restarts a failed rule.
    pub status: &'static str,
    /// Output columns in SELECT order (`*` adds the payload's fields).
    pub columns: Vec<String>,
    /// Counters and gauges (zero while stopped).
    pub metrics: RuleMetrics,
    /// Per action, in the order of `actions`.
    pub action_metrics: Vec<ActionStatus>,
}

/// Counters of one rule since it last started.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RuleMetrics {
    /// Messages that reached the rule (matched its FROM).
    pub messages_in: u64,
    /// Messages the WHERE clause let through… or not (false or NULL).
    pub filtered: u64,
    /// Rows produced.
    pub rows_out: u64,
    /// Messages or groups whose evaluation failed.
    pub errors: u64,
    /// The most recent evaluation error.
    pub last_error: Option<String>,
    /// Messages dropped because the rule's input queue was full.
    pub dropped_queue: u64,
    /// Messages refused because rules and functions had already passed
    /// them on too many times (a loop between rules).
    pub dropped_loop: u64,
    /// Messages dropped because their window had too many groups.
    pub dropped_groups: u64,
    /// Messages dropped because they came later than the lateness bound.
    pub dropped_late: u64,
    /// Messages dropped because their event time was too far ahead.
    pub dropped_future: u64,
    /// Values dropped because a group's buffer was full.
    pub dropped_rows: u64,
    /// Window groups held now.
    pub open_groups: usize,
    /// Rough bytes held by window state now.
    pub bytes_held: usize,
    /// Median receipt-to-processed latency (µs, bucket upper bound).
    pub latency_p50_us: Option<u64>,
    /// 99th percentile of the same.
    pub latency_p99_us: Option<u64>,
}

/// One sample message for [`Engine::test`], or a step of the clock.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// Topic it was published to (required unless `advance` is given).
    #[serde(default)]
    pub topic: Option<String>,
    /// JSON payload.
    #[serde(default)]
    pub payload: Option<serde_json::Value>,
    /// A payload given as text instead (need not be JSON).
    #[serde(default)]
    pub payload_raw: Option<String>,
    /// Publishing client id (default `test`).
    #[serde(default)]
    pub clientid: Option<String>,
    /// QoS (default 0).
    #[serde(default)]
    pub qos: u8,
    /// Receive time in ms since the epoch (default: 1 ms after the previous
    /// sample, starting now).
    #[serde(default)]
    pub time: Option<i64>,
    /// Instead of a message: move processing time to this value (ms).
    #[serde(default)]
    pub advance: Option<i64>,
}

/// What a dry run produced.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TestOutput {
    /// Rows in emission order; windows still open after the last sample are
    /// closed at the end.
    pub rows: Vec<Row>,
    /// Samples whose evaluation failed: `(index, error)`.
    pub errors: Vec<SampleError>,
    /// Whether rows were cut at [`MAX_TEST_ROWS`] (the run stopped there).
    pub truncated: bool,
}

/// A sample that failed to evaluate.
#[derive(Debug, Clone, Serialize)]
pub struct SampleError {
    /// Index of the sample.
    pub sample: usize,
    /// The evaluation error.
    pub error: String,
}

impl Engine {
    /// An engine with no rules.
    pub fn new(services: Services, settings: RuleEngineConfig) -> Engine {
        Engine {
            services,
            settings,
            rules: Mutex::new(BTreeMap::new()),
            test_turn: tokio::sync::Semaphore::new(1),
        }
    }

    /// Validate and add a rule; it starts if `enabled`. Nothing changes on
    /// error.
    pub async fn create(&self, config: RuleConfig) -> Result<RuleInfo, RuleError> {
        let query = self.validate(&config)?;
        let mut rules = self.rules.lock().await;
        if rules.contains_key(&config.id) {
            return Err(RuleError::Exists(config.id));
        }
        let mut entry = Entry {
            config,
            query,
            run: None,
        };
        if entry.config.enabled {
            entry.run = Some(self.launch(&entry).await?);
        }
        let info = info(&entry);
        rules.insert(entry.config.id.clone(), entry);
        Ok(info)
    }

    /// Replace a rule's SQL and actions (the id stays). The new version is
    /// validated before the old one stops; a running rule restarts with it.
    pub async fn update(&self, id: &str, mut config: RuleConfig) -> Result<RuleInfo, RuleError> {
        config.id = id.to_owned();
        let query = self.validate(&config)?;
        let (info, old) = {
            let mut rules = self.rules.lock().await;
            let entry = rules
                .get_mut(id)
                .ok_or_else(|| RuleError::NotFound(id.to_owned()))?;
            let old = match entry.run.take() {
                Some(run) => run.halt().await,
                None => Vec::new(),
            };
            entry.config = config;
            entry.query = query;
            if entry.config.enabled {
                entry.run = Some(self.launch(entry).await?);
            }
            (info(entry), old)
        };
        // The old actions finish their queues outside the lock, so the API
        // and metrics stay responsive meanwhile.
        finish_all(old, self.settings.stop_grace.get()).await;
        Ok(info)
    }

    /// Stop and remove a rule.
    pub async fn delete(&self, id: &str) -> Result<(), RuleError> {
        let entry = self
            .rules
            .lock()
            .await
            .remove(id)
            .ok_or_else(|| RuleError::NotFound(id.to_owned()))?;
        if let Some(run) = entry.run {
            finish_all(run.halt().await, self.settings.stop_grace.get()).await;
        }
        Ok(())
    }

    /// Start a stopped rule (a no-op if it runs).
    pub async fn start(&self, id: &str) -> Result<RuleInfo, RuleError> {
        let mut rules = self.rules.lock().await;
        let entry = rules
            .get_mut(id)
            .ok_or_else(|| RuleError::NotFound(id.to_owned()))?;
        entry.config.enabled = true;
        if entry.run.as_ref().is_none_or(Running::ended) {
            if let Some(dead) = entry.run.take() {
                drop(dead.halt().await);
            }
            entry.run = Some(self.launch(entry).await?);
        }
        Ok(info(entry))
    }

    /// Stop a rule; its actions finish what is queued (up to the grace).
    pub async fn stop(&self, id: &str) -> Result<RuleInfo, RuleError> {
        let (info, old) = {
            let mut rules = self.rules.lock().await;
            let entry = rules
                .get_mut(id)
                .ok_or_else(|| RuleError::NotFound(id.to_owned()))?;
            entry.config.enabled = false;
            let old = match entry.run.take() {
                Some(run) => run.halt().await,
                None => Vec::new(),
            };
            (info(entry), old)
        };
        finish_all(old, self.settings.stop_grace.get()).await;
        Ok(info)
    }

    /// Every rule, by id.
    pub async fn list(&self) -> Vec<RuleInfo> {
        self.rules.lock().await.values().map(info).collect()
    }

    /// One rule.
    pub async fn get(&self, id: &str) -> Result<RuleInfo, RuleError> {
        self.rules
            .lock()
            .await
            .get(id)
            .map(info)
            .ok_or_else(|| RuleError::NotFound(id.to_owned()))
    }

    /// Stop every rule (node shutdown).
    pub async fn shutdown(&self) {
        let mut old = Vec::new();
        for entry in self.rules.lock().await.values_mut() {
            if let Some(run) = entry.run.take() {
                old.extend(run.halt().await);
            }
        }
        finish_all(old, self.settings.stop_grace.get()).await;
    }

    /// Run `sql` over `samples` without side effects and return its rows.
    /// Dry runs take turns on the blocking pool, so they never hold up the
    /// node's async work, and each is bounded ([`MAX_TEST_SAMPLES`],
    /// [`MAX_TEST_ROWS`], small window limits).
    pub async fn test(&self, sql: String, samples: Vec<Sample>) -> Result<TestOutput, RuleError> {
        if samples.len() > MAX_TEST_SAMPLES {
            return Err(RuleError::Sample {
                index: MAX_TEST_SAMPLES,
                message: format!("too many samples (at most {MAX_TEST_SAMPLES})"),
            });
        }
        let _turn = self
            .test_turn
            .acquire()
            .await
            .map_err(|_| RuleError::Internal("dry runs are closed".into()))?;
        tokio::task::spawn_blocking(move || dry_run(&sql, &samples))
            .await
            .map_err(|e| RuleError::Internal(format!("dry run failed: {e}")))?
    }

    /// Append the rules' metrics in Prometheus text format.
    pub async fn render_metrics(&self, out: &mut String) {
        let rules = self.rules.lock().await;
        let families: [(&str, &str, &str); 8] = [
            (
                "verge_rule_messages_total",
                "counter",
                "messages that reached the rule",
            ),
            (
                "verge_rule_filtered_total",
                "counter",
                "messages the WHERE clause rejected",
            ),
            ("verge_rule_rows_total", "counter", "rows the rule produced"),
            ("verge_rule_errors_total", "counter", "evaluation errors"),
            (
                "verge_rule_dropped_total",
                "counter",
                "messages or values dropped, by reason",
            ),
            ("verge_rule_open_groups", "gauge", "window groups held"),
            ("verge_rule_running", "gauge", "1 if the rule runs"),
            (
                "verge_rule_action_rows_total",
                "counter",
                "rows by action and outcome",
            ),
        ];
        for (name, kind, help) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for e in rules.values() {
                let rule = label(&e.config.id);
                let m = metrics(e);
                match name {
                    "verge_rule_messages_total" => line(out, name, &rule, "", m.messages_in),
                    "verge_rule_filtered_total" => line(out, name, &rule, "", m.filtered),
                    "verge_rule_rows_total" => line(out, name, &rule, "", m.rows_out),
                    "verge_rule_errors_total" => line(out, name, &rule, "", m.errors),
                    "verge_rule_dropped_total" => {
                        for (reason, v) in [
                            ("queue", m.dropped_queue),
                            ("loop", m.dropped_loop),
                            ("groups", m.dropped_groups),
                            ("late", m.dropped_late),
                            ("future", m.dropped_future),
                            ("values", m.dropped_rows),
                        ] {
                            line(out, name, &rule, &format!(",reason=\"{reason}\""), v);
                        }
                    }
                    "verge_rule_open_groups" => line(out, name, &rule, "", m.open_groups as u64),
                    "verge_rule_running" => {
                        let running = e.run.as_ref().is_some_and(|r| !r.ended());
                        line(out, name, &rule, "", u64::from(running));
                    }
                    _ => {
                        for (i, a) in actions(e).iter().enumerate() {
                            for (outcome, v) in [
                                ("delivered", a.delivered),
                                ("failed", a.failed),
                                ("retried", a.retries),
                                ("dropped", a.dropped),
                            ] {
                                let extra =
                                    format!(",action=\"{i}:{}\",outcome=\"{outcome}\"", a.kind);
                                line(out, name, &rule, &extra, v);
                            }
                        }
                    }
                }
            }
        }
        let name = "verge_rule_latency_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} receipt-to-processed latency per message\n# TYPE {name} histogram"
        );
        for e in rules.values() {
            if let Some(run) = &e.run {
                let labels = format!("rule=\"{}\"", label(&e.config.id));
                run.shared.latency.render(out, name, &labels);
            }
        }
    }

    /// Check everything about a rule that can be checked before it runs.
    fn validate(&self, config: &RuleConfig) -> Result<Query, RuleError> {
        let id = &config.id;
        let id_ok = !id.is_empty()
            && id.len() <= 64
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !id_ok {
            return Err(RuleError::InvalidId(id.clone()));
        }
        let query = Query::parse(&config.sql)?;
        let columns = query.columns();
        for (index, kind) in config.actions.iter().enumerate() {
            action::build(kind, &self.services).map_err(|e| at(e, index))?;
            let template = match kind {
                ActionKind::Republish(c) => Some(&c.topic),
                ActionKind::Upstream(c) => Some(&c.topic),
                _ => None,
            };
            // Without `*` the row's columns are known: a template naming
            // another one would fail on every row.
            if let Some(t) = template.and_then(|t| Template::parse(t).ok())
                && !query.has_star()
                && let Some(missing) = t.columns().find(|c| !columns.contains(c))
            {
                let message = format!(
                    "topic template uses `{{{missing}}}` but the rule's columns are: {}",
                    columns.join(", ")
                );
                return Err(at(RuleError::action(kind.name(), message), index));
            }
            if kind.delivery().queue == 0 {
                return Err(at(
                    RuleError::action(kind.name(), "`delivery.queue` must be at least 1"),
                    index,
                ));
            }
        }
        Ok(query)
    }

    async fn launch(&self, entry: &Entry) -> Result<Running, RuleError> {
        let mut runners = Vec::with_capacity(entry.config.actions.len());
        for (index, kind) in entry.config.actions.iter().enumerate() {
            let a = action::build(kind, &self.services).map_err(|e| at(e, index))?;
            runners.push(ActionRunner::spawn(kind.name(), a, kind.delivery()));
        }
        let sub = match self
            .services
            .broker
            .subscribe_many(entry.query.sources(), self.settings.queue)
            .await
        {
            Ok(s) => s,
            Err(_) => {
                for r in runners {
                    r.finish(std::time::Duration::ZERO).await;
                }
                return Err(RuleError::BrokerClosed);
            }
        };
        let exec = entry.query.start(self.settings.limits());
        Ok(Running::start(
            Arc::from(entry.config.id.as_str()),
            sub,
            exec,
            entry.query.is_aggregate(),
            runners,
        ))
    }
}

/// At most this many samples per dry run.
pub const MAX_TEST_SAMPLES: usize = 10_000;
/// At most this many rows come back from a dry run; the rest is cut and
/// `truncated` is set.
pub const MAX_TEST_ROWS: usize = 10_000;

/// Window bounds of dry runs: small, since a request may ask for anything.
fn test_limits() -> Limits {
    Limits {
        max_groups: 1_000,
        max_rows_per_window: 10_000,
        max_open_windows: 100,
        ..Limits::default()
    }
}

fn dry_run(sql: &str, samples: &[Sample]) -> Result<TestOutput, RuleError> {
    let query = Query::parse(sql)?;
    let mut exec = query.start(test_limits());
    let mut out = TestOutput::default();
    let mut rows = Vec::new();
    let mut clock = now_ms();
    for (i, s) in samples.iter().enumerate() {
        let bad = |message: &str| RuleError::Sample {
            index: i,
            message: message.to_owned(),
        };
        if let Some(t) = s.advance {
            if s.topic.is_some() || s.payload.is_some() || s.payload_raw.is_some() {
                return Err(bad("`advance` cannot be combined with a message"));
            }
            clock = t;
            exec.advance(t, &mut rows);
        } else {
            let topic = s
                .topic
                .as_deref()
                .ok_or_else(|| bad("`topic` is missing"))?;
            if !verge_mqtt::topic::valid_topic_name(topic) {
                return Err(bad(&format!("`{topic}` is not a valid topic name")));
            }
            let payload = match (&s.payload, &s.payload_raw) {
                (Some(_), Some(_)) => {
                    return Err(bad("give `payload` or `payload_raw`, not both"));
                }
                (Some(v), None) => serde_json::to_vec(v).map_err(|e| bad(&e.to_string()))?,
                (None, Some(t)) => t.clone().into_bytes(),
                (None, None) => Vec::new(),
            };
            if s.qos > 2 {
                return Err(bad("`qos` must be 0, 1 or 2"));
            }
            clock = s.time.unwrap_or(clock.saturating_add(1));
            let ev = Event {
                topic,
                payload: &payload,
                client_id: s.clientid.as_deref().unwrap_or("test"),
                qos: s.qos,
                timestamp_ms: clock,
                user_properties: &[],
            };
            if query
                .sources()
                .iter()
                .any(|f| verge_mqtt::topic::matches(f, topic))
                && let Err(e) = exec.push(&ev, &mut rows)
            {
                out.errors.push(SampleError {
                    sample: i,
                    error: e.to_string(),
                });
            }
        }
        if take(&mut out, &mut rows) {
            return Ok(out);
        }
    }
    // Windows still open are closed at the end.
    exec.flush(&mut rows);
    take(&mut out, &mut rows);
    Ok(out)
}

/// Move `rows` into `out` up to [`MAX_TEST_ROWS`]; true once cut.
fn take(out: &mut TestOutput, rows: &mut Vec<Row>) -> bool {
    let room = MAX_TEST_ROWS - out.rows.len();
    if rows.len() > room {
        rows.truncate(room);
        out.truncated = true;
    }
    out.rows.append(rows);
    out.truncated
}

fn at(e: RuleError, index: usize) -> RuleError {
    match e {
        RuleError::Action { kind, message, .. } => RuleError::Action {
            index,
            kind,
            message,
        },
        other => other,
    }
}

fn line(out: &mut String, name: &str, rule: &str, extra: &str, v: u64) {
    let _ = writeln!(out, "{name}{{rule=\"{rule}\"{extra}}} {v}");
}

fn metrics(e: &Entry) -> RuleMetrics {
    let Some(run) = &e.run else {
        return RuleMetrics::default();
    };
    let s = run.shared.exec().stats();
    let internal = run.shared.internal_errors.load(Ordering::Relaxed);
    let internal_error = run
        .shared
        .internal_error
        .lock()
        .ok()
        .and_then(|e| e.clone());
    RuleMetrics {
        messages_in: s.messages_in,
        filtered: s.filtered,
        rows_out: s.rows_out,
        errors: s.eval_errors + internal,
        last_error: internal_error.or(s.last_error),
        dropped_queue: run.shared.queue_dropped.load(Ordering::Relaxed),
        dropped_loop: run.shared.loop_dropped.load(Ordering::Relaxed),
        dropped_groups: s.dropped_groups,
        dropped_late: s.dropped_late,
        dropped_future: s.dropped_future,
        dropped_rows: s.dropped_rows,
        open_groups: s.open_groups,
        bytes_held: s.bytes_held,
        latency_p50_us: run.shared.latency.quantile_us(0.5),
        latency_p99_us: run.shared.latency.quantile_us(0.99),
    }
}

fn actions(e: &Entry) -> Vec<ActionStatus> {
    match &e.run {
        Some(run) => run.actions.iter().map(ActionRunner::status).collect(),
        None => Vec::new(),
    }
}

fn info(e: &Entry) -> RuleInfo {
    RuleInfo {
        config: e.config.clone(),
        status: if e.run.is_some() {
            "running"
        } else {
            "stopped"
        },
        columns: e.query.columns().into_iter().map(str::to_owned).collect(),
        metrics: metrics(e),
        action_metrics: actions(e),
    }
}

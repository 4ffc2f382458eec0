//! The rule engine: the set of rules on a node, their lifecycle (create,
//! update, delete, start, stop), status and metrics, and dry runs (`test`).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;
use tokio::sync::Mutex;
use verge_sql::Query;

use crate::Services;
use crate::action::{self, ActionRunner, ActionStatus};
use crate::config::{RuleConfig, RuleEngineConfig};
use crate::dry_run::{Sample, TestOutput, check_samples, dry_run};
use crate::error::RuleError;
use crate::rule::{Running, finish_all};
use crate::validate::{self, at};
use verge_metrics::label;

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

    /// Refuse a webhook to a host `rule_engine.webhook_hosts` does not
    /// allow; log each allowed target, so that where rows go is on record.
    fn check_webhooks(&self, config: &RuleConfig) -> Result<(), RuleError> {
        for (index, url, host) in webhook_targets(config) {
            if !self.settings.webhook_allowed(host) {
                return Err(validate::at(
                    RuleError::action(
                        "webhook",
                        format!(
                            "the host `{host}` is not in rule_engine.webhook_hosts ({})",
                            self.settings.webhook_hosts.join(", ")
                        ),
                    ),
                    index,
                ));
            }
            tracing::info!(rule = %config.id, %url, "the rule's webhook sends rows to {host}");
        }
        Ok(())
    }

    /// The hosts webhook actions may send to (`rule_engine.webhook_hosts`).
    pub fn webhook_hosts(&self) -> &[String] {
        &self.settings.webhook_hosts
    }

    /// Every rule's webhook targets: (rule id, URL).
    pub async fn webhook_targets(&self) -> Vec<(String, String)> {
        let rules = self.rules.lock().await;
        rules
            .values()
            .flat_map(|e| {
                webhook_targets(&e.config).map(|(_, url, _)| (e.config.id.clone(), url.to_owned()))
            })
            .collect()
    }

    /// Validate and add a rule; it starts if `enabled`. Nothing changes on
    /// error.
    pub async fn create(&self, config: RuleConfig) -> Result<RuleInfo, RuleError> {
        let query = validate::check(&config, Some(&self.services))?;
        self.check_webhooks(&config)?;
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
        let query = validate::check(&config, Some(&self.services))?;
        self.check_webhooks(&config)?;
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

    /// Run `sql` over `samples` without side effects and return its rows
    /// ([`crate::dry_run`]). Dry runs take turns on the blocking pool, so
    /// they never hold up the node's async work, and each is bounded
    /// ([`crate::MAX_TEST_SAMPLES`], [`crate::MAX_TEST_ROWS`], small window
    /// limits).
    pub async fn test(&self, sql: String, samples: Vec<Sample>) -> Result<TestOutput, RuleError> {
        check_samples(&samples)?;
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

/// A rule's webhook actions: their index, URL and host (a URL without a
/// host is the action's own check to refuse).
fn webhook_targets(config: &RuleConfig) -> impl Iterator<Item = (usize, &str, &str)> {
    config
        .actions
        .iter()
        .enumerate()
        .filter_map(|(index, a)| match a {
            crate::config::ActionKind::Webhook(w) => {
                verge_net::host_of(&w.url).map(|h| (index, w.url.as_str(), h))
            }
            _ => None,
        })
}

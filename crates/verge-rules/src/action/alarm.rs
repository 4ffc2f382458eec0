//! `alarm`: raise or clear an alarm on the row's device. The node hands
//! the [`AlarmEvent`] to its cloud link (the cache queue) and its local
//! broker through the [`Alarms`] service it supplies.
//!
//! Whether a row clears is decided by `clear = true` (the action only
//! clears) or by `clear_when`, a boolean SQL expression over the row's
//! columns compiled with `verge-sql` as the `WHERE` of a one-column query
//! (`verge-sql` has no entry point for a lone expression; its `WHERE` is
//! exactly "a row where this is true"). The query reads the row's JSON as
//! its payload, so the expression sees the row's columns as fields, and
//! `topic(n)` is the input message's topic.
//!
//! Only changes are sent: a row whose event would leave the alarm as the
//! node last reported it is dropped (see [`super::alarm_memory`]: a clear
//! after a clear, a raise within 60 s of the last one), so normal telemetry
//! through a `clear_when` rule does not fill the priority `alarms` lane.

use std::sync::Arc;

use verge_protocol::device::{AlarmAction, AlarmEvent, Severity};
use verge_sql::{Event, Limits, Query, Value};

use super::alarm_memory::AlarmMemory;
use super::{Action, ActionError, BoxFuture, Output};
use crate::ServiceError;
use crate::Services;
use crate::config::AlarmConfig;
use crate::error::RuleError;
use crate::template::TextTemplate;

/// Longest alarm type and device name.
const MAX_NAME: usize = 128;
/// Longest `clear_when` expression.
const MAX_EXPRESSION: usize = 4096;
/// Longest message an alarm carries (longer ones are cut).
const MAX_MESSAGE: usize = 1024;

/// Where the node takes alarm events.
pub trait Alarms: Send + Sync + 'static {
    /// Hand over one event made by a row `hops` in-node steps from its
    /// device (what the node publishes from it carries the count on, so
    /// rules feeding each other stop); done when it is durable (in the
    /// cache queue when the node has a cloud link). The error says whether
    /// sending it again may succeed.
    fn send(&self, event: AlarmEvent, hops: u8) -> BoxFuture<'_, Result<(), ServiceError>>;
}

/// Raise or clear: fixed, or by an expression per row.
#[derive(Debug)]
enum Mode {
    Raise,
    Clear,
    ClearWhen(Query),
}

/// The checked settings of an `alarm` action.
#[derive(Debug)]
pub(crate) struct Settings {
    alarm_type: String,
    severity: Severity,
    message: TextTemplate,
    device: Option<TextTemplate>,
    mode: Mode,
}

impl Settings {
    /// Check the settings of `c`.
    pub(crate) fn new(c: &AlarmConfig) -> Result<Settings, RuleError> {
        let err = |m: String| RuleError::action("alarm", m);
        let t = &c.alarm_type;
        if t.is_empty() || t.len() > MAX_NAME || t.chars().any(char::is_control) {
            return Err(err(format!(
                "`alarm_type` must be 1 to {MAX_NAME} bytes without control characters, not `{t}`"
            )));
        }
        let message =
            TextTemplate::parse(&c.message).map_err(|e| err(format!("`message`: {e}")))?;
        let device = match &c.device {
            Some(d) if d.trim().is_empty() => return Err(err("`device` is empty".into())),
            Some(d) => Some(TextTemplate::parse(d).map_err(|e| err(format!("`device`: {e}")))?),
            None => None,
        };
        let mode = match (&c.clear_when, c.clear) {
            (Some(_), true) => {
                return Err(err(
                    "give either `clear = true` or `clear_when`, not both".into()
                ));
            }
            (Some(e), false) => Mode::ClearWhen(compile_clear_when(e).map_err(err)?),
            (None, true) => Mode::Clear,
            (None, false) => Mode::Raise,
        };
        Ok(Settings {
            alarm_type: t.clone(),
            severity: c.severity,
            message,
            device,
            mode,
        })
    }

    /// The columns the templates refer to (checked against the rule's
    /// columns when it has no `*`).
    pub(crate) fn columns(&self) -> impl Iterator<Item = &str> {
        self.message
            .columns()
            .chain(self.device.iter().flat_map(|d| d.columns()))
    }

    /// The event `out` makes.
    fn event(&self, out: &Output) -> Result<AlarmEvent, ActionError> {
        let device = match &self.device {
            Some(t) => t
                .render_strict(&out.row)
                .map_err(|e| ActionError::permanent(format!("alarm: device {e}")))?,
            None => topic_device(&out.topic)
                .ok_or_else(|| {
                    ActionError::permanent(format!(
                        "alarm: the input topic `{}` is not `devices/{{device}}/…`; set `device`",
                        out.topic
                    ))
                })?
                .to_owned(),
        };
        if device.is_empty() || device.len() > MAX_NAME || device.contains(['/', '+', '#', '\0']) {
            return Err(ActionError::permanent(format!(
                "alarm: `{device}` is not a device name (empty, or holds `/`, `+`, `#` or NUL)"
            )));
        }
        let clear = match &self.mode {
            Mode::Raise => false,
            Mode::Clear => true,
            Mode::ClearWhen(q) => clears(q, out)?,
        };
        let mut message = self.message.render(&out.row);
        if message.len() > MAX_MESSAGE {
            let mut end = MAX_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Ok(AlarmEvent {
            device,
            alarm_type: self.alarm_type.clone(),
            action: if clear {
                AlarmAction::Clear
            } else {
                AlarmAction::Raise
            },
            severity: self.severity,
            message,
            rule: out.rule.to_string(),
            at_ms: u64::try_from(out.time_ms).unwrap_or(0),
            details: serde_json::from_slice(&out.json).unwrap_or(serde_json::Value::Null),
        })
    }
}

/// `d` of `devices/{d}/…`.
fn topic_device(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix("devices/")?;
    let (device, _) = rest.split_once('/')?;
    (!device.is_empty()).then_some(device)
}

/// Compile `clear_when` as the `WHERE` of a query over the row.
fn compile_clear_when(expr: &str) -> Result<Query, String> {
    if expr.trim().is_empty() {
        return Err("`clear_when` is empty".into());
    }
    if expr.len() > MAX_EXPRESSION {
        return Err(format!(
            "`clear_when` is longer than {MAX_EXPRESSION} bytes"
        ));
    }
    // The expression starts line 2, so an error's column is the
    // expression's own; the line is shifted back below.
    let sql = format!("SELECT 1 AS clear_when FROM \"#\" WHERE\n{expr}\n");
    let query = Query::parse(&sql).map_err(|e| {
        let lines = expr.lines().count().max(1);
        match e.line.checked_sub(1) {
            Some(line) if (1..=u32::try_from(lines).unwrap_or(u32::MAX)).contains(&line) => {
                format!(
                    "`clear_when`: line {line}, column {}: {}",
                    e.column, e.message
                )
            }
            _ => format!("`clear_when`: {}", e.message),
        }
    })?;
    if query.is_aggregate() || query.columns() != ["clear_when"] {
        return Err("`clear_when` must be one boolean expression over the row's columns".into());
    }
    Ok(query)
}

/// Whether `clear_when` holds for the row.
fn clears(query: &Query, out: &Output) -> Result<bool, ActionError> {
    let mut exec = query.start(Limits::default());
    let mut rows = Vec::with_capacity(1);
    exec.push(
        &Event {
            topic: &out.topic,
            payload: &out.json,
            client_id: "",
            qos: 0,
            timestamp_ms: out.time_ms,
            user_properties: &[],
        },
        &mut rows,
    )
    .map_err(|e| ActionError::permanent(format!("alarm: clear_when: {e}")))?;
    Ok(rows
        .first()
        .is_some_and(|r| matches!(r.get("clear_when"), Some(Value::Int(1)))))
}

/// Raises or clears an alarm for each row.
pub struct Alarm {
    alarms: Arc<dyn Alarms>,
    settings: Settings,
    memory: Arc<AlarmMemory>,
}

impl Alarm {
    /// Check the settings and that the node takes alarms.
    pub fn new(c: &AlarmConfig, services: &Services) -> Result<Alarm, RuleError> {
        let settings = Settings::new(c)?;
        let alarms = services
            .alarms
            .clone()
            .ok_or_else(|| RuleError::action("alarm", "this node takes no alarms"))?;
        Ok(Alarm {
            alarms,
            settings,
            memory: services.alarm_memory.clone(),
        })
    }
}

impl Action for Alarm {
    fn deliver<'a>(&'a self, out: &'a Output) -> BoxFuture<'a, Result<(), ActionError>> {
        Box::pin(async move {
            let event = self.settings.event(out)?;
            let (device, action, at_ms) = (event.device.clone(), event.action, event.at_ms);
            let alarm_type = &self.settings.alarm_type;
            if !self.memory.should_send(&device, alarm_type, action, at_ms) {
                return Ok(());
            }
            self.alarms
                .send(event, out.hops)
                .await
                .map_err(|e| ActionError::service("alarm", e))?;
            self.memory.sent(&device, alarm_type, action, at_ms);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde_json::json;
    use verge_sql::Row;

    use super::*;

    fn config(v: serde_json::Value) -> AlarmConfig {
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    fn settings(v: serde_json::Value) -> Result<Settings, String> {
        Settings::new(&config(v)).map_err(|e| e.to_string())
    }

    fn output(topic: &str, row: serde_json::Value) -> Output {
        let pairs = row
            .as_object()
            .expect("object")
            .iter()
            .map(|(k, v)| {
                let v = Value::from_json(v.to_string().as_bytes()).expect("json");
                (Arc::from(k.as_str()), v)
            })
            .collect();
        Output {
            rule: Arc::from("hot"),
            row: Row::from_pairs(pairs),
            json: Bytes::from(row.to_string()),
            topic: Arc::from(topic),
            time_ms: 1_000,
            hops: 1,
        }
    }

    #[test]
    fn settings_are_checked_with_clear_errors() {
        let e = settings(json!({"alarm_type": ""})).unwrap_err();
        assert!(e.contains("`alarm_type` must be"), "{e}");
        let e = settings(json!({"alarm_type": "t", "message": "x {"})).unwrap_err();
        assert!(e.contains("`message`") && e.contains("unclosed"), "{e}");
        let e = settings(json!({"alarm_type": "t", "device": " "})).unwrap_err();
        assert!(e.contains("`device` is empty"), "{e}");
        let e = settings(json!({"alarm_type": "t", "clear": true, "clear_when": "a"})).unwrap_err();
        assert!(e.contains("not both"), "{e}");
        let e = settings(json!({"alarm_type": "t", "clear_when": "temp > ) 1"})).unwrap_err();
        assert!(
            e.starts_with("actions[0] (alarm): `clear_when`: line 1, column 8"),
            "{e}"
        );
        let e = settings(json!({"alarm_type": "t", "clear_when": "temp <"})).unwrap_err();
        assert!(e.contains("`clear_when`: expected an expression"), "{e}");
        let e = settings(json!({"alarm_type": "t", "clear_when": "count(*) > 1"})).unwrap_err();
        assert!(e.contains("`clear_when`"), "{e}");
        let e = settings(json!({"alarm_type": "t", "clear_when": "true GROUP BY x"})).unwrap_err();
        assert!(e.contains("`clear_when`"), "{e}");
        // a bad severity is refused when the config is read
        let bad =
            serde_json::from_value::<AlarmConfig>(json!({"alarm_type": "t", "severity": "bad"}))
                .unwrap_err()
                .to_string();
        assert!(
            bad.contains("unknown variant `bad`") && bad.contains("critical"),
            "{bad}"
        );
        assert!(serde_json::from_value::<AlarmConfig>(json!({"severity": "minor"})).is_err());
        let ok = settings(json!({"alarm_type": "t"})).expect("defaults");
        assert_eq!(ok.severity, Severity::Major);
    }

    #[test]
    fn a_row_raises_with_the_message_filled_and_the_topic_device() {
        let s = settings(json!({
            "alarm_type": "overheat", "severity": "critical",
            "message": "{temp} °C on {device}"
        }))
        .expect("valid");
        let e = s
            .event(&output(
                "devices/d7/telemetry",
                json!({"device": "d7", "temp": 91.5}),
            ))
            .expect("event");
        assert_eq!(e.device, "d7");
        assert_eq!(e.action, AlarmAction::Raise);
        assert_eq!(e.severity, Severity::Critical);
        assert_eq!(e.message, "91.5 °C on d7");
        assert_eq!((e.rule.as_str(), e.at_ms), ("hot", 1_000));
        assert_eq!(e.details, json!({"device": "d7", "temp": 91.5}));
        // no device in the topic and no `device` setting: the row fails
        let err = s
            .event(&output("sensors/x", json!({"temp": 1})))
            .unwrap_err();
        assert!(err.message.contains("set `device`") && !err.retry, "{err}");
    }

    #[test]
    fn the_device_template_must_make_one_name() {
        let s = settings(json!({"alarm_type": "t", "device": "{dev}"})).expect("valid");
        let e = s
            .event(&output("plant/line1", json!({"dev": "pump-3"})))
            .expect("event");
        assert_eq!(e.device, "pump-3");
        for bad in [
            json!({"dev": "a/b"}),
            json!({"dev": null}),
            json!({}),
            json!({"dev": "#"}),
        ] {
            assert!(
                s.event(&output("plant/line1", bad.clone())).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn clear_and_clear_when_decide_per_row() {
        let clear = settings(json!({"alarm_type": "t", "clear": true})).expect("valid");
        let out = output("devices/d1/telemetry", json!({"temp": 20}));
        assert_eq!(clear.event(&out).expect("event").action, AlarmAction::Clear);
        let when = settings(json!({
            "alarm_type": "t",
            "clear_when": "temp < 50 AND topic(2) = 'd1'"
        }))
        .expect("valid");
        let action = |topic: &str, row| when.event(&output(topic, row)).expect("event").action;
        assert_eq!(
            action("devices/d1/telemetry", json!({"temp": 20})),
            AlarmAction::Clear
        );
        assert_eq!(
            action("devices/d1/telemetry", json!({"temp": 80})),
            AlarmAction::Raise
        );
        // NULL (a missing column) is not true: the row raises
        assert_eq!(
            action("devices/d1/telemetry", json!({})),
            AlarmAction::Raise
        );
        assert_eq!(
            action("devices/d2/telemetry", json!({"temp": 20})),
            AlarmAction::Raise
        );
        // an expression that fails on the row fails the row, visibly
        let err = when
            .event(&output("devices/d1/telemetry", json!({"temp": "hot"})))
            .unwrap_err();
        assert!(err.message.contains("clear_when") && !err.retry, "{err}");
    }

    /// Keeps what it is sent; fails while `fail` is set.
    #[derive(Default)]
    struct Sink {
        events: std::sync::Mutex<Vec<AlarmEvent>>,
        fail: std::sync::atomic::AtomicBool,
    }

    impl Alarms for Sink {
        fn send(&self, event: AlarmEvent, _hops: u8) -> BoxFuture<'_, Result<(), ServiceError>> {
            Box::pin(async move {
                if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err(ServiceError::transient(
                        crate::Domain::External,
                        "lane full",
                    ));
                }
                self.events.lock().expect("lock").push(event);
                Ok(())
            })
        }
    }

    fn action(v: serde_json::Value, sink: &Arc<Sink>, memory: &Arc<AlarmMemory>) -> Alarm {
        Alarm {
            alarms: sink.clone(),
            settings: settings(v).expect("valid"),
            memory: memory.clone(),
        }
    }

    fn at(temp: i64, time_ms: i64) -> Output {
        let mut out = output("devices/d1/telemetry", json!({"temp": temp}));
        out.time_ms = time_ms;
        out
    }

    fn sent(sink: &Sink) -> Vec<AlarmAction> {
        sink.events
            .lock()
            .expect("lock")
            .iter()
            .map(|e| e.action)
            .collect()
    }

    #[tokio::test]
    async fn regression_clear_when_sends_changes_only_not_every_normal_row() {
        use AlarmAction::{Clear, Raise};
        let sink = Arc::new(Sink::default());
        let memory = Arc::new(AlarmMemory::new());
        let a = action(
            json!({"alarm_type": "overheat", "clear_when": "temp < 50"}),
            &sink,
            &memory,
        );
        // normal rows: one clear after the start (the cloud may hold an
        // alarm from before), then nothing
        for t in 0..5 {
            a.deliver(&at(20, t * 1_000)).await.expect("delivered");
        }
        assert_eq!(sent(&sink), [Clear]);
        // hot rows: one raise, a refresh after 60 s, then the clear
        for t in [10_000, 11_000, 30_000, 70_000, 71_000] {
            a.deliver(&at(90, t)).await.expect("delivered");
        }
        a.deliver(&at(20, 72_000)).await.expect("delivered");
        a.deliver(&at(20, 73_000)).await.expect("delivered");
        assert_eq!(sent(&sink), [Clear, Raise, Raise, Clear]);
        assert_eq!(memory.suppressed(), 8);
    }

    #[tokio::test]
    async fn a_failed_send_is_retried_and_a_clear_rule_sees_the_raise_rule() {
        use AlarmAction::{Clear, Raise};
        let sink = Arc::new(Sink::default());
        let memory = Arc::new(AlarmMemory::new());
        let raise = action(json!({"alarm_type": "overheat"}), &sink, &memory);
        let clear = action(
            json!({"alarm_type": "overheat", "clear": true}),
            &sink,
            &memory,
        );
        sink.fail.store(true, std::sync::atomic::Ordering::Relaxed);
        let err = raise.deliver(&at(90, 0)).await.unwrap_err();
        assert!(err.retry, "{err}");
        sink.fail.store(false, std::sync::atomic::Ordering::Relaxed);
        // the retry is sent: the failed one was not remembered
        raise.deliver(&at(90, 0)).await.expect("delivered");
        raise.deliver(&at(90, 1_000)).await.expect("delivered");
        // another rule's `clear = true` action clears what this one raised
        clear.deliver(&at(20, 2_000)).await.expect("delivered");
        clear.deliver(&at(20, 3_000)).await.expect("delivered");
        raise.deliver(&at(90, 4_000)).await.expect("delivered");
        assert_eq!(sent(&sink), [Raise, Clear, Raise]);
    }
}

//! Checking a rule before it runs: its id, its SQL (compiled with
//! `verge-sql`) and every action's settings. One path for the node's
//! engine (which also checks that the services an action needs are there)
//! and for a pure check without a node ([`validate`], used by the cloud).

use verge_sql::Query;

use crate::Services;
use crate::action;
use crate::config::{ActionKind, RuleConfig};
use crate::error::RuleError;
use crate::template::Template;

/// Check everything about a rule that does not depend on the node it runs
/// on: the id, the SQL, and each action's settings, as
/// [`crate::Engine::create`] does before it changes anything. An action
/// that needs a node service (`function`, `store`, `upstream`) passes if
/// its settings are valid; whether the node has the service (and, for
/// `upstream`, the lane) is checked when the rule is created there.
pub fn validate(config: &RuleConfig) -> Result<(), RuleError> {
    check(config, None).map(drop)
}

/// Check everything about a rule that can be checked before it runs and
/// return its compiled query. With `services`, each action is also built
/// against them (a node's engine); without, only its settings are checked.
pub(crate) fn check(config: &RuleConfig, services: Option<&Services>) -> Result<Query, RuleError> {
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
        match services {
            Some(services) => action::build(kind, services).map(drop),
            None => action::check(kind),
        }
        .map_err(|e| at(e, index))?;
        let used: Vec<String> = match kind {
            ActionKind::Republish(c) => template_columns(&c.topic),
            ActionKind::Upstream(c) => template_columns(&c.topic),
            ActionKind::Alarm(c) => action::alarm_columns(c),
            _ => Vec::new(),
        };
        // Without `*` the row's columns are known: a template naming
        // another one would fail on every row.
        if !query.has_star()
            && let Some(missing) = used.iter().find(|c| !columns.contains(&c.as_str()))
        {
            let what = match kind {
                ActionKind::Alarm(_) => "template",
                _ => "topic template",
            };
            let message = format!(
                "{what} uses `{{{missing}}}` but the rule's columns are: {}",
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

/// The columns a topic template uses (none when it does not parse: that
/// error is the action's own check).
fn template_columns(t: &str) -> Vec<String> {
    Template::parse(t)
        .map(|t| t.columns().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Put the action's position into an action error.
pub(crate) fn at(e: RuleError, index: usize) -> RuleError {
    match e {
        RuleError::Action { kind, message, .. } => RuleError::Action {
            index,
            kind,
            message,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(v: serde_json::Value) -> RuleConfig {
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    fn error(v: serde_json::Value) -> String {
        match validate(&rule(v)) {
            Ok(()) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    /// Actions that need a node service pass on their settings alone.
    #[test]
    fn node_service_actions_pass_without_a_node() {
        let ok = rule(serde_json::json!({
            "id": "r1",
            "sql": "SELECT device, temp FROM \"devices/+/telemetry\"",
            "actions": [
                {"type": "function", "name": "tag"},
                {"type": "store"},
                {"type": "upstream", "topic": "t/{device}", "lane": "no-such-lane"},
                {"type": "republish", "topic": "alerts/{device}", "qos": 1},
                {"type": "webhook", "url": "https://example.com/hook"},
                {"type": "log", "level": "warn"},
                {"type": "alarm", "alarm_type": "hot", "message": "{temp} °C",
                 "clear_when": "temp < 30"},
            ],
        }));
        assert!(validate(&ok).is_ok());
    }

    #[test]
    fn bad_rules_are_refused_as_the_engine_refuses_them() {
        let sql = "SELECT device FROM \"a\"";
        assert!(matches!(
            validate(&rule(serde_json::json!({"id": "a b", "sql": sql}))),
            Err(RuleError::InvalidId(_))
        ));
        match validate(&rule(serde_json::json!({"id": "r", "sql": "SELEKT"}))) {
            Err(RuleError::Sql(e)) => assert_eq!((e.line, e.column), (1, 1)),
            other => panic!("{other:?}"),
        }
        let bad = |action| {
            error(serde_json::json!({"id": "r", "sql": sql, "actions": [{"type": "log"}, action]}))
        };
        assert_eq!(
            bad(serde_json::json!({"type": "function", "name": ""})),
            "actions[1] (function): `name` is empty"
        );
        assert_eq!(
            bad(serde_json::json!({"type": "upstream", "topic": "t", "lane": ""})),
            "actions[1] (upstream): `lane` is empty"
        );
        assert_eq!(
            bad(serde_json::json!({"type": "republish", "topic": "t", "qos": 3})),
            "actions[1] (republish): qos 3 is not 0, 1 or 2"
        );
        assert_eq!(
            bad(serde_json::json!({"type": "republish", "topic": "t/{temp}"})),
            "actions[1] (republish): topic template uses `{temp}` but the rule's columns are: device"
        );
        assert_eq!(
            bad(serde_json::json!({"type": "alarm", "alarm_type": "hot", "message": "{temp}"})),
            "actions[1] (alarm): template uses `{temp}` but the rule's columns are: device"
        );
        assert_eq!(
            bad(
                serde_json::json!({"type": "alarm", "alarm_type": "hot", "clear": true,
                                   "clear_when": "device = 'x'"})
            ),
            "actions[1] (alarm): give either `clear = true` or `clear_when`, not both"
        );
        assert_eq!(
            bad(serde_json::json!({"type": "log", "delivery": {"queue": 0}})),
            "actions[1] (log): `delivery.queue` must be at least 1"
        );
        assert!(
            bad(serde_json::json!({"type": "webhook", "url": "ftp://x"}))
                .starts_with("actions[1] (webhook): ")
        );
        assert!(
            bad(serde_json::json!({"type": "log", "level": "loud"}))
                .starts_with("actions[1] (log): ")
        );
    }
}

//! Node labels (`{"site": "a", "tier": "edge"}`) and label selectors
//! (`site=a,tier=edge`: every pair must match). Labels group nodes for
//! rollouts; they do not change what a node runs (no revision).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::AppError;

/// Labels of one node, by key.
pub type Labels = BTreeMap<String, String>;

/// At most this many labels per node (and pairs per selector).
pub const MAX_LABELS: usize = 32;

/// Longest label key or value.
const MAX_LEN: usize = 63;

/// 400 unless `s` is 1–63 of `a-z A-Z 0-9 _ - .`.
fn check_part(field: &str, what: &str, s: &str) -> Result<(), AppError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        return Ok(());
    }
    let shown: String = s.chars().take(MAX_LEN).collect();
    Err(AppError::invalid(format!(
        "`{field}`: a label {what} must be 1 to {MAX_LEN} letters, digits, `_`, `-` or `.` (got `{shown}`)"
    )))
}

/// Labels from a JSON object of strings; 400 naming `field` otherwise.
pub fn parse(field: &str, value: &Value) -> Result<Labels, AppError> {
    let Some(map) = value.as_object() else {
        return Err(AppError::invalid(format!(
            "`{field}` must be an object of string labels"
        )));
    };
    if map.len() > MAX_LABELS {
        return Err(AppError::invalid(format!(
            "`{field}` has {} labels; at most {MAX_LABELS} are accepted",
            map.len()
        )));
    }
    let mut out = Labels::new();
    for (k, v) in map {
        check_part(field, "key", k)?;
        let Some(v) = v.as_str() else {
            return Err(AppError::invalid(format!("`{field}.{k}` must be a string")));
        };
        check_part(field, "value", v)?;
        out.insert(k.clone(), v.to_owned());
    }
    Ok(out)
}

/// A selector written `key=value,key=value` (the `?selector=` of the
/// node list); empty selects every node.
pub fn parse_selector(text: &str) -> Result<Labels, AppError> {
    let mut out = Labels::new();
    for pair in text.split(',').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(AppError::invalid(format!(
                "`selector`: `{pair}` is not `key=value`"
            )));
        };
        check_part("selector", "key", k)?;
        check_part("selector", "value", v)?;
        out.insert(k.to_owned(), v.to_owned());
    }
    if out.len() > MAX_LABELS {
        return Err(AppError::invalid(format!(
            "`selector` has more than {MAX_LABELS} pairs"
        )));
    }
    Ok(out)
}

/// The labels stored in a `nodes.labels` column (empty when not valid).
pub fn from_column(text: &str) -> Labels {
    serde_json::from_str(text).unwrap_or_default()
}

/// Whether `labels` has every pair of `selector`.
pub fn matches(selector: &Labels, labels: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// `selector` written back as `key=value,…`.
pub fn selector_text(selector: &Labels) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn labels_are_checked() {
        let l = parse("labels", &json!({"site": "a", "tier.x": "edge-1_B"})).expect("ok");
        assert_eq!(l.len(), 2);
        assert!(parse("labels", &json!({"site": 1})).is_err());
        assert!(parse("labels", &json!({"": "a"})).is_err());
        assert!(parse("labels", &json!({"a b": "a"})).is_err());
        assert!(parse("labels", &json!({"a": "x".repeat(64)})).is_err());
        assert!(parse("labels", &json!(["a"])).is_err());
        let many: serde_json::Map<String, Value> =
            (0..33).map(|i| (format!("k{i}"), json!("v"))).collect();
        let e = parse("labels", &Value::Object(many))
            .err()
            .map(|e| e.message);
        assert!(e.unwrap_or_default().contains("at most 32"));
    }

    #[test]
    fn selectors_match_every_pair() {
        let s = parse_selector("site=a,tier=edge").expect("ok");
        let node = parse("l", &json!({"site": "a", "tier": "edge", "x": "y"})).expect("ok");
        assert!(matches(&s, &node));
        let other = parse("l", &json!({"site": "a"})).expect("ok");
        assert!(!matches(&s, &other));
        assert!(matches(&parse_selector("").expect("empty"), &other));
        assert!(parse_selector("site").is_err());
        assert!(parse_selector("site=a b").is_err());
        assert_eq!(selector_text(&s), "site=a,tier=edge");
    }
}

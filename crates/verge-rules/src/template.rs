//! Topic templates: `alerts/{device}` filled from a row's columns.

use verge_sql::{Row, Value};

/// A parsed template: literal text and `{column}` references.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Column(String),
}

impl Template {
    /// Parse a template; `{` and `}` must pair up around a column name.
    pub fn parse(s: &str) -> Result<Template, String> {
        if s.is_empty() {
            return Err("topic template is empty".into());
        }
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err(format!("unmatched `}}` in topic template `{s}`"));
            }
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in topic template `{s}`"))?;
            let name = after[..close].trim();
            if name.is_empty() || name.contains('{') {
                return Err(format!("empty or nested `{{}}` in topic template `{s}`"));
            }
            parts.push(Part::Column(name.to_owned()));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        let t = Template { parts };
        if t.is_literal() && !verge_mqtt::topic::valid_topic_name(s) {
            return Err(format!("`{s}` is not a valid topic name"));
        }
        Ok(t)
    }

    /// Whether the template has no `{column}` references.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// The topic for `row`. A missing or NULL column, or a value that makes
    /// an invalid topic name, is an error naming it.
    pub fn render(&self, row: &Row) -> Result<String, String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Column(c) => match row.get(c) {
                    None => return Err(format!("topic template: the row has no column `{c}`")),
                    Some(Value::Null) => {
                        return Err(format!("topic template: column `{c}` is null"));
                    }
                    Some(Value::Str(s)) => out.push_str(s),
                    Some(v) => out.push_str(&v.to_string()),
                },
            }
        }
        if !verge_mqtt::topic::valid_topic_name(&out) {
            return Err(format!(
                "topic template made `{out}`, not a valid topic name"
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn row(pairs: &[(&str, Value)]) -> Row {
        Row::from_pairs(
            pairs
                .iter()
                .map(|(k, v)| (Arc::from(*k), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn renders_columns() {
        let t = Template::parse("alerts/{device}/{ level }").expect("parses");
        let r = row(&[
            ("device", Value::Str(Arc::from("d1"))),
            ("level", Value::Int(3)),
        ]);
        assert_eq!(t.render(&r).expect("renders"), "alerts/d1/3");
        assert!(!t.is_literal());
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(Template::parse("a/{b").unwrap_err().contains("unclosed"));
        assert!(Template::parse("a/b}").unwrap_err().contains("unmatched"));
        assert!(Template::parse("a/{}").unwrap_err().contains("empty"));
        assert!(
            Template::parse("a/#")
                .unwrap_err()
                .contains("not a valid topic")
        );
        assert!(Template::parse("").is_err());
        let t = Template::parse("x/{d}").expect("parses");
        assert!(t.render(&row(&[])).unwrap_err().contains("no column `d`"));
        assert!(
            t.render(&row(&[("d", Value::Null)]))
                .unwrap_err()
                .contains("null")
        );
        let wild = row(&[("d", Value::Str(Arc::from("+")))]);
        assert!(t.render(&wild).unwrap_err().contains("not a valid topic"));
    }
}

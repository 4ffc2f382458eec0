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
        if s.starts_with('$') {
            return Err(format!(
                "`{s}`: topics starting with `$` belong to the broker; actions cannot publish there"
            ));
        }
        Ok(t)
    }

    /// The columns the template refers to.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Column(c) => Some(c.as_str()),
            Part::Text(_) => None,
        })
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
                    Some(v) => {
                        let text = match v {
                            Value::Str(s) => s.to_string(),
                            v => v.to_string(),
                        };
                        // A value fills one topic level: it may not add
                        // levels or wildcards, so payload data cannot steer
                        // the output to another device's or the broker's
                        // topics.
                        if text.is_empty() || text.contains(['/', '+', '#', '\0']) {
                            return Err(format!(
                                "topic template: column `{c}` is `{text}`, which is empty or \
                                 holds `/`, `+`, `#` or NUL and cannot fill one topic level"
                            ));
                        }
                        out.push_str(&text);
                    }
                },
            }
        }
        if out.starts_with('$') {
            return Err(format!(
                "topic template made `{out}`: topics starting with `$` belong to the broker"
            ));
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
        for bad in ["+", "#", "a/b", "", "x\0"] {
            let r = row(&[("d", Value::Str(Arc::from(bad)))]);
            assert!(
                t.render(&r)
                    .unwrap_err()
                    .contains("cannot fill one topic level"),
                "{bad:?}"
            );
        }
        assert!(
            Template::parse("$SYS/x")
                .unwrap_err()
                .contains("belong to the broker")
        );
        let lead = Template::parse("{d}/alerts").expect("parses");
        let r = row(&[("d", Value::Str(Arc::from("$SYS")))]);
        assert!(
            lead.render(&r)
                .unwrap_err()
                .contains("belong to the broker")
        );
    }
}

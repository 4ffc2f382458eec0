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
        let parts = parse_parts(s, "topic template")?;
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

/// Split `s` into literal text and `{column}` references.
fn parse_parts(s: &str, what: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err(format!("unmatched `}}` in {what} `{s}`"));
        }
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed `{{` in {what} `{s}`"))?;
        let name = after[..close].trim();
        if name.is_empty() || name.contains('{') {
            return Err(format!("empty or nested `{{}}` in {what} `{s}`"));
        }
        parts.push(Part::Column(name.to_owned()));
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(parts)
}

/// A text template (an alarm's message): the same `{column}` syntax as
/// [`Template`], filled with any text; a missing or NULL column gives
/// `null`, so a message never fails a row.
#[derive(Debug, Clone, PartialEq)]
pub struct TextTemplate {
    parts: Vec<Part>,
}

impl TextTemplate {
    /// Parse a template (empty is allowed: an empty text).
    pub fn parse(s: &str) -> Result<TextTemplate, String> {
        Ok(TextTemplate {
            parts: parse_parts(s, "template")?,
        })
    }

    /// The columns the template refers to.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Column(c) => Some(c.as_str()),
            Part::Text(_) => None,
        })
    }

    /// The text for `row`, where every column must be there and not NULL
    /// (an alarm's device).
    pub fn render_strict(&self, row: &Row) -> Result<String, String> {
        if let Some(c) = self
            .columns()
            .find(|c| row.get(c).is_none_or(Value::is_null))
        {
            return Err(format!("template: column `{c}` is missing or null"));
        }
        Ok(self.render(row))
    }

    /// The text for `row`.
    pub fn render(&self, row: &Row) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Column(c) => match row.get(c) {
                    Some(Value::Str(s)) => out.push_str(s),
                    Some(v) => out.push_str(&v.to_string()),
                    None => out.push_str("null"),
                },
            }
        }
        out
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
    fn text_templates_take_any_text() {
        let t = TextTemplate::parse("{device}: {temp} °C, {gone}").expect("parses");
        let r = row(&[
            ("device", Value::Str(Arc::from("a/b #1"))),
            ("temp", Value::Float(41.5)),
        ]);
        assert_eq!(t.render(&r), "a/b #1: 41.5 °C, null");
        assert_eq!(t.columns().collect::<Vec<_>>(), ["device", "temp", "gone"]);
        assert_eq!(TextTemplate::parse("").expect("empty").render(&r), "");
        assert!(TextTemplate::parse("x {").unwrap_err().contains("unclosed"));
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

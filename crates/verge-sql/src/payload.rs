//! Payload decoding: parses a JSON payload once and keeps only the top-level fields the query uses.

use std::fmt;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use crate::value::Value;

/// The deepest nesting of objects and arrays (the payload object itself is
/// level 1) that a query can read; serde_json's recursion limit.
pub(crate) const MAX_PAYLOAD_DEPTH: usize = 127;

/// The fields of one message that a query references.
#[derive(Debug, Default)]
pub(crate) struct Fields {
    /// One slot per referenced top-level field name (NULL when absent).
    pub slots: Vec<Value>,
    /// Every top-level field, in payload order (only filled for `SELECT *`).
    pub all: Vec<(Arc<str>, Value)>,
}

impl Fields {
    /// Empty slots for `n` referenced fields.
    pub fn new(n: usize) -> Fields {
        Fields {
            slots: vec![Value::Null; n],
            all: Vec::new(),
        }
    }

    fn clear(&mut self) {
        for s in &mut self.slots {
            *s = Value::Null;
        }
        self.all.clear();
    }

    /// Decodes `payload`; fields stay NULL when it is not a JSON object.
    ///
    /// A JSON object the query cannot read is an error rather than NULL
    /// fields: a value it reads nested deeper than [`MAX_PAYLOAD_DEPTH`], or a
    /// number it reads beyond the FLOAT range (`1e400`). Fields the query
    /// does not read are skipped without being checked.
    pub fn load(&mut self, payload: &[u8], names: &[Arc<str>], star: bool) -> Result<(), String> {
        self.clear();
        if names.is_empty() && !star {
            return Ok(());
        }
        let mut de = serde_json::Deserializer::from_slice(payload);
        let seed = Top {
            names,
            slots: &mut self.slots,
            all: star.then_some(&mut self.all),
        };
        let r = seed.deserialize(&mut de).and_then(|()| de.end());
        if let Err(e) = r {
            self.clear();
            // serde_json names these two only in its message text.
            let text = e.to_string();
            if text.starts_with("recursion limit exceeded") {
                return Err(format!(
                    "payload is nested more than {MAX_PAYLOAD_DEPTH} levels deep (line {}, column {})",
                    e.line(),
                    e.column()
                ));
            }
            if text.starts_with("number out of range") {
                return Err(format!(
                    "payload number is out of the FLOAT range (line {}, column {})",
                    e.line(),
                    e.column()
                ));
            }
        }
        Ok(())
    }
}

struct Top<'a> {
    names: &'a [Arc<str>],
    slots: &'a mut [Value],
    all: Option<&'a mut Vec<(Arc<str>, Value)>>,
}

impl<'de> DeserializeSeed<'de> for Top<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        match self.all {
            None => {
                while let Some(k) = map.next_key_seed(KeySeed { names: self.names })? {
                    match k {
                        Some(i) => self.slots[i] = map.next_value()?,
                        None => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
            }
            Some(all) => {
                while let Some(k) = map.next_key::<crate::value::KeyStr>()? {
                    let v: Value = map.next_value()?;
                    if let Some(i) = self.names.iter().position(|n| *n == k.0) {
                        self.slots[i] = v.clone();
                    }
                    // A repeated key replaces the earlier one.
                    if let Some(slot) = all.iter_mut().find(|(n, _)| *n == k.0) {
                        slot.1 = v;
                    } else {
                        all.push((k.0, v));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Reads a key and answers the index of the referenced name it equals, without allocating.
struct KeySeed<'a> {
    names: &'a [Arc<str>],
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Option<usize>, E> {
        Ok(self.names.iter().position(|n| **n == *s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_referenced_fields() {
        let names: Vec<Arc<str>> = vec![Arc::from("b"), Arc::from("z")];
        let mut f = Fields::new(2);
        let load = |f: &mut Fields, p: &[u8], star: bool| f.load(p, &names, star).expect("load");
        load(&mut f, br#"{"a":{"deep":[1,2]},"b":"x\"y","c":3}"#, false);
        assert_eq!(f.slots, vec![Value::str("x\"y"), Value::Null]);
        load(&mut f, b"not json", false);
        assert_eq!(f.slots, vec![Value::Null, Value::Null]);
        load(&mut f, br#"{"b":1} trailing"#, false);
        assert_eq!(f.slots, vec![Value::Null, Value::Null]);
        load(&mut f, br#"{"b":1,"a":2}"#, true);
        assert_eq!(f.slots[0], Value::Int(1));
        assert_eq!(f.all.len(), 2);
    }

    #[test]
    fn nesting_limit_is_exact() {
        let names: Vec<Arc<str>> = vec![Arc::from("a")];
        let mut f = Fields::new(1);
        let nested = |levels: usize| {
            // The payload object is level 1; `a` holds the rest.
            let inner = levels - 1;
            format!(r#"{{"a":{}{}}}"#, "[".repeat(inner), "]".repeat(inner))
        };
        f.load(nested(MAX_PAYLOAD_DEPTH).as_bytes(), &names, false)
            .expect("at the limit");
        assert!(matches!(f.slots[0], Value::Array(_)));
        let e = f
            .load(nested(MAX_PAYLOAD_DEPTH + 1).as_bytes(), &names, false)
            .expect_err("beyond the limit");
        assert!(
            e.starts_with("payload is nested more than 127 levels deep"),
            "{e}"
        );
        // A deep field the query does not read is skipped unchecked.
        let other: Vec<Arc<str>> = vec![Arc::from("b")];
        f.load(nested(500).as_bytes(), &other, false)
            .expect("not read");
    }
}

//! Output rows: ordered (column, value) pairs, serialised as one JSON object.

use std::sync::Arc;

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::value::Value;

/// One output row of a rule. Column names are shared with the compiled query,
/// so building a row allocates only the value vector.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row {
    cols: Vec<(Arc<str>, Value)>,
}

impl Row {
    /// A row from (column, value) pairs.
    pub fn from_pairs(cols: Vec<(Arc<str>, Value)>) -> Row {
        Row { cols }
    }

    /// The value of column `name` (case-sensitive); rows are narrow, so this is a short scan.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.cols.iter().find(|(k, _)| &**k == name).map(|(_, v)| v)
    }

    /// Columns and values in SELECT order.
    pub fn columns(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.cols.iter().map(|(k, v)| (&**k, v))
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.cols.len()
    }

    /// Whether the row has no columns.
    pub fn is_empty(&self) -> bool {
        self.cols.is_empty()
    }

    /// The row as a JSON object text, columns in SELECT order.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The row as a [`Value::Object`].
    pub fn into_value(self) -> Value {
        Value::Object(self.cols)
    }

    /// Appends a column (names are unique by construction).
    pub(crate) fn push(&mut self, name: Arc<str>, v: Value) {
        self.cols.push((name, v));
    }

    pub(crate) fn with_capacity(n: usize) -> Row {
        Row {
            cols: Vec::with_capacity(n),
        }
    }
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.cols.len()))?;
        for (k, v) in &self.cols {
            map.serialize_entry(&**k, v)?;
        }
        map.end()
    }
}

//! The rule engine's `store` action into the local time-series store: the
//! adapter from [`TelemetryPoint`] (SQL values) to [`verge_tsdb::Point`].

use std::sync::Arc;

use verge_rules::action::BoxFuture;
use verge_rules::{TelemetryPoint, TelemetryStore};
use verge_sql::Value as Sql;
use verge_tsdb::{Point, Tsdb, Value};

/// [`TelemetryStore`] over a [`Tsdb`].
pub struct TsdbStore {
    db: Arc<Tsdb>,
}

impl TsdbStore {
    /// The adapter over `db`.
    pub fn new(db: Arc<Tsdb>) -> TsdbStore {
        TsdbStore { db }
    }
}

/// A SQL value as a stored value: integers and floats as numbers,
/// booleans and strings as themselves, bytes, arrays and objects as their
/// JSON text; NULL is not stored.
pub fn to_value(v: &Sql) -> Option<Value> {
    Some(match v {
        Sql::Null => return None,
        Sql::Bool(b) => Value::Bool(*b),
        Sql::Int(i) => Value::Number(*i as f64),
        Sql::Float(f) => Value::Number(*f),
        Sql::Str(s) => Value::Text(s.to_string()),
        Sql::Bytes(_) | Sql::Array(_) | Sql::Object(_) => Value::Json(v.to_json()),
    })
}

impl TelemetryStore for TsdbStore {
    fn write(&self, points: Vec<TelemetryPoint>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let points: Vec<Point> = points
                .into_iter()
                .filter_map(|p| {
                    Some(Point {
                        value: to_value(&p.value)?,
                        device: p.device,
                        metric: p.metric,
                        time_ms: p.time_ms,
                    })
                })
                .collect();
            let db = self.db.clone();
            // Usually a memory copy, but a full buffer means a write(2).
            tokio::task::spawn_blocking(move || db.write(&points))
                .await
                .map_err(|e| format!("store task failed: {e}"))?
                .map_err(|e| e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_values_map_to_stored_values() {
        assert_eq!(to_value(&Sql::Null), None);
        assert_eq!(to_value(&Sql::Int(3)), Some(Value::Number(3.0)));
        assert_eq!(to_value(&Sql::Float(1.5)), Some(Value::Number(1.5)));
        assert_eq!(to_value(&Sql::Bool(true)), Some(Value::Bool(true)));
        assert_eq!(
            to_value(&Sql::Str("on".into())),
            Some(Value::Text("on".into()))
        );
        assert_eq!(
            to_value(&Sql::Array(vec![Sql::Int(1), Sql::Null])),
            Some(Value::Json("[1,null]".into()))
        );
    }
}

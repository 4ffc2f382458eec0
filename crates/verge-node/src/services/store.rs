//! The rule engine's `store` action into the local time-series store: the
//! adapter from [`TelemetryPoint`] (SQL values) to [`verge_tsdb::Point`].

use std::sync::Arc;

use verge_net::BoxFuture;
use verge_rules::{Domain, ServiceError, TelemetryPoint, TelemetryStore};
use verge_sql::Value as Sql;
use verge_tsdb::{Point, Tsdb, TsdbError, Value};

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

/// A store error as a service error: whether the rule's action may retry.
///
/// - `Backlog` (flushes keep failing) and `Io`: retry, the disk may recover.
/// - `Closed`: the store is shut down; no retry.
/// - `Config`, `InvalidQuery`: the request is wrong; no retry.
///
/// Points the store refuses one by one (bad names, out of retention) are
/// not errors: they are counted in its `points_dropped`.
pub fn service_error(e: TsdbError) -> ServiceError {
    let message = e.to_string();
    match e {
        TsdbError::Backlog(_) | TsdbError::Io { .. } => {
            ServiceError::transient(Domain::External, message)
        }
        TsdbError::Closed => ServiceError::permanent(Domain::Internal, message),
        TsdbError::Config { .. } | TsdbError::InvalidQuery { .. } => {
            ServiceError::permanent(Domain::User, message)
        }
    }
}

impl TelemetryStore for TsdbStore {
    fn write(&self, points: Vec<TelemetryPoint>) -> BoxFuture<'_, Result<(), ServiceError>> {
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
                .map_err(|e| {
                    ServiceError::permanent(Domain::Internal, format!("store task failed: {e}"))
                })?
                .map_err(service_error)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_tsdb::TsdbConfig;

    /// Regression: a closed store's refusal was retried as transient.
    #[tokio::test]
    async fn a_closed_store_is_not_retried_a_backlog_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Arc::new(
            Tsdb::open(TsdbConfig {
                dir: dir.path().to_path_buf(),
                ..TsdbConfig::default()
            })
            .expect("open"),
        );
        let store = TsdbStore::new(db.clone());
        let point = || TelemetryPoint {
            device: "d".into(),
            metric: "t".into(),
            time_ms: verge_net::now_ms(),
            value: Sql::Int(1),
        };
        store.write(vec![point()]).await.expect("written");
        db.close();
        let e = store.write(vec![point()]).await.expect_err("closed");
        assert_eq!((e.domain, e.retry), (Domain::Internal, false), "{e}");
        let e = service_error(TsdbError::Backlog(1));
        assert_eq!((e.domain, e.retry), (Domain::External, true), "{e}");
    }

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

//! `/api/nodes/{id}/drivers`: the protocol drivers (with their point
//! tables) a node should run. A driver is checked by the driver crate's
//! own config type and checks (`verge_drivers::DriverConfig`) before it is
//! stored, and must name no file of the node
//! (`verge_protocol::DriverSpec::check_files`); every change is a new
//! revision of the node. The config is stored as it was given (without
//! `name`), so the node gets the keys the operator wrote, defaults left
//! to the node.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{Map, Value, json};
use sqlx::{Any, Transaction};
use verge_drivers::DriverConfig;
use verge_protocol::DriverSpec;

use super::rows::{commit_bumped, one_or_404};
use crate::Cloud;
use crate::auth::ApiAuth;
use crate::db::now_ms;
use crate::error::{ApiJson, ApiPath, AppError, check_json_size, check_name};
use crate::revisions::Reason;

/// Largest driver config accepted, in bytes of JSON: a point table of
/// some thousands of points. Every driver travels in the node's desired
/// state.
pub const MAX_DRIVER: usize = 1 << 20;

/// 400 `invalid_driver`.
fn invalid(message: impl Into<String>) -> AppError {
    AppError::new(StatusCode::BAD_REQUEST, "invalid_driver", message)
}

/// The driver `name` from the body of `PUT /api/nodes/{id}/drivers/{name}`:
/// the driver's config as the node's drivers API takes it, `name` optional
/// but the path's when given. Checked as the node checks it, without
/// opening anything; 400 names the key.
pub fn parse(name: &str, body: Value) -> Result<DriverSpec, AppError> {
    check_name("name", name)?;
    check_json_size("driver", &body, MAX_DRIVER)?;
    let Value::Object(mut settings) = body else {
        return Err(AppError::invalid(
            "the body must be a JSON object: the driver's config",
        ));
    };
    match settings.remove("name") {
        None => {}
        Some(Value::String(n)) if n == name => {}
        Some(other) => {
            return Err(AppError::invalid(format!(
                "`name` {other} differs from the driver in the path `{name}`"
            )));
        }
    }
    let spec = DriverSpec {
        name: name.to_owned(),
        settings,
    };
    spec.check_files().map_err(invalid)?;
    let whole = serde_json::to_value(&spec).map_err(AppError::internal)?;
    let config: DriverConfig = serde_path_to_error::deserialize(whole).map_err(|e| {
        let at = e.path().to_string();
        if at == "." {
            invalid(format!("driver `{name}`: {}", e.inner()))
        } else {
            invalid(format!("driver `{name}`: {at}: {}", e.inner()))
        }
    })?;
    check(&config).map_err(|e| invalid(format!("driver `{name}`: {e}")))?;
    Ok(spec)
}

/// The driver crate's checks of `config`: all of them when this build has
/// the protocol's client; without it (OPC UA, a cargo feature of the
/// driver crate) every check but the protocol's own reading of addresses,
/// which the node makes when it applies the revision.
fn check(config: &DriverConfig) -> Result<(), String> {
    if verge_drivers::protocol::built_in(config.protocol) {
        config.validate()
    } else {
        config.validate_keys()
    }
}

/// The drivers of `node` in its desired state, by name.
pub(crate) async fn node_specs(
    tx: &mut Transaction<'_, Any>,
    node: &str,
) -> Result<Vec<DriverSpec>, AppError> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT name, config FROM node_drivers WHERE node_id = $1 ORDER BY name")
            .bind(node)
            .fetch_all(&mut **tx)
            .await?;
    rows.into_iter()
        .map(|(name, config)| {
            let settings: Map<String, Value> = serde_json::from_str(&config).map_err(|e| {
                AppError::internal(format!(
                    "stored config of driver `{name}` is not valid: {e}"
                ))
            })?;
            Ok(DriverSpec { name, settings })
        })
        .collect()
}

/// Drivers one node takes at most (every revision carries them all).
const MAX_DRIVERS: usize = 256;

/// The names of the devices a driver's config reads.
fn device_names(config: &Map<String, Value>) -> Vec<String> {
    config
        .get("devices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|d| d.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// One stored driver: name, config, created_ms, updated_ms.
type DriverRow = (String, String, i64, i64);

/// A `NodeDriver`: the driver's config as stored (with its `name`) and
/// what it holds, for lists.
fn driver_json(node: &str, row: DriverRow) -> Value {
    let (name, config, created_ms, updated_ms) = row;
    let mut config = match crate::db::json_col(&config) {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let devices = config
        .get("devices")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let points: usize = devices
        .iter()
        .map(|d| d["points"].as_array().map_or(0, Vec::len))
        .sum();
    let protocol = config.get("protocol").cloned().unwrap_or(Value::Null);
    let mut whole = Map::with_capacity(config.len() + 1);
    whole.insert("name".into(), Value::String(name.clone()));
    whole.append(&mut config);
    json!({
        "node_id": node, "name": name, "protocol": protocol,
        "devices": devices.len(), "points": points, "config": whole,
        "created_ms": created_ms, "updated_ms": updated_ms,
    })
}

const COLS: &str = "name, config, created_ms, updated_ms";

/// 404 unless there is a node `node`.
async fn node_exists(cloud: &Cloud, node: &str) -> Result<(), AppError> {
    let _: (String,) = one_or_404(
        &cloud.inner().pool,
        "SELECT id FROM nodes WHERE id = $1",
        node,
        "node",
    )
    .await?;
    Ok(())
}

async fn load(cloud: &Cloud, node: &str, name: &str) -> Result<Value, AppError> {
    let row: Option<DriverRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM node_drivers WHERE node_id = $1 AND name = $2"
    )))
    .bind(node)
    .bind(name)
    .fetch_optional(&cloud.inner().pool)
    .await?;
    row.map(|r| driver_json(node, r))
        .ok_or_else(|| AppError::not_found(format!("node `{node}` has no driver `{name}`")))
}

pub async fn list(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath(node): ApiPath<String>,
) -> Result<Json<Vec<Value>>, AppError> {
    node_exists(&cloud, &node).await?;
    let rows: Vec<DriverRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLS} FROM node_drivers WHERE node_id = $1 ORDER BY name"
    )))
    .bind(&node)
    .fetch_all(&cloud.inner().pool)
    .await?;
    Ok(Json(
        rows.into_iter().map(|r| driver_json(&node, r)).collect(),
    ))
}

pub async fn get(
    _: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath((node, name)): ApiPath<(String, String)>,
) -> Result<Json<Value>, AppError> {
    node_exists(&cloud, &node).await?;
    Ok(Json(load(&cloud, &node, &name).await?))
}

pub async fn put(
    auth: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath((node, name)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<Value>,
) -> Result<impl IntoResponse, AppError> {
    let spec = parse(&name, body)?;
    let devices = device_names(&spec.settings);
    let config = Value::Object(spec.settings).to_string();
    let mut tx = cloud.inner().pool.begin().await?;
    crate::db::lock_node(&mut tx, &node).await?;
    // A device is read by one driver: the node refuses a second driver of
    // one of its devices, and with it every revision until that is fixed.
    let others: Vec<(String, String)> =
        sqlx::query_as("SELECT name, config FROM node_drivers WHERE node_id = $1 AND name <> $2")
            .bind(&node)
            .bind(&name)
            .fetch_all(&mut *tx)
            .await?;
    if others.len() >= MAX_DRIVERS {
        return Err(AppError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("node `{node}` has {MAX_DRIVERS} drivers, the most one node takes"),
        ));
    }
    for (other, cfg) in &others {
        let theirs = match crate::db::json_col(cfg) {
            Value::Object(m) => device_names(&m),
            _ => Vec::new(),
        };
        if let Some(d) = devices.iter().find(|d| theirs.contains(d)) {
            return Err(AppError::new(
                StatusCode::BAD_REQUEST,
                "invalid_driver",
                format!(
                    "devices: `{d}` is read by driver `{other}` of node `{node}` already; a \
                     device belongs to one driver"
                ),
            ));
        }
    }
    let before: Option<(String,)> =
        sqlx::query_as("SELECT config FROM node_drivers WHERE node_id = $1 AND name = $2")
            .bind(&node)
            .bind(&name)
            .fetch_optional(&mut *tx)
            .await?;
    let now = now_ms();
    let status = match before {
        // The same config again: nothing changes, no new revision.
        Some((old,)) if old == config => {
            tx.commit().await?;
            StatusCode::OK
        }
        Some(_) => {
            sqlx::query(
                "UPDATE node_drivers SET config = $1, updated_ms = $2 WHERE node_id = $3 AND name = $4",
            )
            .bind(&config)
            .bind(now)
            .bind(&node)
            .bind(&name)
            .execute(&mut *tx)
            .await?;
            let reason = Reason::new(&auth.caller, format!("driver `{name}` set"));
            commit_bumped(&cloud, tx, std::slice::from_ref(&node), &reason).await?;
            StatusCode::OK
        }
        None => {
            sqlx::query(
                "INSERT INTO node_drivers (node_id, name, config, created_ms, updated_ms) \
                 VALUES ($1, $2, $3, $4, $4)",
            )
            .bind(&node)
            .bind(&name)
            .bind(&config)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let reason = Reason::new(&auth.caller, format!("driver `{name}` added"));
            commit_bumped(&cloud, tx, std::slice::from_ref(&node), &reason).await?;
            StatusCode::CREATED
        }
    };
    Ok((status, Json(load(&cloud, &node, &name).await?)))
}

pub async fn delete(
    auth: ApiAuth,
    State(cloud): State<Cloud>,
    ApiPath((node, name)): ApiPath<(String, String)>,
) -> Result<StatusCode, AppError> {
    let mut tx = cloud.inner().pool.begin().await?;
    crate::db::lock_node(&mut tx, &node).await?;
    let done = sqlx::query("DELETE FROM node_drivers WHERE node_id = $1 AND name = $2")
        .bind(&node)
        .bind(&name)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() == 0 {
        return Err(AppError::not_found(format!(
            "node `{node}` has no driver `{name}`"
        )));
    }
    let reason = Reason::new(&auth.caller, format!("driver `{name}` removed"));
    commit_bumped(&cloud, tx, std::slice::from_ref(&node), &reason).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn modbus() -> Value {
        json!({"protocol": "modbus-tcp", "host": "10.0.0.5",
               "devices": [{"name": "m1", "points": [{"name": "t", "address": "hr:0"}]}]})
    }

    fn refused(name: &str, body: Value) -> String {
        match parse(name, body) {
            Ok(spec) => panic!("accepted {spec:?}"),
            Err(e) => format!("{} {}", e.code, e.message),
        }
    }

    #[test]
    fn a_driver_is_stored_as_given_without_its_name() {
        let spec = parse("plc1", modbus()).unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(spec.name, "plc1");
        assert_eq!(Value::Object(spec.settings), modbus());
        let mut named = modbus();
        named["name"] = json!("plc1");
        assert!(parse("plc1", named).is_ok());
    }

    #[test]
    fn refusals_name_the_key() {
        let mut unknown = modbus();
        unknown["devices"][0]["points"][0]["surprise"] = json!(1);
        let e = refused("plc1", unknown);
        assert!(e.starts_with("invalid_driver"), "{e}");
        assert!(
            e.contains("devices[0].points[0]") && e.contains("surprise"),
            "{e}"
        );
        let e = refused("plc1", json!({"protocol": "modbus-tcp", "host": "h"}));
        assert!(e.contains("devices"), "{e}");
        let e = refused(
            "plc1",
            json!({"protocol": "profibus", "host": "h", "devices": []}),
        );
        assert!(e.contains("protocol") && e.contains("profibus"), "{e}");
        let mut bad_address = modbus();
        bad_address["devices"][0]["points"][0]["address"] = json!("xx:1");
        let e = refused("plc1", bad_address);
        assert!(e.contains("devices[0].points[0].address"), "{e}");
    }

    #[test]
    fn files_of_the_node_are_refused() {
        let e = refused(
            "ua",
            json!({"protocol": "opcua", "endpoint": "opc.tcp://h:4840", "pki_dir": "/etc",
                   "devices": [{"name": "d", "points": [{"name": "p", "address": "ns=2;i=1"}]}]}),
        );
        assert!(
            e.starts_with("invalid_driver") && e.contains("pki_dir"),
            "{e}"
        );
        let e = refused(
            "rtu",
            json!({"protocol": "modbus-rtu", "serial": {"device": "/etc/passwd"},
                   "devices": [{"name": "d", "points": [{"name": "p", "address": "hr:1"}]}]}),
        );
        assert!(e.contains("serial.device"), "{e}");
    }

    #[test]
    fn the_name_is_the_paths() {
        let mut other = modbus();
        other["name"] = json!("plc2");
        let e = refused("plc1", other);
        assert!(
            e.starts_with("invalid_request") && e.contains("plc2"),
            "{e}"
        );
        let e = refused("a b", modbus());
        assert!(
            e.starts_with("invalid_request") && e.contains("`name`"),
            "{e}"
        );
        let e = refused("plc1", json!([1]));
        assert!(e.starts_with("invalid_request"), "{e}");
    }
}

//! `/api/drivers`: the node's protocol drivers (create, list, get, replace,
//! delete) with their status, and their Prometheus metrics. What the API
//! changes is saved in the node's data dir ([`crate::local`]). A driver the
//! cloud deploys is not changed here (409 `managed_by_cloud`).

#[cfg(feature = "opcua")]
use axum::extract::Query;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use verge_drivers::{DriverConfig, DriverStatus, Drivers};

use super::ApiState;
use super::AppError;

/// 409 when the cloud deploys the driver `name`.
fn refuse_managed(s: &ApiState, name: &str) -> Result<(), AppError> {
    super::refuse_managed(s, "driver", name, verge_agent::StatusHandle::manages_driver)
}

/// The routes, to nest under `/api`.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/drivers", get(list).post(create))
        .route("/drivers/{name}", get(one).put(replace).delete(remove))
        .route("/drivers/{name}/browse", get(browse))
}

fn drivers(s: &ApiState) -> Result<std::sync::Arc<Drivers>, AppError> {
    s.drivers.clone().ok_or_else(|| {
        AppError::new(
            StatusCode::NOT_FOUND,
            "drivers_disabled",
            "this node runs no protocol drivers",
        )
    })
}

fn not_found(name: &str) -> AppError {
    AppError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no driver named `{name}`"),
    )
}

async fn list(State(s): State<ApiState>) -> Result<Json<Vec<DriverStatus>>, AppError> {
    Ok(Json(drivers(&s)?.list()))
}

/// A driver's config and status.
#[derive(Serialize)]
struct DriverInfo {
    config: DriverConfig,
    status: DriverStatus,
}

async fn one(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<DriverInfo>, AppError> {
    let (config, status) = drivers(&s)?.get(&name).ok_or_else(|| not_found(&name))?;
    Ok(Json(DriverInfo { config, status }))
}

async fn start(
    d: &Drivers,
    cfg: DriverConfig,
) -> Result<(StatusCode, Json<DriverStatus>), AppError> {
    let existed = d.get(&cfg.name).is_some();
    let status = d
        .create(cfg)
        .await
        .map_err(|e| AppError::new(StatusCode::BAD_REQUEST, "invalid_driver", e))?;
    let code = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((code, Json(status)))
}

/// 400 for settings that name places on the node's file system other than
/// a serial device: `pki_dir` comes from the config file only (the API
/// would otherwise write certificates anywhere), and a serial line must be
/// a device under `/dev/`. The `pki_dir` the running driver of that name
/// has (the node's default, shown by GET) may be sent back unchanged.
fn refuse_paths(d: &Drivers, cfg: &DriverConfig) -> Result<(), AppError> {
    let bad = |m: String| AppError::new(StatusCode::BAD_REQUEST, "invalid_driver", m);
    let current = d.get(&cfg.name).and_then(|(c, _)| c.pki_dir);
    if cfg.pki_dir.is_some() && cfg.pki_dir != current {
        return Err(bad(
            "`pki_dir` names a directory on the node, which the API does not write to: set it \
             in the config file, or leave it out (the node keeps the certificates in \
             <data_dir>/opcua-pki/<driver>)"
                .into(),
        ));
    }
    if let Some(serial) = &cfg.serial {
        let dev = std::path::Path::new(&serial.device);
        let under_dev = dev.is_absolute()
            && dev.starts_with("/dev")
            && !dev
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir));
        if !under_dev {
            return Err(bad(format!(
                "`serial.device` {:?} is not a device under /dev/ (e.g. /dev/ttyUSB0)",
                serial.device
            )));
        }
    }
    Ok(())
}

async fn create(
    State(s): State<ApiState>,
    body: Result<Json<DriverConfig>, JsonRejection>,
) -> Result<(StatusCode, Json<DriverStatus>), AppError> {
    let d = drivers(&s)?;
    let Json(cfg) = body?;
    refuse_managed(&s, &cfg.name)?;
    refuse_paths(&d, &cfg)?;
    let name = cfg.name.clone();
    let out = start(&d, cfg).await?;
    changed(&s, &name).await?;
    Ok(out)
}

/// `PUT /api/drivers/{name}`: a whole driver; its `name` must match.
async fn replace(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    body: Result<Json<DriverConfig>, JsonRejection>,
) -> Result<(StatusCode, Json<DriverStatus>), AppError> {
    let d = drivers(&s)?;
    let Json(cfg) = body?;
    if cfg.name != name {
        return Err(AppError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!(
                "the body's name `{}` does not match the path's `{name}`",
                cfg.name
            ),
        ));
    }
    refuse_managed(&s, &name)?;
    refuse_paths(&d, &cfg)?;
    let name = cfg.name.clone();
    let out = start(&d, cfg).await?;
    changed(&s, &name).await?;
    Ok(out)
}

async fn remove(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<StatusCode, AppError> {
    let d = drivers(&s)?;
    refuse_managed(&s, &name)?;
    if d.delete(&name).await {
        changed(&s, &name).await?;
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(&name))
    }
}

/// Save the driver `name` as it now runs (or its absence) in the node's
/// data dir, so the change survives a restart.
async fn changed(s: &ApiState, name: &str) -> Result<(), AppError> {
    match &s.local {
        Some(l) => l.driver_changed(name).await,
        None => Ok(()),
    }
}

/// `?node=` of a browse.
#[cfg(feature = "opcua")]
#[derive(serde::Deserialize)]
struct BrowseQuery {
    /// Node id whose children to list; the Objects folder when absent.
    node: Option<String>,
}

/// `GET /api/drivers/{name}/browse?node=ns=2;s=Plant`: the children of a
/// node on an OPC UA driver's server (a short session of its own), to build
/// point tables from.
#[cfg(feature = "opcua")]
async fn browse(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    Query(q): Query<BrowseQuery>,
) -> Result<Json<Vec<verge_drivers::opcua::BrowseEntry>>, AppError> {
    let (config, _) = drivers(&s)?.get(&name).ok_or_else(|| not_found(&name))?;
    if config.protocol != verge_drivers::ProtocolKind::Opcua {
        return Err(AppError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!(
                "driver `{name}` speaks {}; only OPC UA drivers browse",
                config.protocol.as_str()
            ),
        ));
    }
    verge_drivers::opcua::browse(&config, q.node.as_deref())
        .await
        .map(Json)
        .map_err(|e| {
            let status = match e {
                verge_drivers::DriverError::Invalid(_) => StatusCode::BAD_REQUEST,
                _ => StatusCode::BAD_GATEWAY,
            };
            AppError::new(status, "browse_failed", e.to_string())
        })
}

/// `GET /api/drivers/{name}/browse` on a build without OPC UA (the cargo
/// feature `opcua`): no driver of this node can browse, since an OPC UA
/// driver's config is refused.
#[cfg(not(feature = "opcua"))]
async fn browse(
    State(s): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<Vec<serde_json::Value>>, AppError> {
    drivers(&s)?.get(&name).ok_or_else(|| not_found(&name))?;
    Err(AppError::new(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        format!(
            "driver `{name}` cannot browse: only OPC UA drivers browse, and this build \
             has no OPC UA support (cargo feature `opcua`)"
        ),
    ))
}

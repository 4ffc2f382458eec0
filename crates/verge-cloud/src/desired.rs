//! A node's desired state, assembled from the database: its devices, its
//! rules, the functions those rules name, the components assigned to it
//! and its config.

use base64::Engine as _;
use sqlx::AnyPool;
use verge_protocol::{DesiredState, DeviceEntry, FunctionArtifact, RuleSpec};

use crate::db::json_col;
use crate::error::AppError;

/// The desired state of `node_id`; `None` when there is no such node.
/// Function modules are included only when `modules` is set (the node's
/// own request; the API view leaves them out).
pub async fn assemble(
    pool: &AnyPool,
    node_id: &str,
    modules: bool,
) -> Result<Option<DesiredState>, AppError> {
    // One transaction so that the version matches what it describes.
    let mut tx = pool.begin().await?;
    let node: Option<(i64, String)> =
        sqlx::query_as("SELECT desired_version, config FROM nodes WHERE id = $1")
            .bind(node_id)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((version, config)) = node else {
        return Ok(None);
    };
    let devices: Vec<(String, String)> =
        sqlx::query_as("SELECT id, secret_phc FROM devices WHERE node_id = $1 ORDER BY id")
            .bind(node_id)
            .fetch_all(&mut *tx)
            .await?;
    let rules: Vec<(String, String, String, i64, String)> = sqlx::query_as(
        "SELECT id, sql, actions, enabled, description FROM rules WHERE node_id = $1 ORDER BY id",
    )
    .bind(node_id)
    .fetch_all(&mut *tx)
    .await?;
    let functions: Vec<(String, i64, String, String, Vec<u8>)> = sqlx::query_as(
        "SELECT f.name, f.version, f.sha256, f.spec, f.module FROM functions f WHERE f.name IN \
         (SELECT rf.function_name FROM rule_functions rf JOIN rules r ON r.id = rf.rule_id \
          WHERE r.node_id = $1) ORDER BY f.name",
    )
    .bind(node_id)
    .fetch_all(&mut *tx)
    .await?;
    let components = crate::api::assignments::assigned_specs(&mut tx, node_id).await?;
    tx.commit().await?;
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(Some(DesiredState {
        components,
        node_id: node_id.to_owned(),
        version,
        devices: devices
            .into_iter()
            .map(|(id, password_hash)| DeviceEntry { id, password_hash })
            .collect(),
        rules: rules
            .into_iter()
            .map(|(id, sql, actions, enabled, description)| {
                Ok(RuleSpec {
                    actions: stored(&actions, "actions of rule", &id)?,
                    id,
                    sql,
                    enabled: enabled != 0,
                    description,
                })
            })
            .collect::<Result<_, AppError>>()?,
        functions: functions
            .into_iter()
            .map(|(name, version, sha256, spec, module)| {
                Ok(FunctionArtifact {
                    spec: stored(&spec, "spec of function", &name)?,
                    name,
                    version,
                    sha256,
                    module_base64: if modules {
                        b64.encode(module)
                    } else {
                        String::new()
                    },
                })
            })
            .collect::<Result<_, AppError>>()?,
        config: json_col(&config),
    }))
}

/// A spec stored as JSON text by the API (checked before it was stored),
/// read back as its contract type.
fn stored<T: serde::de::DeserializeOwned>(text: &str, what: &str, id: &str) -> Result<T, AppError> {
    serde_json::from_str(text)
        .map_err(|e| AppError::internal(format!("stored {what} `{id}` is not valid: {e}")))
}

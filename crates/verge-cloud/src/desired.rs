//! A node's desired state, assembled from the database tables: its
//! devices, its rules, the functions those rules name, its protocol
//! drivers, the components assigned to it and its config. This is what a new revision holds
//! (`crate::revisions`); nodes are served the revision, not the tables.

use sqlx::{Any, Transaction};
use verge_protocol::{DesiredState, DeviceEntry, FunctionArtifact, RuleSpec};

use crate::db::json_col;
use crate::error::AppError;

/// The desired state of `node_id` as the tables hold it in `tx`, with the
/// node's current `desired_version`; `None` when there is no such node.
/// Function modules are left out (`module_base64` empty): a revision
/// names them by their SHA-256.
pub async fn from_tables(
    tx: &mut Transaction<'_, Any>,
    node_id: &str,
) -> Result<Option<DesiredState>, AppError> {
    let node: Option<(i64, String)> =
        sqlx::query_as("SELECT desired_version, config FROM nodes WHERE id = $1")
            .bind(node_id)
            .fetch_optional(&mut **tx)
            .await?;
    let Some((version, config)) = node else {
        return Ok(None);
    };
    let devices: Vec<(String, String)> =
        sqlx::query_as("SELECT id, secret_phc FROM devices WHERE node_id = $1 ORDER BY id")
            .bind(node_id)
            .fetch_all(&mut **tx)
            .await?;
    let rules: Vec<(String, String, String, i64, String)> = sqlx::query_as(
        "SELECT id, sql, actions, enabled, description FROM rules WHERE node_id = $1 ORDER BY id",
    )
    .bind(node_id)
    .fetch_all(&mut **tx)
    .await?;
    let functions: Vec<(String, i64, String, String)> = sqlx::query_as(
        "SELECT f.name, f.version, f.sha256, f.spec FROM functions f WHERE f.name IN \
         (SELECT rf.function_name FROM rule_functions rf JOIN rules r ON r.id = rf.rule_id \
          WHERE r.node_id = $1) ORDER BY f.name",
    )
    .bind(node_id)
    .fetch_all(&mut **tx)
    .await?;
    let components = crate::api::assignments::assigned_specs(tx, node_id).await?;
    let release = crate::api::releases::assigned_release(tx, node_id).await?;
    let drivers = crate::api::drivers::node_specs(tx, node_id).await?;
    Ok(Some(DesiredState {
        components,
        release,
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
            .map(|(name, version, sha256, spec)| {
                Ok(FunctionArtifact {
                    spec: stored(&spec, "spec of function", &name)?,
                    name,
                    version,
                    sha256,
                    module_base64: String::new(),
                })
            })
            .collect::<Result<_, AppError>>()?,
        drivers,
        config: json_col(&config),
    }))
}

/// A spec stored as JSON text by the API (checked before it was stored),
/// read back as its contract type.
fn stored<T: serde::de::DeserializeOwned>(text: &str, what: &str, id: &str) -> Result<T, AppError> {
    serde_json::from_str(text)
        .map_err(|e| AppError::internal(format!("stored {what} `{id}` is not valid: {e}")))
}

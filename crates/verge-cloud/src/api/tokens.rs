//! `/api/tokens`: API tokens, shown once, stored as SHA-256, each with a
//! scope (`admin`, `read` or `broker`); managed with an admin token only.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Cloud;
use crate::auth::AdminAuth;
use crate::db::{self, now_ms};
use crate::error::{ApiJson, ApiPath, AppError, check_name};

/// `POST /api/tokens` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    name: String,
    /// `admin` (default), `read` or `broker`.
    #[serde(default = "admin")]
    scope: String,
}

fn admin() -> String {
    "admin".into()
}

pub async fn create(
    _: AdminAuth,
    State(cloud): State<Cloud>,
    ApiJson(body): ApiJson<CreateToken>,
) -> Result<impl IntoResponse, AppError> {
    check_name("name", &body.name)?;
    if !matches!(body.scope.as_str(), "admin" | "read" | "broker") {
        return Err(AppError::invalid(format!(
            "`scope` must be `admin`, `read` or `broker`, not `{}`",
            body.scope
        )));
    }
    let token = db::random_secret();
    let id = db::random_secret()[..16].to_owned();
    let now = now_ms();
    sqlx::query(
        "INSERT INTO tokens (id, name, hash, created_ms, scope) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&id)
    .bind(&body.name)
    .bind(db::sha256_hex(token.as_bytes()))
    .bind(now)
    .bind(&body.scope)
    .execute(&cloud.inner().pool)
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"id": id, "name": body.name, "scope": body.scope, "created_ms": now, "token": token}),
        ),
    ))
}

pub async fn list(_: AdminAuth, State(cloud): State<Cloud>) -> Result<Json<Vec<Value>>, AppError> {
    let rows: Vec<(String, String, i64, String)> =
        sqlx::query_as("SELECT id, name, created_ms, scope FROM tokens ORDER BY created_ms, id")
            .fetch_all(&cloud.inner().pool)
            .await?;
    Ok(Json(
        rows.into_iter()
            .map(|(id, name, created_ms, scope)| {
                json!({"id": id, "name": name, "created_ms": created_ms, "scope": scope})
            })
            .collect(),
    ))
}

pub async fn delete(
    _: AdminAuth,
    State(cloud): State<Cloud>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, AppError> {
    if id == "admin" {
        return Err(AppError::conflict(
            "the admin token is replaced with `verge cloud --reset-admin-token`, not deleted",
        ));
    }
    let done = sqlx::query("DELETE FROM tokens WHERE id = $1")
        .bind(&id)
        .execute(&cloud.inner().pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(AppError::not_found(format!("no token `{id}`")));
    }
    Ok(StatusCode::NO_CONTENT)
}

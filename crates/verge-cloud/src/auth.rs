//! Who is calling: API tokens (admin and others) and node credentials,
//! as axum extractors. Tokens and secrets are stored as SHA-256 only and
//! looked up by that hash.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;

use crate::Cloud;
use crate::db::sha256_hex;
use crate::error::AppError;

/// A request carrying a valid API token.
pub struct ApiAuth;

/// A request carrying a node's credentials; holds the node id.
pub struct NodeAuth(pub String);

fn bearer(parts: &Parts) -> Result<&str, AppError> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| AppError::unauthorized("missing `Authorization: Bearer <token>`"))
}

impl FromRequestParts<Cloud> for ApiAuth {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, cloud: &Cloud) -> Result<Self, AppError> {
        let token = bearer(parts)?;
        let found: Option<(String,)> = sqlx::query_as("SELECT id FROM tokens WHERE hash = $1")
            .bind(sha256_hex(token.as_bytes()))
            .fetch_optional(&cloud.inner().pool)
            .await?;
        match found {
            Some(_) => Ok(ApiAuth),
            None => Err(AppError::unauthorized("unknown or revoked token")),
        }
    }
}

impl FromRequestParts<Cloud> for NodeAuth {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, cloud: &Cloud) -> Result<Self, AppError> {
        let cred = bearer(parts)?;
        let (id, secret) = verge_protocol::split_node_credential(cred)
            .ok_or_else(|| AppError::unauthorized("expected `Bearer {node_id}.{secret}`"))?;
        let found: Option<(Option<String>,)> =
            sqlx::query_as("SELECT secret_sha256 FROM nodes WHERE id = $1")
                .bind(id)
                .fetch_optional(&cloud.inner().pool)
                .await?;
        match found {
            Some((Some(hash),)) if hash == sha256_hex(secret.as_bytes()) => {
                Ok(NodeAuth(id.to_owned()))
            }
            _ => Err(AppError::unauthorized("unknown node or wrong secret")),
        }
    }
}

//! Who is calling: API tokens (admin and others) and node credentials,
//! as axum extractors. Tokens and secrets are stored as SHA-256 only and
//! looked up by that hash. A token's scope is `admin` (everything),
//! `read` (`GET` and `HEAD` only) or `broker` (the external broker's
//! authentication hooks, `/api/broker/*`, and nothing else); only `admin`
//! tokens manage tokens.

use axum::http::Method;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::Cloud;
use crate::db::sha256_hex;
use crate::error::AppError;

/// A request carrying a valid API token allowed to make it; holds who
/// called (the token's name, or its id when the name is empty), the
/// author of the revisions the request creates.
pub struct ApiAuth {
    /// The token's name, or its id when it has none.
    pub caller: String,
}

/// A request carrying a valid API token of the `admin` scope.
pub struct AdminAuth;

/// A request carrying a valid API token of the `broker` scope (what an
/// external broker's HTTP authenticator sends).
pub struct BrokerAuth;

/// A request carrying a node's credentials; holds the node id.
pub struct NodeAuth(pub String);

fn bearer(parts: &Parts) -> Result<&str, AppError> {
    verge_net::http::guard::bearer(&parts.headers)
        .ok_or_else(|| AppError::unauthorized("missing `Authorization: Bearer <token>`"))
}

/// The scope and the caller (name, else id) of the token the request
/// carries; 401 without a known one.
async fn scope(parts: &Parts, cloud: &Cloud) -> Result<(String, String), AppError> {
    let token = bearer(parts)?;
    let found: Option<(String, String, String)> =
        sqlx::query_as("SELECT scope, name, id FROM tokens WHERE hash = $1")
            .bind(sha256_hex(token.as_bytes()))
            .fetch_optional(&cloud.inner().pool)
            .await?;
    found
        .map(|(s, name, id)| (s, if name.is_empty() { id } else { name }))
        .ok_or_else(|| AppError::unauthorized("unknown or revoked token"))
}

impl FromRequestParts<Cloud> for ApiAuth {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, cloud: &Cloud) -> Result<Self, AppError> {
        let (scope, caller) = scope(parts, cloud).await?;
        let reading = matches!(parts.method, Method::GET | Method::HEAD);
        match scope.as_str() {
            "admin" => Ok(ApiAuth { caller }),
            "read" if reading => Ok(ApiAuth { caller }),
            "read" => Err(AppError::forbidden("this token is read-only")),
            _ => Err(AppError::forbidden(
                "this token is for the broker hooks (`/api/broker/*`) only",
            )),
        }
    }
}

impl FromRequestParts<Cloud> for AdminAuth {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, cloud: &Cloud) -> Result<Self, AppError> {
        match scope(parts, cloud).await?.0.as_str() {
            "admin" => Ok(AdminAuth),
            _ => Err(AppError::forbidden("only admin tokens manage tokens")),
        }
    }
}

impl FromRequestParts<Cloud> for BrokerAuth {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, cloud: &Cloud) -> Result<Self, AppError> {
        match scope(parts, cloud).await?.0.as_str() {
            "broker" => Ok(BrokerAuth),
            _ => Err(AppError::forbidden(
                "the broker hooks take a token of the `broker` scope",
            )),
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

//! `/api/broker/*`: the HTTP authentication and authorization hooks an
//! external broker calls (EMQX's HTTP authenticator and authorizer; the
//! request bodies are the ones `docs/scale-out.md` configures). Each
//! answers `{"result": "allow"}` or `{"result": "deny"}` with status 200
//! and never says why: a wrong secret, an unknown node and a username that
//! is no node look the same. The decision is `crate::broker_auth`'s.

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Cloud;
use crate::auth::BrokerAuth;
use crate::broker_auth::{self, Action, Caller};
use crate::db::sha256_hex;
use crate::error::{ApiJson, AppError};

/// `POST /api/broker/authn` body: what the client sent in its CONNECT.
/// Other keys a broker adds are ignored.
#[derive(Deserialize)]
pub struct AuthnRequest {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    /// The MQTT client id: a node's must be `verge-node-{id}`, the cloud
    /// user's must start with `verge-cloud-` (no client takes over a
    /// session that is not its own).
    #[serde(default)]
    clientid: String,
}

/// `POST /api/broker/authz` body. Other keys a broker adds are ignored.
#[derive(Deserialize)]
pub struct AuthzRequest {
    #[serde(default)]
    username: String,
    /// The MQTT client id (not checked).
    #[serde(default)]
    #[allow(dead_code)]
    clientid: String,
    /// `publish` or `subscribe`; anything else is denied.
    action: String,
    /// The topic (publish) or topic filter (subscribe).
    topic: String,
}

fn result(allow: bool) -> Json<Value> {
    if allow {
        Json(json!({"result": "allow", "is_superuser": false}))
    } else {
        Json(json!({"result": "deny"}))
    }
}

/// Whether `username` is the cloud replicas' user.
fn is_cloud_user(cloud: &Cloud, username: &str) -> bool {
    let ext = &cloud.inner().cfg.mqtt.external;
    !ext.username.is_empty() && ext.username == username
}

pub async fn authn(
    _: BrokerAuth,
    State(cloud): State<Cloud>,
    ApiJson(req): ApiJson<AuthnRequest>,
) -> Result<Json<Value>, AppError> {
    // The cloud's user is checked against its own password only, even if
    // a node had the same name.
    if is_cloud_user(&cloud, &req.username) {
        let allow = req
            .clientid
            .strip_prefix(broker_auth::CLOUD_CLIENT_ID_PREFIX)
            .is_some_and(|rest| !rest.is_empty())
            && cloud
                .inner()
                .broker_cloud_password
                .as_deref()
                .is_some_and(|p| {
                    broker_auth::same_bytes(
                        sha256_hex(p.as_bytes()).as_bytes(),
                        sha256_hex(req.password.as_bytes()).as_bytes(),
                    )
                });
        return Ok(result(allow));
    }
    if !broker_auth::is_node_id(&req.username)
        || req.password.is_empty()
        || req.clientid != broker_auth::node_client_id(&req.username)
    {
        return Ok(result(false));
    }
    let found: Option<(Option<String>,)> =
        sqlx::query_as("SELECT secret_phc FROM nodes WHERE id = $1")
            .bind(&req.username)
            .fetch_optional(&cloud.inner().pool)
            .await?;
    // An unknown (or not joined) node is checked against a dummy hash:
    // as slow as a known one, so the timing tells no ids.
    let phc = match found {
        Some((Some(phc),)) => Some(phc),
        _ => None,
    };
    let cache = &cloud.inner().broker_secrets;
    if let Some(phc) = &phc
        && cache.hit(&req.username, &req.password, phc)
    {
        return Ok(result(true));
    }
    let ok = {
        let (secret, phc) = (req.password.clone(), phc.clone());
        tokio::task::spawn_blocking(move || match phc {
            Some(phc) => broker_auth::verify_secret(&secret, &phc),
            None => {
                broker_auth::verify_secret(&secret, broker_auth::dummy_phc());
                false
            }
        })
        .await
        .map_err(AppError::internal)?
    };
    let Some(phc) = phc else {
        return Ok(result(false));
    };
    if ok {
        cache.remember(&req.username, &req.password, &phc);
    }
    Ok(result(ok))
}

pub async fn authz(
    _: BrokerAuth,
    State(cloud): State<Cloud>,
    ApiJson(req): ApiJson<AuthzRequest>,
) -> Result<Json<Value>, AppError> {
    let action = match req.action.as_str() {
        "publish" => Action::Publish,
        "subscribe" => Action::Subscribe,
        _ => return Ok(result(false)),
    };
    if is_cloud_user(&cloud, &req.username) {
        return Ok(result(broker_auth::allowed(
            Caller::Cloud,
            action,
            &req.topic,
        )));
    }
    if !broker_auth::is_node_id(&req.username) {
        return Ok(result(false));
    }
    // Only a joined node: the broker may have let the client in through
    // another authenticator of its chain.
    let joined: Option<(i64,)> =
        sqlx::query_as("SELECT 1 FROM nodes WHERE id = $1 AND secret_phc IS NOT NULL")
            .bind(&req.username)
            .fetch_optional(&cloud.inner().pool)
            .await?;
    Ok(result(
        joined.is_some() && broker_auth::allowed(Caller::Node(&req.username), action, &req.topic),
    ))
}

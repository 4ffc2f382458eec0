//! Who may call the node's API: the admin token and scoped tokens.
//!
//! - The **admin token** is `[http] token` from the config, or else the
//!   contents of `<data_dir>/api-token`, made at the first start (mode
//!   0600). It may do everything.
//! - **Scoped tokens** are made through `POST /api/tokens` (admin only),
//!   shown once and kept as SHA-256 in `<data_dir>/api-tokens.json`
//!   (0600). A `read` token may only `GET`; an `admin` token may do
//!   everything but manage tokens, which only the admin token does.
//!
//! With `[http] auth = false` no credential is asked for (logged loudly at
//! start); `/healthz` and `/metrics` are always open.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use rand_core::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use verge_net::fs::{PRIVATE_FILE, write_atomic};
use verge_net::http::guard::{bearer, same_secret};

use super::{ApiJson, ApiState, AppError};

/// The admin token's file in the data dir.
pub const TOKEN_FILE: &str = "api-token";
/// The scoped tokens' file in the data dir.
const SCOPED_FILE: &str = "api-tokens.json";
/// Most scoped tokens.
const MAX_TOKENS: usize = 256;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// `GET` only.
    Read,
    /// Everything but managing tokens.
    Admin,
}

/// Who is calling, as the middleware found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// The admin token.
    Owner,
    /// A scoped token.
    Scoped(Scope),
}

/// A scoped token as stored: never the token itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    id: String,
    name: String,
    scope: Scope,
    created_ms: i64,
    sha256: String,
}

/// The node's API credentials.
#[derive(Debug)]
pub struct ApiTokens {
    admin: String,
    /// Where the admin token is kept; `None` when it comes from the config.
    admin_file: Option<PathBuf>,
    scoped_file: PathBuf,
    scoped: RwLock<Vec<Entry>>,
}

impl ApiTokens {
    /// The credentials under `data_dir`: the admin token is `configured`,
    /// or the one in `<data_dir>/api-token`, made now if missing.
    pub fn open(data_dir: &Path, configured: Option<&str>) -> Result<ApiTokens, String> {
        let (admin, admin_file) = match configured {
            Some(t) => (t.to_owned(), None),
            None => {
                let path = data_dir.join(TOKEN_FILE);
                let token = match std::fs::read_to_string(&path) {
                    Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
                    Ok(_) => {
                        return Err(format!(
                            "{} is empty; delete it to make a new token",
                            path.display()
                        ));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        let t = random_token();
                        write_atomic(&path, format!("{t}\n").as_bytes(), PRIVATE_FILE)
                            .map_err(|e| format!("{}: {e}", path.display()))?;
                        t
                    }
                    Err(e) => return Err(format!("{}: {e}", path.display())),
                };
                (token, Some(path))
            }
        };
        let scoped_file = data_dir.join(SCOPED_FILE);
        let scoped = match std::fs::read(&scoped_file) {
            Ok(b) => {
                serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", scoped_file.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("{}: {e}", scoped_file.display())),
        };
        Ok(ApiTokens {
            admin,
            admin_file,
            scoped_file,
            scoped: RwLock::new(scoped),
        })
    }

    /// Where the admin token is kept, when it is not the config's.
    pub fn admin_file(&self) -> Option<&Path> {
        self.admin_file.as_deref()
    }

    fn caller(&self, credential: &str) -> Option<Caller> {
        if same_secret(credential.as_bytes(), self.admin.as_bytes()) {
            return Some(Caller::Owner);
        }
        let hash = sha256_hex(credential);
        self.scoped
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|e| same_secret(e.sha256.as_bytes(), hash.as_bytes()))
            .map(|e| Caller::Scoped(e.scope))
    }

    fn save(&self, entries: &[Entry]) -> Result<(), AppError> {
        let bytes = serde_json::to_vec_pretty(entries).map_err(internal)?;
        write_atomic(&self.scoped_file, &bytes, PRIVATE_FILE)
            .map_err(|e| internal(format!("{}: {e}", self.scoped_file.display())))
    }
}

fn internal(e: impl std::fmt::Display) -> AppError {
    AppError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// The middleware on `/api/*`: 401 without a known credential, 403 when
/// its scope does not allow the request.
pub async fn require_token(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let Some(tokens) = &state.auth else {
        return next.run(req).await;
    };
    let Some(caller) = bearer(req.headers()).and_then(|c| tokens.caller(c)) else {
        return AppError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong `Authorization: Bearer` token (the node's admin token is in \
             <data_dir>/api-token unless [http] token is set)",
        )
        .into_response();
    };
    let reading = matches!(*req.method(), Method::GET | Method::HEAD);
    let tokens_route = req.uri().path().starts_with("/tokens");
    let allowed = match caller {
        Caller::Owner => true,
        Caller::Scoped(_) if tokens_route => false,
        Caller::Scoped(Scope::Admin) => true,
        Caller::Scoped(Scope::Read) => reading,
    };
    if !allowed {
        let why = if tokens_route {
            "only the node's admin token manages tokens"
        } else {
            "this token is read-only"
        };
        return AppError::new(StatusCode::FORBIDDEN, "forbidden", why).into_response();
    }
    next.run(req).await
}

/// `/api/tokens`: list, create and revoke scoped tokens (admin only).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/tokens", get(list).post(create))
        .route("/tokens/{id}", delete(revoke))
}

fn tokens(s: &ApiState) -> Result<Arc<ApiTokens>, AppError> {
    s.auth.clone().ok_or_else(|| {
        AppError::new(
            StatusCode::NOT_FOUND,
            "auth_disabled",
            "this node's API has no authentication ([http] auth = false)",
        )
    })
}

/// A token as listed.
#[derive(Serialize)]
struct Listed {
    id: String,
    name: String,
    scope: Scope,
    created_ms: i64,
}

async fn list(State(s): State<ApiState>) -> Result<Json<Vec<Listed>>, AppError> {
    let t = tokens(&s)?;
    let entries = t
        .scoped
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok(Json(
        entries
            .iter()
            .map(|e| Listed {
                id: e.id.clone(),
                name: e.name.clone(),
                scope: e.scope,
                created_ms: e.created_ms,
            })
            .collect(),
    ))
}

/// `POST /api/tokens` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    name: String,
    scope: Scope,
}

async fn create(
    State(s): State<ApiState>,
    ApiJson(body): ApiJson<Create>,
) -> Result<(StatusCode, Json<serde_json::Value>), AppError> {
    let t = tokens(&s)?;
    let bad = |m: String| AppError::new(StatusCode::BAD_REQUEST, "invalid_request", m);
    if body.name.is_empty() {
        return Err(bad("`name` must not be empty".into()));
    }
    verge_net::http::guard::check_text("name", &body.name, 64).map_err(bad)?;
    let token = random_token();
    let entry = Entry {
        id: random_token()[..16].to_owned(),
        name: body.name,
        scope: body.scope,
        created_ms: verge_net::now_ms() as i64,
        sha256: sha256_hex(&token),
    };
    let answer = serde_json::json!({
        "id": entry.id, "name": entry.name, "scope": entry.scope,
        "created_ms": entry.created_ms, "token": token,
    });
    let mut entries = t
        .scoped
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if entries.len() >= MAX_TOKENS {
        return Err(AppError::new(
            StatusCode::CONFLICT,
            "too_many_tokens",
            format!("at most {MAX_TOKENS} tokens; revoke one first"),
        ));
    }
    let mut next = entries.clone();
    next.push(entry);
    t.save(&next)?;
    *entries = next;
    Ok((StatusCode::CREATED, Json(answer)))
}

async fn revoke(
    State(s): State<ApiState>,
    UrlPath(id): UrlPath<String>,
) -> Result<StatusCode, AppError> {
    let t = tokens(&s)?;
    let mut entries = t
        .scoped
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let next: Vec<Entry> = entries.iter().filter(|e| e.id != id).cloned().collect();
    if next.len() == entries.len() {
        return Err(AppError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no token `{id}`"),
        ));
    }
    t.save(&next)?;
    *entries = next;
    Ok(StatusCode::NO_CONTENT)
}

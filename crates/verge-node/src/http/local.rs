//! `/api/local` and `/api/local-only`: the node's own items (what its
//! config file and API made, as the cloud agent reports them) and the
//! marks that keep one of them in place when a revision of the cloud names
//! an item of the same kind and name (docs/deployments.md, "Local-only
//! items").

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use axum::{Json, Router};
use verge_protocol::LocalItem;

use super::{ApiState, AppError};
use crate::local::{LocalStore, Mark};

/// The routes, to nest under `/api`.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/local", get(list))
        .route("/local-only", get(marks))
        .route("/local-only/{kind}/{name}", put(mark).delete(unmark))
}

fn store(s: &ApiState) -> Result<&LocalStore, AppError> {
    s.local.as_deref().ok_or_else(|| {
        AppError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this node keeps no items of its own (no data dir)",
        )
    })
}

async fn list(State(s): State<ApiState>) -> Result<Json<Vec<LocalItem>>, AppError> {
    Ok(Json(store(&s)?.list().await))
}

async fn marks(State(s): State<ApiState>) -> Result<Json<Vec<Mark>>, AppError> {
    Ok(Json(store(&s)?.marks()))
}

async fn mark(
    State(s): State<ApiState>,
    Path((kind, name)): Path<(String, String)>,
) -> Result<Json<Mark>, AppError> {
    Ok(Json(store(&s)?.set_local_only(&kind, &name, true).await?))
}

async fn unmark(
    State(s): State<ApiState>,
    Path((kind, name)): Path<(String, String)>,
) -> Result<StatusCode, AppError> {
    store(&s)?.set_local_only(&kind, &name, false).await?;
    Ok(StatusCode::NO_CONTENT)
}

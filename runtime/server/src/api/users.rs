//! Users, which come from third-party (OIDC) login: Mizzen has none, and
//! says so as Brigade's API would.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;

use super::{ApiError, ApiResult, AppState, AppStateRef, list, ok, principal, require};

/// The routes of this resource.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2/users", get(list_users))
        .route("/v2/users/{id}", get(get_user))
}

async fn list_users(State(state): AppStateRef, headers: HeaderMap) -> ApiResult {
    let who = principal(&state, &headers).await?;
    require(&who, "READER", "")?;
    // Users come from third-party (OIDC) login, which Mizzen does not offer.
    ok(StatusCode::OK, list("UserList", Vec::new(), None, 0))
}

async fn get_user(
    State(state): AppStateRef,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    require(&who, "READER", "")?;
    Err(ApiError::NotFound { kind: "User", id })
}

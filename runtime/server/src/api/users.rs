//! Users, which come from third-party (OIDC) login: Mizzen has none, and
//! says so as Brigade's API would.

use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;

use super::{ApiError, ApiResult, AppState, list, ok, require};
use crate::auth::Principal;

/// The routes of this resource.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2/users", get(list_users))
        .route("/v2/users/{id}", get(get_user))
}

async fn list_users(who: Principal) -> ApiResult {
    require(&who, "READER", "")?;
    // Users come from third-party (OIDC) login, which Mizzen does not offer.
    ok(StatusCode::OK, list("UserList", Vec::new(), None, 0))
}

async fn get_user(who: Principal, Path(id): Path<String>) -> ApiResult {
    require(&who, "READER", "")?;
    Err(ApiError::NotFound { kind: "User", id })
}

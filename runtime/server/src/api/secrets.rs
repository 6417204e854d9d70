//! A project's secrets: their keys listed (never their values), set and
//! unset.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, put};
use mizzen_runtime::project::{validate_secret_key, validate_secrets};
use serde::Deserialize;
use serde_json::json;

use super::projects::project_gone;
use super::{
    ApiError, ApiResult, AppState, AppStateRef, list, ok, parse_body, require_project,
    visible_project,
};
use crate::auth::Principal;

/// The routes of this resource.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2/projects/{id}/secrets", get(list_secrets))
        .route(
            "/v2/projects/{id}/secrets/{key}",
            put(set_secret).delete(unset_secret),
        )
}

async fn list_secrets(
    State(state): AppStateRef,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult {
    visible_project(&state, &who, &id).await?;
    let secrets = state.store.secrets(&id).await?;
    let items = secrets
        .keys()
        .map(|key| json!({"key": key, "value": "*** REDACTED ***"}))
        .collect();
    ok(StatusCode::OK, list("SecretList", items, None, 0))
}

#[derive(Deserialize)]
struct SecretBody {
    key: String,
    value: String,
}

async fn set_secret(
    State(state): AppStateRef,
    who: Principal,
    Path((id, key)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    visible_project(&state, &who, &id).await?;
    require_project(&who, "PROJECT_ADMIN", &id)?;
    let secret: SecretBody = parse_body(&body, "secret")?;
    if secret.key != key {
        return Err(ApiError::bad(format!(
            "key {:?} in the body does not match {key:?} in the path",
            secret.key
        )));
    }
    validate_secret_key(&key).map_err(|e| ApiError::bad(format!("key: {e}")))?;
    // The value alone first (before reading the others), then the project's
    // secrets as they would be with it.
    let limit_error =
        |e: mizzen_runtime::project::SecretLimitError| ApiError::bad(format!("value: {e}"));
    validate_secrets([(&key, &secret.value)]).map_err(limit_error)?;
    let mut secrets = state.store.secrets(&id).await?;
    secrets.remove(&key);
    validate_secrets(secrets.iter().chain([(&key, &secret.value)])).map_err(limit_error)?;
    if !state.store.set_secret(&id, &key, &secret.value).await? {
        return Err(project_gone(&id));
    }
    ok(StatusCode::OK, json!({}))
}

async fn unset_secret(
    State(state): AppStateRef,
    who: Principal,
    Path((id, key)): Path<(String, String)>,
) -> ApiResult {
    visible_project(&state, &who, &id).await?;
    require_project(&who, "PROJECT_ADMIN", &id)?;
    state.store.unset_secret(&id, &key).await?;
    ok(StatusCode::OK, json!({}))
}

//! Service accounts: created with a token, listed, locked (which revokes
//! the token) and unlocked (with a new one), deleted.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};

use super::query::{PageQuery, Query};
use super::{
    API_VERSION, ApiError, ApiResult, AppState, AppStateRef, list, ok, parse_body, require,
};
use crate::auth::{self, Principal};
use crate::store::{Page, ServiceAccountRecord, rfc3339};

/// The routes of this resource.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(
            "/v2/service-accounts",
            post(create_service_account).get(list_service_accounts),
        )
        .route(
            "/v2/service-accounts/{id}",
            get(get_service_account).delete(delete_service_account),
        )
        .route(
            "/v2/service-accounts/{id}/lock",
            put(lock_service_account).delete(unlock_service_account),
        )
}

fn service_account_json(account: &ServiceAccountRecord) -> Value {
    let mut value = json!({
        "apiVersion": API_VERSION, "kind": "ServiceAccount",
        "metadata": {"id": account.id, "created": rfc3339(account.created)},
        "description": account.description,
    });
    if let Some(locked) = account.locked {
        value["locked"] = json!(rfc3339(locked));
    }
    value
}

#[derive(Deserialize)]
struct ServiceAccountBody {
    metadata: IdOnly,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
struct IdOnly {
    id: String,
}

fn token_json(token: &str) -> Value {
    json!({"apiVersion": API_VERSION, "kind": "Token", "value": token})
}

async fn create_service_account(
    State(state): AppStateRef,
    who: Principal,
    body: Bytes,
) -> ApiResult {
    require(&who, "ADMIN", "")?;
    let body: ServiceAccountBody = parse_body(&body, "service account")?;
    let id = body.metadata.id;
    let valid = id.len() >= 3
        && id.len() <= 63
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && id.starts_with(|c: char| c.is_ascii_lowercase());
    if !valid {
        return Err(ApiError::bad(format!(
            "metadata.id {id:?}: must match ^[a-z][a-z\\d-]*[a-z\\d]$, 3 to 63 characters"
        )));
    }
    let token = auth::new_token()?;
    if !state
        .store
        .create_service_account(&id, &body.description, &auth::hash_token(&token))
        .await?
    {
        return Err(ApiError::Conflict {
            kind: "ServiceAccount",
            id: id.clone(),
            reason: format!("a service account with id {id:?} already exists"),
        });
    }
    ok(StatusCode::CREATED, token_json(&token))
}

async fn list_service_accounts(
    State(state): AppStateRef,
    who: Principal,
    Query(page): Query<PageQuery>,
) -> ApiResult {
    require(&who, "READER", "")?;
    let limit = page.limit()?;
    let after = page.after.unwrap_or_default();
    let page: Page<ServiceAccountRecord> = state.store.service_accounts(&after, limit).await?;
    let items = page.items.iter().map(service_account_json).collect();
    ok(
        StatusCode::OK,
        list("ServiceAccountList", items, page.next, page.remaining),
    )
}

async fn get_service_account(
    State(state): AppStateRef,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult {
    require(&who, "READER", "")?;
    match state.store.service_account(&id).await? {
        Some(account) => ok(StatusCode::OK, service_account_json(&account)),
        None => Err(ApiError::NotFound {
            kind: "ServiceAccount",
            id,
        }),
    }
}

async fn delete_service_account(
    State(state): AppStateRef,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult {
    require(&who, "ADMIN", "")?;
    if !state.store.delete_service_account(&id).await? {
        return Err(ApiError::NotFound {
            kind: "ServiceAccount",
            id,
        });
    }
    ok(StatusCode::OK, json!({}))
}

async fn lock_service_account(
    State(state): AppStateRef,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult {
    require(&who, "ADMIN", "")?;
    if !state.store.lock_service_account(&id, None).await? {
        return Err(ApiError::NotFound {
            kind: "ServiceAccount",
            id,
        });
    }
    ok(StatusCode::OK, json!({}))
}

async fn unlock_service_account(
    State(state): AppStateRef,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult {
    require(&who, "ADMIN", "")?;
    let token = auth::new_token()?;
    if !state
        .store
        .lock_service_account(&id, Some(&auth::hash_token(&token)))
        .await?
    {
        return Err(ApiError::NotFound {
            kind: "ServiceAccount",
            id,
        });
    }
    ok(StatusCode::OK, token_json(&token))
}

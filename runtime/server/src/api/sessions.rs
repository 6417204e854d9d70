//! Sessions: root's login and logout, and who the caller is.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{delete, get, post};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::query::{Flag, Query};
use super::{API_VERSION, ApiError, ApiResult, AppState, AppStateRef, ok};
use crate::auth::{self, Principal, PrincipalKind};

/// Brigade's root sessions lasted an hour (`ROOT_USER_SESSION_TTL`).
pub const ROOT_SESSION_TTL: Duration = Duration::from_secs(60 * 60);

/// The routes of this resource.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2/sessions", post(create_session))
        .route("/v2/session", delete(delete_session))
        .route("/v2/whoami", get(whoami))
}

/// `POST /v2/sessions`' parameters.
#[derive(Deserialize)]
struct SessionQuery {
    /// A root session (the only kind Mizzen has).
    #[serde(default)]
    root: Flag,
}

async fn create_session(
    State(state): AppStateRef,
    Query(query): Query<SessionQuery>,
    headers: HeaderMap,
) -> ApiResult {
    if !query.root.0 {
        return Err(ApiError::NotSupported(
            "only root sessions (?root=true) are supported; other principals use service-account tokens"
                .into(),
        ));
    }
    let Some(password) = &state.root_password else {
        return Err(ApiError::Unauthenticated(
            "root login is disabled: the server was started without MIZZEN_ROOT_PASSWORD".into(),
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| auth::credentials(h, "Basic"))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            ApiError::Unauthenticated(
                "root login needs an Authorization: Basic header with root:<password>".into(),
            )
        })?;
    let (user, given) = presented.split_once(':').unwrap_or(("", ""));
    // Compare digests in constant time, so that timing says nothing about
    // how much of the password was right.
    let matches: bool = Sha256::digest(given.as_bytes())
        .ct_eq(&Sha256::digest(password.as_bytes()))
        .into();
    if user != auth::ROOT_ID || !matches {
        return Err(ApiError::Unauthenticated(
            "wrong root user name or password".into(),
        ));
    }
    let token = auth::new_token()?;
    state
        .store
        .create_session(
            &auth::hash_token(&token),
            PrincipalKind::Root.as_str(),
            auth::ROOT_ID,
            ROOT_SESSION_TTL,
        )
        .await?;
    ok(
        StatusCode::CREATED,
        json!({"apiVersion": API_VERSION, "kind": "Token", "value": token}),
    )
}

async fn delete_session(
    State(state): AppStateRef,
    who: Principal,
    headers: HeaderMap,
) -> ApiResult {
    if who.kind != PrincipalKind::Root {
        return Err(ApiError::bad(
            "this token is not a session's; service-account tokens are revoked by locking the account",
        ));
    }
    if let Some(token) = auth::bearer_token(&headers) {
        state.store.delete_session(&auth::hash_token(token)).await?;
    }
    ok(StatusCode::OK, json!({}))
}

async fn whoami(who: Principal) -> ApiResult {
    ok(
        StatusCode::OK,
        json!({"apiVersion": API_VERSION, "kind": "PrincipalReference",
               "type": who.kind.as_str(), "id": who.id}),
    )
}

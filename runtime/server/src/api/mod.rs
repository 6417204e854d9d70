//! The REST API: Brigade v2's public endpoints, with its JSON envelopes,
//! list metadata, error bodies and streams, so that Brigade's own clients
//! (its CLI, its SDKs, the Brigade gateways) work against Mizzen.
//!
//! This module owns the router, the state the handlers share and what
//! they have in common (lists and their pages, the caller's principal and
//! roles, what a caller may see); each resource has its own module:
//! `system` (health, ping, metrics), `sessions`, `projects`, `secrets`,
//! `volumes` (a project's volumes kept between events), `schedules` (a
//! project's cron schedules, fired by [`crate::schedules`]),
//! `events` (with `accept`, which fans new events out and stores them, and
//! `documents`, the memory large events may take), `streams` (statuses and
//! logs), `service_accounts`, `roles`, `users` and `gateways` (the webhook
//! gateways' HTTP side). `query` reads query strings into typed
//! parameters, `body` limits request bodies, `error` is Brigade's error
//! bodies.

mod accept;
mod body;
mod dashboard;
mod documents;
mod error;
mod events;
mod gateways;
mod job_files;
mod kept;
mod observe;
mod projects;
mod query;
mod roles;
mod schedules;
mod secrets;
mod service_accounts;
mod sessions;
mod streams;
mod system;
mod users;
mod volumes;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{self, Principal, PrincipalKind};
use crate::gateways::GatewayConfig;
use crate::metrics::Metrics;
use crate::project_cache::ProjectCache;
use crate::scheduler::Scheduler;
use crate::store::{EventHead, ProjectRecord, Store};

pub(crate) use accept::fire_tick;
pub use documents::DOCUMENT_BUDGET;
pub use error::ApiError;
use error::ApiResult;
pub use events::EVENT_PAGE_BYTES;
pub use sessions::ROOT_SESSION_TTL;

/// Every object's `apiVersion`.
pub const API_VERSION: &str = "brigade.sh/v2";

/// Request bodies larger than this are refused before they are read in
/// full: GitHub's webhooks are at most 25 MB, and event payloads travel in
/// the database, where a few MiB each is already a lot.
pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;

/// Brigade's list page size: 20 by default, at most 100.
const DEFAULT_PAGE: i64 = 20;
const MAX_PAGE: i64 = 100;

/// What the handlers share.
pub struct AppState {
    /// The store.
    pub store: Store,
    /// Where jobs' artifacts and caches are kept, and the key of their
    /// helpers' tokens.
    pub storage: mizzen_objects::JobStorage,
    /// The scheduler of this replica.
    pub scheduler: Arc<Scheduler>,
    /// Parsed project definitions.
    pub projects: Arc<ProjectCache>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// Root's password; `None` disables root login.
    pub root_password: Option<String>,
    /// The gateways' credentials.
    pub gateways: GatewayConfig,
    /// Shares of [`DOCUMENT_BUDGET`], in bytes.
    pub documents: Arc<tokio::sync::Semaphore>,
    /// How long a request's body may take to arrive, from its head on.
    pub body_timeout: Duration,
    /// The shortest interval a project's schedule may tick at
    /// (`--min-schedule-interval`).
    pub min_schedule_interval: Duration,
}

/// The API's routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .merge(dashboard::routes())
        .merge(system::routes())
        .merge(sessions::routes())
        .merge(projects::routes())
        .merge(schedules::routes())
        .merge(secrets::routes())
        .merge(volumes::routes())
        .merge(kept::routes())
        .merge(roles::routes())
        .merge(events::routes())
        .merge(streams::routes())
        .merge(service_accounts::routes())
        .merge(users::routes())
        .merge(gateways::routes())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(body::name_the_body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            body::limit_body_time,
        ))
        // A job's saved tree may be gigabytes: its body has an idle timeout
        // of its own rather than the API's size and time limits.
        .merge(job_files::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            observe::observe,
        ))
        .with_state(state)
}

type AppStateRef = State<Arc<AppState>>;

fn ok(status: StatusCode, body: Value) -> ApiResult {
    Ok((status, axum::Json(body)).into_response())
}

fn parse_body<T: for<'de> Deserialize<'de>>(body: &Bytes, what: &str) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest {
        reason: format!("the request body is not a valid {what}"),
        details: vec![e.to_string()],
    })
}

fn list(kind: &str, items: Vec<Value>, next: Option<String>, remaining: i64) -> Value {
    let mut metadata = json!({});
    if let Some(next) = next {
        metadata["continue"] = json!(next);
        // Negative: more than the store counted (as Kubernetes' lists, the
        // count is then left out).
        if remaining >= 0 {
            metadata["remainingItemCount"] = json!(remaining);
        }
    }
    json!({"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "items": items})
}

/// The caller, from its bearer token: a handler that takes a [`Principal`]
/// answers 401 (no token, or one not valid) or 403 (a locked service
/// account) before it looks at anything else of the request, its body
/// included.
impl FromRequestParts<Arc<AppState>> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        principal(state, &parts.headers).await
    }
}

/// The principal whose token `headers` carry.
async fn principal(state: &AppState, headers: &HeaderMap) -> ApiResult<Principal> {
    let token = auth::bearer_token(headers).ok_or_else(|| {
        ApiError::Unauthenticated(
            "no bearer token: send an Authorization: Bearer <token> header (run `mizzen login`)"
                .into(),
        )
    })?;
    let hash = auth::hash_token(token);
    if let Some((kind, _)) = state.store.session(&hash).await?
        && kind == PrincipalKind::Root.as_str()
        && state.root_password.is_some()
    {
        return Ok(Principal::root());
    }
    if let Some(account) = state.store.service_account_by_token(&hash).await? {
        if account.locked.is_some() {
            return Err(ApiError::Forbidden(format!(
                "service account {:?} is locked",
                account.id
            )));
        }
        let roles = state
            .store
            .role_assignments(Some((PrincipalKind::ServiceAccount.as_str(), &account.id)))
            .await?;
        return Ok(Principal {
            kind: PrincipalKind::ServiceAccount,
            id: account.id,
            roles,
        });
    }
    Err(ApiError::Unauthenticated(
        "the token is not valid (unknown, expired or revoked)".into(),
    ))
}

fn require(principal: &Principal, role: &str, scope: &str) -> ApiResult<()> {
    if principal.has(role, scope) {
        Ok(())
    } else {
        Err(ApiError::forbidden(role, scope))
    }
}

fn require_project(principal: &Principal, role: &str, project: &str) -> ApiResult<()> {
    if !principal.sees_project(project) {
        // Another tenant's project does not exist as far as this caller knows.
        return Err(ApiError::NotFound {
            kind: "Project",
            id: project.to_string(),
        });
    }
    if principal.has_project_role(role, project) {
        Ok(())
    } else {
        Err(ApiError::forbidden(role, project))
    }
}

async fn visible_project(state: &AppState, who: &Principal, id: &str) -> ApiResult<ProjectRecord> {
    match state.store.project(id).await? {
        Some(project) if who.sees_project(id) => Ok(project),
        _ => Err(ApiError::NotFound {
            kind: "Project",
            id: id.to_string(),
        }),
    }
}

/// An event's head, when the caller may see it.
async fn visible_head(state: &AppState, who: &Principal, id: &str) -> ApiResult<EventHead> {
    match state.store.event_head(id).await? {
        Some(event) if who.sees_project(&event.project_id) => Ok(event),
        _ => Err(ApiError::NotFound {
            kind: "Event",
            id: id.to_string(),
        }),
    }
}

//! The REST API: Brigade v2's public endpoints (§4 of the reference), with
//! its JSON envelopes, list metadata, error bodies and streams, so that
//! Brigade's own clients work against Mizzen.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::path::Path as FsPath;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use base64::Engine as _;
use futures_util::{Stream, StreamExt, stream};
use mizzen_host_api::types::Phase;
use mizzen_runtime::project::{
    EventDetails, MAX_LABEL_LEN, Project, is_event_source_char, is_label_char,
    server_clone_url_problem, validate_secret_key, validate_secrets,
};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::OwnedSemaphorePermit;

use crate::auth::{self, PROJECT_ROLES, Principal, PrincipalKind, SYSTEM_ROLES};
use crate::gateways::{self, GatewayError, GatewayEvent};
use crate::metrics::Metrics;
use crate::project_cache::ProjectCache;
use crate::scheduler::{RETRY_LABEL, Scheduler, WORKER_CONTAINER};
use crate::store::{
    EventDocument, EventFilter, EventHead, EventRecord, JobRecord, NewEvent, Page, ProjectRecord,
    RoleAssignment, ServiceAccountRecord, Store, StoreError, now_micros, rfc3339,
};

/// Every object's `apiVersion`.
pub const API_VERSION: &str = "brigade.sh/v2";

/// Request bodies larger than this are refused before they are read in
/// full: GitHub's webhooks are at most 25 MB, and event payloads travel in
/// the database, where a few MiB each is already a lot.
pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;

/// Brigade's list page size: 20 by default, at most 100.
const DEFAULT_PAGE: i64 = 20;
const MAX_PAGE: i64 = 100;

/// What one page of an event list may hold in event documents (payloads,
/// mostly): a page stops before the event that would take it past this,
/// but holds at least one event, and its `continue` leads on. Brigade's
/// clients read a page whole; 100 ordinary events (a few KiB each) stay one
/// page, while events with payloads of many MiB come a few at a time.
pub const EVENT_PAGE_BYTES: u64 = 8 * 1024 * 1024;

/// Memory that answers may spend on large event documents at once, across
/// all requests, rendering them or holding them until the client has read
/// them: a request for a large event waits for its share, so that many
/// clients reading large payloads at once cost about this much, not their
/// number times their payloads. A document counts as many times as it is
/// held at once ([`RENDERED`], [`COPIED`]).
pub const DOCUMENT_BUDGET: u32 = 256 * 1024 * 1024;

/// Documents smaller than this take no share of [`DOCUMENT_BUDGET`]: they
/// are what nearly every event is, and one request holds one at a time.
const SMALL_DOCUMENT: u64 = 1024 * 1024;

/// Log lines read from the store per query while streaming.
const LOG_BATCH: i64 = 500;

/// How often a stream re-reads the store when nothing on this replica
/// signalled a change (another replica may have made one).
const STREAM_POLL: Duration = Duration::from_millis(500);

/// Brigade's root sessions lasted an hour (`ROOT_USER_SESSION_TTL`).
pub const ROOT_SESSION_TTL: Duration = Duration::from_secs(60 * 60);

/// Tokens and secrets the webhook gateways check; a gateway without one is
/// disabled (404).
#[derive(Debug, Clone, Default)]
pub struct GatewayConfig {
    /// GitHub's webhook secret (HMAC key).
    pub github_secret: Option<String>,
    /// Tokens Docker Hub may present (`?access_token=`).
    pub dockerhub_tokens: Vec<String>,
    /// Tokens ACR may present (`Authorization: Bearer`).
    pub acr_tokens: Vec<String>,
    /// Tokens CloudEvents producers may present.
    pub cloudevents_tokens: Vec<String>,
}

/// What the handlers share.
pub struct AppState {
    /// The store.
    pub store: Store,
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
}

/// The API's routes.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/ping", get(ping))
        .route("/v2/ping", get(ping))
        .route("/metrics", get(metrics))
        .route("/v2/sessions", post(create_session))
        .route("/v2/session", delete(delete_session))
        .route("/v2/whoami", get(whoami))
        .route("/v2/projects", post(create_project).get(list_projects))
        .route(
            "/v2/projects/{id}",
            get(get_project).put(update_project).delete(delete_project),
        )
        .route("/v2/projects/{id}/secrets", get(list_secrets))
        .route(
            "/v2/projects/{id}/secrets/{key}",
            put(set_secret).delete(unset_secret),
        )
        .route(
            "/v2/projects/{id}/role-assignments",
            post(grant_project_role)
                .get(list_project_roles)
                .delete(revoke_project_role),
        )
        .route("/v2/project-role-assignments", get(list_all_project_roles))
        .route(
            "/v2/events",
            post(create_events).get(list_events).delete(delete_events),
        )
        .route("/v2/events/cancellations", post(cancel_events))
        .route("/v2/events/{id}", get(get_event).delete(delete_event))
        .route("/v2/events/{id}/cancellation", put(cancel_event))
        .route("/v2/events/{id}/retries", post(retry_event))
        .route("/v2/events/{id}/clones", post(clone_event))
        .route("/v2/events/{id}/source-state", put(set_source_state))
        .route("/v2/events/{id}/worker/status", get(worker_status))
        .route("/v2/events/{id}/worker/jobs/{job}/status", get(job_status))
        .route("/v2/events/{id}/logs", get(logs))
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
        .route(
            "/v2/role-assignments",
            post(grant_role).get(list_roles).delete(revoke_role),
        )
        .route("/v2/users", get(list_users))
        .route("/v2/users/{id}", get(get_user))
        .route("/gateways/github", post(github_webhook))
        .route("/gateways/dockerhub", post(dockerhub_webhook))
        .route("/gateways/acr", post(acr_webhook))
        .route(
            "/gateways/cloudevents",
            post(cloudevents_webhook).options(cloudevents_handshake),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(name_the_body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limit_body_time,
        ))
        .with_state(state)
}

/// Gives a request's body [`AppState::body_timeout`] from the moment its
/// head arrived: a client that sends its body slowly, or stops, would
/// otherwise hold its connection (and a descriptor) for as long as it
/// likes. The sender is told which limit it ran into, and the connection
/// is closed, since the rest of the body would be read as the next request.
async fn limit_body_time(
    State(state): AppStateRef,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let timeout = state.body_timeout;
    let expired = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        Body::new(BodyDeadline {
            body,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            expired: expired.clone(),
        })
    });
    let response = next.run(request).await;
    if !expired.load(Ordering::Relaxed) {
        return response;
    }
    let reason = format!(
        "the request body did not arrive within this server's limit of {} (--body-timeout)",
        humantime::format_duration(timeout)
    );
    (
        StatusCode::REQUEST_TIMEOUT,
        [(header::CONNECTION, "close")],
        axum::Json(
            json!({"apiVersion": API_VERSION, "kind": "RequestTimeoutError", "reason": reason}),
        ),
    )
        .into_response()
}

/// A request body that fails once its deadline has passed.
struct BodyDeadline {
    body: Body,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    expired: Arc<AtomicBool>,
}

/// What reading a body past its deadline fails with.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {}", humantime::format_duration(*.0))]
struct BodyTimedOut(Duration);

impl axum::body::HttpBody for BodyDeadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        // The deadline first: a body that trickles in is always ready with
        // its next byte.
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.expired.store(true, Ordering::Relaxed);
            return std::task::Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(this.timeout)))));
        }
        std::pin::Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// axum refuses a body past [`MAX_BODY_BYTES`] with its own plain text; the
/// sender is told the limit instead, as a JSON error like every other.
///
/// The response also says `Connection: close`: the rest of the refused body
/// is never read, so the connection cannot carry another request, and a
/// client that was not told so would send its next request on a connection
/// the server is closing (and get no answer to it).
async fn name_the_body_limit(response: Response) -> Response {
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return response;
    }
    let reason = format!(
        "the request body is larger than this server's limit of {} MiB ({MAX_BODY_BYTES} bytes)",
        MAX_BODY_BYTES / (1024 * 1024)
    );
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        [(header::CONNECTION, "close")],
        axum::Json(json!({"kind": "PayloadTooLargeError", "reason": reason})),
    )
        .into_response()
}

// ----- errors ----------------------------------------------------------------

/// An API error, with Brigade's error kinds and bodies.
#[derive(Debug)]
pub enum ApiError {
    /// 400 BadRequestError.
    BadRequest {
        /// What was wrong.
        reason: String,
        /// Each problem, naming its field.
        details: Vec<String>,
    },
    /// 401 AuthenticationError.
    Unauthenticated(String),
    /// 403 AuthorizationError.
    Forbidden(String),
    /// 404 NotFoundError.
    NotFound {
        /// The kind of thing, e.g. `Project`.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// 409 ConflictError.
    Conflict {
        /// The kind of thing.
        kind: &'static str,
        /// Its id.
        id: String,
        /// Why.
        reason: String,
    },
    /// 501 NotSupportedError.
    NotSupported(String),
    /// 500 InternalServerError (the details go to the server's log only).
    Internal(String),
}

impl ApiError {
    fn bad(reason: impl Into<String>) -> Self {
        ApiError::BadRequest {
            reason: reason.into(),
            details: Vec::new(),
        }
    }

    fn forbidden(role: &str, scope: &str) -> Self {
        let scope = if scope.is_empty() {
            String::new()
        } else {
            format!(" for {scope:?}")
        };
        ApiError::Forbidden(format!("this requires the {role} role{scope}"))
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            ApiError::BadRequest { reason, details } => (
                StatusCode::BAD_REQUEST,
                json!({"kind": "BadRequestError", "reason": reason, "details": details}),
            ),
            ApiError::Unauthenticated(reason) => (
                StatusCode::UNAUTHORIZED,
                json!({"kind": "AuthenticationError", "reason": reason}),
            ),
            ApiError::Forbidden(reason) => (
                StatusCode::FORBIDDEN,
                json!({"kind": "AuthorizationError", "reason": reason}),
            ),
            ApiError::NotFound { kind, id } => (
                StatusCode::NOT_FOUND,
                json!({"kind": "NotFoundError", "type": kind, "id": id,
                       "reason": format!("{kind} {id:?} not found")}),
            ),
            ApiError::Conflict { kind, id, reason } => (
                StatusCode::CONFLICT,
                json!({"kind": "ConflictError", "type": kind, "id": id, "reason": reason}),
            ),
            ApiError::NotSupported(details) => (
                StatusCode::NOT_IMPLEMENTED,
                json!({"kind": "NotSupportedError", "details": details}),
            ),
            ApiError::Internal(message) => {
                tracing::error!(error = %message, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    json!({"kind": "InternalServerError"}),
                )
            }
        };
        let mut body = body;
        body["apiVersion"] = json!(API_VERSION);
        (status, axum::Json(body)).into_response()
    }
}

type ApiResult<T = Response> = Result<T, ApiError>;
type AppStateRef = State<Arc<AppState>>;
type QueryMap = Query<HashMap<String, String>>;

// ----- helpers -----------------------------------------------------------------

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
        metadata["remainingItemCount"] = json!(remaining);
    }
    json!({"apiVersion": API_VERSION, "kind": kind, "metadata": metadata, "items": items})
}

fn page_limit(query: &HashMap<String, String>) -> ApiResult<i64> {
    match query.get("limit") {
        None => Ok(DEFAULT_PAGE),
        Some(text) => match text.parse::<i64>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            _ => Err(ApiError::bad(format!(
                "limit {text:?}: expected a number from 1 to {MAX_PAGE}"
            ))),
        },
    }
}

fn truthy(query: &HashMap<String, String>, key: &str) -> bool {
    query.get(key).is_some_and(|v| v == "true" || v == "1")
}

/// `k=v,k2=v2`, as Brigade's clients encode qualifier and label filters.
fn pairs(query: &HashMap<String, String>, key: &str) -> ApiResult<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    if let Some(text) = query.get(key).filter(|t| !t.is_empty()) {
        for pair in text.split(',') {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                ApiError::bad(format!("{key}: {pair:?} is not of the form key=value"))
            })?;
            map.insert(k.to_string(), v.to_string());
        }
    }
    Ok(map)
}

fn phases(query: &HashMap<String, String>) -> ApiResult<Vec<Phase>> {
    match query.get("workerPhases").filter(|t| !t.is_empty()) {
        None => Ok(Vec::new()),
        Some(text) => text
            .split(',')
            .map(|p| Phase::from_str(p).map_err(|e| ApiError::bad(format!("workerPhases: {e}"))))
            .collect(),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// The caller, from its bearer token.
async fn principal(state: &AppState, headers: &HeaderMap) -> ApiResult<Principal> {
    let token = bearer(headers).ok_or_else(|| {
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

/// A whole event the caller may see, with its share of [`DOCUMENT_BUDGET`]
/// for `copies` of its document at once (hand it on to [`held_json`] to
/// keep it until the answer is written).
async fn visible_event(
    state: &AppState,
    who: &Principal,
    id: &str,
    copies: u64,
) -> ApiResult<(EventRecord, Option<OwnedSemaphorePermit>)> {
    let head = visible_head(state, who, id).await?;
    let share = document_share(state, head.size.saturating_mul(copies)).await;
    match state.store.event(id).await? {
        Some(event) => Ok((event, share)),
        // Deleted since its head was read.
        None => Err(ApiError::NotFound {
            kind: "Event",
            id: id.to_string(),
        }),
    }
}

/// Copies of a document held at once while it is read and rendered: the
/// database's and the driver's while it is read, then the parsed event,
/// then the rendered answer.
const RENDERED: u64 = 3;

/// Copies of a document held at once while a retry or a clone of its event
/// is read, stored and shown: as for [`RENDERED`], and the new event, the
/// copy the answer shows and the event as the store writes it.
const COPIED: u64 = 4;

/// Waits for the share of [`DOCUMENT_BUDGET`] of `bytes` held in documents;
/// `None` for a small one. One larger than the budget waits for all of it.
async fn document_share(state: &AppState, bytes: u64) -> Option<OwnedSemaphorePermit> {
    if bytes < SMALL_DOCUMENT {
        return None;
    }
    let bytes = u32::try_from(bytes)
        .unwrap_or(u32::MAX)
        .min(DOCUMENT_BUDGET);
    // The semaphore is never closed, so this cannot fail.
    state.documents.clone().acquire_many_owned(bytes).await.ok()
}

/// A rendered answer that keeps its share of [`DOCUMENT_BUDGET`] until the
/// HTTP layer has written it and drops it.
struct HeldBytes {
    bytes: Vec<u8>,
    _share: Option<OwnedSemaphorePermit>,
}

impl AsRef<[u8]> for HeldBytes {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// `value` as JSON, after `prefix`, holding as much of `share` as it has
/// bytes until it is written: the copies made to render it are gone by
/// then (or go with `value`), and their part of the budget goes back at
/// once, for other requests or this one's next event.
fn held_json(prefix: &[u8], value: &Value, share: Option<OwnedSemaphorePermit>) -> Bytes {
    let mut bytes = prefix.to_vec();
    // Writing JSON values to memory cannot fail.
    let _ = serde_json::to_writer(&mut bytes, value);
    let Some(mut share) = share else {
        return Bytes::from(bytes);
    };
    let kept = match share.split(bytes.len()) {
        // The rest of `share` is given back when it is dropped here.
        Some(kept) => kept,
        None => share,
    };
    Bytes::from_owner(HeldBytes {
        bytes,
        _share: Some(kept),
    })
}

/// A JSON answer rendered by [`held_json`].
fn held_answer(status: StatusCode, value: &Value, share: Option<OwnedSemaphorePermit>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from(held_json(b"", value, share)),
    )
        .into_response()
}

// ----- rendering ----------------------------------------------------------------

fn project_json(project: &ProjectRecord) -> Value {
    let mut document = project.document.clone();
    document["apiVersion"] = json!(API_VERSION);
    document["kind"] = json!("Project");
    document["metadata"]["id"] = json!(project.id);
    document["metadata"]["created"] = json!(rfc3339(project.created));
    document
}

fn status_json(phase: Phase, started: Option<i64>, ended: Option<i64>) -> Value {
    let mut status = json!({"phase": phase.as_str()});
    if let Some(started) = started {
        status["started"] = json!(rfc3339(started));
    }
    if let Some(ended) = ended {
        status["ended"] = json!(rfc3339(ended));
    }
    status
}

fn job_json(job: &JobRecord) -> Value {
    let mut status = status_json(job.phase, job.started, job.ended);
    if job.logs_event_id != job.event_id {
        status["logsEventID"] = json!(job.logs_event_id);
    }
    json!({"name": job.name, "created": rfc3339(job.created), "spec": redacted_spec(&job.spec), "status": status})
}

/// A job spec with its containers' environment values hidden: scripts pass
/// secrets to jobs through the environment (Brigade kept it in a Kubernetes
/// Secret and redacted it in the API).
fn redacted_spec(spec: &Value) -> Value {
    let mut spec = spec.clone();
    let mut containers: Vec<&mut Value> = Vec::new();
    let Value::Object(fields) = &mut spec else {
        return spec;
    };
    for (name, value) in fields.iter_mut() {
        match (name.as_str(), value) {
            ("primaryContainer", container) => containers.push(container),
            ("sidecarContainers", Value::Object(sidecars)) => {
                containers.extend(sidecars.values_mut())
            }
            _ => {}
        }
    }
    for container in containers {
        if let Some(Value::Object(environment)) = container.get_mut("environment") {
            for value in environment.values_mut() {
                *value = json!(mizzen_runtime::redact::MASK);
            }
        }
    }
    spec
}

/// The worker spec an event was created with: the project's worker template
/// with Brigade's defaults stamped in.
fn worker_spec(project: &Value, git: Option<&Value>) -> Value {
    let mut spec = project["spec"]["workerTemplate"].clone();
    if !spec.is_object() {
        spec = json!({});
    }
    if spec["logLevel"].as_str().unwrap_or_default().is_empty() {
        spec["logLevel"] = json!("INFO");
    }
    if spec["configFilesDirectory"]
        .as_str()
        .unwrap_or_default()
        .is_empty()
    {
        spec["configFilesDirectory"] = json!(".brigade");
    }
    if spec["useWorkspace"].as_bool() == Some(true)
        && spec["workspaceSize"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
    {
        spec["workspaceSize"] = json!("10Gi");
    }
    if let Some(Value::Object(overrides)) = git {
        for (key, value) in overrides {
            if value.as_str().is_some_and(|s| !s.is_empty()) {
                spec["git"][key] = value.clone();
            }
        }
    }
    spec
}

/// An event as Brigade's API shows it. It takes the event, so that its
/// payload moves into the answer instead of being copied.
fn event_json(event: EventRecord, jobs: &[JobRecord]) -> Value {
    let EventRecord {
        id,
        project_id,
        created,
        source,
        event_type,
        document: mut doc,
        summary,
        phase,
        started,
        ended,
        ..
    } = event;
    let mut value = json!({
        "apiVersion": API_VERSION,
        "kind": "Event",
        "metadata": {"id": id, "created": rfc3339(created)},
        "projectID": project_id,
        "source": source,
        "type": event_type,
        "payload": std::mem::take(&mut doc.payload),
        "worker": {
            "spec": worker_spec(&doc.project, doc.git.as_ref()),
            "status": status_json(phase, started, ended),
            "jobs": jobs.iter().map(job_json).collect::<Vec<_>>(),
        },
    });
    if !doc.qualifiers.is_empty() {
        value["qualifiers"] = json!(doc.qualifiers);
    }
    if !doc.labels.is_empty() {
        value["labels"] = json!(doc.labels);
    }
    if !doc.short_title.is_empty() {
        value["shortTitle"] = json!(doc.short_title);
    }
    if !doc.long_title.is_empty() {
        value["longTitle"] = json!(doc.long_title);
    }
    if let Some(git) = doc.git {
        value["git"] = git;
    }
    if !summary.is_empty() {
        value["summary"] = json!(summary);
    }
    if !doc.source_state.is_empty() {
        value["sourceState"] = json!({"state": doc.source_state});
    }
    value
}

// ----- system -------------------------------------------------------------------

async fn healthz(State(state): AppStateRef) -> Response {
    match state.store.phase_counts().await {
        Ok(_) => (StatusCode::OK, "ok").into_response(),
        Err(e) => {
            tracing::error!(error = %e, "health check: the store does not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "the store does not answer").into_response()
        }
    }
}

async fn ping() -> Response {
    axum::Json(json!({
        "apiVersion": API_VERSION,
        "kind": "PingResponse",
        "version": env!("CARGO_PKG_VERSION"),
        "commit": option_env!("MIZZEN_COMMIT").unwrap_or("unknown"),
    }))
    .into_response()
}

async fn metrics(State(state): AppStateRef) -> ApiResult {
    let phases = state.store.phase_counts().await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(&phases),
    )
        .into_response())
}

// ----- sessions -----------------------------------------------------------------

async fn create_session(
    State(state): AppStateRef,
    Query(query): QueryMap,
    headers: HeaderMap,
) -> ApiResult {
    if !truthy(&query, "root") {
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
        .and_then(|h| h.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
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
    let token = auth::new_token().map_err(|e| ApiError::Internal(e.to_string()))?;
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

async fn delete_session(State(state): AppStateRef, headers: HeaderMap) -> ApiResult {
    let who = principal(&state, &headers).await?;
    if who.kind != PrincipalKind::Root {
        return Err(ApiError::bad(
            "this token is not a session's; service-account tokens are revoked by locking the account",
        ));
    }
    if let Some(token) = bearer(&headers) {
        state.store.delete_session(&auth::hash_token(token)).await?;
    }
    ok(StatusCode::OK, json!({}))
}

async fn whoami(State(state): AppStateRef, headers: HeaderMap) -> ApiResult {
    let who = principal(&state, &headers).await?;
    ok(
        StatusCode::OK,
        json!({"apiVersion": API_VERSION, "kind": "PrincipalReference",
               "type": who.kind.as_str(), "id": who.id}),
    )
}

// ----- projects -----------------------------------------------------------------

/// Parses and validates a project body with the same rules as project files,
/// and its limits against the server's ceilings.
fn parse_project(state: &AppState, body: &Bytes) -> ApiResult<(String, Value)> {
    let document: Value = parse_body(body, "project")?;
    let text = document.to_string();
    let invalid = |detail: String| ApiError::BadRequest {
        reason: "the project is not valid".into(),
        details: vec![detail],
    };
    let project =
        Project::parse(FsPath::new("request body"), &text).map_err(|e| invalid(e.to_string()))?;
    project
        .worker
        .limits
        .check_within(state.scheduler.limit_ceilings())
        .map_err(|e| invalid(e.to_string()))?;
    if let Some(problem) = project
        .worker
        .git
        .as_ref()
        .filter(|git| !git.clone_url.is_empty())
        .and_then(|git| server_clone_url_problem(&git.clone_url))
    {
        return Err(invalid(format!("spec.workerTemplate.git.{problem}")));
    }
    Ok((project.id, document))
}

async fn create_project(State(state): AppStateRef, headers: HeaderMap, body: Bytes) -> ApiResult {
    let who = principal(&state, &headers).await?;
    require(&who, "PROJECT_CREATOR", "")?;
    let (id, document) = parse_project(&state, &body)?;
    if !state.store.create_project(&id, &document).await? {
        return Err(ApiError::Conflict {
            kind: "Project",
            id: id.clone(),
            reason: format!("a project with id {id:?} already exists"),
        });
    }
    grant_creator(&state, &who, &id).await?;
    let project = state.store.project(&id).await?.ok_or(ApiError::NotFound {
        kind: "Project",
        id: id.clone(),
    })?;
    ok(StatusCode::CREATED, project_json(&project))
}

/// "Not found" for a project deleted while a request about it ran.
fn project_gone(id: &str) -> ApiError {
    ApiError::NotFound {
        kind: "Project",
        id: id.to_string(),
    }
}

/// A project's creator administers it (as in Brigade).
async fn grant_creator(state: &AppState, who: &Principal, project: &str) -> ApiResult<()> {
    if who.kind == PrincipalKind::Root {
        return Ok(());
    }
    for role in PROJECT_ROLES {
        let granted = state
            .store
            .grant(&RoleAssignment {
                role: role.to_string(),
                principal_type: who.kind.as_str().to_string(),
                principal_id: who.id.clone(),
                scope: project.to_string(),
            })
            .await?;
        if !granted {
            // Deleted as soon as it was created.
            return Err(project_gone(project));
        }
    }
    Ok(())
}

async fn list_projects(
    State(state): AppStateRef,
    headers: HeaderMap,
    Query(query): QueryMap,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    let limit = page_limit(&query)?;
    let visible = who.visible_projects();
    let after = query.get("continue").cloned().unwrap_or_default();
    let page = state
        .store
        .projects(&after, limit, visible.as_deref())
        .await?;
    let items = page.items.iter().map(project_json).collect();
    ok(
        StatusCode::OK,
        list("ProjectList", items, page.next, page.remaining),
    )
}

async fn get_project(
    State(state): AppStateRef,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    let project = visible_project(&state, &who, &id).await?;
    ok(StatusCode::OK, project_json(&project))
}

async fn update_project(
    State(state): AppStateRef,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): QueryMap,
    body: Bytes,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    let (body_id, document) = parse_project(&state, &body)?;
    if body_id != id {
        return Err(ApiError::bad(format!(
            "metadata.id {body_id:?} does not match the project {id:?} in the path"
        )));
    }
    // A caller who may neither create projects nor change this one learns
    // the same whether or not another tenant's project has this id.
    if truthy(&query, "create")
        && !who.has("PROJECT_CREATOR", "")
        && !who.has_project_role("PROJECT_DEVELOPER", &id)
    {
        require(&who, "PROJECT_CREATOR", "")?;
    }
    let exists = state.store.project(&id).await?.is_some();
    if !exists && truthy(&query, "create") {
        require(&who, "PROJECT_CREATOR", "")?;
        if state.store.create_project(&id, &document).await? {
            grant_creator(&state, &who, &id).await?;
        }
    } else {
        require_project(&who, "PROJECT_DEVELOPER", &id)?;
        if !state.store.update_project(&id, &document).await? {
            return Err(ApiError::NotFound {
                kind: "Project",
                id,
            });
        }
    }
    let project = state.store.project(&id).await?.ok_or(ApiError::NotFound {
        kind: "Project",
        id: id.clone(),
    })?;
    ok(StatusCode::OK, project_json(&project))
}

async fn delete_project(
    State(state): AppStateRef,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    require_project(&who, "PROJECT_ADMIN", &id)?;
    // Stop the project's running workers before their rows go.
    let running = state
        .store
        .event_heads(&EventFilter {
            project_id: Some(id.clone()),
            phases: vec![Phase::Pending, Phase::Starting, Phase::Running],
            ..EventFilter::default()
        })
        .await?;
    for event in running {
        state.store.cancel_event(&event.id).await?;
        state.scheduler.abort_local(&event.id);
    }
    if !state.store.delete_project(&id).await? {
        return Err(ApiError::NotFound {
            kind: "Project",
            id,
        });
    }
    state.projects.forget(&id);
    ok(StatusCode::OK, json!({}))
}

// ----- secrets ------------------------------------------------------------------

async fn list_secrets(
    State(state): AppStateRef,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
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
    headers: HeaderMap,
    Path((id, key)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
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
    headers: HeaderMap,
    Path((id, key)): Path<(String, String)>,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    visible_project(&state, &who, &id).await?;
    require_project(&who, "PROJECT_ADMIN", &id)?;
    state.store.unset_secret(&id, &key).await?;
    ok(StatusCode::OK, json!({}))
}

// ----- events -------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct EventBody {
    #[serde(rename = "projectID", default)]
    project_id: String,
    #[serde(default)]
    source: String,
    #[serde(rename = "type", default)]
    event_type: String,
    #[serde(default)]
    qualifiers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    short_title: String,
    #[serde(default)]
    long_title: String,
    #[serde(default)]
    git: Option<Value>,
    #[serde(default)]
    payload: String,
}

fn validate_event(body: &EventBody) -> ApiResult<()> {
    let mut details = Vec::new();
    if body.source.is_empty() {
        details.push("source: required".to_string());
    } else if !body.source.chars().all(is_event_source_char) || body.source.len() > MAX_LABEL_LEN {
        details.push(format!(
            "source {:?}: must match ^[\\w:/\\-\\.\\?=@]*$ (at most 255 characters)",
            body.source
        ));
    }
    if body.event_type.is_empty() {
        details.push("type: required".to_string());
    } else if !body.event_type.chars().all(is_label_char) || body.event_type.len() > MAX_LABEL_LEN {
        details.push(format!(
            "type {:?}: must match ^[\\w:/\\-\\.\\?=\\*]*$ (at most 255 characters)",
            body.event_type
        ));
    }
    for (field, map) in [("qualifiers", &body.qualifiers), ("labels", &body.labels)] {
        for (key, value) in map.iter().flatten() {
            if !value.chars().all(is_label_char) || value.len() > MAX_LABEL_LEN {
                details.push(format!(
                    "{field}.{key}: value {value:?} must match ^[\\w:/\\-\\.\\?=\\*]*$"
                ));
            }
        }
    }
    let clone_url = body
        .git
        .as_ref()
        .and_then(|git| git.get("cloneURL"))
        .map(|url| url.as_str().unwrap_or("(not a string)"))
        .filter(|url| !url.is_empty());
    if let Some(problem) = clone_url.and_then(server_clone_url_problem) {
        details.push(format!("git.{problem}"));
    }
    if details.is_empty() {
        Ok(())
    } else {
        Err(ApiError::BadRequest {
            reason: "the event is not valid".into(),
            details,
        })
    }
}

/// Whether `who` may create an event of `source` (for `project`, if named).
fn may_create(who: &Principal, source: &str, project: &str) -> bool {
    who.has("EVENT_CREATOR", source)
        || (!project.is_empty() && who.has_project_role("PROJECT_USER", project))
}

/// The copies of an event for every project that subscribes to it
/// (Brigade's fan-out, §2.1): only `project_id`'s when it is set. A Docker
/// Hub `push` also reaches projects subscribed to the older `image_push`.
async fn fan_out(
    state: &AppState,
    mut body: EventBody,
    extra_labels: &BTreeMap<String, String>,
) -> ApiResult<Vec<NewEvent>> {
    // The payload (up to the body limit) is not copied for the
    // subscriptions, which do not look at it, and is moved into the last
    // copy of the event.
    let payload = std::mem::take(&mut body.payload);
    let projects = if body.project_id.is_empty() {
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let page = state.store.projects(&after, MAX_PAGE, None).await?;
            let last = page.items.last().map(|p| p.id.clone());
            all.extend(page.items);
            match (page.next, last) {
                (Some(_), Some(last)) => after = last,
                _ => break,
            }
        }
        all
    } else {
        match state.store.project(&body.project_id).await? {
            Some(project) => vec![project],
            None => {
                return Err(ApiError::NotFound {
                    kind: "Project",
                    id: body.project_id.clone(),
                });
            }
        }
    };
    let mut labels = body.labels.clone().unwrap_or_default();
    labels.extend(extra_labels.clone());
    let details = EventDetails {
        source: body.source.clone(),
        event_type: body.event_type.clone(),
        qualifiers: body.qualifiers.clone().unwrap_or_default(),
        labels: labels.clone(),
        short_title: body.short_title.clone(),
        long_title: body.long_title.clone(),
        payload: String::new(),
    };
    let legacy =
        (body.source == gateways::DOCKERHUB_SOURCE && body.event_type == "push").then(|| {
            EventDetails {
                event_type: gateways::LEGACY_PUSH_TYPE.to_string(),
                ..details.clone()
            }
        });
    let now = now_micros();
    let mut events = Vec::new();
    for project in projects {
        let Ok(parsed) = state.projects.parse(&project.id, &project.document) else {
            tracing::warn!(project = %project.id, "stored project no longer parses; skipped in fan-out");
            continue;
        };
        let event_type = if parsed.subscribes_to(&details) {
            details.event_type.clone()
        } else if let Some(legacy) = legacy.as_ref().filter(|l| parsed.subscribes_to(l)) {
            legacy.event_type.clone()
        } else {
            continue;
        };
        events.push(NewEvent {
            id: uuid::Uuid::new_v4().to_string(),
            project_id: project.id.clone(),
            created: now,
            source: body.source.clone(),
            event_type,
            document: EventDocument {
                qualifiers: details.qualifiers.clone(),
                labels: labels.clone(),
                short_title: body.short_title.clone(),
                long_title: body.long_title.clone(),
                git: body.git.clone(),
                payload: String::new(),
                source_state: BTreeMap::new(),
                project: project.document.clone(),
            },
            inherited_jobs: Vec::new(),
        });
    }
    if let Some((last, others)) = events.split_last_mut() {
        for event in others {
            event.document.payload = payload.clone();
        }
        last.document.payload = payload;
    }
    Ok(events)
}

/// Stores events (durably); the JSON of those stored, as Brigade's API
/// shows them. An event whose project was deleted meanwhile is not stored
/// and not shown.
async fn accept(state: &AppState, events: Vec<NewEvent>) -> ApiResult<Vec<Value>> {
    let records: Vec<EventRecord> = events
        .iter()
        .map(|e| EventRecord {
            seq: 0,
            id: e.id.clone(),
            project_id: e.project_id.clone(),
            created: e.created,
            source: e.source.clone(),
            event_type: e.event_type.clone(),
            document: e.document.clone(),
            summary: String::new(),
            phase: Phase::Pending,
            started: None,
            ended: None,
            attempts: 0,
        })
        .collect();
    let (_, gone) = store_events(state, events).await?;
    Ok(records
        .into_iter()
        .filter(|r| !gone.contains(&r.project_id))
        .map(|r| event_json(r, &[]))
        .collect())
}

/// Stores events durably, counts them and wakes the scheduler; how many
/// were stored, and the projects deleted meanwhile whose events were not.
async fn store_events(
    state: &AppState,
    events: Vec<NewEvent>,
) -> ApiResult<(usize, std::collections::BTreeSet<String>)> {
    let projects: Vec<String> = events.iter().map(|e| e.project_id.clone()).collect();
    let gone = state.store.insert_events(events).await?;
    let count = projects.iter().filter(|p| !gone.contains(*p)).count();
    state.metrics.events_accepted(count);
    state.scheduler.wake();
    Ok((count, gone))
}

/// Stores the one event a retry or a clone made and answers with it (an
/// Event, as Brigade's API did, not a list), holding `share` until written.
async fn accept_one(
    state: &AppState,
    event: NewEvent,
    share: Option<OwnedSemaphorePermit>,
) -> ApiResult {
    let project = event.project_id.clone();
    match accept(state, vec![event]).await?.pop() {
        Some(value) => Ok(held_answer(StatusCode::CREATED, &value, share)),
        None => Err(project_gone(&project)),
    }
}

async fn create_events(State(state): AppStateRef, headers: HeaderMap, body: Bytes) -> ApiResult {
    let who = principal(&state, &headers).await?;
    let body: EventBody = parse_body(&body, "event")?;
    validate_event(&body)?;
    if !may_create(&who, &body.source, &body.project_id) {
        return Err(ApiError::Forbidden(format!(
            "creating events of source {:?} requires the EVENT_CREATOR role for that source{}",
            body.source,
            if body.project_id.is_empty() {
                String::new()
            } else {
                format!(" or PROJECT_USER of project {:?}", body.project_id)
            }
        )));
    }
    if !body.project_id.is_empty()
        && !who.sees_project(&body.project_id)
        && !who.has("EVENT_CREATOR", &body.source)
    {
        return Err(ApiError::NotFound {
            kind: "Project",
            id: body.project_id.clone(),
        });
    }
    let project = body.project_id.clone();
    let events = fan_out(&state, body, &BTreeMap::new()).await?;
    let subscribed = events.len();
    let items = accept(&state, events).await?;
    if subscribed > 0 && items.is_empty() && !project.is_empty() {
        return Err(project_gone(&project));
    }
    ok(StatusCode::CREATED, list("EventList", items, None, 0))
}

async fn list_events(
    State(state): AppStateRef,
    headers: HeaderMap,
    Query(query): QueryMap,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    let limit = page_limit(&query)?;
    let filter = EventFilter {
        project_id: query.get("projectID").filter(|s| !s.is_empty()).cloned(),
        visible_projects: who.visible_projects(),
        source: query.get("source").filter(|s| !s.is_empty()).cloned(),
        event_type: query.get("type").filter(|s| !s.is_empty()).cloned(),
        phases: phases(&query)?,
        qualifiers: pairs(&query, "qualifiers")?,
        labels: pairs(&query, "labels")?,
        source_state: pairs(&query, "sourceState")?,
    };
    let after = match query.get("continue").filter(|s| !s.is_empty()) {
        Some(text) => Some(text.parse::<i64>().map_err(|_| {
            ApiError::bad(format!("continue {text:?} is not a value this server gave"))
        })?),
        None => None,
    };
    let page = state
        .store
        .event_page(&filter, after, limit, EVENT_PAGE_BYTES)
        .await?;
    // The list's envelope, then its events one at a time, each read and
    // rendered only when the previous one was handed to the connection: a
    // request holds one event's document, not the page's.
    let mut envelope = list("EventList", Vec::new(), page.next, page.remaining);
    envelope
        .as_object_mut()
        .and_then(|fields| fields.remove("items"));
    // `{...,"items":[` ... `]}`, the items last.
    let mut envelope = envelope.to_string();
    envelope.pop();
    envelope.push_str(",\"items\":[");
    let items = stream::unfold(
        (state, page.items.into_iter(), true),
        |(state, mut slots, first)| async move {
            loop {
                let slot = slots.next()?;
                let share = document_share(&state, slot.size.saturating_mul(RENDERED)).await;
                match state.store.event_by_seq(slot.seq).await {
                    // Deleted since the page was read.
                    Ok(None) => continue,
                    Ok(Some(event)) => {
                        let separator: &[u8] = if first { b"" } else { b"," };
                        let item = held_json(separator, &event_json(event, &[]), share);
                        return Some((Ok(item), (state, slots, false)));
                    }
                    Err(e) => {
                        // The answer has begun: cutting it short is how the
                        // client learns that it is not whole. Nothing more
                        // follows the error.
                        tracing::error!(error = %e, "reading a listed event failed");
                        return Some((Err(e), (state, Vec::new().into_iter(), false)));
                    }
                }
            }
        },
    );
    let body = stream::once(async move { Ok::<_, StoreError>(Bytes::from(envelope)) })
        .chain(items)
        .chain(stream::once(async { Ok(Bytes::from_static(b"]}")) }));
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(body),
    )
        .into_response())
}

async fn get_event(
    State(state): AppStateRef,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    let (event, share) = visible_event(&state, &who, &id, RENDERED).await?;
    let jobs = state.store.jobs(&id).await?;
    Ok(held_answer(
        StatusCode::OK,
        &event_json(event, &jobs),
        share,
    ))
}

/// Cancels one event the caller may cancel; `Ok(false)` when its worker had
/// already ended.
async fn cancel_one(state: &AppState, event: &EventHead) -> ApiResult<bool> {
    match state.store.cancel_event(&event.id).await? {
        Some(phase) if phase.is_terminal() => Ok(false),
        Some(_) => {
            state.scheduler.abort_local(&event.id);
            Ok(true)
        }
        None => Ok(false),
    }
}

async fn cancel_event(
    State(state): AppStateRef,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    let event = visible_head(&state, &who, &id).await?;
    require_project(&who, "PROJECT_USER", &event.project_id)?;
    if !cancel_one(&state, &event).await? {
        return Err(ApiError::Conflict {
            kind: "Event",
            id,
            reason: format!(
                "the event's worker has already ended ({}); only a worker that has not ended can be cancelled",
                event.phase
            ),
        });
    }
    ok(StatusCode::OK, json!({}))
}

/// The project and phases a many-events request must name.
async fn many(
    state: &AppState,
    who: &Principal,
    query: &HashMap<String, String>,
) -> ApiResult<Vec<EventHead>> {
    let project = query
        .get("projectID")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::bad("projectID is required"))?;
    let phases = phases(query)?;
    if phases.is_empty() {
        return Err(ApiError::bad("workerPhases is required"));
    }
    require_project(who, "PROJECT_USER", project)?;
    Ok(state
        .store
        .event_heads(&EventFilter {
            project_id: Some(project.clone()),
            phases,
            ..EventFilter::default()
        })
        .await?)
}

async fn cancel_events(
    State(state): AppStateRef,
    headers: HeaderMap,
    Query(query): QueryMap,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    let mut count = 0;
    for event in many(&state, &who, &query).await? {
        if cancel_one(&state, &event).await? {
            count += 1;
        }
    }
    ok(
        StatusCode::OK,
        json!({"apiVersion": API_VERSION, "kind": "CancelManyEventsResult", "count": count}),
    )
}

async fn delete_one(state: &AppState, event: &EventHead) -> ApiResult<bool> {
    if !event.phase.is_terminal() {
        cancel_one(state, event).await?;
    }
    Ok(state.store.delete_event(&event.id).await?)
}

async fn delete_event(
    State(state): AppStateRef,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    let event = visible_head(&state, &who, &id).await?;
    require_project(&who, "PROJECT_USER", &event.project_id)?;
    delete_one(&state, &event).await?;
    ok(StatusCode::OK, json!({}))
}

async fn delete_events(
    State(state): AppStateRef,
    headers: HeaderMap,
    Query(query): QueryMap,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    let mut count = 0;
    for event in many(&state, &who, &query).await? {
        if delete_one(&state, &event).await? {
            count += 1;
        }
    }
    ok(
        StatusCode::OK,
        json!({"apiVersion": API_VERSION, "kind": "DeleteManyEventsResult", "count": count}),
    )
}

async fn retry_event(
    State(state): AppStateRef,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    let (event, share) = visible_event(&state, &who, &id, COPIED).await?;
    if !may_create(&who, &event.source, &event.project_id) {
        return Err(ApiError::forbidden("PROJECT_USER", &event.project_id));
    }
    if !event.phase.is_terminal() {
        return Err(ApiError::Conflict {
            kind: "Event",
            id,
            reason: format!(
                "the event's worker is {}; only an event whose worker has ended can be retried",
                event.phase
            ),
        });
    }
    let new_id = uuid::Uuid::new_v4().to_string();
    let now = now_micros();
    let inherited = state
        .store
        .jobs(&event.id)
        .await?
        .into_iter()
        .filter(|job| job.phase == Phase::Succeeded && !job.uses_workspace)
        .map(|job| JobRecord {
            event_id: new_id.clone(),
            created: now,
            ..job
        })
        .collect();
    let mut document = event.document;
    document.labels.insert(RETRY_LABEL.into(), event.id.clone());
    document.source_state.clear();
    accept_one(
        &state,
        NewEvent {
            id: new_id,
            project_id: event.project_id,
            created: now,
            source: event.source,
            event_type: event.event_type,
            document,
            inherited_jobs: inherited,
        },
        share,
    )
    .await
}

async fn clone_event(
    State(state): AppStateRef,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    let (event, share) = visible_event(&state, &who, &id, COPIED).await?;
    if !may_create(&who, &event.source, &event.project_id) {
        return Err(ApiError::forbidden("PROJECT_USER", &event.project_id));
    }
    // The original's parts move into the clone: its payload is not copied.
    let doc = event.document;
    let body = EventBody {
        project_id: event.project_id.clone(),
        source: event.source.clone(),
        event_type: event.event_type.clone(),
        qualifiers: Some(doc.qualifiers),
        labels: Some(
            doc.labels
                .into_iter()
                .filter(|(k, _)| !k.starts_with("brigade.sh/"))
                .collect(),
        ),
        short_title: doc.short_title,
        long_title: doc.long_title,
        git: doc.git,
        payload: doc.payload,
    };
    let extra = BTreeMap::from([("brigade.sh/cloneOf".to_string(), event.id.clone())]);
    let mut events = fan_out(&state, body, &extra).await?;
    // The body names the event's project, so there is one copy at most.
    let Some(clone) = events.pop() else {
        return Err(ApiError::Conflict {
            kind: "Event",
            id,
            reason: format!(
                "project {:?} no longer subscribes to events of source {:?} and type {:?}",
                event.project_id, event.source, event.event_type
            ),
        });
    };
    accept_one(&state, clone, share).await
}

#[derive(Deserialize)]
struct SourceStateBody {
    #[serde(default)]
    state: BTreeMap<String, String>,
}

async fn set_source_state(
    State(state): AppStateRef,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    let Some(event) = state.store.event(&id).await? else {
        return Err(ApiError::NotFound { kind: "Event", id });
    };
    if !who.has("EVENT_CREATOR", &event.source) && !who.sees_project(&event.project_id) {
        // Another tenant's event does not exist as far as this caller knows.
        return Err(ApiError::NotFound { kind: "Event", id });
    }
    require(&who, "EVENT_CREATOR", &event.source)?;
    let body: SourceStateBody = parse_body(&body, "source state")?;
    state.store.set_source_state(&event, body.state).await?;
    ok(StatusCode::OK, json!({}))
}

// ----- status and logs ---------------------------------------------------------

/// A stream of values as Server-Sent Events (`message` frames, then
/// `done`), or as concatenated JSON objects without `sse=true`.
fn stream_response<S>(items: S, sse: bool) -> Response
where
    S: Stream<Item = (Option<i64>, Value)> + Send + 'static,
{
    if sse {
        let frames = items
            .map(|(id, value)| {
                let mut frame = SseEvent::default().event("message").data(value.to_string());
                if let Some(id) = id {
                    frame = frame.id(id.to_string());
                }
                Ok::<_, Infallible>(frame)
            })
            .chain(stream::once(async {
                Ok(SseEvent::default().event("done").data("done"))
            }));
        Sse::new(frames)
            .keep_alive(KeepAlive::default())
            .into_response()
    } else {
        let chunks = items.map(|(_, value)| Ok::<_, Infallible>(format!("{value}\n")));
        Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(chunks))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
    }
}

/// Reads a status until it is terminal, yielding each change.
fn watch_status<F, Fut>(state: Arc<AppState>, read: F) -> impl Stream<Item = (Option<i64>, Value)>
where
    F: Fn(Arc<AppState>) -> Fut + Send + 'static,
    Fut: Future<Output = Option<(Phase, Value)>> + Send,
{
    let updates = state.store.status_updates();
    stream::unfold(
        (state, read, updates, None::<Value>, false),
        |(state, read, mut updates, last, done)| async move {
            if done {
                return None;
            }
            loop {
                let (phase, status) = read(state.clone()).await?;
                if last.as_ref() != Some(&status) {
                    let next = (
                        state,
                        read,
                        updates,
                        Some(status.clone()),
                        phase.is_terminal(),
                    );
                    return Some(((None, status), next));
                }
                tokio::select! {
                    _ = updates.changed() => {}
                    _ = tokio::time::sleep(STREAM_POLL) => {}
                }
            }
        },
    )
}

async fn worker_status(
    State(state): AppStateRef,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): QueryMap,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    let event = visible_head(&state, &who, &id).await?;
    if !truthy(&query, "watch") {
        return ok(
            StatusCode::OK,
            status_json(event.phase, event.started, event.ended),
        );
    }
    let stream = watch_status(state.clone(), move |state| {
        let id = id.clone();
        async move {
            let event = state.store.event_head(&id).await.ok()??;
            Some((
                event.phase,
                status_json(event.phase, event.started, event.ended),
            ))
        }
    });
    Ok(stream_response(stream, truthy(&query, "sse")))
}

fn job_status_json(job: &JobRecord) -> Value {
    job_json(job)["status"].clone()
}

async fn job_status(
    State(state): AppStateRef,
    headers: HeaderMap,
    Path((id, name)): Path<(String, String)>,
    Query(query): QueryMap,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    visible_head(&state, &who, &id).await?;
    let Some(job) = state.store.job(&id, &name).await? else {
        return Err(ApiError::NotFound {
            kind: "Job",
            id: name,
        });
    };
    if !truthy(&query, "watch") {
        return ok(StatusCode::OK, job_status_json(&job));
    }
    let stream = watch_status(state.clone(), move |state| {
        let (id, name) = (id.clone(), name.clone());
        async move {
            let job = state.store.job(&id, &name).await.ok()??;
            Some((job.phase, job_status_json(&job)))
        }
    });
    Ok(stream_response(stream, truthy(&query, "sse")))
}

async fn logs(
    State(state): AppStateRef,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): QueryMap,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    let event = match state.store.event_head(&id).await? {
        Some(event)
            if who.has_project_role("PROJECT_USER", &event.project_id)
                || who.has("EVENT_CREATOR", &event.source) =>
        {
            event
        }
        Some(event) if who.sees_project(&event.project_id) => {
            return Err(ApiError::forbidden("PROJECT_USER", &event.project_id));
        }
        _ => return Err(ApiError::NotFound { kind: "Event", id }),
    };
    let job_name = query.get("job").filter(|j| !j.is_empty()).cloned();
    let (logs_event, container) = match &job_name {
        None => {
            let container = query
                .get("container")
                .filter(|c| !c.is_empty())
                .cloned()
                .unwrap_or_else(|| WORKER_CONTAINER.to_string());
            if container != WORKER_CONTAINER {
                return Err(ApiError::NotFound {
                    kind: "Container",
                    id: container,
                });
            }
            (event.id.clone(), container)
        }
        Some(name) => {
            let Some(job) = state.store.job(&event.id, name).await? else {
                return Err(ApiError::NotFound {
                    kind: "Job",
                    id: name.clone(),
                });
            };
            let container = query
                .get("container")
                .filter(|c| !c.is_empty())
                .cloned()
                .unwrap_or_else(|| name.clone());
            let sidecars = job.spec["sidecarContainers"].as_object();
            if container != *name && !sidecars.is_some_and(|s| s.contains_key(&container)) {
                return Err(ApiError::NotFound {
                    kind: "Container",
                    id: container,
                });
            }
            (job.logs_event_id.clone(), container)
        }
    };
    let after = headers
        .get("last-event-id")
        .and_then(|h| h.to_str().ok())
        .or(query.get("lastEventId").map(String::as_str))
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or(0);
    let follow = truthy(&query, "follow");
    let stream = log_stream(
        state.clone(),
        LogCursor {
            event_id: event.id.clone(),
            logs_event: logs_event.clone(),
            job: job_name.clone().unwrap_or_default(),
            container,
            after,
            follow,
        },
    );
    Ok(stream_response(stream, truthy(&query, "sse")))
}

struct LogCursor {
    event_id: String,
    logs_event: String,
    job: String,
    container: String,
    after: i64,
    follow: bool,
}

/// Whether whatever writes a log stream has ended: the job, or the worker.
async fn stream_ended(state: &AppState, cursor: &LogCursor) -> bool {
    if cursor.job.is_empty() {
        return match state.store.event_head(&cursor.event_id).await {
            Ok(Some(event)) => event.phase.is_terminal(),
            _ => true,
        };
    }
    match state.store.job(&cursor.event_id, &cursor.job).await {
        Ok(Some(job)) => job.phase.is_terminal(),
        _ => true,
    }
}

fn log_stream(state: Arc<AppState>, cursor: LogCursor) -> impl Stream<Item = (Option<i64>, Value)> {
    let updates = state.store.log_updates();
    stream::unfold(
        (state, cursor, updates, false),
        |(state, mut cursor, mut updates, mut last_read)| async move {
            loop {
                let lines = match state
                    .store
                    .logs(
                        &cursor.logs_event,
                        &cursor.job,
                        &cursor.container,
                        cursor.after,
                        LOG_BATCH,
                    )
                    .await
                {
                    Ok(lines) => lines,
                    Err(e) => {
                        tracing::error!(error = %e, "reading logs failed");
                        return None;
                    }
                };
                if !lines.is_empty() {
                    cursor.after = lines.last().map(|l| l.seq).unwrap_or(cursor.after);
                    let items: Vec<(Option<i64>, Value)> = lines
                        .iter()
                        .map(|line| {
                            (
                                Some(line.seq),
                                json!({"apiVersion": API_VERSION, "kind": "LogEntry",
                                       "time": rfc3339(line.time), "message": line.message}),
                            )
                        })
                        .collect();
                    return Some((stream::iter(items), (state, cursor, updates, last_read)));
                }
                if !cursor.follow || last_read {
                    return None;
                }
                if stream_ended(&state, &cursor).await {
                    // One more read after the end: lines written just before
                    // it may still have been on their way to the store.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    last_read = true;
                    continue;
                }
                tokio::select! {
                    _ = updates.changed() => {}
                    _ = tokio::time::sleep(STREAM_POLL) => {}
                }
            }
        },
    )
    .flatten()
}

// ----- service accounts and roles ----------------------------------------------

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
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
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
    let token = auth::new_token().map_err(|e| ApiError::Internal(e.to_string()))?;
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
    headers: HeaderMap,
    Query(query): QueryMap,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    require(&who, "READER", "")?;
    let limit = page_limit(&query)?;
    let after = query.get("continue").cloned().unwrap_or_default();
    let page: Page<ServiceAccountRecord> = state.store.service_accounts(&after, limit).await?;
    let items = page.items.iter().map(service_account_json).collect();
    ok(
        StatusCode::OK,
        list("ServiceAccountList", items, page.next, page.remaining),
    )
}

async fn get_service_account(
    State(state): AppStateRef,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
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
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
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
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
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
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    require(&who, "ADMIN", "")?;
    let token = auth::new_token().map_err(|e| ApiError::Internal(e.to_string()))?;
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

#[derive(Deserialize)]
struct PrincipalRef {
    #[serde(rename = "type")]
    kind: String,
    id: String,
}

#[derive(Deserialize)]
struct RoleBody {
    role: String,
    principal: PrincipalRef,
    #[serde(default)]
    scope: String,
}

fn check_principal_type(kind: &str) -> ApiResult<()> {
    match kind {
        "USER" | "SERVICE_ACCOUNT" => Ok(()),
        other => Err(ApiError::bad(format!(
            "principal.type {other:?}: expected USER or SERVICE_ACCOUNT"
        ))),
    }
}

fn role_json(role: &RoleAssignment) -> Value {
    let mut value = json!({
        "role": role.role,
        "principal": {"type": role.principal_type, "id": role.principal_id},
    });
    if PROJECT_ROLES.contains(&role.role.as_str()) {
        value["projectID"] = json!(role.scope);
    } else if !role.scope.is_empty() {
        value["scope"] = json!(role.scope);
    }
    value
}

fn system_role(
    role: &str,
    principal_type: &str,
    principal_id: &str,
    scope: &str,
) -> ApiResult<RoleAssignment> {
    if !SYSTEM_ROLES.contains(&role) {
        return Err(ApiError::bad(format!(
            "role {role:?}: expected one of {}",
            SYSTEM_ROLES.join(", ")
        )));
    }
    check_principal_type(principal_type)?;
    if role == "EVENT_CREATOR" && scope.is_empty() {
        return Err(ApiError::bad(
            "EVENT_CREATOR needs a scope: the event source it may create events for",
        ));
    }
    Ok(RoleAssignment {
        role: role.to_string(),
        principal_type: principal_type.to_string(),
        principal_id: principal_id.to_string(),
        scope: if role == "EVENT_CREATOR" {
            scope.to_string()
        } else {
            String::new()
        },
    })
}

async fn principal_exists(state: &AppState, kind: &str, id: &str) -> ApiResult<()> {
    if kind == "SERVICE_ACCOUNT" && state.store.service_account(id).await?.is_none() {
        return Err(ApiError::NotFound {
            kind: "ServiceAccount",
            id: id.to_string(),
        });
    }
    if kind == "USER" {
        return Err(ApiError::NotFound {
            kind: "User",
            id: id.to_string(),
        });
    }
    Ok(())
}

async fn grant_role(State(state): AppStateRef, headers: HeaderMap, body: Bytes) -> ApiResult {
    let who = principal(&state, &headers).await?;
    require(&who, "ADMIN", "")?;
    let body: RoleBody = parse_body(&body, "role assignment")?;
    let role = system_role(
        &body.role,
        &body.principal.kind,
        &body.principal.id,
        &body.scope,
    )?;
    principal_exists(&state, &role.principal_type, &role.principal_id).await?;
    state.store.grant(&role).await?;
    ok(StatusCode::OK, json!({}))
}

async fn revoke_role(
    State(state): AppStateRef,
    headers: HeaderMap,
    Query(query): QueryMap,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    require(&who, "ADMIN", "")?;
    let get = |k: &str| query.get(k).cloned().unwrap_or_default();
    let role = system_role(
        &get("role"),
        &get("principalType"),
        &get("principalID"),
        &get("scope"),
    )?;
    state.store.revoke(&role).await?;
    ok(StatusCode::OK, json!({}))
}

async fn list_roles(
    State(state): AppStateRef,
    headers: HeaderMap,
    Query(query): QueryMap,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    require(&who, "READER", "")?;
    let items = filtered_roles(&state, &query, false).await?;
    ok(StatusCode::OK, list("RoleAssignmentList", items, None, 0))
}

async fn filtered_roles(
    state: &AppState,
    query: &HashMap<String, String>,
    project_roles: bool,
) -> ApiResult<Vec<Value>> {
    let get = |k: &str| query.get(k).filter(|v| !v.is_empty());
    Ok(state
        .store
        .role_assignments(None)
        .await?
        .iter()
        .filter(|r| PROJECT_ROLES.contains(&r.role.as_str()) == project_roles)
        .filter(|r| get("role").is_none_or(|v| *v == r.role))
        .filter(|r| get("principalType").is_none_or(|v| *v == r.principal_type))
        .filter(|r| get("principalID").is_none_or(|v| *v == r.principal_id))
        .filter(|r| get("scope").is_none_or(|v| *v == r.scope))
        .filter(|r| {
            get("projectID")
                .or(get("project"))
                .is_none_or(|v| *v == r.scope)
        })
        .map(role_json)
        .collect())
}

fn project_role(
    project: &str,
    role: &str,
    principal_type: &str,
    principal_id: &str,
) -> ApiResult<RoleAssignment> {
    if !PROJECT_ROLES.contains(&role) {
        return Err(ApiError::bad(format!(
            "role {role:?}: expected one of {}",
            PROJECT_ROLES.join(", ")
        )));
    }
    check_principal_type(principal_type)?;
    Ok(RoleAssignment {
        role: role.to_string(),
        principal_type: principal_type.to_string(),
        principal_id: principal_id.to_string(),
        scope: project.to_string(),
    })
}

async fn grant_project_role(
    State(state): AppStateRef,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    visible_project(&state, &who, &id).await?;
    require_project(&who, "PROJECT_ADMIN", &id)?;
    let body: RoleBody = parse_body(&body, "project role assignment")?;
    let role = project_role(&id, &body.role, &body.principal.kind, &body.principal.id)?;
    principal_exists(&state, &role.principal_type, &role.principal_id).await?;
    if !state.store.grant(&role).await? {
        return Err(project_gone(&id));
    }
    ok(StatusCode::OK, json!({}))
}

async fn revoke_project_role(
    State(state): AppStateRef,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): QueryMap,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    visible_project(&state, &who, &id).await?;
    require_project(&who, "PROJECT_ADMIN", &id)?;
    let get = |k: &str| query.get(k).cloned().unwrap_or_default();
    let role = project_role(
        &id,
        &get("role"),
        &get("principalType"),
        &get("principalID"),
    )?;
    state.store.revoke(&role).await?;
    ok(StatusCode::OK, json!({}))
}

async fn list_project_roles(
    State(state): AppStateRef,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(mut query): QueryMap,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    visible_project(&state, &who, &id).await?;
    query.insert("projectID".into(), id);
    let items = filtered_roles(&state, &query, true).await?;
    ok(
        StatusCode::OK,
        list("ProjectRoleAssignmentList", items, None, 0),
    )
}

async fn list_all_project_roles(
    State(state): AppStateRef,
    headers: HeaderMap,
    Query(query): QueryMap,
) -> ApiResult {
    let who = principal(&state, &headers).await?;
    let items = filtered_roles(&state, &query, true)
        .await?
        .into_iter()
        .filter(|r| r["projectID"].as_str().is_some_and(|p| who.sees_project(p)))
        .collect();
    ok(
        StatusCode::OK,
        list("ProjectRoleAssignmentList", items, None, 0),
    )
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

// ----- gateways -------------------------------------------------------------------

fn gateway_error(error: GatewayError) -> Response {
    let status = error.status();
    (status, axum::Json(json!({"message": error.message()}))).into_response()
}

fn gateway_disabled(name: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"message": format!("the {name} gateway is not enabled on this server")})),
    )
        .into_response()
}

/// Fans a gateway's event out and stores it; 200 only once it is durable.
async fn accept_gateway_event(state: &AppState, event: GatewayEvent) -> ApiResult<usize> {
    let git = event.git.map(|git| {
        // The project's own clone URL (perhaps SSH, for a private
        // repository) stays; the delivery says which commit and ref.
        json!({"commit": git.commit, "ref": git.git_ref})
    });
    let body = EventBody {
        project_id: String::new(),
        source: event.source,
        event_type: event.event_type,
        qualifiers: Some(event.qualifiers),
        labels: Some(event.labels),
        short_title: event.short_title,
        long_title: event.long_title,
        git,
        payload: event.payload,
    };
    let events = fan_out(state, body, &BTreeMap::new()).await?;
    Ok(store_events(state, events).await?.0)
}

fn accepted(count: usize) -> Response {
    (
        StatusCode::OK,
        axum::Json(json!({"message": format!("accepted: {count} event(s) created")})),
    )
        .into_response()
}

async fn github_webhook(State(state): AppStateRef, headers: HeaderMap, body: Bytes) -> Response {
    let Some(secret) = &state.gateways.github_secret else {
        return gateway_disabled("GitHub");
    };
    let delivery = match gateways::github(&headers, &body, secret.as_bytes()) {
        Ok(delivery) => delivery,
        Err(e) => return gateway_error(e),
    };
    match state
        .store
        .record_delivery("github", &delivery.delivery_id)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            return (
                StatusCode::OK,
                axum::Json(json!({"message": format!(
                    "delivery {} was already received; ignored", delivery.delivery_id
                )})),
            )
                .into_response();
        }
        Err(e) => return ApiError::from(e).into_response(),
    }
    match accept_gateway_event(&state, delivery.event).await {
        Ok(count) => accepted(count),
        Err(e) => {
            // Let GitHub's redelivery through: this one was not stored.
            let _ = state
                .store
                .forget_delivery("github", &delivery.delivery_id)
                .await;
            e.into_response()
        }
    }
}

async fn token_gateway(
    state: &AppState,
    name: &str,
    tokens: &[String],
    headers: &HeaderMap,
    query: Option<&str>,
    parse: impl FnOnce() -> Result<GatewayEvent, GatewayError>,
) -> Response {
    if tokens.is_empty() {
        return gateway_disabled(name);
    }
    let authorized = gateways::bearer_token(headers, query)
        .is_some_and(|token| gateways::token_matches(&token, tokens));
    if !authorized {
        return gateway_error(GatewayError::Unauthorized(format!(
            "the {name} gateway needs a valid token (Authorization: Bearer <token> or ?access_token=<token>)"
        )));
    }
    match parse() {
        Ok(event) => match accept_gateway_event(state, event).await {
            Ok(count) => accepted(count),
            Err(e) => e.into_response(),
        },
        Err(e) => gateway_error(e),
    }
}

async fn dockerhub_webhook(
    State(state): AppStateRef,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    let tokens = state.gateways.dockerhub_tokens.clone();
    token_gateway(&state, "Docker Hub", &tokens, &headers, uri.query(), || {
        gateways::dockerhub(&body)
    })
    .await
}

async fn acr_webhook(
    State(state): AppStateRef,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    let tokens = state.gateways.acr_tokens.clone();
    token_gateway(&state, "ACR", &tokens, &headers, uri.query(), || {
        gateways::acr(&body)
    })
    .await
}

async fn cloudevents_webhook(
    State(state): AppStateRef,
    headers: HeaderMap,
    uri: axum::http::Uri,
    body: Bytes,
) -> Response {
    let tokens = state.gateways.cloudevents_tokens.clone();
    token_gateway(
        &state,
        "CloudEvents",
        &tokens,
        &headers,
        uri.query(),
        || gateways::cloudevent(&headers, &body),
    )
    .await
}

/// CloudEvents' webhook abuse protection: a sender asks with OPTIONS
/// whether it may deliver; the gateway allows the origin it was asked about.
async fn cloudevents_handshake(State(state): AppStateRef, headers: HeaderMap) -> Response {
    if state.gateways.cloudevents_tokens.is_empty() {
        return gateway_disabled("CloudEvents");
    }
    let origin = headers
        .get("webhook-request-origin")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("*")
        .to_string();
    Response::builder()
        .status(StatusCode::OK)
        .header("WebHook-Allowed-Origin", origin)
        .header("WebHook-Allowed-Rate", "*")
        .header(header::ALLOW, "POST, OPTIONS")
        .body(Body::empty())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(source: &str, event_type: &str, label: &str) -> EventBody {
        EventBody {
            source: source.into(),
            event_type: event_type.into(),
            labels: Some(BTreeMap::from([("key".to_string(), label.to_string())])),
            ..EventBody::default()
        }
    }

    /// One rule with the gateways: Brigade's patterns, `\w` being ASCII.
    #[test]
    fn events_follow_brigades_label_and_source_patterns() {
        assert!(validate_event(&event("mailto:a@b.c", "push:delete", "v1.0_*=?/")).is_ok());
        for (source, event_type, label) in [
            ("brigade.sh/*", "exec", "v"),
            ("brigade.sh/cli", "ex@c", "v"),
            ("brigade.sh/cli", "exec", "a@b"),
            ("brigade.sh/cli", "exec", "é"),
            ("brigade.sh/cafe\u{301}", "exec", "v"),
        ] {
            let Err(ApiError::BadRequest { details, .. }) =
                validate_event(&event(source, event_type, label))
            else {
                panic!("{source} {event_type} {label} was accepted");
            };
            assert_eq!(details.len(), 1, "{details:?}");
        }
    }
}

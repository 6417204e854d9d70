//! Events: creating and listing them, reading one, cancelling, deleting,
//! retrying and cloning them, and their source state; how Brigade's API
//! shows an event and its jobs.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use futures_util::{StreamExt, stream};
use mizzen_host_api::types::Phase;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::OwnedSemaphorePermit;

use super::accept::{EventBody, accept, accept_one, fan_out, may_create, validate_event};
use super::documents::{COPIED, RENDERED, document_share, held_answer, held_json};
use super::projects::project_gone;
use super::query::{PageQuery, Query, pairs, phases, time};
use super::{
    API_VERSION, ApiError, ApiResult, AppState, AppStateRef, list, ok, parse_body, require,
    require_project, visible_head,
};
use crate::auth::Principal;
use crate::scheduler::RETRY_LABEL;
use crate::store::{
    EventCursor, EventFilter, EventHead, EventRecord, JobRecord, NewEvent, StoreError, now_micros,
    rfc3339,
};

/// What one page of an event list may hold in event documents (payloads,
/// mostly): a page stops before the event that would take it past this,
/// but holds at least one event, and its `continue` leads on. Brigade's
/// clients read a page whole; 100 ordinary events (a few KiB each) stay one
/// page, while events with payloads of many MiB come a few at a time.
pub const EVENT_PAGE_BYTES: u64 = 8 * 1024 * 1024;

/// The routes of this resource.
pub(super) fn routes() -> Router<Arc<AppState>> {
    Router::new()
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
}

/// A whole event the caller may see, with its share of [`DOCUMENT_BUDGET`](super::DOCUMENT_BUDGET)
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

pub(super) fn status_json(phase: Phase, started: Option<i64>, ended: Option<i64>) -> Value {
    let mut status = json!({"phase": phase.as_str()});
    if let Some(started) = started {
        status["started"] = json!(rfc3339(started));
    }
    if let Some(ended) = ended {
        status["ended"] = json!(rfc3339(ended));
    }
    status
}

pub(super) fn job_json(job: &JobRecord) -> Value {
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
pub(super) fn event_json(event: EventRecord, jobs: &[JobRecord]) -> Value {
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

async fn create_events(
    State(state): AppStateRef,
    who: Principal,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
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
    let items = accept(&state, events, Some(&headers)).await?;
    if subscribed > 0 && items.is_empty() && !project.is_empty() {
        return Err(project_gone(&project));
    }
    ok(StatusCode::CREATED, list("EventList", items, None, 0))
}

/// `GET /v2/events`'s parameters: which events, and the page.
#[derive(Deserialize)]
struct EventListQuery {
    #[serde(rename = "projectID")]
    project_id: Option<String>,
    source: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    #[serde(rename = "workerPhases")]
    worker_phases: Option<String>,
    qualifiers: Option<String>,
    labels: Option<String>,
    #[serde(rename = "sourceState")]
    source_state: Option<String>,
    #[serde(rename = "createdAfter")]
    created_after: Option<String>,
    #[serde(rename = "createdBefore")]
    created_before: Option<String>,
    #[serde(flatten)]
    page: PageQuery,
}

async fn list_events(
    State(state): AppStateRef,
    who: Principal,
    Query(query): Query<EventListQuery>,
) -> ApiResult {
    let limit = query.page.limit()?;
    let given = |value: Option<String>| value.filter(|s| !s.is_empty());
    let filter = EventFilter {
        project_id: given(query.project_id),
        visible_projects: who.visible_projects(),
        source: given(query.source),
        event_type: given(query.event_type),
        phases: phases(query.worker_phases.as_deref())?,
        qualifiers: pairs("qualifiers", query.qualifiers.as_deref())?,
        labels: pairs("labels", query.labels.as_deref())?,
        source_state: pairs("sourceState", query.source_state.as_deref())?,
        created_after: time("createdAfter", query.created_after.as_deref())?,
        created_before: time("createdBefore", query.created_before.as_deref())?,
    };
    let after = match query.page.after.filter(|s| !s.is_empty()) {
        Some(text) => Some(EventCursor::parse(&text, &filter).ok_or_else(|| {
            ApiError::bad(format!(
                "continue {text:?} is not a value this server gave for a list with these filters"
            ))
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

async fn get_event(State(state): AppStateRef, who: Principal, Path(id): Path<String>) -> ApiResult {
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
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult {
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

/// The parameters of a request about many events.
#[derive(Deserialize)]
struct ManyEventsQuery {
    #[serde(rename = "projectID")]
    project_id: Option<String>,
    #[serde(rename = "workerPhases")]
    worker_phases: Option<String>,
}

/// The project and phases a many-events request must name.
async fn many(
    state: &AppState,
    who: &Principal,
    query: &ManyEventsQuery,
) -> ApiResult<Vec<EventHead>> {
    let project = query
        .project_id
        .as_ref()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::bad("projectID is required"))?;
    let phases = phases(query.worker_phases.as_deref())?;
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
    who: Principal,
    Query(query): Query<ManyEventsQuery>,
) -> ApiResult {
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
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult {
    let event = visible_head(&state, &who, &id).await?;
    require_project(&who, "PROJECT_USER", &event.project_id)?;
    delete_one(&state, &event).await?;
    ok(StatusCode::OK, json!({}))
}

async fn delete_events(
    State(state): AppStateRef,
    who: Principal,
    Query(query): Query<ManyEventsQuery>,
) -> ApiResult {
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
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult {
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
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult {
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
    who: Principal,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
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
